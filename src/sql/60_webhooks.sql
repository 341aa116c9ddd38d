-- 60_webhooks.sql — webhook endpoints: GET/POST /v1/webhooks,
-- PATCH/DELETE /v1/webhooks/:id, POST /v1/webhooks/:id/test.
--
-- The tables (webhooks, webhook_deliveries) and the queueing function
-- (webhook_enqueue, called in the same transaction as each status change and
-- each verify.success) are in 00_schema.sql and 35_events.sql; the webhook
-- worker delivers. A URL must be https:// unless the operator turns on
-- envoisms.webhook_allow_http (for tests). The secret (whsec_… when not
-- given) is shown once, on create. Delete is logical (deleted_at, inactive)
-- and cancels the deliveries still pending for that endpoint.

-- The events a webhook may subscribe to, and the default subscription (all
-- real events; message.test is sent to one webhook on request, whatever it
-- subscribes to).
CREATE FUNCTION envoisms.webhook_default_events() RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN ARRAY(SELECT e FROM unnest(envoisms.webhook_event_types()) e WHERE e <> 'message.test');

-- Why a delivery would refuse to connect to an address (loopback, private,
-- link-local, NAT64, 6to4, Teredo …), or NULL: the guard that runs on every
-- address a webhook delivery connects to, after DNS (worker_ssrf.c).
CREATE FUNCTION envoisms.webhook_address_refusal(address inet) RETURNS text
AS 'MODULE_PATHNAME', 'webhook_address_refusal' LANGUAGE C STRICT IMMUTABLE;
COMMENT ON FUNCTION envoisms.webhook_address_refusal(inet) IS
'Why a webhook delivery would refuse to connect to an address, or NULL (the SSRF guard)';

-- Validate a webhook URL or raise VALIDATION_ERROR.
CREATE FUNCTION envoisms.check_webhook_url(url text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
BEGIN
    IF url IS NULL THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'url is required (an https:// URL)', 'url');
    END IF;
    IF length(url) > 2048 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'url must be at most 2048 characters', 'url');
    END IF;
    IF url ~* '^http://' AND coalesce(current_setting('envoisms.webhook_allow_http', true), 'off')
                                 NOT IN ('on', 'true', 'yes', '1') THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'url must start with https://', 'url');
    END IF;
    IF url !~* '^https?://[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?(/[^\s]*)?$'
       AND url !~* '^https?://\[[0-9a-f:.]+\](:[0-9]{1,5})?(/[^\s]*)?$' THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'url must be an absolute https:// URL with a host name', 'url');
    END IF;
    RETURN url;
END
$$;

-- Validate a list of event names (NULL → the default subscription).
CREATE FUNCTION envoisms.check_webhook_events(events text[]) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog AS $$
DECLARE
    bad text;
BEGIN
    IF events IS NULL THEN
        RETURN envoisms.webhook_default_events();
    END IF;
    IF cardinality(events) = 0 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'events must name at least one event', 'events');
    END IF;
    SELECT e INTO bad FROM unnest(events) e WHERE e IS NULL OR NOT e = ANY (envoisms.webhook_event_types()) LIMIT 1;
    IF FOUND THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR',
            format('unknown event "%s"; known events: %s', left(bad, 50), array_to_string(envoisms.webhook_event_types(), ', ')),
            'events');
    END IF;
    RETURN ARRAY(SELECT DISTINCT e FROM unnest(events) e ORDER BY 1);
END
$$;

-- The contract's webhook shape (never the secret), and how it is signed.
CREATE FUNCTION envoisms.webhook_json(w envoisms.webhooks) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('id', w.webhook_id, 'url', w.url, 'events', to_jsonb(w.events), 'active', w.active,
                              'last_triggered_at', envoisms.iso_time(w.last_triggered_at),
                              'last_status', w.last_status, 'signature_format', w.signature_format,
                              'created_at', envoisms.iso_time(w.created_at))
$$;

-- Validate a signature format: NULL, "sha256" or "timestamped".
CREATE FUNCTION envoisms.check_webhook_signature_format(format text) RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog AS $$
BEGIN
    IF format IS NOT NULL AND format NOT IN ('sha256', 'timestamped') THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR',
            'signature_format must be "sha256" (sha256=<hex>) or "timestamped" (t=<unix>,v1=<hex>)', 'signature_format');
    END IF;
    RETURN format;
