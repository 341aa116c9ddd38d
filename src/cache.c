/*
 * cache.c — backend-local caches of small tables that every send or request
 * reads (unit prices, accounts, API keys, routes), forgotten whenever their
 * tables change.
 *
 * Invalidation: a statement trigger on the table (cache_forget) registers a
 * relcache invalidation of it. PostgreSQL applies it in the changing
 * backend at its next command (and again if it rolls back), and sends it to
 * every other backend once the change commits; our relcache callback then
 * empties the caches of that table. BackendCacheUsable() reads pending
 * invalidations first, so a change is seen by every lookup that starts
 * after its COMMIT returned, as a query of the table would see it under
 * READ COMMITTED.
 *
 * A miss is answered by a query whose snapshot is taken after those
 * invalidations were read, so it sees every change they announced. One
 * that arrives while the query runs (it takes locks, which reads
 * invalidations) may be newer than its snapshot: the answer is used but
 * not kept (generation counter), so nothing stale is ever stored. Under
 * REPEATABLE READ or SERIALIZABLE the transaction's snapshot decides what
 * is visible, so the caches are not used at all.
 */
#include "envoisms.h"

#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "utils/datum.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "cache.h"

/* Entries kept before a cache starts again from empty. */
#define CACHE_MAX_ENTRIES 10000

static BackendCache *caches = NULL;
static bool callback_registered = false;

static void
cache_reset(BackendCache *cache)
{
	cache->generation++;
	cache->table = NULL;
	cache->relids[0] = cache->relids[1] = InvalidOid;
	if (cache->context != NULL)
		MemoryContextReset(cache->context);
}

/* Relcache callback: empty the caches of the changed table (all of them on a full reset). */
static void
caches_forget(Datum arg, Oid relid)
{
	BackendCache *cache;

	for (cache = caches; cache != NULL; cache = cache->next)
		if (!OidIsValid(relid) || relid == cache->relids[0] || relid == cache->relids[1])
			cache_reset(cache);
}

bool
BackendCacheUsable(BackendCache *cache)
{
	if (!callback_registered)
	{
		CacheRegisterRelcacheCallback(caches_forget, (Datum) 0);
		callback_registered = true;
	}
	if (cache->context == NULL)
	{
		cache->context = AllocSetContextCreate(TopMemoryContext, "envoisms backend cache", ALLOCSET_SMALL_SIZES);
		MemoryContextSetIdentifier(cache->context, cache->relnames[0]);
		cache->next = caches;
		caches = cache;
	}
	AcceptInvalidationMessages();
	return !IsolationUsesXactSnapshot();
}

void *
BackendCacheFind(BackendCache *cache, const void *key)
{
	if (cache->table == NULL)
		return NULL;
	return hash_search(cache->table, key, HASH_FIND, NULL);
}

