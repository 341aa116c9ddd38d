/*
 * gateway.h — the parts of envoisms-gateway that the files share.
 *
 * The gateway is a thin HTTP front for envoisms.api(): main.c starts it and
 * waits for a signal, config.c reads flags and environment, acceptor.c
 * accepts connections and holds each until its first request head has
 * arrived and passed head.c's framing rules, http.c turns a request into one
 * call through pool.c (libpq connections, one prepared statement each) on
 * the worker threads of dbwork.c and response.c writes the answer,
 * clientip.c decides the client address, conntrack.c drops slow clients,
 * metrics.c counts and renders /metrics, log.c writes the access log,
 * static.c serves the console's files under /console/. No
 * business rule lives here: auth, limits, routing and error codes are all
 * answered by SQL. body.c keeps request bodies within --max-body-total;
 * util.c has the small string helpers.
 */
#ifndef ENVOISMS_GATEWAY_H
#define ENVOISMS_GATEWAY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <netinet/in.h>

#include <microhttpd.h>

#ifndef GATEWAY_VERSION
#error "GATEWAY_VERSION comes from the Makefile (EXTVERSION)"
#endif
#define MAX_CIDRS 64
#define MAX_ORIGINS 64
#define DOCS_URL "https://envoisms.ma/docs#errors"
#define JSON_TYPE "application/json; charset=utf-8"

/* ---- util.c */

typedef struct StrBuf
{
	char	   *data;
	size_t		len;
	size_t		cap;
} StrBuf;

/* Appends; false (and the buffer unchanged) when memory runs out. */
extern bool StrBufAppend(StrBuf *sb, const char *s, size_t n);
extern void StrBufFree(StrBuf *sb);
/* Appends s as a JSON string literal; invalid UTF-8 bytes become U+FFFD. */
extern bool JsonQuote(StrBuf *sb, const char *s);
extern bool JsonString(const char **p, StrBuf *sb);
extern bool Utf8Valid(const char *s, size_t len);
/* {"error": {"code", "message", "docs"}} (malloc'd; NULL when out of memory). */
extern char *ErrorEnvelope(const char *code, const char *message);
/* Grows the buffer to hold at least cap bytes (with its NUL); false when out of memory. */
extern bool StrBufReserve(StrBuf *sb, size_t cap);
extern double NowSeconds(void);

/* ---- config.c */

typedef struct Cidr
{
	int			family;			/* AF_INET or AF_INET6 */
	unsigned char addr[16];
	int			bits;
} Cidr;

typedef enum ProxyHeader
{
	PROXY_HEADER_X_FORWARDED_FOR,
	PROXY_HEADER_FORWARDED		/* RFC 7239 */
} ProxyHeader;

typedef struct GatewayConfig
{
	char		listen_host[256];
	int			listen_port;
	char	   *conninfo;
	int			threads;
	int			pool_size;
	int			recover_wait;	/* seconds to learn a lost write request's outcome */
	size_t		max_body;
	size_t		max_body_total; /* request bodies held at once, all connections */
	size_t		precheck_above; /* larger bodies wait for envoisms.api_precheck() */
	size_t		max_url;
	size_t		max_headers;
	int			timeout;		/* seconds to receive a request; idle limit */
	int			max_connections;
	char	   *openapi_path;
	char	   *console_dir;	/* the console's static files (static.c) */
	Cidr		trusted[MAX_CIDRS];
	int			ntrusted;
	ProxyHeader proxy_header;	/* the header the trusted proxies write */
	char	   *cors_origins[MAX_ORIGINS];
	int			ncors;
	bool		cors_any;
} GatewayConfig;

extern GatewayConfig config;

/* Fills config from defaults, environment, then argv; exits on bad input. */
extern void ConfigLoad(int argc, char **argv);

/* ---- clientip.c */

/* Parses "a.b.c.d/n", "x::y/n" or a bare address; false when invalid. */
extern bool CidrParse(const char *text, Cidr *out);

/* The request header --proxy-header names: "X-Forwarded-For" or "Forwarded". */
extern const char *ProxyHeaderName(void);

/*
 * Writes the client's address to out (INET6_ADDRSTRLEN): the peer address,
 * or, when the peer is a trusted proxy, the right-most address of the proxy
 * header that is not itself trusted. forwarded is every line of that header,
 * in order, joined with ", " (NULL when there is none).
 */
extern void ClientIpResolve(const struct sockaddr *peer, const char *forwarded,
							char *out, size_t outlen);

/* ---- pool.c */

typedef struct PoolConn PoolConn;

