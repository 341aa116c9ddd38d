/*
 * crypto.h — C-callable OpenSSL helpers shared by the SQL functions in
 * crypto.c and by other modules (the webhook worker signs bodies with
 * EnvoismsHmacSha256Hex). None of them allocate; outputs go to caller
 * buffers. OpenSSL failures (which do not happen short of a broken
 * library or an exhausted entropy source) raise ereport(ERROR), so callers
 * never see a half-filled buffer.
 */
#ifndef ENVOISMS_CRYPTO_H
#define ENVOISMS_CRYPTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Fill buf with len bytes from the OpenSSL CSPRNG; ereport(ERROR) on failure. */
extern void EnvoismsRandomBytes(unsigned char *buf, size_t len);

/* Lower-case hex of len bytes into out (2 * len + 1 bytes, NUL-terminated). */
extern void EnvoismsHexEncode(const unsigned char *in, size_t len, char *out);

/* out = lower hex SHA-256 of data, NUL-terminated. */
extern void EnvoismsSha256Hex(const char *data, size_t len, char out[65]);

/* Raw 32-byte HMAC-SHA256 of data under key. */
extern void EnvoismsHmacSha256(const char *key, size_t keylen,
							   const char *data, size_t len,
							   unsigned char out[32]);

/* out = lower hex HMAC-SHA256(key, data), NUL-terminated. */
extern void EnvoismsHmacSha256Hex(const char *key, size_t keylen,
								  const char *data, size_t len, char out[65]);

/* Constant-time equality of two byte strings (false when lengths differ). */
extern bool EnvoismsSecureEquals(const char *a, size_t alen,
								 const char *b, size_t blen);

#endif							/* ENVOISMS_CRYPTO_H */
