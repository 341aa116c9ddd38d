-- 88_smpp.sql — the SMPP 3.4 carrier (kind 'smpp'): its settings, delivery
-- receipts, multi-part messages, and the C functions of smpp_pdu.c,
-- smpp_receipt.c and worker_smpp.c.
--
-- One background worker per enabled smpp carrier holds a transceiver bind
-- (worker_smpp.c); a supervisor starts and stops them as carrier rows come
-- and go, woken by the trigger below when carriers change. The worker calls
-- only the functions of this file, dispatch_claim / dispatch_retry /
-- dispatch_failed (86_dispatch.sql) and inbound_receive (89_inbound.sql),
-- each in a short transaction of its own, never across network I/O.
--
-- Multi-part messages: the SMSC gives every part its own message id, and a
-- receipt names one part. The first part's id is the message's carrier_ref;
-- all parts are listed in smpp_parts, and a message is delivered when every
-- part is, failed (or expired) as soon as one part is. Single-part messages,
-- the common case, write no smpp_parts row.

-- ---- receipts

CREATE FUNCTION envoisms.smpp_parse_receipt(receipt text)
RETURNS TABLE(id text, sub int, dlvrd int, submit_date text, done_date text, stat text, err text, txt text)
AS 'MODULE_PATHNAME', 'smpp_parse_receipt'
LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE ROWS 1;
COMMENT ON FUNCTION envoisms.smpp_parse_receipt(text) IS
'Fields of the text form of an SMPP delivery receipt (id:… sub:… dlvrd:… submit date:… done date:… stat:… err:… text:…); an error says what is malformed';

-- Our status for a receipt's stat: 'sent' means "no change yet". UNKNOWN is
-- a final state in SMPP 3.4 with no proof of delivery: failed (refunded).
CREATE FUNCTION envoisms.smpp_receipt_status(stat text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
RETURN CASE upper(stat)
    WHEN 'DELIVRD' THEN 'delivered'
    WHEN 'UNDELIV' THEN 'failed'
    WHEN 'REJECTD' THEN 'failed'
    WHEN 'DELETED' THEN 'failed'
    WHEN 'UNKNOWN' THEN 'failed'
    WHEN 'EXPIRED' THEN 'expired'
    WHEN 'ACCEPTD' THEN 'sent'
    WHEN 'ENROUTE' THEN 'sent'
END;

-- The stat word of a message_state TLV value (SMPP 3.4 section 5.3.2.35).
CREATE FUNCTION envoisms.smpp_message_state_stat(state int) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
RETURN (ARRAY['ENROUTE', 'DELIVRD', 'EXPIRED', 'DELETED', 'UNDELIV', 'ACCEPTD', 'UNKNOWN', 'REJECTD'])[state];

-- ---- settings

-- The settings of an smpp carrier, defaults applied and checked: the one
-- place that reads carriers.config for SMPP (docs/smpp.md lists the keys).
CREATE FUNCTION envoisms.smpp_carrier_settings(carrier_id text)
RETURNS TABLE(host text, port int, system_id text, password text, system_type text, service_type text,
              window_size int, max_per_second int, enquire_link_interval int, response_timeout int,
              reconnect_min int, reconnect_max int, throttle_pause_ms int, retry_delay int,
              long_messages text, gsm_packing boolean, registered_delivery int, batch int)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    c record;
    cfg jsonb;
BEGIN
    SELECT x.* INTO c FROM envoisms.carriers x WHERE x.carrier_id = smpp_carrier_settings.carrier_id;
    IF NOT FOUND OR c.kind <> 'smpp' THEN
        RAISE EXCEPTION 'no smpp carrier "%"', carrier_id USING ERRCODE = 'undefined_object';
    END IF;
    cfg := coalesce(c.config, '{}');
    host := cfg->>'host';
    port := coalesce((cfg->>'port')::int, 2775);
    system_id := cfg->>'system_id';
    password := coalesce(cfg->>'password', '');
    system_type := coalesce(cfg->>'system_type', '');
    service_type := coalesce(cfg->>'service_type', '');
    window_size := coalesce((cfg->>'window')::int, 10);
    max_per_second := coalesce((cfg->>'max_per_second')::int, c.max_per_second, 0);
    enquire_link_interval := coalesce((cfg->>'enquire_link_interval')::int, 30);
    response_timeout := coalesce((cfg->>'response_timeout')::int, 10);
    reconnect_min := coalesce((cfg->>'reconnect_min')::int, 1);
    reconnect_max := coalesce((cfg->>'reconnect_max')::int, 60);
    throttle_pause_ms := coalesce((cfg->>'throttle_pause_ms')::int, 1000);
    retry_delay := coalesce((cfg->>'retry_delay')::int, 5);
    long_messages := coalesce(cfg->>'long_messages', 'udh');
    gsm_packing := coalesce((cfg->>'gsm_packing')::boolean, false);
    registered_delivery := coalesce((cfg->>'registered_delivery')::int, 1);
    batch := coalesce((cfg->>'batch')::int, greatest(window_size * 2, 50));
    IF host IS NULL OR system_id IS NULL THEN
        RAISE EXCEPTION 'smpp carrier "%" needs "host" and "system_id" in its config', carrier_id
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF port NOT BETWEEN 1 AND 65535 OR length(system_id) > 15 OR length(password) > 8
       OR length(system_type) > 12 OR length(service_type) > 5
       OR window_size NOT BETWEEN 1 AND 1000 OR max_per_second < 0
       OR enquire_link_interval NOT BETWEEN 1 AND 3600 OR response_timeout NOT BETWEEN 1 AND 600
       OR reconnect_min NOT BETWEEN 1 AND 3600 OR reconnect_max < reconnect_min
       OR throttle_pause_ms NOT BETWEEN 10 AND 600000 OR retry_delay NOT BETWEEN 0 AND 86400
       OR long_messages NOT IN ('udh', 'payload') OR registered_delivery NOT BETWEEN 0 AND 31
       OR batch NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION 'smpp carrier "%" has an invalid config', carrier_id
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'port 1..65535, system_id <= 15, password <= 8, system_type <= 12 and service_type <= 5 characters, window 1..1000, long_messages udh or payload; see docs/smpp.md.';
    END IF;
    RETURN NEXT;
END
$$;

-- ---- multi-part messages

CREATE TABLE envoisms.smpp_parts (
    account_id      text NOT NULL,
    message_id      text NOT NULL,
    part            int  NOT NULL CHECK (part >= 1),
    parts           int  NOT NULL CHECK (parts >= 2),
    carrier_id      text NOT NULL,
    smsc_message_id text NOT NULL,
    status          text NOT NULL DEFAULT 'sent' CHECK (status IN ('sent', 'delivered', 'failed', 'expired')),
    error_code      text,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, message_id, part),
    FOREIGN KEY (account_id, message_id) REFERENCES envoisms.messages ON DELETE CASCADE,
    CHECK (part <= parts)
);
SELECT pg_catalog.pg_extension_config_dump('envoisms.smpp_parts', '');
-- Receipts name a part by the SMSC's id.
CREATE UNIQUE INDEX smpp_parts_smsc ON envoisms.smpp_parts (carrier_id, smsc_message_id);

