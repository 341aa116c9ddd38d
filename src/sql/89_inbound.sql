-- 89_inbound.sql — inbound messages (MO) from any carrier, and the STOP /
-- START keywords that maintain the opt-out list.
--
-- A number belongs to an account through envoisms.inbound_numbers, which the
-- operator fills (one row per long number or short code the account
-- receives on). A 'whatsapp' row is the account's connected WhatsApp
-- Business number: its phone_number_id (Meta's id of the number) is where
-- the account's WhatsApp messages are sent from (90_whatsapp.sql). An
-- inbound message becomes a messages row with direction
-- 'inbound' and status 'received', which message_announce() (35_events.sql)
-- logs, queues as 'message.received' webhooks and NOTIFYs; on WhatsApp it
-- also opens the sender's 24-hour window (envoisms.whatsapp_windows). A
-- message to a number nobody owns is kept in envoisms.inbound_unmatched for
-- the operator instead of being dropped, since the carrier was already told
-- "received". Carriers redeliver: the same carrier_ref from the same carrier
-- is stored once (serialised by an advisory lock on that reference).
--
-- Keywords (docs/smpp.md has the list): the whole message, once normalised
-- (case, accents, Arabic letter variants and diacritics, punctuation and
-- blanks), must be a keyword; "stop sending" is not "STOP". Ambiguous words
-- are left out on purpose: Darija "safi" means "OK" as often as "enough".

CREATE TABLE envoisms.inbound_numbers (
    account_id  text NOT NULL REFERENCES envoisms.accounts,
    number      text NOT NULL CHECK (number ~ '^(\+[1-9][0-9]{6,14}|[0-9]{3,8})$'),  -- E.164 or a short code
    channel     text NOT NULL DEFAULT 'sms' CHECK (channel IN ('sms', 'whatsapp')),
    -- WhatsApp only: Meta's id of the number (the Cloud API sends from it
    -- and names it in callbacks); NULL sends from the carrier's own number
    phone_number_id text CHECK (phone_number_id IS NULL OR (phone_number_id ~ '^[0-9]{1,32}$' AND channel = 'whatsapp')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, number, channel)
);
SELECT pg_catalog.pg_extension_config_dump('envoisms.inbound_numbers', '');
-- A number reaches one account per channel: inbound lookup needs it unique.
CREATE UNIQUE INDEX inbound_numbers_number ON envoisms.inbound_numbers (number, channel);
-- Meta's callbacks name the number by its id.
CREATE UNIQUE INDEX inbound_numbers_phone_number_id ON envoisms.inbound_numbers (phone_number_id)
    WHERE phone_number_id IS NOT NULL;
COMMENT ON TABLE envoisms.inbound_numbers IS
'Which account receives the messages sent to a number (E.164) or a short code; a whatsapp row is the account''s connected WhatsApp sender; filled by the operator';

CREATE TABLE envoisms.inbound_unmatched (
    carrier_id   text,
    received_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    from_number  text,
    to_number    text,
    body         text,
    carrier_ref  text,
    channel      text NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now()
);
SELECT pg_catalog.pg_extension_config_dump('envoisms.inbound_unmatched', '');
SELECT pg_catalog.pg_extension_config_dump('envoisms.inbound_unmatched_received_id_seq', '');
COMMENT ON TABLE envoisms.inbound_unmatched IS
'Inbound messages to a number no account owns (see inbound_numbers), kept for the operator';

-- Parts of concatenated inbound SMS until the last one arrives.
CREATE TABLE envoisms.inbound_parts (
    carrier_id   text NOT NULL,
    from_number  text NOT NULL,
    to_number    text NOT NULL,
    ref          int  NOT NULL,
    total        int  NOT NULL CHECK (total BETWEEN 2 AND 255),
    seq          int  NOT NULL CHECK (seq BETWEEN 1 AND 255),
    body         text NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (carrier_id, from_number, to_number, ref, total, seq)
);
SELECT pg_catalog.pg_extension_config_dump('envoisms.inbound_parts', '');

