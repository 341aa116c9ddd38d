/*
 * util.c — small string helpers of the gateway: a growable buffer, JSON
 * string quoting (the request headers are sent to SQL as a JSON object),
 * UTF-8 validation (a body that is not UTF-8 cannot be a text parameter) and
 * the contract's error envelope for the errors the gateway answers itself.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gateway.h"

/* Appends n bytes, growing by doubling; the buffer stays NUL-terminated. */
bool
StrBufAppend(StrBuf *sb, const char *s, size_t n)
{
	if (sb->len + n + 1 > sb->cap)
	{
		size_t		cap = sb->cap ? sb->cap : 256;
		char	   *data;

		while (cap < sb->len + n + 1)
			cap *= 2;
		data = realloc(sb->data, cap);
		if (data == NULL)
			return false;
		sb->data = data;
		sb->cap = cap;
	}
	memcpy(sb->data + sb->len, s, n);
	sb->len += n;
	sb->data[sb->len] = '\0';
	return true;
}

/* Grows the buffer to an exact capacity (a body of known size). */
bool
StrBufReserve(StrBuf *sb, size_t cap)
{
	char	   *data;

	if (cap <= sb->cap)
		return true;
	data = realloc(sb->data, cap);
	if (data == NULL)
		return false;
	if (sb->data == NULL)
		data[0] = '\0';
	sb->data = data;
	sb->cap = cap;
	return true;
}

/* Frees the buffer and makes it empty again. */
void
StrBufFree(StrBuf *sb)
{
	free(sb->data);
	sb->data = NULL;
	sb->len = sb->cap = 0;
}

/* Length of the valid UTF-8 sequence at s (at most n bytes), 0 if invalid. */
static size_t
Utf8SequenceLength(const unsigned char *s, size_t n)
{
	size_t		len;
	unsigned int cp;

	if (s[0] < 0x80)
		return 1;
	if (s[0] >= 0xC2 && s[0] <= 0xDF)
	{
		len = 2;
		cp = s[0] & 0x1F;
	}
	else if (s[0] >= 0xE0 && s[0] <= 0xEF)
	{
		len = 3;
		cp = s[0] & 0x0F;
	}
	else if (s[0] >= 0xF0 && s[0] <= 0xF4)
	{
		len = 4;
		cp = s[0] & 0x07;
	}
	else
		return 0;
	if (len > n)
		return 0;
	for (size_t i = 1; i < len; i++)
	{
		if ((s[i] & 0xC0) != 0x80)
			return 0;
		cp = (cp << 6) | (s[i] & 0x3F);
	}
	/* overlong, surrogate or beyond U+10FFFF */
	if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
		(cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF)
		return 0;
	return len;
}

/* Whether s is UTF-8 without NUL, as a text parameter must be. */
bool
Utf8Valid(const char *s, size_t len)
{
	const unsigned char *p = (const unsigned char *) s;
	size_t		i = 0;

	while (i < len)
	{
		size_t		n;

		if (p[i] == 0)
			return false;		/* a NUL cannot travel in a text parameter */
		n = Utf8SequenceLength(p + i, len - i);
		if (n == 0)
			return false;
		i += n;
	}
	return true;
}

/* Appends s as a JSON string literal. */
bool
JsonQuote(StrBuf *sb, const char *s)
{
	const unsigned char *p = (const unsigned char *) s;
	size_t		n = strlen(s);
	size_t		i = 0;

	if (!StrBufAppend(sb, "\"", 1))
		return false;
	while (i < n)
	{
		size_t		run = i;
		bool		ok = true;

		/* copy runs of plain characters at once */
		while (run < n && p[run] >= 0x20 && p[run] < 0x80 && p[run] != '"' && p[run] != '\\')
			run++;
		if (run > i)
		{
			if (!StrBufAppend(sb, s + i, run - i))
				return false;
			i = run;
			continue;
		}
		if (p[i] == '"')
			ok = StrBufAppend(sb, "\\\"", 2);
		else if (p[i] == '\\')
			ok = StrBufAppend(sb, "\\\\", 2);
		else if (p[i] < 0x20)
		{
			char		esc[8];

			snprintf(esc, sizeof(esc), "\\u%04x", p[i]);
			ok = StrBufAppend(sb, esc, 6);
		}
		else
		{
			size_t		len = Utf8SequenceLength(p + i, n - i);

			if (len == 0)
			{
				ok = StrBufAppend(sb, "\\ufffd", 6);
				len = 1;
			}
			else
				ok = StrBufAppend(sb, s + i, len);
			i += len;
			if (!ok)
				return false;
			continue;
		}
		if (!ok)
			return false;
		i++;
	}
	return StrBufAppend(sb, "\"", 1);
}

/* The contract's error body for errors the gateway answers itself. */
char *
ErrorEnvelope(const char *code, const char *message)
{
	StrBuf		sb = {0};

	if (StrBufAppend(&sb, "{\"error\": {\"code\": ", 19) && JsonQuote(&sb, code) &&
		StrBufAppend(&sb, ", \"message\": ", 13) && JsonQuote(&sb, message) &&
		StrBufAppend(&sb, ", \"docs\": \"" DOCS_URL "\"}}", strlen(", \"docs\": \"" DOCS_URL "\"}}")))
		return sb.data;
	StrBufFree(&sb);
	return NULL;
}

/* A monotonic clock in seconds, for durations and deadlines. */
double
NowSeconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}