void *
BackendCacheStore(BackendCache *cache, const void *key, uint64 generation)
{
	if (generation != cache->generation)
		return NULL;
	if (cache->table != NULL && hash_get_num_entries(cache->table) >= CACHE_MAX_ENTRIES)
		cache_reset(cache);
	if (cache->table == NULL)
	{
		HASHCTL		ctl;
		Oid			schema = get_namespace_oid("envoisms", false);

		for (int i = 0; i < 2; i++)
			if (cache->relnames[i] != NULL)
				cache->relids[i] = get_relname_relid(cache->relnames[i], schema);
		ctl.keysize = cache->keysize;
		ctl.entrysize = cache->entrysize;
		ctl.hcxt = cache->context;
		cache->table = hash_create(cache->relnames[0], 64, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	return hash_search(cache->table, key, HASH_ENTER, NULL);
}

void
BackendCacheQuery(SPIPlanPtr *plan, const char *sql, int nargs, Oid *types, Datum *args)
{
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (*plan == NULL)
	{
		SPIPlanPtr	prepared = SPI_prepare(sql, nargs, types);

		if (prepared == NULL)
			elog(ERROR, "could not prepare \"%s\": %s", sql, SPI_result_code_string(SPI_result));
		SPI_keepplan(prepared);
		*plan = prepared;
	}
	if (SPI_execute_plan(*plan, args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "the query \"%s\" failed", sql);
}

void
BackendCacheQueryEnd(void)
{
	SPI_finish();
	PopActiveSnapshot();
}

/* The query's row (at most one), formed in the caller's context, or NULL. */
static HeapTuple
query_row(SPIPlanPtr *plan, const char *sql, Datum arg, TupleDesc result)
{
	MemoryContext caller = CurrentMemoryContext;
	Oid			type = TEXTOID;
	HeapTuple	row = NULL;

	BackendCacheQuery(plan, sql, 1, &type, &arg);
	if (SPI_processed == 1)
	{
		int			natts = result->natts;
		Datum	   *values = palloc(natts * sizeof(Datum));
		bool	   *nulls = palloc(natts * sizeof(bool));
		MemoryContext spi;

		for (int i = 0; i < natts; i++)
			values[i] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, i + 1, &nulls[i]);
		spi = MemoryContextSwitchTo(caller);
		row = heap_form_tuple(result, values, nulls);
		MemoryContextSwitchTo(spi);
	}
	BackendCacheQueryEnd();
	return row;
}

Datum
BackendCacheRow(BackendCache *cache, FunctionCallInfo fcinfo, const char *key, bool cacheable,
				SPIPlanPtr *plan, const char *sql, Datum arg)
{
	TupleDesc	result = BackendResultType(fcinfo);
	Size		row_offset = MAXALIGN(cache->keysize);
	char	   *entry;
	HeapTuple	row;
	uint64		generation;

	cacheable = key != NULL && BackendCacheUsable(cache) && cacheable;
	if (cacheable && (entry = BackendCacheFind(cache, key)) != NULL)
		return datumCopy(PointerGetDatum(*(HeapTupleHeader *) (entry + row_offset)), false, -1);

	generation = cache->generation;
	row = key == NULL ? NULL : query_row(plan, sql, arg, result);
	if (row != NULL && cacheable && (entry = BackendCacheStore(cache, key, generation)) != NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(cache->context);

		*(HeapTupleHeader *) (entry + row_offset) =
			DatumGetHeapTupleHeader(heap_copy_tuple_as_datum(row, result));
		MemoryContextSwitchTo(old);
	}
	if (row == NULL)
	{
		Datum	   *values = palloc0(result->natts * sizeof(Datum));
		bool	   *nulls = palloc(result->natts * sizeof(bool));

		memset(nulls, true, result->natts * sizeof(bool));
		row = heap_form_tuple(result, values, nulls);
	}
	return heap_copy_tuple_as_datum(row, result);
}

#define RESULT_TYPES_MAX 16

typedef struct ResultType
{
	Oid			function;
	TupleDesc	desc;
} ResultType;

static ResultType result_types[RESULT_TYPES_MAX];
static int	n_result_types = 0;

TupleDesc
BackendResultType(FunctionCallInfo fcinfo)
{
	Oid			function = fcinfo->flinfo->fn_oid;
	TupleDesc	desc;
	MemoryContext old;

	for (int i = 0; i < n_result_types; i++)
		if (result_types[i].function == function)
			return result_types[i].desc;
	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "function %u must return a composite type", function);
	if (n_result_types == RESULT_TYPES_MAX)
		return BlessTupleDesc(desc);
	old = MemoryContextSwitchTo(TopMemoryContext);
	desc = CreateTupleDescCopy(desc);
	MemoryContextSwitchTo(old);
	desc = BlessTupleDesc(desc);
	result_types[n_result_types].function = function;
	result_types[n_result_types].desc = desc;
	n_result_types++;
	return desc;
}

/*
 * On a cluster the statement triggers fire on the shards (a shard is the
 * table's name, '_' and the shard id, in the table's schema), on the nodes
 * that hold them, never on the table the caches know. A reference table has
 * a copy on every node, so each node hears of the change this way.
 */
static void
forget_logical_table(Relation shard)
{
	const char *name = RelationGetRelationName(shard);
	const char *cut = strrchr(name, '_');
	Oid			logical;

	if (cut == NULL || cut[1] == '\0' || strspn(cut + 1, "0123456789") != strlen(cut + 1))
		return;
	logical = get_relname_relid(pnstrdup(name, cut - name), RelationGetNamespace(shard));
	if (OidIsValid(logical) && logical != RelationGetRelid(shard))
		CacheInvalidateRelcacheByRelid(logical);
}

PG_FUNCTION_INFO_V1(cache_forget);

/* Statement trigger on a cached table: every backend forgets what it cached of it. */
Datum
cache_forget(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("cache_forget must be called as a trigger")));
	CacheInvalidateRelcache(trigdata->tg_relation);
	if (ClusterMode())
		forget_logical_table(trigdata->tg_relation);
	return PointerGetDatum(NULL);
}
