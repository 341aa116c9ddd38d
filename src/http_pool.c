/*
 * http_pool.c — the libcurl multi pool the dispatcher and the webhook
 * worker drive (http_pool.h).
 *
 * One multi handle per worker, kept for the worker's life: its connection
 * cache gives keep-alive reuse across transfers, and any number of
 * transfers are in flight at once. libcurl tells us which sockets it wants
 * (CURLMOPT_SOCKETFUNCTION) and when to call it back (TIMERFUNCTION); the
 * sockets go into one epoll descriptor, and that descriptor is the one
 * socket WorkerWait() watches beside the latch. So a worker sleeps in one
 * place, woken by network readiness, a commit (latch), SIGTERM (latch) or
 * curl's timer, and never polls.
 *
 * Memory: transfers and their buffers are malloc'd, not palloc'd: curl's
 * callbacks run outside any transaction and must never ereport. Nothing of
 * a transfer outlives HttpTransferFree.
 */
#include "envoisms.h"

#include <sys/epoll.h>
#include <unistd.h>

#include "utils/timestamp.h"

#include "http_pool.h"
#include "ssrf.h"
#include "worker.h"

struct HttpPool
{
	CURLM	   *multi;
	int			epfd;
	TimestampTz timer_at;		/* 0 = no timer */
	int			running;
	HttpTransfer *done_head;
	HttpTransfer *done_tail;
};

#define CURL_CHECK_MULTI(call) \
	do { \
		CURLMcode _rc = (call); \
		if (_rc != CURLM_OK) \
			elog(ERROR, "libcurl: %s: %s", #call, curl_multi_strerror(_rc)); \
	} while (0)

/* CURLMOPT_SOCKETFUNCTION: keep the pool's epoll set equal to what curl waits on. */
static int
socket_callback(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
	HttpPool   *pool = (HttpPool *) userp;
	struct epoll_event ev;

	memset(&ev, 0, sizeof(ev));
	ev.data.fd = s;
	if (what == CURL_POLL_REMOVE)
	{
		epoll_ctl(pool->epfd, EPOLL_CTL_DEL, s, NULL);
		curl_multi_assign(pool->multi, s, NULL);
		return 0;
	}
	ev.events = (what & CURL_POLL_IN ? EPOLLIN : 0) | (what & CURL_POLL_OUT ? EPOLLOUT : 0);
	if (socketp == NULL)
	{
		if (epoll_ctl(pool->epfd, EPOLL_CTL_ADD, s, &ev) != 0 && errno == EEXIST)
			epoll_ctl(pool->epfd, EPOLL_CTL_MOD, s, &ev);
		curl_multi_assign(pool->multi, s, (void *) pool);
	}
	else if (epoll_ctl(pool->epfd, EPOLL_CTL_MOD, s, &ev) != 0 && errno == ENOENT)
		epoll_ctl(pool->epfd, EPOLL_CTL_ADD, s, &ev);
	return 0;
}

/* CURLMOPT_TIMERFUNCTION: remember when curl wants to be called back. */
static int
timer_callback(CURLM *multi, long timeout_ms, void *userp)
{
	HttpPool   *pool = (HttpPool *) userp;

	pool->timer_at = timeout_ms < 0 ? 0
		: TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);
	return 0;
}

/* CURLOPT_WRITEFUNCTION: keep the first 64 kB of a reply, NUL-terminated. */
static size_t
write_callback(char *data, size_t size, size_t nmemb, void *userp)
{
	HttpTransfer *t = (HttpTransfer *) userp;
	size_t		n = size * nmemb;

	/* keep at most 64 kB of a reply: enough for any id or error */
	if (t->response_len + n + 1 > t->response_cap)
	{
		size_t		cap = Max(t->response_cap * 2, t->response_len + n + 1);
		char	   *p;

		if (cap > 65536 + 1)
			cap = 65536 + 1;
		if (t->response_len + 1 >= cap)
			return n;			/* drop the rest, quietly */
		p = realloc(t->response, cap);
		if (p == NULL)
			return 0;			/* curl fails the transfer */
		t->response = p;
		t->response_cap = cap;
	}
	n = Min(n, t->response_cap - t->response_len - 1);
	memcpy(t->response + t->response_len, data, n);
	t->response_len += n;
	t->response[t->response_len] = '\0';
	return size * nmemb;
}

