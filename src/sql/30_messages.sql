-- 30_messages.sql — sending messages (single and bulk), reading them back,
-- and analytics (what a status change sets in motion: 35_events.sql).
--
-- A send is validation, one debit of a balance bucket, and one insert: the
-- message row is the debit's ledger entry (charged_mad) and the 'queued'
-- event is implied by the row. Sends commit with the caller's transaction:
-- a rollback leaves no message and no debit. Bulk validates every entry
-- first, debits the whole batch once, then inserts all rows in one statement;
-- any bad entry or a short balance rejects the batch and writes nothing.

-- The sender id rule (checks.c): a number of 3 to 15 digits (optional +), or
-- 1 to 11 characters of letters, digits, space . _ & - starting with a letter
-- or digit and holding a letter.
CREATE FUNCTION envoisms.sender_id_valid(sender text) RETURNS boolean
AS 'MODULE_PATHNAME', 'sender_id_valid' LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE;

-- Validate a sender id: the sender, ENVOISMS for none, or VALIDATION_ERROR naming from.
CREATE FUNCTION envoisms.check_sender_id(sender text) RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog AS $$
BEGIN
    IF sender IS NULL THEN
        RETURN 'ENVOISMS';
    END IF;
    IF NOT envoisms.sender_id_valid(sender) THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR',
            'from must be an alphanumeric sender id of 1 to 11 characters (letters, digits, space . _ & -) or a number of 3 to 15 digits', 'from');
    END IF;
    RETURN sender;
END
$$;

-- Validate WhatsApp buttons: at most 3 objects {type, text, value}, type
-- copy | url | call; value the code to copy, the https URL, or the E.164
-- number to call (also accepted as code/url/phone_number); buttons only on
-- the whatsapp channel. Only what Meta's Cloud API can carry is accepted,
-- never dropped on the way: a url or call button is Meta's call-to-action
-- (cta_url: one button, its text at most 20 characters), a copy button
-- the copy-code template (one button; its text, up to 25 characters, is
-- ours: the template's button says its own), so a message has one button.
-- Shared by message_send and campaign_create.
CREATE FUNCTION envoisms.check_buttons(buttons jsonb, channel text) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    b jsonb;
    i int := 0;
    t text;
    label text;
    v text;
    result jsonb := '[]';
BEGIN
    IF buttons IS NULL OR buttons = 'null' THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(buttons) <> 'array' THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'buttons must be an array', 'buttons');
    END IF;
    IF jsonb_array_length(buttons) > 3 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'buttons has at most 3 entries', 'buttons');
    END IF;
    FOR b IN SELECT value FROM jsonb_array_elements(buttons) LOOP
        i := i + 1;
        IF jsonb_typeof(b) <> 'object' THEN
            PERFORM envoisms.raise_error('VALIDATION_ERROR', format('buttons[%s] must be an object', i - 1), 'buttons');
        END IF;
        t := b->>'type';
        IF t IS NULL OR t NOT IN ('copy', 'url', 'call') THEN
            PERFORM envoisms.raise_error('VALIDATION_ERROR',
                format('buttons[%s].type must be "copy", "url" or "call"', i - 1), 'buttons');
        END IF;
        label := coalesce(b->>'text', b->>'title', b->>'label');
        v := coalesce(b->>'value', b->>'code', b->>'url', b->>'phone_number', b->>'phone');
        IF label IS NULL OR length(label) NOT BETWEEN 1 AND (CASE t WHEN 'copy' THEN 25 ELSE 20 END) THEN
            PERFORM envoisms.raise_error('VALIDATION_ERROR',
                format('buttons[%s].text must be 1 to %s characters%s', i - 1, CASE t WHEN 'copy' THEN 25 ELSE 20 END,
                       CASE WHEN t <> 'copy' THEN ' (WhatsApp''s limit for a call-to-action button)' ELSE '' END), 'buttons');
        END IF;
        IF t = 'url' AND (v IS NULL OR v !~ '^https?://[^\s]+$' OR length(v) > 2000) THEN
            PERFORM envoisms.raise_error('VALIDATION_ERROR', format('buttons[%s].value must be an http(s) URL', i - 1), 'buttons');
        ELSIF t = 'call' THEN
            v := envoisms.phone_e164(v);
            IF v IS NULL THEN
                PERFORM envoisms.raise_error('VALIDATION_ERROR', format('buttons[%s].value must be an E.164 phone number', i - 1), 'buttons');
            END IF;
        ELSIF t = 'copy' AND (v IS NULL OR length(v) NOT BETWEEN 1 AND 15) THEN
            PERFORM envoisms.raise_error('VALIDATION_ERROR', format('buttons[%s].value (the code to copy) must be 1 to 15 characters', i - 1), 'buttons');
        END IF;
        result := result || jsonb_build_object('type', t, 'text', label, 'value', v);
    END LOOP;
    IF channel <> 'whatsapp' THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'buttons are only available on the whatsapp channel', 'buttons');
    END IF;
    IF i > 1 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR',
            format('a WhatsApp message carries one button (a url or call button is one call-to-action, a copy button '
                   'is the copy-code template); got %s', i), 'buttons');
    END IF;
    RETURN result;
