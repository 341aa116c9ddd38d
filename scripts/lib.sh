# scripts/lib.sh — shared by run.sh and test.sh. Sourced, not run.
# Knows who we are (root or a sudo user), where PostgreSQL 15 lives, and the
# unprivileged account that runs the server (initdb refuses root).
set -euo pipefail

ENVOISMS_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# ENVOISMS_PGBIN points at another PostgreSQL 15 (a relocated copy: see
# docs/testing.md) so that a build and its tests never touch the system's.
PGBIN=${ENVOISMS_PGBIN:-/usr/lib/postgresql/15/bin}
PG_CONFIG=$PGBIN/pg_config
export PATH="$PGBIN:$PATH"

# The unprivileged OS user that owns clusters and runs the workers.
ENVOISMS_USER=${ENVOISMS_USER:-envoisms}

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Run a command as root: directly when we are root, else through sudo.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Run a command as the unprivileged server user.
as_server_user() {
    if [ "$(id -un)" = "$ENVOISMS_USER" ]; then
        "$@"
    elif [ "$(id -u)" -eq 0 ]; then
        runuser -u "$ENVOISMS_USER" -- "$@"
    else
        sudo -u "$ENVOISMS_USER" -- "$@"
    fi
}

# Create the server user when it is missing.
ensure_server_user() {
    if ! id -u "$ENVOISMS_USER" >/dev/null 2>&1; then
        say "creating system user $ENVOISMS_USER"
        as_root useradd --system --create-home --home-dir "/var/lib/$ENVOISMS_USER" \
            --shell /bin/bash "$ENVOISMS_USER"
    fi
}

# Build and install the extension and the gateway.
build_and_install() {
    say "building envoisms"
    make -C "$ENVOISMS_ROOT" -s -j"$(nproc)" PG_CONFIG="$PG_CONFIG"
    say "installing envoisms"
    as_root make -C "$ENVOISMS_ROOT" -s install PG_CONFIG="$PG_CONFIG"
}

# Write the extension's server settings for a cluster (appended to postgresql.conf).
server_settings() {
    local db=$1
    cat <<CONF
# ---- envoisms
shared_preload_libraries = 'envoisms,pg_cron'
envoisms.database = '$db'
cron.database_name = '$db'
max_worker_processes = 32
max_connections = 200
CONF
}
