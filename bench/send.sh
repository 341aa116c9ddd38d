#!/usr/bin/env bash
# bench/send.sh — single sends and bulk sends against raw inserts measured in
# the same run, on a scratch cluster with PostgreSQL's defaults (fsync on).
#
#   single: pgbench -M prepared, 1/8/32 clients, one account:
#       raw    INSERT … RETURNING into a table as wide as envoisms.messages
#       send   SELECT envoisms.message_send(…)          (debit + message row)
#       api    SELECT * FROM envoisms.api('POST', '/v1/messages', …)   (auth, rate limit, routing too)
#   bulk:   message_send_bulk of 10,000 vs a raw 10,000-row INSERT … SELECT
#
# Not part of the test suite. Run as root or as a sudo user after ./scripts/test.sh
# (or ./scripts/run.sh) installed the extension. BENCH_SECONDS=15 by default.
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
SECS=${BENCH_SECONDS:-15}
PORT=${BENCH_PORT:-55499}
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
max_connections = 100
# the send path alone: no worker claims what the benchmark queues
envoisms.dispatch_workers = 0
envoisms.webhook_workers = 0
envoisms.scheduler = off
CONF
as_server_user bash -c "ulimit -n 65536 2>/dev/null || true; pg_ctl -D '$dir/data' -l '$dir/log' -w start" >/dev/null
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h "$dir" -p "$PORT" -d postgres)
as_server_user "${PSQL[@]}" >/dev/null <<'SQL'
CREATE EXTENSION envoisms;
CREATE TABLE raw_messages (LIKE envoisms.messages INCLUDING DEFAULTS, PRIMARY KEY (account_id, message_id));
-- the baseline is a plain row: base types, so no domain rule is checked on it
ALTER TABLE raw_messages ALTER direction TYPE text, ALTER channel TYPE text, ALTER encoding TYPE text,
    ALTER segments TYPE int, ALTER status TYPE text, ALTER cost_mad TYPE numeric(12,4),
    ALTER cost_eur TYPE numeric(12,5), ALTER charged_mad TYPE numeric(12,4), ALTER refunded_mad TYPE numeric(12,4);
SQL
acc=$(as_server_user "${PSQL[@]}" -tAc "SELECT envoisms.account_create('bench', 100000000)")
key=$(as_server_user "${PSQL[@]}" -tAc "SELECT envoisms.api_key_create('$acc', 'bench', true, rate_limit => NULL)->>'api_key'")

cat > "$dir/raw.sql" <<SQL
INSERT INTO raw_messages (account_id, message_id, to_number, sender_id, channel, body, encoding, segments, cost_mad, cost_eur, charged_mad)
VALUES ('$acc', envoisms.new_id('msg'), '+212612345678', 'ENVOISMS', 'sms', 'Votre code de validation est 849204', 'gsm7', 1, 0.31, 0.028, 0.31)
RETURNING message_id;
SQL
cat > "$dir/send.sql" <<SQL
SELECT envoisms.message_send('$acc', '+212612345678', 'Votre code de validation est 849204');
SQL
cat > "$dir/api.sql" <<SQL
SELECT * FROM envoisms.api('POST', '/v1/messages', '', '{"Authorization": "Bearer $key", "Content-Type": "application/json"}',
                           '{"to": "+212612345678", "message": "Votre code de validation est 849204"}', '127.0.0.1');
SQL
as_root chown "$ENVOISMS_USER" "$dir"/*.sql

tps() {   # tps SCRIPT CLIENTS
    as_server_user pgbench -n -M prepared -h "$dir" -p "$PORT" -c "$2" -j "$(( $2 < 2 ? 1 : 2 ))" -T "$ROUND" -f "$dir/$1.sql" postgres 2>/dev/null |
        sed -nE 's/^tps = ([0-9.]+).*/\1/p'
}

# Each point is ROUNDS rounds of raw, send, api in turn (SECS split between
# them), and each figure the median of its rounds: on a shared machine a
# burst of someone else's load then spoils one round, not a whole figure.
ROUNDS=${BENCH_ROUNDS:-3}
ROUND=$(( SECS / ROUNDS > 1 ? SECS / ROUNDS : 1 ))
median() { tr ' ' '\n' | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
echo "single sends, ${SECS}s per point ($ROUNDS interleaved rounds, medians), PostgreSQL defaults (fsync on), $(nproc) cores"
printf '%-8s %12s %12s %12s %10s %10s\n' clients raw_tps send_tps api_tps send/raw api/raw
for c in 1 8 32; do
    rs=; ss=; as=
    for _ in $(seq 1 "$ROUNDS"); do
        rs="$rs $(tps raw "$c")"; ss="$ss $(tps send "$c")"; as="$as $(tps api "$c")"
    done
    r=$(echo $rs | median); s=$(echo $ss | median); a=$(echo $as | median)
    printf '%-8s %12.0f %12.0f %12.0f %9.1f%% %9.1f%%\n' "$c" "$r" "$s" "$a" \
        "$(echo "100*$s/$r" | bc -l)" "$(echo "100*$a/$r" | bc -l)"
done
as_server_user "${PSQL[@]}" -tAc "SELECT 'books exact after the run: ' || bool_and(ok) FROM envoisms.balance_check()"

echo
echo "bulk: 10,000 messages in one call vs a raw 10,000-row insert (best of 5)"
as_server_user "${PSQL[@]}" >/dev/null <<SQL
CREATE FUNCTION bench_ms(stmt text) RETURNS numeric LANGUAGE plpgsql AS \$\$
DECLARE t timestamptz; best numeric := 1e9;
BEGIN
    FOR i IN 1..5 LOOP
        t := clock_timestamp();
        EXECUTE stmt;
        best := least(best, extract(epoch FROM clock_timestamp() - t) * 1000);
    END LOOP;
    RETURN round(best, 1);
END \$\$;
CREATE TABLE bulk_body AS SELECT jsonb_agg(jsonb_build_object('to', '+2126' || (10000000 + i), 'message', 'Bonjour client ' || i)) AS m
  FROM generate_series(1, 10000) i;
SQL
as_server_user "${PSQL[@]}" -tA <<SQL
WITH r AS (SELECT bench_ms(\$q\$INSERT INTO raw_messages (account_id, message_id, to_number, sender_id, channel, body, encoding, segments, cost_mad, cost_eur, charged_mad)
                                 SELECT '$acc', envoisms.new_id('msg'), '+2126' || (10000000 + i), 'ENVOISMS', 'sms', 'Bonjour client ' || i, 'gsm7', 1, 0.31, 0.028, 0.31
                                   FROM generate_series(1, 10000) i\$q\$) AS raw_ms,
              bench_ms(\$q\$SELECT envoisms.message_send_bulk('$acc', (SELECT m FROM bulk_body))\$q\$) AS bulk_ms)
SELECT format('raw insert %s ms, message_send_bulk %s ms, ratio %sx (goal <= 4x)', raw_ms, bulk_ms, round(bulk_ms / raw_ms, 2)) FROM r;
SQL
