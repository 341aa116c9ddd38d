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

-- ---- scale-out: envoisms on a Citus cluster (src/sql/96_distribute.sql)
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
        -- type is the shard's own (96_distribute.sql)
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
    -- on a cluster, this node's shards of campaigns (96_distribute.sql)
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
    -- on a cluster, this node's shards of campaigns and their messages (96_distribute.sql)
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
    -- on a cluster, this node's shards (96_distribute.sql)
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
        -- (on a cluster, on the account's node: 96_distribute.sql)
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

CREATE OR REPLACE FUNCTION envoisms.dispatch_next_due() RETURNS timestamptz
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

CREATE OR REPLACE FUNCTION envoisms.sandbox_deliver_due(delay interval, batch int) RETURNS int
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

CREATE OR REPLACE FUNCTION envoisms.sandbox_next_due(delay interval) RETURNS timestamptz
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

CREATE OR REPLACE FUNCTION envoisms.webhook_claim(batch int, lease interval, per_endpoint int, busy jsonb DEFAULT '{}')
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

CREATE OR REPLACE FUNCTION envoisms.webhook_next_due() RETURNS timestamptz
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

CREATE OR REPLACE FUNCTION envoisms.smpp_release_leases(carrier_id text) RETURNS int
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    shard regclass;
    n int;
    released int := 0;
BEGIN
    -- on a cluster, this node's shards of messages (96_distribute.sql)
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
    -- table and whatsapp_windows is distributed (96_distribute.sql)
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
    -- on a cluster, this node's shards of messages (96_distribute.sql)
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
    -- on a cluster, this node's shards (96_distribute.sql)
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

-- the new functions, like every other: nothing for PUBLIC (99_grants.sql)
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA envoisms FROM PUBLIC;

-- ---- console-api: the console's users, sessions, overview, invoices and operator area

-- The permission names a route may require: the keys' and 'console' (36_api_types.sql).
CREATE FUNCTION envoisms.api_route_permissions() RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN envoisms.api_permissions() || ARRAY['console'];

ALTER TABLE envoisms.api_endpoints DROP CONSTRAINT api_endpoints_permission_check;
ALTER TABLE envoisms.api_endpoints ADD CONSTRAINT api_endpoints_permission_check
    CHECK (permission = ANY (envoisms.api_route_permissions()));

-- GET /v1/messages: the console's filters "to" and campaign_id (30_messages.sql, 80_api.sql).
DROP FUNCTION envoisms.message_list(text, int, int, text, text, timestamptz, timestamptz, text);
CREATE FUNCTION envoisms.message_filters_check(status text, channel text, direction text, "to" text) RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog AS $$
BEGIN
    IF status IS NOT NULL AND status NOT IN ('queued', 'sent', 'delivered', 'failed', 'expired', 'received') THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR',
            'status must be one of queued, sent, delivered, failed, expired, received', 'status');
    END IF;
    IF channel IS NOT NULL AND channel NOT IN ('sms', 'whatsapp') THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'channel must be "sms" or "whatsapp"', 'channel');
    END IF;
    IF direction IS NOT NULL AND direction NOT IN ('outbound', 'inbound') THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'direction must be "outbound" or "inbound"', 'direction');
    END IF;
    RETURN CASE WHEN "to" IS NOT NULL THEN envoisms.check_phone("to") END;
END
$$;

