-- 20_accounts.sql — accounts, balances and the ledger (API keys: 65_apikeys.sql).
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
COMMENT ON FUNCTION envoisms.account_create(text, numeric, text, text[]) IS
'Create an account with an opening balance (MAD), a plan and its channels; returns its acc_… id';

-- What a send reads of its account: status, channels, and whether any number
-- opted out of it; every field NULL for no such account. Cached per backend
-- and forgotten when accounts or optouts change (accounts.c, cache.c).
CREATE FUNCTION envoisms.account_lookup(account_id text, OUT status text, OUT channels text[],
                                        OUT has_optouts boolean)
AS 'MODULE_PATHNAME', 'account_lookup' LANGUAGE C STRICT STABLE;

-- The balance: the sum of the buckets.
CREATE FUNCTION envoisms.account_balance(account_id text) RETURNS numeric
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT sum(b.balance_mad) FROM envoisms.balance_buckets b WHERE b.account_id = account_balance.account_id);
END
$$;
COMMENT ON FUNCTION envoisms.account_balance(text) IS
'An account''s balance in MAD (the sum of its balance buckets)';

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
COMMENT ON FUNCTION envoisms.account_topup(text, numeric, text) IS
'Add money to an account (a ledger topup row with an optional reference); returns the new balance';

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
COMMENT ON FUNCTION envoisms.message_refund(text, text, text) IS
'Refund a failed or expired message once (a second call refunds nothing); returns the amount refunded';

-- Prove the books: the buckets hold exactly what the ledger and the
-- messages explain. One row per account (or the given one).
-- The books of balance_check(), in PL/pgSQL: Citus plans a PL/pgSQL query
-- with the account as a constant, and refuses parameterized queries of SQL
-- functions on its tables (96_distribute.sql).
CREATE FUNCTION envoisms.balance_books(only_account text)
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

CREATE FUNCTION envoisms.balance_check(account_id text DEFAULT NULL)
RETURNS TABLE (account_id text, balance_mad numeric, explained_mad numeric, ok boolean)
LANGUAGE sql STABLE AS $$
    SELECT * FROM envoisms.balance_books(balance_check.account_id)
$$;
COMMENT ON FUNCTION envoisms.balance_check(text) IS
'Prove the books: per account, the balance against what the ledger and the messages explain (ok = they agree)';
