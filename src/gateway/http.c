/*
 * http.c — one HTTP request in, one envoisms.api() call, one response out.
 *
 * libmicrohttpd calls in phases for each request:
 *   HttpUriLog      request line read: the raw target (path?query, still
 *                   percent-encoded) is kept, the clock starts.
 *   HttpHandle #1   headers read, no body byte read yet. Refused at once,
 *                   the body never read and the connection closed: broken
 *                   framing (head.c: 400, or 501 for a Transfer-Encoding
 *                   other than chunked), a target over --max-url (414), a
 *                   header block over --max-headers (431), a Content-Length
 *                   over --max-body (413). A body declared larger than
 *                   --precheck-above, or chunked, first waits for
 *                   envoisms.api_precheck() on a database worker (the
 *                   connection suspended meanwhile): a key that may not make
 *                   this request gets its error without the body being read.
 *                   Last, the declared body is reserved against
 *                   --max-body-total: past it, 503 with Retry-After, unread.
 *   HttpHandle #n   body chunks: appended, counted against --max-body and
 *                   --max-body-total. A chunked body that outgrows either is
 *                   discarded unstored and answered (413, 503) at its end
 *                   (MHD cannot answer mid-upload), or cut off
 *                   DISCARD_LIMIT bytes past the limit.
 *   HttpHandle last the whole request is in: OPTIONS (CORS preflight),
 *                   /metrics, /v1/openapi.json and the console's files
 *                   (static.c: /, /console, /console/...) are answered at
 *                   once, without auth and without the database. /healthz and
 *                   every other request become a DbJob: the connection is
 *                   suspended and a dbwork.c worker runs SELECT 1 or the
 *                   one call of envoisms.api() on its pool connection. HEAD
 *                   is called as GET; libmicrohttpd sends its headers
 *                   (Content-Length included) without the body.
 *   HttpHandle again  the worker resumed the connection: the row (status,
 *                   headers, body) becomes the response.
 *   HttpCompleted   response done (or connection gone): metrics, access log,
 *                   memory freed. Both label the request with the route
 *                   template envoisms.api() matched (its X-Envoisms-Route
 *                   header, which is not sent), the gateway's own route, or
 *                   "other".
 *
 * The gateway never parses a request body: it only checks that it is UTF-8
 * without NUL bytes (a text parameter cannot carry anything else). Request
 * headers go to SQL as a JSON object, names as received.
 *
 * Memory: a request holds its body (body.c: stored within --max-body-total)
 * from its reservation until the database answered; the gateway's own
 * endpoints do not keep bodies at all.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "gateway.h"

#define DISCARD_LIMIT (1024 * 1024)
#define RETRY_AFTER_BUSY "{\"Retry-After\": \"1\"}"

typedef struct Request
{
	double		start;
	char	   *target;			/* raw request target, then only its path */
	const char *query;			/* inside target, after the '?' */
	bool		seen;			/* HttpHandle has run once */
	bool		responded;
	bool		store_body;		/* false for the gateway's own endpoints */
	bool		declared;		/* Content-Length given */
	size_t		declared_length;
	bool		too_large;		/* chunked body over --max-body */
	bool		over_budget;	/* chunked body over --max-body-total */
	int			status;
	size_t		bytes_in;
	Body		body;
	char		method[16];
	char		client_ip[INET6_ADDRSTRLEN];
	ReplyNotes	notes;			/* key id and route label (SQL's, or ours) */
	StrBuf		headers_json;	/* request headers for SQL */
	DbJob		job;			/* the database call, run by dbwork.c */
	bool		job_pending;	/* connection suspended for the job */
} Request;

static int	in_flight;
static volatile int shutting_down;
static char *openapi_json;
static size_t openapi_len;

/* Reads the OpenAPI document once; a missing one only makes its route 404. */
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

/* Requests between their request line and their completion. */
int
HttpInFlight(void)
{
	return __atomic_load_n(&in_flight, __ATOMIC_SEQ_CST);
}

/* From now on every response closes its connection. */
void
HttpBeginShutdown(void)
{
	shutting_down = 1;
}

