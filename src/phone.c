/*
 * phone.c — SQL functions over libphonenumber (through phone_lib.h).
 *
 * A cheap pre-check runs before the library: after trimming surrounding
 * blanks (space, tab, CR, LF) the number must be 3..32 characters of ASCII
 * digits, spaces, dashes, dots and parentheses, with at most one '+' and
 * only in front.
 * Anything else is invalid without a library call, so garbage costs
 * nothing and never reaches the C++ parser. Garbage is never an error:
 * phone_e164 returns NULL and phone_parse a row with valid = false.
 *
 * The region is an ISO 3166-1 alpha-2 code, case-insensitive; NULL, or
 * anything that is not two letters, means "no default region", in which
 * case only numbers in international form (+…) can be valid.
 *
 * phone_e164 is on the path of every send and libphonenumber takes about
 * 12 µs per number (ICU regular expressions), so each backend keeps its
 * recent answers in a small cache keyed by (region, number): the same
 * recipients come back again and again (OTP, campaigns, retries) and a hit
 * costs a hash and a string compare (about 1 µs in all). The cache is
 * two-way set-associative with LRU replacement, 1024 entries (60 kB, in
 * static memory, so nothing to free). The answer is a pure function of the input and the library, so
 * the cache never goes stale.
 */
#include "envoisms.h"

#include "common/hashfn.h"

#include "phone_lib.h"

#define PHONE_MIN_LEN 3
#define PHONE_MAX_LEN 32
#define PHONE_CACHE_SETS 512	/* a power of two; two entries each */

typedef struct PhoneCacheEntry
{
	char		key[2 + PHONE_MAX_LEN + 1];	/* region (or "--"), number, NUL */
	bool		valid;
	char		e164[PHONE_E164_SIZE];
} PhoneCacheEntry;

static PhoneCacheEntry phone_cache[PHONE_CACHE_SETS][2];

/*
 * Copy the trimmed number into buf (PHONE_MAX_LEN + 1 bytes) when it passes
 * the pre-check; false otherwise.
 */
static bool
phone_precheck(text *number, char *buf)
{
	const char *s = VARDATA_ANY(number);
	int			len = VARSIZE_ANY_EXHDR(number);
	int			i;

	while (len > 0 && envoisms_is_blank(s[0]))
		s++, len--;
	while (len > 0 && envoisms_is_blank(s[len - 1]))
		len--;
	if (len < PHONE_MIN_LEN || len > PHONE_MAX_LEN)
		return false;
	for (i = 0; i < len; i++)
	{
		char		c = s[i];

		if ((c >= '0' && c <= '9') || c == ' ' || c == '-' || c == '.' ||
			c == '(' || c == ')' || (c == '+' && i == 0))
			continue;
		return false;
	}
	memcpy(buf, s, len);
	buf[len] = '\0';
	return true;
}

/* The region argument as an upper-case code in buf[3], or NULL for none. */
static const char *
phone_region(FunctionCallInfo fcinfo, int argno, char *buf)
{
	text	   *region;
	const char *s;

	if (PG_NARGS() <= argno || PG_ARGISNULL(argno))
		return NULL;
	region = PG_GETARG_TEXT_PP(argno);
	if (VARSIZE_ANY_EXHDR(region) != 2)
		return NULL;
	s = VARDATA_ANY(region);
	if (!envoisms_is_letter(s[0]) || !envoisms_is_letter(s[1]))
		return NULL;
	buf[0] = pg_ascii_toupper((unsigned char) s[0]);
	buf[1] = pg_ascii_toupper((unsigned char) s[1]);
	buf[2] = '\0';
	return buf;
}

static void
phone_lib_failed(void)
{
	ereport(ERROR,
			(errcode(ERRCODE_INTERNAL_ERROR),
			 errmsg("phone number library failed"),
			 errdetail("libphonenumber raised an exception; the server may be out of memory.")));
}

/*
 * The E.164 form of a pre-checked number, or NULL when it is not valid,
 * answered from the cache when possible. The result points into the cache
 * and is good until the next call.
 */
