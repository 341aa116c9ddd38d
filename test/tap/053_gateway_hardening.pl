# 053_gateway_hardening.pl — what an adversarial review got through the
# gateway, each case next to the good one: a client address spoofed with
# an X-Forwarded-For (or Forwarded) line of its own ahead of the proxy's;
# large bodies read, and held, before their key was checked; requests whose
# framing libmicrohttpd reads one way and a proxy another (answered in HTML,
# or twice, or not at all); HEAD on a GET route. Only loopback connections:
# the addresses in headers are just strings.
use strict;
use warnings;

use IO::Socket::INET;
use List::Util qw(min);
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep usleep);

use EnvoismsTest;

my $node = EnvoismsTest::node('hardening', conf => ["track_functions = 'all'"]);

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

sub vm
{
	my ($gw, $field) = @_;
	my ($kb) = slurp_file("/proc/$gw->{pid}/status") =~ /^$field:\s+(\d+) kB/m;
	return $kb / 1024;
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

# the spoof itself: an allowlisted key, and a client that sends the
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

# ---- 2. large bodies: the key is checked before the body is read, and the
# bodies held at once are bounded

# Calls of api_precheck counted so far. An idle backend reports its counts
# only every ten seconds, an exiting one at once: call this once the
# gateway has stopped.
my $precheck_calls = sub {
	for (1 .. 100)
	{
		last if $node->safe_psql('envoisms',
			"SELECT count(*) FROM pg_stat_activity WHERE application_name = 'envoisms-gateway'") == 0;
		sleep 0.1;
	}
	return $node->safe_psql('envoisms',
		"SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions WHERE funcname = 'api_precheck'");
};

# Opens $n connections that each send $head and then push $size body bytes,
# all at once. Returns each connection's response once it answered, closed
# or $timeout passed.
sub flood
{
	my ($gw, $n, $head, $size, $timeout) = @_;
	my @c;
	for (1 .. $n)
	{
		my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $gw->{port},
			Proto => 'tcp', Timeout => 5) or die "connect: $!";
		$s->blocking(0);
		push @c, { sock => $s, out => $head, left => $size, resp => '' };
	}
	local $SIG{PIPE} = 'IGNORE';
	my $chunk = 'x' x 65536;
	my $deadline = time() + $timeout;
	while (time() < $deadline)
	{
		my @open = grep { !$_->{done} } @c;
		last unless @open;
		my ($rin, $win) = ('', '');
		for my $c (@open)
		{
			vec($rin, fileno($c->{sock}), 1) = 1;
			vec($win, fileno($c->{sock}), 1) = 1 if length $c->{out} || $c->{left} > 0;
		}
		next unless select(my $rout = $rin, my $wout = $win, undef, 0.1);
		for my $c (@open)
		{
			my $fd = fileno($c->{sock});
			if (vec($rout, $fd, 1))
			{
				my $r = sysread($c->{sock}, my $buf, 65536);
				if (!$r) { $c->{done} = 1; next; }
				$c->{resp} .= $buf;
				my (undef, undef, $body) = parse_response($c->{resp});
				$c->{done} = 1 if defined $body && $body =~ /\}\s*$/;
			}
			if (vec($wout, $fd, 1) && !$c->{done})
			{
				if (!length $c->{out})
				{
					my $k = min(65536, $c->{left});
					$c->{out} = substr($chunk, 0, $k);
					$c->{left} -= $k;
				}
				my $w = syswrite($c->{sock}, $c->{out});
				if (defined $w) { substr($c->{out}, 0, $w) = ''; }
				elsif (!$!{EAGAIN}) { $c->{out} = ''; $c->{left} = 0; }
			}
		}
	}
	close $_->{sock} for @c;
	return map { $_->{resp} } @c;
}

