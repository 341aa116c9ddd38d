/*
 * worker_common.c — what the background workers share: the settings they
 * all read (database, restart delay, shutdown grace), their shared-memory
 * slots, their registration, and the helpers each loop is built from
 * (attach, wait, transaction). Each worker's own settings live in its
 * module (DispatchInit, WebhooksInit, SchedulerInit, SmppInit).
 *
 * Shared memory: one array of WORKER_MAX_SLOTS slots. A worker takes the
 * slot of its (kind, index) at start and clears it at exit. Counters are
 * atomics written by the owner and read by envoisms.worker_stats; the name,
 * pid, latch and last error are guarded by the slot's spinlock.
 *
 * Waking on commit (pg_net's model): envoisms.wake_dispatcher() and
 * envoisms.wake_webhooks() only set a backend-local flag; an XactCallback
 * sets the workers' latches when that transaction commits, and forgets the
 * flag when it aborts. A send therefore costs one function call and no lock,
 * and a worker never wakes for work that was rolled back. Without the
 * preload (no shared memory) they do nothing.
 *
 * Errors: a worker runs each short transaction through WorkerRunTransaction,
 * which logs an error, keeps it as the slot's last_error, rolls back and
 * lets the loop continue; only FATAL or postmaster death ends a worker
 * abnormally (it is then restarted after envoisms.worker_restart_delay).
 */
#include "worker.h"

#include <curl/curl.h>
#include <math.h>
#include <stdlib.h>

#include "access/xact.h"
#include "catalog/namespace.h"
#include "common/pg_prng.h"
#include "executor/spi.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "replication/syncrep.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "tcop/tcopprot.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

/* ---- settings (the ones every worker reads; each worker defines its own) */
char	   *worker_database = NULL;
static int	worker_restart_delay = 5;
int			worker_shutdown_grace_ms = 2000;

typedef struct WorkersShared
{
	slock_t		epoch_mutex;
	TimestampTz lease_epoch;	/* see WorkersLeaseEpoch(); 0 until then */
	WorkerSlot	slots[WORKER_MAX_SLOTS];
} WorkersShared;

static WorkersShared *workers_shared = NULL;
WorkerSlot *MyWorkerSlot = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static volatile sig_atomic_t got_sigterm = false;
static WaitEventSet *wait_set = NULL;
static int	wait_socket_pos = -1;
static pgsocket wait_socket = PGINVALID_SOCKET;

/* commit-wake state of this backend */
static bool wake_callback_registered = false;
static bool wake_dispatch_pending = false;
static bool wake_webhooks_pending = false;


/* shmem_request_hook: room for the slots. */
static void
workers_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(WorkersShared)));
}

/* shmem_startup_hook: the slots, empty, and no lease epoch yet. */
static void
workers_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	workers_shared = ShmemInitStruct("envoisms workers", sizeof(WorkersShared), &found);
	if (!found)
	{
		memset(workers_shared, 0, sizeof(WorkersShared));
		SpinLockInit(&workers_shared->epoch_mutex);
		for (int i = 0; i < WORKER_MAX_SLOTS; i++)
		{
			WorkerSlot *s = &workers_shared->slots[i];

			SpinLockInit(&s->mutex);
			pg_atomic_init_u64(&s->claimed, 0);
			pg_atomic_init_u64(&s->sent, 0);
			pg_atomic_init_u64(&s->failed, 0);
			pg_atomic_init_u64(&s->retried, 0);
			pg_atomic_init_u32(&s->in_flight, 0);
		}
	}
	LWLockRelease(AddinShmemInitLock);
}

/* Register count static workers of a type (see worker.h). */
void
WorkersRegister(const char *type, const char *function, int count)
{
	if (!process_shared_preload_libraries_in_progress || IsBinaryUpgrade)
		return;
	for (int index = 0; index < count; index++)
	{
		BackgroundWorker worker;

		memset(&worker, 0, sizeof(worker));
		worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
		worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
		worker.bgw_restart_time = worker_restart_delay;
		snprintf(worker.bgw_library_name, BGW_MAXLEN, "envoisms");
		snprintf(worker.bgw_function_name, BGW_MAXLEN, "%s", function);
		snprintf(worker.bgw_name, BGW_MAXLEN, "%s %d", type, index);
		snprintf(worker.bgw_type, BGW_MAXLEN, "%s", type);
		worker.bgw_main_arg = Int32GetDatum(index);
		RegisterBackgroundWorker(&worker);
	}
}

