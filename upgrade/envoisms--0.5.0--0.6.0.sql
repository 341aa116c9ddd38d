-- envoisms 0.5.0 -> 0.6.0 (ALTER EXTENSION envoisms UPDATE). Frozen with the
-- 0.6.0 release: its definitions are those of src/sql at 0.6.0.
\echo Use "ALTER EXTENSION envoisms UPDATE TO '0.6.0'" to load this file. \quit
