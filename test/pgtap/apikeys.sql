-- apikeys.sql — GET/POST /v1/api-keys, PATCH/DELETE /v1/api-keys/:id.
\set ON_ERROR_STOP 1
\set QUIET 1
BEGIN;
\ir lib/api_helpers.psql
SELECT plan(123);

SELECT pg_temp.new_account(10) AS acc \gset
SELECT pg_temp.new_key(:'acc') AS root \gset
SELECT pg_temp.use_key(:'root') IS NOT NULL AS ok \gset

CREATE TEMP TABLE k AS SELECT * FROM pg_temp.call('POST', '/v1/api-keys',
    '{"name": "Production Server", "permissions": ["send", "verify", "status"], "ip_whitelist": ["196.200.1.4"], "rate_limit": 100}');
SELECT is((SELECT status FROM k), 201, 'POST /v1/api-keys → 201');
SELECT is((SELECT body - 'id' - 'api_key' FROM k),
          '{"name": "Production Server", "key_prefix": "env_live", "permissions": ["send", "verify", "status"],
            "ip_whitelist": ["196.200.1.4"], "rate_limit": 100,
            "warning": "The full API key is shown once. Store it securely."}'::jsonb, 'create: the contract''s fields and warning');
SELECT matches((SELECT body->>'api_key' FROM k), '^env_live_[0-9a-f]{48}$', 'the full key is shown once');
SELECT body->>'id' AS kid, body->>'api_key' AS newkey FROM k \gset
SELECT is((SELECT key_hash FROM envoisms.api_keys WHERE api_key_id = :'kid'), envoisms.sha256_hex(:'newkey'), 'only its SHA-256 is stored');
SELECT is((SELECT count(*)::int FROM envoisms.api_keys a WHERE a::text LIKE '%' || :'newkey' || '%'), 0, 'the key itself is stored nowhere');
CREATE TEMP TABLE l AS SELECT * FROM pg_temp.call('GET', '/v1/api-keys');
SELECT is((SELECT status FROM l), 200, 'GET /v1/api-keys → 200');
SELECT ok((SELECT d ?& ARRAY['id', 'name', 'key_prefix', 'ip_whitelist', 'rate_limit', 'permissions', 'active', 'last_used_at', 'created_at']
             FROM l, jsonb_array_elements(body->'data') d WHERE d->>'id' = :'kid'), 'list: the contract''s fields');
SELECT is((SELECT count(*)::int FROM l, jsonb_array_elements(body->'data') d WHERE d ? 'api_key'), 0, 'list never shows keys');
SELECT is((SELECT status FROM pg_temp.call('GET', '/v1/messages', key => :'newkey', query => '')), 401,
          'the new key is bound to its IP allowlist (no client address → 401)');

-- defaults, live/test
CREATE TEMP TABLE d AS SELECT * FROM pg_temp.call('POST', '/v1/api-keys', '{}');
SELECT is((SELECT body->>'name' || ' ' || (body->>'rate_limit') || ' ' || (body->>'key_prefix') FROM d), 'API key 100 env_live', 'defaults: name, rate_limit 100, live like the creator');
SELECT is((SELECT body->'permissions' FROM d), to_jsonb(envoisms.api_permissions()), 'defaults: the creator''s permissions');
SELECT is((SELECT body->>'key_prefix' FROM pg_temp.call('POST', '/v1/api-keys', '{"key_prefix": "env_test"}')), 'env_test', 'a live key may create a test key');
SELECT pg_temp.new_key(:'acc', live => false) AS testkey \gset
SELECT is((SELECT body->>'key_prefix' FROM pg_temp.call('POST', '/v1/api-keys', '{}', :'testkey')), 'env_test', 'a test key creates test keys');
SELECT * FROM pg_temp.fails('POST', '/v1/api-keys', '{"key_prefix": "env_live"}', 403, 'FORBIDDEN', 'a test key creating a live key', :'testkey');
SELECT * FROM pg_temp.fails('POST', '/v1/api-keys', '{"key_prefix": "env_prod"}', 400, 'VALIDATION_ERROR', 'unknown key_prefix');