/*
 * Defines the settings every worker reads and, with the preload, the
 * workers' shared memory and libcurl. Runs before the workers' own Init
 * functions, which register the workers.
 */
void
WorkersInit(void)
{
	DefineCustomStringVariable("envoisms.database",
							   "Database whose envoisms extension the background workers serve.",
							   NULL, &worker_database, "postgres",
							   PGC_POSTMASTER, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("envoisms.worker_restart_delay",
							"Seconds before a worker that stopped abnormally is restarted.",
							NULL, &worker_restart_delay, 5, 1, 3600,
							PGC_POSTMASTER, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("envoisms.worker_shutdown_grace",
							"On SIGTERM, how long transfers in flight may finish before their leases are released.",
							NULL, &worker_shutdown_grace_ms, 2000, 0, 60000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);

	if (!process_shared_preload_libraries_in_progress || IsBinaryUpgrade)
		return;

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = workers_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = workers_shmem_startup;

	if (curl_global_init(CURL_GLOBAL_ALL) != CURLE_OK)
		ereport(ERROR, (errmsg("could not initialise libcurl")));
}

/*
 * The time before which every lease belongs to workers that are gone: when
 * the first worker of this shared memory asked, that is, when the workers
 * first started after recovery ended (they start at RecoveryFinished). So
 * after this server's start, its restart after a crash (shared memory is
 * made anew) and its promotion from standby: a standby's shared memory is
 * older than the leases its dead primary's workers took, its first
 * worker's start is not. A worker restarted later gets the same time and
 * never releases its live siblings' leases. Clocks of two nodes may differ
 * by less than the time the monitor takes to notice a dead primary (docs/ha.md).
 * 0 without the preload.
 */
TimestampTz
WorkersLeaseEpoch(void)
{
	TimestampTz epoch;

	if (workers_shared == NULL)
		return 0;
	SpinLockAcquire(&workers_shared->epoch_mutex);
	if (workers_shared->lease_epoch == 0)
		workers_shared->lease_epoch = GetCurrentTimestamp();
	epoch = workers_shared->lease_epoch;
	SpinLockRelease(&workers_shared->epoch_mutex);
	return epoch;
}

/*
 * SIGTERM: note it and wake the loop. One more thing: a commit waiting for
 * a synchronous standby listens to nothing but ProcDiePending, so a worker
 * caught there when its node is demoted (the standby gone, being
 * promoted) would hold up the shutdown for ever. Such a wait is ended the
 * way a backend's SIGTERM ends it: the commit stays local, unacknowledged
 * (a failover's rewind may undo it, as any commit the standby lacks), and
 * the worker exits at its next interrupt check.
 */
static void
handle_sigterm(SIGNAL_ARGS)
{
	int			save_errno = errno;

	got_sigterm = true;
	if (MyProc != NULL && MyProc->syncRepState == SYNC_REP_WAITING)
	{
		InterruptPending = true;
		ProcDiePending = true;
	}
	SetLatch(MyLatch);
	errno = save_errno;
}

/* At exit: free this worker's slot (its counters stay for worker_stats). */
static void
release_slot(int code, Datum arg)
{
	WorkerSlot *s = MyWorkerSlot;

	if (s == NULL)
		return;
	SpinLockAcquire(&s->mutex);
	s->pid = 0;
	s->latch = NULL;
	SpinLockRelease(&s->mutex);
	pg_atomic_write_u32(&s->in_flight, 0);
	MyWorkerSlot = NULL;
}

/* A fresh wait set: the latch and postmaster death, no socket. */
static void
build_wait_set(void)
{
	if (wait_set != NULL)
		FreeWaitEventSet(wait_set);
	wait_set = CreateWaitEventSet(TopMemoryContext, 3);
	AddWaitEventToSet(wait_set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
	AddWaitEventToSet(wait_set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
	wait_socket = PGINVALID_SOCKET;
	wait_socket_pos = -1;
}

/* Become worker index of kind (see worker.h). */
void
WorkerAttach(WorkerKind kind, int index, const char *name)
{
	WorkerSlot *slot = NULL;

	pqsignal(SIGTERM, handle_sigterm);
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	BackgroundWorkerUnblockSignals();

	if (workers_shared == NULL)
		elog(FATAL, "envoisms worker started without its shared memory");

	/* the slot of (kind, index), else a free one */
	for (int pass = 0; pass < 2 && slot == NULL; pass++)
		for (int i = 0; i < WORKER_MAX_SLOTS; i++)
		{
			WorkerSlot *s = &workers_shared->slots[i];
			bool		take;

			SpinLockAcquire(&s->mutex);
			take = s->pid == 0 &&
				(pass == 1 ? s->name[0] == '\0' : (s->name[0] != '\0' && s->kind == (int) kind && s->index == index));
			if (take)
			{
				s->pid = MyProcPid;
				s->kind = kind;
				s->index = index;
				s->latch = MyLatch;
				s->started_at = GetCurrentTimestamp();
				strlcpy(s->name, name, sizeof(s->name));
			}
			SpinLockRelease(&s->mutex);
			if (take)
			{
				slot = s;
				break;
			}
		}
	if (slot == NULL)
		ereport(FATAL,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("no free envoisms worker slot for %s", name),
				 errdetail("At most %d envoisms workers can run at once.", WORKER_MAX_SLOTS)));
	MyWorkerSlot = slot;
	pg_atomic_write_u32(&slot->in_flight, 0);
	before_shmem_exit(release_slot, (Datum) 0);

	BackgroundWorkerInitializeConnection(worker_database, NULL, 0);
	pgstat_report_appname(name);

	build_wait_set();
}

/* Watch sock for events from now on, instead of any other socket (see worker.h). */
void
WorkerWatchSocket(pgsocket sock, int events)
{
	if (sock != PGINVALID_SOCKET && sock == wait_socket)
	{
		ModifyWaitEvent(wait_set, wait_socket_pos, events, NULL);
		return;
	}
	/* a wait set cannot drop an event: start a new one */
	if (wait_socket != PGINVALID_SOCKET)
		build_wait_set();
	if (sock != PGINVALID_SOCKET)
	{
		wait_socket = sock;
		wait_socket_pos = AddWaitEventToSet(wait_set, events, sock, NULL, NULL);
	}
}

/* True once SIGTERM arrived. */
bool
WorkerStopping(void)
{
	return got_sigterm;
}

/* One wait on the latch, the watched socket and a timeout (see worker.h). */
int
WorkerWait(long timeout_ms)
{
	WaitEvent	events[3];
	int			n;
	int			woke = 0;

	n = WaitEventSetWait(wait_set, timeout_ms, events, lengthof(events), PG_WAIT_EXTENSION);
	if (n == 0)
		woke |= WORKER_WOKE_TIMEOUT;
	for (int i = 0; i < n; i++)
	{
		if (events[i].events & WL_LATCH_SET)
		{
			ResetLatch(MyLatch);
			woke |= WORKER_WOKE_LATCH;
		}
		if (events[i].events & WL_SOCKET_READABLE)
			woke |= WORKER_WOKE_READABLE;
		if (events[i].events & WL_SOCKET_WRITEABLE)
			woke |= WORKER_WOKE_WRITABLE;
	}
	CHECK_FOR_INTERRUPTS();
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
	}
	return woke;
}

/* Keep a formatted error as this worker's last_error. */
void
WorkerNoteError(const char *fmt,...)
{
	char		buf[WORKER_ERROR_LEN];
	va_list		ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (MyWorkerSlot == NULL)
		return;
	SpinLockAcquire(&MyWorkerSlot->mutex);
	strlcpy(MyWorkerSlot->last_error, buf, sizeof(MyWorkerSlot->last_error));
	MyWorkerSlot->last_error_at = GetCurrentTimestamp();
	SpinLockRelease(&MyWorkerSlot->mutex);
}

/* Run fn(arg) in a short transaction of its own (see worker.h). */
bool
WorkerRunTransaction(const char *activity, void (*fn) (void *arg), void *arg)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	volatile bool ok = true;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PG_TRY();
	{
		/*
		 * After SIGTERM (releasing leases, the last outcomes), commit without
		 * waiting for a standby: a node being demoted has none, and a
		 * healthy one still gets the WAL before the server stops.
		 */
		if (got_sigterm)
			SetConfigOption("synchronous_commit", "local", PGC_USERSET, PGC_S_SESSION);
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		PushActiveSnapshot(GetTransactionSnapshot());
		pgstat_report_activity(STATE_RUNNING, activity);
		fn(arg);
		if (SPI_finish() != SPI_OK_FINISH)
			elog(ERROR, "SPI_finish failed");
		PopActiveSnapshot();
		/* a SIGTERM that came during fn: its commit need not wait either */
		if (got_sigterm)
			SetConfigOption("synchronous_commit", "local", PGC_USERSET, PGC_S_SESSION);
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		ereport(WARNING,
				(errcode(edata->sqlerrcode),
				 errmsg("%s: %s failed: %s", MyWorkerSlot ? MyWorkerSlot->name : "envoisms worker",
						activity, edata->message),
				 edata->detail ? errdetail("%s", edata->detail) : 0));
		WorkerNoteError("%s: %s", activity, edata->message);
		FreeErrorData(edata);
		ok = false;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(oldcxt);
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
	return ok;
}

/* Whether CREATE EXTENSION envoisms ran in this database (*arg). */
static void
check_extension(void *arg)
{
	bool	   *present = (bool *) arg;

	*present = OidIsValid(get_namespace_oid("envoisms", true)) &&
		SPI_execute("SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'envoisms'", true, 1) == SPI_OK_SELECT &&
		SPI_processed == 1;
}

/*
 * Return once the extension exists and the server accepts writes; exit on
 * SIGTERM meanwhile. A standby that pg_auto_failover promotes stays
 * read-only (default_transaction_read_only) until the old primary is
 * demoted or timed out: the workers, started at the promotion, wait for
 * that, so their first transaction (releasing the dead primary's leases)
 * does not fail, and the lease epoch starts after the old primary stopped.
 */
void
WorkerAwaitExtension(void)
{
	bool		logged = false;
	bool		logged_read_only = false;

	for (;;)
	{
		bool		present = false;

		if (got_sigterm)
			proc_exit(1);
		if (DefaultXactReadOnly)
		{
			if (!logged_read_only)
				ereport(LOG,
						(errmsg("%s: waiting until the server accepts writes (default_transaction_read_only is on)",
								MyWorkerSlot->name)));
			logged_read_only = true;
			WorkerWait(200);
			continue;
		}
		if (WorkerRunTransaction("looking for the envoisms extension", check_extension, &present) && present)
			return;
		if (!logged)
			ereport(LOG,
					(errmsg("%s: waiting for CREATE EXTENSION envoisms in database \"%s\"",
							MyWorkerSlot->name, worker_database)));
		logged = true;
		WorkerWait(1000);
	}
}

/* Set the latch of every running worker of a kind. */
void
WakeWorkers(WorkerKind kind)
{
	if (workers_shared == NULL)
		return;
	for (int i = 0; i < WORKER_MAX_SLOTS; i++)
	{
		WorkerSlot *s = &workers_shared->slots[i];

		/* unlocked peek first: the common case is an empty slot */
		if (s->pid == 0 || s->kind != (int) kind)
			continue;
		SpinLockAcquire(&s->mutex);
		if (s->pid != 0 && s->kind == (int) kind && s->latch != NULL)
			SetLatch(s->latch);
		SpinLockRelease(&s->mutex);
	}
}

/* Milliseconds from now to t (0 when past), -1 when t is 0. */
long
WorkerMsUntil(TimestampTz t)
{
	TimestampTz now;

	if (t == 0)
		return -1;
	now = GetCurrentTimestamp();
	if (t <= now)
		return 0;
	return (long) Min((t - now + 999) / 1000, (TimestampTz) LONG_MAX);
}

/* How long a worker loop may sleep (see worker.h). */
long
WorkerWaitTime(long max_ms, long timer_ms, TimestampTz next_due)
{
	long		timeout = max_ms;
	long		due_ms = WorkerMsUntil(next_due);

	if (timer_ms >= 0 && timer_ms < timeout)
		timeout = timer_ms;
	if (due_ms >= 0 && due_ms < timeout)
		timeout = due_ms;
	return timeout;
}

/* ms, give or take 20 %. */
long
WorkerJitter(long ms)
{
	double		f = 0.8 + 0.4 * pg_prng_double(&pg_global_prng_state);

	return (long) (ms * f);
}

/* ---- commit wake (SQL-callable) */

/* At commit, wake the workers this transaction asked for; at abort, forget. */
static void
wake_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (wake_dispatch_pending)
			{
				WakeWorkers(WORKER_DISPATCH);
				WakeWorkers(WORKER_SMPP);
			}
			if (wake_webhooks_pending)
				WakeWorkers(WORKER_WEBHOOKS);
			wake_dispatch_pending = wake_webhooks_pending = false;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			wake_dispatch_pending = wake_webhooks_pending = false;
			break;
		default:
			break;
	}
}

