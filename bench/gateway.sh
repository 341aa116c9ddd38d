#!/usr/bin/env bash
# bench/gateway.sh — envoisms-gateway throughput against its baselines, all
# measured in this one run on a scratch cluster (fsync on, PostgreSQL
# defaults, envoisms preloaded):
#
#   raw     pgbench: one INSERT … RETURNING of a message-sized row
#   api     pgbench: SELECT … FROM envoisms.api('POST', '/v1/messages', …)
#   http    wrk: POST /v1/messages through the gateway
#   get     wrk: GET /v1/messages/:id through the gateway
#   health  wrk: GET /healthz (SELECT 1 through the pool)
#
# 32 clients / connections each, a sandbox key without rate limit. raw, api
# and http run in interleaved rounds (BENCH_ROUNDS, default 5), so that a
# slow minute of the machine (the raw insert's fsync varies run to run) hits
# all three alike; each figure is the median of its rounds, and every
# round's http/raw ratio is shown. Prints requests/s, p99 latency and the
# ratios http/raw and http/api, then where the CPU went during the HTTP send
# runs (gateway, postgres, wrk) and the gateway's own metrics.
# Usage: bench/gateway.sh [seconds per run, default 10]
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

SECONDS_PER_RUN=${1:-10}
ROUNDS=${BENCH_ROUNDS:-5}
CLIENTS=32
PORT=${ENVOISMS_BENCH_PGPORT:-55499}
HTTP_PORT=${ENVOISMS_BENCH_HTTP_PORT:-18099}
GATEWAY=${ENVOISMS_GATEWAY:-$ENVOISMS_ROOT/src/gateway/envoisms-gateway}
[ -x "$GATEWAY" ] || GATEWAY=$($PG_CONFIG --bindir)/envoisms-gateway
command -v wrk >/dev/null || die "wrk is missing (apt-get install wrk)"
ensure_server_user

dir=$(mktemp -d /tmp/envoisms-bench.XXXXXX)
chown "$ENVOISMS_USER" "$dir" 2>/dev/null || true
chmod 0777 "$dir"
gwpid=
# the pid of this run's gateway (not the runuser/bash around it; other gateways may run)
find_gateway() {
    local p
    for p in $(pgrep -f -- "--listen 127.0.0.1:$HTTP_PORT --db host=$dir "); do
        [ "$(cat "/proc/$p/comm" 2>/dev/null)" = envoisms-gatewa ] && echo "$p"
    done
}
cleanup() {
    gwpid=$(find_gateway | head -1)
    if [ -n "$gwpid" ]; then kill -TERM "$gwpid" 2>/dev/null || true; sleep 0.5; fi
    as_server_user pg_ctl -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap cleanup EXIT

say "scratch cluster in $dir (fsync on, defaults)"
as_server_user initdb -D "$dir/data" -A trust -E UTF8 --locale=C.UTF-8 >/dev/null
as_server_user bash -c "cat >> '$dir/data/postgresql.conf'" <<CONF
shared_preload_libraries = 'envoisms'
envoisms.database = 'envoisms'
listen_addresses = ''
unix_socket_directories = '$dir'
port = $PORT
max_connections = 200
# the request path alone: no worker claims what the benchmark queues
envoisms.dispatch_workers = 0
envoisms.webhook_workers = 0
envoisms.scheduler = off
CONF
as_server_user bash -c "ulimit -n 65536 2>/dev/null || true; pg_ctl -D '$dir/data' -l '$dir/server.log' -w start" >/dev/null
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h "$dir" -p "$PORT")
as_server_user "${PSQL[@]}" -d postgres -c 'CREATE DATABASE envoisms'
as_server_user "${PSQL[@]}" -d envoisms -c 'CREATE EXTENSION envoisms'
key=$(as_server_user "${PSQL[@]}" -d envoisms -tAc "
    SELECT envoisms.api_key_create(envoisms.account_create('Bench', 1000000), 'bench',
                                   live => false, rate_limit => NULL)->>'api_key'")
as_server_user "${PSQL[@]}" -d envoisms -c "
    CREATE TABLE bench_raw (
        message_id text PRIMARY KEY, account_id text NOT NULL, api_key_id text,
        to_number text NOT NULL, body text NOT NULL, sender_id text NOT NULL,
        channel text NOT NULL, status text NOT NULL, segments int NOT NULL,
        cost_mad numeric NOT NULL, cost_eur numeric NOT NULL, metadata jsonb,
        created_at timestamptz NOT NULL DEFAULT now())"

body='{"to": "+212612345678", "message": "Votre code de validation est 849204", "from": "MaBoutique"}'
cat > "$dir/raw.sql" <<SQL
INSERT INTO bench_raw (message_id, account_id, api_key_id, to_number, body, sender_id, channel, status, segments, cost_mad, cost_eur)
VALUES ('msg_' || md5(random()::text), 'acc_0123456789abcdef01234567', 'key_0123456789abcdef01234567', '+212612345678',
        'Votre code de validation est 849204', 'MaBoutique', 'sms', 'queued', 1, 0.31, 0.028)
RETURNING message_id, created_at;
SQL
cat > "$dir/api.sql" <<SQL
SELECT status, headers::text, body::text FROM envoisms.api('POST', '/v1/messages', '',
    '{"Authorization": "Bearer $key", "Content-Type": "application/json"}'::jsonb,
    '$body', '127.0.0.1'::inet);
SQL
chmod 0644 "$dir"/*.sql

# pgbench_run NAME SCRIPT: prints "tps p99_ms"
pgbench_run() {
    local name=$1 script=$2
    (cd "$dir" && as_server_user pgbench -n -h "$dir" -p "$PORT" -M prepared -c "$CLIENTS" -j 2 \
        -T "$SECONDS_PER_RUN" -l --log-prefix="$dir/$name" -f "$script" envoisms > "$dir/$name.out" 2>&1) ||
        { cat "$dir/$name.out"; die "pgbench $name failed"; }
    local tps p99
    tps=$(sed -nE 's/^tps = ([0-9.]+).*/\1/p' "$dir/$name.out" | head -1)
    p99=$(cat "$dir/$name".* 2>/dev/null | awk '{ print $3 }' | sort -n |
          awk '{ a[NR] = $1 } END { if (NR) printf "%.2f", a[int(NR * 0.99)] / 1000; else print "?" }')
    echo "$tps $p99"
}