/* Starts a request's record at its request line. */
void *
HttpUriLog(void *cls, const char *uri, struct MHD_Connection *connection)
{
	Request    *req = calloc(1, sizeof(Request));

	if (req == NULL)
		return NULL;
	req->start = NowSeconds();
	req->target = strdup(uri ? uri : "");
	if (req->target == NULL)
	{
		free(req);
		return NULL;
	}
	req->query = "";
	__atomic_add_fetch(&in_flight, 1, __ATOMIC_SEQ_CST);
	return req;
}

/* Logs and counts a finished request, then frees everything it held. */
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
			MetricsObserve(req->method, req->notes.route, req->status, elapsed);
		AccessLog(req->method, req->notes.route, req->responded ? req->status : 0,
				  elapsed * 1000.0, req->notes.key_id, req->client_ip, req->bytes_in);
	}
	ConnTrackBusy(connection, false);
	__atomic_sub_fetch(&in_flight, 1, __ATOMIC_SEQ_CST);
	BodyRelease(&req->body);
	StrBufFree(&req->headers_json);
	free(req->job.result.headers);
	free(req->job.result.body);
	free(req->target);
	free(req);
	*req_cls = NULL;
}

/* Queues a response and records its status for the log. */
static enum MHD_Result
Respond(Request *req, struct MHD_Connection *connection, int status,
		const char *body, size_t len, const char *content_type,
		const char *sql_headers, bool close)
{
	enum MHD_Result ret = ResponseQueue(connection, status, body, len, content_type,
										sql_headers, close || shutting_down,
										&req->notes);

	if (ret == MHD_YES)
	{
		req->responded = true;
		req->status = status;
	}
	return ret;
}

/* The contract's error envelope, for errors the gateway answers itself. */
static enum MHD_Result
RespondError(Request *req, struct MHD_Connection *connection, int status,
			 const char *code, const char *message, const char *headers, bool close)
{
	char	   *body = ErrorEnvelope(code, message);
	enum MHD_Result ret;

	if (body == NULL)
		return MHD_NO;
	ret = Respond(req, connection, status, body, strlen(body), JSON_TYPE, headers, close);
	free(body);
	return ret;
}

/* The CORS preflight, recorded like any response. */
static enum MHD_Result
RespondPreflight(Request *req, struct MHD_Connection *connection)
{
	enum MHD_Result ret = ResponseQueuePreflight(connection);

	if (ret == MHD_YES)
	{
		req->responded = true;
		req->status = MHD_HTTP_NO_CONTENT;
	}
	return ret;
}

/* 413: the body is over --max-body. */
static enum MHD_Result
RespondTooLarge(Request *req, struct MHD_Connection *connection)
{
	char		message[128];

	snprintf(message, sizeof(message),
			 "the request body is larger than %zu bytes", config.max_body);
	return RespondError(req, connection, 413, "PAYLOAD_TOO_LARGE", message, NULL, true);
}

/* 503: bodies in flight hold --max-body-total; the client may retry. */
static enum MHD_Result
RespondBusy(Request *req, struct MHD_Connection *connection)
{
	return RespondError(req, connection, 503, "SERVICE_UNAVAILABLE",
						"too many request bodies are in flight; retry shortly",
						RETRY_AFTER_BUSY, true);
}

typedef struct HeaderWalk
{
	StrBuf	   *json;			/* NULL: only count */
	size_t		bytes;
	bool		ok;
} HeaderWalk;

/* Counts one header's bytes and, when asked, adds it to the JSON object. */
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

/* The request headers as SQL's JSON object, built once per request. */
static bool
HeadersJson(Request *req, struct MHD_Connection *connection)
{
	HeaderWalk	walk = {&req->headers_json, 0, true};

	if (req->headers_json.data != NULL)
		return true;
	if (!StrBufAppend(&req->headers_json, "{", 1))
		return false;
	MHD_get_connection_values(connection, MHD_HEADER_KIND, EachHeader, &walk);
	return walk.ok && StrBufAppend(&req->headers_json, "}", 1);
}

typedef struct HeaderJoin
{
	const char *name;
	StrBuf		joined;
	bool		ok;
} HeaderJoin;