{
	my $gw = EnvoismsTest::start_gateway($node, args => ['--threads', '4']);
	my (undef, $key) = EnvoismsTest::demo_key($node, rate_limit => undef);
	my $size = 8 * 1024 * 1024;
	EnvoismsTest::http('GET', "$gw->{url}/healthz") for 1 .. 5;
	my $base = vm($gw, 'VmHWM');
	my $t0 = time();
	my @resps = flood($gw, 24,
		"POST /v1/messages/bulk HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
		  . "Content-Length: $size\r\n\r\n", $size, 60);
	my $took = time() - $t0;
	my @unauthorized = grep { ((parse_response($_))[0] // 0) == 401 } @resps;
	my $grown = vm($gw, 'VmHWM') - $base;
	is(scalar @unauthorized, 24, sprintf('24 unauthenticated 8 MiB bodies at once: all 401 (in %.1f s)', $took));
	cmp_ok($grown, '<', 24, sprintf('... and the peak RSS grew by %.1f MB (from %.1f MB), not by the 192 MB sent',
		$grown, $base));
	# a request's access line is written when its connection is done, which
	# may come a little after the client read the answer: wait for all 24
	my @bulk;
	for (1 .. 100)
	{
		@bulk = grep { $_->{route} eq '/v1/messages/bulk' && $_->{status} == 401 } access_lines($gw);
		last if @bulk >= 24;
		usleep(100_000);
	}
	is(scalar(grep { $_->{bytes_in} == 0 } @bulk), 24,
		'... each answered with no body byte read (bytes_in 0 in the access log)');

	my ($resp) = exchange($gw, "POST /v1/messages/bulk HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
		  . "Content-Length: $size\r\n\r\n", 3);
	like($resp, qr{^HTTP/1\.1 401 }, 'Expect: 100-continue without a key: 401, and no 100 Continue asking for the body');

	($resp) = exchange($gw, "POST /v1/messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
		  . "10000\r\n" . ('x' x 65536) . "\r\n", 3);
	like($resp, qr{^HTTP/1\.1 401 }, 'a chunked body without a key: 401 before the body is read');

	note sprintf('RSS: peak %.1f MB, now %.1f MB', vm($gw, 'VmHWM'), vm($gw, 'VmRSS'));
	is(EnvoismsTest::stop_gateway($gw), 0, 'the gateway stops cleanly');

	# a legit large body goes through the precheck, a small one does not
	my $calls = $precheck_calls->();
	$gw = EnvoismsTest::start_gateway($node);
	my ($s) = EnvoismsTest::http('POST', "$gw->{url}/v1/messages",
		{ Authorization => "Bearer $key", 'Content-Type' => 'application/json' },
		'{"to": "+212612345678", "message": "Bonjour"}');
	is($s, 201, 'a small body is sent as before');
	my $items = join(', ', map { sprintf('{"to": "+2126%08d", "message": "Bonjour %d"}', $_, $_) } 1 .. 10_000);
	my $bulk = qq({"messages": [$items], "from": "ENVOISMS", "channel": "sms"});
	my ($bs, undef, $bc) = EnvoismsTest::http('POST', "$gw->{url}/v1/messages/bulk",
		{ Authorization => "Bearer $key", 'Content-Type' => 'application/json' }, $bulk, timeout => 120);
	is($bs, 201, sprintf('an authorised %.1f MB bulk still goes through', length($bulk) / 1e6))
	  or diag substr($bc, 0, 300);
	is(EnvoismsTest::stop_gateway($gw), 0, 'the gateway stops cleanly');
	is($precheck_calls->(), $calls + 1, 'one precheck: the bulk\'s, none for the small body');
}

# --max-body-total: bodies past it wait for nobody, they get 503 unread
{
	my $mib = 1024 * 1024;
	my $gw = EnvoismsTest::start_gateway($node,
		args => ['--max-body', 4 * $mib, '--max-body-total', 10 * $mib]);
	my (undef, $key) = EnvoismsTest::demo_key($node, rate_limit => undef);
	my $head = "POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer $key\r\n"
	  . "Content-Type: application/json\r\nContent-Length: " . (3 * $mib) . "\r\n\r\n";
	my @held;
	for (1 .. 3)
	{
		my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $gw->{port}, Timeout => 5);
		syswrite($s, $head . ('x' x 1000));
		push @held, $s;
	}
	sleep 0.5;    # their prechecks pass; 9 MiB of 10 are reserved
	my ($resp, $closed) = exchange($gw, $head, 3);
	my ($status, $h, $body) = parse_response($resp);
	is($status // 0, 503, 'a fourth 3 MiB body while three are held: 503 at once');
	is((EnvoismsTest::json($body // '') // {})->{error}{code}, 'SERVICE_UNAVAILABLE', '... SERVICE_UNAVAILABLE envelope');
	like($h->{'retry-after'}[0] // '', qr/^\d+$/, '... with Retry-After');
	ok($closed, '... and the connection closed, the body unread');
	close $_ for @held;
	sleep 0.5;
	($status, $h, $body) = request($gw, 'POST', '/v1/messages',
		[ "Authorization: Bearer $key", 'Content-Type: application/json' ],
		'{"message": "' . ('a' x (3 * $mib)) . '"}');
	ok($status == 400 && (EnvoismsTest::json($body) // {})->{error}{code} =~ /^(VALIDATION_ERROR|INVALID_PHONE)$/,
		"once they are gone a 3 MiB body is read and reaches SQL (answered $status)");
	is(EnvoismsTest::stop_gateway($gw), 0, 'the gateway stops cleanly');
}

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

# ---- the README's flag table and --help name the same flags (new ones
# came with these fixes)
{
	my $bin = EnvoismsTest::gateway_binary();
	my $help = `$bin --help`;
	my %in_help = map { $_ => 1 } grep { $_ ne '--help' } $help =~ /^\s+(--[a-z-]+)/mg;
	my ($section) = slurp_file("$EnvoismsTest::ROOT/README.md") =~ /^## Gateway\n(.*?)^## /ms;
	my %in_readme = map { $_ => 1 } map { /`(--[a-z-]+)/g } grep { /^\| `--/ } split /\n/, $section;
	is_deeply([ sort keys %in_readme ], [ sort keys %in_help ], 'README\'s Gateway table lists exactly the flags of --help');
}

done_testing();