END
$$;

-- Unit prices (MAD, EUR) of a channel for an account: its own row, else the
-- default ('*'). One index scan reads the (at most four) rows. PL/pgSQL, not
-- an inlined SQL function: Citus refuses to plan a query into which an SQL
-- function referencing its tables was inlined (96_distribute.sql); callers
-- on the hot path read it through unit_price()'s cache.
CREATE FUNCTION envoisms.channel_prices(account_id text, channel text)
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

-- channel_prices() of one currency, cached per backend and forgotten by
-- every backend when envoisms.prices changes (prices.c, cache.c): a
-- committed price change applies to every session's next send.
CREATE FUNCTION envoisms.unit_price(account_id text, channel text, currency text) RETURNS numeric
AS 'MODULE_PATHNAME', 'unit_price' LANGUAGE C STRICT STABLE;

CREATE TRIGGER prices_cache_forget
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON envoisms.prices
    FOR EACH STATEMENT EXECUTE FUNCTION envoisms.cache_forget();

-- Check the account may send on `channel` (active, channel enabled) and
-- return the channel's unit prices for it, from the caches (hot path).
CREATE FUNCTION envoisms.check_account_channel(account_id text, channel text, OUT mad numeric, OUT eur numeric)
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

-- Validate a message body: 1..1600 characters, no NUL.
CREATE FUNCTION envoisms.check_body(body text, field text DEFAULT 'message') RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog AS $$
BEGIN
    IF body IS NULL OR length(body) = 0 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', format('%s is required (1 to 1600 characters)', field), field);
    ELSIF length(body) > 1600 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR',
            format('%s is %s characters; the maximum is 1600', field, length(body)), field);
    END IF;
    RETURN body;
END
$$;

-- Normalise `to` to E.164 or raise INVALID_PHONE.
CREATE FUNCTION envoisms.check_phone(number text, field text DEFAULT 'to') RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    e164 text;
BEGIN
    IF number IS NULL THEN
        PERFORM envoisms.raise_error('INVALID_PHONE',
            format('%s is required, in E.164 format, for example +212612345678', field), field);
    END IF;
    e164 := envoisms.phone_e164(number);
    IF e164 IS NULL OR left(btrim(number), 1) <> '+' THEN
        PERFORM envoisms.raise_error('INVALID_PHONE',
            format('%s must be E.164 format, for example +212612345678', field), field);
    END IF;
    RETURN e164;
END
$$;

-- The reply of a send: {"id", "to", "channel", "cascade", "status": "queued",
-- "cost": {"eur", "mad"}, "segments", "created_at"}, built in C (json.c).
CREATE FUNCTION envoisms.message_send_reply(id text, "to" text, channel text, cascade boolean, cost_eur numeric,
                                            cost_mad numeric, segments int, created_at timestamptz) RETURNS jsonb
AS 'MODULE_PATHNAME', 'message_send_reply' LANGUAGE C STRICT IMMUTABLE;

