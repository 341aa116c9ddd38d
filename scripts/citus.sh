#!/usr/bin/env bash
# scripts/citus.sh — make sure the PostgreSQL in use ($PG_CONFIG) has Citus,
# for the cluster suites (test/tap/4*) and scripts/run-cluster.sh.
#
#   scripts/citus.sh           install Citus if it is missing; exit 0 when
#                              it is there afterwards, 3 when it cannot be
#   scripts/citus.sh --check   only say whether it is installed (0 or 3)
#
# An operator installs Citus's own packages; then there is nothing to do.
# Otherwise, when the vendored source is beside the tree (../shared/vendor,
# see its README.md: Citus 13.2.2, the last release for PostgreSQL 15, and
# a one-line patch for PostgreSQL 15.20), it is built out of the tree in
# .cache/citus/ (kept between runs: a second run only installs) and
# installed into $PG_CONFIG's directories. Without either, the Citus suites
# are skipped and say so.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CITUS_VERSION=13.2.2
vendor=${ENVOISMS_VENDOR:-$(cd "$ENVOISMS_ROOT/.." && pwd)/shared/vendor}
cache=${ENVOISMS_CITUS_CACHE:-$ENVOISMS_ROOT/.cache/citus}

installed() {
    [ -f "$("$PG_CONFIG" --pkglibdir)/citus.so" ] &&
        [ -f "$("$PG_CONFIG" --sharedir)/extension/citus.control" ]
}

if installed; then exit 0; fi
[ "${1:-}" = --check ] && exit 3

tarball=$vendor/citus-$CITUS_VERSION.tar.gz
patchfile=$vendor/citus-$CITUS_VERSION-pg15.patch
if [ ! -f "$tarball" ]; then
    echo "citus: not installed in $("$PG_CONFIG" --pkglibdir) and no source at $tarball" >&2
    exit 3
fi

src=$cache/citus-$CITUS_VERSION
# configure and make find PostgreSQL through this pg_config; a build made for
# another one is not reused
stamp=$src/.built-for
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$PG_CONFIG" ]; then
    say "building Citus $CITUS_VERSION in $src (2 to 3 minutes)"
    rm -rf "$src"
    mkdir -p "$cache"
    tar -xzf "$tarball" -C "$cache"
    [ -d "$src" ] || die "citus: $tarball did not unpack into $src"
    [ -f "$patchfile" ] && patch -s -d "$src" -p1 < "$patchfile"
    (
        cd "$src"
        PG_CONFIG="$PG_CONFIG" ./configure --quiet PG_CONFIG="$PG_CONFIG" >/dev/null
        make -s -j"$(nproc)" >/dev/null
    ) || { echo "citus: the build failed (needs liblz4-dev libzstd-dev libkrb5-dev libcurl4-openssl-dev)" >&2; exit 3; }
    echo "$PG_CONFIG" > "$stamp"
fi
say "installing Citus $CITUS_VERSION into $("$PG_CONFIG" --pkglibdir)"
as_root make -s -C "$src" install >/dev/null
installed || die "citus: make install left no citus.so in $("$PG_CONFIG" --pkglibdir)"
