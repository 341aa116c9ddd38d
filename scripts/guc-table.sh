#!/usr/bin/env bash
# scripts/guc-table.sh — the README's GUC table (markdown), from a running
# server's own pg_settings: one row per envoisms.* setting, in name order,
# with its built-in default and unit, its context (restart or reload) and
# its description. psql connection options are passed through:
#
#   scripts/guc-table.sh -h /var/lib/envoisms/run -p 5488 -U envoisms envoisms
#   scripts/guc-table.sh --update README.md -h … -p … envoisms   # rewrite the table in place
#
# test/tap/000_docs.pl compares the README's table with this output, row
# for row and value for value.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

update=
if [ "${1:-}" = "--update" ]; then
    update=${2:?usage: guc-table.sh --update FILE [psql options]}
    shift 2
fi

# The default is boot_val (what the code sets, whatever postgresql.conf
# says), '' when empty; "|" in a description is escaped for markdown.
table=$(psql -X -At -v ON_ERROR_STOP=1 "$@" -c "
SELECT line FROM (
    SELECT 0 AS part, '' AS name, '| GUC | default | context | meaning |' AS line
    UNION ALL SELECT 1, '', '|---|---|---|---|'
    UNION ALL SELECT 2, name,
           format('| \`%s\` | %s | %s | %s |', name,
                  coalesce(nullif(boot_val, ''), '''''') || coalesce(' ' || unit, ''),
                  CASE context WHEN 'postmaster' THEN 'restart' WHEN 'sighup' THEN 'reload'
                               WHEN 'user' THEN 'session' ELSE context END,
                  replace(short_desc, '|', '\|'))
      FROM pg_settings WHERE name LIKE 'envoisms.%') t
 ORDER BY part, name COLLATE \"C\"")
[ -n "$table" ] || die "no envoisms.* setting on that server (is envoisms in shared_preload_libraries?)"

if [ -z "$update" ]; then
    printf '%s\n' "$table"
    exit 0
fi

# Replace the lines from the table's header to the first line that is not
# a table row.
TABLE="$table" perl -i -ne '
    if (/^\| GUC \| default \| context \| meaning \|$/) { print "$ENV{TABLE}\n"; $in = $found = 1; next }
    if ($in) { next if /^\|/; $in = 0 }
    print;
    END { die "no GUC table in $ARGV\n" unless $found }' "$update"
