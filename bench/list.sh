#!/usr/bin/env bash
# bench/list.sh — what the "messages" alias of GET /v1/messages costs: the
# page of 200 rows the official Node client reads under "messages" is the
# same value as the contract's "data", so the server builds it once but
# serialises and sends it twice. Measured in the same run, 4 pgbench
# clients, prepared:
#   - baseline: the page built and serialised by a copy of message_list made
#     in the bench database with the alias taken out (the function as it was
#     before the alias);
#   - with the alias: envoisms.message_list as GET /v1/messages uses it;
#   - the whole request through envoisms.api (auth, routing, envelope).
# Prints the transactions per second of each, their ratio, and the bytes.
#
# Usage: bench/list.sh   (libpq environment: PGHOST, PGPORT, PGUSER; the
# server must have envoisms installed). Creates and drops the database
# envoisms_bench_list. BENCH_SECONDS (default 15).
set -euo pipefail
DB=envoisms_bench_list
SECONDS_=${BENCH_SECONDS:-15}
work=$(mktemp -d)
trap 'rm -rf "$work"; dropdb --if-exists "$DB" >/dev/null 2>&1 || true' EXIT

dropdb --if-exists "$DB" >/dev/null 2>&1
createdb "$DB"
psql -qX -v ON_ERROR_STOP=1 -d "$DB" >/dev/null <<SQL
CREATE EXTENSION envoisms;
CREATE TABLE bench (account_id text, api_key text);
INSERT INTO bench SELECT a, envoisms.api_key_create(a, rate_limit => NULL)->>'api_key'
  FROM envoisms.account_create('bench', 1000) a;
SELECT count(*) AS queued FROM bench, LATERAL envoisms.message_send_bulk(account_id,
         (SELECT jsonb_agg(jsonb_build_object('to', '+2126' || lpad(g::text, 8, '0'),
                                              'message', 'Votre commande ' || g || ' est confirmée. Merci !'))
            FROM generate_series(1, 1000) g), sandbox => true) AS reply;
-- the baseline: the same function without the alias (same name, another schema)
CREATE SCHEMA bench_base;
DO \$\$
DECLARE
    def text := pg_get_functiondef('envoisms.message_list(text, int, int, text, text, timestamptz, timestamptz, text, text, text)'::regprocedure);
BEGIN
    IF strpos(def, '''messages'', rows, ') = 0 THEN
        RAISE EXCEPTION 'message_list has no "messages" alias to take out';
    END IF;
    EXECUTE replace(replace(def, '''messages'', rows, ', ''), 'envoisms.message_list(', 'bench_base.message_list(');
END
\$\$;
VACUUM ANALYZE;
SQL
acc=$(psql -qXAt -d "$DB" -c 'SELECT account_id FROM bench')
key=$(psql -qXAt -d "$DB" -c 'SELECT api_key FROM bench')

echo "SELECT length(bench_base.message_list('$acc', 200)::text);" > "$work/single.sql"
echo "SELECT length(envoisms.message_list('$acc', 200)::text);" > "$work/double.sql"
echo "SELECT length(body::text) FROM envoisms.api('GET', '/v1/messages', 'limit=200', '{\"Authorization\": \"Bearer $key\"}');" > "$work/api.sql"

tps() { pgbench -n -M prepared -c 4 -j 2 -T "$SECONDS_" -f "$1" "$DB" 2>/dev/null | sed -n 's/^tps = \([0-9.]*\).*/\1/p'; }
single=$(tps "$work/single.sql")
double=$(tps "$work/double.sql")
api=$(tps "$work/api.sql")
bytes1=$(psql -qXAt -d "$DB" -c "SELECT length(bench_base.message_list('$acc', 200)::text)")
bytes2=$(psql -qXAt -d "$DB" -c "SELECT length(envoisms.message_list('$acc', 200)::text)")
printf 'page of 200, one array (baseline)  %8.1f tps  %7d bytes\n' "$single" "$bytes1"
printf 'page of 200, data + messages       %8.1f tps  %7d bytes  (%.1f %% of the baseline)\n' "$double" "$bytes2" \
    "$(echo "100 * $double / $single" | bc -l)"
printf 'GET /v1/messages?limit=200 via api %8.1f tps\n' "$api"
