#!/usr/bin/perl
# fuzz/seed.pl — (re)writes the seed inputs of fuzz/corpus/<harness>/ from
# what the tests already send: the string literals of sql/*.sql,
# test/pgtap/*.sql and test/tap/*.pl, the JSON bodies among them, the
# request examples of docs/openapi.yaml, plus SMPP PDUs packed here in the
# shapes SMSCs send. Files are named seed-<sha1 of content>, so a second run
# adds nothing; inputs found by fuzzing (and crash-* inputs) are left alone.
#
#   perl fuzz/seed.pl        (from the repository root)
use strict;
use warnings;

use Digest::SHA qw(sha1_hex);
use File::Path qw(make_path);
use JSON::PP;
use YAML::XS ();

my $root = $ENV{ENVOISMS_ROOT} // '.';
my %seeds;    # harness => { content => 1 }

sub seed
{
	my ($harness, $content) = @_;
	return if !defined $content || length($content) > 8192;
	$seeds{$harness}{$content} = 1;
}

sub slurp
{
	my ($path) = @_;
	open(my $f, '<:raw', $path) or die "$path: $!";
	local $/;
	return <$f>;
}

# ---- string literals of the tests
my @literals;
for my $path (glob("$root/sql/*.sql"), glob("$root/test/pgtap/*.sql"))
{
	my $text = slurp($path);
	while ($text =~ /(?<![A-Za-z0-9_])(E?)'((?:[^']|'')*)'/g)
	{
		my ($e, $s) = ($1, $2);
		$s =~ s/''/'/g;
		if ($e)
		{
			my %esc = (n => "\n", r => "\r", t => "\t", f => "\f", b => "\b", '\\' => '\\', "'" => "'");
			$s =~ s/\\([nrtfb\\'])/$esc{$1}/g;
		}
		push @literals, $s;
	}
}
for my $path (glob("$root/test/tap/*.pl"))
{
	my $text = slurp($path);
	push @literals, $2 while $text =~ /(['"])((?:\\.|(?!\1).)*)\1/g;
	push @literals, $1 while $text =~ /\bq\{((?:[^{}]|\{[^{}]*\})*)\}/g;
}

# JSON objects anywhere in a literal (bodies, headers, webhook payloads)
my $json = JSON::PP->new->utf8->canonical;
for my $s (@literals)
{
	my $start = index($s, '{');
	next if $start < 0;
	my $candidate = substr($s, $start);
	my $doc = eval { $json->decode($candidate) };
	next unless ref $doc eq 'HASH';
	seed('json_body', $candidate);
	for my $field (qw(message body text))
	{
		seed('segments', $doc->{$field}) if defined $doc->{$field} && !ref $doc->{$field};
	}
	seed('phone', $doc->{to}) if defined $doc->{to} && !ref $doc->{to};
}

for my $s (@literals)
{
	if ($s =~ /^\s*\+?[0-9][0-9 ().\-]{5,31}\s*$/)
	{
		seed('phone', $s);
		seed('phone', "$s\nMA") if $s =~ /^\s*[0(]/;
	}
	seed('phone', "\n$s") if $s =~ /^[A-Za-z]{2}$/;
	seed('smpp_receipt', $s) if $s =~ /\b(id|stat):/i;
	seed('request_text', $s) if $s =~ /^(Bearer|bearer|BEARER)\s/ || $s =~ /^[a-z]{2,8}_[0-9a-f]{12,}$/;
	seed('gateway_clientip', "\x03\x00$s") if $s =~ /^[0-9a-fA-F.:\[\], ]+$/ && $s =~ /[.:]/;
	seed('gateway_clientip', "\x83\x00$s") if $s =~ /\bfor=/i;
	seed('gateway_text', $s) if $s =~ m{^/(v1|healthz|metrics)};
	seed('gateway_head', $s) if $s =~ m{^[A-Z]+ \S* HTTP/};
}
{
	my $text = slurp("$root/sql/segments.sql");
	seed('segments', $_) for grep { length } map { my $s = $_; $s } ($text =~ /\(\d+, '(?:[^']|'')*', E?'((?:[^']|'')*)'\)/g);
	seed('request_text', $_) for (slurp("$root/sql/senders.sql") =~ /'((?:[^']|'')*)'/g);
}

# ---- the contract's request examples
my $api = YAML::XS::LoadFile("$root/docs/openapi.yaml");
for my $path (values %{ $api->{paths} })
{
	for my $op (values %$path)
	{
		next unless ref $op eq 'HASH';
		my $example = $op->{requestBody}{content}{'application/json'}{example};
		next unless ref $example eq 'HASH';
		my $text = $json->encode($example);
		seed('json_body', $text);
		seed('segments', $example->{message}) if defined $example->{message} && !ref $example->{message};
	}
}

# ---- hand-made edges the tests do not spell out
seed('json_body', $_) for (
	'{}', ' ', '{"a":"\u0000"}', '{"a":1e1000}', '{"a":1e-1000}', '{"a":"\ud800"}',
	'{"a":"\udc00\ud800"}', ('[' x 50) . (']' x 50), '{"a":' x 20 . '1' . '}' x 20,
	'{"to":"+212612345678","message":"Bonjour","metadata":{"k":[1,2,{"x":null}]},"buttons":[{"type":"url"}]}',
	'"text"', '[]', '{"to":1}', '{"cascade":"yes"}', "{\"message\":\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"}");
seed('segments', $_) for (
	"\x{1F600}" x 40, "\xe2\x82\xac" x 80, 'a' x 153 . "\xe2\x82\xac", "\xd8\xb3\xd9\x84\xd8\xa7\xd9\x85",
	'i' x 7, 'i' x 15, 'i' x 23, "\x{2019}", "\x0c" x 3, "\xc2\xa0");
seed('request_text', $_) for (
	'Bearer env_live_' . ('a' x 48), 'bearer   env_test_' . ('0' x 48) . " \r\n", 'Bearer env_live_x',
	'msg_0194b2a3c4d5e6f7a8b9c0d1e2f3a4b5', 'MaBoutique', '+212612345678', 'A&B-C.D_E');
seed('gateway_clientip', "\x03\x00$_") for ('203.0.113.9', '203.0.113.9, 10.1.2.3',
	'203.0.113.9, 198.51.100.7', 'not-an-address', '[2001:db8::1]:443, 10.0.0.1',
	'198.51.100.7:8080', ' , ,', '::ffff:203.0.113.9');
seed('gateway_clientip', "\x7f\x05$_") for ('2001:db8::1, fd00::2', '[::1]', '127.0.0.1,127.0.0.1');
seed('gateway_clientip', "\x83\x00$_") for ('for=203.0.113.9', 'for="[2001:db8::1]:443";proto=https, for=10.0.0.1',
	'For="_hidden", for=unknown', 'for=198.51.100.7;by=10.0.0.1, for="10.1.2.3:80"', 'for="a,b", for=1.2.3.4');
seed('gateway_text', $_) for (
	'{"X-Envoisms-Key-Id": "key_0194b2a3c4d5e6f7", "X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "99"}',
	'{"Retry-After": "1"}', '{"Allow": "GET, POST"}', '{"Location": "/v1/messages/msg_1", "X": null, "N": 5}',
	'{"a\"b": "c\\\\d\u0041\n"}', '/v1/messages/msg_123/events', '/v1/contacts/lists', '/healthz',
	"/v1/\xff\xfe", '/' . ('a/' x 10));

seed('gateway_head', $_) for (
	"GET /v1/billing/balance HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer env_test_abc\r\n\r\n",
	"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
	"\r\n\r\nGET / HTTP/1.0\r\n\r\n", "GET / HTTP/1.1\nHost: a\n\n", "GET /\r\n\r\n",
	"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
	"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
	"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", "GET / HTTP/2.0\r\n\r\n", "GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",
	"GET /" . ('a' x 9000) . " HTTP/1.1\r\n\r\n", "GET / HTTP/1.1\r\nNoColon\r\n\r\n");

# ---- SMPP PDUs as an SMSC sends them (SMPP 3.4: header, then the body)
sub pdu
{
	my ($command, $status, $sequence, $body) = @_;
	return pack('NNNN', 16 + length $body, $command, $status, $sequence) . $body;
}

sub tlv { my ($tag, $value) = @_; return pack('nn', $tag, length $value) . $value; }

sub deliver_sm
{
	my (%f) = @_;
	my $sm = $f{short_message} // '';
	return pdu(0x00000005, 0, $f{sequence} // 7,
		pack('Z* CC Z* CC Z* CCC Z* Z* CCCC C',
			'', 1, 1, $f{source} // '212612345678', 5, 0, $f{destination} // 'ENVOISMS',
			$f{esm_class} // 0, 0, 0, '', '', 0, 0, $f{data_coding} // 0, 0, length $sm)
		  . $sm . ($f{tlvs} // ''));
}

my $receipt = 'id:0123456789 sub:001 dlvrd:001 submit date:2605251030 done date:2605251031 stat:DELIVRD err:000 text:Bonjour';
seed('smpp_pdu', $_) for (
	deliver_sm(esm_class => 0x04, short_message => $receipt),
	deliver_sm(esm_class => 0x04, short_message => $receipt,
		tlvs => tlv(0x001E, "abc-1\0") . tlv(0x0427, "\x02") . tlv(0x0423, "\x03\x00\x01")),
	deliver_sm(short_message => "Salam, prix 5\x1be ?"),
	deliver_sm(esm_class => 0x40, short_message => "\x05\x00\x03\x2a\x02\x01" . 'part one'),
	deliver_sm(esm_class => 0x40, short_message => "\x06\x08\x04\x01\x2a\x02\x02" . 'part two'),
	deliver_sm(data_coding => 8, short_message => "\x06\x33\x06\x44\xd8\x3d\xde\x00"),
	deliver_sm(data_coding => 3, short_message => "caf\xe9"),
	deliver_sm(data_coding => 0, short_message => '', tlvs => tlv(0x0424, 'payload text ' x 20)),
	pdu(0x80000004, 0, 9, "msg-id-42\0"),
	pdu(0x80000004, 0x58, 10, ''),
	pdu(0x80000000, 3, 11, ''),
	pdu(0x00000015, 0, 12, ''),
	pdu(0x00000006, 0, 13, ''),
	pdu(0x80000009, 0, 1, "SMSC\0"),
	pdu(0x00000103, 0, 14, 'data_sm body'));

# ---- write
my $written = 0;
for my $harness (sort keys %seeds)
{
	my $dir = "$root/fuzz/corpus/$harness";
	make_path($dir);
	for my $content (sort keys %{ $seeds{$harness} })
	{
		my $bytes = utf8::is_utf8($content) ? do { my $c = $content; utf8::encode($c); $c } : $content;
		my $path = "$dir/seed-" . substr(sha1_hex($bytes), 0, 16);
		next if -e $path;
		open(my $f, '>:raw', $path) or die "$path: $!";
		print $f $bytes;
		close $f;
		$written++;
	}
	printf "%-18s %4d seeds\n", $harness, scalar keys %{ $seeds{$harness} };
}
print "$written new files\n";
