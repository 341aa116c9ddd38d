#!/usr/bin/env bash
# bench/console.sh — server time of each console endpoint with 1,000,000
# messages in the account (BENCH_MESSAGES), p50 and p95 over BENCH_CALLS
# calls of envoisms.api(...) each (pgbench, one client, per-call latency
# log), beside a baseline measured in the same run: GET /v1/billing/balance
# with a Bearer key, the API's cheapest authenticated route. Then:
#   - EXPLAIN of what the overview reads (no scan of messages), and
#   - the cost of the rollup trigger on a message's change of status:
#     dispatch_sent() of queued messages with the trigger on and off,
#     interleaved rounds, tps and ratio.
#
# Not part of the test suite. Run as root or as a sudo user after
# ./scripts/test.sh (or ./scripts/run.sh) installed the extension, with
# ENVOISMS_PGBIN for a private PostgreSQL. Scratch cluster, PostgreSQL's
# defaults (fsync on), workers off.
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
N=${BENCH_MESSAGES:-1000000}
CALLS=${BENCH_CALLS:-200}
SECS=${BENCH_SECONDS:-30}
PORT=${BENCH_PORT:-55498}
dir=$(as_root mktemp -d /tmp/envoisms-bench.XXXXXX)
as_root chown "$ENVOISMS_USER" "$dir"
cleanup() { as_server_user pg_ctl -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true; as_root rm -rf "$dir"; }
trap cleanup EXIT

as_server_user initdb -D "$dir/data" -A trust -E UTF8 --locale=C.UTF-8 >/dev/null
as_server_user bash -c "cat >> '$dir/data/postgresql.conf'" <<CONF
shared_preload_libraries = 'envoisms'
port = $PORT
listen_addresses = ''
unix_socket_directories = '$dir'
envoisms.dispatch_workers = 0
envoisms.webhook_workers = 0
envoisms.scheduler = off
CONF
as_server_user bash -c "ulimit -n 65536 2>/dev/null || true; pg_ctl -D '$dir/data' -l '$dir/log' -w start" >/dev/null
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h "$dir" -p "$PORT" -d postgres)
sql() { as_server_user "${PSQL[@]}" -tAc "$1"; }

sql "CREATE EXTENSION envoisms" >/dev/null
acc=$(sql "SELECT envoisms.account_create('bench', 1000000)")
key=$(sql "SELECT envoisms.api_key_create('$acc', 'bench', true, rate_limit => NULL)->>'api_key'")
sql "SELECT envoisms.console_user_create('$acc', 'bench@acme.ma', 'bench password 1', 'owner', 'Bench', NULL, true)" >/dev/null
# the bench calls faster than a person clicks: no session rate limit
sql "INSERT INTO envoisms.console_settings (name, value) VALUES ('session_rate_limit', '0')" >/dev/null

# ---- 1M messages over 30 days: 85% delivered, 6% failed, 4% sent, 5% expired,
# and 1,000 still queued; numbers across IAM, Inwi and Orange; every 50th
# message in one of 20 campaigns. Written directly (a send would take hours
# here), then the rollups rebuilt from them as the upgrade does.
say "loading $N messages"
t0=$(date +%s)
sql "
INSERT INTO envoisms.messages (account_id, message_id, to_number, channel, body, encoding, segments, status,
                               cost_mad, cost_eur, charged_mad, refunded_mad, created_at, sent_at, delivered_at,
                               next_attempt_at, campaign_id, metadata)
