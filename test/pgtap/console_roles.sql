-- console_roles.sql — what each console role may do, through the same
-- routes and rules as the API: viewer reads only, billing cannot create
-- keys, developer cannot invite, a session creates no key beyond its
-- role; invitations and the owners' management of users.
BEGIN;
SELECT plan(76);
\ir lib/api_helpers.psql
\ir lib/console_helpers.psql

SELECT pg_temp.new_account(100) AS acc \gset
SELECT pg_temp.new_account(100) AS other \gset
SELECT pg_temp.console_user(:'acc', 'owner@acme.ma', 'owner') AS owner_id \gset
SELECT pg_temp.console_user(:'acc', 'dev@acme.ma', 'developer') AS dev_id \gset
SELECT pg_temp.console_user(:'acc', 'billing@acme.ma', 'billing') AS billing_id \gset
SELECT pg_temp.console_user(:'acc', 'viewer@acme.ma', 'viewer') AS viewer_id \gset
SELECT pg_temp.console_user(:'other', 'owner@other.ma', 'owner') AS other_owner \gset
SELECT pg_temp.session('owner@acme.ma') AS owner \gset
SELECT pg_temp.session('dev@acme.ma') AS dev \gset
SELECT pg_temp.session('billing@acme.ma') AS billing \gset
SELECT pg_temp.session('viewer@acme.ma') AS viewer \gset
SELECT pg_temp.session('owner@other.ma') AS other_s \gset

-- ---- permissions by role
SELECT is((pg_temp.ccall('GET', '/v1/console/session', NULL, :'viewer')).body->'permissions',
          '["status", "analytics", "campaigns", "contacts", "verify", "balance", "console"]', 'viewer: read permissions');
SELECT is((pg_temp.ccall('GET', '/v1/console/session', NULL, :'billing')).body->'permissions',
          '["billing", "balance", "analytics", "console"]', 'billing: billing, balance, analytics');

-- viewer: reads, never writes
SELECT is((pg_temp.ccall('GET', '/v1/messages', NULL, :'viewer')).status, 200, 'viewer reads messages');
SELECT is((pg_temp.ccall('GET', '/v1/contacts', NULL, :'viewer')).status, 200, 'viewer reads contacts');
SELECT * FROM pg_temp.cfails('POST', '/v1/contacts', '{"phone": "+212612345678", "first_name": "A"}', :'viewer', 403, 'FORBIDDEN',
                             'viewer creates a contact');
SELECT * FROM pg_temp.cfails('POST', '/v1/messages', '{"to": "+212612345678", "message": "x"}', :'viewer', 403, 'FORBIDDEN',
                             'viewer sends a message');
SELECT * FROM pg_temp.cfails('POST', '/v1/api-keys', '{"name": "v"}', :'viewer', 403, 'FORBIDDEN', 'viewer creates a key');
SELECT * FROM pg_temp.cfails('GET', '/v1/api-keys', NULL, :'viewer', 403, 'FORBIDDEN', 'viewer lists keys');
SELECT * FROM pg_temp.cfails('PATCH', '/v1/console/account', '{"name": "Hacked"}', :'viewer', 403, 'FORBIDDEN',
                             'viewer changes the account''s identifiers');
SELECT is((pg_temp.ccall('PATCH', '/v1/console/me', '{"name": "Vera"}', :'viewer')).status, 200, 'viewer changes their own name');

-- billing: billing, never keys
SELECT * FROM pg_temp.cfails('POST', '/v1/api-keys', '{"name": "b"}', :'billing', 403, 'FORBIDDEN', 'billing creates a key');
SELECT * FROM pg_temp.cfails('POST', '/v1/webhooks', '{"url": "https://hooks.acme.ma/x"}', :'billing', 403, 'FORBIDDEN',
                             'billing creates a webhook');
SELECT is((pg_temp.ccall('GET', '/v1/billing/packs', NULL, :'billing')).status, 200, 'billing reads the packs');
SELECT is((pg_temp.ccall('GET', '/v1/console/invoices', NULL, :'billing')).status, 200, 'billing reads invoices');
SELECT * FROM pg_temp.cfails('GET', '/v1/console/invoices', NULL, :'viewer', 403, 'FORBIDDEN', 'viewer reads invoices');

