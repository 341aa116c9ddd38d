-- 86_dispatch.sql — the dispatcher's SQL interface: claim, outcomes (sent /
-- retry / failed), leases, and the sandbox carrier's simulated reports.
--
-- Workers (src/worker_dispatch.c, src/worker_smpp*.c) follow one shape:
--   1. envoisms.dispatch_claim() in a short transaction: due queued messages
--      are locked with FOR UPDATE SKIP LOCKED, routed, and leased
--      (locked_until = now() + lease, attempts + 1);
--   2. network I/O outside any transaction;
--   3. the outcome in a second short transaction: dispatch_sent,
--      dispatch_retry or dispatch_failed (or dispatch_record for a batch).
-- A lease that runs out (crashed worker) makes the message claimable again,
-- so a message is sent at least once; a second send of the same message id
-- happens only when the first transfer was in flight when its worker died.
--
-- Outcomes only act on a compatible state (a 'sent' outcome needs a queued
-- message), so a repeated or late call changes nothing. The message life
-- they move along (expire, fail, cascade, delivery reports) is in
-- 85_carriers.sql.

-- Claim up to `batch` due messages for carriers of `carrier_kinds` (and only
-- `only_carrier` when given): route, lock, lease. The route is computed in
-- the scan itself (sandbox messages → 'sandbox'; others by the longest
-- prefix, then priority, over enabled carriers that are not down), so rows
-- routed to other kinds are passed over without being locked, and a backlog
-- for one kind never hides another's messages. Carriers with max_per_second
-- get at most what their token bucket holds. A whatsapp_cloud message's
-- config names the account's number it goes from (whatsapp_sender). When
-- the claim comes back short, due messages that no carrier can take wait
-- 30 s (NO_ROUTE); they expire if that lasts past their validity.
CREATE FUNCTION envoisms.dispatch_claim(carrier_kinds text[], only_carrier text, batch int, lease interval)
RETURNS TABLE (account_id text, message_id text, carrier_id text, carrier_kind text, to_number text,
               sender_id text, channel text, body text, encoding text, segments int, buttons jsonb,
               metadata jsonb, attempts int, expires_at timestamptz, carrier_config jsonb)
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    allowance jsonb := '{}';
    used jsonb;
    routes regclass := envoisms.local_copy('envoisms.routes');
    carriers regclass := envoisms.local_copy('envoisms.carriers');
    claimed int := 0;
    n int;
    shard regclass;
    start int := (random() * 1023)::int;
    refilled_at timestamptz := now();
