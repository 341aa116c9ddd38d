/*
 * cache.h — backend-local caches of small tables that every request reads,
 * forgotten whenever their table changes (cache.c has the design).
 */
#ifndef ENVOISMS_CACHE_H
#define ENVOISMS_CACHE_H

#include "access/htup_details.h"
#include "executor/spi.h"
#include "utils/hsearch.h"

typedef struct BackendCache
{
	const char *relnames[2];	/* the tables in schema envoisms whose changes empty it */
	Size		keysize;		/* fixed-size key (HASH_BLOBS) */
	Size		entrysize;
	/* state, managed by cache.c */
	Oid			relids[2];
	uint64		generation;
	MemoryContext context;		/* holds the table and what entries point to */
	HTAB	   *table;
	struct BackendCache *next;
} BackendCache;

/*
 * Before a lookup: read pending invalidations. Returns false when the
 * cache must not be used (a transaction snapshot decides what is visible).
 */
extern bool BackendCacheUsable(BackendCache *cache);

/* The entry for key, or NULL. */
extern void *BackendCacheFind(BackendCache *cache, const void *key);

/*
 * Store a new entry for key, unless an invalidation arrived since
 * generation was read (then NULL: use the answer, do not keep it).
 * Memory the entry points to is allocated in cache->context.
 */
extern void *BackendCacheStore(BackendCache *cache, const void *key, uint64 generation);

/*
 * The query that answers a miss: in a new snapshot (taken after the
 * invalidations BackendCacheUsable read), prepared once per backend into
 * *plan, run read-only. On return SPI is connected and SPI_tuptable holds
 * the rows; the caller copies what it needs, then calls BackendCacheQueryEnd.
 */
extern void BackendCacheQuery(SPIPlanPtr *plan, const char *sql, int nargs, Oid *types, Datum *args);
extern void BackendCacheQueryEnd(void);

/*
 * A cache of one row per key, for a function with OUT parameters: the row
 * the query (one text parameter, arg) finds, whose columns are the OUT
 * parameters in order, kept under the key's bytes when cacheable. Rows the
 * query does not find are not kept, and come back with every field NULL, as
 * does a NULL key (without a query).
 * The cache's entrysize must be BackendRowEntrySize(keysize).
 */
#define BackendRowEntrySize(keysize) (MAXALIGN(keysize) + sizeof(HeapTupleHeader))
extern Datum BackendCacheRow(BackendCache *cache, FunctionCallInfo fcinfo, const char *key,
							 bool cacheable, SPIPlanPtr *plan, const char *sql, Datum arg);

/*
 * The row type of a function with OUT parameters, blessed, built once per
 * backend and function (get_call_result_type() builds it from the catalog
 * on every call). A function's OUT parameters cannot change without a new
 * function, hence a new oid.
 */
extern TupleDesc BackendResultType(FunctionCallInfo fcinfo);

#endif							/* ENVOISMS_CACHE_H */