-- Apply what the parts of a multi-part message say to the message itself.
CREATE FUNCTION envoisms.smpp_parts_settle(account_id text, message_id text) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    agg record;
BEGIN
    SELECT min(p.carrier_id) AS carrier_id,
           min(p.smsc_message_id) FILTER (WHERE p.part = 1) AS ref,
           count(*) FILTER (WHERE p.status = 'delivered') AS delivered,
           count(*) AS total, max(p.parts) AS parts,
           (array_agg(p.status ORDER BY p.part) FILTER (WHERE p.status IN ('failed', 'expired')))[1] AS bad,
           (array_agg(p.error_code ORDER BY p.part) FILTER (WHERE p.status IN ('failed', 'expired')))[1] AS bad_code
      INTO agg
      FROM envoisms.smpp_parts p
     WHERE p.account_id = smpp_parts_settle.account_id AND p.message_id = smpp_parts_settle.message_id;
    IF agg.bad IS NOT NULL THEN
        PERFORM envoisms.dlr_apply(agg.carrier_id, agg.ref, agg.bad, agg.bad_code,
                                   'a part of the message was not delivered');
        RETURN agg.bad;
    ELSIF agg.delivered = agg.parts THEN
        PERFORM envoisms.dlr_apply(agg.carrier_id, agg.ref, 'delivered', NULL, NULL);
        RETURN 'delivered';
    END IF;
    RETURN 'sent';
END
$$;

-- ---- the worker's outcomes

-- A message whose every part the SMSC accepted: smsc_ids in part order.
-- Receipts that came before (kept by dlr_apply in pending_dlrs) are applied.
CREATE FUNCTION envoisms.smpp_sent(account_id text, message_id text, carrier_id text, smsc_ids text[])
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    n int := cardinality(smsc_ids);
    early record;
