-- schema_fingerprint.sql — one line per object of the envoisms extension (functions with a
-- hash of their definition, columns, constraints, indexes, triggers, types,
-- relations with options and ACLs, comments, members, dump config), sorted:
-- two databases with equal fingerprints have the same extension schema.
SELECT line FROM (
  SELECT 'function ' || p.oid::regprocedure || ' ' || md5(pg_get_functiondef(p.oid)) || ' acl=' || coalesce(p.proacl::text, '') AS line
    FROM pg_proc p WHERE p.pronamespace = 'envoisms'::regnamespace AND p.prokind <> 'a'
  UNION ALL
  SELECT 'column ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
         || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END || ' default ' || coalesce(pg_get_expr(d.adbin, d.adrelid), '-')
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
   WHERE c.relnamespace = 'envoisms'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
  UNION ALL
  SELECT 'constraint ' || coalesce(nullif(conrelid, 0)::regclass::text, contypid::regtype::text) || ' ' || conname || ' ' || pg_get_constraintdef(oid)
    FROM pg_constraint WHERE connamespace = 'envoisms'::regnamespace
  UNION ALL
  SELECT 'index ' || pg_get_indexdef(i.indexrelid)
    FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relnamespace = 'envoisms'::regnamespace
  UNION ALL
  SELECT 'trigger ' || pg_get_triggerdef(t.oid)
    FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid WHERE c.relnamespace = 'envoisms'::regnamespace AND NOT t.tgisinternal
  UNION ALL
  SELECT 'type ' || t.typname || ' ' || t.typtype::text || ' ' || coalesce(format_type(t.typbasetype, t.typtypmod), '')
    FROM pg_type t WHERE t.typnamespace = 'envoisms'::regnamespace
  UNION ALL
  SELECT 'relation ' || c.relname || ' ' || c.relkind::text || ' ' || coalesce(c.reloptions::text, '') || ' acl=' || coalesce(c.relacl::text, '')
    FROM pg_class c WHERE c.relnamespace = 'envoisms'::regnamespace
  UNION ALL
  SELECT 'view ' || c.relname || ' ' || md5(pg_get_viewdef(c.oid))
    FROM pg_class c WHERE c.relnamespace = 'envoisms'::regnamespace AND c.relkind = 'v'
  UNION ALL
  SELECT 'comment ' || pg_describe_object(d.classoid, d.objoid, d.objsubid) || ' ' || md5(d.description)
    FROM pg_description d JOIN pg_depend x ON x.classid = d.classoid AND x.objid = d.objoid AND x.deptype = 'e'
   WHERE x.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'envoisms')
  UNION ALL
  SELECT 'member ' || pg_describe_object(classid, objid, objsubid)
    FROM pg_depend WHERE deptype = 'e' AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'envoisms')
  UNION ALL
  -- each dumped table with its condition (the order of the calls that made
  -- them does not matter to pg_dump, so it does not matter here)
  SELECT 'config ' || c.tab::regclass::text || ' ' || coalesce(c.cond, '')
    FROM pg_extension e, unnest(e.extconfig, e.extcondition) AS c(tab, cond) WHERE e.extname = 'envoisms'
) f ORDER BY line;