# wrk_run NAME URL [LUA]: prints "rps p99_ms non2xx"
wrk_run() {
    local name=$1 url=$2 lua=${3:-}
    wrk -t2 -c"$CLIENTS" -d"${SECONDS_PER_RUN}s" --latency ${lua:+-s "$lua"} "$url" > "$dir/$name.out" 2>&1 ||
        { cat "$dir/$name.out"; die "wrk $name failed"; }
    local rps p99 bad
    rps=$(sed -nE 's/^Requests\/sec: *([0-9.]+).*/\1/p' "$dir/$name.out")
    p99=$(awk '$1 == "99%" { v = $2; if (v ~ /us$/) { sub(/us/, "", v); v /= 1000 } else if (v ~ /ms$/) { sub(/ms/, "", v) } else if (v ~ /s$/) { sub(/s/, "", v); v *= 1000 } printf "%.2f", v }' "$dir/$name.out")
    bad=$(sed -nE 's/^ *Non-2xx or 3xx responses: *([0-9]+).*/\1/p' "$dir/$name.out")
    echo "$rps $p99 ${bad:-0}"
}

cat > "$dir/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '$body'
wrk.headers["Authorization"] = "Bearer $key"
wrk.headers["Content-Type"] = "application/json"
LUA
cat > "$dir/get.lua" <<LUA
wrk.headers["Authorization"] = "Bearer $key"
LUA

cpu_of() {   # cpu_of PID...: user+system clock ticks of these processes
    local total=0 p
    for p in "$@"; do
        [ -r "/proc/$p/stat" ] || continue
        total=$((total + $(awk '{ print $14 + $15 }' "/proc/$p/stat")))
    done
    echo "$total"
}
# "pid ticks" of every live postgres process of the scratch cluster
pg_ticks() {   # this cluster only: its postmaster and the postmaster's children
    local p pm
    pm=$(head -1 "$dir/data/postmaster.pid")
    for p in $pm $(pgrep -P "$pm"); do
        [ -r "/proc/$p/stat" ] && tr -d '()' < "/proc/$p/stat" | awk -v p="$p" '$2 == "postgres" { print p, $14 + $15 }'
    done
}
# CPU ticks used between two pg_ticks samples: a process of both samples
# counts its growth, one born in between (a pool connection opened by the
# run) counts all its ticks
pg_delta() { awk 'NR == FNR { a[$1] = $2; next } { d += ($1 in a) ? $2 - a[$1] : $2 } END { print d + 0 }' "$1" "$2"; }
busy_ticks() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }

echo "load average before the runs: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs"

# the gateway as a user gets it: its default pool unless ENVOISMS_BENCH_POOL says otherwise
say "starting the gateway (${ENVOISMS_BENCH_THREADS:-$(nproc)} I/O threads, pool ${ENVOISMS_BENCH_POOL:-default})"
as_server_user bash -c "ulimit -n 65536 2>/dev/null || true; exec '$GATEWAY' --listen 127.0.0.1:$HTTP_PORT \
    --db 'host=$dir port=$PORT dbname=envoisms' --threads ${ENVOISMS_BENCH_THREADS:-$(nproc)} \
    ${ENVOISMS_BENCH_POOL:+--pool $ENVOISMS_BENCH_POOL}" 2> "$dir/gateway.log" &
