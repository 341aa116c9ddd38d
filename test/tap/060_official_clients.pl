# 060_official_clients.pl — the official EnvoiSMS.ma clients work unchanged.
#
# The clients are not packaged here, so each case sends what the client's
# source sends (path, query, headers, body) and checks every field that
# source reads. Cases name their client and version:
#   python  n4ouri/envoisms-python  envoisms/client.py    (EnvoiSMS-PythonSDK/1.1.0)
#   node    n4ouri/envoisms-node    src/index.ts          (EnvoiSMS-NodeSDK/1.1.0)
#   php     n4ouri/envoisms-php     src/Client.php        (curl, no User-Agent of its own)
#   mcp     envoisms/envoisms-mcp-server src/index.ts     (1.1.0: a fresh Idempotency-Key per send)
#   woo     n4ouri/envoisms-woocommerce envoisms-woocommerce.php (1.0.0)
# Webhooks reach a receiver that verifies X-EnvoiSMS-Signature with the
# SDKs' algorithm (both forms) and with the contract's Node snippet.
use strict;
use warnings;

use JSON::PP;
use EnvoismsPeers;
use EnvoismsTest;
use Test::More;

my $node = EnvoismsTest::node('clients', conf => [ EnvoismsPeers::worker_conf() ]);
my $gw = EnvoismsTest::start_gateway($node);
my ($account, $live) = EnvoismsTest::demo_key($node, balance => 100, live => 1);
my $sandbox = $node->safe_psql('envoisms', "SELECT envoisms.api_key_create('$account', 'sandbox', false)->>'api_key'");
my $q = sub { $node->safe_psql('envoisms', shift) };

my %agent = (
	python => 'EnvoiSMS-PythonSDK/1.1.0',
	node   => 'EnvoiSMS-NodeSDK/1.1.0',
	php    => undef,
	mcp    => undef,
	woo    => 'WordPress/6.6; https://shop.example.ma');

