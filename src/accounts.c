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

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "utils/datum.h"

#include "cache.h"

#define ACCOUNT_ID_LEN 32		/* acc_ and 28 hex digits (the accounts CHECK) */
#define ACCOUNT_FIELDS 3

typedef struct AccountEntry
{
	char		account_id[ACCOUNT_ID_LEN];
	HeapTupleHeader row;		/* the answer, as a composite value */
} AccountEntry;

static BackendCache account_cache = {{"accounts", "optouts"}, ACCOUNT_ID_LEN, sizeof(AccountEntry)};
static SPIPlanPtr lookup_plan = NULL;

/* The account's (status, channels, has_optouts), or NULL; formed in the caller's context. */
static HeapTuple
lookup_account(text *account_id, TupleDesc result)
{
	MemoryContext caller = CurrentMemoryContext;
	Datum		arg = PointerGetDatum(account_id);
	Oid			type = TEXTOID;
	HeapTuple	row = NULL;

	BackendCacheQuery(&lookup_plan,
					  "SELECT a.status, a.channels,"
					  "       EXISTS (SELECT 1 FROM envoisms.optouts o WHERE o.account_id = a.account_id)"
					  "  FROM envoisms.accounts a WHERE a.account_id = $1", 1, &type, &arg);
	if (SPI_processed == 1)
	{
		Datum		values[ACCOUNT_FIELDS];
		bool		nulls[ACCOUNT_FIELDS];
		MemoryContext spi;

		for (int i = 0; i < ACCOUNT_FIELDS; i++)
			values[i] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, i + 1, &nulls[i]);
		spi = MemoryContextSwitchTo(caller);
		row = heap_form_tuple(result, values, nulls);
		MemoryContextSwitchTo(spi);
	}
	BackendCacheQueryEnd();
	return row;
}

PG_FUNCTION_INFO_V1(account_lookup);

/*
 * account_lookup(account_id) — (status, channels, has_optouts) of the
 * account; every field NULL when there is no such account.
 */
Datum
account_lookup(PG_FUNCTION_ARGS)
{
	TupleDesc	result = BackendResultType(fcinfo);
	text	   *account_id = PG_GETARG_TEXT_PP(0);
	bool		cacheable = BackendCacheUsable(&account_cache) &&
		VARSIZE_ANY_EXHDR(account_id) == ACCOUNT_ID_LEN;
	AccountEntry *entry;
	HeapTuple	row;
	uint64		generation;

	if (cacheable && (entry = BackendCacheFind(&account_cache, VARDATA_ANY(account_id))) != NULL)
		PG_RETURN_DATUM(datumCopy(PointerGetDatum(entry->row), false, -1));

	generation = account_cache.generation;
	row = lookup_account(account_id, result);
	if (row != NULL && cacheable &&
		(entry = BackendCacheStore(&account_cache, VARDATA_ANY(account_id), generation)) != NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(account_cache.context);

		entry->row = DatumGetHeapTupleHeader(heap_copy_tuple_as_datum(row, result));
		MemoryContextSwitchTo(old);
	}
	if (row == NULL)
	{
		Datum		values[ACCOUNT_FIELDS] = {0};
		bool		nulls[ACCOUNT_FIELDS] = {true, true, true};

		row = heap_form_tuple(result, values, nulls);
	}
	return heap_copy_tuple_as_datum(row, result);
}
