# 400_citus_cluster.pl — envoisms on a Citus cluster (docs/scale.md): a
# coordinator and two workers on loopback, the schema distributed by
# envoisms.distribute(). The layout (every table placed, an account's
# shards on one node, accounts on both workers); the contract's curl
# examples through a gateway on the coordinator (050_gateway_contract.pl
# run against such a cluster); a send in one call to the account's node;
# the caches' isolation specs against the coordinator;
# dispatch from both workers' shards to a real carrier; concurrent sends on
# one account through two gateways never overdraw; a third worker added and
# the shards rebalanced under sends and dispatch, nothing lost, no message
# sent twice under two ids, the books exact.
#
# Skipped, with one line saying why, when the PostgreSQL in use has no
# Citus (scripts/citus.sh installs it).
use strict;
use warnings;

use EnvoismsPeers;
use IPC::Run;
use EnvoismsTest;
use JSON::PP;
use POSIX ();
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

plan skip_all => 'Citus is not installed in this PostgreSQL (scripts/citus.sh builds it)'
  unless EnvoismsTest::citus_available();

my $conf = [ EnvoismsPeers::worker_conf('envoisms.dispatch_workers = 1', 'envoisms.dispatch_lease = 5s') ];
my ($coord, @workers) = EnvoismsTest::citus_cluster('citus', conf => $conf, shard_count => 4);
my $q = sub { $coord->safe_psql('envoisms', shift) };

# ---- the layout
my ($placed, $wrong) = split /\|/, $q->(q{
	SELECT count(*) || '|' || count(*) FILTER (WHERE d.partmethod IS DISTINCT FROM
	                                               CASE l.kind WHEN 'reference' THEN 'n' WHEN 'distributed' THEN 'h' END)
	  FROM envoisms.cluster_layout() l LEFT JOIN pg_dist_partition d ON d.logicalrelid = l.table_name});
is($wrong, 0, "each of the $placed envoisms tables is a reference table, distributed or left local, as cluster_layout() says");
is($q->(q{SELECT count(DISTINCT d.colocationid) FROM pg_dist_partition d
           JOIN envoisms.cluster_layout() l ON l.table_name = d.logicalrelid WHERE l.kind = 'distributed'}),
	1, 'every distributed table is co-located with messages');
is($q->(q{SELECT count(*) FROM pg_class c WHERE c.relnamespace = 'envoisms'::regnamespace AND c.relkind = 'r'
            AND c.oid NOT IN (SELECT table_name FROM envoisms.cluster_layout())
            AND c.oid NOT IN (SELECT logicalrelid FROM pg_dist_partition)
            AND c.relname !~ '_[0-9]+$'}), 0, 'no envoisms table is left out of the layout');
is($q->('SELECT count(*) FROM envoisms.distribute()'), 0, 'distribute() a second time changes nothing');

my $groups_of = sub {    # the node groups holding an account's shard of every distributed table
	my ($acc) = @_;
	return $q->(qq{SELECT string_agg(DISTINCT p.groupid::text, ',')
	                 FROM envoisms.cluster_layout() l
	                 JOIN pg_dist_placement p ON p.shardid = get_shard_id_for_distribution_column(l.table_name, '$acc')
	                WHERE l.kind = 'distributed'});
};
# accounts until each worker holds at least 3 (ids are random: a fixed
# number could, rarely, all hash to one worker)
my (@accounts, %groups, %first_of, $split);
while (@accounts < 40 && (keys(%groups) < 2 || grep { $_ < 3 } values %groups))
{
	my $acc = $q->("SELECT envoisms.account_create('Account " . (@accounts + 1) . "', 100)");
	my $g = $groups_of->($acc);
	$split++ if $g =~ /,/;
	$groups{$g}++;
	$first_of{$g} //= $acc;
	push @accounts, $acc;
}
ok(!$split, scalar(@accounts) . ' accounts: the rows of each, in every distributed table, are on one node');
is(scalar(keys %groups), 2, 'the accounts are spread over both workers: ' . join(', ', map { "group $_: $groups{$_}" } sort keys %groups));

