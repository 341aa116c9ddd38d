/*
 * http.c — one HTTP request in, one envoisms.api() call, one response out.
 *
 * libmicrohttpd calls in phases for each request:
 *   HttpUriLog      request line read: the raw target (path?query, still
 *                   percent-encoded) is kept, the clock starts.
 *   HttpHandle #1   headers read: limits are checked before any body byte
 *                   is read (target length 414, header block 431,
 *                   Content-Length over --max-body 413, answered at once so
 *                   the body is never read).
 *   HttpHandle #n   body chunks: appended, counted against --max-body. A
 *                   chunked body that outgrows it is discarded unstored and
 *                   answered 413 at its end (MHD cannot answer mid-upload),
 *                   or cut off DISCARD_LIMIT bytes past the limit.
 *   HttpHandle last the whole request is in: OPTIONS (CORS preflight),
 *                   /metrics and /v1/openapi.json are answered at once,
 *                   without auth and without the database. /healthz and
 *                   every other request become a DbJob: the connection is
 *                   suspended and a dbwork.c worker runs SELECT 1 or the
 *                   one call of envoisms.api() on its pool connection.
 *   HttpHandle again  the worker resumed the connection: the row (status,
 *                   headers, body) becomes the response.
 *   HttpCompleted   response done (or connection gone): metrics, access log,
 *                   memory freed.
 *
 * The gateway never parses a request body: it only checks that it is UTF-8
 * without NUL bytes (a text parameter cannot carry anything else). Request
 * headers go to SQL as a JSON object, names as received. Response headers
 * come back from SQL as a JSON object of strings; X-Envoisms-Key-Id is taken
 * for the access log and not sent.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway.h"

#define KEY_ID_HEADER "X-Envoisms-Key-Id"
#define DISCARD_LIMIT (1024 * 1024)
#define JSON_TYPE "application/json; charset=utf-8"

typedef struct Request
{
	double		start;
	char	   *target;			/* raw request target: path[?query] */
	bool		seen;			/* HttpHandle has run once */
	bool		responded;
	bool		too_large;		/* chunked body over the limit */
	int			status;
	size_t		bytes_in;
	StrBuf		body;
	char		method[16];
	char		route[96];
	char		client_ip[INET6_ADDRSTRLEN];
	char		key_id[64];
	StrBuf		headers_json;	/* request headers for SQL */
	DbJob		job;			/* the database call, run by dbwork.c */
	bool		job_pending;	/* connection suspended for the job */
} Request;

static int	in_flight;
static volatile int shutting_down;
static char *openapi_json;
static size_t openapi_len;

bool
HttpInit(void)
{
	FILE	   *f = fopen(config.openapi_path, "rb");
	long		size;

	if (f == NULL)
	{
		ErrorLog("cannot open %s: %s; /v1/openapi.json will answer 404",
				 config.openapi_path, strerror(errno));
		return true;
	}
	if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0 ||
		(openapi_json = malloc(size + 1)) == NULL ||
		fread(openapi_json, 1, size, f) != (size_t) size)
	{
		ErrorLog("cannot read %s", config.openapi_path);
		free(openapi_json);
		openapi_json = NULL;
		fclose(f);
		return true;
	}
	openapi_json[size] = '\0';
	openapi_len = size;
	fclose(f);
	return true;
}

int
HttpInFlight(void)
{
	return __atomic_load_n(&in_flight, __ATOMIC_SEQ_CST);
}

void
HttpBeginShutdown(void)
{
	shutting_down = 1;
}

void *
HttpUriLog(void *cls, const char *uri, struct MHD_Connection *connection)
{
	Request    *req = calloc(1, sizeof(Request));

	if (req == NULL)
		return NULL;
	req->start = NowSeconds();
	req->target = strdup(uri ? uri : "");
	__atomic_add_fetch(&in_flight, 1, __ATOMIC_SEQ_CST);
	return req;
}

void
HttpCompleted(void *cls, struct MHD_Connection *connection, void **req_cls,
			  enum MHD_RequestTerminationCode toe)
{
	Request    *req = *req_cls;