-- developer: keys and webhooks, never users
SELECT * INTO TEMP devkey FROM pg_temp.ccall('POST', '/v1/api-keys', '{"name": "dev key"}', :'dev');
SELECT is((SELECT status FROM devkey), 201, 'developer creates a key');
SELECT is((SELECT permissions FROM envoisms.api_keys WHERE api_key_id = (SELECT body->>'id' FROM devkey)),
          '{analytics,api_keys,campaigns,contacts,optouts,send,status,verify,webhooks}',
          'without permissions asked, the key gets the developer''s');
SELECT is((SELECT key_prefix FROM envoisms.api_keys WHERE api_key_id = (SELECT body->>'id' FROM devkey)), 'env_live',
          'a live key, as a session is live');
SELECT * FROM pg_temp.cfails('POST', '/v1/api-keys', '{"name": "escalate", "permissions": ["send", "billing"]}', :'dev',
                             403, 'FORBIDDEN', 'developer creates a key with billing');
SELECT * FROM pg_temp.cfails('PATCH', '/v1/api-keys/' || (SELECT body->>'id' FROM devkey), '{"permissions": ["billing"]}', :'dev',
                             403, 'FORBIDDEN', 'developer widens a key to billing');
SELECT is((pg_temp.ccall('POST', '/v1/api-keys', '{"name": "narrow", "permissions": ["status"], "rate_limit": 50, "ip_whitelist": ["10.0.0.0/8"]}', :'dev')).status,
          201, 'developer creates a narrower key with an allowlist and a rate limit');
SELECT is((pg_temp.ccall('DELETE', '/v1/api-keys/' || (SELECT body->>'id' FROM devkey), NULL, :'dev')).body->>'revoked', 'true',
          'developer revokes a key');
SELECT * FROM pg_temp.cfails('POST', '/v1/console/invitations', '{"email": "new@acme.ma", "role": "viewer"}', :'dev',
                             403, 'FORBIDDEN', 'developer invites');
SELECT * FROM pg_temp.cfails('GET', '/v1/console/users', NULL, :'dev', 403, 'FORBIDDEN', 'developer lists users');
SELECT * FROM pg_temp.cfails('GET', '/v1/console/operator/accounts', NULL, :'dev', 403, 'FORBIDDEN', 'developer opens the operator area');
SELECT * FROM pg_temp.cfails('GET', '/v1/billing/topups', NULL, :'dev', 403, 'FORBIDDEN', 'developer reads top-ups');

-- owner: everything of the account; a key with every permission
SELECT * INTO TEMP ownerkey FROM pg_temp.ccall('POST', '/v1/api-keys', '{"name": "owner key"}', :'owner');
SELECT is((SELECT permissions FROM envoisms.api_keys WHERE api_key_id = (SELECT body->>'id' FROM ownerkey)), NULL,
          'the owner''s key holds every permission');
SELECT is((pg_temp.ccall('POST', '/v1/api-keys', '{"name": "test key", "key_prefix": "env_test"}', :'owner')).status, 201,
          'the owner creates a sandbox key');
-- the key rules apply to sessions too: one account's session never sees another's keys
SELECT * FROM pg_temp.cfails('DELETE', '/v1/api-keys/' || (SELECT body->>'id' FROM ownerkey), NULL, :'other_s',
                             404, 'NOT_FOUND', 'another account''s owner revokes the key');

-- ---- invitations
SELECT * FROM pg_temp.cfails('POST', '/v1/console/invitations', '{"email": "not an email", "role": "viewer"}', :'owner',
                             400, 'VALIDATION_ERROR', 'invitation to a bad email');
SELECT * FROM pg_temp.cfails('POST', '/v1/console/invitations', '{"email": "x@acme.ma", "role": "god"}', :'owner',
                             400, 'VALIDATION_ERROR', 'invitation with an unknown role');
SELECT * FROM pg_temp.cfails('POST', '/v1/console/invitations', '{"email": "dev@acme.ma", "role": "viewer"}', :'owner',
                             409, 'CONFLICT', 'invitation to an existing user');
SELECT * INTO TEMP inv FROM pg_temp.ccall('POST', '/v1/console/invitations', '{"email": "New@Acme.ma", "role": "billing"}', :'owner');
SELECT is((SELECT status FROM inv), 201, 'the owner invites → 201');
SELECT matches((SELECT body->>'token' FROM inv), '^[0-9a-f]{64}$', 'the token is shown once');
SELECT is((SELECT count(*)::int FROM envoisms.console_invitations i WHERE i::text LIKE '%' || (SELECT body->>'token' FROM inv) || '%'), 0,
          'and stored only as its hash');
