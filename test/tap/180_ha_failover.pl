# High availability (docs/ha.md): a pg_auto_failover monitor and two nodes
# on loopback, brought up by scripts/run-ha.sh with short health checks; the
# gateway on both nodes (target_session_attrs=read-write); eight clients
# sending paid messages without Idempotency-Key; a slow HTTP carrier, so
# transfers are in flight; webhooks to a slow local receiver. The primary's
# machine dies (kill -9 of its keeper's process group: keeper and
# postmaster) mid-load, then once more during a bulk of 10,000; then only
# the primary's postmaster dies and its keeper restarts it in place, its
# workers starting there before the monitor has decided. After each:
#   - every request answered 2xx is one message, debited once; no request
#     answered 503 committed (the gateway's request token); no duplicate;
#   - the leases the dead primary's workers held are released when the
#     workers start on the promoted node: the queue is sent within seconds
#     of the promotion, not after envoisms.dispatch_lease (60 s);
#   - every sent message's webhook event reaches the receiver;
#   - balance_check() holds; the old primary rejoins as a standby.
# The rounds take about a minute each on two busy cores (tests' short
# health checks: a dead primary is noticed in 2 s, the demote timeout 5 s).
# Figures (failover time, 503s, outcomes recovered by token, promotion to
# first re-sent transfer) are printed as notes.
use strict;
use warnings;

use EnvoismsPeers;
use EnvoismsTest;
use File::Basename qw(dirname);
use IPC::Run;
use POSIX ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use Time::Local qw(timegm);