BEGIN
    IF batch IS NULL OR batch < 1 OR lease IS NULL OR lease <= interval '0' THEN
        RAISE EXCEPTION 'dispatch_claim needs a positive batch and lease'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF carriers IS NULL THEN
        RETURN;     -- a new cluster node before its first shard (local_copy())
    END IF;
    -- Refill the token buckets of rate-capped carriers this claim may use.
    IF EXISTS (SELECT 1 FROM envoisms.carriers c WHERE c.max_per_second IS NOT NULL AND c.kind = ANY (carrier_kinds)) THEN
        -- (now() as a value: Citus wants DO UPDATE's expressions immutable)
        INSERT INTO envoisms.carrier_rate_state AS s (carrier_id, tokens, updated_at)
        SELECT c.carrier_id, c.max_per_second, refilled_at FROM envoisms.carriers c
         WHERE c.max_per_second IS NOT NULL AND c.kind = ANY (carrier_kinds)
           AND (only_carrier IS NULL OR c.carrier_id = only_carrier)
        ON CONFLICT ON CONSTRAINT carrier_rate_state_pkey DO UPDATE
           SET tokens = least(EXCLUDED.tokens,
                              s.tokens + EXCLUDED.tokens * extract(epoch FROM refilled_at - s.updated_at)),
               updated_at = refilled_at;
        SELECT coalesce(jsonb_object_agg(s.carrier_id, floor(s.tokens)::int), '{}') INTO allowance
          FROM envoisms.carrier_rate_state s JOIN envoisms.carriers c ON c.carrier_id = s.carrier_id
         WHERE c.max_per_second IS NOT NULL AND c.kind = ANY (carrier_kinds)
           AND (only_carrier IS NULL OR c.carrier_id = only_carrier);
    END IF;

    -- on a cluster, this node's shards of messages, one after the other
    -- from a random one (96_distribute.sql); else envoisms.messages
    FOR shard IN SELECT t.s FROM envoisms.local_shards('envoisms.messages') WITH ORDINALITY t(s, i)
                  ORDER BY (t.i + start) % 1024 LOOP
        RETURN QUERY EXECUTE format($claim$
        WITH usable AS MATERIALIZED (
            SELECT r.channel, r.prefix, r.priority, c.carrier_id, c.kind, c.config
              FROM %2$s r JOIN %3$s c ON c.carrier_id = r.carrier_id
             WHERE c.enabled AND (c.down_until IS NULL OR c.down_until <= now())
        ), sandbox_carrier AS MATERIALIZED (
            SELECT c.carrier_id, c.kind, c.config FROM %3$s c WHERE c.carrier_id = 'sandbox'
        ), locked AS (
            SELECT m.account_id, m.message_id, m.next_attempt_at, rt.carrier_id AS routed, rt.kind, rt.config
              FROM %1$s m
             CROSS JOIN LATERAL (
                    SELECT sc.carrier_id, sc.kind, sc.config FROM sandbox_carrier sc WHERE m.sandbox
                    UNION ALL
                    (SELECT u.carrier_id, u.kind, u.config FROM usable u
                      WHERE NOT m.sandbox AND u.channel = m.channel AND starts_with(ltrim(m.to_number, '+'), u.prefix)
                      ORDER BY length(u.prefix) DESC, u.priority
                      LIMIT 1)
                    LIMIT 1) rt
             WHERE m.status = 'queued' AND m.next_attempt_at <= now()
               AND (m.locked_until IS NULL OR m.locked_until < now())
               AND m.expires_at > now()
               AND rt.kind = ANY ($1) AND ($2 IS NULL OR rt.carrier_id = $2)
               AND coalesce(($5->>rt.carrier_id)::int, 1) > 0
             ORDER BY m.next_attempt_at
             LIMIT $3
               FOR UPDATE OF m SKIP LOCKED
        ), chosen AS (
            SELECT l.* FROM (SELECT lk.*, row_number() OVER (PARTITION BY lk.routed ORDER BY lk.next_attempt_at) AS rn
                               FROM locked lk) l
             WHERE l.rn <= coalesce(($5->>l.routed)::int, 2147483647)
        ), leased AS (
            UPDATE %1$s m
               SET carrier_id = ch.routed, locked_until = now() + $4, attempts = m.attempts + 1,
                   updated_at = now()
              FROM chosen ch
             WHERE m.account_id = ch.account_id AND m.message_id = ch.message_id
            RETURNING m.account_id, m.message_id, m.carrier_id, ch.kind, m.to_number, m.sender_id, m.channel::text,
                      m.body, m.encoding::text, m.segments::int, m.buttons, m.metadata, m.attempts, m.expires_at,
                      ch.config, m.sandbox, m.campaign_id
        )
        SELECT l.account_id, l.message_id, l.carrier_id, l.kind, l.to_number, l.sender_id, l.channel,
               l.body, l.encoding, l.segments, l.buttons, l.metadata, l.attempts, l.expires_at,
               CASE WHEN l.kind = 'whatsapp_cloud' AND NOT l.sandbox
                    THEN l.config || envoisms.whatsapp_sender(l.account_id, l.message_id, l.campaign_id,
                                                           l.to_number, l.metadata)
                    ELSE l.config END
          FROM leased l
        $claim$, shard, routes, carriers) USING carrier_kinds, only_carrier, batch - claimed, lease, allowance;
        GET DIAGNOSTICS n = ROW_COUNT;
        claimed := claimed + n;
        IF n > 0 AND allowance <> '{}' THEN
            -- what this claim took from the rate-capped carriers' buckets: the
            -- rows this transaction leased (a statement of its own, for on a
            -- cluster the buckets are a reference table, written on every node)
            EXECUTE format('SELECT coalesce(jsonb_object_agg(u.carrier_id, u.used), ''{}'')
                              FROM (SELECT m.carrier_id, count(*) AS used FROM %s m
                                     WHERE m.carrier_id IN (SELECT jsonb_object_keys($1))
                                       AND m.updated_at = now() AND m.locked_until = now() + $2
                                     GROUP BY 1) u', shard) INTO used USING allowance, lease;
            UPDATE envoisms.carrier_rate_state s SET tokens = s.tokens - (used->>s.carrier_id)::int
             WHERE s.carrier_id IN (SELECT jsonb_object_keys(used));
            -- the next shard gets what the buckets still hold
            SELECT coalesce(jsonb_object_agg(s.carrier_id, floor(s.tokens)::int), '{}') INTO allowance
              FROM envoisms.carrier_rate_state s
             WHERE s.carrier_id IN (SELECT jsonb_object_keys(allowance));
        END IF;
        EXIT WHEN claimed >= batch;
    END LOOP;

    IF claimed < batch THEN
        -- what no carrier takes (no route, or only disabled / down carriers) waits
        FOR shard IN SELECT * FROM envoisms.local_shards('envoisms.messages') LOOP
            EXECUTE format($wait$
            UPDATE %1$s m
               SET next_attempt_at = now() + interval '30 seconds', error_code = 'NO_ROUTE',
                   error_message = 'no enabled carrier routes this number on this channel'
             WHERE m.ctid = ANY (ARRAY(
                    SELECT x.ctid FROM %1$s x
                     WHERE x.status = 'queued' AND x.next_attempt_at <= now() AND NOT x.sandbox
                       AND (x.locked_until IS NULL OR x.locked_until < now())
                       AND NOT EXISTS (SELECT 1 FROM %2$s r JOIN %3$s c ON c.carrier_id = r.carrier_id
                                        WHERE c.enabled AND (c.down_until IS NULL OR c.down_until <= now())
                                          AND r.channel = x.channel AND starts_with(ltrim(x.to_number, '+'), r.prefix))
                     ORDER BY x.next_attempt_at
                     LIMIT $1
                       FOR UPDATE SKIP LOCKED))
            $wait$, shard, routes, carriers) USING batch;
        END LOOP;
    END IF;
END
$$;

-- When the next claimable queued message is due (NULL when none): the
-- dispatcher's timed wake.
CREATE FUNCTION envoisms.dispatch_next_due() RETURNS timestamptz
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    shard regclass;
    due timestamptz;
    next_due timestamptz;
BEGIN
    -- on a cluster, this node's shards of messages (96_distribute.sql)
    FOR shard IN SELECT * FROM envoisms.local_shards('envoisms.messages') LOOP
        EXECUTE format('SELECT m.next_attempt_at FROM %s m
                         WHERE m.status = ''queued'' AND (m.locked_until IS NULL OR m.locked_until < now())
                         ORDER BY m.next_attempt_at LIMIT 1', shard) INTO due;
        next_due := least(next_due, due);
    END LOOP;
    RETURN next_due;
END
$$;

-- Release leases without an outcome (a worker stopping): the messages are
-- claimable at once and the attempt does not count.
CREATE FUNCTION envoisms.dispatch_release(account_id text, message_id text) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    UPDATE envoisms.messages m SET locked_until = NULL, attempts = greatest(m.attempts - 1, 0), updated_at = now()
     WHERE m.account_id = dispatch_release.account_id AND m.message_id = dispatch_release.message_id
       AND m.status = 'queued' AND m.locked_until IS NOT NULL;
    RETURN CASE WHEN FOUND THEN true END;
END
$$;

-- At a worker's start: release the leases taken before `since` (the start of
-- this server's shared memory, so leases of workers killed by a crash) on
-- carriers of the given kinds. Leases taken since belong to live workers.
CREATE FUNCTION envoisms.dispatch_reclaim(carrier_kinds text[], since timestamptz) RETURNS int
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    shard regclass;
    n int;
    released int := 0;
BEGIN
    -- on a cluster, this node's shards of messages (96_distribute.sql)
    FOR shard IN SELECT * FROM envoisms.local_shards('envoisms.messages') LOOP
        EXECUTE format('UPDATE %s m SET locked_until = NULL
                         WHERE m.status = ''queued'' AND m.locked_until > now() AND m.updated_at < $2
                           AND m.carrier_id IN (SELECT c.carrier_id FROM %s c WHERE c.kind = ANY ($1))',
                       shard, envoisms.local_copy('envoisms.carriers')) USING carrier_kinds, since;
        GET DIAGNOSTICS n = ROW_COUNT;
        released := released + n;
    END LOOP;
    RETURN released;
END
$$;

-- The carrier accepted the message: 'sent', then any report that came first.
-- Returns false when the message was not leased-queued (a late duplicate).
CREATE FUNCTION envoisms.dispatch_sent(account_id text, message_id text, carrier_id text, carrier_ref text)
RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    d record;
BEGIN
    UPDATE envoisms.messages m
       SET status = 'sent', sent_at = now(), carrier_id = dispatch_sent.carrier_id,
           carrier_ref = dispatch_sent.carrier_ref, locked_until = NULL, updated_at = now(),
           error_code = NULL, error_message = NULL
     WHERE m.account_id = dispatch_sent.account_id AND m.message_id = dispatch_sent.message_id
       AND m.status = 'queued';
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF carrier_ref IS NOT NULL THEN
        FOR d IN DELETE FROM envoisms.pending_dlrs p
                  WHERE p.carrier_id = dispatch_sent.carrier_id AND p.carrier_ref = dispatch_sent.carrier_ref
                 RETURNING p.status, p.error_code, p.error_message
        LOOP
            -- the first final report applied stays (the others are then 'ignored')
            IF d.status <> 'sent' THEN
                PERFORM envoisms.dlr_apply_message(account_id, message_id, d.status, d.error_code, d.error_message);
            END IF;
        END LOOP;
    END IF;
    RETURN true;
END
$$;

-- A transient failure: back to the queue after `delay`, or expired and
-- refunded when that is past the message's validity. Returns the status.
CREATE FUNCTION envoisms.dispatch_retry(account_id text, message_id text, error_code text, error_message text,
                                        delay interval)
RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    valid_until timestamptz;
BEGIN
    SELECT m.expires_at INTO valid_until FROM envoisms.messages m
     WHERE m.account_id = dispatch_retry.account_id AND m.message_id = dispatch_retry.message_id
       AND m.status = 'queued' FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF now() + coalesce(delay, interval '0') >= valid_until THEN
        PERFORM envoisms.message_expire(account_id, message_id, coalesce(error_code, 'EXPIRED'),
            'the message validity ended while retrying: ' || coalesce(error_message, 'carrier unavailable'));
        RETURN 'expired';
    END IF;
    UPDATE envoisms.messages m
       SET next_attempt_at = now() + coalesce(delay, interval '0'), locked_until = NULL, updated_at = now(),
           error_code = left(dispatch_retry.error_code, 100), error_message = left(dispatch_retry.error_message, 500)
     WHERE m.account_id = dispatch_retry.account_id AND m.message_id = dispatch_retry.message_id;
    RETURN 'queued';
END
$$;

-- A permanent failure (the carrier rejected the message): 'failed' and
-- refunded once, or back to the queue as an SMS for a cascade.
CREATE FUNCTION envoisms.dispatch_failed(account_id text, message_id text, error_code text, error_message text)
RETURNS text
LANGUAGE sql SET search_path = pg_catalog
RETURN envoisms.message_fail(account_id, message_id, left(error_code, 100), left(error_message, 500));

-- Record a batch of outcomes in one transaction (the dispatcher's second
-- transaction): [{"op":"sent"|"retry"|"failed"|"release", "a": account_id,
-- "m": message_id, "c": carrier_id, "r": carrier_ref, "code", "msg",
-- "delay_ms"}]. The 'sent' outcomes, nearly all of them, are applied in one
-- statement (then any early report); the others one by one. Returns how
-- many were applied.
CREATE FUNCTION envoisms.dispatch_record(outcomes jsonb) RETURNS int
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    o record;
    d record;
    n int := 0;
    ok boolean;
BEGIN
    WITH s AS (
        SELECT x.a, x.m, x.c, x.r FROM jsonb_to_recordset(outcomes) AS x(op text, a text, m text, c text, r text)
         WHERE x.op = 'sent'
    ), upd AS (
        UPDATE envoisms.messages m
           SET status = 'sent', sent_at = now(), carrier_id = s.c, carrier_ref = s.r, locked_until = NULL,
               updated_at = now(), error_code = NULL, error_message = NULL
          FROM s
         WHERE m.account_id = s.a AND m.message_id = s.m AND m.status = 'queued'
        RETURNING 1
    )
    SELECT count(*) INTO n FROM upd;
    -- delivery reports that came before the submit answer
    IF EXISTS (SELECT 1 FROM envoisms.pending_dlrs) THEN
        FOR d IN DELETE FROM envoisms.pending_dlrs p
                  USING jsonb_to_recordset(outcomes) AS x(op text, a text, m text, c text, r text)
                  WHERE x.op = 'sent' AND p.carrier_id = x.c AND p.carrier_ref = x.r
                 RETURNING x.a, x.m, p.status, p.error_code, p.error_message
        LOOP
            IF d.status <> 'sent' THEN
                PERFORM envoisms.dlr_apply_message(d.a, d.m, d.status, d.error_code, d.error_message);
            END IF;
        END LOOP;
    END IF;

    FOR o IN SELECT * FROM jsonb_to_recordset(outcomes)
                    AS x(op text, a text, m text, c text, r text, code text, msg text, delay_ms double precision)
              WHERE x.op <> 'sent'
    LOOP
        CASE o.op
        WHEN 'retry' THEN
            ok := envoisms.dispatch_retry(o.a, o.m, o.code, o.msg,
                                          make_interval(secs => coalesce(o.delay_ms, 0) / 1000)) IS NOT NULL;
        WHEN 'failed' THEN
            ok := envoisms.dispatch_failed(o.a, o.m, o.code, o.msg) IS NOT NULL;
        WHEN 'release' THEN
            ok := coalesce(envoisms.dispatch_release(o.a, o.m), false);
        ELSE
            RAISE EXCEPTION 'unknown dispatch outcome "%"', o.op USING ERRCODE = 'invalid_parameter_value';
        END CASE;
        IF ok THEN
            n := n + 1;
        END IF;
    END LOOP;
    RETURN n;
END
$$;

-- The sandbox carrier's delivery reports: messages it sent at least `delay`
-- ago become delivered (in one statement), or failed / expired for the
-- magic numbers. Returns how many were applied (at most `batch`).
CREATE FUNCTION envoisms.sandbox_deliver_due(delay interval, batch int) RETURNS int
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    m record;
    n int := 0;
    shard regclass;
BEGIN
    -- on a cluster, this node's shards of messages (96_distribute.sql)
    FOR shard IN SELECT * FROM envoisms.local_shards('envoisms.messages') LOOP
        EXIT WHEN n >= batch;
        FOR m IN EXECUTE format($due$
                 WITH due AS (
                     SELECT x.account_id, x.message_id, x.to_number FROM %1$s x
                      WHERE x.status = 'sent' AND left(x.carrier_ref, 4) = 'sbx_' AND x.sent_at <= now() - $1
                      ORDER BY x.sent_at LIMIT $2 FOR UPDATE SKIP LOCKED
                 ), delivered AS (
                     UPDATE %1$s x SET status = 'delivered', delivered_at = now(), updated_at = now()
                       FROM due
                      WHERE x.account_id = due.account_id AND x.message_id = due.message_id
                        AND due.to_number NOT IN ('+212600000001', '+212600000002')
                     RETURNING 1
                 )
                 SELECT due.*, (SELECT count(*) FROM delivered) AS n_delivered FROM due
                  WHERE due.to_number IN ('+212600000001', '+212600000002')
                 UNION ALL
                 SELECT NULL, NULL, NULL, (SELECT count(*) FROM delivered)
                 $due$, shard) USING delay, batch - n
        LOOP
            IF m.account_id IS NULL THEN
                n := n + m.n_delivered;
                CONTINUE;
            END IF;
            PERFORM envoisms.dlr_apply_message(m.account_id, m.message_id,
                CASE m.to_number WHEN '+212600000001' THEN 'failed' ELSE 'expired' END,
                CASE m.to_number WHEN '+212600000001' THEN 'SANDBOX_UNDELIVERABLE' ELSE 'SANDBOX_EXPIRED' END,
                CASE m.to_number WHEN '+212600000001' THEN 'sandbox magic number: the handset never acknowledged'
                                 ELSE 'sandbox magic number: the validity ran out at the carrier' END);
            n := n + 1;
        END LOOP;
    END LOOP;
    RETURN n;
END
$$;

-- When the next sandbox delivery report is due (NULL when none).
CREATE FUNCTION envoisms.sandbox_next_due(delay interval) RETURNS timestamptz
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    shard regclass;
    due timestamptz;
    next_due timestamptz;
BEGIN
    -- on a cluster, this node's shards of messages (96_distribute.sql)
    FOR shard IN SELECT * FROM envoisms.local_shards('envoisms.messages') LOOP
        EXECUTE format('SELECT x.sent_at + $1 FROM %s x
                         WHERE x.status = ''sent'' AND left(x.carrier_ref, 4) = ''sbx_''
                         ORDER BY x.sent_at LIMIT 1', shard) INTO due USING delay;
        next_due := least(next_due, due);
    END LOOP;
    RETURN next_due;
END
$$;
