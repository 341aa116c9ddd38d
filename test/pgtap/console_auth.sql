-- console_auth.sql — the console's sign-in: passwords, one answer for a
-- wrong email or password, backoff, the session cookie and its storage,
-- CSRF, expiry, sign-out, the second factor through envoisms' own verify,
-- and a user's own changes (PATCH /v1/console/me).
BEGIN;
SELECT plan(101);
\ir lib/api_helpers.psql
\ir lib/console_helpers.psql

SELECT pg_temp.new_account(100) AS acc \gset
SELECT pg_temp.new_account(100) AS other \gset
SELECT pg_temp.console_user(:'acc', 'Owner@Acme.ma') AS owner_id \gset
SELECT pg_temp.console_user(:'acc', 'dev@acme.ma', 'developer') AS dev_id \gset
SELECT pg_temp.new_key(:'acc') AS key \gset

-- ---- passwords
SELECT matches((SELECT password_hash FROM envoisms.console_users WHERE user_id = :'owner_id'),
               '^\$scrypt\$ln=14,r=8,p=1\$[0-9a-f]{32}\$[0-9a-f]{64}$', 'passwords are stored as salted scrypt hashes');
SELECT is((SELECT count(*)::int FROM envoisms.console_users u WHERE u::text LIKE '%' || pg_temp.pw() || '%'), 0,
          'the password itself is stored nowhere');
SELECT is((SELECT email FROM envoisms.console_users WHERE user_id = :'owner_id'), 'owner@acme.ma', 'emails are kept lower-case');
SELECT ok(envoisms.password_verify(pg_temp.pw(), (SELECT password_hash FROM envoisms.console_users WHERE user_id = :'owner_id')),
          'password_verify: the right password');
SELECT ok(NOT envoisms.password_verify('correct horse batterY', (SELECT password_hash FROM envoisms.console_users WHERE user_id = :'owner_id')),
          'password_verify: a wrong password');
SELECT ok(NOT envoisms.password_verify(pg_temp.pw(), 'not a hash'), 'password_verify: an unreadable hash never matches');
SELECT isnt(envoisms.password_hash('same password!'), envoisms.password_hash('same password!'), 'each hash has its own salt');
SELECT throws_ok(format('SELECT envoisms.console_user_create(%L, %L, %L)', :'acc', 'short@acme.ma', 'short'), 'EV400', NULL,
                 'a password under 10 characters is refused');
SELECT throws_ok(format('SELECT envoisms.console_user_create(%L, %L, %L)', :'acc', 'OWNER@acme.ma', pg_temp.pw()), 'EV491', NULL,
                 'an email is one user, whatever its case');

-- ---- sign-in: right, wrong, unknown
SELECT * INTO TEMP good FROM pg_temp.sign_in('owner@acme.ma', pg_temp.pw());
SELECT is((SELECT status FROM good), 200, 'sign-in with the right password → 200');
SELECT matches((SELECT headers->>'Set-Cookie' FROM good),
               '^envoisms_session=[0-9a-f]{64}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=43200$',
               'the cookie is HttpOnly, Secure, SameSite=Strict, Path=/');