typedef struct ApiResult
{
	int			status;			/* HTTP status */
	char	   *headers;		/* JSON object text (malloc'd) or NULL */
	char	   *body;			/* JSON text (malloc'd) */
	bool		unavailable;	/* the database could not be reached */
} ApiResult;

extern bool PoolInit(const char *conninfo, int size);
extern void PoolClose(void);

/* Calls envoisms.api(); always fills *result (503/500 envelopes on failure). */
extern void PoolCallApi(const char *method, const char *path, const char *query,
						const char *headers_json, const char *body,
						const char *client_ip, ApiResult *result);

/*
 * Calls envoisms.api_precheck(): *refused and a filled *result when the key
 * may not make this request (or the database is unavailable), else
 * *refused = false and an empty result. A database without the function
 * lets every request proceed, as before it existed.
 */
extern void PoolCallPrecheck(const char *method, const char *path,
							 const char *headers_json, const char *client_ip,
							 ApiResult *result, bool *refused);

/* SELECT 1 through the pool; true when the database answered. */
extern bool PoolHealthCheck(void);

/* Connections the pool may hold, serving a request now, and open now. */
extern void PoolStats(int *size, int *in_use, int *connected);

/* ---- dbwork.c */

typedef enum DbJobKind
{
	DB_JOB_API,					/* envoisms.api() */
	DB_JOB_PRECHECK,			/* envoisms.api_precheck(), before a large body */
	DB_JOB_HEALTH				/* SELECT 1 */
} DbJobKind;

typedef struct DbJob
{
	struct DbJob *next;
	struct MHD_Connection *connection;	/* resumed when done */
	DbJobKind	kind;
	const char *method;
	const char *path;
	const char *query;
	const char *headers_json;
	const char *body;
	const char *client_ip;
	ApiResult	result;
	bool		healthy;
	bool		refused;		/* the precheck answered with an error */
	bool		done;
} DbJob;

extern bool DbWorkStart(int count);
/* Runs the job on a worker, then resumes job->connection. */
extern void DbWorkSubmit(DbJob *job);
/* Finishes the queued jobs and joins the workers. */
extern void DbWorkStop(void);

/* ---- metrics.c */

/* Counts a finished request under its method, route label and status. */
extern void MetricsObserve(const char *method, const char *route, int status,
						   double seconds);
extern void MetricsDbError(const char *kind);
extern void MetricsOutcome(const char *kind);
extern void MetricsConnected(void);
extern void MetricsConnections(int delta);

/* The gauges /metrics shows that others keep: the caller reads them. */
typedef struct MetricsGauges
{
	int			pool_size;		/* PoolStats */
	int			pool_in_use;
	int			pool_connected;
	int			requests_in_flight; /* HttpInFlight */
} MetricsGauges;

/* Prometheus text exposition of what was counted and of gauges (malloc'd). */
extern char *MetricsRender(const MetricsGauges *gauges, size_t *len);

/* ---- conntrack.c */

extern void ConnTrackNotify(void *cls, struct MHD_Connection *connection,
							void **socket_context,
							enum MHD_ConnectionNotificationCode code);
/* Marks the connection busy (handler running) or waiting for a request. */
extern void ConnTrackBusy(struct MHD_Connection *connection, bool busy);
/* Marks the connection as receiving again (a precheck done) without resetting its clock. */
extern void ConnTrackReceiving(struct MHD_Connection *connection);
extern bool ConnTrackStart(void);
extern void ConnTrackStop(void);
/* Connections accepted that have not finished a first request. */
extern int	ConnTrackPending(void);

/* ---- acceptor.c */

/* Opens the listening socket; false (with errno) when it cannot. */
extern bool AcceptorListen(const struct sockaddr *addr, socklen_t addrlen);
/* Starts accepting; connections go to daemon once their first head passed. */
extern bool AcceptorStart(struct MHD_Daemon *daemon);
/* Closes the listening socket (new connections are refused); returns when done. */
extern void AcceptorQuiesce(void);
/* Connections accepted whose first head has not yet been handed over or refused. */
extern int	AcceptorPending(void);
/* Closes what is still pending and ends the thread. */
extern void AcceptorStop(void);
/* A connection handed to libmicrohttpd closed: its slot of --max-connections is free. */
extern void AcceptorConnectionClosed(void);

/* ---- head.c */

typedef struct HeadRefusal
{
	int			status;			/* 400, 413, 414, 431, 501 or 505 */
	const char *code;			/* the envelope's error code */
	char		message[128];
} HeadRefusal;