-- limits
SELECT is((SELECT status FROM pg_temp.call('POST', '/v1/api-keys', '{"rate_limit": 10}')), 201, 'rate_limit 10');
SELECT is((SELECT status FROM pg_temp.call('POST', '/v1/api-keys', '{"rate_limit": 1000}')), 201, 'rate_limit 1000');
SELECT * FROM pg_temp.fails('POST', '/v1/api-keys', '{"rate_limit": 9}', 400, 'VALIDATION_ERROR', 'rate_limit 9');
SELECT * FROM pg_temp.fails('POST', '/v1/api-keys', '{"rate_limit": 1001}', 400, 'VALIDATION_ERROR', 'rate_limit 1001');
SELECT * FROM pg_temp.fails('POST', '/v1/api-keys', '{"rate_limit": null, "name": ""}', 400, 'VALIDATION_ERROR', 'empty name');
SELECT is((SELECT status FROM pg_temp.call('POST', '/v1/api-keys', format('{"name": "%s"}', repeat('n', 100)))), 201, 'name of 100 characters');
SELECT * FROM pg_temp.fails('POST', '/v1/api-keys', format('{"name": "%s"}', repeat('n', 101)), 400, 'VALIDATION_ERROR', 'name of 101 characters');
SELECT * FROM pg_temp.fails('POST', '/v1/api-keys', '{"permissions": ["send", "admin"]}', 400, 'VALIDATION_ERROR', 'unknown permission');
SELECT * FROM pg_temp.fails('POST', '/v1/api-keys', '{"permissions": "send"}', 400, 'VALIDATION_ERROR', 'permissions not an array');
SELECT * FROM pg_temp.fails('POST', '/v1/api-keys', '{"ip_whitelist": ["not-an-ip"]}', 400, 'VALIDATION_ERROR', 'ip_whitelist entry not an IP');
SELECT * FROM pg_temp.fails('POST', '/v1/api-keys', '{"ip_whitelist": ["10.0.0.0/33"]}', 400, 'VALIDATION_ERROR', 'CIDR /33');
SELECT is((SELECT body->'ip_whitelist' FROM pg_temp.call('POST', '/v1/api-keys', '{"ip_whitelist": ["10.0.0.0/8", "2001:db8::/32", "1.2.3.4"]}')),
          '["10.0.0.0/8", "2001:db8::/32", "1.2.3.4"]'::jsonb, 'IPs and CIDRs (v4 and v6) accepted');

-- no escalation
SELECT pg_temp.new_key(:'acc', '{api_keys,send}') AS limited \gset
SELECT is((SELECT body->'permissions' FROM pg_temp.call('POST', '/v1/api-keys', '{}', :'limited')), '["api_keys", "send"]'::jsonb,
          'a limited key''s new key inherits its permissions');
SELECT is((SELECT status FROM pg_temp.call('POST', '/v1/api-keys', '{"permissions": ["send"]}', :'limited')), 201, 'a subset is allowed');
SELECT * FROM pg_temp.fails('POST', '/v1/api-keys', '{"permissions": ["send", "billing"]}', 403, 'FORBIDDEN', 'granting a permission the key lacks', :'limited');
SELECT * FROM pg_temp.fails('PATCH', '/v1/api-keys/' || :'kid', '{"permissions": ["campaigns"]}', 403, 'FORBIDDEN', 'PATCH granting a permission the key lacks', :'limited');
SELECT * FROM pg_temp.fails('POST', '/v1/api-keys', '{}', 403, 'FORBIDDEN', 'a key without api_keys', pg_temp.new_key(:'acc', '{send}'));

-- PATCH
SELECT is((SELECT body FROM pg_temp.call('PATCH', '/v1/api-keys/' || :'kid', '{"name": "Backup Server", "active": true}')),
          jsonb_build_object('updated', true, 'id', :'kid'), 'PATCH → {"updated": true, "id"}');
SELECT is((SELECT status FROM pg_temp.call('PATCH', '/v1/api-keys/' || :'kid', '{"permissions": ["status", "send"], "ip_whitelist": [], "rate_limit": 500}')), 200, 'PATCH permissions, allowlist, rate limit');
SELECT is((SELECT name || ' ' || permissions::text || ' ' || rate_limit || ' ' || cardinality(ip_whitelist) FROM envoisms.api_keys WHERE api_key_id = :'kid'),
          'Backup Server {send,status} 500 0', 'PATCH applied');