# ---- the contract's curl examples through a gateway on a coordinator
{
	local $ENV{ENVOISMS_TEST_CITUS} = 1;
	my $out = `prove $EnvoismsTest::ROOT/test/tap/050_gateway_contract.pl 2>&1`;
	is($?, 0, 'the contract suite (050_gateway_contract.pl) passes against a coordinator and two workers')
	  or diag($out);
}

# ---- a send: the account's work runs on its node in one call
my $gw = EnvoismsTest::start_gateway($coord);
my ($acc, $key) = EnvoismsTest::demo_key($coord, live => 1, balance => 100, rate_limit => undef);
my $post = sub {
	my ($url, $key, $body) = @_;
	return EnvoismsTest::http('POST', "$url/v1/messages",
		{ Authorization => "Bearer $key", 'Content-Type' => 'application/json' }, $body);
};
my ($st, undef, $body) = $post->($gw->{url}, $key, '{"to": "+212612345678", "message": "Bonjour"}');
is($st, 201, 'POST /v1/messages through the gateway on the coordinator: 201');
my $id = EnvoismsTest::json($body)->{id};
($st) = EnvoismsTest::http('GET', "$gw->{url}/v1/messages/$id", { Authorization => "Bearer $key" });
is($st, 200, 'GET /v1/messages/:id finds it');
($st, undef, $body) = $post->($gw->{url}, $key, '{"to": "+2126", "message": "Bonjour"}');
is_deeply([ $st, EnvoismsTest::json($body)->{error}{code}, EnvoismsTest::json($body)->{error}{field} ],
	[ 400, 'INVALID_PHONE', 'to' ], 'an error raised on the account node keeps its code and field');

my (undef, undef, $log) = $coord->psql('envoisms', qq{
	SET citus.log_remote_commands = on; SET client_min_messages = log;
	SELECT status FROM envoisms.api('POST', '/v1/messages', '', '{"Authorization": "Bearer $key"}',
	                                '{"to": "+212612345678", "message": "Bonjour"}')});
