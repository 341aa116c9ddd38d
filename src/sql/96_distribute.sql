-- 96_distribute.sql — envoisms on a Citus cluster (docs/scale.md): the one
-- step that turns an install on a coordinator into the sharded layout, and
-- what the rest of the code asks to behave the same in both layouts.
--
-- Layout. Every table that grows with an account's traffic is distributed
-- by account_id and co-located with envoisms.messages, so that an
-- account's rows of every table live on one node and a request's work is
-- one node's work. The tables every request reads before it knows the
-- account's node, or that are global by nature, are reference tables (a
-- copy on every node, read locally, written on all): the operator's tables
-- (prices, carriers, routes, error codes, endpoints, billing settings),
-- the lookups from an outside value to an account (API key hashes,
-- receiving numbers, top-up references), and accounts themselves (one
-- small row per account, read by every key check, rarely written).
--
-- The request path stays one hop: envoisms.api() authenticates on the node
-- the request arrived at (reference tables only), then hands the rest of
-- the request to api_account(), a distributed function whose distribution
-- argument is the account: Citus runs it on the node holding the
-- account's shards, in the caller's transaction: one call (and Citus's
-- BEGIN and COMMIT around it), whatever the handler does.
--
-- Workers on every node claim only what lives on that node: their claims
-- run against the node's own shards (local_shards()), so no row is
-- claimed by two nodes and a node added by the rebalancer brings its
-- shards' work with it.
--
-- Without Citus none of this runs: envoisms.cluster_mode() is false and
-- every function takes its single-node path.

-- Whether this database runs the distributed layout (envoisms.messages is
-- a Citus distributed table). Cached per backend, forgotten with the
-- relcache entry of envoisms.messages (distribute() changes its metadata).
CREATE FUNCTION envoisms.cluster_mode() RETURNS boolean
AS 'MODULE_PATHNAME', 'cluster_mode' LANGUAGE C STABLE PARALLEL SAFE;

-- The shards of `tbl` placed on this node (the table itself outside a
-- cluster): what a worker's claim scans.
CREATE FUNCTION envoisms.local_shards(tbl regclass) RETURNS SETOF regclass
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
BEGIN
    IF NOT envoisms.cluster_mode() THEN
        RETURN NEXT tbl;
        RETURN;
    END IF;
    RETURN QUERY EXECUTE
        'SELECT format(''%I.%I'', n.nspname, c.relname || ''_'' || s.shardid)::regclass
           FROM pg_dist_shard s
           JOIN pg_dist_placement p ON p.shardid = s.shardid
           JOIN pg_class c ON c.oid = s.logicalrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE s.logicalrelid = $1 AND p.groupid = (SELECT groupid FROM pg_dist_local_group)
            AND p.shardstate = 1
            AND to_regclass(format(''%I.%I'', n.nspname, c.relname || ''_'' || s.shardid)) IS NOT NULL
          ORDER BY s.shardid' USING tbl;
END
$$;

-- This node's copy of the reference table `tbl` (`tbl` itself outside a
-- cluster): a claim that names only shards is plain PostgreSQL on one
-- node's rows, which Citus' planner leaves alone (FOR UPDATE SKIP LOCKED,
-- data-modifying CTEs). It only reads the copy: writes to a reference
-- table go through Citus, to every node. NULL on a node that has no copy
-- yet (a node just added, before the rebalancer's first move), which
-- then holds no shard either.
CREATE FUNCTION envoisms.local_copy(tbl regclass) RETURNS regclass
LANGUAGE sql STABLE SET search_path = pg_catalog AS $$
    SELECT s FROM envoisms.local_shards(tbl) s LIMIT 1
$$;

-- Move this node's identity sequences (ledger, message_events,
-- webhook_deliveries, inbound_unmatched) into the node's own range, as
-- Citus does for the tables it creates: ids start at (group << 48) + 1, so
-- rows made on different nodes never share an id, before or after their
-- shard moves. The extension made these sequences on every node, starting
-- at 1, so Citus left them alone. Run by distribute() on every worker and
-- by each node's scheduler (a node added later); once in place, nothing.
CREATE FUNCTION envoisms.cluster_node_sequences() RETURNS int
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    floor bigint;
    seq regclass;
    last bigint;
    moved int := 0;
