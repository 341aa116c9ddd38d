# 003_openapi_lint.pl — docs/openapi.yaml (served as /v1/openapi.json) is a
# valid OpenAPI document: Redocly's linter, its "recommended" rules, at the
# version scripts/openapi-lint.sh pins. One test per rule the document
# breaks: a rule broken at error severity fails, one at warning severity
# passes and lists where. Skipped, saying so, only when the linter is not
# installed and the npm registry cannot be reached to install it.
use strict;
use warnings;
use lib 'test/tap/lib';
use EnvoismsTest;
use File::Temp qw(tempdir);
use JSON::PP;
use Test::More;

my $root = $EnvoismsTest::ROOT;
my $script = "$root/scripts/openapi-lint.sh";
my ($pinned) = do { local (@ARGV, $/) = ($script); <> } =~ /^REDOCLY_CLI_VERSION=(\S+)$/m;
my $tmp = tempdir(CLEANUP => 1);

# installs the linter first when deps.sh did not (exit 3: it could not)
my $json = `'$script' --format=json 2>'$tmp/stderr'`;
my $rc = $? >> 8;
my $stderr = do { local (@ARGV, $/) = ("$tmp/stderr"); <> } // '';

if ($rc == 3)
{
	my $npm = system('command -v npm >/dev/null 2>&1') == 0;
	if ($npm && system("timeout 60 npm ping --cache '$tmp/npm-cache' >/dev/null 2>&1") != 0)
	{
		plan skip_all => "docs/openapi.yaml NOT linted: the npm registry is unreachable, "
		  . "so \@redocly/cli $pinned could not be installed";
	}
	fail("\@redocly/cli $pinned installs" . ($npm ? ' (the npm registry answers)' : ' (npm is missing)'));
	diag($stderr);
	done_testing();
	exit;
}

my $report = eval { decode_json($json) };
ok($report && $report->{totals}, 'the linter reports in JSON') or diag("exit $rc\n$stderr$json");
is($report->{version}, $pinned, "the linter is \@redocly/cli $pinned");

my %by_rule;
push @{ $by_rule{ $_->{ruleId} } }, $_ for @{ $report->{problems} // [] };
for my $rule (sort keys %by_rule)
{
	my @problems = @{ $by_rule{$rule} };
	my @errors = grep { $_->{severity} eq 'error' } @problems;
	my @where = map {
		my $l = $_->{location}[0];
		sprintf('%s %s line %s: %s', $_->{severity}, $l->{pointer}, $l->{start}{line} // '?', $_->{message})
	} @problems;
	if (@errors)
	{
		fail(sprintf('rule %s: %d error(s)', $rule, scalar @errors));
		diag($_) for @where;
	}
	else
	{
		pass(sprintf('rule %s: %d warning(s), no error', $rule, scalar @problems));
		note($_) for @where;
	}
}
is($report->{totals}{errors}, 0, 'docs/openapi.yaml breaks no rule at error severity');
note("warnings: $report->{totals}{warnings}");
done_testing();
