#!/usr/bin/env bash
# bench/contacts.sh — contact search and import.
#   1. GET /v1/contacts?q= at 1M contacts in one account: p50/p99 of mixed
#      lookups (full name, last-name prefix, email prefix, phone suffix, local
#      phone prefix) through envoisms.contact_list, 8 pgbench clients, and the
#      EXPLAIN of one search.
#   2. import of 5,000 contacts (envoisms.contact_import, JSON in) against a
#      raw 5,000-row INSERT … SELECT into the same table, in the same run
#      (median of 5 each).
#
# Usage: bench/contacts.sh (libpq environment: PGHOST, PGPORT, PGUSER).
# Creates and drops the database envoisms_bench_contacts.
# BENCH_CONTACTS (default 1000000), BENCH_SECONDS (default 20).
set -euo pipefail
DB=envoisms_bench_contacts
N=${BENCH_CONTACTS:-1000000}
SECONDS_=${BENCH_SECONDS:-20}
CLIENTS=${BENCH_CLIENTS:-8}
work=$(mktemp -d)
# BENCH_KEEP=1 keeps the database, and a later run with BENCH_KEEP=1 reuses its contacts.
if [ -n "${BENCH_KEEP:-}" ]; then trap 'rm -rf "$work"' EXIT
else trap 'rm -rf "$work"; dropdb --if-exists "$DB" >/dev/null 2>&1 || true' EXIT; fi

if [ -n "${BENCH_KEEP:-}" ] && psql -qXAt -d "$DB" -c 'SELECT 1 FROM bench' >/dev/null 2>&1; then
    echo "reusing the contacts of $DB"
else
dropdb --if-exists "$DB" >/dev/null 2>&1
createdb "$DB"
start=$(date +%s)
psql -qX -v ON_ERROR_STOP=1 -d "$DB" <<SQL
CREATE EXTENSION envoisms;
CREATE TABLE bench AS SELECT envoisms.account_create('bench', 10) AS account_id;
-- deterministic people: 200 first names x 5000 last names, phones +2126xxxxxxxx
CREATE FUNCTION bench_first(i int) RETURNS text IMMUTABLE LANGUAGE sql RETURN
    (ARRAY['Karim','Youssef','Fatima','Amina','Mohamed','Sara','Omar','Imane','Hamza','Salma'])[1 + i % 10] || (i / 10 % 20)::text;
CREATE FUNCTION bench_last(i int) RETURNS text IMMUTABLE LANGUAGE sql RETURN
    initcap((ARRAY['ben','el','al','ou','za','ka','ha','ri','mo','ta'])[1 + (i / 200) % 10]
            || (ARRAY['nani','idrissi','fassi','alami','tazi','berrada','chraibi','bennis','lahlou','sqalli'])[1 + (i / 2000) % 10]
            || ((i / 20000) % 50)::text);
CREATE FUNCTION bench_phone(i int) RETURNS text IMMUTABLE LANGUAGE sql RETURN '+2126' || lpad((i::bigint * 7919 % 100000000)::text, 8, '0');
INSERT INTO envoisms.contacts (account_id, contact_id, phone, name, email)
SELECT b.account_id, envoisms.new_id('ctc'), bench_phone(g), bench_first(g) || ' ' || bench_last(g),
       lower(bench_first(g) || '.' || bench_last(g) || g % 7 || '@example.ma')
  FROM bench b, generate_series(1, $N) g;
VACUUM ANALYZE envoisms.contacts;
SQL
echo "loaded $N contacts in $(( $(date +%s) - start )) s"
fi
acc=$(psql -qXAt -d "$DB" -c 'SELECT account_id FROM bench')

echo
explain() {   # explain TITLE ARGS… — the two statements contact_list runs for a q (custom plans)
    echo "EXPLAIN ANALYZE, $1:"
    psql -qXAt -d "$DB" -c "EXPLAIN (ANALYZE, COSTS OFF, SUMMARY ON) SELECT count(*) FROM envoisms.contact_search('$acc', NULL, true, $2)"
    psql -qXAt -d "$DB" -c "EXPLAIN (ANALYZE, COSTS OFF, SUMMARY ON) SELECT * FROM envoisms.contact_search('$acc', NULL, true, $2) c ORDER BY c.contact_id DESC LIMIT 100"
    echo
}
explain "q='fatima4 elfassi0' (words of the name)" "envoisms.contact_words_query('fatima4 elfassi0'), NULL, NULL, NULL"
explain "q='592398' (phone digits: prefix +592398… and suffix …592398)" "NULL, '+592398', '592398', NULL"
explain "q='fatima4.elfassi00@' (email prefix, and its words among names)" "envoisms.contact_words_query('fatima4.elfassi00@'), NULL, NULL, 'fatima4.elfassi00@'"
qexpr() {   # qexpr KIND I → the SQL expression of a q of that kind for person I
    case $1 in
        fullname)    echo "lower(bench_first($2) || ' ' || bench_last($2))" ;;
        lastprefix)  echo "left(bench_last($2), 9)" ;;
        email)       echo "lower(bench_first($2) || '.' || bench_last($2) || ($2 % 7) || '@')" ;;
        suffix)      echo "right(bench_phone($2), 6)" ;;
        localprefix) echo "'0' || substr(bench_phone($2), 5, 7)" ;;
    esac
}
kinds="fullname lastprefix email suffix localprefix"
for kind in $kinds; do
    printf '\\set i random(1, %s)\nSELECT envoisms.contact_list(%s, 100, 0, %s)->%s;\n' \
        "$N" "'$acc'" "$(qexpr $kind :i)" "'total'" > "$work/$kind.sql"
