# Workers, sandbox end to end: send → sent → delivered, webhooks in order to
# a real receiver that verifies both signature schemes, the sandbox magic
# numbers, expiry with its refund, worker names and worker_stats.
use strict;
use warnings;

use EnvoismsPeers;
use EnvoismsTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = EnvoismsTest::node('sandbox', conf => [ EnvoismsPeers::worker_conf() ]);
my $q = sub { $node->safe_psql('envoisms', shift) };

my $account = $q->("SELECT envoisms.account_create('Sandbox account', 100)");

# A webhook with a generated secret; the receiver learns it, then the URL points at it.
my $created = EnvoismsTest::json($q->(
	"SELECT envoisms.webhook_create('$account', 'http://127.0.0.1:9/')"));
like($created->{secret}, qr/^whsec_/, 'generated webhook secret is whsec_…');
my $receiver = EnvoismsPeers::start('webhook_receiver.js', '--secret', $created->{secret});
$q->("SELECT envoisms.webhook_update('$account', '$created->{id}', url => '$receiver->{url}/hook')");

# Workers are up, with clear names.
ok(EnvoismsPeers::wait_until(sub {
	$q->("SELECT count(*) FROM pg_stat_activity WHERE backend_type IN
	      ('envoisms dispatcher', 'envoisms webhooks', 'envoisms scheduler')") == 3 }, 30),
	'dispatcher, webhook worker and scheduler run under their names');
is($q->("SELECT string_agg(application_name, ',' ORDER BY application_name) FROM pg_stat_activity
         WHERE application_name LIKE 'envoisms %' AND backend_type LIKE 'envoisms %'
           AND application_name NOT LIKE 'envoisms smpp%'"),
	'envoisms dispatcher 0,envoisms scheduler,envoisms webhooks 0', 'application names in pg_stat_activity');

# ---- one message, end to end
my $id = $q->(
	"SELECT envoisms.message_send('$account', '+212612345678', 'Bonjour', sandbox => true,
	        metadata => '{\"order\": \"A-1\"}')->>'id'");
ok(EnvoismsPeers::wait_until(sub {
	$q->("SELECT status FROM envoisms.messages WHERE message_id = '$id'") eq 'delivered' }, 20),
	'sandbox message delivered');
is($q->("SELECT string_agg(status, ',' ORDER BY event_id) FROM envoisms.message_events WHERE message_id = '$id'"),
	'sent,delivered', 'delivery log: sent then delivered');
is($q->("SELECT carrier_id || ' ' || (carrier_ref = 'sbx_' || message_id) FROM envoisms.messages WHERE message_id = '$id'"),
	'sandbox true', 'sandbox carrier and reference');
ok($q->("SELECT delivered_at - sent_at >= interval '190 ms' FROM envoisms.messages WHERE message_id = '$id'") eq 't',
	'delivered after envoisms.sandbox_delivery_delay');

ok(EnvoismsPeers::wait_until(sub {
	scalar(grep { ($_->{message_id} // '') eq $id } EnvoismsPeers::log_lines($receiver)) >= 2 }, 20),
	'receiver got two events for the message');
my @events = grep { ($_->{message_id} // '') eq $id } EnvoismsPeers::log_lines($receiver);
is(join(',', map { $_->{type} } @events), 'message.sent,message.delivered', 'webhooks in order');
ok((!grep { !$_->{sig_ok} } @events), 'X-EnvoiSMS.ma-Signature verified by the contract\'s Node snippet');
ok((!grep { !$_->{std_ok} } @events), 'Standard Webhooks signature verified');
is($events[0]{metadata}{order}, 'A-1', 'the event carries the message metadata');
is($events[0]{webhook_id}, $events[0]{event_id}, 'webhook-id header is the event id');
is($q->("SELECT last_status || ' ' || (last_triggered_at IS NOT NULL) FROM envoisms.webhooks WHERE webhook_id = '$created->{id}'"),
	'200 true', 'webhook last_status and last_triggered_at updated');

# ---- magic numbers
my %magic;
for my $n ('+212600000001', '+212600000002', '+212600000003', '+212600000004')
{
	$magic{$n} = $q->("SELECT envoisms.message_send('$account', '$n', 'magic', sandbox => true)->>'id'");
}
ok(EnvoismsPeers::wait_until(sub {
	$q->("SELECT count(*) FROM envoisms.messages WHERE to_number LIKE '+2126000000%' AND status IN ('delivered', 'failed', 'expired')") == 4 }, 20),
	'every magic number reached a final status');
my $final = sub {
	my $n = shift;
	$q->("SELECT status || ' ' || coalesce(error_code, '-') || ' ' || attempts || ' '
	             || coalesce((SELECT string_agg(status, ',' ORDER BY event_id) FROM envoisms.message_events e
	                           WHERE e.message_id = m.message_id), '')
	        FROM envoisms.messages m WHERE message_id = '$magic{$n}'");
};
is($final->('+212600000001'), 'failed SANDBOX_UNDELIVERABLE 1 sent,failed', '+212600000001: sent, then failed');
is($final->('+212600000002'), 'expired SANDBOX_EXPIRED 1 sent,expired', '+212600000002: sent, then expired');
is($final->('+212600000003'), 'failed SANDBOX_REJECTED 1 failed', '+212600000003: rejected at submit');
is($final->('+212600000004'), 'delivered - 2 sent,delivered', '+212600000004: retried once, then delivered');

# ---- expiry of a live message nobody can route: expired, refunded once, webhook
my $before = $q->("SELECT envoisms.account_balance('$account')");
my $live = $q->("SELECT envoisms.message_send('$account', '+212612345670', 'no route')->>'id'");
ok($q->("SELECT envoisms.account_balance('$account') < $before") eq 't', 'live send debited');
ok(EnvoismsPeers::wait_until(sub {
	$q->("SELECT error_code FROM envoisms.messages WHERE message_id = '$live'") eq 'NO_ROUTE' }, 10),
	'a live message without a route waits (NO_ROUTE)');
$q->("UPDATE envoisms.messages SET expires_at = now() + interval '1 second' WHERE message_id = '$live'");
ok(EnvoismsPeers::wait_until(sub {
	$q->("SELECT status FROM envoisms.messages WHERE message_id = '$live'") eq 'expired' }, 25),
	'expiry sweep expired it');
is($q->("SELECT envoisms.account_balance('$account')"), $before, 'refunded in full');
is($q->("SELECT count(*) FROM envoisms.ledger WHERE message_id = '$live' AND kind = 'refund'"), '1', 'refunded once');
is($q->("SELECT bool_and(ok) FROM envoisms.balance_check()"), 't', 'balance_check holds');
ok(EnvoismsPeers::wait_until(sub {
	grep { ($_->{message_id} // '') eq $live && $_->{type} eq 'message.expired' } EnvoismsPeers::log_lines($receiver) }, 20),
	'message.expired webhook delivered');

# ---- worker_stats
my $stats = $q->("SELECT claimed >= 6 AND sent >= 4 AND failed >= 1 AND retried >= 1 AND in_flight = 0
                    FROM envoisms.worker_stats WHERE worker = 'envoisms dispatcher 0'");
is($stats, 't', 'worker_stats counts the dispatcher\'s work');
is($q->("SELECT sent >= 8 FROM envoisms.worker_stats WHERE worker = 'envoisms webhooks 0'"), 't',
	'worker_stats counts webhook deliveries');

EnvoismsPeers::stop($receiver);
$node->stop;
done_testing();