	if (req == NULL)
		return;
	if (req->seen)
	{
		double		elapsed = NowSeconds() - req->start;

		if (req->responded)
			MetricsObserve(req->method, req->route, req->status, elapsed);
		AccessLog(req->method, req->route, req->responded ? req->status : 0,
				  elapsed * 1000.0, req->key_id, req->client_ip, req->bytes_in);
	}
	ConnTrackBusy(connection, false);
	__atomic_sub_fetch(&in_flight, 1, __ATOMIC_SEQ_CST);
	StrBufFree(&req->body);
	StrBufFree(&req->headers_json);
	free(req->job.result.headers);
	free(req->job.result.body);
	free(req->target);
	free(req);
	*req_cls = NULL;
}

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
static bool
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
						unsigned int cp;

						if (sscanf(s + 1, "%4x", &cp) != 1)
							return false;
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

/*
 * Adds the headers of SQL's JSON object to the response. Values may be
 * strings or other scalars (written as they are). The key id header is
 * copied to req->key_id instead.
 */
static bool
AddSqlHeaders(Request *req, struct MHD_Response *resp, const char *json)
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
			snprintf(req->key_id, sizeof(req->key_id), "%s", value.data);
		else if (strcmp(value.data, "null") != 0 &&
				 MHD_add_response_header(resp, name.data, value.data) != MHD_YES)
			ErrorLog("cannot add response header %s", name.data);
		StrBufFree(&name);
		StrBufFree(&value);
	}
}

/* Queues a response; extra_json is SQL's header object (or NULL). */
static enum MHD_Result
Respond(Request *req, struct MHD_Connection *connection, int status,
		const char *body, size_t len, const char *content_type,
		const char *extra_json, bool close)
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
	if (ok && (close || shutting_down))
		ok = MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close") == MHD_YES;
	if (ok && extra_json != NULL && !AddSqlHeaders(req, resp, extra_json))
		ErrorLog("envoisms.api returned unreadable headers: %.200s", extra_json);
	if (!ok)
	{
		ErrorLog("cannot add response headers");
		MHD_destroy_response(resp);
		return MHD_NO;
	}
	ret = MHD_queue_response(connection, status, resp);
	MHD_destroy_response(resp);
	if (ret == MHD_YES)
	{
		req->responded = true;
		req->status = status;
	}
	return ret;
}

/* The contract's error envelope, for errors the gateway answers itself. */
/* The contract's error envelope, for errors the gateway answers itself. */
static enum MHD_Result
RespondError(Request *req, struct MHD_Connection *connection, int status,
			 const char *code, const char *message, bool close)
{
	char	   *body = ErrorEnvelope(code, message);
	enum MHD_Result ret;

	if (body == NULL)
		return MHD_NO;
	ret = Respond(req, connection, status, body, strlen(body), JSON_TYPE, NULL, close);
	free(body);
	return ret;
}

static enum MHD_Result
RespondPreflight(Request *req, struct MHD_Connection *connection)
{
	struct MHD_Response *resp = MHD_create_response_from_buffer(0, "", MHD_RESPMEM_PERSISTENT);
	enum MHD_Result ret;

	if (resp == NULL)
		return MHD_NO;
	if (!AddCorsHeaders(connection, resp) ||
		MHD_add_response_header(resp, "Access-Control-Allow-Methods",
								"GET, POST, PATCH, DELETE, OPTIONS") != MHD_YES ||
		MHD_add_response_header(resp, "Access-Control-Allow-Headers",
								"Content-Type, Authorization, X-EnvoiSMS.ma-Signature, "
								"X-EnvoiSMS.ma-Version, Idempotency-Key") != MHD_YES ||
		MHD_add_response_header(resp, "Access-Control-Max-Age", "86400") != MHD_YES ||
		MHD_add_response_header(resp, "Allow", "GET, POST, PATCH, DELETE, OPTIONS") != MHD_YES)
	{
		MHD_destroy_response(resp);
		return MHD_NO;
	}
	ret = MHD_queue_response(connection, MHD_HTTP_NO_CONTENT, resp);
	MHD_destroy_response(resp);
	if (ret == MHD_YES)
	{
		req->responded = true;
		req->status = MHD_HTTP_NO_CONTENT;
	}
	return ret;
}

typedef struct HeaderWalk
{
	StrBuf	   *json;			/* NULL: only count */
	size_t		bytes;
	bool		ok;
} HeaderWalk;

static enum MHD_Result
EachHeader(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
	HeaderWalk *w = cls;

	w->bytes += strlen(key) + (value ? strlen(value) : 0) + 4;
	if (w->json == NULL)
		return MHD_YES;
	if (w->json->len > 1 && !StrBufAppend(w->json, ", ", 2))
		w->ok = false;
	w->ok = w->ok && JsonQuote(w->json, key) && StrBufAppend(w->json, ": ", 2) &&
		JsonQuote(w->json, value ? value : "");
	return w->ok ? MHD_YES : MHD_NO;
}

