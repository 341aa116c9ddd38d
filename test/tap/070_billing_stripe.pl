# Billing with Stripe, through the gateway, against stripe_peer.js (Stripe's
# documented API on 127.0.0.1): POST /v1/billing/topups creates a Checkout
# Session with the right amount in the currency's smallest unit, the
# metadata and an Idempotency-Key; Stripe's signed checkout.session.completed
# on the public route credits the account exactly once (replays, repeats and
# concurrent deliveries change nothing); forged, stale and missing
# signatures are 400 and change nothing; unknown sessions and other events
# are acknowledged and ignored; Stripe failing or slow is a bounded 503 that
# stores nothing; the books balance after every step and no secret reaches
# a log.
use strict;
use warnings;

use EnvoismsPeers;
use EnvoismsTest;
use PostgreSQL::Test::Utils;
use JSON::PP;
use POSIX ();
use Test::More;
use Time::HiRes qw(time);

# The test's own statements set the secrets: they are not logged
# (log_statement = all is the test clusters' default), so that the log
# holds only what envoisms itself writes.
my $node = EnvoismsTest::node('billing', conf => ["log_statement = 'none'"]);
my $q = sub { $node->safe_psql('envoisms', shift) };
my $gw = EnvoismsTest::start_gateway($node);

my $secret_key = 'sk_test_51TapKey0envoisms0SecretKey4242';
my $whsec = 'whsec_tapWebhookSigningSecret0123456789';
my $stripe = EnvoismsPeers::start('stripe_peer.js', '--key', $secret_key, '--webhook-secret', $whsec,
	'--webhook-url', "$gw->{url}/v1/billing/stripe/webhook");

my ($account, $key) = EnvoismsTest::demo_key($node, live => 1, balance => 100, permissions => ['billing']);
my (undef, $sandbox_key) = EnvoismsTest::demo_key($node, live => 0);
my (undef, $send_key) = EnvoismsTest::demo_key($node, live => 1, permissions => ['send', 'balance']);

