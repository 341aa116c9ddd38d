# 310_sqlsmith.pl — sqlsmith's random queries against a database with the
# extension and some data in it, as an application role: no backend may
# crash, and the server still answers afterwards.
#
# The role is what a SQL application would be granted, not a superuser:
# USAGE on the schema, EXECUTE on every envoisms function, SELECT on every
# table. A superuser may crash a server by design (and sqlsmith would spend
# its time on pg_terminate_backend, pg_read_file, lo_export ...); what must
# hold is that no grant of the extension's own objects lets a role crash
# it, whatever arguments it passes (NULLs, extremes, other types' casts).
#
# sqlsmith runs in batches of 2,000 queries, each with its own seed (printed,
# to replay one: sqlsmith --seed=N --max-queries=2000), until
# ENVOISMS_SQLSMITH_SECONDS (default 60) have passed.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

use EnvoismsTest;

my $node = EnvoismsTest::node('sqlsmith');

sub sql { return $node->safe_psql('envoisms', $_[0]) }

# some rows in every area, so that joins and functions meet real values
my ($account, $key) = EnvoismsTest::demo_key($node, live => 1, balance => 1000, rate_limit => undef);
sql(qq{
	SELECT envoisms.message_send('$account', '+212612345678', 'Bonjour ' || n) FROM generate_series(1, 5) n;
	SELECT envoisms.contact_create('$account', '+21261234567' || n, 'Contact ' || n) FROM generate_series(0, 4) n;
	SELECT envoisms.account_topup('$account', 10);
	CREATE ROLE app LOGIN;
	GRANT USAGE ON SCHEMA envoisms TO app;
	GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA envoisms TO app;
	GRANT SELECT ON ALL TABLES IN SCHEMA envoisms TO app;
	ALTER ROLE app SET statement_timeout = '1s';
});

my $seconds = $ENV{ENVOISMS_SQLSMITH_SECONDS} // 60;
my $target = EnvoismsTest::conninfo($node) . ' user=app';
my $batch = 2000;
my ($queries, $batches) = (0, 0);
my $first_seed = int(time()) % 1_000_000;
my $start = time();
my $log_offset = -s $node->logfile;
my $answering = 1;
while (time() - $start < $seconds)
{
	my $seed = $first_seed + $batches;
	my ($out, $err) = run_command([ 'sqlsmith', "--target=$target", "--seed=$seed",
		"--max-queries=$batch", '--exclude-catalog', '--verbose' ]);
	$batches++;
	$queries += $batch;
	my ($ret) = $node->psql('envoisms', 'SELECT 1');
	if ($ret != 0 || slurp_file($node->logfile, $log_offset) =~ /terminated by signal|was terminated/)
	{
		diag "sqlsmith batch with --seed=$seed ended with a crash or a server that no longer answers";
		diag substr($err // '', -3000);
		$answering = 0 if $ret != 0;
		last;
	}
}
my $elapsed = time() - $start;
note sprintf('%d sqlsmith queries in %d batches, %.0f s (%.0f queries/s), seeds %d to %d',
	$queries, $batches, $elapsed, $queries / ($elapsed || 1), $first_seed, $first_seed + $batches - 1);
cmp_ok($queries, '>', 0, 'sqlsmith ran');

my $log = slurp_file($node->logfile, $log_offset);
my @crashes = $log =~ /^(.*(?:terminated by signal|was terminated).*(?:\n.*Failed process was running:.*)?)$/mg;
is(scalar @crashes, 0, 'no backend crashed') or diag join("\n", @crashes);
ok($answering, 'the server answered after every batch');
is($node->safe_psql('envoisms', 'SELECT 1'), '1', 'the server still answers');
is(sql("SELECT bool_and(ok) FROM envoisms.balance_check()"), 't', 'every balance is explained by its ledger');
done_testing();