/* Hands the request to a database worker; the connection sleeps meanwhile. */
static enum MHD_Result
StartJob(Request *req, struct MHD_Connection *connection)
{
	req->job.connection = connection;
	req->job_pending = true;
	ConnTrackBusy(connection, true);
	MHD_suspend_connection(connection);
	DbWorkSubmit(&req->job);
	return MHD_YES;
}

static enum MHD_Result
StartApi(Request *req, struct MHD_Connection *connection, const char *path, const char *query)
{
	HeaderWalk	walk = {&req->headers_json, 0, true};
	const char *body = req->body.len > 0 ? req->body.data : NULL;

	if (body != NULL && !Utf8Valid(body, req->body.len))
		return RespondError(req, connection, 400, "INVALID_JSON",
							"the request body must be UTF-8 JSON", false);
	if (!Utf8Valid(path, strlen(path)) || !Utf8Valid(query, strlen(query)))
		return RespondError(req, connection, 400, "INVALID_REQUEST",
							"the request target must be UTF-8", false);
	if (!StrBufAppend(&req->headers_json, "{", 1))
		return MHD_NO;
	MHD_get_connection_values(connection, MHD_HEADER_KIND, EachHeader, &walk);
	if (!walk.ok || !StrBufAppend(&req->headers_json, "}", 1))
		return MHD_NO;
	req->job.health = false;
	req->job.method = req->method;
	req->job.path = path;
	req->job.query = query;
	req->job.headers_json = req->headers_json.data;
	req->job.body = body;
	req->job.client_ip = req->client_ip;
	return StartJob(req, connection);
}

/*
 * The database answered (or not): write its row, or /healthz's verdict. A
 * row whose headers set Content-Type text/plain carries its text as one
 * JSON string body: that text is written as it is, under that type (Meta's
 * hub.challenge is echoed so).
 */
static enum MHD_Result
FinishJob(Request *req, struct MHD_Connection *connection)
{
	ApiResult  *result = &req->job.result;
	enum MHD_Result ret;
	StrBuf		text = {0};
	const char *p;

	if (req->job.health)
	{
		static const char ok[] = "{\"status\": \"ok\"}";
		static const char down[] = "{\"status\": \"unavailable\"}";

		if (req->job.healthy)
			return Respond(req, connection, 200, ok, strlen(ok), JSON_TYPE, NULL, false);
		return Respond(req, connection, 503, down, strlen(down), JSON_TYPE,
					   "{\"Retry-After\": \"1\"}", false);
	}
	if (result->body == NULL && result->status != 204 && result->status != 304)
		result->body = strdup("null");
	p = result->body ? result->body + 1 : NULL;
	if (p != NULL && result->body[0] == '"' && result->headers != NULL &&
		strstr(result->headers, "\"Content-Type\": \"text/plain") != NULL &&
		JsonString(&p, &text) && *p == '\0')
		ret = Respond(req, connection, result->status, text.data, text.len, NULL, result->headers, false);
	else
		ret = Respond(req, connection, result->status, result->body,
					  result->body ? strlen(result->body) : 0, JSON_TYPE, result->headers, false);
	StrBufFree(&text);
	free(result->headers);
	free(result->body);
	result->headers = result->body = NULL;
	return ret;
}

static enum MHD_Result
Dispatch(Request *req, struct MHD_Connection *connection)
{
	char	   *path = req->target;
	char	   *question = strchr(path, '?');
	const char *query = "";
	bool		get = strcmp(req->method, "GET") == 0 || strcmp(req->method, "HEAD") == 0;

	if (question)
	{
		*question = '\0';
		query = question + 1;
	}
	if (get && strcmp(path, "/healthz") == 0)
	{
		req->job.health = true;
		return StartJob(req, connection);
	}
	if (get && strcmp(path, "/metrics") == 0)
	{
		size_t		len;
		char	   *text = MetricsRender(&len);
		enum MHD_Result ret;

		if (text == NULL)
			return MHD_NO;
		ret = Respond(req, connection, 200, text, len, "text/plain; version=0.0.4", NULL, false);
		free(text);
		return ret;
	}
	if (get && strcmp(path, "/v1/openapi.json") == 0)
	{
		if (openapi_json == NULL)
			return RespondError(req, connection, 404, "NOT_FOUND",
								"the OpenAPI document is not installed", false);
		return Respond(req, connection, 200, openapi_json, openapi_len, JSON_TYPE, NULL, false);
	}
	return StartApi(req, connection, path, query);
}