my $api = sub {
	my ($method, $path, $body, %o) = @_;
	my ($s, $h, $b) = EnvoismsTest::http($method, "$gw->{url}$path",
		{ Authorization => 'Bearer ' . ($o{key} // $key), 'Content-Type' => 'application/json', %{ $o{headers} // {} } },
		$body);
	return ($s, EnvoismsTest::json($b), $h);
};
my $event = sub { EnvoismsPeers::stripe_peer_call($stripe, '/_test/event', {@_}) };
my $result = sub { my ($ev) = @_; my $j = EnvoismsTest::json($ev->{body}) // {}; return "$ev->{status} " . ($j->{result} // $j->{error}{code} // '?') };
my $state = sub {
	$q->("SELECT trim_scale(envoisms.account_balance('$account')) || ' MAD, ' || (SELECT count(*) FROM envoisms.ledger)
	          || ' ledger rows, ' || (SELECT string_agg(status, ',' ORDER BY topup_id) FROM envoisms.topups)");
};
my $books = sub { $q->('SELECT bool_and(ok) FROM envoisms.balance_check()') };
my $api_calls = sub { grep { $_->{kind} eq 'api' } EnvoismsPeers::log_lines($stripe) };

# ---- not configured: nothing offered, and the default method is refused by name
my ($s, $j) = $api->('GET', '/v1/billing/payment-methods');
is_deeply($j, { payment_methods => [] }, 'nothing configured: no payment method offered');
($s, $j) = $api->('POST', '/v1/billing/topups', '{"amount_mad": 100}');
is("$s $j->{error}{code} $j->{error}{field}", '400 VALIDATION_ERROR payment_method', 'stripe without its settings: 400 naming payment_method');
($s, $j) = $api->('POST', '/v1/billing/stripe/webhook', '{"type": "checkout.session.completed"}',
	headers => { 'Stripe-Signature' => 't=1,v1=00' });
is("$s $j->{error}{code}", '400 VALIDATION_ERROR', 'the webhook without a signing secret: 400');

$q->(qq{INSERT INTO envoisms.billing_settings (name, value) VALUES
	('stripe_secret_key', '$secret_key'), ('stripe_webhook_secret', '$whsec'), ('stripe_api_base', '$stripe->{url}'),
	('stripe_success_url', 'https://app.example.ma/billing/done?topup={TOPUP_ID}&session={CHECKOUT_SESSION_ID}'),
	('stripe_cancel_url', 'https://app.example.ma/billing?cancelled={TOPUP_ID}')});
($s, $j) = $api->('GET', '/v1/billing/payment-methods');
is(join(',', map { "$_->{id}:$_->{currency}" } @{ $j->{payment_methods} }), 'stripe:MAD',
	'stripe offered once its key, webhook secret and success URL are set (in MAD by default)');

# ---- a Checkout Session in MAD
my $before = $state->();
($s, $j) = $api->('POST', '/v1/billing/topups', '{"amount_mad": 250.5, "payment_method": "stripe"}');
is($s, 201, 'POST /v1/billing/topups {amount_mad: 250.5, payment_method: stripe} → 201');
my $t1 = $j;
like($t1->{id}, qr/^top_[0-9a-f]{28}$/, 'a top-up id');
is("$t1->{status} $t1->{amount_mad} $t1->{amount} $t1->{currency}", 'pending 250.5 250.5 MAD', 'pending: 250.5 MAD to pay, 250.5 MAD to credit');
like($t1->{reference}, qr/^cs_test_\w+$/, "the reference is Stripe's Checkout Session id");
is($t1->{checkout_url}, "$stripe->{url}/c/pay/$t1->{reference}", "checkout_url is the session's URL");
is($q->("SELECT trim_scale(envoisms.account_balance('$account'))"), '100', 'nothing credited before the payment');
my @calls = $api_calls->();
is(scalar @calls, 1, 'Stripe received one request');
my $c = $calls[0];
is("$c->{path} $c->{status}", '/v1/checkout/sessions 200', 'POST /v1/checkout/sessions, accepted');
is($c->{auth}, "Bearer $secret_key", 'authenticated with the secret key as a Bearer token');
is($c->{content_type}, 'application/x-www-form-urlencoded', 'form-encoded');
is($c->{idem}, "envoisms-topup-$t1->{id}", 'an Idempotency-Key naming the top-up');
is($c->{params}{mode}, 'payment', 'mode=payment');
is_deeply($c->{params}{line_items},
	[ { price_data => { currency => 'mad', unit_amount => '25050', product_data => { name => 'Top-up 250.5 MAD' } }, quantity => '1' } ],
	'one line item: 25050 centimes of MAD, quantity 1');
like($c->{form}, qr/(?:^|&)line_items\[0\]\[price_data\]\[unit_amount\]=25050(?:&|$)/, "fields in Stripe's bracket notation");
is($c->{params}{client_reference_id}, $t1->{id}, 'client_reference_id is the top-up id');
is_deeply($c->{params}{metadata}, { account_id => $account, topup_id => $t1->{id}, amount_mad => '250.5' },
	'metadata: the account id and the top-up id');
is($c->{params}{success_url}, "https://app.example.ma/billing/done?topup=$t1->{id}&session={CHECKOUT_SESSION_ID}",
	'success_url: {TOPUP_ID} replaced, {CHECKOUT_SESSION_ID} left for Stripe');
is($c->{params}{cancel_url}, "https://app.example.ma/billing?cancelled=$t1->{id}", 'cancel_url');
is($books->(), 't', 'balance_check true after the session');

# ---- the signed event credits once
my $ev = $event->(session => $t1->{reference});
is($result->($ev), '200 credited', 'checkout.session.completed (paid, signed, pretty JSON, a name outside ASCII) → 200 credited');
is($q->("SELECT trim_scale(envoisms.account_balance('$account'))"), '350.5', 'the balance grew by 250.5 MAD');
is($q->("SELECT count(*) || ' ' || min(reference) || ' ' || min(topup_id) || ' ' || trim_scale(sum(amount_mad))
           FROM envoisms.ledger WHERE account_id = '$account' AND topup_id IS NOT NULL"),
	"1 $t1->{reference} $t1->{id} 250.5", 'one ledger topup row of 250.5, its reference the session id');
is($books->(), 't', 'balance_check true after the credit');
my $credited = $state->();
is($result->(EnvoismsPeers::stripe_peer_call($stripe, '/_test/replay', { index => $ev->{index} })), '200 duplicate',
	'the same delivery again, byte for byte → 200 duplicate');
is($result->($event->(session => $t1->{reference})), '200 duplicate', 'a second completed event for the session → 200 duplicate');
is($state->(), $credited, '... nothing changed');
($s, $j) = $api->('GET', "/v1/billing/topups/$t1->{id}");
is("$s $j->{status}", '200 completed', 'GET /v1/billing/topups/:id → completed');
like($j->{completed_at}, qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/, '... with completed_at');

# concurrent deliveries of one event: Stripe may retry while the first is in flight
($s, my $t2) = $api->('POST', '/v1/billing/topups', '{"amount_mad": 100}');
is("$s $t2->{status}", '201 pending', 'payment_method defaults to stripe');
my $signed = $event->(session => $t2->{reference}, send => JSON::PP::false);
my @pids;
for my $i (1 .. 4)
{
	my $pid = fork();
	die "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		EnvoismsPeers::stripe_peer_call($stripe, '/_test/replay', { index => $signed->{index} });
		POSIX::_exit(0);
	}
	push @pids, $pid;
}
waitpid($_, 0) for @pids;
my @answers = map { EnvoismsTest::json($_->{answer})->{result} // "$_->{status}" }
  grep { $_->{kind} eq 'event' && $_->{event_id} eq $signed->{event_id} } EnvoismsPeers::log_lines($stripe);
is(join(',', sort @answers), 'credited,duplicate,duplicate,duplicate', 'one event delivered four times at once: credited once, three duplicates');
is($q->("SELECT count(*) FROM envoisms.ledger WHERE topup_id = '$t2->{id}'"), '1', '... one ledger row');
is($q->("SELECT trim_scale(envoisms.account_balance('$account'))"), '450.5', 'the balance grew by 100 MAD once');
is($books->(), 't', 'balance_check true');

# ---- signatures: forged, stale, from the future, missing, malformed → 400, nothing changed
($s, my $t3) = $api->('POST', '/v1/billing/topups', '{"amount_mad": 40}');
$before = $state->();
for my $case (
	[ 'signed with another secret', secret => 'whsec_notTheSigningSecretAtAll000' ],
	[ 'stale (t 400 s ago)', offset => -400 ],
	[ 't 400 s in the future', offset => 400 ],
	[ 'no Stripe-Signature header', header => '' ],
	[ 'a header without t', header => 'v1=' . ('a' x 64) ],
	[ 'a header with t but no v1', header => 't=' . int(time()) ],
	[ 'a v0 signature only', header => 't=' . int(time()) . ',v0=' . ('b' x 64) ])
{
	my ($what, %o) = @$case;
	my $r = $event->(session => $t3->{reference}, %o);
	my $b = EnvoismsTest::json($r->{body}) // {};
	is("$r->{status} " . ($b->{error}{code} // '') . ' ' . ($b->{error}{field} // ''),
		'400 VALIDATION_ERROR Stripe-Signature', "$what → 400 in the error envelope");
}
is($state->(), $before, '... nothing changed');
is($result->($event->(session => $t3->{reference}, offset => -250)), '200 credited', 'a delivery 250 s old is within the tolerance');
is($result->($event->(session => $t3->{reference}, extra_v1 => 1)), '200 duplicate',
	'several v1 (one wrong, as during a secret rotation) are accepted');
is($books->(), 't', 'balance_check true');

# ---- unknown sessions, other types, events out of order
$before = $state->();
is($result->($event->(session => 'cs_test_notAnEnvoismsSession0000')), '200 ignored', 'an unknown session → 200 ignored');
is($result->($event->(session => $t1->{reference}, type => 'payment_intent.succeeded')), '200 ignored', 'another event type → 200 ignored');
is($result->($event->(session => $t1->{reference}, type => 'checkout.session.expired')), '200 duplicate',
	'expired after completed (out of order) → nothing');
is($state->(), $before, '... nothing changed');

($s, my $t4) = $api->('POST', '/v1/billing/topups', '{"amount_mad": 60}');
is($result->($event->(session => $t4->{reference}, payment_status => 'unpaid')), '200 awaiting_payment',
	'completed but unpaid (a delayed method) → not credited yet');
is($result->($event->(session => $t4->{reference}, type => 'checkout.session.async_payment_succeeded')), '200 credited',
	'then async_payment_succeeded → credited');
($s, my $t5) = $api->('POST', '/v1/billing/topups', '{"amount_mad": 70}');
is($result->($event->(session => $t5->{reference}, type => 'checkout.session.expired')), '200 failed', 'expired → failed');
($s, $j) = $api->('GET', "/v1/billing/topups/$t5->{id}");
is("$j->{status} $j->{failure_reason}", 'failed the checkout session expired unpaid', 'GET shows failed and why');
($s, my $t6) = $api->('POST', '/v1/billing/topups', '{"amount_mad": 80}');
$before = $state->();
is($result->($event->(session => $t6->{reference}, amount_total => 100)), '200 amount_mismatch',
	'a paid amount that is not the one due → not credited');
is($state->(), $before, '... nothing changed');
is($books->(), 't', 'balance_check true');

# ---- EUR sessions
$q->("INSERT INTO envoisms.billing_settings (name, value) VALUES ('stripe_currency', 'eur')");
($s, my $t7) = $api->('POST', '/v1/billing/topups', '{"amount_eur": 10, "payment_method": "stripe"}');
is("$s $t7->{amount} $t7->{currency} $t7->{amount_mad}", '201 10 EUR 110.71', '10 EUR credit 110.71 MAD (0.028 EUR = 0.31 MAD)');
my $p7 = ($api_calls->())[-1]{params};
is("$p7->{line_items}[0]{price_data}{currency} $p7->{line_items}[0]{price_data}{unit_amount}", 'eur 1000', '1000 cents of EUR');
($s, my $t8) = $api->('POST', '/v1/billing/topups', '{"amount_mad": 31}');
is("$t8->{amount} $t8->{currency}", '2.8 EUR', '31 MAD cost 2.80 EUR');
is(($api_calls->())[-1]{params}{line_items}[0]{price_data}{unit_amount}, '280', '280 cents');
my $b7 = $q->("SELECT envoisms.account_balance('$account')");
is($result->($event->(session => $t7->{reference})), '200 credited', 'the EUR session paid → credited');
is($q->("SELECT trim_scale(envoisms.account_balance('$account') - $b7)"), '110.71', '... 110.71 MAD');
is($books->(), 't', 'balance_check true');

# ---- the client's Idempotency-Key: one session for two requests
my $n = scalar($api_calls->());
my ($s1, $j1) = $api->('POST', '/v1/billing/topups', '{"amount_eur": 20}', headers => { 'Idempotency-Key' => 'order-7' });
my ($s2, $j2, $h2) = $api->('POST', '/v1/billing/topups', '{"amount_eur": 20}', headers => { 'Idempotency-Key' => 'order-7' });
is("$s1 $s2 " . ($h2->{'idempotent-replayed'} // ''), '201 201 true', 'the same Idempotency-Key twice → the stored answer');
is($j2->{checkout_url}, $j1->{checkout_url}, '... with the same checkout_url');
is(scalar($api_calls->()), $n + 1, '... and one Checkout Session');

# ---- Stripe failing, refusing the key, or slow: a bounded 503, nothing stored
$before = $state->();
EnvoismsPeers::stripe_peer_call($stripe, '/_test/mode', { status => 500 });
($s, $j) = $api->('POST', '/v1/billing/topups', '{"amount_mad": 50}');
is("$s $j->{error}{code}", '503 SERVICE_UNAVAILABLE', 'Stripe answers 500 → 503');
EnvoismsPeers::stripe_peer_call($stripe, '/_test/mode', {});
my $wrong_key = 'sk_test_WrongKeyWrongKey9876';
$q->("UPDATE envoisms.billing_settings SET value = '$wrong_key' WHERE name = 'stripe_secret_key'");
($s, $j) = $api->('POST', '/v1/billing/topups', '{"amount_mad": 50}');
is("$s $j->{error}{code}", '503 SERVICE_UNAVAILABLE', 'Stripe refuses the key (401) → 503');
is(($api_calls->())[-1]{status}, 401, '... the peer did answer 401');
$q->("UPDATE envoisms.billing_settings SET value = '$secret_key' WHERE name = 'stripe_secret_key'");
$q->("INSERT INTO envoisms.billing_settings (name, value) VALUES ('stripe_timeout_ms', '1000')");
EnvoismsPeers::stripe_peer_call($stripe, '/_test/mode', { delay_ms => 4000 });
my $t0 = time();
($s, $j) = $api->('POST', '/v1/billing/topups', '{"amount_mad": 50}');
my $took = time() - $t0;
is("$s $j->{error}{code}", '503 SERVICE_UNAVAILABLE', 'Stripe slower than stripe_timeout_ms → 503');
cmp_ok($took, '<', 3, "... answered after ${\ sprintf('%.1f', $took)} s, not after Stripe's 4 s");
EnvoismsPeers::stripe_peer_call($stripe, '/_test/mode', {});
$q->("UPDATE envoisms.billing_settings SET value = 'http://127.0.0.1:1' WHERE name = 'stripe_api_base'");
($s, $j) = $api->('POST', '/v1/billing/topups', '{"amount_mad": 50}');
is("$s $j->{error}{code}", '503 SERVICE_UNAVAILABLE', 'Stripe unreachable → 503');
$q->("UPDATE envoisms.billing_settings SET value = '$stripe->{url}' WHERE name = 'stripe_api_base'");
is($state->(), $before, '... nothing stored by any of them');

# ---- refused requests
$before = $state->();
($s, $j) = $api->('POST', '/v1/billing/topups', '{"amount_mad": 50}', key => $sandbox_key);
is("$s $j->{error}{code}", '403 FORBIDDEN', 'a sandbox (env_test_) key cannot top up');
($s, $j) = $api->('POST', '/v1/billing/topups', '{"amount_mad": 50}', key => $send_key);
is("$s $j->{error}{code}", '403 FORBIDDEN', 'a key without the billing permission → 403');
($s, $j) = $api->('GET', '/v1/billing/balance', undef, key => $send_key);
is($s, 200, '... it still reads the balance (permission balance)');
($s, $j) = $api->('POST', '/v1/billing/topups', '{"amount_mad": 50, "payment_method": "crypto"}');
is("$s $j->{error}{code} $j->{error}{field}", '400 VALIDATION_ERROR payment_method', 'crypto (not configured) → 400 naming payment_method');
is($state->(), $before, '... nothing changed');
is(scalar($api_calls->()), $n + 4, 'and none of them reached Stripe');

($s, $j) = $api->('GET', '/v1/billing/balance');
is("$s $j->{currency}", '200 MAD', 'GET /v1/billing/balance');
is($j->{balance_mad}, $q->("SELECT trim_scale(envoisms.account_balance('$account'))"), '... balance_mad');
is($j->{balance_eur}, $q->("SELECT trim_scale(round(envoisms.account_balance('$account') * 0.028 / 0.31, 4))"), '... balance_eur at 0.028/0.31');
is($books->(), 't', 'balance_check true at the end');

# ---- no secret in any log
my $logs = slurp_file($node->logfile) . slurp_file($gw->{log});
like($logs, qr/Stripe did not create the Checkout Session of top-up top_\w+: HTTP 401 \(invalid_request_error, api_key_invalid\)/,
	"the server log says why Stripe refused (its status, error type and code)");
for my $secret ($secret_key, $whsec, $wrong_key)
{
	unlike($logs, qr/\Q$secret\E/, 'no log holds ' . substr($secret, 0, 9) . '…');
}

EnvoismsPeers::stop($stripe);
EnvoismsTest::stop_gateway($gw);
$node->stop;
done_testing();