SELECT is((SELECT status FROM pg_temp.call('GET', '/v1/messages', key => :'newkey')), 200, 'an empty allowlist lets every address in');
SELECT is((SELECT status FROM pg_temp.call('PATCH', '/v1/api-keys/' || :'kid', '{"active": false}')), 200, 'PATCH active false');
SELECT is((SELECT status FROM pg_temp.call('GET', '/v1/messages', key => :'newkey')), 401, 'a suspended key stops authenticating at once');
SELECT is((SELECT status FROM pg_temp.call('PATCH', '/v1/api-keys/' || :'kid', '{"active": true}')), 200, 'PATCH active true');
SELECT is((SELECT status FROM pg_temp.call('GET', '/v1/messages', key => :'newkey')), 200, 'a re-activated key authenticates');
SELECT * FROM pg_temp.fails('PATCH', '/v1/api-keys/' || :'kid', '{}', 400, 'VALIDATION_ERROR', 'PATCH with nothing to change');
SELECT * FROM pg_temp.fails('PATCH', '/v1/api-keys/' || :'kid', '{"rate_limit": 1001}', 400, 'VALIDATION_ERROR', 'PATCH rate_limit 1001');
SELECT * FROM pg_temp.fails('PATCH', '/v1/api-keys/' || :'kid', '{"name": ""}', 400, 'VALIDATION_ERROR', 'PATCH empty name');
SELECT * FROM pg_temp.fails('PATCH', '/v1/api-keys/key_nope', '{"name": "x"}', 404, 'NOT_FOUND', 'PATCH unknown key');

-- DELETE
CREATE TEMP TABLE r AS SELECT * FROM pg_temp.call('DELETE', '/v1/api-keys/' || :'kid');
SELECT is((SELECT body FROM r), jsonb_build_object('revoked', true, 'id', :'kid'), 'DELETE → {"revoked": true, "id"}');
SELECT is((SELECT revoked_at IS NOT NULL AND NOT active FROM envoisms.api_keys WHERE api_key_id = :'kid'), true, 'revoked_at set, inactive');
SELECT is((SELECT status FROM pg_temp.call('GET', '/v1/messages', key => :'newkey')), 401, 'a revoked key stops authenticating at once');
SELECT is((SELECT status FROM pg_temp.call('DELETE', '/v1/api-keys/' || :'kid')), 200, 'revoking twice is harmless');
SELECT * FROM pg_temp.fails('PATCH', '/v1/api-keys/' || :'kid', '{"active": true}', 409, 'CONFLICT', 'a revoked key cannot be re-activated');
SELECT * FROM pg_temp.fails('DELETE', '/v1/api-keys/key_nope', NULL, 404, 'NOT_FOUND', 'DELETE unknown key');

-- warnings: revoking itself, revoking the last active key
SELECT pg_temp.new_account(0) AS solo \gset
SELECT pg_temp.new_key(:'solo') AS solo1 \gset
SELECT pg_temp.new_key(:'solo') AS solo2 \gset
SELECT api_key_id AS solo1_id FROM envoisms.api_keys WHERE key_hash = envoisms.sha256_hex(:'solo1') \gset
SELECT api_key_id AS solo2_id FROM envoisms.api_keys WHERE key_hash = envoisms.sha256_hex(:'solo2') \gset
CREATE TEMP TABLE self AS SELECT * FROM pg_temp.call('DELETE', '/v1/api-keys/' || :'solo1_id', NULL, :'solo1');
SELECT is((SELECT status FROM self), 200, 'a key may revoke itself');
SELECT matches((SELECT body->>'warning' FROM self), 'revoked the API key it was made with', '… with a warning');
SELECT is((SELECT status FROM pg_temp.call('GET', '/v1/api-keys', key => :'solo1')), 401, 'and it is locked out at once');
CREATE TEMP TABLE last AS SELECT * FROM pg_temp.call('PATCH', '/v1/api-keys/' || :'solo2_id', '{"active": false}', :'solo2');
SELECT matches((SELECT body->>'warning' FROM last), 'no active API key left', 'suspending the last active key warns');
SELECT pg_temp.new_key(:'acc') AS otherkey \gset
SELECT api_key_id AS other_id FROM envoisms.api_keys WHERE key_hash = envoisms.sha256_hex(:'otherkey') \gset
SELECT is((SELECT body FROM pg_temp.call('DELETE', '/v1/api-keys/' || :'other_id')), jsonb_build_object('revoked', true, 'id', :'other_id'),
          'no warning when another key is revoked and active keys remain');
SELECT * FROM pg_temp.fails_sql(format('SELECT envoisms.api_key_issue(%L, %L, permissions => %L)', :'acc',
                                       (SELECT api_key_id FROM envoisms.api_keys WHERE key_hash = envoisms.sha256_hex(:'limited')), '{billing}'),
                                'FORBIDDEN', 'api_key_issue(escalation)');

