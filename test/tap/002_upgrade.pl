# 002_upgrade.pl — every released version upgrades to the current one with
# ALTER EXTENSION envoisms UPDATE: the users' data stay (accounts, money,
# messages, keys), the books still balance, sends work afterwards, and the
# upgraded schema is the one a fresh CREATE EXTENSION makes, object for
# object (functions by definition, columns, constraints, indexes, triggers,
# types, ACLs, comments, extension members).
use strict;
use warnings;
use lib 'test/tap/lib';
use EnvoismsTest;
use File::Basename qw(basename);
use Test::More;

my $node = EnvoismsTest::node('upgrade');
my $current = $node->safe_psql('envoisms', "SELECT extversion FROM pg_extension WHERE extname = 'envoisms'");
my $fingerprint_sql = do { local (@ARGV, $/) = ('test/tap/lib/schema_fingerprint.sql'); <> };
my $fresh = $node->safe_psql('envoisms', $fingerprint_sql);
ok(length($fresh) > 1000, "the fingerprint of a fresh $current install covers its objects");

# every version an upgrade/ file names, whether its full script is kept or it
# installs through the chain of upgrade scripts from an older one
my %named = map { /^envoisms--([0-9.]+)(?:--([0-9.]+))?\.sql$/ ? ($1 => 1, (defined $2 ? ($2 => 1) : ())) : () }
	map { basename($_) } glob('upgrade/envoisms--*.sql');
my @released = sort grep { $_ ne $current } keys %named;
ok(@released > 0, 'released versions to upgrade from: ' . join(', ', @released));

my $state_sql = q{
    SELECT (SELECT count(*) FROM envoisms.accounts) || ' accounts, '
        || (SELECT count(*) FROM envoisms.messages) || ' messages, '
        || (SELECT sum(charged_mad) FROM envoisms.messages) || ' MAD charged, '
        || (SELECT count(*) FROM envoisms.ledger) || ' ledger rows, '
        || (SELECT count(*) FROM envoisms.api_keys) || ' keys, '
        || (SELECT sum(balance_mad) FROM envoisms.balance_check()) || ' MAD, books '
        || (SELECT bool_and(ok) FROM envoisms.balance_check())};

for my $version (@released)
{
	my $db = "from_" . ($version =~ s/\./_/gr);
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, "CREATE EXTENSION envoisms VERSION '$version'");
	my $account = $node->safe_psql($db, "SELECT envoisms.account_create('Old', 100)");
	$node->safe_psql($db, qq{
        SELECT envoisms.api_key_create('$account', 'old key', true);
        SELECT envoisms.account_topup('$account', 20, 'invoice 1');
        SELECT envoisms.message_send('$account', '+212612345678', 'avant la mise à jour');
        SELECT envoisms.message_send_bulk('$account', '[{"to": "+212611111111", "message": "a"}, {"to": "+212622222222", "message": "b"}]');
    });
	my $before = $node->safe_psql($db, $state_sql);

	my ($rc, $out, $err) = $node->psql($db, 'ALTER EXTENSION envoisms UPDATE');
	is($rc, 0, "$version -> $current: ALTER EXTENSION envoisms UPDATE succeeds") or diag($err);
	is($node->safe_psql($db, "SELECT extversion FROM pg_extension WHERE extname = 'envoisms'"), $current,
		"$version -> $current: the extension is at $current");
	is($node->safe_psql($db, $state_sql), $before, "$version -> $current: the data and the books are as they were ($before)");
	is($node->safe_psql($db, $fingerprint_sql), $fresh, "$version -> $current: the schema is the one a fresh install makes");
	is($node->safe_psql($db, "SELECT envoisms.message_send('$account', '+212612345678', 'après')->>'status'"), 'queued',
		"$version -> $current: a send works after the upgrade");
	($rc, $out, $err) = $node->psql($db, "UPDATE envoisms.messages SET status = 'lost'");
	like($err, qr/violates check constraint/, "$version -> $current: the message rules still hold (status 'lost' refused)");
}

$node->stop;
done_testing();
