-- 94_console_views.sql — what the console shows that no contract route
-- gives: the overview (from rollups, never a scan of messages), the
-- messages as CSV, a webhook's deliveries and their replay, OTP sessions
-- and their conversion, and the operator's area.
--
-- Rollups: a message's changes of status, channel or charge after it left
-- the queue append delta rows (console_rollup_deltas, its number and not
-- yet its operator, which folding looks up) from a trigger; the
-- send itself writes nothing more (the queued messages of the overview are
-- read from the dispatcher's partial queue index). Deltas are only
-- inserted, never updated, so the dispatchers' batches take no lock on a
-- shared counter row. console_rollup_fold() folds them into console_rollups
-- (per account, UTC day, channel, status, operator, delivery-time bucket):
-- the scheduler does it every pass, and the overview folds its account's
-- before reading. A delta is folded once: folders take them FOR UPDATE SKIP
-- LOCKED and delete what they fold in the same transaction.

CREATE TABLE envoisms.console_rollups (
    account_id   text NOT NULL,
    day          date NOT NULL,
    channel      text NOT NULL,
    status       text NOT NULL,
    operator     text NOT NULL,
    delay_bucket smallint NOT NULL,          -- delivered: console_delay_bucket(); else -1
    messages     bigint NOT NULL,
    spend_mad    numeric(18,4) NOT NULL,
    PRIMARY KEY (account_id, day, channel, status, operator, delay_bucket)
);
SELECT pg_catalog.pg_extension_config_dump('envoisms.console_rollups', '');

CREATE TABLE envoisms.console_rollup_deltas (
    account_id   text NOT NULL,
    delta_id     bigint GENERATED ALWAYS AS IDENTITY,
    day          date NOT NULL,
    channel      text NOT NULL,
    status       text NOT NULL,
    to_number    text NOT NULL,              -- its operator is looked up when folded, off the status change's path
    delay_bucket smallint NOT NULL,
    messages     int NOT NULL,
    spend_mad    numeric(18,4) NOT NULL,
    PRIMARY KEY (account_id, delta_id)
);
SELECT pg_catalog.pg_extension_config_dump('envoisms.console_rollup_deltas', '');
SELECT pg_catalog.pg_extension_config_dump('envoisms.console_rollup_deltas_delta_id_seq', '');

-- The upper bounds (seconds) of the delivery-time buckets.
CREATE FUNCTION envoisms.console_delay_bounds() RETURNS int[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE RETURN ARRAY[1, 2, 5, 10, 30, 60, 300, 900, 3600];

-- The delivery-time bucket of a delivered message (0 .. 9), else -1.
CREATE FUNCTION envoisms.console_delay_bucket(status text, created_at timestamptz, sent_at timestamptz,
                                              delivered_at timestamptz) RETURNS smallint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN status = 'delivered' AND delivered_at IS NOT NULL
            THEN width_bucket(extract(epoch FROM delivered_at - coalesce(sent_at, created_at))::float8,
                              envoisms.console_delay_bounds()::float8[])
            ELSE -1 END;

-- The Moroccan operator of a number as the overview names it.
CREATE FUNCTION envoisms.console_operator(e164 text) RETURNS text
LANGUAGE sql STABLE
RETURN CASE envoisms.carrier_of(e164) WHEN 'Maroc Telecom (IAM)' THEN 'IAM' WHEN 'Inwi' THEN 'Inwi'
                                      WHEN 'Orange' THEN 'Orange' ELSE 'other' END;

CREATE FUNCTION envoisms.messages_console_rollup() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    day date := (NEW.created_at AT TIME ZONE 'UTC')::date;
BEGIN
    IF OLD.status <> 'queued' THEN
        INSERT INTO envoisms.console_rollup_deltas (account_id, day, channel, status, to_number, delay_bucket, messages, spend_mad)
        VALUES (OLD.account_id, day, OLD.channel, OLD.status, OLD.to_number,
                envoisms.console_delay_bucket(OLD.status, OLD.created_at, OLD.sent_at, OLD.delivered_at),
                -1, OLD.refunded_mad - OLD.charged_mad);
    END IF;
    IF NEW.status <> 'queued' THEN
        INSERT INTO envoisms.console_rollup_deltas (account_id, day, channel, status, to_number, delay_bucket, messages, spend_mad)
        VALUES (NEW.account_id, day, NEW.channel, NEW.status, NEW.to_number,
                envoisms.console_delay_bucket(NEW.status, NEW.created_at, NEW.sent_at, NEW.delivered_at),
                1, NEW.charged_mad - NEW.refunded_mad);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER messages_console_rollup
    AFTER UPDATE OF status, channel, charged_mad, refunded_mad ON envoisms.messages
    FOR EACH ROW WHEN (NEW.direction = 'outbound'
                       AND (OLD.status IS DISTINCT FROM NEW.status OR OLD.channel IS DISTINCT FROM NEW.channel
                            OR OLD.charged_mad <> NEW.charged_mad OR OLD.refunded_mad <> NEW.refunded_mad))
    EXECUTE FUNCTION envoisms.messages_console_rollup();

-- Fold up to `batch` deltas (of one account, or of all) into the rollups;
-- returns how many. Deltas another folder holds are left to it.
CREATE FUNCTION envoisms.console_rollup_fold(account_id text DEFAULT NULL, batch int DEFAULT 10000) RETURNS int
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    shard regclass;
    n int;
    folded int := 0;
BEGIN
    -- on a cluster, this node's shards of the deltas and of the rollups
    -- beside them (96_distribute.sql); the tables themselves on one server
    FOR shard IN SELECT * FROM envoisms.local_shards('envoisms.console_rollup_deltas') LOOP
        EXECUTE format($fold$
            WITH picked AS (
                SELECT d.account_id, d.delta_id FROM %1$s d
                 WHERE $1 IS NULL OR d.account_id = $1
                 ORDER BY d.account_id, d.delta_id
                 LIMIT $2 FOR UPDATE SKIP LOCKED),
            folded AS (
                DELETE FROM %1$s d USING picked p
                 WHERE d.account_id = p.account_id AND d.delta_id = p.delta_id
                RETURNING d.*),
            summed AS (
                INSERT INTO %2$s AS r (account_id, day, channel, status, operator, delay_bucket, messages, spend_mad)
                SELECT f.account_id, f.day, f.channel, f.status, envoisms.console_operator(f.to_number), f.delay_bucket,
                       sum(f.messages), sum(f.spend_mad)
                  FROM folded f
                 GROUP BY 1, 2, 3, 4, 5, 6
                 ORDER BY 1, 2, 3, 4, 5, 6
                ON CONFLICT (account_id, day, channel, status, operator, delay_bucket) DO UPDATE
                   SET messages = r.messages + excluded.messages, spend_mad = r.spend_mad + excluded.spend_mad
                RETURNING 1)
            SELECT count(*)::int FROM folded WHERE (SELECT count(*) FROM summed) >= 0
            $fold$, shard, envoisms.colocated_shard(shard, 'envoisms.console_rollups'))
          INTO n USING account_id, batch - folded;
        folded := folded + n;
        EXIT WHEN folded >= batch;
    END LOOP;
    RETURN folded;
END
$$;
COMMENT ON FUNCTION envoisms.console_rollup_fold(text, int) IS
'Fold the console''s rollup deltas (of one account, or all) into console_rollups; returns how many (the scheduler calls it)';

-- Rebuild the rollups of one account (or all) from the messages themselves:
-- for messages sent before the console existed (the upgrade to 0.6.0 runs
-- it once), or to check the rollups. A scan of the messages, under a lock
-- that keeps the status trigger's deltas out while it runs; returns the
-- messages counted.
CREATE FUNCTION envoisms.console_rollup_rebuild(account_id text DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    n bigint;
BEGIN
    LOCK TABLE envoisms.console_rollup_deltas IN EXCLUSIVE MODE;
    DELETE FROM envoisms.console_rollup_deltas d WHERE console_rollup_rebuild.account_id IS NULL OR d.account_id = console_rollup_rebuild.account_id;
    DELETE FROM envoisms.console_rollups r WHERE console_rollup_rebuild.account_id IS NULL OR r.account_id = console_rollup_rebuild.account_id;
    INSERT INTO envoisms.console_rollups (account_id, day, channel, status, operator, delay_bucket, messages, spend_mad)
    SELECT m.account_id, (m.created_at AT TIME ZONE 'UTC')::date, m.channel, m.status, envoisms.console_operator(m.to_number),
           envoisms.console_delay_bucket(m.status, m.created_at, m.sent_at, m.delivered_at), count(*),
           sum(m.charged_mad - m.refunded_mad)
      FROM envoisms.messages m
     WHERE m.direction = 'outbound' AND m.status <> 'queued'
       AND (console_rollup_rebuild.account_id IS NULL OR m.account_id = console_rollup_rebuild.account_id)
     GROUP BY 1, 2, 3, 4, 5, 6;
    SELECT coalesce(sum(r.messages), 0) INTO n FROM envoisms.console_rollups r
     WHERE console_rollup_rebuild.account_id IS NULL OR r.account_id = console_rollup_rebuild.account_id;
    RETURN n;
END
$$;
COMMENT ON FUNCTION envoisms.console_rollup_rebuild(text) IS
'Rebuild the console''s rollups of an account (or all) from its messages; returns the messages counted';

-- An account's counters per (day, channel, status, operator, bucket) since
-- a day: the rollups, the deltas not folded yet, and the live queued messages.
CREATE FUNCTION envoisms.console_counts(account_id text, since date)
RETURNS TABLE (day date, channel text, status text, operator text, delay_bucket smallint, messages bigint, spend_mad numeric)
-- (PL/pgSQL: Citus plans no SQL function with parameters on its tables)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT c.day, c.channel, c.status, c.operator, c.delay_bucket, sum(c.messages)::bigint, sum(c.spend_mad)
      FROM (SELECT r.day, r.channel, r.status, r.operator, r.delay_bucket, r.messages, r.spend_mad
              FROM envoisms.console_rollups r
             WHERE r.account_id = console_counts.account_id AND r.day >= since
            UNION ALL
            SELECT d.day, d.channel, d.status, envoisms.console_operator(d.to_number), d.delay_bucket, d.messages, d.spend_mad
              FROM envoisms.console_rollup_deltas d
             WHERE d.account_id = console_counts.account_id AND d.day >= since
            UNION ALL
            -- the queue: the partial index messages_queue holds only queued rows
            SELECT (m.created_at AT TIME ZONE 'UTC')::date, m.channel, 'queued', '', -1::smallint, 1,
                   m.charged_mad - m.refunded_mad
              FROM envoisms.messages m
             WHERE m.status = 'queued' AND m.next_attempt_at > '-infinity'
               AND m.account_id = console_counts.account_id AND m.direction = 'outbound'
               AND m.created_at >= since) c
     GROUP BY 1, 2, 3, 4, 5
    HAVING sum(c.messages) <> 0 OR sum(c.spend_mad) <> 0;
END
$$;

-- GET /v1/console/overview?days=30
CREATE FUNCTION envoisms.console_overview(account_id text, days int DEFAULT 30) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    today date := (now() AT TIME ZONE 'UTC')::date;
    since date := today - (greatest(days, 30) - 1);
    balance numeric := envoisms.account_balance(account_id);
    result jsonb;
BEGIN
    PERFORM envoisms.console_rollup_fold(account_id, 100000);
    WITH counts AS MATERIALIZED (SELECT * FROM envoisms.console_counts(account_id, since)),
    windows(name, first_day) AS (VALUES ('today', today), ('7d', today - 6), ('30d', today - 29)),
    totals AS (
        SELECT w.name, jsonb_object_agg(ch.channel, (
                   SELECT jsonb_object_agg(st.status, coalesce((
                              SELECT sum(c.messages) FROM counts c
                               WHERE c.day >= w.first_day AND c.channel = ch.channel AND c.status = st.status), 0))
                     FROM unnest(ARRAY['queued', 'sent', 'delivered', 'failed', 'expired']) st(status))) AS by_channel
          FROM windows w, unnest(ARRAY['sms', 'whatsapp']) ch(channel)
         GROUP BY w.name),
    daily AS (
        SELECT d::date AS day,
               coalesce(sum(c.messages) FILTER (WHERE c.status <> 'queued'), 0) AS sent,
               coalesce(sum(c.messages) FILTER (WHERE c.status = 'delivered'), 0) AS delivered,
               coalesce(sum(c.messages) FILTER (WHERE c.status IN ('failed', 'expired')), 0) AS failed,
               coalesce(sum(c.spend_mad), 0) AS spend
          FROM generate_series(today - (days - 1), today, interval '1 day') d
          LEFT JOIN counts c ON c.day = d::date
         GROUP BY 1),
    ops AS (
        SELECT c.operator, sum(c.messages) AS messages,
               coalesce(sum(c.messages) FILTER (WHERE c.status = 'delivered'), 0) AS delivered,
               coalesce(sum(c.messages) FILTER (WHERE c.status IN ('failed', 'expired')), 0) AS failed
          FROM counts c
         WHERE c.status <> 'queued' AND c.day > today - days
         GROUP BY 1),
    buckets AS (
        SELECT c.operator, c.delay_bucket, sum(c.messages) AS n,
               sum(sum(c.messages)) OVER (PARTITION BY c.operator ORDER BY c.delay_bucket) AS running,
               sum(sum(c.messages)) OVER (PARTITION BY c.operator) AS total
          FROM counts c
         WHERE c.status = 'delivered' AND c.day > today - days AND c.delay_bucket >= 0
         GROUP BY 1, 2),
    medians AS (
        SELECT DISTINCT ON (b.operator) b.operator,
               (envoisms.console_delay_bounds())[b.delay_bucket + 1] AS seconds
          FROM buckets b WHERE b.running * 2 >= b.total
         ORDER BY b.operator, b.delay_bucket)
    SELECT jsonb_build_object(
        'balance', jsonb_build_object('mad', envoisms.money(balance), 'eur', envoisms.money(envoisms.mad_to_eur(balance))),
        'totals', (SELECT jsonb_object_agg(t.name, t.by_channel) FROM totals t),
        'daily', (SELECT jsonb_agg(jsonb_build_object(
                             'date', to_char(d.day, 'YYYY-MM-DD'), 'sent', d.sent, 'delivered', d.delivered,
                             'failed', d.failed,
                             'delivery_rate', CASE WHEN d.delivered + d.failed > 0
                                                   THEN round(d.delivered::numeric / (d.delivered + d.failed), 4) END,
                             'spend_mad', envoisms.money(d.spend)) ORDER BY d.day) FROM daily d),
        'operators', coalesce((SELECT jsonb_agg(jsonb_build_object(
                             'operator', o.operator, 'messages', o.messages, 'delivered', o.delivered,
                             'delivery_rate', CASE WHEN o.delivered + o.failed > 0
                                                   THEN round(o.delivered::numeric / (o.delivered + o.failed), 4) END,
                             'median_delivery_seconds', m.seconds) ORDER BY o.messages DESC, o.operator)
                                 FROM ops o LEFT JOIN medians m ON m.operator = o.operator), '[]'))
      INTO result;
    RETURN result;
END
$$;
COMMENT ON FUNCTION envoisms.console_overview(text, int) IS
'The console''s overview of an account: balance, counts by window, channel and status, per day and per operator, from rollups';

CREATE FUNCTION envoisms.api_console_overview(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.reply(200, envoisms.console_overview(req.account_id, envoisms.query_int(req.query, 'days', 30, 1, 90)));
END
$$;

-- ---- how many messages a list holds, exactly, without reading them

-- An account's inbound messages, counted without reading its outbound ones.
CREATE INDEX messages_inbound ON envoisms.messages (account_id, channel) WHERE direction = 'inbound';

-- The number of an account's messages with a status, channel and direction
-- (NULL: any), as count(*) of its messages would say: outbound messages that
-- left the queue from the rollups and their deltas (every change of status
-- passes the trigger above), queued ones from the queue's index, inbound
-- ones (born 'received') from messages_inbound. GET /v1/messages' "total".
CREATE FUNCTION envoisms.message_count(account_id text, status text DEFAULT NULL, channel text DEFAULT NULL,
                                       direction text DEFAULT NULL) RETURNS bigint
-- (PL/pgSQL: Citus plans no SQL function with parameters on its tables)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
BEGIN
    RETURN CASE WHEN coalesce(message_count.direction, 'outbound') = 'outbound' AND message_count.status IS DISTINCT FROM 'received' THEN
                    (SELECT coalesce(sum(x.messages), 0)
                       FROM (SELECT r.messages FROM envoisms.console_rollups r
                              WHERE r.account_id = message_count.account_id
                                AND (message_count.status IS NULL OR r.status = message_count.status)
                                AND (message_count.channel IS NULL OR r.channel = message_count.channel)
                             UNION ALL
                             SELECT d.messages FROM envoisms.console_rollup_deltas d
                              WHERE d.account_id = message_count.account_id
                                AND (message_count.status IS NULL OR d.status = message_count.status)
                                AND (message_count.channel IS NULL OR d.channel = message_count.channel)) x)
                    + CASE WHEN message_count.status IS NULL OR message_count.status = 'queued' THEN
                          (SELECT count(*) FROM envoisms.messages m
                            WHERE m.status = 'queued' AND m.next_attempt_at > '-infinity'
                              AND m.account_id = message_count.account_id AND m.direction = 'outbound'
                              AND (message_count.channel IS NULL OR m.channel = message_count.channel))
                      ELSE 0 END
                ELSE 0 END
         + CASE WHEN coalesce(message_count.direction, 'inbound') = 'inbound'
                     AND (message_count.status IS NULL OR message_count.status = 'received') THEN
                    (SELECT count(*) FROM envoisms.messages m
                      WHERE m.direction = 'inbound' AND m.account_id = message_count.account_id
                        AND (message_count.channel IS NULL OR m.channel = message_count.channel))
                ELSE 0 END;
END
$$;
COMMENT ON FUNCTION envoisms.message_count(text, text, text, text) IS
'How many messages of an account have a status, channel and direction, from the rollups, the queue and the inbound index';

-- ---- messages as CSV

-- A CSV field: quoted when it must be, and a leading = + - @ made inert
-- for spreadsheets.
CREATE FUNCTION envoisms.csv_field(value text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN value IS NULL THEN ''
            ELSE '"' || replace(CASE WHEN value ~ '^[=+@\t\r-]' THEN '''' || value ELSE value END, '"', '""') || '"' END;

-- GET /v1/console/messages/export: the filters of GET /v1/messages, at most 10,000 rows.
CREATE FUNCTION envoisms.api_console_messages_export(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    -- the filters checked as GET /v1/messages checks them
    recipient text := envoisms.message_filters_check(req.query->>'status', req.query->>'channel', NULL, req.query->>'to');
    lim int := envoisms.query_int(req.query, 'limit', 10000, 1, 10000);
    csv text;
BEGIN
    SELECT 'id,created_at,to,channel,status,segments,cost_mad,campaign_id,error_code,body' || E'\r\n'
           || coalesce(string_agg(concat_ws(',', m.message_id, envoisms.iso_time(m.created_at), m.to_number, m.channel,
                                            m.status, m.segments, m.cost_mad, envoisms.csv_field(m.campaign_id),
                                            envoisms.csv_field(m.error_code),
                                            envoisms.csv_field(envoisms.message_body_shown(m.body, m.metadata))),
                                  E'\r\n' ORDER BY m.message_id DESC) || E'\r\n', '')
      INTO csv
      FROM (SELECT * FROM envoisms.messages x
             WHERE x.account_id = req.account_id
               AND (req.query->>'status' IS NULL OR x.status = req.query->>'status')
               AND (req.query->>'channel' IS NULL OR x.channel = req.query->>'channel')
               AND (req.query->>'to' IS NULL OR x.to_number = recipient)
               AND (req.query->>'campaign_id' IS NULL OR x.campaign_id = req.query->>'campaign_id')
               AND (req.query->>'from_date' IS NULL OR x.created_at >= envoisms.parse_time(req.query->>'from_date', 'from_date'))
               AND (req.query->>'to_date' IS NULL OR x.created_at <= envoisms.parse_time(req.query->>'to_date', 'to_date'))
             ORDER BY x.message_id DESC LIMIT lim) m;
    RETURN ROW(200, jsonb_build_object('Content-Type', 'text/csv; charset=utf-8',
                                       'Content-Disposition', 'attachment; filename="messages.csv"',
                                       'Cache-Control', 'no-store'),
               to_jsonb(csv))::envoisms.api_reply;
END
$$;

-- ---- webhooks: deliveries and replay

-- When a delivery was last tried and how long that took (webhook_record(),
-- 87_webhook_delivery.sql, from the webhook worker's transfer times).
ALTER TABLE envoisms.webhook_deliveries
    ADD COLUMN last_attempt_at timestamptz,
    ADD COLUMN last_latency_ms int CHECK (last_latency_ms >= 0);

CREATE FUNCTION envoisms.console_delivery_json(d envoisms.webhook_deliveries) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog
RETURN jsonb_build_object('delivery_id', d.delivery_id::text, 'webhook_id', d.webhook_id, 'event', d.event_type,
                          'event_id', d.event_id, 'status', d.status, 'attempts', d.attempts,
                          'response_code', d.last_status, 'latency_ms', d.last_latency_ms,
                          'created_at', envoisms.iso_time(d.created_at),
                          'last_attempt_at', envoisms.iso_time(d.last_attempt_at),
                          'next_attempt_at', CASE WHEN d.status = 'pending' THEN envoisms.iso_time(d.next_attempt_at) END,
                          'error', d.last_error);

-- GET /v1/console/webhooks/:id/deliveries?limit=&status=
CREATE FUNCTION envoisms.api_console_webhook_deliveries(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
<<api_console_webhook_deliveries>>
DECLARE
    lim int := envoisms.query_int(req.query, 'limit', 50, 1, 200);
    status text := req.query->>'status';
BEGIN
    IF status IS NOT NULL AND status NOT IN ('pending', 'delivered', 'failed', 'cancelled') THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'status must be pending, delivered, failed or cancelled', 'status');
    END IF;
    IF NOT EXISTS (SELECT 1 FROM envoisms.webhooks w WHERE w.account_id = req.account_id AND w.webhook_id = req.id
                                                       AND w.deleted_at IS NULL) THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'webhook not found', 'id');
    END IF;
    RETURN envoisms.reply(200, jsonb_build_object('data', coalesce((
        SELECT jsonb_agg(envoisms.console_delivery_json(d) ORDER BY d.delivery_id DESC)
          FROM (SELECT * FROM envoisms.webhook_deliveries x
                 WHERE x.account_id = req.account_id AND x.webhook_id = req.id
                   AND (api_console_webhook_deliveries.status IS NULL OR x.status = api_console_webhook_deliveries.status)
                 ORDER BY x.delivery_id DESC LIMIT lim) d), '[]')));
END
$$;

-- Deliver a failed (or cancelled) delivery again: a new delivery of the
-- same event, the same bytes; returns its id.
CREATE FUNCTION envoisms.webhook_delivery_replay(account_id text, delivery_id bigint) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    d envoisms.webhook_deliveries;
    id bigint;
BEGIN
    SELECT x.* INTO d FROM envoisms.webhook_deliveries x
      JOIN envoisms.webhooks w ON w.account_id = x.account_id AND w.webhook_id = x.webhook_id AND w.deleted_at IS NULL
     WHERE x.account_id = webhook_delivery_replay.account_id AND x.delivery_id = webhook_delivery_replay.delivery_id;
    IF NOT FOUND THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'webhook delivery not found', 'id');
    END IF;
    IF d.status NOT IN ('failed', 'cancelled') THEN
        PERFORM envoisms.raise_error('CONFLICT', format('the delivery is %s; only a failed one is replayed', d.status), 'id');
    END IF;
    INSERT INTO envoisms.webhook_deliveries (account_id, webhook_id, event_id, event_type, payload)
    VALUES (d.account_id, d.webhook_id, d.event_id, d.event_type, d.payload)
    RETURNING webhook_deliveries.delivery_id INTO id;
    PERFORM envoisms.wake_webhooks();
    RETURN id;
END
$$;
COMMENT ON FUNCTION envoisms.webhook_delivery_replay(text, bigint) IS
'Deliver a failed webhook delivery again (same event id and bytes); returns the new delivery''s id';

-- POST /v1/console/webhook-deliveries/:id/replay
CREATE FUNCTION envoisms.api_console_delivery_replay(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    IF req.id !~ '^[0-9]{1,18}$' THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'webhook delivery not found', 'id');
    END IF;
    RETURN envoisms.reply(202, jsonb_build_object(
        'delivery_id', envoisms.webhook_delivery_replay(req.account_id, req.id::bigint)::text, 'status', 'queued'));
END
$$;

-- ---- OTP sessions

-- GET /v1/console/verifications?limit=&status=: never a code.
CREATE FUNCTION envoisms.api_console_verifications(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
<<api_console_verifications>>
DECLARE
    lim int := envoisms.query_int(req.query, 'limit', 50, 1, 200);
    status text := req.query->>'status';
    since timestamptz := now() - interval '30 days';
BEGIN
    IF status IS NOT NULL AND status NOT IN ('pending', 'verified', 'expired', 'failed', 'cancelled') THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'status must be pending, verified, expired, failed or cancelled', 'status');
    END IF;
    RETURN envoisms.reply(200, jsonb_build_object(
        'data', coalesce((
            SELECT jsonb_agg(jsonb_build_object('verification_id', v.session_id, 'to', v.to_number, 'channel', v.channel,
                                                'status', v.shown, 'attempts', v.attempts,
                                                'created_at', envoisms.iso_time(v.created_at),
                                                'expires_at', envoisms.iso_time(v.expires_at),
                                                'verified_at', envoisms.iso_time(v.verified_at)) ORDER BY v.session_id DESC)
              FROM (SELECT s.*, CASE WHEN s.status = 'sent' AND s.expires_at <= now() THEN 'expired'
                                     WHEN s.status = 'sent' THEN 'pending'
                                     WHEN s.status = 'voided' THEN 'cancelled' ELSE s.status END AS shown
                      FROM envoisms.verify_sessions s
                     WHERE s.account_id = req.account_id
                       AND (api_console_verifications.status IS NULL
                            OR CASE WHEN s.status = 'sent' AND s.expires_at <= now() THEN 'expired'
                                    WHEN s.status = 'sent' THEN 'pending'
                                    WHEN s.status = 'voided' THEN 'cancelled' ELSE s.status END
                               = api_console_verifications.status)
                     ORDER BY s.session_id DESC LIMIT lim) v), '[]'),
        'conversion_rate', (SELECT round(count(*) FILTER (WHERE s.status = 'verified')::numeric / nullif(count(*), 0), 4)
                              FROM envoisms.verify_sessions s
                             WHERE s.account_id = req.account_id AND s.session_id >= envoisms.console_id_floor('vrf', since)),
        'window_days', 30));
END
$$;

-- The smallest id of a prefix made at or after a time (ids start with their
-- 12 hex digits of milliseconds, ids.c), for range scans of primary keys.
CREATE FUNCTION envoisms.console_id_floor(prefix text, since timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN prefix || '_' || lpad(to_hex((extract(epoch FROM since) * 1000)::bigint), 12, '0');

-- ---- campaign progress and the ledger

-- GET /v1/console/campaigns/:id/progress: the campaign's messages by status
-- (index messages_campaign), for the live progress of a running campaign.
CREATE FUNCTION envoisms.api_console_campaign_progress(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    c record;
BEGIN
    SELECT x.campaign_id, x.status, x.total_count INTO c FROM envoisms.campaigns x
     WHERE x.account_id = req.account_id AND x.campaign_id = req.id;
    IF NOT FOUND THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'campaign not found', 'id');
    END IF;
    RETURN envoisms.reply(200, jsonb_build_object(
        'campaign_id', c.campaign_id, 'status', c.status, 'total_count', c.total_count,
        'counts', (SELECT jsonb_object_agg(st.status, coalesce(n.n, 0))
                     FROM unnest(ARRAY['queued', 'sent', 'delivered', 'failed', 'expired']) st(status)
                     LEFT JOIN (SELECT m.status, count(*) AS n FROM envoisms.messages m
                                 WHERE m.account_id = req.account_id AND m.campaign_id = req.id
                                 GROUP BY m.status) n ON n.status = st.status)));
END
$$;

-- GET /v1/console/ledger?limit=&offset=: the account's ledger, newest first.
CREATE FUNCTION envoisms.api_console_ledger(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    lim int := envoisms.query_int(req.query, 'limit', 50, 1, 200);
    off int := envoisms.query_int(req.query, 'offset', 0, 0, 1000000000);
BEGIN
    RETURN envoisms.reply(200, jsonb_build_object(
        'data', coalesce((SELECT jsonb_agg(jsonb_build_object(
                                     'entry_id', l.entry_id::text, 'kind', l.kind, 'amount_mad', envoisms.money(l.amount_mad),
                                     'reference', l.reference, 'message_id', l.message_id, 'topup_id', l.topup_id,
                                     'created_at', envoisms.iso_time(l.created_at)) ORDER BY l.entry_id DESC)
                            FROM (SELECT * FROM envoisms.ledger x WHERE x.account_id = req.account_id
                                   ORDER BY x.entry_id DESC LIMIT lim OFFSET off) l), '[]'),
        'total', (SELECT count(*) FROM envoisms.ledger x WHERE x.account_id = req.account_id)));
END
$$;

-- ---- the operator's area (users with the operator flag)

CREATE FUNCTION envoisms.console_operator_account_json(account_id text) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog AS $$
    SELECT jsonb_build_object('account_id', a.account_id, 'name', a.name, 'status', a.status, 'plan', a.plan,
                              'channels', to_jsonb(a.channels),
                              'balance_mad', envoisms.money(envoisms.account_balance(a.account_id)),
                              'users', (SELECT count(*) FROM envoisms.console_users u WHERE u.account_id = a.account_id),
                              'created_at', envoisms.iso_time(a.created_at))
      FROM envoisms.accounts a WHERE a.account_id = console_operator_account_json.account_id
$$;

-- GET /v1/console/operator/accounts?limit=&offset=
CREATE FUNCTION envoisms.api_console_operator_accounts(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    lim int := envoisms.query_int(req.query, 'limit', 50, 1, 200);
    off int := envoisms.query_int(req.query, 'offset', 0, 0, 1000000000);
BEGIN
    PERFORM envoisms.console_caller(req, operator => true);
    RETURN envoisms.reply(200, jsonb_build_object(
        'data', coalesce((SELECT jsonb_agg(envoisms.console_operator_account_json(a.account_id) ORDER BY a.account_id)
                            FROM (SELECT x.account_id FROM envoisms.accounts x ORDER BY x.account_id LIMIT lim OFFSET off) a), '[]'),
        'total', (SELECT count(*) FROM envoisms.accounts)));
END
$$;

-- POST /v1/console/operator/accounts {"name","balance_mad"}
CREATE FUNCTION envoisms.api_console_operator_account_create(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    name text := btrim(envoisms.body_text(req.body, 'name'));
    id text;
BEGIN
    PERFORM envoisms.console_caller(req, operator => true);
    IF name IS NULL OR length(name) NOT BETWEEN 1 AND 200 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'name must be 1 to 200 characters', 'name');
    END IF;
    id := envoisms.account_create(name, coalesce(envoisms.body_amount(req.body, 'balance_mad'), 0));
    RETURN envoisms.reply(201, envoisms.console_operator_account_json(id));
END
$$;

-- The account an operator route names, or NOT_FOUND.
CREATE FUNCTION envoisms.console_operator_target(req envoisms.api_request) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
BEGIN
    PERFORM envoisms.console_caller(req, operator => true);
    IF NOT EXISTS (SELECT 1 FROM envoisms.accounts a WHERE a.account_id = req.id) THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'account not found', 'id');
    END IF;
    RETURN req.id;
END
$$;

-- PATCH /v1/console/operator-accounts/:id {"status":"active"|"suspended"}
CREATE FUNCTION envoisms.api_console_operator_account_update(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
<<api_console_operator_account_update>>
DECLARE
    id text := envoisms.console_operator_target(req);
    status text := envoisms.body_text(req.body, 'status');
BEGIN
    IF status IS NULL OR status NOT IN ('active', 'suspended') THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'status must be "active" or "suspended"', 'status');
    END IF;
    UPDATE envoisms.accounts a SET status = api_console_operator_account_update.status
     WHERE a.account_id = id AND a.status <> 'closed';
    IF NOT FOUND THEN
        PERFORM envoisms.raise_error('CONFLICT', 'a closed account stays closed', 'status');
    END IF;
    RETURN envoisms.reply(200, envoisms.console_operator_account_json(id));
END
$$;

-- POST /v1/console/operator-accounts/:id/topup {"amount_mad","reference"}
CREATE FUNCTION envoisms.api_console_operator_topup(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    id text := envoisms.console_operator_target(req);
    reference text := envoisms.body_text(req.body, 'reference');
BEGIN
    IF length(reference) > 200 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'reference must be at most 200 characters', 'reference');
    END IF;
    RETURN envoisms.reply(201, jsonb_build_object('account_id', id, 'balance_mad', envoisms.money(
        envoisms.account_topup(id, envoisms.body_amount(req.body, 'amount_mad'), coalesce(reference, 'operator top-up')))));
END
$$;

CREATE FUNCTION envoisms.console_prices_json(account_id text) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog AS $$
    SELECT jsonb_build_object('data', jsonb_agg(jsonb_build_object(
               'channel', c.channel,
               'mad', envoisms.money(envoisms.unit_price(console_prices_json.account_id, c.channel, 'MAD')),
               'eur', envoisms.money(envoisms.unit_price(console_prices_json.account_id, c.channel, 'EUR')),
               'default', NOT EXISTS (SELECT 1 FROM envoisms.prices p
                                       WHERE p.account_id = console_prices_json.account_id AND p.channel = c.channel))
               ORDER BY c.channel))
      FROM unnest(ARRAY['sms', 'whatsapp']) c(channel)
$$;

-- GET /v1/console/operator-accounts/:id/prices
CREATE FUNCTION envoisms.api_console_operator_prices(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.reply(200, envoisms.console_prices_json(envoisms.console_operator_target(req)));
END
$$;

-- PUT /v1/console/operator-accounts/:id/prices {"prices":[{"channel","mad","eur"}]}:
-- the account's own prices (a channel left out goes back to the defaults).
CREATE FUNCTION envoisms.api_console_operator_prices_set(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    id text := envoisms.console_operator_target(req);
    p jsonb;
BEGIN
    IF jsonb_typeof(req.body->'prices') IS DISTINCT FROM 'array' THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'prices must be an array of {channel, mad, eur}', 'prices');
    END IF;
    DELETE FROM envoisms.prices x WHERE x.account_id = id;
    FOR p IN SELECT * FROM jsonb_array_elements(req.body->'prices') LOOP
        IF jsonb_typeof(p) <> 'object' OR envoisms.body_text(p, 'channel') IS DISTINCT FROM 'sms'
           AND envoisms.body_text(p, 'channel') IS DISTINCT FROM 'whatsapp' THEN
            PERFORM envoisms.raise_error('VALIDATION_ERROR', 'each price needs channel "sms" or "whatsapp"', 'prices');
        END IF;
        IF envoisms.body_amount(p, 'mad') IS NULL OR envoisms.body_amount(p, 'mad') < 0
           OR envoisms.body_amount(p, 'eur') IS NULL OR envoisms.body_amount(p, 'eur') < 0 THEN
            PERFORM envoisms.raise_error('VALIDATION_ERROR', 'each price needs mad and eur, zero or more', 'prices');
        END IF;
        INSERT INTO envoisms.prices (account_id, channel, currency, unit_price)
        VALUES (id, p->>'channel', 'MAD', (p->>'mad')::numeric), (id, p->>'channel', 'EUR', (p->>'eur')::numeric)
        ON CONFLICT (account_id, channel, currency) DO UPDATE SET unit_price = excluded.unit_price;
    END LOOP;
    RETURN envoisms.reply(200, envoisms.console_prices_json(id));
END
$$;

-- The SMPP binds' state, or nothing when the library is not preloaded.
CREATE FUNCTION envoisms.console_smpp_binds() RETURNS SETOF record
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN QUERY SELECT b.carrier_id, b.state, b.submitted, b.last_error FROM envoisms.smpp_binds() b;
EXCEPTION WHEN OTHERS THEN
    RETURN;
END
$$;

-- GET /v1/console/operator/carriers
CREATE FUNCTION envoisms.api_console_operator_carriers(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    PERFORM envoisms.console_caller(req, operator => true);
    RETURN envoisms.reply(200, jsonb_build_object('data', coalesce((
        SELECT jsonb_agg(jsonb_build_object(
                   'carrier_id', c.carrier_id, 'kind', c.kind, 'name', c.name, 'enabled', c.enabled,
                   'max_per_second', c.max_per_second, 'down_until', envoisms.iso_time(c.down_until),
                   'bind_state', b.state, 'submitted', b.submitted, 'last_error', b.last_error,
                   'routes', coalesce((SELECT jsonb_agg(jsonb_build_object('channel', r.channel, 'prefix', r.prefix,
                                                                          'priority', r.priority)
                                                        ORDER BY r.channel, r.prefix, r.priority)
                                         FROM envoisms.routes r WHERE r.carrier_id = c.carrier_id), '[]'))
                   ORDER BY c.carrier_id)
          FROM envoisms.carriers c
          LEFT JOIN envoisms.console_smpp_binds() b(carrier_id text, state text, submitted bigint, last_error text)
                 ON b.carrier_id = c.carrier_id), '[]')));
END
$$;

-- GET /v1/console/operator/workers: each worker's counters and the queues' depths.
CREATE FUNCTION envoisms.api_console_operator_workers(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    PERFORM envoisms.console_caller(req, operator => true);
    RETURN envoisms.reply(200, jsonb_build_object(
        'workers', coalesce((SELECT jsonb_agg(jsonb_build_object(
                                 'worker', w.worker, 'kind', w.kind, 'index', w.index, 'pid', w.pid,
                                 'started_at', envoisms.iso_time(w.started_at), 'claimed', w.claimed, 'sent', w.sent,
                                 'failed', w.failed, 'retried', w.retried, 'in_flight', w.in_flight,
                                 'last_error', w.last_error, 'last_error_at', envoisms.iso_time(w.last_error_at))
                                 ORDER BY w.kind, w.index)
                               FROM envoisms.worker_stats w), '[]'),
        'queues', jsonb_build_object(
            'messages_queued', (SELECT count(*) FROM envoisms.messages m WHERE m.status = 'queued' AND m.next_attempt_at > '-infinity'),
            'messages_due', (SELECT count(*) FROM envoisms.messages m WHERE m.status = 'queued' AND m.next_attempt_at <= now()),
            'webhooks_pending', (SELECT count(*) FROM envoisms.webhook_deliveries d WHERE d.status = 'pending' AND d.next_attempt_at > '-infinity'),
            'webhooks_due', (SELECT count(*) FROM envoisms.webhook_deliveries d WHERE d.status = 'pending' AND d.next_attempt_at <= now()),
            'rollup_deltas', (SELECT count(*) FROM envoisms.console_rollup_deltas))));
END
$$;

-- GET /v1/console/operator/dead-letters?limit=: webhook deliveries that failed for good.
CREATE FUNCTION envoisms.api_console_operator_dead_letters(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    lim int := envoisms.query_int(req.query, 'limit', 50, 1, 200);
BEGIN
    PERFORM envoisms.console_caller(req, operator => true);
    RETURN envoisms.reply(200, jsonb_build_object('data', coalesce((
        SELECT jsonb_agg(envoisms.console_delivery_json(d) || jsonb_build_object('account_id', d.account_id)
                         ORDER BY d.created_at DESC, d.delivery_id DESC)
          FROM (SELECT * FROM envoisms.webhook_deliveries x WHERE x.status = 'failed'
                 ORDER BY x.created_at DESC, x.delivery_id DESC LIMIT lim) d), '[]')));
END
$$;

INSERT INTO envoisms.api_endpoints (method, template, handler, permission, public) VALUES
    ('GET',  '/v1/console/overview',                        'envoisms.api_console_overview(envoisms.api_request)',            'analytics', false),
    ('GET',  '/v1/console/messages/export',                 'envoisms.api_console_messages_export(envoisms.api_request)',     'status',    false),
    ('GET',  '/v1/console/webhooks/:id/deliveries',         'envoisms.api_console_webhook_deliveries(envoisms.api_request)',  'webhooks',  false),
    ('POST', '/v1/console/webhook-deliveries/:id/replay',   'envoisms.api_console_delivery_replay(envoisms.api_request)',     'webhooks',  false),
    ('GET',  '/v1/console/campaigns/:id/progress',          'envoisms.api_console_campaign_progress(envoisms.api_request)',   'campaigns', false),
    ('GET',  '/v1/console/ledger',                          'envoisms.api_console_ledger(envoisms.api_request)',              'billing',   false),
    ('GET',  '/v1/console/verifications',                   'envoisms.api_console_verifications(envoisms.api_request)',      'verify',    false),
    ('GET',  '/v1/console/operator/accounts',               'envoisms.api_console_operator_accounts(envoisms.api_request)',   'console', false),
    ('POST', '/v1/console/operator/accounts',               'envoisms.api_console_operator_account_create(envoisms.api_request)', 'console', false),
    ('PATCH', '/v1/console/operator-accounts/:id',          'envoisms.api_console_operator_account_update(envoisms.api_request)', 'console', false),
    ('POST', '/v1/console/operator-accounts/:id/topup',     'envoisms.api_console_operator_topup(envoisms.api_request)',      'console', false),
    ('GET',  '/v1/console/operator-accounts/:id/prices',    'envoisms.api_console_operator_prices(envoisms.api_request)',     'console', false),
    ('PUT',  '/v1/console/operator-accounts/:id/prices',    'envoisms.api_console_operator_prices_set(envoisms.api_request)', 'console', false),
    ('GET',  '/v1/console/operator/carriers',               'envoisms.api_console_operator_carriers(envoisms.api_request)',   'console', false),
    ('GET',  '/v1/console/operator/workers',                'envoisms.api_console_operator_workers(envoisms.api_request)',    'console', false),
    ('GET',  '/v1/console/operator/dead-letters',           'envoisms.api_console_operator_dead_letters(envoisms.api_request)', 'console', false);
