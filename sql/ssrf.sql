-- The webhook delivery address guard (worker_ssrf.c), address by address.
-- Nothing here connects anywhere: the classifier is called on literals.
SELECT a AS address, envoisms.webhook_address_refusal(a::inet) AS refusal
  FROM unnest(ARRAY[
    -- IPv4: refused
    '0.0.0.0', '10.1.2.3', '100.64.0.1', '127.0.0.1', '127.255.255.254', '169.254.169.254',
    '172.16.0.1', '172.31.255.255', '192.0.0.8', '192.168.1.1', '198.18.0.1', '224.0.0.1',
    '240.0.0.1', '255.255.255.255',
    -- IPv4: allowed (public; documentation ranges are not special-cased)
    '8.8.8.8', '172.32.0.1', '192.0.2.1', '100.128.0.1',
    -- IPv6: refused
    '::', '::1', '::ffff:127.0.0.1', '::ffff:10.0.0.1', '::127.0.0.1',
    '64:ff9b::7f00:1', '64:ff9b::a00:1', '64:ff9b:1::a00:1', '64:ff9b:1:ffff::1',
    '2002:7f00:1::', '2002:a00:1::1', '2002:808:808::1',
    '2001:0:4136:e378:8000:63bf:3fff:fdd2', '2001::1',
    '100::1', 'fc00::1', 'fd12:3456::1', 'fe80::1', 'fec0::1', 'ff02::1', '2001:db8::1',
    -- IPv6: allowed (global unicast outside the special prefixes)
    '2a00:1450:4007:80e::200e', '2001:4860:4860::8888', '2001:1::1', '64:ff9b:2::1'
  ]) AS t(a);

-- NULL in, NULL out (STRICT)
SELECT envoisms.webhook_address_refusal(NULL) IS NULL AS null_is_null;
