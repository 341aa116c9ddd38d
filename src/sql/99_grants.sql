-- 99_grants.sql — who may do what. Last of the install script, so it covers
-- every object the areas above created.
--
-- Nothing is open to PUBLIC: the tables hold money and keys. The operator
-- grants what is meant, for example to the role the gateway connects as:
--     GRANT USAGE ON SCHEMA envoisms TO gateway;
--     GRANT EXECUTE ON FUNCTION envoisms.api(text, text, text, jsonb, text, inet) TO gateway;
--     GRANT EXECUTE ON FUNCTION envoisms.api_precheck(text, text, jsonb, inet) TO gateway;
--     GRANT EXECUTE ON FUNCTION envoisms.api_once(uuid, text, text, text, jsonb, text, inet) TO gateway;
--     GRANT EXECUTE ON FUNCTION envoisms.request_outcome(uuid) TO gateway;
-- envoisms.api, envoisms.api_precheck (the gateway's check of a large
-- request's head before it reads the body), envoisms.api_once and
-- envoisms.request_outcome (a write request's reply by its request token,
-- 81_request_outcomes.sql) are SECURITY DEFINER (with a
-- fixed search_path), so these grants are all an HTTP front needs. Applications that send in their own
-- transactions are granted the domain functions and tables they use.

REVOKE ALL ON ALL TABLES IN SCHEMA envoisms FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA envoisms FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA envoisms FROM PUBLIC;
REVOKE ALL ON SCHEMA envoisms FROM PUBLIC;
