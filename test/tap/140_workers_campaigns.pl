# Workers, scheduler: a scheduled campaign starts on time, its throttling
# ("1200_min" = 20 messages a second) holds within 10%, its progress is live
# and it ends completed; a pg_cron job (envoisms.campaign_schedule_recurring)
# sends a copy of a campaign; retention purges bodies and delivery logs but
# keeps the totals and the books.
use strict;
use warnings;

use EnvoismsPeers;
use EnvoismsTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $node = EnvoismsTest::node('campaigns', preload => 'envoisms,pg_cron',
	conf => [ EnvoismsPeers::worker_conf("cron.database_name = 'envoisms'", "cron.use_background_workers = on", "max_worker_processes = 16", "envoisms.sandbox_delivery_delay = 0") ]);
my $q = sub { $node->safe_psql('envoisms', shift) };
$q->('CREATE EXTENSION pg_cron');
my $account = $q->("SELECT envoisms.account_create('Campaign account', 100)");

my $list_of = sub {
	my ($name, $n, $base) = @_;
	my $list = EnvoismsTest::json($q->("SELECT envoisms.contact_list_create('$account', '$name')"))->{id};
	$q->("SELECT envoisms.contact_import('$account',
	        (SELECT jsonb_agg(jsonb_build_object('phone', '+2126' || lpad(($base + g)::text, 8, '0'), 'name', 'C' || g))
	           FROM generate_series(1, $n) g), '$list')");
	return $list;
};