SELECT '$acc', 'msg_' || lpad(to_hex((extract(epoch FROM c) * 1000)::bigint), 12, '0') || lpad(to_hex(i), 16, '0'),
       '+2126' || (ARRAY['61', '00', '12', '66', '70'])[1 + i % 5] || lpad((i % 999983)::text, 6, '0'),
       CASE WHEN i % 10 = 0 THEN 'whatsapp' ELSE 'sms' END, 'Bonjour, votre commande ' || i || ' est en route',
       'gsm7', 1, s, 0.31, 0.028, 0.31, CASE WHEN s IN ('failed', 'expired') THEN 0.31 ELSE 0 END,
       c, CASE WHEN s <> 'queued' THEN c + interval '1 second' END,
       CASE WHEN s = 'delivered' THEN c + make_interval(secs => 2 + i % 40) END,
       c, CASE WHEN i % 50 = 0 THEN 'cmp_bench' || ((i / 50) % 20) END, NULL
  FROM (SELECT i, now() - make_interval(secs => (i::float8 * 2592000 / $N)) AS c,
               CASE WHEN i <= 1000 THEN 'queued' WHEN i % 100 < 85 THEN 'delivered' WHEN i % 100 < 91 THEN 'failed'
                    WHEN i % 100 < 95 THEN 'sent' ELSE 'expired' END AS s
          FROM generate_series(1, $N) i) g;
ANALYZE envoisms.messages;" >/dev/null
sql "VACUUM ANALYZE envoisms.messages" >/dev/null   # the visibility map autovacuum keeps
counted=$(sql "SELECT envoisms.console_rollup_rebuild('$acc')")
say "loaded in $(( $(date +%s) - t0 )) s; rollups rebuilt from $counted messages"
# a webhook with 2,000 deliveries, 90 OTP sessions, 20 invoices, a campaign of 1,000 messages
sql "
INSERT INTO envoisms.webhooks (account_id, webhook_id, url, events, secret)
VALUES ('$acc', 'whk_bench', 'https://hooks.acme.ma/in', '{message.delivered}', 'secret');
INSERT INTO envoisms.webhook_deliveries (account_id, webhook_id, event_id, event_type, payload, status, attempts, last_status)
SELECT '$acc', 'whk_bench', 'evt_' || i, 'message.delivered', '{}', CASE WHEN i % 10 = 0 THEN 'failed' ELSE 'delivered' END, 1, 200
  FROM generate_series(1, 2000) i;
INSERT INTO envoisms.billing_settings (name, value) VALUES ('bank_transfer_details', '{\"rib\": \"190\"}');
SELECT envoisms.topup_confirm(envoisms.topup_create('$acc', 'bank_transfer', 100 + i)->>'id') FROM generate_series(1, 20) i;
SELECT count(envoisms.verify_send('$acc', '+212661' || i || '1234', sandbox => true)) FROM generate_series(10, 99) i;
SELECT envoisms.contact_list_create('$acc', 'Bench') IS NOT NULL;
UPDATE envoisms.messages SET campaign_id = (SELECT envoisms.campaign_create('$acc', 'Bench', 'Bonjour',
           list_id => (SELECT list_id FROM envoisms.contact_lists WHERE account_id = '$acc' LIMIT 1))->>'id')
 WHERE account_id = '$acc' AND campaign_id = 'cmp_bench7';
ANALYZE;" >/dev/null