CREATE FUNCTION envoisms.message_list(account_id text, "limit" int DEFAULT 50, "offset" int DEFAULT 0,
                                      status text DEFAULT NULL, channel text DEFAULT NULL,
                                      from_date timestamptz DEFAULT NULL, to_date timestamptz DEFAULT NULL,
                                      direction text DEFAULT NULL, "to" text DEFAULT NULL,
                                      campaign_id text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    rows jsonb;
    n bigint;
BEGIN
    PERFORM envoisms.check_page("limit", "offset", 200);
    "to" := envoisms.message_filters_check(status, channel, direction, "to");
    SELECT coalesce(jsonb_agg(jsonb_build_object(
               'id', m.message_id, 'to', m.to_number, 'channel', m.channel,
               'body', envoisms.message_body_shown(m.body, m.metadata),
               'sender_id', m.sender_id, 'status', m.status, 'cost_mad', envoisms.money(m.cost_mad),
               'direction', m.direction, 'created_at', envoisms.iso_time(m.created_at))
               ORDER BY m.message_id DESC), '[]')
      INTO rows
      FROM (SELECT * FROM envoisms.messages x
             WHERE x.account_id = message_list.account_id
               AND (message_list.status IS NULL OR x.status = message_list.status)
               AND (message_list.channel IS NULL OR x.channel = message_list.channel)
               AND (message_list.direction IS NULL OR x.direction = message_list.direction)
               AND (from_date IS NULL OR x.created_at >= from_date)
               AND (to_date IS NULL OR x.created_at <= to_date)
               AND (message_list."to" IS NULL OR x.to_number = message_list."to")
               AND (message_list.campaign_id IS NULL OR x.campaign_id = message_list.campaign_id)
             ORDER BY x.message_id DESC
             LIMIT "limit" OFFSET "offset") m;
    IF "to" IS NULL AND message_list.campaign_id IS NULL AND from_date IS NULL AND to_date IS NULL THEN
        -- exact, without reading the account's messages (94_console_views.sql)
        n := envoisms.message_count(account_id, status, channel, direction);
    ELSE
        SELECT count(*) INTO n FROM envoisms.messages x
         WHERE x.account_id = message_list.account_id
           AND (message_list.status IS NULL OR x.status = message_list.status)
           AND (message_list.channel IS NULL OR x.channel = message_list.channel)
           AND (message_list.direction IS NULL OR x.direction = message_list.direction)
           AND (from_date IS NULL OR x.created_at >= from_date)
           AND (to_date IS NULL OR x.created_at <= to_date)
           AND (message_list."to" IS NULL OR x.to_number = message_list."to")
           AND (message_list.campaign_id IS NULL OR x.campaign_id = message_list.campaign_id);
    END IF;
    -- the rows under "data" (the contract) and "messages" (what the official
    -- Node client reads): one value referenced twice, serialised twice
    RETURN jsonb_build_object('data', rows, 'messages', rows, 'limit', "limit", 'offset', "offset", 'total', n);
END
$$;
COMMENT ON FUNCTION envoisms.message_list(text, int, int, text, text, timestamptz, timestamptz, text, text, text) IS
'A page of an account''s messages, newest first, with the contract''s filters (GET /v1/messages)';

CREATE OR REPLACE FUNCTION envoisms.api_messages_list(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.reply(200, envoisms.message_list(
        req.account_id,
        envoisms.query_int(req.query, 'limit', 50, 1, 200),
        envoisms.query_int(req.query, 'offset', 0, 0, 1000000000),
        req.query->>'status',
        req.query->>'channel',
        envoisms.parse_time(req.query->>'from_date', 'from_date'),
        envoisms.parse_time(req.query->>'to_date', 'to_date'),
        req.query->>'direction', req.query->>'to', req.query->>'campaign_id'));
END
$$;

-- A console session's cookie beside Bearer keys (80_api.sql).
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
        IF k.api_key_id IS NULL AND NOT coalesce(r.public, false) AND NOT hdr ? 'authorization' AND hdr ? 'cookie' THEN
            -- a console session's cookie instead of a key (92_console_auth.sql)
            k := envoisms.console_session_auth(hdr, method, r.permission, client_ip, true);
        END IF;
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
        IF method = 'POST' AND k.api_key_id IS NOT NULL AND hdr ? 'idempotency-key' THEN
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

CREATE OR REPLACE FUNCTION envoisms.api_precheck(method text, path text, headers jsonb DEFAULT '{}', client_ip inet DEFAULT NULL)
RETURNS SETOF envoisms.api_reply
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
    k record;
    f record;
    allow text;
    route text;         -- the template matched, for the gateway (X-Envoisms-Route)
    err_state text;
    err_message text;
    e envoisms.error_codes;
BEGIN
    method := upper(coalesce(method, ''));
    path := coalesce(nullif(rtrim(path, '/'), ''), '/');
    BEGIN
        r := envoisms.api_route(method, path);
        route := r.template;
        IF coalesce(r.public, false) THEN
            RETURN;
        END IF;
        headers := envoisms.headers_normalize(headers);
        k := envoisms.api_key_lookup(envoisms.api_key_hash(headers->>'authorization'));
        IF k.api_key_id IS NULL AND NOT headers ? 'authorization' AND headers ? 'cookie' THEN
            k := envoisms.console_session_auth(headers, method, r.permission, client_ip, false);
        END IF;
        IF k.api_key_id IS NULL OR k.account_status = 'closed'
           OR (cardinality(k.ip_whitelist) > 0 AND (client_ip IS NULL OR NOT client_ip <<= ANY (k.ip_whitelist))) THEN
            PERFORM envoisms.raise_unauthorized();
        END IF;
        f := envoisms.api_route_refusal(method, path, r.handler, r.permission, k.permissions);
        IF f.code IS NULL THEN
            RETURN;
        END IF;
        allow := f.allow;
        PERFORM envoisms.raise_error(f.code, f.message);
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS err_state = RETURNED_SQLSTATE, err_message = MESSAGE_TEXT;
    END;
    SELECT * INTO e FROM envoisms.error_codes x WHERE x.sqlstate = err_state;
    IF NOT FOUND THEN
        RAISE WARNING 'envoisms.api_precheck % %: unexpected error %: %', left(method, 10), left(path, 200), err_state, err_message;
        SELECT * INTO e FROM envoisms.error_codes x WHERE x.code = 'INTERNAL_ERROR';
        err_message := 'an unexpected error occurred; it was logged';
    END IF;
    RETURN NEXT ROW(e.http_status, CASE WHEN allow IS NOT NULL THEN jsonb_build_object('Allow', allow) ELSE '{}' END
                    || CASE WHEN route IS NOT NULL THEN jsonb_build_object('X-Envoisms-Route', route) ELSE '{}' END,
                    envoisms.error_envelope(e.code, err_message))::envoisms.api_reply;
END
$$;
COMMENT ON FUNCTION envoisms.api_precheck(text, text, jsonb, inet) IS
'Whether a request may be read at all, from its head: no row when it may, else the refusal envoisms.api would give';

-- API keys managed from a console session by the keys' rules (65_apikeys.sql).
CREATE FUNCTION envoisms.api_key_caller(account_id text, caller_key_id text) RETURNS envoisms.api_keys
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
BEGIN
    IF caller_key_id LIKE 'ses\_%' THEN
        RETURN envoisms.console_session_key(account_id, caller_key_id);
    END IF;
    RETURN envoisms.api_key_row(account_id, caller_key_id);
END
$$;

CREATE OR REPLACE FUNCTION envoisms.api_key_issue(account_id text, issuer_key_id text, name text DEFAULT NULL,
                                       permissions text[] DEFAULT NULL, ip_whitelist text[] DEFAULT NULL,
                                       rate_limit int DEFAULT NULL, live boolean DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    issuer envoisms.api_keys := envoisms.api_key_caller(account_id, issuer_key_id);
BEGIN
    PERFORM envoisms.check_key_fields(permissions, rate_limit);
    rate_limit := coalesce(rate_limit, least(100, issuer.rate_limit));
    IF live AND issuer.key_prefix = 'env_test' THEN
        PERFORM envoisms.raise_error('FORBIDDEN', 'a test key cannot create a live key', 'key_prefix');
    END IF;
    permissions := coalesce(permissions, issuer.permissions);
    ip_whitelist := coalesce(ip_whitelist, issuer.ip_whitelist::text[]);
    PERFORM envoisms.check_no_escalation(issuer, permissions, envoisms.parse_ip_list(ip_whitelist, 'ip_whitelist'),
                                         rate_limit);
    RETURN envoisms.api_key_create(account_id, coalesce(name, 'API key'),
                                   coalesce(live, issuer.key_prefix = 'env_live'),
                                   permissions, ip_whitelist, rate_limit);
END
$$;
COMMENT ON FUNCTION envoisms.api_key_issue(text, text, text, text[], text[], int, boolean) IS
'Create an API key on behalf of another key of the account, within that key''s rights (POST /v1/api-keys)';

CREATE OR REPLACE FUNCTION envoisms.api_key_update(account_id text, caller_key_id text, api_key_id text,
                                        name text DEFAULT NULL, permissions text[] DEFAULT NULL,
                                        ip_whitelist text[] DEFAULT NULL, rate_limit int DEFAULT NULL,
                                        active boolean DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    caller envoisms.api_keys;
    k envoisms.api_keys;
    nets cidr[];
    warning text;
BEGIN
    SELECT * INTO k FROM envoisms.api_keys x
     WHERE x.account_id = api_key_update.account_id AND x.api_key_id = api_key_update.api_key_id FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'API key not found', 'id');
    END IF;
    IF k.revoked_at IS NOT NULL THEN
        PERFORM envoisms.raise_error('CONFLICT', 'the API key is revoked; create a new one', 'id');
    END IF;
    IF name IS NOT NULL AND length(btrim(name)) NOT BETWEEN 1 AND 100 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'name must be 1 to 100 characters', 'name');
    END IF;
    PERFORM envoisms.check_key_fields(permissions, rate_limit);
    nets := envoisms.parse_ip_list(ip_whitelist, 'ip_whitelist');
    k.name := coalesce(btrim(name), k.name);
    k.permissions := CASE WHEN permissions IS NOT NULL THEN envoisms.permissions_normalize(permissions)
                          ELSE k.permissions END;
    k.ip_whitelist := coalesce(nets, k.ip_whitelist);
    k.rate_limit := coalesce(rate_limit, k.rate_limit);
    k.active := coalesce(active, k.active);
    IF caller_key_id IS NOT NULL THEN
        caller := envoisms.api_key_caller(account_id, caller_key_id);
        PERFORM envoisms.check_key_kind(caller, k.key_prefix);
        IF k.active THEN
            PERFORM envoisms.check_no_escalation(caller, k.permissions, k.ip_whitelist, k.rate_limit);
        END IF;
    END IF;
    UPDATE envoisms.api_keys x
       SET name = k.name, permissions = k.permissions, ip_whitelist = k.ip_whitelist,
           rate_limit = k.rate_limit, active = k.active
     WHERE x.account_id = k.account_id AND x.api_key_id = k.api_key_id;
    IF active = false THEN
        warning := envoisms.api_key_revoke_warning(account_id, api_key_id, caller_key_id);
    END IF;
    RETURN jsonb_strip_nulls(jsonb_build_object('updated', true, 'id', k.api_key_id, 'warning', warning));
END
$$;
COMMENT ON FUNCTION envoisms.api_key_update(text, text, text, text, text[], text[], int, boolean) IS
'Change a key''s name, permissions, allowlist, rate limit or active flag, within the caller''s rights (PATCH /v1/api-keys/:id)';

CREATE OR REPLACE FUNCTION envoisms.api_key_revoke(account_id text, api_key_id text, caller_key_id text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    target envoisms.api_keys := envoisms.api_key_row(account_id, api_key_id);
BEGIN
    IF caller_key_id IS NOT NULL THEN
        PERFORM envoisms.check_key_kind(envoisms.api_key_caller(account_id, caller_key_id), target.key_prefix);
    END IF;
    UPDATE envoisms.api_keys x SET revoked_at = coalesce(x.revoked_at, now()), active = false
     WHERE x.account_id = target.account_id AND x.api_key_id = target.api_key_id;
    RETURN jsonb_strip_nulls(jsonb_build_object(
        'revoked', true, 'id', api_key_id,
        'warning', envoisms.api_key_revoke_warning(account_id, api_key_id, caller_key_id)));
END
$$;
COMMENT ON FUNCTION envoisms.api_key_revoke(text, text, text) IS
'Revoke an API key for good (DELETE /v1/api-keys/:id)';

-- The attempt's time and duration of a webhook delivery, for the console (87_webhook_delivery.sql).
CREATE OR REPLACE FUNCTION envoisms.webhook_record(outcomes jsonb, disable_after interval DEFAULT interval '5 days')
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

-- ---- (src/sql/92_console_auth.sql)
-- 92_console_auth.sql — the console's people and sessions: users of an
-- account (email + scrypt password, optional second factor by envoisms' own
-- verify), sign-in with backoff, sessions carried by an HttpOnly cookie and
-- stored hashed, CSRF, and the session's place in envoisms.api().
--
-- A console session is an API caller like a key: api() (80_api.sql) reads
-- the envoisms_session cookie when a request has no Authorization header
-- and console_session_auth() answers with the fields api_key_lookup() gives
-- for a key: the account, the session id in place of a key id (ses_…, so the
-- rate limiter, the idempotency store and message rows name it), the role's
-- permissions plus 'console', and a live key's prefix. Every rule of the API
-- therefore holds for the console too; api_key_row() (65_apikeys.sql) shows
-- a session as a live key holding its role's permissions, so a session
-- creates no key beyond its role.
--
-- Locking: a sign-in locks the throttle rows of its email and client address
-- (console_signin_throttle, in subject order) for its transaction, so two
-- concurrent sign-ins count failures one after the other and the fifth
-- failure blocks the sixth attempt whatever the interleaving
-- (test/isolation/specs/console_signin.spec). A failed sign-in answers 401
-- without raising, so that the failure it counted is committed.

-- ---- passwords (password.c: scrypt through OpenSSL)

CREATE FUNCTION envoisms.password_hash(password text, log_n int DEFAULT 14) RETURNS text
AS 'MODULE_PATHNAME', 'password_hash' LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION envoisms.password_hash(text, int) IS
'A salted scrypt hash of a password ($scrypt$ln=…,r=8,p=1$salt$key), N = 2^log_n';

CREATE FUNCTION envoisms.password_verify(password text, hash text) RETURNS boolean
AS 'MODULE_PATHNAME', 'password_verify' LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION envoisms.password_verify(text, text) IS
'Whether a password matches a password_hash() value (constant-time; an unreadable hash never matches)';

-- ---- tables

-- The console's settings, filled by the operator: the seller's legal
-- identifiers printed on invoices, where second-factor codes are sent from
-- (two_factor_account, default the user's own account; two_factor_sandbox
-- 'on' sends them as sandbox messages, for demos and tests), and a
-- session's rate limit per minute (session_rate_limit, default 600; 0: none).
CREATE TABLE envoisms.console_settings (
    name  text PRIMARY KEY CHECK (name IN ('seller_name', 'seller_ice', 'seller_if', 'seller_rc',
                                           'seller_address', 'seller_city', 'seller_email',
                                           'two_factor_account', 'two_factor_sandbox', 'session_rate_limit')),
    value text NOT NULL CHECK (length(value) <= 500),
    CHECK (name <> 'session_rate_limit' OR value ~ '^[0-9]{1,6}$'),
    CHECK (name <> 'two_factor_sandbox' OR value IN ('on', 'off'))
);
SELECT pg_catalog.pg_extension_config_dump('envoisms.console_settings', '');

CREATE TABLE envoisms.console_users (
    account_id      text NOT NULL REFERENCES envoisms.accounts,
    user_id         text NOT NULL CHECK (user_id ~ '^usr_[0-9a-f]{28}$'),
    email           text NOT NULL CHECK (email = lower(email) AND length(email) <= 254
                                         AND email ~ '^[^@[:space:]]+@[^@[:space:]]+\.[^@[:space:]]+$'),
    name            text NOT NULL DEFAULT '' CHECK (length(name) <= 200),
    role            text NOT NULL CHECK (role IN ('owner', 'developer', 'billing', 'viewer')),
    operator        boolean NOT NULL DEFAULT false,     -- the install's operator area
    password_hash   text NOT NULL CHECK (password_hash LIKE '$scrypt$%'),
    phone           text CHECK (phone ~ '^\+[1-9][0-9]{6,14}$'),
    two_factor      boolean NOT NULL DEFAULT false,
    two_factor_channel text NOT NULL DEFAULT 'sms' CHECK (two_factor_channel IN ('sms', 'whatsapp')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_sign_in_at timestamptz,
    PRIMARY KEY (account_id, user_id),
    CHECK (NOT two_factor OR phone IS NOT NULL)
);
-- A sign-in finds the account from the email: emails are global.
CREATE UNIQUE INDEX console_users_email ON envoisms.console_users (email);
SELECT pg_catalog.pg_extension_config_dump('envoisms.console_users', '');

-- Sessions: only the SHA-256 of the cookie's token is stored. A session
-- lives until revoked_at, expires_at (absolute), or 30 minutes after
-- last_seen_at (idle).
CREATE TABLE envoisms.console_sessions (
    account_id   text NOT NULL,
    session_id   text NOT NULL CHECK (session_id ~ '^ses_[0-9a-f]{28}$'),
    user_id      text NOT NULL,
    token_hash   text NOT NULL CHECK (token_hash ~ '^[0-9a-f]{64}$'),
    client_ip    inet,
    user_agent   text CHECK (length(user_agent) <= 300),
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    revoked_at   timestamptz,
    PRIMARY KEY (account_id, session_id),
    FOREIGN KEY (account_id, user_id) REFERENCES envoisms.console_users ON DELETE CASCADE
);
-- The cookie names the session by its token alone.
CREATE UNIQUE INDEX console_sessions_token ON envoisms.console_sessions (token_hash);
CREATE INDEX console_sessions_user ON envoisms.console_sessions (account_id, user_id);
SELECT pg_catalog.pg_extension_config_dump('envoisms.console_sessions', '');

-- Failed sign-ins per subject ('email:…', 'ip:…') in a 15-minute window,
-- and until when the subject is refused.
CREATE TABLE envoisms.console_signin_throttle (
    subject       text PRIMARY KEY CHECK (length(subject) <= 300),
    failures      int NOT NULL DEFAULT 0 CHECK (failures >= 0),
    window_start  timestamptz NOT NULL DEFAULT now(),
    blocked_until timestamptz
);
SELECT pg_catalog.pg_extension_config_dump('envoisms.console_signin_throttle', '');

-- Second-factor challenges: a right password whose code was sent by
-- verify_send() on verify_account_id, waiting for POST /v1/console/sign-in/verify.
CREATE TABLE envoisms.console_challenges (
    account_id        text NOT NULL,
    challenge_id      text NOT NULL CHECK (challenge_id ~ '^chl_[0-9a-f]{28}$'),
    user_id           text NOT NULL,
    verify_account_id text NOT NULL,
    verify_session_id text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    expires_at        timestamptz NOT NULL,
    used_at           timestamptz,
    PRIMARY KEY (account_id, challenge_id),
    FOREIGN KEY (account_id, user_id) REFERENCES envoisms.console_users ON DELETE CASCADE
);
CREATE UNIQUE INDEX console_challenges_id ON envoisms.console_challenges (challenge_id);
SELECT pg_catalog.pg_extension_config_dump('envoisms.console_challenges', '');

-- ---- roles

-- The API permissions of a console role ('console': the console's own routes).
CREATE FUNCTION envoisms.console_role_permissions(role text) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE role
    WHEN 'owner' THEN envoisms.api_permissions()
    WHEN 'developer' THEN ARRAY['send', 'status', 'verify', 'contacts', 'campaigns', 'webhooks', 'api_keys',
                                'analytics', 'optouts']
    WHEN 'billing' THEN ARRAY['billing', 'balance', 'analytics']
    WHEN 'viewer' THEN ARRAY['status', 'analytics', 'campaigns', 'contacts', 'verify', 'balance']
    END || ARRAY['console'];

-- A console session as the API key rules see it (api_key_caller(),
-- 65_apikeys.sql): a live key holding its role's permissions (the owner's:
-- NULL, every one), no IP allowlist, no rate-limit cap.
CREATE FUNCTION envoisms.console_session_key(account_id text, session_id text) RETURNS envoisms.api_keys
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    k envoisms.api_keys;
BEGIN
    SELECT s.account_id, s.session_id, 'console session', 'env_live', s.token_hash, '',
           CASE WHEN u.role <> 'owner' THEN array_remove(envoisms.console_role_permissions(u.role), 'console') END,
           NULL, NULL, true, NULL, s.created_at, s.revoked_at
      INTO k
      FROM envoisms.console_sessions s
      JOIN envoisms.console_users u ON u.account_id = s.account_id AND u.user_id = s.user_id
     WHERE s.account_id = console_session_key.account_id AND s.session_id = console_session_key.session_id;
    IF NOT FOUND THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'console session not found', 'id');
    END IF;
    RETURN k;
END
$$;

-- A console setting, or NULL.
CREATE FUNCTION envoisms.console_setting(name text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog
RETURN (SELECT s.value FROM envoisms.console_settings s WHERE s.name = console_setting.name);

-- ---- users

-- Create a user of an account (the operator's first owner, and invitations);
-- returns its usr_… id. The password is at least 10 characters.
CREATE FUNCTION envoisms.console_user_create(account_id text, email text, password text, role text DEFAULT 'owner',
                                             name text DEFAULT '', phone text DEFAULT NULL,
                                             operator boolean DEFAULT false)
RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    id text := envoisms.new_id('usr');
BEGIN
    email := lower(btrim(email));
    IF email IS NULL OR length(email) > 254 OR email !~ '^[^@[:space:]]+@[^@[:space:]]+\.[^@[:space:]]+$' THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'email must be an email address', 'email');
    END IF;
    IF role IS NULL OR role NOT IN ('owner', 'developer', 'billing', 'viewer') THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'role must be owner, developer, billing or viewer', 'role');
    END IF;
    PERFORM envoisms.console_check_password(password);
    IF length(coalesce(name, '')) > 200 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'name must be at most 200 characters', 'name');
    END IF;
    IF phone IS NOT NULL THEN
        phone := envoisms.check_phone(phone, 'phone');
    END IF;
    IF NOT EXISTS (SELECT 1 FROM envoisms.accounts a WHERE a.account_id = console_user_create.account_id) THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'account not found', 'account_id');
    END IF;
    INSERT INTO envoisms.console_users (account_id, user_id, email, name, role, operator, password_hash, phone)
    VALUES (account_id, id, email, coalesce(btrim(name), ''), role, coalesce(operator, false),
            envoisms.password_hash(password), phone)
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        PERFORM envoisms.raise_error('CONFLICT', 'a user with this email exists already', 'email');
    END IF;
    RETURN id;
END
$$;
COMMENT ON FUNCTION envoisms.console_user_create(text, text, text, text, text, text, boolean) IS
'Create a console user of an account (email, password, role); returns its usr_… id';

-- Raise VALIDATION_ERROR unless the password is 10 to 200 characters.
CREATE FUNCTION envoisms.console_check_password(password text) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog AS $$
BEGIN
    IF password IS NULL OR length(password) NOT BETWEEN 10 AND 200 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'password must be 10 to 200 characters', 'password');
    END IF;