-- Send one message; returns the contract's POST /v1/messages response.
-- Commits with the caller's transaction. Sandbox messages never debit and
-- are only ever routed to the sandbox carrier.
--
-- Hot path, written for few statements: one SELECT reads the account, the
-- channel's prices (unit_price, cached), the opt-out and the segments; one
-- INSERT takes the money from this backend's home bucket (a data-modifying
-- CTE, SKIP LOCKED) and writes the row. Every check is a plain expression; the check_* functions
-- are only called to raise the precise error. When the home bucket is held
-- or short, balance_debit() takes the slow path and a plain INSERT writes
-- the row.
CREATE FUNCTION envoisms.message_send(account_id text, "to" text, message text,
                                      "from" text DEFAULT 'ENVOISMS', channel text DEFAULT 'sms',
                                      cascade boolean DEFAULT false, metadata jsonb DEFAULT NULL,
                                      buttons jsonb DEFAULT NULL, api_key_id text DEFAULT NULL,
                                      sandbox boolean DEFAULT false, campaign_id text DEFAULT NULL,
                                      skip_opt_out boolean DEFAULT false)
RETURNS jsonb
-- No SET search_path (every name is qualified, and it is not SECURITY
-- DEFINER): a function that sets a GUC saves and restores it on every call,
-- and the changed path sends every cached plan through a search-path check.
LANGUAGE plpgsql AS $$
DECLARE
    id text := envoisms.new_id('msg');
    e164 text := envoisms.phone_e164("to");
    sender text;
    acc record;         -- account_lookup(): status, channels, has_optouts
    unit_mad numeric;
    enc text;
    n_segments int;
    opted_out boolean;
    cost_mad numeric;
    cost_eur numeric;
    btns jsonb;
    written boolean := false;
    woken boolean;
    created timestamptz := now();
