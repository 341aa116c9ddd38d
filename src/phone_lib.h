/*
 * phone_lib.h — the C face of libphonenumber (C++), implemented in
 * phone_lib.cpp. No C++ object and no exception crosses this boundary:
 * results are written into caller buffers and every function catches
 * everything, returning PHONE_LIB_ERROR instead.
 */
#ifndef ENVOISMS_PHONE_LIB_H
#define ENVOISMS_PHONE_LIB_H

#include <stddef.h>

#ifdef __cplusplus
extern "C"
{
#endif

#define PHONE_LIB_INVALID 0		/* does not parse, or is not a valid number */
#define PHONE_LIB_VALID 1
#define PHONE_LIB_ERROR (-1)	/* the library failed (out of memory …) */

#define PHONE_E164_SIZE 24		/* "+" + at most 15 digits + NUL, with room */
#define PHONE_TEXT_SIZE 256

typedef struct EnvoismsPhoneInfo
{
	char		e164[PHONE_E164_SIZE];
	char		country_prefix[8];	/* digits only, e.g. "212" */
	char		region[4];		/* ISO 3166-1 alpha-2, "" when none */
	char		line_type[32];	/* "mobile", "fixed_line" … */
	char		national[PHONE_TEXT_SIZE];	/* national format, digits only */
	char		location[PHONE_TEXT_SIZE];	/* English geocoder text, may be "" */
} EnvoismsPhoneInfo;

/*
 * Parse number (NUL-terminated UTF-8) with an optional default region
 * (NULL or "" for none; a local number then cannot parse). On
 * PHONE_LIB_VALID, e164 holds the E.164 form.
 */
extern int	EnvoismsPhoneE164(const char *number, const char *region,
							  char e164[PHONE_E164_SIZE]);

/* As EnvoismsPhoneE164, filling every field of info when valid. */
extern int	EnvoismsPhoneParse(const char *number, const char *region,
							   EnvoismsPhoneInfo *info);

/*
 * English name of a region libphonenumber supports ("MA" → "Morocco"),
 * UTF-8 into out; PHONE_LIB_INVALID for an unsupported region.
 */
extern int	EnvoismsPhoneCountryName(const char *region, char *out, size_t outlen);

#ifdef __cplusplus
}
#endif

#endif							/* ENVOISMS_PHONE_LIB_H */