END
$$;

CREATE FUNCTION envoisms.console_user_json(u envoisms.console_users) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog
RETURN jsonb_build_object('user_id', u.user_id, 'email', u.email, 'name', u.name, 'role', u.role,
                          'phone', u.phone, 'two_factor', u.two_factor, 'two_factor_channel', u.two_factor_channel,
                          'operator', u.operator,
                          'created_at', envoisms.iso_time(u.created_at),
                          'last_sign_in_at', envoisms.iso_time(u.last_sign_in_at));

CREATE FUNCTION envoisms.console_account_json(account_id text) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog AS $$
    SELECT jsonb_build_object('account_id', a.account_id, 'name', a.name, 'status', a.status,
                              'balance_mad', envoisms.money(b.mad),
                              'balance_eur', envoisms.money(envoisms.mad_to_eur(b.mad)))
      FROM envoisms.accounts a, LATERAL (SELECT envoisms.account_balance(a.account_id) AS mad) b
     WHERE a.account_id = console_account_json.account_id
$$;

-- ---- sessions

-- The token of the envoisms_session cookie in a Cookie header, or NULL.
CREATE FUNCTION envoisms.console_cookie_token(cookie text) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog
RETURN substring(cookie FROM '(?:^|;)\s*envoisms_session=([0-9a-f]{64})\s*(?:;|$)');

