/*
 * ratelimit.c — per-API-key request limits kept in shared memory.
 *
 * Design: one token bucket per key in a shared hash table (no table row and
 * no WAL per request). A bucket holds up to `limit` tokens and refills at
 * limit/60 tokens per second, so "100 per minute" allows a burst of 100 and
 * then one request every 0.6 s. Each call takes one token under the bucket's
 * partition lock; the hash is partitioned to keep 32 concurrent requests on
 * different keys from queueing behind one lock.
 *
 * Memory: envoisms.ratelimit_max_keys entries, fixed at start. When the table
 * is full the oldest-idle entry cannot be evicted cheaply, so a key that does
 * not fit is allowed through and counted in a warning once per minute —
 * availability over strictness, and the operator is told to raise the limit.
 *
 * The state is lost on restart (every bucket starts full), which is what a
 * rate limiter should do.
 */
#include "envoisms.h"

#include <math.h>

#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/hsearch.h"
#include "utils/timestamp.h"

#include "cache.h"

#define RATELIMIT_PARTITIONS 16
#define RATELIMIT_KEY_LEN 64

typedef struct RateLimitEntry
{
	char		key[RATELIMIT_KEY_LEN];	/* hash key: the API key id */
	double		tokens;
	TimestampTz updated;
} RateLimitEntry;

typedef struct RateLimitShared
{
	LWLockPadded *locks;		/* RATELIMIT_PARTITIONS locks */
	TimestampTz last_full_warning;
} RateLimitShared;

static int	ratelimit_max_keys = 10000;
static HTAB *ratelimit_hash = NULL;
static RateLimitShared *ratelimit_shared = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static void
ratelimit_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(RateLimitShared)) +
						   hash_estimate_size(ratelimit_max_keys, sizeof(RateLimitEntry)));
	RequestNamedLWLockTranche("envoisms_ratelimit", RATELIMIT_PARTITIONS);
}

static void
ratelimit_shmem_startup(void)
{
	HASHCTL		info;
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	ratelimit_shared = ShmemInitStruct("envoisms ratelimit", sizeof(RateLimitShared), &found);
	if (!found)
	{
		ratelimit_shared->locks = GetNamedLWLockTranche("envoisms_ratelimit");
		ratelimit_shared->last_full_warning = 0;
	}
	memset(&info, 0, sizeof(info));
	info.keysize = RATELIMIT_KEY_LEN;
	info.entrysize = sizeof(RateLimitEntry);
	info.num_partitions = RATELIMIT_PARTITIONS;
	ratelimit_hash = ShmemInitHash("envoisms ratelimit buckets",
								   ratelimit_max_keys, ratelimit_max_keys,
								   &info, HASH_ELEM | HASH_STRINGS | HASH_PARTITION);
	LWLockRelease(AddinShmemInitLock);
}

void
RateLimitInit(void)
{
	/* A PGC_POSTMASTER setting can only be defined while preloading. */
	if (!process_shared_preload_libraries_in_progress)
		return;

	DefineCustomIntVariable("envoisms.ratelimit_max_keys",
							"Number of API keys whose request rate is tracked in shared memory.",
							NULL, &ratelimit_max_keys, 10000, 100, 10000000,
							PGC_POSTMASTER, 0, NULL, NULL, NULL);

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = ratelimit_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = ratelimit_shmem_startup;
}

PG_FUNCTION_INFO_V1(ratelimit_take);

/*
 * ratelimit_take(key_id text, per_minute int) → (allowed, remaining, retry_after)
 * Takes one token from the key's bucket. A NULL or non-positive limit means
 * unlimited. retry_after is whole seconds until one token is back (0 when
 * allowed).
 */
Datum
ratelimit_take(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[3];
	bool		nulls[3] = {false, false, false};
	text	   *key_text;
	char		key[RATELIMIT_KEY_LEN];
	int			limit;
	bool		allowed = true;
	int			remaining = 0;
	int			retry_after = 0;

	tupdesc = BackendResultType(fcinfo);

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("rate limit key must not be null")));
	limit = PG_ARGISNULL(1) ? 0 : PG_GETARG_INT32(1);

	if (limit <= 0)
	{
		values[0] = BoolGetDatum(true);
		nulls[1] = true;
		values[2] = Int32GetDatum(0);
		PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
	}

	EnvoismsRequirePreload("the rate limiter");

	key_text = PG_GETARG_TEXT_PP(0);
	text_to_cstring_buffer(key_text, key, sizeof(key));

	{
		uint32		hashcode = get_hash_value(ratelimit_hash, key);
		LWLock	   *lock = &ratelimit_shared->locks[hashcode % RATELIMIT_PARTITIONS].lock;
		RateLimitEntry *entry;
		bool		found;
		TimestampTz now = GetCurrentTimestamp();
		double		rate = limit / 60.0;	/* tokens per second */

		LWLockAcquire(lock, LW_EXCLUSIVE);
		entry = hash_search_with_hash_value(ratelimit_hash, key, hashcode,
											HASH_ENTER_NULL, &found);
		if (entry == NULL)
		{
			LWLockRelease(lock);
			if (now - ratelimit_shared->last_full_warning > 60 * USECS_PER_SEC)
			{
				ratelimit_shared->last_full_warning = now;
				ereport(WARNING,
						(errmsg("envoisms rate limiter is full; requests of untracked keys are not limited"),
						 errhint("Raise envoisms.ratelimit_max_keys.")));
			}
			values[0] = BoolGetDatum(true);
			values[1] = Int32GetDatum(limit);
			values[2] = Int32GetDatum(0);
			PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
		}
		if (!found)
		{
			entry->tokens = limit;
			entry->updated = now;
		}
		else
		{
			double		elapsed = (now - entry->updated) / (double) USECS_PER_SEC;

			if (elapsed > 0)
				entry->tokens = Min((double) limit, entry->tokens + elapsed * rate);
			entry->updated = now;
			/* A lowered limit takes effect at once. */
			if (entry->tokens > limit)
				entry->tokens = limit;
		}
		if (entry->tokens >= 1.0)
		{
			entry->tokens -= 1.0;
			allowed = true;
			retry_after = 0;
		}
		else
		{
			allowed = false;
			retry_after = (int) ceil((1.0 - entry->tokens) / rate);
			if (retry_after < 1)
				retry_after = 1;
		}
		remaining = (int) floor(entry->tokens);
		LWLockRelease(lock);
	}

	values[0] = BoolGetDatum(allowed);
	values[1] = Int32GetDatum(remaining);
	values[2] = Int32GetDatum(retry_after);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

PG_FUNCTION_INFO_V1(ratelimit_reset);

/* ratelimit_reset(key_id text) — forget a key's bucket (it starts full again). */
Datum
ratelimit_reset(PG_FUNCTION_ARGS)
{
	char		key[RATELIMIT_KEY_LEN];
	uint32		hashcode;
	LWLock	   *lock;
	bool		found;

	EnvoismsRequirePreload("the rate limiter");
	text_to_cstring_buffer(PG_GETARG_TEXT_PP(0), key, sizeof(key));
	hashcode = get_hash_value(ratelimit_hash, key);
	lock = &ratelimit_shared->locks[hashcode % RATELIMIT_PARTITIONS].lock;
	LWLockAcquire(lock, LW_EXCLUSIVE);
	hash_search_with_hash_value(ratelimit_hash, key, hashcode, HASH_REMOVE, &found);
	LWLockRelease(lock);
	PG_RETURN_BOOL(found);
}
