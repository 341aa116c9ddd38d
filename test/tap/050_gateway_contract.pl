# 050_gateway_contract.pl — the contract over real HTTP: every curl example
# of the API reference sent as written (only the host, the key and the
# placeholder ids changed) through envoisms-gateway to a real cluster; each
# error envelope; CORS; the gateway's own endpoints; and docs/openapi.yaml
# against the routes envoisms.api serves, both ways.
use strict;
use warnings;

use JSON::PP;
use PostgreSQL::Test::Utils;
use Test::More;
use YAML::XS ();

use EnvoismsTest;

my $node = EnvoismsTest::node('contract');
my $gw = EnvoismsTest::start_gateway($node);
my $url = $gw->{url};
my ($account, $key) = EnvoismsTest::demo_key($node, live => 1, balance => 1000, rate_limit => undef);
# The account's WhatsApp number, and the reference's recipient wrote to it:
# free text on WhatsApp reaches only such a number (its 24-hour window).
$node->safe_psql('envoisms', "INSERT INTO envoisms.inbound_numbers (account_id, number, channel)
	VALUES ('$account', '+212700000001', 'whatsapp');
	SELECT envoisms.whatsapp_window_open('$account', '+212612345678', '+212700000001', now())");

my %served;
for my $row (split /\n/, $node->safe_psql('envoisms',
	"SELECT method || ' ' || template FROM envoisms.api_routes()"))
{
	$served{$row} = 1;
}
note 'routes served by envoisms.api: ' . join(', ', sort keys %served);

# ---- the contract's curl examples
my @examples;
{
	local $/;
	my $data = <DATA>;
	for my $block (split /^=== /m, $data)
	{
		next unless $block =~ /\S/;
		my ($head, $rest) = split /\n/, $block, 2;
		my ($cmd, $response) = split /^--- response\n/m, $rest;
		my ($method, $template) = split / /, $head;
		push @examples, { method => $method, template => $template,
			cmd => $cmd, response => decode_json($response) };
	}
}
is(scalar @examples, 29, 'the API reference has 29 curl examples');

# Objects are created before they are addressed: lists first, deletions last.
my %rank = ('POST /v1/contacts/lists' => 0, 'DELETE /v1/contacts/:id' => 8,
	'DELETE /v1/webhooks/:id' => 8, 'DELETE /v1/api-keys/:id' => 9);
my $i = 0;
$_->{order} = $i++ for @examples;
@examples = sort {
	($rank{"$a->{method} $a->{template}"} // 5) <=> ($rank{"$b->{method} $b->{template}"} // 5)
	  || $a->{order} <=> $b->{order}
} @examples;

# Examples whose data cannot succeed as written (a made-up OTP code; a
# campaign or webhook that may not be sendable here): an error envelope
# is an acceptable answer for them, a 5xx never is.
my %lenient = map { $_ => 1 } ('POST /v1/verify/check', 'POST /v1/campaigns/:id/send',
	'POST /v1/webhooks/:id/test');

my %ids;    # resource prefix => id created by an earlier example
my %id_of = ('/v1/messages' => 'msg', '/v1/verify' => 'vrf', '/v1/contacts' => 'ctc',
	'/v1/campaigns' => 'cmp', '/v1/webhooks' => 'whk', '/v1/api-keys' => 'key');

sub shape_ok
{
	my ($want, $got, $what) = @_;
	my @missing = grep { !exists $got->{$_} } sort keys %$want;
	is_deeply(\@missing, [], "$what: has every field of the contract's example")
	  or diag explain $got;
	if (ref $want->{data} eq 'ARRAY' && @{ $want->{data} } && ref $got->{data} eq 'ARRAY')
	{
		if (@{ $got->{data} })
		{
			my @m = grep { !exists $got->{data}[0]{$_} } sort keys %{ $want->{data}[0] };
			is_deeply(\@m, [], "$what: data items have every field of the contract's example");
		}
		else
		{
			note "$what: data is empty here, item fields not compared";
		}
	}
}

for my $ex (@examples)
{
	my $route = "$ex->{method} $ex->{template}";
	my $cmd = $ex->{cmd};
	$cmd =~ s{https://api\.envoisms\.ma}{$url}g;
	$cmd =~ s/env_live_xxx/$key/g;
	$cmd =~ s/^curl /curl -sS -i /;
	# The page's e-mail obfuscation ("[email protected]") is not an address.
	$cmd =~ s/\[email[^\]]{1,8}protected\]/karim\@example.ma/g;
	# The campaign example's apostrophe ends the shell quote; escape it for sh.
	$cmd =~ s/d'été/d'\\''été/g;
	$cmd =~ s/"lst_f84b\.\.\."/"$ids{lst}"/g if $ids{lst};
	$cmd =~ s/"vrf_7e2a\.\.\."/"$ids{vrf}"/g if $ids{vrf};
	(my $prefix = $ex->{template}) =~ s{/:id.*}{};
	my $id = $id_of{$prefix} ? $ids{ $id_of{$prefix} } : undef;
	$cmd =~ s{(\Q$url\E[^"]*)/:id}{$1/$id}g if $id;

	my $out = `$cmd 2>&1`;
	my ($head, $body) = split /\r\n\r\n/, $out, 2;
	# a 100 Continue comes first when curl asks for it
	($head, $body) = split /\r\n\r\n/, $body, 2 while $head =~ m{^HTTP/1\.1 100};
	my ($status) = ($head // '') =~ m{^HTTP/1\.[01] (\d{3})};
	my $json = EnvoismsTest::json($body // '');
	ok(defined $status, "$route: the gateway answered") or diag $out;
	next unless defined $status;
	like($head, qr{^Content-Type: application/json; charset=utf-8\r?$}mi, "$route: JSON content type");

	if (!$served{$route})
	{
		is($status, 404, "$route: not served by envoisms.api yet, answers 404");
		is($json->{error}{code}, 'NOT_FOUND', "$route: not served yet, NOT_FOUND envelope");
		next;
	}
	if ($status =~ /^2/)
	{
		shape_ok($ex->{response}, $json, $route);
		if ($route =~ m{^POST /v1/(messages|verify/send|contacts|contacts/lists|campaigns|webhooks|api-keys)$})
		{
			my $new = $json->{id} // $json->{session_id};
			$ids{ (split /_/, $new)[0] } = $new if $new;
		}
	}
	elsif ($lenient{$route} && $status =~ /^4/)
	{
		ok($json->{error}{code} && $json->{error}{message},
			"$route: $status $json->{error}{code} (example data not valid here), an envelope");
	}
	else
	{
		fail("$route: answered $status") ;
		diag $out;
	}
}

# ---- the error envelope, over HTTP, for every code a request can reach
sub call
{
	my ($method, $path, $k, $body, %h) = @_;
	my %headers = %h;
	$headers{Authorization} = "Bearer $k" if defined $k;
	$headers{'Content-Type'} = 'application/json' if defined $body;
	my ($status, $headers, $content) = EnvoismsTest::http($method, "$url$path", \%headers, $body);
	return ($status, $headers, EnvoismsTest::json($content), $content);
}

sub envelope_is
{
	my ($got_status, $json, $status, $code, $what) = @_;
	is($got_status, $status, "$what: HTTP $status");
	is($json->{error}{code}, $code, "$what: code $code");
	ok(defined $json->{error}{message} && length $json->{error}{message}, "$what: a message");
	is($json->{error}{docs}, 'https://envoisms.ma/docs#errors', "$what: docs link");
}

my $send = '{"to": "+212612345678", "message": "Bonjour"}';
my ($s, $h, $j) = call('POST', '/v1/messages', undef, $send);
envelope_is($s, $j, 401, 'UNAUTHORIZED', 'no Authorization');
($s, $h, $j) = call('POST', '/v1/messages', 'env_live_' . ('0' x 48), $send);
envelope_is($s, $j, 401, 'UNAUTHORIZED', 'unknown key');
($s, $h, $j) = call('POST', '/v1/messages', $key, '{"to": "0612", "message": "Bonjour"}');
envelope_is($s, $j, 400, 'INVALID_PHONE', 'a number that is not E.164');
($s, $h, $j) = call('POST', '/v1/messages', $key, '{"to": "+212612345678", "message": ');
envelope_is($s, $j, 400, 'INVALID_JSON', 'a body that is not JSON');
($s, $h, $j) = call('POST', '/v1/messages', $key, '{"to": "+212612345678"}');
envelope_is($s, $j, 400, 'VALIDATION_ERROR', 'no message');
($s, $h, $j) = call('GET', '/v1/messages/msg_0000000000000000000000000000', $key);
envelope_is($s, $j, 404, 'NOT_FOUND', 'an unknown message');
($s, $h, $j) = call('GET', '/v1/nothing-here', $key);
envelope_is($s, $j, 404, 'NOT_FOUND', 'an unknown route');
($s, $h, $j) = call('DELETE', '/v1/messages', $key);
envelope_is($s, $j, 405, 'METHOD_NOT_ALLOWED', 'a method the route does not have');
like($h->{allow} // '', qr/GET/, 'METHOD_NOT_ALLOWED names the allowed methods in Allow');

my (undef, $poor) = EnvoismsTest::demo_key($node, live => 1, balance => 0);
($s, $h, $j) = call('POST', '/v1/messages', $poor, $send);
envelope_is($s, $j, 402, 'INSUFFICIENT_BALANCE', 'a live key with no balance');

my (undef, $smsonly) = EnvoismsTest::demo_key($node, live => 1, channels => ['sms']);
($s, $h, $j) = call('POST', '/v1/messages', $smsonly,
	'{"to": "+212612345678", "message": "Bonjour", "channel": "whatsapp"}');
envelope_is($s, $j, 403, 'CHANNEL_NOT_ALLOWED', 'WhatsApp on an SMS-only account');

my (undef, $verifyonly) = EnvoismsTest::demo_key($node, permissions => ['verify']);
($s, $h, $j) = call('POST', '/v1/messages', $verifyonly, $send);
envelope_is($s, $j, 403, 'FORBIDDEN', 'a key without the send permission');

my (undef, $limited) = EnvoismsTest::demo_key($node, rate_limit => 3);
my @statuses;
my $last_headers;
for (1 .. 4)
{
	($s, $h, $j) = call('GET', '/v1/billing/balance', $limited);
	push @statuses, $s;
	$last_headers = $h if $s == 200;
}
is_deeply(\@statuses, [200, 200, 200, 429], 'a key limited to 3 requests a minute: the 4th is refused');
is($last_headers->{'x-ratelimit-limit'}, 3, 'X-RateLimit-Limit over HTTP');
is($last_headers->{'x-ratelimit-remaining'}, 0, 'X-RateLimit-Remaining over HTTP');
envelope_is($s, $j, 429, 'RATE_LIMITED', 'over the rate limit');
like($h->{'retry-after'} // '', qr/^\d+$/, 'RATE_LIMITED carries Retry-After');

SKIP:
{
	skip 'Idempotency-Key is not handled by envoisms.api yet', 7
	  unless $node->safe_psql('envoisms',
		"SELECT count(*) FROM pg_proc WHERE proname = 'idempotency_lookup'") > 0;
	my ($s1, undef, $j1) = call('POST', '/v1/messages', $key, $send, 'Idempotency-Key' => 'tap-1');
	my ($s2, undef, $j2) = call('POST', '/v1/messages', $key, $send, 'Idempotency-Key' => 'tap-1');
	is($s1, 201, 'Idempotency-Key: first request sends');
	is($s2, $s1, 'Idempotency-Key: the replay has the same status');
	is($j2->{id}, $j1->{id}, 'Idempotency-Key: the replay is the same message');
	($s, $h, $j) = call('POST', '/v1/messages', $key,
		'{"to": "+212612345678", "message": "Autre"}', 'Idempotency-Key' => 'tap-1');
	envelope_is($s, $j, 422, 'IDEMPOTENCY_MISMATCH', 'the same Idempotency-Key with another body');
}

# ---- CORS: preflight without auth and without the database
my ($ps, $ph) = EnvoismsTest::http('OPTIONS', "$url/v1/messages",
	{ Origin => 'https://app.example.ma', 'Access-Control-Request-Method' => 'POST',
	  'Access-Control-Request-Headers' => 'authorization, content-type' });
is($ps, 204, 'preflight: 204 without a key');
is($ph->{'access-control-allow-origin'}, '*', 'preflight: any origin by default');
for my $name ('Content-Type', 'Authorization', 'X-EnvoiSMS.ma-Signature', 'X-EnvoiSMS.ma-Version')
{
	like($ph->{'access-control-allow-headers'} // '', qr/\Q$name\E/i, "preflight allows $name");
}
like($ph->{'access-control-allow-methods'} // '', qr/POST.*PATCH.*DELETE/, 'preflight allows the API methods');
($s, $h) = call('GET', '/v1/billing/balance', $key, undef, Origin => 'https://app.example.ma');
is($h->{'access-control-allow-origin'}, '*', 'a response carries Access-Control-Allow-Origin');

{
	my $strict = EnvoismsTest::start_gateway($node, args => ['--cors-origin', 'https://app.example.ma']);
	my (undef, $h1) = EnvoismsTest::http('OPTIONS', "$strict->{url}/v1/messages", { Origin => 'https://app.example.ma' });
	is($h1->{'access-control-allow-origin'}, 'https://app.example.ma', '--cors-origin: a listed origin is echoed');
	like($h1->{vary} // '', qr/Origin/, '--cors-origin: Vary: Origin');
	my (undef, $h2) = EnvoismsTest::http('OPTIONS', "$strict->{url}/v1/messages", { Origin => 'https://evil.example' });
	ok(!exists $h2->{'access-control-allow-origin'}, '--cors-origin: another origin gets no Access-Control-Allow-Origin');
	EnvoismsTest::stop_gateway($strict);
}

# ---- the gateway's own endpoints
($s, $h, $j) = call('GET', '/healthz');
is($s, 200, '/healthz: 200');
is_deeply($j, { status => 'ok' }, '/healthz: {"status": "ok"}');

($s, $h, $j) = call('GET', '/v1/openapi.json');
is($s, 200, '/v1/openapi.json: 200');
is($j->{openapi}, '3.1.0', '/v1/openapi.json: an OpenAPI 3.1 document');

my ($ms, undef, $metrics) = EnvoismsTest::http('GET', "$url/metrics");
is($ms, 200, '/metrics: 200');
like($metrics, qr/^envoisms_gateway_requests_total\{method="POST",route="\/v1\/messages",status="201"\} \d+$/m,
	'/metrics: requests by route template and status');
like($metrics, qr/^envoisms_gateway_requests_total\{method="GET",route="\/v1\/messages\/:id",status="404"\} \d+$/m,
	'/metrics: ids become :id in route templates');
like($metrics, qr/^envoisms_gateway_request_duration_seconds_bucket\{method="POST",route="\/v1\/messages",le="\+Inf"\} \d+$/m,
	'/metrics: latency histogram');
like($metrics, qr/^envoisms_gateway_pool_in_use \d+$/m, '/metrics: pool in use');
like($metrics, qr/^envoisms_gateway_db_errors_total\{kind="connect"\} \d+$/m, '/metrics: database errors');

# ---- the access log: route templates and key ids, never the key
EnvoismsTest::stop_gateway($gw);
my $log = slurp_file($gw->{log});
unlike($log, qr/\Q$key\E/, 'the access log never contains an API key');
like($log, qr/"method":"GET","route":"\/v1\/messages\/:id","status":404,"duration_ms":[0-9.]+/,
	'the access log has method, route template, status and duration');

# ---- docs/openapi.yaml against envoisms.api_routes(), both ways
my $doc = YAML::XS::LoadFile("$EnvoismsTest::ROOT/docs/openapi.yaml");
is($doc->{openapi}, '3.1.0', 'docs/openapi.yaml is OpenAPI 3.1');
my %documented;
while (my ($path, $item) = each %{ $doc->{paths} })
{
	for my $method (grep { /^(get|post|put|patch|delete)$/ } keys %$item)
	{
		next if $item->{$method}{'x-served-by'};    # the gateway's own
		(my $template = $path) =~ s/\{(\w+)\}/:$1/g;
		$documented{ uc($method) . " $template" } = $item->{$method}{'x-permission'} // '';
	}
}
my @contract = map { "$_->{method} $_->{template}" } @examples;
my @undocumented_contract = grep { !exists $documented{$_} } sort @contract;
is_deeply(\@undocumented_contract, [], 'every route of the API reference is in docs/openapi.yaml');
my @undocumented = grep { !exists $documented{$_} } sort keys %served;
is_deeply(\@undocumented, [], 'every route envoisms.api serves is documented in docs/openapi.yaml')
  or diag 'served but undocumented: ' . join(', ', @undocumented);
my @unserved = grep { !$served{$_} } sort keys %documented;
is_deeply(\@unserved, [], 'every /v1 route documented in docs/openapi.yaml is served by envoisms.api')
  or diag 'documented but not served: ' . join(', ', @unserved);
my %permission = map { my ($m, $t, $p) = split /\|/; ("$m $t" => $p) }
  split /\n/, $node->safe_psql('envoisms', 'SELECT method, template, permission FROM envoisms.api_routes()');
my @wrong_permission = grep { $documented{$_} ne $permission{$_} } grep { exists $documented{$_} } sort keys %permission;
is_deeply(\@wrong_permission, [], 'x-permission in docs/openapi.yaml matches the permission of each served route')
  or diag join(', ', map { "$_: doc $documented{$_}, served $permission{$_}" } @wrong_permission);

done_testing();

__DATA__
=== POST /v1/messages
curl -X POST "https://api.envoisms.ma/v1/messages" \
  -H "Authorization: Bearer env_live_xxx" \
  -H "Content-Type: application/json" \
  -d '{
    "to": "+212612345678",
    "message": "Votre code de validation est 849204",
    "from": "MaBoutique",
    "channel": "whatsapp"
  }'
--- response
{
  "id": "msg_8f2d...",
  "to": "+212612345678",
  "channel": "whatsapp",
  "cascade": false,
  "status": "queued",
  "cost": {
    "eur": 0.0118,
    "mad": 0.13
  },
  "segments": 1,
  "created_at": "2026-05-15T10:30:00Z"
}
=== POST /v1/messages/bulk
curl -X POST "https://api.envoisms.ma/v1/messages/bulk" \
  -H "Authorization: Bearer env_live_xxx" \
  -H "Content-Type: application/json" \
  -d '{
    "messages": [
      {
        "to": "+212611111111",
        "message": "Hello Client 1"
      },
      {
        "to": "+212622222222",
        "message": "Hello Client 2"
      }
    ],
    "from": "ENVOISMS",
    "channel": "sms"
  }'
--- response
{
  "batch_id": "batch_9a3c...",
  "total": 2,
  "channel": "sms",
  "estimated_cost": {
    "eur": 0.056,
    "mad": 0.62
  },
  "messages": [
    {
      "id": "msg_1a2b...",
      "to": "+212611111111",
      "status": "queued"
    },
    {
      "id": "msg_3c4d...",
      "to": "+212622222222",
      "status": "queued"
    }
  ]
}
=== GET /v1/messages
curl -X GET "https://api.envoisms.ma/v1/messages?limit=50&offset=0" \
  -H "Authorization: Bearer env_live_xxx"
--- response
{
  "data": [
    {
      "id": "msg_8f2d...",
      "to": "+212612345678",
      "channel": "whatsapp",
      "body": "Votre code de validation est 849204",
      "sender_id": "MaBanque",
      "status": "delivered",
      "cost_mad": 0.13,
      "created_at": "2026-05-15T10:30:00Z"
    }
  ],
  "limit": 50,
  "offset": 0,
  "total": 1
}
=== GET /v1/messages/:id
curl -X GET "https://api.envoisms.ma/v1/messages/:id" \
  -H "Authorization: Bearer env_live_xxx"
--- response
{
  "id": "msg_8f2d...",
  "account_id": "acc_3f1a...",
  "api_key_id": "key_e84c...",
  "campaign_id": null,
  "to": "+212612345678",
  "channel": "whatsapp",
  "body": "Votre code de validation est 849204",
  "sender_id": "MaBanque",
  "unicode": 0,
  "segments": 1,
  "status": "delivered",
  "cost_eur": 0.0118,
  "cost_mad": 0.13,
  "metadata": "{\"purpose\": \"otp\"}",
  "created_at": "2026-05-15T10:30:00Z"
}
=== POST /v1/verify/send
curl -X POST "https://api.envoisms.ma/v1/verify/send" \
  -H "Authorization: Bearer env_live_xxx" \
  -H "Content-Type: application/json" \
  -d '{
    "to": "+212612345678",
    "brand": "MonApp",
    "channel": "whatsapp",
    "code_length": 6,
    "expiry": 600
  }'
--- response
{
  "session_id": "vrf_7e2a...",
  "message_id": "msg_1b8e...",
  "to": "+212612345678",
  "channel": "whatsapp",
  "expires_at": "2026-05-15T10:40:00Z",
  "status": "sent"
}
=== POST /v1/verify/check
curl -X POST "https://api.envoisms.ma/v1/verify/check" \
  -H "Authorization: Bearer env_live_xxx" \
  -H "Content-Type: application/json" \
  -d '{
    "session_id": "vrf_7e2a...",
    "code": "849204"
  }'
--- response
{
  "session_id": "vrf_7e2a...",
  "verified": true,
  "verified_at": "2026-05-15T10:35:12Z"
}
=== GET /v1/verify/:id
curl -X GET "https://api.envoisms.ma/v1/verify/:id" \
  -H "Authorization: Bearer env_live_xxx"
--- response
{
  "id": "vrf_7e2a...",
  "to": "+212612345678",
  "channel": "whatsapp",
  "expires_at": "2026-05-15T10:40:00Z",
  "verified_at": "2026-05-15T10:35:12Z",
  "created_at": "2026-05-15T10:30:00Z"
}
=== POST /v1/verify/lookup
curl -X POST "https://api.envoisms.ma/v1/verify/lookup" \
  -H "Authorization: Bearer env_live_xxx" \
  -H "Content-Type: application/json" \
  -d '{
    "number": "+212612345678",
    "country_code": "MA"
  }'
--- response
{
  "valid": true,
  "number": "212612345678",
  "local_format": "0612345678",
  "international_format": "+212612345678",
  "country_prefix": "212",
  "country_code": "MA",
  "country_name": "Morocco",
  "location": "Casablanca",
  "carrier": "Maroc Telecom (IAM)",
  "line_type": "mobile"
}
=== GET /v1/contacts
curl -X GET "https://api.envoisms.ma/v1/contacts?limit=50&offset=0" \
  -H "Authorization: Bearer env_live_xxx"
--- response
{
  "data": [
    {
      "id": "ctc_a2b3...",
      "phone": "+212612345678",
      "name": "Karim Bennani",
      "email": "[email protected]",
      "custom1": "VIP",
      "custom2": null,
      "custom3": null,
      "created_at": "2026-05-10T14:20:00Z"
    }
  ],
  "limit": 100,
  "offset": 0,
  "total": 1
}
=== POST /v1/contacts
curl -X POST "https://api.envoisms.ma/v1/contacts" \
  -H "Authorization: Bearer env_live_xxx" \
  -H "Content-Type: application/json" \
  -d '{
    "phone": "+212612345678",
    "name": "Karim Bennani",
    "email": "[email protected]",
    "list_id": "lst_f84b..."
  }'
--- response
{
  "id": "ctc_a2b3...",
  "phone": "+212612345678",
  "name": "Karim Bennani",
  "email": "[email protected]",
  "custom1": "VIP",
  "custom2": null,
  "custom3": null,
  "created_at": "2026-05-10T14:20:00Z"
}
=== POST /v1/contacts/import
curl -X POST "https://api.envoisms.ma/v1/contacts/import" \
  -H "Authorization: Bearer env_live_xxx" \
  -H "Content-Type: application/json" \
  -d '{
    "contacts": [
      {
        "phone": "+212611111111",
        "name": "Karim"
      },
      {
        "phone": "+212622222222",
        "name": "Youssef"
      }
    ],
    "list_id": "lst_f84b..."
  }'
--- response
{
  "imported": 150,
  "skipped": 3
}
=== DELETE /v1/contacts/:id
curl -X DELETE "https://api.envoisms.ma/v1/contacts/:id" \
  -H "Authorization: Bearer env_live_xxx"
--- response
{
  "deleted": true,
  "id": "ctc_a2b3..."
}
=== GET /v1/contacts/lists
curl -X GET "https://api.envoisms.ma/v1/contacts/lists" \
  -H "Authorization: Bearer env_live_xxx"
--- response
{
  "data": [
    {
      "id": "lst_f84b...",
      "name": "Newsletter Clients",
      "description": "Clients inscrits à notre lettre d'information",
      "count": 1420,
      "created_at": "2026-04-15T09:00:00Z"
    }
  ]
}
=== POST /v1/contacts/lists
curl -X POST "https://api.envoisms.ma/v1/contacts/lists" \
  -H "Authorization: Bearer env_live_xxx" \
  -H "Content-Type: application/json" \
  -d '{
    "name": "Newsletter Clients",
    "description": "Clients inscrits"
  }'
--- response
{
  "id": "lst_f84b...",
  "name": "Newsletter Clients",
  "description": "Clients inscrits",
  "count": 0
}
=== GET /v1/campaigns
curl -X GET "https://api.envoisms.ma/v1/campaigns" \
  -H "Authorization: Bearer env_live_xxx"
--- response
{
  "data": [
    {
      "id": "cmp_8d2a...",
      "name": "Soldes d'été 2026",
      "channel": "sms",
      "list_id": "lst_f84b...",
      "template_id": null,
      "body": "Bonjour {{name}}, profitez de -50% sur toute la collection avec le code ETE50 !",
      "sender_id": "SOLDES",
      "status": "draft",
      "scheduled_at": null,
      "created_at": "2026-06-01T12:00:00Z"
    }
  ]
}
=== POST /v1/campaigns
curl -X POST "https://api.envoisms.ma/v1/campaigns" \
  -H "Authorization: Bearer env_live_xxx" \
  -H "Content-Type: application/json" \
  -d '{
    "name": "Soldes d'été 2026",
    "body": "Bonjour {{name}}, profitez de -50% avec le code ETE50 !",
    "channel": "sms",
    "list_id": "lst_f84b...",
    "sender_id": "SOLDES"
  }'
--- response
{
  "id": "cmp_8d2a...",
  "status": "draft"
}
=== GET /v1/campaigns/:id
curl -X GET "https://api.envoisms.ma/v1/campaigns/:id" \
  -H "Authorization: Bearer env_live_xxx"
--- response
{
  "id": "cmp_8d2a...",
  "name": "Soldes d'été 2026",
  "channel": "sms",
  "list_id": "lst_f84b...",
  "body": "Bonjour {{name}}, profitez de -50%...",
  "sender_id": "SOLDES",
  "status": "running",
  "total_count": 1420,
  "sent_count": 840,
  "started_at": "2026-06-15T10:00:00Z",
  "created_at": "2026-06-01T12:00:00Z"
}
=== POST /v1/campaigns/:id/send
curl -X POST "https://api.envoisms.ma/v1/campaigns/:id/send" \
  -H "Authorization: Bearer env_live_xxx" \
  -H "Content-Type: application/json" \
  -d '{}'
--- response
{
  "id": "cmp_8d2a...",
  "queued": 1420,
  "total": 1420
}
=== GET /v1/webhooks
curl -X GET "https://api.envoisms.ma/v1/webhooks" \
  -H "Authorization: Bearer env_live_xxx"
--- response
{
  "data": [
    {
      "id": "whk_5f2b...",
      "url": "https://mon-serveur.ma/api/envoisms-receiver",
      "events": [
        "message.delivered",
        "message.failed"
      ],
      "active": true,
      "last_triggered_at": "2026-06-15T09:30:15Z",
      "last_status": 200,
      "created_at": "2026-05-01T10:00:00Z"
    }
  ]
}
=== POST /v1/webhooks
curl -X POST "https://api.envoisms.ma/v1/webhooks" \
  -H "Authorization: Bearer env_live_xxx" \
  -H "Content-Type: application/json" \
  -d '{
    "url": "https://mon-serveur.ma/api/envoisms-receiver",
    "events": [
      "message.delivered",
      "message.failed"
    ]
  }'
--- response
{
  "id": "whk_5f2b...",
  "url": "https://mon-serveur.ma/api/envoisms-receiver",
  "events": [
    "message.delivered",
    "message.failed"
  ],
  "secret": "whsec_2f8a9e7d...",
  "active": true
}
=== PATCH /v1/webhooks/:id
curl -X PATCH "https://api.envoisms.ma/v1/webhooks/:id" \
  -H "Authorization: Bearer env_live_xxx" \
  -H "Content-Type: application/json" \
  -d '{
    "url": "https://mon-serveur.ma/api/envoisms-receiver-updated",
    "active": false
  }'
--- response
{
  "updated": true,
  "id": "whk_5f2b..."
}
=== DELETE /v1/webhooks/:id
curl -X DELETE "https://api.envoisms.ma/v1/webhooks/:id" \
  -H "Authorization: Bearer env_live_xxx"
--- response
{
  "deleted": true,
  "id": "whk_5f2b..."
}
=== POST /v1/webhooks/:id/test
curl -X POST "https://api.envoisms.ma/v1/webhooks/:id/test" \
  -H "Authorization: Bearer env_live_xxx" \
  -H "Content-Type: application/json" \
  -d '{}'
--- response
{
  "queued": true,
  "id": "whk_5f2b..."
}
=== GET /v1/api-keys
curl -X GET "https://api.envoisms.ma/v1/api-keys" \
  -H "Authorization: Bearer env_live_xxx"
--- response
{
  "data": [
    {
      "id": "key_e84c...",
      "name": "Production Server",
      "key_prefix": "env_live",
      "ip_whitelist": [
        "196.200.1.4"
      ],
      "rate_limit": 100,
      "permissions": [
        "send",
        "verify",
        "status"
      ],
      "active": true,
      "last_used_at": "2026-06-15T10:30:00Z",
      "created_at": "2026-05-01T08:00:00Z"
    }
  ]
}
=== POST /v1/api-keys
curl -X POST "https://api.envoisms.ma/v1/api-keys" \
  -H "Authorization: Bearer env_live_xxx" \
  -H "Content-Type: application/json" \
  -d '{
    "name": "Production Server",
    "permissions": [
      "send",
      "verify",
      "status"
    ],
    "ip_whitelist": [
      "196.200.1.4"
    ],
    "rate_limit": 100
  }'
