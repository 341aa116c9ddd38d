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

# The build wanted: "sanitize" (ENVOISMS_SANITIZE=1: ASan and UBSan, make
# SANITIZE=1) or "normal".
build_flavour() {
    if [ "${ENVOISMS_SANITIZE:-0}" = 1 ]; then echo sanitize; else echo normal; fi
}

# Whether any object or binary of the tree was built in another flavour
# than $1 (an instrumented object references the ASan runtime). Asking the
# objects themselves cannot go stale, as a stamp file could after an
# interrupted build.
built_in_other_flavour() {
    local want=$1 f
    for f in "$ENVOISMS_ROOT"/src/*.o "$ENVOISMS_ROOT"/src/gateway/*.o "$ENVOISMS_ROOT"/envoisms.so \
             "$ENVOISMS_ROOT"/src/gateway/envoisms-gateway; do
        [ -f "$f" ] || continue
        if nm "$f" 2>/dev/null | grep -q '__asan_'; then
            [ "$want" = sanitize ] || return 0
        else
            [ "$want" = normal ] || return 0
        fi
    done
    return 1
}

# Build and install the extension and the gateway, from clean when the
# flavour changed (no object of a sanitized build is reused in a normal one,
# nor the other way round).
build_and_install() {
    local flavour
    flavour=$(build_flavour)
    if built_in_other_flavour "$flavour"; then
        say "the tree was built in another flavour: cleaning for a $flavour build"
        make -C "$ENVOISMS_ROOT" -s clean PG_CONFIG="$PG_CONFIG" >/dev/null
    fi
    say "building envoisms ($flavour)"
    make -C "$ENVOISMS_ROOT" -s -j"$(nproc)" PG_CONFIG="$PG_CONFIG" \
        $([ "$flavour" = sanitize ] && echo SANITIZE=1)
    say "installing envoisms ($flavour)"
    as_root make -C "$ENVOISMS_ROOT" -s install PG_CONFIG="$PG_CONFIG" \
        $([ "$flavour" = sanitize ] && echo SANITIZE=1)
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

# gateway_restart LISTEN CONNINFO PIDFILE LOGFILE — (re)start envoisms-gateway
# as the server user, with a raised open-file limit, and wait for /healthz.
# run.sh and run-cluster.sh share it; run-ha.sh starts its own under the HA
# profile's user and session.
gateway_restart() {
    local listen=$1 conninfo=$2 pidfile=$3 log=$4
    local gateway
    gateway=$($PG_CONFIG --bindir)/envoisms-gateway
    if [ -f "$pidfile" ] && as_root kill -0 "$(as_root cat "$pidfile")" 2>/dev/null; then
        as_root kill -TERM "$(as_root cat "$pidfile")" || true
        sleep 1
    fi
    as_server_user bash -c "ulimit -n 65536 2>/dev/null || true; nohup '$gateway' --listen '$listen' \
        --db '$conninfo' >> '$log' 2>&1 & echo \$! > '$pidfile'"
    for _ in $(seq 1 50); do
        curl -fsS "http://$listen/healthz" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    curl -fsS "http://$listen/healthz" >/dev/null || die "the gateway did not come up; see $log"
}
