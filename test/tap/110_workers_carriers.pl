# Workers, carriers: the http carrier (5xx then success, permanent failure
# refunded once, delivery reports through the gateway — repeated, and
# arriving before the submit answer), routes (longest prefix, failover),
# the WhatsApp Cloud carrier (copy-code template, status callbacks with
# X-Hub-Signature-256, hub.challenge) and cascade with its prices.
use strict;
use warnings;

use Digest::SHA qw(hmac_sha256_hex);
use EnvoismsPeers;
use EnvoismsTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = EnvoismsTest::node('carriers', conf => [ EnvoismsPeers::worker_conf() ]);
my $q = sub { $node->safe_psql('envoisms', shift) };
my $gw = EnvoismsTest::start_gateway($node);
my (undef, $carrier_key) = EnvoismsTest::demo_key($node, live => 1, permissions => ['status']);

my $http = EnvoismsPeers::start('carrier_peer.js', '--fail-first', 2, '--fail-status', 503);
my $early = EnvoismsPeers::start('carrier_peer.js', '--dlr-first', 1,
	'--dlr-url', "$gw->{url}/v1/carriers/early/dlr", '--dlr-token', 'early-dlr-secret', '--dlr-key', $carrier_key);
my $wa = EnvoismsPeers::start('carrier_peer.js', '--kind', 'whatsapp', '--token', 'wa-token', '--reject-suffix', '98');

$q->(qq{
	INSERT INTO envoisms.carriers (carrier_id, kind, name, config) VALUES
	  ('h1', 'http', 'carrier peer', '{"url": "$http->{url}/send", "token": "carrier-secret", "dlr_token": "dlr-secret"}'),
	  ('early', 'http', 'early reports', '{"url": "$early->{url}/send", "dlr_token": "early-dlr-secret"}'),
	  ('down', 'http', 'disabled', '{"url": "http://127.0.0.1:9/"}'),
	  ('wa', 'whatsapp_cloud', 'cloud peer', '{"base_url": "$wa->{url}", "version": "v19.0", "phone_number_id": "1234",
	          "token": "wa-token", "app_secret": "app-secret", "verify_token": "verify-me"}');
	UPDATE envoisms.carriers SET enabled = false WHERE carrier_id = 'down';
	INSERT INTO envoisms.routes (channel, prefix, carrier_id, priority) VALUES
	  ('sms', '212', 'h1', 0),
	  ('sms', '2126123457', 'early', 0),
	  ('sms', '2126123458', 'down', 0),
	  ('sms', '2126123458', 'h1', 1),
	  ('whatsapp', '', 'wa', 0);
});