static const char *
phone_e164_cached(const char *number, const char *region)
{
	char		key[sizeof(((PhoneCacheEntry *) NULL)->key)];
	size_t		numlen = strlen(number);
	PhoneCacheEntry *set;

	memcpy(key, region ? region : "--", 2);
	memcpy(key + 2, number, numlen + 1);
	set = phone_cache[hash_bytes((const unsigned char *) key, numlen + 2) &
					  (PHONE_CACHE_SETS - 1)];
	if (strcmp(set[0].key, key) != 0)
	{
		PhoneCacheEntry found;

		if (strcmp(set[1].key, key) == 0)
			found = set[1];
		else
		{
			int			rc = EnvoismsPhoneE164(number, region, found.e164);

			if (rc == PHONE_LIB_ERROR)
				phone_lib_failed();
			memcpy(found.key, key, numlen + 3);
			found.valid = (rc == PHONE_LIB_VALID);
		}
		/* Most recently used first; the older entry of the set is dropped. */
		set[1] = set[0];
		set[0] = found;
	}
	return set[0].valid ? set[0].e164 : NULL;
}

PG_FUNCTION_INFO_V1(phone_e164);

/*
 * phone_e164(number, region default null) — the E.164 form of a valid
 * number, else NULL.
 */
Datum
phone_e164(PG_FUNCTION_ARGS)
{
	char		number[PHONE_MAX_LEN + 1];
	char		regionbuf[3];
	const char *e164;

	if (PG_ARGISNULL(0) || !phone_precheck(PG_GETARG_TEXT_PP(0), number))
		PG_RETURN_NULL();
	e164 = phone_e164_cached(number, phone_region(fcinfo, 1, regionbuf));
	if (e164 == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(e164));
}

static Datum
text_or_null(const char *s, bool *isnull)
{
	if (s[0] == '\0')
	{
		*isnull = true;
		return (Datum) 0;
	}
	*isnull = false;
	return CStringGetTextDatum(s);
}

PG_FUNCTION_INFO_V1(phone_parse);

/*
 * phone_parse(number, region default null) → one row describing the
 * number; valid = false and every other column NULL when it is not a
 * valid number.
 */
Datum
phone_parse(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char		number[PHONE_MAX_LEN + 1];
	char		regionbuf[3];
	EnvoismsPhoneInfo info;
	Datum		values[8];
	bool		nulls[8];
	int			rc = PHONE_LIB_INVALID;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();

	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);

	if (phone_precheck(PG_GETARG_TEXT_PP(0), number))
	{
		rc = EnvoismsPhoneParse(number, phone_region(fcinfo, 1, regionbuf), &info);
		if (rc == PHONE_LIB_ERROR)
			phone_lib_failed();
	}

	memset(nulls, true, sizeof(nulls));
	values[0] = BoolGetDatum(rc == PHONE_LIB_VALID);
	nulls[0] = false;
	if (rc == PHONE_LIB_VALID)
	{
		values[1] = text_or_null(info.e164, &nulls[1]);
		values[2] = text_or_null(info.country_prefix, &nulls[2]);
		values[3] = text_or_null(info.region, &nulls[3]);
		values[4] = text_or_null(info.line_type, &nulls[4]);
		values[5] = text_or_null(info.national, &nulls[5]);
		values[6] = text_or_null(info.e164, &nulls[6]);
		values[7] = text_or_null(info.location, &nulls[7]);
	}
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	return (Datum) 0;
}

PG_FUNCTION_INFO_V1(phone_country_name);

/* phone_country_name(region) — English country name of a region code, else NULL. */
Datum
phone_country_name(PG_FUNCTION_ARGS)
{
	char		regionbuf[3];
	const char *region = phone_region(fcinfo, 0, regionbuf);
	char		name[PHONE_TEXT_SIZE];
	int			rc;

	if (region == NULL)
		PG_RETURN_NULL();
	rc = EnvoismsPhoneCountryName(region, name, sizeof(name));
	if (rc == PHONE_LIB_ERROR)
		phone_lib_failed();
	if (rc != PHONE_LIB_VALID)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(name));
}
