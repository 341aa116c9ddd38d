# Workers, leak check: the dispatcher's private memory (RssAnon: its heap,
# not the shared buffers it touches) after N sandbox messages stays within
# 10% of what it was after the first 20k (caches and the allocator's
# high-water mark settle within them). The full check is 200k vs 20k; that
# takes minutes on 2 cores, so the suite runs 60k vs 20k by default and
# ENVOISMS_LEAK_MESSAGES=200000 runs the full check.
use strict;
use warnings;

use EnvoismsPeers;
use EnvoismsTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $total = $ENV{ENVOISMS_LEAK_MESSAGES} // 60000;
my $warm = 20000;

my $node = EnvoismsTest::node('leak', conf => [ EnvoismsPeers::worker_conf(
	"envoisms.sandbox_delivery_delay = 0", "envoisms.webhook_workers = 0") ]);
my $q = sub { $node->safe_psql('envoisms', shift) };
my $account = $q->("SELECT envoisms.account_create('Leak account', 0)");

my $sent = 0;
my $send = sub {
	my ($upto) = @_;
	while ($sent < $upto)
	{
		my $n = $upto - $sent < 10000 ? $upto - $sent : 10000;
		$q->("SELECT envoisms.message_send_bulk('$account',
		        (SELECT jsonb_agg(jsonb_build_object('to', '+2126' || (10000001 + 10 * g), 'message', 'leak ' || g))
		           FROM generate_series($sent + 1, $sent + $n) g), sandbox => true)->>'batch_id'");
		$sent += $n;
	}
	return EnvoismsPeers::wait_until(sub {
		$q->("SELECT count(*) FROM envoisms.messages WHERE status = 'delivered'") >= $upto }, 600);
};
my $rss = sub {
	my $pid = EnvoismsPeers::worker_pid($node, 'envoisms dispatcher 0');
	my ($kb) = slurp_file("/proc/$pid/status") =~ /^RssAnon:\s+(\d+) kB/m;
	return ($pid, $kb);
};

ok(EnvoismsPeers::wait_until(sub { EnvoismsPeers::worker_pid($node, 'envoisms dispatcher 0') }, 30), 'dispatcher running');
ok($send->($warm), "$warm sandbox messages delivered");
my ($pid1, $rss1) = $rss->();
ok($send->($total), "$total sandbox messages delivered");
my ($pid2, $rss2) = $rss->();
is($pid2, $pid1, 'the same dispatcher process did all the work');
note "dispatcher RssAnon: $rss1 kB after $warm, $rss2 kB after $total";
ok($rss2 <= $rss1 * 1.10, "RssAnon after $total ($rss2 kB) within 10% of after $warm ($rss1 kB)");
is($q->("SELECT claimed FROM envoisms.worker_stats WHERE worker = 'envoisms dispatcher 0'"), $total, 'every message claimed once');

$node->stop;
done_testing();
