# 000_docs.pl — the README stays true to the code: every envoisms.* GUC the
# server defines is in the README's table, and the README's first code block
# holds exactly the two commands, both present as scripts.
use strict;
use warnings;
use lib 'test/tap/lib';
use EnvoismsTest;
use Test::More;

my $readme = do { local (@ARGV, $/) = ("$EnvoismsTest::ROOT/README.md"); <> };
my ($block) = $readme =~ /```\n(.*?)```/s;
my @commands = grep { length } split /\n/, $block;
is(scalar @commands, 2, 'the README opens with exactly two commands');
for my $c (@commands)
{
	my ($script) = $c =~ m{^\./(\S+)$};
	ok($script && -x "$EnvoismsTest::ROOT/$script", "command '$c' is an executable script");
}

my $node = EnvoismsTest::node('docs');
my @gucs = split /\n/, $node->safe_psql('envoisms',
	"SELECT name FROM pg_settings WHERE name LIKE 'envoisms.%' ORDER BY name");
cmp_ok(scalar @gucs, '>=', 10, 'the server defines the envoisms GUCs');
for my $guc (@gucs)
{
	like($readme, qr/\| `\Q$guc\E` \|/, "README documents $guc");
}
my %defined = map { $_ => 1 } @gucs;
for my $documented ($readme =~ /^\| `(envoisms\.[a-z_]+)` \|/mg)
{
	ok($defined{$documented}, "documented $documented exists");
}
$node->stop;
done_testing();