-- no escalation through an empty permission list
SELECT pg_temp.new_key(:'acc', '{api_keys}') AS keyadmin \gset
CREATE TEMP TABLE e AS SELECT * FROM pg_temp.call('POST', '/v1/api-keys', '{"permissions": []}', :'keyadmin');
SELECT is((SELECT status || ' ' || (body->'permissions')::text FROM e), '201 []', 'an empty permission list is accepted: no permission');
SELECT is((SELECT permissions FROM envoisms.api_keys WHERE api_key_id = (SELECT body->>'id' FROM e)), '{}'::text[],
          'stored as an empty list, not as NULL (every permission)');
SELECT body->>'api_key' AS emptykey, body->>'id' AS emptykey_id FROM e \gset
SELECT * FROM pg_temp.fails('POST', '/v1/messages', '{"to": "+212612345678", "message": "x"}', 403, 'FORBIDDEN',
                            'a key made with no permission sending a paid message', :'emptykey');
SELECT * FROM pg_temp.fails('GET', '/v1/billing/balance', NULL, 403, 'FORBIDDEN', 'a key made with no permission reading the balance', :'emptykey');
SELECT envoisms.api_key_create(:'acc', 'empty', true, '{}')->>'id' AS empty_id \gset
SELECT is((SELECT permissions FROM envoisms.api_keys WHERE api_key_id = :'empty_id'), '{}'::text[],
          'api_key_create(permissions => {}) stores no permission');
SELECT body->>'id' AS kid2 FROM pg_temp.call('POST', '/v1/api-keys', '{"permissions": ["send"]}') \gset
SELECT is((SELECT status FROM pg_temp.call('PATCH', '/v1/api-keys/' || :'kid2', '{"permissions": []}')), 200, 'PATCH permissions [] …');
SELECT is((SELECT permissions FROM envoisms.api_keys WHERE api_key_id = :'kid2'), '{}'::text[],
          '… empties the list instead of leaving it unchanged');

-- no escalation through the IP allowlist or the rate limit
SELECT envoisms.api_key_create(:'acc', 'bound', true, '{api_keys,send,status}', ARRAY['196.200.1.0/24'], 50)->>'api_key' AS bound \gset
CREATE TEMP TABLE b AS SELECT * FROM pg_temp.call('POST', '/v1/api-keys', '{}', :'bound', client_ip => '196.200.1.4');
SELECT is((SELECT status || ' ' || (body->'ip_whitelist')::text || ' ' || (body->>'rate_limit') FROM b), '201 ["196.200.1.0/24"] 50',
          'a key bound to addresses makes keys bound to the same, at its own lower rate limit');
SELECT body->>'id' AS bound_child FROM b \gset
SELECT is((SELECT status FROM pg_temp.call('POST', '/v1/api-keys', '{"ip_whitelist": ["196.200.1.7"], "rate_limit": 10}', :'bound', client_ip => '196.200.1.4')),
          201, 'a narrower allowlist and a lower rate limit are allowed');
SELECT * FROM pg_temp.fails('POST', '/v1/api-keys', '{"ip_whitelist": []}', 403, 'FORBIDDEN',
                            'a bound key creating an unbound key', :'bound', client_ip => '196.200.1.4');
SELECT * FROM pg_temp.fails('POST', '/v1/api-keys', '{"ip_whitelist": ["196.200.0.0/16"]}', 403, 'FORBIDDEN',
                            'a bound key creating a key with a wider allowlist', :'bound', client_ip => '196.200.1.4');
SELECT * FROM pg_temp.fails('POST', '/v1/api-keys', '{"rate_limit": 51}', 403, 'FORBIDDEN',
                            'a key creating a key with a higher rate limit', :'bound', client_ip => '196.200.1.4');
SELECT * FROM pg_temp.fails('PATCH', '/v1/api-keys/' || :'bound_child', '{"ip_whitelist": []}', 403, 'FORBIDDEN',
                            'a bound key clearing an allowlist', :'bound', client_ip => '196.200.1.4');
SELECT * FROM pg_temp.fails('PATCH', '/v1/api-keys/' || :'bound_child', '{"rate_limit": 1000}', 403, 'FORBIDDEN',
                            'a key raising a rate limit above its own', :'bound', client_ip => '196.200.1.4');

-- no escalation by re-enabling or changing a stronger key
SELECT envoisms.api_key_create(:'acc', 'strong', true)->>'id' AS strong_id \gset
SELECT is((SELECT status FROM pg_temp.call('PATCH', '/v1/api-keys/' || :'strong_id', '{"active": false}', :'limited')), 200,
          'a limited key may deactivate a stronger key (no escalation)');