BEGIN
    channel := coalesce(channel, 'sms');
    cascade := coalesce(cascade, false);
    sandbox := coalesce(sandbox, false);
    IF cascade THEN
        -- cascade means WhatsApp first, SMS on failure, whatever channel says
        PERFORM envoisms.check_account_channel(account_id, 'sms');
        channel := 'whatsapp';
    END IF;
    -- the account and its prices from per-backend caches (accounts.c,
    -- prices.c): plain expressions, no statement to start
    acc := envoisms.account_lookup(account_id);
    unit_mad := envoisms.unit_price(account_id, channel, 'MAD');
    n_segments := CASE WHEN channel = 'whatsapp' THEN 1
                       ELSE envoisms.sms_segment_count(CASE WHEN length(message) <= 1600 THEN message END) END;
    cost_mad := unit_mad * n_segments;
    cost_eur := envoisms.unit_price(account_id, channel, 'EUR') * n_segments;
    -- one test for the common case; the checks below raise the precise error, in order
    sender := coalesce("from", 'ENVOISMS');
    IF acc.status IS DISTINCT FROM 'active' OR NOT channel = ANY (acc.channels) OR unit_mad IS NULL
       OR e164 IS NULL OR left(btrim("to"), 1) <> '+' OR message IS NULL OR length(message) NOT BETWEEN 1 AND 1600
       OR NOT envoisms.sender_id_valid(sender) THEN
        PERFORM envoisms.check_account_channel(account_id, channel);
        PERFORM envoisms.check_phone("to");
        PERFORM envoisms.check_body(message);
        PERFORM envoisms.check_sender_id(sender);
    END IF;
    enc := envoisms.sms_encoding(message);
    -- the number is looked up only for an account that has opt-outs at all
    IF acc.has_optouts AND NOT skip_opt_out THEN
        opted_out := EXISTS (SELECT 1 FROM envoisms.optouts o WHERE o.account_id = message_send.account_id AND o.phone = e164);
    END IF;
    IF metadata IS NOT NULL OR buttons IS NOT NULL OR opted_out THEN
        IF jsonb_typeof(metadata) <> 'object' THEN
            PERFORM envoisms.raise_error('VALIDATION_ERROR', 'metadata must be an object', 'metadata');
        ELSIF octet_length(metadata::text) > 8192 THEN
            PERFORM envoisms.raise_error('VALIDATION_ERROR', 'metadata is limited to 8 KB', 'metadata');
        END IF;
        btns := envoisms.check_buttons(buttons, channel);
        IF opted_out THEN
            PERFORM envoisms.check_not_opted_out(account_id, e164);
        END IF;
    END IF;
    -- WhatsApp free text needs the account's own number and the recipient's
    -- 24-hour window (90_whatsapp.sql), or goes as an SMS at once for a
    -- cascade; an OTP (skip_opt_out: verify_send) goes from the shared sender
    IF channel = 'whatsapp' AND NOT coalesce(skip_opt_out, false) THEN
        IF envoisms.check_whatsapp_session(account_id, e164, cascade, sandbox) = 'sms' THEN
            channel := 'sms';
            btns := NULL;
            n_segments := envoisms.sms_segment_count(message);
            cost_mad := envoisms.unit_price(account_id, 'sms', 'MAD') * n_segments;
            cost_eur := envoisms.unit_price(account_id, 'sms', 'EUR') * n_segments;
        END IF;
    END IF;

    -- Take the money from this backend's home bucket in the statement that
    -- writes the row; when that bucket is held or short, balance_debit() tries
    -- the others or rebalances (or raises INSUFFICIENT_BALANCE), and the row is
    -- written by the plain INSERT below, as it is when nothing is to be paid
    -- (sandbox, free): a plan without the debit costs less to start.
    IF NOT sandbox AND cost_mad > 0 THEN
        WITH debit AS (
            UPDATE envoisms.balance_buckets b SET balance_mad = b.balance_mad - cost_mad
             WHERE b.account_id = message_send.account_id
               AND b.bucket = pg_backend_pid() % envoisms.balance_bucket_count()
               AND b.ctid = (SELECT c.ctid FROM envoisms.balance_buckets c
                              WHERE c.account_id = message_send.account_id
                                AND c.bucket = pg_backend_pid() % envoisms.balance_bucket_count()
                                AND c.balance_mad >= cost_mad
                              FOR UPDATE SKIP LOCKED)
            RETURNING 1)
        INSERT INTO envoisms.messages (account_id, message_id, api_key_id, campaign_id, to_number, sender_id, channel,
                                       cascade, body, encoding, segments, cost_mad, cost_eur, charged_mad, sandbox,
                                       metadata, buttons, created_at, updated_at, next_attempt_at)
        SELECT account_id, id, api_key_id, campaign_id, e164, sender, channel, cascade, message, enc,
               n_segments, cost_mad, cost_eur, cost_mad, false, metadata, btns, created, created, created
         WHERE EXISTS (SELECT 1 FROM debit);
        written := FOUND;
        IF NOT written THEN
            PERFORM envoisms.balance_debit(account_id, cost_mad);
        END IF;
    END IF;
    IF NOT written THEN
        INSERT INTO envoisms.messages (account_id, message_id, api_key_id, campaign_id, to_number, sender_id, channel,
                                       cascade, body, encoding, segments, cost_mad, cost_eur, charged_mad, sandbox,
                                       metadata, buttons, created_at, updated_at, next_attempt_at)
        VALUES (account_id, id, api_key_id, campaign_id, e164, sender, channel, cascade, message, enc,
                n_segments, cost_mad, cost_eur, CASE WHEN sandbox THEN 0 ELSE cost_mad END, sandbox,
                metadata, btns, created, created, created);
    END IF;
    woken := envoisms.wake_dispatcher();   -- an assignment, not PERFORM: no SPI statement
    RETURN envoisms.message_send_reply(id, e164, channel, cascade, cost_eur, cost_mad, n_segments, created);
END
$$;
COMMENT ON FUNCTION envoisms.message_send(text, text, text, text, text, boolean, jsonb, jsonb, text, boolean, text, boolean) IS
'Send one message in the caller''s transaction: validated, priced, debited and queued (POST /v1/messages)';

-- The "messages" array of a bulk reply, [{"id", "to", "status": "queued"}, ...],
-- built in C (jsonb_agg spent a fifth of a 10,000-message send on it).
CREATE FUNCTION envoisms.message_bulk_items(ids text[], numbers text[]) RETURNS jsonb
AS 'MODULE_PATHNAME', 'message_bulk_items' LANGUAGE C STRICT IMMUTABLE;

