#!/usr/bin/env bash
# scripts/run-ha.sh — the high-availability profile on one machine, over
# loopback (docs/ha.md): a pg_auto_failover monitor, two PostgreSQL 15 nodes
# with envoisms preloaded and synchronous replication between them, and
# envoisms-gateway on a multi-host connection string. Prints the state and
# how to kill the primary and watch the switch. The README's run.sh stays
# the one-server default; this is its own profile.
#
#   ./scripts/run-ha.sh                  # state in /var/lib/envoisms/ha, gateway on 127.0.0.1:8090
#   ./scripts/run-ha.sh --stop           # stop the gateway, the nodes and the monitor
#
# Settings (environment): ENVOISMS_HA_DIR (state), ENVOISMS_HA_PORT (the
# monitor's port; the nodes take the next two) or ENVOISMS_HA_PORTS="M A B",
# ENVOISMS_LISTEN (the gateway; ENVOISMS_HA_GATEWAY=0 starts none),
# ENVOISMS_HA_CONF (more postgresql.conf lines for the nodes),
# ENVOISMS_HA_NO_BUILD=1 (use what is installed) and ENVOISMS_HA_FAST=1
# (short health checks): the tests use these (test/tap/180_ha_failover.pl).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DIR=${ENVOISMS_HA_DIR:-/var/lib/$ENVOISMS_USER/ha}
BASE=${ENVOISMS_HA_PORT:-5490}
LISTEN=${ENVOISMS_LISTEN:-127.0.0.1:8090}
DB=${ENVOISMS_DB:-envoisms}
read -r MON_PORT A_PORT B_PORT <<< "${ENVOISMS_HA_PORTS:-$BASE $((BASE + 1)) $((BASE + 2))}"
MONITOR_URI="postgres://autoctl_node@127.0.0.1:$MON_PORT/pg_auto_failover?sslmode=disable"
CONNINFO="host=127.0.0.1,127.0.0.1 port=$A_PORT,$B_PORT dbname=$DB user=$ENVOISMS_USER target_session_attrs=read-write connect_timeout=2"

# pg_autoctl keeps its configuration, state and pid files under the XDG
# directories: kept beside the nodes so that several profiles never meet.
# PGHOST, a directory, is where the servers pg_autoctl starts put their
# sockets (Debian's default, /var/run/postgresql, may not be writable).
export XDG_CONFIG_HOME=$DIR/xdg/config XDG_DATA_HOME=$DIR/xdg/data XDG_RUNTIME_DIR=$DIR/xdg/run PGHOST=$DIR/run

# Runs a command as the server user with the profile's environment.
as_ha() {
    as_server_user env PATH="$PATH" XDG_CONFIG_HOME="$XDG_CONFIG_HOME" XDG_DATA_HOME="$XDG_DATA_HOME" \
        XDG_RUNTIME_DIR="$XDG_RUNTIME_DIR" PGHOST="$PGHOST" PG_CONFIG="$PG_CONFIG" "$@"
}

# Runs a command as the server user, its output appended to DIR/log/NAME.log.
as_ha_logged() {
    local name=$1
    shift
    as_ha bash -c 'log=$1; shift; "$@" >> "$log" 2>&1' _ "$DIR/log/$name.log" "$@"
}

# Starts `pg_autoctl run` for a node in a process group of its own (so that
# killing the group is losing the machine), its pid in DIR/NAME.keeper.pid.
start_keeper() {
    local name=$1
    if as_ha test -f "$DIR/$name.keeper.pid" && kill -0 "$(as_ha cat "$DIR/$name.keeper.pid")" 2>/dev/null; then
        return
    fi
    as_ha bash -c "ulimit -n 65536 2>/dev/null || ulimit -n \$(ulimit -Hn); \
        setsid nohup pg_autoctl run --pgdata '$DIR/$name' >> '$DIR/log/$name.log' 2>&1 < /dev/null & \
        echo \$! > '$DIR/$name.keeper.pid'"
}

