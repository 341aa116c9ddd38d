# 000_docs.pl — the README stays true to the code. Its first code block
# holds exactly the two commands, both present as scripts. Its GUC table is
# what scripts/guc-table.sh prints from a running server's pg_settings, row
# for row and value for value: every envoisms.* setting the server defines
# is in the table with the same default, context and description, the
# table names no other, and it is in name order. The list of settings is
# the server's, never one written here.
use strict;
use warnings;
use lib 'test/tap/lib';
use EnvoismsTest;
use Test::More;

my $root = $EnvoismsTest::ROOT;
my $readme = do { local (@ARGV, $/) = ("$root/README.md"); <> };
my ($block) = $readme =~ /```\n(.*?)```/s;
my @commands = grep { length } split /\n/, $block;
is(scalar @commands, 2, 'the README opens with exactly two commands');
for my $c (@commands)
{
	my ($script) = $c =~ m{^\./(\S+)$};
	ok($script && -x "$root/$script", "command '$c' is an executable script");
}

# A markdown table from its header line on: (name => [default, context,
# meaning]) and the names in their order.
sub guc_table
{
	my ($text) = @_;
	my (%rows, @order);
	my ($table) = $text =~ /^(\| GUC \| default \| context \| meaning \|\n(?:\|.*\n?)*)/m
	  or return ({}, []);
	for my $line (split /\n/, $table)
	{
		next unless $line =~ /^\| `([^`]+)` \|/;
		my $name = $1;
		my @cells = map { s/^\s+|\s+$//gr } split /(?<!\\)\|/, $line;
		shift @cells;    # before the first |
		push @order, $name;
		$rows{$name} = [ @cells[ 1 .. 3 ] ];
	}
	return (\%rows, \@order);
}

my $node = EnvoismsTest::node('docs');
my $generated = `bash '$root/scripts/guc-table.sh' -h '${\ $node->host}' -p ${\ $node->port} envoisms 2>&1`;
is($?, 0, 'scripts/guc-table.sh prints the table from the server') or diag($generated);
my ($server, $server_order) = guc_table($generated);
my ($documented, $documented_order) = guc_table($readme);

cmp_ok(scalar @$server_order, '>=', 10, 'the server defines the envoisms GUCs');
ok(scalar @$documented_order, "README has a GUC table");
for my $name (@$server_order)
{
	if (!$documented->{$name})
	{
		fail("README documents $name");
		diag("its row, from scripts/guc-table.sh: " . ($generated =~ /^(\| `\Q$name\E`.*)$/m)[0]);
		next;
	}
	my ($default, $context, $meaning) = @{ $server->{$name} };
	is($documented->{$name}[0], $default, "$name: default $default");
	is($documented->{$name}[1], $context, "$name: context $context");
	is($documented->{$name}[2], $meaning, "$name: meaning as the server describes it");
}
for my $name (@$documented_order)
{
	ok($server->{$name}, "documented $name exists");
}
is_deeply($documented_order, [ sort @$documented_order ], "README's GUC table is in name order");
$node->stop;
done_testing();
