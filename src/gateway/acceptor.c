/*
 * acceptor.c — the listening socket, and each new connection until its
 * first request head has arrived whole.
 *
 * libmicrohttpd answers some malformed heads itself, in HTML, before any
 * callback of ours (head.c lists them). So the gateway accepts connections
 * itself (libmicrohttpd runs with MHD_USE_NO_LISTEN_SOCKET) and reads the
 * first head with recv(MSG_PEEK), which leaves the bytes in the socket. A
 * head that passes HeadInspect() is handed over with MHD_add_connection()
 * and parsed there as usual; one that does not is answered here, once, with
 * the JSON error envelope and "Connection: close", after which the
 * connection lingers (its input read and dropped, for LINGER_SECONDS at
 * most) so that the client reads the answer rather than a reset.
 *
 * One thread and one level-triggered epoll set: the listening socket, an
 * eventfd that wakes the thread (a slot freed, quiesce, stop), and the
 * pending connections. --max-connections counts the connections here plus
 * those libmicrohttpd holds; at the cap the listening socket leaves the
 * epoll set and further connections wait in the kernel's backlog. A
 * connection that has not sent a whole head within --timeout is closed.
 *
 * The peek window is at most PEEK_MAX bytes, which a socket's default
 * receive buffer holds; a head that --max-url and --max-headers allow but
 * that does not fit (only with limits raised well past their defaults) is
 * handed to libmicrohttpd unchecked.
 *
 * Locking: the pending list belongs to this thread. handed (connections
 * libmicrohttpd holds) is atomic: raised here before each hand-over,
 * lowered from libmicrohttpd's threads by AcceptorConnectionClosed(). A
 * mutex and condition variable make AcceptorQuiesce() wait for the socket
 * to be closed.
 */
#define _GNU_SOURCE				/* accept4 */
#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "gateway.h"

#define PEEK_MAX (60 * 1024)
#define LINGER_SECONDS 2.0
#define LINGER_MAX_BYTES (1024 * 1024)
#define ACCEPT_PAUSE 0.1		/* after EMFILE, ENFILE, ENOBUFS, ENOMEM */
#define TICK_MS 250

typedef struct Pending
{
	struct Pending *prev;
	struct Pending *next;
	int			fd;
	struct sockaddr_storage addr;
	socklen_t	addrlen;
	double		accepted;
	double		deadline;
	bool		lingering;		/* answered; draining until the client closes */
	size_t		drained;
} Pending;

static struct MHD_Daemon *mhd;
static int	listen_fd = -1;
static int	epoll_fd = -1;
static int	wake_fd = -1;
static bool listening;			/* listen_fd is in the epoll set */
static double paused_until;
static Pending *head;
static int	npending;			/* waiting for their head (shutdown waits for them) */
static int	nlingering;
static int	handed;				/* held by libmicrohttpd */
static bool cap_reached;		/* a closed connection must wake the thread */
static bool quiesce_requested;
static bool stop_requested;
static pthread_t thread;
static bool thread_started;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t quiesced = PTHREAD_COND_INITIALIZER;
static char peek_buffer[PEEK_MAX];
static size_t peek_window;
static bool window_capped;		/* the window is smaller than the configured limits */

/* Tags of the epoll entries that are not connections. */
static char listen_tag;
static char wake_tag;

/* Wakes the thread out of epoll_wait. */
static void
Wake(void)
{
	uint64_t	one = 1;

	/* a full counter already means "wake up" */
	if (write(wake_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		ErrorLog("cannot wake the acceptor: %s", strerror(errno));
}

/* Opens the listening socket before anything else starts, so a busy port fails fast. */
bool
AcceptorListen(const struct sockaddr *addr, socklen_t addrlen)
{
	int			on = 1;
	size_t		limits = config.max_url + config.max_headers + 1024;

	listen_fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (listen_fd < 0)
		return false;
	if (setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) != 0 ||
		(addr->sa_family == AF_INET6 &&
		 setsockopt(listen_fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof(on)) != 0) ||
		bind(listen_fd, addr, addrlen) != 0 || listen(listen_fd, 4096) != 0)
	{
		int			saved = errno;

		close(listen_fd);
		listen_fd = -1;
		errno = saved;
		return false;
	}
	peek_window = limits < PEEK_MAX ? limits : PEEK_MAX;
	window_capped = limits > PEEK_MAX;
	return true;
}

/* Connections counted against --max-connections. */
static int
OpenCount(void)
{
	return npending + nlingering + __atomic_load_n(&handed, __ATOMIC_SEQ_CST);
}

/* Puts the listening socket in or out of the epoll set, as the cap and pauses allow. */
static void
UpdateListening(double now)
{
	bool		want;
	struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &listen_tag};

	__atomic_store_n(&cap_reached, true, __ATOMIC_SEQ_CST);
	want = listen_fd >= 0 && now >= paused_until && OpenCount() < config.max_connections;
	if (want)
		__atomic_store_n(&cap_reached, false, __ATOMIC_SEQ_CST);
	if (want == listening)
		return;
	if (epoll_ctl(epoll_fd, want ? EPOLL_CTL_ADD : EPOLL_CTL_DEL, listen_fd, &ev) != 0)
	{
		ErrorLog("cannot %s the listening socket: %s", want ? "watch" : "unwatch",
				 strerror(errno));
		return;
	}
	listening = want;
}

