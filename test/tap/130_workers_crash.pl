# Workers, crash and restart: kill -9 of the dispatcher mid-batch (the
# cluster restarts) loses nothing and duplicates only transfers that were
# in flight, with the same message id; pg_ctl stop -m immediate with 1,000
# queued → all sent after the restart; SIGTERM → the dispatcher stops,
# releases the leases of unfinished transfers, and exits.
use strict;
use warnings;

use EnvoismsPeers;
use EnvoismsTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $node = EnvoismsTest::node('crash', conf => [ EnvoismsPeers::worker_conf(
	"restart_after_crash = on",
	"envoisms.worker_restart_delay = 3",
	"envoisms.dispatch_batch_size = 200",
	"envoisms.dispatch_max_in_flight = 400") ]);
my $q = sub { $node->safe_psql('envoisms', shift) };

my $carrier = EnvoismsPeers::start('carrier_peer.js', '--delay', 200);
$q->(qq{
	INSERT INTO envoisms.carriers (carrier_id, kind, config)
	VALUES ('peer', 'http', '{"url": "$carrier->{url}/send"}');
	INSERT INTO envoisms.routes (channel, prefix, carrier_id, priority) VALUES ('sms', '', 'peer', 0);
});
my $account = $q->("SELECT envoisms.account_create('Crash account', 10000)");
my $bulk = sub {
	my ($n, $tag) = @_;
	$q->("SELECT envoisms.message_send_bulk('$account',
	        (SELECT jsonb_agg(jsonb_build_object('to', '+2126' || lpad((10000001 + 10 * g)::text, 8, '0'),
	                                             'message', '$tag ' || g))
	           FROM generate_series(1, $n) g))->>'batch_id'");
};
my $count = sub {
	my ($batch, $status) = @_;
	$q->("SELECT count(*) FROM envoisms.messages WHERE batch_id = '$batch' AND status = '$status'");
};

# ---- kill -9 of the dispatcher mid-batch
my $b1 = $bulk->(2000, 'kill');
ok(EnvoismsPeers::wait_until(sub { $count->($b1, 'sent') >= 300 }, 60), 'dispatching under way');
my $pid = EnvoismsPeers::worker_pid($node, 'envoisms dispatcher 0');
my $in_flight_before = $q->("SELECT count(*) FROM envoisms.messages WHERE batch_id = '$b1' AND status = 'queued' AND locked_until > now()");
my $killed_at = time();
kill 'KILL', $pid;
note "killed dispatcher $pid with $in_flight_before leased";
ok($in_flight_before > 0, 'transfers were in flight at the kill');
ok(EnvoismsPeers::wait_until(sub {
	my $ok = eval { $count->($b1, 'sent') == 2000 };
	$ok }, 120), 'after the crash restart, every message is sent');
my $new_pid = EnvoismsPeers::worker_pid($node, 'envoisms dispatcher 0');
ok($new_pid && $new_pid != $pid, 'a new dispatcher runs');
like(slurp_file($node->logfile), qr/released \d+ message leases left by the previous server run/,
	'the new dispatcher released the dead one\'s leases at start');

# every message delivered: the carrier's delivery reports, applied as they would arrive
$q->("SELECT envoisms.dlr_apply('peer', carrier_ref, 'delivered') FROM envoisms.messages WHERE batch_id = '$b1'");
is($count->($b1, 'delivered'), 2000, 'all 2000 delivered, none lost');

my %seen;
my %first_at;
for my $r (grep { ($_->{body}{body} // '') =~ /^kill / } EnvoismsPeers::log_lines($carrier))
{
	$seen{ $r->{id} }++;
	$first_at{ $r->{id} } //= $r->{at};
	is($r->{idem}, $r->{id}, 'Idempotency-Key is the message id') if $seen{ $r->{id} } == 2;
}
my @dups = grep { $seen{$_} > 1 } keys %seen;
note scalar(@dups) . ' messages reached the carrier twice';
is(scalar(keys %seen), 2000, 'the carrier saw every message');
ok(scalar(@dups) <= $in_flight_before + 400, 'duplicates no more than the transfers in flight');
# (the carrier peer logs a request when it has read it; requests written before the
# kill may be read a little later by a busy peer, hence the second of slack)
ok(!(grep { $first_at{$_} > $killed_at + 1 } @dups), 'each duplicate was first sent before the kill (in flight then)');
ok(!(grep { $seen{$_} > 2 } @dups), 'no message sent more than twice');

# ---- pg_ctl stop -m immediate with 1,000 queued
$q->("UPDATE envoisms.carriers SET max_per_second = 400 WHERE carrier_id = 'peer'");
my $b2 = $bulk->(1000, 'immediate');
ok(EnvoismsPeers::wait_until(sub { $count->($b2, 'sent') >= 50 }, 30), 'second batch under way');
$node->stop('immediate');
$node->start;
ok(EnvoismsPeers::wait_until(sub { my $n = eval { $count->($b2, 'sent') }; defined $n && $n == 1000 }, 120),
	'after an immediate stop and a start, all 1,000 are sent');
is($q->("SELECT count(*) FROM envoisms.messages WHERE batch_id = '$b2' AND status <> 'sent'"), 0, 'none lost');
$q->("UPDATE envoisms.carriers SET max_per_second = NULL WHERE carrier_id = 'peer'");

# ---- SIGTERM: stop claiming, grace, release, exit
EnvoismsPeers::stop($carrier);
my $slow = EnvoismsPeers::start('carrier_peer.js', '--delay', 6000);
$q->("UPDATE envoisms.carriers SET config = jsonb_build_object('url', '$slow->{url}/send') WHERE carrier_id = 'peer'");
my $b3 = $bulk->(100, 'term');
ok(EnvoismsPeers::wait_until(sub {
	$q->("SELECT count(*) FROM envoisms.messages WHERE batch_id = '$b3' AND locked_until > now()") == 100 }, 30),
	'100 transfers in flight to a slow carrier');
$pid = EnvoismsPeers::worker_pid($node, 'envoisms dispatcher 0');
my $t0 = time();
kill 'TERM', $pid;
ok(EnvoismsPeers::wait_until(sub { !kill(0, $pid) }, 10), 'the dispatcher exits on SIGTERM');
my $took = time() - $t0;
ok($took < 5, sprintf('within the 2 s grace and a little (%.1f s)', $took));
is($q->("SELECT count(*) FROM envoisms.messages WHERE batch_id = '$b3' AND locked_until IS NOT NULL"), '0',
	'no lease left held');
is($q->("SELECT count(*) FROM envoisms.messages WHERE batch_id = '$b3' AND status = 'queued' AND attempts = 0"), '100',
	'released attempts do not count');
like(slurp_file($node->logfile), qr/envoisms dispatcher 0: stopping; 100 unfinished leases released/, 'it says so in the log');

EnvoismsPeers::stop($slow);
$node->stop;
done_testing();
