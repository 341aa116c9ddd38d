-- 87_webhook_delivery.sql — the webhook worker's claim and outcome
-- functions.
--
-- Webhook deliveries follow the dispatcher's shape: claim with FOR UPDATE
-- SKIP LOCKED and a lease, POST outside any transaction, record the
-- outcome in a second short transaction. The payload and event id were
-- fixed when the delivery was queued (35_events.sql), so every retry sends
-- the same bytes. A 410 Gone, or failures without a single success for
-- envoisms.webhook_disable_after, disable the webhook and cancel its
-- pending deliveries.

-- Claim up to `batch` due deliveries, at most `per_endpoint` per webhook
-- minus what the worker already has in flight to it (`busy`:
-- {"<account_id>/<webhook_id>": n}). The choice is made on a plain read;
-- only the chosen rows are then locked (SKIP LOCKED, conditions re-checked),
-- so a claim never writes row locks it does not use. Deliveries of deleted
-- or disabled webhooks are cancelled (a message.test is delivered to a
-- disabled one).
CREATE FUNCTION envoisms.webhook_claim(batch int, lease interval, per_endpoint int, busy jsonb DEFAULT '{}')
RETURNS TABLE (account_id text, delivery_id bigint, webhook_id text, event_id text, event_type text,
               payload text, attempts int, url text, secret text, signature_format text)
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    shard regclass;
    claimed int := 0;
    n int;
BEGIN
    -- on a cluster, this node's shards of webhook_deliveries (96_distribute.sql)
    FOR shard IN SELECT * FROM envoisms.local_shards('envoisms.webhook_deliveries') LOOP
        RETURN QUERY EXECUTE format($claim$
        WITH candidates AS (
            SELECT d.account_id, d.delivery_id, d.webhook_id, d.event_type, d.next_attempt_at,
                   d.account_id || '/' || d.webhook_id AS endpoint
              FROM %1$s d
             WHERE d.status = 'pending' AND d.next_attempt_at <= now()
               AND (d.locked_until IS NULL OR d.locked_until < now())
               AND coalesce(($4->>(d.account_id || '/' || d.webhook_id))::int, 0) < $3
             ORDER BY d.next_attempt_at
             LIMIT $1 * 4
        ), ranked AS (
            SELECT c.*, w.url, w.secret, w.signature_format,
                   w.deleted_at IS NULL AND (w.active OR c.event_type = 'message.test') AS live,
                   row_number() OVER (PARTITION BY c.endpoint ORDER BY c.next_attempt_at) AS rn
              FROM candidates c
              JOIN %2$s w ON w.account_id = c.account_id AND w.webhook_id = c.webhook_id
        ), picked AS (
            SELECT r.* FROM ranked r
             WHERE NOT r.live OR r.rn <= $3 - coalesce(($4->>r.endpoint)::int, 0)
             ORDER BY r.next_attempt_at
             LIMIT $1
        ), locked AS (
            SELECT p.account_id, p.delivery_id, p.url, p.secret, p.signature_format, p.live
              FROM %1$s d
              JOIN picked p ON p.account_id = d.account_id AND p.delivery_id = d.delivery_id
             WHERE d.status = 'pending' AND (d.locked_until IS NULL OR d.locked_until < now())
               FOR UPDATE OF d SKIP LOCKED
        ), cancelled AS (
            UPDATE %1$s d
               SET status = 'cancelled', last_error = 'the webhook was disabled or deleted', locked_until = NULL
              FROM locked l
             WHERE NOT l.live AND d.account_id = l.account_id AND d.delivery_id = l.delivery_id
            RETURNING 1
        ), leased AS (
            UPDATE %1$s d
               SET locked_until = now() + $2, attempts = d.attempts + 1
              FROM locked l
             WHERE l.live AND d.account_id = l.account_id AND d.delivery_id = l.delivery_id
            RETURNING d.account_id, d.delivery_id, d.webhook_id, d.event_id, d.event_type, d.payload, d.attempts,
                      l.url, l.secret, l.signature_format
        )
        SELECT l.* FROM leased l
        $claim$, shard, envoisms.colocated_shard(shard, 'envoisms.webhooks')) USING batch - claimed, lease, per_endpoint, busy;
        GET DIAGNOSTICS n = ROW_COUNT;
        claimed := claimed + n;
        EXIT WHEN claimed >= batch;
    END LOOP;
