# 111_whatsapp_inbound.pl — WhatsApp sessions against a stand-in of Meta's
# Cloud API (test/peers/carrier_peer.js --kind whatsapp, which refuses what
# Meta refuses and calls back as Meta does): a customer's message, delivered
# twice as a signed "messages" callback through the gateway, is stored once,
# announced once as message.received to a real webhook receiver, and opens
# the 24-hour window, after which free text goes out to Meta from the
# account's own number (before it, nothing does); buttons and a template
# campaign as Meta receives them; an OTP from the shared sender; the
# hub.challenge handshake as plain text; the callback routes need no API key.
use strict;
use utf8;
use warnings;

use EnvoismsPeers;
use EnvoismsTest;
use JSON::PP;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = EnvoismsTest::node('whatsapp', conf => [ EnvoismsPeers::worker_conf() ]);
my $q = sub { $node->safe_psql('envoisms', shift) };
my $gw = EnvoismsTest::start_gateway($node);
my $meta = EnvoismsPeers::start('carrier_peer.js', '--kind', 'whatsapp', '--token', 'wa-token',
	'--callback-url', "$gw->{url}/v1/carriers/wa/whatsapp", '--app-secret', 'app-secret');
my $secret = 'whsec_' . ('5a' x 24);
my $hooks = EnvoismsPeers::start('webhook_receiver.js', '--secret', $secret);

