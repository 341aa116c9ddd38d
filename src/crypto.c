/*
 * crypto.c — OpenSSL primitives exposed to SQL: random bytes and digits,
 * SHA-256, HMAC-SHA256 (hex and base64), constant-time comparison, and the
 * hash of the API key an Authorization header carries.
 *
 * Design: every function is a thin, checked wrapper around libcrypto; the
 * C-callable helpers (crypto.h) do the work so that the webhook worker and
 * the SQL functions share one implementation. Secrets never go through
 * palloc'd intermediates longer than needed, and stack buffers that held
 * key-derived bytes are wiped with OPENSSL_cleanse.
 *
 * random_digits uses rejection sampling: a byte is accepted only below 250
 * (the largest multiple of 10 that fits), so each digit is exactly uniform.
 */
#include "envoisms.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "crypto.h"

#define RANDOM_BYTES_MAX 1024
#define RANDOM_DIGITS_MAX 32
#define SHA256_LEN 32
/* env_live_ or env_test_ and 48 lower-hex digits */
#define API_KEY_LEN (9 + 48)

void
EnvoismsRandomBytes(unsigned char *buf, size_t len)
{
	if (len > INT_MAX)
		elog(ERROR, "random byte request of %zu bytes is too large", len);
	if (len > 0 && RAND_bytes(buf, (int) len) != 1)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate random bytes"),
				 errdetail("OpenSSL RAND_bytes failed.")));
}

void
EnvoismsHexEncode(const unsigned char *in, size_t len, char *out)
{
	static const char digits[] = "0123456789abcdef";
	size_t		i;

	for (i = 0; i < len; i++)
	{
		out[2 * i] = digits[in[i] >> 4];
		out[2 * i + 1] = digits[in[i] & 0x0f];
	}
	out[2 * len] = '\0';
}

/*
 * SHA-256, fetched from the default provider once per process: EVP_sha256()
 * looks the algorithm up again on every use, which cost more than hashing
 * an API key (every request hashes one).
 */
static const EVP_MD *
sha256_md(void)
{
	static EVP_MD *md = NULL;

	if (md == NULL)
	{
		md = EVP_MD_fetch(NULL, "SHA256", NULL);
		if (md == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("could not load sha-256 from OpenSSL")));
	}
	return md;
}

void
EnvoismsSha256Hex(const char *data, size_t len, char out[65])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;

	if (EVP_Digest(data, len, md, &mdlen, sha256_md(), NULL) != 1 ||
		mdlen != SHA256_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not compute sha-256 digest")));
	EnvoismsHexEncode(md, SHA256_LEN, out);
}

void
EnvoismsHmacSha256(const char *key, size_t keylen,
				   const char *data, size_t len, unsigned char out[32])
{
	unsigned int mdlen = 0;

	/* OpenSSL 3 rejects a NULL key even with length 0; "" is the empty key. */
	if (HMAC(sha256_md(), key ? key : "", (int) keylen,
			 (const unsigned char *) (data ? data : ""), len,
			 out, &mdlen) == NULL || mdlen != SHA256_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not compute hmac-sha256")));
}

void
EnvoismsHmacSha256Hex(const char *key, size_t keylen,
					  const char *data, size_t len, char out[65])
{
	unsigned char mac[SHA256_LEN];

	EnvoismsHmacSha256(key, keylen, data, len, mac);
	EnvoismsHexEncode(mac, SHA256_LEN, out);
	OPENSSL_cleanse(mac, sizeof(mac));
}

bool
EnvoismsSecureEquals(const char *a, size_t alen, const char *b, size_t blen)
{
	size_t		n = Min(alen, blen);
	int			diff;

	/* Always compare the common prefix so timing depends on length only. */
	diff = n > 0 ? CRYPTO_memcmp(a, b, n) : 0;
	return (alen == blen) & (diff == 0);
}

PG_FUNCTION_INFO_V1(random_bytes_hex);

/* random_bytes_hex(n) — 2n lower-hex characters from the CSPRNG, n in 1..1024. */
Datum
random_bytes_hex(PG_FUNCTION_ARGS)
{
	int32		n = PG_GETARG_INT32(0);
	unsigned char buf[RANDOM_BYTES_MAX];
	char		hex[2 * RANDOM_BYTES_MAX + 1];
	text	   *result;

	if (n < 1 || n > RANDOM_BYTES_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("random byte count must be between 1 and %d", RANDOM_BYTES_MAX),
				 errdetail("The requested count was %d.", n)));
	EnvoismsRandomBytes(buf, n);
	EnvoismsHexEncode(buf, n, hex);
	result = cstring_to_text_with_len(hex, 2 * n);
	OPENSSL_cleanse(buf, n);
	OPENSSL_cleanse(hex, 2 * n);
	PG_RETURN_TEXT_P(result);
}

PG_FUNCTION_INFO_V1(random_digits);

