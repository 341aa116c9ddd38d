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
 * Two buckets per request: the key's own, and its account's (one per account
 * and kind, live or test) at the calling key's limit. The account bucket is
 * what keeps key rotation from multiplying an account's rate: a new key
 * starts with a full bucket of its own, but not with a new account bucket,
 * so all the keys of an account together get at most the highest limit any
 * of them has. A request refused by one bucket gives back the token it took
 * from the other.
 *
 * Memory: envoisms.ratelimit_max_keys entries, fixed at start. When the table
 * is full, a new bucket evicts the one that will be full again soonest (a
 * scan of the table under every partition lock, paid only when full). A full
 * bucket is worth nothing, since a missing one starts full, so buckets idle
 * for a minute go first, then the least recently used among buckets of one
 * limit; an emptied bucket outlives a crowd of fresh ones, and revoked keys
 * age out. The limiter never fails open.
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
	TimestampTz full_at;		/* when tokens will be back to the limit */
} RateLimitEntry;

typedef struct RateLimitShared
{
	LWLockPadded *locks;		/* RATELIMIT_PARTITIONS locks */
	pg_atomic_uint64 evictions; /* buckets evicted since start */
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
		pg_atomic_init_u64(&ratelimit_shared->evictions, 0);
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

/*
 * Evict the bucket that will be full soonest, to make room for a new one.
 * Called with no partition lock held; takes them all, in order, so that it
 * cannot deadlock with another eviction and sees a consistent table.
 */
static void
evict_soonest_full(void)
{
	HASH_SEQ_STATUS scan;
	RateLimitEntry *entry;
	char		oldest[RATELIMIT_KEY_LEN] = "";
	TimestampTz oldest_full_at = PG_INT64_MAX;

	for (int i = 0; i < RATELIMIT_PARTITIONS; i++)
		LWLockAcquire(&ratelimit_shared->locks[i].lock, LW_EXCLUSIVE);
	hash_seq_init(&scan, ratelimit_hash);
	while ((entry = hash_seq_search(&scan)) != NULL)
	{
		if (entry->full_at < oldest_full_at)
		{
			oldest_full_at = entry->full_at;
			strlcpy(oldest, entry->key, sizeof(oldest));
		}
	}
	if (oldest[0] != '\0')
	{
		hash_search(ratelimit_hash, oldest, HASH_REMOVE, NULL);
		pg_atomic_fetch_add_u64(&ratelimit_shared->evictions, 1);
	}
	for (int i = RATELIMIT_PARTITIONS - 1; i >= 0; i--)
		LWLockRelease(&ratelimit_shared->locks[i].lock);
}

/*
 * Take one token from the bucket `key` (limit tokens per minute, a burst of
 * limit), or `give_back` one that an earlier take did not use. Sets
 * *remaining to the whole tokens left and returns 0 when allowed, else the
 * whole seconds until a token is back.
 */
static int
bucket_take(const char *key, int limit, bool give_back, int *remaining)
{
	uint32		hashcode = get_hash_value(ratelimit_hash, key);
	LWLock	   *lock = &ratelimit_shared->locks[hashcode % RATELIMIT_PARTITIONS].lock;
	RateLimitEntry *entry;
	bool		found;
	TimestampTz now = GetCurrentTimestamp();
	double		rate = limit / 60.0;	/* tokens per second */
	int			retry_after = 0;

	for (int tries = 0;; tries++)
	{
		LWLockAcquire(lock, LW_EXCLUSIVE);
		entry = hash_search_with_hash_value(ratelimit_hash, key, hashcode, HASH_FIND, &found);
		if (entry != NULL || give_back)
			break;
		if (hash_get_num_entries(ratelimit_hash) < ratelimit_max_keys)
		{
			entry = hash_search_with_hash_value(ratelimit_hash, key, hashcode, HASH_ENTER_NULL, &found);
			if (entry != NULL)
				break;
		}
		LWLockRelease(lock);
		if (tries == 8)
			ereport(ERROR,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("the rate limiter's shared memory is exhausted"),
					 errhint("Raise envoisms.ratelimit_max_keys.")));
		evict_soonest_full();
	}
	if (entry == NULL)
	{
		/* giving back to a bucket evicted meanwhile: it is full anyway */
		LWLockRelease(lock);
		*remaining = limit;
		return 0;
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
			entry->tokens += elapsed * rate;
		entry->updated = now;
	}
	/* A lowered limit takes effect at once. */
	if (entry->tokens > limit)
		entry->tokens = limit;
	if (give_back)
		entry->tokens = Min((double) limit, entry->tokens + 1.0);
	else if (entry->tokens >= 1.0)
		entry->tokens -= 1.0;
	else
	{
		retry_after = (int) ceil((1.0 - entry->tokens) / rate);
		if (retry_after < 1)
			retry_after = 1;
	}
	entry->full_at = now + (TimestampTz) ((limit - entry->tokens) / rate * USECS_PER_SEC);
	*remaining = (int) floor(entry->tokens);
	LWLockRelease(lock);
	return retry_after;
}

