-- envoisms 0.3.0: generated from src/sql/*.sql by make; do not edit
\echo Use "CREATE EXTENSION envoisms" to load this file. \quit

-- ---- src/sql/00_schema.sql
-- 00_schema.sql — the tables: the state of envoisms. Queues are tables.
--
-- Every row belongs to an account: account_id leads every primary key so the
-- schema can later be distributed by account. Money is numeric, in MAD.
-- Constraints state the invariants the code relies on (a bug fails loudly
-- instead of corrupting money).
--
-- Money design (see DESIGN.md "Performance facts"): one balance row per
-- account caps an account near 2k sends/s because every send holds that row
-- lock through its commit's WAL flush. The balance is therefore split into
-- buckets (balance_buckets); the balance is their sum. A send debits one
-- bucket it can lock without waiting (SKIP LOCKED); only when no free bucket
-- holds enough does it lock them all and rebalance (balance.sql). The message
-- row is itself the debit's ledger entry (messages.charged_mad), so a send
-- writes one row and updates one bucket; every other change of balance
-- (top-up, refund, adjustment) is a ledger row. envoisms.balance_check()
-- proves: sum(buckets) = sum(ledger.amount_mad) - sum(messages.charged_mad).

CREATE TABLE envoisms.accounts (
    account_id  text PRIMARY KEY CHECK (account_id ~ '^acc_[0-9a-f]{28}$'),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    plan        text NOT NULL DEFAULT 'starter' CHECK (length(plan) BETWEEN 1 AND 50),
    channels    text[] NOT NULL DEFAULT '{sms,whatsapp}'
                CHECK (channels <@ ARRAY['sms', 'whatsapp']),
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended', 'closed')),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Accounts are closed, never deleted: messages, ledger and buckets keep
-- pointing at them (messages carry no foreign key, see below).
CREATE FUNCTION envoisms.accounts_forbid_delete() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RAISE EXCEPTION 'accounts cannot be deleted'
        USING ERRCODE = 'restrict_violation',
              HINT = 'Set status to ''closed'' instead.';
END
$$;
CREATE TRIGGER accounts_forbid_delete BEFORE DELETE ON envoisms.accounts
    FOR EACH ROW EXECUTE FUNCTION envoisms.accounts_forbid_delete();

-- A bucket's rules are domains, not table CHECKs: every send updates a
-- bucket, and a table CHECK is parsed again on every UPDATE (see messages).
CREATE DOMAIN envoisms.bucket_number AS int CHECK (VALUE >= 0);
CREATE DOMAIN envoisms.bucket_balance AS numeric(16,4) CHECK (VALUE >= 0);

CREATE TABLE envoisms.balance_buckets (
    account_id  text NOT NULL REFERENCES envoisms.accounts,
    bucket      envoisms.bucket_number NOT NULL,
    balance_mad envoisms.bucket_balance NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, bucket)
) WITH (fillfactor = 30);      -- room for HOT updates: buckets are rewritten on every send

CREATE TABLE envoisms.ledger (
    account_id  text NOT NULL REFERENCES envoisms.accounts,
    entry_id    bigint GENERATED ALWAYS AS IDENTITY,
    kind        text NOT NULL CHECK (kind IN ('topup', 'refund', 'debit', 'adjustment', 'rollup')),
    amount_mad  numeric(16,4) NOT NULL,                     -- signed: credits > 0, debits < 0
    message_id  text,
    reference   text CHECK (length(reference) <= 200),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, entry_id),
    CHECK (kind <> 'topup'  OR amount_mad > 0),
    CHECK (kind <> 'refund' OR (amount_mad > 0 AND message_id IS NOT NULL)),
    CHECK (kind <> 'debit'  OR amount_mad < 0)
);
-- A message is refunded at most once, whatever retries or races happen.
CREATE UNIQUE INDEX ledger_one_refund_per_message
    ON envoisms.ledger (account_id, message_id) WHERE kind = 'refund';

-- Unit prices. account_id '*' holds the defaults; a row for an account overrides.
CREATE TABLE envoisms.prices (
    account_id  text NOT NULL DEFAULT '*',
    channel     text NOT NULL CHECK (channel IN ('sms', 'whatsapp')),
    currency    text NOT NULL CHECK (currency IN ('MAD', 'EUR')),
    unit_price  numeric(12,5) NOT NULL CHECK (unit_price >= 0),   -- per segment (sms) or per message (whatsapp)
    PRIMARY KEY (account_id, channel, currency)
);
INSERT INTO envoisms.prices (account_id, channel, currency, unit_price) VALUES
    ('*', 'sms',      'MAD', 0.31),
    ('*', 'sms',      'EUR', 0.028),
    ('*', 'whatsapp', 'MAD', 0.13),
    ('*', 'whatsapp', 'EUR', 0.0118);

CREATE TABLE envoisms.api_keys (
    account_id   text NOT NULL REFERENCES envoisms.accounts,
    api_key_id   text NOT NULL CHECK (api_key_id ~ '^key_[0-9a-f]{28}$'),
    name         text NOT NULL DEFAULT 'API key' CHECK (length(name) BETWEEN 1 AND 100),
    key_prefix   text NOT NULL CHECK (key_prefix IN ('env_live', 'env_test')),
    -- Only the SHA-256 of the key is stored. Authentication must find the
    -- account from the key alone, so this one unique key is global.
    key_hash     text NOT NULL UNIQUE CHECK (key_hash ~ '^[0-9a-f]{64}$'),
    key_hint     text NOT NULL,                 -- last 4 characters, to tell keys apart
    permissions  text[],                        -- NULL = every permission
    ip_whitelist cidr[],                        -- NULL or empty = any address
    rate_limit   int CHECK (rate_limit > 0),    -- requests per minute, NULL = unlimited
    active       boolean NOT NULL DEFAULT true,
    last_used_at timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz,
    PRIMARY KEY (account_id, api_key_id),
    CHECK (revoked_at IS NULL OR NOT active)
);

CREATE TABLE envoisms.batches (
    account_id  text NOT NULL REFERENCES envoisms.accounts,
    batch_id    text NOT NULL,
    channel     text NOT NULL,
    total       int  NOT NULL CHECK (total BETWEEN 1 AND 10000),
    cost_mad    numeric(16,4) NOT NULL,
    cost_eur    numeric(16,5) NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, batch_id)
);

-- The value rules of a message's columns, as domains rather than table
-- CHECKs: a table CHECK is parsed and planned again on every INSERT (a send
-- paid ~8% of its CPU for ten of them), a domain's rule is planned once and
-- kept in the type cache. The rule is the same either way: a value that
-- breaks it fails the insert. The one rule over several columns is a table
-- CHECK that calls a C function (checks.c), the cheapest CHECK to re-plan.
CREATE DOMAIN envoisms.message_direction AS text CHECK (VALUE IN ('outbound', 'inbound'));
CREATE DOMAIN envoisms.message_channel AS text CHECK (VALUE IN ('sms', 'whatsapp'));
CREATE DOMAIN envoisms.message_encoding AS text CHECK (VALUE IN ('gsm7', 'ucs2'));
CREATE DOMAIN envoisms.message_status AS text
    CHECK (VALUE IN ('queued', 'sent', 'delivered', 'failed', 'expired', 'received'));
CREATE DOMAIN envoisms.segment_count AS int CHECK (VALUE BETWEEN 0 AND 100);
CREATE DOMAIN envoisms.amount_mad AS numeric(12,4) CHECK (VALUE >= 0);
CREATE DOMAIN envoisms.amount_eur AS numeric(12,5) CHECK (VALUE >= 0);

-- A message's charge: a refund never exceeds it; a sandbox message has none.
CREATE FUNCTION envoisms.message_charge_valid(charged_mad numeric, refunded_mad numeric, sandbox boolean)
RETURNS boolean AS 'MODULE_PATHNAME', 'message_charge_valid' LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE;

-- Messages: the contract's fields plus what the dispatcher needs. No
-- foreign key to accounts: the RI check would FOR KEY SHARE-lock the account
-- row on every insert (a multixact hot spot at 32 concurrent sends); the
-- debit of a balance bucket, which does reference the account, already
-- proves the account exists in the same transaction, and accounts are never
-- deleted (trigger above).
CREATE TABLE envoisms.messages (
    account_id      text NOT NULL,
    message_id      text NOT NULL,
    direction       envoisms.message_direction NOT NULL DEFAULT 'outbound',
    api_key_id      text,
    campaign_id     text,
    batch_id        text,
    to_number       text NOT NULL,
    from_number     text,                                    -- inbound: the sender's number
    sender_id       text NOT NULL DEFAULT 'ENVOISMS',
    channel         envoisms.message_channel NOT NULL,
    cascade         boolean NOT NULL DEFAULT false,
    body            text,                                    -- NULL once purged by retention
    encoding        envoisms.message_encoding NOT NULL,
    segments        envoisms.segment_count NOT NULL,
    status          envoisms.message_status NOT NULL DEFAULT 'queued',
    cost_mad        envoisms.amount_mad NOT NULL DEFAULT 0,
    cost_eur        envoisms.amount_eur NOT NULL DEFAULT 0,
    charged_mad     envoisms.amount_mad NOT NULL DEFAULT 0,   -- the debit (0 in sandbox)
    refunded_mad    envoisms.amount_mad NOT NULL DEFAULT 0,
    sandbox         boolean NOT NULL DEFAULT false,
    metadata        jsonb,
    buttons         jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    delivered_at    timestamptz,
    expires_at      timestamptz NOT NULL DEFAULT now() + interval '72 hours',   -- validity
    -- dispatcher state
    attempts        int NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    locked_until    timestamptz,
    carrier_id      text,
    carrier_ref     text,
    error_code      text,
    error_message   text,
    PRIMARY KEY (account_id, message_id),
    CHECK (envoisms.message_charge_valid(charged_mad, refunded_mad, sandbox))
);
-- The dispatcher's queue: due queued messages, oldest first.
CREATE INDEX messages_queue ON envoisms.messages (next_attempt_at) WHERE status = 'queued';

-- Delivery logs: every status change after the initial 'queued' (which the
-- message row itself records, to keep a send at one insert).
CREATE TABLE envoisms.message_events (
    account_id  text NOT NULL,
    message_id  text NOT NULL,
    event_id    bigint GENERATED ALWAYS AS IDENTITY,
    status      text NOT NULL,
    detail      jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, message_id, event_id),
    FOREIGN KEY (account_id, message_id) REFERENCES envoisms.messages ON DELETE CASCADE
);

-- Daily totals that survive the retention purge (analytics reads them with
-- the live messages).
CREATE TABLE envoisms.message_rollups (
    account_id  text NOT NULL REFERENCES envoisms.accounts,
    day         date NOT NULL,
    channel     text NOT NULL,
    total       bigint NOT NULL DEFAULT 0,
    delivered   bigint NOT NULL DEFAULT 0,
    failed      bigint NOT NULL DEFAULT 0,
    cost_mad    numeric(18,4) NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, day, channel)
);

-- Webhook endpoints and their deliveries (the queue of the webhook worker).
CREATE TABLE envoisms.webhooks (
    account_id        text NOT NULL REFERENCES envoisms.accounts,
    webhook_id        text NOT NULL,
    url               text NOT NULL CHECK (length(url) <= 2048),
    events            text[] NOT NULL,
    secret            text NOT NULL,
    active            boolean NOT NULL DEFAULT true,
    deleted_at        timestamptz,
    last_triggered_at timestamptz,
    last_status       int,
    failing_since     timestamptz,
    disabled_reason   text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, webhook_id)
);

CREATE TABLE envoisms.webhook_deliveries (
    account_id      text NOT NULL,
    delivery_id     bigint GENERATED ALWAYS AS IDENTITY,
    webhook_id      text NOT NULL,
    event_id        text NOT NULL,          -- the same across retries
    event_type      text NOT NULL,
    payload         text NOT NULL,          -- the exact bytes signed and sent
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'delivered', 'failed', 'cancelled')),
    attempts        int NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    locked_until    timestamptz,
    last_status     int,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    PRIMARY KEY (account_id, delivery_id),
    FOREIGN KEY (account_id, webhook_id) REFERENCES envoisms.webhooks
);
CREATE INDEX webhook_deliveries_queue ON envoisms.webhook_deliveries (next_attempt_at) WHERE status = 'pending';

-- The tables above are the users' data: pg_dump must dump their rows (an
-- extension's own tables are otherwise left out of a dump). The default
-- prices ('*') are made by this script, so only overrides are dumped.
SELECT pg_catalog.pg_extension_config_dump('envoisms.accounts', '');
SELECT pg_catalog.pg_extension_config_dump('envoisms.balance_buckets', '');
SELECT pg_catalog.pg_extension_config_dump('envoisms.ledger', '');
SELECT pg_catalog.pg_extension_config_dump('envoisms.ledger_entry_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('envoisms.prices', 'WHERE account_id <> ''*''');
SELECT pg_catalog.pg_extension_config_dump('envoisms.api_keys', '');
SELECT pg_catalog.pg_extension_config_dump('envoisms.batches', '');
SELECT pg_catalog.pg_extension_config_dump('envoisms.messages', '');
SELECT pg_catalog.pg_extension_config_dump('envoisms.message_events', '');
SELECT pg_catalog.pg_extension_config_dump('envoisms.message_events_event_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('envoisms.message_rollups', '');
SELECT pg_catalog.pg_extension_config_dump('envoisms.webhooks', '');
SELECT pg_catalog.pg_extension_config_dump('envoisms.webhook_deliveries', '');
SELECT pg_catalog.pg_extension_config_dump('envoisms.webhook_deliveries_delivery_id_seq', '');

-- ---- src/sql/05_helpers.sql
-- 05_helpers.sql — C helpers exposed to SQL: SMS segments, phone numbers,
-- cryptographic primitives and time-ordered ids (src/segments.c, phone.c,
-- crypto.c, ids.c). Pure functions of their input are IMMUTABLE; anything
-- that draws randomness or reads the clock is VOLATILE. All are STRICT and
-- PARALLEL SAFE.

-- ---- SMS encoding and segments

CREATE FUNCTION envoisms.sms_segments(body text)
RETURNS TABLE(encoding text, segments int, units int, characters int)
AS 'MODULE_PATHNAME', 'sms_segments'
LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE ROWS 1;
COMMENT ON FUNCTION envoisms.sms_segments(text) IS
'Encoding (gsm7 or ucs2), number of SMS parts, units (septets or UTF-16 code units) and characters of a message body';

-- sms_segments' encoding and segment count as plain values, for the send
-- path (a set-returning function in a query's FROM costs a scan node).
CREATE FUNCTION envoisms.sms_encoding(body text) RETURNS text
AS 'MODULE_PATHNAME', 'sms_encoding' LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE;
CREATE FUNCTION envoisms.sms_segment_count(body text) RETURNS int
AS 'MODULE_PATHNAME', 'sms_segment_count' LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE;

CREATE FUNCTION envoisms.sms_split(body text)
RETURNS SETOF text
AS 'MODULE_PATHNAME', 'sms_split'
LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE ROWS 2;
COMMENT ON FUNCTION envoisms.sms_split(text) IS
'The parts a message body is sent as, by the same rules as sms_segments';

-- ---- phone numbers (libphonenumber)

CREATE FUNCTION envoisms.phone_e164(number text, region text DEFAULT NULL)
RETURNS text
AS 'MODULE_PATHNAME', 'phone_e164'
LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION envoisms.phone_e164(text, text) IS
'E.164 form of a valid phone number (local numbers need the ISO region), else NULL';

CREATE FUNCTION envoisms.phone_parse(number text, region text DEFAULT NULL)
RETURNS TABLE(valid bool, e164 text, country_prefix text, region text,
              line_type text, national_format text, international_format text,
              location text)
AS 'MODULE_PATHNAME', 'phone_parse'
LANGUAGE C IMMUTABLE PARALLEL SAFE ROWS 1;
COMMENT ON FUNCTION envoisms.phone_parse(text, text) IS
'Validity, formats, region, line type and English location of a phone number; valid = false for garbage';

CREATE FUNCTION envoisms.phone_country_name(region text)
RETURNS text
AS 'MODULE_PATHNAME', 'phone_country_name'
LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION envoisms.phone_country_name(text) IS
'English name of an ISO 3166-1 region supported by libphonenumber, else NULL';

-- ---- cryptography (OpenSSL)

CREATE FUNCTION envoisms.random_bytes_hex(n int)
RETURNS text
AS 'MODULE_PATHNAME', 'random_bytes_hex'
LANGUAGE C STRICT VOLATILE PARALLEL SAFE;

CREATE FUNCTION envoisms.random_digits(n int)
RETURNS text
AS 'MODULE_PATHNAME', 'random_digits'
LANGUAGE C STRICT VOLATILE PARALLEL SAFE;

CREATE FUNCTION envoisms.sha256_hex(data text)
RETURNS text
AS 'MODULE_PATHNAME', 'sha256_hex'
LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE;

CREATE FUNCTION envoisms.hmac_sha256_hex(key text, data text)
RETURNS text
AS 'MODULE_PATHNAME', 'hmac_sha256_hex'
LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE;

CREATE FUNCTION envoisms.hmac_sha256_base64(key bytea, data text)
RETURNS text
AS 'MODULE_PATHNAME', 'hmac_sha256_base64'
LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE;

CREATE FUNCTION envoisms.secure_equals(a text, b text)
RETURNS bool
AS 'MODULE_PATHNAME', 'secure_equals'
LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE;

-- ---- ids

CREATE FUNCTION envoisms.new_id(prefix text)
RETURNS text
AS 'MODULE_PATHNAME', 'new_id'
LANGUAGE C STRICT VOLATILE PARALLEL SAFE;
COMMENT ON FUNCTION envoisms.new_id(text) IS
'New time-ordered id: prefix, "_", 12 hex digits of Unix milliseconds, 16 random hex digits';

CREATE FUNCTION envoisms.id_time(id text)
RETURNS timestamptz
AS 'MODULE_PATHNAME', 'id_time'
LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION envoisms.id_time(text) IS
'Creation time encoded in an id made by new_id, NULL when the id is malformed';

-- Statement trigger of the tables cached per backend (prices, api_keys,
-- accounts): every backend forgets what it cached of the table (cache.c).
CREATE FUNCTION envoisms.cache_forget() RETURNS trigger
AS 'MODULE_PATHNAME', 'cache_forget' LANGUAGE C;

-- ---- src/sql/10_errors.sql
-- 10_errors.sql — the one table that maps every user-reachable error to its
-- SQLSTATE, API code and HTTP status, and the helpers that raise them.
--
-- Domain functions raise with envoisms.raise_error('INVALID_PHONE', message,
-- field); SQL callers see the SQLSTATE (class EV) and the message, HTTP
-- callers get the contract's envelope built by envoisms.api from this table.

CREATE TABLE envoisms.error_codes (
    code        text PRIMARY KEY,
    sqlstate    char(5) NOT NULL UNIQUE CHECK (sqlstate ~ '^EV[0-9A-Z]{3}$'),
    http_status int NOT NULL CHECK (http_status BETWEEN 400 AND 599),
    description text NOT NULL
);
INSERT INTO envoisms.error_codes (code, sqlstate, http_status, description) VALUES
    ('VALIDATION_ERROR',      'EV400', 400, 'A field is missing or invalid; the message names it.'),
    ('INVALID_PHONE',         'EV401', 400, 'The recipient number is not a valid E.164 number.'),
    ('INVALID_JSON',          'EV402', 400, 'The request body is not valid JSON.'),
    ('UNAUTHORIZED',          'EV411', 401, 'The API key is missing or invalid.'),
    ('INSUFFICIENT_BALANCE',  'EV421', 402, 'The balance does not cover the cost.'),
    ('FORBIDDEN',             'EV431', 403, 'The API key lacks the permission for this route.'),
    ('CHANNEL_NOT_ALLOWED',   'EV432', 403, 'The channel is not enabled on the account.'),
    ('OPTED_OUT',             'EV433', 403, 'The recipient opted out of messages from this account.'),
    ('NOT_FOUND',             'EV441', 404, 'No such route or object in this account.'),
    ('METHOD_NOT_ALLOWED',    'EV451', 405, 'The route exists but not with this method.'),
    ('CONFLICT',              'EV491', 409, 'The object is not in a state that allows this.'),
    ('IDEMPOTENCY_IN_FLIGHT', 'EV492', 409, 'A request with this Idempotency-Key is still being processed.'),
    ('EXPIRED',               'EV410', 410, 'The object expired.'),
    ('PAYLOAD_TOO_LARGE',     'EV413', 413, 'The request is larger than the limit.'),
    ('IDEMPOTENCY_MISMATCH',  'EV422', 422, 'The Idempotency-Key was used with a different request.'),
    ('RATE_LIMITED',          'EV429', 429, 'Too many requests for this API key.'),
    ('TOO_MANY_ATTEMPTS',     'EV42A', 429, 'Too many attempts; wait or start over.'),
    ('INTERNAL_ERROR',        'EV500', 500, 'An unexpected error; it was logged.'),
    ('SERVICE_UNAVAILABLE',   'EV503', 503, 'The service is temporarily unavailable.');

-- Raise the error `code` with a human message; `field` names the offending
-- request field (shown in the envelope as error.field).
CREATE FUNCTION envoisms.raise_error(code text, message text, field text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    state text;
BEGIN
    SELECT e.sqlstate INTO state FROM envoisms.error_codes e WHERE e.code = raise_error.code;
    IF state IS NULL THEN
        RAISE EXCEPTION 'unknown envoisms error code "%"', code;
    END IF;
    RAISE EXCEPTION USING ERRCODE = state, MESSAGE = message, COLUMN = coalesce(field, '');
END
$$;

-- The contract's time format: 2026-05-15T10:30:00Z (UTC, whole seconds); json.c.
CREATE FUNCTION envoisms.iso_time(ts timestamptz) RETURNS text
AS 'MODULE_PATHNAME', 'iso_time' LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE;

-- Money as a JSON number without trailing zeros (0.31, not 0.3100). STABLE
-- like to_jsonb, so the planner inlines it (an IMMUTABLE wrapper around a
-- STABLE call would be called, and re-planned, on every use).
CREATE FUNCTION envoisms.money(amount numeric) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE
RETURN to_jsonb(trim_scale(amount));

-- Parse an ISO 8601 time given by a user, or raise VALIDATION_ERROR naming the field.
CREATE FUNCTION envoisms.parse_time(value text, field text) RETURNS timestamptz
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
BEGIN
    IF value IS NULL THEN
        RETURN NULL;
    END IF;
    IF value !~ '^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}(:?\d{2})?)?$' THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', format('%s must be an ISO 8601 date or time', field), field);
    END IF;
    RETURN value::timestamptz;
EXCEPTION WHEN datetime_field_overflow OR invalid_datetime_format THEN
    PERFORM envoisms.raise_error('VALIDATION_ERROR', format('%s must be an ISO 8601 date or time', field), field);
END
$$;

-- ---- src/sql/20_accounts.sql
-- 20_accounts.sql — accounts, balances and the ledger, API keys (operator side).
--
-- Locking and money: see the design note atop 00_schema.sql. Debits take one
-- bucket with SKIP LOCKED (never wait behind another sender's commit); the
-- slow path locks every bucket of the account in bucket order (so two slow
-- paths cannot deadlock), checks the true total and rebalances. A bucket can
-- never go negative (CHECK), so neither can the balance, under any
-- concurrency.

-- Number of balance buckets per account (rows made at account creation).
CREATE FUNCTION envoisms.balance_bucket_count() RETURNS int
LANGUAGE sql IMMUTABLE PARALLEL SAFE RETURN 32;

-- Create an account and its balance buckets; an opening balance is a top-up.
CREATE FUNCTION envoisms.account_create(name text, balance_mad numeric DEFAULT 0,
                                        plan text DEFAULT 'starter',
                                        channels text[] DEFAULT '{sms,whatsapp}')
RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    id text := envoisms.new_id('acc');
BEGIN
    IF balance_mad IS NULL OR balance_mad < 0 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'balance_mad must be zero or more', 'balance_mad');
    END IF;
    INSERT INTO envoisms.accounts (account_id, name, plan, channels)
    VALUES (id, account_create.name, account_create.plan, account_create.channels);
    INSERT INTO envoisms.balance_buckets (account_id, bucket)
    SELECT id, b FROM generate_series(0, envoisms.balance_bucket_count() - 1) b;
    IF balance_mad > 0 THEN
        PERFORM envoisms.account_topup(id, balance_mad, 'opening balance');
    END IF;
    RETURN id;
END
$$;

-- The balance: the sum of the buckets.
CREATE FUNCTION envoisms.account_balance(account_id text) RETURNS numeric
LANGUAGE sql STABLE
RETURN (SELECT sum(b.balance_mad) FROM envoisms.balance_buckets b WHERE b.account_id = account_balance.account_id);

-- Lock every bucket, add `delta` (may be negative) to the total and spread the
-- result so that the fast path finds money: at most every bucket, at least one,
-- each holding at least ~16 of the smallest charges. Returns the new total.
CREATE FUNCTION envoisms.balance_rebalance(account_id text, delta numeric)
RETURNS numeric
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    total numeric;
    n int;
    used int;
    share numeric;
BEGIN
    PERFORM 1 FROM envoisms.balance_buckets b
     WHERE b.account_id = balance_rebalance.account_id ORDER BY b.bucket FOR UPDATE;
    SELECT sum(b.balance_mad), count(*) INTO total, n
      FROM envoisms.balance_buckets b WHERE b.account_id = balance_rebalance.account_id;
    IF n = 0 THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'account not found', 'account_id');
    END IF;
    total := total + delta;
    IF total < 0 THEN
        RETURN total;                   -- the caller raises; nothing was changed
    END IF;
    used := greatest(1, least(n, floor(total / (16 * 0.13))::int));
    share := trunc(total / used, 4);
    UPDATE envoisms.balance_buckets b
       SET balance_mad = CASE WHEN b.bucket = 0 THEN total - share * (used - 1)
                              WHEN b.bucket < used THEN share
                              ELSE 0 END
     WHERE b.account_id = balance_rebalance.account_id;
    RETURN total;
END
$$;

-- Take `amount` from the account's balance or raise INSUFFICIENT_BALANCE.
-- The debit is recorded by the caller (the message row's charged_mad, or a
-- ledger 'debit' row): this function only moves bucket money.
CREATE FUNCTION envoisms.balance_debit(account_id text, amount numeric)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    n int := envoisms.balance_bucket_count();
    home int := pg_backend_pid() % n;
    taken int;
BEGIN
    IF amount <= 0 THEN
        RETURN;
    END IF;
    -- 1. this backend's home bucket, if free and funded
    UPDATE envoisms.balance_buckets b SET balance_mad = b.balance_mad - amount
     WHERE b.account_id = balance_debit.account_id AND b.bucket = home
       AND b.ctid = (SELECT c.ctid FROM envoisms.balance_buckets c
                      WHERE c.account_id = balance_debit.account_id AND c.bucket = home
                        AND c.balance_mad >= amount
                      FOR UPDATE SKIP LOCKED)
    RETURNING b.bucket INTO taken;
    IF taken IS NOT NULL THEN
        RETURN;
    END IF;
    -- 2. any other funded bucket nobody holds, starting after the home one
    UPDATE envoisms.balance_buckets b SET balance_mad = b.balance_mad - amount
     WHERE b.account_id = balance_debit.account_id
       AND b.bucket = (SELECT c.bucket FROM envoisms.balance_buckets c
                        WHERE c.account_id = balance_debit.account_id AND c.balance_mad >= amount
                        ORDER BY (c.bucket - home + n) % n
                        LIMIT 1 FOR UPDATE SKIP LOCKED)
    RETURNING b.bucket INTO taken;
    IF taken IS NOT NULL THEN
        RETURN;
    END IF;
    -- 3. slow path: wait for every bucket, see the true total, rebalance
    IF envoisms.balance_rebalance(account_id, -amount) < 0 THEN
        PERFORM envoisms.raise_error('INSUFFICIENT_BALANCE',
            format('insufficient balance: %s MAD needed, %s MAD available',
                   trim_scale(amount), trim_scale(coalesce(envoisms.account_balance(account_id), 0))));
    END IF;
END
$$;

-- Give money back to one bucket (waiting for it if needed).
CREATE FUNCTION envoisms.balance_credit(account_id text, amount numeric)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    UPDATE envoisms.balance_buckets b SET balance_mad = b.balance_mad + amount
     WHERE b.account_id = balance_credit.account_id
       AND b.bucket = pg_backend_pid() % envoisms.balance_bucket_count();
    IF NOT FOUND THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'account not found', 'account_id');
    END IF;
END
$$;

-- Add money to an account (a ledger 'topup'); returns the new balance.
CREATE FUNCTION envoisms.account_topup(account_id text, amount_mad numeric, reference text DEFAULT NULL)
RETURNS numeric
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    total numeric;
BEGIN
    IF amount_mad IS NULL OR amount_mad <= 0 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'amount_mad must be greater than zero', 'amount_mad');
    END IF;
    IF amount_mad <> round(amount_mad, 4) THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'amount_mad has at most 4 decimals', 'amount_mad');
    END IF;
    total := envoisms.balance_rebalance(account_id, amount_mad);
    INSERT INTO envoisms.ledger (account_id, kind, amount_mad, reference)
    VALUES (account_topup.account_id, 'topup', amount_mad, account_topup.reference);
    RETURN total;
END
$$;

-- Refund what a message was charged (once, ever); returns the amount refunded
-- (0 when there was nothing to refund or it was refunded already).
CREATE FUNCTION envoisms.message_refund(account_id text, message_id text, reason text DEFAULT NULL)
RETURNS numeric
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    due numeric;
BEGIN
    UPDATE envoisms.messages m SET refunded_mad = m.charged_mad, updated_at = now()
     WHERE m.account_id = message_refund.account_id AND m.message_id = message_refund.message_id
       AND m.refunded_mad = 0 AND m.charged_mad > 0
    RETURNING m.charged_mad INTO due;
    IF due IS NULL THEN
        RETURN 0;
    END IF;
    INSERT INTO envoisms.ledger (account_id, kind, amount_mad, message_id, reference)
    VALUES (message_refund.account_id, 'refund', due, message_refund.message_id, left(reason, 200));
    PERFORM envoisms.balance_credit(account_id, due);
    RETURN due;
END
$$;

-- Prove the books: the buckets hold exactly what the ledger and the
-- messages explain. One row per account (or the given one).
CREATE FUNCTION envoisms.balance_check(account_id text DEFAULT NULL)
RETURNS TABLE (account_id text, balance_mad numeric, explained_mad numeric, ok boolean)
LANGUAGE sql STABLE AS $$
    WITH b AS (SELECT bb.account_id, sum(bb.balance_mad) AS s FROM envoisms.balance_buckets bb
                WHERE balance_check.account_id IS NULL OR bb.account_id = balance_check.account_id
                GROUP BY 1),
         l AS (SELECT le.account_id, sum(le.amount_mad) AS s FROM envoisms.ledger le
                WHERE balance_check.account_id IS NULL OR le.account_id = balance_check.account_id
                GROUP BY 1),
         m AS (SELECT me.account_id, sum(me.charged_mad) AS s FROM envoisms.messages me
                WHERE balance_check.account_id IS NULL OR me.account_id = balance_check.account_id
                GROUP BY 1)
    SELECT b.account_id, b.s, coalesce(l.s, 0) - coalesce(m.s, 0), b.s = coalesce(l.s, 0) - coalesce(m.s, 0)
      FROM b LEFT JOIN l USING (account_id) LEFT JOIN m USING (account_id)
     ORDER BY 1
$$;

-- The contract's permission names.
CREATE FUNCTION envoisms.api_permissions() RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN ARRAY['send', 'verify', 'status', 'balance', 'contacts', 'campaigns', 'webhooks',
             'billing', 'analytics', 'api_keys', 'optouts'];

-- Create an API key; returns the contract's POST /v1/api-keys response with
-- the full key (shown once: only its SHA-256 is stored). NULL permissions =
-- all; the operator may set any rate limit or NULL (unlimited).
CREATE FUNCTION envoisms.api_key_create(account_id text, name text DEFAULT 'API key', live boolean DEFAULT true,
                                        permissions text[] DEFAULT NULL, ip_whitelist text[] DEFAULT NULL,
                                        rate_limit int DEFAULT 100)
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    prefix text := CASE WHEN live THEN 'env_live' ELSE 'env_test' END;
    key text := prefix || '_' || envoisms.random_bytes_hex(24);
    id text := envoisms.new_id('key');
    nets cidr[];
    bad text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM envoisms.accounts a WHERE a.account_id = api_key_create.account_id) THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'account not found', 'account_id');
    END IF;
    IF name IS NULL OR length(name) NOT BETWEEN 1 AND 100 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'name must be 1 to 100 characters', 'name');
    END IF;
    SELECT p INTO bad FROM unnest(permissions) p WHERE p IS NULL OR NOT p = ANY (envoisms.api_permissions()) LIMIT 1;
    IF FOUND THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR',
            format('unknown permission "%s"; allowed: %s', bad, array_to_string(envoisms.api_permissions(), ', ')),
            'permissions');
    END IF;
    nets := envoisms.parse_ip_list(ip_whitelist, 'ip_whitelist');
    IF rate_limit IS NOT NULL AND rate_limit < 1 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'rate_limit must be positive', 'rate_limit');
    END IF;
    INSERT INTO envoisms.api_keys (account_id, api_key_id, name, key_prefix, key_hash, key_hint,
                                   permissions, ip_whitelist, rate_limit)
    VALUES (api_key_create.account_id, id, api_key_create.name, prefix, envoisms.sha256_hex(key), right(key, 4),
            (SELECT array_agg(DISTINCT p ORDER BY p) FROM unnest(permissions) p), nets, api_key_create.rate_limit);
    RETURN jsonb_build_object(
        'id', id,
        'name', api_key_create.name,
        'key_prefix', prefix,
        'api_key', key,
        'permissions', to_jsonb(coalesce(permissions, envoisms.api_permissions())),
        'ip_whitelist', to_jsonb(coalesce(ip_whitelist, '{}')),
        'rate_limit', api_key_create.rate_limit,
        'warning', 'The full API key is shown once. Store it securely.');
END
$$;

-- Parse a list of IPs or CIDRs (text) or raise VALIDATION_ERROR naming the field.
CREATE FUNCTION envoisms.parse_ip_list(entries text[], field text) RETURNS cidr[]
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog AS $$
DECLARE
    e text;
    result cidr[] := '{}';
BEGIN
    IF entries IS NULL THEN
        RETURN NULL;
    END IF;
    IF cardinality(entries) > 100 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', format('%s has at most 100 entries', field), field);
    END IF;
    FOREACH e IN ARRAY entries LOOP
        BEGIN
            IF e IS NULL OR e !~ '^[0-9a-fA-F:.]+(/[0-9]{1,3})?$' THEN
                RAISE invalid_text_representation;
            END IF;
            result := result || e::inet::cidr;
        EXCEPTION WHEN invalid_text_representation OR invalid_binary_representation THEN
            PERFORM envoisms.raise_error('VALIDATION_ERROR',
                format('%s entries must be IP addresses or CIDR ranges, got "%s"', field, left(e, 64)), field);
        END;
    END LOOP;
    RETURN result;
END
$$;

-- ---- src/sql/30_messages.sql
-- 30_messages.sql — sending messages (single and bulk), reading them back,
-- and what every status change sets in motion (events, webhooks, NOTIFY).
--
-- A send is validation, one debit of a balance bucket, and one insert: the
-- message row is the debit's ledger entry (charged_mad) and the 'queued'
-- event is implied by the row. Sends commit with the caller's transaction:
-- a rollback leaves no message and no debit. Bulk validates every entry
-- first, debits the whole batch once, then inserts all rows in one statement;
-- any bad entry or a short balance rejects the batch and writes nothing.

-- Validate a sender id: alphanumeric up to 11 characters or a number up to 15 digits.
CREATE FUNCTION envoisms.check_sender_id(sender text) RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog AS $$
BEGIN
    IF sender IS NULL THEN
        RETURN 'ENVOISMS';
    END IF;
    IF sender !~ '^(\+?[0-9]{3,15}|[A-Za-z0-9][A-Za-z0-9 ._&-]{0,10})$' OR sender ~ '^[0-9 ._&-]+$' AND sender !~ '^\+?[0-9]{3,15}$' THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR',
            'from must be an alphanumeric sender id of 1 to 11 characters (letters, digits, space . _ & -) or a number of 3 to 15 digits', 'from');
    END IF;
    RETURN sender;
END
$$;

-- Validate WhatsApp buttons: at most 3 objects {type, text, value}, type
-- copy | url | call; text 1..25 characters; value the code to copy, the
-- https URL, or the E.164 number to call (also accepted as code/url/phone_number);
-- buttons only on the whatsapp channel. Shared by message_send and campaign_create.
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
        IF label IS NULL OR length(label) NOT BETWEEN 1 AND 25 THEN
            PERFORM envoisms.raise_error('VALIDATION_ERROR', format('buttons[%s].text must be 1 to 25 characters', i - 1), 'buttons');
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
    RETURN result;
END
$$;

-- Unit prices (MAD, EUR) of a channel for an account: its own row, else the
-- default ('*'). A set-returning SQL function so that the planner inlines it
-- into the caller's query: one index scan reads the (at most four) rows.
CREATE FUNCTION envoisms.channel_prices(account_id text, channel text)
RETURNS TABLE (mad numeric, eur numeric)
LANGUAGE sql STABLE ROWS 1 AS $$
    SELECT coalesce(max(p.unit_price) FILTER (WHERE p.currency = 'MAD' AND p.account_id <> '*'),
                    max(p.unit_price) FILTER (WHERE p.currency = 'MAD' AND p.account_id = '*')),
           coalesce(max(p.unit_price) FILTER (WHERE p.currency = 'EUR' AND p.account_id <> '*'),
                    max(p.unit_price) FILTER (WHERE p.currency = 'EUR' AND p.account_id = '*'))
      FROM envoisms.prices p
     WHERE p.account_id IN ($1, '*') AND p.channel = $2
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
-- return the channel's unit prices for it, in one statement (hot path).
CREATE FUNCTION envoisms.check_account_channel(account_id text, channel text, OUT mad numeric, OUT eur numeric)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    acc_status text;
    acc_channels text[];
BEGIN
    IF channel IS NULL OR channel NOT IN ('sms', 'whatsapp') THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'channel must be "sms" or "whatsapp"', 'channel');
    END IF;
    SELECT a.status, a.channels, p.mad, p.eur
      INTO acc_status, acc_channels, mad, eur
      FROM envoisms.accounts a, envoisms.channel_prices(a.account_id, check_account_channel.channel) p
     WHERE a.account_id = check_account_channel.account_id;
    IF NOT FOUND THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'account not found', 'account_id');
    ELSIF acc_status <> 'active' THEN
        PERFORM envoisms.raise_error('FORBIDDEN', format('the account is %s', acc_status));
    ELSIF NOT channel = ANY (acc_channels) THEN
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
    acc_status text;
    acc_channels text[];
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
    SELECT a.status, a.channels, p.mad, envoisms.sms_encoding(m.body), n.units, p.mad * n.units, p.eur * n.units,
           NOT skip_opt_out AND EXISTS (SELECT 1 FROM envoisms.optouts o
                                         WHERE o.account_id = a.account_id AND o.phone = e164)
      INTO acc_status, acc_channels, unit_mad, enc, n_segments, cost_mad, cost_eur, opted_out
      FROM envoisms.accounts a,
           LATERAL (SELECT envoisms.unit_price(a.account_id, message_send.channel, 'MAD') AS mad,
                           envoisms.unit_price(a.account_id, message_send.channel, 'EUR') AS eur) p,
           LATERAL (SELECT CASE WHEN length(message) <= 1600 THEN message END AS body) m,
           LATERAL (SELECT CASE WHEN message_send.channel = 'whatsapp' THEN 1
                                ELSE envoisms.sms_segment_count(m.body) END AS units) n
     WHERE a.account_id = message_send.account_id;
    -- one test for the common case; the checks below raise the precise error, in order
    IF acc_status IS DISTINCT FROM 'active' OR NOT channel = ANY (acc_channels) OR unit_mad IS NULL
       OR e164 IS NULL OR left(btrim("to"), 1) <> '+' OR message IS NULL OR length(message) NOT BETWEEN 1 AND 1600 THEN
        PERFORM envoisms.check_account_channel(account_id, channel);
        PERFORM envoisms.check_phone("to");
        PERFORM envoisms.check_body(message);
    END IF;
    sender := coalesce("from", 'ENVOISMS');
    IF sender <> 'ENVOISMS' THEN
        sender := envoisms.check_sender_id(sender);
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

-- The "messages" array of a bulk reply, [{"id", "to", "status": "queued"}, ...],
-- built in C (jsonb_agg spent a fifth of a 10,000-message send on it).
CREATE FUNCTION envoisms.message_bulk_items(ids text[], numbers text[]) RETURNS jsonb
AS 'MODULE_PATHNAME', 'message_bulk_items' LANGUAGE C STRICT IMMUTABLE;

-- Send up to 10,000 messages at once; returns the contract's
-- POST /v1/messages/bulk response. All or nothing: one bad entry, or a
-- balance short of the whole batch, rejects it and nothing is written.
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
                        WHEN v.opted_out THEN 'OPTED_OUT' END AS error,
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
                        ELSE 'the recipient opted out' END AS detail
              FROM (SELECT w.*, w.e164 IS NOT NULL AND w.e164 IN (   -- hashed: one read of the account's opt-outs
                               SELECT o.phone FROM envoisms.optouts o
                                WHERE o.account_id = message_send_bulk.account_id) AS opted_out
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
        'batch_id', batch, 'total', total, 'channel', channel,
        'estimated_cost', jsonb_build_object('eur', envoisms.money(cost_eur), 'mad', envoisms.money(cost_mad)),
        'messages', envoisms.message_bulk_items(ids, numbers));
END
$$;

-- The contract's GET /v1/messages/:id shape (with its delivery log).
-- (PL/pgSQL so its plans are cached: the status trigger renders it for webhooks.)
CREATE FUNCTION envoisms.message_json(m envoisms.messages, with_events boolean DEFAULT true) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
BEGIN
    RETURN jsonb_build_object(
        'id', m.message_id, 'account_id', m.account_id, 'api_key_id', m.api_key_id,
        'campaign_id', m.campaign_id, 'batch_id', m.batch_id, 'direction', m.direction,
        'to', m.to_number, 'channel', m.channel, 'cascade', m.cascade,
        'body', m.body, 'sender_id', m.sender_id,
        'unicode', CASE WHEN m.encoding = 'ucs2' THEN 1 ELSE 0 END, 'segments', m.segments,
        'status', m.status, 'cost_eur', envoisms.money(m.cost_eur), 'cost_mad', envoisms.money(m.cost_mad),
        'metadata', CASE WHEN m.metadata IS NULL THEN NULL ELSE to_jsonb(m.metadata::text) END,
        'sandbox', m.sandbox, 'error_code', m.error_code, 'error_message', m.error_message,
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

-- A page of an account's messages, newest first, with the contract's filters.
CREATE FUNCTION envoisms.message_list(account_id text, "limit" int DEFAULT 50, "offset" int DEFAULT 0,
                                      status text DEFAULT NULL, channel text DEFAULT NULL,
                                      from_date timestamptz DEFAULT NULL, to_date timestamptz DEFAULT NULL,
                                      direction text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    rows jsonb;
    n bigint;
BEGIN
    IF "limit" IS NULL OR "limit" NOT BETWEEN 1 AND 200 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'limit must be an integer from 1 to 200', 'limit');
    END IF;
    IF "offset" IS NULL OR "offset" < 0 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'offset must be an integer of 0 or more', 'offset');
    END IF;
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
    SELECT coalesce(jsonb_agg(jsonb_build_object(
               'id', m.message_id, 'to', m.to_number, 'channel', m.channel, 'body', m.body,
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
             ORDER BY x.message_id DESC
             LIMIT "limit" OFFSET "offset") m;
    SELECT count(*) INTO n FROM envoisms.messages x
     WHERE x.account_id = message_list.account_id
       AND (message_list.status IS NULL OR x.status = message_list.status)
       AND (message_list.channel IS NULL OR x.channel = message_list.channel)
       AND (message_list.direction IS NULL OR x.direction = message_list.direction)
       AND (from_date IS NULL OR x.created_at >= from_date)
       AND (to_date IS NULL OR x.created_at <= to_date);
    RETURN jsonb_build_object('data', rows, 'limit', "limit", 'offset', "offset", 'total', n);
END
$$;

-- Usage summary: totals, delivery rate and what was billed, over live
-- messages plus the daily rollups kept past the retention purge.
CREATE FUNCTION envoisms.analytics_summary(account_id text, from_date timestamptz DEFAULT NULL,
                                           to_date timestamptz DEFAULT NULL)
RETURNS jsonb
LANGUAGE sql STABLE AS $$
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
      FROM live, old
$$;

-- ---- src/sql/35_events.sql
-- 35_events.sql — what a message status change sets in motion, in the same
-- transaction as the change: a delivery-log event, webhook deliveries for
-- every active webhook subscribed to the event, and a NOTIFY on the channel
-- 'envoisms_message_status' (payload: {"id","account_id","status"}) so an
-- application can LISTEN for its messages. Also the opt-out list the send
-- path checks.

CREATE TABLE envoisms.optouts (
    account_id  text NOT NULL REFERENCES envoisms.accounts,
    phone       text NOT NULL CHECK (phone ~ '^\+[1-9][0-9]{6,14}$'),
    source      text NOT NULL DEFAULT 'api' CHECK (source IN ('api', 'inbound', 'import', 'operator')),
    reason      text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, phone)
);

-- Refuse a recipient who opted out (OPTED_OUT). OTP sends skip this check:
-- a one-time code is requested by the recipient themself.
CREATE FUNCTION envoisms.check_not_opted_out(account_id text, phone text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM envoisms.optouts o
                WHERE o.account_id = check_not_opted_out.account_id AND o.phone = check_not_opted_out.phone) THEN
        PERFORM envoisms.raise_error('OPTED_OUT',
            format('%s opted out of messages from this account', phone), 'to');
    END IF;
END
$$;

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
    n int;
BEGIN
    -- most status changes have no subscriber: do not render a payload for nobody
    IF NOT EXISTS (SELECT 1 FROM envoisms.webhooks w
                    WHERE w.account_id = webhook_enqueue.account_id AND w.deleted_at IS NULL
                      AND (only_webhook IS NOT NULL AND w.webhook_id = only_webhook
                           OR only_webhook IS NULL AND w.active AND event_type = ANY (w.events))) THEN
        RETURN 0;
    END IF;
    payload := jsonb_build_object('id', event_id, 'type', event_type,
                                  'created_at', envoisms.iso_time(now()), 'data', data)::text;
    INSERT INTO envoisms.webhook_deliveries (account_id, webhook_id, event_id, event_type, payload)
    SELECT w.account_id, w.webhook_id, event_id, event_type, payload
      FROM envoisms.webhooks w
     WHERE w.account_id = webhook_enqueue.account_id AND w.deleted_at IS NULL
       AND (only_webhook IS NOT NULL AND w.webhook_id = only_webhook
            OR only_webhook IS NULL AND w.active AND event_type = ANY (w.events));
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM envoisms.wake_webhooks();
    END IF;
    RETURN n;
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

CREATE FUNCTION envoisms.messages_status_changed() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    INSERT INTO envoisms.message_events (account_id, message_id, status, detail)
    VALUES (NEW.account_id, NEW.message_id, NEW.status,
            jsonb_strip_nulls(jsonb_build_object('error_code', NEW.error_code, 'error_message', NEW.error_message,
                                                 'carrier_id', NEW.carrier_id)));
    IF NEW.status IN ('sent', 'delivered', 'failed', 'expired', 'received')
       AND EXISTS (SELECT 1 FROM envoisms.webhooks w
                    WHERE w.account_id = NEW.account_id AND w.deleted_at IS NULL AND w.active
                      AND 'message.' || NEW.status = ANY (w.events)) THEN
        PERFORM envoisms.webhook_enqueue(NEW.account_id,
                                         'message.' || NEW.status, envoisms.message_event_data(NEW));
    END IF;
    PERFORM pg_notify('envoisms_message_status',
                      json_build_object('id', NEW.message_id, 'account_id', NEW.account_id,
                                        'status', NEW.status)::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER messages_status_changed
    AFTER UPDATE OF status ON envoisms.messages
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION envoisms.messages_status_changed();

-- Inbound messages are born 'received': log and announce them too.
CREATE TRIGGER messages_received
    AFTER INSERT ON envoisms.messages
    FOR EACH ROW WHEN (NEW.direction = 'inbound')
    EXECUTE FUNCTION envoisms.messages_status_changed();

SELECT pg_catalog.pg_extension_config_dump('envoisms.optouts', '');

-- ---- src/sql/36_api_types.sql
-- 36_api_types.sql — the types every API handler is declared with and the
-- route table areas insert into. They come before the area files (40_* …
-- 75_*) because a handler's signature, handler(envoisms.api_request) RETURNS
-- envoisms.api_reply, needs the types to exist when the area file is loaded,
-- and an area registers its routes by inserting into api_endpoints there.
-- The dispatcher that uses them is envoisms.api() in 80_api.sql.

CREATE TYPE envoisms.api_request AS (
    method      text,
    path        text,
    template    text,       -- the matched route, e.g. /v1/messages/:id
    id          text,       -- the :id segment, URL-decoded
    query       jsonb,      -- {"limit": "50", ...}
    body        jsonb,      -- parsed request body ({} when empty)
    raw_body    text,
    headers     jsonb,      -- lower-cased header names
    client_ip   inet,
    account_id  text,
    api_key_id  text,
    sandbox     boolean,    -- an env_test_ key
    permissions text[]      -- NULL = all
);

CREATE TYPE envoisms.api_reply AS (
    status  int,
    headers jsonb,
    body    jsonb
);

CREATE TABLE envoisms.api_endpoints (
    method      text NOT NULL CHECK (method IN ('GET', 'POST', 'PATCH', 'PUT', 'DELETE')),
    template    text NOT NULL CHECK (template ~ '^/v1/[a-z-]+(/[a-z:-]+)*$'),
    handler     regprocedure NOT NULL,
    permission  text NOT NULL,     -- one of envoisms.api_permissions()
    -- A public route is called without an API key (and without its rate
    -- limit): carriers' delivery reports, which the handler authenticates.
    public      boolean NOT NULL DEFAULT false,
    PRIMARY KEY (method, template),
    CHECK (permission = ANY (envoisms.api_permissions()))
);


-- ---- src/sql/40_verify.sql
-- 40_verify.sql — verification (OTP): POST /v1/verify/send, POST /v1/verify/check,
-- GET /v1/verify/:id.
--
-- Security design:
--   * the code comes from envoisms.random_digits (OpenSSL CSPRNG, rejection
--     sampling: uniform digits, no modulo bias);
--   * only HMAC-SHA256(per-install secret, session_id ':' code) is stored; the
--     secret is a one-row table readable by the extension owner only, used
--     through one SECURITY DEFINER function;
--   * the check compares HMACs with envoisms.secure_equals (constant time);
--   * a session is single use; after 5 wrong codes it is dead, even for the
--     right code (429 TOO_MANY_ATTEMPTS); an expired one answers 410 EXPIRED;
--   * a wrong code, an unknown session (or another account's) and an already
--     used session all get the same 200 {"verified": false} answer;
--   * sends are capped per number (5 per 10 minutes per account) and per
--     number block (E.164 without its last 4 digits: 10,000 numbers) per day,
--     to blunt SMS pumping. Both caps are per account in verify_limits.
--
-- Locking: verify_check changes the session with conditional UPDATEs (right
-- code: sent → verified; wrong code: attempts + 1) whose conditions are
-- re-checked on the latest row version when another check holds it, so
-- concurrent checks of one session serialise on the row: exactly one right
-- code verifies, and wrong attempts can never pass the cap. verify_send takes a
-- transaction advisory lock on (account, number block) while it counts and
-- inserts, so concurrent sends cannot overshoot either cap.
--
-- The OTP message is a real outbound message (message_send: priced, debited,
-- refunded if it finally fails). OTPs are exempt from opt-outs: the
-- recipient asked for the code.

CREATE TABLE envoisms.verify_secret (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    secret     text NOT NULL CHECK (secret ~ '^[0-9a-f]{64}$')
);
REVOKE ALL ON envoisms.verify_secret FROM PUBLIC;
-- pg_dump keeps the secret: sessions stay checkable after a restore. It is
-- made on first use, not by this script, so a restore does not collide with
-- a fresh one.
SELECT pg_catalog.pg_extension_config_dump('envoisms.verify_secret', '');

-- Anti-abuse limits; account_id '*' holds the defaults, a row for an account overrides.
CREATE TABLE envoisms.verify_limits (
    account_id            text PRIMARY KEY DEFAULT '*',
    sends_per_number      int NOT NULL DEFAULT 5 CHECK (sends_per_number > 0),     -- per 10 minutes
    sends_per_block_daily int NOT NULL DEFAULT 200 CHECK (sends_per_block_daily > 0),
    max_check_attempts    int NOT NULL DEFAULT 5 CHECK (max_check_attempts BETWEEN 1 AND 10)
);
INSERT INTO envoisms.verify_limits (account_id) VALUES ('*');
SELECT pg_catalog.pg_extension_config_dump('envoisms.verify_limits', 'WHERE account_id <> ''*''');

-- No foreign key to accounts, as for messages (00_schema.sql): the check
-- would KEY SHARE-lock the account row on every OTP sent; verify_send has
-- already checked the account (check_account_channel), which is never deleted.
CREATE TABLE envoisms.verify_sessions (
    account_id   text NOT NULL,
    session_id   text NOT NULL CHECK (session_id ~ '^vrf_[0-9a-f]{28}$'),
    api_key_id   text,
    to_number    text NOT NULL,
    number_block text NOT NULL,                 -- to_number without its last 4 digits
    channel      text NOT NULL CHECK (channel IN ('sms', 'whatsapp')),
    message_id   text NOT NULL,
    code_hmac    text NOT NULL CHECK (code_hmac ~ '^[0-9a-f]{64}$'),
    status       text NOT NULL DEFAULT 'sent' CHECK (status IN ('sent', 'verified', 'failed')),
    attempts     int  NOT NULL DEFAULT 0 CHECK (attempts BETWEEN 0 AND 10),
    max_attempts int  NOT NULL DEFAULT 5 CHECK (max_attempts BETWEEN 1 AND 10),   -- the account's limit at send time
    sandbox      boolean NOT NULL DEFAULT false,
    expires_at   timestamptz NOT NULL,
    verified_at  timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, session_id),
    CHECK ((status = 'verified') = (verified_at IS NOT NULL)),
    CHECK (attempts <= max_attempts)
) WITH (fillfactor = 80);   -- room for HOT updates: every session is updated by its check
CREATE INDEX verify_sessions_block ON envoisms.verify_sessions (account_id, number_block, created_at);
SELECT pg_catalog.pg_extension_config_dump('envoisms.verify_sessions', '');

-- HMAC of a code for a session, keyed by the per-install secret (the only
-- reader of verify_secret).
-- (PL/pgSQL rather than SQL: the plan of the secret's lookup is cached per session.)
CREATE FUNCTION envoisms.verify_code_hmac(session_id text, code text) RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE
    key text;
BEGIN
    SELECT s.secret INTO key FROM envoisms.verify_secret s;
    IF key IS NULL THEN
        INSERT INTO envoisms.verify_secret (secret) VALUES (envoisms.random_bytes_hex(32))
            ON CONFLICT (singleton) DO NOTHING;
        SELECT s.secret INTO key FROM envoisms.verify_secret s;
    END IF;
    RETURN envoisms.hmac_sha256_hex(key, session_id || ':' || code);
END
$$;

-- The limits that apply to an account (PL/pgSQL: its plan is cached).
CREATE FUNCTION envoisms.verify_account_limits(account_id text) RETURNS envoisms.verify_limits
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    lim envoisms.verify_limits;
BEGIN
    SELECT l.* INTO lim FROM envoisms.verify_limits l
     WHERE l.account_id IN (verify_account_limits.account_id, '*')
     ORDER BY l.account_id = '*' LIMIT 1;
    RETURN lim;
END
$$;

-- The contract's GET /v1/verify/:id shape (status: sent, verified, expired, failed).
CREATE FUNCTION envoisms.verify_json(s envoisms.verify_sessions) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', s.session_id, 'to', s.to_number, 'channel', s.channel, 'message_id', s.message_id,
        'status', CASE WHEN s.status = 'sent' AND s.expires_at <= now() THEN 'expired' ELSE s.status END,
        'expires_at', envoisms.iso_time(s.expires_at), 'verified_at', envoisms.iso_time(s.verified_at),
        'created_at', envoisms.iso_time(s.created_at))
$$;

-- An OTP message carries its code in clear in its body, and only while a
-- carrier may still need it (retries, a WhatsApp cascade falling back to
-- SMS): once the message is final (delivered, failed, expired) the body is
-- purged, as retention later does for every message, so that the code is
-- then stored nowhere but as the session's HMAC.
CREATE FUNCTION envoisms.messages_purge_otp_body() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    NEW.body := NULL;
    RETURN NEW;
END
$$;

CREATE TRIGGER messages_purge_otp_body
    BEFORE UPDATE OF status ON envoisms.messages
    FOR EACH ROW
    WHEN (NEW.status IN ('delivered', 'failed', 'expired') AND NEW.body IS NOT NULL
          AND NEW.metadata->>'purpose' = 'otp' AND NEW.metadata ? 'verify_session_id')
    EXECUTE FUNCTION envoisms.messages_purge_otp_body();

-- Start a verification: send a fresh code to `to`; returns the contract's
-- POST /v1/verify/send response. Commits with the caller's transaction.
CREATE FUNCTION envoisms.verify_send(account_id text, "to" text, channel text DEFAULT 'sms',
                                     brand text DEFAULT 'EnvoiSMS', code_length int DEFAULT 6,
                                     expiry int DEFAULT 600, template text DEFAULT NULL,
                                     otp_button_text text DEFAULT NULL, api_key_id text DEFAULT NULL,
                                     sandbox boolean DEFAULT false)
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    id text := envoisms.new_id('vrf');
    e164 text;
    block text;
    lim envoisms.verify_limits;
    code text;
    body text;
    msg jsonb;
    expires timestamptz;
    created timestamptz := now();
BEGIN
    channel := coalesce(channel, 'sms');
    brand := coalesce(brand, 'EnvoiSMS');
    code_length := coalesce(code_length, 6);
    expiry := coalesce(expiry, 600);
    e164 := envoisms.check_phone("to");
    PERFORM envoisms.check_account_channel(account_id, channel);
    IF code_length NOT BETWEEN 4 AND 8 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'code_length must be an integer from 4 to 8', 'code_length');
    END IF;
    IF expiry NOT BETWEEN 60 AND 1800 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'expiry must be an integer from 60 to 1800 (seconds)', 'expiry');
    END IF;
    IF length(btrim(brand)) = 0 OR length(brand) > 32 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'brand must be 1 to 32 characters', 'brand');
    END IF;
    IF template IS NOT NULL THEN
        IF strpos(template, '{{code}}') = 0 THEN
            PERFORM envoisms.raise_error('VALIDATION_ERROR', 'template must contain {{code}}', 'template');
        END IF;
        IF length(template) > 1000 THEN
            PERFORM envoisms.raise_error('VALIDATION_ERROR', 'template must be at most 1000 characters', 'template');
        END IF;
    END IF;
    IF otp_button_text IS NOT NULL AND length(btrim(otp_button_text)) NOT BETWEEN 1 AND 25 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'otp_button_text must be 1 to 25 characters', 'otp_button_text');
    END IF;

    -- anti-abuse caps, counted under a lock on the number block
    block := left(e164, length(e164) - 4);
    lim := envoisms.verify_account_limits(account_id);
    PERFORM pg_advisory_xact_lock(hashtextextended(account_id || '/' || block, 4040));
    IF (SELECT count(*) FROM envoisms.verify_sessions s
         WHERE s.account_id = verify_send.account_id AND s.number_block = block
           AND s.to_number = e164 AND s.created_at > now() - interval '10 minutes') >= lim.sends_per_number THEN
        PERFORM envoisms.raise_error('TOO_MANY_ATTEMPTS',
            format('at most %s verification codes per number every 10 minutes; wait before sending another',
                   lim.sends_per_number), 'to');
    END IF;
    IF (SELECT count(*) FROM envoisms.verify_sessions s
         WHERE s.account_id = verify_send.account_id AND s.number_block = block
           AND s.created_at > now() - interval '24 hours') >= lim.sends_per_block_daily THEN
        PERFORM envoisms.raise_error('TOO_MANY_ATTEMPTS',
            format('daily limit of %s verification codes to numbers starting %s reached (protection against SMS pumping)',
                   lim.sends_per_block_daily, block), 'to');
    END IF;

    code := envoisms.random_digits(code_length);
    body := replace(replace(coalesce(template, '{{brand}} : votre code de vérification est {{code}}. Il expire dans '
                                               || ceil(expiry / 60.0)::int || ' min.'),
                            '{{brand}}', brand), '{{code}}', code);
    msg := envoisms.message_send(account_id, e164, body, 'ENVOISMS', channel, false,
                                 jsonb_build_object('purpose', 'otp', 'verify_session_id', id),
                                 CASE WHEN channel = 'whatsapp' THEN jsonb_build_array(jsonb_build_object(
                                     'type', 'copy', 'text', coalesce(btrim(otp_button_text), 'Copier le code'),
                                     'value', code)) END,
                                 api_key_id, sandbox, NULL, true);
    expires := created + make_interval(secs => expiry);
    INSERT INTO envoisms.verify_sessions (account_id, session_id, api_key_id, to_number, number_block, channel,
                                          message_id, code_hmac, max_attempts, sandbox, expires_at, created_at)
    VALUES (account_id, id, api_key_id, e164, block, channel, msg->>'id',
            envoisms.verify_code_hmac(id, code), lim.max_check_attempts, sandbox, expires, created);
    RETURN jsonb_build_object('session_id', id, 'message_id', msg->>'id', 'to', e164, 'channel', channel,
                              'expires_at', envoisms.iso_time(expires), 'status', 'sent');
END
$$;

-- Check a code; returns the contract's POST /v1/verify/check response.
-- Right code: {"verified": true} once, and a verify.success webhook event.
-- Wrong code, unknown session or used session: {"verified": false} (200).
-- Expired: EXPIRED (410). Dead after too many wrong codes: TOO_MANY_ATTEMPTS (429).
CREATE FUNCTION envoisms.verify_check(account_id text, session_id text, code text)
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    s envoisms.verify_sessions;
    given text;
    failed jsonb;
BEGIN
    IF session_id IS NULL OR length(session_id) NOT BETWEEN 1 AND 64 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'session_id is required', 'session_id');
    END IF;
    IF code IS NULL OR length(btrim(code)) NOT BETWEEN 1 AND 32 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'code is required (the digits the user entered)', 'code');
    END IF;
    failed := jsonb_build_object('session_id', session_id, 'verified', false, 'verified_at', NULL);
    -- the HMAC is computed whatever happens next, so timing does not tell an unknown session
    given := envoisms.verify_code_hmac(session_id, btrim(code));

    -- the right code on a live session: verified (at most once: the condition
    -- is re-checked on the newest row version if another check got there first)
    UPDATE envoisms.verify_sessions x SET status = 'verified', verified_at = now()
     WHERE x.account_id = verify_check.account_id AND x.session_id = verify_check.session_id
       AND x.status = 'sent' AND x.attempts < x.max_attempts AND x.expires_at > now()
       AND envoisms.secure_equals(given, x.code_hmac)
    RETURNING * INTO s;
    IF FOUND THEN
        PERFORM envoisms.webhook_enqueue(s.account_id, 'verify.success', envoisms.verify_json(s));
        RETURN jsonb_build_object('session_id', s.session_id, 'verified', true,
                                  'verified_at', envoisms.iso_time(s.verified_at));
    END IF;
    -- a wrong code on a live session: one more attempt, the last one kills it
    UPDATE envoisms.verify_sessions x
       SET attempts = x.attempts + 1,
           status = CASE WHEN x.attempts + 1 >= x.max_attempts THEN 'failed' ELSE x.status END
     WHERE x.account_id = verify_check.account_id AND x.session_id = verify_check.session_id
       AND x.status = 'sent' AND x.attempts < x.max_attempts AND x.expires_at > now()
       AND NOT envoisms.secure_equals(given, x.code_hmac);
    IF FOUND THEN
        RETURN failed;
    END IF;
    -- not live: say why where the contract needs it
    SELECT * INTO s FROM envoisms.verify_sessions x
     WHERE x.account_id = verify_check.account_id AND x.session_id = verify_check.session_id;
    IF NOT FOUND OR s.status = 'verified' THEN
        RETURN failed;
    ELSIF s.status = 'failed' OR s.attempts >= s.max_attempts THEN
        PERFORM envoisms.raise_error('TOO_MANY_ATTEMPTS',
            format('too many wrong codes for this session (%s); send a new code', s.max_attempts), 'code');
    END IF;
    PERFORM envoisms.raise_error('EXPIRED', 'the verification session expired; send a new code', 'session_id');
    RETURN failed;      -- not reached
END
$$;

-- One verification session of an account, or NOT_FOUND.
CREATE FUNCTION envoisms.verify_get(account_id text, session_id text) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    s envoisms.verify_sessions;
BEGIN
    SELECT * INTO s FROM envoisms.verify_sessions x
     WHERE x.account_id = verify_get.account_id AND x.session_id = verify_get.session_id;
    IF NOT FOUND THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'verification session not found', 'id');
    END IF;
    RETURN envoisms.verify_json(s);
END
$$;

-- ---- HTTP handlers

CREATE FUNCTION envoisms.api_verify_send(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    b jsonb := req.body;
BEGIN
    IF jsonb_typeof(b->'to') NOT IN ('string', 'null') THEN
        PERFORM envoisms.raise_error('INVALID_PHONE', 'to must be E.164 format, for example +212612345678', 'to');
    END IF;
    RETURN envoisms.reply(201, envoisms.verify_send(
        req.account_id,
        envoisms.body_text(b, 'to'),
        coalesce(envoisms.body_text(b, 'channel'), 'sms'),
        coalesce(envoisms.body_text(b, 'brand'), 'EnvoiSMS'),
        envoisms.body_int(b, 'code_length', 6, 4, 8),
        envoisms.body_int(b, 'expiry', 600, 60, 1800),
        envoisms.body_text(b, 'template'),
        envoisms.body_text(b, 'otp_button_text'),
        req.api_key_id,
        req.sandbox));
END
$$;

CREATE FUNCTION envoisms.api_verify_check(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    code jsonb := req.body->'code';
BEGIN
    -- a code typed as a JSON number is accepted (leading zeros are the caller's problem)
    RETURN envoisms.reply(200, envoisms.verify_check(
        req.account_id,
        envoisms.body_text(req.body, 'session_id'),
        CASE WHEN jsonb_typeof(code) = 'number' THEN code::text ELSE envoisms.body_text(req.body, 'code') END));
END
$$;

CREATE FUNCTION envoisms.api_verify_get(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.reply(200, envoisms.verify_get(req.account_id, req.id));
END
$$;

INSERT INTO envoisms.api_endpoints (method, template, handler, permission) VALUES
    ('POST', '/v1/verify/send',  'envoisms.api_verify_send(envoisms.api_request)',  'verify'),
    ('POST', '/v1/verify/check', 'envoisms.api_verify_check(envoisms.api_request)', 'verify'),
    ('GET',  '/v1/verify/:id',   'envoisms.api_verify_get(envoisms.api_request)',   'verify');

-- ---- src/sql/45_lookup.sql
-- 45_lookup.sql — number lookup: POST /v1/verify/lookup.
--
-- Validity, formats, line type, region and location come from libphonenumber
-- (envoisms.phone_parse; its offline geocoder gives the location, so the
-- geocoding data files are not copied here). The Moroccan carrier comes from
-- envoisms.carrier_prefixes, seeded below from libphonenumber's carrier data
-- for +212 (Apache License 2.0, attribution kept below). The longest matching
-- prefix wins. The operator may add or change rows (source 'operator'); those
-- rows are kept by pg_dump. "Maroc Telecom" is shown as "Maroc Telecom (IAM)".
--
-- Real data wins over the contract's illustrative example: +212612345678 is
-- in the 212612 block, which libphonenumber assigns to Orange, so lookup
-- answers "Orange" for it where the contract's example says IAM.

CREATE TABLE envoisms.carrier_prefixes (
    prefix      text PRIMARY KEY CHECK (prefix ~ '^[1-9][0-9]{0,14}$'),   -- E.164 digits, no "+"
    carrier     text NOT NULL CHECK (length(carrier) BETWEEN 1 AND 100),
    source      text NOT NULL DEFAULT 'operator' CHECK (source IN ('libphonenumber', 'operator')),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
SELECT pg_catalog.pg_extension_config_dump('envoisms.carrier_prefixes', 'WHERE source = ''operator''');

-- The rows below are copied from libphonenumber-carrier-en-212.txt
-- (libphonenumber resources/carrier/en/212.txt), whose header follows.
--
--   # Copyright (C) 2013 The Libphonenumber Authors
--
--   # Licensed under the Apache License, Version 2.0 (the "License");
--   # you may not use this file except in compliance with the License.
--   # You may obtain a copy of the License at
--
--   # http://www.apache.org/licenses/LICENSE-2.0
--
--   # Unless required by applicable law or agreed to in writing, software
--   # distributed under the License is distributed on an "AS IS" BASIS,
--   # WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
--   # See the License for the specific language governing permissions and
--   # limitations under the License.
--
--   # Prefixes include those from http://en.wikipedia.org/wiki/+212 and
--   # http://www.telecomjahiz.com/Assistance/Liste-des-prefixes-des-operateurs-de-telephonie-Mobile-et-Fixe-au-Maroc.php
--   # and http://www.anrt.ma/sites/default/files/Blocs_de_numeros_par_operateur.pdf
--   # This last file refers to Méditel as Medi Telecom, Maroc Telecom as Itissalat
--   # Al-Maghrib and Inwi as WANA Corporate (its old name, according to wikipedia).
--
INSERT INTO envoisms.carrier_prefixes (prefix, carrier, source) VALUES
    ('21260', 'Inwi', 'libphonenumber'),
    ('21261', 'Maroc Telecom', 'libphonenumber'),
    ('212612', 'Orange', 'libphonenumber'),
    ('212614', 'Orange', 'libphonenumber'),
    ('212617', 'Orange', 'libphonenumber'),
    ('212619', 'Orange', 'libphonenumber'),
    ('212620', 'Orange', 'libphonenumber'),
    ('212621', 'Orange', 'libphonenumber'),
    ('212622', 'Maroc Telecom', 'libphonenumber'),
    ('212623', 'Maroc Telecom', 'libphonenumber'),
    ('212624', 'Maroc Telecom', 'libphonenumber'),
    ('212625', 'Orange', 'libphonenumber'),
    ('212626', 'Inwi', 'libphonenumber'),
    ('212627', 'Inwi', 'libphonenumber'),
    ('212628', 'Maroc Telecom', 'libphonenumber'),
    ('212629', 'Inwi', 'libphonenumber'),
    ('212630', 'Inwi', 'libphonenumber'),
    ('212631', 'Orange', 'libphonenumber'),
    ('212632', 'Orange', 'libphonenumber'),
    ('212633', 'Inwi', 'libphonenumber'),
    ('212634', 'Inwi', 'libphonenumber'),
    ('212635', 'Inwi', 'libphonenumber'),
    ('212636', 'Maroc Telecom', 'libphonenumber'),
    ('212637', 'Maroc Telecom', 'libphonenumber'),
    ('212638', 'Inwi', 'libphonenumber'),
    ('212639', 'Maroc Telecom', 'libphonenumber'),
    ('212640', 'Inwi', 'libphonenumber'),
    ('212641', 'Maroc Telecom', 'libphonenumber'),
    ('212642', 'Maroc Telecom', 'libphonenumber'),
    ('212643', 'Maroc Telecom', 'libphonenumber'),
    ('212644', 'Orange', 'libphonenumber'),
    ('212645', 'Orange', 'libphonenumber'),
    ('212646', 'Inwi', 'libphonenumber'),
    ('212647', 'Inwi', 'libphonenumber'),
    ('212648', 'Maroc Telecom', 'libphonenumber'),
    ('212649', 'Orange', 'libphonenumber'),
    ('21265', 'Maroc Telecom', 'libphonenumber'),
    ('212656', 'Orange', 'libphonenumber'),
    ('212657', 'Orange', 'libphonenumber'),
    ('212660', 'Orange', 'libphonenumber'),
    ('212661', 'Maroc Telecom', 'libphonenumber'),
    ('212662', 'Maroc Telecom', 'libphonenumber'),
    ('212663', 'Orange', 'libphonenumber'),
    ('212664', 'Orange', 'libphonenumber'),
    ('212665', 'Orange', 'libphonenumber'),
    ('212666', 'Maroc Telecom', 'libphonenumber'),
    ('212667', 'Maroc Telecom', 'libphonenumber'),
    ('212668', 'Maroc Telecom', 'libphonenumber'),
    ('212669', 'Orange', 'libphonenumber'),
    ('21267', 'Maroc Telecom', 'libphonenumber'),
    ('212674', 'Orange', 'libphonenumber'),
    ('212675', 'Orange', 'libphonenumber'),
    ('212679', 'Orange', 'libphonenumber'),
    ('212680', 'Inwi', 'libphonenumber'),
    ('212681', 'Inwi', 'libphonenumber'),
    ('212682', 'Maroc Telecom', 'libphonenumber'),
    ('212684', 'Orange', 'libphonenumber'),
    ('212687', 'Inwi', 'libphonenumber'),
    ('212688', 'Orange', 'libphonenumber'),
    ('212689', 'Maroc Telecom', 'libphonenumber'),
    ('212690', 'Inwi', 'libphonenumber'),
    ('212691', 'Orange', 'libphonenumber'),
    ('2126921', 'Al Hourria Telecom', 'libphonenumber'),
    ('2126922', 'Al Hourria Telecom', 'libphonenumber'),
    ('212693', 'Orange', 'libphonenumber'),
    ('212694', 'Orange', 'libphonenumber'),
    ('212695', 'Inwi', 'libphonenumber'),
    ('212696', 'Maroc Telecom', 'libphonenumber'),
    ('212697', 'Maroc Telecom', 'libphonenumber'),
    ('212698', 'Inwi', 'libphonenumber'),
    ('212699', 'Inwi', 'libphonenumber'),
    ('21270', 'Inwi', 'libphonenumber'),
    ('21271', 'Inwi', 'libphonenumber'),
    ('21272', 'Inwi', 'libphonenumber'),
    ('21275', 'Maroc Telecom', 'libphonenumber'),
    ('21276', 'Maroc Telecom', 'libphonenumber'),
    ('21277', 'Orange', 'libphonenumber'),
    ('21278', 'Orange', 'libphonenumber');

-- The carrier of an E.164 number: the longest matching prefix, with the
-- contract's display names (IAM is shown as "Maroc Telecom (IAM)"); NULL when unknown.
CREATE FUNCTION envoisms.carrier_of(e164 text) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE c.carrier WHEN 'Maroc Telecom' THEN 'Maroc Telecom (IAM)' ELSE c.carrier END
      FROM envoisms.carrier_prefixes c
     WHERE c.prefix = ANY (ARRAY(SELECT left(ltrim(e164, '+'), n) FROM generate_series(1, 15) n))
     ORDER BY length(c.prefix) DESC
     LIMIT 1
$$;

-- Look a number up; returns the contract's POST /v1/verify/lookup response.
-- `country_code` (ISO 3166-1 alpha-2) applies to numbers in local format
-- only; a number in international format (+… or 00…) carries its own
-- country. A number that is not a valid phone number gives valid = false
-- (200), not an error: telling is the point of a lookup.
CREATE FUNCTION envoisms.number_lookup(number text, country_code text DEFAULT NULL) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    p record;
    region text;
BEGIN
    IF number IS NULL OR length(btrim(number)) = 0 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'number is required', 'number');
    END IF;
    IF length(number) > 32 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'number must be at most 32 characters', 'number');
    END IF;
    IF country_code IS NOT NULL THEN
        region := upper(btrim(country_code));
        IF region !~ '^[A-Z]{2}$' OR envoisms.phone_country_name(region) IS NULL THEN
            PERFORM envoisms.raise_error('VALIDATION_ERROR',
                'country_code must be an ISO 3166-1 alpha-2 code, for example MA or FR', 'country_code');
        END IF;
    END IF;
    SELECT * INTO p FROM envoisms.phone_parse(btrim(number), region);
    IF NOT coalesce(p.valid, false) THEN
        RETURN jsonb_build_object(
            'valid', false, 'number', btrim(number), 'local_format', NULL, 'international_format', NULL,
            'country_prefix', p.country_prefix, 'country_code', p.region,
            'country_name', CASE WHEN p.region IS NOT NULL THEN envoisms.phone_country_name(p.region) END,
            'location', NULL, 'carrier', NULL, 'line_type', NULL);
    END IF;
    RETURN jsonb_build_object(
        'valid', true,
        'number', ltrim(p.e164, '+'),
        'local_format', replace(p.national_format, ' ', ''),
        'international_format', p.e164,
        'country_prefix', p.country_prefix,
        'country_code', p.region,
        'country_name', envoisms.phone_country_name(p.region),
        'location', nullif(p.location, ''),
        'carrier', envoisms.carrier_of(p.e164),
        'line_type', p.line_type);
END
$$;

CREATE FUNCTION envoisms.api_verify_lookup(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.reply(200, envoisms.number_lookup(
        envoisms.body_text(req.body, 'number'),
        envoisms.body_text(req.body, 'country_code')));
END
$$;

INSERT INTO envoisms.api_endpoints (method, template, handler, permission) VALUES
    ('POST', '/v1/verify/lookup', 'envoisms.api_verify_lookup(envoisms.api_request)', 'verify');

-- ---- src/sql/50_contacts.sql
-- 50_contacts.sql — contacts and contact lists: GET/POST /v1/contacts,
-- POST /v1/contacts/import, DELETE /v1/contacts/:id, GET/POST /v1/contacts/lists.
--
-- A contact's phone is stored in E.164; one contact per phone per account
-- (unique key). List membership is a table of its own, so a list's count is
-- always live (count of its members) and a contact can be in many lists.
--
-- Search (q) must stay fast at 1M contacts without pg_trgm (which would make
-- the extension require another one). Every branch of the search is an index
-- scan, OR-ed by the planner (BitmapOr):
--   * words of the name: a GIN index on a 'simple' tsvector of the name,
--     queried with prefix terms (q "kar benn" finds "Karim Bennani"); a q
--     that is a phone fragment is not searched among words;
--   * the email's beginning, for a q without spaces: btree on lower(email)
--     text_pattern_ops (emails are not in the tsvector: every address would
--     be a lexeme of its own, and a prefix such as "karim" would have to
--     walk thousands of them);
--   * the phone's beginning (+212 6…, 06…, 2126…) and its last digits:
--     the unique btree on (account_id, phone) (phone is COLLATE "C", so LIKE
--     'prefix%' is a range scan) and a btree on reverse(phone).
-- Substrings in the middle of a word are not searched. The total of a listing
-- is an exact count: without q, at 1M contacts, that count costs ~0.3 s.

CREATE TABLE envoisms.contact_lists (
    account_id   text NOT NULL REFERENCES envoisms.accounts,
    list_id      text NOT NULL CHECK (list_id ~ '^lst_[0-9a-f]{28}$'),
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    description  text CHECK (length(description) <= 1000),
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, list_id)
);

CREATE TABLE envoisms.contacts (
    account_id  text NOT NULL REFERENCES envoisms.accounts,
    contact_id  text NOT NULL CHECK (contact_id ~ '^ctc_[0-9a-f]{28}$'),
    phone       text COLLATE "C" NOT NULL CHECK (phone ~ '^\+[1-9][0-9]{6,14}$'),
    name        text CHECK (length(name) <= 200),
    email       text CHECK (length(email) <= 254),
    custom1     text CHECK (length(custom1) <= 255),
    custom2     text CHECK (length(custom2) <= 255),
    custom3     text CHECK (length(custom3) <= 255),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, contact_id),
    UNIQUE (account_id, phone)
);
-- fastupdate off: a pending list would be scanned linearly by every search
-- until the next vacuum (imports add thousands of rows at once).
CREATE INDEX contacts_words ON envoisms.contacts
    USING gin (to_tsvector('simple'::regconfig, coalesce(name, '')))
    WITH (fastupdate = off);
CREATE INDEX contacts_email ON envoisms.contacts (account_id, lower(email) text_pattern_ops);
CREATE INDEX contacts_phone_reversed ON envoisms.contacts (account_id, reverse(phone) text_pattern_ops);

CREATE TABLE envoisms.list_members (
    account_id  text NOT NULL,
    list_id     text NOT NULL,
    contact_id  text NOT NULL,
    added_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, list_id, contact_id),
    FOREIGN KEY (account_id, list_id) REFERENCES envoisms.contact_lists ON DELETE CASCADE,
    FOREIGN KEY (account_id, contact_id) REFERENCES envoisms.contacts ON DELETE CASCADE
);
CREATE INDEX list_members_contact ON envoisms.list_members (account_id, contact_id);

SELECT pg_catalog.pg_extension_config_dump('envoisms.contact_lists', '');
SELECT pg_catalog.pg_extension_config_dump('envoisms.contacts', '');
SELECT pg_catalog.pg_extension_config_dump('envoisms.list_members', '');

-- The contract's contact shape.
CREATE FUNCTION envoisms.contact_json(c envoisms.contacts) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('id', c.contact_id, 'phone', c.phone, 'name', c.name, 'email', c.email,
                              'custom1', c.custom1, 'custom2', c.custom2, 'custom3', c.custom3,
                              'created_at', envoisms.iso_time(c.created_at))
$$;

-- A list of the account, or NOT_FOUND naming `field`.
CREATE FUNCTION envoisms.check_list(account_id text, list_id text, field text DEFAULT 'list_id') RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
BEGIN
    IF list_id IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM envoisms.contact_lists l
             WHERE l.account_id = check_list.account_id AND l.list_id = check_list.list_id) THEN
        PERFORM envoisms.raise_error('NOT_FOUND', format('%s: no such contact list', field), field);
    END IF;
    RETURN list_id;
END
$$;

-- Why a contact's fields are invalid (NULL when they are valid): the first
-- problem as {code, field, message}. Shared by create and import.
CREATE FUNCTION envoisms.contact_problem(phone text, name text, email text, custom_fields jsonb) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    k text;
    v jsonb;
BEGIN
    IF phone IS NULL OR left(btrim(phone), 1) <> '+' OR envoisms.phone_e164(phone) IS NULL THEN
        RETURN jsonb_build_object('code', 'INVALID_PHONE', 'field', 'phone',
                                  'message', 'phone must be E.164 format, for example +212612345678');
    END IF;
    IF name IS NOT NULL AND length(name) > 200 THEN
        RETURN jsonb_build_object('code', 'VALIDATION_ERROR', 'field', 'name',
                                  'message', 'name must be at most 200 characters');
    END IF;
    IF email IS NOT NULL AND (length(email) > 254 OR email !~ '^[^@\s]+@[^@\s]+\.[^@\s]+$') THEN
        RETURN jsonb_build_object('code', 'VALIDATION_ERROR', 'field', 'email',
                                  'message', 'email must be an email address of at most 254 characters');
    END IF;
    IF custom_fields IS NOT NULL THEN
        IF jsonb_typeof(custom_fields) <> 'object' THEN
            RETURN jsonb_build_object('code', 'VALIDATION_ERROR', 'field', 'custom_fields',
                                      'message', 'custom_fields must be an object with custom1, custom2, custom3');
        END IF;
        FOR k, v IN SELECT e.key, e.value FROM jsonb_each(custom_fields) e LOOP
            IF k NOT IN ('custom1', 'custom2', 'custom3') THEN
                RETURN jsonb_build_object('code', 'VALIDATION_ERROR', 'field', 'custom_fields',
                    'message', format('custom_fields.%s is not allowed; use custom1, custom2, custom3', left(k, 50)));
            END IF;
            IF jsonb_typeof(v) NOT IN ('string', 'null') OR length(v #>> '{}') > 255 THEN
                RETURN jsonb_build_object('code', 'VALIDATION_ERROR', 'field', 'custom_fields.' || k,
                    'message', format('custom_fields.%s must be a string of at most 255 characters', k));
            END IF;
        END LOOP;
    END IF;
    RETURN NULL;
END
$$;

-- Create a contact (optionally adding it to a list); returns the contract's
-- POST /v1/contacts response. A second contact with the same phone is CONFLICT.
CREATE FUNCTION envoisms.contact_create(account_id text, phone text, name text DEFAULT NULL,
                                        email text DEFAULT NULL, list_id text DEFAULT NULL,
                                        custom_fields jsonb DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    problem jsonb := envoisms.contact_problem(phone, name, email, custom_fields);
    c envoisms.contacts;
    existing text;
BEGIN
    IF problem IS NOT NULL THEN
        PERFORM envoisms.raise_error(problem->>'code', problem->>'message', problem->>'field');
    END IF;
    PERFORM envoisms.check_list(account_id, list_id);
    INSERT INTO envoisms.contacts AS x (account_id, contact_id, phone, name, email, custom1, custom2, custom3)
    VALUES (account_id, envoisms.new_id('ctc'), envoisms.phone_e164(phone), nullif(btrim(name), ''),
            lower(nullif(btrim(email), '')),
            custom_fields->>'custom1', custom_fields->>'custom2', custom_fields->>'custom3')
    ON CONFLICT ON CONSTRAINT contacts_account_id_phone_key DO NOTHING
    RETURNING * INTO c;
    IF c.contact_id IS NULL THEN
        SELECT x.contact_id INTO existing FROM envoisms.contacts x
         WHERE x.account_id = contact_create.account_id AND x.phone = envoisms.phone_e164(contact_create.phone);
        PERFORM envoisms.raise_error('CONFLICT',
            format('a contact with phone %s already exists (%s)', envoisms.phone_e164(contact_create.phone), existing), 'phone');
    END IF;
    IF list_id IS NOT NULL THEN
        INSERT INTO envoisms.list_members (account_id, list_id, contact_id) VALUES (account_id, list_id, c.contact_id);
    END IF;
    RETURN envoisms.contact_json(c);
END
$$;

-- Import up to 5,000 contacts at once (optionally into a list); returns
-- {"imported", "skipped", "errors"}. Invalid entries and phones already in
-- the account (or repeated in the request) are skipped, not fatal; a phone
-- already in the account still joins the list. Set-based: one insert.
CREATE FUNCTION envoisms.contact_import(account_id text, contacts jsonb, list_id text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    total int;
    imported int;
    errors jsonb;
    n_invalid int;
BEGIN
    IF contacts IS NULL OR jsonb_typeof(contacts) <> 'array' OR jsonb_array_length(contacts) = 0 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'contacts must be an array of 1 to 5000 objects', 'contacts');
    END IF;
    total := jsonb_array_length(contacts);
    IF total > 5000 THEN
        PERFORM envoisms.raise_error('PAYLOAD_TOO_LARGE',
            format('an import holds at most 5000 contacts; got %s', total), 'contacts');
    END IF;
    PERFORM envoisms.check_list(account_id, list_id);

    WITH src AS MATERIALIZED (
        SELECT e.ord, envoisms.phone_e164(v.phone) AS phone, nullif(btrim(v.name), '') AS name,
               lower(nullif(btrim(v.email), '')) AS email,
               v.cf->>'custom1' AS custom1, v.cf->>'custom2' AS custom2, v.cf->>'custom3' AS custom3,
               CASE WHEN jsonb_typeof(e.value) <> 'object'
                    THEN '{"code": "VALIDATION_ERROR", "field": "contacts", "message": "must be an object"}'::jsonb
                    WHEN v.bad_type IS NOT NULL
                    THEN jsonb_build_object('code', 'VALIDATION_ERROR', 'field', v.bad_type,
                                            'message', v.bad_type || ' must be a string')
                    ELSE envoisms.contact_problem(v.phone, v.name, v.email, v.cf) END AS problem
          FROM jsonb_array_elements(contacts) WITH ORDINALITY AS e(value, ord)
         CROSS JOIN LATERAL (
            SELECT CASE WHEN jsonb_typeof(e.value) = 'object' THEN e.value->>'phone' END AS phone,
                   CASE WHEN jsonb_typeof(e.value) = 'object' THEN e.value->>'name' END AS name,
                   CASE WHEN jsonb_typeof(e.value) = 'object' THEN e.value->>'email' END AS email,
                   CASE WHEN jsonb_typeof(e.value) = 'object'
                        THEN coalesce(nullif(e.value->'custom_fields', 'null'),
                                      nullif(jsonb_strip_nulls(jsonb_build_object(
                                          'custom1', e.value->'custom1', 'custom2', e.value->'custom2',
                                          'custom3', e.value->'custom3')), '{}')) END AS cf,
                   CASE WHEN jsonb_typeof(e.value) = 'object' THEN
                        (SELECT f FROM unnest(ARRAY['phone', 'name', 'email']) f
                          WHERE jsonb_typeof(e.value->f) NOT IN ('string', 'null') LIMIT 1) END AS bad_type) v),
    ins AS (
        INSERT INTO envoisms.contacts (account_id, contact_id, phone, name, email, custom1, custom2, custom3)
        SELECT DISTINCT ON (s.phone) contact_import.account_id, envoisms.new_id('ctc'), s.phone, s.name, s.email,
               s.custom1, s.custom2, s.custom3
          FROM src s
         WHERE s.problem IS NULL
         ORDER BY s.phone, s.ord
        ON CONFLICT ON CONSTRAINT contacts_account_id_phone_key DO NOTHING
        RETURNING contact_id),
    members AS (
        INSERT INTO envoisms.list_members (account_id, list_id, contact_id)
        SELECT contact_import.account_id, contact_import.list_id, x.contact_id
          FROM (SELECT i.contact_id FROM ins i
                UNION
                SELECT c.contact_id FROM envoisms.contacts c
                 WHERE c.account_id = contact_import.account_id
                   AND c.phone IN (SELECT s.phone FROM src s WHERE s.problem IS NULL)) x
         WHERE contact_import.list_id IS NOT NULL
        ON CONFLICT DO NOTHING)
    SELECT (SELECT count(*) FROM ins),
           (SELECT count(*) FROM src s WHERE s.problem IS NOT NULL),
           (SELECT coalesce(jsonb_agg(jsonb_build_object('index', p.ord - 1) || p.problem ORDER BY p.ord), '[]')
              FROM (SELECT s.ord, s.problem FROM src s WHERE s.problem IS NOT NULL ORDER BY s.ord LIMIT 100) p)
      INTO imported, n_invalid, errors;
    RETURN jsonb_build_object('imported', imported, 'skipped', total - imported, 'invalid', n_invalid,
                              'errors', errors);
END
$$;

-- Delete a contact for good (and its list memberships); NOT_FOUND when the
-- account has no such contact.
CREATE FUNCTION envoisms.contact_delete(account_id text, contact_id text) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    DELETE FROM envoisms.contacts c
     WHERE c.account_id = contact_delete.account_id AND c.contact_id = contact_delete.contact_id;
    IF NOT FOUND THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'contact not found', 'id');
    END IF;
    RETURN jsonb_build_object('deleted', true, 'id', contact_id);
END
$$;

-- The search condition of q as a tsquery of word prefixes ("kar benn" →
-- 'kar':* & 'benn':*), NULL when q has no word.
CREATE FUNCTION envoisms.contact_words_query(q text) RETURNS tsquery
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT to_tsquery('simple', string_agg(quote_literal(w) || ':*', ' & '))
      FROM regexp_split_to_table(lower(q), '[^[:alnum:]]+') w
     WHERE w <> ''
$$;

-- The phone prefix q stands for, in E.164 ("06 12" → "+212612", "00336" →
-- "+336", "2126" → "+2126"), NULL when q is not a phone fragment.
CREATE FUNCTION envoisms.contact_phone_prefix(q text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN d !~ '^\+?[0-9]{2,15}$' THEN NULL
                WHEN d LIKE '+%' THEN d
                WHEN d LIKE '00%' THEN '+' || substr(d, 3)
                WHEN d LIKE '0%' THEN '+212' || substr(d, 2)
                ELSE '+' || d END
      FROM (SELECT regexp_replace(btrim(q), '[\s().-]', '', 'g') AS d) x
$$;

-- The contacts matching a search, as an inlinable SQL function: the caller's
-- plan sees the arguments as constants (force_custom_plan), drops the arms
-- that are NULL and OR-s the index scans of the others (BitmapOr).
CREATE FUNCTION envoisms.contact_search(account_id text, list_id text, searching boolean, words tsquery,
                                        phone_prefix text, digits text, email_prefix text)
RETURNS SETOF envoisms.contacts
LANGUAGE sql STABLE AS $$
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
            OR lower(c.email) LIKE replace(replace(replace(email_prefix, '\', '\\'), '%', '\%'), '_', '\_') || '%')
$$;

-- A page of the account's contacts, newest first: q searches name, email and
-- phone (see the file's head); list_id keeps the members of one list.
-- Plans are made for each call's values (force_custom_plan): a generic plan
-- could not use the LIKE prefixes for index ranges nor drop the unused arms.
CREATE FUNCTION envoisms.contact_list(account_id text, "limit" int DEFAULT 100, "offset" int DEFAULT 0,
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
    IF "limit" IS NULL OR "limit" NOT BETWEEN 1 AND 500 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'limit must be an integer from 1 to 500', 'limit');
    END IF;
    IF "offset" IS NULL OR "offset" < 0 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'offset must be an integer of 0 or more', 'offset');
    END IF;
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
        SELECT coalesce(jsonb_agg(envoisms.contact_json(p) ORDER BY p.contact_id DESC), '[]') INTO rows
          FROM (SELECT * FROM envoisms.contact_search(account_id, list_id, false, NULL, NULL, NULL, NULL) c
                 ORDER BY c.contact_id DESC LIMIT "limit" OFFSET "offset") p;
        SELECT count(*) INTO n FROM envoisms.contact_search(account_id, list_id, false, NULL, NULL, NULL, NULL);
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

-- The contract's list shape, with its live member count.
CREATE FUNCTION envoisms.contact_list_json(l envoisms.contact_lists) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('id', l.list_id, 'name', l.name, 'description', l.description,
                              'count', (SELECT count(*) FROM envoisms.list_members m
                                         WHERE m.account_id = l.account_id AND m.list_id = l.list_id),
                              'created_at', envoisms.iso_time(l.created_at))
$$;

-- Create an empty contact list; returns the contract's POST /v1/contacts/lists response.
CREATE FUNCTION envoisms.contact_list_create(account_id text, name text, description text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    l envoisms.contact_lists;
BEGIN
    IF name IS NULL OR length(btrim(name)) = 0 OR length(name) > 200 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'name is required (1 to 200 characters)', 'name');
    END IF;
    IF length(description) > 1000 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'description must be at most 1000 characters', 'description');
    END IF;
    IF NOT EXISTS (SELECT 1 FROM envoisms.accounts a WHERE a.account_id = contact_list_create.account_id) THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'account not found', 'account_id');
    END IF;
    INSERT INTO envoisms.contact_lists (account_id, list_id, name, description)
    VALUES (account_id, envoisms.new_id('lst'), btrim(name), description)
    RETURNING * INTO l;
    RETURN envoisms.contact_list_json(l);
END
$$;

-- Every contact list of the account, newest first.
CREATE FUNCTION envoisms.contact_lists(account_id text) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('data', coalesce(jsonb_agg(envoisms.contact_list_json(l) ORDER BY l.list_id DESC), '[]'))
      FROM envoisms.contact_lists l WHERE l.account_id = contact_lists.account_id
$$;

-- ---- HTTP handlers

CREATE FUNCTION envoisms.api_contacts_list(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.reply(200, envoisms.contact_list(
        req.account_id,
        envoisms.query_int(req.query, 'limit', 100, 1, 500),
        envoisms.query_int(req.query, 'offset', 0, 0, 1000000000),
        req.query->>'q',
        req.query->>'list_id'));
END
$$;

CREATE FUNCTION envoisms.api_contacts_create(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    b jsonb := req.body;
BEGIN
    IF jsonb_typeof(b->'phone') NOT IN ('string', 'null') THEN
        PERFORM envoisms.raise_error('INVALID_PHONE', 'phone must be E.164 format, for example +212612345678', 'phone');
    END IF;
    RETURN envoisms.reply(201, envoisms.contact_create(
        req.account_id,
        envoisms.body_text(b, 'phone'),
        envoisms.body_text(b, 'name'),
        envoisms.body_text(b, 'email'),
        envoisms.body_text(b, 'list_id'),
        nullif(b->'custom_fields', 'null')));
END
$$;

CREATE FUNCTION envoisms.api_contacts_import(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.reply(200, envoisms.contact_import(
        req.account_id, req.body->'contacts', envoisms.body_text(req.body, 'list_id')));
END
$$;

CREATE FUNCTION envoisms.api_contacts_delete(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.reply(200, envoisms.contact_delete(req.account_id, req.id));
END
$$;

CREATE FUNCTION envoisms.api_contact_lists_list(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.reply(200, envoisms.contact_lists(req.account_id));
END
$$;

CREATE FUNCTION envoisms.api_contact_lists_create(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.reply(201, envoisms.contact_list_create(
        req.account_id, envoisms.body_text(req.body, 'name'), envoisms.body_text(req.body, 'description')));
END
$$;

INSERT INTO envoisms.api_endpoints (method, template, handler, permission) VALUES
    ('GET',    '/v1/contacts',        'envoisms.api_contacts_list(envoisms.api_request)',        'contacts'),
    ('POST',   '/v1/contacts',        'envoisms.api_contacts_create(envoisms.api_request)',      'contacts'),
    ('POST',   '/v1/contacts/import', 'envoisms.api_contacts_import(envoisms.api_request)',      'contacts'),
    ('DELETE', '/v1/contacts/:id',    'envoisms.api_contacts_delete(envoisms.api_request)',      'contacts'),
    ('GET',    '/v1/contacts/lists',  'envoisms.api_contact_lists_list(envoisms.api_request)',   'contacts'),
    ('POST',   '/v1/contacts/lists',  'envoisms.api_contact_lists_create(envoisms.api_request)', 'contacts');

-- ---- src/sql/55_campaigns.sql
-- 55_campaigns.sql — templates and campaigns: GET/POST /v1/templates,
-- GET/POST /v1/campaigns, GET /v1/campaigns/:id, POST /v1/campaigns/:id/send;
-- the scheduler's entry points (campaigns_start_due, campaigns_complete_finished)
-- and recurring campaigns through pg_cron.
--
-- Launch (campaign_launch) locks the campaign row (FOR UPDATE), so two
-- launches of one campaign run one after the other and the second finds it
-- 'running' (409 CONFLICT): one run, one debit. It personalises the body per
-- recipient ({{name}}, {{custom1..3}}), counts segments per recipient, debits
-- the whole campaign at once (402 INSUFFICIENT_BALANCE or nothing) and
-- inserts every message in one statement. Opted-out numbers are left out.
-- Throttling (metadata.throttling "N_sec" | "N_min" | "N_hour") spreads the
-- messages' next_attempt_at: the dispatcher only claims due rows, so it
-- honours the pace without knowing about campaigns.
--
-- campaigns_start_due() launches due scheduled campaigns, claiming each with
-- FOR UPDATE SKIP LOCKED so any number of schedulers can run it at once.
-- Progress is computed on read: sent_count counts the campaign's messages in
-- sent or delivered (index messages_campaign below).

CREATE TABLE envoisms.templates (
    account_id   text NOT NULL REFERENCES envoisms.accounts,
    template_id  text NOT NULL CHECK (template_id ~ '^tpl_[0-9a-f]{28}$'),
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    channel      text NOT NULL CHECK (channel IN ('sms', 'whatsapp')),
    language     text CHECK (language ~ '^[a-z]{2,3}(_[A-Z]{2})?$'),
    body         text NOT NULL CHECK (length(body) BETWEEN 1 AND 1600),
    status       text NOT NULL DEFAULT 'approved' CHECK (status IN ('pending', 'approved', 'rejected')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, template_id),
    CHECK (channel <> 'whatsapp' OR language IS NOT NULL)
);

CREATE TABLE envoisms.campaigns (
    account_id          text NOT NULL REFERENCES envoisms.accounts,
    campaign_id         text NOT NULL CHECK (campaign_id ~ '^cmp_[0-9a-f]{28}$'),
    name                text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    channel             text NOT NULL CHECK (channel IN ('sms', 'whatsapp')),
    list_id             text,
    template_id         text,
    body                text CHECK (length(body) BETWEEN 1 AND 1600),
    sender_id           text NOT NULL DEFAULT 'ENVOISMS',
    buttons             jsonb,
    metadata            jsonb,
    status              text NOT NULL DEFAULT 'draft'
                        CHECK (status IN ('draft', 'scheduled', 'running', 'completed', 'cancelled')),
    scheduled_at        timestamptz,
    started_at          timestamptz,
    completed_at        timestamptz,
    throttle_per_minute numeric(12,4) CHECK (throttle_per_minute > 0),   -- NULL = as fast as possible
    total_count         int CHECK (total_count >= 0),
    sandbox             boolean NOT NULL DEFAULT false,
    api_key_id          text,
    cloned_from         text,
    recurring_job_id    bigint,
    recurring_schedule  text,
    error_code          text,          -- why a scheduled launch failed (status 'cancelled')
    error_message       text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, campaign_id),
    FOREIGN KEY (account_id, list_id) REFERENCES envoisms.contact_lists,
    FOREIGN KEY (account_id, template_id) REFERENCES envoisms.templates,
    CHECK ((body IS NULL) <> (template_id IS NULL)),
    CHECK (status <> 'scheduled' OR scheduled_at IS NOT NULL)
);
CREATE INDEX campaigns_due ON envoisms.campaigns (scheduled_at) WHERE status = 'scheduled';
CREATE INDEX campaigns_running ON envoisms.campaigns (account_id) WHERE status = 'running';
-- Progress and completion read a campaign's messages.
CREATE INDEX messages_campaign ON envoisms.messages (account_id, campaign_id, status) WHERE campaign_id IS NOT NULL;

SELECT pg_catalog.pg_extension_config_dump('envoisms.templates', '');
SELECT pg_catalog.pg_extension_config_dump('envoisms.campaigns', '');

-- ---- templates

CREATE FUNCTION envoisms.template_json(t envoisms.templates) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('id', t.template_id, 'name', t.name, 'channel', t.channel, 'language', t.language,
                              'body', t.body, 'status', t.status, 'created_at', envoisms.iso_time(t.created_at))
$$;

-- Create a message template (tpl_…); WhatsApp templates carry a name and a
-- language (fr, ar, en_US …). Templates are approved at once: there is no
-- review step in this implementation (the operator may set status).
CREATE FUNCTION envoisms.template_create(account_id text, name text, body text, channel text DEFAULT 'sms',
                                         language text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    t envoisms.templates;
BEGIN
    channel := coalesce(channel, 'sms');
    IF name IS NULL OR length(btrim(name)) = 0 OR length(name) > 100 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'name is required (1 to 100 characters)', 'name');
    END IF;
    IF channel NOT IN ('sms', 'whatsapp') THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'channel must be "sms" or "whatsapp"', 'channel');
    END IF;
    PERFORM envoisms.check_body(body, 'body');
    IF language IS NOT NULL AND language !~ '^[a-z]{2,3}(_[A-Z]{2})?$' THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'language must be a language code such as fr, ar or en_US', 'language');
    END IF;
    IF channel = 'whatsapp' AND language IS NULL THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'language is required for a whatsapp template', 'language');
    END IF;
    IF NOT EXISTS (SELECT 1 FROM envoisms.accounts a WHERE a.account_id = template_create.account_id) THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'account not found', 'account_id');
    END IF;
    INSERT INTO envoisms.templates (account_id, template_id, name, channel, language, body)
    VALUES (account_id, envoisms.new_id('tpl'), btrim(name), channel, language, body)
    RETURNING * INTO t;
    RETURN envoisms.template_json(t);
END
$$;

CREATE FUNCTION envoisms.template_list(account_id text) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('data', coalesce(jsonb_agg(envoisms.template_json(t) ORDER BY t.template_id DESC), '[]'))
      FROM envoisms.templates t WHERE t.account_id = template_list.account_id
$$;

-- ---- campaigns

-- Messages per minute from metadata.throttling ("50_min", "2_sec", "300_hour"), or NULL.
CREATE FUNCTION envoisms.campaign_throttle(metadata jsonb) RETURNS numeric
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog AS $$
DECLARE
    v jsonb := metadata->'throttling';
    m text[];
BEGIN
    IF v IS NULL OR jsonb_typeof(v) = 'null' THEN
        RETURN NULL;
    END IF;
    m := regexp_match(CASE WHEN jsonb_typeof(v) = 'string' THEN v #>> '{}' END, '^([1-9][0-9]{0,5})_(sec|min|hour)$');
    IF m IS NULL THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR',
            'metadata.throttling must look like "50_min", "2_sec" or "300_hour" (1 to 999999 messages per unit)',
            'metadata.throttling');
    END IF;
    RETURN round(m[1]::numeric * CASE m[2] WHEN 'sec' THEN 60 WHEN 'min' THEN 1 ELSE 1 / 60.0 END, 4);
END
$$;

-- The contract's campaign shape, with live progress.
CREATE FUNCTION envoisms.campaign_json(c envoisms.campaigns) RETURNS jsonb
LANGUAGE sql STABLE AS $$
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
        'created_at', envoisms.iso_time(c.created_at))
$$;

-- Create a campaign (draft, or scheduled when scheduled_at is given);
-- returns the campaign (the contract's {"id", "status"} and the rest).
CREATE FUNCTION envoisms.campaign_create(account_id text, name text, body text DEFAULT NULL,
                                         template_id text DEFAULT NULL, channel text DEFAULT 'sms',
                                         list_id text DEFAULT NULL, sender_id text DEFAULT NULL,
                                         scheduled_at timestamptz DEFAULT NULL, buttons jsonb DEFAULT NULL,
                                         metadata jsonb DEFAULT NULL, api_key_id text DEFAULT NULL,
                                         sandbox boolean DEFAULT false)
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    c envoisms.campaigns;
    t envoisms.templates;
    throttle numeric;
    btns jsonb;
BEGIN
    channel := coalesce(channel, 'sms');
    IF name IS NULL OR length(btrim(name)) = 0 OR length(name) > 200 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'name is required (1 to 200 characters)', 'name');
    END IF;
    PERFORM envoisms.check_account_channel(account_id, channel);
    IF body IS NULL AND template_id IS NULL THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'body or template_id is required', 'body');
    ELSIF body IS NOT NULL AND template_id IS NOT NULL THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'give body or template_id, not both', 'template_id');
    END IF;
    IF body IS NOT NULL THEN
        PERFORM envoisms.check_body(body, 'body');
    ELSE
        SELECT * INTO t FROM envoisms.templates x
         WHERE x.account_id = campaign_create.account_id AND x.template_id = campaign_create.template_id;
        IF NOT FOUND THEN
            PERFORM envoisms.raise_error('NOT_FOUND', 'template_id: no such template', 'template_id');
        ELSIF t.status <> 'approved' THEN
            PERFORM envoisms.raise_error('VALIDATION_ERROR', format('template_id: the template is %s, not approved', t.status), 'template_id');
        ELSIF t.channel <> channel THEN
            PERFORM envoisms.raise_error('VALIDATION_ERROR',
                format('template_id: the template is for %s, the campaign for %s', t.channel, channel), 'template_id');
        END IF;
    END IF;
    PERFORM envoisms.check_list(account_id, list_id);
    BEGIN
        sender_id := envoisms.check_sender_id(sender_id);
    EXCEPTION WHEN SQLSTATE 'EV400' THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR',
            'sender_id must be an alphanumeric sender id of 1 to 11 characters or a number of 3 to 15 digits', 'sender_id');
    END;
    IF scheduled_at IS NOT NULL AND scheduled_at <= now() THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'scheduled_at must be in the future', 'scheduled_at');
    END IF;
    btns := envoisms.check_buttons(buttons, channel);
    IF metadata IS NOT NULL AND (jsonb_typeof(metadata) <> 'object' OR octet_length(metadata::text) > 8192) THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'metadata must be an object of at most 8 KB', 'metadata');
    END IF;
    throttle := envoisms.campaign_throttle(metadata);
    INSERT INTO envoisms.campaigns (account_id, campaign_id, name, channel, list_id, template_id, body, sender_id,
                                    buttons, metadata, status, scheduled_at, throttle_per_minute, sandbox, api_key_id)
    VALUES (account_id, envoisms.new_id('cmp'), btrim(name), channel, list_id, template_id, body, sender_id,
            btns, metadata, CASE WHEN scheduled_at IS NULL THEN 'draft' ELSE 'scheduled' END, scheduled_at,
            throttle, coalesce(sandbox, false), api_key_id)
    RETURNING * INTO c;
    RETURN envoisms.campaign_json(c);
END
$$;

-- One campaign of the account, or NOT_FOUND.
CREATE FUNCTION envoisms.campaign_get(account_id text, campaign_id text) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    c envoisms.campaigns;
BEGIN
    SELECT * INTO c FROM envoisms.campaigns x
     WHERE x.account_id = campaign_get.account_id AND x.campaign_id = campaign_get.campaign_id;
    IF NOT FOUND THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'campaign not found', 'id');
    END IF;
    RETURN envoisms.campaign_json(c);
END
$$;

-- Every campaign of the account, newest first.
CREATE FUNCTION envoisms.campaign_list(account_id text) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('data', coalesce(jsonb_agg(envoisms.campaign_json(c) ORDER BY c.campaign_id DESC), '[]'))
      FROM envoisms.campaigns c WHERE c.account_id = campaign_list.account_id
$$;

-- One recipient of a campaign run, validated (see campaign_send).
CREATE TYPE envoisms.bulk_entry AS (
    ord       int,
    id        text,
    to_number text,
    body      text,
    metadata  jsonb,
    encoding  text,
    segments  int,
    error     text,       -- API error code when the entry is invalid
    field     text,
    detail    text
);

-- Launch a draft or scheduled campaign now: one message per list member
-- (opted-out numbers left out), the whole cost debited at once; returns
-- {"id", "queued", "total", "opted_out"}. A campaign runs once: a second
-- launch is CONFLICT. `sandbox` (a test key) makes the run a sandbox run.
CREATE FUNCTION envoisms.campaign_launch(account_id text, campaign_id text, sandbox boolean DEFAULT false,
                                         api_key_id text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    c envoisms.campaigns;
    t envoisms.templates;
    price record;
    started timestamptz := now();
    text_body text;
    meta jsonb;
    members int;
    opted int;
    n int;
    too_long record;
    units int;
    run envoisms.bulk_entry[];
    spacing interval;
    run_sandbox boolean;
BEGIN
    SELECT * INTO c FROM envoisms.campaigns x
     WHERE x.account_id = campaign_launch.account_id AND x.campaign_id = campaign_launch.campaign_id
       FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'campaign not found', 'id');
    END IF;
    IF c.status NOT IN ('draft', 'scheduled') THEN
        PERFORM envoisms.raise_error('CONFLICT', format('the campaign is %s; a campaign is sent once', c.status), 'id');
    END IF;
    IF c.list_id IS NULL THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'the campaign has no list_id to send to', 'list_id');
    END IF;
    PERFORM envoisms.check_account_channel(account_id, c.channel);
    run_sandbox := c.sandbox OR coalesce(sandbox, false);
    text_body := c.body;
    meta := coalesce(c.metadata, '{}') || jsonb_build_object('campaign_id', c.campaign_id);
    IF c.template_id IS NOT NULL THEN
        SELECT * INTO t FROM envoisms.templates x WHERE x.account_id = c.account_id AND x.template_id = c.template_id;
        text_body := t.body;
        meta := meta || jsonb_build_object('template', jsonb_build_object('id', t.template_id, 'name', t.name,
                                                                          'language', t.language));
    END IF;
    SELECT * INTO price FROM envoisms.channel_prices(account_id, c.channel);
    spacing := CASE WHEN c.throttle_per_minute IS NOT NULL
                    THEN make_interval(secs => 60 / c.throttle_per_minute) ELSE interval '0' END;

    -- the recipients, personalised, in order of list membership
    SELECT array_agg(ROW(r.ord, envoisms.new_id('msg'), r.phone, r.body, NULL, s.encoding,
                         CASE WHEN c.channel = 'whatsapp' THEN 1 ELSE s.segments END,
                         NULL, NULL, NULL)::envoisms.bulk_entry ORDER BY r.ord)
      INTO run
      FROM (SELECT row_number() OVER (ORDER BY m.added_at, m.contact_id)::int AS ord, k.phone,
                   replace(replace(replace(replace(text_body, '{{name}}', coalesce(k.name, '')),
                           '{{custom1}}', coalesce(k.custom1, '')), '{{custom2}}', coalesce(k.custom2, '')),
                           '{{custom3}}', coalesce(k.custom3, '')) AS body
              FROM envoisms.list_members m
              JOIN envoisms.contacts k ON k.account_id = m.account_id AND k.contact_id = m.contact_id
             WHERE m.account_id = c.account_id AND m.list_id = c.list_id
               AND NOT EXISTS (SELECT 1 FROM envoisms.optouts o WHERE o.account_id = k.account_id AND o.phone = k.phone)) r
      LEFT JOIN LATERAL envoisms.sms_segments(CASE WHEN length(r.body) BETWEEN 1 AND 1600 THEN r.body END) s ON true;
    n := coalesce(cardinality(run), 0);
    SELECT count(*) INTO members FROM envoisms.list_members m WHERE m.account_id = c.account_id AND m.list_id = c.list_id;
    opted := members - n;
    IF n = 0 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR',
            format('list %s has no contact to send to (%s opted out)', c.list_id, opted), 'list_id');
    END IF;
    SELECT u.to_number, length(u.body) AS len INTO too_long FROM unnest(run) u WHERE u.encoding IS NULL LIMIT 1;
    IF FOUND THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR',
            format('the personalised message to %s is %s characters; the maximum is 1600', too_long.to_number, too_long.len),
            'body');
    END IF;

    SELECT sum(u.segments) INTO units FROM unnest(run) u;
    IF NOT run_sandbox THEN
        PERFORM envoisms.balance_debit(account_id, units * price.mad);
    END IF;
    INSERT INTO envoisms.messages (account_id, message_id, api_key_id, campaign_id, to_number, sender_id, channel,
                                   body, encoding, segments, cost_mad, cost_eur, charged_mad, sandbox,
                                   metadata, buttons, created_at, updated_at, next_attempt_at, expires_at)
    SELECT c.account_id, u.id, coalesce(campaign_launch.api_key_id, c.api_key_id), c.campaign_id,
           u.to_number, c.sender_id, c.channel, u.body, u.encoding, u.segments,
           price.mad * u.segments, price.eur * u.segments,
           CASE WHEN run_sandbox THEN 0 ELSE price.mad * u.segments END, run_sandbox,
           meta, c.buttons, started, started, started + spacing * (u.ord - 1),
           started + spacing * (u.ord - 1) + interval '72 hours'
      FROM unnest(run) u;

    UPDATE envoisms.campaigns x
       SET status = 'running', started_at = started, total_count = n, error_code = NULL, error_message = NULL
     WHERE x.account_id = c.account_id AND x.campaign_id = c.campaign_id;
    PERFORM envoisms.wake_dispatcher();
    RETURN jsonb_build_object('id', c.campaign_id, 'queued', n, 'total', members, 'opted_out', opted,
                              'cost', jsonb_build_object('eur', envoisms.money(units * price.eur),
                                                         'mad', envoisms.money(units * price.mad)));
END
$$;

-- Launch every scheduled campaign that is due; returns how many started.
-- Safe to run from several sessions at once (SKIP LOCKED). A campaign that
-- cannot start (no money, empty list …) is cancelled with the reason in
-- error_code / error_message, instead of being retried forever.
CREATE FUNCTION envoisms.campaigns_start_due() RETURNS int
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    c record;
    started int := 0;
    err_state text;
    err_message text;
BEGIN
    FOR c IN SELECT x.account_id, x.campaign_id FROM envoisms.campaigns x
              WHERE x.status = 'scheduled' AND x.scheduled_at <= now()
              ORDER BY x.scheduled_at
              LIMIT 100
                FOR UPDATE SKIP LOCKED LOOP
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
    RETURN started;
END
$$;

-- Mark running campaigns completed once none of their messages is queued;
-- returns how many. Skips campaigns another session holds.
CREATE FUNCTION envoisms.campaigns_complete_finished() RETURNS int
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    n int;
BEGIN
    WITH done AS (
        SELECT x.account_id, x.campaign_id FROM envoisms.campaigns x
         WHERE x.status = 'running'
           AND NOT EXISTS (SELECT 1 FROM envoisms.messages m
                            WHERE m.account_id = x.account_id AND m.campaign_id = x.campaign_id
                              AND m.status = 'queued')
           FOR UPDATE SKIP LOCKED)
    UPDATE envoisms.campaigns x SET status = 'completed', completed_at = now()
      FROM done WHERE x.account_id = done.account_id AND x.campaign_id = done.campaign_id;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-- ---- recurring campaigns (pg_cron)

-- Copy a campaign as a new draft and launch it; returns the new campaign id.
-- This is what a recurring campaign's pg_cron job runs.
CREATE FUNCTION envoisms.campaign_clone_and_launch(account_id text, campaign_id text) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    c envoisms.campaigns;
    id text := envoisms.new_id('cmp');
BEGIN
    SELECT * INTO c FROM envoisms.campaigns x
     WHERE x.account_id = campaign_clone_and_launch.account_id AND x.campaign_id = campaign_clone_and_launch.campaign_id;
    IF NOT FOUND THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'campaign not found', 'id');
    END IF;
    INSERT INTO envoisms.campaigns (account_id, campaign_id, name, channel, list_id, template_id, body, sender_id,
                                    buttons, metadata, status, throttle_per_minute, sandbox, api_key_id, cloned_from)
    VALUES (c.account_id, id, left(c.name || ' ' || to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI'), 200),
            c.channel, c.list_id, c.template_id, c.body, c.sender_id, c.buttons, c.metadata, 'draft',
            c.throttle_per_minute, c.sandbox, c.api_key_id, c.campaign_id);
    PERFORM envoisms.campaign_launch(c.account_id, id);
    RETURN id;
END
$$;

-- Raise feature_not_supported unless pg_cron is installed in this database.
CREATE FUNCTION envoisms.check_pg_cron() RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_cron') THEN
        RAISE EXCEPTION 'recurring campaigns need the pg_cron extension'
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'Add pg_cron to shared_preload_libraries, set cron.database_name to this database, then run CREATE EXTENSION pg_cron.';
    END IF;
END
$$;

-- Run a copy of the campaign on a cron schedule ("0 9 * * 1" = Mondays 09:00
-- UTC); returns the pg_cron job id. Scheduling it again replaces the schedule.
CREATE FUNCTION envoisms.campaign_schedule_recurring(account_id text, campaign_id text, cron_expr text)
RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    job bigint;
BEGIN
    PERFORM envoisms.check_pg_cron();
    PERFORM 1 FROM envoisms.campaigns x
     WHERE x.account_id = campaign_schedule_recurring.account_id AND x.campaign_id = campaign_schedule_recurring.campaign_id
       FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'campaign not found', 'id');
    END IF;
    IF cron_expr IS NULL OR length(cron_expr) > 100 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'cron_expr must be a cron schedule such as "0 9 * * 1"', 'cron_expr');
    END IF;
    BEGIN
        EXECUTE 'SELECT cron.schedule($1, $2, $3)'
           INTO job
          USING 'envoisms_' || campaign_id, cron_expr,
                format('SELECT envoisms.campaign_clone_and_launch(%L, %L)', account_id, campaign_id);
    EXCEPTION WHEN invalid_parameter_value OR syntax_error OR data_exception THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR',
            format('cron_expr "%s" is not a valid cron schedule', left(cron_expr, 100)), 'cron_expr');
    END;
    UPDATE envoisms.campaigns x SET recurring_job_id = job, recurring_schedule = cron_expr
     WHERE x.account_id = campaign_schedule_recurring.account_id AND x.campaign_id = campaign_schedule_recurring.campaign_id;
    RETURN job;
END
$$;

-- Stop a recurring campaign; returns whether a schedule was removed.
CREATE FUNCTION envoisms.campaign_unschedule_recurring(account_id text, campaign_id text) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    c envoisms.campaigns;
    removed boolean := false;
BEGIN
    PERFORM envoisms.check_pg_cron();
    SELECT * INTO c FROM envoisms.campaigns x
     WHERE x.account_id = campaign_unschedule_recurring.account_id AND x.campaign_id = campaign_unschedule_recurring.campaign_id
       FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'campaign not found', 'id');
    END IF;
    IF c.recurring_job_id IS NOT NULL THEN
        EXECUTE 'SELECT count(*) > 0 FROM cron.job WHERE jobid = $1' INTO removed USING c.recurring_job_id;
        IF removed THEN
            EXECUTE 'SELECT cron.unschedule($1)' USING c.recurring_job_id;
        END IF;
        UPDATE envoisms.campaigns x SET recurring_job_id = NULL, recurring_schedule = NULL
         WHERE x.account_id = c.account_id AND x.campaign_id = c.campaign_id;
    END IF;
    RETURN removed;
END
$$;

-- ---- HTTP handlers

CREATE FUNCTION envoisms.api_templates_list(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.reply(200, envoisms.template_list(req.account_id));
END
$$;

CREATE FUNCTION envoisms.api_templates_create(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    b jsonb := req.body;
BEGIN
    RETURN envoisms.reply(201, envoisms.template_create(
        req.account_id, envoisms.body_text(b, 'name'), envoisms.body_text(b, 'body'),
        coalesce(envoisms.body_text(b, 'channel'), 'sms'), envoisms.body_text(b, 'language')));
END
$$;

CREATE FUNCTION envoisms.api_campaigns_list(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.reply(200, envoisms.campaign_list(req.account_id));
END
$$;

CREATE FUNCTION envoisms.api_campaigns_create(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    b jsonb := req.body;
BEGIN
    IF b->'metadata' IS NOT NULL AND jsonb_typeof(b->'metadata') NOT IN ('object', 'null') THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'metadata must be an object of at most 8 KB', 'metadata');
    END IF;
    RETURN envoisms.reply(201, envoisms.campaign_create(
        req.account_id,
        envoisms.body_text(b, 'name'),
        envoisms.body_text(b, 'body'),
        envoisms.body_text(b, 'template_id'),
        coalesce(envoisms.body_text(b, 'channel'), 'sms'),
        envoisms.body_text(b, 'list_id'),
        envoisms.body_text(b, 'sender_id'),
        envoisms.parse_time(envoisms.body_text(b, 'scheduled_at'), 'scheduled_at'),
        nullif(b->'buttons', 'null'),
        nullif(b->'metadata', 'null'),
        req.api_key_id,
        req.sandbox));
END
$$;

CREATE FUNCTION envoisms.api_campaigns_get(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.reply(200, envoisms.campaign_get(req.account_id, req.id));
END
$$;

CREATE FUNCTION envoisms.api_campaigns_send(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.reply(200, envoisms.campaign_launch(req.account_id, req.id, req.sandbox, req.api_key_id));
END
$$;

INSERT INTO envoisms.api_endpoints (method, template, handler, permission) VALUES
    ('GET',  '/v1/templates',         'envoisms.api_templates_list(envoisms.api_request)',   'campaigns'),
    ('POST', '/v1/templates',         'envoisms.api_templates_create(envoisms.api_request)', 'campaigns'),
    ('GET',  '/v1/campaigns',         'envoisms.api_campaigns_list(envoisms.api_request)',   'campaigns'),
    ('POST', '/v1/campaigns',         'envoisms.api_campaigns_create(envoisms.api_request)', 'campaigns'),
    ('GET',  '/v1/campaigns/:id',     'envoisms.api_campaigns_get(envoisms.api_request)',    'campaigns'),
    ('POST', '/v1/campaigns/:id/send', 'envoisms.api_campaigns_send(envoisms.api_request)',  'campaigns');

-- ---- src/sql/60_webhooks.sql
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

-- The contract's webhook shape (never the secret).
CREATE FUNCTION envoisms.webhook_json(w envoisms.webhooks) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('id', w.webhook_id, 'url', w.url, 'events', to_jsonb(w.events), 'active', w.active,
                              'last_triggered_at', envoisms.iso_time(w.last_triggered_at),
                              'last_status', w.last_status, 'created_at', envoisms.iso_time(w.created_at))
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
                                        secret text DEFAULT NULL)
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
    INSERT INTO envoisms.webhooks (account_id, webhook_id, url, events, secret)
    VALUES (account_id, envoisms.new_id('whk'), url, events,
            coalesce(secret, 'whsec_' || envoisms.random_bytes_hex(24)))
    RETURNING * INTO w;
    RETURN jsonb_build_object('id', w.webhook_id, 'url', w.url, 'events', to_jsonb(w.events),
                              'secret', w.secret, 'active', w.active, 'created_at', envoisms.iso_time(w.created_at));
END
$$;

-- Every live webhook of the account, newest first.
CREATE FUNCTION envoisms.webhook_list(account_id text) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('data', coalesce(jsonb_agg(envoisms.webhook_json(w) ORDER BY w.webhook_id DESC), '[]'))
      FROM envoisms.webhooks w WHERE w.account_id = webhook_list.account_id AND w.deleted_at IS NULL
$$;

-- Change a webhook's url, events or active flag (NULL = unchanged; at least
-- one must be given). Re-activating clears an automatic disable.
CREATE FUNCTION envoisms.webhook_update(account_id text, webhook_id text, url text DEFAULT NULL,
                                        events text[] DEFAULT NULL, active boolean DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    w envoisms.webhooks := envoisms.webhook_lock(account_id, webhook_id);
BEGIN
    IF url IS NULL AND events IS NULL AND active IS NULL THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'give at least one of url, events, active', 'url');
    END IF;
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
           failing_since = CASE WHEN webhook_update.active THEN NULL ELSE x.failing_since END,
           disabled_reason = CASE WHEN webhook_update.active THEN NULL ELSE x.disabled_reason END
     WHERE x.account_id = w.account_id AND x.webhook_id = w.webhook_id;
    RETURN jsonb_build_object('updated', true, 'id', w.webhook_id);
END
$$;

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
        envoisms.body_text(req.body, 'secret')));
END
$$;

CREATE FUNCTION envoisms.api_webhooks_update(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.reply(200, envoisms.webhook_update(
        req.account_id, req.id, envoisms.body_text(req.body, 'url'), envoisms.body_text_array(req.body, 'events'),
        envoisms.body_bool(req.body, 'active', NULL)));
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

-- ---- src/sql/65_apikeys.sql
-- 65_apikeys.sql — API keys managed over HTTP: GET/POST /v1/api-keys,
-- PATCH/DELETE /v1/api-keys/:id.
--
-- The operator creates keys with envoisms.api_key_create (20_accounts.sql);
-- here a key manages its account's keys, with three rules on top:
--   * no escalation: a key grants at most the permissions it has itself
--     (a key with NULL permissions has them all); a new key defaults to the
--     creating key's permissions;
--   * a key is live or test like the key that creates it, unless the body
--     says "key_prefix": "env_test" / "env_live"; a test key cannot create a
--     live key;
--   * revoking (DELETE, or PATCH active=false) is immediate — the dispatcher
--     checks active and revoked_at on every request — and answers with a
--     "warning" when the calling key revokes itself or when no active key is
--     left in the account.
-- Over HTTP rate_limit is 10..1000 requests per minute (default 100).

-- The contract's API key shape (never the key itself: only its hash is kept).
CREATE FUNCTION envoisms.api_key_json(k envoisms.api_keys) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', k.api_key_id, 'name', k.name, 'key_prefix', k.key_prefix, 'key_hint', '…' || k.key_hint,
        'ip_whitelist', to_jsonb(ARRAY(SELECT CASE WHEN masklen(n) = CASE family(n) WHEN 4 THEN 32 ELSE 128 END
                                                   THEN host(n) ELSE n::text END
                                         FROM unnest(coalesce(k.ip_whitelist, '{}')) n)),
        'rate_limit', k.rate_limit,
        'permissions', to_jsonb(coalesce(k.permissions, envoisms.api_permissions())),
        'active', k.active, 'last_used_at', envoisms.iso_time(k.last_used_at),
        'created_at', envoisms.iso_time(k.created_at), 'revoked_at', envoisms.iso_time(k.revoked_at))
$$;

-- Every key of the account (active and revoked), newest first.
CREATE FUNCTION envoisms.api_key_list(account_id text) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('data', coalesce(jsonb_agg(envoisms.api_key_json(k) ORDER BY k.api_key_id DESC), '[]'))
      FROM envoisms.api_keys k WHERE k.account_id = api_key_list.account_id
$$;

-- Raise FORBIDDEN unless every permission in `wanted` is held by `holder`
-- (NULL holder = every permission).
CREATE FUNCTION envoisms.check_no_escalation(holder text[], wanted text[]) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog AS $$
DECLARE
    extra text[];
BEGIN
    IF holder IS NULL THEN
        RETURN;                         -- a key with every permission may grant any
    END IF;
    extra := ARRAY(SELECT DISTINCT p FROM unnest(coalesce(wanted, envoisms.api_permissions())) p
                    WHERE NOT p = ANY (holder) ORDER BY 1);
    IF cardinality(extra) > 0 THEN
        PERFORM envoisms.raise_error('FORBIDDEN',
            format('this API key cannot grant permissions it does not have: %s', array_to_string(extra, ', ')),
            'permissions');
    END IF;
END
$$;

-- Validate permission names (VALIDATION_ERROR) and an HTTP rate limit.
CREATE FUNCTION envoisms.check_key_fields(permissions text[], rate_limit int) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog AS $$
DECLARE
    bad text;
BEGIN
    SELECT p INTO bad FROM unnest(permissions) p WHERE p IS NULL OR NOT p = ANY (envoisms.api_permissions()) LIMIT 1;
    IF FOUND THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR',
            format('unknown permission "%s"; allowed: %s', left(bad, 50), array_to_string(envoisms.api_permissions(), ', ')),
            'permissions');
    END IF;
    IF rate_limit IS NOT NULL AND rate_limit NOT BETWEEN 10 AND 1000 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'rate_limit must be an integer from 10 to 1000', 'rate_limit');
    END IF;
END
$$;

-- The calling key, or NOT_FOUND.
CREATE FUNCTION envoisms.api_key_row(account_id text, api_key_id text) RETURNS envoisms.api_keys
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    k envoisms.api_keys;
BEGIN
    SELECT * INTO k FROM envoisms.api_keys x
     WHERE x.account_id = api_key_row.account_id AND x.api_key_id = api_key_row.api_key_id;
    IF NOT FOUND THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'API key not found', 'id');
    END IF;
    RETURN k;
END
$$;

-- Create a key on behalf of the key `issuer_key_id` (no escalation, live or
-- test like the issuer unless `live` says otherwise); returns the contract's
-- POST /v1/api-keys response with the full key, shown once.
CREATE FUNCTION envoisms.api_key_issue(account_id text, issuer_key_id text, name text DEFAULT NULL,
                                       permissions text[] DEFAULT NULL, ip_whitelist text[] DEFAULT NULL,
                                       rate_limit int DEFAULT 100, live boolean DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    issuer envoisms.api_keys := envoisms.api_key_row(account_id, issuer_key_id);
BEGIN
    rate_limit := coalesce(rate_limit, 100);
    PERFORM envoisms.check_key_fields(permissions, rate_limit);
    IF live AND issuer.key_prefix = 'env_test' THEN
        PERFORM envoisms.raise_error('FORBIDDEN', 'a test key cannot create a live key', 'key_prefix');
    END IF;
    permissions := coalesce(permissions, issuer.permissions);
    PERFORM envoisms.check_no_escalation(issuer.permissions, permissions);
    RETURN envoisms.api_key_create(account_id, coalesce(name, 'API key'),
                                   coalesce(live, issuer.key_prefix = 'env_live'),
                                   permissions, ip_whitelist, rate_limit);
END
$$;

-- The warning that goes with a revocation, or NULL.
CREATE FUNCTION envoisms.api_key_revoke_warning(account_id text, revoked_key_id text, caller_key_id text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT nullif(concat_ws(' ',
        CASE WHEN revoked_key_id = caller_key_id
             THEN 'This request revoked the API key it was made with: that key no longer authenticates.' END,
        CASE WHEN NOT EXISTS (SELECT 1 FROM envoisms.api_keys k
                               WHERE k.account_id = api_key_revoke_warning.account_id AND k.active)
             THEN 'The account has no active API key left: create one from the console.' END), '')
$$;

-- Change a key's name, permissions, IP allowlist, rate limit or active flag
-- (NULL = unchanged). The caller cannot grant permissions it lacks. A
-- revoked key cannot be changed.
CREATE FUNCTION envoisms.api_key_update(account_id text, caller_key_id text, api_key_id text,
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
    IF caller_key_id IS NOT NULL AND permissions IS NOT NULL THEN
        caller := envoisms.api_key_row(account_id, caller_key_id);
        PERFORM envoisms.check_no_escalation(caller.permissions, permissions);
    END IF;
    nets := envoisms.parse_ip_list(ip_whitelist, 'ip_whitelist');
    UPDATE envoisms.api_keys x
       SET name = coalesce(btrim(api_key_update.name), x.name),
           permissions = coalesce((SELECT array_agg(DISTINCT p ORDER BY p) FROM unnest(api_key_update.permissions) p),
                                  x.permissions),
           ip_whitelist = coalesce(nets, x.ip_whitelist),
           rate_limit = coalesce(api_key_update.rate_limit, x.rate_limit),
           active = coalesce(api_key_update.active, x.active)
     WHERE x.account_id = k.account_id AND x.api_key_id = k.api_key_id;
    IF active = false THEN
        warning := envoisms.api_key_revoke_warning(account_id, api_key_id, caller_key_id);
    END IF;
    RETURN jsonb_strip_nulls(jsonb_build_object('updated', true, 'id', k.api_key_id, 'warning', warning));
END
$$;

-- Revoke a key for good (revoked_at, inactive); revoking a revoked key
-- changes nothing. Warns when the caller revokes itself or the account is
-- left without an active key.
CREATE FUNCTION envoisms.api_key_revoke(account_id text, api_key_id text, caller_key_id text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    UPDATE envoisms.api_keys x SET revoked_at = coalesce(x.revoked_at, now()), active = false
     WHERE x.account_id = api_key_revoke.account_id AND x.api_key_id = api_key_revoke.api_key_id;
    IF NOT FOUND THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'API key not found', 'id');
    END IF;
    RETURN jsonb_strip_nulls(jsonb_build_object(
        'revoked', true, 'id', api_key_id,
        'warning', envoisms.api_key_revoke_warning(account_id, api_key_id, caller_key_id)));
END
$$;

-- ---- HTTP handlers

CREATE FUNCTION envoisms.api_keys_list(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.reply(200, envoisms.api_key_list(req.account_id));
END
$$;

CREATE FUNCTION envoisms.api_keys_create(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    prefix text := envoisms.body_text(req.body, 'key_prefix');
BEGIN
    IF prefix IS NOT NULL AND prefix NOT IN ('env_live', 'env_test') THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'key_prefix must be "env_live" or "env_test"', 'key_prefix');
    END IF;
    IF req.body ? 'name' AND envoisms.body_text(req.body, 'name') IS NULL THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'name must be 1 to 100 characters', 'name');
    END IF;
    RETURN envoisms.reply(201, envoisms.api_key_issue(
        req.account_id, req.api_key_id,
        envoisms.body_text(req.body, 'name'),
        envoisms.body_text_array(req.body, 'permissions'),
        envoisms.body_text_array(req.body, 'ip_whitelist'),
        envoisms.body_int(req.body, 'rate_limit', 100, 10, 1000),
        CASE prefix WHEN 'env_live' THEN true WHEN 'env_test' THEN false END));
END
$$;

CREATE FUNCTION envoisms.api_keys_update(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    IF NOT (req.body ?| ARRAY['name', 'permissions', 'ip_whitelist', 'rate_limit', 'active']) THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR',
            'give at least one of name, permissions, ip_whitelist, rate_limit, active', 'name');
    END IF;
    RETURN envoisms.reply(200, envoisms.api_key_update(
        req.account_id, req.api_key_id, req.id,
        envoisms.body_text(req.body, 'name'),
        envoisms.body_text_array(req.body, 'permissions'),
        envoisms.body_text_array(req.body, 'ip_whitelist'),
        envoisms.body_int(req.body, 'rate_limit', NULL, 10, 1000),
        envoisms.body_bool(req.body, 'active', NULL)));
END
$$;

CREATE FUNCTION envoisms.api_keys_revoke(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.reply(200, envoisms.api_key_revoke(req.account_id, req.id, req.api_key_id));
END
$$;

INSERT INTO envoisms.api_endpoints (method, template, handler, permission) VALUES
    ('GET',    '/v1/api-keys',     'envoisms.api_keys_list(envoisms.api_request)',   'api_keys'),
    ('POST',   '/v1/api-keys',     'envoisms.api_keys_create(envoisms.api_request)', 'api_keys'),
    ('PATCH',  '/v1/api-keys/:id', 'envoisms.api_keys_update(envoisms.api_request)', 'api_keys'),
    ('DELETE', '/v1/api-keys/:id', 'envoisms.api_keys_revoke(envoisms.api_request)', 'api_keys');

-- ---- src/sql/70_optouts.sql
-- 70_optouts.sql — the opt-out list over HTTP: GET/POST /v1/optouts,
-- DELETE /v1/optouts/:phone (permission "optouts").
--
-- The table and the send-side check are in 35_events.sql: message_send and
-- bulk refuse an opted-out recipient (403 OPTED_OUT), campaigns leave them
-- out of the run. OTP codes (verify/send) are exempt: the recipient asked
-- for the code. Inbound STOP messages add rows with source 'inbound'.

-- The contract-style opt-out shape.
CREATE FUNCTION envoisms.optout_json(o envoisms.optouts) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('phone', o.phone, 'source', o.source, 'reason', o.reason,
                              'created_at', envoisms.iso_time(o.created_at))
$$;

-- Add a number to the account's opt-out list; returns it with "created":
-- false when it was already there (the existing entry is kept unchanged).
CREATE FUNCTION envoisms.optout_add(account_id text, phone text, reason text DEFAULT NULL,
                                    source text DEFAULT 'api')
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    e164 text := envoisms.check_phone(phone, 'phone');
    o envoisms.optouts;
    created boolean := true;
BEGIN
    IF reason IS NOT NULL AND length(reason) > 500 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'reason must be at most 500 characters', 'reason');
    END IF;
    IF source IS NULL OR source NOT IN ('api', 'inbound', 'import', 'operator') THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'source must be api, inbound, import or operator', 'source');
    END IF;
    IF NOT EXISTS (SELECT 1 FROM envoisms.accounts a WHERE a.account_id = optout_add.account_id) THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'account not found', 'account_id');
    END IF;
    INSERT INTO envoisms.optouts AS x (account_id, phone, source, reason)
    VALUES (account_id, e164, source, reason)
    ON CONFLICT ON CONSTRAINT optouts_pkey DO NOTHING
    RETURNING * INTO o;
    IF o.phone IS NULL THEN
        created := false;
        SELECT * INTO o FROM envoisms.optouts x WHERE x.account_id = optout_add.account_id AND x.phone = e164;
    END IF;
    RETURN envoisms.optout_json(o) || jsonb_build_object('created', created);
END
$$;

-- Remove a number from the opt-out list, or NOT_FOUND when it is not on it.
CREATE FUNCTION envoisms.optout_remove(account_id text, phone text) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    e164 text := envoisms.check_phone(phone, 'phone');
BEGIN
    DELETE FROM envoisms.optouts x WHERE x.account_id = optout_remove.account_id AND x.phone = e164;
    IF NOT FOUND THEN
        PERFORM envoisms.raise_error('NOT_FOUND', format('%s is not on the opt-out list', e164), 'phone');
    END IF;
    RETURN jsonb_build_object('deleted', true, 'phone', e164);
END
$$;

-- A page of the account's opt-outs, newest first (`phone` looks one number up).
CREATE FUNCTION envoisms.optout_list(account_id text, "limit" int DEFAULT 100, "offset" int DEFAULT 0,
                                     phone text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    e164 text;
    rows jsonb;
    n bigint;
BEGIN
    IF "limit" IS NULL OR "limit" NOT BETWEEN 1 AND 500 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'limit must be an integer from 1 to 500', 'limit');
    END IF;
    IF "offset" IS NULL OR "offset" < 0 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'offset must be an integer of 0 or more', 'offset');
    END IF;
    IF phone IS NOT NULL THEN
        e164 := envoisms.check_phone(phone, 'phone');
    END IF;
    SELECT coalesce(jsonb_agg(envoisms.optout_json(o) ORDER BY o.created_at DESC, o.phone), '[]') INTO rows
      FROM (SELECT * FROM envoisms.optouts x
             WHERE x.account_id = optout_list.account_id AND (e164 IS NULL OR x.phone = e164)
             ORDER BY x.created_at DESC, x.phone LIMIT "limit" OFFSET "offset") o;
    SELECT count(*) INTO n FROM envoisms.optouts x
     WHERE x.account_id = optout_list.account_id AND (e164 IS NULL OR x.phone = e164);
    RETURN jsonb_build_object('data', rows, 'limit', "limit", 'offset', "offset", 'total', n);
END
$$;

-- The phone of DELETE /v1/optouts/:phone: an unencoded "+" in a URL path
-- arrives as a space after URL decoding, and a bare 212… means +212….
CREATE FUNCTION envoisms.optout_path_phone(segment text) RETURNS text
LANGUAGE sql IMMUTABLE
RETURN CASE WHEN btrim(segment) ~ '^[0-9]' THEN '+' || btrim(segment) ELSE btrim(segment) END;

-- ---- HTTP handlers

CREATE FUNCTION envoisms.api_optouts_list(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.reply(200, envoisms.optout_list(
        req.account_id,
        envoisms.query_int(req.query, 'limit', 100, 1, 500),
        envoisms.query_int(req.query, 'offset', 0, 0, 1000000000),
        CASE WHEN req.query ? 'phone' THEN envoisms.optout_path_phone(req.query->>'phone') END));
END
$$;

CREATE FUNCTION envoisms.api_optouts_create(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    o jsonb;
BEGIN
    IF jsonb_typeof(req.body->'phone') NOT IN ('string', 'null') THEN
        PERFORM envoisms.raise_error('INVALID_PHONE', 'phone must be E.164 format, for example +212612345678', 'phone');
    END IF;
    o := envoisms.optout_add(req.account_id, envoisms.body_text(req.body, 'phone'),
                             envoisms.body_text(req.body, 'reason'), 'api');
    RETURN envoisms.reply(CASE WHEN (o->>'created')::boolean THEN 201 ELSE 200 END, o);
END
$$;

CREATE FUNCTION envoisms.api_optouts_delete(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.reply(200, envoisms.optout_remove(req.account_id, envoisms.optout_path_phone(req.id)));
END
$$;

INSERT INTO envoisms.api_endpoints (method, template, handler, permission) VALUES
    ('GET',    '/v1/optouts',     'envoisms.api_optouts_list(envoisms.api_request)',   'optouts'),
    ('POST',   '/v1/optouts',     'envoisms.api_optouts_create(envoisms.api_request)', 'optouts'),
    ('DELETE', '/v1/optouts/:id', 'envoisms.api_optouts_delete(envoisms.api_request)', 'optouts');

-- ---- src/sql/75_idempotency.sql
-- 75_idempotency.sql — Idempotency-Key on POST requests, as Stripe does it.
--
-- The dispatcher (envoisms.api, step 5) calls idempotency_lookup before the
-- handler and idempotency_store after it, all in the request's transaction.
--
-- Locking: lookup takes a transaction-level advisory lock on a hash of
-- (api_key_id, key) with pg_try_advisory_xact_lock. A second request with the
-- same key while the first is uncommitted fails to take it and gets 409
-- IDEMPOTENCY_IN_FLIGHT at once (it never waits). The lock is released when
-- the first request's transaction ends, after its stored reply is visible, so
-- the next request with that key replays it. When the handler raises, the
-- dispatcher rolls the request back and nothing is stored: the key stays free
-- and a retry runs the request again (only replies that were committed are
-- replayed). Keys belong to one API key and live 24 hours.

-- No foreign key to accounts, as for messages (00_schema.sql): the check
-- would KEY SHARE-lock the account row on every request with a key.
CREATE TABLE envoisms.idempotency_keys (
    account_id    text NOT NULL,
    api_key_id    text NOT NULL,
    idempotency_key text NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    request_hash  text NOT NULL CHECK (request_hash ~ '^[0-9a-f]{64}$'),
    method        text NOT NULL,
    path          text NOT NULL,
    status        int  NOT NULL,
    headers       jsonb NOT NULL DEFAULT '{}',
    body          jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL DEFAULT now() + interval '24 hours',
    PRIMARY KEY (account_id, api_key_id, idempotency_key)
);
CREATE INDEX idempotency_keys_expiry ON envoisms.idempotency_keys (expires_at);

-- Validate an Idempotency-Key header value: 1 to 255 printable ASCII characters.
CREATE FUNCTION envoisms.idempotency_check_key(key text) RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog AS $$
BEGIN
    IF key IS NULL OR key !~ '^[\x20-\x7e]{1,255}$' OR btrim(key) = '' THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR',
            'idempotency-key must be 1 to 255 printable ASCII characters', 'Idempotency-Key');
    END IF;
    RETURN key;
END
$$;

-- The fingerprint of a request: method, path and the body as parsed JSON
-- (key order and whitespace do not matter, values do).
CREATE FUNCTION envoisms.idempotency_request_hash(req envoisms.api_request) RETURNS text
LANGUAGE sql IMMUTABLE
RETURN envoisms.sha256_hex(req.method || ' ' || req.path || E'\n' || coalesce(req.body, '{}'::jsonb)::text);

-- The stored reply for (API key, key) with Idempotent-Replayed: true, or a
-- reply with a NULL status when there is none (the caller then runs the
-- request and stores its reply). Raises IDEMPOTENCY_IN_FLIGHT when another
-- transaction holds the key and IDEMPOTENCY_MISMATCH when the key was used
-- for a different request.
CREATE FUNCTION envoisms.idempotency_lookup(req envoisms.api_request, key text) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    stored envoisms.idempotency_keys;
BEGIN
    key := envoisms.idempotency_check_key(key);
    IF NOT pg_try_advisory_xact_lock(hashtextextended(req.api_key_id || E'\x1f' || key, 7411)) THEN
        PERFORM envoisms.raise_error('IDEMPOTENCY_IN_FLIGHT',
            'a request with this idempotency-key is still being processed; retry later', 'Idempotency-Key');
    END IF;
    SELECT * INTO stored FROM envoisms.idempotency_keys k
     WHERE k.account_id = req.account_id AND k.api_key_id = req.api_key_id AND k.idempotency_key = idempotency_lookup.key;
    IF NOT FOUND OR stored.expires_at <= now() THEN
        RETURN ROW(NULL, NULL, NULL)::envoisms.api_reply;
    END IF;
    IF stored.request_hash <> envoisms.idempotency_request_hash(req) THEN
        PERFORM envoisms.raise_error('IDEMPOTENCY_MISMATCH',
            format('this idempotency-key was used for a different request (%s %s with another body) in the last 24 hours',
                   stored.method, stored.path), 'Idempotency-Key');
    END IF;
    RETURN ROW(stored.status, stored.headers || '{"Idempotent-Replayed": "true"}', stored.body)::envoisms.api_reply;
END
$$;

-- Remember the reply of a request made with an Idempotency-Key for 24 hours.
-- Called by the dispatcher in the request's transaction, holding the key's lock.
CREATE FUNCTION envoisms.idempotency_store(req envoisms.api_request, key text, rep envoisms.api_reply) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    INSERT INTO envoisms.idempotency_keys AS k (account_id, api_key_id, idempotency_key, request_hash, method, path,
                                               status, headers, body)
    VALUES (req.account_id, req.api_key_id, envoisms.idempotency_check_key(key),
            envoisms.idempotency_request_hash(req), req.method, req.path,
            rep.status, coalesce(rep.headers, '{}'), rep.body)
    ON CONFLICT (account_id, api_key_id, idempotency_key) DO UPDATE
       SET request_hash = EXCLUDED.request_hash, method = EXCLUDED.method, path = EXCLUDED.path,
           status = EXCLUDED.status, headers = EXCLUDED.headers, body = EXCLUDED.body,
           created_at = now(), expires_at = now() + interval '24 hours'
     WHERE k.expires_at <= now();        -- only an expired key is ever reused
END
$$;

-- Delete expired keys; returns how many (the scheduler worker calls it).
CREATE FUNCTION envoisms.idempotency_purge() RETURNS int
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    n int;
BEGIN
    DELETE FROM envoisms.idempotency_keys k WHERE k.expires_at <= now();
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-- ---- src/sql/80_api.sql
-- 80_api.sql — envoisms.api(): the whole HTTP contract as one function.
--
-- One call per HTTP request (the gateway's only statement): authenticate the
-- Bearer key (SHA-256 looked up in api_keys; active; not revoked; client IP in
-- the allowlist), take a token from the key's rate-limit bucket (shared
-- memory), route (method, path) through envoisms.api_endpoints to a handler,
-- and turn every error into the contract's envelope with the HTTP status of
-- envoisms.error_codes. Every handler runs inside a subtransaction, so an
-- error leaves nothing behind (no message, no debit).
--
-- Areas add routes by inserting into api_endpoints a handler of signature
-- handler(envoisms.api_request) RETURNS envoisms.api_reply; the dispatcher is
-- never edited for a new route. Handlers read the parsed body (req.body,
-- always a JSON object for POST/PATCH) and query (req.query, a JSON object of
-- strings), and the path parameter (req.id).

-- The request and reply types and the api_endpoints table are in
-- 36_api_types.sql, before the area files that define handlers and routes.

-- The routes served, for documentation checks (the gateway's OpenAPI test).
CREATE FUNCTION envoisms.api_routes() RETURNS TABLE (method text, template text, permission text)
LANGUAGE sql STABLE AS $$
    SELECT e.method, e.template, e.permission FROM envoisms.api_endpoints e ORDER BY e.template, e.method
$$;

CREATE FUNCTION envoisms.api_call(handler regprocedure, request envoisms.api_request)
RETURNS envoisms.api_reply
AS 'MODULE_PATHNAME', 'api_call' LANGUAGE C STRICT VOLATILE;

CREATE FUNCTION envoisms.ratelimit_take(key_id text, per_minute int,
                                        OUT allowed boolean, OUT remaining int, OUT retry_after int)
AS 'MODULE_PATHNAME', 'ratelimit_take' LANGUAGE C VOLATILE;

CREATE FUNCTION envoisms.ratelimit_reset(key_id text) RETURNS boolean
AS 'MODULE_PATHNAME', 'ratelimit_reset' LANGUAGE C STRICT VOLATILE;

-- Request headers with lower-case names and string values (json.c).
CREATE FUNCTION envoisms.headers_normalize(headers jsonb) RETURNS jsonb
AS 'MODULE_PATHNAME', 'headers_normalize' LANGUAGE C IMMUTABLE;

-- SHA-256 of the key in "Authorization: Bearer env_live_...|env_test_...", or NULL (crypto.c).
CREATE FUNCTION envoisms.api_key_hash(authorization text) RETURNS text
AS 'MODULE_PATHNAME', 'api_key_hash' LANGUAGE C STRICT IMMUTABLE;

-- The active, unrevoked key with that hash and its account's status (every
-- field NULL when there is none), cached per backend and forgotten by every
-- backend when api_keys or accounts change (keys.c, cache.c).
CREATE FUNCTION envoisms.api_key_lookup(key_hash text, OUT account_id text, OUT api_key_id text, OUT key_prefix text,
                                        OUT permissions text[], OUT ip_whitelist cidr[], OUT rate_limit int,
                                        OUT last_used_at timestamptz, OUT account_status text)
AS 'MODULE_PATHNAME', 'api_key_lookup' LANGUAGE C STABLE;
-- The route serving (method, path): the exact path's, else the :id
-- template's (by_template); every field NULL when none. The whole of
-- api_endpoints is cached per backend (routes.c, cache.c).
CREATE FUNCTION envoisms.api_route(method text, path text, OUT handler regprocedure, OUT permission text,
                                   OUT template text, OUT public boolean, OUT by_template boolean)
AS 'MODULE_PATHNAME', 'api_route' LANGUAGE C STRICT STABLE;
CREATE TRIGGER api_endpoints_cache_forget
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON envoisms.api_endpoints
    FOR EACH STATEMENT EXECUTE FUNCTION envoisms.cache_forget();
CREATE TRIGGER api_keys_cache_forget
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON envoisms.api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION envoisms.cache_forget();
CREATE TRIGGER accounts_cache_forget
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON envoisms.accounts
    FOR EACH STATEMENT EXECUTE FUNCTION envoisms.cache_forget();

-- Why a request body does not cast to jsonb ('syntax', 'nul', 'number'), or NULL (json.c).
CREATE FUNCTION envoisms.body_problem(body text) RETURNS text
AS 'MODULE_PATHNAME', 'body_problem' LANGUAGE C STRICT IMMUTABLE;

-- Decode a URL component (%XX and '+'); NULL when it is not valid UTF-8.
CREATE FUNCTION envoisms.url_decode(value text) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT SET search_path = pg_catalog AS $$
BEGIN
    IF strpos(value, '%') = 0 THEN
        RETURN replace(value, '+', ' ');
    END IF;
    RETURN convert_from(
        (SELECT string_agg(CASE WHEN m[1] IS NOT NULL THEN decode(substr(m[1], 2), 'hex')
                                ELSE convert_to(m[2], 'UTF8') END, ''::bytea ORDER BY ord)
           FROM regexp_matches(replace(value, '+', ' '), '(%[0-9A-Fa-f]{2})|([^%]+|%)', 'g')
                WITH ORDINALITY AS t(m, ord)), 'UTF8');
EXCEPTION WHEN character_not_in_repertoire OR untranslatable_character OR invalid_parameter_value THEN
    RETURN NULL;
END
$$;

-- Parse a query string into a JSON object of strings (the first of repeated keys wins).
CREATE FUNCTION envoisms.query_parse(query text) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog AS $$
DECLARE
    result jsonb;
BEGIN
    IF query IS NULL OR query = '' THEN
        RETURN '{}';
    END IF;
    SELECT jsonb_object_agg(k, v) INTO result
      FROM (SELECT DISTINCT ON (k) k, v
              FROM (SELECT envoisms.url_decode(split_part(p, '=', 1)) AS k,
                           envoisms.url_decode(substr(p, strpos(p || '=', '=') + 1)) AS v, ord
                      FROM unnest(string_to_array(query, '&')) WITH ORDINALITY AS t(p, ord)
                     WHERE p <> '') x
             ORDER BY k, ord) y
     WHERE k IS NOT NULL;
    IF EXISTS (SELECT 1 FROM jsonb_each(coalesce(result, '{}')) WHERE value = 'null') THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'the query string is not valid UTF-8');
    END IF;
    RETURN coalesce(result, '{}');
END
$$;

-- Read an integer query parameter within [low, high], or raise VALIDATION_ERROR.
CREATE FUNCTION envoisms.query_int(query jsonb, name text, fallback int, low int, high int) RETURNS int
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog AS $$
DECLARE
    v text := query->>name;
BEGIN
    IF v IS NULL THEN
        RETURN fallback;
    END IF;
    IF v !~ '^\s*[0-9]{1,9}\s*$' OR v::int NOT BETWEEN low AND high THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR',
            format('%s must be an integer from %s to %s', name, low, high), name);
    END IF;
    RETURN v::int;
END
$$;

-- Read a string field of a JSON body: absent/null → NULL; anything but a
-- string → VALIDATION_ERROR naming the field.
CREATE FUNCTION envoisms.body_text(body jsonb, field text) RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog AS $$
DECLARE
    v jsonb := body->field;
BEGIN
    IF v IS NULL OR jsonb_typeof(v) = 'null' THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(v) <> 'string' THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', format('%s must be a string', field), field);
    END IF;
    RETURN v #>> '{}';
END
$$;

-- Read a boolean field of a JSON body (absent/null → fallback).
CREATE FUNCTION envoisms.body_bool(body jsonb, field text, fallback boolean) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog AS $$
DECLARE
    v jsonb := body->field;
BEGIN
    IF v IS NULL OR jsonb_typeof(v) = 'null' THEN
        RETURN fallback;
    END IF;
    IF jsonb_typeof(v) <> 'boolean' THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', format('%s must be true or false', field), field);
    END IF;
    RETURN v::boolean;
END
$$;

-- Read an integer field of a JSON body within [low, high] (absent/null → fallback).
CREATE FUNCTION envoisms.body_int(body jsonb, field text, fallback int, low int, high int) RETURNS int
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog AS $$
DECLARE
    v jsonb := body->field;
BEGIN
    IF v IS NULL OR jsonb_typeof(v) = 'null' THEN
        RETURN fallback;
    END IF;
    IF jsonb_typeof(v) <> 'number' OR (v #>> '{}') !~ '^-?[0-9]{1,9}$' OR (v #>> '{}')::int NOT BETWEEN low AND high THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR',
            format('%s must be an integer from %s to %s', field, low, high), field);
    END IF;
    RETURN (v #>> '{}')::int;
END
$$;

-- Read an array-of-strings field (absent/null → NULL).
CREATE FUNCTION envoisms.body_text_array(body jsonb, field text) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog AS $$
DECLARE
    v jsonb := body->field;
BEGIN
    IF v IS NULL OR jsonb_typeof(v) = 'null' THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(v) <> 'array' OR EXISTS (SELECT 1 FROM jsonb_array_elements(v) e WHERE jsonb_typeof(e) <> 'string') THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', format('%s must be an array of strings', field), field);
    END IF;
    RETURN ARRAY(SELECT jsonb_array_elements_text(v));
END
$$;

-- Build a reply.
CREATE FUNCTION envoisms.reply(status int, body jsonb) RETURNS envoisms.api_reply
LANGUAGE sql IMMUTABLE RETURN ROW(status, '{}'::jsonb, body)::envoisms.api_reply;

-- The contract's error envelope for an API code.
CREATE FUNCTION envoisms.error_envelope(code text, message text, field text DEFAULT NULL) RETURNS jsonb
LANGUAGE sql IMMUTABLE
RETURN jsonb_build_object('error', jsonb_strip_nulls(jsonb_build_object(
        'code', code, 'message', message, 'field', nullif(field, ''),
        'docs', 'https://envoisms.ma/docs#errors')));

CREATE FUNCTION envoisms.api(method text, path text, query text DEFAULT '', headers jsonb DEFAULT '{}',
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
    tmpl text;
    rl record;
    err_state text;
    err_message text;
    err_column text;
    err_detail text;
    err_context text;
    err_code text;
    err_http int;
    problem text;
BEGIN
    method := upper(coalesce(method, ''));
    path := coalesce(nullif(rtrim(path, '/'), ''), '/');
    hdr := envoisms.headers_normalize(headers);

    BEGIN
        -- 1. route (cached per backend, routes.c): the exact path, else the
        -- path with its third segment as :id
        r := envoisms.api_route(method, path);
        IF r.by_template THEN
            req.id := envoisms.url_decode(split_part(path, '/', 4));
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
                PERFORM envoisms.raise_error('UNAUTHORIZED',
                    'invalid or missing API key: send Authorization: Bearer env_live_... or env_test_... from an allowed address');
            END IF;

            -- 3. rate limit (shared memory, no row per request). X-Envoisms-Key-Id
            -- names the key for the gateway's access log (which strips it).
            rl := envoisms.ratelimit_take(k.api_key_id, k.rate_limit);
            out_headers := CASE WHEN k.rate_limit IS NULL THEN jsonb_build_object('X-Envoisms-Key-Id', k.api_key_id)
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

            -- (one test on the common path: every statement costs its own evaluation)
            IF r.handler IS NULL OR (k.permissions IS NOT NULL AND NOT r.permission = ANY (k.permissions)
                                         AND NOT (r.permission = 'balance' AND 'billing' = ANY (k.permissions))) THEN
                IF r.handler IS NULL THEN
                    tmpl := regexp_replace(path, '^(/v1/[^/]+/)[^/]+', '\1:id');
                    IF EXISTS (SELECT 1 FROM envoisms.api_endpoints e WHERE e.template IN (path, tmpl)) THEN
                        out_headers := out_headers || jsonb_build_object('Allow',
                            (SELECT string_agg(DISTINCT e.method, ', ') FROM envoisms.api_endpoints e
                              WHERE e.template IN (path, tmpl)));
                        PERFORM envoisms.raise_error('METHOD_NOT_ALLOWED', format('%s is not allowed on %s', method, path));
                    END IF;
                    PERFORM envoisms.raise_error('NOT_FOUND', format('no route for %s %s', left(method, 10), left(path, 200)));
                END IF;
                PERFORM envoisms.raise_error('FORBIDDEN',
                    format('this API key lacks the "%s" permission', r.permission));
            END IF;
        END IF;

        -- 4. the request (one row constructor: each field assignment is a statement of its own)
        req := ROW(method, path, r.template, req.id,
                   CASE WHEN query IS NULL OR query = '' THEN '{}' ELSE envoisms.query_parse(query) END,
                   '{}', body, hdr, client_ip, k.account_id, k.api_key_id, k.key_prefix = 'env_test',
                   k.permissions)::envoisms.api_request;
        IF method IN ('POST', 'PATCH', 'PUT') AND body IS NOT NULL AND btrim(body, E' \t\r\n') <> '' THEN
            -- checked before the cast, so that a bad body needs no exception block
            problem := envoisms.body_problem(body);
            IF problem IS NOT NULL THEN
                IF problem = 'nul' THEN
                    PERFORM envoisms.raise_error('VALIDATION_ERROR', 'strings must not contain NUL (\u0000) characters');
                ELSIF problem = 'number' THEN
                    PERFORM envoisms.raise_error('VALIDATION_ERROR', 'a number in the request body is out of range (beyond 1e±1000)');
                END IF;
                PERFORM envoisms.raise_error('INVALID_JSON', 'the request body is not valid JSON');
            END IF;
            req.body := body::jsonb;
            IF jsonb_typeof(req.body) <> 'object' THEN
                PERFORM envoisms.raise_error('VALIDATION_ERROR', 'the request body must be a JSON object');
            END IF;
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

-- ---- handlers of the messages, billing and analytics routes

CREATE FUNCTION envoisms.api_messages_create(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql AS $$   -- no SET search_path: hot path, see message_send
DECLARE
    b jsonb := req.body;
BEGIN
    IF jsonb_typeof(b->'metadata') NOT IN ('object', 'null') OR jsonb_typeof(b->'buttons') NOT IN ('array', 'null')
       OR jsonb_typeof(b->'to') NOT IN ('string', 'null') THEN
        IF jsonb_typeof(b->'metadata') NOT IN ('object', 'null') THEN
            PERFORM envoisms.raise_error('VALIDATION_ERROR', 'metadata must be an object', 'metadata');
        ELSIF jsonb_typeof(b->'buttons') NOT IN ('array', 'null') THEN
            PERFORM envoisms.raise_error('VALIDATION_ERROR', 'buttons must be an array', 'buttons');
        END IF;
        PERFORM envoisms.raise_error('INVALID_PHONE', 'to must be E.164 format, for example +212612345678', 'to');
    END IF;
    -- string fields are read inline; body_text() only runs to refuse another type
    RETURN envoisms.reply(201, envoisms.message_send(
        req.account_id,
        CASE jsonb_typeof(b->'to') WHEN 'string' THEN b->>'to' ELSE envoisms.body_text(b, 'to') END,
        CASE jsonb_typeof(b->'message') WHEN 'string' THEN b->>'message'
             ELSE coalesce(envoisms.body_text(b, 'message'), envoisms.body_text(b, 'body')) END,
        CASE WHEN b->'from' IS NULL THEN 'ENVOISMS' WHEN jsonb_typeof(b->'from') = 'string' THEN b->>'from'
             ELSE coalesce(envoisms.body_text(b, 'from'), 'ENVOISMS') END,
        CASE WHEN b->'channel' IS NULL THEN 'sms' WHEN jsonb_typeof(b->'channel') = 'string' THEN b->>'channel'
             ELSE coalesce(envoisms.body_text(b, 'channel'), 'sms') END,
        b->'cascade' IS NOT NULL AND envoisms.body_bool(b, 'cascade', false),
        nullif(b->'metadata', 'null'),
        nullif(b->'buttons', 'null'),
        req.api_key_id,
        req.sandbox));
END
$$;

CREATE FUNCTION envoisms.api_messages_bulk(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.reply(201, envoisms.message_send_bulk(
        req.account_id,
        req.body->'messages',
        coalesce(envoisms.body_text(req.body, 'from'), 'ENVOISMS'),
        coalesce(envoisms.body_text(req.body, 'channel'), 'sms'),
        req.api_key_id,
        req.sandbox));
END
$$;

CREATE FUNCTION envoisms.api_messages_list(req envoisms.api_request) RETURNS envoisms.api_reply
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
        req.query->>'direction'));
END
$$;

CREATE FUNCTION envoisms.api_messages_get(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.reply(200, envoisms.message_get(req.account_id, req.id));
END
$$;

CREATE FUNCTION envoisms.api_billing_balance(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.reply(200, (
        SELECT jsonb_build_object('balance_mad', envoisms.money(envoisms.account_balance(a.account_id)),
                                  'currency', 'MAD', 'plan', a.plan)
          FROM envoisms.accounts a WHERE a.account_id = req.account_id));
END
$$;

CREATE FUNCTION envoisms.api_analytics(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.reply(200, envoisms.analytics_summary(
        req.account_id,
        envoisms.parse_time(req.query->>'from_date', 'from_date'),
        envoisms.parse_time(req.query->>'to_date', 'to_date')));
END
$$;

INSERT INTO envoisms.api_endpoints (method, template, handler, permission) VALUES
    ('POST', '/v1/messages',        'envoisms.api_messages_create(envoisms.api_request)', 'send'),
    ('POST', '/v1/messages/bulk',   'envoisms.api_messages_bulk(envoisms.api_request)',   'send'),
    ('GET',  '/v1/messages',        'envoisms.api_messages_list(envoisms.api_request)',   'status'),
    ('GET',  '/v1/messages/:id',    'envoisms.api_messages_get(envoisms.api_request)',    'status'),
    ('GET',  '/v1/billing/balance', 'envoisms.api_billing_balance(envoisms.api_request)', 'balance'),
    ('GET',  '/v1/analytics',       'envoisms.api_analytics(envoisms.api_request)',       'analytics');

-- ---- src/sql/85_carriers.sql
-- 85_carriers.sql — carriers, routes, and the dispatcher's SQL interface:
-- claim, outcomes (sent / retry / failed), delivery reports, and the
-- delivery-report intake routes served by envoisms.api.
--
-- Workers (src/worker_dispatch.c, src/worker_smpp*.c) follow one shape:
--   1. envoisms.dispatch_claim() in a short transaction: due queued messages
--      are locked with FOR UPDATE SKIP LOCKED, routed, and leased
--      (locked_until = now() + lease, attempts + 1);
--   2. network I/O outside any transaction;
--   3. the outcome in a second short transaction: dispatch_sent,
--      dispatch_retry or dispatch_failed (or dispatch_record for a batch).
-- A lease that runs out (crashed worker) makes the message claimable again,
-- so a message is sent at least once; a second send of the same message id
-- happens only when the first transfer was in flight when its worker died.
--
-- Outcomes only act on a compatible state (a 'sent' outcome needs a queued
-- message, a delivery report needs a sent one ...), so a repeated or late
-- call changes nothing. Money: a message that ends failed or expired is
-- refunded once through envoisms.message_refund (the ledger's unique index
-- makes twice impossible). Status changes fire the trigger of 35_events.sql
-- (event row, webhooks, NOTIFY envoisms_message_status).
--
-- Carriers and routes are operator-level and global: the one documented
-- exception to "every table is keyed by account_id". Their config holds
-- secrets (tokens); no route returns it and PUBLIC cannot read it.

CREATE TABLE envoisms.carriers (
    carrier_id     text PRIMARY KEY CHECK (carrier_id ~ '^[a-z0-9_-]{1,40}$'),
    kind           text NOT NULL CHECK (kind IN ('sandbox', 'http', 'whatsapp_cloud', 'smpp')),
    name           text NOT NULL DEFAULT '' CHECK (length(name) <= 200),
    config         jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(config) = 'object'),
    enabled        boolean NOT NULL DEFAULT true,
    max_per_second int CHECK (max_per_second > 0),          -- NULL = no cap
    down_until     timestamptz,                             -- circuit open: routes fail over
    created_at     timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON envoisms.carriers FROM PUBLIC;
INSERT INTO envoisms.carriers (carrier_id, kind, name)
VALUES ('sandbox', 'sandbox', 'Built-in sandbox (no network)');

-- Longest prefix wins; within a prefix the lowest priority number first;
-- the next one is the failover while a carrier is disabled or down.
CREATE TABLE envoisms.routes (
    channel    text NOT NULL CHECK (channel IN ('sms', 'whatsapp')),
    prefix     text NOT NULL DEFAULT '' CHECK (prefix ~ '^[0-9]{0,15}$'),   -- E.164 digits without '+'
    carrier_id text NOT NULL REFERENCES envoisms.carriers ON DELETE CASCADE,
    priority   int  NOT NULL DEFAULT 0,
    PRIMARY KEY (channel, prefix, priority)
);
REVOKE ALL ON envoisms.routes FROM PUBLIC;

-- Token buckets of the carriers with max_per_second (one row each, made on demand).
CREATE TABLE envoisms.carrier_rate_state (
    carrier_id text PRIMARY KEY REFERENCES envoisms.carriers ON DELETE CASCADE,
    tokens     double precision NOT NULL,
    updated_at timestamptz NOT NULL
);

-- Delivery reports that arrived before the submit answer was recorded;
-- dispatch_sent applies them. Purged by the scheduler after 7 days.
CREATE TABLE envoisms.pending_dlrs (
    carrier_id    text NOT NULL,
    carrier_ref   text NOT NULL,
    status        text NOT NULL CHECK (status IN ('sent', 'delivered', 'failed', 'expired')),
    error_code    text,
    error_message text,
    received_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (carrier_id, carrier_ref, status)
);

-- Delivery reports find their message by the carrier's id.
CREATE INDEX messages_carrier_ref ON envoisms.messages (carrier_id, carrier_ref) WHERE carrier_ref IS NOT NULL;
-- Sandbox messages waiting for their simulated delivery report.
CREATE INDEX messages_sandbox_due ON envoisms.messages (sent_at)
    WHERE status = 'sent' AND left(carrier_ref, 4) = 'sbx_';

-- The sandbox carrier's magic numbers (docs/workers.md), like Twilio's test numbers.
CREATE FUNCTION envoisms.sandbox_magic_numbers()
RETURNS TABLE (phone text, outcome text, description text)
LANGUAGE sql IMMUTABLE AS $$
    VALUES ('+212600000001', 'failed',    'sent, then a delivery report says failed (refunded)'),
           ('+212600000002', 'expired',   'sent, then a delivery report says expired (refunded)'),
           ('+212600000003', 'rejected',  'rejected at submit: failed at once, never sent (refunded)'),
           ('+212600000004', 'transient', 'first attempt fails transiently, retried after 1 s, then delivered')
$$;

-- The carrier a message goes to now: sandbox messages to 'sandbox', others
-- by route (longest prefix, then priority), skipping carriers disabled or
-- down. NULL when no carrier is available.
CREATE FUNCTION envoisms.route_carrier(channel text, to_number text, sandbox boolean)
RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog AS $$
    SELECT CASE WHEN sandbox THEN 'sandbox' ELSE (
        SELECT r.carrier_id
          FROM envoisms.routes r JOIN envoisms.carriers c ON c.carrier_id = r.carrier_id
         WHERE r.channel = route_carrier.channel
           AND starts_with(ltrim(to_number, '+'), r.prefix)
           AND c.enabled AND (c.down_until IS NULL OR c.down_until <= now())
         ORDER BY length(r.prefix) DESC, r.priority
         LIMIT 1) END
$$;

-- Claim up to `batch` due messages for carriers of `carrier_kinds` (and only
-- `only_carrier` when given): route, lock, lease. The route is computed in
-- the scan itself (sandbox messages → 'sandbox'; others by the longest
-- prefix, then priority, over enabled carriers that are not down), so rows
-- routed to other kinds are passed over without being locked, and a backlog
-- for one kind never hides another's messages. Carriers with max_per_second
-- get at most what their token bucket holds. When the claim comes back
-- short, due messages that no carrier can take wait 30 s (NO_ROUTE); they
-- expire if that lasts past their validity.
CREATE FUNCTION envoisms.dispatch_claim(carrier_kinds text[], only_carrier text, batch int, lease interval)
RETURNS TABLE (account_id text, message_id text, carrier_id text, carrier_kind text, to_number text,
               sender_id text, channel text, body text, encoding text, segments int, buttons jsonb,
               metadata jsonb, attempts int, expires_at timestamptz, carrier_config jsonb)
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    allowance jsonb := '{}';
    claimed int;
BEGIN
    IF batch IS NULL OR batch < 1 OR lease IS NULL OR lease <= interval '0' THEN
        RAISE EXCEPTION 'dispatch_claim needs a positive batch and lease'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Refill the token buckets of rate-capped carriers this claim may use.
    IF EXISTS (SELECT 1 FROM envoisms.carriers c WHERE c.max_per_second IS NOT NULL AND c.kind = ANY (carrier_kinds)) THEN
        INSERT INTO envoisms.carrier_rate_state AS s (carrier_id, tokens, updated_at)
        SELECT c.carrier_id, c.max_per_second, now() FROM envoisms.carriers c
         WHERE c.max_per_second IS NOT NULL AND c.kind = ANY (carrier_kinds)
           AND (only_carrier IS NULL OR c.carrier_id = only_carrier)
        ON CONFLICT ON CONSTRAINT carrier_rate_state_pkey DO UPDATE
           SET tokens = least(EXCLUDED.tokens,
                              s.tokens + EXCLUDED.tokens * extract(epoch FROM now() - s.updated_at)),
               updated_at = now();
        SELECT coalesce(jsonb_object_agg(s.carrier_id, floor(s.tokens)::int), '{}') INTO allowance
          FROM envoisms.carrier_rate_state s JOIN envoisms.carriers c ON c.carrier_id = s.carrier_id
         WHERE c.max_per_second IS NOT NULL AND c.kind = ANY (carrier_kinds)
           AND (only_carrier IS NULL OR c.carrier_id = only_carrier);
    END IF;

    RETURN QUERY
    WITH usable AS MATERIALIZED (
        SELECT r.channel, r.prefix, r.priority, c.carrier_id, c.kind, c.config
          FROM envoisms.routes r JOIN envoisms.carriers c ON c.carrier_id = r.carrier_id
         WHERE c.enabled AND (c.down_until IS NULL OR c.down_until <= now())
    ), sandbox_carrier AS MATERIALIZED (
        SELECT c.carrier_id, c.kind, c.config FROM envoisms.carriers c WHERE c.carrier_id = 'sandbox'
    ), locked AS (
        SELECT m.account_id, m.message_id, m.next_attempt_at, rt.carrier_id AS routed, rt.kind, rt.config
          FROM envoisms.messages m
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
           AND rt.kind = ANY (carrier_kinds) AND (only_carrier IS NULL OR rt.carrier_id = only_carrier)
           AND coalesce((allowance->>rt.carrier_id)::int, 1) > 0
         ORDER BY m.next_attempt_at
         LIMIT batch
           FOR UPDATE OF m SKIP LOCKED
    ), chosen AS (
        SELECT l.* FROM (SELECT lk.*, row_number() OVER (PARTITION BY lk.routed ORDER BY lk.next_attempt_at) AS rn
                           FROM locked lk) l
         WHERE l.rn <= coalesce((allowance->>l.routed)::int, 2147483647)
    ), leased AS (
        UPDATE envoisms.messages m
           SET carrier_id = ch.routed, locked_until = now() + lease, attempts = m.attempts + 1,
               updated_at = now()
          FROM chosen ch
         WHERE m.account_id = ch.account_id AND m.message_id = ch.message_id
        RETURNING m.account_id, m.message_id, m.carrier_id, ch.kind, m.to_number, m.sender_id, m.channel::text,
                  m.body, m.encoding::text, m.segments::int, m.buttons, m.metadata, m.attempts, m.expires_at, ch.config
    ), spent AS (
        UPDATE envoisms.carrier_rate_state s SET tokens = s.tokens - n.used
          FROM (SELECT l.carrier_id, count(*) AS used FROM leased l GROUP BY 1) n
         WHERE s.carrier_id = n.carrier_id
        RETURNING 1
    )
    SELECT l.* FROM leased l;
    GET DIAGNOSTICS claimed = ROW_COUNT;

    IF claimed < batch THEN
        -- what no carrier takes (no route, or only disabled / down carriers) waits
        UPDATE envoisms.messages m
           SET next_attempt_at = now() + interval '30 seconds', error_code = 'NO_ROUTE',
               error_message = 'no enabled carrier routes this number on this channel'
         WHERE m.ctid = ANY (ARRAY(
                SELECT x.ctid FROM envoisms.messages x
                 WHERE x.status = 'queued' AND x.next_attempt_at <= now() AND NOT x.sandbox
                   AND (x.locked_until IS NULL OR x.locked_until < now())
                   AND NOT EXISTS (SELECT 1 FROM envoisms.routes r JOIN envoisms.carriers c ON c.carrier_id = r.carrier_id
                                    WHERE c.enabled AND (c.down_until IS NULL OR c.down_until <= now())
                                      AND r.channel = x.channel AND starts_with(ltrim(x.to_number, '+'), r.prefix))
                 ORDER BY x.next_attempt_at
                 LIMIT batch
                   FOR UPDATE SKIP LOCKED));
    END IF;
END
$$;

-- When the next claimable queued message is due (NULL when none): the
-- dispatcher's timed wake.
CREATE FUNCTION envoisms.dispatch_next_due() RETURNS timestamptz
LANGUAGE sql STABLE SET search_path = pg_catalog AS $$
    SELECT m.next_attempt_at FROM envoisms.messages m
     WHERE m.status = 'queued' AND (m.locked_until IS NULL OR m.locked_until < now())
     ORDER BY m.next_attempt_at LIMIT 1
$$;

-- Release leases without an outcome (a worker stopping): the messages are
-- claimable at once and the attempt does not count.
CREATE FUNCTION envoisms.dispatch_release(account_id text, message_id text) RETURNS boolean
LANGUAGE sql SET search_path = pg_catalog AS $$
    UPDATE envoisms.messages m SET locked_until = NULL, attempts = greatest(m.attempts - 1, 0), updated_at = now()
     WHERE m.account_id = dispatch_release.account_id AND m.message_id = dispatch_release.message_id
       AND m.status = 'queued' AND m.locked_until IS NOT NULL
    RETURNING true
$$;

-- At a worker's start: release the leases taken before `since` (the start of
-- this server's shared memory, so leases of workers killed by a crash) on
-- carriers of the given kinds. Leases taken since belong to live workers.
CREATE FUNCTION envoisms.dispatch_reclaim(carrier_kinds text[], since timestamptz) RETURNS int
LANGUAGE sql SET search_path = pg_catalog AS $$
    WITH r AS (
        UPDATE envoisms.messages m SET locked_until = NULL
         WHERE m.status = 'queued' AND m.locked_until > now() AND m.updated_at < since
           AND m.carrier_id IN (SELECT c.carrier_id FROM envoisms.carriers c WHERE c.kind = ANY (carrier_kinds))
        RETURNING 1)
    SELECT count(*)::int FROM r
$$;

-- Expire a message (validity over) and refund it; false when not queued/sent.
CREATE FUNCTION envoisms.message_expire(account_id text, message_id text, error_code text DEFAULT 'EXPIRED',
                                        error_message text DEFAULT 'the message validity ended before delivery')
RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    UPDATE envoisms.messages m
       SET status = 'expired', locked_until = NULL, updated_at = now(),
           error_code = message_expire.error_code, error_message = message_expire.error_message
     WHERE m.account_id = message_expire.account_id AND m.message_id = message_expire.message_id
       AND m.status IN ('queued', 'sent');
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM envoisms.message_refund(account_id, message_id, 'expired');
    RETURN true;
END
$$;

-- Cascade: a WhatsApp attempt of a cascade message failed, so it goes back
-- to the queue as an SMS, priced per segment. A dearer SMS debits the
-- difference (ledger 'debit', the message id); a cheaper one is not
-- credited (the WhatsApp charge stands). Returns false when the balance
-- cannot pay the SMS (the caller then fails the message and refunds it).
CREATE FUNCTION envoisms.message_cascade_to_sms(account_id text, message_id text, error_code text,
                                                error_message text)
RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    m envoisms.messages;
    seg record;
    price record;
    new_mad numeric;
    new_eur numeric;
    diff numeric;
BEGIN
    SELECT * INTO m FROM envoisms.messages x
     WHERE x.account_id = message_cascade_to_sms.account_id AND x.message_id = message_cascade_to_sms.message_id
       FOR UPDATE;
    IF NOT FOUND OR NOT m.cascade OR m.channel <> 'whatsapp' OR m.status NOT IN ('queued', 'sent')
       OR m.body IS NULL OR m.refunded_mad > 0 THEN
        RETURN false;
    END IF;
    SELECT * INTO seg FROM envoisms.sms_segments(m.body);
    SELECT * INTO price FROM envoisms.channel_prices(m.account_id, 'sms');
    new_mad := price.mad * seg.segments;
    new_eur := price.eur * seg.segments;
    diff := CASE WHEN m.sandbox THEN 0 ELSE new_mad - m.charged_mad END;
    IF diff > 0 THEN
        BEGIN
            PERFORM envoisms.balance_debit(m.account_id, diff);
        EXCEPTION WHEN SQLSTATE 'EV421' THEN
            RETURN false;
        END;
        INSERT INTO envoisms.ledger (account_id, kind, amount_mad, message_id, reference)
        VALUES (m.account_id, 'debit', -diff, m.message_id, 'cascade: WhatsApp failed, sent as SMS');
    END IF;
    UPDATE envoisms.messages x
       SET channel = 'sms', buttons = NULL, encoding = seg.encoding, segments = seg.segments,
           cost_mad = new_mad, cost_eur = new_eur, status = 'queued', locked_until = NULL,
           next_attempt_at = now(), carrier_id = NULL, carrier_ref = NULL, sent_at = NULL,
           error_code = message_cascade_to_sms.error_code, error_message = message_cascade_to_sms.error_message,
           updated_at = now()
     WHERE x.account_id = m.account_id AND x.message_id = m.message_id;
    INSERT INTO envoisms.message_events (account_id, message_id, status, detail)
    VALUES (m.account_id, m.message_id, 'queued',
            jsonb_strip_nulls(jsonb_build_object('cascade', 'sms', 'error_code', error_code,
                                                 'error_message', error_message, 'carrier_id', m.carrier_id)));
    RETURN true;
END
$$;

-- Fail a message and refund what it cost, once: its charge and any cascade
-- debit. Cascade WhatsApp messages fall back to SMS instead when they can.
-- Returns the resulting status ('failed', 'queued' for a cascade) or NULL
-- when the message was not in a state that can fail.
CREATE FUNCTION envoisms.message_fail(account_id text, message_id text, error_code text, error_message text)
RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    extra numeric;
BEGIN
    IF envoisms.message_cascade_to_sms(account_id, message_id, error_code, error_message) THEN
        RETURN 'queued';
    END IF;
    UPDATE envoisms.messages m
       SET status = 'failed', locked_until = NULL, updated_at = now(),
           error_code = message_fail.error_code, error_message = message_fail.error_message
     WHERE m.account_id = message_fail.account_id AND m.message_id = message_fail.message_id
       AND m.status IN ('queued', 'sent');
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    PERFORM envoisms.message_refund(account_id, message_id, left('failed: ' || coalesce(error_code, ''), 200));
    -- a cascade's SMS debit is given back too (once: only while not yet given back)
    SELECT -sum(l.amount_mad) INTO extra FROM envoisms.ledger l
     WHERE l.account_id = message_fail.account_id AND l.message_id = message_fail.message_id
       AND l.kind = 'debit';
    IF extra > 0 THEN
        INSERT INTO envoisms.ledger (account_id, kind, amount_mad, message_id, reference)
        VALUES (account_id, 'adjustment', extra, message_id, 'refund of the cascade SMS difference');
        PERFORM envoisms.balance_credit(account_id, extra);
    END IF;
    RETURN 'failed';
END
$$;

-- Internal: apply one delivery report to a known message. Returns 'applied',
-- 'duplicate' (already in that state) or 'ignored' (a final state differs).
CREATE FUNCTION envoisms.dlr_apply_message(m_account text, m_id text, status text, error_code text,
                                           error_message text)
RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    current text;
BEGIN
    SELECT m.status INTO current FROM envoisms.messages m
     WHERE m.account_id = m_account AND m.message_id = m_id FOR UPDATE;
    IF current = status THEN
        RETURN 'duplicate';
    END IF;
    IF current <> 'sent' THEN
        RETURN 'ignored';                 -- final already (or back in the queue after a cascade)
    END IF;
    IF status = 'delivered' THEN
        UPDATE envoisms.messages m SET status = 'delivered', delivered_at = now(), updated_at = now()
         WHERE m.account_id = m_account AND m.message_id = m_id;
    ELSIF status = 'failed' THEN
        PERFORM envoisms.message_fail(m_account, m_id, coalesce(error_code, 'UNDELIVERABLE'),
                                      coalesce(error_message, 'the carrier reported the message undeliverable'));
    ELSIF status = 'expired' THEN
        PERFORM envoisms.message_expire(m_account, m_id, coalesce(error_code, 'EXPIRED'),
                                        coalesce(error_message, 'the carrier reported the message expired'));
    ELSE
        RETURN 'duplicate';               -- 'sent' for a sent message
    END IF;
    RETURN 'applied';
END
$$;

-- A delivery report from a carrier: 'applied', 'duplicate', 'ignored', or
-- 'pending' when the carrier's id is not known yet (kept in pending_dlrs
-- and applied by dispatch_sent). Idempotent.
CREATE FUNCTION envoisms.dlr_apply(carrier_id text, carrier_ref text, status text,
                                   error_code text DEFAULT NULL, error_message text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    m record;
BEGIN
    IF status IS NULL OR status NOT IN ('delivered', 'failed', 'expired', 'sent') THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR',
            'status must be one of delivered, failed, expired, sent', 'status');
    END IF;
    IF carrier_ref IS NULL OR length(carrier_ref) NOT BETWEEN 1 AND 200 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'the carrier message id must be 1 to 200 characters', 'id');
    END IF;
    SELECT x.account_id, x.message_id INTO m FROM envoisms.messages x
     WHERE x.carrier_id = dlr_apply.carrier_id AND x.carrier_ref = dlr_apply.carrier_ref;
    IF NOT FOUND THEN
        INSERT INTO envoisms.pending_dlrs (carrier_id, carrier_ref, status, error_code, error_message)
        VALUES (carrier_id, carrier_ref, status, left(error_code, 100), left(error_message, 500))
        ON CONFLICT DO NOTHING;
        RETURN 'pending';
    END IF;
    RETURN envoisms.dlr_apply_message(m.account_id, m.message_id, status, left(error_code, 100),
                                      left(error_message, 500));
END
$$;

-- The carrier accepted the message: 'sent', then any report that came first.
-- Returns false when the message was not leased-queued (a late duplicate).
CREATE FUNCTION envoisms.dispatch_sent(account_id text, message_id text, carrier_id text, carrier_ref text)
RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    d record;
BEGIN
    UPDATE envoisms.messages m
       SET status = 'sent', sent_at = now(), carrier_id = dispatch_sent.carrier_id,
           carrier_ref = dispatch_sent.carrier_ref, locked_until = NULL, updated_at = now(),
           error_code = NULL, error_message = NULL
     WHERE m.account_id = dispatch_sent.account_id AND m.message_id = dispatch_sent.message_id
       AND m.status = 'queued';
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF carrier_ref IS NOT NULL THEN
        FOR d IN DELETE FROM envoisms.pending_dlrs p
                  WHERE p.carrier_id = dispatch_sent.carrier_id AND p.carrier_ref = dispatch_sent.carrier_ref
                 RETURNING p.status, p.error_code, p.error_message
        LOOP
            -- the first final report applied stays (the others are then 'ignored')
            IF d.status <> 'sent' THEN
                PERFORM envoisms.dlr_apply_message(account_id, message_id, d.status, d.error_code, d.error_message);
            END IF;
        END LOOP;
    END IF;
    RETURN true;
END
$$;

-- A transient failure: back to the queue after `delay`, or expired and
-- refunded when that is past the message's validity. Returns the status.
CREATE FUNCTION envoisms.dispatch_retry(account_id text, message_id text, error_code text, error_message text,
                                        delay interval)
RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    valid_until timestamptz;
BEGIN
    SELECT m.expires_at INTO valid_until FROM envoisms.messages m
     WHERE m.account_id = dispatch_retry.account_id AND m.message_id = dispatch_retry.message_id
       AND m.status = 'queued' FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF now() + coalesce(delay, interval '0') >= valid_until THEN
        PERFORM envoisms.message_expire(account_id, message_id, coalesce(error_code, 'EXPIRED'),
            'the message validity ended while retrying: ' || coalesce(error_message, 'carrier unavailable'));
        RETURN 'expired';
    END IF;
    UPDATE envoisms.messages m
       SET next_attempt_at = now() + coalesce(delay, interval '0'), locked_until = NULL, updated_at = now(),
           error_code = left(dispatch_retry.error_code, 100), error_message = left(dispatch_retry.error_message, 500)
     WHERE m.account_id = dispatch_retry.account_id AND m.message_id = dispatch_retry.message_id;
    RETURN 'queued';
END
$$;

-- A permanent failure (the carrier rejected the message): 'failed' and
-- refunded once, or back to the queue as an SMS for a cascade.
CREATE FUNCTION envoisms.dispatch_failed(account_id text, message_id text, error_code text, error_message text)
RETURNS text
LANGUAGE sql SET search_path = pg_catalog
RETURN envoisms.message_fail(account_id, message_id, left(error_code, 100), left(error_message, 500));

-- Record a batch of outcomes in one transaction (the dispatcher's second
-- transaction): [{"op":"sent"|"retry"|"failed"|"release", "a": account_id,
-- "m": message_id, "c": carrier_id, "r": carrier_ref, "code", "msg",
-- "delay_ms"}]. The 'sent' outcomes, nearly all of them, are applied in one
-- statement (then any early report); the others one by one. Returns how
-- many were applied.
CREATE FUNCTION envoisms.dispatch_record(outcomes jsonb) RETURNS int
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    o record;
    d record;
    n int := 0;
    ok boolean;
BEGIN
    WITH s AS (
        SELECT x.a, x.m, x.c, x.r FROM jsonb_to_recordset(outcomes) AS x(op text, a text, m text, c text, r text)
         WHERE x.op = 'sent'
    ), upd AS (
        UPDATE envoisms.messages m
           SET status = 'sent', sent_at = now(), carrier_id = s.c, carrier_ref = s.r, locked_until = NULL,
               updated_at = now(), error_code = NULL, error_message = NULL
          FROM s
         WHERE m.account_id = s.a AND m.message_id = s.m AND m.status = 'queued'
        RETURNING 1
    )
    SELECT count(*) INTO n FROM upd;
    -- delivery reports that came before the submit answer
    IF EXISTS (SELECT 1 FROM envoisms.pending_dlrs) THEN
        FOR d IN DELETE FROM envoisms.pending_dlrs p
                  USING jsonb_to_recordset(outcomes) AS x(op text, a text, m text, c text, r text)
                  WHERE x.op = 'sent' AND p.carrier_id = x.c AND p.carrier_ref = x.r
                 RETURNING x.a, x.m, p.status, p.error_code, p.error_message
        LOOP
            IF d.status <> 'sent' THEN
                PERFORM envoisms.dlr_apply_message(d.a, d.m, d.status, d.error_code, d.error_message);
            END IF;
        END LOOP;
    END IF;

    FOR o IN SELECT * FROM jsonb_to_recordset(outcomes)
                    AS x(op text, a text, m text, c text, r text, code text, msg text, delay_ms double precision)
              WHERE x.op <> 'sent'
    LOOP
        CASE o.op
        WHEN 'retry' THEN
            ok := envoisms.dispatch_retry(o.a, o.m, o.code, o.msg,
                                          make_interval(secs => coalesce(o.delay_ms, 0) / 1000)) IS NOT NULL;
        WHEN 'failed' THEN
            ok := envoisms.dispatch_failed(o.a, o.m, o.code, o.msg) IS NOT NULL;
        WHEN 'release' THEN
            ok := coalesce(envoisms.dispatch_release(o.a, o.m), false);
        ELSE
            RAISE EXCEPTION 'unknown dispatch outcome "%"', o.op USING ERRCODE = 'invalid_parameter_value';
        END CASE;
        IF ok THEN
            n := n + 1;
        END IF;
    END LOOP;
    RETURN n;
END
$$;

-- The sandbox carrier's delivery reports: messages it sent at least `delay`
-- ago become delivered (in one statement), or failed / expired for the
-- magic numbers. Returns how many were applied (at most `batch`).
CREATE FUNCTION envoisms.sandbox_deliver_due(delay interval, batch int) RETURNS int
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    m record;
    n int := 0;
BEGIN
    FOR m IN WITH due AS (
                 SELECT x.account_id, x.message_id, x.to_number FROM envoisms.messages x
                  WHERE x.status = 'sent' AND left(x.carrier_ref, 4) = 'sbx_' AND x.sent_at <= now() - delay
                  ORDER BY x.sent_at LIMIT batch FOR UPDATE SKIP LOCKED
             ), delivered AS (
                 UPDATE envoisms.messages x SET status = 'delivered', delivered_at = now(), updated_at = now()
                   FROM due
                  WHERE x.account_id = due.account_id AND x.message_id = due.message_id
                    AND due.to_number NOT IN ('+212600000001', '+212600000002')
                 RETURNING 1
             )
             SELECT due.*, (SELECT count(*) FROM delivered) AS n_delivered FROM due
              WHERE due.to_number IN ('+212600000001', '+212600000002')
             UNION ALL
             SELECT NULL, NULL, NULL, (SELECT count(*) FROM delivered)
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
    RETURN n;
END
$$;

-- When the next sandbox delivery report is due (NULL when none).
CREATE FUNCTION envoisms.sandbox_next_due(delay interval) RETURNS timestamptz
LANGUAGE sql STABLE SET search_path = pg_catalog AS $$
    SELECT x.sent_at + delay FROM envoisms.messages x
     WHERE x.status = 'sent' AND left(x.carrier_ref, 4) = 'sbx_'
     ORDER BY x.sent_at LIMIT 1
$$;

-- Open a carrier's circuit for `seconds` (routes fail over meanwhile).
CREATE FUNCTION envoisms.carrier_trip(carrier_id text, seconds int) RETURNS void
LANGUAGE sql SET search_path = pg_catalog AS $$
    UPDATE envoisms.carriers c SET down_until = now() + make_interval(secs => seconds)
     WHERE c.carrier_id = carrier_trip.carrier_id
$$;

-- ---- delivery-report intake (served by envoisms.api, so by the gateway)

-- Check a carrier's intake token (config.dlr_token) sent as the header
-- X-Carrier-Token or the query parameter token; UNAUTHORIZED otherwise.
-- Returns the carrier row.
CREATE FUNCTION envoisms.carrier_authenticate(req envoisms.api_request, want_kind text)
RETURNS envoisms.carriers
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    c envoisms.carriers;
    given text := coalesce(req.headers->>'x-carrier-token', req.query->>'token');
BEGIN
    SELECT * INTO c FROM envoisms.carriers x WHERE x.carrier_id = req.id AND x.kind = want_kind;
    IF NOT FOUND OR c.config->>'dlr_token' IS NULL OR given IS NULL
       OR NOT envoisms.secure_equals(given, c.config->>'dlr_token') THEN
        PERFORM envoisms.raise_error('UNAUTHORIZED', 'unknown carrier or wrong carrier token');
    END IF;
    RETURN c;
END
$$;

-- POST /v1/carriers/:id/dlr — the http carrier's delivery reports:
-- {"id": "<carrier message id>", "status": "delivered"|"failed"|"expired"|"sent",
--  "error_code", "error_message"} or {"reports": [ ... ]}.
CREATE FUNCTION envoisms.api_carrier_dlr(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    c envoisms.carriers := envoisms.carrier_authenticate(req, 'http');
    id_field text := coalesce(c.config->>'id_field', 'id');
    r jsonb;
    results jsonb := '[]';
BEGIN
    FOR r IN SELECT value FROM jsonb_array_elements(
                 CASE WHEN jsonb_typeof(req.body->'reports') = 'array' THEN req.body->'reports'
                      ELSE jsonb_build_array(req.body) END)
    LOOP
        IF jsonb_typeof(r) <> 'object' THEN
            PERFORM envoisms.raise_error('VALIDATION_ERROR', 'each report must be an object', 'reports');
        END IF;
        results := results || jsonb_build_object('id', r->>id_field, 'result',
            envoisms.dlr_apply(c.carrier_id, coalesce(r->>id_field, r->>'id'), lower(r->>'status'),
                               r->>'error_code', r->>'error_message'));
    END LOOP;
    RETURN envoisms.reply(200, jsonb_build_object('received', jsonb_array_length(results), 'results', results));
END
$$;

-- GET /v1/carriers/:id/whatsapp — the WhatsApp Cloud webhook handshake:
-- echo hub.challenge when hub.verify_token matches config.verify_token.
CREATE FUNCTION envoisms.api_whatsapp_verify(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    c envoisms.carriers;
BEGIN
    SELECT * INTO c FROM envoisms.carriers x WHERE x.carrier_id = req.id AND x.kind = 'whatsapp_cloud';
    IF NOT FOUND OR req.query->>'hub.mode' IS DISTINCT FROM 'subscribe' OR c.config->>'verify_token' IS NULL
       OR NOT envoisms.secure_equals(coalesce(req.query->>'hub.verify_token', ''), c.config->>'verify_token') THEN
        PERFORM envoisms.raise_error('FORBIDDEN', 'verification failed');
    END IF;
    -- the challenge is echoed as the JSON body (a JSON number or string)
    RETURN ROW(200, '{}'::jsonb,
               CASE WHEN req.query->>'hub.challenge' ~ '^[0-9]{1,18}$' THEN to_jsonb((req.query->>'hub.challenge')::bigint)
                    ELSE to_jsonb(coalesce(req.query->>'hub.challenge', '')) END)::envoisms.api_reply;
END
$$;

-- POST /v1/carriers/:id/whatsapp — WhatsApp Cloud status callbacks, verified
-- with X-Hub-Signature-256 (HMAC-SHA256 of the raw body under config.app_secret).
CREATE FUNCTION envoisms.api_whatsapp_status(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    c envoisms.carriers;
    s jsonb;
    st text;
    n int := 0;
BEGIN
    SELECT * INTO c FROM envoisms.carriers x WHERE x.carrier_id = req.id AND x.kind = 'whatsapp_cloud';
    IF NOT FOUND OR c.config->>'app_secret' IS NULL OR req.raw_body IS NULL
       OR NOT envoisms.secure_equals(coalesce(req.headers->>'x-hub-signature-256', ''),
                                     'sha256=' || envoisms.hmac_sha256_hex(c.config->>'app_secret', req.raw_body)) THEN
        PERFORM envoisms.raise_error('UNAUTHORIZED', 'missing or wrong X-Hub-Signature-256');
    END IF;
    FOR s IN SELECT st_el.value
               FROM jsonb_array_elements(coalesce(req.body->'entry', '[]')) e(value),
                    jsonb_array_elements(coalesce(e.value->'changes', '[]')) ch(value),
                    jsonb_array_elements(coalesce(ch.value->'value'->'statuses', '[]')) st_el(value)
    LOOP
        st := CASE s->>'status' WHEN 'sent' THEN 'sent' WHEN 'delivered' THEN 'delivered'
                                WHEN 'read' THEN 'delivered' WHEN 'failed' THEN 'failed' END;
        CONTINUE WHEN st IS NULL OR s->>'id' IS NULL;
        PERFORM envoisms.dlr_apply(c.carrier_id, s->>'id', st,
                                   s->'errors'->0->>'code', s->'errors'->0->>'title');
        n := n + 1;
    END LOOP;
    RETURN envoisms.reply(200, jsonb_build_object('received', n));
END
$$;

-- Public: carriers send no API key; each handler authenticates its carrier.
INSERT INTO envoisms.api_endpoints (method, template, handler, permission, public) VALUES
    ('POST', '/v1/carriers/:id/dlr',      'envoisms.api_carrier_dlr(envoisms.api_request)',      'status', true),
    ('GET',  '/v1/carriers/:id/whatsapp', 'envoisms.api_whatsapp_verify(envoisms.api_request)',  'status', true),
    ('POST', '/v1/carriers/:id/whatsapp', 'envoisms.api_whatsapp_status(envoisms.api_request)',  'status', true);

-- ---- src/sql/87_workers.sql
-- 87_workers.sql — what the background workers call besides the dispatcher
-- interface of 85_carriers.sql: the commit wakes, the worker_stats view,
-- the webhook worker's claim and outcome functions, and the scheduler's
-- sweeps (expiry, retention, stale delivery reports).
--
-- Webhook deliveries follow the dispatcher's shape: claim with FOR UPDATE
-- SKIP LOCKED and a lease, POST outside any transaction, record the
-- outcome in a second short transaction. The payload and event id were
-- fixed when the delivery was queued (35_events.sql), so every retry sends
-- the same bytes. A 410 Gone, or failures without a single success for
-- envoisms.webhook_disable_after, disable the webhook and cancel its
-- pending deliveries.
--
-- Retention (docs/workers.md): past envoisms.retention_days, a final
-- message keeps its row (so analytics totals and the ledger are untouched
-- and envoisms.balance_check() still holds) but loses its body, and its
-- delivery log (message_events) is deleted; old finished webhook
-- deliveries and week-old unmatched delivery reports are deleted. Each
-- call handles one small batch in its own transaction.

CREATE FUNCTION envoisms.wake_dispatcher() RETURNS boolean
AS 'MODULE_PATHNAME', 'wake_dispatcher' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION envoisms.wake_dispatcher() IS
'Wake the dispatchers when the calling transaction commits; false (and nothing happens) without the preload';

CREATE FUNCTION envoisms.wake_webhooks() RETURNS boolean
AS 'MODULE_PATHNAME', 'wake_webhooks' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION envoisms.wake_webhooks() IS
'Wake the webhook workers when the calling transaction commits; false (and nothing happens) without the preload';

CREATE FUNCTION envoisms.worker_stats_raw()
RETURNS TABLE (worker text, kind text, index int, pid int, started_at timestamptz, claimed bigint,
               sent bigint, failed bigint, retried bigint, in_flight int, last_error text,
               last_error_at timestamptz)
AS 'MODULE_PATHNAME', 'worker_stats' LANGUAGE C VOLATILE;

-- Per worker: messages (or webhook deliveries) claimed, sent (delivered to
-- the receiver for webhooks), failed for good, retried, in flight now, and
-- the last error. pid is NULL while a worker is not running.
CREATE VIEW envoisms.worker_stats AS
    SELECT worker, kind, index, pid, started_at, claimed, sent, failed, retried, in_flight,
           last_error, last_error_at
      FROM envoisms.worker_stats_raw();

-- ---- webhook deliveries

-- Claim up to `batch` due deliveries, at most `per_endpoint` per webhook
-- minus what the worker already has in flight to it (`busy`:
-- {"<account_id>/<webhook_id>": n}). The choice is made on a plain read;
-- only the chosen rows are then locked (SKIP LOCKED, conditions re-checked),
-- so a claim never writes row locks it does not use. Deliveries of deleted
-- or disabled webhooks are cancelled (a message.test is delivered to a
-- disabled one).
CREATE FUNCTION envoisms.webhook_claim(batch int, lease interval, per_endpoint int, busy jsonb DEFAULT '{}')
RETURNS TABLE (account_id text, delivery_id bigint, webhook_id text, event_id text, event_type text,
               payload text, attempts int, url text, secret text)
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN QUERY
    WITH candidates AS (
        SELECT d.account_id, d.delivery_id, d.webhook_id, d.event_type, d.next_attempt_at,
               d.account_id || '/' || d.webhook_id AS endpoint
          FROM envoisms.webhook_deliveries d
         WHERE d.status = 'pending' AND d.next_attempt_at <= now()
           AND (d.locked_until IS NULL OR d.locked_until < now())
           AND coalesce((busy->>(d.account_id || '/' || d.webhook_id))::int, 0) < per_endpoint
         ORDER BY d.next_attempt_at
         LIMIT batch * 4
    ), ranked AS (
        SELECT c.*, w.url, w.secret,
               w.deleted_at IS NULL AND (w.active OR c.event_type = 'message.test') AS live,
               row_number() OVER (PARTITION BY c.endpoint ORDER BY c.next_attempt_at) AS rn
          FROM candidates c
          JOIN envoisms.webhooks w ON w.account_id = c.account_id AND w.webhook_id = c.webhook_id
    ), picked AS (
        SELECT r.* FROM ranked r
         WHERE NOT r.live OR r.rn <= per_endpoint - coalesce((busy->>r.endpoint)::int, 0)
         ORDER BY r.next_attempt_at
         LIMIT batch
    ), locked AS (
        SELECT p.account_id, p.delivery_id, p.url, p.secret, p.live
          FROM envoisms.webhook_deliveries d
          JOIN picked p ON p.account_id = d.account_id AND p.delivery_id = d.delivery_id
         WHERE d.status = 'pending' AND (d.locked_until IS NULL OR d.locked_until < now())
           FOR UPDATE OF d SKIP LOCKED
    ), cancelled AS (
        UPDATE envoisms.webhook_deliveries d
           SET status = 'cancelled', last_error = 'the webhook was disabled or deleted', locked_until = NULL
          FROM locked l
         WHERE NOT l.live AND d.account_id = l.account_id AND d.delivery_id = l.delivery_id
        RETURNING 1
    ), leased AS (
        UPDATE envoisms.webhook_deliveries d
           SET locked_until = now() + lease, attempts = d.attempts + 1
          FROM locked l
         WHERE l.live AND d.account_id = l.account_id AND d.delivery_id = l.delivery_id
        RETURNING d.account_id, d.delivery_id, d.webhook_id, d.event_id, d.event_type, d.payload, d.attempts,
                  l.url, l.secret
    )
    SELECT l.* FROM leased l;
END
$$;

-- When the next webhook delivery is due (NULL when none pending).
CREATE FUNCTION envoisms.webhook_next_due() RETURNS timestamptz
LANGUAGE sql STABLE SET search_path = pg_catalog AS $$
    SELECT d.next_attempt_at FROM envoisms.webhook_deliveries d
     WHERE d.status = 'pending' AND (d.locked_until IS NULL OR d.locked_until < now())
     ORDER BY d.next_attempt_at LIMIT 1
$$;

-- Stop a webhook: inactive, with the reason; its pending deliveries cancelled.
CREATE FUNCTION envoisms.webhook_disable(account_id text, webhook_id text, reason text) RETURNS void
LANGUAGE sql SET search_path = pg_catalog AS $$
    UPDATE envoisms.webhooks w SET active = false, disabled_reason = left(reason, 200)
     WHERE w.account_id = webhook_disable.account_id AND w.webhook_id = webhook_disable.webhook_id;
    UPDATE envoisms.webhook_deliveries d
       SET status = 'cancelled', locked_until = NULL, last_error = left('the webhook was disabled: ' || reason, 500)
     WHERE d.account_id = webhook_disable.account_id AND d.webhook_id = webhook_disable.webhook_id
       AND d.status = 'pending';
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
-- [{"a": account_id, "d": delivery_id, "s": http_status, "e": error, "r": retry_in_ms}].
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
    FOR o IN SELECT x.a, x.d, x.s FROM jsonb_to_recordset(outcomes) AS x(a text, d bigint, s int, e text)
              WHERE x.e IS NULL AND x.s BETWEEN 200 AND 299
    LOOP
        UPDATE envoisms.webhook_deliveries w
           SET status = 'delivered', delivered_at = now(), last_status = o.s, last_error = NULL, locked_until = NULL
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

    FOR o IN SELECT * FROM jsonb_to_recordset(outcomes) AS x(a text, d bigint, s int, e text, r bigint)
              WHERE NOT (x.e IS NULL AND x.s BETWEEN 200 AND 299)
    LOOP
        IF envoisms.webhook_delivery_result(o.a, o.d, o.s, o.e, o.r, disable_after) IS NOT NULL THEN
            n := n + 1;
        END IF;
    END LOOP;
    RETURN n;
END
$$;

-- Release webhook leases without an outcome (a worker stopping).
CREATE FUNCTION envoisms.webhook_release(account_id text, delivery_id bigint) RETURNS void
LANGUAGE sql SET search_path = pg_catalog AS $$
    UPDATE envoisms.webhook_deliveries d SET locked_until = NULL, attempts = greatest(d.attempts - 1, 0)
     WHERE d.account_id = webhook_release.account_id AND d.delivery_id = webhook_release.delivery_id
       AND d.status = 'pending' AND d.locked_until IS NOT NULL
$$;

-- At a worker's start: release webhook leases taken before `since` (the
-- previous server run; `lease` is the lease length they were taken with).
CREATE FUNCTION envoisms.webhook_reclaim(since timestamptz, lease interval) RETURNS int
LANGUAGE sql SET search_path = pg_catalog AS $$
    WITH r AS (
        UPDATE envoisms.webhook_deliveries d SET locked_until = NULL
         WHERE d.status = 'pending' AND d.locked_until > now() AND d.locked_until - lease < since
        RETURNING 1)
    SELECT count(*)::int FROM r
$$;

-- ---- scheduler sweeps

-- Sent messages waiting for a delivery report, by validity (the expiry sweep).
CREATE INDEX messages_sent_expiry ON envoisms.messages (expires_at) WHERE status = 'sent';

-- Expire up to `batch` queued or sent messages past their validity (refunded,
-- webhook, NOTIFY through the status trigger). Returns how many.
CREATE FUNCTION envoisms.expiry_sweep(batch int DEFAULT 1000) RETURNS int
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    m record;
    n int := 0;
BEGIN
    FOR m IN SELECT x.account_id, x.message_id FROM envoisms.messages x
              WHERE x.status = 'sent' AND x.expires_at <= now()
              ORDER BY x.expires_at LIMIT batch FOR UPDATE SKIP LOCKED
    LOOP
        IF envoisms.message_expire(m.account_id, m.message_id) THEN
            n := n + 1;
        END IF;
    END LOOP;
    FOR m IN SELECT x.account_id, x.message_id FROM envoisms.messages x
              WHERE x.status = 'queued' AND x.expires_at <= now()
                AND (x.locked_until IS NULL OR x.locked_until < now())
              ORDER BY x.next_attempt_at LIMIT batch FOR UPDATE SKIP LOCKED
    LOOP
        IF envoisms.message_expire(m.account_id, m.message_id) THEN
            n := n + 1;
        END IF;
    END LOOP;
    RETURN n;
END
$$;

-- Purge one batch of what is older than `days`: message bodies and delivery
-- logs of final messages, finished webhook deliveries, and unmatched
-- delivery reports older than 7 days. Returns the number of messages purged.
CREATE FUNCTION envoisms.retention_purge(days int DEFAULT 90, batch int DEFAULT 1000) RETURNS int
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    cutoff timestamptz := now() - make_interval(days => days);
    n int;
BEGIN
    IF days IS NULL OR days <= 0 THEN
        RETURN 0;
    END IF;
    WITH old AS (
        SELECT x.account_id, x.message_id FROM envoisms.messages x
         WHERE x.created_at < cutoff AND x.body IS NOT NULL
           AND x.status IN ('delivered', 'failed', 'expired', 'received')
         LIMIT batch FOR UPDATE SKIP LOCKED
    ), gone AS (
        DELETE FROM envoisms.message_events e USING old
         WHERE e.account_id = old.account_id AND e.message_id = old.message_id
        RETURNING 1
    ), emptied AS (
        UPDATE envoisms.messages x SET body = NULL
          FROM old WHERE x.account_id = old.account_id AND x.message_id = old.message_id
        RETURNING 1
    )
    SELECT count(*) INTO n FROM emptied;
    DELETE FROM envoisms.webhook_deliveries d
     WHERE d.ctid = ANY (ARRAY(SELECT x.ctid FROM envoisms.webhook_deliveries x
                                WHERE x.status <> 'pending' AND x.created_at < cutoff LIMIT batch));
    DELETE FROM envoisms.pending_dlrs p
     WHERE p.ctid = ANY (ARRAY(SELECT x.ctid FROM envoisms.pending_dlrs x
                                WHERE x.received_at < now() - interval '7 days' LIMIT batch));
    RETURN n;
END
$$;

-- ---- src/sql/88_smpp.sql
-- 88_smpp.sql — the SMPP 3.4 carrier (kind 'smpp'): its settings, delivery
-- receipts, multi-part messages, and the C functions of carrier_smpp*.c and
-- worker_smpp.c.
--
-- One background worker per enabled smpp carrier holds a transceiver bind
-- (worker_smpp.c); a supervisor starts and stops them as carrier rows come
-- and go, woken by the trigger below when carriers change. The worker calls
-- only the functions of this file, dispatch_claim / dispatch_retry /
-- dispatch_failed (85_carriers.sql) and inbound_receive (89_inbound.sql),
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
LANGUAGE sql SET search_path = pg_catalog AS $$
    WITH r AS (
        UPDATE envoisms.messages m SET locked_until = NULL, updated_at = now()
         WHERE m.status = 'queued' AND m.carrier_id = smpp_release_leases.carrier_id
           AND m.locked_until > now()
        RETURNING 1)
    SELECT count(*)::int FROM r
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

-- ---- src/sql/89_inbound.sql
-- 89_inbound.sql — inbound messages (MO) from any carrier, and the STOP /
-- START keywords that maintain the opt-out list.
--
-- A number belongs to an account through envoisms.inbound_numbers, which the
-- operator fills (one row per long number or short code the account
-- receives on). An inbound message becomes a messages row with direction
-- 'inbound' and status 'received'; the row's insert trigger (35_events.sql)
-- logs it, queues 'message.received' webhooks and NOTIFYs. A message to a
-- number nobody owns is kept in envoisms.inbound_unmatched for the operator
-- instead of being dropped, since the carrier was already told "received".
--
-- Keywords (docs/smpp.md has the list): the whole message, once normalised
-- (case, accents, Arabic letter variants and diacritics, punctuation and
-- blanks), must be a keyword; "stop sending" is not "STOP". Ambiguous words
-- are left out on purpose: Darija "safi" means "OK" as often as "enough".

CREATE TABLE envoisms.inbound_numbers (
    account_id  text NOT NULL REFERENCES envoisms.accounts,
    number      text NOT NULL CHECK (number ~ '^(\+[1-9][0-9]{6,14}|[0-9]{3,8})$'),  -- E.164 or a short code
    channel     text NOT NULL DEFAULT 'sms' CHECK (channel IN ('sms', 'whatsapp')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, number, channel)
);
-- A number reaches one account per channel: inbound lookup needs it unique.
CREATE UNIQUE INDEX inbound_numbers_number ON envoisms.inbound_numbers (number, channel);
COMMENT ON TABLE envoisms.inbound_numbers IS
'Which account receives the messages sent to a number (E.164) or a short code; filled by the operator';

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
-- START removes it.
CREATE FUNCTION envoisms.inbound_receive(carrier_id text, from_number text, to_number text, body text,
                                         carrier_ref text DEFAULT NULL, channel text DEFAULT 'sms')
RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    acc text;
    ours text;
    sender text;
    id text;
    seg record;
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
    SELECT n.account_id, n.number INTO acc, ours
      FROM envoisms.inbound_numbers n
     WHERE n.channel = inbound_receive.channel
       AND n.number IN (ours, ltrim(ours, '+'), '+' || ltrim(ours, '+'), coalesce(envoisms.phone_e164(ours, 'MA'), ours))
     LIMIT 1;
    IF acc IS NULL THEN
        INSERT INTO envoisms.inbound_unmatched (carrier_id, from_number, to_number, body, carrier_ref, channel)
        VALUES (inbound_receive.carrier_id, sender, to_number, body, carrier_ref, channel);
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
            body, seg.encoding, least(seg.segments, 100), 'received', inbound_receive.carrier_id, carrier_ref);

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
COMMENT ON FUNCTION envoisms.inbound_receive(text, text, text, text, text, text) IS
'Record an inbound message (direction inbound, status received) for the account owning to_number; applies STOP/START';

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

REVOKE ALL ON FUNCTION envoisms.inbound_receive(text, text, text, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION envoisms.inbound_receive_part(text, text, text, int, int, int, text) FROM PUBLIC;

-- ---- src/sql/95_grants.sql
-- 95_grants.sql — who may do what. Last of the install script, so it covers
-- every object the areas above created.
--
-- Nothing is open to PUBLIC: the tables hold money and keys. The operator
-- grants what is meant, for example to the role the gateway connects as:
--     GRANT USAGE ON SCHEMA envoisms TO gateway;
--     GRANT EXECUTE ON FUNCTION envoisms.api(text, text, text, jsonb, text, inet) TO gateway;
-- envoisms.api is SECURITY DEFINER (with a fixed search_path), so that one
-- grant is all an HTTP front needs. Applications that send in their own
-- transactions are granted the domain functions and tables they use.

REVOKE ALL ON ALL TABLES IN SCHEMA envoisms FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA envoisms FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA envoisms FROM PUBLIC;
REVOKE ALL ON SCHEMA envoisms FROM PUBLIC;

-- ---- src/sql/96_dump.sql
-- 96_dump.sql — operator configuration and queue state of the worker areas
-- (85..89) that pg_dump must keep. The built-in sandbox carrier is made by
-- CREATE EXTENSION, so it is left out of the dump (a restore would collide).
SELECT pg_catalog.pg_extension_config_dump('envoisms.carriers', 'WHERE carrier_id <> ''sandbox''');
SELECT pg_catalog.pg_extension_config_dump('envoisms.routes', '');
SELECT pg_catalog.pg_extension_config_dump('envoisms.pending_dlrs', '');
SELECT pg_catalog.pg_extension_config_dump('envoisms.smpp_parts', '');
SELECT pg_catalog.pg_extension_config_dump('envoisms.inbound_numbers', '');
SELECT pg_catalog.pg_extension_config_dump('envoisms.inbound_unmatched', '');
SELECT pg_catalog.pg_extension_config_dump('envoisms.inbound_unmatched_received_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('envoisms.inbound_parts', '');
