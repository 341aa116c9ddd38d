# 051_gateway_limits.pl — what a hostile or broken client cannot do to the
# gateway: bodies over the limit (413 without being read, 64 MiB included),
# malformed HTTP, bodies that are not UTF-8, over-long targets and headers,
# 1,000 connections at once, a connection cap, and a client that sends one
# byte a second. After each, the gateway still serves a normal request.
use strict;
use warnings;

use IO::Socket::INET;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

use EnvoismsTest;

my $node = EnvoismsTest::node('limits');
my $gw = EnvoismsTest::start_gateway($node, args => ['--timeout', '3']);
my $url = $gw->{url};
my (undef, $key) = EnvoismsTest::demo_key($node, rate_limit => undef);
my %auth = (Authorization => "Bearer $key", 'Content-Type' => 'application/json');

sub still_serving
{
	my ($what) = @_;
	my ($s) = EnvoismsTest::http('GET', "$url/v1/billing/balance", { Authorization => "Bearer $key" });
	is($s, 200, "after $what the gateway still serves");
}

sub connect_gw
{
	return IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $gw->{port},
		Proto => 'tcp', Timeout => 5);
}

# Reads what the server sends until it closes or $timeout passes.
sub read_all
{
	my ($sock, $timeout) = @_;
	my $buf = '';
	my $deadline = time() + $timeout;
	my $rin = '';
	vec($rin, fileno($sock), 1) = 1;
	while (time() < $deadline)
	{
		next unless select(my $rout = $rin, undef, undef, 0.1);
		my $n = sysread($sock, my $chunk, 65536);
		return ($buf, 1) unless $n;    # closed
		$buf .= $chunk;
	}
	return ($buf, 0);
}

# ---- 413: a declared 64 MiB body is refused before it is read
{
	my $sock = connect_gw();
	local $SIG{PIPE} = 'IGNORE';
	my $size = 64 * 1024 * 1024;
	syswrite($sock, "POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer $key\r\n"
		  . "Content-Type: application/json\r\nContent-Length: $size\r\n\r\n" . ('{' x 65536));
	my $t0 = time();
	my ($resp, $closed) = read_all($sock, 10);
	like($resp, qr{^HTTP/1\.1 413 }, '64 MiB with Content-Length: 413 at once');
	like($resp, qr/"code": "PAYLOAD_TOO_LARGE"/, '413 carries the PAYLOAD_TOO_LARGE envelope');
	ok($closed, '413: the connection is closed, the rest of the body is never read');
	ok(time() - $t0 < 5, '413 comes without waiting for the body');
	my $sent = 65536;
	my $chunk = 'x' x (1024 * 1024);
	while ($sent < $size)
	{
		my $n = syswrite($sock, $chunk);
		last unless $n;
		$sent += $n;
	}
	ok($sent < $size, "the gateway stopped taking the body after $sent bytes");
	close $sock;
}
still_serving('a 64 MiB Content-Length');

# ---- 413: a chunked 64 MiB body (no Content-Length) is never stored
{
	my $sock = connect_gw();
	local $SIG{PIPE} = 'IGNORE';
	syswrite($sock, "POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer $key\r\n"
		  . "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n");
	my $chunk = 'x' x (1024 * 1024);
	my $sent = 0;
	for (1 .. 64)
	{
		my $n = syswrite($sock, sprintf("%x\r\n%s\r\n", length $chunk, $chunk));
		last unless $n;
		$sent += length $chunk;
	}
	my ($resp, $closed) = read_all($sock, 10);
	ok($closed, "a chunked body past the limit is cut off (after about $sent bytes sent)");
	ok($sent < 64 * 1024 * 1024 || $resp eq '' || $resp =~ /^HTTP\/1\.1 413/,
		'a chunked 64 MiB body is not accepted');
	close $sock;
}
{
	# just over the limit (and done), a chunked body gets the 413 envelope
	my $small = EnvoismsTest::start_gateway($node, args => ['--max-body', '1000']);
	my ($status, $resp) = EnvoismsTest::raw_request($small,
		"POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer $key\r\n"
		  . "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
		  . "7d0\r\n" . ('a' x 2000) . "\r\n0\r\n\r\n");
	is($status, 413, 'a chunked body over --max-body: 413');
	like($resp, qr/PAYLOAD_TOO_LARGE/, 'chunked 413: the envelope');
	($status) = EnvoismsTest::http('POST', "$small->{url}/v1/messages",
		{ %auth, 'Content-Length' => 2000 }, 'a' x 2000);
	is($status, 413, 'a declared body over --max-body: 413');
	is(EnvoismsTest::stop_gateway($small), 0, 'a gateway with --max-body 1000 stops cleanly');
}
still_serving('a chunked 64 MiB body');