BEGIN
    IF NOT envoisms.cluster_mode() THEN
        RETURN 0;
    END IF;
    EXECUTE 'SELECT groupid::bigint << 48 FROM pg_dist_local_group' INTO floor;
    IF floor = 0 THEN
        RETURN 0;       -- the coordinator keeps 1 ..
    END IF;
    FOR seq IN SELECT pg_get_serial_sequence(a.attrelid::regclass::text, a.attname)::regclass
                 FROM pg_attribute a JOIN envoisms.cluster_layout() l ON l.table_name = a.attrelid
                WHERE a.attidentity <> '' AND NOT a.attisdropped LOOP
        SELECT s.last_value INTO last FROM pg_sequences s
         WHERE format('%I.%I', s.schemaname, s.sequencename)::regclass = seq;
        CONTINUE WHEN last >= floor;
        PERFORM setval(seq, floor + 1, false);
        moved := moved + 1;
    END LOOP;
    RETURN moved;
END
$$;

-- The shard of `tbl` that holds the same accounts as `shard` (co-located
-- tables split the hash range alike); `tbl` itself outside a cluster.
CREATE FUNCTION envoisms.colocated_shard(shard regclass, tbl regclass) RETURNS regclass
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    found regclass;
BEGIN
    IF NOT envoisms.cluster_mode() THEN
        RETURN tbl;
    END IF;
    -- (by the shard's name: Citus hides shards from queries of pg_class)
    EXECUTE 'SELECT format(''%I.%I'', n.nspname, c.relname || ''_'' || o.shardid)::regclass
               FROM pg_dist_shard s
               JOIN pg_dist_shard o ON o.logicalrelid = $2 AND o.shardminvalue = s.shardminvalue
               JOIN pg_class c ON c.oid = o.logicalrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE s.shardid = substring($1::text from ''_([0-9]+)$'')::bigint'
       INTO found USING shard, tbl;
    IF found IS NULL THEN
        RAISE EXCEPTION 'no shard of % is co-located with %', tbl, shard;
    END IF;
    RETURN found;
END
$$;

-- The account's part of a request (envoisms.api(), step 5 on a cluster):
-- the Idempotency-Key replay and the route's handler. Distributed by its
-- first argument (distribute()), so Citus runs it on the node holding the
-- account's shards, inside the caller's transaction, in one round trip. An
-- error comes back as its fields rather than raised (a remote error loses
-- its column, the contract's "field"), rolled back here; api() raises it
-- again, so that its envelope is the one a single node gives.
CREATE FUNCTION envoisms.api_account(account_id text, handler regprocedure, req envoisms.api_request,
                                     idempotency_key text, OUT reply envoisms.api_reply,
                                     OUT err_state text, OUT err_message text, OUT err_column text,
                                     OUT err_detail text, OUT err_context text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- Citus checks that every query of a delegated call stays on its account's
-- shards from the planned shard key: a generic plan has none
SET plan_cache_mode = force_custom_plan AS $$
BEGIN
    IF idempotency_key IS NOT NULL THEN
        reply := envoisms.idempotency_lookup(req, idempotency_key);
        IF reply.status IS NULL THEN
            reply := envoisms.api_call(handler, req);
            PERFORM envoisms.idempotency_store(req, idempotency_key, reply);
        END IF;
    ELSE
        reply := envoisms.api_call(handler, req);
    END IF;
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS err_state = RETURNED_SQLSTATE, err_message = MESSAGE_TEXT,
                            err_column = COLUMN_NAME, err_detail = PG_EXCEPTION_DETAIL,
                            err_context = PG_EXCEPTION_CONTEXT;
    -- the account's shards moved to another node (the rebalancer) while
    -- this call was on its way here: Citus refuses to reach them from a
    -- delegated call. Nothing was done; the request is to be retried, and
    -- will go to the new node (api(): 503 with Retry-After).
    IF err_state = 'XX000' AND err_message = 'cannot execute a distributed query from a query on a shard' THEN
        err_state := '40001';
    END IF;
END
$$;

-- Whether a route of this permission runs on the account's node
-- (api_account()): not the routes that write reference tables (API keys;
-- billing's top-ups), which a call on one node may not do; they run,
-- statement by statement, on the node the request arrived at.
CREATE FUNCTION envoisms.cluster_delegates(permission text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN permission IS NULL OR permission NOT IN ('api_keys', 'billing');

-- The layout (docs/scale.md). Reference tables in an order that puts every
-- table after those it references; distributed tables likewise, the first
-- one fixing the co-location group the others join.
CREATE FUNCTION envoisms.cluster_layout(OUT table_name regclass, OUT kind text)
RETURNS SETOF record LANGUAGE sql IMMUTABLE SET search_path = pg_catalog AS $$
    SELECT t::regclass, k FROM (VALUES
        ('envoisms.accounts', 'reference'), ('envoisms.prices', 'reference'),
        ('envoisms.verify_limits', 'reference'), ('envoisms.verify_secret', 'reference'),
        ('envoisms.error_codes', 'reference'), ('envoisms.api_endpoints', 'reference'),
        ('envoisms.carrier_prefixes', 'reference'), ('envoisms.billing_settings', 'reference'),
        ('envoisms.billing_packs', 'reference'), ('envoisms.carriers', 'reference'),
        ('envoisms.routes', 'reference'), ('envoisms.carrier_rate_state', 'reference'),
        ('envoisms.pending_dlrs', 'reference'), ('envoisms.inbound_unmatched', 'reference'),
        ('envoisms.inbound_parts', 'reference'), ('envoisms.api_keys', 'reference'),
        ('envoisms.topups', 'reference'), ('envoisms.inbound_numbers', 'reference'),
        ('envoisms.messages', 'distributed'), ('envoisms.message_events', 'distributed'),
        ('envoisms.balance_buckets', 'distributed'), ('envoisms.ledger', 'distributed'),
        ('envoisms.batches', 'distributed'), ('envoisms.message_rollups', 'distributed'),
        ('envoisms.webhooks', 'distributed'), ('envoisms.webhook_deliveries', 'distributed'),
        ('envoisms.verify_sessions', 'distributed'), ('envoisms.contact_lists', 'distributed'),
        ('envoisms.contacts', 'distributed'), ('envoisms.list_members', 'distributed'),
        ('envoisms.templates', 'distributed'), ('envoisms.campaigns', 'distributed'),
        ('envoisms.optouts', 'distributed'), ('envoisms.idempotency_keys', 'distributed'),
        ('envoisms.smpp_parts', 'distributed'), ('envoisms.whatsapp_windows', 'distributed'),
        -- the console: sign-in and sessions are looked up by an outside
        -- value (an email, a cookie), invoice numbers are the seller's
        ('envoisms.console_settings', 'reference'), ('envoisms.console_users', 'reference'),
        ('envoisms.console_sessions', 'reference'), ('envoisms.console_signin_throttle', 'reference'),
        ('envoisms.console_challenges', 'reference'), ('envoisms.console_invitations', 'reference'),
        ('envoisms.console_account_legal', 'reference'), ('envoisms.console_invoice_counters', 'reference'),
        ('envoisms.console_invoices', 'reference'),
        ('envoisms.console_rollups', 'distributed'), ('envoisms.console_rollup_deltas', 'distributed'),
        -- a gateway's request tokens stay with the node it calls (81_request_outcomes.sql)
        ('envoisms.request_outcomes', 'local')
    ) AS l(t, k)
$$;
COMMENT ON FUNCTION envoisms.cluster_layout() IS
'Which envoisms tables envoisms.distribute() makes reference tables, which it distributes by account_id and which stay each node''s own (local)';

-- The functions Citus runs on the node of their first argument's account
-- (create_distributed_function): the request path's hand-over, and the
-- domain functions SQL callers call with an account.
CREATE FUNCTION envoisms.cluster_functions(OUT function_name regprocedure, OUT force_delegation boolean)
RETURNS SETOF record LANGUAGE sql IMMUTABLE SET search_path = pg_catalog AS $$
    SELECT f::regprocedure, d FROM (VALUES
        ('envoisms.api_account(text, regprocedure, envoisms.api_request, text)', true)
    ) AS l(f, d)
$$;

-- Turn an install on a Citus coordinator into the distributed layout: the
-- operator's one step (docs/scale.md), run once after CREATE EXTENSION
-- and the nodes are added; running it again changes nothing. Existing rows
-- move into the shards. Returns what it did, one line per table or function.
CREATE FUNCTION envoisms.distribute(shard_count int DEFAULT NULL) RETURNS SETOF text
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    l record;
    missing text;
    foreign_keys text[] := '{}';
    statement text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
        RAISE EXCEPTION 'envoisms.distribute() needs the citus extension'
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'Preload citus before envoisms, CREATE EXTENSION citus, add the worker nodes (docs/scale.md).';
    END IF;
    IF NOT (SELECT citus_is_coordinator()) THEN
        RAISE EXCEPTION 'envoisms.distribute() runs on the coordinator'
            USING ERRCODE = 'feature_not_supported';
    END IF;
    -- every envoisms table has its place: a table added without one fails here, not later
    SELECT string_agg(c.oid::regclass::text, ', ') INTO missing
      FROM pg_class c
     WHERE c.relnamespace = 'envoisms'::regnamespace AND c.relkind IN ('r', 'p')
       AND c.oid NOT IN (SELECT table_name FROM envoisms.cluster_layout())
       AND NOT EXISTS (SELECT 1 FROM pg_dist_shard s JOIN pg_class t ON t.oid = s.logicalrelid
                        WHERE t.relnamespace = c.relnamespace AND c.relname = t.relname || '_' || s.shardid);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'envoisms.distribute() does not know where these tables go: %', missing
            USING ERRCODE = 'feature_not_supported';
    END IF;

    -- The workers' claims read these tables: every lock is taken first, in
    -- one statement, and taken again when a claim got in the way.
    FOR attempt IN 1..50 LOOP
        BEGIN
            SET LOCAL lock_timeout = '2s';
            EXECUTE (SELECT 'LOCK TABLE ' || string_agg(table_name::text, ', ') || ' IN ACCESS EXCLUSIVE MODE'
                       FROM envoisms.cluster_layout());
            EXIT;
        EXCEPTION WHEN deadlock_detected OR lock_not_available THEN
            IF attempt = 50 THEN
                RAISE;
            END IF;
            PERFORM pg_sleep(0.1);
        END;
    END LOOP;
    SET LOCAL lock_timeout = 0;

    -- triggers on distributed tables run on their shards: ours only touch
    -- the same account's rows (35_events.sql) or the caches (cache_forget)
    SET LOCAL citus.enable_unsafe_triggers = on;
    SET LOCAL citus.multi_shard_modify_mode = 'sequential';

    -- the per-install secret of verification codes, made now rather than
    -- by the first verification (a call on an account's node, which may
    -- not write a reference table)
    PERFORM envoisms.verify_code_hmac('', '');

    -- the unique keys of a distributed table must hold account_id: a
    -- top-up's credit is unique per account (a top-up id belongs to one
    -- account, topups_topup_id), an SMSC's id per account and carrier
    IF NOT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = 'envoisms.ledger'::regclass) THEN
        DROP INDEX IF EXISTS envoisms.ledger_one_credit_per_topup;
        CREATE UNIQUE INDEX IF NOT EXISTS ledger_one_credit_per_topup_account
            ON envoisms.ledger (account_id, topup_id) WHERE topup_id IS NOT NULL;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = 'envoisms.smpp_parts'::regclass) THEN
        DROP INDEX IF EXISTS envoisms.smpp_parts_smsc;
        CREATE UNIQUE INDEX IF NOT EXISTS smpp_parts_smsc_account
            ON envoisms.smpp_parts (account_id, carrier_id, smsc_message_id);
        CREATE INDEX IF NOT EXISTS smpp_parts_smsc_lookup
            ON envoisms.smpp_parts (carrier_id, smsc_message_id);
    END IF;

    -- Citus turns a local table with a foreign key to a new reference table
    -- into a "Citus local table", which collides with the workers' own copy
    -- of the extension's table: the foreign keys between tables not yet
    -- placed are dropped first and made again once every table is placed
    -- (then on the shards too).
    FOR l IN SELECT c.conname, c.conrelid::regclass AS tbl, pg_get_constraintdef(c.oid) AS def
               FROM pg_constraint c
              WHERE c.contype = 'f' AND c.connamespace = 'envoisms'::regnamespace
                AND c.conrelid NOT IN (SELECT logicalrelid FROM pg_dist_partition)
              ORDER BY c.conrelid, c.conname LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', l.tbl, l.conname);
        statement := concat(statement, format('ALTER TABLE %s DROP CONSTRAINT IF EXISTS %I; ', l.tbl, l.conname));
        foreign_keys := foreign_keys || format('ALTER TABLE %s ADD CONSTRAINT %I %s', l.tbl, l.conname, l.def);
    END LOOP;
    -- and on the workers' copies, or making them again would find them
    -- there (their own workers' claims may get in the way, as above)
    IF statement IS NOT NULL THEN
        SELECT string_agg(format('%s:%s: %s', w.nodename, w.nodeport, w.result), '; ') INTO missing
          FROM run_command_on_workers(format($drop$
                   DO $do$ BEGIN FOR attempt IN 1..50 LOOP
                       BEGIN SET LOCAL lock_timeout = '2s'; %s EXIT;
                       EXCEPTION WHEN deadlock_detected OR lock_not_available THEN
                           IF attempt = 50 THEN RAISE; END IF; PERFORM pg_sleep(0.1);
                       END; END LOOP; END $do$ $drop$, statement)) w
         WHERE NOT w.success;
        IF missing IS NOT NULL THEN
            RAISE EXCEPTION 'envoisms.distribute(): a worker refused to drop the foreign keys: %', missing;
        END IF;
    END IF;

    FOR l IN SELECT * FROM envoisms.cluster_layout() LOOP
        CONTINUE WHEN l.kind = 'local' OR EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = l.table_name);
        IF l.kind = 'reference' THEN
            PERFORM create_reference_table(l.table_name);
        ELSIF l.table_name = 'envoisms.messages'::regclass THEN
            PERFORM create_distributed_table(l.table_name, 'account_id',
                                             shard_count => coalesce(shard_count, current_setting('citus.shard_count')::int),
                                             colocate_with => 'none');
        ELSE
            PERFORM create_distributed_table(l.table_name, 'account_id', colocate_with => 'envoisms.messages');
        END IF;
        -- the rows now live in the shards; the coordinator's own copy is emptied
        PERFORM truncate_local_data_after_distributing_table(l.table_name);
        RETURN NEXT format('%s: %s', l.table_name, l.kind);
    END LOOP;
    FOR i IN 1..cardinality(foreign_keys) LOOP
        EXECUTE foreign_keys[i];
    END LOOP;

    -- every worker's ids in its own range (nodes added later: their scheduler)
    SELECT string_agg(format('%s:%s: %s', w.nodename, w.nodeport, w.result), '; ') INTO missing
      FROM run_command_on_workers('SELECT envoisms.cluster_node_sequences()') w
     WHERE NOT w.success;
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'envoisms.distribute(): a worker could not move its sequences: %', missing;
    END IF;

    FOR l IN SELECT * FROM envoisms.cluster_functions() LOOP
        CONTINUE WHEN EXISTS (SELECT 1 FROM pg_dist_object o
                               WHERE o.classid = 'pg_proc'::regclass AND o.objid = l.function_name
                                 AND o.distribution_argument_index IS NOT NULL);
        PERFORM create_distributed_function(l.function_name, '$1', colocate_with => 'envoisms.messages',
                                            force_delegation => l.force_delegation);
        RETURN NEXT format('%s: runs on its account''s node', l.function_name);
    END LOOP;
END
$$;
COMMENT ON FUNCTION envoisms.distribute(int) IS
'On a Citus coordinator: distribute the envoisms tables by account_id (reference tables for the global ones) and run account work on its shard''s node; idempotent';