/* Appends the value of every line named join->name, ", " between them. */
static enum MHD_Result
JoinHeader(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
	HeaderJoin *join = cls;

	if (strcasecmp(key, join->name) != 0 || value == NULL)
		return MHD_YES;
	if (join->joined.data != NULL && !StrBufAppend(&join->joined, ", ", 2))
		join->ok = false;
	join->ok = join->ok && StrBufAppend(&join->joined, value, strlen(value));
	return join->ok ? MHD_YES : MHD_NO;
}

/*
 * Decides req->client_ip. The proxy header is read in all its lines (RFC
 * 9110 5.3: repeated lines are one comma-separated list), since a proxy may
 * append a line of its own after one the client sent.
 */
static bool
ResolveClient(Request *req, struct MHD_Connection *connection)
{
	const union MHD_ConnectionInfo *peer =
		MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
	HeaderJoin	join = {ProxyHeaderName(), {0}, true};

	if (config.ntrusted > 0)
		MHD_get_connection_values(connection, MHD_HEADER_KIND, JoinHeader, &join);
	if (join.ok)
		ClientIpResolve(peer ? peer->client_addr : NULL, join.joined.data,
						req->client_ip, sizeof(req->client_ip));
	StrBufFree(&join.joined);
	return join.ok;
}

/* The method envoisms.api() is called with: HEAD is answered as GET. */
static const char *
ApiMethod(const Request *req)
{
	return strcmp(req->method, "HEAD") == 0 ? "GET" : req->method;
}

/* The route of a GET the gateway answers itself, or NULL. */
static const char *
OwnRoute(const Request *req)
{
	static const char *const routes[] = {"/healthz", "/metrics", "/v1/openapi.json"};

	if (strcmp(ApiMethod(req), "GET") != 0)
		return NULL;
	for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++)
		if (strcmp(req->target, routes[i]) == 0)
			return routes[i];
	return NULL;
}