# ---- a large but legal body: a 10,000-message bulk (~0.6 MB)
{
	my $items = join(', ', map { sprintf('{"to": "+2126%08d", "message": "Bonjour %d"}', $_, $_) } 1 .. 10_000);
	my $body = qq({"messages": [$items], "from": "ENVOISMS", "channel": "sms"});
	my ($s, $h, $content) = EnvoismsTest::http('POST', "$url/v1/messages/bulk", \%auth, $body, timeout => 120);
	is($s, 201, sprintf('a 10,000-message bulk (%.1f MB) is accepted', length($body) / 1e6))
	  or diag substr($content, 0, 300);
	is(EnvoismsTest::json($content)->{total}, 10_000, 'the bulk queued 10,000 messages');
}

# ---- malformed HTTP
for my $case (
	[ "GARBAGE\r\n\r\n", 'a request line without target and version' ],
	[ "GET /healthz HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", 'a header line without a colon' ],
	[ "GET /healthz HTTP/1.1\r\n\r\n", 'HTTP/1.1 without Host' ],
	[ "POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 'a Content-Length that is not a number' ],
	[ "POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 'a broken chunk size' ],
	[ "\x00\x01\x02\xff\r\n\r\n", 'binary noise' ])
{
	my ($status, $resp) = EnvoismsTest::raw_request($gw, $case->[0], timeout => 5);
	# libmicrohttpd answers 400 when it can parse enough to answer, and
	# otherwise closes; either way nothing reaches the database
	ok((defined $status && $status >= 400 && $status < 500) || $resp eq '',
		"$case->[1]: " . (defined $status ? "answered $status" : 'closed without an answer'))
	  or diag "got: " . substr($resp // '', 0, 200);
}
{
	my ($status) = EnvoismsTest::raw_request($gw, "GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n", timeout => 5);
	ok(defined $status && $status >= 400, 'an unknown HTTP version: refused');
}
still_serving('malformed requests');

# ---- bodies that are not UTF-8 text
for my $case ([ qq({"to": "+212612345678", "message": "\xff\xfe\xfd"}), 'invalid UTF-8' ],
	[ qq({"to": "+212612345678", "message": "a\x00b"}), 'a NUL byte' ],
	[ qq({"to": "+212612345678", "message": "\xed\xa0\x80"}), 'a UTF-8 encoded surrogate' ],
	[ qq({"to": "+212612345678", "message": "\xc0\xaf"}), 'an overlong encoding' ])
{
	my ($s, undef, $content) = EnvoismsTest::http('POST', "$url/v1/messages", \%auth, $case->[1] eq 'x' ? '' : $case->[0]);
	is($s, 400, "a body with $case->[1]: 400");
	is(EnvoismsTest::json($content)->{error}{code}, 'INVALID_JSON', "a body with $case->[1]: INVALID_JSON");
}
{
	my ($s, undef, $content) = EnvoismsTest::http('POST', "$url/v1/messages", \%auth,
		'{"to": "+212612345678", "message": "Votre commande est en cours de livraison 🚚"}');
	is($s, 201, 'valid UTF-8 with an emoji goes through untouched');
}

# ---- target and header caps
{
	my ($s, undef, $content) = EnvoismsTest::http('GET', "$url/v1/messages?" . ('a' x 9000), \%auth);
	is($s, 414, 'a 9,000-byte target: 414');
	($s, undef, $content) = EnvoismsTest::http('GET', "$url/v1/messages", { %auth, 'X-Big' => 'b' x 40000 });
	ok($s == 431 || $s == 413, "a 40 kB header: $s (header block too large)");
	($s) = EnvoismsTest::http('GET', "$url/v1/messages", { %auth, map { ("X-H$_" => 'v' x 100) } 1 .. 500 });
	ok($s == 431 || $s == 413, "500 headers of 100 bytes: $s");
}
still_serving('oversized targets and headers');

# ---- 1,000 connections at once, each with a request, all answered
{
	my @socks;
	for (1 .. 1000)
	{
		my $s = connect_gw() or last;
		push @socks, $s;
	}
	is(scalar @socks, 1000, '1,000 connections opened at once');
	my $request = "GET /v1/billing/balance HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer $key\r\nConnection: close\r\n\r\n";
	syswrite($_, $request) for @socks;
	my $ok = 0;
	my $deadline = time() + 60;
	for my $s (@socks)
	{
		my ($resp) = read_all($s, $deadline - time() > 1 ? $deadline - time() : 1);
		$ok++ if $resp =~ m{^HTTP/1\.1 200 };
		close $s;
	}
	is($ok, 1000, '1,000 concurrent requests: all answered 200');
}
still_serving('1,000 connections');

# ---- the connection cap: past --max-connections, new connections wait in
# the listen backlog until a slot frees; nothing is served beyond the cap
{
	my $capped = EnvoismsTest::start_gateway($node, args => ['--max-connections', '20']);
	my @idle = grep { defined } map {
		IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $capped->{port}, Timeout => 2)
	} 1 .. 20;
	is(scalar @idle, 20, '20 idle connections hold every slot of --max-connections 20');
	sleep 0.3;
	my $extra = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $capped->{port}, Timeout => 2);
	syswrite($extra, "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
	my ($resp) = read_all($extra, 1.5);
	is($resp, '', 'the 21st connection is not served while the cap is reached');
	close $_ for @idle;
	($resp) = read_all($extra, 10);
	like($resp, qr{^HTTP/1\.1 200 }, 'it is served as soon as a slot frees');
	is(EnvoismsTest::stop_gateway($capped), 0, 'the capped gateway stops cleanly');
}

# ---- a client that sends one byte a second is dropped (--timeout 3)
{
	my $sock = connect_gw();
	local $SIG{PIPE} = 'IGNORE';
	my $request = "POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer $key\r\nContent-Length: 40\r\n\r\n";
	my $t0 = time();
	my $dropped;
	for my $byte (split //, $request)
	{
		my $n = syswrite($sock, $byte);
		my $rin = '';
		vec($rin, fileno($sock), 1) = 1;
		if (!$n || (select(my $rout = $rin, undef, undef, 1) && !sysread($sock, my $x, 1)))
		{
			$dropped = time() - $t0;
			last;
		}
		# a well-behaved client meanwhile is served
		if (int(time() - $t0) == 1)
		{
			my ($s) = EnvoismsTest::http('GET', "$url/healthz");
			is($s, 200, 'others are served while a slow client trickles') if $s;
		}
		last if time() - $t0 > 15;
	}
	ok(defined $dropped, 'a client sending 1 byte/s is dropped');
	ok(defined $dropped && $dropped < 6, sprintf('... within --timeout 3 s plus a second (%.1f s)', $dropped // -1));
}
still_serving('a slow client');

is(EnvoismsTest::stop_gateway($gw), 0, 'SIGTERM: the gateway exits 0');
done_testing();
