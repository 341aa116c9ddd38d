/*
 * response.c — what goes out: a response with the gateway's fixed headers
 * (content type, CORS, Connection: close when the connection must end) plus
 * the headers SQL chose, given as a JSON object of strings; the CORS
 * preflight answer; and, for the acceptor, which answers heads that never
 * reach libmicrohttpd, a whole response as bytes.
 *
 * The JSON object of headers comes from envoisms.api() (jsonb as text), so
 * only the subset jsonb writes is read: one flat object of strings or other
 * scalars. Two headers are meant for the gateway and are not sent:
 * X-Envoisms-Key-Id names the key for the access log, X-Envoisms-Route the
 * route template envoisms.api() matched, which labels the request in the
 * access log and /metrics (a value that is not a plain path template is
 * ignored, so labels stay few and printable).
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "gateway.h"

#define KEY_ID_HEADER "X-Envoisms-Key-Id"
#define ROUTE_HEADER "X-Envoisms-Route"

/* CORS headers of every response: the origin, when it is allowed. */
static bool
AddCorsHeaders(struct MHD_Connection *connection, struct MHD_Response *resp)
{
	const char *origin = MHD_lookup_connection_value(connection, MHD_HEADER_KIND, "Origin");

	if (config.cors_any)
		return MHD_add_response_header(resp, "Access-Control-Allow-Origin", "*") == MHD_YES;
	if (origin == NULL)
		return true;
	for (int i = 0; i < config.ncors; i++)
	{
		if (strcmp(origin, config.cors_origins[i]) == 0)
			return MHD_add_response_header(resp, "Access-Control-Allow-Origin", origin) == MHD_YES &&
				MHD_add_response_header(resp, "Vary", "Origin") == MHD_YES;
	}
	return MHD_add_response_header(resp, "Vary", "Origin") == MHD_YES;
}

/* Reads one JSON string at *p (after the opening quote) into sb, unescaped. */
bool
JsonString(const char **p, StrBuf *sb)
{
	const char *s = *p;

	while (*s && *s != '"')
	{
		char		out[4];
		size_t		n = 1;

		if (*s != '\\')
		{
			out[0] = *s++;
		}
		else
		{
			s++;
			switch (*s)
			{
				case 'n':
					out[0] = '\n';
					break;
				case 'r':
					out[0] = '\r';
					break;
				case 't':
					out[0] = '\t';
					break;
				case 'b':
					out[0] = '\b';
					break;
				case 'f':
					out[0] = '\f';
					break;
				case 'u':
					{
						unsigned int cp = 0;

						/* exactly four hex digits; a shorter escape ends the text */
						for (int i = 1; i <= 4; i++)
						{
							if (!isxdigit((unsigned char) s[i]))
								return false;
							cp = cp * 16 + (isdigit((unsigned char) s[i]) ? s[i] - '0'
											: (tolower((unsigned char) s[i]) - 'a' + 10));
						}
						s += 4;
						/* header values are ASCII; anything else is dropped later */
						if (cp < 0x80)
							out[0] = (char) cp;
						else
							out[0] = '?';
						break;
					}
				case '\0':
					return false;
				default:
					out[0] = *s;
			}
			s++;
		}
		if (!StrBufAppend(sb, out, n))
			return false;
	}
	if (*s != '"')
		return false;
	*p = s + 1;
	if (sb->data == NULL)
		return StrBufAppend(sb, "", 0);
	return true;
}