-- The CSRF token of a session token: derived, so nothing more is stored,
-- and the session token cannot be read back from it.
CREATE FUNCTION envoisms.console_csrf_token(token text) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog
RETURN envoisms.sha256_hex('envoisms-csrf/' || token);

-- The Set-Cookie value that carries (or, with NULL, clears) a session.
CREATE FUNCTION envoisms.console_cookie(token text) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog
RETURN CASE WHEN token IS NULL THEN 'envoisms_session=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0'
            ELSE 'envoisms_session=' || token || '; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=43200' END;

-- When a session ends unless used again.
CREATE FUNCTION envoisms.console_session_end(s envoisms.console_sessions) RETURNS timestamptz
LANGUAGE sql IMMUTABLE
RETURN least(s.expires_at, s.last_seen_at + interval '30 minutes');

-- The live session a Cookie header names, or nothing.
CREATE FUNCTION envoisms.console_session_of(cookie text) RETURNS envoisms.console_sessions
LANGUAGE sql STABLE SET search_path = pg_catalog AS $$
    SELECT s.* FROM envoisms.console_sessions s
     WHERE s.token_hash = envoisms.sha256_hex(envoisms.console_cookie_token(cookie))
       AND s.revoked_at IS NULL AND envoisms.console_session_end(s) > now()
$$;

-- FORBIDDEN unless a request's Origin, when it has one, is its own Host:
-- writes and sign-ins come from the console's own pages (no login CSRF).
CREATE FUNCTION envoisms.console_check_origin(headers jsonb) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog AS $$
DECLARE
    origin_host text := substring(headers->>'origin' FROM '^https?://([^/]+)$');
BEGIN
    IF headers ? 'origin' AND (origin_host IS NULL OR lower(origin_host) IS DISTINCT FROM lower(headers->>'host')) THEN
        PERFORM envoisms.raise_error('FORBIDDEN', 'a console write must come from the console''s own origin');
    END IF;
END
$$;

-- Authenticate a request by its session cookie, for envoisms.api(): the
-- fields api_key_lookup() gives for a key (all NULL when the cookie names
-- no live session). Writes (any method but GET and HEAD) need the session's
-- X-CSRF-Token and, when an Origin is sent, the request's own host, else
-- FORBIDDEN; a viewer writes only to the console's own routes. touch:
-- slide the idle expiry (at most once a minute).
CREATE FUNCTION envoisms.console_session_auth(headers jsonb, method text, permission text, client_ip inet,
                                              touch boolean,
                                              OUT account_id text, OUT api_key_id text, OUT key_prefix text,
                                              OUT permissions text[], OUT ip_whitelist cidr[], OUT rate_limit int,
                                              OUT last_used_at timestamptz, OUT account_status text)
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    s envoisms.console_sessions := envoisms.console_session_of(headers->>'cookie');
    u envoisms.console_users;
BEGIN
    IF s.session_id IS NULL THEN
        RETURN;
    END IF;
    SELECT * INTO u FROM envoisms.console_users x WHERE x.account_id = s.account_id AND x.user_id = s.user_id;
    SELECT a.status INTO account_status FROM envoisms.accounts a WHERE a.account_id = s.account_id;
    IF method NOT IN ('GET', 'HEAD') THEN
        IF NOT envoisms.secure_equals(coalesce(headers->>'x-csrf-token', ''),
                                      envoisms.console_csrf_token(envoisms.console_cookie_token(headers->>'cookie'))) THEN
            PERFORM envoisms.raise_error('FORBIDDEN', 'a console write needs the session''s X-CSRF-Token header');
        END IF;
        PERFORM envoisms.console_check_origin(headers);
        IF u.role = 'viewer' AND permission IS DISTINCT FROM 'console' THEN
            PERFORM envoisms.raise_error('FORBIDDEN', 'the viewer role can only read');
        END IF;
    END IF;
    IF touch AND s.last_seen_at < now() - interval '1 minute' THEN
        UPDATE envoisms.console_sessions x SET last_seen_at = now()
         WHERE x.account_id = s.account_id AND x.session_id = s.session_id;
    END IF;
    account_id := s.account_id;
    api_key_id := s.session_id;
    key_prefix := 'env_live';
    permissions := envoisms.console_role_permissions(u.role);
    -- requests a minute per session (and the account's live bucket); 0: none
    rate_limit := nullif(coalesce(envoisms.console_setting('session_rate_limit'), '600')::int, 0);
    last_used_at := now();     -- api() updates api_keys.last_used_at, which a session has not
END
$$;

-- Start a session for a user: its row, and the reply that sets its cookie.
CREATE FUNCTION envoisms.console_session_start(u envoisms.console_users, client_ip inet, user_agent text)
RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    token text := envoisms.random_bytes_hex(32);
    s envoisms.console_sessions;
BEGIN
    INSERT INTO envoisms.console_sessions (account_id, session_id, user_id, token_hash, client_ip, user_agent, expires_at)
    VALUES (u.account_id, envoisms.new_id('ses'), u.user_id, envoisms.sha256_hex(token), client_ip,
            left(user_agent, 300), now() + interval '12 hours')
    RETURNING * INTO s;
    UPDATE envoisms.console_users x SET last_sign_in_at = now()
     WHERE x.account_id = u.account_id AND x.user_id = u.user_id;
    RETURN ROW(200, jsonb_build_object('Set-Cookie', envoisms.console_cookie(token), 'Cache-Control', 'no-store'),
               envoisms.console_session_json(s, token))::envoisms.api_reply;
END
$$;

-- GET /v1/console/session's body.
CREATE FUNCTION envoisms.console_session_json(s envoisms.console_sessions, token text) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog AS $$
    SELECT jsonb_build_object('user', envoisms.console_user_json(u), 'account', envoisms.console_account_json(u.account_id),
                              'role', u.role, 'permissions', to_jsonb(envoisms.console_role_permissions(u.role)),
                              'operator', u.operator, 'csrf_token', envoisms.console_csrf_token(token),
                              'expires_at', envoisms.iso_time(envoisms.console_session_end(s)))
      FROM envoisms.console_users u WHERE u.account_id = s.account_id AND u.user_id = s.user_id
$$;

-- The session user of a console request, or FORBIDDEN: a key, a role not
-- among `roles` (NULL: any), or not the operator when `operator` is asked.
CREATE FUNCTION envoisms.console_caller(req envoisms.api_request, roles text[] DEFAULT NULL,
                                        operator boolean DEFAULT false)
RETURNS envoisms.console_users
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    u envoisms.console_users;
BEGIN
    SELECT x.* INTO u FROM envoisms.console_sessions s
      JOIN envoisms.console_users x ON x.account_id = s.account_id AND x.user_id = s.user_id
     WHERE s.account_id = req.account_id AND s.session_id = req.api_key_id;
    IF NOT FOUND THEN
        PERFORM envoisms.raise_error('FORBIDDEN', 'this route needs a console session, not an API key');
    END IF;
    IF operator AND NOT u.operator THEN
        PERFORM envoisms.raise_error('FORBIDDEN', 'this route is for the operator only');
    END IF;
    IF roles IS NOT NULL AND NOT u.role = ANY (roles) THEN
        PERFORM envoisms.raise_error('FORBIDDEN',
            format('this needs the %s role', array_to_string(roles, ' or ')));
    END IF;
    RETURN u;
END
$$;

-- ---- sign-in and its backoff

-- Lock the throttle rows of a sign-in (email and client address), in subject
-- order; the seconds to wait when one is blocked, else NULL.
CREATE FUNCTION envoisms.console_throttle_lock(subjects text[]) RETURNS int
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    until timestamptz;
BEGIN
    INSERT INTO envoisms.console_signin_throttle (subject)
    SELECT x FROM unnest(subjects) x ORDER BY 1
    ON CONFLICT DO NOTHING;
    SELECT max(t.blocked_until) INTO until
      FROM (SELECT * FROM envoisms.console_signin_throttle x
             WHERE x.subject = ANY (subjects) ORDER BY x.subject FOR UPDATE) t;
    IF until > now() THEN
        RETURN greatest(1, ceil(extract(epoch FROM until - now())))::int;
    END IF;
    RETURN NULL;
END
$$;

-- Count a failed sign-in for each subject (locked by console_throttle_lock):
-- from the fifth failure in 15 minutes, the subject waits 30 s, doubled by
-- each further failure, at most 15 minutes.
CREATE FUNCTION envoisms.console_throttle_fail(subjects text[]) RETURNS void
LANGUAGE sql SET search_path = pg_catalog AS $$
    UPDATE envoisms.console_signin_throttle t
       SET failures = n.failures, window_start = n.window_start,
           blocked_until = CASE WHEN n.failures >= 5
                                THEN now() + make_interval(secs => least(900, 30 * 2 ^ least(n.failures - 5, 10)))
                           END
      FROM (SELECT x.subject,
                   CASE WHEN x.window_start < now() - interval '15 minutes' THEN 1 ELSE x.failures + 1 END AS failures,
                   CASE WHEN x.window_start < now() - interval '15 minutes' THEN now() ELSE x.window_start END AS window_start
              FROM envoisms.console_signin_throttle x WHERE x.subject = ANY (subjects)) n
     WHERE t.subject = n.subject
$$;

CREATE FUNCTION envoisms.console_signin_subjects(email text, client_ip inet) RETURNS text[]
LANGUAGE sql IMMUTABLE
RETURN array_remove(ARRAY['email:' || left(email, 254), 'ip:' || host(client_ip)], NULL);

-- The replies of a refused sign-in: they are returned, not raised, so that
-- the failure they counted is committed.
CREATE FUNCTION envoisms.console_refusal(status int, code text, message text, headers jsonb DEFAULT '{}')
RETURNS envoisms.api_reply
LANGUAGE sql IMMUTABLE
RETURN ROW(status, headers, envoisms.error_envelope(code, message))::envoisms.api_reply;

CREATE FUNCTION envoisms.console_backoff_reply(wait int) RETURNS envoisms.api_reply
LANGUAGE sql IMMUTABLE
RETURN envoisms.console_refusal(429, 'RATE_LIMITED',
           format('too many failed sign-ins; retry in %s s', wait), jsonb_build_object('Retry-After', wait::text));

-- POST /v1/console/sign-in {"email","password"}: a session, or a second-factor
-- challenge; one 401 for a wrong email or password; 429 while backing off.
CREATE FUNCTION envoisms.api_console_sign_in(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
<<api_console_sign_in>>
DECLARE
    email text := lower(btrim(envoisms.body_text(req.body, 'email')));
    password text := envoisms.body_text(req.body, 'password');
    subjects text[];
    wait int;
    u envoisms.console_users;
    ok boolean;
    verify_account text;
    v jsonb;
    c envoisms.console_challenges;
BEGIN
    PERFORM envoisms.console_check_origin(req.headers);
    IF email IS NULL OR email = '' OR length(email) > 254 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'email is required', 'email');
    END IF;
    IF password IS NULL OR password = '' THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'password is required', 'password');
    END IF;
    subjects := envoisms.console_signin_subjects(email, req.client_ip);
    wait := envoisms.console_throttle_lock(subjects);
    IF wait IS NOT NULL THEN
        RETURN envoisms.console_backoff_reply(wait);
    END IF;
    SELECT * INTO u FROM envoisms.console_users x WHERE x.email = api_console_sign_in.email;
    -- a hash is checked either way, so an unknown email costs the same time
    ok := envoisms.password_verify(password, coalesce(u.password_hash,
              '$scrypt$ln=14,r=8,p=1$00000000000000000000000000000000$0000000000000000000000000000000000000000000000000000000000000000'))
          AND u.user_id IS NOT NULL
          AND (SELECT a.status <> 'closed' FROM envoisms.accounts a WHERE a.account_id = u.account_id);
    IF NOT ok THEN
        PERFORM envoisms.console_throttle_fail(subjects);
        RETURN envoisms.console_refusal(401, 'UNAUTHORIZED', 'wrong email or password');
    END IF;
    DELETE FROM envoisms.console_signin_throttle t WHERE t.subject = subjects[1];
    IF NOT u.two_factor THEN
        RETURN envoisms.console_session_start(u, req.client_ip, req.headers->>'user-agent');
    END IF;

    -- the second factor: a code sent by envoisms' own verify
    verify_account := coalesce(envoisms.console_setting('two_factor_account'), u.account_id);
    v := envoisms.verify_send(verify_account, u.phone, u.two_factor_channel, 'EnvoiSMS', 6, 300,
                              sandbox => coalesce(envoisms.console_setting('two_factor_sandbox') = 'on', false));
    INSERT INTO envoisms.console_challenges (account_id, challenge_id, user_id, verify_account_id, verify_session_id, expires_at)
    VALUES (u.account_id, envoisms.new_id('chl'), u.user_id, verify_account, v->>'session_id',
            envoisms.parse_time(v->>'expires_at', 'expires_at'))
    RETURNING * INTO c;
    RETURN envoisms.reply(200, jsonb_build_object(
        'second_factor', 'required', 'challenge_id', c.challenge_id, 'channel', u.two_factor_channel,
        'to', left(u.phone, 5) || repeat('•', greatest(length(u.phone) - 8, 0)) || right(u.phone, 3),
        'expires_at', envoisms.iso_time(c.expires_at)));