/* random_digits(n) — n uniform decimal digits (n in 1..32), e.g. an OTP code. */
Datum
random_digits(PG_FUNCTION_ARGS)
{
	int32		n = PG_GETARG_INT32(0);
	char		digits[RANDOM_DIGITS_MAX];
	unsigned char pool[64];
	int			have = 0;
	text	   *result;

	if (n < 1 || n > RANDOM_DIGITS_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("random digit count must be between 1 and %d", RANDOM_DIGITS_MAX),
				 errdetail("The requested count was %d.", n)));

	while (have < n)
	{
		int			i;

		EnvoismsRandomBytes(pool, sizeof(pool));
		for (i = 0; i < (int) sizeof(pool) && have < n; i++)
		{
			/* 250 = 25 * 10: bytes 250..255 would favour digits 0..5. */
			if (pool[i] < 250)
				digits[have++] = '0' + pool[i] % 10;
		}
	}
	result = cstring_to_text_with_len(digits, n);
	OPENSSL_cleanse(pool, sizeof(pool));
	OPENSSL_cleanse(digits, sizeof(digits));
	PG_RETURN_TEXT_P(result);
}

PG_FUNCTION_INFO_V1(sha256_hex);

/* sha256_hex(data) — lower-hex SHA-256 of the text's bytes (UTF-8). */
Datum
sha256_hex(PG_FUNCTION_ARGS)
{
	text	   *data = PG_GETARG_TEXT_PP(0);
	char		hex[2 * SHA256_LEN + 1];

	EnvoismsSha256Hex(VARDATA_ANY(data), VARSIZE_ANY_EXHDR(data), hex);
	PG_RETURN_TEXT_P(cstring_to_text_with_len(hex, 2 * SHA256_LEN));
}

PG_FUNCTION_INFO_V1(api_key_hash);

/*
 * api_key_hash(authorization) — the SHA-256 (lower hex) of the API key an
 * Authorization header carries, or NULL when the header is not
 * "Bearer env_live_<48 hex>" or "Bearer env_test_<48 hex>" (scheme in any
 * case, blanks around the key). A scan instead of a case-insensitive regular
 * expression, which cost more than the rest of authentication together.
 */
Datum
api_key_hash(PG_FUNCTION_ARGS)
{
	text	   *header = PG_GETARG_TEXT_PP(0);
	const char *p = VARDATA_ANY(header);
	const char *end = p + VARSIZE_ANY_EXHDR(header);
	const char *key;
	char		hex[2 * SHA256_LEN + 1];
	int			i;

	if (end - p < 7 || pg_strncasecmp(p, "bearer", 6) != 0 || (p[6] != ' ' && p[6] != '\t'))
		PG_RETURN_NULL();
	p += 6;
	while (p < end && (*p == ' ' || *p == '\t'))
		p++;
	while (end > p && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\r' || end[-1] == '\n'))
		end--;
	key = p;
	if (end - key != API_KEY_LEN ||
		(strncmp(key, "env_live_", 9) != 0 && strncmp(key, "env_test_", 9) != 0))
		PG_RETURN_NULL();
	for (i = 9; i < API_KEY_LEN; i++)
		if (!((key[i] >= '0' && key[i] <= '9') || (key[i] >= 'a' && key[i] <= 'f')))
			PG_RETURN_NULL();
	EnvoismsSha256Hex(key, API_KEY_LEN, hex);
	PG_RETURN_TEXT_P(cstring_to_text_with_len(hex, 2 * SHA256_LEN));
}

PG_FUNCTION_INFO_V1(hmac_sha256_hex);

/* hmac_sha256_hex(key, data) — lower-hex HMAC-SHA256; key and data as UTF-8 bytes. */
Datum
hmac_sha256_hex(PG_FUNCTION_ARGS)
{
	text	   *key = PG_GETARG_TEXT_PP(0);
	text	   *data = PG_GETARG_TEXT_PP(1);
	char		hex[2 * SHA256_LEN + 1];

	EnvoismsHmacSha256Hex(VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key),
						  VARDATA_ANY(data), VARSIZE_ANY_EXHDR(data), hex);
	PG_RETURN_TEXT_P(cstring_to_text_with_len(hex, 2 * SHA256_LEN));
}

PG_FUNCTION_INFO_V1(hmac_sha256_base64);

/* hmac_sha256_base64(key bytea, data) — standard (padded) base64 HMAC-SHA256. */
Datum
hmac_sha256_base64(PG_FUNCTION_ARGS)
{
	bytea	   *key = PG_GETARG_BYTEA_PP(0);
	text	   *data = PG_GETARG_TEXT_PP(1);
	unsigned char mac[SHA256_LEN];
	char		b64[4 * ((SHA256_LEN + 2) / 3) + 1];
	int			b64len;

	EnvoismsHmacSha256(VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key),
					   VARDATA_ANY(data), VARSIZE_ANY_EXHDR(data), mac);
	b64len = EVP_EncodeBlock((unsigned char *) b64, mac, SHA256_LEN);
	OPENSSL_cleanse(mac, sizeof(mac));
	if (b64len != (int) sizeof(b64) - 1)
		elog(ERROR, "unexpected base64 length %d", b64len);
	PG_RETURN_TEXT_P(cstring_to_text_with_len(b64, b64len));
}

PG_FUNCTION_INFO_V1(secure_equals);

/* secure_equals(a, b) — equality whose time does not depend on where a and b differ. */
Datum
secure_equals(PG_FUNCTION_ARGS)
{
	text	   *a = PG_GETARG_TEXT_PP(0);
	text	   *b = PG_GETARG_TEXT_PP(1);

	PG_RETURN_BOOL(EnvoismsSecureEquals(VARDATA_ANY(a), VARSIZE_ANY_EXHDR(a),
										VARDATA_ANY(b), VARSIZE_ANY_EXHDR(b)));
}
