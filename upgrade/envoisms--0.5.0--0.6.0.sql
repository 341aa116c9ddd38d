-- envoisms 0.5.0 -> 0.6.0 (ALTER EXTENSION envoisms UPDATE). Frozen with the
-- 0.6.0 release: its definitions are those of src/sql at 0.6.0.
\echo Use "ALTER EXTENSION envoisms UPDATE TO '0.6.0'" to load this file. \quit

-- ---- ha: request tokens, a write request's reply by the gateway's token (81_request_outcomes.sql)
CREATE TABLE envoisms.request_outcomes (
    request_token uuid PRIMARY KEY,
    status        int CHECK (status BETWEEN 100 AND 399),   -- NULL: abandoned by the gateway
    headers       jsonb,
    body          jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CHECK ((status IS NULL) = (headers IS NULL))
);
COMMENT ON TABLE envoisms.request_outcomes IS
'Replies of the gateway''s write requests by request token, for an hour: what the gateway answers after a lost connection';

-- envoisms.api() with its reply recorded under request_token when it
-- succeeds, in the same transaction (what the gateway calls for a request
-- that may write). Fails, and rolls the request back, when the token was
-- abandoned by request_outcome() meanwhile.
CREATE FUNCTION envoisms.api_once(request_token uuid, method text, path text, query text DEFAULT '',
                                  headers jsonb DEFAULT '{}', body text DEFAULT NULL, client_ip inet DEFAULT NULL)
RETURNS SETOF envoisms.api_reply
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rep envoisms.api_reply;
BEGIN
    SELECT * INTO rep FROM envoisms.api(method, path, query, headers, body, client_ip);
    IF rep.status < 400 THEN
        INSERT INTO envoisms.request_outcomes (request_token, status, headers, body)
        VALUES (api_once.request_token, rep.status, coalesce(rep.headers, '{}'), rep.body);
    END IF;
    RETURN NEXT rep;
END
$$;
COMMENT ON FUNCTION envoisms.api_once(uuid, text, text, text, jsonb, text, inet) IS
'envoisms.api() with its reply recorded under the gateway''s request token, for request_outcome()';

-- The reply recorded under request_token, with Envoisms-Recovered: true;
-- no row when the request did not commit, and then it never will (the token
-- is recorded as abandoned). Waits for a request still running with that
-- token on this server.
CREATE FUNCTION envoisms.request_outcome(request_token uuid) RETURNS SETOF envoisms.api_reply
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    o envoisms.request_outcomes;
BEGIN
    -- a write either way, so that this commit waits for the synchronous standby
    INSERT INTO envoisms.request_outcomes AS r (request_token) VALUES (request_outcome.request_token)
    ON CONFLICT ON CONSTRAINT request_outcomes_pkey DO UPDATE SET created_at = r.created_at
    RETURNING r.* INTO o;
    IF o.status IS NOT NULL THEN
        RETURN NEXT ROW(o.status, o.headers || '{"Envoisms-Recovered": "true"}', o.body)::envoisms.api_reply;
    END IF;
END
$$;
COMMENT ON FUNCTION envoisms.request_outcome(uuid) IS
'The committed reply of the gateway''s request token, or none, and then the token can never commit';

-- Delete outcomes older than keep; returns how many (the scheduler calls it
-- every minute). A token's first 48 bits are its gateway's clock in ms.
CREATE FUNCTION envoisms.request_outcome_purge(keep interval DEFAULT interval '1 hour') RETURNS int
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    n int;
    bound uuid := (lpad(to_hex((extract(epoch FROM now() - keep) * 1000)::bigint), 12, '0')
                   || repeat('0', 20))::uuid;
BEGIN
    DELETE FROM envoisms.request_outcomes r WHERE r.request_token < bound AND r.created_at < now() - keep;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;
REVOKE ALL ON envoisms.request_outcomes FROM PUBLIC;
REVOKE ALL ON FUNCTION envoisms.api_once(uuid, text, text, text, jsonb, text, inet),
                       envoisms.request_outcome(uuid), envoisms.request_outcome_purge(interval) FROM PUBLIC;

-- ---- scale-out: envoisms on a Citus cluster (src/sql/93_distribute.sql)
-- SQL functions that read tables become PL/pgSQL, claims and sweeps run
-- per shard of this node, and envoisms.distribute() turns an install on
-- a Citus coordinator into the sharded layout (docs/scale.md).

CREATE OR REPLACE FUNCTION envoisms.account_balance(account_id text) RETURNS numeric
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT sum(b.balance_mad) FROM envoisms.balance_buckets b WHERE b.account_id = account_balance.account_id);
END
$$;
COMMENT ON FUNCTION envoisms.account_balance(text) IS
'An account''s balance in MAD (the sum of its balance buckets)';

CREATE OR REPLACE FUNCTION envoisms.balance_books(only_account text)
RETURNS TABLE (account_id text, balance_mad numeric, explained_mad numeric, ok boolean)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
BEGIN
    RETURN QUERY
    WITH b AS (SELECT bb.account_id, sum(bb.balance_mad) AS s FROM envoisms.balance_buckets bb
                WHERE only_account IS NULL OR bb.account_id = only_account
                GROUP BY 1),
         l AS (SELECT le.account_id, sum(le.amount_mad) AS s FROM envoisms.ledger le
                WHERE only_account IS NULL OR le.account_id = only_account
                GROUP BY 1),
         m AS (SELECT me.account_id, sum(me.charged_mad) AS s FROM envoisms.messages me
                WHERE only_account IS NULL OR me.account_id = only_account
                GROUP BY 1)
    SELECT b.account_id, b.s, coalesce(l.s, 0) - coalesce(m.s, 0), b.s = coalesce(l.s, 0) - coalesce(m.s, 0)
      FROM b LEFT JOIN l ON l.account_id = b.account_id LEFT JOIN m ON m.account_id = b.account_id
     ORDER BY 1;
END
$$;

CREATE OR REPLACE FUNCTION envoisms.balance_check(account_id text DEFAULT NULL)
RETURNS TABLE (account_id text, balance_mad numeric, explained_mad numeric, ok boolean)
LANGUAGE sql STABLE AS $$
    SELECT * FROM envoisms.balance_books(balance_check.account_id)
$$;
COMMENT ON FUNCTION envoisms.balance_check(text) IS
'Prove the books: per account, the balance against what the ledger and the messages explain (ok = they agree)';

CREATE OR REPLACE FUNCTION envoisms.channel_prices(account_id text, channel text)
RETURNS TABLE (mad numeric, eur numeric)
LANGUAGE plpgsql STABLE ROWS 1 SET search_path = pg_catalog AS $$
BEGIN
    RETURN QUERY
    SELECT coalesce(max(p.unit_price) FILTER (WHERE p.currency = 'MAD' AND p.account_id <> '*'),
                    max(p.unit_price) FILTER (WHERE p.currency = 'MAD' AND p.account_id = '*')),
           coalesce(max(p.unit_price) FILTER (WHERE p.currency = 'EUR' AND p.account_id <> '*'),
                    max(p.unit_price) FILTER (WHERE p.currency = 'EUR' AND p.account_id = '*'))
      FROM envoisms.prices p
     WHERE p.account_id IN (channel_prices.account_id, '*') AND p.channel = channel_prices.channel;
END
$$;

