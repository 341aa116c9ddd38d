/*
 * conntrack.c — drops connections that take too long to send a request.
 *
 * libmicrohttpd's connection timeout only measures inactivity, so a client
 * that sends one byte a second keeps a connection (and its memory) forever.
 * Here every connection carries an epoch: when it was accepted or when its
 * last response was done. A connection that is not being served and has not
 * delivered a complete request within --timeout seconds of its epoch is shut
 * down (shutdown(2) on its socket; the MHD thread that owns it then sees
 * end-of-file and closes it the normal way, so no state is freed under its
 * feet). The same rule closes keep-alive connections idle for --timeout.
 * While a request is being served (database call, response being written)
 * the connection is exempt; MHD's inactivity timeout covers slow readers.
 *
 * A connection reaches libmicrohttpd only once acceptor.c has seen its first
 * head whole, so the first request is rarely still arriving here; the
 * acceptor applies the same --timeout to the head it waits for. A CLOSED
 * notification also tells the acceptor that a slot of --max-connections is
 * free.
 *
 * Locking: one mutex guards the list. MHD notifies CLOSED before it closes
 * the descriptor, so the reaper never shuts down a reused descriptor.
 */
#include <pthread.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>

#include "gateway.h"

typedef struct Tracked
{
	struct Tracked *prev;
	struct Tracked *next;
	int			fd;
	double		epoch;
	bool		busy;
	bool		dropped;
	bool		served;			/* has finished at least one request */
} Tracked;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static Tracked *head;
static bool stopping;
static pthread_t reaper;
static bool reaper_started;

/* libmicrohttpd's connection callback: a connection starts or ends being tracked. */
void
ConnTrackNotify(void *cls, struct MHD_Connection *connection,
				void **socket_context, enum MHD_ConnectionNotificationCode code)
{
	if (code == MHD_CONNECTION_NOTIFY_STARTED)
	{
		const union MHD_ConnectionInfo *info =
			MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CONNECTION_FD);
		Tracked    *t = calloc(1, sizeof(Tracked));

		*socket_context = t;
		if (t == NULL)
			return;				/* untracked: only MHD's own timeout applies */
		t->fd = info ? info->connect_fd : -1;
		t->epoch = NowSeconds();
		pthread_mutex_lock(&lock);
		t->next = head;
		if (head)
			head->prev = t;
		head = t;
		pthread_mutex_unlock(&lock);
		MetricsConnections(1);
	}
	else if (code == MHD_CONNECTION_NOTIFY_CLOSED)
	{
		Tracked    *t = *socket_context;

		AcceptorConnectionClosed();
		if (t == NULL)
			return;
		pthread_mutex_lock(&lock);
		if (t->prev)
			t->prev->next = t->next;
		else
			head = t->next;
		if (t->next)
			t->next->prev = t->prev;
		pthread_mutex_unlock(&lock);
		free(t);
		*socket_context = NULL;
		MetricsConnections(-1);
	}
}

/* Busy: exempt from the reaper. Not busy: a request ended, its clock restarts. */
void
ConnTrackBusy(struct MHD_Connection *connection, bool busy)
{
	const union MHD_ConnectionInfo *info =
		MHD_get_connection_info(connection, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
	Tracked    *t = info ? info->socket_context : NULL;

	if (t == NULL)
		return;
	pthread_mutex_lock(&lock);
	t->busy = busy;
	if (!busy)
	{
		t->epoch = NowSeconds();
		t->served = true;
	}
	pthread_mutex_unlock(&lock);
}

/* A precheck answered and the body is to be read: the reaper may look again. */
void
ConnTrackReceiving(struct MHD_Connection *connection)
{
	const union MHD_ConnectionInfo *info =
		MHD_get_connection_info(connection, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
	Tracked    *t = info ? info->socket_context : NULL;

	if (t == NULL)
		return;
	pthread_mutex_lock(&lock);
	t->busy = false;
	pthread_mutex_unlock(&lock);
}

/* Connections that have not finished a first request (shutdown waits for them). */
int
ConnTrackPending(void)
{
	int			n = 0;

	pthread_mutex_lock(&lock);
	for (Tracked *t = head; t; t = t->next)
		if (!t->served && !t->dropped)
			n++;
	pthread_mutex_unlock(&lock);
	return n;
}

/* Every quarter second, shuts down the connections past --timeout. */
static void *
ReaperMain(void *arg)
{
	pthread_mutex_lock(&lock);
	while (!stopping)
	{
		struct timespec until;
		double		now = NowSeconds();

		for (Tracked *t = head; t; t = t->next)
		{
			if (!t->busy && !t->dropped && t->fd >= 0 && now - t->epoch > config.timeout)
			{
				/* cannot fail in a way we could act on; MHD closes it next */
				(void) shutdown(t->fd, SHUT_RDWR);
				t->dropped = true;
			}
		}
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_nsec += 250 * 1000 * 1000;
		if (until.tv_nsec >= 1000000000L)
		{
			until.tv_sec++;
			until.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&wake, &lock, &until);
	}
	pthread_mutex_unlock(&lock);
	return NULL;
}

/* Starts the reaper thread. */
bool
ConnTrackStart(void)
{
	if (pthread_create(&reaper, NULL, ReaperMain, NULL) != 0)
		return false;
	reaper_started = true;
	return true;
}

/* Stops and joins the reaper thread. */
void
ConnTrackStop(void)
{
	if (!reaper_started)
		return;
	pthread_mutex_lock(&lock);
	stopping = true;
	pthread_cond_signal(&wake);
	pthread_mutex_unlock(&lock);
	pthread_join(reaper, NULL);
	reaper_started = false;
}