# ---- the session: a sign-in through envoisms.api, its cookie and CSRF token
read -r cookie csrf < <(sql "SELECT substring(r.headers->>'Set-Cookie', 'envoisms_session=([0-9a-f]{64})') || ' ' || (r.body->>'csrf_token')
                               FROM envoisms.api('POST', '/v1/console/sign-in', '', '{}',
                                                 '{\"email\": \"bench@acme.ma\", \"password\": \"bench password 1\"}', '10.0.0.1') r")
hdr="{\"Cookie\": \"envoisms_session=$cookie\", \"X-CSRF-Token\": \"$csrf\"}"
cmp=$(sql "SELECT campaign_id FROM envoisms.campaigns WHERE account_id = '$acc' LIMIT 1")
msg=$(sql "SELECT message_id FROM envoisms.messages WHERE account_id = '$acc' ORDER BY message_id DESC LIMIT 1 OFFSET 5000")
inv=$(sql "SELECT invoice_id FROM envoisms.console_invoices WHERE account_id = '$acc' LIMIT 1")
to=$(sql "SELECT to_number FROM envoisms.messages WHERE account_id = '$acc' AND message_id = '$msg'")

# one pgbench script per endpoint: name|method|path|query|headers
endpoints=(
    "baseline: GET /v1/billing/balance (Bearer key)|GET|/v1/billing/balance||{\"Authorization\": \"Bearer $key\"}"
    "GET /v1/billing/balance (session)|GET|/v1/billing/balance||$hdr"
    "GET /v1/console/session|GET|/v1/console/session||$hdr"
    "GET /v1/console/overview?days=30|GET|/v1/console/overview|days=30|$hdr"
    "GET /v1/console/overview?days=90|GET|/v1/console/overview|days=90|$hdr"
    "GET /v1/messages (page 1, 50)|GET|/v1/messages||$hdr"
    "GET /v1/messages?status=failed&channel=sms|GET|/v1/messages|status=failed&channel=sms|$hdr"
    "GET /v1/messages?to=…|GET|/v1/messages|to=${to/+/%2B}|$hdr"
    "GET /v1/messages?campaign_id=…|GET|/v1/messages|campaign_id=$cmp|$hdr"
    "GET /v1/messages/:id|GET|/v1/messages/$msg||$hdr"
    "GET /v1/console/messages/export?limit=1000|GET|/v1/console/messages/export|limit=1000|$hdr"
    "GET /v1/console/webhooks/:id/deliveries|GET|/v1/console/webhooks/whk_bench/deliveries||$hdr"
    "GET /v1/console/verifications|GET|/v1/console/verifications||$hdr"
    "GET /v1/console/campaigns/:id/progress|GET|/v1/console/campaigns/$cmp/progress||$hdr"
    "GET /v1/console/invoices|GET|/v1/console/invoices||$hdr"
    "GET /v1/console/invoices/:id|GET|/v1/console/invoices/$inv||$hdr"
    "GET /v1/console/ledger|GET|/v1/console/ledger||$hdr"
    "GET /v1/console/account|GET|/v1/console/account||$hdr"
    "GET /v1/console/users|GET|/v1/console/users||$hdr"
    "GET /v1/console/operator/accounts|GET|/v1/console/operator/accounts||$hdr"
    "GET /v1/console/operator/workers|GET|/v1/console/operator/workers||$hdr"
    "GET /v1/console/operator/dead-letters|GET|/v1/console/operator/dead-letters||$hdr"
)
# p50 and p95 (ms) of CALLS calls of one script, from pgbench's per-call log
latency() {   # latency SCRIPT CALLS
    as_server_user bash -c "cd '$dir' && rm -f lat.* && pgbench -n -M prepared -h '$dir' -p $PORT -c 1 -t $2 -l --log-prefix=lat -f '$1' postgres >/dev/null 2>&1; cat lat.*" |
        awk '{ print $3 / 1000 }' | sort -n | awk '{ v[NR] = $1 } END { if (NR) printf "%.2f %.2f\n", v[int(NR * 0.5 + 0.5)], v[int(NR * 0.95 + 0.5)]; else print "- -" }'
}
echo
echo "server time per console endpoint, $N messages in the account, one client, $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-52s %8s %8s %10s\n' endpoint p50_ms p95_ms p95/base
base=
for e in "${endpoints[@]}"; do
    IFS='|' read -r name method path query headers <<< "$e"
    f="$dir/ep.sql"
    printf "SELECT status FROM envoisms.api('%s', '%s', '%s', '%s', NULL, '10.0.0.1');\n" "$method" "$path" "$query" "$headers" |
        as_server_user tee "$f" >/dev/null
    status=$(as_server_user "${PSQL[@]}" -tA -f "$f")
    calls=$CALLS
    case "$name" in "GET /v1/messages"*|"GET /v1/console/messages/export"*) calls=${BENCH_SLOW_CALLS:-40} ;; esac
    read -r p50 p95 < <(latency "$f" "$calls")
    [ -z "$base" ] && base=$p95
    printf '%-52s %8s %8s %9.1fx  (status %s, %s calls)\n' "$name" "$p50" "$p95" "$(echo "$p95 / $base" | bc -l)" "$status" "$calls"