END
$$;

-- One live (not deleted) webhook of the account, locked, or NOT_FOUND.
CREATE FUNCTION envoisms.webhook_lock(account_id text, webhook_id text) RETURNS envoisms.webhooks
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    w envoisms.webhooks;
BEGIN
    SELECT * INTO w FROM envoisms.webhooks x
     WHERE x.account_id = webhook_lock.account_id AND x.webhook_id = webhook_lock.webhook_id
       AND x.deleted_at IS NULL
       FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'webhook not found', 'id');
    END IF;
    RETURN w;
END
$$;

-- Register a webhook; returns the contract's POST /v1/webhooks response,
-- the only one that shows the secret.
CREATE FUNCTION envoisms.webhook_create(account_id text, url text, events text[] DEFAULT NULL,
                                        secret text DEFAULT NULL, signature_format text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    w envoisms.webhooks;
BEGIN
    url := envoisms.check_webhook_url(url);
    events := envoisms.check_webhook_events(events);
    IF secret IS NOT NULL AND (secret !~ '^[\x21-\x7e]+$' OR length(secret) NOT BETWEEN 16 AND 256) THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR',
            'secret must be 16 to 256 printable characters without spaces', 'secret');
    END IF;
    IF NOT EXISTS (SELECT 1 FROM envoisms.accounts a WHERE a.account_id = webhook_create.account_id) THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'account not found', 'account_id');
    END IF;
    IF (SELECT count(*) FROM envoisms.webhooks x
         WHERE x.account_id = webhook_create.account_id AND x.deleted_at IS NULL) >= 20 THEN
        PERFORM envoisms.raise_error('CONFLICT', 'an account has at most 20 webhooks; delete one first', 'url');
    END IF;
    INSERT INTO envoisms.webhooks (account_id, webhook_id, url, events, secret, signature_format)
    VALUES (account_id, envoisms.new_id('whk'), url, events,
            coalesce(secret, 'whsec_' || envoisms.random_bytes_hex(24)),
            coalesce(envoisms.check_webhook_signature_format(signature_format), 'sha256'))
    RETURNING * INTO w;
    RETURN jsonb_build_object('id', w.webhook_id, 'url', w.url, 'events', to_jsonb(w.events),
                              'secret', w.secret, 'active', w.active, 'signature_format', w.signature_format,
                              'created_at', envoisms.iso_time(w.created_at));
END
$$;
COMMENT ON FUNCTION envoisms.webhook_create(text, text, text[], text, text) IS
'Register a webhook; the only answer that shows its signing secret (POST /v1/webhooks)';

-- Every live webhook of the account, newest first.
CREATE FUNCTION envoisms.webhook_list(account_id text) RETURNS jsonb
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

-- Change a webhook's url, events, active flag or signature format (NULL =
-- unchanged; at least one must be given). Re-activating clears an automatic
-- disable.
CREATE FUNCTION envoisms.webhook_update(account_id text, webhook_id text, url text DEFAULT NULL,
                                        events text[] DEFAULT NULL, active boolean DEFAULT NULL,
                                        signature_format text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    w envoisms.webhooks := envoisms.webhook_lock(account_id, webhook_id);
BEGIN
    IF url IS NULL AND events IS NULL AND active IS NULL AND signature_format IS NULL THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'give at least one of url, events, active, signature_format', 'url');
    END IF;
    signature_format := envoisms.check_webhook_signature_format(signature_format);
    IF url IS NOT NULL THEN
        url := envoisms.check_webhook_url(url);
    END IF;
    IF events IS NOT NULL THEN
        events := envoisms.check_webhook_events(events);
    END IF;
    UPDATE envoisms.webhooks x
       SET url = coalesce(webhook_update.url, x.url),
           events = coalesce(webhook_update.events, x.events),
           active = coalesce(webhook_update.active, x.active),
           signature_format = coalesce(webhook_update.signature_format, x.signature_format),
           failing_since = CASE WHEN webhook_update.active THEN NULL ELSE x.failing_since END,
           disabled_reason = CASE WHEN webhook_update.active THEN NULL ELSE x.disabled_reason END
     WHERE x.account_id = w.account_id AND x.webhook_id = w.webhook_id;
    RETURN jsonb_build_object('updated', true, 'id', w.webhook_id);
