#!/usr/bin/env bash
# scripts/guc-table.sh — print the README's GUC table (markdown) from a
# running server's own list: psql connection options are passed through,
# e.g. scripts/guc-table.sh -h /var/lib/envoisms/run -p 5488 -U envoisms envoisms
exec psql -X -At -F ' | ' "$@" -c "
SELECT '| GUC | default | context | meaning |' UNION ALL SELECT '|---|---|---|---|' UNION ALL
SELECT * FROM (SELECT format('| \`%s\` | %s | %s | %s |', name,
                      coalesce(nullif(boot_val, ''), '''''') || coalesce(' ' || unit, ''),
                      CASE context WHEN 'postmaster' THEN 'restart' WHEN 'sighup' THEN 'reload' ELSE context END,
                      short_desc)
                 FROM pg_settings WHERE name LIKE 'envoisms.%' ORDER BY name) t"