SELECT is((SELECT headers->>'Cache-Control' FROM good), 'no-store', 'the session reply is not cached');
SELECT is((SELECT body #>> '{user,email}' FROM good), 'owner@acme.ma', 'the reply names the user');
SELECT is((SELECT body->>'role' FROM good), 'owner', 'and the role');
SELECT is((SELECT body #>> '{account,account_id}' FROM good), :'acc', 'and the account');
SELECT is((SELECT (body #>> '{account,balance_mad}')::numeric FROM good), 100::numeric, 'with its balance');
SELECT matches((SELECT body->>'csrf_token' FROM good), '^[0-9a-f]{64}$', 'and a CSRF token');
SELECT ok((SELECT NOT (body::text ~ substring(headers->>'Set-Cookie', 'envoisms_session=([0-9a-f]{64})')) FROM good),
          'the body never carries the session token');
SELECT substring(headers->>'Set-Cookie', 'envoisms_session=([0-9a-f]{64})') AS token FROM good \gset
SELECT is((SELECT count(*)::int FROM envoisms.console_sessions WHERE token_hash = envoisms.sha256_hex(:'token')), 1,
          'the session is stored by the SHA-256 of its token');
SELECT is((SELECT count(*)::int FROM envoisms.console_sessions s WHERE s::text LIKE '%' || :'token' || '%'), 0,
          'the token itself is stored nowhere');
SELECT isnt((SELECT last_sign_in_at FROM envoisms.console_users WHERE user_id = :'owner_id'), NULL, 'last_sign_in_at is set');

SELECT * INTO TEMP wrong_pw FROM pg_temp.sign_in('owner@acme.ma', 'wrong password!', '192.0.2.20');
SELECT * INTO TEMP wrong_email FROM pg_temp.sign_in('nobody@acme.ma', pg_temp.pw(), '192.0.2.21');
SELECT is((SELECT status FROM wrong_pw), 401, 'a wrong password → 401');
SELECT is((SELECT body FROM wrong_email), (SELECT body FROM wrong_pw), 'an unknown email gets exactly the same body');
SELECT is((SELECT status || ' ' || (headers - 'X-Envoisms-Route')::text FROM wrong_email),
          (SELECT status || ' ' || (headers - 'X-Envoisms-Route')::text FROM wrong_pw), 'and the same status and headers');
SELECT is((SELECT body #>> '{error,code}' FROM wrong_pw), 'UNAUTHORIZED', 'the contract''s code UNAUTHORIZED');
SELECT ok((SELECT headers->>'Set-Cookie' IS NULL FROM wrong_pw), 'a refused sign-in sets no cookie');
SELECT is((SELECT failures FROM envoisms.console_signin_throttle WHERE subject = 'email:owner@acme.ma'), 1,
          'the failure is counted (and kept: the refusal is a reply, not an error)');
SELECT is((SELECT status FROM pg_temp.sign_in('', pg_temp.pw())), 400, 'no email → 400');
SELECT is((SELECT status || ' ' || (body #>> '{error,code}') FROM envoisms.api('POST', '/v1/console/sign-in', '',
                  '{"Origin": "https://evil.example", "Host": "console.acme.ma"}',
                  jsonb_build_object('email', 'dev@acme.ma', 'password', pg_temp.pw())::text, '192.0.2.50')),
          '403 FORBIDDEN', 'a sign-in posted from a foreign page → 403 (no login CSRF)');
SELECT is((SELECT status FROM envoisms.api('POST', '/v1/console/sign-in', '',
                  '{"Origin": "https://console.acme.ma", "Host": "console.acme.ma"}',
                  jsonb_build_object('email', 'dev@acme.ma', 'password', pg_temp.pw())::text, '192.0.2.51')), 200,
          'from the console''s own page → 200');
SELECT is((SELECT status FROM envoisms.api('POST', '/v1/console/sign-in', '', '{}', 'not json', NULL)), 400, 'not JSON → 400');

-- ---- backoff: 5 failures in 15 minutes for an email, then 429 even with the right password
SELECT pg_temp.sign_in('owner@acme.ma', 'wrong password!', ('192.0.2.' || (30 + n))::inet) FROM generate_series(1, 4) n;
SELECT is((SELECT failures FROM envoisms.console_signin_throttle WHERE subject = 'email:owner@acme.ma'), 5, 'five failures counted');
SELECT pg_temp.console_state() AS before \gset
SELECT * INTO TEMP blocked FROM pg_temp.sign_in('owner@acme.ma', pg_temp.pw(), '192.0.2.99');
SELECT is((SELECT status || ' ' || (body #>> '{error,code}') FROM blocked), '429 RATE_LIMITED',
          'the sixth attempt, with the right password → 429 RATE_LIMITED');
SELECT is((SELECT headers->>'Retry-After' FROM blocked), '30', 'Retry-After: 30 s after the fifth failure');
SELECT is(pg_temp.console_state(), :'before', 'no session was made');
-- the wait passes; one more failure doubles it
UPDATE envoisms.console_signin_throttle SET blocked_until = now() - interval '1 second' WHERE subject = 'email:owner@acme.ma';
SELECT is((SELECT status FROM pg_temp.sign_in('owner@acme.ma', 'wrong again!!', '192.0.2.98')), 401, 'after the wait, a wrong password → 401');
SELECT is((SELECT headers->>'Retry-After' FROM pg_temp.sign_in('owner@acme.ma', pg_temp.pw(), '192.0.2.97')), '60',
          'the sixth failure doubles the wait: 60 s');
UPDATE envoisms.console_signin_throttle SET blocked_until = now() - interval '1 second', window_start = now() - interval '16 minutes'
 WHERE subject = 'email:owner@acme.ma';
SELECT is((SELECT status FROM pg_temp.sign_in('owner@acme.ma', pg_temp.pw(), '192.0.2.96')), 200, 'after the wait, the right password → 200');
SELECT is((SELECT count(*)::int FROM envoisms.console_signin_throttle WHERE subject = 'email:owner@acme.ma'), 0,
          'a sign-in clears the email''s failures');

-- the client address: 5 failures from one address block it for every email
SELECT pg_temp.sign_in('x' || n || '@acme.ma', 'wrong password!', '198.51.100.7') FROM generate_series(1, 5) n;
SELECT is((SELECT status FROM pg_temp.sign_in('dev@acme.ma', pg_temp.pw(), '198.51.100.7')), 429,
          'five failures from one address: that address gets 429 for another email too');
SELECT is((SELECT status FROM pg_temp.sign_in('dev@acme.ma', pg_temp.pw(), '198.51.100.8')), 200, 'another address signs in');

-- ---- the session authenticates every /v1 route
SELECT pg_temp.session('owner@acme.ma') AS s \gset
SELECT is((pg_temp.ccall('GET', '/v1/console/session', NULL, :'s')).status, 200, 'GET /v1/console/session with the cookie → 200');
SELECT is((pg_temp.ccall('GET', '/v1/console/session', NULL, :'s')).body->>'csrf_token', :'s'::jsonb->>'X-CSRF-Token',
          'it gives the same CSRF token again (after a reload)');
SELECT is((pg_temp.ccall('GET', '/v1/billing/balance', NULL, :'s')).body->>'balance_mad', '100',
          'a contract route with the session: GET /v1/billing/balance');
SELECT is((pg_temp.ccall('GET', '/v1/console/session', NULL, jsonb_build_object('Cookie', 'envoisms_session=' || repeat('a', 64)))).status,
          401, 'an unknown session → 401');
SELECT is((pg_temp.ccall('GET', '/v1/console/session', NULL, '{}')).status, 401, 'no cookie → 401');
SELECT is((pg_temp.ccall('GET', '/v1/console/session', NULL, :'s', '', '{"Authorization": "Bearer env_live_nope"}')).status, 401,
          'a request with Authorization is a key request: the cookie is ignored');
SELECT is((pg_temp.call('GET', '/v1/console/session', NULL, :'key')).status || ' ' ||
          ((pg_temp.call('GET', '/v1/console/session', NULL, :'key')).body #>> '{error,code}'), '403 FORBIDDEN',
          'an API key cannot use the console''s own routes');
SELECT matches((pg_temp.ccall('GET', '/v1/console/session', NULL, :'s')).headers->>'X-Envoisms-Key-Id', '^ses_[0-9a-f]{28}$',
               'the access log names the session, never the token');

-- ---- CSRF on writes
SELECT * FROM pg_temp.cfails('POST', '/v1/api-keys', '{"name": "csrf"}', (:'s'::jsonb) - 'X-CSRF-Token', 403, 'FORBIDDEN',
                             'a write without X-CSRF-Token');
SELECT * FROM pg_temp.cfails('POST', '/v1/api-keys', '{"name": "csrf"}', (:'s'::jsonb) || '{"X-CSRF-Token": "0000"}', 403, 'FORBIDDEN',
                             'a write with a wrong X-CSRF-Token');
SELECT * FROM pg_temp.cfails('POST', '/v1/api-keys', '{"name": "csrf"}', :'s', 403, 'FORBIDDEN',
                             'a write from a foreign Origin', '{"Origin": "https://evil.example", "Host": "console.acme.ma"}');
SELECT * FROM pg_temp.cfails('POST', '/v1/api-keys', '{"name": "csrf"}', :'s', 403, 'FORBIDDEN',
                             'a write from Origin: null', '{"Origin": "null", "Host": "console.acme.ma"}');
SELECT * FROM pg_temp.cfails('DELETE', '/v1/api-keys/key_0', NULL, (:'s'::jsonb) - 'X-CSRF-Token', 403, 'FORBIDDEN',
                             'a DELETE without X-CSRF-Token');
SELECT * FROM pg_temp.cfails('POST', '/v1/console/sign-out', NULL, (:'s'::jsonb) - 'X-CSRF-Token', 403, 'FORBIDDEN',
                             'sign-out without X-CSRF-Token');
SELECT is((pg_temp.ccall('POST', '/v1/api-keys', '{"name": "from the console"}', :'s', '',
                         '{"Origin": "https://console.acme.ma", "Host": "console.acme.ma"}')).status, 201,
          'the right token from the console''s own origin → 201');
SELECT is((pg_temp.ccall('POST', '/v1/api-keys', '{"name": "no origin"}', :'s')).status, 201, 'the right token and no Origin → 201');

-- ---- expiry
SELECT pg_temp.session('owner@acme.ma') AS idle \gset
UPDATE envoisms.console_sessions SET last_seen_at = now() - interval '31 minutes'
 WHERE token_hash = envoisms.sha256_hex(substring(:'idle'::jsonb->>'Cookie', 'envoisms_session=([0-9a-f]{64})'));
SELECT is((pg_temp.ccall('GET', '/v1/console/session', NULL, :'idle')).status, 401, '30 minutes idle: the session is over');
SELECT pg_temp.session('owner@acme.ma') AS old \gset
UPDATE envoisms.console_sessions SET expires_at = now() - interval '1 second'
 WHERE token_hash = envoisms.sha256_hex(substring(:'old'::jsonb->>'Cookie', 'envoisms_session=([0-9a-f]{64})'));
SELECT is((pg_temp.ccall('GET', '/v1/console/session', NULL, :'old')).status, 401, 'past its absolute expiry: over');
SELECT pg_temp.session('owner@acme.ma') AS slide \gset
UPDATE envoisms.console_sessions SET last_seen_at = now() - interval '5 minutes'
 WHERE token_hash = envoisms.sha256_hex(substring(:'slide'::jsonb->>'Cookie', 'envoisms_session=([0-9a-f]{64})'));
SELECT is((pg_temp.ccall('GET', '/v1/console/session', NULL, :'slide')).status, 200, 'a session used within 30 minutes lives on');
SELECT is((SELECT last_seen_at FROM envoisms.console_sessions
            WHERE token_hash = envoisms.sha256_hex(substring(:'slide'::jsonb->>'Cookie', 'envoisms_session=([0-9a-f]{64})'))),
          now(), 'and its idle expiry slides');

-- ---- sign-out revokes
SELECT pg_temp.session('owner@acme.ma') AS bye \gset
SELECT * INTO TEMP out1 FROM pg_temp.ccall('POST', '/v1/console/sign-out', NULL, :'bye');
SELECT is((SELECT status FROM out1), 204, 'sign-out → 204');
SELECT is((SELECT headers->>'Set-Cookie' FROM out1), 'envoisms_session=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0',
          'and clears the cookie');
SELECT is((pg_temp.ccall('GET', '/v1/console/session', NULL, :'bye')).status, 401, 'the token no longer authenticates');
SELECT isnt((SELECT revoked_at FROM envoisms.console_sessions
              WHERE token_hash = envoisms.sha256_hex(substring(:'bye'::jsonb->>'Cookie', 'envoisms_session=([0-9a-f]{64})'))),
            NULL, 'the session row is revoked');
SELECT is((pg_temp.ccall('GET', '/v1/console/session', NULL, :'s')).status, 200, 'another session of the user lives on');

-- ---- the second factor, through envoisms' own verify (a sandbox message)
INSERT INTO envoisms.console_settings (name, value) VALUES ('two_factor_sandbox', 'on');
UPDATE envoisms.console_users SET phone = '+212612345678', two_factor = true WHERE user_id = :'dev_id';
SELECT pg_temp.console_state() AS before \gset
SELECT * INTO TEMP chl FROM pg_temp.sign_in('dev@acme.ma', pg_temp.pw(), '203.0.113.5');
SELECT is((SELECT status FROM chl), 200, 'two-factor user, right password → 200');
SELECT is((SELECT body->>'second_factor' FROM chl), 'required', 'a second factor is required');
SELECT ok((SELECT headers->>'Set-Cookie' IS NULL FROM chl), 'and no cookie yet');
SELECT is((SELECT body->>'to' FROM chl), '+2126•••••678', 'the phone is shown masked');
SELECT is((SELECT body->>'channel' FROM chl), 'sms', 'by SMS');
SELECT (body->>'challenge_id') AS chl_id FROM chl \gset
SELECT verify_session_id AS vrf FROM envoisms.console_challenges WHERE challenge_id = :'chl_id' \gset
SELECT is((SELECT to_number || ' ' || sandbox FROM envoisms.messages m
            WHERE m.metadata->>'verify_session_id' = :'vrf'), '+212612345678 true',
          'the code went out as a sandbox message through verify_send');
SELECT substring(body FROM '[0-9]{6}') AS code FROM envoisms.messages m WHERE m.metadata->>'verify_session_id' = :'vrf' \gset
SELECT is((SELECT count(*)::int FROM envoisms.console_challenges c WHERE c::text LIKE '%' || :'code' || '%'), 0,
          'the challenge stores no code');
SELECT is((SELECT status FROM envoisms.api('POST', '/v1/console/sign-in/verify', '', '{}',
                  jsonb_build_object('challenge_id', :'chl_id', 'code', CASE WHEN :'code' = '000000' THEN '111111' ELSE '000000' END)::text,
                  '203.0.113.5')), 401, 'a wrong code → 401');
SELECT is((SELECT count(*)::int FROM envoisms.console_sessions WHERE user_id = :'dev_id'), 2,
          'no session for a wrong code (only the two earlier ones)');
SELECT * INTO TEMP verified FROM envoisms.api('POST', '/v1/console/sign-in/verify', '', '{}',
                  jsonb_build_object('challenge_id', :'chl_id', 'code', :'code')::text, '203.0.113.5');
SELECT is((SELECT status FROM verified), 200, 'the right code → 200');
SELECT matches((SELECT headers->>'Set-Cookie' FROM verified), '^envoisms_session=[0-9a-f]{64}; Path=/; HttpOnly; Secure; SameSite=Strict',
               'and the session cookie');
SELECT is((SELECT body #>> '{user,email}' FROM verified), 'dev@acme.ma', 'for that user');
SELECT is((SELECT status FROM envoisms.api('POST', '/v1/console/sign-in/verify', '', '{}',
                  jsonb_build_object('challenge_id', :'chl_id', 'code', :'code')::text, '203.0.113.5')), 404,
          'a challenge is used once');
SELECT is((SELECT status FROM envoisms.api('POST', '/v1/console/sign-in/verify', '', '{}',
                  '{"challenge_id": "chl_nope", "code": "123456"}', '203.0.113.5')), 404, 'an unknown challenge → 404');

-- ---- PATCH /v1/console/me
SELECT pg_temp.session('owner@acme.ma') AS me \gset
SELECT pg_temp.session('owner@acme.ma') AS me2 \gset
SELECT * FROM pg_temp.cfails('PATCH', '/v1/console/me', '{"password": "a new password!", "current_password": "wrong one!!"}', :'me',
                             403, 'FORBIDDEN', 'a new password with a wrong current_password');
SELECT * FROM pg_temp.cfails('PATCH', '/v1/console/me', '{"two_factor": true}', :'me', 400, 'VALIDATION_ERROR',
                             'two-factor without a phone');
SELECT * FROM pg_temp.cfails('PATCH', '/v1/console/me', '{"phone": "0612"}', :'me', 400, 'INVALID_PHONE', 'a bad phone');
SELECT * FROM pg_temp.cfails('PATCH', '/v1/console/me', '{"two_factor_channel": "fax"}', :'me', 400, 'VALIDATION_ERROR',
                             'a second factor by fax');
SELECT is((pg_temp.ccall('PATCH', '/v1/console/me', '{"two_factor_channel": "whatsapp"}', :'me')).body->>'two_factor_channel',
          'whatsapp', 'the second factor by WhatsApp');
SELECT is((pg_temp.ccall('PATCH', '/v1/console/me', '{"name": "Olga <b>", "phone": "+212661234567"}', :'me')).body->>'name',
          'Olga <b>', 'a name is stored as given (the console renders it as text)');
SELECT is((pg_temp.ccall('PATCH', '/v1/console/me',
                         format('{"password": "a new password!", "current_password": "%s"}', pg_temp.pw()), :'me')).status, 200,
          'a new password with the right current one → 200');
SELECT is((pg_temp.ccall('GET', '/v1/console/session', NULL, :'me2')).status, 401, 'the user''s other sessions are revoked');
SELECT is((pg_temp.ccall('GET', '/v1/console/session', NULL, :'me')).status, 200, 'the session that changed it lives on');
SELECT is((SELECT status FROM pg_temp.sign_in('owner@acme.ma', 'a new password!', '203.0.113.77')), 200, 'the new password signs in');
SELECT is((SELECT status FROM pg_temp.sign_in('owner@acme.ma', pg_temp.pw(), '203.0.113.78')), 401, 'the old one no longer does');

SELECT * FROM finish();
ROLLBACK;