my $account = $q->("SELECT envoisms.account_create('Carrier account', 100)");
# WhatsApp free text needs the account's own number and the recipient's
# 24-hour window (111_whatsapp_inbound.pl opens one through Meta's callback);
# without a phone_number_id the number sends from the carrier's.
my $wa_session = sub {
	my ($acc, $number, @to) = @_;
	$q->("INSERT INTO envoisms.inbound_numbers (account_id, number, channel) VALUES ('$acc', '$number', 'whatsapp')");
	$q->("SELECT envoisms.whatsapp_window_open('$acc', '$_', '$number', now())") for @to;
};
$wa_session->($account, '+212700000001', '+212612345602', '+212612345698');
my $send = sub {
	my ($to, %o) = @_;
	my $extra = join('', map { ", $_ => $o{$_}" } sort keys %o);
	return $q->("SELECT envoisms.message_send('$account', '$to', 'Bonjour'$extra)->>'id'");
};
my $status = sub { $q->("SELECT status FROM envoisms.messages WHERE message_id = '$_[0]'") };
my $wait_status = sub {
	my ($id, $want, $t) = @_;
	return EnvoismsPeers::wait_until(sub { $status->($id) eq $want }, $t // 20);
};

# ---- 5xx twice, then accepted
my $m1 = $send->('+212612345601');
ok($wait_status->($m1, 'sent'), 'http carrier: sent after two 503s');
my @tries = grep { ($_->{id} // '') eq $m1 } EnvoismsPeers::log_lines($http);
is(join(',', map { $_->{status} } @tries), '503,503,200', 'the carrier saw 503, 503, 200 for the same message id');
is($tries[0]{auth}, 'Bearer carrier-secret', 'bearer token sent');
is($tries[0]{idem}, $m1, 'Idempotency-Key is the message id');
is($tries[0]{body}{to}, '+212612345601', 'the JSON body names the recipient');
my ($ref, $attempts) = split /\|/, $q->("SELECT carrier_ref || '|' || attempts FROM envoisms.messages WHERE message_id = '$m1'");
like($ref, qr/^c-\d+$/, 'carrier reference read from the reply');
is($attempts, 3, 'three attempts');

# ---- delivery reports through the gateway
my $dlr = sub {
	my ($carrier, $token, $body) = @_;
	return EnvoismsTest::http('POST', "$gw->{url}/v1/carriers/$carrier/dlr",
		{ Authorization => "Bearer $carrier_key", 'X-Carrier-Token' => $token, 'Content-Type' => 'application/json' },
		$body);
};
my ($st) = $dlr->('h1', 'wrong', qq({"id": "$ref", "status": "delivered"}));
is($st, 401, 'a wrong carrier token is refused');
is($status->($m1), 'sent', 'and changes nothing');
my ($st2, undef, $body2) = $dlr->('h1', 'dlr-secret', qq({"id": "$ref", "status": "delivered"}));
is($st2, 200, 'delivery report accepted');
is(EnvoismsTest::json($body2)->{results}[0]{result}, 'applied', 'applied');
is($status->($m1), 'delivered', 'message delivered');
my $events = $q->("SELECT count(*) FROM envoisms.message_events WHERE message_id = '$m1'");
my (undef, undef, $body3) = $dlr->('h1', 'dlr-secret', qq({"id": "$ref", "status": "delivered"}));
is(EnvoismsTest::json($body3)->{results}[0]{result}, 'duplicate', 'a repeated report is a duplicate');
(undef, undef, $body3) = $dlr->('h1', 'dlr-secret', qq({"id": "$ref", "status": "failed"}));
is(EnvoismsTest::json($body3)->{results}[0]{result}, 'ignored', 'a contradicting late report is ignored');
is($q->("SELECT count(*) FROM envoisms.message_events WHERE message_id = '$m1'"), $events, 'and neither changed anything');

# ---- a report that arrives before the submit answer (longest prefix routes to "early")
my $m2 = $send->('+212612345701');
ok($wait_status->($m2, 'delivered'), 'report before the submit answer: applied once sent');
is($q->("SELECT carrier_id FROM envoisms.messages WHERE message_id = '$m2'"), 'early', 'longest prefix wins');
is($q->("SELECT string_agg(status, ',' ORDER BY event_id) FROM envoisms.message_events WHERE message_id = '$m2'"),
	'sent,delivered', 'events sent, delivered');
is($q->("SELECT count(*) FROM envoisms.pending_dlrs"), '0', 'nothing left pending');

# ---- failover: the disabled carrier of the longest prefix is skipped
my $m3 = $send->('+212612345801');
ok($wait_status->($m3, 'sent'), 'failover message sent');
is($q->("SELECT carrier_id FROM envoisms.messages WHERE message_id = '$m3'"), 'h1', 'next priority used while a carrier is down');

# ---- permanent rejection: failed, refunded exactly once
my $before = $q->("SELECT envoisms.account_balance('$account')");
my $m4 = $send->('+212612345699');
ok($wait_status->($m4, 'failed'), 'a 400 from the carrier fails the message');
is($q->("SELECT error_code FROM envoisms.messages WHERE message_id = '$m4'"), 'CARRIER_INVALID_NUMBER', 'the carrier\'s error code');
is($q->("SELECT envoisms.account_balance('$account')"), $before, 'refunded');
$q->("SELECT envoisms.dispatch_failed('$account', '$m4', 'AGAIN', 'a second failure report')");
$q->("SELECT envoisms.dlr_apply('h1', coalesce((SELECT carrier_ref FROM envoisms.messages WHERE message_id = '$m4'), 'x'), 'failed')");
is($q->("SELECT count(*) FROM envoisms.ledger WHERE message_id = '$m4' AND kind = 'refund'"), '1', 'refunded exactly once');
is($q->("SELECT envoisms.account_balance('$account')"), $before, 'balance unchanged by repeated failures');
is($q->("SELECT bool_and(ok) FROM envoisms.balance_check()"), 't', 'balance_check holds');

# ---- WhatsApp Cloud: copy-code authentication template, status callback
my $w1 = $send->('+212612345602', channel => "'whatsapp'",
	buttons => q{'[{"type": "copy", "text": "Copier", "value": "482913"}]'});
ok($wait_status->($w1, 'sent'), 'WhatsApp message sent');
my ($req) = grep { ($_->{body}{to} // '') eq '212612345602' } EnvoismsPeers::log_lines($wa);
is($req->{path}, '/v19.0/1234/messages', 'POST /{version}/{phone-number-id}/messages');
is($req->{auth}, 'Bearer wa-token', 'bearer token');
is($req->{body}{type}, 'template', 'a copy button becomes an authentication template');
is($req->{body}{template}{components}[1]{sub_type}, 'url', 'with the copy-code button component');
is($req->{body}{template}{components}[1]{parameters}[0]{text}, '482913', 'carrying the code');
my $wamid = $q->("SELECT carrier_ref FROM envoisms.messages WHERE message_id = '$w1'");
like($wamid, qr/^wamid\./, 'wamid recorded');

my $callback = qq({"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{"statuses":[{"id":"$wamid","status":"delivered","timestamp":"1700000000","recipient_id":"212612345602"}]}}]}]});
my ($cs) = EnvoismsTest::http('POST', "$gw->{url}/v1/carriers/wa/whatsapp",
	{ Authorization => "Bearer $carrier_key", 'X-Hub-Signature-256' => 'sha256=' . ('0' x 64),
	  'Content-Type' => 'application/json' }, $callback);
is($cs, 401, 'status callback with a wrong X-Hub-Signature-256 refused');
($cs) = EnvoismsTest::http('POST', "$gw->{url}/v1/carriers/wa/whatsapp",
	{ Authorization => "Bearer $carrier_key", 'X-Hub-Signature-256' => 'sha256=' . hmac_sha256_hex($callback, 'app-secret'),
	  'Content-Type' => 'application/json' }, $callback);
is($cs, 200, 'signed status callback accepted');
is($status->($w1), 'delivered', 'WhatsApp message delivered');
my ($hs, undef, $hb) = EnvoismsTest::http('GET',
	"$gw->{url}/v1/carriers/wa/whatsapp?hub.mode=subscribe&hub.verify_token=verify-me&hub.challenge=1158201444",
	{ Authorization => "Bearer $carrier_key" });
is("$hs $hb", '200 1158201444', 'hub.challenge handshake echoes the challenge');
($hs) = EnvoismsTest::http('GET',
	"$gw->{url}/v1/carriers/wa/whatsapp?hub.mode=subscribe&hub.verify_token=nope&hub.challenge=1",
	{ Authorization => "Bearer $carrier_key" });
is($hs, 403, 'a wrong verify_token is refused');

# ---- cascade: WhatsApp fails, SMS goes; prices through the ledger
my $cb = $q->("SELECT envoisms.account_balance('$account')");
my $c1 = $send->('+212612345698', cascade => 'true');
ok($wait_status->($c1, 'sent', 30), 'cascade message sent as SMS after WhatsApp failed');
is($q->("SELECT channel || ' ' || cost_mad || ' ' || charged_mad FROM envoisms.messages WHERE message_id = '$c1'"),
	'sms 0.3100 0.1300', 'now an SMS priced per segment (charged the WhatsApp price at send)');
is($q->("SELECT string_agg(kind || ' ' || amount_mad, ',') FROM envoisms.ledger WHERE message_id = '$c1'"),
	'debit -0.1800', 'the difference debited through the ledger');
is($q->("SELECT envoisms.account_balance('$account')"), sprintf('%.4f', $cb - 0.31), 'balance down by the SMS price');
is($q->("SELECT string_agg(status || coalesce(' ' || (detail->>'cascade'), ''), ',' ORDER BY event_id)
           FROM envoisms.message_events WHERE message_id = '$c1'"), 'queued sms,sent', 'delivery log shows the fallback');

# cascade that cannot pay the SMS: failed, the WhatsApp charge refunded
my $poor = $q->("SELECT envoisms.account_create('Poor account', 0.13)");
$wa_session->($poor, '+212700000002', '+212612345698');
my $c2 = $q->("SELECT envoisms.message_send('$poor', '+212612345698', 'Bonjour', cascade => true)->>'id'");
ok($wait_status->($c2, 'failed', 30), 'cascade without money for the SMS fails');
is($q->("SELECT envoisms.account_balance('$poor')"), '0.1300', 'the WhatsApp charge is refunded');
is($q->("SELECT bool_and(ok) FROM envoisms.balance_check()"), 't', 'balance_check holds after cascades');

# ---- secrets never leave: the routes do not return carrier config
unlike(join('', map { $_->{path} // '' } EnvoismsPeers::log_lines($http)), qr/dlr-secret/, 'the DLR token is never sent to the carrier');

EnvoismsPeers::stop($_) for ($http, $early, $wa);
EnvoismsTest::stop_gateway($gw);
$node->stop;
done_testing();