-- The keyword form of a message: lower case, Latin accents and Arabic
-- letter variants folded, diacritics, tatweel, punctuation and blanks removed.
CREATE FUNCTION envoisms.inbound_keyword_form(body text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
RETURN regexp_replace(
           translate(lower(body),
                     'àâäáãåçéèêëíìîïñóòôöõúùûüýÿإأآٱىة',
                     'aaaaaaceeeeiiiinooooouuuuyyاااايه'),
           '[\s[:punct:]؟،؛ـً-ْ«»¡¿…]+', '', 'g');

-- 'stop', 'start' or NULL: what a whole inbound message asks for.
CREATE FUNCTION envoisms.inbound_keyword(body text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE
    WHEN envoisms.inbound_keyword_form(body) = ANY (ARRAY[
        'stop', 'stopall', 'arret', 'unsubscribe', 'desabonner', 'desabonnement', 'cancel', 'end', 'quit',
        -- Arabic (after folding: إ/أ/آ → ا, ة → ه)
        'توقف', 'ايقاف', 'الغاء', 'الغاءالاشتراك', 'قف',
        -- Darija, in Arabic letters and in Arabizi
        'بركا', 'باراكا', 'حبس', 'وقف', 'baraka', 'barka', '7bes', 'hbes', 'w9ef', 'wa9ef'])
        THEN 'stop'
    WHEN envoisms.inbound_keyword_form(body) = ANY (ARRAY[
        'start', 'unstop', 'yes', 'ابدا', 'ابدء', 'بدا'])
        THEN 'start'
END;

-- Record an inbound message received by carrier_id from from_number on
-- to_number (one of our numbers); returns the new message id, or NULL when
-- no account owns to_number (then it is kept in inbound_unmatched). A
-- carrier_ref seen before for this carrier returns the first message's id
-- (carriers redeliver). STOP adds from_number to the account's opt-outs,
-- START removes it. On WhatsApp the message opens (or extends) the
-- sender's 24-hour window from sent_at, when the carrier says when the
-- message was sent (never later than now), else from now.
CREATE FUNCTION envoisms.inbound_receive(carrier_id text, from_number text, to_number text, body text,
                                         carrier_ref text DEFAULT NULL, channel text DEFAULT 'sms',
                                         sent_at timestamptz DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    acc text;
    ours text;
    sender text;
    id text;
    seg record;
    msg envoisms.messages;
    keyword text;
BEGIN
    channel := coalesce(channel, 'sms');
    IF channel NOT IN ('sms', 'whatsapp') THEN
        RAISE EXCEPTION 'inbound channel must be "sms" or "whatsapp", not "%"', channel
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    body := coalesce(body, '');
    -- Numbers as the carrier gave them, or their E.164 form (national Moroccan numbers).
    sender := coalesce(envoisms.phone_e164(from_number, 'MA'), nullif(btrim(from_number), ''), 'unknown');
    ours := btrim(coalesce(to_number, ''));
    -- one redelivery at a time: the second one finds the first one's row
    IF carrier_ref IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(hashtextextended(inbound_receive.carrier_id || '/' || carrier_ref, 8989));
    END IF;
    SELECT n.account_id, n.number INTO acc, ours
      FROM envoisms.inbound_numbers n
     WHERE n.channel = inbound_receive.channel
       AND n.number IN (ours, ltrim(ours, '+'), '+' || ltrim(ours, '+'), coalesce(envoisms.phone_e164(ours, 'MA'), ours))
     LIMIT 1;
    IF acc IS NULL THEN
        INSERT INTO envoisms.inbound_unmatched (carrier_id, from_number, to_number, body, carrier_ref, channel)
        SELECT inbound_receive.carrier_id, sender, to_number, body, carrier_ref, channel
         WHERE carrier_ref IS NULL
            OR NOT EXISTS (SELECT 1 FROM envoisms.inbound_unmatched u
                            WHERE u.carrier_id = inbound_receive.carrier_id AND u.carrier_ref = inbound_receive.carrier_ref);
        RETURN NULL;
    END IF;

    IF carrier_ref IS NOT NULL THEN
        SELECT m.message_id INTO id FROM envoisms.messages m
         WHERE m.account_id = acc AND m.direction = 'inbound'
           AND m.carrier_id = inbound_receive.carrier_id AND m.carrier_ref = inbound_receive.carrier_ref
         LIMIT 1;
        IF id IS NOT NULL THEN
            RETURN id;
        END IF;
    END IF;

    id := envoisms.new_id('msg');
    SELECT * INTO seg FROM envoisms.sms_segments(body);
    INSERT INTO envoisms.messages (account_id, message_id, direction, to_number, from_number, sender_id, channel,
                                   body, encoding, segments, status, carrier_id, carrier_ref)
    VALUES (acc, id, 'inbound', ours, sender, left(sender, 32), channel,
            body, seg.encoding, least(seg.segments, 100), 'received', inbound_receive.carrier_id, carrier_ref)
    RETURNING * INTO msg;
    PERFORM envoisms.message_announce(msg);

    IF channel = 'whatsapp' AND sender ~ '^\+[1-9][0-9]{6,14}$' THEN
        PERFORM envoisms.whatsapp_window_open(acc, sender, ours, least(coalesce(sent_at, now()), now()));
    END IF;

    keyword := envoisms.inbound_keyword(body);
    IF keyword = 'stop' AND sender ~ '^\+[1-9][0-9]{6,14}$' THEN
        INSERT INTO envoisms.optouts (account_id, phone, source, reason)
        VALUES (acc, sender, 'inbound', left(format('inbound "%s" (%s)', body, id), 200))
        ON CONFLICT DO NOTHING;
    ELSIF keyword = 'start' THEN
        DELETE FROM envoisms.optouts o WHERE o.account_id = acc AND o.phone = sender;
    END IF;
    RETURN id;
END
$$;
COMMENT ON FUNCTION envoisms.inbound_receive(text, text, text, text, text, text, timestamptz) IS
'Record an inbound message (direction inbound, status received) for the account owning to_number; applies STOP/START; on WhatsApp opens the sender''s 24-hour window';

-- One part of a concatenated inbound SMS: kept until all `total` parts are
-- here, then joined in order and received as one message (its id is
-- returned; NULL while parts are missing or when no account owns the number).
CREATE FUNCTION envoisms.inbound_receive_part(carrier_id text, from_number text, to_number text,
                                              ref int, total int, seq int, body text)
RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    whole text;
    n int;
BEGIN
    INSERT INTO envoisms.inbound_parts AS p (carrier_id, from_number, to_number, ref, total, seq, body)
    VALUES (carrier_id, from_number, to_number, ref, total, seq, coalesce(body, ''))
    ON CONFLICT ON CONSTRAINT inbound_parts_pkey DO UPDATE SET body = EXCLUDED.body, received_at = now();
    -- Serialise the parts of one message so exactly one call sees them all.
    PERFORM pg_advisory_xact_lock(hashtext(format('%s|%s|%s|%s|%s', carrier_id, from_number, to_number, ref, total)));
    SELECT count(*), string_agg(p.body, '' ORDER BY p.seq) INTO n, whole
      FROM envoisms.inbound_parts p
     WHERE p.carrier_id = inbound_receive_part.carrier_id AND p.from_number = inbound_receive_part.from_number
       AND p.to_number = inbound_receive_part.to_number AND p.ref = inbound_receive_part.ref
       AND p.total = inbound_receive_part.total;
    IF n < total THEN
        RETURN NULL;
    END IF;
    DELETE FROM envoisms.inbound_parts p
     WHERE p.carrier_id = inbound_receive_part.carrier_id AND p.from_number = inbound_receive_part.from_number
       AND p.to_number = inbound_receive_part.to_number AND p.ref = inbound_receive_part.ref
       AND p.total = inbound_receive_part.total;
    RETURN envoisms.inbound_receive(carrier_id, from_number, to_number, whole, NULL, 'sms');
END
$$;

REVOKE ALL ON FUNCTION envoisms.inbound_receive(text, text, text, text, text, text, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION envoisms.inbound_receive_part(text, text, text, int, int, int, text) FROM PUBLIC;