# Waits until `pg_autoctl show state` lists every name=state pair given
# (reported and assigned; a name of * is any node).
wait_state() {
    local want i
    for i in $(seq 1 600); do
        local ok=1 state
        state=$(as_ha pg_autoctl show state --pgdata "$DIR/monitor" 2>/dev/null || true)
        for want in "$@"; do
            echo "$state" | awk -F'|' -v n="${want%%=*}" -v s="${want#*=}" \
                '{gsub(/ /,"",$1); gsub(/ /,"",$6); gsub(/ /,"",$7)} (n=="*" || $1==n) && $6==s && $7==s {f=1} END {exit !f}' \
                || ok=0
        done
        [ $ok = 1 ] && return 0
        sleep 0.5
    done
    echo "$state" >&2
    die "timed out waiting for $*"
}

stop_all() {
    local f pid
    for f in "$DIR"/gateway.pid "$DIR"/b.keeper.pid "$DIR"/a.keeper.pid "$DIR"/monitor.keeper.pid; do
        as_ha test -f "$f" || continue
        pid=$(as_ha cat "$f")
        as_ha kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do as_ha kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        as_ha rm -f "$f"
    done
}

if [ "${1:-}" = --stop ]; then
    stop_all
    exit 0
fi

if [ "${ENVOISMS_HA_NO_BUILD:-0}" != 1 ]; then
    "$ENVOISMS_ROOT/scripts/deps.sh"
    ensure_server_user
    build_and_install
fi
command -v pg_autoctl >/dev/null || die "pg_autoctl is missing: install postgresql-15-auto-failover (scripts/deps.sh)"

if [ "$(id -un)" = "$ENVOISMS_USER" ]; then
    mkdir -p -m 0700 "$DIR"
else
    as_root install -d -o "$ENVOISMS_USER" -g "$(id -gn "$ENVOISMS_USER")" -m 0700 "$DIR"
fi
as_ha mkdir -p "$DIR/log" "$DIR/run" "$XDG_CONFIG_HOME" "$XDG_DATA_HOME" "$XDG_RUNTIME_DIR"
as_ha chmod 0700 "$XDG_RUNTIME_DIR"

# pg_autoctl sizes memory for a machine of its own (shared_buffers a
# quarter of RAM); three servers share this one.
small_settings() {
    cat <<CONF
unix_socket_directories = '$DIR/run'
shared_buffers = '128MB'
effective_cache_size = '1GB'
maintenance_work_mem = '64MB'
work_mem = '4MB'
CONF
}

# ---- the monitor
if ! as_ha test -f "$XDG_CONFIG_HOME/pg_autoctl$DIR/monitor/pg_autoctl.cfg"; then
    say "creating the monitor on 127.0.0.1:$MON_PORT"
    # our own initdb, so that its sockets go where this profile keeps them
    as_ha initdb -D "$DIR/monitor" -E UTF8 --locale=C.UTF-8 --auth=trust >/dev/null
    small_settings | as_ha bash -c "cat >> '$DIR/monitor/postgresql.conf'"
    as_ha_logged monitor pg_autoctl create monitor --pgdata "$DIR/monitor" --pgport "$MON_PORT" \
        --pgctl "$PGBIN/pg_ctl" --hostname 127.0.0.1 --auth trust --no-ssl \
        || die "pg_autoctl create monitor failed; see $DIR/log/monitor.log"
    if [ "${ENVOISMS_HA_FAST:-0}" = 1 ]; then
        # the tests' detection: a check every second, a node unhealthy after
        # 2 s without answer, a primary that lost the monitor demotes itself
        # after 5 s (docs/ha.md says what each costs)
        checks="pgautofailover.health_check_period = 1000
