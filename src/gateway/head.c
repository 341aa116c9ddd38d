/*
 * head.c — the framing rules a request head must follow, on top of what
 * libmicrohttpd checks.
 *
 * libmicrohttpd 0.9.75 (Debian 12) answers some malformed heads itself, in
 * HTML, before any callback of ours runs, and offers no hook to replace
 * those answers: a request line without an HTTP version, a Content-Length
 * that is not a number (a 400 whose header block it even sends twice), a
 * header line without a colon, a head over its memory limit. So acceptor.c
 * holds each new connection until its first head has arrived and runs
 * HeadInspect() on the raw bytes: it finds the lines and checks their shape
 * (RFC 9112: "METHOD SP target SP HTTP/d.d", header lines "name: value"
 * without control characters or line folding, Content-Length digits, the
 * same in every line) and the --max-url and --max-headers limits. It builds
 * nothing; libmicrohttpd still parses the request.
 *
 * What libmicrohttpd accepts but reads in a way we must not rely on is
 * checked on every request by HeadFieldsRefused(), when the handler first
 * runs: several Content-Length lines that disagree (it takes the first), a
 * Transfer-Encoding other than chunked (it reads until the connection
 * closes), Transfer-Encoding with Content-Length, two Authorization or Host
 * lines, HTTP/1.1 without Host.
 *
 * A later request on a kept-alive connection is read by libmicrohttpd
 * alone, so for it only the second set of rules holds.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "gateway.h"

/* Fills *refusal; the message is a printf format. */
static HeadState __attribute__((format(printf, 4, 5)))
Refuse(HeadRefusal *refusal, int status, const char *code, const char *fmt, ...)
{
	va_list		ap;

	refusal->status = status;
	refusal->code = code;
	va_start(ap, fmt);
	vsnprintf(refusal->message, sizeof(refusal->message), fmt, ap);
	va_end(ap);
	return HEAD_REFUSED;
}

