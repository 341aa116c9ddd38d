#!/usr/bin/env bash
# bench/cluster.sh — envoisms on a Citus cluster against one PostgreSQL,
# measured in this one run on this machine (docs/scale.md):
#
#   dispatch   sandbox messages queued -> sent, with the shards on one
#              worker, then on two (a worker added and citus_rebalance_start()
#              run: its duration is printed)
#   sends      wrk POST /v1/messages through a gateway on a single node and
#              through one on the coordinator of that cluster (coordinator +
#              2 workers), interleaved rounds (BENCH_ROUNDS, default 3), the
#              nodes restarted without background workers so that only the
#              request path runs; 8 accounts, a key each, spread by account
#   remote     the remote commands of one send on the coordinator
#
# Every node shares this machine's cores: read the cluster's figures as
# the cost of the extra hop, not as scale-out. Needs Citus (scripts/citus.sh).
# Usage: bench/cluster.sh [seconds per send run, default 10] [messages per dispatch run, default 20000]
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

SECONDS_PER_RUN=${1:-10}
MESSAGES=${2:-20000}
ROUNDS=${BENCH_ROUNDS:-3}
CLIENTS=32
BASE=${ENVOISMS_BENCH_PGPORT:-55490}   # single node; the cluster on the next three ports
HTTP_SINGLE=${ENVOISMS_BENCH_HTTP_PORT:-18190}
HTTP_CLUSTER=$((HTTP_SINGLE + 1))
GATEWAY=${ENVOISMS_GATEWAY:-$ENVOISMS_ROOT/src/gateway/envoisms-gateway}
[ -x "$GATEWAY" ] || GATEWAY=$($PG_CONFIG --bindir)/envoisms-gateway
command -v wrk >/dev/null || die "wrk is missing (apt-get install wrk)"
"$ENVOISMS_ROOT/scripts/citus.sh" --check || die "Citus is not installed in $PG_CONFIG (scripts/citus.sh)"
ensure_server_user

dir=$(mktemp -d /tmp/envoisms-bench-cluster.XXXXXX)
chmod 0777 "$dir"
SINGLE=$BASE; COORD=$((BASE + 1)); W1=$((BASE + 2)); W2=$((BASE + 3))
gateways=()
cleanup() {
    local p
    for p in "${gateways[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in $SINGLE $COORD $W1 $W2; do
        as_server_user pg_ctl -D "$dir/n$p" -m immediate stop >/dev/null 2>&1 || true
    done
    rm -rf "$dir"
}
trap cleanup EXIT

psql_at() { local p=$1; shift; as_server_user psql -X -q -v ON_ERROR_STOP=1 -h "$dir" -p "$p" -d envoisms "$@"; }

# node PORT PRELOAD: a scratch node (fsync on, defaults), envoisms workers as $WORKERS says
node() {
    local port=$1 preload=$2
    as_server_user initdb -D "$dir/n$port" -A trust -E UTF8 --locale=C.UTF-8 >/dev/null
    as_server_user bash -c "cat >> '$dir/n$port/postgresql.conf'" <<CONF
shared_preload_libraries = '$preload'
envoisms.database = 'envoisms'
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
port = $port
max_connections = 200
max_prepared_transactions = 100
wal_level = logical
citus.shard_count = 8
envoisms.sandbox_delivery_delay = 1h
include_if_exists = 'workers.conf'
CONF
    as_server_user bash -c "ulimit -n 65536 2>/dev/null || true; pg_ctl -D '$dir/n$port' -l '$dir/n$port.log' -w start" >/dev/null
    as_server_user psql -X -q -h "$dir" -p "$port" -d postgres -c 'CREATE DATABASE envoisms'
}
restart_without_workers() {
    local p
    for p in "$@"; do
        printf 'envoisms.dispatch_workers = 0\nenvoisms.webhook_workers = 0\nenvoisms.scheduler = off\n' |
            as_server_user tee "$dir/n$p/workers.conf" >/dev/null
        as_server_user bash -c "ulimit -n 65536 2>/dev/null || true; pg_ctl -D '$dir/n$p' -l '$dir/n$p.log' -m fast -w restart" >/dev/null
    done
}
keys_of() {   # keys_of PORT: 8 accounts, a sandbox key each, one per line
    psql_at "$1" -tA -c "SELECT envoisms.api_key_create(envoisms.account_create('Bench ' || g, 1000000), 'bench',
                                                        live => false, rate_limit => NULL)->>'api_key'
                           FROM generate_series(1, 8) g"
}
queue() {   # queue PORT N: N queued sandbox messages over the 8 accounts, in one statement
    psql_at "$1" -c "INSERT INTO envoisms.messages (account_id, message_id, to_number, channel, body, encoding, segments, sandbox)
                     SELECT a.account_id, envoisms.new_id('msg'), '+212612345678', 'sms', 'bench', 'gsm7', 1, true
                       FROM (SELECT account_id, row_number() OVER () AS r FROM envoisms.accounts) a,
                            generate_series(1, $2 / 8) g"
}
drain_rate() {   # drain_rate PORT N: messages/s from queued to sent
    local t0 t1 left
    t0=$(date +%s.%N)
    queue "$1" "$2"
    while :; do
        left=$(psql_at "$1" -tAc "SELECT count(*) FROM envoisms.messages WHERE status = 'queued'")
        [ "$left" = 0 ] && break
        sleep 0.2
    done
    t1=$(date +%s.%N)
    awk -v n="$2" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", n / (b - a) }'
}

