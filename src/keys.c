/*
 * keys.c — the API key a request names, cached per backend.
 *
 * envoisms.api reads the key (by the SHA-256 of what the Authorization
 * header carries) and its account's status on every request; as a query
 * that was a tenth of a request. api_key_lookup() keeps the answer per key
 * hash in a cache that every backend empties when envoisms.api_keys or
 * envoisms.accounts change (cache.c): a key revoked, deactivated or given
 * other permissions, addresses or limits, or an account closed, is refused
 * or limited from the first request that starts after that change
 * committed. Only keys that exist, are active and not revoked are cached;
 * an unknown hash is looked up every time (no memory for guessed keys).
 */
#include "envoisms.h"

#include "cache.h"

#define KEY_HASH_LEN 64

static BackendCache key_cache = {{"api_keys", "accounts"}, KEY_HASH_LEN, BackendRowEntrySize(KEY_HASH_LEN)};
static SPIPlanPtr lookup_plan = NULL;

PG_FUNCTION_INFO_V1(api_key_lookup);

/*
 * api_key_lookup(key_hash) — (account_id, api_key_id, key_prefix,
 * permissions, ip_whitelist, rate_limit, last_used_at, account_status) of
 * the active, unrevoked key with that hash; every field NULL when there is
 * none (or key_hash is NULL).
 */
Datum
api_key_lookup(PG_FUNCTION_ARGS)
{
	text	   *hash = PG_ARGISNULL(0) ? NULL : PG_GETARG_TEXT_PP(0);

	return BackendCacheRow(&key_cache, fcinfo, hash ? VARDATA_ANY(hash) : NULL,
						   hash != NULL && VARSIZE_ANY_EXHDR(hash) == KEY_HASH_LEN,
						   &lookup_plan,
						   "SELECT ak.account_id, ak.api_key_id, ak.key_prefix, ak.permissions, ak.ip_whitelist,"
						   "       ak.rate_limit, ak.last_used_at, a.status"
						   "  FROM envoisms.api_keys ak JOIN envoisms.accounts a ON a.account_id = ak.account_id"
						   " WHERE ak.key_hash = $1 AND ak.active AND ak.revoked_at IS NULL",
						   PointerGetDatum(hash));
}