my @remote = grep { /issuing / } split /\n/, $log;
my @calls = grep { /envoisms\.api_account\(/ } @remote;
is(scalar @calls, 1, 'a send is one call of api_account() on the account\'s node');
ok(@remote <= 4, 'remote commands per send: ' . scalar(@remote)
	  . ' (the call, and BEGIN, RELEASE SAVEPOINT, COMMIT around it)')
  or diag(join("\n", @remote));

# ---- the per-backend caches forget what changed through the coordinator
# (the statement triggers fire on the shards, on every node holding one)
my $cost = sub {
	my ($st, undef, $b) = $post->($gw->{url}, $key, '{"to": "+212612345678", "message": "Bonjour"}');
	return $st == 201 ? EnvoismsTest::json($b)->{cost_mad} : "HTTP $st";
};
is($cost->(), 0.31, 'a send costs the default price');
$q->("INSERT INTO envoisms.prices (account_id, channel, currency, unit_price) VALUES ('$acc', 'sms', 'MAD', 0.25)");
is($cost->(), 0.25, "the account's new price applies to the next send through the same gateway connection");
$q->("DELETE FROM envoisms.prices WHERE account_id = '$acc'");
is($cost->(), 0.31, 'and its removal too');
($st) = $post->($gw->{url}, $key, '{"to": "+212612345670", "message": "Bonjour"}');
is($st, 201, 'a number not opted out: 201');
($st) = EnvoismsTest::http('POST', "$gw->{url}/v1/optouts",
	{ Authorization => "Bearer $key", 'Content-Type' => 'application/json' }, '{"phone": "+212612345670"}');
ok($st == 200 || $st == 201, "the number opts out through the API ($st)");
($st, undef, $body) = $post->($gw->{url}, $key, '{"to": "+212612345670", "message": "Bonjour"}');
is(EnvoismsTest::json($body)->{error}{code}, 'OPTED_OUT', 'the next send to it is refused (OPTED_OUT)');
$q->("UPDATE envoisms.accounts SET status = 'suspended' WHERE account_id = '$acc'");
($st, undef, $body) = $post->($gw->{url}, $key, '{"to": "+212612345678", "message": "Bonjour"}');
is($st, 403, 'a suspended account cannot send at its next request');
$q->("UPDATE envoisms.accounts SET status = 'active' WHERE account_id = '$acc'");
my ($other, $other_key) = EnvoismsTest::demo_key($coord, live => 1, balance => 10, rate_limit => undef);
is(($post->($gw->{url}, $other_key, '{"to": "+212612345678", "message": "Bonjour"}'))[0], 201, 'a key works');
$q->("UPDATE envoisms.api_keys SET active = false, revoked_at = now() WHERE account_id = '$other'");
is(($post->($gw->{url}, $other_key, '{"to": "+212612345678", "message": "Bonjour"}'))[0], 401,
	'revoked through the coordinator, it is refused at its next request');

# The isolation specs of the three caches, run against the coordinator:
# SQL callers there see every committed change, and only committed ones
# (price_cache, account_cache, key_cache, as on one server).
{
	my ($pgxs, $bindir) = (`pg_config --pgxs`, `pg_config --bindir`);
	chomp($pgxs, $bindir);
	(my $isolation_regress = $pgxs) =~ s{src/makefiles/pgxs\.mk$}{src/test/isolation/pg_isolation_regress};
	my $out = "$PostgreSQL::Test::Utils::tmp_check/isolation_cluster";
	mkdir $out;
	my ($stdout, $stderr) = ('', '');
	my $ok = IPC::Run::run([ $isolation_regress, '--use-existing', '--host=' . $coord->host,
			'--port=' . $coord->port, '--dbname=envoisms', '--inputdir=test/isolation', "--outputdir=$out",
			"--bindir=$bindir", qw(price_cache account_cache key_cache) ], '>', \$stdout, '2>', \$stderr);
	ok($ok, 'the caches\' isolation specs pass against the coordinator of a cluster')
	  or diag($stdout . $stderr . (-f "$out/regression.diffs" ? slurp_file("$out/regression.diffs") : ''));
}

# ---- dispatch from both workers to a real carrier
my $carrier = EnvoismsPeers::start('carrier_peer.js');
my $receiver = EnvoismsPeers::start('webhook_receiver.js', '--secret', 'whsec_cluster_suite_0123');
my @hooked = values %first_of;    # one account on each worker
for my $a (@hooked)
{
	$q->("SELECT envoisms.webhook_create('$a', '$receiver->{url}/hook', ARRAY['message.sent'], secret => 'whsec_cluster_suite_0123')");
}
# a rate cap (not reached): the claims' token buckets are a reference table
$q->(qq{INSERT INTO envoisms.carriers (carrier_id, kind, name, config, max_per_second)
          VALUES ('peer', 'http', 'carrier peer', '{"url": "$carrier->{url}/send"}', 10000);
        INSERT INTO envoisms.routes (channel, prefix, carrier_id, priority) VALUES ('sms', '212', 'peer', 0)});
my $n_sent = 0;
for my $a (@accounts)
{
	$q->("SELECT envoisms.message_send('$a', '+2126123456' || lpad(g::text, 2, '0'), 'Bonjour ' || g)
	        FROM generate_series(1, 10) g");
	$n_sent += 10;
}
ok(EnvoismsPeers::wait_until(sub {
	$q->("SELECT count(*) FROM envoisms.messages WHERE carrier_id = 'peer' AND status = 'sent'") >= $n_sent }, 60),
	"the $n_sent queued messages reach the carrier");
my @dispatched = map { $_->safe_psql('envoisms', "SELECT sum(sent) FROM envoisms.worker_stats WHERE kind = 'dispatcher'") } @workers;
ok((grep { $_ > 0 } @dispatched) == 2, "both workers dispatched from their own shards (sent: @dispatched)");
is($coord->safe_psql('envoisms', "SELECT coalesce(sum(sent), 0) FROM envoisms.worker_stats WHERE kind = 'dispatcher'"),
	0, 'the coordinator, which holds no shard, dispatched nothing');
my %seen;
$seen{ $_->{id} }++ for grep { $_->{id} } EnvoismsPeers::log_lines($carrier);
is(scalar(grep { $seen{$_} > 1 } keys %seen), 0, 'no message reached the carrier twice');
my $hooked = $q->("SELECT count(*) FROM envoisms.messages WHERE account_id IN ('$hooked[0]', '$hooked[1]')
                     AND carrier_id = 'peer'");
ok(EnvoismsPeers::wait_until(sub { scalar(EnvoismsPeers::log_lines($receiver)) >= $hooked }, 30),
	"the $hooked message.sent webhooks of two accounts on two workers were delivered");
is($q->("SELECT count(*) FROM envoisms.webhook_deliveries WHERE status <> 'delivered'"), 0,
	'every webhook delivery is delivered, by the webhook workers of the node that holds it');

# ---- money: concurrent sends on one account through two gateways
my $gw2 = EnvoismsTest::start_gateway($workers[0], db => EnvoismsTest::conninfo($workers[0]));
my ($poor, $poor_key) = EnvoismsTest::demo_key($coord, live => 1, balance => 3.10, rate_limit => undef);
my @kids;
for my $k (0 .. 7)
{
	my $pid = fork();
	die "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		my @codes;
		for (1 .. 5)
		{
			my ($s) = $post->(($k % 2 ? $gw2 : $gw)->{url}, $poor_key,
				'{"to": "+212612345678", "message": "Bonjour"}');
			push @codes, $s;
		}
		# _exit: the child must not run the clusters' END blocks (they stop the nodes)
		POSIX::_exit((grep { $_ == 201 } @codes) + 10 * (grep { $_ != 201 && $_ != 402 } @codes));
	}
	push @kids, $pid;
}
my ($accepted, $odd) = (0, 0);
for my $pid (@kids)
{
	waitpid($pid, 0);
	my $r = $? >> 8;
	$accepted += $r % 10;
	$odd += int($r / 10);
}
is($odd, 0, '40 concurrent sends through two gateways: each answered 201 or 402');
is($accepted, 10, 'exactly the 10 sends that 3.10 MAD pays for were accepted');
is($q->("SELECT envoisms.account_balance('$poor')"), '0.0000', 'the balance is 0, never below');
is($q->('SELECT count(*) FROM envoisms.balance_check() WHERE NOT ok'), 0, 'balance_check() holds cluster-wide');

# ---- a third worker, the shards rebalanced under sends and dispatch
my $third = EnvoismsTest::citus_node('citus_w3', conf => $conf, shard_count => 4);
my ($busy, $busy_key) = EnvoismsTest::demo_key($coord, live => 1, balance => 100000, rate_limit => undef);
my $load_log = "$PostgreSQL::Test::Utils::tmp_check/citus_load.ids";
my $load = fork();
die "fork: $!" unless defined $load;
if ($load == 0)
{
	open(my $fh, '>', $load_log) or die "open $load_log: $!";
	$fh->autoflush(1);
	my $stop = 0;
	local $SIG{TERM} = sub { $stop = 1 };
	my $i = 0;
	until ($stop || getppid() == 1)
	{
		my ($s, undef, $b) = $post->(($i % 2 ? $gw2 : $gw)->{url}, $busy_key,
			sprintf('{"to": "+2126123%05d", "message": "under rebalance %d"}', $i % 100000, $i));
		my $answer = $s == 201 ? EnvoismsTest::json($b)->{id} : "status $s $b";
		$answer =~ s/\n/ /g;
		print $fh "$answer\n";
		$i++;
	}
	close $fh;
	POSIX::_exit(0);
}
usleep(500_000);
EnvoismsTest::citus_add_worker($coord, $third);
my $t0 = time();
$q->('SELECT citus_rebalance_start()');
$q->('SELECT citus_rebalance_wait()');
my $rebalance_seconds = time() - $t0;
usleep(2_000_000);    # the load goes on against the new layout
kill 'TERM', $load;
waitpid($load, 0);

my @answers = split /\n/, slurp_file($load_log);
my @ids = grep { /^msg_/ } @answers;
# a send that reaches the account's old node as its shards move is told to
# retry (503, Retry-After) and leaves nothing (api_account())
my @retry = grep { /^status 503 .*SERVICE_UNAVAILABLE/ } @answers;
my @other = grep { !/^msg_/ && !/^status 503 .*SERVICE_UNAVAILABLE/ } @answers;
is(scalar @other, 0, scalar(@answers) . ' sends during the rebalance: each answered 201, or 503 to retry')
  or diag(join("\n", @other, grep { /unexpected error/ } map { split /\n/, slurp_file($_->logfile) } $coord, @workers));
note scalar(@ids) . ' answered 201, ' . scalar(@retry) . ' answered 503 (retry)';
is($q->(q{SELECT count(*) FROM pg_dist_placement p JOIN pg_dist_shard s USING (shardid)
           WHERE s.logicalrelid = 'envoisms.messages'::regclass
             AND p.groupid = (SELECT groupid FROM pg_dist_node WHERE nodeport = } . $third->port . ')') > 0 ? 1 : 0,
	1, sprintf('the third worker holds shards of messages after %.1f s of rebalancing', $rebalance_seconds));
note sprintf('rebalance: %.1f s, %d sends meanwhile', $rebalance_seconds, scalar @ids);
my $list = join(',', map { "'$_'" } @ids);
is($q->("SELECT count(*) FROM envoisms.messages WHERE account_id = '$busy' AND message_id IN ($list)"),
	scalar @ids, 'every message accepted during the rebalance is stored (0 lost)');
ok(EnvoismsPeers::wait_until(sub {
	$q->("SELECT count(*) FROM envoisms.messages WHERE message_id IN ($list) AND status = 'queued'") == 0 }, 60),
	'and every one was dispatched');
%seen = ();
$seen{ $_->{id} }++ for grep { $_->{id} } EnvoismsPeers::log_lines($carrier);
is(scalar(grep { !$seen{$_} } @ids), 0, 'the carrier received every one of them');
my @twice = grep { $seen{$_} > 1 } keys %seen;
note scalar(@twice) . ' messages reached the carrier twice (with their one id, at least once)';
is($q->('SELECT count(*) FROM envoisms.balance_check() WHERE NOT ok'), 0, 'balance_check() holds after the rebalance');
# an account whose shards moved to the new worker: its messages are the
# new worker's to send
my $third_group = $q->('SELECT groupid FROM pg_dist_node WHERE nodeport = ' . $third->port);
my $moved;
for (1 .. 40)
{
	my $a = $q->("SELECT envoisms.account_create('Moved', 100)");
	if ($groups_of->($a) eq $third_group) { $moved = $a; last; }
}
ok($moved, 'an account lives on the new worker');
my $before = $third->safe_psql('envoisms', "SELECT sum(sent) FROM envoisms.worker_stats WHERE kind = 'dispatcher'");
$q->("SELECT envoisms.message_send('$moved', '+21261234' || lpad(g::text, 4, '0'), 'Bonjour') FROM generate_series(1, 10) g");
ok(EnvoismsPeers::wait_until(sub {
	$q->("SELECT count(*) FROM envoisms.messages WHERE account_id = '$moved' AND status = 'queued'") == 0 }, 30)
	  && $third->safe_psql('envoisms', "SELECT sum(sent) FROM envoisms.worker_stats WHERE kind = 'dispatcher'") >= $before + 10,
	'the new worker dispatches the messages of its shards (nothing configured)');

EnvoismsTest::stop_gateway($_) for $gw, $gw2;
done_testing();
