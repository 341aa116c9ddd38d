# Workers, webhook deliveries: the retry schedule (scaled down), same event
# id on every attempt, schedule exhaustion, 410 Gone disables, failing for
# envoisms.webhook_disable_after disables, redirects are not followed, a
# slow receiver does not starve the others, and the SSRF guard refuses
# 127.0.0.1, localhost, 10.0.0.1, 169.254.169.254 and [::1] when private
# addresses are not allowed.
use strict;
use warnings;

use EnvoismsPeers;
use EnvoismsTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = EnvoismsTest::node('webhooks', conf => [ EnvoismsPeers::worker_conf(
	"envoisms.webhook_retry_scale = 0.002",
	"envoisms.webhook_max_per_endpoint = 4") ]);
my $q = sub { $node->safe_psql('envoisms', shift) };
my $account = $q->("SELECT envoisms.account_create('Webhook account', 10)");
my $secret = 'whsec_' . 'c2VjcmV0LWtleS1mb3ItdGVzdHMtMTIzNDU2Nzg5MA==';

my $hook = sub {
	my ($url) = @_;
	return EnvoismsTest::json($q->("SELECT envoisms.webhook_create('$account', '$url', secret => '$secret')"))->{id};
};
my $enqueue = sub {
	my ($webhook, $n) = @_;
	$q->("SELECT envoisms.webhook_enqueue('$account', 'message.test', jsonb_build_object('n', g), '$webhook')
	        FROM generate_series(1, " . ($n // 1) . ") g");
};
my $delivery = sub {
	my ($webhook) = @_;
	return $q->("SELECT status || '|' || attempts || '|' || coalesce(last_status::text, '') || '|' || coalesce(last_error, '')
	               FROM envoisms.webhook_deliveries WHERE webhook_id = '$webhook' ORDER BY delivery_id LIMIT 1");
};
my $reload = sub {
	$q->(shift);
	$q->("SELECT pg_reload_conf()");
	sleep 1;
};

# ---- retries on the (scaled) schedule: 0, 5 s, 5 min, 30 min … × 0.002
my $flaky = EnvoismsPeers::start('webhook_receiver.js', '--secret', $secret, '--fail-first', 3);
my $w1 = $hook->("$flaky->{url}/flaky");
$enqueue->($w1);
ok(EnvoismsPeers::wait_until(sub { $delivery->($w1) =~ /^delivered/ }, 30), 'delivered on the 4th attempt');
my @tries = EnvoismsPeers::log_lines($flaky);
is(scalar(@tries), 4, 'four attempts');
is(scalar(keys %{ { map { $_->{event_id} => 1 } @tries } }), 1, 'the same event id every time');
ok(!(grep { !$_->{sig_ok} || !$_->{std_ok} } @tries), 'every attempt signed');
my @gaps = map { $tries[$_]{at} - $tries[ $_ - 1 ]{at} } 1 .. 3;
note sprintf('gaps: %.3f %.3f %.3f', @gaps);
ok($gaps[0] < 0.5, '2nd attempt after ~5 s × 0.002');
ok($gaps[1] > 0.45 && $gaps[1] < 1.2, '3rd attempt after ~5 min × 0.002 (0.6 s ± jitter)');
ok($gaps[2] > 2.8 && $gaps[2] < 5.0, '4th attempt after ~30 min × 0.002 (3.6 s ± jitter)');
like($delivery->($w1), qr/^delivered\|4\|200\|$/, 'delivery row: delivered, 4 attempts, 200');
is($q->("SELECT last_status || ' ' || (failing_since IS NULL) FROM envoisms.webhooks WHERE webhook_id = '$w1'"),
	'200 true', 'a success clears failing_since');

# ---- a shorter schedule (SIGHUP reload): exhausted → failed
$reload->("ALTER SYSTEM SET envoisms.webhook_retry_schedule = '0, 100ms, 100ms'");
$reload->("ALTER SYSTEM SET envoisms.webhook_retry_scale = 1");
my $down = EnvoismsPeers::start('webhook_receiver.js', '--secret', $secret, '--answer', 500);
my $w2 = $hook->("$down->{url}/down");
$enqueue->($w2);
ok(EnvoismsPeers::wait_until(sub { $delivery->($w2) =~ /^failed/ }, 20), 'failed once the schedule is over');
like($delivery->($w2), qr/^failed\|3\|500\|HTTP 500/, 'after three attempts, last status 500');
is(scalar(EnvoismsPeers::log_lines($down)), 3, 'the receiver saw three attempts');
is($q->("SELECT active FROM envoisms.webhooks WHERE webhook_id = '$w2'"), 't', 'one failed delivery does not disable the webhook');

# ---- 410 Gone disables the webhook and cancels what is pending
my $gone = EnvoismsPeers::start('webhook_receiver.js', '--secret', $secret, '--answer', 410, '--delay', 1500);
my $w3 = $hook->("$gone->{url}/gone");
$enqueue->($w3, 1);
EnvoismsPeers::wait_until(sub { scalar(EnvoismsPeers::log_lines($gone)) >= 1 }, 10);
$enqueue->($w3, 3);
$q->("UPDATE envoisms.webhook_deliveries SET next_attempt_at = now() + interval '1 hour' WHERE webhook_id = '$w3' AND locked_until IS NULL");
ok(EnvoismsPeers::wait_until(sub { $q->("SELECT NOT active FROM envoisms.webhooks WHERE webhook_id = '$w3'") eq 't' }, 20),
	'410 Gone disables the webhook');
is($q->("SELECT disabled_reason FROM envoisms.webhooks WHERE webhook_id = '$w3'"), 'the endpoint answered 410 Gone', 'with the reason');
is($q->("SELECT string_agg(status, ',' ORDER BY delivery_id) FROM envoisms.webhook_deliveries WHERE webhook_id = '$w3'"),
	'failed,cancelled,cancelled,cancelled', 'its pending deliveries are cancelled');

# ---- redirects are not followed
my $redir = EnvoismsPeers::start('webhook_receiver.js', '--secret', $secret, '--redirect');
my $w4 = $hook->("$redir->{url}/moved");
$enqueue->($w4);
ok(EnvoismsPeers::wait_until(sub { $delivery->($w4) =~ /^failed/ }, 20), 'a 302 is a failure');
like($delivery->($w4), qr/redirects are not followed/, 'said so in last_error');
ok(!(grep { $_->{path} eq '/redirected' } EnvoismsPeers::log_lines($redir)), 'the Location was never requested');

# ---- failing for envoisms.webhook_disable_after disables the webhook
$reload->("ALTER SYSTEM SET envoisms.webhook_disable_after = '2s'");
$reload->("ALTER SYSTEM SET envoisms.webhook_retry_schedule = '0, 1s, 1s, 1s, 1s, 1s'");
my $w5 = $hook->("$down->{url}/always-down");
$enqueue->($w5, 2);
ok(EnvoismsPeers::wait_until(sub { $q->("SELECT NOT active FROM envoisms.webhooks WHERE webhook_id = '$w5'") eq 't' }, 20),
	'a webhook failing for longer than webhook_disable_after is disabled');
like($q->("SELECT disabled_reason FROM envoisms.webhooks WHERE webhook_id = '$w5'"), qr/failed without a success since/, 'with the reason');
$reload->("ALTER SYSTEM RESET envoisms.webhook_disable_after");

# ---- a slow receiver does not starve the others (4 in flight per endpoint)
my $slow = EnvoismsPeers::start('webhook_receiver.js', '--secret', $secret, '--delay', 1000);
my $fast = EnvoismsPeers::start('webhook_receiver.js', '--secret', $secret);
my $ws = $hook->("$slow->{url}/slow");
my $wf = $hook->("$fast->{url}/fast");
$enqueue->($ws, 40);
$enqueue->($wf, 5);
my $t0 = time();
ok(EnvoismsPeers::wait_until(sub {
	$q->("SELECT count(*) FROM envoisms.webhook_deliveries WHERE webhook_id = '$wf' AND status = 'delivered'") == 5 }, 10),
	'the fast receiver got its 5 deliveries');
my $slow_done = $q->("SELECT count(*) FROM envoisms.webhook_deliveries WHERE webhook_id = '$ws' AND status = 'delivered'");
ok($slow_done < 40, "while the slow one is still being served ($slow_done of 40)");
ok(EnvoismsPeers::wait_until(sub { my @l = EnvoismsPeers::log_lines($slow); 1 }, 1), 'slow receiver reachable');
my $max_parallel = $q->("SELECT max(c) FROM (SELECT count(*) c FROM envoisms.webhook_deliveries
                           WHERE webhook_id = '$ws' AND status = 'pending' AND locked_until > now()) x");
ok($max_parallel <= 4, "at most 4 in flight to one endpoint ($max_parallel)");
# each attempt's time and duration are kept (the console's deliveries log)
ok(EnvoismsPeers::wait_until(sub {
	$q->("SELECT count(*) FROM envoisms.webhook_deliveries WHERE webhook_id = '$ws' AND status = 'delivered'") > 0 }, 20),
	'the slow receiver got deliveries');
is($q->("SELECT bool_and(last_latency_ms >= 1000 AND last_attempt_at IS NOT NULL) FROM envoisms.webhook_deliveries
          WHERE webhook_id = '$ws' AND status = 'delivered'"), 't',
	"the slow receiver's deliveries took its 1 s delay or more (last_latency_ms)");
is($q->("SELECT bool_and(last_latency_ms < 1000) FROM envoisms.webhook_deliveries WHERE webhook_id = '$wf'"), 't',
	"the fast receiver's less");

# ---- SSRF guard: private addresses refused on the connected address
$reload->("ALTER SYSTEM SET envoisms.webhook_allow_private = off");
$reload->("ALTER SYSTEM SET envoisms.webhook_retry_schedule = '0'");
my $victim = EnvoismsPeers::start('webhook_receiver.js', '--secret', $secret);
my %targets = (
	"http://127.0.0.1:$victim->{port}/internal" => qr/loopback address 127\.0\.0\.1/,
	"http://localhost:$victim->{port}/internal" => qr/loopback/,
	"http://10.0.0.1/admin"                     => qr/private address 10\.0\.0\.1/,
	"http://169.254.169.254/latest/meta-data/"  => qr/link-local address 169\.254\.169\.254/,
	"http://[::1]:$victim->{port}/internal"     => qr/loopback IPv6 address ::1/,
);
my %ids;
for my $url (sort keys %targets)
{
	$q->("INSERT INTO envoisms.webhooks (account_id, webhook_id, url, events, secret)
	      VALUES ('$account', envoisms.new_id('whk'), '$url', '{message.test}', '$secret')");
	$ids{$url} = $q->("SELECT webhook_id FROM envoisms.webhooks WHERE url = '$url'");
	$enqueue->($ids{$url});
}
for my $url (sort keys %targets)
{
	ok(EnvoismsPeers::wait_until(sub { $delivery->($ids{$url}) =~ /^failed/ }, 15), "$url: delivery failed");
	like($delivery->($ids{$url}), $targets{$url}, "$url: refused by the address guard");
}
is(scalar(EnvoismsPeers::log_lines($victim)), 0, 'nothing reached the loopback receiver');

EnvoismsPeers::stop($_) for ($flaky, $down, $gone, $redir, $slow, $fast, $victim);
$node->stop;
done_testing();