my $bindir = `pg_config --bindir`;
chomp $bindir;
# (from PATH: `command -v` is a shell builtin, which backticks without
# shell characters do not run through a shell)
my $autoctl = -x "$bindir/pg_autoctl" ? "$bindir/pg_autoctl"
  : ((grep { -x } map { "$_/pg_autoctl" } split /:/, $ENV{PATH})[0] // '');
ok(-x $autoctl, 'pg_autoctl is installed (postgresql-15-auto-failover, scripts/deps.sh)')
  or BAIL_OUT('pg_autoctl is missing');
$ENV{PATH} = dirname($autoctl) . ":$ENV{PATH}";

my $dir = "$PostgreSQL::Test::Utils::tmp_check/ha";
my @ports = map { PostgreSQL::Test::Cluster::get_free_port() } 1 .. 3;
my ($a_port, $b_port) = @ports[ 1, 2 ];
my %port_of = (a => $a_port, b => $b_port);
my $carrier = EnvoismsPeers::start('carrier_peer.js', '--delay', 400);
my $secret = 'whsec_ha_test_secret';
my $receiver = EnvoismsPeers::start('webhook_receiver.js', '--secret', $secret, '--delay', 100);

my %ha_env = (
	ENVOISMS_PGBIN       => $bindir,
	ENVOISMS_HA_DIR      => $dir,
	ENVOISMS_HA_PORTS    => "@ports",
	ENVOISMS_HA_GATEWAY  => 0,
	ENVOISMS_HA_NO_BUILD => 1,
	ENVOISMS_HA_FAST     => 1,
	ENVOISMS_HA_CONF     => join("\n",
		EnvoismsPeers::worker_conf(
			'envoisms.dispatch_workers = 2',
			'envoisms.carrier_max_connections = 256',
			'envoisms.webhook_max_per_endpoint = 200',
			'envoisms.webhook_retry_scale = 0.002')));

# Runs scripts/run-ha.sh (the same command an operator runs); dies on failure.
sub run_ha
{
	my @args = @_;
	local %ENV = (%ENV, %ha_env);
	my $out = "$PostgreSQL::Test::Utils::log_path/run-ha.out";
	system("bash $EnvoismsTest::ROOT/scripts/run-ha.sh @args >> $out 2>&1") == 0
	  or die "run-ha.sh @args failed:\n" . slurp_file($out) . "\n" . join("\n",
		map { -e "$dir/log/$_.log" ? "---- $_\n" . substr(slurp_file("$dir/log/$_.log"), -4000) : '' } qw(monitor a b));
}

END
{
	local $?;
	run_ha('--stop') if -d $dir;
}

# `pg_autoctl show state` as { name => "reported/assigned" }.
sub states
{
	local %ENV = (%ENV, XDG_CONFIG_HOME => "$dir/xdg/config", XDG_DATA_HOME => "$dir/xdg/data",
		XDG_RUNTIME_DIR => "$dir/xdg/run", PGHOST => "$dir/run");
	my %s;
	for my $line (split /\n/, `$autoctl show state --pgdata $dir/monitor 2>/dev/null`)
	{
		my @f = map { s/^\s+|\s+$//gr } split /\|/, $line;
		$s{ $f[0] } = "$f[5]/$f[6]" if @f >= 7 && $f[0] =~ /^[ab]$/;
	}
	return \%s;
}

# One psql command on a node; its output, or undef when it failed.
sub psql_at
{
	my ($port, $sql) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run([ 'psql', '-X', '-A', '-t', '-q', '-h', '127.0.0.1', '-p', $port, '-d', 'envoisms',
		'-v', 'ON_ERROR_STOP=1', '-c', $sql ], '<', \'', '>', \$out, '2>', \$err)
	  or do { note "psql on $port: " . substr($err, 0, 300); return undef };
	chomp $out;
	return $out;
}

my $started = time();
run_ha();
is_deeply(states(), { a => 'primary/primary', b => 'secondary/secondary' }, 'monitor, primary a and standby b are up');
note sprintf('the profile came up in %.1f s', time() - $started);
is(psql_at($a_port, 'SHOW synchronous_standby_names'), 'ANY 1 (pgautofailover_standby_2)',
	'replication to the standby is synchronous');

my $conninfo = "host=127.0.0.1,127.0.0.1 port=$a_port,$b_port dbname=envoisms target_session_attrs=read-write connect_timeout=2";
my $setup = psql_at($a_port, qq{
	INSERT INTO envoisms.carriers (carrier_id, kind, config) VALUES ('peer', 'http', '{"url": "$carrier->{url}/send"}');
	INSERT INTO envoisms.routes (channel, prefix, carrier_id, priority) VALUES ('sms', '', 'peer', 0);
	SELECT a || ' ' || (envoisms.api_key_create(a, 'HA key', live => true, rate_limit => 1000000)->>'api_key')
	       || ' ' || (envoisms.webhook_create(a, '$receiver->{url}/hook', '{message.sent}', '$secret')->>'id')
	  FROM envoisms.account_create('HA account', 100000) a;
});
my ($account, $key) = split / /, $setup // '';
ok($key && $key =~ /^env_live_/, 'a paying account with a live key and a webhook');
my $gw = EnvoismsTest::start_gateway(undef, db => $conninfo);

# ---- the clients: each POSTs one message after another until told to stop,
# and writes "tag status start end message_id recovered" per request
my $stopfile = "$dir/stop-clients";

sub start_clients
{
	my ($round, $count) = @_;
	unlink $stopfile;
	my @pids;
	for my $c (1 .. $count)
	{
		my $pid = fork();
		die "fork: $!" unless defined $pid;
		if ($pid == 0)
		{
			open(my $out, '>', "$dir/client-$round-$c.log") or die;
			$out->autoflush(1);
			for (my $i = 0; !-e $stopfile; $i++)
			{
				my $tag = "$round-c$c-$i";
				my $t0 = time();
				my ($status, $headers, $body) = EnvoismsTest::http('POST', "$gw->{url}/v1/messages",
					{ Authorization => "Bearer $key", 'Content-Type' => 'application/json' },
					sprintf('{"to": "+2126%08d", "message": "%s"}', 10_000_000 + $c * 100_000 + $i, $tag),
					timeout => 60);
				my $id = $status == 201 ? (EnvoismsTest::json($body) // {})->{id} // '-' : '-';
				printf $out "%s %d %.3f %.3f %s %s\n", $tag, $status, $t0, time(), $id,
				  ($headers->{'envoisms-recovered'} // 'no');
				usleep(20_000) if $status == 503;
			}
			close $out;
			POSIX::_exit(0);    # not exit: the END blocks would stop the cluster and the peers
		}
		push @pids, $pid;
	}
	return \@pids;
}

sub stop_clients
{
	my ($round, $pids) = @_;
	open(my $fh, '>', $stopfile) or die;
	close $fh;
	waitpid($_, 0) for @$pids;
	my @requests;
	for my $f (glob "$dir/client-$round-*.log")
	{
		for (split /\n/, slurp_file($f))
		{
			my ($tag, $status, $t0, $t1, $id, $recovered) = split / /;
			push @requests, { tag => $tag, status => $status, t0 => $t0, t1 => $t1, id => $id, recovered => $recovered };
		}
	}
	return @requests;
}

sub metric
{
	my ($name) = @_;
	my (undef, undef, $text) = EnvoismsTest::http('GET', "$gw->{url}/metrics");
	return $text =~ /^\Q$name\E (\d+)/m ? $1 : 0;
}

# Kills the primary's machine: its keeper's process group, keeper and postmaster.
sub kill_primary
{
	my ($name) = @_;
	my $pgid = slurp_file("$dir/$name.keeper.pid");
	chomp $pgid;
	kill 'KILL', -$pgid;
	return time();
}

# Waits until the monitor has the other node serve writes: it is promoted
# at once but kept read-only until the old primary is demoted or timed out
# (wait_primary); returns when it did.
sub wait_promotion
{
	my ($name) = @_;
	my $deadline = time() + 90;
	while (time() < $deadline)
	{
		return time() if (states()->{$name} // '') eq 'wait_primary/wait_primary';
		usleep(50_000);
	}
	return undef;
}

# Waits until a client's request sent after $t succeeded, then $more
# seconds; returns when the first such request was answered.
sub wait_served_after
{
	my ($round, $t, $more) = @_;
	my $served;
	EnvoismsPeers::wait_until(sub {
		($served) = sort { $a <=> $b } map { my @f = split / /; $f[1] == 201 && $f[2] > $t ? $f[3] : () }
		  map { split /\n/, slurp_file($_) } glob "$dir/client-$round-*.log";
		defined $served }, 60);
	EnvoismsPeers::wait_until(sub { 0 }, $more);
	return $served;
}

# Whether a node's dispatcher released leases at its start after time $t
# (its server log; pg_autoctl starts it anew when it restarts the server).
sub released_since
{
	my ($name, $t) = @_;
	my $log = -e "$dir/$name/startup.log" ? slurp_file("$dir/$name/startup.log") : '';
	for ($log =~ /^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) UTC .*released \d+ message leases left by the previous server run/mg)
	{
		my ($y, $mo, $d, $h, $mi, $sec) = /^(\d+)-(\d+)-(\d+) (\d+):(\d+):([\d.]+)/;
		return 1 if timegm(0, $mi, $h, $d, $mo - 1, $y) + $sec > $t;
	}
	return 0;
}

# Everything a round promises, on the promoted node; $extra_tags are tags
# of other requests (the bulk) that must not be counted as clients'.
sub check_round
{
	my (%r) = @_;
	my ($name, $port, $killed, $promoted, $requests, $round) = @r{qw(name port killed promoted requests round)};
	my @ok = grep { $_->{status} == 201 } @$requests;
	my @unavailable = grep { $_->{status} == 503 } @$requests;
	my @other = grep { $_->{status} != 201 && $_->{status} != 503 } @$requests;
	my ($last_before) = sort { $b <=> $a } map { $_->{t1} } grep { $_->{t1} < $killed } @ok;
	# the outage starts with the first refusal (a request may still be
	# answered in the instant after the kill)
	my ($first_refusal) = sort { $a <=> $b } map { $_->{t1} } grep { $_->{t1} > $killed } @unavailable;
	my ($first_after) = sort { $a <=> $b } map { $_->{t1} } grep { $_->{t0} > ($first_refusal // $killed) } @ok;
	note sprintf('%s: %d requests, %d answered 201, %d answered 503, %d recovered by token; '
		  . 'failover %.1f s (last success before the kill to first after), promotion %.1f s after the kill',
		$round, scalar(@$requests), scalar(@ok), scalar(@unavailable),
		scalar(grep { $_->{recovered} eq 'true' } @ok),
		($first_after // 0) - ($last_before // 0), $promoted - $killed);
	is(scalar(@other), 0, "$round: every request answered 201 or 503")
	  or diag explain [ @other[ 0 .. 4 ] ];
	ok(defined $first_after, "$round: the same gateway serves again after the switch");

	my %rows = map { my ($t, $id, $n) = split /\|/; ($t => [ $id, $n ]) } split /\n/, psql_at($port, qq{
		SELECT body, min(message_id), count(*) FROM envoisms.messages WHERE body LIKE '$round-%' GROUP BY body});
	my @missing = grep { !$rows{ $_->{tag} } || $rows{ $_->{tag} }[0] ne $_->{id} } @ok;
	is(scalar(@missing), 0, "$round: every request answered 201 is its message on the new primary")
	  or diag explain { rows => scalar(keys %rows), missing => [ @missing[ 0 .. 2 ] ],
		some_rows => [ (sort keys %rows)[ 0 .. 2 ] ] };
	is(scalar(grep { $_->[1] != 1 } values %rows), 0, "$round: no request made two messages");
	is(scalar(grep { $rows{ $_->{tag} } } @unavailable), 0, "$round: no request answered 503 committed");
	is(psql_at($port, "SELECT bool_and(ok) FROM envoisms.balance_check()"), 't', "$round: the books balance");
	is(psql_at($port, "SELECT count(*) FROM envoisms.messages WHERE account_id = '$account' AND charged_mad <> 0.31"),
		'0', "$round: every message debited once, at its price");

	# the queue, in flight at the kill, goes out within seconds of the promotion
	ok(EnvoismsPeers::wait_until(sub {
		(psql_at($port, "SELECT count(*) FROM envoisms.messages WHERE status = 'queued'") // 1) == 0 }, 45),
		"$round: every queued message is sent, long before the 60 s lease");
	my $sent_by = time();
	my %first;
	my @resent;
	for my $req (EnvoismsPeers::log_lines($carrier))
	{
		next unless ($req->{body}{body} // '') =~ /^\Q$round\E-/;
		push @resent, $req->{at} if exists $first{ $req->{id} } && $first{ $req->{id} } < $killed && $req->{at} > $killed;
		$first{ $req->{id} } //= $req->{at};
	}
	my ($first_resent) = sort { $a <=> $b } @resent;
	note sprintf('%s: %d transfers were in flight at the kill and sent again; the first %.1f s after the promotion; queue empty %.1f s after it',
		$round, scalar(@resent), ($first_resent // 0) - $promoted, $sent_by - $promoted);
	ok(@resent > 0, "$round: transfers were in flight at the kill")
	  or diag explain { carrier_requests => scalar(keys %first), sample => [ (EnvoismsPeers::log_lines($carrier))[ 0 .. 1 ] ] };
	ok(defined $first_resent && $first_resent - $promoted < 15,
		"$round: the dead primary's leases were released when the workers started on the serving node");
	ok(released_since($name, $killed), "$round: the serving node's dispatcher says so");
	my $missing = psql_at($port, "SELECT count(*) FROM envoisms.messages WHERE body LIKE '$round-%' AND status = 'queued'");
	is($missing, '0', "$round: nothing left queued");

	# every sent message's webhook event reaches the receiver (at least once)
	my @sent = split /\n/, psql_at($port, "SELECT message_id FROM envoisms.messages WHERE body LIKE '$round-%' AND status = 'sent'");
	ok(EnvoismsPeers::wait_until(sub {
		my %ids = map { (($_->{message_id} // '') => 1) }
		  grep { $_->{type} && $_->{type} eq 'message.sent' && $_->{sig_ok} } EnvoismsPeers::log_lines($receiver);
		!grep { !$ids{$_} } @sent }, 90), "$round: every message.sent webhook delivered, signed (" . scalar(@sent) . ')');
}

sub rejoin
{
	my ($round, $want) = @_;
	my $t = time();
	run_ha();
	is_deeply(states(), $want, "$round: the old primary rejoined as a standby");
	note sprintf('%s: rejoined in %.1f s', $round, time() - $t);
}

# ---- round 1: the primary dies under steady load
my $pids = start_clients('r1', 8);
sleep 3;
my $killed = kill_primary('a');
my $promoted = wait_promotion('b');
ok($promoted, 'r1: b was promoted');
wait_served_after('r1', $promoted, 3);
my @requests = stop_clients('r1', $pids);
check_round(name => 'b', port => $b_port, killed => $killed, promoted => $promoted, requests => \@requests,
	round => 'r1');
rejoin('r1', { a => 'secondary/secondary', b => 'primary/primary' });

# ---- round 2: the primary dies during a bulk of 10,000
$pids = start_clients('r2', 8);
sleep 2;
my $bulk_pid = fork();
die "fork: $!" unless defined $bulk_pid;
if ($bulk_pid == 0)
{
	my $msgs = join(',', map { sprintf('{"to": "+2127%08d", "message": "r2-bulk-%d"}', $_, $_) } 1 .. 10_000);
	my ($status, $headers, $body) = EnvoismsTest::http('POST', "$gw->{url}/v1/messages/bulk",
		{ Authorization => "Bearer $key", 'Content-Type' => 'application/json' }, qq({"messages": [$msgs]}),
		timeout => 120);
	open(my $out, '>', "$dir/bulk.out") or die;
	print $out "$status " . ($headers->{'envoisms-recovered'} // 'no') . "\n$body\n";
	close $out;
	POSIX::_exit(0);
}
# the bulk is the one call of envoisms.api_once that runs for long
ok(EnvoismsPeers::wait_until(sub {
	(psql_at($b_port, "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%api_once%'
	                   AND now() - query_start > interval '150 ms'") // 0) > 0 }, 30),
	'r2: the bulk is running');
$killed = kill_primary('b');
$promoted = wait_promotion('a');
ok($promoted, 'r2: a was promoted');
waitpid($bulk_pid, 0);
wait_served_after('r2', $promoted, 2);
@requests = stop_clients('r2', $pids);
my ($bulk_status, $bulk_body) = split /\n/, slurp_file("$dir/bulk.out"), 2;
note "r2: the bulk was answered $bulk_status";
like($bulk_status, qr/^201 /, 'r2: the bulk interrupted by the kill is answered 201');
my $bulk = EnvoismsTest::json($bulk_body) // {};
is(psql_at($a_port, "SELECT count(*) || ' ' || count(DISTINCT batch_id) FROM envoisms.messages WHERE body LIKE 'r2-bulk-%'"),
	'10000 1', 'r2: the bulk is 10,000 messages, once');
is(psql_at($a_port, "SELECT min(batch_id) FROM envoisms.messages WHERE body LIKE 'r2-bulk-%'"),
	$bulk->{batch_id} // $bulk->{id}, 'r2: the batch answered is the one stored');
my $bulk_at = (stat "$dir/bulk.out")[9];
note sprintf('r2: the bulk was answered %.0f s after the kill', $bulk_at - $killed);
check_round(name => 'a', port => $a_port, killed => $killed, promoted => $promoted,
	requests => \@requests, round => 'r2');
rejoin('r2', { a => 'primary/primary', b => 'secondary/secondary' });

# ---- round 3: only the primary's postmaster dies. Its keeper restarts it
# in place, as primary, before or while the monitor decides; its workers
# start there. Whichever node ends up primary has everything once.
$pids = start_clients('r3', 8);
sleep 2;
my ($postmaster) = split /\n/, slurp_file("$dir/a/postmaster.pid");
$killed = time();
kill 'KILL', $postmaster;
my $served = wait_served_after('r3', $killed, 3);
ok($served, 'r3: the gateway serves again after the postmaster was killed');
@requests = stop_clients('r3', $pids);
my $settled;
EnvoismsPeers::wait_until(sub {
	my $st = states();
	my @p = grep { $st->{$_} eq 'primary/primary' } keys %$st;
	$settled = @p == 1 && (grep { $st->{$_} eq 'secondary/secondary' } keys %$st) ? $p[0] : undef;
	defined $settled }, 90);
ok($settled, 'r3: a primary and its standby again')
  or diag explain { states => states(), a_log => [ (split /\n/, slurp_file("$dir/a/startup.log"))[-25 .. -1] ] };
$settled //= 'a';
note "r3: $settled is the primary after the restart in place";
check_round(name => $settled, port => $port_of{$settled}, killed => $killed, promoted => $served,
	requests => \@requests, round => 'r3');

note sprintf('gateway outcomes: recovered %d, replayed %d, unknown %d',
	metric('envoisms_gateway_outcomes_total{kind="recovered"}'),
	metric('envoisms_gateway_outcomes_total{kind="replayed"}'),
	metric('envoisms_gateway_outcomes_total{kind="unknown"}'));
is(metric('envoisms_gateway_outcomes_total{kind="unknown"}'), 0, 'no write request was left with an unknown outcome');
EnvoismsTest::stop_gateway($gw);
note sprintf('the whole test took %.0f s', time() - $started);
done_testing();
