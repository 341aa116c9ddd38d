-- 35_events.sql — what a message status change sets in motion, in the same
-- transaction as the change: a delivery-log event, webhook deliveries for
-- every active webhook subscribed to the event, and a NOTIFY on the channel
-- 'envoisms_message_status' (payload: {"id","account_id","status"}) so an
-- application can LISTEN for its messages.

-- The webhook event types.
CREATE FUNCTION envoisms.webhook_event_types() RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN ARRAY['message.sent', 'message.delivered', 'message.failed', 'message.expired',
             'message.received', 'verify.success', 'message.test'];

-- Queue one event for every active webhook of the account subscribed to it
-- (or only for `only_webhook`). The payload is rendered once, here, so that
-- every retry sends the same bytes with the same event id. Returns the
-- number of deliveries queued.
CREATE FUNCTION envoisms.webhook_enqueue(account_id text, event_type text, data jsonb,
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

-- The data of a message event: the message as GET /v1/messages/:id shows
-- it (without the log), metadata as an object so receivers can read it.
CREATE FUNCTION envoisms.message_event_data(m envoisms.messages) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.message_json(m, false) || jsonb_build_object('metadata', m.metadata);
END
$$;

-- What a message's new status sets in motion: its event row, the webhooks
-- that subscribed to it, and a NOTIFY. Called by the status trigger below,
-- and by inbound_receive() for a message born 'received' (an insert trigger
-- would be planned on every send, though only inbound rows need it).
CREATE FUNCTION envoisms.message_announce(m envoisms.messages) RETURNS void
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

CREATE FUNCTION envoisms.messages_status_changed() RETURNS trigger
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

CREATE TRIGGER messages_status_changed
    AFTER UPDATE OF status ON envoisms.messages
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION envoisms.messages_status_changed();