END
$$;

-- POST /v1/console/sign-in/verify {"challenge_id","code"}: the session, once.
CREATE FUNCTION envoisms.api_console_sign_in_verify(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    id text := envoisms.body_text(req.body, 'challenge_id');
    code text := envoisms.body_text(req.body, 'code');
    c envoisms.console_challenges;
    u envoisms.console_users;
    subjects text[];
    wait int;
BEGIN
    PERFORM envoisms.console_check_origin(req.headers);
    IF id IS NULL OR code IS NULL THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'challenge_id and code are required',
                                     CASE WHEN id IS NULL THEN 'challenge_id' ELSE 'code' END);
    END IF;
    SELECT * INTO c FROM envoisms.console_challenges x WHERE x.challenge_id = id AND x.used_at IS NULL FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'no such sign-in challenge', 'challenge_id');
    END IF;
    IF c.expires_at <= now() THEN
        PERFORM envoisms.raise_error('EXPIRED', 'the sign-in code expired; sign in again', 'code');
    END IF;
    SELECT * INTO u FROM envoisms.console_users x WHERE x.account_id = c.account_id AND x.user_id = c.user_id;
    subjects := envoisms.console_signin_subjects(u.email, req.client_ip);
    wait := envoisms.console_throttle_lock(subjects);
    IF wait IS NOT NULL THEN
        RETURN envoisms.console_backoff_reply(wait);
    END IF;
    IF NOT (envoisms.verify_check(c.verify_account_id, c.verify_session_id, code)->>'verified')::boolean THEN
        PERFORM envoisms.console_throttle_fail(subjects);
        RETURN envoisms.console_refusal(401, 'UNAUTHORIZED', 'wrong code');
    END IF;
    UPDATE envoisms.console_challenges x SET used_at = now()
     WHERE x.account_id = c.account_id AND x.challenge_id = c.challenge_id;
    DELETE FROM envoisms.console_signin_throttle t WHERE t.subject = subjects[1];
    RETURN envoisms.console_session_start(u, req.client_ip, req.headers->>'user-agent');
END
$$;

-- GET /v1/console/session
CREATE FUNCTION envoisms.api_console_session(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    s envoisms.console_sessions;
BEGIN
    PERFORM envoisms.console_caller(req);
    s := envoisms.console_session_of(req.headers->>'cookie');
    RETURN ROW(200, '{"Cache-Control": "no-store"}',
               envoisms.console_session_json(s, envoisms.console_cookie_token(req.headers->>'cookie')))::envoisms.api_reply;
END
$$;

-- POST /v1/console/sign-out: the session revoked, the cookie cleared.
CREATE FUNCTION envoisms.api_console_sign_out(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    PERFORM envoisms.console_caller(req);
    UPDATE envoisms.console_sessions s SET revoked_at = now()
     WHERE s.account_id = req.account_id AND s.session_id = req.api_key_id AND s.revoked_at IS NULL;
    RETURN ROW(204, jsonb_build_object('Set-Cookie', envoisms.console_cookie(NULL)), NULL)::envoisms.api_reply;
END
$$;

-- PATCH /v1/console/me {"name","phone","two_factor","two_factor_channel","password","current_password"}
CREATE FUNCTION envoisms.api_console_me(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    u envoisms.console_users := envoisms.console_caller(req);
    password text := envoisms.body_text(req.body, 'password');
    phone text;
BEGIN
    IF NOT (req.body ?| ARRAY['name', 'phone', 'two_factor', 'two_factor_channel', 'password']) THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR',
            'give at least one of name, phone, two_factor, two_factor_channel, password', 'name');
    END IF;
    IF length(envoisms.body_text(req.body, 'name')) > 200 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'name must be at most 200 characters', 'name');
    END IF;
    u.name := coalesce(btrim(envoisms.body_text(req.body, 'name')), u.name);
    IF req.body ? 'phone' THEN
        phone := envoisms.body_text(req.body, 'phone');
        u.phone := CASE WHEN phone IS NULL THEN NULL ELSE envoisms.check_phone(phone, 'phone') END;
    END IF;
    u.two_factor := envoisms.body_bool(req.body, 'two_factor', u.two_factor);
    u.two_factor_channel := coalesce(envoisms.body_text(req.body, 'two_factor_channel'), u.two_factor_channel);
    IF u.two_factor_channel NOT IN ('sms', 'whatsapp') THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'two_factor_channel must be "sms" or "whatsapp"', 'two_factor_channel');
    END IF;
    IF u.two_factor AND u.phone IS NULL THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'two-factor sign-in needs a phone number', 'phone');
    END IF;
    IF password IS NOT NULL THEN
        PERFORM envoisms.console_check_password(password);
        IF NOT envoisms.password_verify(coalesce(envoisms.body_text(req.body, 'current_password'), ''), u.password_hash) THEN
            PERFORM envoisms.raise_error('FORBIDDEN', 'current_password is wrong', 'current_password');
        END IF;
        u.password_hash := envoisms.password_hash(password);
        -- a new password ends every other session of the user
        UPDATE envoisms.console_sessions s SET revoked_at = now()
         WHERE s.account_id = u.account_id AND s.user_id = u.user_id AND s.session_id <> req.api_key_id
           AND s.revoked_at IS NULL;
    END IF;
    UPDATE envoisms.console_users x
       SET name = u.name, phone = u.phone, two_factor = u.two_factor, two_factor_channel = u.two_factor_channel,
           password_hash = u.password_hash
     WHERE x.account_id = u.account_id AND x.user_id = u.user_id;
    RETURN envoisms.reply(200, envoisms.console_user_json(u));