END
$$;
COMMENT ON FUNCTION envoisms.webhook_update(text, text, text, text[], boolean, text) IS
'Change a webhook''s URL, events, active flag or signature format (PATCH /v1/webhooks/:id)';

-- Delete a webhook (logically) and cancel its pending deliveries.
CREATE FUNCTION envoisms.webhook_delete(account_id text, webhook_id text) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    w envoisms.webhooks := envoisms.webhook_lock(account_id, webhook_id);
BEGIN
    UPDATE envoisms.webhooks x SET deleted_at = now(), active = false
     WHERE x.account_id = w.account_id AND x.webhook_id = w.webhook_id;
    UPDATE envoisms.webhook_deliveries d SET status = 'cancelled', last_error = 'webhook deleted'
     WHERE d.account_id = w.account_id AND d.webhook_id = w.webhook_id AND d.status = 'pending';
    RETURN jsonb_build_object('deleted', true, 'id', w.webhook_id);
END
$$;
COMMENT ON FUNCTION envoisms.webhook_delete(text, text) IS
'Delete a webhook and cancel its pending deliveries (DELETE /v1/webhooks/:id)';

-- Queue a message.test event to one webhook (active or not).
CREATE FUNCTION envoisms.webhook_test(account_id text, webhook_id text) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    w envoisms.webhooks := envoisms.webhook_lock(account_id, webhook_id);
BEGIN
    PERFORM envoisms.webhook_enqueue(w.account_id, 'message.test',
        jsonb_build_object('webhook_id', w.webhook_id,
                           'message', 'This is a test event from EnvoiSMS.ma.',
                           'created_at', envoisms.iso_time(now())),
        only_webhook => w.webhook_id);
    RETURN jsonb_build_object('queued', true, 'id', w.webhook_id);
END
$$;
COMMENT ON FUNCTION envoisms.webhook_test(text, text) IS
'Queue a message.test event to one webhook (POST /v1/webhooks/:id/test)';

-- ---- HTTP handlers

CREATE FUNCTION envoisms.api_webhooks_list(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.reply(200, envoisms.webhook_list(req.account_id));
END
$$;

CREATE FUNCTION envoisms.api_webhooks_create(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.reply(201, envoisms.webhook_create(
        req.account_id, envoisms.body_text(req.body, 'url'), envoisms.body_text_array(req.body, 'events'),
        envoisms.body_text(req.body, 'secret'), envoisms.body_text(req.body, 'signature_format')));
END
$$;

CREATE FUNCTION envoisms.api_webhooks_update(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.reply(200, envoisms.webhook_update(
        req.account_id, req.id, envoisms.body_text(req.body, 'url'), envoisms.body_text_array(req.body, 'events'),
        envoisms.body_bool(req.body, 'active', NULL), envoisms.body_text(req.body, 'signature_format')));
END
$$;

CREATE FUNCTION envoisms.api_webhooks_delete(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.reply(200, envoisms.webhook_delete(req.account_id, req.id));
END
$$;

CREATE FUNCTION envoisms.api_webhooks_test(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.reply(200, envoisms.webhook_test(req.account_id, req.id));
END
$$;

INSERT INTO envoisms.api_endpoints (method, template, handler, permission) VALUES
    ('GET',    '/v1/webhooks',          'envoisms.api_webhooks_list(envoisms.api_request)',   'webhooks'),
    ('POST',   '/v1/webhooks',          'envoisms.api_webhooks_create(envoisms.api_request)', 'webhooks'),
    ('PATCH',  '/v1/webhooks/:id',      'envoisms.api_webhooks_update(envoisms.api_request)', 'webhooks'),
    ('DELETE', '/v1/webhooks/:id',      'envoisms.api_webhooks_delete(envoisms.api_request)', 'webhooks'),
    ('POST',   '/v1/webhooks/:id/test', 'envoisms.api_webhooks_test(envoisms.api_request)',   'webhooks');
