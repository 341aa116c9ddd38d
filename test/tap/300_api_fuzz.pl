# 300_api_fuzz.pl — the /v1 API under test/fuzz/api_fuzz.py: requests
# derived from docs/openapi.yaml, valid and invalid, through a real gateway
# to a real cluster (workers off: nothing but the requests changes the
# data). No 5xx; every refusal is the contract's envelope with the code and
# status of envoisms.error_codes; a refused request changes no table and
# no balance, and balance_check() stays ok. Both key kinds are used, and
# the carriers' callbacks get their tokens and signatures.
#
# ENVOISMS_API_FUZZ_SECONDS (default 60) and ENVOISMS_API_FUZZ_REQUESTS
# (default 20000) bound the run; ENVOISMS_API_FUZZ_SEED replays one.
use strict;
use warnings;

use JSON::PP;
use PostgreSQL::Test::Utils;
use Test::More;

use EnvoismsTest;

my $node = EnvoismsTest::node('apifuzz', conf => [
	"envoisms.dispatch_workers = 0", "envoisms.webhook_workers = 0", "envoisms.scheduler = off" ]);
my $gw = EnvoismsTest::start_gateway($node);

sub sql { return $node->safe_psql('envoisms', $_[0]) }

my ($account, $live) = EnvoismsTest::demo_key($node, live => 1, balance => 1000, rate_limit => undef);
my $sandbox = sql("SELECT envoisms.api_key_create('$account', 'fuzz sandbox', live => false, rate_limit => NULL)->>'api_key'");
my @key_ids = split /\n/, sql("SELECT api_key_id FROM envoisms.api_keys WHERE account_id = '$account'");
is(scalar @key_ids, 2, 'one account with a live and a sandbox key');

sql(q{INSERT INTO envoisms.carriers (carrier_id, kind, name, config) VALUES
	('fuzz-http', 'http', 'fuzz http', '{"url": "https://carrier.invalid/send", "dlr_token": "dlr-secret-1"}'),
	('fuzz-wa', 'whatsapp_cloud', 'fuzz wa', '{"app_secret": "app-secret-1", "verify_token": "verify-1"}')});

my $seconds = $ENV{ENVOISMS_API_FUZZ_SECONDS} // 60;
my $requests = $ENV{ENVOISMS_API_FUZZ_REQUESTS} // 20000;
my @cmd = ('python3', "$EnvoismsTest::ROOT/test/fuzz/api_fuzz.py",
	'--url', $gw->{url}, '--dsn', EnvoismsTest::conninfo($node),
	'--spec', "$EnvoismsTest::ROOT/docs/openapi.yaml",
	'--live-key', $live, '--test-key', $sandbox, (map { ('--protect-id', $_) } @key_ids),
	'--carrier-ids', 'fuzz-http', 'fuzz-wa', 'sandbox',
	'--dlr-token', 'dlr-secret-1', '--app-secret', 'app-secret-1', '--verify-token', 'verify-1',
	'--seconds', $seconds, '--max-requests', $requests,
	defined $ENV{ENVOISMS_API_FUZZ_SEED} ? ('--seed', $ENV{ENVOISMS_API_FUZZ_SEED}) : ());
my ($out, $err) = run_command(\@cmd);
my ($summary) = $out =~ /^(\{.*\})$/m;
my $figures = EnvoismsTest::json($summary // '');
ok($figures, 'the fuzzer ran and reported its figures') or diag "stdout:\n$out\nstderr:\n$err";
$figures //= {};
note sprintf('%d requests in %s s (%s/s), %d answered 5xx, seed %s; statuses %s',
	$figures->{requests} // 0, $figures->{seconds} // '?', $figures->{requests_per_second} // '?',
	$figures->{'5xx'} // 0, $figures->{seed} // '?', JSON::PP->new->canonical->encode($figures->{statuses} // {}))
  if %$figures;
note $_ for $out =~ /^(known: .*)$/mg;
cmp_ok($figures->{requests} // 0, '>', 100, 'the fuzzer sent requests');

my @violations = $out =~ /^VIOLATION: (.*)$/mg;
is(scalar @violations, 0, 'no 5xx, every refusal an envelope of envoisms.error_codes, no refusal changes data')
  or diag join("\n", @violations);

my ($status) = EnvoismsTest::http('GET', "$gw->{url}/healthz");
is($status, 200, 'the gateway still answers');
is(sql("SELECT bool_and(ok) FROM envoisms.balance_check()"), 't', 'every balance is explained by its ledger');
EnvoismsTest::stop_gateway($gw);
unlike(slurp_file($node->logfile), qr/terminated by signal|was terminated/, 'no backend crashed');
done_testing();