say "a Citus cluster: coordinator $COORD and worker $W1 (dispatchers on every node)"
node "$COORD" citus,envoisms
node "$W1" citus,envoisms
psql_at "$COORD" -c 'CREATE EXTENSION citus' ; psql_at "$W1" -c 'CREATE EXTENSION citus'
psql_at "$COORD" -c "SELECT citus_set_coordinator_host('127.0.0.1', $COORD)" -c "SELECT citus_add_node('127.0.0.1', $W1)" >/dev/null
psql_at "$COORD" -c 'CREATE EXTENSION envoisms' -c 'SELECT count(*) FROM envoisms.distribute()' >/dev/null 2>&1
keys_of "$COORD" > "$dir/cluster.keys"

say "dispatch with one worker node: $MESSAGES sandbox messages"
rate1=$(drain_rate "$COORD" "$MESSAGES")

say "adding worker $W2 and rebalancing"
node "$W2" citus,envoisms
psql_at "$W2" -c 'CREATE EXTENSION citus'
psql_at "$COORD" -c "SELECT citus_add_node('127.0.0.1', $W2)" >/dev/null
t0=$(date +%s.%N)
psql_at "$COORD" -c 'SELECT citus_rebalance_start()' -c 'SELECT citus_rebalance_wait()' >/dev/null 2>&1
t1=$(date +%s.%N)
rebalance=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
moved=$(psql_at "$COORD" -tAc "SELECT count(*) FROM pg_dist_placement p JOIN pg_dist_shard s USING (shardid)
                                WHERE s.logicalrelid = 'envoisms.messages'::regclass
                                  AND p.groupid = (SELECT groupid FROM pg_dist_node WHERE nodeport = $W2)")
rows=$(psql_at "$COORD" -tAc "SELECT count(*) FROM envoisms.messages")

say "dispatch with two worker nodes: $MESSAGES sandbox messages"
rate2=$(drain_rate "$COORD" "$MESSAGES")

say "a single node on $SINGLE; every node restarted without background workers"
node "$SINGLE" envoisms
psql_at "$SINGLE" -c 'CREATE EXTENSION envoisms'
keys_of "$SINGLE" > "$dir/single.keys"
restart_without_workers "$SINGLE" "$COORD" "$W1" "$W2"

body='{"to": "+212612345678", "message": "Votre code de validation est 849204", "from": "MaBoutique"}'
for which in single cluster; do
    { echo 'keys = {'; sed 's/.*/  "&",/' "$dir/$which.keys"; echo '}'
      cat <<LUA
n = 0
wrk.method = "POST"
wrk.body = '$body'
wrk.headers["Content-Type"] = "application/json"
request = function()
  n = n + 1
  wrk.headers["Authorization"] = "Bearer " .. keys[(n % #keys) + 1]
  return wrk.format()
end
LUA
    } > "$dir/$which.lua"
done
start_gateway() {   # start_gateway HTTP_PORT PG_PORT
    as_server_user bash -c "ulimit -n 65536 2>/dev/null || true; exec '$GATEWAY' --listen 127.0.0.1:$1 \
        --db 'host=$dir port=$2 dbname=envoisms' --threads $(nproc)" 2> "$dir/gateway-$1.log" &
    gateways+=($!)
    for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$1/healthz" >/dev/null 2>&1 && return; sleep 0.1; done
    die "the gateway on $1 did not start: $(tail -2 "$dir/gateway-$1.log")"
}
start_gateway "$HTTP_SINGLE" "$SINGLE"
start_gateway "$HTTP_CLUSTER" "$COORD"
wrk_run() {   # wrk_run HTTP_PORT LUA: prints "rps p99_ms non2xx"
    wrk -t2 -c"$CLIENTS" -d"${SECONDS_PER_RUN}s" --latency -s "$2" "http://127.0.0.1:$1/v1/messages" > "$dir/wrk.out" 2>&1 ||
        { cat "$dir/wrk.out"; die "wrk failed"; }
    local rps p99 bad
    rps=$(sed -nE 's/^Requests\/sec: *([0-9.]+).*/\1/p' "$dir/wrk.out")
    p99=$(awk '$1 == "99%" { v = $2; if (v ~ /us$/) { sub(/us/, "", v); v /= 1000 } else if (v ~ /ms$/) { sub(/ms/, "", v) } else if (v ~ /s$/) { sub(/s/, "", v); v *= 1000 } printf "%.2f", v }' "$dir/wrk.out")
    bad=$(sed -nE 's/^ *Non-2xx or 3xx responses: *([0-9]+).*/\1/p' "$dir/wrk.out")
    echo "$rps $p99 ${bad:-0}"
}
rounds=
for r in $(seq 1 "$ROUNDS"); do
    say "round $r/$ROUNDS: wrk POST /v1/messages, single node then cluster (${SECONDS_PER_RUN}s each)"
    read -r s sp sb < <(wrk_run "$HTTP_SINGLE" "$dir/single.lua"); echo "$s $sp $sb" >> "$dir/single.rounds"
    read -r c cp cb < <(wrk_run "$HTTP_CLUSTER" "$dir/cluster.lua"); echo "$c $cp $cb" >> "$dir/cluster.rounds"
    rounds+=$(printf '  round %d: single %6.0f/s (p99 %s ms)  cluster %6.0f/s (p99 %s ms)  cluster/single %5.1f%%' \
              "$r" "$s" "$sp" "$c" "$cp" "$(awk -v x="$c" -v y="$s" 'BEGIN { print 100 * x / y }')")$'\n'
done
median() { sort -n -k1,1 "$1" | awk '{ v[NR] = $0 } END { print v[int((NR + 1) / 2)] }'; }
read -r s_rps s_p99 _ < <(median "$dir/single.rounds")
read -r c_rps c_p99 _ < <(median "$dir/cluster.rounds")
bad=$(cat "$dir"/*.rounds | awk '{ b += $3 } END { print b + 0 }')

key=$(head -1 "$dir/cluster.keys")
psql_at "$COORD" -c "SELECT envoisms.api('POST', '/v1/messages', '', '{\"Authorization\": \"Bearer $key\"}', '$body')" >/dev/null
remote=$(psql_at "$COORD" -c 'SET citus.log_remote_commands = on' -c 'SET client_min_messages = log' \
    -c "SELECT envoisms.api('POST', '/v1/messages', '', '{\"Authorization\": \"Bearer $key\"}', '$body')" 2>&1 >/dev/null |
    grep -c 'issuing ' || true)

echo
echo "envoisms on Citus, this machine ($(nproc) cores, all nodes on it), $(date -u +%Y-%m-%dT%H:%MZ)"
echo "dispatch, sandbox, queued -> sent ($MESSAGES messages, 1 dispatcher per node):"
printf '  one worker node   %6s msg/s\n  two worker nodes  %6s msg/s   (%s)\n' "$rate1" "$rate2" \
    "$(awk -v x="$rate2" -v y="$rate1" 'BEGIN { printf "%.2fx", x / y }')"
echo "rebalance onto the second worker: ${rebalance} s ($moved of 8 shard groups moved, $rows messages)"
echo "sends through the gateway ($CLIENTS connections, median of $ROUNDS rounds):"
printf '%s' "$rounds"
printf '  single node        %6.0f/s  p99 %s ms\n' "$s_rps" "$s_p99"
printf '  coordinator + 2    %6.0f/s  p99 %s ms   cluster/single %s\n' "$c_rps" "$c_p99" \
    "$(awk -v x="$c_rps" -v y="$s_rps" 'BEGIN { printf "%.1f%%", 100 * x / y }')"
echo "  non-2xx answers: $bad"
echo "remote commands per send on the coordinator: $remote"
