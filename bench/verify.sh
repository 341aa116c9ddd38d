#!/usr/bin/env bash
# bench/verify.sh — latency of POST /v1/verify/check through envoisms.api
# with 8 pgbench clients (p50 and p99; goal p99 <= 5 ms), next to a baseline
# measured in the same run: GET /v1/billing/balance through envoisms.api (the
# dispatcher's fixed cost: auth, rate limit, routing, envelope).
#
# Usage: bench/verify.sh   (libpq environment: PGHOST, PGPORT, PGUSER; the
# server must have envoisms installed). Creates and drops the database
# envoisms_bench_verify. BENCH_SECONDS (default 20), BENCH_CLIENTS (default 8).
set -euo pipefail
DB=envoisms_bench_verify
SECONDS_=${BENCH_SECONDS:-20}
CLIENTS=${BENCH_CLIENTS:-8}
PER_CLIENT=20000
work=$(mktemp -d)
trap 'rm -rf "$work"; dropdb --if-exists "$DB" >/dev/null 2>&1 || true' EXIT

dropdb --if-exists "$DB" >/dev/null 2>&1
createdb "$DB"
psql -qX -v ON_ERROR_STOP=1 -d "$DB" <<SQL
CREATE EXTENSION envoisms;
CREATE TABLE bench (account_id text, api_key text);
INSERT INTO bench SELECT a, envoisms.api_key_create(a, rate_limit => NULL)->>'api_key'
  FROM envoisms.account_create('bench', 1000) a;
-- one session per check, made directly (the check path never reads the message)
CREATE TABLE bench_sessions (i int PRIMARY KEY, session_id text, code text);
INSERT INTO bench_sessions
SELECT g, envoisms.new_id('vrf'), envoisms.random_digits(6) FROM generate_series(1, $CLIENTS * $PER_CLIENT) g;
INSERT INTO envoisms.verify_sessions (account_id, session_id, to_number, number_block, channel, message_id,
                                      code_hmac, expires_at)
SELECT b.account_id, s.session_id, '+2126' || lpad(s.i::text, 8, '0'), '+2126' || lpad((s.i / 10000)::text, 4, '0'),
       'sms', envoisms.new_id('msg'), envoisms.verify_code_hmac(s.session_id, s.code), now() + interval '1 hour'
  FROM bench_sessions s, bench b;
VACUUM ANALYZE;
SQL
key=$(psql -qXAt -d "$DB" -c 'SELECT api_key FROM bench')

cat > "$work/check.sql" <<SQL
\set i :client_id * $PER_CLIENT + random(1, $PER_CLIENT)
SELECT r.status FROM bench_sessions s,
       envoisms.api('POST', '/v1/verify/check', '', '{"Authorization": "Bearer $key"}',
                    json_build_object('session_id', s.session_id, 'code', s.code)::text) r
 WHERE s.i = :i;
SQL
cat > "$work/baseline.sql" <<SQL
SELECT status FROM envoisms.api('GET', '/v1/billing/balance', '', '{"Authorization": "Bearer $key"}');
SQL

percentiles() {   # percentiles LOGDIR → "p50 p99 tps-ish count" in ms from pgbench -l logs
    cat "$1"/pgbench_log.* | awk '{ print $3 / 1000.0 }' | sort -n |
        awk '{ v[NR] = $1 } END { printf "n=%d p50=%.3f ms p99=%.3f ms max=%.3f ms\n", NR, v[int(NR * 0.50)], v[int(NR * 0.99)], v[NR] }'
}
run() {   # run NAME SCRIPT
    mkdir -p "$work/$1" && cd "$work/$1"
    pgbench -n -M prepared -c "$CLIENTS" -j 2 -T "$SECONDS_" -l -f "$2" "$DB" > "$work/$1.out" 2>&1
    printf '%-28s %s  (%s)\n' "$1" "$(percentiles "$work/$1")" "$(grep -o 'tps = [0-9.]*' "$work/$1.out" | head -1)"
    cd - >/dev/null
}
echo "verify/check latency through envoisms.api, $CLIENTS clients, ${SECONDS_} s each, prepared"
run "baseline GET balance" "$work/baseline.sql"
run "POST /v1/verify/check" "$work/check.sql"
psql -qXAt -d "$DB" -c "SELECT 'checks: ' || count(*) FILTER (WHERE status = 'verified') || ' verified, '
                               || count(*) FILTER (WHERE status = 'sent') || ' untouched' FROM envoisms.verify_sessions"