END
$$;

INSERT INTO envoisms.api_endpoints (method, template, handler, permission, public) VALUES
    ('POST',  '/v1/console/sign-in',        'envoisms.api_console_sign_in(envoisms.api_request)',        'console', true),
    ('POST',  '/v1/console/sign-in/verify', 'envoisms.api_console_sign_in_verify(envoisms.api_request)', 'console', true),
    ('GET',   '/v1/console/session',        'envoisms.api_console_session(envoisms.api_request)',        'console', false),
    ('POST',  '/v1/console/sign-out',       'envoisms.api_console_sign_out(envoisms.api_request)',       'console', false),
    ('PATCH', '/v1/console/me',             'envoisms.api_console_me(envoisms.api_request)',             'console', false);

-- ---- (src/sql/93_console_users.sql)
-- 93_console_users.sql — what an account's owner manages in the console:
-- its users and their invitations, the account's legal identifiers, and
-- the invoices of its completed top-ups.
--
-- Invoices (money): one per completed top-up, issued by a trigger on
-- envoisms.topups in the transaction that completes it (whatever completes
-- it: Stripe's webhook, the operator's topup_confirm, a failed top-up
-- completed after all). Numbers are YYYY-NNNNNN, gapless per calendar year
-- for the whole install (they are the seller's numbers): the year's row of
-- console_invoice_counters is incremented in that same transaction, so its
-- row lock orders concurrent completions and a rolled-back completion
-- gives its number back (test/isolation/specs/console_invoices.spec). The
-- top-up's amount is TTC (tax included): HT = round(TTC / 1.20, 2), TVA =
-- TTC − HT.

-- ---- invitations

CREATE TABLE envoisms.console_invitations (
    account_id    text NOT NULL REFERENCES envoisms.accounts,
    invitation_id text NOT NULL CHECK (invitation_id ~ '^inv_[0-9a-f]{28}$'),
    email         text NOT NULL CHECK (email = lower(email) AND length(email) <= 254),
    role          text NOT NULL CHECK (role IN ('owner', 'developer', 'billing', 'viewer')),
    token_hash    text NOT NULL CHECK (token_hash ~ '^[0-9a-f]{64}$'),
    invited_by    text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    accepted_at   timestamptz,
    PRIMARY KEY (account_id, invitation_id)
);
-- An invitation is accepted by its token alone.
CREATE UNIQUE INDEX console_invitations_token ON envoisms.console_invitations (token_hash);
SELECT pg_catalog.pg_extension_config_dump('envoisms.console_invitations', '');

CREATE FUNCTION envoisms.console_invitation_json(i envoisms.console_invitations) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog
RETURN jsonb_build_object('invitation_id', i.invitation_id, 'email', i.email, 'role', i.role,
                          'created_at', envoisms.iso_time(i.created_at), 'expires_at', envoisms.iso_time(i.expires_at));

-- GET /v1/console/users (owner): the users and the pending invitations.
CREATE FUNCTION envoisms.api_console_users(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    PERFORM envoisms.console_caller(req, '{owner}');
    RETURN envoisms.reply(200, jsonb_build_object(
        'data', coalesce((SELECT jsonb_agg(envoisms.console_user_json(u) ORDER BY u.created_at, u.user_id)
                            FROM envoisms.console_users u WHERE u.account_id = req.account_id), '[]'),
        'invitations', coalesce((SELECT jsonb_agg(envoisms.console_invitation_json(i) ORDER BY i.created_at)
                                   FROM envoisms.console_invitations i
                                  WHERE i.account_id = req.account_id AND i.accepted_at IS NULL
                                    AND i.expires_at > now()), '[]')));
END
$$;

-- POST /v1/console/invitations {"email","role"} (owner): the token, shown once.
CREATE FUNCTION envoisms.api_console_invite(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
<<api_console_invite>>
DECLARE
    u envoisms.console_users := envoisms.console_caller(req, '{owner}');
    email text := lower(btrim(envoisms.body_text(req.body, 'email')));
    role text := envoisms.body_text(req.body, 'role');
    token text := envoisms.random_bytes_hex(32);
    i envoisms.console_invitations;
BEGIN
    IF email IS NULL OR length(email) > 254 OR email !~ '^[^@[:space:]]+@[^@[:space:]]+\.[^@[:space:]]+$' THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'email must be an email address', 'email');
    END IF;
    IF role IS NULL OR role NOT IN ('owner', 'developer', 'billing', 'viewer') THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'role must be owner, developer, billing or viewer', 'role');
    END IF;
    IF EXISTS (SELECT 1 FROM envoisms.console_users x WHERE x.email = api_console_invite.email) THEN
        PERFORM envoisms.raise_error('CONFLICT', 'a user with this email exists already', 'email');
    END IF;
    INSERT INTO envoisms.console_invitations (account_id, invitation_id, email, role, token_hash, invited_by, expires_at)
    VALUES (u.account_id, envoisms.new_id('inv'), email, role, envoisms.sha256_hex(token), u.user_id,
            now() + interval '7 days')
    RETURNING * INTO i;
    RETURN envoisms.reply(201, envoisms.console_invitation_json(i)
                               || jsonb_build_object('token', token, 'accept_url', '/console/#/accept/' || token));
END
$$;

-- DELETE /v1/console/invitations/:id (owner)
CREATE FUNCTION envoisms.api_console_invitation_delete(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    PERFORM envoisms.console_caller(req, '{owner}');
    DELETE FROM envoisms.console_invitations i
     WHERE i.account_id = req.account_id AND i.invitation_id = req.id AND i.accepted_at IS NULL;
    IF NOT FOUND THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'invitation not found', 'id');
    END IF;
    RETURN envoisms.reply(200, jsonb_build_object('deleted', true, 'invitation_id', req.id));
END
$$;

-- POST /v1/console/invitations/accept {"token","name","password","phone"} (public):
-- the new user, signed in.
CREATE FUNCTION envoisms.api_console_invitation_accept(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
<<api_console_invitation_accept>>
DECLARE
    token text := envoisms.body_text(req.body, 'token');
    i envoisms.console_invitations;
    u envoisms.console_users;
    user_id text;
BEGIN
    PERFORM envoisms.console_check_origin(req.headers);
    SELECT * INTO i FROM envoisms.console_invitations x
     WHERE x.token_hash = envoisms.sha256_hex(coalesce(token, '')) AND x.accepted_at IS NULL FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'no such invitation, or it was used', 'token');
    END IF;
    IF i.expires_at <= now() THEN
        PERFORM envoisms.raise_error('EXPIRED', 'the invitation expired; ask for a new one', 'token');
    END IF;
    UPDATE envoisms.console_invitations x SET accepted_at = now()
     WHERE x.account_id = i.account_id AND x.invitation_id = i.invitation_id;
    user_id := envoisms.console_user_create(i.account_id, i.email, envoisms.body_text(req.body, 'password'), i.role,
                                            envoisms.body_text(req.body, 'name'), envoisms.body_text(req.body, 'phone'));
    SELECT * INTO u FROM envoisms.console_users x WHERE x.account_id = i.account_id AND x.user_id = api_console_invitation_accept.user_id;
    RETURN envoisms.console_session_start(u, req.client_ip, req.headers->>'user-agent');
END
$$;

-- The owners an account keeps after a change; CONFLICT when none would.
CREATE FUNCTION envoisms.console_check_owner_left(account_id text, changed_user text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    PERFORM 1 FROM envoisms.console_users u WHERE u.account_id = console_check_owner_left.account_id FOR UPDATE;
    IF NOT EXISTS (SELECT 1 FROM envoisms.console_users u
                    WHERE u.account_id = console_check_owner_left.account_id AND u.role = 'owner'
                      AND u.user_id <> changed_user) THEN
        PERFORM envoisms.raise_error('CONFLICT', 'an account keeps at least one owner', 'role');
    END IF;
END
$$;

-- PATCH /v1/console/users/:id {"role"} (owner)
CREATE FUNCTION envoisms.api_console_user_update(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
<<api_console_user_update>>
DECLARE
    role text := envoisms.body_text(req.body, 'role');
    u envoisms.console_users;
BEGIN
    PERFORM envoisms.console_caller(req, '{owner}');
    IF role IS NULL OR role NOT IN ('owner', 'developer', 'billing', 'viewer') THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'role must be owner, developer, billing or viewer', 'role');
    END IF;
    SELECT * INTO u FROM envoisms.console_users x WHERE x.account_id = req.account_id AND x.user_id = req.id;
    IF NOT FOUND THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'user not found', 'id');
    END IF;
    IF u.role = 'owner' AND role <> 'owner' THEN
        PERFORM envoisms.console_check_owner_left(req.account_id, u.user_id);
    END IF;
    UPDATE envoisms.console_users x SET role = api_console_user_update.role
     WHERE x.account_id = u.account_id AND x.user_id = u.user_id
    RETURNING * INTO u;
    RETURN envoisms.reply(200, envoisms.console_user_json(u));
END
$$;

-- DELETE /v1/console/users/:id (owner): the user and their sessions.
CREATE FUNCTION envoisms.api_console_user_delete(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    me envoisms.console_users := envoisms.console_caller(req, '{owner}');
    u envoisms.console_users;
BEGIN
    SELECT * INTO u FROM envoisms.console_users x WHERE x.account_id = req.account_id AND x.user_id = req.id;
    IF NOT FOUND THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'user not found', 'id');
    END IF;
    IF u.user_id = me.user_id THEN
        PERFORM envoisms.raise_error('CONFLICT', 'you cannot remove yourself', 'id');
    END IF;
    IF u.role = 'owner' THEN
        PERFORM envoisms.console_check_owner_left(req.account_id, u.user_id);
    END IF;
    DELETE FROM envoisms.console_users x WHERE x.account_id = u.account_id AND x.user_id = u.user_id;
    RETURN envoisms.reply(200, jsonb_build_object('deleted', true, 'user_id', u.user_id));
END
$$;

-- ---- the account's legal identifiers (Morocco: ICE, IF, RC)

CREATE TABLE envoisms.console_account_legal (
    account_id text PRIMARY KEY REFERENCES envoisms.accounts,
    ice        text CHECK (ice ~ '^[0-9]{15}$'),
    "if"       text CHECK ("if" ~ '^[0-9]{1,10}$'),
    rc         text CHECK (length(rc) BETWEEN 1 AND 20),
    address    text CHECK (length(address) <= 300),
    city       text CHECK (length(city) <= 100),
    updated_at timestamptz NOT NULL DEFAULT now()
);
SELECT pg_catalog.pg_extension_config_dump('envoisms.console_account_legal', '');

CREATE FUNCTION envoisms.console_legal_json(account_id text) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog AS $$
    SELECT jsonb_build_object('name', a.name, 'ice', l.ice, 'if', l."if", 'rc', l.rc,
                              'address', l.address, 'city', l.city)
      FROM envoisms.accounts a
      LEFT JOIN envoisms.console_account_legal l ON l.account_id = a.account_id
     WHERE a.account_id = console_legal_json.account_id
$$;

-- GET /v1/console/account
CREATE FUNCTION envoisms.api_console_account(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    PERFORM envoisms.console_caller(req);
    RETURN envoisms.reply(200, envoisms.console_account_json(req.account_id) || envoisms.console_legal_json(req.account_id));
END
$$;

-- PATCH /v1/console/account {"name","ice","if","rc","address","city"} (owner, billing)
CREATE FUNCTION envoisms.api_console_account_update(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
<<api_console_account_update>>
DECLARE
    name text := btrim(envoisms.body_text(req.body, 'name'));
    ice text := btrim(envoisms.body_text(req.body, 'ice'));
    fiscal text := btrim(envoisms.body_text(req.body, 'if'));
    rc text := btrim(envoisms.body_text(req.body, 'rc'));
    address text := btrim(envoisms.body_text(req.body, 'address'));
    city text := btrim(envoisms.body_text(req.body, 'city'));
BEGIN
    PERFORM envoisms.console_caller(req, '{owner,billing}');
    IF NOT (req.body ?| ARRAY['name', 'ice', 'if', 'rc', 'address', 'city']) THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'give at least one of name, ice, if, rc, address, city', 'name');
    END IF;
    IF name IS NOT NULL AND length(name) NOT BETWEEN 1 AND 200 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'name must be 1 to 200 characters', 'name');
    ELSIF ice !~ '^[0-9]{15}$' THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'ice (Identifiant Commun de l''Entreprise) is 15 digits', 'ice');
    ELSIF fiscal !~ '^[0-9]{1,10}$' THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'if (Identifiant Fiscal) is 1 to 10 digits', 'if');
    ELSIF length(rc) NOT BETWEEN 1 AND 20 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'rc (Registre de Commerce) is 1 to 20 characters', 'rc');
    ELSIF length(address) > 300 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'address must be at most 300 characters', 'address');
    ELSIF length(city) > 100 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'city must be at most 100 characters', 'city');
    END IF;
    IF name IS NOT NULL THEN
        UPDATE envoisms.accounts a SET name = api_console_account_update.name WHERE a.account_id = req.account_id;
    END IF;
    INSERT INTO envoisms.console_account_legal AS l (account_id, ice, "if", rc, address, city)
    VALUES (req.account_id, ice, fiscal, rc, address, city)
    ON CONFLICT (account_id) DO UPDATE
       SET ice = coalesce(excluded.ice, l.ice), "if" = coalesce(excluded."if", l."if"),
           rc = coalesce(excluded.rc, l.rc), address = coalesce(excluded.address, l.address),
           city = coalesce(excluded.city, l.city), updated_at = now();
    RETURN envoisms.reply(200, envoisms.console_account_json(req.account_id) || envoisms.console_legal_json(req.account_id));
