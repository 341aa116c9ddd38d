/*
 * worker.h — what every background worker of envoisms shares (worker_common.c):
 * the settings they all read, their registration, the shared-memory slots
 * (counters shown by envoisms.worker_stats and the latches that commits
 * set), and the attach / wait / transaction helpers. The curl pool is in
 * http_pool.h, the address guard in ssrf.h, the dispatcher's carriers in
 * carrier.h.
 *
 * A worker's life: WorkerAttach() (signals, database connection, slot, wait
 * set), WorkerAwaitExtension(), then a loop of WorkerRunTransaction() for
 * the short claim / outcome transactions and one WorkerWait() in between
 * (latch, the one socket it watches, a timeout from WorkerWaitTime(),
 * postmaster death). A worker never holds a transaction across network I/O.
 */
#ifndef ENVOISMS_WORKER_H
#define ENVOISMS_WORKER_H

#include "envoisms.h"

#include "datatype/timestamp.h"
#include "port/atomics.h"
#include "storage/latch.h"
#include "storage/spin.h"

/*
 * ---- settings every worker reads (worker_common.c). Each worker's own
 * settings are defined, and kept static, by its module's Init function
 * (DispatchInit, WebhooksInit, SchedulerInit, SmppInit), called from
 * _PG_init; README.md's GUC table documents them all.
 */
extern char *worker_database;
extern int	worker_shutdown_grace_ms;

/* ---- shared memory slots */
typedef enum WorkerKind
{
	WORKER_DISPATCH = 0,		/* sandbox, http and whatsapp_cloud carriers */
	WORKER_WEBHOOKS = 1,
	WORKER_SCHEDULER = 2,
	WORKER_SMPP = 3,			/* the SMPP connector (worker_smpp*.c) */
} WorkerKind;

#define WORKER_MAX_SLOTS 64
#define WORKER_ERROR_LEN 256

typedef struct WorkerSlot
{
	slock_t		mutex;			/* protects last_error* and pid/latch */
	pid_t		pid;			/* 0 = free */
	int			kind;
	int			index;
	Latch	   *latch;
	TimestampTz started_at;
	/* written by the owner only, read without the lock */
	pg_atomic_uint64 claimed;
	pg_atomic_uint64 sent;
	pg_atomic_uint64 failed;
	pg_atomic_uint64 retried;
	pg_atomic_uint32 in_flight;
	TimestampTz last_error_at;
	char		name[64];
	char		last_error[WORKER_ERROR_LEN];
} WorkerSlot;

extern WorkerSlot *MyWorkerSlot;

/* When this server's workers first started after recovery (a start, a
 * restart after a crash, a promotion): leases older than this belong to
 * workers of a previous incarnation or of the dead primary. */
extern TimestampTz WorkersLeaseEpoch(void);

/* ---- worker life */

/* Register count static workers of a type, started at function(index);
 * nothing unless envoisms is being preloaded (and not in binary upgrade). */
extern void WorkersRegister(const char *type, const char *function, int count);

/* Become worker `index` of `kind`: signal handlers, slot, database
 * connection, application name `name`. */
extern void WorkerAttach(WorkerKind kind, int index, const char *name);

/* Wait until CREATE EXTENSION envoisms happened in the database and the
 * server accepts writes (a promoted standby may not yet). */
extern void WorkerAwaitExtension(void);

/*
 * Also wake on this socket, for these WL_SOCKET_* events (the curl pool's
 * epoll descriptor, or the SMPP bind's connection); PGINVALID_SOCKET to
 * watch none. A worker watches one socket at most; watching the same one
 * again only changes its events. A socket must be unwatched before it is
 * closed: its descriptor number may come back for another.
 */
extern void WorkerWatchSocket(pgsocket sock, int events);

#define WORKER_WOKE_LATCH		0x1
#define WORKER_WOKE_READABLE	0x2
#define WORKER_WOKE_TIMEOUT		0x4
#define WORKER_WOKE_WRITABLE	0x8

/* Wait for the latch, the watched socket or timeout_ms (-1 = none); resets
 * the latch, handles interrupts and SIGHUP reloads. Returns WORKER_WOKE_* bits. */
extern int	WorkerWait(long timeout_ms);

/*
 * How long a worker loop may sleep: until next_due (0 = none) or the curl
 * pool's next timer (timer_ms, -1 = none), whichever comes first, and at
 * most max_ms (its poll interval).
 */
extern long WorkerWaitTime(long max_ms, long timer_ms, TimestampTz next_due);

/* The earlier of two instants, 0 meaning none. */
static inline TimestampTz
WorkerEarlier(TimestampTz a, TimestampTz b)
{
	if (a == 0)
		return b;
	if (b == 0)
		return a;
	return Min(a, b);
}

/* True once SIGTERM arrived: stop claiming, finish, release, exit. */
extern bool WorkerStopping(void);

/* Run fn(arg) in its own transaction with SPI connected and a snapshot.
 * On error: the error is logged and kept as the slot's last_error, the
 * transaction is rolled back, and false is returned. */
extern bool WorkerRunTransaction(const char *activity, void (*fn) (void *arg), void *arg);

/* Record an error in the slot (shown by worker_stats). */
extern void WorkerNoteError(const char *fmt,...) pg_attribute_printf(1, 2);

/* Set the latches of every worker of a kind (after a commit). */
extern void WakeWorkers(WorkerKind kind);

/* Milliseconds from now to t (clamped to [0, LONG_MAX]); -1 when t is 0. */
extern long WorkerMsUntil(TimestampTz t);

/* A delay with +-20% jitter. */
extern long WorkerJitter(long ms);

#endif							/* ENVOISMS_WORKER_H */
