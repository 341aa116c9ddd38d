/*
 * prices.c — an account's unit price on a channel, cached per backend.
 *
 * Every send needs its prices, and reading them from envoisms.prices (the
 * account's row, else the '*' default: envoisms.channel_prices) cost an
 * eighth of a send. unit_price() keeps what channel_prices() answered for
 * each (account, channel) in a backend-local hash table.
 *
 * Invalidation: a statement trigger on envoisms.prices (prices_changed)
 * registers a relcache invalidation of the table. PostgreSQL applies it in
 * the changing backend at its next command (and again if it rolls back),
 * and sends it to every other backend once the change commits; our relcache
 * callback empties the cache. unit_price() reads pending invalidations
 * first, so a committed change is seen by the next send, as a query of the
 * table would see it under READ COMMITTED.
 *
 * A lookup's snapshot is taken after those invalidations were read, so it
 * sees every change they announced. One that arrives while the lookup runs
 * (it takes locks, which reads invalidations) may be newer than the
 * snapshot: that answer is used but not kept (generation counter). Under
 * REPEATABLE READ or SERIALIZABLE the transaction's snapshot decides, so
 * the cache is not used at all.
 */
#include "envoisms.h"

#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

/* Longest account id and channel that are cached (acc_ + 28 hex; "whatsapp"). */
#define PRICE_ACCOUNT_MAX 47
#define PRICE_CHANNEL_MAX 15
/* Entries kept before the cache starts again from empty. */
#define PRICE_CACHE_MAX 10000

typedef struct PriceKey
{
	char		account[PRICE_ACCOUNT_MAX + 1];
	char		channel[PRICE_CHANNEL_MAX + 1];
} PriceKey;

typedef struct PriceEntry
{
	PriceKey	key;
	Numeric		mad;			/* NULL: no price (channel without one) */
	Numeric		eur;
} PriceEntry;

static MemoryContext price_context = NULL;
static HTAB *price_cache = NULL;
static Oid	prices_relid = InvalidOid;
static uint64 price_generation = 0;
static bool callback_registered = false;
static SPIPlanPtr lookup_plan = NULL;

/* Relcache callback: forget every price when envoisms.prices changes (or on a full reset). */
static void
prices_forget(Datum arg, Oid relid)
{
	if (OidIsValid(relid) && relid != prices_relid)
		return;
	price_generation++;
	price_cache = NULL;
	prices_relid = InvalidOid;
	if (price_context != NULL)
		MemoryContextReset(price_context);
}