enum MHD_Result
HttpHandle(void *cls, struct MHD_Connection *connection, const char *url,
		   const char *method, const char *version, const char *upload_data,
		   size_t *upload_data_size, void **req_cls)
{
	Request    *req = *req_cls;

	if (req == NULL)
		return MHD_NO;			/* out of memory in HttpUriLog */

	if (!req->seen)
	{
		const union MHD_ConnectionInfo *peer =
			MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
		const char *length = MHD_lookup_connection_value(connection, MHD_HEADER_KIND,
														 MHD_HTTP_HEADER_CONTENT_LENGTH);
		HeaderWalk	walk = {NULL, 0, true};
		char		path[2048];

		req->seen = true;
		snprintf(req->method, sizeof(req->method), "%s", method);
		snprintf(path, sizeof(path), "%.*s", (int) strcspn(req->target, "?"), req->target);
		RouteTemplate(path, req->route, sizeof(req->route));
		ClientIpResolve(peer ? peer->client_addr : NULL,
						MHD_lookup_connection_value(connection, MHD_HEADER_KIND, "X-Forwarded-For"),
						req->client_ip, sizeof(req->client_ip));

		if (strcmp(version, MHD_HTTP_VERSION_1_1) == 0 &&
			MHD_lookup_connection_value(connection, MHD_HEADER_KIND, MHD_HTTP_HEADER_HOST) == NULL)
			return RespondError(req, connection, 400, "INVALID_REQUEST",
								"an HTTP/1.1 request must have a Host header", true);
		if (strlen(req->target) > config.max_url)
			return RespondError(req, connection, 414, "URI_TOO_LONG",
								"the request target is too long", true);
		MHD_get_connection_values(connection, MHD_HEADER_KIND, EachHeader, &walk);
		if (walk.bytes > config.max_headers)
			return RespondError(req, connection, 431, "HEADERS_TOO_LARGE",
								"the request headers are too large", true);
		if (length != NULL)
		{
			char	   *end;
			unsigned long long n;

			errno = 0;
			n = strtoull(length, &end, 10);
			if (errno == 0 && end != length && *end == '\0' && n > config.max_body)
			{
				char		message[128];

				snprintf(message, sizeof(message),
						 "the request body is larger than %zu bytes", config.max_body);
				return RespondError(req, connection, 413, "PAYLOAD_TOO_LARGE", message, true);
			}
		}
		return MHD_YES;
	}

	if (*upload_data_size > 0)
	{
		size_t		n = *upload_data_size;

		*upload_data_size = 0;
		req->bytes_in += n;
		if (req->responded)
			return MHD_YES;		/* answered already (413); discard */
		if (req->too_large || req->body.len + n > config.max_body)
		{
			/*
			 * A chunked body (no Content-Length) outgrew the limit. MHD
			 * cannot answer in the middle of an upload, so the rest is
			 * discarded unstored and 413 goes out at its end; a client that
			 * sends more than DISCARD_LIMIT past the limit is cut off.
			 */
			StrBufFree(&req->body);
			req->too_large = true;
			if (req->bytes_in > config.max_body + DISCARD_LIMIT)
				return MHD_NO;
			return MHD_YES;
		}
		if (!StrBufAppend(&req->body, upload_data, n))
			return MHD_NO;
		return MHD_YES;
	}

	if (req->job_pending)
	{
		/* resumed by the worker; a wake-up before it is done is ignored */
		if (!__atomic_load_n(&req->job.done, __ATOMIC_ACQUIRE))
			return MHD_YES;
		req->job_pending = false;
		return FinishJob(req, connection);
	}
	if (req->responded)
		return MHD_YES;
	if (req->too_large)
	{
		char		message[128];

		snprintf(message, sizeof(message),
				 "the request body is larger than %zu bytes", config.max_body);
		return RespondError(req, connection, 413, "PAYLOAD_TOO_LARGE", message, true);
	}
	if (strcmp(req->method, "OPTIONS") == 0)
		return RespondPreflight(req, connection);
	return Dispatch(req, connection);
}