END
$$;

-- When the next webhook delivery is due (NULL when none pending).
CREATE FUNCTION envoisms.webhook_next_due() RETURNS timestamptz
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    shard regclass;
    due timestamptz;
    next_due timestamptz;
BEGIN
    -- on a cluster, this node's shards of webhook_deliveries (96_distribute.sql)
    FOR shard IN SELECT * FROM envoisms.local_shards('envoisms.webhook_deliveries') LOOP
        EXECUTE format('SELECT d.next_attempt_at FROM %s d
                         WHERE d.status = ''pending'' AND (d.locked_until IS NULL OR d.locked_until < now())
                         ORDER BY d.next_attempt_at LIMIT 1', shard) INTO due;
        next_due := least(next_due, due);
    END LOOP;
    RETURN next_due;
END
$$;

-- Stop a webhook: inactive, with the reason; its pending deliveries cancelled.
CREATE FUNCTION envoisms.webhook_disable(account_id text, webhook_id text, reason text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
#variable_conflict use_column
BEGIN
    UPDATE envoisms.webhooks w SET active = false, disabled_reason = left(reason, 200)
     WHERE w.account_id = webhook_disable.account_id AND w.webhook_id = webhook_disable.webhook_id;
    UPDATE envoisms.webhook_deliveries d
       SET status = 'cancelled', locked_until = NULL, last_error = left('the webhook was disabled: ' || reason, 500)
     WHERE d.account_id = webhook_disable.account_id AND d.webhook_id = webhook_disable.webhook_id
       AND d.status = 'pending';
END
$$;

-- The outcome of one attempt: http_status (NULL without an HTTP answer),
-- error (NULL on success), retry_in_ms (NULL when the schedule is over).
-- Returns the delivery's new status. Only a leased pending delivery changes.
CREATE FUNCTION envoisms.webhook_delivery_result(account_id text, delivery_id bigint, http_status int,
                                                 error text, retry_in_ms bigint,
                                                 disable_after interval DEFAULT interval '5 days')
RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    d envoisms.webhook_deliveries;
    since timestamptz;
BEGIN
    SELECT * INTO d FROM envoisms.webhook_deliveries x
     WHERE x.account_id = webhook_delivery_result.account_id AND x.delivery_id = webhook_delivery_result.delivery_id
       AND x.status = 'pending' FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF error IS NULL AND http_status BETWEEN 200 AND 299 THEN
        UPDATE envoisms.webhook_deliveries x
           SET status = 'delivered', delivered_at = now(), last_status = http_status, last_error = NULL,
               locked_until = NULL
         WHERE x.account_id = d.account_id AND x.delivery_id = d.delivery_id;
        UPDATE envoisms.webhooks w
           SET last_triggered_at = now(), last_status = http_status, failing_since = NULL
         WHERE w.account_id = d.account_id AND w.webhook_id = d.webhook_id
           AND (w.last_triggered_at IS DISTINCT FROM now() OR w.last_status IS DISTINCT FROM http_status
                OR w.failing_since IS NOT NULL);
        RETURN 'delivered';
    END IF;

    UPDATE envoisms.webhooks w
       SET last_triggered_at = now(), last_status = http_status, failing_since = coalesce(w.failing_since, now())
     WHERE w.account_id = d.account_id AND w.webhook_id = d.webhook_id
    RETURNING w.failing_since INTO since;
    UPDATE envoisms.webhook_deliveries x
       SET last_status = http_status, last_error = left(coalesce(error, 'HTTP ' || http_status), 500),
           locked_until = NULL,
           status = CASE WHEN retry_in_ms IS NULL OR http_status = 410 THEN 'failed' ELSE 'pending' END,
           next_attempt_at = CASE WHEN retry_in_ms IS NULL THEN x.next_attempt_at
                                  ELSE now() + make_interval(secs => retry_in_ms / 1000.0) END
     WHERE x.account_id = d.account_id AND x.delivery_id = d.delivery_id;
    IF http_status = 410 THEN
        PERFORM envoisms.webhook_disable(d.account_id, d.webhook_id, 'the endpoint answered 410 Gone');
        RETURN 'failed';
    END IF;
    IF since < now() - disable_after THEN
        PERFORM envoisms.webhook_disable(d.account_id, d.webhook_id,
            format('deliveries failed without a success since %s', envoisms.iso_time(since)));
        RETURN 'failed';
    END IF;
    RETURN CASE WHEN retry_in_ms IS NULL THEN 'failed' ELSE 'pending' END;
END
$$;

-- Record a batch of webhook outcomes in one transaction:
-- [{"a": account_id, "d": delivery_id, "s": http_status, "e": error, "r": retry_in_ms,
--   "l": the attempt's milliseconds}] (the attempt's time and duration are
-- kept for the console's deliveries log, 94_console_views.sql).
-- Successes (no error, 2xx) end with one update per webhook; failures go
-- through webhook_delivery_result. Returns how many were applied.
CREATE FUNCTION envoisms.webhook_record(outcomes jsonb, disable_after interval DEFAULT interval '5 days')
RETURNS int
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    o record;
    n int := 0;
    hook text;
    hooks jsonb := '{}';
BEGIN
    -- one primary-key update per success (a join would let the planner pick a
    -- sequential scan of the deliveries while the table's statistics are young)
    FOR o IN SELECT x.a, x.d, x.s, x.l FROM jsonb_to_recordset(outcomes) AS x(a text, d bigint, s int, e text, l int)
              WHERE x.e IS NULL AND x.s BETWEEN 200 AND 299
    LOOP
        UPDATE envoisms.webhook_deliveries w
           SET status = 'delivered', delivered_at = now(), last_status = o.s, last_error = NULL, locked_until = NULL,
               last_attempt_at = now(), last_latency_ms = o.l
         WHERE w.account_id = o.a AND w.delivery_id = o.d AND w.status = 'pending'
        RETURNING w.webhook_id INTO hook;
        IF FOUND THEN
            n := n + 1;
            hooks := hooks || jsonb_build_object(o.a || '/' || hook, o.s);
        END IF;
    END LOOP;
    UPDATE envoisms.webhooks h
       SET last_triggered_at = now(), last_status = (x.value)::int, failing_since = NULL
      FROM jsonb_each_text(hooks) x
     WHERE h.account_id = split_part(x.key, '/', 1) AND h.webhook_id = split_part(x.key, '/', 2);

    FOR o IN SELECT * FROM jsonb_to_recordset(outcomes) AS x(a text, d bigint, s int, e text, r bigint, l int)
              WHERE NOT (x.e IS NULL AND x.s BETWEEN 200 AND 299)
    LOOP
        IF envoisms.webhook_delivery_result(o.a, o.d, o.s, o.e, o.r, disable_after) IS NOT NULL THEN
            n := n + 1;
            UPDATE envoisms.webhook_deliveries w SET last_attempt_at = now(), last_latency_ms = o.l
             WHERE w.account_id = o.a AND w.delivery_id = o.d;
        END IF;
    END LOOP;
    RETURN n;
END
$$;

-- Release webhook leases without an outcome (a worker stopping).
CREATE FUNCTION envoisms.webhook_release(account_id text, delivery_id bigint) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
#variable_conflict use_column
BEGIN
    UPDATE envoisms.webhook_deliveries d SET locked_until = NULL, attempts = greatest(d.attempts - 1, 0)
     WHERE d.account_id = webhook_release.account_id AND d.delivery_id = webhook_release.delivery_id
       AND d.status = 'pending' AND d.locked_until IS NOT NULL;
END
$$;

-- At a worker's start: release webhook leases taken before `since` (the
-- previous server run; `lease` is the lease length they were taken with).
CREATE FUNCTION envoisms.webhook_reclaim(since timestamptz, lease interval) RETURNS int
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    shard regclass;
    n int;
    released int := 0;
BEGIN
    -- on a cluster, this node's shards of webhook_deliveries (96_distribute.sql)
    FOR shard IN SELECT * FROM envoisms.local_shards('envoisms.webhook_deliveries') LOOP
        EXECUTE format('UPDATE %s d SET locked_until = NULL
                         WHERE d.status = ''pending'' AND d.locked_until > now() AND d.locked_until - $2 < $1',
                       shard) USING since, lease;
        GET DIAGNOSTICS n = ROW_COUNT;
        released := released + n;
    END LOOP;
    RETURN released;
END
$$;