pgautofailover.health_check_timeout = 1000
pgautofailover.health_check_max_retries = 1
pgautofailover.health_check_retry_delay = 500
pgautofailover.node_considered_unhealthy_timeout = 2000
pgautofailover.primary_demote_timeout = 5000"
    else
        # about 6 s to notice a dead primary, the demote timeout is most of the switch
        checks="pgautofailover.health_check_period = 2000
pgautofailover.health_check_timeout = 2000
pgautofailover.health_check_max_retries = 2
pgautofailover.health_check_retry_delay = 1000
pgautofailover.node_considered_unhealthy_timeout = 6000
pgautofailover.primary_demote_timeout = 10000"
    fi
    # after pg_autoctl's own include, so these win: it sets listen_addresses
    # = '*', every address of the machine; loopback is all this profile needs
    as_ha bash -c "cat >> '$DIR/monitor/postgresql.conf'" <<CONF
# ---- envoisms HA profile
listen_addresses = '127.0.0.1'
$checks
CONF
    # pg_autoctl starts the monitor with -h from its own configuration
    as_ha_logged monitor pg_autoctl config set --pgdata "$DIR/monitor" postgresql.listen_addresses 127.0.0.1
    as_ha pg_ctl -D "$DIR/monitor" -m fast -w stop >/dev/null 2>&1 || true
fi
start_keeper monitor
monitor_up() {
    as_ha psql -X -q -h 127.0.0.1 -p "$MON_PORT" -U autoctl_node -d pg_auto_failover -c 'SELECT 1' >/dev/null 2>&1
}
for _ in $(seq 1 100); do monitor_up && break; sleep 0.2; done
monitor_up || die "the monitor does not answer on 127.0.0.1:$MON_PORT; see $DIR/log/monitor.log"

# ---- the nodes: `a` first, made primary; `b` a copy of it
node_settings() {
    local port=$1
    server_settings "$DB"
    small_settings
    cat <<CONF
listen_addresses = '127.0.0.1'
port = $port
logging_collector = off
wal_keep_size = '512MB'
${ENVOISMS_HA_CONF:-}
CONF
}

create_node() {
    local name=$1 port=$2
    if as_ha test -f "$XDG_CONFIG_HOME/pg_autoctl$DIR/$name/pg_autoctl.cfg"; then
        start_keeper "$name"
        return
    fi
    if [ "$name" = a ]; then
        # our own initdb, so that the extension's settings are in place before
        # the first start; b is a base backup of a and inherits them
        as_ha initdb -D "$DIR/a" -E UTF8 --locale=C.UTF-8 --auth=trust >/dev/null
        node_settings "$port" | as_ha bash -c "cat >> '$DIR/a/postgresql.conf'"
    fi
    say "creating node $name on 127.0.0.1:$port"
    as_ha_logged "$name" pg_autoctl create postgres --pgdata "$DIR/$name" --pgport "$port" \
        --pgctl "$PGBIN/pg_ctl" --pghost "$DIR/run" --hostname 127.0.0.1 --listen 127.0.0.1 \
        --name "$name" --dbname "$DB" --auth trust --no-ssl --monitor "$MONITOR_URI" \
        || die "pg_autoctl create postgres failed for $name; see $DIR/log/$name.log"
    if [ "$name" = b ]; then
        # b's copy of a's settings names a's port
        as_ha sed -i "s/^port = .*/port = $port/" "$DIR/b/postgresql.conf"
    fi
    start_keeper "$name"
}

create_node a "$A_PORT"
as_ha test -f "$XDG_CONFIG_HOME/pg_autoctl$DIR/b/pg_autoctl.cfg" || wait_state a=single
PSQL_A=(psql -X -q -v ON_ERROR_STOP=1 -d "$CONNINFO")
for _ in $(seq 1 100); do
    as_ha "${PSQL_A[@]}" -c 'SELECT 1' >/dev/null 2>&1 && break
    sleep 0.2
