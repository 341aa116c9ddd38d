-- 36_api_types.sql — the types every API handler is declared with and the
-- route table areas insert into. They come before the area files (40_* …
-- 90_*) because a handler's signature, handler(envoisms.api_request) RETURNS
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

-- The contract's permission names.
CREATE FUNCTION envoisms.api_permissions() RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN ARRAY['send', 'verify', 'status', 'balance', 'contacts', 'campaigns', 'webhooks',
             'billing', 'analytics', 'api_keys', 'optouts'];

-- The permission names a route may require: the keys' and 'console', which
-- only console sessions hold (92_console_auth.sql).
CREATE FUNCTION envoisms.api_route_permissions() RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN envoisms.api_permissions() || ARRAY['console'];

CREATE TABLE envoisms.api_endpoints (
    method      text NOT NULL CHECK (method IN ('GET', 'POST', 'PATCH', 'PUT', 'DELETE')),
    template    text NOT NULL CHECK (template ~ '^/v1/[a-z-]+(/[a-z:-]+)*$'),
    handler     regprocedure NOT NULL,
    permission  text NOT NULL,     -- one of envoisms.api_route_permissions()
    -- A public route is called without an API key (and without its rate
    -- limit): carriers' delivery reports, which the handler authenticates.
    public      boolean NOT NULL DEFAULT false,
    PRIMARY KEY (method, template),
    CHECK (permission = ANY (envoisms.api_route_permissions()))
);
