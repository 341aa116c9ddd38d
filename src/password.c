/*
 * password.c — the console's passwords: scrypt (RFC 7914) through OpenSSL's
 * EVP_PBE_scrypt, the library the extension already links, so that a
 * password costs a slow, memory-hard derivation without a new dependency
 * or a second extension to create first.
 *
 * A stored hash reads "$scrypt$ln=<log2 N>,r=<r>,p=<p>$<salt hex>$<key hex>"
 * with a 16-byte random salt and a 32-byte key. The cost travels with each
 * hash, so raising the default later leaves old hashes checkable.
 * password_verify() derives with the stored parameters and compares in
 * constant time; a hash it cannot read is a mismatch, never an error, so a
 * sign-in cannot tell a broken row from a wrong password.
 *
 * Cost: the SQL default is N = 2^14, r = 8, p = 1 (16 MiB, 128 * r * N
 * bytes, for the call's duration, allocated and freed by OpenSSL), scrypt's
 * own parameters for interactive logins, so that a sign-in stays near
 * 100 ms on a busy 2-core server. The derived bytes are wiped before
 * returning.
 */
#include "envoisms.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "crypto.h"

#define SALT_LEN 16
#define KEY_LEN 32
#define LOG_N_MIN 10
#define LOG_N_MAX 20
#define PASSWORD_MAX 1024

/* scrypt(password, salt) with 2^log_n, r, p into key; false when OpenSSL refuses. */
static bool
derive(const char *password, size_t len, const unsigned char *salt, int log_n, int r, int p,
	   unsigned char key[KEY_LEN])
{
	uint64		n = UINT64_C(1) << log_n;
	uint64		maxmem = (uint64) 130 * r * n + (uint64) 1024 * 1024;

	return EVP_PBE_scrypt(password, len, salt, SALT_LEN, n, r, p, maxmem, key, KEY_LEN) == 1;
}

/* The password's bytes, refused when empty, too long, or holding NUL. */
static void
check_password(text *password)
{
	size_t		len = VARSIZE_ANY_EXHDR(password);

	if (len == 0 || len > PASSWORD_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a password must be 1 to %d bytes", PASSWORD_MAX)));
}

static int
hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* Decode exactly len bytes of lower hex; false on anything else. */
static bool
hex_bytes(const char *hex, size_t hexlen, unsigned char *out, size_t len)
{
	if (hexlen != 2 * len)
		return false;
	for (size_t i = 0; i < len; i++)
	{
		int			hi = hex_digit(hex[2 * i]);
		int			lo = hex_digit(hex[2 * i + 1]);

		if (hi < 0 || lo < 0)
			return false;
		out[i] = (unsigned char) (hi << 4 | lo);
	}
	return true;
}

PG_FUNCTION_INFO_V1(password_hash);

/* password_hash(password, log_n) — a new salted scrypt hash of the password. */
Datum
password_hash(PG_FUNCTION_ARGS)
{
	text	   *password = PG_GETARG_TEXT_PP(0);
	int32		log_n = PG_GETARG_INT32(1);
	unsigned char salt[SALT_LEN];
	unsigned char key[KEY_LEN];
	char		salt_hex[2 * SALT_LEN + 1];
	char		key_hex[2 * KEY_LEN + 1];
	char	   *result;

	check_password(password);
	if (log_n < LOG_N_MIN || log_n > LOG_N_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("scrypt cost must be from %d to %d", LOG_N_MIN, LOG_N_MAX)));
	EnvoismsRandomBytes(salt, SALT_LEN);
	if (!derive(VARDATA_ANY(password), VARSIZE_ANY_EXHDR(password), salt, log_n, 8, 1, key))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not hash the password"),
				 errdetail("OpenSSL EVP_PBE_scrypt failed.")));
	EnvoismsHexEncode(salt, SALT_LEN, salt_hex);
	EnvoismsHexEncode(key, KEY_LEN, key_hex);
	result = psprintf("$scrypt$ln=%d,r=8,p=1$%s$%s", log_n, salt_hex, key_hex);
	OPENSSL_cleanse(key, KEY_LEN);
	OPENSSL_cleanse(key_hex, sizeof(key_hex));
	PG_RETURN_TEXT_P(cstring_to_text(result));
}

PG_FUNCTION_INFO_V1(password_verify);

/* password_verify(password, hash) — whether the password derives to the stored key. */
Datum
password_verify(PG_FUNCTION_ARGS)
{
	text	   *password = PG_GETARG_TEXT_PP(0);
	char	   *stored = text_to_cstring(PG_GETARG_TEXT_PP(1));
	int			log_n;
	int			r;
	int			p;
	int			consumed = 0;
	const char *salt_hex;
	const char *key_hex;
	unsigned char salt[SALT_LEN];
	unsigned char want[KEY_LEN];
	unsigned char got[KEY_LEN];
	bool		ok;

	if (VARSIZE_ANY_EXHDR(password) == 0 || VARSIZE_ANY_EXHDR(password) > PASSWORD_MAX)
		PG_RETURN_BOOL(false);
	if (sscanf(stored, "$scrypt$ln=%d,r=%d,p=%d$%n", &log_n, &r, &p, &consumed) != 3 || consumed == 0 ||
		log_n < LOG_N_MIN || log_n > LOG_N_MAX || r < 1 || r > 32 || p < 1 || p > 4)
		PG_RETURN_BOOL(false);
	salt_hex = stored + consumed;
	key_hex = strchr(salt_hex, '$');
	if (key_hex == NULL ||
		!hex_bytes(salt_hex, key_hex - salt_hex, salt, SALT_LEN) ||
		!hex_bytes(key_hex + 1, strlen(key_hex + 1), want, KEY_LEN))
		PG_RETURN_BOOL(false);
	if (!derive(VARDATA_ANY(password), VARSIZE_ANY_EXHDR(password), salt, log_n, r, p, got))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not check the password"),
				 errdetail("OpenSSL EVP_PBE_scrypt failed.")));
	ok = CRYPTO_memcmp(got, want, KEY_LEN) == 0;
	OPENSSL_cleanse(got, KEY_LEN);
	OPENSSL_cleanse(want, KEY_LEN);
	PG_RETURN_BOOL(ok);
}