/* Register wake_xact_callback once per backend. */
static inline void
register_wake_callback(void)
{
	if (!wake_callback_registered)
	{
		RegisterXactCallback(wake_xact_callback, NULL);
		wake_callback_registered = true;
	}
}

PG_FUNCTION_INFO_V1(wake_dispatcher);

/* Wake the dispatchers when the calling transaction commits; false without the preload. */
Datum
wake_dispatcher(PG_FUNCTION_ARGS)
{
	if (workers_shared == NULL)
		PG_RETURN_BOOL(false);
	register_wake_callback();
	wake_dispatch_pending = true;
	PG_RETURN_BOOL(true);
}

PG_FUNCTION_INFO_V1(wake_webhooks);

/* Wake the webhook workers when the calling transaction commits; false without the preload. */
Datum
wake_webhooks(PG_FUNCTION_ARGS)
{
	if (workers_shared == NULL)
		PG_RETURN_BOOL(false);
	register_wake_callback();
	wake_webhooks_pending = true;
	PG_RETURN_BOOL(true);
}

PG_FUNCTION_INFO_V1(worker_stats);

/* One row per running (or once running) worker: its counters and last error. */
Datum
worker_stats(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	static const char *kinds[] = {"dispatcher", "webhooks", "scheduler", "smpp"};

	InitMaterializedSRF(fcinfo, 0);
	if (workers_shared == NULL)
		return (Datum) 0;
	for (int i = 0; i < WORKER_MAX_SLOTS; i++)
	{
		WorkerSlot *s = &workers_shared->slots[i];
		Datum		values[12];
		bool		nulls[12] = {0};
		char		name[64];
		char		error[WORKER_ERROR_LEN];
		pid_t		pid;
		int			kind;
		int			index;
		TimestampTz started;
		TimestampTz error_at;

		SpinLockAcquire(&s->mutex);
		strlcpy(name, s->name, sizeof(name));
		strlcpy(error, s->last_error, sizeof(error));
		pid = s->pid;
		kind = s->kind;
		index = s->index;
		started = s->started_at;
		error_at = s->last_error_at;
		SpinLockRelease(&s->mutex);
		if (name[0] == '\0')
			continue;

		values[0] = CStringGetTextDatum(name);
		values[1] = CStringGetTextDatum(kind >= 0 && kind < (int) lengthof(kinds) ? kinds[kind] : "other");
		values[2] = Int32GetDatum(index);
		values[3] = Int32GetDatum(pid);
		nulls[3] = pid == 0;
		values[4] = TimestampTzGetDatum(started);
		values[5] = Int64GetDatum((int64) pg_atomic_read_u64(&s->claimed));
		values[6] = Int64GetDatum((int64) pg_atomic_read_u64(&s->sent));
		values[7] = Int64GetDatum((int64) pg_atomic_read_u64(&s->failed));
		values[8] = Int64GetDatum((int64) pg_atomic_read_u64(&s->retried));
		values[9] = Int32GetDatum((int32) pg_atomic_read_u32(&s->in_flight));
		values[10] = CStringGetTextDatum(error);
		nulls[10] = error[0] == '\0';
		values[11] = TimestampTzGetDatum(error_at);
		nulls[11] = error_at == 0;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