/* Takes a pending connection out of the list. */
static void
Unlink(Pending *p)
{
	if (p->prev)
		p->prev->next = p->next;
	else
		head = p->next;
	if (p->next)
		p->next->prev = p->prev;
}

/* Forgets a pending connection and closes its socket. */
static void
Close(Pending *p)
{
	Unlink(p);
	if (p->lingering)
		nlingering--;
	else
		__atomic_sub_fetch(&npending, 1, __ATOMIC_SEQ_CST);
	close(p->fd);				/* also leaves the epoll set */
	free(p);
}

/* The head is whole and well framed: libmicrohttpd takes the connection. */
static void
HandOver(Pending *p)
{
	int			fd = p->fd;

	if (epoll_ctl(epoll_fd, EPOLL_CTL_DEL, fd, NULL) != 0)
		ErrorLog("cannot unwatch a connection: %s", strerror(errno));
	p->fd = -1;
	Unlink(p);
	__atomic_sub_fetch(&npending, 1, __ATOMIC_SEQ_CST);
	/* raised first: the connection may close before the call returns */
	__atomic_add_fetch(&handed, 1, __ATOMIC_SEQ_CST);
	if (MHD_add_connection(mhd, fd, (struct sockaddr *) &p->addr, p->addrlen) != MHD_YES)
	{
		/* libmicrohttpd closed the socket */
		__atomic_sub_fetch(&handed, 1, __ATOMIC_SEQ_CST);
		ErrorLog("libmicrohttpd did not take a connection: %s", strerror(errno));
	}
	free(p);
}

/* Answers a head that breaks a framing rule, then lets the connection linger. */
static void
RefuseHead(Pending *p, const HeadRefusal *refusal)
{
	size_t		len = 0;
	char	   *response = ResponseRawError(refusal->status, refusal->code, refusal->message, &len);
	char		ip[INET6_ADDRSTRLEN];
	double		now = NowSeconds();

	/* a fresh socket's send buffer takes these few hundred bytes at once */
	if (response == NULL || send(p->fd, response, len, MSG_NOSIGNAL) != (ssize_t) len)
		ErrorLog("cannot answer a malformed request head");
	free(response);
	(void) shutdown(p->fd, SHUT_WR);	/* the answer is all we send */
	__atomic_sub_fetch(&npending, 1, __ATOMIC_SEQ_CST);
	nlingering++;
	p->lingering = true;
	p->deadline = now + LINGER_SECONDS;
	ClientIpResolve((struct sockaddr *) &p->addr, NULL, ip, sizeof(ip));
	AccessLog("-", "other", refusal->status, (now - p->accepted) * 1000.0, NULL, ip, 0);
	MetricsObserve("-", "other", refusal->status, now - p->accepted);
}

/* Reads and drops what a refused client still sends, until it closes. */
static void
Drain(Pending *p)
{
	char		scratch[16384];

	for (;;)
	{
		ssize_t		n = recv(p->fd, scratch, sizeof(scratch), 0);

		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
			return;
		if (n <= 0 || (p->drained += n) > LINGER_MAX_BYTES)
		{
			Close(p);
			return;
		}
	}
}

/* Looks at what has arrived of a pending connection's head. */
static void
Inspect(Pending *p, uint32_t events)
{
	HeadRefusal refusal;
	ssize_t		n = recv(p->fd, peek_buffer, peek_window, MSG_PEEK);

	if (n < 0)
	{
		if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
			Close(p);
		return;
	}
	if (n == 0)
	{
		Close(p);				/* closed before sending a request */
		return;
	}
	switch (HeadInspect(peek_buffer, n, &refusal))
	{
		case HEAD_COMPLETE:
			HandOver(p);
			return;
		case HEAD_REFUSED:
			RefuseHead(p, &refusal);
			return;
		case HEAD_INCOMPLETE:
			if ((size_t) n >= peek_window)
			{
				if (window_capped)
					HandOver(p);
				else
				{
					refusal.status = 431;
					refusal.code = "HEADERS_TOO_LARGE";
					strcpy(refusal.message, "the request headers are too large");
					RefuseHead(p, &refusal);
				}
			}
			else if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
				Close(p);		/* the client stopped sending halfway */
			return;
	}
}

