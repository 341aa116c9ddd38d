/*
 * http_pool.h — the libcurl multi pool a worker drives its HTTP transfers
 * through (http_pool.c).
 *
 * One pool per worker, kept for the worker's life (keep-alive connections
 * are reused across transfers). Its sockets sit in one epoll descriptor,
 * HttpPoolSocket(), which the worker watches beside its latch
 * (WorkerWatchSocket), so the worker sleeps in one place. A transfer is
 * malloc'd, not palloc'd: libcurl's callbacks run outside any transaction.
 * The caller builds it (HttpTransferNew, headers, body), hands it to the
 * pool (HttpPoolStart), drives the pool after every wait (HttpPoolPerform)
 * and takes finished transfers back (HttpPoolNextDone) to free them.
 */
#ifndef ENVOISMS_HTTP_POOL_H
#define ENVOISMS_HTTP_POOL_H

#include "envoisms.h"

#include <curl/curl.h>

typedef struct HttpTransfer
{
	CURL	   *easy;
	struct curl_slist *headers;
	char	   *request_body;	/* malloc'd */
	char	   *response;		/* malloc'd, NUL-terminated */
	size_t		response_len;
	size_t		response_cap;
	long		http_status;
	long		retry_after_s;	/* Retry-After, -1 when absent */
	CURLcode	result;
	bool		ssrf_refused;
	bool		ssrf_guard;		/* check the connected address */
	char		ssrf_reason[128];
	char		errbuf[CURL_ERROR_SIZE];
	void	   *owner;			/* the worker's own record */
	struct HttpTransfer *next_done;
} HttpTransfer;

typedef struct HttpPool HttpPool;

extern HttpPool *HttpPoolCreate(long max_host_connections, long max_total_connections);
/* Change the connection limits (after a reload). */
extern void HttpPoolSetLimits(HttpPool *pool, long max_host_connections, long max_total_connections);
/* A transfer ready for its URL, headers and body; the pool owns it from
 * HttpPoolStart until it comes back from HttpPoolNextDone. */
extern HttpTransfer *HttpTransferNew(void *owner, bool ssrf_guard);
extern void HttpTransferAddHeader(HttpTransfer *t, const char *header);
extern void HttpTransferSetBody(HttpTransfer *t, const char *body, size_t len);
extern void HttpPoolStart(HttpPool *pool, HttpTransfer *t);
/* Drive the transfers (call after every wait). */
extern void HttpPoolPerform(HttpPool *pool);
/* Next finished transfer, or NULL. */
extern HttpTransfer *HttpPoolNextDone(HttpPool *pool);
/* Abort a transfer still running (at shutdown). */
extern void HttpPoolAbort(HttpPool *pool, HttpTransfer *t);
extern void HttpTransferFree(HttpTransfer *t);
/* Milliseconds until curl wants to be called again (-1 = none). */
extern long HttpPoolTimeout(HttpPool *pool);
extern pgsocket HttpPoolSocket(HttpPool *pool);
extern int	HttpPoolRunning(HttpPool *pool);

/* A describable reason for a failed transfer (curl error or HTTP status). */
extern const char *HttpTransferError(const HttpTransfer *t);

#endif							/* ENVOISMS_HTTP_POOL_H */
