-- envoisms 0.5.0 -> 0.6.0 (ALTER EXTENSION envoisms UPDATE). Frozen with the
-- 0.6.0 release: its definitions are those of src/sql at 0.6.0.
\echo Use "ALTER EXTENSION envoisms UPDATE TO '0.6.0'" to load this file. \quit

-- ---- ha: request tokens, a write request's reply by the gateway's token (81_request_outcomes.sql)
CREATE TABLE envoisms.request_outcomes (
    request_token uuid PRIMARY KEY,
    status        int CHECK (status BETWEEN 100 AND 399),   -- NULL: abandoned by the gateway
    headers       jsonb,
    body          jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CHECK ((status IS NULL) = (headers IS NULL))
);
COMMENT ON TABLE envoisms.request_outcomes IS
'Replies of the gateway''s write requests by request token, for an hour: what the gateway answers after a lost connection';

-- envoisms.api() with its reply recorded under request_token when it
-- succeeds, in the same transaction (what the gateway calls for a request
-- that may write). Fails, and rolls the request back, when the token was
-- abandoned by request_outcome() meanwhile.
CREATE FUNCTION envoisms.api_once(request_token uuid, method text, path text, query text DEFAULT '',
                                  headers jsonb DEFAULT '{}', body text DEFAULT NULL, client_ip inet DEFAULT NULL)
RETURNS SETOF envoisms.api_reply
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rep envoisms.api_reply;
BEGIN
    SELECT * INTO rep FROM envoisms.api(method, path, query, headers, body, client_ip);
    IF rep.status < 400 THEN
        INSERT INTO envoisms.request_outcomes (request_token, status, headers, body)
        VALUES (api_once.request_token, rep.status, coalesce(rep.headers, '{}'), rep.body);
    END IF;
    RETURN NEXT rep;
END
$$;
COMMENT ON FUNCTION envoisms.api_once(uuid, text, text, text, jsonb, text, inet) IS
'envoisms.api() with its reply recorded under the gateway''s request token, for request_outcome()';

-- The reply recorded under request_token, with Envoisms-Recovered: true;
-- no row when the request did not commit, and then it never will (the token
-- is recorded as abandoned). Waits for a request still running with that
-- token on this server.
CREATE FUNCTION envoisms.request_outcome(request_token uuid) RETURNS SETOF envoisms.api_reply
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    o envoisms.request_outcomes;
BEGIN
    -- a write either way, so that this commit waits for the synchronous standby
    INSERT INTO envoisms.request_outcomes AS r (request_token) VALUES (request_outcome.request_token)
    ON CONFLICT ON CONSTRAINT request_outcomes_pkey DO UPDATE SET created_at = r.created_at
    RETURNING r.* INTO o;
    IF o.status IS NOT NULL THEN
        RETURN NEXT ROW(o.status, o.headers || '{"Envoisms-Recovered": "true"}', o.body)::envoisms.api_reply;
    END IF;
END
$$;
COMMENT ON FUNCTION envoisms.request_outcome(uuid) IS
'The committed reply of the gateway''s request token, or none, and then the token can never commit';

-- Delete outcomes older than keep; returns how many (the scheduler calls it
-- every minute). A token's first 48 bits are its gateway's clock in ms.
CREATE FUNCTION envoisms.request_outcome_purge(keep interval DEFAULT interval '1 hour') RETURNS int
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    n int;
    bound uuid := (lpad(to_hex((extract(epoch FROM now() - keep) * 1000)::bigint), 12, '0')
                   || repeat('0', 20))::uuid;
BEGIN
    DELETE FROM envoisms.request_outcomes r WHERE r.request_token < bound AND r.created_at < now() - keep;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;
REVOKE ALL ON envoisms.request_outcomes FROM PUBLIC;
REVOKE ALL ON FUNCTION envoisms.api_once(uuid, text, text, text, jsonb, text, inet),
                       envoisms.request_outcome(uuid), envoisms.request_outcome_purge(interval) FROM PUBLIC;