PG_FUNCTION_INFO_V1(ratelimit_take);

/*
 * ratelimit_take(key_id text, per_minute int, account_key text DEFAULT NULL)
 *     → (allowed, remaining, retry_after)
 * Takes one token from the key's bucket and, when account_key is given, one
 * from that account's bucket at the same limit. A NULL or non-positive limit
 * means unlimited. remaining is the lower of the two buckets; retry_after is
 * whole seconds until a token is back (0 when allowed).
 */
Datum
ratelimit_take(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[3];
	bool		nulls[3] = {false, false, false};
	char		key[RATELIMIT_KEY_LEN];
	char		account[RATELIMIT_KEY_LEN];
	int			limit;
	int			remaining = 0;
	int			retry_after;

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

	/* "k:" and "a:" keep a key id and an account name from ever meeting */
	snprintf(key, sizeof(key), "k:%s", text_to_cstring(PG_GETARG_TEXT_PP(0)));
	retry_after = bucket_take(key, limit, false, &remaining);
	if (retry_after == 0 && PG_NARGS() > 2 && !PG_ARGISNULL(2))
	{
		int			account_remaining;

		snprintf(account, sizeof(account), "a:%s", text_to_cstring(PG_GETARG_TEXT_PP(2)));
		retry_after = bucket_take(account, limit, false, &account_remaining);
		remaining = Min(remaining, account_remaining);
		if (retry_after > 0)
			bucket_take(key, limit, true, &account_remaining);
	}

	values[0] = BoolGetDatum(retry_after == 0);
	values[1] = Int32GetDatum(remaining);
	values[2] = Int32GetDatum(retry_after);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

PG_FUNCTION_INFO_V1(ratelimit_stats);

/* ratelimit_stats() → (buckets, capacity, evictions): the table's state. */
Datum
ratelimit_stats(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc = BackendResultType(fcinfo);
	Datum		values[3];
	bool		nulls[3] = {false, false, false};

	EnvoismsRequirePreload("the rate limiter");
	values[0] = Int64GetDatum(hash_get_num_entries(ratelimit_hash));
	values[1] = Int32GetDatum(ratelimit_max_keys);
	values[2] = Int64GetDatum((int64) pg_atomic_read_u64(&ratelimit_shared->evictions));
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
	snprintf(key, sizeof(key), "k:%s", text_to_cstring(PG_GETARG_TEXT_PP(0)));
	hashcode = get_hash_value(ratelimit_hash, key);
	lock = &ratelimit_shared->locks[hashcode % RATELIMIT_PARTITIONS].lock;
	LWLockAcquire(lock, LW_EXCLUSIVE);
	hash_search_with_hash_value(ratelimit_hash, key, hashcode, HASH_REMOVE, &found);
	LWLockRelease(lock);
	PG_RETURN_BOOL(found);
}
