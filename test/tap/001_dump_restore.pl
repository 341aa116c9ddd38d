# 001_dump_restore.pl — pg_dump keeps the users' data: accounts, money,
# keys, messages, the OTP secret, billing settings, packs and top-ups and the rest restore into a new database
# without an error, the books still balance and a key still authenticates.
use strict;
use warnings;
use lib 'test/tap/lib';
use EnvoismsTest;
use Test::More;

my $node = EnvoismsTest::node('dump');
my ($account, $key) = EnvoismsTest::demo_key($node);
$node->safe_psql('envoisms', qq{
    SELECT envoisms.account_topup('$account', 25, 'invoice 7');
    SELECT envoisms.message_send('$account', '+212612345678', 'Bonjour');
    SELECT envoisms.message_send_bulk('$account', '[{"to": "+212611111111", "message": "a"}, {"to": "+212622222222", "message": "b"}]');
    SELECT envoisms.optout_add('$account', '+212633333333') WHERE to_regprocedure('envoisms.optout_add(text,text)') IS NOT NULL;
    SELECT envoisms.verify_send('$account', '+212644444444') WHERE to_regproc('envoisms.verify_send') IS NOT NULL;
    INSERT INTO envoisms.carriers (carrier_id, kind, name, config) VALUES ('iam', 'http', 'IAM', '{"url": "https://carrier.example/send"}');
    INSERT INTO envoisms.routes (channel, prefix, carrier_id, priority) VALUES ('sms', '2126', 'iam', 0);
    INSERT INTO envoisms.inbound_numbers (account_id, number) VALUES ('$account', '+212522000000');
    INSERT INTO envoisms.billing_settings (name, value) VALUES ('bank_transfer_details', '{"rib": "190 780 2111122223333444 55"}');
    INSERT INTO envoisms.billing_packs (pack_id, name, sms_count, price_mad) VALUES ('sms-1000', '1 000 SMS', 1000, 290);
    SELECT envoisms.topup_confirm(envoisms.topup_create('$account', 'bank_transfer', 120)->>'id');
    SELECT envoisms.topup_create('$account', 'bank_transfer', pack_id => 'sms-1000');
});
my $before = $node->safe_psql('envoisms', q{
    SELECT (SELECT count(*) FROM envoisms.accounts) || ' ' || (SELECT count(*) FROM envoisms.messages) || ' '
        || (SELECT count(*) FROM envoisms.ledger) || ' ' || (SELECT count(*) FROM envoisms.api_keys) || ' '
        || (SELECT sum(balance_mad) FROM envoisms.balance_check()) || ' '
        || (SELECT string_agg(carrier_id, ',' ORDER BY carrier_id) FROM envoisms.carriers) || ' '
        || (SELECT count(*) FROM envoisms.routes) || ' ' || (SELECT count(*) FROM envoisms.inbound_numbers) || ' '
        || (SELECT string_agg(name, ',') FROM envoisms.billing_settings) || ' ' || (SELECT count(*) FROM envoisms.billing_packs) || ' '
        || (SELECT string_agg(status, ',' ORDER BY topup_id) FROM envoisms.topups)});

my $dump = $node->basedir . '/envoisms.dump';
my ($host, $port) = ($node->host, $node->port);
is(system('pg_dump', '-h', $host, '-p', $port, '-Fc', '-f', $dump, 'envoisms'), 0, 'pg_dump succeeds');
$node->safe_psql('postgres', 'CREATE DATABASE restored');
my ($out, $err) = ('', '');
my $rc = PostgreSQL::Test::Utils::run_log(['pg_restore', '-h', $host, '-p', $port, '-d', 'restored', '--exit-on-error', $dump]);
ok($rc, 'pg_restore succeeds with --exit-on-error (no row collides with what CREATE EXTENSION made)');

is($node->safe_psql('restored', q{
    SELECT (SELECT count(*) FROM envoisms.accounts) || ' ' || (SELECT count(*) FROM envoisms.messages) || ' '
        || (SELECT count(*) FROM envoisms.ledger) || ' ' || (SELECT count(*) FROM envoisms.api_keys) || ' '
        || (SELECT sum(balance_mad) FROM envoisms.balance_check()) || ' '
        || (SELECT string_agg(carrier_id, ',' ORDER BY carrier_id) FROM envoisms.carriers) || ' '
        || (SELECT count(*) FROM envoisms.routes) || ' ' || (SELECT count(*) FROM envoisms.inbound_numbers) || ' '
        || (SELECT string_agg(name, ',') FROM envoisms.billing_settings) || ' ' || (SELECT count(*) FROM envoisms.billing_packs) || ' '
        || (SELECT string_agg(status, ',' ORDER BY topup_id) FROM envoisms.topups)}), $before,
   'the same rows, money, carriers, routes, numbers, billing settings, packs and top-ups after the restore');
is($node->safe_psql('restored', 'SELECT bool_and(ok) FROM envoisms.balance_check()'), 't', 'the books still balance');
is($node->safe_psql('restored', qq{SELECT status FROM envoisms.api('GET', '/v1/billing/balance', '', '{"Authorization": "Bearer $key"}')}),
   '200', 'the API key still authenticates');
$node->stop;
done_testing();
