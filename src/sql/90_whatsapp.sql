-- 90_whatsapp.sql — WhatsApp sessions: who an account may write to on
-- WhatsApp with free text, which of its numbers a message goes from, and
-- the customers' messages that Meta's Cloud API calls back with.
--
-- The rule (Meta's, and the real service's): free text on WhatsApp goes
-- from the account's own WhatsApp Business number (a 'whatsapp' row of
-- envoisms.inbound_numbers: the account is "connected") and only to a
-- number that wrote to the account on WhatsApp in the last 24 hours (its
-- "window"). Anything else is refused before anything is written or
-- charged: WHATSAPP_NOT_CONNECTED (403) or OUT_OF_24H_WINDOW (409) — or,
-- with cascade, the message goes as an SMS at once, priced as an SMS.
-- Exempt: OTP (verify_send), which goes from the platform's shared sender
-- (the carrier's config.phone_number_id) as Meta's authentication
-- template, and approved templates (template campaigns), which Meta lets
-- a business send at any time. Sandbox accounts are connected to a
-- sandbox sender that every number wrote to, except two magic numbers
-- (sandbox_magic_numbers()) that produce each refusal.
--
-- Windows are kept per account and customer number in whatsapp_windows:
-- the last time the customer wrote and to which of the account's numbers,
-- one primary-key probe per send. inbound_receive (89_inbound.sql) opens
-- them; a window only moves forward, so a redelivered or late callback
-- never shortens it. The send path reads the table only on the whatsapp
-- channel: an SMS send pays one comparison.

-- How long a customer's message keeps the window open.
CREATE FUNCTION envoisms.whatsapp_window() RETURNS interval
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN interval '24 hours';

CREATE TABLE envoisms.whatsapp_windows (
    account_id      text NOT NULL REFERENCES envoisms.accounts,
    phone           text NOT NULL CHECK (phone ~ '^\+[1-9][0-9]{6,14}$'),  -- the customer
    number          text NOT NULL,          -- the account's WhatsApp number they wrote to
    last_inbound_at timestamptz NOT NULL,   -- when they last wrote
    PRIMARY KEY (account_id, phone)
);
SELECT pg_catalog.pg_extension_config_dump('envoisms.whatsapp_windows', '');
COMMENT ON TABLE envoisms.whatsapp_windows IS
'When each customer last wrote to an account on WhatsApp (and to which number): free text reaches them for whatsapp_window() after it';

-- Open or extend the window of `phone` with the account: it wrote to our
-- `number` at `at`. Idempotent; an older message changes nothing.
CREATE FUNCTION envoisms.whatsapp_window_open(account_id text, phone text, number text, at timestamptz)
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

-- Why free text on WhatsApp cannot reach `phone` from the account now:
-- 'WHATSAPP_NOT_CONNECTED', 'OUT_OF_24H_WINDOW', or NULL when it can. A
-- plain SQL expression, so that the planner inlines it into a bulk send's
-- or a campaign's query (one primary-key probe per number).
CREATE FUNCTION envoisms.whatsapp_refusal(account_id text, phone text, sandbox boolean) RETURNS text
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

-- The message of a refusal, as the API shows it.
CREATE FUNCTION envoisms.whatsapp_refusal_message(code text, phone text) RETURNS text
LANGUAGE sql IMMUTABLE
RETURN CASE code
    WHEN 'WHATSAPP_NOT_CONNECTED'
        THEN 'this account has no connected WhatsApp Business number to send free text from; '
             || 'send by SMS, or with cascade: true to fall back to SMS'
    WHEN 'OUT_OF_24H_WINDOW'
        THEN format('%s has not written to this account on WhatsApp in the last 24 hours, and WhatsApp allows '
                    'free text only inside that window; send by SMS, or with cascade: true to fall back to SMS', phone)
END;

-- The channel a single send goes on (message_send, channel whatsapp, not
-- an OTP): 'whatsapp' when free text may reach `phone`, 'sms' when it may
-- not and `cascade` asks for the SMS fallback; otherwise raise the refusal.
CREATE FUNCTION envoisms.check_whatsapp_session(account_id text, phone text, cascade boolean, sandbox boolean)
RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    refusal text := envoisms.whatsapp_refusal(account_id, phone, sandbox);
BEGIN
    IF refusal IS NULL THEN
        RETURN 'whatsapp';
    ELSIF cascade THEN
        RETURN 'sms';
    END IF;
    PERFORM envoisms.raise_error(refusal, envoisms.whatsapp_refusal_message(refusal, phone),
                                 CASE refusal WHEN 'OUT_OF_24H_WINDOW' THEN 'to' ELSE 'channel' END);
    RETURN NULL;
END
$$;

-- Raise WHATSAPP_NOT_CONNECTED unless the account (or a sandbox run) has a
-- WhatsApp sender: for bulk sends and campaigns, before their recipients.
CREATE FUNCTION envoisms.check_whatsapp_connected(account_id text, sandbox boolean) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
BEGIN
    IF NOT sandbox AND NOT EXISTS (SELECT 1 FROM envoisms.inbound_numbers n
                                    WHERE n.account_id = check_whatsapp_connected.account_id
                                      AND n.channel = 'whatsapp') THEN
        PERFORM envoisms.raise_error('WHATSAPP_NOT_CONNECTED',
            envoisms.whatsapp_refusal_message('WHATSAPP_NOT_CONNECTED', NULL), 'channel');
    END IF;
END
$$;

-- What the dispatcher adds to a whatsapp_cloud carrier's config for one
-- message: the phone_number_id of the account's number it goes from — the
-- one the recipient wrote to last, else the account's first — or nothing
-- (the carrier's own number) for an OTP of verify_send, which goes from
-- the platform's shared sender, and for an account without a number id;
-- and for a template campaign's message, the template to send
-- (metadata.template). Only the claim writes the config, so a message's
-- own metadata can neither change its sender nor make it a template.
CREATE FUNCTION envoisms.whatsapp_sender(account_id text, message_id text, campaign_id text, to_number text,
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

-- ---- the customers' messages in Meta's callbacks

-- The text of one entry of a callback's value.messages[]: a text's body, a
-- tapped button's or list row's title, a reaction's emoji, a media's
-- caption, else "[<type>]" (an image without caption, a location …).
CREATE FUNCTION envoisms.whatsapp_message_text(message jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN coalesce(
    CASE message->>'type'
        WHEN 'text' THEN message->'text'->>'body'
        WHEN 'button' THEN message->'button'->>'text'
        WHEN 'interactive' THEN coalesce(message->'interactive'->'button_reply'->>'title',
                                         message->'interactive'->'list_reply'->>'title')
        WHEN 'reaction' THEN message->'reaction'->>'emoji'
        ELSE message->(message->>'type')->>'caption' END,
    '[' || coalesce(message->>'type', 'unknown') || ']');

-- Store the customers' messages of one callback value (one change of
-- Meta's entry[].changes[]) received by a whatsapp_cloud carrier: each
-- becomes an inbound message of the account whose number the value names
-- (metadata.phone_number_id, else metadata.display_phone_number), or an
-- unmatched one. Idempotent per message id (wamid). Returns how many.
CREATE FUNCTION envoisms.whatsapp_receive(carrier_id text, value jsonb) RETURNS int
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    ours text;
    m jsonb;
    n int := 0;
BEGIN
    IF jsonb_typeof(value->'messages') IS DISTINCT FROM 'array' THEN
        RETURN 0;
    END IF;
    SELECT x.number INTO ours FROM envoisms.inbound_numbers x
     WHERE x.phone_number_id = value->'metadata'->>'phone_number_id' AND x.channel = 'whatsapp';
    IF ours IS NULL THEN
        ours := '+' || regexp_replace(coalesce(value->'metadata'->>'display_phone_number', ''), '[^0-9]', '', 'g');
    END IF;
    FOR m IN SELECT e.value FROM jsonb_array_elements(value->'messages') e LOOP
        CONTINUE WHEN jsonb_typeof(m) <> 'object' OR m->>'id' IS NULL OR m->>'from' IS NULL;
        PERFORM envoisms.inbound_receive(carrier_id,
            CASE WHEN m->>'from' ~ '^[0-9]{7,15}$' THEN '+' || (m->>'from') ELSE m->>'from' END,
            ours, envoisms.whatsapp_message_text(m), left(m->>'id', 200), 'whatsapp',
            CASE WHEN m->>'timestamp' ~ '^[0-9]{1,12}$' THEN to_timestamp((m->>'timestamp')::bigint) END);
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;