for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$HTTP_PORT/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
gwpid=$(find_gateway | head -1)
[ -n "$gwpid" ] || die "the gateway did not start: $(tail -2 "$dir/gateway.log")"
msg=
for _ in $(seq 1 20); do
    msg=$(curl -sS -X POST "http://127.0.0.1:$HTTP_PORT/v1/messages" -H "Authorization: Bearer $key" \
          -H 'Content-Type: application/json' -d "$body" | sed -nE 's/.*"id": "(msg_[^"]+)".*/\1/p')
    [ -n "$msg" ] && break
    sleep 0.5
done
[ -n "$msg" ] || { grep -v '"method"' "$dir/gateway.log" | tail -5; die "the gateway did not send a message"; }

# interleaved rounds; the CPU figures add up the HTTP send runs
gw_ticks=0; pg_ticks_sum=0; all_ticks=0; http_secs=0; http_reqs=0; http_bad=0
rounds_table=
for r in $(seq 1 "$ROUNDS"); do
    say "round $r/$ROUNDS: raw pgbench INSERT … RETURNING, pgbench envoisms.api, wrk POST /v1/messages ($CLIENTS clients, ${SECONDS_PER_RUN}s each)"
    read -r t p < <(pgbench_run "raw$r" "$dir/raw.sql"); echo "$t $p" >> "$dir/raw.rounds"
    read -r a ap < <(pgbench_run "api$r" "$dir/api.sql"); echo "$a $ap" >> "$dir/api.rounds"
    gw0=$(cpu_of "$gwpid"); pg_ticks > "$dir/pg0"; all0=$(busy_ticks); t0=$(date +%s.%N)
    read -r h hp hb < <(wrk_run "http$r" "http://127.0.0.1:$HTTP_PORT/v1/messages" "$dir/post.lua")
    gw1=$(cpu_of "$gwpid"); pg_ticks > "$dir/pg1"; all1=$(busy_ticks); t1=$(date +%s.%N)
    echo "$h $hp" >> "$dir/http.rounds"
    gw_ticks=$((gw_ticks + gw1 - gw0)); pg_ticks_sum=$((pg_ticks_sum + $(pg_delta "$dir/pg0" "$dir/pg1")))
    all_ticks=$((all_ticks + all1 - all0)); http_bad=$((http_bad + hb))
    http_secs=$(awk -v a="$http_secs" -v b="$t0" -v c="$t1" 'BEGIN { printf "%.3f", a + c - b }')
    http_reqs=$(awk -v a="$http_reqs" -v h="$h" -v b="$t0" -v c="$t1" 'BEGIN { printf "%.0f", a + h * (c - b) }')
    rounds_table+=$(printf '  round %d: raw %6.0f  api %5.0f  http %5.0f   http/raw %5.1f%%  api/raw %5.1f%%' \
                    "$r" "$t" "$a" "$h" "$(awk -v x="$h" -v y="$t" 'BEGIN { print 100 * x / y }')" \
                    "$(awk -v x="$a" -v y="$t" 'BEGIN { print 100 * x / y }')")$'\n'
done
median() { sort -n -k1,1 "$1" | awk '{ v[NR] = $0 } END { print v[int((NR + 1) / 2)] }'; }
read -r raw_tps raw_p99 < <(median "$dir/raw.rounds")
read -r api_tps api_p99 < <(median "$dir/api.rounds")
read -r http_rps http_p99 < <(median "$dir/http.rounds")
say "wrk: GET /v1/messages/$msg"
read -r get_rps get_p99 get_bad < <(wrk_run get "http://127.0.0.1:$HTTP_PORT/v1/messages/$msg" "$dir/get.lua")
say "wrk: GET /healthz"
read -r hz_rps hz_p99 hz_bad < <(wrk_run health "http://127.0.0.1:$HTTP_PORT/healthz")