CREATE OR REPLACE FUNCTION envoisms.check_account_channel(account_id text, channel text, OUT mad numeric, OUT eur numeric)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    acc record;         -- account_lookup(): status, channels, has_optouts
BEGIN
    IF channel IS NULL OR channel NOT IN ('sms', 'whatsapp') THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'channel must be "sms" or "whatsapp"', 'channel');
    END IF;
    -- the per-backend caches (accounts.c, prices.c): plain expressions
    acc := envoisms.account_lookup(account_id);
    mad := envoisms.unit_price(account_id, channel, 'MAD');
    eur := envoisms.unit_price(account_id, channel, 'EUR');
    IF acc.status IS NULL THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'account not found', 'account_id');
    ELSIF acc.status <> 'active' THEN
        PERFORM envoisms.raise_error('FORBIDDEN', format('the account is %s', acc.status));
    ELSIF NOT channel = ANY (acc.channels) THEN
        PERFORM envoisms.raise_error('CHANNEL_NOT_ALLOWED',
            format('the %s channel is not enabled on this account', channel), 'channel');
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION envoisms.analytics_summary(account_id text, from_date timestamptz DEFAULT NULL,
                                           to_date timestamptz DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
    RETURN (
        WITH live AS (
            SELECT count(*) AS total, count(*) FILTER (WHERE m.status = 'delivered') AS delivered,
                   count(*) FILTER (WHERE m.status IN ('failed', 'expired')) AS failed,
                   coalesce(sum(m.charged_mad - m.refunded_mad), 0) AS cost
              FROM envoisms.messages m
             WHERE m.account_id = analytics_summary.account_id AND m.direction = 'outbound'
               AND (from_date IS NULL OR m.created_at >= from_date) AND (to_date IS NULL OR m.created_at <= to_date)),
        old AS (
            SELECT coalesce(sum(r.total), 0) AS total, coalesce(sum(r.delivered), 0) AS delivered,
                   coalesce(sum(r.failed), 0) AS failed, coalesce(sum(r.cost_mad), 0) AS cost
              FROM envoisms.message_rollups r
             WHERE r.account_id = analytics_summary.account_id
               AND (from_date IS NULL OR r.day >= (from_date AT TIME ZONE 'UTC')::date)
               AND (to_date IS NULL OR r.day <= (to_date AT TIME ZONE 'UTC')::date))
        SELECT jsonb_build_object('summary', jsonb_build_object(
            'total', live.total + old.total,
            'delivered', live.delivered + old.delivered,
            'failed', live.failed + old.failed,
            'delivery_rate', CASE WHEN live.total + old.total = 0 THEN 0
                                  ELSE round(100.0 * (live.delivered + old.delivered) / (live.total + old.total), 1) END,
            'cost_mad', envoisms.money(live.cost + old.cost)))
          FROM live, old);
END
$$;
COMMENT ON FUNCTION envoisms.analytics_summary(text, timestamptz, timestamptz) IS
'Volumes, delivery rate and billed cost of an account between two times (GET /v1/analytics)';

CREATE OR REPLACE FUNCTION envoisms.webhook_enqueue(account_id text, event_type text, data jsonb,
                                         only_webhook text DEFAULT NULL)
RETURNS int
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    event_id text := envoisms.new_id('evt');
    payload text;
    hooks text[];
    hook text;
BEGIN
    SELECT array_agg(w.webhook_id) INTO hooks FROM envoisms.webhooks w
     WHERE w.account_id = webhook_enqueue.account_id AND w.deleted_at IS NULL
       AND (only_webhook IS NOT NULL AND w.webhook_id = only_webhook
            OR only_webhook IS NULL AND w.active AND event_type = ANY (w.events));
    -- most status changes have no subscriber: do not render a payload for nobody
    IF hooks IS NULL THEN
        RETURN 0;
    END IF;
    -- "event" and "timestamp" repeat "type" and "created_at" under the names
    -- the official SDKs' WebhookEvent reads
    payload := jsonb_build_object('id', event_id, 'type', event_type, 'event', event_type,
                                  'created_at', envoisms.iso_time(now()), 'timestamp', envoisms.iso_time(now()),
                                  'data', data)::text;
    -- one INSERT … VALUES per webhook (usually one), not INSERT … SELECT:
    -- on a cluster Citus runs the latter through the coordinator
    FOREACH hook IN ARRAY hooks LOOP
        INSERT INTO envoisms.webhook_deliveries (account_id, webhook_id, event_id, event_type, payload)
        VALUES (account_id, hook, event_id, event_type, payload);
    END LOOP;
    PERFORM envoisms.wake_webhooks();
    RETURN cardinality(hooks);
END
$$;

CREATE OR REPLACE FUNCTION envoisms.message_announce(m envoisms.messages) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    INSERT INTO envoisms.message_events (account_id, message_id, status, detail)
    VALUES (m.account_id, m.message_id, m.status,
            jsonb_strip_nulls(jsonb_build_object('error_code', m.error_code, 'error_message', m.error_message,
                                                 'carrier_id', m.carrier_id)));
    IF m.status IN ('sent', 'delivered', 'failed', 'expired', 'received')
       AND EXISTS (SELECT 1 FROM envoisms.webhooks w
                    WHERE w.account_id = m.account_id AND w.deleted_at IS NULL AND w.active
                      AND 'message.' || m.status = ANY (w.events)) THEN
        PERFORM envoisms.webhook_enqueue(m.account_id, 'message.' || m.status, envoisms.message_event_data(m));
    END IF;
    -- on a cluster, not in a transaction another node coordinates: it may
    -- end in a two-phase commit, which a NOTIFY forbids (docs/scale.md)
    IF NOT envoisms.cluster_mode() OR left(current_setting('application_name'), 14) <> 'citus_internal' THEN
        PERFORM pg_notify('envoisms_message_status',
                          json_build_object('id', m.message_id, 'account_id', m.account_id, 'status', m.status)::text);
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION envoisms.messages_status_changed() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    IF TG_TABLE_NAME = 'messages' THEN
        PERFORM envoisms.message_announce(NEW);
    ELSE
        -- on a cluster the trigger fires on a shard of messages, whose row
        -- type is the shard's own (93_distribute.sql)
        PERFORM envoisms.message_announce(ROW(NEW.*)::envoisms.messages);
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION envoisms.carrier_of(e164 text) RETURNS text
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
#variable_conflict use_column
BEGIN
    RETURN (
        SELECT CASE c.carrier WHEN 'Maroc Telecom' THEN 'Maroc Telecom (IAM)' ELSE c.carrier END
          FROM envoisms.carrier_prefixes c
         WHERE c.prefix = ANY (ARRAY(SELECT left(ltrim(e164, '+'), n) FROM generate_series(1, 15) n))
         ORDER BY length(c.prefix) DESC
         LIMIT 1);
END
$$;

CREATE OR REPLACE FUNCTION envoisms.contact_search(account_id text, list_id text, searching boolean, words tsquery,
                                        phone_prefix text, digits text, email_prefix text)
RETURNS SETOF envoisms.contacts
LANGUAGE plpgsql STABLE SET plan_cache_mode = force_custom_plan AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT c.* FROM envoisms.contacts c
     WHERE c.account_id = contact_search.account_id
       AND (contact_search.list_id IS NULL OR EXISTS (
               SELECT 1 FROM envoisms.list_members m
                WHERE m.account_id = c.account_id AND m.list_id = contact_search.list_id
                  AND m.contact_id = c.contact_id))
       AND (NOT searching
            OR to_tsvector('simple'::regconfig, coalesce(c.name, '')) @@ words
            OR c.phone LIKE phone_prefix || '%'
            OR reverse(c.phone) LIKE reverse(digits) || '%'
            OR lower(c.email) LIKE replace(replace(replace(email_prefix, '\', '\\'), '%', '\%'), '_', '\_') || '%');
END
$$;

CREATE OR REPLACE FUNCTION envoisms.contact_list(account_id text, "limit" int DEFAULT 100, "offset" int DEFAULT 0,
                                      q text DEFAULT NULL, list_id text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog SET plan_cache_mode = force_custom_plan AS $$
DECLARE
    words tsquery;
    phone_prefix text;
    digits text;
    email_prefix text;
    rows jsonb;
    n bigint;
BEGIN
    PERFORM envoisms.check_page("limit", "offset", 500);
    IF q IS NOT NULL AND length(q) > 100 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'q must be at most 100 characters', 'q');
    END IF;
    PERFORM envoisms.check_list(account_id, list_id);
    q := nullif(btrim(q), '');
    IF q IS NOT NULL THEN
        phone_prefix := envoisms.contact_phone_prefix(q);
        -- a phone fragment (digits, +, spaces) is not searched among words
        words := CASE WHEN phone_prefix IS NULL THEN envoisms.contact_words_query(q) END;
        digits := CASE WHEN phone_prefix IS NOT NULL AND length(phone_prefix) >= 5 THEN ltrim(phone_prefix, '+') END;
        email_prefix := CASE WHEN q !~ '\s' THEN lower(q) END;
        IF words IS NULL AND phone_prefix IS NULL AND email_prefix IS NULL THEN
            RETURN jsonb_build_object('data', '[]'::jsonb, 'limit', "limit", 'offset', "offset", 'total', 0);
        END IF;
    END IF;

    IF q IS NULL THEN
        -- a listing: the page walks the primary key backwards, the total counts
        WITH listed AS NOT MATERIALIZED (
            SELECT c.* FROM envoisms.contacts c
             WHERE c.account_id = contact_list.account_id
               AND (contact_list.list_id IS NULL OR EXISTS (
                       SELECT 1 FROM envoisms.list_members m
                        WHERE m.account_id = c.account_id AND m.list_id = contact_list.list_id
                          AND m.contact_id = c.contact_id)))
        SELECT (SELECT count(*) FROM listed),
               (SELECT coalesce(jsonb_agg(envoisms.contact_json(ROW(p.*)::envoisms.contacts) ORDER BY p.contact_id DESC), '[]')
                  FROM (SELECT * FROM listed l ORDER BY l.contact_id DESC LIMIT "limit" OFFSET "offset") p)
          INTO n, rows;
    ELSE
        -- a search: the hits come from the indexes (BitmapOr) once, then are
        -- counted and sorted; never a walk of the primary key that filters
        -- every contact (the planner cannot estimate prefix matches)
        WITH hits AS MATERIALIZED (
            SELECT * FROM envoisms.contact_search(account_id, list_id, true, words, phone_prefix, digits, email_prefix))
        SELECT (SELECT count(*) FROM hits),
               (SELECT coalesce(jsonb_agg(envoisms.contact_json(p) ORDER BY p.contact_id DESC), '[]')
                  FROM (SELECT * FROM hits h ORDER BY h.contact_id DESC LIMIT "limit" OFFSET "offset") p)
          INTO n, rows;
    END IF;
    RETURN jsonb_build_object('data', rows, 'limit', "limit", 'offset', "offset", 'total', n);
END
$$;
COMMENT ON FUNCTION envoisms.contact_list(text, int, int, text, text) IS
'A page of an account''s contacts, searched by name, phone or email, or by list (GET /v1/contacts)';

CREATE OR REPLACE FUNCTION envoisms.contact_list_json(l envoisms.contact_lists) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
    RETURN (
        SELECT jsonb_build_object('id', l.list_id, 'name', l.name, 'description', l.description,
                                  'count', (SELECT count(*) FROM envoisms.list_members m
                                             WHERE m.account_id = l.account_id AND m.list_id = l.list_id),
                                  'created_at', envoisms.iso_time(l.created_at)));
END
$$;

CREATE OR REPLACE FUNCTION envoisms.contact_lists(account_id text) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
    RETURN (
        SELECT jsonb_build_object('data', coalesce(jsonb_agg(envoisms.contact_list_json(ROW(l.*)::envoisms.contact_lists) ORDER BY l.list_id DESC), '[]'))
          FROM envoisms.contact_lists l WHERE l.account_id = contact_lists.account_id);
END
$$;
COMMENT ON FUNCTION envoisms.contact_lists(text) IS
'Every contact list of an account with its member count (GET /v1/contacts/lists)';

CREATE OR REPLACE FUNCTION envoisms.template_list(account_id text) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
    RETURN (
        SELECT jsonb_build_object('data', coalesce(jsonb_agg(envoisms.template_json(ROW(t.*)::envoisms.templates) ORDER BY t.template_id DESC), '[]'))
          FROM envoisms.templates t WHERE t.account_id = template_list.account_id);
END
$$;
COMMENT ON FUNCTION envoisms.template_list(text) IS
'Every template of an account (GET /v1/templates)';

CREATE OR REPLACE FUNCTION envoisms.campaign_json(c envoisms.campaigns) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
    RETURN (
        SELECT jsonb_build_object(
            'id', c.campaign_id, 'name', c.name, 'channel', c.channel, 'list_id', c.list_id,
            'template_id', c.template_id, 'body', c.body, 'sender_id', c.sender_id, 'status', c.status,
            'scheduled_at', envoisms.iso_time(c.scheduled_at), 'buttons', c.buttons, 'metadata', c.metadata,
            'total_count', coalesce(c.total_count, 0),
            'sent_count', CASE WHEN c.started_at IS NULL THEN 0 ELSE
                              (SELECT count(*) FROM envoisms.messages m
                                WHERE m.account_id = c.account_id AND m.campaign_id = c.campaign_id
                                  AND m.status IN ('sent', 'delivered')) END,
            'started_at', envoisms.iso_time(c.started_at), 'completed_at', envoisms.iso_time(c.completed_at),
            'recurring_schedule', c.recurring_schedule,
            'error', CASE WHEN c.error_code IS NOT NULL
                          THEN jsonb_build_object('code', c.error_code, 'message', c.error_message) END,
            'created_at', envoisms.iso_time(c.created_at)));
END
$$;

CREATE OR REPLACE FUNCTION envoisms.campaign_list(account_id text) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
    RETURN (
        SELECT jsonb_build_object('data', coalesce(jsonb_agg(envoisms.campaign_json(ROW(c.*)::envoisms.campaigns) ORDER BY c.campaign_id DESC), '[]'))
          FROM envoisms.campaigns c WHERE c.account_id = campaign_list.account_id);
END
$$;
COMMENT ON FUNCTION envoisms.campaign_list(text) IS
'Every campaign of an account (GET /v1/campaigns)';

CREATE OR REPLACE FUNCTION envoisms.campaigns_start_due() RETURNS int
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    c record;
    started int := 0;
    shard regclass;
    err_state text;
    err_message text;
BEGIN
    -- on a cluster, this node's shards of campaigns (93_distribute.sql)
    FOR shard IN SELECT * FROM envoisms.local_shards('envoisms.campaigns') LOOP
        FOR c IN EXECUTE format('SELECT x.account_id, x.campaign_id FROM %s x
                                  WHERE x.status = ''scheduled'' AND x.scheduled_at <= now()
                                  ORDER BY x.scheduled_at
                                  LIMIT 100
                                    FOR UPDATE SKIP LOCKED', shard) LOOP
            BEGIN
                PERFORM envoisms.campaign_launch(c.account_id, c.campaign_id);
                started := started + 1;
            EXCEPTION WHEN OTHERS THEN
                GET STACKED DIAGNOSTICS err_state = RETURNED_SQLSTATE, err_message = MESSAGE_TEXT;
                UPDATE envoisms.campaigns x
                   SET status = 'cancelled',
                       error_code = coalesce((SELECT e.code FROM envoisms.error_codes e WHERE e.sqlstate = err_state), 'INTERNAL_ERROR'),
                       error_message = left(err_message, 500)
                 WHERE x.account_id = c.account_id AND x.campaign_id = c.campaign_id;
            END;
        END LOOP;
    END LOOP;
    RETURN started;
END
$$;

CREATE OR REPLACE FUNCTION envoisms.campaigns_complete_finished() RETURNS int
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    n int;
    completed int := 0;
    shard regclass;
BEGIN
    -- on a cluster, this node's shards of campaigns and their messages (93_distribute.sql)
    FOR shard IN SELECT * FROM envoisms.local_shards('envoisms.campaigns') LOOP
        EXECUTE format($done$
        WITH done AS (
            SELECT x.account_id, x.campaign_id FROM %1$s x
             WHERE x.status = 'running'
               AND NOT EXISTS (SELECT 1 FROM %2$s m
                                WHERE m.account_id = x.account_id AND m.campaign_id = x.campaign_id
                                  AND m.status = 'queued')
               FOR UPDATE SKIP LOCKED)
        UPDATE %1$s x SET status = 'completed', completed_at = now()
          FROM done WHERE x.account_id = done.account_id AND x.campaign_id = done.campaign_id
        $done$, shard, envoisms.colocated_shard(shard, 'envoisms.messages'));
        GET DIAGNOSTICS n = ROW_COUNT;
        completed := completed + n;
    END LOOP;
    RETURN completed;
END
$$;

CREATE OR REPLACE FUNCTION envoisms.webhook_list(account_id text) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
    RETURN (
        SELECT jsonb_build_object('data', coalesce(jsonb_agg(envoisms.webhook_json(ROW(w.*)::envoisms.webhooks) ORDER BY w.webhook_id DESC), '[]'))
          FROM envoisms.webhooks w WHERE w.account_id = webhook_list.account_id AND w.deleted_at IS NULL);
END
$$;
COMMENT ON FUNCTION envoisms.webhook_list(text) IS
'Every live webhook of an account, without secrets (GET /v1/webhooks)';

CREATE OR REPLACE FUNCTION envoisms.api_key_list(account_id text) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
    RETURN (
        SELECT jsonb_build_object('data', coalesce(jsonb_agg(envoisms.api_key_json(ROW(k.*)::envoisms.api_keys) ORDER BY k.api_key_id DESC), '[]'))
          FROM envoisms.api_keys k WHERE k.account_id = api_key_list.account_id);
END
$$;
COMMENT ON FUNCTION envoisms.api_key_list(text) IS
'Every API key of an account, active and revoked, without the keys themselves (GET /v1/api-keys)';

CREATE OR REPLACE FUNCTION envoisms.api_key_revoke_warning(account_id text, revoked_key_id text, caller_key_id text) RETURNS text
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
    RETURN (
        SELECT nullif(concat_ws(' ',
            CASE WHEN revoked_key_id = caller_key_id
                 THEN 'This request revoked the API key it was made with: that key no longer authenticates.' END,
            CASE WHEN NOT EXISTS (SELECT 1 FROM envoisms.api_keys k
                                   WHERE k.account_id = api_key_revoke_warning.account_id AND k.active)
                 THEN 'The account has no active API key left: create one from the console.' END), ''));
END
$$;

CREATE OR REPLACE FUNCTION envoisms.api_key_revoke(account_id text, api_key_id text, caller_key_id text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    target envoisms.api_keys := envoisms.api_key_row(account_id, api_key_id);
    revoked timestamptz := now();
BEGIN
    IF caller_key_id IS NOT NULL THEN
        PERFORM envoisms.check_key_kind(envoisms.api_key_row(account_id, caller_key_id), target.key_prefix);
    END IF;
    -- (a value for now(): Citus refuses a non-immutable function in coalesce)
    UPDATE envoisms.api_keys x SET revoked_at = coalesce(x.revoked_at, revoked), active = false
     WHERE x.account_id = target.account_id AND x.api_key_id = target.api_key_id;
    RETURN jsonb_strip_nulls(jsonb_build_object(
        'revoked', true, 'id', api_key_id,
        'warning', envoisms.api_key_revoke_warning(account_id, api_key_id, caller_key_id)));
END
$$;
COMMENT ON FUNCTION envoisms.api_key_revoke(text, text, text) IS
'Revoke an API key for good (DELETE /v1/api-keys/:id)';

CREATE OR REPLACE FUNCTION envoisms.account_has_optouts(account_id text) RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
BEGIN
    RETURN EXISTS (SELECT 1 FROM envoisms.optouts o WHERE o.account_id = account_has_optouts.account_id);
END
$$;

CREATE OR REPLACE FUNCTION envoisms.idempotency_store(req envoisms.api_request, key text, rep envoisms.api_reply) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    -- values, not expressions: Citus refuses non-immutable ones in DO UPDATE
    stored_at timestamptz := now();
    expires timestamptz := now() + interval '24 hours';
BEGIN
    IF jsonb_typeof(rep.body) = 'object' AND rep.body ?| ARRAY['api_key', 'secret'] THEN
        rep.body := rep.body - 'api_key' - 'secret' || jsonb_build_object('warning',
            format('This is a replay: the %s was shown once, in the first response to this request, and is not stored. '
                   'If it was lost, revoke this one and create another.',
                   CASE WHEN rep.body ? 'api_key' THEN 'full API key' ELSE 'secret' END));
    END IF;
    INSERT INTO envoisms.idempotency_keys AS k (account_id, api_key_id, idempotency_key, request_hash, method, path,
                                               status, headers, body)
    VALUES (req.account_id, req.api_key_id, envoisms.idempotency_check_key(key),
            envoisms.idempotency_request_hash(req), req.method, req.path,
            rep.status, coalesce(rep.headers, '{}'), rep.body)
    ON CONFLICT (account_id, api_key_id, idempotency_key) DO UPDATE
       SET request_hash = EXCLUDED.request_hash, method = EXCLUDED.method, path = EXCLUDED.path,
           status = EXCLUDED.status, headers = EXCLUDED.headers, body = EXCLUDED.body,
           created_at = stored_at, expires_at = expires
     WHERE k.expires_at <= stored_at;    -- only an expired key is ever reused
END
$$;

CREATE OR REPLACE FUNCTION envoisms.idempotency_purge() RETURNS int
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    n int;
    purged int := 0;
    shard regclass;
BEGIN
    -- on a cluster, this node's shards (93_distribute.sql)
    FOR shard IN SELECT * FROM envoisms.local_shards('envoisms.idempotency_keys') LOOP
        EXECUTE format('DELETE FROM %s k WHERE k.expires_at <= now()', shard);
        GET DIAGNOSTICS n = ROW_COUNT;
        purged := purged + n;
    END LOOP;
    RETURN purged;
END
$$;

CREATE OR REPLACE FUNCTION envoisms.api_routes() RETURNS TABLE (method text, template text, permission text)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT e.method, e.template, e.permission FROM envoisms.api_endpoints e ORDER BY e.template, e.method;
END
$$;

CREATE OR REPLACE FUNCTION envoisms.api(method text, path text, query text DEFAULT '', headers jsonb DEFAULT '{}',
                             body text DEFAULT NULL, client_ip inet DEFAULT NULL)
RETURNS SETOF envoisms.api_reply
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    req envoisms.api_request;
    rep envoisms.api_reply;
    hdr jsonb;
    out_headers jsonb := '{}';
    k record;           -- the key: api_key_lookup(), every field NULL when there is none
    r record;           -- the route: api_route(), every field NULL when none serves the request
    f record;           -- api_route_refusal(): why the route is not served
    rl record;
    err_state text;
    err_message text;
    err_column text;
    err_detail text;
    err_context text;
    err_code text;
    err_http int;
    b record;           -- body_jsonb(): the body as jsonb, or its problem
    a record;           -- api_account(): the account's part, on a cluster
BEGIN
    method := upper(coalesce(method, ''));
    path := coalesce(nullif(rtrim(path, '/'), ''), '/');
    hdr := envoisms.headers_normalize(headers);

    BEGIN
        -- 1. route (cached per backend, routes.c): the exact path, else the
        -- path with its third (then its fourth) segment as :id
        r := envoisms.api_route(method, path);
        -- X-Envoisms-Route names the route matched for the gateway's access
        -- log and metrics (which strip it)
        out_headers := CASE WHEN r.template IS NOT NULL THEN jsonb_build_object('X-Envoisms-Route', r.template) ELSE '{}' END;
        IF r.by_template THEN
            req.id := envoisms.url_decode(split_part(path, '/', CASE WHEN split_part(r.template, '/', 4) = ':id' THEN 4 ELSE 5 END));
        END IF;

        -- 2. the key the Authorization header names (cached per backend, keys.c);
        -- a public route reads none
        k := envoisms.api_key_lookup(CASE WHEN NOT coalesce(r.public, false)
                                          THEN envoisms.api_key_hash(hdr->>'authorization') END);
        IF NOT coalesce(r.public, false) THEN
            -- authenticate: every failure gives the same answer (no oracle),
            -- and an unknown route is not revealed before the key is checked
            IF k.api_key_id IS NULL OR k.account_status = 'closed'
               OR (cardinality(k.ip_whitelist) > 0 AND (client_ip IS NULL OR NOT client_ip <<= ANY (k.ip_whitelist))) THEN
                PERFORM envoisms.raise_unauthorized();
            END IF;

            -- 3. rate limit (shared memory, no row per request): the key's
            -- bucket and its account's, so that new keys bring no new budget.
            -- X-Envoisms-Key-Id names the key for the gateway's access log
            -- (which strips it).
            rl := envoisms.ratelimit_take(k.api_key_id, k.rate_limit, k.account_id || ':' || k.key_prefix);
            out_headers := out_headers || CASE WHEN k.rate_limit IS NULL THEN jsonb_build_object('X-Envoisms-Key-Id', k.api_key_id)
                                ELSE jsonb_build_object('X-Envoisms-Key-Id', k.api_key_id, 'X-RateLimit-Limit', k.rate_limit::text,
                                                        'X-RateLimit-Remaining', rl.remaining::text) END;
            IF NOT rl.allowed THEN
                out_headers := out_headers || jsonb_build_object('Retry-After', rl.retry_after::text);
                PERFORM envoisms.raise_error('RATE_LIMITED',
                    format('rate limit of %s requests per minute exceeded; retry in %s s', k.rate_limit, rl.retry_after));
            END IF;
            -- last_used_at at most once a minute, and never waiting: a request
            -- that finds the key row held by another request leaves it to that one
            IF k.last_used_at IS NULL OR k.last_used_at < now() - interval '1 minute' THEN
                UPDATE envoisms.api_keys SET last_used_at = now()
                 WHERE ctid = (SELECT x.ctid FROM envoisms.api_keys x
                                WHERE x.account_id = k.account_id AND x.api_key_id = k.api_key_id
                                  AND (x.last_used_at IS NULL OR x.last_used_at < now() - interval '1 minute')
                                FOR UPDATE SKIP LOCKED);
            END IF;

            -- (one test on the common path: every statement costs its own
            -- evaluation; api_route_refusal says why, on the refused path only)
            IF r.handler IS NULL OR (k.permissions IS NOT NULL AND NOT r.permission = ANY (k.permissions)
                                         AND NOT (r.permission = 'balance' AND 'billing' = ANY (k.permissions))) THEN
                f := envoisms.api_route_refusal(method, path, r.handler, r.permission, k.permissions);
                IF f.allow IS NOT NULL THEN
                    out_headers := out_headers || jsonb_build_object('Allow', f.allow);
                END IF;
                PERFORM envoisms.raise_error(f.code, f.message);
            END IF;
        END IF;

        -- 4. the request (one row constructor: each field assignment is a statement of its own)
        req := ROW(method, path, r.template, req.id,
                   CASE WHEN query IS NULL OR query = '' THEN '{}' ELSE envoisms.query_parse(query) END,
                   '{}', body, hdr, client_ip, k.account_id, k.api_key_id, k.key_prefix = 'env_test',
                   k.permissions)::envoisms.api_request;
        IF method IN ('POST', 'PATCH', 'PUT') AND body IS NOT NULL THEN
            -- parsed once, and checked without a cast that could raise (so a
            -- bad body needs no exception block); blanks only: no body
            b := envoisms.body_jsonb(body);
            IF b.problem IS NOT NULL THEN
                IF b.problem = 'nul' THEN
                    PERFORM envoisms.raise_error('VALIDATION_ERROR', 'strings must not contain NUL (\u0000) characters');
                ELSIF b.problem = 'number' THEN
                    PERFORM envoisms.raise_error('VALIDATION_ERROR', 'a number in the request body is out of range (beyond 1e±1000)');
                ELSIF b.problem = 'object' THEN
                    PERFORM envoisms.raise_error('VALIDATION_ERROR', 'the request body must be a JSON object');
                END IF;
                PERFORM envoisms.raise_error('INVALID_JSON', 'the request body is not valid JSON');
            END IF;
            req.body := coalesce(b.value, '{}');
        END IF;

        -- 5. Idempotency-Key on a POST: replay a stored reply, or run and store
        -- (on a cluster, on the account's node: 93_distribute.sql)
        IF k.account_id IS NOT NULL AND envoisms.cluster_mode() AND envoisms.cluster_delegates(r.permission) THEN
            -- constants, not parameters: Citus delegates a call whose account is a constant
            EXECUTE format('SELECT * FROM envoisms.api_account(%L, %L::regprocedure, %L::envoisms.api_request, %L)',
                           k.account_id, r.handler, req,
                           CASE WHEN method = 'POST' AND hdr ? 'idempotency-key' THEN hdr->>'idempotency-key' END)
               INTO a;
            IF a.err_state IS NOT NULL THEN
                RAISE EXCEPTION USING ERRCODE = a.err_state, MESSAGE = a.err_message, COLUMN = coalesce(a.err_column, ''),
                                      DETAIL = coalesce(a.err_detail, ''), HINT = coalesce(a.err_context, '');
            END IF;
            rep := a.reply;
        ELSIF method = 'POST' AND k.api_key_id IS NOT NULL AND hdr ? 'idempotency-key' THEN
            rep := envoisms.idempotency_lookup(req, hdr->>'idempotency-key');
            IF rep.status IS NULL THEN
                rep := envoisms.api_call(r.handler, req);
                PERFORM envoisms.idempotency_store(req, hdr->>'idempotency-key', rep);
            END IF;
        ELSE
            rep := envoisms.api_call(r.handler, req);
        END IF;
        rep.headers := out_headers || coalesce(rep.headers, '{}');
        RETURN NEXT rep;
        RETURN;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS err_state = RETURNED_SQLSTATE, err_message = MESSAGE_TEXT,
                                err_column = COLUMN_NAME, err_detail = PG_EXCEPTION_DETAIL,
                                err_context = PG_EXCEPTION_CONTEXT;
    END;

    SELECT e.code, e.http_status INTO err_code, err_http FROM envoisms.error_codes e WHERE e.sqlstate = err_state;
    IF err_code IS NULL THEN
        IF err_state IN ('54000', '54001') THEN
            err_code := 'PAYLOAD_TOO_LARGE';
            err_http := 413;
            err_message := 'the request is too large or too deeply nested';
        ELSIF err_state IN ('57014', '40001', '40P01', '55P03') THEN
            err_code := 'SERVICE_UNAVAILABLE';
            err_http := 503;
            err_message := 'the request could not complete in time; retry later';
            out_headers := out_headers || '{"Retry-After": "1"}';
        ELSE
            RAISE WARNING 'envoisms.api % %: unexpected error %: %', left(method, 10), left(path, 200), err_state, err_message
                USING DETAIL = coalesce(err_detail, ''), HINT = coalesce(err_context, '');
            err_code := 'INTERNAL_ERROR';
            err_http := 500;
            err_message := 'an unexpected error occurred; it was logged';
        END IF;
    END IF;
    RETURN NEXT ROW(err_http, out_headers, envoisms.error_envelope(err_code, err_message, err_column))::envoisms.api_reply;
END
$$;
COMMENT ON FUNCTION envoisms.api(text, text, text, jsonb, text, inet) IS
'The whole HTTP contract as one call: authentication, rate limit, routing, handler, error envelope (what the gateway calls)';

CREATE OR REPLACE FUNCTION envoisms.billing_setting(name text) RETURNS text
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN coalesce((SELECT s.value FROM envoisms.billing_settings s WHERE s.name = billing_setting.name),
                    (SELECT d.value FROM envoisms.billing_setting_defaults() d WHERE d.name = billing_setting.name));
END
$$;

CREATE OR REPLACE FUNCTION envoisms.billing_config()
RETURNS TABLE (name text, value text, is_default boolean, description text)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT d.name,
           CASE WHEN d.secret AND s.value IS NOT NULL
                THEN coalesce(substring(s.value FROM '^[a-z]+_(?:test_|live_)?'), '') || '…' || right(s.value, 4)
                ELSE coalesce(s.value, d.value) END,
           s.value IS NULL, d.description
      FROM envoisms.billing_setting_defaults() d LEFT JOIN envoisms.billing_settings s ON s.name = d.name
     ORDER BY d.name;
END
$$;
COMMENT ON FUNCTION envoisms.billing_config() IS
'Every billing setting as it applies now, secrets masked';

CREATE OR REPLACE FUNCTION envoisms.pack_list(account_id text) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
#variable_conflict use_column
BEGIN
    RETURN (
        SELECT jsonb_build_object('packs', coalesce(jsonb_agg(jsonb_build_object(
                   'id', p.pack_id, 'name', p.name, 'sms_count', p.sms_count,
                   'price_mad', envoisms.money(p.price_mad),
                   'price_eur', envoisms.money(coalesce(p.price_eur, envoisms.mad_to_eur(p.price_mad, 2))),
                   'credit_mad', envoisms.money(envoisms.pack_credit(p, pack_list.account_id)))
                 ORDER BY p.sort_order, p.price_mad, p.pack_id), '[]'))
          FROM envoisms.billing_packs p WHERE p.active);
END
$$;
COMMENT ON FUNCTION envoisms.pack_list(text) IS
'The operator''s top-up packs as an account sees them (GET /v1/billing/packs)';

CREATE OR REPLACE FUNCTION envoisms.topup_list(account_id text, "limit" int DEFAULT 50, "offset" int DEFAULT 0,
                                    status text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    rows jsonb;
    n bigint;
BEGIN
    PERFORM envoisms.check_page("limit", "offset", 200);
    IF status IS NOT NULL AND status NOT IN ('pending', 'completed', 'failed') THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'status must be one of pending, completed, failed', 'status');
    END IF;
    SELECT coalesce(jsonb_agg(envoisms.topup_json(ROW(t.*)::envoisms.topups) ORDER BY t.topup_id DESC), '[]') INTO rows
      FROM (SELECT * FROM envoisms.topups x
             WHERE x.account_id = topup_list.account_id AND (topup_list.status IS NULL OR x.status = topup_list.status)
             ORDER BY x.topup_id DESC LIMIT "limit" OFFSET "offset") t;
    SELECT count(*) INTO n FROM envoisms.topups x
     WHERE x.account_id = topup_list.account_id AND (topup_list.status IS NULL OR x.status = topup_list.status);
    RETURN jsonb_build_object('topups', rows, 'total', n, 'limit', "limit", 'offset', "offset");
END
$$;
COMMENT ON FUNCTION envoisms.topup_list(text, int, int, text) IS
'A page of an account''s top-ups (GET /v1/billing/topups)';

CREATE OR REPLACE FUNCTION envoisms.route_carrier(channel text, to_number text, sandbox boolean)
RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
#variable_conflict use_column
BEGIN
    RETURN (
        SELECT CASE WHEN sandbox THEN 'sandbox' ELSE (
            SELECT r.carrier_id
              FROM envoisms.routes r JOIN envoisms.carriers c ON c.carrier_id = r.carrier_id
             WHERE r.channel = route_carrier.channel
               AND starts_with(ltrim(to_number, '+'), r.prefix)
               AND c.enabled AND (c.down_until IS NULL OR c.down_until <= now())
             ORDER BY length(r.prefix) DESC, r.priority
             LIMIT 1) END);
END
$$;

CREATE OR REPLACE FUNCTION envoisms.carrier_trip(carrier_id text, seconds int) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
#variable_conflict use_column
BEGIN
    UPDATE envoisms.carriers c SET down_until = now() + make_interval(secs => seconds)
     WHERE c.carrier_id = carrier_trip.carrier_id;
END
$$;

CREATE OR REPLACE FUNCTION envoisms.dispatch_claim(carrier_kinds text[], only_carrier text, batch int, lease interval)
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
    -- from a random one (93_distribute.sql); else envoisms.messages
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

CREATE OR REPLACE FUNCTION envoisms.dispatch_next_due() RETURNS timestamptz
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    shard regclass;
    due timestamptz;
    next_due timestamptz;
BEGIN
    -- on a cluster, this node's shards of messages (93_distribute.sql)
    FOR shard IN SELECT * FROM envoisms.local_shards('envoisms.messages') LOOP
        EXECUTE format('SELECT m.next_attempt_at FROM %s m
                         WHERE m.status = ''queued'' AND (m.locked_until IS NULL OR m.locked_until < now())
                         ORDER BY m.next_attempt_at LIMIT 1', shard) INTO due;
        next_due := least(next_due, due);
    END LOOP;
    RETURN next_due;
END
$$;

CREATE OR REPLACE FUNCTION envoisms.dispatch_release(account_id text, message_id text) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    UPDATE envoisms.messages m SET locked_until = NULL, attempts = greatest(m.attempts - 1, 0), updated_at = now()
     WHERE m.account_id = dispatch_release.account_id AND m.message_id = dispatch_release.message_id
       AND m.status = 'queued' AND m.locked_until IS NOT NULL;
    RETURN CASE WHEN FOUND THEN true END;
END
$$;

CREATE OR REPLACE FUNCTION envoisms.dispatch_reclaim(carrier_kinds text[], since timestamptz) RETURNS int
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    shard regclass;
    n int;
    released int := 0;
BEGIN
    -- on a cluster, this node's shards of messages (93_distribute.sql)
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

CREATE OR REPLACE FUNCTION envoisms.sandbox_deliver_due(delay interval, batch int) RETURNS int
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    m record;
    n int := 0;
    shard regclass;
BEGIN
    -- on a cluster, this node's shards of messages (93_distribute.sql)
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

CREATE OR REPLACE FUNCTION envoisms.sandbox_next_due(delay interval) RETURNS timestamptz
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    shard regclass;
    due timestamptz;
    next_due timestamptz;
BEGIN
    -- on a cluster, this node's shards of messages (93_distribute.sql)
    FOR shard IN SELECT * FROM envoisms.local_shards('envoisms.messages') LOOP
        EXECUTE format('SELECT x.sent_at + $1 FROM %s x
                         WHERE x.status = ''sent'' AND left(x.carrier_ref, 4) = ''sbx_''
                         ORDER BY x.sent_at LIMIT 1', shard) INTO due USING delay;
        next_due := least(next_due, due);
    END LOOP;
    RETURN next_due;
END
$$;

CREATE OR REPLACE FUNCTION envoisms.webhook_claim(batch int, lease interval, per_endpoint int, busy jsonb DEFAULT '{}')
RETURNS TABLE (account_id text, delivery_id bigint, webhook_id text, event_id text, event_type text,
               payload text, attempts int, url text, secret text, signature_format text)
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    shard regclass;
    claimed int := 0;
    n int;
BEGIN
    -- on a cluster, this node's shards of webhook_deliveries (93_distribute.sql)
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

CREATE OR REPLACE FUNCTION envoisms.webhook_next_due() RETURNS timestamptz
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    shard regclass;
    due timestamptz;
    next_due timestamptz;
BEGIN
    -- on a cluster, this node's shards of webhook_deliveries (93_distribute.sql)
    FOR shard IN SELECT * FROM envoisms.local_shards('envoisms.webhook_deliveries') LOOP
        EXECUTE format('SELECT d.next_attempt_at FROM %s d
                         WHERE d.status = ''pending'' AND (d.locked_until IS NULL OR d.locked_until < now())
                         ORDER BY d.next_attempt_at LIMIT 1', shard) INTO due;
        next_due := least(next_due, due);
    END LOOP;
    RETURN next_due;
END
$$;

CREATE OR REPLACE FUNCTION envoisms.webhook_disable(account_id text, webhook_id text, reason text) RETURNS void
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

CREATE OR REPLACE FUNCTION envoisms.webhook_release(account_id text, delivery_id bigint) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
#variable_conflict use_column
BEGIN
    UPDATE envoisms.webhook_deliveries d SET locked_until = NULL, attempts = greatest(d.attempts - 1, 0)
     WHERE d.account_id = webhook_release.account_id AND d.delivery_id = webhook_release.delivery_id
       AND d.status = 'pending' AND d.locked_until IS NOT NULL;
END
$$;

CREATE OR REPLACE FUNCTION envoisms.webhook_reclaim(since timestamptz, lease interval) RETURNS int
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    shard regclass;
    n int;
    released int := 0;
BEGIN
    -- on a cluster, this node's shards of webhook_deliveries (93_distribute.sql)
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

CREATE OR REPLACE FUNCTION envoisms.smpp_release_leases(carrier_id text) RETURNS int
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    shard regclass;
    n int;
    released int := 0;
BEGIN
    -- on a cluster, this node's shards of messages (93_distribute.sql)
    FOR shard IN SELECT * FROM envoisms.local_shards('envoisms.messages') LOOP
        EXECUTE format('UPDATE %s m SET locked_until = NULL, updated_at = now()
                         WHERE m.status = ''queued'' AND m.carrier_id = $1 AND m.locked_until > now()', shard)
          USING carrier_id;
        GET DIAGNOSTICS n = ROW_COUNT;
        released := released + n;
    END LOOP;
    RETURN released;
END
$$;

CREATE OR REPLACE FUNCTION envoisms.whatsapp_window_open(account_id text, phone text, number text, at timestamptz)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
#variable_conflict use_column
BEGIN
    INSERT INTO envoisms.whatsapp_windows AS w (account_id, phone, number, last_inbound_at)
    VALUES (account_id, phone, number, at)
    ON CONFLICT ON CONSTRAINT whatsapp_windows_pkey DO UPDATE
       SET number = EXCLUDED.number, last_inbound_at = EXCLUDED.last_inbound_at
     WHERE w.last_inbound_at < EXCLUDED.last_inbound_at;
END
$$;

CREATE OR REPLACE FUNCTION envoisms.whatsapp_refusal(account_id text, phone text, sandbox boolean) RETURNS text
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
    -- one statement per table: on a cluster inbound_numbers is a reference
    -- table and whatsapp_windows is distributed (93_distribute.sql)
    IF sandbox THEN
        RETURN CASE phone WHEN '+212600000005' THEN 'OUT_OF_24H_WINDOW'
                          WHEN '+212600000006' THEN 'WHATSAPP_NOT_CONNECTED' END;
    ELSIF NOT EXISTS (SELECT 1 FROM envoisms.inbound_numbers n
                       WHERE n.account_id = $1 AND n.channel = 'whatsapp') THEN
        RETURN 'WHATSAPP_NOT_CONNECTED';
    ELSIF NOT EXISTS (SELECT 1 FROM envoisms.whatsapp_windows w
                       WHERE w.account_id = $1 AND w.phone = $2
                         AND w.last_inbound_at > now() - envoisms.whatsapp_window()) THEN
        RETURN 'OUT_OF_24H_WINDOW';
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION envoisms.whatsapp_sender(account_id text, message_id text, campaign_id text, to_number text,
                                         metadata jsonb)
RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
    RETURN (
        SELECT CASE
            WHEN metadata->>'purpose' = 'otp'
                 AND EXISTS (SELECT 1 FROM envoisms.verify_sessions v
                              WHERE v.account_id = $1 AND v.session_id = metadata->>'verify_session_id'
                                AND v.message_id = $2)
                THEN '{}'::jsonb
            ELSE coalesce((SELECT jsonb_build_object('phone_number_id', n.phone_number_id)
                             FROM envoisms.inbound_numbers n
                             LEFT JOIN envoisms.whatsapp_windows w
                                    ON w.account_id = n.account_id AND w.phone = $4 AND w.number = n.number
                            WHERE n.account_id = $1 AND n.channel = 'whatsapp' AND n.phone_number_id IS NOT NULL
                            ORDER BY w.last_inbound_at DESC NULLS LAST, n.created_at, n.number
                            LIMIT 1), '{}')
                 || CASE WHEN $3 IS NOT NULL AND jsonb_typeof(metadata->'template') = 'object'
                              AND EXISTS (SELECT 1 FROM envoisms.campaigns c
                                           WHERE c.account_id = $1 AND c.campaign_id = $3 AND c.template_id IS NOT NULL)
                         THEN jsonb_build_object('template', metadata->'template') ELSE '{}' END END);
END
$$;

CREATE OR REPLACE FUNCTION envoisms.expiry_sweep(batch int DEFAULT 1000) RETURNS int
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    m record;
    n int := 0;
    shard regclass;
BEGIN
    -- on a cluster, this node's shards of messages (93_distribute.sql)
    FOR shard IN SELECT * FROM envoisms.local_shards('envoisms.messages') LOOP
        FOR m IN EXECUTE format('SELECT x.account_id, x.message_id FROM %s x
                                  WHERE x.status = ''sent'' AND x.expires_at <= now()
                                  ORDER BY x.expires_at LIMIT $1 FOR UPDATE SKIP LOCKED', shard) USING batch
        LOOP
            IF envoisms.message_expire(m.account_id, m.message_id) THEN
                n := n + 1;
            END IF;
        END LOOP;
        FOR m IN EXECUTE format('SELECT x.account_id, x.message_id FROM %s x
                                  WHERE x.status = ''queued'' AND x.expires_at <= now()
                                    AND (x.locked_until IS NULL OR x.locked_until < now())
                                  ORDER BY x.next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED', shard) USING batch
        LOOP
            IF envoisms.message_expire(m.account_id, m.message_id) THEN
                n := n + 1;
            END IF;
        END LOOP;
    END LOOP;
    RETURN n;
END
$$;
COMMENT ON FUNCTION envoisms.expiry_sweep(int) IS
'Expire a batch of messages past their validity (the scheduler calls it); returns how many';

CREATE OR REPLACE FUNCTION envoisms.retention_purge(days int DEFAULT 90, batch int DEFAULT 1000) RETURNS int
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    cutoff timestamptz := now() - make_interval(days => days);
    n int;
    purged int := 0;
    shard regclass;
BEGIN
    IF days IS NULL OR days <= 0 THEN
        RETURN 0;
    END IF;
    -- on a cluster, this node's shards (93_distribute.sql)
    FOR shard IN SELECT * FROM envoisms.local_shards('envoisms.messages') LOOP
        EXECUTE format($purge$
        WITH old AS (
            SELECT x.account_id, x.message_id FROM %1$s x
             WHERE x.created_at < $1 AND x.body IS NOT NULL
               AND x.status IN ('delivered', 'failed', 'expired', 'received')
             LIMIT $2 FOR UPDATE SKIP LOCKED
        ), gone AS (
            DELETE FROM %2$s e USING old
             WHERE e.account_id = old.account_id AND e.message_id = old.message_id
            RETURNING 1
        ), emptied AS (
            UPDATE %1$s x SET body = NULL
              FROM old WHERE x.account_id = old.account_id AND x.message_id = old.message_id
            RETURNING 1
        )
        SELECT count(*) FROM emptied
        $purge$, shard, envoisms.colocated_shard(shard, 'envoisms.message_events')) INTO n USING cutoff, batch - purged;
        purged := purged + n;
        EXECUTE format('DELETE FROM %1$s d
                         WHERE d.ctid = ANY (ARRAY(SELECT x.ctid FROM %1$s x
                                                    WHERE x.status <> ''pending'' AND x.created_at < $1 LIMIT $2))',
                       envoisms.colocated_shard(shard, 'envoisms.webhook_deliveries')) USING cutoff, batch;
        EXIT WHEN purged >= batch;
    END LOOP;
    DELETE FROM envoisms.pending_dlrs p
     WHERE p.ctid = ANY (ARRAY(SELECT x.ctid FROM envoisms.pending_dlrs x
                                WHERE x.received_at < now() - interval '7 days' LIMIT batch));
    RETURN purged;
END
$$;
COMMENT ON FUNCTION envoisms.retention_purge(int, int) IS
'Purge the bodies and delivery logs of a batch of messages older than the retention (the scheduler calls it); returns how many';

CREATE OR REPLACE FUNCTION envoisms.cluster_mode() RETURNS boolean
AS 'MODULE_PATHNAME', 'cluster_mode' LANGUAGE C STABLE PARALLEL SAFE;

CREATE OR REPLACE FUNCTION envoisms.local_shards(tbl regclass) RETURNS SETOF regclass
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

CREATE OR REPLACE FUNCTION envoisms.local_copy(tbl regclass) RETURNS regclass
LANGUAGE sql STABLE SET search_path = pg_catalog AS $$
    SELECT s FROM envoisms.local_shards(tbl) s LIMIT 1
$$;

CREATE OR REPLACE FUNCTION envoisms.cluster_node_sequences() RETURNS int
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

CREATE OR REPLACE FUNCTION envoisms.colocated_shard(shard regclass, tbl regclass) RETURNS regclass
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

CREATE OR REPLACE FUNCTION envoisms.api_account(account_id text, handler regprocedure, req envoisms.api_request,
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

CREATE OR REPLACE FUNCTION envoisms.cluster_delegates(permission text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN permission IS NULL OR permission NOT IN ('api_keys', 'billing');

CREATE OR REPLACE FUNCTION envoisms.cluster_layout(OUT table_name regclass, OUT kind text)
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
        ('envoisms.smpp_parts', 'distributed'), ('envoisms.whatsapp_windows', 'distributed')
    ) AS l(t, k)
$$;
COMMENT ON FUNCTION envoisms.cluster_layout() IS
'Which envoisms tables envoisms.distribute() makes reference tables and which it distributes by account_id';

CREATE OR REPLACE FUNCTION envoisms.cluster_functions(OUT function_name regprocedure, OUT force_delegation boolean)
RETURNS SETOF record LANGUAGE sql IMMUTABLE SET search_path = pg_catalog AS $$
    SELECT f::regprocedure, d FROM (VALUES
        ('envoisms.api_account(text, regprocedure, envoisms.api_request, text)', true)
    ) AS l(f, d)
$$;

CREATE OR REPLACE FUNCTION envoisms.distribute(shard_count int DEFAULT NULL) RETURNS SETOF text
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
        CONTINUE WHEN EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = l.table_name);
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

-- the new functions, like every other: nothing for PUBLIC (95_grants.sql)
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA envoisms FROM PUBLIC;
