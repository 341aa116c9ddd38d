# 160_ratelimit_memory.pl — the rate limiter's shared table is bounded
# (envoisms.ratelimit_max_keys) and never fails open: when it is full a new
# bucket evicts the one that will be full again soonest, so a key that spent
# its minute stays limited however many other keys come and go, a new key is
# limited from its first request, and revoked keys age out.
use strict;
use warnings;
use lib 'test/tap/lib';
use EnvoismsTest;
use Test::More;

my $node = EnvoismsTest::node('ratelimit', conf => ['envoisms.scheduler = off', 'envoisms.dispatch_workers = 0',
                                                     'envoisms.webhook_workers = 0', 'envoisms.ratelimit_max_keys = 100']);
sub sql { $node->safe_psql('envoisms', $_[0]) }

is(sql("SELECT capacity FROM envoisms.ratelimit_stats()"), '100', 'the table holds 100 buckets');

# one key spends its minute (limit 10: a burst of 10, then one every 6 s)
is(sql("SELECT count(*) FILTER (WHERE (envoisms.ratelimit_take('spent', 10)).allowed) FROM generate_series(1, 12)"), '10',
   'a key with a limit of 10 gets 10 requests');

# 300 other keys pass through, one request each: three times the table
is(sql("SELECT count(*) FILTER (WHERE (envoisms.ratelimit_take('churn' || i, 60)).allowed) FROM generate_series(1, 300) i"), '300',
   '300 other keys are served');
my ($buckets, $evictions) = split /\|/, sql("SELECT buckets, evictions FROM envoisms.ratelimit_stats()");
cmp_ok($buckets, '<=', 100, "the table stays within its capacity ($buckets buckets)");
cmp_ok($evictions, '>=', 200, "buckets were evicted to make room ($evictions)");

is(sql("SELECT (envoisms.ratelimit_take('spent', 10)).allowed"), 'f',
   'the key that spent its minute is still limited after the churn (fresh buckets went first)');

# a new key in a full table is limited from its first request: no fail-open
is(sql("SELECT string_agg((envoisms.ratelimit_take('newcomer', 2)).allowed::text, ',') FROM generate_series(1, 3)"), 'true,true,false',
   'a key first seen with the table full is limited (2 allowed, the third refused)');

# through envoisms.api: a revoked key's bucket ages out like any other
my $acc = sql("SELECT envoisms.account_create('Acme', 10)");
my $key = sql("SELECT envoisms.api_key_create('$acc', 'k', true, rate_limit => 10)->>'api_key'");
my $status = sql("SELECT status FROM envoisms.api('GET', '/v1/billing/balance', '', jsonb_build_object('Authorization', 'Bearer $key'))");
is($status, '200', 'a request through envoisms.api with a limited key');
sql("SELECT envoisms.api_key_revoke('$acc', api_key_id) FROM envoisms.api_keys WHERE account_id = '$acc'");
sql("SELECT count(*) FROM generate_series(1, 300) i WHERE (envoisms.ratelimit_take('churn2_' || i, 60)).allowed");
is(sql("SELECT buckets <= 100 FROM envoisms.ratelimit_stats()"), 't', 'revoked keys are not kept forever: the table stays bounded');

$node->stop;
done_testing();