/* channel_prices(account, channel) through SPI; copies go to the caller's context. */
static void
lookup_prices(text *account, text *channel, Numeric *mad, Numeric *eur)
{
	MemoryContext caller = CurrentMemoryContext;
	Datum		args[2] = {PointerGetDatum(account), PointerGetDatum(channel)};
	bool		isnull;
	Datum		value;

	*mad = NULL;
	*eur = NULL;
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "unit_price: SPI_connect failed");
	if (lookup_plan == NULL)
	{
		Oid			types[2] = {TEXTOID, TEXTOID};
		SPIPlanPtr	plan = SPI_prepare("SELECT p.mad, p.eur FROM envoisms.channel_prices($1, $2) p", 2, types);

		if (plan == NULL)
			elog(ERROR, "unit_price: could not prepare the price lookup: %s", SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
		lookup_plan = plan;
	}
	if (SPI_execute_plan(lookup_plan, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "unit_price: the price lookup failed");
	if (SPI_processed == 1)
	{
		MemoryContext spi = MemoryContextSwitchTo(caller);

		value = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		if (!isnull)
			*mad = DatumGetNumericCopy(value);
		value = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
		if (!isnull)
			*eur = DatumGetNumericCopy(value);
		MemoryContextSwitchTo(spi);
	}
	SPI_finish();
}

PG_FUNCTION_INFO_V1(unit_price);

/*
 * unit_price(account_id, channel, currency) — the price of one SMS segment
 * or WhatsApp message in 'MAD' or 'EUR': what channel_prices() says, cached.
 * NULL when the channel has no price or the currency is neither.
 */
Datum
unit_price(PG_FUNCTION_ARGS)
{
	text	   *account = PG_GETARG_TEXT_PP(0);
	text	   *channel = PG_GETARG_TEXT_PP(1);
	char	   *currency = text_to_cstring(PG_GETARG_TEXT_PP(2));
	bool		want_mad = strcmp(currency, "MAD") == 0;
	PriceKey	key;
	PriceEntry *entry;
	Numeric		mad,
				eur;
	uint64		generation;

	if (!want_mad && strcmp(currency, "EUR") != 0)
		PG_RETURN_NULL();

	if (!callback_registered)
	{
		CacheRegisterRelcacheCallback(prices_forget, (Datum) 0);
		callback_registered = true;
	}
	AcceptInvalidationMessages();
	if (!IsolationUsesXactSnapshot() &&
		VARSIZE_ANY_EXHDR(account) <= PRICE_ACCOUNT_MAX && VARSIZE_ANY_EXHDR(channel) <= PRICE_CHANNEL_MAX)
	{
		memset(&key, 0, sizeof(key));
		memcpy(key.account, VARDATA_ANY(account), VARSIZE_ANY_EXHDR(account));
		memcpy(key.channel, VARDATA_ANY(channel), VARSIZE_ANY_EXHDR(channel));
		if (price_cache != NULL &&
			(entry = hash_search(price_cache, &key, HASH_FIND, NULL)) != NULL)
		{
			/* a copy: the cache may be emptied while the caller still holds the value */
			if ((want_mad ? entry->mad : entry->eur) == NULL)
				PG_RETURN_NULL();
			PG_RETURN_NUMERIC(DatumGetNumericCopy(NumericGetDatum(want_mad ? entry->mad : entry->eur)));
		}
	}
	else
		key.account[0] = '\0';	/* not cached: a transaction snapshot, or too long to be an account */

	generation = price_generation;
	PushActiveSnapshot(GetTransactionSnapshot());
	lookup_prices(account, channel, &mad, &eur);
	PopActiveSnapshot();

	/* keep it unless an invalidation came in during the lookup */
	if (key.account[0] != '\0' && generation == price_generation)
	{
		if (price_context == NULL)
			price_context = AllocSetContextCreate(TopMemoryContext, "envoisms unit prices",
												  ALLOCSET_SMALL_SIZES);
		if (price_cache != NULL && hash_get_num_entries(price_cache) >= PRICE_CACHE_MAX)
			prices_forget((Datum) 0, InvalidOid);
		if (price_cache == NULL)
		{
			HASHCTL		ctl;

			prices_relid = get_relname_relid("prices", get_namespace_oid("envoisms", false));
			ctl.keysize = sizeof(PriceKey);
			ctl.entrysize = sizeof(PriceEntry);
			ctl.hcxt = price_context;
			price_cache = hash_create("envoisms unit prices", 64, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
		}
		entry = hash_search(price_cache, &key, HASH_ENTER, NULL);
		entry->mad = mad == NULL ? NULL : (Numeric) MemoryContextAllocZero(price_context, VARSIZE(mad));
		if (mad != NULL)
			memcpy(entry->mad, mad, VARSIZE(mad));
		entry->eur = eur == NULL ? NULL : (Numeric) MemoryContextAllocZero(price_context, VARSIZE(eur));
		if (eur != NULL)
			memcpy(entry->eur, eur, VARSIZE(eur));
	}
	if ((want_mad ? mad : eur) == NULL)
		PG_RETURN_NULL();
	PG_RETURN_NUMERIC(want_mad ? mad : eur);
}

PG_FUNCTION_INFO_V1(prices_changed);

/* Statement trigger on envoisms.prices: every backend forgets its cached prices (see above). */
Datum
prices_changed(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("prices_changed must be called as a trigger")));
	CacheInvalidateRelcache(trigdata->tg_relation);
	return PointerGetDatum(NULL);
}
