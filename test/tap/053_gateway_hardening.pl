# 053_gateway_hardening.pl — what an adversarial review got through the
# gateway, each case next to the good one: a client address spoofed with
# an X-Forwarded-For (or Forwarded) line of its own ahead of the proxy's;
# HEAD on a GET route. Only loopback connections: the addresses in headers are just strings.
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
