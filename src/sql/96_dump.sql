-- 96_dump.sql — operator configuration and queue state of the worker areas
-- (85..90), and the billing rows (82), that pg_dump must keep. The built-in
-- sandbox carrier is made by CREATE EXTENSION, so it is left out of the dump
-- (a restore would collide).
SELECT pg_catalog.pg_extension_config_dump('envoisms.carriers', 'WHERE carrier_id <> ''sandbox''');
SELECT pg_catalog.pg_extension_config_dump('envoisms.routes', '');
SELECT pg_catalog.pg_extension_config_dump('envoisms.pending_dlrs', '');
SELECT pg_catalog.pg_extension_config_dump('envoisms.smpp_parts', '');
SELECT pg_catalog.pg_extension_config_dump('envoisms.inbound_numbers', '');
SELECT pg_catalog.pg_extension_config_dump('envoisms.inbound_unmatched', '');
SELECT pg_catalog.pg_extension_config_dump('envoisms.inbound_unmatched_received_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('envoisms.inbound_parts', '');
SELECT pg_catalog.pg_extension_config_dump('envoisms.whatsapp_windows', '');
-- Billing (82): the operator's settings and packs, and the top-ups; all
-- made after the install, so none collides with what CREATE EXTENSION makes.
SELECT pg_catalog.pg_extension_config_dump('envoisms.billing_settings', '');
SELECT pg_catalog.pg_extension_config_dump('envoisms.billing_packs', '');
SELECT pg_catalog.pg_extension_config_dump('envoisms.topups', '');
