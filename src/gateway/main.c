/*
 * main.c — envoisms-gateway's life: read the configuration, raise the
 * open-file limit, open the listening socket (acceptor.c), the pool and its
 * database workers (dbwork.c), start libmicrohttpd (--threads I/O threads,
 * each with its own epoll loop, fed by the acceptor) and wait for SIGTERM or
 * SIGINT.
 *
 * Shutdown: the listening socket is closed at once (AcceptorQuiesce), so
 * new connections are refused; requests already received, and first
 * requests of connections already accepted, are answered (responses then
 * carry "Connection: close"); after they are done, or after a grace period,
 * the acceptor and the daemon stop, the pool closes and the process exits 0.
 *
 * Signals are blocked in every thread and taken synchronously here with
 * sigwait(), so no handler runs inside libpq or libmicrohttpd.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <malloc.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "gateway.h"

#define SHUTDOWN_GRACE 30.0

/* Each connection is a descriptor: take as many as the hard limit allows. */
static void
RaiseFileLimit(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max)
	{
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
			ErrorLog("cannot raise the open-file limit: %s", strerror(errno));
	}
}

/* libmicrohttpd's messages, as our error lines. */
static void
MhdLog(void *cls, const char *fmt, va_list ap)
{
	char		msg[512];

	vsnprintf(msg, sizeof(msg), fmt, ap);
	ErrorLog("libmicrohttpd: %s", msg);
}

/* Starts everything, waits for a signal, then stops in order (see above). */
int
main(int argc, char **argv)
{
	struct sockaddr_storage addr;
	socklen_t	addrlen;
	struct addrinfo hints = {0};
	struct addrinfo *ai = NULL;
	struct MHD_Daemon *daemon;
	sigset_t	signals;
	char		port[16];
	int			sig = 0;
	int			rc;
	double		deadline;

	ConfigLoad(argc, argv);
	RaiseFileLimit();

	/*
	 * Request bodies (up to --max-body each) are allocated and freed all the
	 * time. A fixed mmap threshold gives every large one its own mapping,
	 * returned to the system when freed, so the process does not keep the
	 * peak of --max-body-total resident after a burst (glibc's default
	 * raises the threshold after the first large free, and then keeps such
	 * bodies in the heap).
	 */
	if (mallopt(M_MMAP_THRESHOLD, 128 * 1024) != 1)
		ErrorLog("cannot set the malloc mmap threshold");

	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICSERV | AI_PASSIVE;
	snprintf(port, sizeof(port), "%d", config.listen_port);
	if ((rc = getaddrinfo(config.listen_host, port, &hints, &ai)) != 0)
	{
		fprintf(stderr, "envoisms-gateway: cannot resolve %s: %s\n",
				config.listen_host, gai_strerror(rc));
		return 2;
	}
	memset(&addr, 0, sizeof(addr));
	memcpy(&addr, ai->ai_addr, ai->ai_addrlen);
	addrlen = ai->ai_addrlen;
	freeaddrinfo(ai);
	if (!AcceptorListen((struct sockaddr *) &addr, addrlen))
	{
		fprintf(stderr, "envoisms-gateway: cannot listen on %s:%d: %s\n",
				config.listen_host, config.listen_port, strerror(errno));
		return 1;
	}

	/* every thread started from here on inherits the blocked signals */
	sigemptyset(&signals);
	sigaddset(&signals, SIGTERM);
	sigaddset(&signals, SIGINT);
	if (pthread_sigmask(SIG_BLOCK, &signals, NULL) != 0)
	{
		fprintf(stderr, "envoisms-gateway: cannot block signals\n");
		return 1;
	}
	signal(SIGPIPE, SIG_IGN);

	if (!PoolInit(config.conninfo, config.pool_size) || !HttpInit() || !StaticInit() || !ConnTrackStart() ||
		!DbWorkStart(config.pool_size))
	{
		fprintf(stderr, "envoisms-gateway: cannot start (out of memory or threads)\n");
		return 1;
	}

	/*
	 * The acceptor keeps --max-connections; libmicrohttpd's own limit, split
	 * evenly over its threads, is set above it so that it never refuses a
	 * connection the acceptor hands over.
	 */
	daemon = MHD_start_daemon(
		MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL_LINUX_ONLY | MHD_USE_ITC |
		MHD_USE_ERROR_LOG | MHD_USE_TURBO | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_NO_LISTEN_SOCKET,
		0, NULL, NULL, HttpHandle, NULL,
		MHD_OPTION_EXTERNAL_LOGGER, MhdLog, NULL,
		MHD_OPTION_THREAD_POOL_SIZE, (unsigned int) config.threads,
		MHD_OPTION_CONNECTION_LIMIT, (unsigned int) (2 * config.max_connections + 2 * config.threads),
		MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int) config.timeout,
		MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t) (config.max_url + config.max_headers + 16384),
		MHD_OPTION_URI_LOG_CALLBACK, HttpUriLog, NULL,
		MHD_OPTION_NOTIFY_COMPLETED, HttpCompleted, NULL,
		MHD_OPTION_NOTIFY_CONNECTION, ConnTrackNotify, NULL,
		MHD_OPTION_END);
	if (daemon == NULL || !AcceptorStart(daemon))
	{
		fprintf(stderr, "envoisms-gateway: cannot start libmicrohttpd or the acceptor\n");
		ConnTrackStop();
		return 1;
	}
	InfoLog("listening on %s:%d, %d threads, pool of %d, max body %zu bytes",
			 config.listen_host, config.listen_port, config.threads, config.pool_size,
			 config.max_body);

	do
	{
		rc = sigwait(&signals, &sig);
	} while (rc != 0);

	InfoLog("received signal %d: finishing %d requests in flight", sig, HttpInFlight());
	HttpBeginShutdown();
	AcceptorQuiesce();
	/*
	 * Done when no request is in flight and no accepted connection still
	 * owes its first request (its bytes may sit unread behind a worker
	 * busy with another request); both must hold for a moment, since a
	 * worker picks up such a request only after finishing the one before.
	 * Connections that never send are dropped by conntrack after --timeout.
	 */
	deadline = NowSeconds() + SHUTDOWN_GRACE;
	for (int quiet = 0; quiet < 5 && NowSeconds() < deadline;)
	{
		if (HttpInFlight() > 0 || ConnTrackPending() > 0 || AcceptorPending() > 0)
			quiet = 0;
		else
			quiet++;
		usleep(10 * 1000);
	}
	if (HttpInFlight() > 0)
	{
		/* a suspended connection cannot be stopped safely: leave at once */
		ErrorLog("%d requests still in flight after %.0f s; exiting without them",
				 HttpInFlight(), SHUTDOWN_GRACE);
		_exit(1);
	}
	AcceptorStop();
	MHD_stop_daemon(daemon);
	DbWorkStop();
	ConnTrackStop();
	PoolClose();
	InfoLog("stopped");
	return 0;
}