/* Accepts what the backlog holds, up to the cap. */
static void
AcceptNew(double now)
{
	while (listen_fd >= 0 && OpenCount() < config.max_connections)
	{
		Pending    *p;
		struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP};
		struct sockaddr_storage addr;
		socklen_t	addrlen = sizeof(addr);
		int			fd = accept4(listen_fd, (struct sockaddr *) &addr, &addrlen,
								 SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (fd < 0)
		{
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK)
			{
				/* out of descriptors or memory: let some close first */
				ErrorLog("cannot accept a connection: %s", strerror(errno));
				paused_until = now + ACCEPT_PAUSE;
			}
			return;
		}
		p = calloc(1, sizeof(Pending));
		if (p == NULL)
		{
			close(fd);
			paused_until = now + ACCEPT_PAUSE;
			return;
		}
		p->fd = fd;
		memcpy(&p->addr, &addr, sizeof(addr));
		p->addrlen = addrlen;
		p->accepted = now;
		p->deadline = now + config.timeout;
		ev.data.ptr = p;
		if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &ev) != 0)
		{
			ErrorLog("cannot watch a connection: %s", strerror(errno));
			close(fd);
			free(p);
			continue;
		}
		p->next = head;
		if (head)
			head->prev = p;
		head = p;
		__atomic_add_fetch(&npending, 1, __ATOMIC_SEQ_CST);
		Inspect(p, 0);			/* the head often came with the handshake */
	}
}

/* Closes the connections whose head, or whose lingering, took too long. */
static void
Expire(double now)
{
	Pending    *next;

	for (Pending *p = head; p; p = next)
	{
		next = p->next;
		if (now > p->deadline)
			Close(p);
	}
}

/* Closes the listening socket, under the lock AcceptorQuiesce() waits on. */
static void
CloseListening(void)
{
	pthread_mutex_lock(&lock);
	if (listen_fd >= 0)
	{
		close(listen_fd);		/* also leaves the epoll set */
		listen_fd = -1;
		listening = false;
	}
	pthread_cond_broadcast(&quiesced);
	pthread_mutex_unlock(&lock);
}

/* The acceptor thread: see the top of this file. */
static void *
AcceptorMain(void *arg)
{
	struct epoll_event events[64];

	while (!__atomic_load_n(&stop_requested, __ATOMIC_SEQ_CST))
	{
		int			n = epoll_wait(epoll_fd, events, 64, TICK_MS);
		double		now = NowSeconds();

		if (n < 0 && errno != EINTR)
		{
			ErrorLog("epoll_wait in the acceptor: %s", strerror(errno));
			usleep(TICK_MS * 1000);
		}
		for (int i = 0; i < n; i++)
		{
			void	   *tag = events[i].data.ptr;

			if (tag == &listen_tag)
				AcceptNew(now);
			else if (tag == &wake_tag)
			{
				uint64_t	count;

				if (read(wake_fd, &count, sizeof(count)) < 0 && errno != EAGAIN)
					ErrorLog("cannot read the acceptor's eventfd: %s", strerror(errno));
			}
			else if (((Pending *) tag)->lingering)
				Drain(tag);
			else
				Inspect(tag, events[i].events);
		}
		if (__atomic_load_n(&quiesce_requested, __ATOMIC_SEQ_CST) && listen_fd >= 0)
			CloseListening();
		Expire(now);
		UpdateListening(now);
	}
	while (head)
		Close(head);
	CloseListening();
	return NULL;
}

/* Starts the thread; from now on connections reach daemon through it. */
bool
AcceptorStart(struct MHD_Daemon *daemon)
{
	struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &wake_tag};

	mhd = daemon;
	epoll_fd = epoll_create1(EPOLL_CLOEXEC);
	wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (epoll_fd < 0 || wake_fd < 0 || epoll_ctl(epoll_fd, EPOLL_CTL_ADD, wake_fd, &ev) != 0)
		return false;
	UpdateListening(NowSeconds());
	if (!listening || pthread_create(&thread, NULL, AcceptorMain, NULL) != 0)
		return false;
	thread_started = true;
	return true;
}

/* Stops taking new connections (shutdown); pending heads are still served. */
void
AcceptorQuiesce(void)
{
	if (!thread_started)
		return;
	pthread_mutex_lock(&lock);
	__atomic_store_n(&quiesce_requested, true, __ATOMIC_SEQ_CST);
	Wake();
	while (listen_fd >= 0)
		pthread_cond_wait(&quiesced, &lock);
	pthread_mutex_unlock(&lock);
}

/* Connections still owing their first head (shutdown waits for them). */
int
AcceptorPending(void)
{
	return __atomic_load_n(&npending, __ATOMIC_SEQ_CST);
}

/* Ends the thread; what is still pending is closed. */
void
AcceptorStop(void)
{
	if (!thread_started)
		return;
	__atomic_store_n(&stop_requested, true, __ATOMIC_SEQ_CST);
	Wake();
	pthread_join(thread, NULL);
	thread_started = false;
	close(epoll_fd);
	close(wake_fd);
}

/* Called by conntrack.c on libmicrohttpd's CLOSED: one slot of the cap is free again. */
void
AcceptorConnectionClosed(void)
{
	__atomic_sub_fetch(&handed, 1, __ATOMIC_SEQ_CST);
	if (__atomic_load_n(&cap_reached, __ATOMIC_SEQ_CST))
		Wake();
}
