/*
 * accounts.c — what a send reads of its account, cached per backend.
 *
 * message_send() needs the account's status and channels, and whether any
 * number has opted out of it, on every call; as a query (the account row
 * joined to an EXISTS on envoisms.optouts) that was a sixth of a send.
 * account_lookup() keeps the answer per account in a cache that every
 * backend empties when envoisms.accounts or envoisms.optouts change
 * (cache.c): a suspended or closed account, a channel taken away, or a
 * first opt-out is seen by every send that starts after that change
 * committed. The opt-out flag only says whether the account has any: the
 * number itself is still looked up, by the send, when it is set. Unknown
 * accounts are not cached.
 */
#include "envoisms.h"

#include "cache.h"

#define ACCOUNT_ID_LEN 32		/* acc_ and 28 hex digits (the accounts CHECK) */

static BackendCache account_cache = {{"accounts", "optouts"}, ACCOUNT_ID_LEN, BackendRowEntrySize(ACCOUNT_ID_LEN)};
static SPIPlanPtr lookup_plan = NULL;
static SPIPlanPtr cluster_lookup_plan = NULL;

PG_FUNCTION_INFO_V1(account_lookup);

/*
 * account_lookup(account_id) — (status, channels, has_optouts) of the
 * account; every field NULL when there is no such account.
 */
Datum
account_lookup(PG_FUNCTION_ARGS)
{
	text	   *account_id = PG_GETARG_TEXT_PP(0);
	bool		cacheable = VARSIZE_ANY_EXHDR(account_id) == ACCOUNT_ID_LEN;

	/*
	 * On a Citus cluster accounts is a reference table (every node holds a
	 * copy, and its changes fire the invalidation on every node), but
	 * optouts is distributed: an opt-out recorded on the account's node
	 * empties that node's caches only, and a send made through another node
	 * (a SQL caller on the coordinator) would trust a stale "no opt-outs".
	 * There the flag is always true, so that every send asks the account's
	 * shard about its number (a router query; the isolation spec
	 * account_cache, run against a cluster by 400_citus_cluster.pl).
	 */
	if (ClusterMode())
		return BackendCacheRow(&account_cache, fcinfo, VARDATA_ANY(account_id), cacheable,
							   &cluster_lookup_plan,
							   "SELECT a.status, a.channels, true"
							   "  FROM envoisms.accounts a WHERE a.account_id = $1",
							   PointerGetDatum(account_id));
	return BackendCacheRow(&account_cache, fcinfo, VARDATA_ANY(account_id), cacheable, &lookup_plan,
						   "SELECT a.status, a.channels,"
						   "       EXISTS (SELECT 1 FROM envoisms.optouts o WHERE o.account_id = a.account_id)"
						   "  FROM envoisms.accounts a WHERE a.account_id = $1",
						   PointerGetDatum(account_id));
}