SELECT is((pg_temp.ccall('GET', '/v1/console/users', NULL, :'owner')).body #>> '{invitations,0,email}', 'new@acme.ma',
          'GET /v1/console/users lists the pending invitation');
SELECT is(jsonb_array_length((pg_temp.ccall('GET', '/v1/console/users', NULL, :'owner')).body->'data'), 4, 'and the 4 users');
SELECT is(jsonb_array_length((pg_temp.ccall('GET', '/v1/console/users', NULL, :'other_s')).body->'data'), 1,
          'another account''s owner sees only their own users');
SELECT pg_temp.console_state() AS before \gset
SELECT is((SELECT status FROM envoisms.api('POST', '/v1/console/invitations/accept', '', '{}',
                  jsonb_build_object('token', (SELECT body->>'token' FROM inv), 'name', 'Nora', 'password', 'short')::text, NULL)),
          400, 'accepting with a short password → 400');
SELECT is(pg_temp.console_state(), :'before', 'and nothing changed (the invitation is still open)');
SELECT * INTO TEMP acc_rep FROM envoisms.api('POST', '/v1/console/invitations/accept', '', '{}',
                  jsonb_build_object('token', (SELECT body->>'token' FROM inv), 'name', 'Nora', 'password', 'nora password 1')::text, NULL);
SELECT is((SELECT status FROM acc_rep), 200, 'accepting → 200, signed in');
SELECT matches((SELECT headers->>'Set-Cookie' FROM acc_rep), '^envoisms_session=', 'with the session cookie');
SELECT is((SELECT body->>'role' || ' ' || (body #>> '{account,account_id}') FROM acc_rep), 'billing ' || :'acc',
          'as the invited role of the inviting account');
SELECT is((SELECT status FROM envoisms.api('POST', '/v1/console/invitations/accept', '', '{}',
                  jsonb_build_object('token', (SELECT body->>'token' FROM inv), 'name', 'Nora', 'password', 'nora password 1')::text, NULL)),
          404, 'an invitation is accepted once');
SELECT * INTO TEMP inv2 FROM pg_temp.ccall('POST', '/v1/console/invitations', '{"email": "late@acme.ma", "role": "viewer"}', :'owner');
UPDATE envoisms.console_invitations SET expires_at = now() - interval '1 second' WHERE email = 'late@acme.ma';
SELECT is((SELECT status FROM envoisms.api('POST', '/v1/console/invitations/accept', '', '{}',
                  jsonb_build_object('token', (SELECT body->>'token' FROM inv2), 'password', 'late password 1')::text, NULL)),
          410, 'an expired invitation → 410');
SELECT * FROM pg_temp.cfails('DELETE', '/v1/console/invitations/' || (SELECT body->>'invitation_id' FROM inv2), NULL, :'other_s',
                             404, 'NOT_FOUND', 'another account''s owner withdraws the invitation');
SELECT is((pg_temp.ccall('DELETE', '/v1/console/invitations/' || (SELECT body->>'invitation_id' FROM inv2), NULL, :'owner')).status, 200,
          'the owner withdraws an invitation');

-- ---- users: roles changed and removed by an owner
SELECT * FROM pg_temp.cfails('PATCH', '/v1/console/users/' || :'owner_id', '{"role": "viewer"}', :'owner', 409, 'CONFLICT',
                             'the last owner stops being owner');
SELECT * FROM pg_temp.cfails('DELETE', '/v1/console/users/' || :'owner_id', NULL, :'owner', 409, 'CONFLICT', 'an owner removes themself');
SELECT * FROM pg_temp.cfails('PATCH', '/v1/console/users/' || :'other_owner', '{"role": "viewer"}', :'owner', 404, 'NOT_FOUND',
                             'a user of another account');
SELECT is((pg_temp.ccall('PATCH', '/v1/console/users/' || :'viewer_id', '{"role": "developer"}', :'owner')).body->>'role', 'developer',
          'the owner makes the viewer a developer');
SELECT is((pg_temp.ccall('POST', '/v1/api-keys', '{"name": "now allowed"}', :'viewer')).status, 201,
          'the role applies to the user''s live session at once');
SELECT is((pg_temp.ccall('DELETE', '/v1/console/users/' || :'viewer_id', NULL, :'owner')).status, 200, 'the owner removes a user');
SELECT is((pg_temp.ccall('GET', '/v1/console/session', NULL, :'viewer')).status, 401, 'and their sessions end');

SELECT * FROM finish();
ROLLBACK;