BEGIN
    IF n IS NULL OR n = 0 THEN
        RAISE EXCEPTION 'smpp_sent needs the SMSC message ids' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF n = 1 THEN
        PERFORM envoisms.dispatch_sent(account_id, message_id, carrier_id, nullif(smsc_ids[1], ''));
        RETURN;
    END IF;
    INSERT INTO envoisms.smpp_parts (account_id, message_id, part, parts, carrier_id, smsc_message_id)
    SELECT smpp_sent.account_id, smpp_sent.message_id, i, n, smpp_sent.carrier_id,
           coalesce(nullif(smsc_ids[i], ''), smpp_sent.message_id || '#' || i)   -- an SMSC that gave no id
      FROM generate_series(1, n) i
    ON CONFLICT DO NOTHING;
    -- Receipts of any part that beat us here: take them out of pending_dlrs
    -- before dispatch_sent, which would apply part 1's to the whole message.
    FOR early IN
        DELETE FROM envoisms.pending_dlrs d
         WHERE d.carrier_id = smpp_sent.carrier_id AND d.carrier_ref = ANY (smsc_ids)
        RETURNING d.carrier_ref, d.status, d.error_code
    LOOP
        UPDATE envoisms.smpp_parts p SET status = early.status, error_code = early.error_code, updated_at = now()
         WHERE p.carrier_id = smpp_sent.carrier_id AND p.smsc_message_id = early.carrier_ref
           AND early.status IN ('delivered', 'failed', 'expired');
    END LOOP;
    PERFORM envoisms.dispatch_sent(account_id, message_id, carrier_id, smsc_ids[1]);
    PERFORM envoisms.smpp_parts_settle(account_id, message_id);
END
$$;

-- A delivery receipt from an SMSC: the part's id, the stat word (text form,
-- or from the message_state TLV) and err. Returns the status it leads to
-- ('sent' = no change yet). Unknown ids are kept by dlr_apply until
-- smpp_sent / dispatch_sent records them.
CREATE FUNCTION envoisms.smpp_receipt(carrier_id text, smsc_message_id text, stat text, err text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    mapped text := envoisms.smpp_receipt_status(stat);
    part record;
    code text := CASE WHEN stat IS NULL THEN NULL ELSE 'SMPP_' || upper(stat) END;
    detail text := CASE WHEN coalesce(err, '') IN ('', '000', '0') THEN NULL ELSE 'SMSC error ' || err END;
BEGIN
    IF mapped IS NULL THEN
        RAISE EXCEPTION 'unknown delivery receipt stat "%"', stat USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF mapped = 'delivered' THEN
        code := NULL;
    END IF;
    SELECT p.account_id, p.message_id INTO part
      FROM envoisms.smpp_parts p
     WHERE p.carrier_id = smpp_receipt.carrier_id AND p.smsc_message_id = smpp_receipt.smsc_message_id;
    IF NOT FOUND THEN
        PERFORM envoisms.dlr_apply(carrier_id, smsc_message_id, mapped, code, detail);
        RETURN mapped;
    END IF;
    IF mapped = 'sent' THEN
        RETURN mapped;
    END IF;
    UPDATE envoisms.smpp_parts p SET status = mapped, error_code = code, updated_at = now()
     WHERE p.carrier_id = smpp_receipt.carrier_id AND p.smsc_message_id = smpp_receipt.smsc_message_id;
    RETURN envoisms.smpp_parts_settle(part.account_id, part.message_id);
END
$$;

-- ---- the workers

-- Release the leases of this carrier's queued messages: called by a bind
-- when it starts, since only the (single) bind of a carrier claims its
-- messages, any lease still running belongs to a bind that died.
CREATE FUNCTION envoisms.smpp_release_leases(carrier_id text) RETURNS int
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

CREATE FUNCTION envoisms.smpp_binds()
RETURNS TABLE(carrier_id text, pid int, state text, since timestamptz, submitted bigint, accepted bigint,
              rejected bigint, throttled bigint, timeouts bigint, receipts bigint, inbound bigint,
              in_flight int, reconnects bigint, last_error text)
AS 'MODULE_PATHNAME', 'smpp_binds'
LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION envoisms.smpp_binds() IS
'One row per running SMPP bind worker: its state (connecting, binding, bound, throttled, backoff, unbinding) and counters since it started';

-- Wake the SMPP supervisor when the transaction commits, so a new, changed,
-- disabled or deleted smpp carrier starts or stops its bind at once.
CREATE FUNCTION envoisms.smpp_carriers_changed() RETURNS trigger
AS 'MODULE_PATHNAME', 'smpp_carriers_changed'
LANGUAGE C;
CREATE TRIGGER smpp_carriers_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON envoisms.carriers
    FOR EACH STATEMENT EXECUTE FUNCTION envoisms.smpp_carriers_changed();

REVOKE ALL ON FUNCTION envoisms.smpp_sent(text, text, text, text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION envoisms.smpp_receipt(text, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION envoisms.smpp_parts_settle(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION envoisms.smpp_carrier_settings(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION envoisms.smpp_release_leases(text) FROM PUBLIC;