-- Send up to 10,000 messages at once; returns the contract's
-- POST /v1/messages/bulk response. All or nothing: one bad entry (on
-- WhatsApp also a number outside its 24-hour window), or a balance short
-- of the whole batch, rejects it and nothing is written (so the "queued"
-- and "failed" counts the official clients read are always the total and 0).
CREATE FUNCTION envoisms.message_send_bulk(account_id text, messages jsonb, "from" text DEFAULT 'ENVOISMS',
                                           channel text DEFAULT 'sms', api_key_id text DEFAULT NULL,
                                           sandbox boolean DEFAULT false)
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    batch text := envoisms.new_id('batch');
    sender text;
    ids text[];
    numbers text[];
    bodies text[];
    metas jsonb[];
    encodings text[];
    segments int[];
    bad_ord int;
    bad_error text;
    bad_field text;
    bad_detail text;
    price record;
    total int;
    total_units int;
    cost_mad numeric;
    cost_eur numeric;
    created timestamptz := now();
    woken boolean;
BEGIN
    channel := coalesce(channel, 'sms');
    price := envoisms.check_account_channel(account_id, channel);
    sender := envoisms.check_sender_id("from");
    IF channel = 'whatsapp' THEN
        PERFORM envoisms.check_whatsapp_connected(account_id, coalesce(sandbox, false));
    END IF;
    IF messages IS NULL OR jsonb_typeof(messages) <> 'array' THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'messages must be an array', 'messages');
    END IF;
    total := jsonb_array_length(messages);
    IF total = 0 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'messages must hold 1 to 10000 entries', 'messages');
    ELSIF total > 10000 THEN
        PERFORM envoisms.raise_error('PAYLOAD_TOO_LARGE',
            format('a bulk send holds at most 10000 messages; got %s', total), 'messages');
    END IF;

    -- Validate every entry in one set-based pass into column arrays (the
    -- rows to insert), which also gives the first bad entry and the units.
    SELECT array_agg(x.id), array_agg(x.e164), array_agg(x.body), array_agg(x.meta), array_agg(x.encoding),
           array_agg(x.segments),
           sum(CASE WHEN channel = 'whatsapp' THEN 1 ELSE x.segments END),
           -- the first bad entry
           (array_agg(x.ord) FILTER (WHERE x.error IS NOT NULL))[1],
           (array_agg(x.error) FILTER (WHERE x.error IS NOT NULL))[1],
           (array_agg(x.field) FILTER (WHERE x.error IS NOT NULL))[1],
           (array_agg(x.detail) FILTER (WHERE x.error IS NOT NULL))[1]
      INTO ids, numbers, bodies, metas, encodings, segments, total_units, bad_ord, bad_error, bad_field, bad_detail
      FROM (SELECT v.ord, envoisms.new_id('msg') AS id, v.e164, v.body, v.meta, s.encoding, s.segments,
                   CASE WHEN v.kind <> 'object' THEN 'VALIDATION_ERROR'
                        WHEN v.raw_to IS NULL OR v.e164 IS NULL OR left(btrim(v.raw_to), 1) <> '+' THEN 'INVALID_PHONE'
                        WHEN v.body IS NULL OR length(v.body) NOT BETWEEN 1 AND 1600 THEN 'VALIDATION_ERROR'
                        WHEN v.meta IS NOT NULL AND jsonb_typeof(v.meta) <> 'object' THEN 'VALIDATION_ERROR'
                        WHEN v.opted_out THEN 'OPTED_OUT'
                        WHEN v.wa_refusal IS NOT NULL THEN v.wa_refusal END AS error,
                   CASE WHEN v.kind <> 'object' THEN 'messages'
                        WHEN v.raw_to IS NULL OR v.e164 IS NULL OR left(btrim(v.raw_to), 1) <> '+' THEN 'to'
                        WHEN v.body IS NULL OR length(v.body) NOT BETWEEN 1 AND 1600 THEN 'message'
                        WHEN v.meta IS NOT NULL AND jsonb_typeof(v.meta) <> 'object' THEN 'metadata'
                        ELSE 'to' END AS field,
                   CASE WHEN v.kind <> 'object' THEN 'must be an object'
                        WHEN v.raw_to IS NULL OR v.e164 IS NULL OR left(btrim(v.raw_to), 1) <> '+'
                             THEN 'to must be E.164 format, for example +212612345678'
                        WHEN v.body IS NULL OR length(v.body) NOT BETWEEN 1 AND 1600
                             THEN format('message must be 1 to 1600 characters (got %s)', coalesce(length(v.body), 0))
                        WHEN v.meta IS NOT NULL AND jsonb_typeof(v.meta) <> 'object' THEN 'metadata must be an object'
                        WHEN v.opted_out THEN 'the recipient opted out'
                        WHEN v.wa_refusal IS NOT NULL THEN envoisms.whatsapp_refusal_message(v.wa_refusal, v.e164) END AS detail
              FROM (SELECT w.*, w.e164 IS NOT NULL AND w.e164 IN (   -- hashed: one read of the account's opt-outs
                               SELECT o.phone FROM envoisms.optouts o
                                WHERE o.account_id = message_send_bulk.account_id) AS opted_out,
                           -- WhatsApp free text: only inside each number's 24-hour window (90_whatsapp.sql)
                           CASE WHEN channel = 'whatsapp' AND w.e164 IS NOT NULL
                                THEN envoisms.whatsapp_refusal(message_send_bulk.account_id, w.e164, sandbox) END AS wa_refusal
                      FROM (SELECT e.ord::int AS ord, jsonb_typeof(e.value) AS kind,
                                   CASE WHEN jsonb_typeof(e.value) = 'object' THEN e.value->>'to' END AS raw_to,
                                   CASE WHEN jsonb_typeof(e.value) = 'object' THEN envoisms.phone_e164(e.value->>'to') END AS e164,
                                   CASE WHEN jsonb_typeof(e.value) = 'object'
                                        THEN coalesce(e.value->>'message', e.value->>'body') END AS body,
                                   CASE WHEN jsonb_typeof(e.value) = 'object' THEN nullif(e.value->'metadata', 'null') END AS meta
                              FROM jsonb_array_elements(messages) WITH ORDINALITY AS e(value, ord)
                            OFFSET 0) w          -- OFFSET 0: evaluate phone_e164 once per entry, not per reference
                    OFFSET 0) v
              LEFT JOIN LATERAL envoisms.sms_segments(CASE WHEN length(v.body) <= 1600 THEN v.body END) s ON true
             ORDER BY v.ord                      -- the aggregates above take the entries in request order
            OFFSET 0) x;

    IF bad_ord IS NOT NULL THEN
        PERFORM envoisms.raise_error(bad_error, format('messages[%s]: %s', bad_ord - 1, bad_detail),
                                     format('messages[%s].%s', bad_ord - 1, bad_field));
    END IF;

    cost_mad := price.mad * total_units;
    cost_eur := price.eur * total_units;
    IF NOT sandbox THEN
        PERFORM envoisms.balance_debit(account_id, cost_mad);
    END IF;

    INSERT INTO envoisms.batches (account_id, batch_id, channel, total, cost_mad, cost_eur, created_at)
    VALUES (account_id, batch, channel, total, cost_mad, cost_eur, created);

    INSERT INTO envoisms.messages (account_id, message_id, api_key_id, batch_id, to_number, sender_id, channel,
                                   body, encoding, segments, cost_mad, cost_eur, charged_mad, sandbox,
                                   metadata, created_at, updated_at, next_attempt_at)
    SELECT message_send_bulk.account_id, u.id, api_key_id, batch, u.to_number, sender, channel,
           u.body, u.encoding, n.units, price.mad * n.units, price.eur * n.units,
           CASE WHEN sandbox THEN 0 ELSE price.mad * n.units END, sandbox, u.metadata, created, created, created
      FROM unnest(ids, numbers, bodies, metas, encodings, segments) AS u(id, to_number, body, metadata, encoding, segments)
     CROSS JOIN LATERAL (SELECT CASE WHEN channel = 'whatsapp' THEN 1 ELSE u.segments END AS units) n;

    woken := envoisms.wake_dispatcher();   -- an assignment, not PERFORM: no SPI statement
    RETURN jsonb_build_object(
        'batch_id', batch, 'total', total, 'queued', total, 'failed', 0, 'channel', channel,
        'estimated_cost', jsonb_build_object('eur', envoisms.money(cost_eur), 'mad', envoisms.money(cost_mad)),
        'messages', envoisms.message_bulk_items(ids, numbers));
