-- 45_lookup.sql — number lookup: POST /v1/verify/lookup.
--
-- Validity, formats, line type, region and location come from libphonenumber
-- (envoisms.phone_parse; its offline geocoder gives the location, so the
-- geocoding data files are not copied here). The Moroccan carrier comes from
-- envoisms.carrier_prefixes, seeded below from libphonenumber's carrier data
-- for +212 (Apache License 2.0, attribution kept below). The longest matching
-- prefix wins. The operator may add or change rows (source 'operator'); those
-- rows are kept by pg_dump. "Maroc Telecom" is shown as "Maroc Telecom (IAM)".
--
-- Real data wins over the contract's illustrative example: +212612345678 is
-- in the 212612 block, which libphonenumber assigns to Orange, so lookup
-- answers "Orange" for it where the contract's example says IAM.

CREATE TABLE envoisms.carrier_prefixes (
    prefix      text PRIMARY KEY CHECK (prefix ~ '^[1-9][0-9]{0,14}$'),   -- E.164 digits, no "+"
    carrier     text NOT NULL CHECK (length(carrier) BETWEEN 1 AND 100),
    source      text NOT NULL DEFAULT 'operator' CHECK (source IN ('libphonenumber', 'operator')),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
SELECT pg_catalog.pg_extension_config_dump('envoisms.carrier_prefixes', 'WHERE source = ''operator''');

-- The rows below are copied from libphonenumber-carrier-en-212.txt
-- (libphonenumber resources/carrier/en/212.txt), whose header follows.
--
--   # Copyright (C) 2013 The Libphonenumber Authors
--
--   # Licensed under the Apache License, Version 2.0 (the "License");
--   # you may not use this file except in compliance with the License.
--   # You may obtain a copy of the License at
--
--   # http://www.apache.org/licenses/LICENSE-2.0
--
--   # Unless required by applicable law or agreed to in writing, software
--   # distributed under the License is distributed on an "AS IS" BASIS,
--   # WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
--   # See the License for the specific language governing permissions and
--   # limitations under the License.
--
--   # Prefixes include those from http://en.wikipedia.org/wiki/+212 and
--   # http://www.telecomjahiz.com/Assistance/Liste-des-prefixes-des-operateurs-de-telephonie-Mobile-et-Fixe-au-Maroc.php
--   # and http://www.anrt.ma/sites/default/files/Blocs_de_numeros_par_operateur.pdf
--   # This last file refers to Méditel as Medi Telecom, Maroc Telecom as Itissalat
--   # Al-Maghrib and Inwi as WANA Corporate (its old name, according to wikipedia).
--
INSERT INTO envoisms.carrier_prefixes (prefix, carrier, source) VALUES
    ('21260', 'Inwi', 'libphonenumber'),
    ('21261', 'Maroc Telecom', 'libphonenumber'),
    ('212612', 'Orange', 'libphonenumber'),
    ('212614', 'Orange', 'libphonenumber'),
    ('212617', 'Orange', 'libphonenumber'),
    ('212619', 'Orange', 'libphonenumber'),
    ('212620', 'Orange', 'libphonenumber'),
    ('212621', 'Orange', 'libphonenumber'),
    ('212622', 'Maroc Telecom', 'libphonenumber'),
    ('212623', 'Maroc Telecom', 'libphonenumber'),
    ('212624', 'Maroc Telecom', 'libphonenumber'),
    ('212625', 'Orange', 'libphonenumber'),
    ('212626', 'Inwi', 'libphonenumber'),
    ('212627', 'Inwi', 'libphonenumber'),
    ('212628', 'Maroc Telecom', 'libphonenumber'),
    ('212629', 'Inwi', 'libphonenumber'),
    ('212630', 'Inwi', 'libphonenumber'),
    ('212631', 'Orange', 'libphonenumber'),
    ('212632', 'Orange', 'libphonenumber'),
    ('212633', 'Inwi', 'libphonenumber'),
    ('212634', 'Inwi', 'libphonenumber'),
    ('212635', 'Inwi', 'libphonenumber'),
    ('212636', 'Maroc Telecom', 'libphonenumber'),
    ('212637', 'Maroc Telecom', 'libphonenumber'),
    ('212638', 'Inwi', 'libphonenumber'),
    ('212639', 'Maroc Telecom', 'libphonenumber'),
    ('212640', 'Inwi', 'libphonenumber'),
    ('212641', 'Maroc Telecom', 'libphonenumber'),
    ('212642', 'Maroc Telecom', 'libphonenumber'),
    ('212643', 'Maroc Telecom', 'libphonenumber'),
    ('212644', 'Orange', 'libphonenumber'),
    ('212645', 'Orange', 'libphonenumber'),
    ('212646', 'Inwi', 'libphonenumber'),
    ('212647', 'Inwi', 'libphonenumber'),
    ('212648', 'Maroc Telecom', 'libphonenumber'),
    ('212649', 'Orange', 'libphonenumber'),
    ('21265', 'Maroc Telecom', 'libphonenumber'),
    ('212656', 'Orange', 'libphonenumber'),
    ('212657', 'Orange', 'libphonenumber'),
    ('212660', 'Orange', 'libphonenumber'),
    ('212661', 'Maroc Telecom', 'libphonenumber'),
    ('212662', 'Maroc Telecom', 'libphonenumber'),
    ('212663', 'Orange', 'libphonenumber'),
    ('212664', 'Orange', 'libphonenumber'),
    ('212665', 'Orange', 'libphonenumber'),
    ('212666', 'Maroc Telecom', 'libphonenumber'),
    ('212667', 'Maroc Telecom', 'libphonenumber'),
    ('212668', 'Maroc Telecom', 'libphonenumber'),
    ('212669', 'Orange', 'libphonenumber'),
    ('21267', 'Maroc Telecom', 'libphonenumber'),
    ('212674', 'Orange', 'libphonenumber'),
    ('212675', 'Orange', 'libphonenumber'),
    ('212679', 'Orange', 'libphonenumber'),
    ('212680', 'Inwi', 'libphonenumber'),
    ('212681', 'Inwi', 'libphonenumber'),
    ('212682', 'Maroc Telecom', 'libphonenumber'),
    ('212684', 'Orange', 'libphonenumber'),
    ('212687', 'Inwi', 'libphonenumber'),
    ('212688', 'Orange', 'libphonenumber'),
    ('212689', 'Maroc Telecom', 'libphonenumber'),
    ('212690', 'Inwi', 'libphonenumber'),
    ('212691', 'Orange', 'libphonenumber'),
    ('2126921', 'Al Hourria Telecom', 'libphonenumber'),
    ('2126922', 'Al Hourria Telecom', 'libphonenumber'),
    ('212693', 'Orange', 'libphonenumber'),
    ('212694', 'Orange', 'libphonenumber'),
    ('212695', 'Inwi', 'libphonenumber'),
    ('212696', 'Maroc Telecom', 'libphonenumber'),
    ('212697', 'Maroc Telecom', 'libphonenumber'),
    ('212698', 'Inwi', 'libphonenumber'),
    ('212699', 'Inwi', 'libphonenumber'),
    ('21270', 'Inwi', 'libphonenumber'),
    ('21271', 'Inwi', 'libphonenumber'),
    ('21272', 'Inwi', 'libphonenumber'),
    ('21275', 'Maroc Telecom', 'libphonenumber'),
    ('21276', 'Maroc Telecom', 'libphonenumber'),
    ('21277', 'Orange', 'libphonenumber'),
    ('21278', 'Orange', 'libphonenumber');

-- The carrier of an E.164 number: the longest matching prefix, with the
-- contract's display names (IAM is shown as "Maroc Telecom (IAM)"); NULL when unknown.
CREATE FUNCTION envoisms.carrier_of(e164 text) RETURNS text
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
#variable_conflict use_column
BEGIN
    RETURN (
        SELECT CASE c.carrier WHEN 'Maroc Telecom' THEN 'Maroc Telecom (IAM)' ELSE c.carrier END
          FROM envoisms.carrier_prefixes c
         WHERE c.prefix = ANY (ARRAY(SELECT left(ltrim(e164, '+'), n) FROM generate_series(1, 15) n))
         ORDER BY length(c.prefix) DESC
         LIMIT 1);
END
$$;

-- Look a number up; returns the contract's POST /v1/verify/lookup response.
-- `country_code` (ISO 3166-1 alpha-2) applies to numbers in local format
-- only; a number in international format (+… or 00…) carries its own
-- country. A number that is not a valid phone number gives valid = false
-- (200), not an error: telling is the point of a lookup.
CREATE FUNCTION envoisms.number_lookup(number text, country_code text DEFAULT NULL) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    p record;
    region text;
BEGIN
    IF number IS NULL OR length(btrim(number)) = 0 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'number is required', 'number');
    END IF;
    IF length(number) > 32 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'number must be at most 32 characters', 'number');
    END IF;
    IF country_code IS NOT NULL THEN
        region := upper(btrim(country_code));
        IF region !~ '^[A-Z]{2}$' OR envoisms.phone_country_name(region) IS NULL THEN
            PERFORM envoisms.raise_error('VALIDATION_ERROR',
                'country_code must be an ISO 3166-1 alpha-2 code, for example MA or FR', 'country_code');
        END IF;
    END IF;
    SELECT * INTO p FROM envoisms.phone_parse(btrim(number), region);
    IF NOT coalesce(p.valid, false) THEN
        RETURN jsonb_build_object(
            'valid', false, 'number', btrim(number), 'local_format', NULL, 'international_format', NULL,
            'country_prefix', p.country_prefix, 'country_code', p.region,
            'country_name', CASE WHEN p.region IS NOT NULL THEN envoisms.phone_country_name(p.region) END,
            'location', NULL, 'carrier', NULL, 'line_type', NULL);
    END IF;
    RETURN jsonb_build_object(
        'valid', true,
        'number', ltrim(p.e164, '+'),
        'local_format', replace(p.national_format, ' ', ''),
        'international_format', p.e164,
        'country_prefix', p.country_prefix,
        'country_code', p.region,
        'country_name', envoisms.phone_country_name(p.region),
        'location', nullif(p.location, ''),
        'carrier', envoisms.carrier_of(p.e164),
        'line_type', p.line_type);
END
$$;
COMMENT ON FUNCTION envoisms.number_lookup(text, text) IS
'Validate a phone number: formats, country, carrier, line type and location (POST /v1/verify/lookup)';

CREATE FUNCTION envoisms.api_verify_lookup(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.reply(200, envoisms.number_lookup(
        envoisms.body_text(req.body, 'number'),
        envoisms.body_text(req.body, 'country_code')));
END
$$;

INSERT INTO envoisms.api_endpoints (method, template, handler, permission) VALUES
    ('POST', '/v1/verify/lookup', 'envoisms.api_verify_lookup(envoisms.api_request)', 'verify');