typedef enum HeadState
{
	HEAD_INCOMPLETE,			/* no end of head yet, and no rule broken so far */
	HEAD_COMPLETE,				/* the head is whole and well framed */
	HEAD_REFUSED				/* *refusal says why */
} HeadState;

/* Checks the raw bytes of a first request head (request line, header lines). */
extern HeadState HeadInspect(const char *buf, size_t len, HeadRefusal *refusal);
/*
 * Checks the header fields libmicrohttpd parsed, on every request: true
 * (and *refusal) when the request must be refused before its body is read.
 */
extern bool HeadFieldsRefused(struct MHD_Connection *connection, const char *version,
							  HeadRefusal *refusal);

/* ---- response.c */

/*
 * What SQL's reply headers tell the gateway alone: taken out of the
 * response, never sent. A field stays as it was when its header is absent.
 */
typedef struct ReplyNotes
{
	char		key_id[64];		/* X-Envoisms-Key-Id: the key, for the access log */
	char		route[96];		/* X-Envoisms-Route: the route template envoisms.api()
								 * matched, the label of metrics and access log */
} ReplyNotes;

/*
 * Queues a response: body (len bytes, copied), content type, CORS headers,
 * "Connection: close" when close, and the headers of SQL's JSON object
 * sql_headers (or NULL), except those meant for the gateway, which go to
 * *notes instead.
 */
extern enum MHD_Result ResponseQueue(struct MHD_Connection *connection, int status,
									 const char *body, size_t len,
									 const char *content_type,
									 const char *sql_headers, bool close,
									 ReplyNotes *notes);
/* The answer to a CORS preflight (OPTIONS): 204 with the allowed methods. */
extern enum MHD_Result ResponseQueuePreflight(struct MHD_Connection *connection);
/*
 * A whole HTTP/1.1 response with the error envelope and "Connection: close",
 * for a connection libmicrohttpd does not hold (malloc'd; NULL when out of
 * memory).
 */
extern char *ResponseRawError(int status, const char *code, const char *message,
							  size_t *len);

/* ---- body.c */

typedef struct Body
{
	StrBuf		buf;
	size_t		reserved;		/* bytes of --max-body-total held: buf's capacity */
} Body;

typedef enum BodyStore
{
	BODY_STORED,
	BODY_OVER_BUDGET,			/* --max-body-total (or --max-body) would be exceeded */
	BODY_NO_MEMORY
} BodyStore;

/* Reserves a declared body whole (length bytes) before it is read. */
extern BodyStore BodyReserve(Body *body, size_t length);
/* Appends n bytes, reserving more first when the buffer must grow. */
extern BodyStore BodyAppend(Body *body, const char *data, size_t n);
/* Frees the body and gives its reservation back. */
extern void BodyRelease(Body *body);

/* ---- http.c */

extern bool HttpInit(void);
extern void *HttpUriLog(void *cls, const char *uri, struct MHD_Connection *connection);
extern enum MHD_Result HttpHandle(void *cls, struct MHD_Connection *connection,
								  const char *url, const char *method,
								  const char *version, const char *upload_data,
								  size_t *upload_data_size, void **req_cls);
extern void HttpCompleted(void *cls, struct MHD_Connection *connection,
						  void **req_cls, enum MHD_RequestTerminationCode toe);
extern int	HttpInFlight(void);
extern void HttpBeginShutdown(void);

/* ---- static.c */

/* Resolves --console-dir; a missing directory is logged, not fatal. */
extern bool StaticInit(void);
/* Whether static.c answers: "/console", "/console/..." and a GET or HEAD of "/". */
extern bool StaticPath(const char *method, const char *path);
/* The relative file a raw "/console/" suffix names; false when it names none. */
extern bool StaticRelativePath(const char *raw, char *out, size_t outlen);
/* The MIME type of a served file name, or NULL when its extension is not served. */
extern const char *StaticMimeType(const char *name);
/* Answers GET/HEAD from the console's files (405 otherwise); *status is set. */
extern enum MHD_Result StaticServe(struct MHD_Connection *connection, const char *method,
								   const char *path, int *status);

/* ---- log.c */

extern void AccessLog(const char *method, const char *route, int status,
					  double ms, const char *key_id, const char *client_ip,
					  size_t bytes_in);
extern void ErrorLog(const char *fmt,...) __attribute__((format(printf, 1, 2)));
extern void InfoLog(const char *fmt,...) __attribute__((format(printf, 1, 2)));

#endif							/* ENVOISMS_GATEWAY_H */