done
# a sign-in: the scrypt hash is the point (each call a new session)
printf "SELECT status FROM envoisms.api('POST', '/v1/console/sign-in', '', '{}', '{\"email\": \"bench@acme.ma\", \"password\": \"bench password 1\"}', '10.0.0.2');\n" |
    as_server_user tee "$dir/ep.sql" >/dev/null
read -r p50 p95 < <(latency "$dir/ep.sql" 50)
printf '%-52s %8s %8s %9.1fx  (scrypt N=2^14, r=8)\n' "POST /v1/console/sign-in (50 calls)" "$p50" "$p95" "$(echo "$p95 / $base" | bc -l)"

# ---- what the overview reads: no scan of messages
echo
echo "the overview's reads (console_counts' statement through auto_explain), and sequential scans of messages during 20 overviews:"
as_server_user "${PSQL[@]}" -c "LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0; SET auto_explain.log_nested_statements = on;
    SET auto_explain.log_level = notice; SET client_min_messages = notice;
    SELECT count(*) FROM envoisms.console_counts('$acc', current_date - 89);" 2>&1 |
    grep -E 'Scan|->|Aggregate|Append' | grep -v 'Function Scan on console_counts' | head -20
seqscans() { sql "SELECT seq_scan FROM pg_stat_user_tables WHERE relid = 'envoisms.messages'::regclass"; }
before=$(seqscans)
for _ in $(seq 1 20); do sql "SELECT status FROM envoisms.api('GET', '/v1/console/overview', 'days=90', '$hdr', NULL, '10.0.0.1')" >/dev/null; done
sleep 1
echo "sequential scans of envoisms.messages during 20 overviews: $(( $(seqscans) - before ))"

# ---- the rollup trigger's cost on a change of status
echo
say "the rollup trigger's cost: dispatch_sent() with the trigger on and off"
sql "UPDATE envoisms.messages SET status = 'queued', sent_at = NULL, delivered_at = NULL, next_attempt_at = now()
      WHERE account_id = '$acc' AND status = 'delivered' AND message_id IN
            (SELECT message_id FROM envoisms.messages WHERE account_id = '$acc' AND status = 'delivered' ORDER BY message_id DESC LIMIT 200000)" >/dev/null
sql "SELECT envoisms.console_rollup_fold(NULL, 1000000)" >/dev/null
cat > "$dir/sent.sql" <<SQL
SELECT envoisms.dispatch_sent(m.account_id, m.message_id, 'sandbox', 'r')
  FROM (SELECT account_id, message_id FROM envoisms.messages
         WHERE status = 'queued' AND next_attempt_at <= now() ORDER BY next_attempt_at LIMIT 1 FOR UPDATE SKIP LOCKED) m;
SQL
as_root chown "$ENVOISMS_USER" "$dir/sent.sql"
tps() { as_server_user pgbench -n -M prepared -h "$dir" -p "$PORT" -c 8 -j 2 -T "$1" -f "$dir/sent.sql" postgres 2>/dev/null | sed -nE 's/^tps = ([0-9.]+).*/\1/p'; }
ROUNDS=3
ROUND=$(( SECS / ROUNDS / 2 > 1 ? SECS / ROUNDS / 2 : 1 ))
median() { tr ' ' '\n' | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
on=; off=
for _ in $(seq 1 $ROUNDS); do
    sql "ALTER TABLE envoisms.messages DISABLE TRIGGER messages_console_rollup" >/dev/null
    off="$off $(tps $ROUND)"
    sql "ALTER TABLE envoisms.messages ENABLE TRIGGER messages_console_rollup" >/dev/null
    on="$on $(tps $ROUND)"
done
o=$(echo $on | median); f=$(echo $off | median)
printf 'queued -> sent, 8 clients, %s s rounds x %s (medians): trigger off %.0f tps, on %.0f tps, on/off %.1f%%\n' \
    "$ROUND" "$ROUNDS" "$f" "$o" "$(echo "100 * $o / $f" | bc -l)"
