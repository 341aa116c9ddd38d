-- 00_schema.sql — the tables: the state of envoisms. Queues are tables.
--
-- Every row belongs to an account: account_id leads every primary key so the
-- schema can later be distributed by account. Money is numeric, in MAD.
-- Constraints state the invariants the code relies on (a bug fails loudly
-- instead of corrupting money).
--
-- Money design (docs/design.md, "Ids, times, money"): one balance row per
-- account caps an account near 2k sends/s because every send holds that row
-- lock through its commit's WAL flush. The balance is therefore split into
-- buckets (balance_buckets); the balance is their sum. A send debits one
-- bucket it can lock without waiting (SKIP LOCKED); only when no free bucket
-- holds enough does it lock them all and rebalance (20_accounts.sql). The message
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
    topup_id    text,                                       -- the paid top-up (envoisms.topups) a 'topup' credits
    PRIMARY KEY (account_id, entry_id),
    CHECK (kind <> 'topup'  OR amount_mad > 0),
    CHECK (kind <> 'refund' OR (amount_mad > 0 AND message_id IS NOT NULL)),
    CHECK (kind <> 'debit'  OR amount_mad < 0),
    CONSTRAINT ledger_topup_id_kind CHECK (topup_id IS NULL OR kind = 'topup')
);
-- A message is refunded at most once, whatever retries or races happen.
CREATE UNIQUE INDEX ledger_one_refund_per_message
    ON envoisms.ledger (account_id, message_id) WHERE kind = 'refund';
-- A paid top-up (Stripe Checkout, bank transfer) credits once, whatever
-- replays or races happen (82_billing.sql).
CREATE UNIQUE INDEX ledger_one_credit_per_topup
    ON envoisms.ledger (topup_id) WHERE topup_id IS NOT NULL;

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
    -- how deliveries are signed: "sha256=<hex>" of the body (the contract),
    -- or "t=<unix>,v1=<hex>" of "<t>.<body>" (the official SDKs' other form)
    signature_format  text NOT NULL DEFAULT 'sha256' CHECK (signature_format IN ('sha256', 'timestamped')),
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
