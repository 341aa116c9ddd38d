/*
 * ids.c — public ids that sort by creation time.
 *
 * Layout: prefix "_" tttttttttttt rrrrrrrrrrrrrrrr — 12 lower-hex digits of
 * milliseconds since the Unix epoch (good until year 10889) and 16 lower-hex
 * digits (64 bits) from RAND_bytes (drawn 512 bytes at a time). Time first keeps btree inserts on the
 * right-most leaf; 64 random bits make a collision within one millisecond
 * negligible across backends.
 *
 * Within one backend ids are strictly increasing: when the clock has not
 * moved past the previous id's millisecond (same millisecond, or the clock
 * stepped back), the previous time is reused and the random part is the
 * previous one plus a random step in 1..2^32, so a bulk send's messages list
 * in the order they were made. Such an id still carries 32 unpredictable
 * bits relative to its predecessor; ids are names, not secrets (access is
 * checked by account), so that is enough to keep them from being counted.
 */
#include "envoisms.h"

#include "mb/pg_wchar.h"
#include "utils/timestamp.h"

#include "crypto.h"
#include "ids.h"

#define ID_TIME_DIGITS 12
#define ID_RANDOM_DIGITS 16
#define ID_TIME_MAX UINT64CONST(0xFFFFFFFFFFFF)

/* The last id this backend made, for monotonicity. */
static uint64 last_ms = 0;
static uint64 last_random = 0;

/*
 * Random bits for ids, drawn from the CSPRNG 512 bytes at a time: one
 * RAND_bytes call per 64 ids instead of one per id (a send makes one id, and
 * the call costs more than the rest of new_id). Filled lazily in the process
 * that uses it, never in the postmaster, so forked processes share nothing.
 */
static unsigned char id_pool[512];
static size_t id_pool_left = 0;

static uint64
id_random64(void)
{
	uint64		rnd = 0;
	const unsigned char *p;
	int			i;

	if (id_pool_left < 8)
	{
		EnvoismsRandomBytes(id_pool, sizeof(id_pool));
		id_pool_left = sizeof(id_pool);
	}
	p = id_pool + sizeof(id_pool) - id_pool_left;
	for (i = 0; i < 8; i++)
		rnd = (rnd << 8) | p[i];
	memset((void *) p, 0, 8);	/* used bits are not kept around */
	id_pool_left -= 8;
	return rnd;
}

/* Write the lower `digits` hex digits of v at out. */
static void
put_hex(char *out, uint64 v, int digits)
{
	static const char hex[] = "0123456789abcdef";

	for (int i = digits - 1; i >= 0; i--)
	{
		out[i] = hex[v & 0xF];
		v >>= 4;
	}
}

bool
EnvoismsIdPrefixValid(const char *prefix, size_t len)
{
	size_t		i;

	if (len < ENVOISMS_ID_PREFIX_MIN || len > ENVOISMS_ID_PREFIX_MAX)
		return false;
	for (i = 0; i < len; i++)
		if (prefix[i] < 'a' || prefix[i] > 'z')
			return false;
	return true;
}

static uint64
unix_milliseconds(void)
{
	TimestampTz now = GetCurrentTimestamp();

	return (uint64) (now / 1000 +
					 (int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY * 1000);
}

static void
check_prefix(const char *prefix, size_t len)
{
	if (!EnvoismsIdPrefixValid(prefix, len))
	{
		int			shown = Min(len, 64);

		/* Clip on a character boundary so the message stays valid text. */
		shown = pg_mbcliplen(prefix, len, shown);
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid id prefix \"%.*s\"", shown, prefix),
				 errdetail("An id prefix is 2 to 8 lower-case letters a-z.")));
	}
}

/* Format an id for an already checked prefix of plen bytes. */
static void
make_id(const char *prefix, size_t plen, char out[ENVOISMS_ID_BUFSIZE])
{
	uint64		ms = unix_milliseconds();
	uint64		rnd = id_random64();

	if (ms <= last_ms)
	{
		uint64		step = (rnd & UINT64CONST(0xFFFFFFFF)) + 1;

		ms = last_ms;
		if (last_random > PG_UINT64_MAX - step)
		{
			/* Random space of this millisecond used up: borrow the next one. */
			ms = last_ms + 1;
		}
		else
			rnd = last_random + step;
	}
	last_ms = ms;
	last_random = rnd;

	memcpy(out, prefix, plen);
	out[plen] = '_';
	put_hex(out + plen + 1, ms & ID_TIME_MAX, ID_TIME_DIGITS);
	put_hex(out + plen + 1 + ID_TIME_DIGITS, rnd, ID_RANDOM_DIGITS);
	out[plen + 1 + ID_TIME_DIGITS + ID_RANDOM_DIGITS] = '\0';
}

void
EnvoismsNewId(const char *prefix, char out[ENVOISMS_ID_BUFSIZE])
{
	size_t		plen = strlen(prefix);

	check_prefix(prefix, plen);
	make_id(prefix, plen, out);
}

PG_FUNCTION_INFO_V1(new_id);

/* new_id(prefix) — a new time-ordered id such as msg_0196f3a1b2c3d4e5f6a7b8c9d0e1. */
Datum
new_id(PG_FUNCTION_ARGS)
{
	text	   *prefix = PG_GETARG_TEXT_PP(0);
	size_t		plen = VARSIZE_ANY_EXHDR(prefix);
	char		id[ENVOISMS_ID_BUFSIZE];

	check_prefix(VARDATA_ANY(prefix), plen);
	make_id(VARDATA_ANY(prefix), plen, id);
	PG_RETURN_TEXT_P(cstring_to_text(id));
}
PG_FUNCTION_INFO_V1(id_time);

/* id_time(id) — the creation time encoded in an id; NULL when id is malformed. */
Datum
id_time(PG_FUNCTION_ARGS)
{
	text	   *id = PG_GETARG_TEXT_PP(0);
	const char *s = VARDATA_ANY(id);
	size_t		len = VARSIZE_ANY_EXHDR(id);
	size_t		plen;
	uint64		ms = 0;
	size_t		i;

	if (len < ENVOISMS_ID_PREFIX_MIN + 1 + ID_TIME_DIGITS + ID_RANDOM_DIGITS)
		PG_RETURN_NULL();
	plen = len - 1 - ID_TIME_DIGITS - ID_RANDOM_DIGITS;
	if (!EnvoismsIdPrefixValid(s, plen) || s[plen] != '_')
		PG_RETURN_NULL();
	for (i = plen + 1; i < len; i++)
	{
		char		c = s[i];
		int			v;

		if (c >= '0' && c <= '9')
			v = c - '0';
		else if (c >= 'a' && c <= 'f')
			v = c - 'a' + 10;
		else
			PG_RETURN_NULL();
		if (i < plen + 1 + ID_TIME_DIGITS)
			ms = (ms << 4) | v;
	}
	PG_RETURN_TIMESTAMPTZ((TimestampTz) ms * 1000 -
						  (int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY * USECS_PER_SEC);
}
