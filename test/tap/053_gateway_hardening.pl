# 053_gateway_hardening.pl — what an adversarial review got through the
# gateway, each case next to the good one: a client address spoofed with
# an X-Forwarded-For (or Forwarded) line of its own ahead of the proxy's;
# requests whose framing libmicrohttpd reads one way and a proxy another
# (answered in HTML, or twice, or not at all); HEAD on a GET route. Only
# loopback connections: the addresses in headers are just strings.
use strict;
use warnings;

use IO::Socket::INET;
use List::Util qw(min);
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

use EnvoismsTest;

my $node = EnvoismsTest::node('hardening');

# ---- helpers

# Sends raw bytes on a new connection; returns everything the gateway sent
# until it closed (or $timeout), and whether it closed.
sub exchange
{
	my ($gw, $bytes, $timeout) = @_;
	my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $gw->{port},
		Proto => 'tcp', Timeout => 5) or die "connect: $!";
	local $SIG{PIPE} = 'IGNORE';
	syswrite($sock, $bytes);
	my ($resp, $closed) = ('', 0);
	my $deadline = time() + ($timeout // 3);
	my $rin = '';
	vec($rin, fileno($sock), 1) = 1;
	while (time() < $deadline)
	{
		next unless select(my $rout = $rin, undef, undef, 0.05);
		my $n = sysread($sock, my $chunk, 65536);
		if (!$n) { $closed = 1; last; }
		$resp .= $chunk;
	}
	close $sock;
	return ($resp, $closed);
}

# Splits the start of $text into one response: (status, {headers}, body,
# rest after it). $head_only: a response to HEAD, whose body is not sent.
sub parse_response
{
	my ($text, $head_only) = @_;
	my ($head, $after) = split /\r\n\r\n/, $text, 2;
	return () unless defined $after;
	my ($status) = $head =~ m{^HTTP/1\.1 (\d{3}) } or return ();
	my %h;
	for my $line (split /\r\n/, $head)
	{
		push @{ $h{ lc $1 } }, $2 if $line =~ /^([^:]+):\s*(.*)$/;
	}
	my $len = $head_only ? 0 : ($h{'content-length'} ? $h{'content-length'}[0] : 0);
	return ($status, \%h, substr($after, 0, $len), substr($after, min($len, length $after)));
}