# ---- pg_cron: a recurring copy every minute (pg_cron 1.4 counts in minutes), started first
my $weekly_list = $list_of->('cron list', 3, 30000000);
my $weekly = EnvoismsTest::json($q->("SELECT envoisms.campaign_create('$account', 'Recurring', 'Hello {{name}}',
                                        list_id => '$weekly_list', sandbox => true)"))->{id};
my $job = $q->("SELECT envoisms.campaign_schedule_recurring('$account', '$weekly', '* * * * *')");
ok($job > 0, "recurring campaign registered as pg_cron job $job");
is($q->("SELECT command FROM cron.job WHERE jobid = $job"),
	"SELECT envoisms.campaign_clone_and_launch('$account', '$weekly')", 'the job runs the documented function');

# ---- a scheduled, throttled campaign
my $n = 120;
my $list = $list_of->('throttle list', $n, 20000000);
my $start_at = $q->("SELECT to_char(now() + interval '3 seconds', 'YYYY-MM-DD\"T\"HH24:MI:SS.MSOF')");
my $cmp = EnvoismsTest::json($q->("SELECT envoisms.campaign_create('$account', 'Throttled', 'Promo {{name}}',
                                     list_id => '$list', scheduled_at => '$start_at',
                                     metadata => '{\"throttling\": \"1200_min\"}', sandbox => true)"))->{id};
is($q->("SELECT status FROM envoisms.campaigns WHERE campaign_id = '$cmp'"), 'scheduled', 'campaign scheduled');
ok(EnvoismsPeers::wait_until(sub { $q->("SELECT status FROM envoisms.campaigns WHERE campaign_id = '$cmp'") ne 'scheduled' }, 15),
	'the scheduler started it');
my $late = $q->("SELECT extract(epoch FROM started_at - scheduled_at) FROM envoisms.campaigns WHERE campaign_id = '$cmp'");
ok($late >= 0 && $late < 1.5, sprintf('on time (%.2f s after scheduled_at)', $late));
ok(EnvoismsPeers::wait_until(sub {
	my $p = $q->("SELECT count(*) FILTER (WHERE status <> 'queued') FROM envoisms.messages WHERE campaign_id = '$cmp'");
	$p > 10 && $p < $n }, 15), 'progress is live while it runs');
ok(EnvoismsPeers::wait_until(sub {
	$q->("SELECT count(*) FROM envoisms.messages WHERE campaign_id = '$cmp' AND status = 'delivered'") == $n }, 30),
	"all $n delivered");
my ($span, $first) = split /\|/, $q->(
	"SELECT extract(epoch FROM max(sent_at) - min(sent_at)) || '|' || extract(epoch FROM min(sent_at) - (SELECT scheduled_at FROM envoisms.campaigns WHERE campaign_id = '$cmp'))
	   FROM envoisms.messages WHERE campaign_id = '$cmp'");
my $rate = ($n - 1) / $span;
ok(abs($rate - 20) / 20 <= 0.10, sprintf('throttling holds: %.2f messages/s for 20/s asked (within 10%%)', $rate));
ok($first < 1.5, sprintf('first message sent %.2f s after scheduled_at', $first));
ok(EnvoismsPeers::wait_until(sub { $q->("SELECT status FROM envoisms.campaigns WHERE campaign_id = '$cmp'") eq 'completed' }, 10),
	'the campaign ends completed');

# ---- the pg_cron job fires on the next minute and sends a copy
ok(EnvoismsPeers::wait_until(sub {
	$q->("SELECT count(*) FROM envoisms.campaigns WHERE cloned_from = '$weekly'") >= 1 }, 75),
	'pg_cron ran the job: a copy of the campaign was launched');
my $copy = $q->("SELECT campaign_id FROM envoisms.campaigns WHERE cloned_from = '$weekly' ORDER BY campaign_id LIMIT 1");
ok(EnvoismsPeers::wait_until(sub {
	$q->("SELECT count(*) FROM envoisms.messages WHERE campaign_id = '$copy' AND status = 'delivered'") == 3 }, 20),
	'its 3 messages were delivered by the workers');
ok($q->("SELECT envoisms.campaign_unschedule_recurring('$account', '$weekly')") eq 't', 'unscheduled');
is($q->("SELECT count(*) FROM cron.job"), '0', 'the pg_cron job is gone');

# ---- retention: bodies and logs of old messages purged in batches, totals and books kept
my $live = $q->("SELECT envoisms.account_create('Retention account', 10)");
$q->(qq{
	INSERT INTO envoisms.carriers (carrier_id, kind) VALUES ('sim', 'sandbox');
	INSERT INTO envoisms.routes (channel, prefix, carrier_id, priority) VALUES ('sms', '', 'sim', 0);
});
my $batch = $q->("SELECT envoisms.message_send_bulk('$live',
                    (SELECT jsonb_agg(jsonb_build_object('to', '+2126' || lpad((40000000 + g)::text, 8, '0'), 'message', 'old ' || g))
                       FROM generate_series(1, 30) g))->>'batch_id'");
ok(EnvoismsPeers::wait_until(sub {
	$q->("SELECT count(*) FROM envoisms.messages WHERE batch_id = '$batch' AND status = 'delivered'") == 30 }, 20),
	'live messages through a sandbox-kind carrier delivered');
my $summary = $q->("SELECT envoisms.analytics_summary('$live')");
$q->("UPDATE envoisms.messages SET created_at = now() - interval '100 days' WHERE batch_id = '$batch'");
is($q->("SELECT envoisms.retention_purge(90, 7)"), '7', 'one small batch at a time');
$q->("SELECT envoisms.retention_purge(90, 1000)");
is($q->("SELECT count(*) FROM envoisms.messages WHERE batch_id = '$batch' AND body IS NOT NULL"), '0', 'bodies purged');
is($q->("SELECT count(*) FROM envoisms.message_events e JOIN envoisms.messages m USING (account_id, message_id)
          WHERE m.batch_id = '$batch'"), '0', 'delivery logs purged');
is($q->("SELECT envoisms.analytics_summary('$live')"), $summary, 'analytics totals unchanged');
is($q->("SELECT bool_and(ok) FROM envoisms.balance_check()"), 't', 'balance_check holds after the purge');

$node->stop;
done_testing();
