#!/usr/bin/env bash
# scripts/private-pg.sh DIR — a private, relocated copy of the system's
# PostgreSQL 15 (binaries, headers, extensions) in DIR, for developers who
# build and test several trees at once on one machine: PostgreSQL finds its
# share and lib directories relative to its binaries, so an extension
# installed with this copy's pg_config is seen only by clusters it starts.
#
#   ./scripts/private-pg.sh /var/tmp/pg-mine
#   ENVOISMS_PGBIN=/var/tmp/pg-mine/usr/lib/postgresql/15/bin ./scripts/test.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

dir=${1:?usage: private-pg.sh DIR}
[ -x "/usr/lib/postgresql/15/bin/pg_config" ] || "$ENVOISMS_ROOT/scripts/deps.sh"
as_root mkdir -p "$dir/usr/lib/postgresql" "$dir/usr/share/postgresql" "$dir/usr/include"
as_root rsync -a --delete /usr/lib/postgresql/15 "$dir/usr/lib/postgresql/"
as_root rsync -a --delete /usr/share/postgresql/15 "$dir/usr/share/postgresql/"
as_root rsync -a --delete /usr/include/postgresql "$dir/usr/include/"
# libpq and the other shared libraries stay the system's
as_root ln -sfn /usr/lib/x86_64-linux-gnu "$dir/usr/lib/x86_64-linux-gnu"
as_root chmod -R a+rX "$dir"
echo "ENVOISMS_PGBIN=$dir/usr/lib/postgresql/15/bin"
