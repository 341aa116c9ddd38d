# 052_gateway_resilience.pl — the gateway around a database that goes away,
# a shutdown with requests in flight, and a client address that cannot be
# spoofed with X-Forwarded-For.
use strict;
use warnings;

use IO::Socket::INET;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

use EnvoismsTest;

my $node = EnvoismsTest::node('resilience');
my (undef, $key) = EnvoismsTest::demo_key($node, rate_limit => undef);
my %auth = (Authorization => "Bearer $key", 'Content-Type' => 'application/json');
my $send = '{"to": "+212612345678", "message": "Bonjour"}';

# ---- the database stopped and started under a running gateway
{
	my $gw = EnvoismsTest::start_gateway($node, args => ['--threads', '4']);
	my ($s) = EnvoismsTest::http('POST', "$gw->{url}/v1/messages", \%auth, $send);
	is($s, 201, 'before the outage: a send succeeds');

	$node->stop('fast');
	my ($s1, $h1, $c1) = EnvoismsTest::http('POST', "$gw->{url}/v1/messages", \%auth, $send);
	is($s1, 503, 'database down: 503');
	is(EnvoismsTest::json($c1)->{error}{code}, 'SERVICE_UNAVAILABLE', 'database down: SERVICE_UNAVAILABLE envelope');
	like($h1->{'retry-after'} // '', qr/^\d+$/, 'database down: Retry-After');
	my @down = map { (EnvoismsTest::http('GET', "$gw->{url}/v1/billing/balance", \%auth))[0] } 1 .. 10;
	is_deeply(\@down, [(503) x 10], 'database down: every request is a 503, none hangs');
	my ($hs) = EnvoismsTest::http('GET', "$gw->{url}/healthz");
	is($hs, 503, 'database down: /healthz is 503');

	$node->start;
	my $t0 = time();
	my $up;
	while (time() - $t0 < 15)
	{
		my ($st) = EnvoismsTest::http('POST', "$gw->{url}/v1/messages", \%auth, $send);
		if ($st == 201) { $up = time() - $t0; last; }
		sleep 0.2;
	}
	ok(defined $up, sprintf('database back: sends succeed again without restarting the gateway (after %.1f s)', $up // -1));
	my @after = map { (EnvoismsTest::http('GET', "$gw->{url}/v1/billing/balance", \%auth))[0] } 1 .. 20;
	is_deeply(\@after, [(200) x 20], 'database back: every pooled connection works again');
	($hs) = EnvoismsTest::http('GET', "$gw->{url}/healthz");
	is($hs, 200, 'database back: /healthz is 200');

	# a backend killed under an idle pooled connection is replaced, not reported
	$node->safe_psql('envoisms', "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'envoisms-gateway'");
	sleep 0.2;
	my @killed = map { (EnvoismsTest::http('POST', "$gw->{url}/v1/messages", \%auth, $send))[0] } 1 .. 8;
	is_deeply(\@killed, [(201) x 8], 'backends terminated while idle: the next sends reconnect and succeed');

	my (undef, undef, $metrics) = EnvoismsTest::http('GET', "$gw->{url}/metrics");
	my ($connect_errors) = $metrics =~ /^envoisms_gateway_db_errors_total\{kind="connect"\} (\d+)$/m;
	ok($connect_errors > 0, "/metrics counted the failed connects ($connect_errors)");
	is(EnvoismsTest::stop_gateway($gw), 0, 'the gateway exits 0');
}

# ---- SIGTERM with requests in flight: all answered, then exit 0
{
	my $gw = EnvoismsTest::start_gateway($node, args => ['--threads', '16']);
	# hold every API call on a lock so that requests are surely in flight
	my $blocker = $node->background_psql('envoisms');
	$blocker->query_safe('BEGIN; LOCK TABLE envoisms.api_keys IN ACCESS EXCLUSIVE MODE;');
	my @socks;
	my $waiting = 0;
	for (1 .. 8)
	{
		my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $gw->{port}, Timeout => 5);
		syswrite($s, "POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer $key\r\n"
			  . "Content-Type: application/json\r\nContent-Length: " . length($send) . "\r\n\r\n$send");
		push @socks, $s;
		sleep 0.1;
	}
	for (1 .. 100)
	{
		$waiting = $node->safe_psql('envoisms',
			"SELECT count(*) FROM pg_stat_activity WHERE application_name = 'envoisms-gateway' AND wait_event_type = 'Lock'");
		last if $waiting >= 8;
		sleep 0.1;
	}
	ok($waiting >= 1, "requests are in flight, $waiting of 8 waiting in the database (others queued behind them)");
	kill 'TERM', $gw->{pid};
	sleep 0.5;
	my $late = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $gw->{port}, Timeout => 2);
	ok(!$late, 'after SIGTERM new connections are refused');
	ok(kill(0, $gw->{pid}), 'the gateway waits for the requests in flight');
	$blocker->query_safe('COMMIT;');
	$blocker->quit;
	my $answered = 0;
	for my $s (@socks)
	{
		my $resp = '';
		my $deadline = time() + 20;
		while (time() < $deadline)
		{
			my $n = sysread($s, my $chunk, 65536);
			last unless $n;
			$resp .= $chunk;
			last if $resp =~ /\r\n\r\n.*\}\s*$/s;
		}
		$answered++ if $resp =~ m{^HTTP/1\.1 201 };
	}
	is($answered, 8, 'all 8 requests in flight at SIGTERM were answered 201');
	is(EnvoismsTest::stop_gateway($gw), 0, 'then the gateway exits 0');
	like(slurp_file($gw->{log}), qr/"message":"stopped"/, 'the log says it stopped');
}

# ---- X-Forwarded-For: believed only from a trusted proxy
{
	my (undef, $pinned) = EnvoismsTest::demo_key($node, ip_whitelist => ['203.0.113.9'], rate_limit => undef);
	my %pin = (Authorization => "Bearer $pinned");
	my $direct = EnvoismsTest::start_gateway($node);
	my $proxied = EnvoismsTest::start_gateway($node, args => ['--trusted-proxy', '127.0.0.1/32',
		'--trusted-proxy', '10.0.0.0/8']);
	my $get = sub {
		my ($gw, $xff) = @_;
		my ($s, undef, $c) = EnvoismsTest::http('GET', "$gw->{url}/v1/billing/balance",
			{ %pin, defined $xff ? ('X-Forwarded-For' => $xff) : () });
		return $s;
	};
	is($get->($direct, undef), 401, 'a key pinned to 203.0.113.9, called from 127.0.0.1: 401');
	is($get->($direct, '203.0.113.9'), 401, 'X-Forwarded-For: 203.0.113.9 from an untrusted peer is ignored: 401');
	is($get->($direct, '203.0.113.9, 203.0.113.9'), 401, '... however it is repeated');
	is($get->($proxied, '203.0.113.9'), 200, 'the same header from a trusted proxy is believed: 200');
	is($get->($proxied, '203.0.113.9, 10.1.2.3'), 200, 'trusted hops on the right are skipped: 200');
	is($get->($proxied, '203.0.113.9, 198.51.100.7'), 401,
		'the right-most untrusted address is the client, not a spoofed left one: 401');
	is($get->($proxied, 'not-an-address'), 401, 'a malformed X-Forwarded-For falls back to the peer: 401');
	is($get->($proxied, undef), 401, 'a trusted proxy without X-Forwarded-For is the client itself: 401');
	EnvoismsTest::stop_gateway($_) for $direct, $proxied;
}

done_testing();