/* A new pool (in TopMemoryContext) with these connection limits. */
HttpPool *
HttpPoolCreate(long max_host_connections, long max_total_connections)
{
	HttpPool   *pool = MemoryContextAllocZero(TopMemoryContext, sizeof(HttpPool));

	pool->multi = curl_multi_init();
	if (pool->multi == NULL)
		elog(ERROR, "curl_multi_init failed");
	pool->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (pool->epfd < 0)
		elog(ERROR, "epoll_create1 failed: %m");
	CURL_CHECK_MULTI(curl_multi_setopt(pool->multi, CURLMOPT_SOCKETFUNCTION, socket_callback));
	CURL_CHECK_MULTI(curl_multi_setopt(pool->multi, CURLMOPT_SOCKETDATA, pool));
	CURL_CHECK_MULTI(curl_multi_setopt(pool->multi, CURLMOPT_TIMERFUNCTION, timer_callback));
	CURL_CHECK_MULTI(curl_multi_setopt(pool->multi, CURLMOPT_TIMERDATA, pool));
	CURL_CHECK_MULTI(curl_multi_setopt(pool->multi, CURLMOPT_MAX_HOST_CONNECTIONS, max_host_connections));
	CURL_CHECK_MULTI(curl_multi_setopt(pool->multi, CURLMOPT_MAXCONNECTS, max_total_connections));
	return pool;
}

/* Apply new connection limits to a running pool. */
void
HttpPoolSetLimits(HttpPool *pool, long max_host_connections, long max_total_connections)
{
	CURL_CHECK_MULTI(curl_multi_setopt(pool->multi, CURLMOPT_MAX_HOST_CONNECTIONS, max_host_connections));
	CURL_CHECK_MULTI(curl_multi_setopt(pool->multi, CURLMOPT_MAXCONNECTS, max_total_connections));
}

/* The one descriptor (epoll) that becomes readable when a transfer can progress. */
pgsocket
HttpPoolSocket(HttpPool *pool)
{
	return pool->epfd;
}

/* Transfers started and not yet finished. */
int
HttpPoolRunning(HttpPool *pool)
{
	return pool->running;
}