END
$$;
COMMENT ON FUNCTION envoisms.message_send_bulk(text, jsonb, text, text, text, boolean) IS
'Send up to 10,000 messages at once, all or nothing (POST /v1/messages/bulk)';

-- A message's body as it may leave the database (the API, webhooks): an OTP
-- message's has every run of four or more digits (a code has 4 to 8)
-- masked digit for digit, so that nobody but the recipient reads a code
-- that is still valid. Only the carrier gets the body itself.
CREATE FUNCTION envoisms.message_body_shown(body text, metadata jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN metadata->>'purpose' = 'otp' AND metadata ? 'verify_session_id'
            THEN regexp_replace(body, '(?<=[0-9]{3})[0-9]|[0-9](?=[0-9]{3})|(?<=[0-9])[0-9](?=[0-9]{2})|(?<=[0-9]{2})[0-9](?=[0-9])',
                                '•', 'g')
            ELSE body END;

-- The contract's GET /v1/messages/:id shape (with its delivery log), and
-- "failure_reason" (the error of a failed message, else null) that the
-- official clients read.
-- (PL/pgSQL so its plans are cached: the status trigger renders it for webhooks.)
CREATE FUNCTION envoisms.message_json(m envoisms.messages, with_events boolean DEFAULT true) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
BEGIN
    RETURN jsonb_build_object(
        'id', m.message_id, 'account_id', m.account_id, 'api_key_id', m.api_key_id,
        'campaign_id', m.campaign_id, 'batch_id', m.batch_id, 'direction', m.direction,
        'to', m.to_number, 'channel', m.channel, 'cascade', m.cascade,
        'body', envoisms.message_body_shown(m.body, m.metadata), 'sender_id', m.sender_id,
        'unicode', CASE WHEN m.encoding = 'ucs2' THEN 1 ELSE 0 END, 'segments', m.segments,
        'status', m.status, 'cost_eur', envoisms.money(m.cost_eur), 'cost_mad', envoisms.money(m.cost_mad),
        'metadata', CASE WHEN m.metadata IS NULL THEN NULL ELSE to_jsonb(m.metadata::text) END,
        'sandbox', m.sandbox, 'error_code', m.error_code, 'error_message', m.error_message,
        'failure_reason', CASE WHEN m.status = 'failed' THEN coalesce(m.error_message, m.error_code) END,
        'created_at', envoisms.iso_time(m.created_at),
        'sent_at', envoisms.iso_time(m.sent_at), 'delivered_at', envoisms.iso_time(m.delivered_at))
    || CASE WHEN with_events THEN jsonb_build_object('events',
        jsonb_build_array(jsonb_build_object('status', 'queued', 'created_at', envoisms.iso_time(m.created_at)))
        || coalesce((SELECT jsonb_agg(jsonb_build_object('status', e.status, 'created_at', envoisms.iso_time(e.created_at))
                                      || coalesce(e.detail, '{}') ORDER BY e.event_id)
                       FROM envoisms.message_events e
                      WHERE e.account_id = m.account_id AND e.message_id = m.message_id), '[]'))
       ELSE '{}' END
    || CASE WHEN m.direction = 'inbound' THEN jsonb_build_object('from', m.from_number) ELSE '{}' END;
END
$$;

-- One message of an account, or NOT_FOUND (another account's id is not found either).
CREATE FUNCTION envoisms.message_get(account_id text, message_id text) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    m envoisms.messages;
BEGIN
    SELECT * INTO m FROM envoisms.messages x
     WHERE x.account_id = message_get.account_id AND x.message_id = message_get.message_id;
    IF NOT FOUND THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'message not found', 'id');
    END IF;
    RETURN envoisms.message_json(m);
END
$$;
COMMENT ON FUNCTION envoisms.message_get(text, text) IS
'One message of an account with its delivery log (GET /v1/messages/:id)';

-- Check the filters of a list of messages (VALIDATION_ERROR, INVALID_PHONE);
-- returns the recipient in E.164.
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

-- A page of an account's messages, newest first, with the contract's
-- filters, and the console's: a recipient ("to") and a campaign.
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

-- Usage summary: totals, delivery rate and what was billed, over live
-- messages plus the daily rollups kept past the retention purge.
CREATE FUNCTION envoisms.analytics_summary(account_id text, from_date timestamptz DEFAULT NULL,
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