/* Whether a route template can be a label: "/" then letters, digits and "/:._-". */
static bool
RouteLabelValid(const char *route, size_t max)
{
	size_t		n = strspn(route, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/:._-");

	return route[0] == '/' && route[n] == '\0' && n < max;
}

/*
 * Adds the headers of SQL's JSON object to the response. Values may be
 * strings or other scalars (written as they are). The headers meant for
 * the gateway go to *notes (when not NULL) instead.
 */
static bool
AddSqlHeaders(struct MHD_Response *resp, const char *json, ReplyNotes *notes)
{
	const char *p = json;

	while (*p == ' ' || *p == '\n' || *p == '\t')
		p++;
	if (*p++ != '{')
		return false;
	for (;;)
	{
		StrBuf		name = {0};
		StrBuf		value = {0};
		bool		ok;

		while (*p == ' ' || *p == ',' || *p == '\n' || *p == '\t')
			p++;
		if (*p == '}')
			return true;
		if (*p++ != '"' || !JsonString(&p, &name))
		{
			StrBufFree(&name);
			return false;
		}
		while (*p == ' ' || *p == ':')
			p++;
		if (*p == '"')
		{
			p++;
			ok = JsonString(&p, &value);
		}
		else
		{
			size_t		n = strcspn(p, ",}");

			while (n > 0 && p[n - 1] == ' ')
				n--;
			ok = n > 0 && StrBufAppend(&value, p, n);
			p += strcspn(p, ",}");
		}
		if (!ok)
		{
			StrBufFree(&name);
			StrBufFree(&value);
			return false;
		}
		if (strcasecmp(name.data, KEY_ID_HEADER) == 0)
		{
			if (notes != NULL)
				snprintf(notes->key_id, sizeof(notes->key_id), "%s", value.data);
		}
		else if (strcasecmp(name.data, ROUTE_HEADER) == 0)
		{
			if (notes != NULL && RouteLabelValid(value.data, sizeof(notes->route)))
				snprintf(notes->route, sizeof(notes->route), "%s", value.data);
		}
		else if (strcmp(value.data, "null") != 0 &&
				 MHD_add_response_header(resp, name.data, value.data) != MHD_YES)
			ErrorLog("cannot add response header %s", name.data);
		StrBufFree(&name);
		StrBufFree(&value);
	}
}

/* Every response of a request libmicrohttpd holds goes out here. */
enum MHD_Result
ResponseQueue(struct MHD_Connection *connection, int status, const char *body, size_t len,
			  const char *content_type, const char *sql_headers, bool close,
			  ReplyNotes *notes)
{
	struct MHD_Response *resp;
	enum MHD_Result ret;
	bool		ok;

	resp = MHD_create_response_from_buffer(len, (void *) (body ? body : ""),
										   MHD_RESPMEM_MUST_COPY);
	if (resp == NULL)
	{
		ErrorLog("cannot create a response");
		return MHD_NO;
	}
	ok = (content_type == NULL ||
		  MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type) == MHD_YES) &&
		AddCorsHeaders(connection, resp) &&
		MHD_add_response_header(resp, "Access-Control-Expose-Headers",
								"X-RateLimit-Limit, X-RateLimit-Remaining, Retry-After") == MHD_YES;
	if (ok && close)
		ok = MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close") == MHD_YES;
	if (ok && sql_headers != NULL && !AddSqlHeaders(resp, sql_headers, notes))
		ErrorLog("envoisms.api returned unreadable headers: %.200s", sql_headers);
	if (!ok)
	{
		ErrorLog("cannot add response headers");
		MHD_destroy_response(resp);
		return MHD_NO;
	}
	ret = MHD_queue_response(connection, status, resp);
	MHD_destroy_response(resp);
	return ret;
}

/* OPTIONS: what a browser needs to send the real request. */
enum MHD_Result
ResponseQueuePreflight(struct MHD_Connection *connection)
{
	struct MHD_Response *resp = MHD_create_response_from_buffer(0, "", MHD_RESPMEM_PERSISTENT);
	enum MHD_Result ret;

	if (resp == NULL)
		return MHD_NO;
	if (!AddCorsHeaders(connection, resp) ||
		MHD_add_response_header(resp, "Access-Control-Allow-Methods",
								"GET, HEAD, POST, PATCH, DELETE, OPTIONS") != MHD_YES ||
		MHD_add_response_header(resp, "Access-Control-Allow-Headers",
								"Content-Type, Authorization, X-EnvoiSMS.ma-Signature, "
								"X-EnvoiSMS.ma-Version, Idempotency-Key") != MHD_YES ||
		MHD_add_response_header(resp, "Access-Control-Max-Age", "86400") != MHD_YES ||
		MHD_add_response_header(resp, "Allow", "GET, HEAD, POST, PATCH, DELETE, OPTIONS") != MHD_YES)
	{
		MHD_destroy_response(resp);
		return MHD_NO;
	}
	ret = MHD_queue_response(connection, MHD_HTTP_NO_CONTENT, resp);
	MHD_destroy_response(resp);
	return ret;
}

/* The answer to a head refused before libmicrohttpd saw it. */
char *
ResponseRawError(int status, const char *code, const char *message, size_t *len)
{
	char	   *body = ErrorEnvelope(code, message);
	const char *reason = MHD_get_reason_phrase_for((unsigned int) status);
	StrBuf		sb = {0};
	char		head[256];
	int			n;

	if (body == NULL)
		return NULL;
	n = snprintf(head, sizeof(head),
				 "HTTP/1.1 %d %s\r\nContent-Type: " JSON_TYPE "\r\n"
				 "Content-Length: %zu\r\nConnection: close\r\n\r\n",
				 status, reason ? reason : "Error", strlen(body));
	if (n < 0 || (size_t) n >= sizeof(head) ||
		!StrBufAppend(&sb, head, n) || !StrBufAppend(&sb, body, strlen(body)))
	{
		free(body);
		StrBufFree(&sb);
		return NULL;
	}
	free(body);
	*len = sb.len;
	return sb.data;
}