SELECT * FROM pg_temp.fails('PATCH', '/v1/api-keys/' || :'strong_id', '{"active": true}', 403, 'FORBIDDEN',
                            'a limited key re-enabling a key with every permission', :'limited');
SELECT is((SELECT active FROM envoisms.api_keys WHERE api_key_id = :'strong_id'), false, 'the stronger key stays inactive');
SELECT envoisms.api_key_create(:'acc', 'strong2', true)->>'id' AS other2 \gset
SELECT * FROM pg_temp.fails('PATCH', '/v1/api-keys/' || :'other2', '{"name": "mine now"}', 403, 'FORBIDDEN',
                            'a limited key changing an active stronger key', :'limited');

-- a sandbox key manages sandbox keys only
SELECT envoisms.api_key_create(:'acc', 'live, suspended', true)->>'id' AS live_id \gset
UPDATE envoisms.api_keys SET active = false WHERE api_key_id = :'live_id';
SELECT * FROM pg_temp.fails('PATCH', '/v1/api-keys/' || :'live_id', '{"active": true}', 403, 'FORBIDDEN',
                            'a test key re-activating a live key the operator suspended', :'testkey');
SELECT envoisms.api_key_create(:'acc', 'live bound', true, NULL, ARRAY['196.200.1.4'])->>'id' AS kidlive \gset
SELECT * FROM pg_temp.fails('PATCH', '/v1/api-keys/' || :'kidlive', '{"ip_whitelist": []}', 403, 'FORBIDDEN',
                            'a test key clearing a live key''s allowlist', :'testkey');
SELECT * FROM pg_temp.fails('DELETE', '/v1/api-keys/' || :'live_id', NULL, 403, 'FORBIDDEN', 'a test key revoking a live key', :'testkey');
SELECT body->>'id' AS test_child FROM pg_temp.call('POST', '/v1/api-keys', '{}', :'testkey') \gset
SELECT is((SELECT status FROM pg_temp.call('PATCH', '/v1/api-keys/' || :'test_child', '{"name": "sandbox 2"}', :'testkey')), 200,
          'a test key manages test keys');

-- "scope" (the official Python client's README) chooses the kind like key_prefix
SELECT is((SELECT body->>'key_prefix' FROM pg_temp.call('POST', '/v1/api-keys', '{"name": "ci", "scope": "test"}')), 'env_test', 'scope test → a test key');
SELECT is((SELECT body->>'key_prefix' FROM pg_temp.call('POST', '/v1/api-keys', '{"scope": "live"}')), 'env_live', 'scope live → a live key');
SELECT * FROM pg_temp.fails('POST', '/v1/api-keys', '{"scope": "live"}', 403, 'FORBIDDEN', 'a test key asking for scope live', :'testkey');
SELECT * FROM pg_temp.fails('POST', '/v1/api-keys', '{"scope": "prod"}', 400, 'VALIDATION_ERROR', 'an unknown scope');
SELECT * FROM pg_temp.fails('POST', '/v1/api-keys', '{"scope": "test", "key_prefix": "env_live"}', 400, 'VALIDATION_ERROR',
                            'scope and key_prefix that disagree');

-- an Idempotency-Key replay of a key creation does not hold the key
CREATE TEMP TABLE i1 AS SELECT * FROM pg_temp.call('POST', '/v1/api-keys', '{"name": "replayed"}', headers => '{"Idempotency-Key": "mk-1"}');
CREATE TEMP TABLE i2 AS SELECT * FROM pg_temp.call('POST', '/v1/api-keys', '{"name": "replayed"}', headers => '{"Idempotency-Key": "mk-1"}');
SELECT matches((SELECT body->>'api_key' FROM i1), '^env_live_[0-9a-f]{48}$', 'the first answer shows the key');
SELECT is((SELECT status || ' ' || (body ? 'api_key')::text || ' ' || (headers->>'Idempotent-Replayed') FROM i2), '201 false true',
          'the replay answers 201 without the key');
SELECT matches((SELECT body->>'warning' FROM i2), 'shown once', '… and says it was shown once');
SELECT is((SELECT body->>'id' FROM i2), (SELECT body->>'id' FROM i1), '… for the same key');
SELECT is((SELECT count(*)::int FROM envoisms.idempotency_keys x, i1 WHERE x.body::text LIKE '%' || (i1.body->>'api_key') || '%'), 0,
          'the key is stored nowhere in clear');

SELECT * FROM finish();
ROLLBACK;