END
$$;

-- ---- invoices

CREATE TABLE envoisms.console_invoice_counters (
    year        int PRIMARY KEY CHECK (year BETWEEN 2000 AND 9999),
    last_number int NOT NULL CHECK (last_number > 0)
);
SELECT pg_catalog.pg_extension_config_dump('envoisms.console_invoice_counters', '');

CREATE TABLE envoisms.console_invoices (
    account_id        text NOT NULL REFERENCES envoisms.accounts,
    invoice_id        text NOT NULL CHECK (invoice_id ~ '^fac_[0-9a-f]{28}$'),
    year              int NOT NULL,
    number            int NOT NULL CHECK (number > 0),
    topup_id          text NOT NULL,
    issued_at         timestamptz NOT NULL DEFAULT now(),
    total_ttc_mad     numeric(16,2) NOT NULL CHECK (total_ttc_mad > 0),
    total_ht_mad      numeric(16,2) NOT NULL,
    tva_rate          numeric(4,2) NOT NULL,
    tva_mad           numeric(16,2) NOT NULL,
    seller            jsonb NOT NULL,
    buyer             jsonb NOT NULL,
    paid_with         text NOT NULL,
    payment_reference text NOT NULL,
    PRIMARY KEY (account_id, invoice_id),
    UNIQUE (account_id, topup_id),
    CHECK (total_ht_mad + tva_mad = total_ttc_mad)
);
-- The seller's numbering is global: one number per year, once.
CREATE UNIQUE INDEX console_invoices_number ON envoisms.console_invoices (year, number);
SELECT pg_catalog.pg_extension_config_dump('envoisms.console_invoices', '');

-- The Moroccan VAT (TVA) rate applied to top-ups.
CREATE FUNCTION envoisms.console_tva_rate() RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE RETURN 0.20;

-- Issue the invoice of a completed top-up (once; the next number of the
-- year, locked until the caller commits); returns its id.
CREATE FUNCTION envoisms.invoice_issue(t envoisms.topups) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    id text := envoisms.new_id('fac');
    issue_year int := extract(year FROM coalesce(t.completed_at, now()) AT TIME ZONE 'UTC')::int;
    issue_number int;
    ttc numeric := round(t.amount_mad, 2);
    ht numeric := round(round(t.amount_mad, 2) / (1 + envoisms.console_tva_rate()), 2);
BEGIN
    IF EXISTS (SELECT 1 FROM envoisms.console_invoices i WHERE i.account_id = t.account_id AND i.topup_id = t.topup_id) THEN
        RETURN NULL;
    END IF;
    INSERT INTO envoisms.console_invoice_counters AS c (year, last_number) VALUES (issue_year, 1)
    ON CONFLICT (year) DO UPDATE SET last_number = c.last_number + 1
    RETURNING c.last_number INTO issue_number;
    INSERT INTO envoisms.console_invoices (account_id, invoice_id, year, number, topup_id, total_ttc_mad, total_ht_mad,
                                           tva_rate, tva_mad, seller, buyer, paid_with, payment_reference)
    VALUES (t.account_id, id, issue_year, issue_number, t.topup_id, ttc, ht, envoisms.console_tva_rate(), ttc - ht,
            jsonb_build_object('name', envoisms.console_setting('seller_name'), 'ice', envoisms.console_setting('seller_ice'),
                               'if', envoisms.console_setting('seller_if'), 'rc', envoisms.console_setting('seller_rc'),
                               'address', envoisms.console_setting('seller_address'),
                               'city', envoisms.console_setting('seller_city'),
                               'email', envoisms.console_setting('seller_email')),
            envoisms.console_legal_json(t.account_id), t.method, t.reference);
    RETURN id;