$q->(qq{
	INSERT INTO envoisms.carriers (carrier_id, kind, name, config) VALUES
	  ('wa', 'whatsapp_cloud', 'Meta stand-in', '{"base_url": "$meta->{url}", "version": "v19.0", "phone_number_id": "1000",
	          "token": "wa-token", "app_secret": "app-secret", "verify_token": "verify-me"}');
	INSERT INTO envoisms.routes (channel, prefix, carrier_id) VALUES ('whatsapp', '', 'wa');
});
my ($account, $key) = EnvoismsTest::demo_key($node, live => 1, balance => 100, rate_limit => undef);
$q->("INSERT INTO envoisms.inbound_numbers (account_id, number, channel, phone_number_id)
      VALUES ('$account', '+212700000001', 'whatsapp', '5551')");
$q->("SELECT envoisms.webhook_create('$account', '$hooks->{url}/in', ARRAY['message.received'], '$secret')");

my $api = sub {
	my ($method, $path, $body) = @_;
	my ($s, $h, $b) = EnvoismsTest::http($method, "$gw->{url}$path",
		{ Authorization => "Bearer $key", 'Content-Type' => 'application/json' }, $body);
	return ($s, EnvoismsTest::json($b), $h);
};
my $status = sub { $q->("SELECT status FROM envoisms.messages WHERE message_id = '$_[0]'") };
my $sent = sub {
	my ($id) = @_;
	return EnvoismsPeers::wait_until(sub { $status->($id) eq 'sent' }, 20);
};
# What Meta received for one message (its wamid is the message's carrier_ref).
my $received = sub {
	my ($to) = @_;
	my @r = grep { ($_->{body}{to} // '') eq $to && $_->{status} == 200 } EnvoismsPeers::log_lines($meta);
	return $r[-1];
};

# ---- before the customer writes: refused, nothing reaches Meta
my ($s, $j) = $api->('POST', '/v1/messages', '{"to": "+212612345678", "message": "Votre colis arrive", "channel": "whatsapp"}');
is($s, 409, 'free text to a number that never wrote: 409');
is($j->{error}{code}, 'OUT_OF_24H_WINDOW', '… OUT_OF_24H_WINDOW');
is(scalar(EnvoismsPeers::log_lines($meta)), 0, '… and nothing reached Meta');
is($q->("SELECT envoisms.account_balance('$account')"), '100.0000', '… nor was charged');

# ---- the customer writes; Meta delivers the callback twice (a retry)
my ($is, undef, $ib) = EnvoismsTest::http('POST', "$meta->{url}/_meta/inbound", { 'Content-Type' => 'application/json' },
	encode_json({ from => '+212612345678', text => 'Salam, où est mon colis ?', wamid => 'wamid.HBgLMjEy',
		phone_number_id => '5551', display_phone_number => '212700000001', name => 'Karim', times => 2 }));
my $deliveries = EnvoismsTest::json($ib)->{deliveries};
is(join(',', map { $_->{status} } @$deliveries), '200,200', 'the gateway took both signed deliveries (no API key)');
is(EnvoismsTest::json($deliveries->[1]{body})->{received}, 1, 'each answered {"received": 1}');
is($q->("SELECT count(*) FROM envoisms.messages WHERE carrier_ref = 'wamid.HBgLMjEy'"), '1', 'stored once');
my ($ls, $list) = $api->('GET', '/v1/messages?direction=inbound');
is($list->{total}, 1, 'GET /v1/messages?direction=inbound lists it');
is(join('|', map { $list->{data}[0]{$_} } qw(channel direction status body)),
	'whatsapp|inbound|received|Salam, où est mon colis ?', 'a received WhatsApp message with its text');
my $in_id = $list->{data}[0]{id};
my ($gs, $got) = $api->('GET', "/v1/messages/$in_id");
is("$got->{from} $got->{to}", '+212612345678 +212700000001', 'from the customer, to the account\'s number');
ok(EnvoismsPeers::wait_until(sub { grep { ($_->{type} // '') eq 'message.received' } EnvoismsPeers::log_lines($hooks) }, 20),
	'message.received delivered to the webhook');
sleep 1;
my @events = grep { ($_->{type} // '') eq 'message.received' } EnvoismsPeers::log_lines($hooks);
is(scalar(@events), 1, '… once');
ok($events[0]{sig_ok} && $events[0]{std_ok}, '… signed');

# ---- inside the window: free text goes to Meta from the account's own number
($s, $j) = $api->('POST', '/v1/messages', '{"to": "+212612345678", "message": "Votre colis arrive demain", "channel": "whatsapp"}');
is("$s $j->{channel}", '201 whatsapp', 'free text inside the window: 201 on WhatsApp');
ok($sent->($j->{id}), 'sent by Meta');
my $r = $received->('212612345678');
is($r->{path}, '/v19.0/5551/messages', 'from the account\'s phone_number_id');
is("$r->{body}{type}: $r->{body}{text}{body}", 'text: Votre colis arrive demain', 'a text message');
like($q->("SELECT carrier_ref FROM envoisms.messages WHERE message_id = '$j->{id}'"), qr/^wamid\./, 'Meta\'s wamid recorded');

# ---- buttons as Meta receives them (and accepts them)
($s, $j) = $api->('POST', '/v1/messages', encode_json({ to => '+212612345678', message => 'Suivez votre colis',
	channel => 'whatsapp', buttons => [ { type => 'url', text => 'Suivre le colis', value => 'https://exemple.ma/c/42' } ] }));
ok($s == 201 && $sent->($j->{id}), 'a url button: sent');
my $ia = $received->('212612345678')->{body}{interactive};
is_deeply([ $ia->{type}, $ia->{action}{name}, $ia->{action}{parameters}, $ia->{body}{text} ],
	[ 'cta_url', 'cta_url', { display_text => 'Suivre le colis', url => 'https://exemple.ma/c/42' }, 'Suivez votre colis' ],
	'… as Meta\'s cta_url');
($s, $j) = $api->('POST', '/v1/messages', encode_json({ to => '+212612345678', message => 'Une question ?',
	channel => 'whatsapp', buttons => [ { type => 'call', text => 'Appeler le service', value => '+212522000000' } ] }));
ok($s == 201 && $sent->($j->{id}), 'a call button: sent');
$ia = $received->('212612345678')->{body}{interactive};
is_deeply([ $ia->{type}, $ia->{action}{parameters} ], [ 'cta_url', { display_text => 'Appeler le service', url => 'tel:+212522000000' } ],
	'… as a call-to-action carrying the number (tel:)');
my $before = scalar(EnvoismsPeers::log_lines($meta));
($s, $j) = $api->('POST', '/v1/messages', encode_json({ to => '+212612345678', message => 'x', channel => 'whatsapp',
	buttons => [ { type => 'copy', text => 'Copier', value => '1234' }, { type => 'url', text => 'Ouvrir', value => 'https://exemple.ma' },
		{ type => 'call', text => 'Appeler', value => '+212522000000' } ] }));
is("$s $j->{error}{field}", '400 buttons', 'copy + url + call: 400 naming buttons, not two buttons dropped');
($s, $j) = $api->('POST', '/v1/messages', encode_json({ to => '+212612345678', message => 'x', channel => 'whatsapp',
	buttons => [ { type => 'url', text => 'Suivre le colis en ligne', value => 'https://exemple.ma' } ] }));
is("$s $j->{error}{field}", '400 buttons', 'a call-to-action text over 20 characters: 400');
is(scalar(EnvoismsPeers::log_lines($meta)), $before, '… nothing of either reached Meta');

# ---- an OTP goes from the platform's shared sender, window or not
($s, $j) = $api->('POST', '/v1/verify/send', '{"to": "+212633333333", "channel": "whatsapp", "brand": "MonApp"}');
ok($s == 201 && $sent->($j->{message_id}), 'an OTP to a number that never wrote: sent');
$r = $received->('212633333333');
is("$r->{path} $r->{body}{type}", '/v19.0/1000/messages template', '… from the shared sender, as the authentication template');

# ---- a template campaign reaches a member outside any window, as the template
$q->("SELECT envoisms.template_create('$account', 'commande_prete', 'Bonjour {{name}}, votre commande {{custom1}} est prete', 'whatsapp', 'fr')");
my $list_id = $q->("SELECT envoisms.contact_list_create('$account', 'Clients')->>'id'");
$q->(qq{SELECT envoisms.contact_import('$account', '[{"phone": "+212622222222", "name": "Salma", "custom_fields": {"custom1": "A-17"}}]', '$list_id')});
my $tpl = $q->("SELECT template_id FROM envoisms.templates WHERE account_id = '$account'");
($s, $j) = $api->('POST', '/v1/campaigns', encode_json({ name => 'Commandes', template_id => $tpl, channel => 'whatsapp', list_id => $list_id }));
is($s, 201, 'a WhatsApp template campaign');
($s, $j) = $api->('POST', "/v1/campaigns/$j->{id}/send", '{}');
is("$s $j->{queued}", '200 1', '… sent to the member who never wrote');
ok(EnvoismsPeers::wait_until(sub { $received->('212622222222') }, 20), '… reaches Meta');
$r = $received->('212622222222');
is($r->{path}, '/v19.0/5551/messages', '… from the account\'s number');
is_deeply($r->{body}{template}, { name => 'commande_prete', language => { code => 'fr' }, components => [ { type => 'body',
	parameters => [ { type => 'text', parameter_name => 'name', text => 'Salma' },
		{ type => 'text', parameter_name => 'custom1', text => 'A-17' } ] } ] },
	'… as the template, its parameters named');

# ---- the window closes 24 hours after the customer's message
$q->("UPDATE envoisms.whatsapp_windows SET last_inbound_at = now() - interval '25 hours' WHERE account_id = '$account'");
($s, $j) = $api->('POST', '/v1/messages', '{"to": "+212612345678", "message": "Toujours disponible ?", "channel": "whatsapp", "cascade": true}');
is("$s $j->{channel} $j->{cost}{mad}", '201 sms 0.31', 'after 24 hours, cascade: an SMS at once, priced as one');

# ---- the handshake, without an API key: the challenge as plain text
my ($hs, $hh, $hb) = EnvoismsTest::http('GET',
	"$gw->{url}/v1/carriers/wa/whatsapp?hub.mode=subscribe&hub.verify_token=verify-me&hub.challenge=Zx-91%20ok");
is("$hs|$hb", '200|Zx-91 ok', 'a non-numeric hub.challenge is echoed as plain text');
like($hh->{'content-type'} // '', qr{^text/plain}, '… as text/plain');
($hs, undef, $hb) = EnvoismsTest::http('GET',
	"$gw->{url}/v1/carriers/wa/whatsapp?hub.mode=subscribe&hub.verify_token=verify-me&hub.challenge=1158201444");
is("$hs|$hb", '200|1158201444', 'a numeric one too');
($hs) = EnvoismsTest::http('POST', "$gw->{url}/v1/carriers/wa/whatsapp", { 'Content-Type' => 'application/json' },
	'{"entry": []}');
is($hs, 401, 'an unsigned callback is refused');

is($q->("SELECT bool_and(ok) FROM envoisms.balance_check()"), 't', 'balance_check holds');

EnvoismsPeers::stop($_) for ($meta, $hooks);
EnvoismsTest::stop_gateway($gw);
$node->stop;
done_testing();