# One request as $client sends it; returns (status, headers, decoded body).
sub call
{
	my ($client, $method, $path, $body, %opts) = @_;
	my %h = (Authorization => 'Bearer ' . ($opts{key} // $live));
	$h{'Content-Type'} = 'application/json' if $client ne 'mcp' || defined $body;
	$h{'User-Agent'} = $agent{$client} if defined $agent{$client};
	%h = (%h, %{ $opts{headers} // {} });
	my ($status, $headers, $text) = EnvoismsTest::http($method, "$gw->{url}$path", \%h,
		defined $body ? JSON::PP->new->canonical->encode($body) : undef);
	my $json = EnvoismsTest::json($text);
	ok(ref $json eq 'HASH', "$client $method $path: a JSON object ($status)") or diag($text);
	return ($status, $headers, $json // {});
}

# The fields a client reads are all there (and not null unless allowed).
sub reads
{
	my ($what, $json, $fields, %nullable) = @_;
	my @missing = grep { !exists $json->{$_} || (!defined $json->{$_} && !$nullable{$_}) } @$fields;
	ok(!@missing, "$what: reads " . join(', ', @$fields)) or diag('missing: ' . join(', ', @missing));
}

# ---- webhooks first, so that the messages below are announced to both
my $secret = 'whsec_' . 'b2ZmaWNpYWwtY2xpZW50cy1zZWNyZXQtMTIzNDU2Nzg5';
my $receiver = EnvoismsPeers::start('webhook_receiver.js', '--secret', $secret);
my ($st, $h, $j) = call('python', 'POST', '/v1/webhooks',
	{ url => "$receiver->{url}/plain", events => ['message.sent', 'message.delivered'], secret => $secret });
is($st, 201, 'a webhook signed the contract\'s way (sha256=<hex>)');
($st, $h, $j) = call('python', 'POST', '/v1/webhooks',
	{ url => "$receiver->{url}/timestamped", events => ['message.delivered'], secret => $secret,
	  signature_format => 'timestamped' });
is("$st $j->{signature_format}", '201 timestamped', 'a webhook signed the SDKs\' timestamped way (t=,v1=)');

# ---- node: send, then read it back
($st, $h, $j) = call('node', 'POST', '/v1/messages',
	{ to => '+212612345678', message => 'Bonjour de Node', channel => 'sms', cascade => JSON::PP::false });
is($st, 201, 'node send: 201');
reads('node send', $j, [qw(message_id status to channel parts cost_mad cost_eur)]);
is($j->{message_id}, $j->{id}, 'node send: message_id is the id');
is($j->{parts}, 1, 'node send: parts');
is($j->{cost_mad}, 0.31, 'node send: cost_mad');
my $mid = $j->{message_id};

($st, $h, $j) = call('node', 'GET', "/v1/messages/$mid");
is($st, 200, 'node getMessage: 200');
reads('node getMessage', $j, [qw(id to status channel created_at delivered_at failure_reason)],
	delivered_at => 1, failure_reason => 1);
ok(!defined $j->{failure_reason}, 'node getMessage: failure_reason null for a message that did not fail');

($st, $h, $j) = call('node', 'GET', '/v1/messages?limit=50&offset=0');
reads('node listMessages', $j, [qw(messages total limit offset)]);
is(scalar @{ $j->{messages} }, 1, 'node listMessages: the rows under messages');
is_deeply($j->{messages}, $j->{data}, 'node listMessages: the same rows as data');

($st, $h, $j) = call('node', 'POST', '/v1/messages/bulk',
	{ messages => [ { to => '+212611111111', message => 'Un' }, { to => '+212622222222', message => 'Deux' } ], channel => 'sms' });
is($st, 201, 'node sendBulk: 201');
reads('node sendBulk', $j, [qw(batch_id total queued failed)]);
is("$j->{total} $j->{queued} $j->{failed}", '2 2 0', 'node sendBulk: total, queued, failed');

# a message that fails (the sandbox's magic failing number) has a failure_reason
($st, $h, $j) = call('node', 'POST', '/v1/messages', { to => '+212600000001', message => 'échec', channel => 'sms' },
	key => $sandbox);
my $failing = $j->{message_id};
ok(EnvoismsPeers::wait_until(sub { $q->("SELECT status FROM envoisms.messages WHERE message_id = '$failing'") eq 'failed' }, 30),
	'a sandbox message to a failing number fails');
($st, $h, $j) = call('node', 'GET', "/v1/messages/$failing", undef, key => $sandbox);
ok(defined $j->{failure_reason} && length $j->{failure_reason}, "node getMessage: failure_reason of a failed message ($j->{failure_reason})");

# ---- node: OTP
($st, $h, $j) = call('node', 'POST', '/v1/verify/send', { to => '+212612345679', channel => 'sms', code_length => 6, expiry => 300 });
is($st, 201, 'node sendOtp: 201');
reads('node sendOtp', $j, [qw(session_id message_id to channel status expires_at)]);
my $sid = $j->{session_id};
($st, $h, $j) = call('node', 'GET', "/v1/verify/$sid");
reads('node getOtpSession', $j, [qw(id to status channel attempts created_at expires_at)]);
is("$j->{status} $j->{attempts}", 'pending 0', 'node getOtpSession: pending, 0 attempts');
($st, $h, $j) = call('node', 'POST', '/v1/verify/check', { session_id => $sid, code => '000000' });
reads('node checkOtp', $j, [qw(session_id verified status)]);
is($j->{status}, 'failed', 'node checkOtp: a wrong code → status failed');
my $code = $q->("SELECT substring(body FROM '[0-9]{6}') FROM envoisms.messages WHERE metadata->>'verify_session_id' = '$sid'");
($st, $h, $j) = call('node', 'POST', '/v1/verify/check', { session_id => $sid, code => $code });
is("$j->{verified} $j->{status}", '1 verified', 'node checkOtp: the right code → verified');
($st, $h, $j) = call('node', 'GET', "/v1/verify/$sid");
is("$j->{status} $j->{attempts}", 'verified 1', 'node getOtpSession: verified after one wrong attempt');

# ---- python: the same calls with its own bodies and paths
($st, $h, $j) = call('python', 'POST', '/v1/messages',
	{ to => '+212612345678', message => 'Bonjour de Python', channel => 'sms', cascade => JSON::PP::false,
	  metadata => { order => 42 } });
is($st, 201, 'python send (with metadata): 201');
($st, $h, $j) = call('python', 'GET', '/v1/messages?limit=50&offset=0');
is($st, 200, 'python list_messages: 200');
($st, $h, $j) = call('python', 'POST', '/v1/verify/send', { to => '+212612345680', channel => 'sms', code_length => 6, expiry => 300, app_id => 'my-app' });
is($st, 201, 'python send_otp with app_id (not in the reference: ignored)');
my $sid2 = $j->{session_id};
($st, $h, $j) = call('python', 'POST', "/v1/verify/$sid2/cancel", {});
is("$st $j->{status}", '200 voided', 'a session is voided');
($st, $h, $j) = call('python', 'GET', '/v1/billing/balance');
reads('python get_balance', $j, [qw(balance_mad currency plan)]);
($st, $h, $j) = call('python', 'GET', '/v1/analytics?days=30');
is($st, 200, 'python analytics(days=30): 200');
reads('python analytics', $j->{summary} // {}, [qw(total delivered delivery_rate cost_mad)]);
($st, $h, $j) = call('python', 'POST', '/v1/api-keys', { name => 'ci', scope => 'test' });
is("$st $j->{key_prefix}", '201 env_test', 'python create_api_key(name=..., scope="test")');
($st, $h, $j) = call('python', 'POST', '/v1/api-keys', { name => 'prod', scope => 'live' }, key => $sandbox);
is("$st $j->{error}{code}", '403 FORBIDDEN', 'python create_api_key(scope="live") with a test key: 403');
ok(defined $j->{error}{message}, 'python: EnvoiSMSError reads error.message');
($st, $h, $j) = call('python', 'POST', '/v1/optouts', { phone => '+212699999999' });
is($st, 201, 'python create_optout: 201');

# ---- billing: what the SDKs call beyond the reference (the operator set a
# bank transfer and one pack; Stripe is covered by 070_billing_stripe.pl)
$q->(q{INSERT INTO envoisms.billing_settings (name, value) VALUES
        ('bank_transfer_details', '{"beneficiary": "Acme SARL", "rib": "011 780 0000123456789012 34"}')});
$q->(q{INSERT INTO envoisms.billing_packs (pack_id, name, sms_count, price_mad) VALUES ('pack_1000', 'Pack 1000', 1000, 300)});
($st, $h, $j) = call('node', 'GET', '/v1/billing/balance');
reads('node getBalance', $j, [qw(balance_mad balance_eur currency plan)]);
($st, $h, $j) = call('node', 'GET', '/v1/billing/packs');
is($st, 200, 'node listPacks: 200');
reads('node listPacks: a pack', $j->{packs}[0] // {}, [qw(id name sms_count price_mad price_eur)]);
($st, $h, $j) = call('python', 'GET', '/v1/billing/payment-methods');
is($st, 200, 'python list_payment_methods: 200');
like(JSON::PP->new->canonical->encode($j), qr/bank_transfer/, 'python list_payment_methods: the configured bank transfer');
($st, $h, $j) = call('python', 'POST', '/v1/billing/topups', { payment_method => 'bank_transfer', amount_mad => 100 });
is("$st $j->{status}", '201 pending', 'python create_topup(amount_mad=100, payment_method="bank_transfer"): a pending top-up');
ok(defined $j->{bank_transfer}{reference}, 'with the reference to write on the transfer');
($st, $h, $j) = call('node', 'POST', '/v1/billing/topups', { payment_method => 'crypto', amount_eur => 10 });
is("$st $j->{error}{code} $j->{error}{field}", '400 VALIDATION_ERROR payment_method',
	'node createTopup({payment_method: "crypto"}): a named 400, not 404 or 5xx');
($st, $h, $j) = call('php', 'POST', '/v1/billing/topups', { pack_id => 'pack_1000', payment_method => 'bank_transfer' });
is("$st $j->{pack_id}", '201 pack_1000', 'php createTopup(pack_id): 201');

# ---- php: its paths (listMessages without offset), no User-Agent of its own
($st, $h, $j) = call('php', 'GET', '/v1/messages?limit=50');
is($st, 200, 'php listMessages(50): 200');
($st, $h, $j) = call('php', 'POST', '/v1/messages', { to => '+212612345678', message => 'Bonjour de PHP', from => 'MaBoutique' });
is($st, 201, 'php send: 201');
($st, $h, $j) = call('php', 'GET', '/v1/analytics?days=7');
is($st, 200, 'php analytics(7): 200');

# ---- mcp: send_sms with a fresh Idempotency-Key, and a retry with the same key
my $idem = sprintf('%08x-%04x-4%03x-a%03x-%012x', time(), $$ & 0xffff, 1, 2, 3);
my @mcp = ('mcp', 'POST', '/v1/messages', { to => '+212612345678', message => 'Bonjour du MCP', channel => 'sms' },
	headers => { 'Idempotency-Key' => $idem });
my $before = $q->("SELECT count(*) FROM envoisms.messages WHERE account_id = '$account'");
my ($st1, $h1, $j1) = call(@mcp);
my ($st2, $h2, $j2) = call(@mcp);
is("$st1 $st2", '201 201', 'mcp send_sms, then the same call retried');
is($j2->{id}, $j1->{id}, 'mcp: the retry answers the same message');
is($h2->{'idempotent-replayed'}, 'true', 'mcp: the retry is a replay');
is($q->("SELECT count(*) FROM envoisms.messages WHERE account_id = '$account'") - $before, 1, 'mcp: one message sent, not two');
my $balance = $q->("SELECT envoisms.account_balance('$account')");
($st, $h, $j) = call('mcp', 'POST', '/v1/messages', { to => '+212612345678', message => 'Salut', channel => 'whatsapp' },
	headers => { 'Idempotency-Key' => "$idem-wa" });
is("$st $j->{error}{code}", '403 WHATSAPP_NOT_CONNECTED',
	'mcp send_sms on whatsapp from an account with no connected number: the refusal its tool description names');
is($q->("SELECT envoisms.account_balance('$account')"), $balance, 'mcp: nothing charged for the refusal');
($st, $h, $j) = call('mcp', 'GET', '/v1/billing/balance');
is($st, 200, 'mcp get_balance (GET without Content-Type)');

# ---- woocommerce: its phone formatting and sender
(my $phone = '06 12-34-56-78') =~ s/[^0-9]//g;
$phone = '212' . substr($phone, 1) if $phone =~ /^0/;
($st, $h, $j) = call('woo', 'POST', '/v1/messages',
	{ to => "+$phone", message => 'Bonjour Karim, votre commande #1042 est expédiée et en cours de livraison.',
	  from => 'MonBusiness', channel => 'sms' });
is("$st $j->{to}", '201 +212612345678', 'woocommerce notify_order_completed: 201');

# ---- sandbox messages are sent and delivered by the sandbox carrier (live
# ones wait for a route to a real carrier): their webhooks reach the
# receiver, verified every way a client verifies them
for my $n (1 .. 3)
{
	($st, $h, $j) = call('node', 'POST', '/v1/messages', { to => "+21261234560$n", message => "Webhook $n" }, key => $sandbox);
	is($st, 201, "node send with a sandbox key ($n)");
}
ok(EnvoismsPeers::wait_until(sub {
		(grep { $_->{path} eq '/timestamped' } EnvoismsPeers::log_lines($receiver)) >= 3 }, 60),
	'the timestamped webhook received deliveries');
my @plain = grep { $_->{path} eq '/plain' } EnvoismsPeers::log_lines($receiver);
my @stamped = grep { $_->{path} eq '/timestamped' } EnvoismsPeers::log_lines($receiver);
ok(@plain >= 3, scalar(@plain) . ' deliveries to the sha256 webhook');
ok(!(grep { !$_->{sdk_ok} } @plain), 'sha256 form: the SDKs\' verifyWebhookSignature accepts X-EnvoiSMS-Signature');
ok(!(grep { !$_->{ref_ok} } @plain), 'sha256 form: the contract\'s Node snippet accepts X-EnvoiSMS-Signature');
ok(!(grep { !$_->{sig_ok} } @plain), 'sha256 form: X-EnvoiSMS.ma-Signature still verifies');
ok(!(grep { !$_->{same_signature} } @plain, @stamped), 'both headers carry the same value');
ok(!(grep { !$_->{sdk_ok} } @stamped), 'timestamped form: the SDKs\' verifyWebhookSignature accepts it');
ok(!(grep { $_->{sdk_signature} !~ /^t=\d+,v1=[0-9a-f]{64}$/ } @stamped), 'timestamped form: t=<unix>,v1=<hex>');
ok(!(grep { !$_->{std_ok} } @plain, @stamped), 'Standard Webhooks headers verify on both');
ok(!(grep { !defined $_->{event} || $_->{event} ne $_->{type} || $_->{timestamp} ne $_->{created_at} } @plain, @stamped),
	'the body carries event (= type) and timestamp (= created_at), as the SDKs\' WebhookEvent reads');

# ---- the books hold after all of it
is($q->("SELECT bool_and(ok) FROM envoisms.balance_check()"), 't', 'balance_check() is true');

EnvoismsTest::stop_gateway($gw);
$node->stop;
done_testing();
