/*
 * prices.c — an account's unit price on a channel, cached per backend.
 *
 * Every send needs its prices, and reading them from envoisms.prices (the
 * account's row, else the '*' default: envoisms.channel_prices) cost an
 * eighth of a send. unit_price() keeps what channel_prices() answered for
 * each (account, channel); the cache is emptied in every backend when the
 * table changes (cache.c), so a committed price change applies to every
 * session's next send.
 */
#include "envoisms.h"

#include "catalog/pg_type.h"
#include "utils/memutils.h"
#include "utils/numeric.h"

#include "cache.h"

/* Longest account id and channel that are cached (acc_ + 28 hex; "whatsapp"). */
#define PRICE_ACCOUNT_MAX 47
#define PRICE_CHANNEL_MAX 15

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

static BackendCache price_cache = {{"prices", NULL}, sizeof(PriceKey), sizeof(PriceEntry)};
static SPIPlanPtr lookup_plan = NULL;

/* channel_prices(account, channel) through SPI, in a new snapshot; copies go to the caller's context. */
static void
lookup_prices(text *account, text *channel, Numeric *mad, Numeric *eur)
{
	MemoryContext caller = CurrentMemoryContext;
	Datum		args[2] = {PointerGetDatum(account), PointerGetDatum(channel)};
	bool		isnull;
	Datum		value;

	Oid			types[2] = {TEXTOID, TEXTOID};

	*mad = NULL;
	*eur = NULL;
	BackendCacheQuery(&lookup_plan, "SELECT p.mad, p.eur FROM envoisms.channel_prices($1, $2) p", 2, types, args);
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
	BackendCacheQueryEnd();
}

static Numeric
copy_numeric(Numeric value, MemoryContext context)
{
	Numeric		copy;

	if (value == NULL)
		return NULL;
	copy = (Numeric) MemoryContextAlloc(context, VARSIZE(value));
	memcpy(copy, value, VARSIZE(value));
	return copy;
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
	bool		cacheable;
	PriceKey	key;
	PriceEntry *entry;
	Numeric		mad,
				eur;
	uint64		generation;

	if (!want_mad && strcmp(currency, "EUR") != 0)
		PG_RETURN_NULL();

	cacheable = BackendCacheUsable(&price_cache) &&
		VARSIZE_ANY_EXHDR(account) <= PRICE_ACCOUNT_MAX && VARSIZE_ANY_EXHDR(channel) <= PRICE_CHANNEL_MAX;
	if (cacheable)
	{
		memset(&key, 0, sizeof(key));
		memcpy(key.account, VARDATA_ANY(account), VARSIZE_ANY_EXHDR(account));
		memcpy(key.channel, VARDATA_ANY(channel), VARSIZE_ANY_EXHDR(channel));
		entry = BackendCacheFind(&price_cache, &key);
		if (entry != NULL)
		{
			/* a copy: the cache may be emptied while the caller still holds the value */
			Numeric		price = want_mad ? entry->mad : entry->eur;

			if (price == NULL)
				PG_RETURN_NULL();
			PG_RETURN_NUMERIC(copy_numeric(price, CurrentMemoryContext));
		}
	}

	generation = price_cache.generation;
	lookup_prices(account, channel, &mad, &eur);
	if (cacheable && (entry = BackendCacheStore(&price_cache, &key, generation)) != NULL)
	{
		entry->mad = copy_numeric(mad, price_cache.context);
		entry->eur = copy_numeric(eur, price_cache.context);
	}
	if ((want_mad ? mad : eur) == NULL)
		PG_RETURN_NULL();
	PG_RETURN_NUMERIC(want_mad ? mad : eur);
}