/* A transfer with our fixed options, ready for its URL, headers and body. */
HttpTransfer *
HttpTransferNew(void *owner, bool ssrf_guard)
{
	HttpTransfer *t = calloc(1, sizeof(HttpTransfer));

	if (t == NULL)
		ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory")));
	t->easy = curl_easy_init();
	if (t->easy == NULL)
	{
		free(t);
		elog(ERROR, "curl_easy_init failed");
	}
	t->owner = owner;
	t->retry_after_s = -1;
	t->ssrf_guard = ssrf_guard;
	curl_easy_setopt(t->easy, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(t->easy, CURLOPT_WRITEFUNCTION, write_callback);
	curl_easy_setopt(t->easy, CURLOPT_WRITEDATA, t);
	curl_easy_setopt(t->easy, CURLOPT_ERRORBUFFER, t->errbuf);
	curl_easy_setopt(t->easy, CURLOPT_PRIVATE, t);
	curl_easy_setopt(t->easy, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(t->easy, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(t->easy, CURLOPT_REDIR_PROTOCOLS_STR, "https");
	curl_easy_setopt(t->easy, CURLOPT_PROXY, "");	/* never an environment proxy */
	curl_easy_setopt(t->easy, CURLOPT_USERAGENT, "envoisms/" "0.1");
	curl_easy_setopt(t->easy, CURLOPT_TCP_KEEPALIVE, 1L);
	if (ssrf_guard)
	{
		curl_easy_setopt(t->easy, CURLOPT_OPENSOCKETFUNCTION, SsrfOpenSocket);
		curl_easy_setopt(t->easy, CURLOPT_OPENSOCKETDATA, t);
	}
	return t;
}

/* Add one request header line ("Name: value"). */
void
HttpTransferAddHeader(HttpTransfer *t, const char *header)
{
	struct curl_slist *l = curl_slist_append(t->headers, header);

	if (l == NULL)
		ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory")));
	t->headers = l;
}

/* Copy the request body and make the transfer a POST of it. */
void
HttpTransferSetBody(HttpTransfer *t, const char *body, size_t len)
{
	t->request_body = malloc(len + 1);
	if (t->request_body == NULL)
		ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory")));
	memcpy(t->request_body, body, len);
	t->request_body[len] = '\0';
	curl_easy_setopt(t->easy, CURLOPT_POSTFIELDS, t->request_body);
	curl_easy_setopt(t->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) len);
}

/* Hand a transfer to the pool: it runs from now on. */
void
HttpPoolStart(HttpPool *pool, HttpTransfer *t)
{
	curl_easy_setopt(t->easy, CURLOPT_HTTPHEADER, t->headers);
	CURL_CHECK_MULTI(curl_multi_add_handle(pool->multi, t->easy));
	pool->running++;
}

/* Move what curl finished to the pool's done list, with status and Retry-After. */
static void
collect_done(HttpPool *pool)
{
	CURLMsg    *msg;
	int			left;

	while ((msg = curl_multi_info_read(pool->multi, &left)) != NULL)
	{
		HttpTransfer *t = NULL;
		curl_off_t	retry_after = -1;

		if (msg->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &t);
		t->result = msg->data.result;
		curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &t->http_status);
		if (curl_easy_getinfo(t->easy, CURLINFO_RETRY_AFTER, &retry_after) == CURLE_OK && retry_after > 0)
			t->retry_after_s = (long) retry_after;
		curl_multi_remove_handle(pool->multi, t->easy);
		pool->running--;
		t->next_done = NULL;
		if (pool->done_tail)
			pool->done_tail->next_done = t;
		else
			pool->done_head = t;
		pool->done_tail = t;
	}
}

/* Let curl act on ready sockets and on its timer, then collect finished transfers. */
void
HttpPoolPerform(HttpPool *pool)
{
	struct epoll_event events[256];
	int			still;
	int			n;

	if (pool->running == 0)
		return;
	/* sockets that are ready */
	for (int round = 0; round < 8; round++)
	{
		n = epoll_wait(pool->epfd, events, lengthof(events), 0);
		if (n <= 0)
			break;
		for (int i = 0; i < n; i++)
		{
			int			flags = 0;

			if (events[i].events & (EPOLLIN | EPOLLHUP))
				flags |= CURL_CSELECT_IN;
			if (events[i].events & EPOLLOUT)
				flags |= CURL_CSELECT_OUT;
			if (events[i].events & EPOLLERR)
				flags |= CURL_CSELECT_ERR;
			curl_multi_socket_action(pool->multi, events[i].data.fd, flags, &still);
		}
		if (n < (int) lengthof(events))
			break;
	}
	/* curl's timer */
	if (pool->timer_at != 0 && pool->timer_at <= GetCurrentTimestamp())
	{
		pool->timer_at = 0;
		curl_multi_socket_action(pool->multi, CURL_SOCKET_TIMEOUT, 0, &still);
	}
	collect_done(pool);
}

/* The next finished transfer (the caller frees it), or NULL. */
HttpTransfer *
HttpPoolNextDone(HttpPool *pool)
{
	HttpTransfer *t = pool->done_head;

	if (t)
	{
		pool->done_head = t->next_done;
		if (pool->done_head == NULL)
			pool->done_tail = NULL;
		t->next_done = NULL;
	}
	return t;
}

/* Take a running transfer out of the pool (at shutdown); the caller frees it. */
void
HttpPoolAbort(HttpPool *pool, HttpTransfer *t)
{
	if (curl_multi_remove_handle(pool->multi, t->easy) == CURLM_OK)
		pool->running--;
}

/* Milliseconds until the pool wants to be driven again; 0 with finished transfers waiting, -1 for none. */
long
HttpPoolTimeout(HttpPool *pool)
{
	if (pool->done_head != NULL)
		return 0;
	return WorkerMsUntil(pool->timer_at);
}

/* Free a transfer and everything it holds (NULL is fine). */
void
HttpTransferFree(HttpTransfer *t)
{
	if (t == NULL)
		return;
	curl_easy_cleanup(t->easy);
	curl_slist_free_all(t->headers);
	free(t->request_body);
	free(t->response);
	free(t);
}

/* Why a transfer failed, in words (a static buffer, valid until the next call). */
const char *
HttpTransferError(const HttpTransfer *t)
{
	static char buf[CURL_ERROR_SIZE + 64];

	if (t->ssrf_refused)
		snprintf(buf, sizeof(buf), "address refused: %s", t->ssrf_reason);
	else if (t->result != CURLE_OK)
		snprintf(buf, sizeof(buf), "%s%s%s", curl_easy_strerror(t->result),
				 t->errbuf[0] ? ": " : "", t->errbuf);
	else
		snprintf(buf, sizeof(buf), "HTTP %ld", t->http_status);
	return buf;
}
