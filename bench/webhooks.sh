#!/usr/bin/env bash
# bench/webhooks.sh — webhook deliveries per second to a loopback receiver
# (test/peers/webhook_receiver.js, which verifies both signatures of every
# request), on a scratch cluster with PostgreSQL's defaults (fsync on), with
# the receiver driven directly by wrk in the same run as the ceiling.
# N deliveries are queued over 4 webhooks (4 customers; each capped at
# envoisms.webhook_max_per_endpoint in flight), timed from queued to the
# last recorded 'delivered' (from the commit that queued them). Not part of the test suite. BENCH_DELIVERIES=20000.
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
N=${BENCH_DELIVERIES:-20000}
PORT=${BENCH_PORT:-55496}
RECEIVER_PORT=${BENCH_RECEIVER_PORT:-18596}
SECRET=whsec_c2VjcmV0LWtleS1mb3ItdGVzdHMtMTIzNDU2Nzg5MA==
dir=$(as_root mktemp -d /tmp/envoisms-bench-webhooks.XXXXXX)
as_root chown "$ENVOISMS_USER" "$dir"
cleanup() {
    [ -f "$dir/receiver.pid" ] && as_root kill "$(cat "$dir/receiver.pid")" 2>/dev/null || true
    as_server_user pg_ctl -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
    as_root rm -rf "$dir"
}
trap cleanup EXIT

as_server_user initdb -D "$dir/data" -A trust -E UTF8 --locale=C.UTF-8 >/dev/null
as_server_user bash -c "cat >> '$dir/data/postgresql.conf'" <<CONF
shared_preload_libraries = 'envoisms'
envoisms.database = 'postgres'
envoisms.dispatch_workers = 0
envoisms.webhook_batch_size = 1000
envoisms.webhook_max_in_flight = 1024
envoisms.webhook_max_per_endpoint = ${BENCH_PER_ENDPOINT:-64}
envoisms.webhook_allow_private = on
envoisms.webhook_allow_http = on
port = $PORT
listen_addresses = ''
unix_socket_directories = '$dir'
CONF
as_server_user bash -c "ulimit -n 65536 2>/dev/null || true; pg_ctl -D '$dir/data' -l '$dir/log' -w start" >/dev/null
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h "$dir" -p "$PORT" -d postgres)

as_server_user bash -c "node '$ENVOISMS_ROOT/test/peers/webhook_receiver.js' --port $RECEIVER_PORT --secret '$SECRET' > '$dir/receiver.out' 2>&1 & echo \$! > '$dir/receiver.pid'"
for _ in $(seq 50); do grep -q listening "$dir/receiver.out" 2>/dev/null && break; sleep 0.1; done

# ceiling: wrk posting a signed-looking event (the receiver verifies, fails, answers 200 anyway)
cat > "$dir/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-EnvoiSMS.ma-Signature"] = "sha256=0000000000000000000000000000000000000000000000000000000000000000"
wrk.headers["webhook-id"] = "evt_01a212bfa0faca88478982fdfa98"
wrk.headers["webhook-timestamp"] = "1700000000"
wrk.headers["webhook-signature"] = "v1,AAAA"
wrk.body = '{"id":"evt_01a212bfa0faca88478982fdfa98","type":"message.delivered","created_at":"2026-11-25T12:00:00Z","data":{"id":"msg_01a212bfa0faca88478982fdfa98","to":"+212612345678","status":"delivered","metadata":{"order":"A-1"}}}'
LUA
ceiling=$(wrk -t2 -c64 -d5s -s "$dir/post.lua" "http://127.0.0.1:$RECEIVER_PORT/hook" | sed -nE 's/^Requests\/sec: *([0-9.]+).*/\1/p')

as_server_user "${PSQL[@]}" -c "CREATE EXTENSION envoisms" >/dev/null
sleep 2
acc=$(as_server_user "${PSQL[@]}" -tAc "SELECT envoisms.account_create('bench', 0)")
for i in 1 2 3 4; do
    as_server_user "${PSQL[@]}" -tAc "SELECT envoisms.webhook_create('$acc', 'http://127.0.0.1:$RECEIVER_PORT/hook$i', secret => '$SECRET')" >/dev/null
done
as_server_user "${PSQL[@]}" -tA >/dev/null <<SQL
SELECT envoisms.webhook_enqueue('$acc', 'message.delivered',
         jsonb_build_object('id', 'msg_' || g, 'to', '+212612345678', 'status', 'delivered', 'metadata', jsonb_build_object('n', g)),
         w.webhook_id)
  FROM generate_series(1, $N / 4) g, envoisms.webhooks w;
SQL
t0=$(as_server_user "${PSQL[@]}" -tAc "SELECT clock_timestamp()")   # queued and committed
for _ in $(seq 600); do
    n=$(as_server_user "${PSQL[@]}" -tAc "SELECT count(*) FROM envoisms.webhook_deliveries WHERE status = 'pending'")
    [ "$n" -eq 0 ] && break
    sleep 0.5
done
read -r delivered secs < <(as_server_user "${PSQL[@]}" -tAc "SELECT count(*) FILTER (WHERE status = 'delivered'),
                                   round(extract(epoch FROM max(delivered_at) - '$t0'), 3) FROM envoisms.webhook_deliveries" | tr '|' ' ')
rate=$(echo "$delivered / $secs" | bc -l)
echo "webhooks: $delivered of $N deliveries (4 endpoints, both signatures) in ${secs}s = $(printf '%.0f' "$rate") deliveries/s   (aim >= 3000)"
echo "the receiver driven by wrk (64 connections, 5 s): $(printf '%.0f' "$ceiling") req/s (ceiling)"
as_server_user "${PSQL[@]}" -c "SELECT worker, claimed, sent, failed, retried, last_error FROM envoisms.worker_stats WHERE kind = 'webhooks'"
