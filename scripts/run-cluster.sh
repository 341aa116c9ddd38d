#!/usr/bin/env bash
# scripts/run-cluster.sh — envoisms on a Citus cluster on this machine
# (docs/scale.md): a coordinator and two workers on loopback, each with
# citus and envoisms preloaded (so every node runs dispatchers, webhook
# workers and a scheduler), the schema distributed by account with
# envoisms.distribute(), envoisms-gateway against the coordinator, and
# the same demo account, key and curl as scripts/run.sh. Idempotent: a
# second run reuses the nodes, the account and the key.
#
#   ENVOISMS_CLUSTER_PORTS="5490 5491 5492"   coordinator first
#   ENVOISMS_CLUSTER_LISTEN=127.0.0.1:8090     the gateway
#   ENVOISMS_CLUSTER_SHARDS=8                  shards per distributed table
#   ENVOISMS_CLUSTER_STATE=/var/lib/envoisms/cluster
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STATE=${ENVOISMS_CLUSTER_STATE:-/var/lib/$ENVOISMS_USER/cluster}
read -r -a PORTS <<< "${ENVOISMS_CLUSTER_PORTS:-5490 5491 5492}"
LISTEN=${ENVOISMS_CLUSTER_LISTEN:-127.0.0.1:8090}
SHARDS=${ENVOISMS_CLUSTER_SHARDS:-8}
DB=envoisms
SOCK=$STATE/run

"$ENVOISMS_ROOT/scripts/deps.sh"
ensure_server_user
build_and_install
"$ENVOISMS_ROOT/scripts/citus.sh" || die "Citus is not installed and cannot be built (scripts/citus.sh says why)"

as_root install -d -o "$ENVOISMS_USER" -g "$(id -gn "$ENVOISMS_USER")" -m 0755 "$STATE" "$SOCK" "$STATE/log"

psql_at() {   # psql_at PORT SQL...
    local port=$1; shift
    as_server_user psql -X -q -v ON_ERROR_STOP=1 -h "$SOCK" -p "$port" -d "$DB" "$@"
}

for port in "${PORTS[@]}"; do
    data=$STATE/node-$port
    if ! as_server_user test -f "$data/PG_VERSION"; then
        say "creating node $port in $data"
        as_server_user initdb -D "$data" -E UTF8 --locale=C.UTF-8 --auth-local=trust --auth-host=trust >/dev/null
        # trust on loopback only: the nodes connect to each other there
        as_server_user bash -c "cat >> '$data/postgresql.conf'" <<CONF
# ---- envoisms on Citus (scripts/run-cluster.sh)
shared_preload_libraries = 'citus,envoisms'
envoisms.database = '$DB'
max_worker_processes = 32
max_connections = 200
max_prepared_transactions = 100
wal_level = logical
citus.shard_count = $SHARDS
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$SOCK'
logging_collector = off
CONF
    fi
    if ! as_server_user pg_ctl -D "$data" status >/dev/null 2>&1; then
        say "starting node $port"
        as_server_user bash -c "ulimit -n 65536 2>/dev/null || ulimit -n \$(ulimit -Hn); pg_ctl -D '$data' -l '$STATE/log/node-$port.log' -w start" >/dev/null
    else
        as_server_user bash -c "ulimit -n 65536 2>/dev/null || ulimit -n \$(ulimit -Hn); pg_ctl -D '$data' -l '$STATE/log/node-$port.log' -m fast -w restart" >/dev/null
    fi
    if ! as_server_user psql -X -h "$SOCK" -p "$port" -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1; then
        as_server_user psql -X -q -h "$SOCK" -p "$port" -d postgres -c "CREATE DATABASE $DB"
    fi
    psql_at "$port" -c "CREATE EXTENSION IF NOT EXISTS citus" 2>&1 | grep -v already || true
done

COORD=${PORTS[0]}
say "adding the workers to the coordinator ($COORD)"
psql_at "$COORD" -c "SELECT citus_set_coordinator_host('127.0.0.1', $COORD)" >/dev/null
for port in "${PORTS[@]:1}"; do
    psql_at "$COORD" -tAc "SELECT 1 FROM pg_dist_node WHERE nodeport = $port" | grep -q 1 ||
        psql_at "$COORD" -c "SELECT citus_add_node('127.0.0.1', $port)" >/dev/null
done
psql_at "$COORD" -c "CREATE EXTENSION IF NOT EXISTS envoisms; ALTER EXTENSION envoisms UPDATE;" 2>&1 | grep -v already || true
say "distributing the schema by account (envoisms.distribute())"
psql_at "$COORD" -c "SELECT count(*) FROM envoisms.distribute()" >/dev/null 2>&1 ||
    psql_at "$COORD" -c "SELECT * FROM envoisms.distribute()"

KEYFILE=$STATE/demo-sandbox-key
key=$(as_root cat "$KEYFILE" 2>/dev/null || true)
valid=0
if [ -n "$key" ]; then
    valid=$(psql_at "$COORD" -tAc "SELECT count(*) FROM envoisms.api_keys WHERE key_hash = envoisms.sha256_hex('$key') AND active AND revoked_at IS NULL")
fi
if [ "$valid" != "1" ]; then
    say "creating the demo account (1000 MAD) and its sandbox key"
    key=$(psql_at "$COORD" -tAc "
        SELECT envoisms.api_key_create(envoisms.account_create('Demo', 1000, 'starter'),
                                       'Demo sandbox key', live => false, rate_limit => 1000)->>'api_key'")
    printf '%s\n' "$key" | as_root tee "$KEYFILE" >/dev/null
    as_root chmod 0600 "$KEYFILE"
fi

say "starting envoisms-gateway on $LISTEN against the coordinator"
gateway_restart "$LISTEN" "host=$SOCK port=$COORD dbname=$DB user=$ENVOISMS_USER" \
    "$SOCK/gateway.pid" "$STATE/log/gateway.log"

cat <<EXAMPLE

envoisms is running on a Citus cluster: coordinator $COORD, workers ${PORTS[*]:1}.
  database : psql -h $SOCK -p $COORD -U $ENVOISMS_USER $DB   (as root or $ENVOISMS_USER)
  layout   : SELECT logicalrelid, partmethod FROM pg_dist_partition;   (docs/scale.md)
  gateway  : http://$LISTEN   (logs in $STATE/log)
  demo key : $key   (sandbox: never debits, never reaches a carrier)

Send a message:

curl -X POST "http://$LISTEN/v1/messages" \\
  -H "Authorization: Bearer $key" \\
  -H "Content-Type: application/json" \\
  -d '{"to": "+212612345678", "message": "Votre code de validation est 849204", "from": "MaBoutique"}'
EXAMPLE
