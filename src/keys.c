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

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "utils/datum.h"

#include "cache.h"

#define KEY_HASH_LEN 64
#define KEY_FIELDS 8

typedef struct KeyEntry
{
	char		hash[KEY_HASH_LEN];
	HeapTupleHeader row;		/* the answer, as a composite value */
} KeyEntry;

static BackendCache key_cache = {{"api_keys", "accounts"}, KEY_HASH_LEN, sizeof(KeyEntry)};
static SPIPlanPtr lookup_plan = NULL;

/* The key's row from api_keys and accounts (active, not revoked), or NULL; formed in the caller's context. */
static HeapTuple
lookup_key(text *hash, TupleDesc result)
{
	MemoryContext caller = CurrentMemoryContext;
	Datum		arg = PointerGetDatum(hash);
	HeapTuple	row = NULL;

	Oid			type = TEXTOID;

	BackendCacheQuery(&lookup_plan,
					  "SELECT ak.account_id, ak.api_key_id, ak.key_prefix, ak.permissions, ak.ip_whitelist, ak.rate_limit,"
					  "       ak.last_used_at, a.status"
					  "  FROM envoisms.api_keys ak JOIN envoisms.accounts a ON a.account_id = ak.account_id"
					  " WHERE ak.key_hash = $1 AND ak.active AND ak.revoked_at IS NULL", 1, &type, &arg);
	if (SPI_processed == 1)
	{
		Datum		values[KEY_FIELDS];
		bool		nulls[KEY_FIELDS];
		MemoryContext spi;

		for (int i = 0; i < KEY_FIELDS; i++)
			values[i] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, i + 1, &nulls[i]);
		spi = MemoryContextSwitchTo(caller);
		row = heap_form_tuple(result, values, nulls);
		MemoryContextSwitchTo(spi);
	}
	BackendCacheQueryEnd();
	return row;
}

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
	TupleDesc	result;
	text	   *hash;
	KeyEntry   *entry;
	HeapTuple	row;
	uint64		generation;
	bool		cacheable;

	result = BackendResultType(fcinfo);
	if (PG_ARGISNULL(0))
		row = NULL;
	else
	{
		hash = PG_GETARG_TEXT_PP(0);
		cacheable = BackendCacheUsable(&key_cache) && VARSIZE_ANY_EXHDR(hash) == KEY_HASH_LEN;
		if (cacheable && (entry = BackendCacheFind(&key_cache, VARDATA_ANY(hash))) != NULL)
			PG_RETURN_DATUM(datumCopy(PointerGetDatum(entry->row), false, -1));

		generation = key_cache.generation;
		row = lookup_key(hash, result);
		if (row != NULL && cacheable &&
			(entry = BackendCacheStore(&key_cache, VARDATA_ANY(hash), generation)) != NULL)
		{
			MemoryContext old = MemoryContextSwitchTo(key_cache.context);

			entry->row = DatumGetHeapTupleHeader(heap_copy_tuple_as_datum(row, result));
			MemoryContextSwitchTo(old);
		}
	}
	if (row == NULL)
	{
		Datum		values[KEY_FIELDS] = {0};
		bool		nulls[KEY_FIELDS] = {true, true, true, true, true, true, true, true};

		row = heap_form_tuple(result, values, nulls);
	}
	return heap_copy_tuple_as_datum(row, result);
}
