# The web console in a real browser: Debian's Chromium, headless, driven by
# playwright-core (test/browser/walk.mjs) against a real cluster, gateway,
# Stripe stand-in and webhook receiver. A new owner signs in with the
# second factor read from the sandbox message, creates a key and uses it
# with curl, finds the message and its timeline, imports contacts, runs a
# campaign to 100%, tests a webhook and replays a failed delivery, tops up through the Stripe stand-in
# and sees the balance and a new invoice (printed to PDF), revokes the key
# and sees 401; bodies and names holding markup stay text; every page is
# checked for console errors and failed requests and screenshotted (1440
# and 360 px); then the operator's pages. Screenshots, the invoice PDF and
# results.json (with the first page load's cold and warm times) are kept in
# $ENVOISMS_ARTIFACTS/console-browser (default /var/tmp/envoisms-artifacts).
use strict;
use warnings;

use EnvoismsPeers;
use EnvoismsTest;
use File::Path qw(make_path remove_tree);
use File::Temp qw(tempdir);
use JSON::PP;
use PostgreSQL::Test::Utils;
use Test::More;

my $chromium = $ENV{ENVOISMS_CHROMIUM} // '/usr/bin/chromium';
plan skip_all => "Chromium is not installed ($chromium; scripts/deps.sh installs Debian's chromium)"
  unless -x $chromium;
my $modules = `"$EnvoismsTest::ROOT/scripts/browser-deps.sh" --dir`;
chomp $modules;
plan skip_all => "playwright-core is not installed in $modules (scripts/browser-deps.sh --install)"
  unless -f "$modules/playwright-core/package.json";

# The sandbox "delivers" after 3 s: an OTP message's body (the code) is
# purged once delivered, and the walk reads the code as the phone would,
# from the message, before that.
my $node = EnvoismsTest::node('console',
	conf => [ EnvoismsPeers::worker_conf("log_statement = 'none'", 'envoisms.sandbox_delivery_delay = 3s') ]);
my $q = sub { $node->safe_psql('envoisms', shift) };
my $gw = EnvoismsTest::start_gateway($node, args => [ '--console-dir', "$EnvoismsTest::ROOT/console" ]);

my $whsec = 'whsec_consoleWalkSigningSecret0123456789';
my $stripe_key = 'sk_test_51ConsoleWalk0envoisms0Key4242';
my $stripe = EnvoismsPeers::start('stripe_peer.js', '--key', $stripe_key, '--webhook-secret', $whsec,
	'--webhook-url', "$gw->{url}/v1/billing/stripe/webhook");
my $receiver = EnvoismsPeers::start('webhook_receiver.js', '--secret', 'whsec_unknown_to_the_receiver');
my $gone = EnvoismsPeers::start('webhook_receiver.js', '--secret', 'whsec_unknown_to_the_receiver', '--answer', 410);

my $phone = '+212612340000';
my $password = 'parcours-secret-2026';
my $operator_password = 'operateur-secret-2026';
my $account = $q->("SELECT envoisms.account_create('Atlas Boutique SARL', 500)");
my $operator_account = $q->("SELECT envoisms.account_create('Opérateur envoisms', 0)");
$q->(qq{
	INSERT INTO envoisms.carriers (carrier_id, kind) VALUES ('sim', 'sandbox');
	INSERT INTO envoisms.routes (channel, prefix, carrier_id, priority) VALUES ('sms', '', 'sim', 0);
	SELECT envoisms.console_user_create('$account', 'nadia\@atlas.ma', '$password', 'owner', 'Nadia Benali', '$phone');
	UPDATE envoisms.console_users SET two_factor = true WHERE email = 'nadia\@atlas.ma';
	SELECT envoisms.console_user_create('$operator_account', 'ops\@envoisms.local', '$operator_password', 'owner',
	                                    'Opérateur', NULL, true);
	INSERT INTO envoisms.console_settings (name, value) VALUES
	  ('two_factor_sandbox', 'on'), ('seller_name', 'EnvoiSMS SARL'), ('seller_ice', '002345678000012'),
	  ('seller_if', '40123456'), ('seller_rc', 'Rabat 98765'), ('seller_address', '5 avenue Mohammed V'),
	  ('seller_city', 'Rabat');
	INSERT INTO envoisms.billing_settings (name, value) VALUES
	  ('stripe_secret_key', '$stripe_key'), ('stripe_webhook_secret', '$whsec'), ('stripe_api_base', '$stripe->{url}'),
	  ('stripe_success_url', '$gw->{url}/console/#/billing?topup={TOPUP_ID}'),
	  ('stripe_cancel_url', '$gw->{url}/console/#/billing');
});

my $artifacts = ($ENV{ENVOISMS_ARTIFACTS} // '/var/tmp/envoisms-artifacts') . '/console-browser';
remove_tree($artifacts);
make_path($artifacts);
my $home = tempdir(CLEANUP => 1);
my %walk_env = (
	WALK_BASE => $gw->{url},
	WALK_EMAIL => 'nadia@atlas.ma',
	WALK_PASSWORD => $password,
	WALK_OPERATOR_EMAIL => 'ops@envoisms.local',
	WALK_OPERATOR_PASSWORD => $operator_password,
	WALK_PHONE => $phone,
	WALK_DB => EnvoismsTest::conninfo($node),
	WALK_HOOK_URL => "$receiver->{url}/hook",
	WALK_GONE_HOOK_URL => "$gone->{url}/gone",
	WALK_ARTIFACTS => $artifacts,
	WALK_CHROMIUM => $chromium,
	WALK_PLAYWRIGHT => $modules,
	# Chromium writes its profile and caches under HOME: the server user may have none
	HOME => $home,
	XDG_CONFIG_HOME => "$home/.config",
	XDG_CACHE_HOME => "$home/.cache",
);
my $started = time();
local @ENV{ keys %walk_env } = values %walk_env;
open(my $walk, '-|', 'timeout', '170', 'node', "$EnvoismsTest::ROOT/test/browser/walk.mjs")
  or die "node: $!";
my $checks = 0;
while (my $line = <$walk>)
{
	chomp $line;
	my $c = eval { decode_json($line) };
	if (!$c)
	{
		diag($line);
		next;
	}
	$checks++;
	ok($c->{ok}, $c->{name}) or diag($c->{detail} // '');
}
close($walk);
my $status = $? >> 8;
is($status, 0, 'walk.mjs exited 0 (124: it ran over its 170 s)');
cmp_ok($checks, '>=', 60, "the walk made its checks ($checks)");
cmp_ok(time() - $started, '<', 180, 'the walk stayed within 3 minutes');

my $results = eval { decode_json(slurp_file("$artifacts/results.json")) } // {};
my @shots = @{ $results->{screenshots} // [] };
cmp_ok(scalar @shots, '>=', 25, scalar(@shots) . ' screenshots kept');
ok(!(grep { !-s "$artifacts/$_" } @shots), 'every screenshot is a file');
diag(sprintf('first page load: cold %s ms, warm %s ms (load event %s / %s ms); artifacts in %s',
	map { $_ // '?' } @{ $results->{timings} // {} }{qw(cold_ms warm_ms cold_load_event_ms warm_load_event_ms)}, $artifacts));

is($q->('SELECT bool_and(ok) FROM envoisms.balance_check()'), 't', 'the books balance after the walk');
is($q->("SELECT count(*) FROM envoisms.console_invoices WHERE account_id = '$account'"), '1',
	'one invoice for the one completed top-up');

EnvoismsPeers::stop($_) for ($stripe, $receiver, $gone);
EnvoismsTest::stop_gateway($gw);
done_testing();
