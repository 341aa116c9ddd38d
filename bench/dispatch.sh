#!/usr/bin/env bash
# bench/dispatch.sh — the dispatcher end to end, on a scratch cluster with
# PostgreSQL's defaults (fsync on):
#   http:    N live messages queued (bulk) to a loopback HTTP carrier
#            (test/peers/carrier_peer.js, fixed JSON reply, no logging);
#            messages/s from the first queued to the last recorded 'sent';
#   ceiling: the same carrier driven directly by wrk (64 connections, the
#            same JSON POST), in the same run;
#   sandbox: N sandbox messages, queued → delivered per second
#            (envoisms.sandbox_delivery_delay = 0).
# Not part of the test suite. Run as root or a sudo user after the extension
# is installed. BENCH_MESSAGES=50000 by default.
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
N=${BENCH_MESSAGES:-50000}
PORT=${BENCH_PORT:-55497}
CARRIER_PORT=${BENCH_CARRIER_PORT:-18597}
dir=$(as_root mktemp -d /tmp/envoisms-bench-dispatch.XXXXXX)
as_root chown "$ENVOISMS_USER" "$dir"
carrier_pid=
cleanup() {
    [ -n "$carrier_pid" ] && as_root kill "$carrier_pid" 2>/dev/null || true
    as_server_user pg_ctl -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
    as_root rm -rf "$dir"
}
trap cleanup EXIT

as_server_user initdb -D "$dir/data" -A trust -E UTF8 --locale=C.UTF-8 >/dev/null
as_server_user bash -c "cat >> '$dir/data/postgresql.conf'" <<CONF
shared_preload_libraries = 'envoisms'
envoisms.database = 'postgres'
envoisms.dispatch_workers = ${BENCH_DISPATCHERS:-2}
envoisms.dispatch_batch_size = 1000
envoisms.dispatch_max_in_flight = 2000
envoisms.carrier_max_connections = 512
envoisms.sandbox_delivery_delay = 0
envoisms.webhook_workers = 0
port = $PORT
listen_addresses = ''
unix_socket_directories = '$dir'
CONF
as_server_user bash -c "ulimit -n 65536 2>/dev/null || true; pg_ctl -D '$dir/data' -l '$dir/log' -w start" >/dev/null
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h "$dir" -p "$PORT" -d postgres)

as_server_user bash -c "node '$ENVOISMS_ROOT/test/peers/carrier_peer.js' --port $CARRIER_PORT > '$dir/carrier.out' 2>&1 & echo \$! > '$dir/carrier.pid'"
carrier_pid=$(cat "$dir/carrier.pid")
for _ in $(seq 50); do grep -q listening "$dir/carrier.out" 2>/dev/null && break; sleep 0.1; done

# ceiling: wrk against the carrier
cat > "$dir/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"id":"msg_01a212bfa0faca88478982fdfa98","to":"+212612345678","from":"ENVOISMS","body":"Votre code est 849204","channel":"sms","encoding":"gsm7","segments":1,"metadata":null,"buttons":null}'
LUA
ceiling=$(wrk -t2 -c64 -d5s -s "$dir/post.lua" "http://127.0.0.1:$CARRIER_PORT/send" | sed -nE 's/^Requests\/sec: *([0-9.]+).*/\1/p')

as_server_user "${PSQL[@]}" >/dev/null <<SQL
CREATE EXTENSION envoisms;
INSERT INTO envoisms.carriers (carrier_id, kind, config) VALUES ('peer', 'http', '{"url": "http://127.0.0.1:$CARRIER_PORT/send"}');
INSERT INTO envoisms.routes (channel, prefix, carrier_id, priority) VALUES ('sms', '', 'peer', 0);
SQL
sleep 2   # the workers find the extension
acc=$(as_server_user "${PSQL[@]}" -tAc "SELECT envoisms.account_create('bench', 100000000)")

run() {   # run SANDBOX(true|false) FINAL_STATUS → prints "seconds"
    local sandbox=$1 final=$2 tag=$3
    as_server_user "${PSQL[@]}" -tA <<SQL
DO \$\$
BEGIN
    FOR i IN 0 .. ($N - 1) / 10000 LOOP
        PERFORM envoisms.message_send_bulk('$acc',
            (SELECT jsonb_agg(jsonb_build_object('to', '+2126' || (10000001 + 10 * g), 'message', '$tag ' || g))
               FROM generate_series(i * 10000 + 1, least($N, (i + 1) * 10000)) g), sandbox => $sandbox);
        COMMIT;
    END LOOP;
END \$\$;
SQL
    for _ in $(seq 600); do
        n=$(as_server_user "${PSQL[@]}" -tAc "SELECT count(*) FROM envoisms.messages WHERE body LIKE '$tag %' AND status = '$final'")
        [ "$n" -ge "$N" ] && break
        sleep 0.5
    done
    as_server_user "${PSQL[@]}" -tAc "SELECT round(extract(epoch FROM max(coalesce(${final}_at, updated_at)) - min(created_at)), 3)
                                        FROM envoisms.messages WHERE body LIKE '$tag %'"
}

secs=$(run false sent http)
rate=$(echo "$N / $secs" | bc -l)
echo "dispatch to a loopback HTTP carrier: $N messages queued -> sent in ${secs}s = $(printf '%.0f' "$rate") msg/s"
echo "the same carrier driven by wrk (64 connections, 5 s):      $(printf '%.0f' "$ceiling") req/s (ceiling)"
echo "dispatcher / ceiling: $(printf '%.1f' "$(echo "100 * $rate / $ceiling" | bc -l)")%   (goal >= 2000 msg/s, aim >= 5000)"

secs=$(run true delivered sbx)
echo "sandbox: $N messages queued -> delivered in ${secs}s = $(printf '%.0f' "$(echo "$N / $secs" | bc -l)") msg/s"
as_server_user "${PSQL[@]}" -tAc "SELECT 'books exact after the run: ' || bool_and(ok) FROM envoisms.balance_check()"
as_server_user "${PSQL[@]}" -c "SELECT worker, claimed, sent, failed, retried, last_error FROM envoisms.worker_stats WHERE kind = 'dispatcher'"
