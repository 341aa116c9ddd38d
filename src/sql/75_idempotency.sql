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
-- A secret the reply shows once (a new API key, a webhook's signing secret)
-- is not kept: the replay says it was shown once instead of holding it in
-- clear for a day.
CREATE FUNCTION envoisms.idempotency_store(req envoisms.api_request, key text, rep envoisms.api_reply) RETURNS void
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

-- Delete expired keys; returns how many (the scheduler worker calls it).
CREATE FUNCTION envoisms.idempotency_purge() RETURNS int
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