hz=$(getconf CLK_TCK)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.1f%%", 100 * a / b; else print "?" }'; }
echo
echo "envoisms-gateway benchmark — $(nproc) CPUs, $CLIENTS clients, ${SECONDS_PER_RUN}s per run, fsync on"
printf '%-44s %12s %10s %8s\n' "run" "req/s" "p99 ms" "non-2xx"
printf '%-44s %12.0f %10s %8s\n' "raw pgbench INSERT … RETURNING" "$raw_tps" "$raw_p99" "-"
printf '%-44s %12.0f %10s %8s\n' "pgbench envoisms.api POST /v1/messages" "$api_tps" "$api_p99" "-"
printf '%-44s %12.0f %10s %8s\n' "wrk POST /v1/messages (gateway)" "$http_rps" "$http_p99" "$http_bad"
printf '%-44s %12.0f %10s %8s\n' "wrk GET /v1/messages/:id (gateway)" "$get_rps" "$get_p99" "$get_bad"
printf '%-44s %12.0f %10s %8s\n' "wrk GET /healthz (gateway)" "$hz_rps" "$hz_p99" "$hz_bad"
echo
echo "HTTP send vs raw insert        : $(ratio "$http_rps" "$raw_tps")   (target >= 35%)"
echo "HTTP send vs envoisms.api (SQL): $(ratio "$http_rps" "$api_tps")   (target: lose < 15%)"
echo "envoisms.api vs raw insert     : $(ratio "$api_tps" "$raw_tps")"
echo "(medians of $ROUNDS interleaved rounds:)"
printf '%s' "$rounds_table"
echo
awk -v g="$gw_ticks" -v p="$pg_ticks_sum" -v all="$all_ticks" -v hz="$hz" \
    -v wall="$http_secs" -v n="$(nproc)" -v reqs="$http_reqs" 'BEGIN {
    cap = wall * n
    printf "CPU during the HTTP send runs (%.1f s x %d CPUs = %.1f CPU-s; machine busy %.0f%%):\n", wall, n, cap, 100 * all / hz / cap
    printf "  envoisms-gateway        : %6.1f CPU-s (%4.1f%%)  %.0f us per request\n", g / hz, 100 * g / hz / cap, (reqs > 0 ? 1e6 * g / hz / reqs : 0)
    printf "  postgres (backends, WAL writer, envoisms workers): %6.1f CPU-s (%4.1f%%)  %.0f us per request\n", p / hz, 100 * p / hz / cap, (reqs > 0 ? 1e6 * p / hz / reqs : 0)
    printf "  everything else (wrk, kernel, other users of the machine): %6.1f CPU-s (%4.1f%%)\n", (all - g - p) / hz, 100 * (all - g - p) / hz / cap
}'
echo
echo "latency distributions (wrk):"
for n in http$ROUNDS get health; do
    printf '  %-7s %s\n' "$n" "$(awk '/Latency Distribution/ { on = 1; next } on && NF == 2 { printf "%s=%s  ", $1, $2 } on && NF != 2 { on = 0 }' "$dir/$n.out")"
done
echo
echo "time inside the gateway (access log: request line read -> response sent), p50 / p99 / max ms:"
sed -nE 's/.*"method":"([A-Z]+)","route":"([^"]+)","status":([0-9]+),"duration_ms":([0-9.]+).*/\1 \2 \4/p' "$dir/gateway.log" |
    sort -k1,2 -k3,3n | awk '
        function flush() { if (n) printf "  %-6s %-22s n=%-7d %8.2f %8.2f %8.2f\n", m, r, n, v[int(n * 0.5) + 1], v[int(n * 0.99) + 1], v[n] }
        $1 != m || $2 != r { flush(); m = $1; r = $2; n = 0 }
        { v[++n] = $3 }
        END { flush() }'
echo
if grep -q '"level":"error"' "$dir/gateway.log"; then
    echo "gateway errors (count, message):"
    grep '"level":"error"' "$dir/gateway.log" | sed -E 's/.*"message":"(.{0,110}).*/\1/' | sort | uniq -c | sort -rn | head -5 | sed 's/^/  /'
    echo
fi
echo "gateway metrics after the runs:"
curl -fsS "http://127.0.0.1:$HTTP_PORT/metrics" |
    grep -E '^envoisms_gateway_(requests_total|request_duration_seconds_(sum|count)|db_errors_total|db_connects_total|pool_)' |
    grep -v ' 0$' | sed 's/^/  /'
if [ "${ENVOISMS_BENCH_PERF:-1}" = 1 ] && command -v perf >/dev/null; then
    echo
    echo "perf: top symbols of the gateway during a 5 s POST run"
    ( wrk -t2 -c"$CLIENTS" -d7s -s "$dir/post.lua" "http://127.0.0.1:$HTTP_PORT/v1/messages" >/dev/null 2>&1 & )
    sleep 1
    if perf record -q -o "$dir/perf.data" -p "$gwpid" -- sleep 5 >/dev/null 2>&1; then
        perf report -q -i "$dir/perf.data" --no-children -g none --sort dso,symbol 2>/dev/null |
            grep -v '^$' | head -15 | sed 's/^/  /'
    else
        echo "  (perf record not permitted here)"
    fi
    sleep 2
fi