/* RFC 9110 5.6.2: the characters of a token (method, field name). */
static bool
IsTchar(unsigned char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		(c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

/*
 * Finds the line at p: its length without the line end in *len, the start
 * of the next line in *next. 1 when found, 0 when the line end has not
 * arrived, -1 for a CR that does not end the line (RFC 9112 2.2).
 */
static int
NextLine(const char *p, const char *end, size_t *len, const char **next)
{
	const char *lf = memchr(p, '\n', end - p);
	const char *cr;

	if (lf == NULL)
	{
		cr = memchr(p, '\r', end - p);
		return (cr != NULL && cr + 1 < end) ? -1 : 0;
	}
	*len = lf - p;
	if (*len > 0 && p[*len - 1] == '\r')
		(*len)--;
	if (memchr(p, '\r', *len) != NULL)
		return -1;
	*next = lf + 1;
	return 1;
}

/* The request line: "METHOD SP target SP HTTP/d.d", nothing else. */
static HeadState
RequestLineCheck(const char *line, size_t len, HeadRefusal *refusal)
{
	size_t		i = 0;
	size_t		target;

	while (i < len && IsTchar((unsigned char) line[i]))
		i++;
	if (i == 0 || i == len || line[i] != ' ')
		return Refuse(refusal, 400, "VALIDATION_ERROR",
					  "the request line must be: METHOD SP target SP HTTP/1.1");
	target = ++i;
	while (i < len && (unsigned char) line[i] > ' ' && line[i] != 0x7f)
		i++;
	if (i - target > config.max_url)
		return Refuse(refusal, 414, "URI_TOO_LONG", "the request target is too long");
	if (i == target || i == len || line[i] != ' ' || len - i - 1 != 8 ||
		memcmp(line + i + 1, "HTTP/", 5) != 0 ||
		line[i + 6] < '0' || line[i + 6] > '9' || line[i + 7] != '.' ||
		line[i + 8] < '0' || line[i + 8] > '9')
		return Refuse(refusal, 400, "VALIDATION_ERROR",
					  "the request line must be: METHOD SP target SP HTTP/1.1");
	if (line[i + 6] != '1')
		return Refuse(refusal, 505, "VALIDATION_ERROR",
					  "only HTTP/1.0 and HTTP/1.1 are served");
	return HEAD_COMPLETE;
}

/*
 * Reads a Content-Length value (optional spaces around digits) into *n;
 * false when it is not a number. *overflow when it is one too large to hold.
 */
static bool
LengthParse(const char *v, size_t len, unsigned long long *n, bool *overflow)
{
	size_t		i = 0;
	size_t		digits = 0;

	*n = 0;
	*overflow = false;
	while (i < len && (v[i] == ' ' || v[i] == '\t'))
		i++;
	for (; i < len && v[i] >= '0' && v[i] <= '9'; i++, digits++)
	{
		if (*n > (~0ULL - 9) / 10)
			*overflow = true;
		else
			*n = *n * 10 + (v[i] - '0');
	}
	while (i < len && (v[i] == ' ' || v[i] == '\t'))
		i++;
	return digits > 0 && i == len;
}

/* Reads a first head as the acceptor peeked it (see the top of this file). */
HeadState
HeadInspect(const char *buf, size_t len, HeadRefusal *refusal)
{
	const char *p = buf;
	const char *end = buf + len;
	const char *next;
	size_t		line_len;
	size_t		block = 0;
	bool		have_length = false;
	unsigned long long length = 0;
	int			found;
	HeadState	state;

	/* RFC 9112 2.2: empty lines before the request line are ignored */
	while ((found = NextLine(p, end, &line_len, &next)) == 1 && line_len == 0)
		p = next;
	if (found < 0)
		return Refuse(refusal, 400, "VALIDATION_ERROR", "a bare CR in the request head");
	if (found == 0)
	{
		if ((size_t) (end - p) > config.max_url + 64)
			return Refuse(refusal, 414, "URI_TOO_LONG", "the request target is too long");
		return HEAD_INCOMPLETE;
	}
	if ((state = RequestLineCheck(p, line_len, refusal)) != HEAD_COMPLETE)
		return state;

	for (p = next;; p = next)
	{
		const char *colon;
		unsigned long long n;
		bool		overflow;

		found = NextLine(p, end, &line_len, &next);
		if (found < 0)
			return Refuse(refusal, 400, "VALIDATION_ERROR", "a bare CR in the request head");
		if (found == 0)
		{
			if (block + (end - p) > config.max_headers)
				return Refuse(refusal, 431, "HEADERS_TOO_LARGE",
							  "the request headers are too large");
			return HEAD_INCOMPLETE;
		}
		if (line_len == 0)
			return HEAD_COMPLETE;
		block += line_len + 2;
		if (block > config.max_headers)
			return Refuse(refusal, 431, "HEADERS_TOO_LARGE", "the request headers are too large");
		if (p[0] == ' ' || p[0] == '\t')
			return Refuse(refusal, 400, "VALIDATION_ERROR",
						  "a header line must not start with a space (obsolete line folding)");
		for (colon = p; colon < p + line_len && IsTchar((unsigned char) *colon); colon++)
			;
		if (colon == p || colon == p + line_len || *colon != ':')
			return Refuse(refusal, 400, "VALIDATION_ERROR",
						  "a header line must be a name, a colon and a value");
		for (const char *v = colon + 1; v < p + line_len; v++)
			if (((unsigned char) *v < ' ' && *v != '\t') || *v == 0x7f)
				return Refuse(refusal, 400, "VALIDATION_ERROR",
							  "a header value must not hold control characters");
		if (colon - p != 14 || strncasecmp(p, "Content-Length", 14) != 0)
			continue;
		if (!LengthParse(colon + 1, p + line_len - colon - 1, &n, &overflow))
			return Refuse(refusal, 400, "VALIDATION_ERROR",
						  "Content-Length must be a number of bytes");
		if (overflow)
			return Refuse(refusal, 413, "PAYLOAD_TOO_LARGE",
						  "the request body is larger than %zu bytes", config.max_body);
		if (have_length && n != length)
			return Refuse(refusal, 400, "VALIDATION_ERROR",
						  "Content-Length is given twice with different values");
		have_length = true;
		length = n;
	}
}

typedef struct FieldCounts
{
	int			content_length;
	bool		length_bad;		/* not a number, or lines that disagree */
	unsigned long long length;
	int			transfer_encoding;
	bool		not_chunked;
	int			authorization;
	int			host;
} FieldCounts;

/* Counts the header lines that framing and authentication depend on. */
static enum MHD_Result
CountField(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
	FieldCounts *c = cls;
	const char *v = value ? value : "";

	if (strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH) == 0)
	{
		unsigned long long n;
		bool		overflow;

		if (!LengthParse(v, strlen(v), &n, &overflow) || overflow ||
			(c->content_length > 0 && n != c->length))
			c->length_bad = true;
		c->length = n;
		c->content_length++;
	}
	else if (strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING) == 0)
	{
		c->transfer_encoding++;
		if (strcasecmp(v, "chunked") != 0)
			c->not_chunked = true;
	}
	else if (strcasecmp(key, MHD_HTTP_HEADER_AUTHORIZATION) == 0)
		c->authorization++;
	else if (strcasecmp(key, MHD_HTTP_HEADER_HOST) == 0)
		c->host++;
	return MHD_YES;
}

/* The rules on libmicrohttpd's parsed fields, for every request. */
bool
HeadFieldsRefused(struct MHD_Connection *connection, const char *version,
				  HeadRefusal *refusal)
{
	FieldCounts c = {0};

	MHD_get_connection_values(connection, MHD_HEADER_KIND, CountField, &c);
	if (c.length_bad)
		Refuse(refusal, 400, "VALIDATION_ERROR",
			   "Content-Length must be one number of bytes");
	else if (c.transfer_encoding > 0 && c.content_length > 0)
		Refuse(refusal, 400, "VALIDATION_ERROR",
			   "a request must not have both Content-Length and Transfer-Encoding");
	else if (c.transfer_encoding > 1)
		Refuse(refusal, 400, "VALIDATION_ERROR", "Transfer-Encoding is given twice");
	else if (c.not_chunked)
		Refuse(refusal, 501, "VALIDATION_ERROR",
			   "the only Transfer-Encoding served is chunked");
	else if (c.authorization > 1)
		Refuse(refusal, 400, "VALIDATION_ERROR", "Authorization is given twice");
	else if (c.host > 1)
		Refuse(refusal, 400, "VALIDATION_ERROR", "Host is given twice");
	else if (c.host == 0 && strcmp(version, MHD_HTTP_VERSION_1_1) == 0)
		Refuse(refusal, 400, "INVALID_REQUEST", "an HTTP/1.1 request must have a Host header");
	else
		return false;
	return true;
}