--- response
{
  "id": "key_e84c...",
  "name": "Production Server",
  "key_prefix": "env_live",
  "api_key": "env_live_a8f7d6c5b4a3...",
  "permissions": [
    "send",
    "verify",
    "status"
  ],
  "rate_limit": 100,
  "warning": "The full API key is shown once. Store it securely."
}
=== PATCH /v1/api-keys/:id
curl -X PATCH "https://api.envoisms.ma/v1/api-keys/:id" \
  -H "Authorization: Bearer env_live_xxx" \
  -H "Content-Type: application/json" \
  -d '{
    "name": "Backup Server",
    "active": true
  }'
--- response
{
  "updated": true,
  "id": "key_e84c..."
}
=== DELETE /v1/api-keys/:id
curl -X DELETE "https://api.envoisms.ma/v1/api-keys/:id" \
  -H "Authorization: Bearer env_live_xxx"
--- response
{
  "revoked": true,
  "id": "key_e84c..."
}
=== GET /v1/billing/balance
curl -X GET "https://api.envoisms.ma/v1/billing/balance" \
  -H "Authorization: Bearer env_live_xxx"
--- response
{
  "balance_mad": 1492.5,
  "currency": "MAD",
  "plan": "croissance"
}
=== GET /v1/analytics
curl -X GET "https://api.envoisms.ma/v1/analytics" \
  -H "Authorization: Bearer env_live_xxx"
--- response
{
  "summary": {
    "total": 12840,
    "delivered": 12570,
    "delivery_rate": 97.9,
    "cost_mad": 2663.1
  }
}
