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