done
if ! as_ha test -f "$XDG_CONFIG_HOME/pg_autoctl$DIR/b/pg_autoctl.cfg"; then
    as_ha "${PSQL_A[@]}" -c "CREATE EXTENSION IF NOT EXISTS envoisms" 2>&1 | grep -v already || true
    # A checkpoint first: pg_basebackup starts with one, and a spread
    # checkpoint of a busy node makes the standby's creation wait for minutes.
    as_ha "${PSQL_A[@]}" -c "CHECKPOINT"
fi
create_node b "$B_PORT"
say "waiting for a primary and its secondary"
wait_state '*=primary' '*=secondary'

# ---- a demo account and its live key (sandbox carrier routes: no network)
as_ha "${PSQL_A[@]}" -c "ALTER EXTENSION envoisms UPDATE" 2>&1 | grep -v "already installed" || true
KEYFILE=$DIR/demo-key
if ! as_ha test -s "$KEYFILE"; then
    as_ha "${PSQL_A[@]}" -tAc "
        SELECT envoisms.api_key_create(envoisms.account_create('HA demo', 1000, 'starter'),
                                       'HA demo key', live => false, rate_limit => 100000)->>'api_key'" \
        | as_ha bash -c "umask 077; cat > '$KEYFILE'"
fi
key=$(as_ha cat "$KEYFILE")

if [ "${ENVOISMS_HA_GATEWAY:-1}" = 0 ]; then
    echo "key: $key"
    exit 0
fi

# ---- the gateway on both nodes: it follows the primary
GATEWAY=$($PG_CONFIG --bindir)/envoisms-gateway
[ -x "$GATEWAY" ] || die "envoisms-gateway is not built"
if as_ha test -f "$DIR/gateway.pid" && kill -0 "$(as_ha cat "$DIR/gateway.pid")" 2>/dev/null; then
    as_ha kill -TERM "$(as_ha cat "$DIR/gateway.pid")"
    sleep 1
fi
say "starting envoisms-gateway on $LISTEN"
as_ha bash -c "ulimit -n 65536 2>/dev/null || true; setsid nohup '$GATEWAY' --listen '$LISTEN' \
    --db '$CONNINFO' ${ENVOISMS_GATEWAY_ARGS:-} >> '$DIR/log/gateway.log' 2>&1 < /dev/null & \
    echo \$! > '$DIR/gateway.pid'"
for _ in $(seq 1 50); do
    curl -fsS "http://$LISTEN/healthz" >/dev/null 2>&1 && break
    sleep 0.2
done
curl -fsS "http://$LISTEN/healthz" >/dev/null || die "the gateway did not come up; see $DIR/log/gateway.log"

cat <<EXAMPLE

envoisms HA profile is running (docs/ha.md).
  monitor : 127.0.0.1:$MON_PORT     nodes: a 127.0.0.1:$A_PORT, b 127.0.0.1:$B_PORT
  gateway : http://$LISTEN  --db '$CONNINFO'
  logs    : $DIR/log        key: $key

The state (run it in another terminal):
  sudo -u $ENVOISMS_USER env XDG_CONFIG_HOME=$XDG_CONFIG_HOME XDG_DATA_HOME=$XDG_DATA_HOME \\
       watch -n1 $(command -v pg_autoctl) show state --pgdata $DIR/monitor

Send while you kill:
  while :; do curl -s -o /dev/null -w '%{http_code}\\n' -X POST http://$LISTEN/v1/messages \\
    -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \\
    -d '{"to": "+212612345678", "message": "Bonjour"}'; sleep 0.1; done

Kill the primary's machine (its keeper and its postmaster, kill -9):
  kill -9 -- -\$(cat $DIR/a.keeper.pid)      # or b, whichever is primary

The monitor promotes the other node; the gateway answers again from it. Bring
the dead node back as a standby (it rewinds itself):
  $0                                          # restarts the keepers that are down
Stop everything:
  $0 --stop
EXAMPLE