# A request built from header lines (each "Name: value"), on a connection
# that closes after it. Returns (status, {lower-case name => [values]}, body).
sub request
{
	my ($gw, $method, $path, $lines, $body) = @_;
	my $bytes = "$method $path HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
	  . join('', map { "$_\r\n" } @$lines)
	  . (defined $body ? 'Content-Length: ' . length($body) . "\r\n" : '') . "\r\n" . ($body // '');
	my ($resp) = exchange($gw, $bytes);
	my ($status, $h, $content) = parse_response($resp, $method eq 'HEAD');
	return ($status // 0, $h // {}, $content // '', $resp);
}

# The access-log lines of a gateway so far, decoded.
sub access_lines
{
	my ($gw) = @_;
	return grep { defined $_->{route} } map { EnvoismsTest::json($_) // {} }
	  split /\n/, slurp_file($gw->{log});
}

# The client address the gateway logged for a GET /healthz with these lines.
sub client_of
{
	my ($gw, @lines) = @_;
	my $before = () = access_lines($gw);
	my ($status) = request($gw, 'GET', '/healthz', \@lines);
	for (1 .. 100)
	{
		my @lines = access_lines($gw);
		return $lines[-1]{client_ip} if @lines > $before;
		sleep 0.02;
	}
	return "no access line (status $status)";
}

# ---- 1. the client address behind a trusted proxy: every line of the
# header, walked from the right

my @trusted = ('--trusted-proxy', '127.0.0.1/32', '--trusted-proxy', '10.0.0.0/8');
my $xff = EnvoismsTest::start_gateway($node, args => [@trusted]);

for my $case (
	[ [], '127.0.0.1', 'no header: the proxy itself' ],
	[ ['X-Forwarded-For: 203.0.113.7'], '203.0.113.7', 'one line' ],
	[ ['X-Forwarded-For: 203.0.113.7', 'X-Forwarded-For: 198.51.100.20'], '198.51.100.20',
		'two lines: the proxy appended the second, the first is the client\'s own' ],
	[ ['x-forwarded-for: 203.0.113.7', 'X-FORWARDED-FOR: 198.51.100.20'], '198.51.100.20',
		'two lines, names in any case' ],
	[ ['X-Forwarded-For: 198.51.100.20', 'X-Forwarded-For: 203.0.113.7, 10.0.0.2'], '203.0.113.7',
		'trusted hops on the right of the last line are skipped' ],
	[ ['X-Forwarded-For: 203.0.113.7', 'X-Forwarded-For: garbage'], '127.0.0.1',
		'garbage on the right stops the walk at the proxy' ],
	[ ['X-Forwarded-For: garbage, 198.51.100.20'], '198.51.100.20', 'garbage on the left is never reached' ],
	[ ['X-Forwarded-For: 203.0.113.7,, 10.0.0.2 , '], '203.0.113.7', 'empty list elements are skipped' ],
	[ ['X-Forwarded-For: 10.0.0.1, 10.0.0.2'], '10.0.0.1', 'only trusted hops: the left-most of them' ],
	[ ['X-Forwarded-For: 203.0.113.7:8080'], '203.0.113.7', 'IPv4 with a port' ],
	[ ['X-Forwarded-For: 203.0.113.7:http'], '127.0.0.1', 'a port that is no number: not an address' ],
	[ ['X-Forwarded-For: [2001:db8::7]:443'], '2001:db8::7', 'bracketed IPv6 with a port' ],
	[ ['X-Forwarded-For: 2001:db8::7'], '2001:db8::7', 'bare IPv6' ],
	[ ['X-Forwarded-For: ::ffff:203.0.113.7'], '203.0.113.7', 'IPv4-mapped IPv6 is IPv4' ],
	[ ['Forwarded: for=203.0.113.7'], '127.0.0.1', 'Forwarded is not read when the proxy writes X-Forwarded-For' ])
{
	is(client_of($xff, @{ $case->[0] }), $case->[1], "X-Forwarded-For, $case->[2]");
}

# the finding itself: an allowlisted key, and a client that sends the
# allowed address in a line of its own, the proxy appending its real one
my (undef, $pinned) = EnvoismsTest::demo_key($node, ip_whitelist => ['203.0.113.7/32'], rate_limit => undef);
my (undef, $pinned6) = EnvoismsTest::demo_key($node, ip_whitelist => ['2001:db8::7/128'], rate_limit => undef);
my $balance = sub {
	my ($gw, $key, @lines) = @_;
	return (request($gw, 'GET', '/v1/billing/balance', [ "Authorization: Bearer $key", @lines ]))[0];
};
is($balance->($xff, $pinned, 'X-Forwarded-For: 203.0.113.7'), 200, 'allowlisted address from the proxy: 200');
is($balance->($xff, $pinned, 'X-Forwarded-For: 203.0.113.7', 'X-Forwarded-For: 198.51.100.20'), 401,
	'allowlisted address in a line of the client\'s own, the proxy\'s line after it: 401');
is($balance->($xff, $pinned, 'X-Forwarded-For: 198.51.100.20', 'X-Forwarded-For: 203.0.113.7'), 200,
	'the client\'s junk line first, the proxy\'s allowlisted line last: 200');
is($balance->($xff, $pinned6, 'X-Forwarded-For: [2001:db8::7]:443'), 200, 'an IPv6 allowlist: 200');
is($balance->($xff, $pinned6, 'X-Forwarded-For: 2001:db8::7', 'X-Forwarded-For: 2001:db8::8'), 401,
	'an IPv6 allowlist, spoofed in a first line: 401');

my $fwd = EnvoismsTest::start_gateway($node, args => [@trusted, '--proxy-header', 'Forwarded']);
for my $case (
	[ ['Forwarded: for=203.0.113.7'], '203.0.113.7', 'one element' ],
	[ ['Forwarded: for=203.0.113.7', 'Forwarded: for=198.51.100.20;proto=https'], '198.51.100.20',
		'two lines: the proxy appended the second' ],
	[ ['Forwarded: for="[2001:db8::7]:4711"'], '2001:db8::7', 'quoted IPv6 with brackets and port' ],
	[ ['Forwarded: For="203.0.113.7:8080";by=10.0.0.1, for=10.0.0.2'], '203.0.113.7',
		'parameter names in any case, a trusted hop skipped' ],
	[ ['Forwarded: for=unknown'], '127.0.0.1', '"unknown" is no address' ],
	[ ['Forwarded: for="_hidden", for=198.51.100.20'], '198.51.100.20', 'an obfuscated node on the left' ],
	[ ['Forwarded: for=203.0.113.7', 'Forwarded: proto=https'], '127.0.0.1', 'an element without for= stops the walk' ],
	[ ['Forwarded: for=203.0.113.7;for=198.51.100.20'], '127.0.0.1', 'for= twice in one element is malformed' ],
	[ ['Forwarded: for="203.0.113.7'], '127.0.0.1', 'an unterminated quoted string is malformed' ],
	[ ['X-Forwarded-For: 203.0.113.7'], '127.0.0.1', 'X-Forwarded-For is not read when the proxy writes Forwarded' ])
{
	is(client_of($fwd, @{ $case->[0] }), $case->[1], "Forwarded, $case->[2]");
}
is($balance->($fwd, $pinned, 'Forwarded: for=203.0.113.7'), 200, 'Forwarded: allowlisted address: 200');
is($balance->($fwd, $pinned, 'Forwarded: for=203.0.113.7', 'Forwarded: for=198.51.100.20'), 401,
	'Forwarded: the client\'s own line ahead of the proxy\'s: 401');

EnvoismsTest::stop_gateway($_) for $xff, $fwd;

# ---- 3. framing: one well-framed JSON answer, and the connection closed

{
	my $gw = EnvoismsTest::start_gateway($node, args => ['--timeout', '5']);
	for my $case (
		[ "POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhelloxx",
			400, 'two different Content-Length lines' ],
		[ "POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 7\r\n\r\nhelloxx",
			400, 'a Content-Length list' ],
		[ "POST /v1/messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nhello",
			501, 'an unknown Transfer-Encoding' ],
		[ "POST /v1/messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
			501, 'a Transfer-Encoding other than chunked alone' ],
		[ "POST /v1/messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
			400, 'Transfer-Encoding and Content-Length together' ],
		[ "POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
			400, 'Content-Length: -1' ],
		[ "POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
			400, 'a Content-Length that is no number' ],
		[ "POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n",
			413, 'a Content-Length beyond 64 bits' ],
		[ "GET /v1/messages\r\nHost: x\r\n\r\n", 400, 'a request line without an HTTP version' ],
		[ "GET /v1/messages HTTP/2.0\r\nHost: x\r\n\r\n", 505, 'HTTP/2.0 in a request line' ],
		[ "GARBAGE\r\n\r\n", 400, 'a request line of one word' ],
		[ "\x00\x01\x02\xff\r\n\r\n", 400, 'binary noise' ],
		[ "GET /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a\r\nAuthorization: Bearer b\r\n\r\n",
			400, 'two Authorization lines' ],
		[ "GET /healthz HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400, 'two Host lines' ],
		[ "GET /healthz HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", 400, 'a header line without a colon' ],
		[ "GET /healthz HTTP/1.1\r\nHost: x\r\nX-A : b\r\n\r\n", 400, 'a space before the colon' ],
		[ "GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: b\r\n c\r\n\r\n", 400, 'a folded header line' ],
		[ "GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: b\rc\r\n\r\n", 400, 'a bare CR in a header value' ],
		[ "GET /healthz HTTP/1.1\r\n\r\n", 400, 'HTTP/1.1 without Host' ],
		[ "GET /v1/messages?" . ('a' x 9000) . " HTTP/1.1\r\nHost: x\r\n\r\n", 414, 'a 9,000-byte target' ],
		[ "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " . ('b' x 40000) . "\r\n\r\n", 431, 'a 40 kB header' ])
	{
		my ($bytes, $want, $what) = @$case;
		my $t0 = time();
		my ($resp, $closed) = exchange($gw, $bytes, 4);
		my $took = time() - $t0;
		my ($status, $h, $body, $rest) = parse_response($resp);
		my $json = EnvoismsTest::json($body // '') // {};
		is($status // 'none', $want, "$what: $want");
		like($json->{error}{code} // '', qr/^(VALIDATION_ERROR|INVALID_REQUEST|PAYLOAD_TOO_LARGE|URI_TOO_LONG|HEADERS_TOO_LARGE)$/,
			"$what: the JSON error envelope") or diag substr($resp, 0, 300);
		is($json->{error}{docs} // '', 'https://envoisms.ma/docs#errors', "$what: the envelope links the docs");
		is(lc(($h->{connection} // [''])->[0]), 'close', "$what: Connection: close");
		ok($closed && defined $rest && $rest eq '', "$what: exactly one response, then the connection closed")
		  or diag "after the response: " . substr($rest // $resp, 0, 200);
		cmp_ok($took, '<', 2, "$what: answered at once");
	}

	# the good ones next to them
	for my $case (
		[ "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 200, 'a plain GET' ],
		[ "GET /healthz HTTP/1.0\r\n\r\n", 200, 'HTTP/1.0 without Host' ],
		[ "\r\nGET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 200, 'an empty line before the request line' ],
		[ "GET /healthz HTTP/1.1\nHost: x\nConnection: close\n\n", 200, 'bare LF line ends' ],
		[ "POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
			401, 'the same Content-Length twice (read, then refused for its missing key)' ],
		[ "POST /v1/messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\nConnection: close\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
			401, 'Transfer-Encoding: chunked in any case' ])
	{
		my ($resp, $closed) = exchange($gw, $case->[0], 4);
		my ($status, undef, undef, $rest) = parse_response($resp);
		is($status // 'none', $case->[1], "$case->[2]: $case->[1]");
		ok($closed && defined $rest && $rest eq '', "$case->[2]: one response") or diag substr($resp, 0, 300);
	}

	# on a kept-alive connection the second request is checked as well
	{
		my ($resp, $closed) = exchange($gw, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
			  . "POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc", 4);
		my ($s1, undef, undef, $rest) = parse_response($resp);
		my ($s2, $h2, $b2, $rest2) = parse_response($rest // '');
		is($s1 // 'none', 200, 'kept alive: the first request is answered');
		is($s2 // 'none', 400, 'kept alive: a second request with two Content-Length values: 400');
		is((EnvoismsTest::json($b2 // '') // {})->{error}{code} // '', 'VALIDATION_ERROR', '... in the envelope');
		ok($closed && defined $rest2 && $rest2 eq '', '... and then the connection closed');
	}

	# a connection that never completes its head is dropped after --timeout
	{
		my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $gw->{port}, Timeout => 5);
		syswrite($sock, "GET /healthz HTTP/1.1\r\nHost: x\r\n");
		my $t0 = time();
		my $rin = '';
		vec($rin, fileno($sock), 1) = 1;
		select(my $rout = $rin, undef, undef, 10);
		my $n = sysread($sock, my $buf, 100);
		ok(!$n, sprintf('an unfinished head: closed after %.1f s (--timeout 5)', time() - $t0));
		cmp_ok(time() - $t0, '<', 7, '... within the timeout and a tick');
	}
	my ($s) = EnvoismsTest::http('GET', "$gw->{url}/healthz");
	is($s, 200, 'after all that the gateway still serves');
	is(EnvoismsTest::stop_gateway($gw), 0, 'the gateway stops cleanly');
}

# ---- 4. HEAD: the GET's status and headers, no body

{
	my $gw = EnvoismsTest::start_gateway($node);
	my (undef, $key) = EnvoismsTest::demo_key($node);
	my @auth = ("Authorization: Bearer $key");
	for my $case (
		[ '/v1/billing/balance', \@auth, 200, 'a GET route' ],
		[ '/v1/messages/msg_doesnotexist', \@auth, 404, 'an unknown id' ],
		[ '/v1/billing/balance', [], 401, 'no key' ],
		[ '/healthz', [], 200, 'the gateway\'s /healthz' ])
	{
		my ($path, $lines, $want, $what) = @$case;
		my ($gs, $gh, $gb) = request($gw, 'GET', $path, $lines);
		my ($hs, $hh, undef, $raw) = request($gw, 'HEAD', $path, $lines);
		is($gs, $want, "GET $what: $want");
		is($hs, $gs, "HEAD $what: the GET's status");
		is($hh->{'content-length'}[0], length($gb), "HEAD $what: the Content-Length of the GET's body");
		is_deeply([ sort grep { !/^(date|x-ratelimit-remaining)$/ } keys %$hh ],
			[ sort grep { !/^(date|x-ratelimit-remaining)$/ } keys %$gh ], "HEAD $what: the GET's headers");
		like($raw, qr/\r\n\r\n\z/, "HEAD $what: no body");
	}
	my ($gs, $gh) = request($gw, 'GET', '/v1/api-keys/key_1', \@auth);
	my ($hs, $hh, undef, $raw) = request($gw, 'HEAD', '/v1/api-keys/key_1', \@auth);
	is($hs, 405, 'HEAD on a route without GET: 405');
	is($hh->{allow}[0] // '', $gh->{allow}[0] // 'none', '... with the Allow of the GET');
	like($raw, qr/\r\n\r\n\z/, '... and no body');
	is(EnvoismsTest::stop_gateway($gw), 0, 'the gateway stops cleanly');
}

done_testing();