END
$$;
COMMENT ON FUNCTION envoisms.invoice_issue(envoisms.topups) IS
'Issue the invoice of a completed top-up: the year''s next gapless number, TVA 20% included in the amount';

CREATE FUNCTION envoisms.invoice_number(i envoisms.console_invoices) RETURNS text
LANGUAGE sql IMMUTABLE RETURN i.year || '-' || lpad(i.number::text, 6, '0');

CREATE FUNCTION envoisms.invoice_json(i envoisms.console_invoices, full_detail boolean) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog
RETURN jsonb_build_object('invoice_id', i.invoice_id, 'number', envoisms.invoice_number(i),
                          'issued_at', envoisms.iso_time(i.issued_at), 'total_ht_mad', envoisms.money(i.total_ht_mad),
                          'tva_mad', envoisms.money(i.tva_mad), 'total_ttc_mad', envoisms.money(i.total_ttc_mad),
                          'topup_id', i.topup_id)
       || CASE WHEN full_detail THEN jsonb_build_object(
              'seller', i.seller, 'buyer', i.buyer, 'tva_rate', envoisms.money(i.tva_rate), 'currency', 'MAD',
              'lines', jsonb_build_array(jsonb_build_object(
                  'description', 'Crédit de messages (recharge ' || i.topup_id || ')', 'quantity', 1,
                  'unit_ht_mad', envoisms.money(i.total_ht_mad), 'total_ht_mad', envoisms.money(i.total_ht_mad))),
              'paid_with', i.paid_with, 'payment_reference', i.payment_reference)
          ELSE '{}' END;

-- GET /v1/console/invoices
CREATE FUNCTION envoisms.api_console_invoices(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    lim int := envoisms.query_int(req.query, 'limit', 50, 1, 200);
    off int := envoisms.query_int(req.query, 'offset', 0, 0, 1000000000);
BEGIN
    RETURN envoisms.reply(200, jsonb_build_object('data', coalesce((
        SELECT jsonb_agg(envoisms.invoice_json(i, false) ORDER BY i.issued_at DESC, i.invoice_id DESC)
          FROM (SELECT * FROM envoisms.console_invoices x WHERE x.account_id = req.account_id
                 ORDER BY x.issued_at DESC, x.invoice_id DESC LIMIT lim OFFSET off) i), '[]')));
END
$$;

-- GET /v1/console/invoices/:id
CREATE FUNCTION envoisms.api_console_invoice(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    i envoisms.console_invoices;
BEGIN
    SELECT * INTO i FROM envoisms.console_invoices x WHERE x.account_id = req.account_id AND x.invoice_id = req.id;
    IF NOT FOUND THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'invoice not found', 'id');
    END IF;
    RETURN envoisms.reply(200, envoisms.invoice_json(i, true));
END
$$;

INSERT INTO envoisms.api_endpoints (method, template, handler, permission, public) VALUES
    ('GET',    '/v1/console/users',              'envoisms.api_console_users(envoisms.api_request)',              'console', false),
    ('PATCH',  '/v1/console/users/:id',          'envoisms.api_console_user_update(envoisms.api_request)',        'console', false),
    ('DELETE', '/v1/console/users/:id',          'envoisms.api_console_user_delete(envoisms.api_request)',        'console', false),
    ('POST',   '/v1/console/invitations',        'envoisms.api_console_invite(envoisms.api_request)',             'console', false),
    ('DELETE', '/v1/console/invitations/:id',    'envoisms.api_console_invitation_delete(envoisms.api_request)',  'console', false),
    ('POST',   '/v1/console/invitations/accept', 'envoisms.api_console_invitation_accept(envoisms.api_request)',  'console', true),
    ('GET',    '/v1/console/account',            'envoisms.api_console_account(envoisms.api_request)',            'console', false),
    ('PATCH',  '/v1/console/account',            'envoisms.api_console_account_update(envoisms.api_request)',     'console', false),
    ('GET',    '/v1/console/invoices',           'envoisms.api_console_invoices(envoisms.api_request)',           'billing', false),
    ('GET',    '/v1/console/invoices/:id',       'envoisms.api_console_invoice(envoisms.api_request)',            'billing', false);

-- ---- (src/sql/94_console_views.sql)
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
LANGUAGE sql SET search_path = pg_catalog AS $$
    WITH picked AS (
        SELECT d.account_id, d.delta_id FROM envoisms.console_rollup_deltas d
         WHERE console_rollup_fold.account_id IS NULL OR d.account_id = console_rollup_fold.account_id
         ORDER BY d.account_id, d.delta_id
         LIMIT batch FOR UPDATE SKIP LOCKED),
    folded AS (
        DELETE FROM envoisms.console_rollup_deltas d USING picked p
         WHERE d.account_id = p.account_id AND d.delta_id = p.delta_id
        RETURNING d.*),
    summed AS (
        INSERT INTO envoisms.console_rollups AS r (account_id, day, channel, status, operator, delay_bucket, messages, spend_mad)
        SELECT f.account_id, f.day, f.channel, f.status, envoisms.console_operator(f.to_number), f.delay_bucket,
               sum(f.messages), sum(f.spend_mad)
          FROM folded f
         GROUP BY 1, 2, 3, 4, 5, 6
         ORDER BY 1, 2, 3, 4, 5, 6
        ON CONFLICT (account_id, day, channel, status, operator, delay_bucket) DO UPDATE
           SET messages = r.messages + excluded.messages, spend_mad = r.spend_mad + excluded.spend_mad
        RETURNING 1)
    SELECT count(*)::int FROM folded WHERE (SELECT count(*) FROM summed) >= 0
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
LANGUAGE sql STABLE SET search_path = pg_catalog AS $$
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
    HAVING sum(c.messages) <> 0 OR sum(c.spend_mad) <> 0
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
LANGUAGE sql STABLE SET search_path = pg_catalog AS $$
    SELECT CASE WHEN coalesce(direction, 'outbound') = 'outbound' AND status IS DISTINCT FROM 'received' THEN
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
                    + CASE WHEN status IS NULL OR status = 'queued' THEN
                          (SELECT count(*) FROM envoisms.messages m
                            WHERE m.status = 'queued' AND m.next_attempt_at > '-infinity'
                              AND m.account_id = message_count.account_id AND m.direction = 'outbound'
                              AND (message_count.channel IS NULL OR m.channel = message_count.channel))
                      ELSE 0 END
                ELSE 0 END
         + CASE WHEN coalesce(direction, 'inbound') = 'inbound' AND (status IS NULL OR status = 'received') THEN
                    (SELECT count(*) FROM envoisms.messages m
                      WHERE m.direction = 'inbound' AND m.account_id = message_count.account_id
                        AND (message_count.channel IS NULL OR m.channel = message_count.channel))
                ELSE 0 END
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

-- The overview of messages sent before 0.6.0: rollups from the messages (one scan).
SELECT envoisms.console_rollup_rebuild();

-- Nothing for PUBLIC on what this section made (99_grants.sql).
REVOKE ALL ON ALL TABLES IN SCHEMA envoisms FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA envoisms FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA envoisms FROM PUBLIC;

-- ---- a completed top-up issues its invoice (82_billing.sql)

CREATE OR REPLACE FUNCTION envoisms.topup_complete(topup_id text, from_failed boolean DEFAULT false) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    t envoisms.topups;
BEGIN
    UPDATE envoisms.topups x
       SET status = 'completed', completed_at = now(), failed_at = NULL, failure_reason = NULL
     WHERE x.topup_id = topup_complete.topup_id
       AND (x.status = 'pending' OR (from_failed AND x.status = 'failed'))
    RETURNING * INTO t;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM envoisms.balance_rebalance(t.account_id, t.amount_mad);
    INSERT INTO envoisms.ledger (account_id, kind, amount_mad, reference, topup_id)
    VALUES (t.account_id, 'topup', t.amount_mad, t.reference, t.topup_id);
    -- its invoice, in the same transaction (93_console_users.sql)
    PERFORM envoisms.invoice_issue(t);
    RETURN true;
END
$$;


-- ---- merged: the final definitions of the functions more than one section above changed

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
        IF k.api_key_id IS NULL AND NOT coalesce(r.public, false) AND NOT hdr ? 'authorization' AND hdr ? 'cookie' THEN
            -- a console session's cookie instead of a key (92_console_auth.sql)
            k := envoisms.console_session_auth(hdr, method, r.permission, client_ip, true);
        END IF;
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
        -- (on a cluster, on the account's node: 96_distribute.sql)
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

CREATE OR REPLACE FUNCTION envoisms.api_key_revoke(account_id text, api_key_id text, caller_key_id text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    target envoisms.api_keys := envoisms.api_key_row(account_id, api_key_id);
    revoked timestamptz := now();
BEGIN
    IF caller_key_id IS NOT NULL THEN
        PERFORM envoisms.check_key_kind(envoisms.api_key_caller(account_id, caller_key_id), target.key_prefix);
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

CREATE OR REPLACE FUNCTION envoisms.message_count(account_id text, status text DEFAULT NULL, channel text DEFAULT NULL,
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

CREATE OR REPLACE FUNCTION envoisms.console_counts(account_id text, since date)
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

CREATE OR REPLACE FUNCTION envoisms.console_rollup_fold(account_id text DEFAULT NULL, batch int DEFAULT 10000) RETURNS int
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