done
echo
echo "search at $N contacts, $CLIENTS clients, ${SECONDS_} s, the five kinds of q mixed evenly (scripts 0-4: $kinds):"
mkdir -p "$work/log" && cd "$work/log"
pgbench -n -M prepared -c "$CLIENTS" -j 2 -T "$SECONDS_" -l \
    -f "$work/fullname.sql" -f "$work/lastprefix.sql" -f "$work/email.sql" -f "$work/suffix.sql" -f "$work/localprefix.sql" \
    "$DB" > "$work/search.out" 2>&1 || { cat "$work/search.out"; exit 1; }
cd - >/dev/null
awk '{ print $3 / 1000.0 }' "$work"/log/pgbench_log.* | sort -n |
    awk '{ v[NR] = $1 } END { printf "n=%d p50=%.2f ms p90=%.2f ms p99=%.2f ms max=%.2f ms\n", NR, v[int(NR*.5)], v[int(NR*.9)], v[int(NR*.99)], v[NR] }'
set -- $kinds
for k in 0 1 2 3 4; do
    eval "name=\${$((k + 1))}"
    awk -v k=$k '$4 == k { print $3 / 1000.0 }' "$work"/log/pgbench_log.* | sort -n |
        awk -v name="$name" '{ v[NR] = $1 } END { printf "  %-12s n=%d p50=%.2f ms p99=%.2f ms\n", name, NR, v[int(NR*.5)], v[int(NR*.99)] }'
done
grep -o 'tps = [0-9.]*' "$work/search.out" | head -1
for kind in $kinds; do
    printf '  hits of one %-12s q (%s): %s\n' "$kind" \
        "$(psql -qXAt -d "$DB" -c "SELECT $(qexpr $kind 4242)")" \
        "$(psql -qXAt -d "$DB" -c "SELECT envoisms.contact_list('$acc', 100, 0, $(qexpr $kind 4242))->'total'")"
done

echo
echo "import of 5,000 contacts vs a raw 5,000-row insert (median of 5, ms):"
psql -qXAt -d "$DB" <<SQL
BEGIN;   -- rolled back: the imported rows do not stay (a kept database can be reused)
CREATE TEMP TABLE timings (kind text, ms numeric);
DO \$\$
DECLARE
    acc text := (SELECT account_id FROM bench);
    payload jsonb;
    t timestamptz;
    r int;
BEGIN
    FOR r IN 1 .. 5 LOOP
        SELECT jsonb_agg(jsonb_build_object('phone', '+2127' || lpad((r * 10000 + g)::text, 8, '0'),
                                            'name', 'Import ' || g, 'email', 'i' || g || '@example.ma'))
          INTO payload FROM generate_series(1, 5000) g;
        t := clock_timestamp();
        PERFORM envoisms.contact_import(acc, payload);
        INSERT INTO timings VALUES ('contact_import', extract(epoch FROM clock_timestamp() - t) * 1000);
        t := clock_timestamp();
        INSERT INTO envoisms.contacts (account_id, contact_id, phone, name, email)
        SELECT acc, envoisms.new_id('ctc'), '+2125' || lpad((r * 10000 + g)::text, 8, '0'), 'Raw ' || g, 'r' || g || '@example.ma'
          FROM generate_series(1, 5000) g;
        INSERT INTO timings VALUES ('raw insert', extract(epoch FROM clock_timestamp() - t) * 1000);
    END LOOP;
END
\$\$;
SELECT format('  %-16s %8s ms', kind, round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1)) FROM timings GROUP BY kind ORDER BY kind;
SELECT format('  ratio import/raw: %s', round(((SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) FROM timings WHERE kind = 'contact_import')
                                          / (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) FROM timings WHERE kind = 'raw insert'))::numeric, 2));
ROLLBACK;
SQL