/* Requests the gateway answers itself, which therefore need no body. */
static bool
OwnEndpoint(const Request *req)
{
	return strcmp(req->method, "OPTIONS") == 0 || OwnRoute(req) != NULL ||
		StaticPath(req->method, req->target);
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

/* Asks envoisms.api_precheck() whether the body is worth reading. */
static enum MHD_Result
StartPrecheck(Request *req, struct MHD_Connection *connection)
{
	if (!HeadersJson(req, connection))
		return MHD_NO;
	req->job.kind = DB_JOB_PRECHECK;
	req->job.method = ApiMethod(req);
	req->job.path = req->target;
	req->job.headers_json = req->headers_json.data;
	req->job.client_ip = req->client_ip;
	return StartJob(req, connection);
}

/* Reserves a declared body whole, before any of it is read: 503 when it does not fit. */
static enum MHD_Result
ReserveDeclared(Request *req, struct MHD_Connection *connection)
{
	if (!req->declared)
		return MHD_YES;
	switch (BodyReserve(&req->body, req->declared_length))
	{
		case BODY_STORED:
			return MHD_YES;
		case BODY_OVER_BUDGET:
			return RespondBusy(req, connection);
		case BODY_NO_MEMORY:
			break;
	}
	return MHD_NO;
}

/* The precheck answered: its error goes out with the body unread, or the body is read. */
static enum MHD_Result
FinishPrecheck(Request *req, struct MHD_Connection *connection)
{
	ApiResult  *result = &req->job.result;
	enum MHD_Result ret = MHD_YES;

	ConnTrackReceiving(connection);
	if (req->job.refused)
		ret = Respond(req, connection, result->status, result->body,
					  result->body ? strlen(result->body) : 0, JSON_TYPE, result->headers, true);
	free(result->headers);
	free(result->body);
	result->headers = result->body = NULL;
	if (req->job.refused)
		return ret;
	return ReserveDeclared(req, connection);
}

/* The whole request is in: its one call of envoisms.api(). */
static enum MHD_Result
StartApi(Request *req, struct MHD_Connection *connection)
{
	const char *body = req->body.buf.len > 0 ? req->body.buf.data : NULL;

	if (body != NULL && !Utf8Valid(body, req->body.buf.len))
		return RespondError(req, connection, 400, "INVALID_JSON",
							"the request body must be UTF-8 JSON", NULL, false);
	if (!Utf8Valid(req->target, strlen(req->target)) || !Utf8Valid(req->query, strlen(req->query)))
		return RespondError(req, connection, 400, "INVALID_REQUEST",
							"the request target must be UTF-8", NULL, false);
	if (!HeadersJson(req, connection))
		return MHD_NO;
	req->job.kind = DB_JOB_API;
	req->job.method = ApiMethod(req);
	req->job.path = req->target;
	req->job.query = req->query;
	req->job.headers_json = req->headers_json.data;
	req->job.body = body;
	req->job.client_ip = req->client_ip;
	return StartJob(req, connection);
}

/*
 * The database answered (or not): write its row, or /healthz's verdict. A
 * row whose headers set a text/ Content-Type carries its text as one JSON
 * string body: that text is written as it is, under that type (Meta's
 * hub.challenge is echoed so, the console's CSV export is written so).
 */
static enum MHD_Result
FinishJob(Request *req, struct MHD_Connection *connection)
{
	ApiResult  *result = &req->job.result;
	enum MHD_Result ret;
	StrBuf		text = {0};
	const char *p;

	BodyRelease(&req->body);	/* the database has it now */
	if (req->job.kind == DB_JOB_HEALTH)
	{
		static const char ok[] = "{\"status\": \"ok\"}";
		static const char down[] = "{\"status\": \"unavailable\"}";

		if (req->job.healthy)
			return Respond(req, connection, 200, ok, strlen(ok), JSON_TYPE, NULL, false);
		return Respond(req, connection, 503, down, strlen(down), JSON_TYPE,
					   RETRY_AFTER_BUSY, false);
	}
	if (result->body == NULL && result->status != 204 && result->status != 304)
		result->body = strdup("null");
	p = result->body ? result->body + 1 : NULL;
	if (p != NULL && result->body[0] == '"' && result->headers != NULL &&
		strstr(result->headers, "\"Content-Type\": \"text/") != NULL &&
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

/* Routes a whole request: the gateway's own endpoints, or envoisms.api(). */
static enum MHD_Result
Dispatch(Request *req, struct MHD_Connection *connection)
{
	const char *path = req->target;
	bool		get = strcmp(ApiMethod(req), "GET") == 0;

	if (get && strcmp(path, "/healthz") == 0)
	{
		req->job.kind = DB_JOB_HEALTH;
		return StartJob(req, connection);
	}
	if (get && strcmp(path, "/metrics") == 0)
	{
		MetricsGauges gauges;
		size_t		len;
		char	   *text;
		enum MHD_Result ret;

		PoolStats(&gauges.pool_size, &gauges.pool_in_use, &gauges.pool_connected);
		gauges.requests_in_flight = HttpInFlight();
		text = MetricsRender(&gauges, &len);
		if (text == NULL)
			return MHD_NO;
		ret = Respond(req, connection, 200, text, len, "text/plain; version=0.0.4", NULL, false);
		free(text);
		return ret;
	}
	if (StaticPath(req->method, path))
	{
		enum MHD_Result ret = StaticServe(connection, req->method, path, &req->status);

		req->responded = (ret == MHD_YES);
		return ret;
	}
	if (get && strcmp(path, "/v1/openapi.json") == 0)
	{
		if (openapi_json == NULL)
			return RespondError(req, connection, 404, "NOT_FOUND",
								"the OpenAPI document is not installed", NULL, false);
		return Respond(req, connection, 200, openapi_json, openapi_len, JSON_TYPE, NULL, false);
	}
	return StartApi(req, connection);
}

/*
 * Phase #1: the head is in and no body byte has been read. Answers what can
 * be refused now, starts the precheck of a large body, reserves a declared
 * one; MHD_YES without a response lets libmicrohttpd read the body.
 */
static enum MHD_Result
HandleHead(Request *req, struct MHD_Connection *connection, const char *method,
		   const char *version)
{
	const char *length = MHD_lookup_connection_value(connection, MHD_HEADER_KIND,
													 MHD_HTTP_HEADER_CONTENT_LENGTH);
	const char *chunked = MHD_lookup_connection_value(connection, MHD_HEADER_KIND,
													  MHD_HTTP_HEADER_TRANSFER_ENCODING);
	HeaderWalk	walk = {NULL, 0, true};
	HeadRefusal refusal;
	size_t		target_len = strlen(req->target);
	char	   *question = strchr(req->target, '?');

	req->seen = true;
	snprintf(req->method, sizeof(req->method), "%s", method);
	if (question)
	{
		*question = '\0';
		req->query = question + 1;
	}
	/* the label until envoisms.api() names the route it matched */
	snprintf(req->notes.route, sizeof(req->notes.route), "%s",
			 OwnRoute(req) ? OwnRoute(req) : StaticPath(req->method, req->target) ? "/console/" : "other");
	if (!ResolveClient(req, connection))
		return MHD_NO;

	if (HeadFieldsRefused(connection, version, &refusal))
		return RespondError(req, connection, refusal.status, refusal.code,
							refusal.message, NULL, true);
	if (target_len > config.max_url)
		return RespondError(req, connection, 414, "URI_TOO_LONG",
							"the request target is too long", NULL, true);
	MHD_get_connection_values(connection, MHD_HEADER_KIND, EachHeader, &walk);
	if (walk.bytes > config.max_headers)
		return RespondError(req, connection, 431, "HEADERS_TOO_LARGE",
							"the request headers are too large", NULL, true);
	if (length != NULL)
	{
		char	   *end;
		unsigned long long n;

		/* head.c made sure it is digits, and the same in every line */
		errno = 0;
		n = strtoull(length, &end, 10);
		if (errno != 0 || n > config.max_body)
			return RespondTooLarge(req, connection);
		req->declared = true;
		req->declared_length = (size_t) n;
	}
	req->store_body = !OwnEndpoint(req);
	if (!req->store_body)
		return MHD_YES;
	if (chunked != NULL || (req->declared && req->declared_length > config.precheck_above))
		return StartPrecheck(req, connection);
	return ReserveDeclared(req, connection);
}

/* Phase #n: stores (or discards) one piece of the body. */
static enum MHD_Result
HandleBody(Request *req, const char *data, size_t n)
{
	req->bytes_in += n;
	if (req->responded || !req->store_body)
		return MHD_YES;			/* answered already (413, 503), or not needed */
	if (!req->too_large && !req->over_budget)
	{
		if (req->body.buf.len + n > config.max_body)
			req->too_large = true;
		else
		{
			switch (BodyAppend(&req->body, data, n))
			{
				case BODY_STORED:
					return MHD_YES;
				case BODY_OVER_BUDGET:
					req->over_budget = true;
					break;
				case BODY_NO_MEMORY:
					return MHD_NO;
			}
		}
	}

	/*
	 * A chunked body (no Content-Length) outgrew a limit. MHD cannot answer
	 * in the middle of an upload, so the rest is discarded unstored and the
	 * answer goes out at its end; a client that sends more than
	 * DISCARD_LIMIT past the limit is cut off.
	 */
	BodyRelease(&req->body);
	if (req->bytes_in > config.max_body + DISCARD_LIMIT)
		return MHD_NO;
	return MHD_YES;
}

/* libmicrohttpd's access handler: see the phases at the top of this file. */
enum MHD_Result
HttpHandle(void *cls, struct MHD_Connection *connection, const char *url,
		   const char *method, const char *version, const char *upload_data,
		   size_t *upload_data_size, void **req_cls)
{
	Request    *req = *req_cls;

	if (req == NULL)
		return MHD_NO;			/* out of memory in HttpUriLog */
	if (!req->seen)
		return HandleHead(req, connection, method, version);

	if (req->job_pending)
	{
		/* resumed by the worker, which does so only once the job is done */
		if (!__atomic_load_n(&req->job.done, __ATOMIC_ACQUIRE))
		{
			MHD_suspend_connection(connection);
			return MHD_YES;
		}
		req->job_pending = false;
		if (req->job.kind == DB_JOB_PRECHECK)
			return FinishPrecheck(req, connection);
		return FinishJob(req, connection);
	}
	if (*upload_data_size > 0)
	{
		size_t		n = *upload_data_size;

		*upload_data_size = 0;
		return HandleBody(req, upload_data, n);
	}
	if (req->responded)
		return MHD_YES;
	if (req->too_large)
		return RespondTooLarge(req, connection);
	if (req->over_budget)
		return RespondBusy(req, connection);
	if (strcmp(req->method, "OPTIONS") == 0)
		return RespondPreflight(req, connection);
	return Dispatch(req, connection);
}
