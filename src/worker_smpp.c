/*
 * worker_smpp.c — the SMPP supervisor: one bind worker per enabled smpp
 * carrier, started and stopped as carrier rows come and go.
 *
 * Design: SmppInit() (from _PG_init) registers one static background worker,
 * the supervisor. Each pass it reads the enabled smpp carriers, with a hash
 * of each one's config, and reconciles them with the bind workers it
 * started through RegisterDynamicBackgroundWorker:
 *   - a carrier without a bind gets one (slot index in bgw_main_arg, the
 *     carrier id in bgw_extra);
 *   - a bind whose carrier was disabled, deleted or reconfigured gets
 *     SIGTERM (TerminateBackgroundWorker); it unbinds cleanly and exits, and
 *     the next pass starts a fresh one for a reconfigured carrier — never two
 *     binds of one carrier at once, so a carrier's leases are all its bind's;
 *   - a bind that died is started again on the next pass (the bind itself
 *     backs off between reconnects, so this only covers crashes).
 * A pass runs every envoisms.smpp_supervisor_naptime and at once when a
 * transaction that changed envoisms.carriers commits (the statement trigger
 * smpp_carriers_changed sets the supervisor's latch from an XactCallback),
 * and when a bind it started stops (bgw_notify_pid).
 *
 * Shared memory: SMPP_MAX_BINDS slots where binds publish their state and
 * counters (envoisms.smpp_binds()), plus the supervisor's latch. Counters
 * are atomics written by their bind only; pid, carrier id and last error
 * are under the slot's spinlock.
 */
#include "envoisms.h"

#include "access/xact.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "worker.h"
#include "worker_smpp.h"

typedef struct SmppShared
{
	slock_t		mutex;			/* protects supervisor_latch */
	Latch	   *supervisor_latch;
	SmppBindSlot slots[SMPP_MAX_BINDS];
} SmppShared;

int			smpp_supervisor_naptime_ms = 5000;
int			smpp_poll_ms = 1000;
int			smpp_lease_s = 300;

static SmppShared *smpp_shared = NULL;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static void
smpp_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(SmppShared)));
}

static void
smpp_shmem_startup(void)
{
	bool		found;
	int			i;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	smpp_shared = ShmemInitStruct("envoisms smpp", sizeof(SmppShared), &found);
	if (!found)
	{
		memset(smpp_shared, 0, sizeof(SmppShared));
		SpinLockInit(&smpp_shared->mutex);
		for (i = 0; i < SMPP_MAX_BINDS; i++)
		{
			SmppBindSlot *s = &smpp_shared->slots[i];

			SpinLockInit(&s->mutex);
			pg_atomic_init_u32(&s->state, SMPP_STATE_STARTING);
			pg_atomic_init_u64(&s->submitted, 0);
			pg_atomic_init_u64(&s->accepted, 0);
			pg_atomic_init_u64(&s->rejected, 0);
			pg_atomic_init_u64(&s->throttled, 0);
			pg_atomic_init_u64(&s->timeouts, 0);
			pg_atomic_init_u64(&s->receipts, 0);
			pg_atomic_init_u64(&s->inbound, 0);
			pg_atomic_init_u64(&s->reconnects, 0);
			pg_atomic_init_u32(&s->in_flight, 0);
		}
	}
	LWLockRelease(AddinShmemInitLock);
}

void
SmppInit(void)
{
	BackgroundWorker worker;

	DefineCustomIntVariable("envoisms.smpp_supervisor_naptime",
							"Time between two checks of the smpp carriers by the SMPP supervisor.",
							"Changes to envoisms.carriers wake it at once; this is the fallback.",
							&smpp_supervisor_naptime_ms, 5000, 100, 3600000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("envoisms.smpp_poll",
							"How often an idle SMPP bind looks for queued messages.",
							NULL, &smpp_poll_ms, 1000, 10, 60000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("envoisms.smpp_lease",
							"How long an SMPP bind holds a claimed message before it may be claimed again.",
							NULL, &smpp_lease_s, 300, 10, 86400,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);

	if (!process_shared_preload_libraries_in_progress || IsBinaryUpgrade)
		return;
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = smpp_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = smpp_shmem_startup;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 5;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "envoisms");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "SmppSupervisorMain");
	snprintf(worker.bgw_name, BGW_MAXLEN, "envoisms smpp supervisor");
	snprintf(worker.bgw_type, BGW_MAXLEN, "envoisms smpp supervisor");
	RegisterBackgroundWorker(&worker);
}

/* ---- slots */


/* Free a slot when its bind exits. */
static void
slot_detach(int code, Datum arg)
{
	SmppBindSlot *slot = (SmppBindSlot *) DatumGetPointer(arg);

	SpinLockAcquire(&slot->mutex);
	slot->pid = 0;
	SpinLockRelease(&slot->mutex);
}

SmppBindSlot *
SmppSlotAttach(int index, const char *carrier_id)
{
	SmppBindSlot *slot;

	if (smpp_shared == NULL || index < 0 || index >= SMPP_MAX_BINDS)
		elog(ERROR, "SMPP bind slot %d is not available", index);
	slot = &smpp_shared->slots[index];
	SpinLockAcquire(&slot->mutex);
	slot->pid = MyProcPid;
	strlcpy(slot->carrier_id, carrier_id, sizeof(slot->carrier_id));
	slot->last_error[0] = '\0';
	slot->since = GetCurrentTimestamp();
	SpinLockRelease(&slot->mutex);
	pg_atomic_write_u32(&slot->state, SMPP_STATE_STARTING);
	pg_atomic_write_u64(&slot->submitted, 0);
	pg_atomic_write_u64(&slot->accepted, 0);
	pg_atomic_write_u64(&slot->rejected, 0);
	pg_atomic_write_u64(&slot->throttled, 0);
	pg_atomic_write_u64(&slot->timeouts, 0);
	pg_atomic_write_u64(&slot->receipts, 0);
	pg_atomic_write_u64(&slot->inbound, 0);
	pg_atomic_write_u64(&slot->reconnects, 0);
	pg_atomic_write_u32(&slot->in_flight, 0);
	before_shmem_exit(slot_detach, PointerGetDatum(slot));
	return slot;
}

void
SmppSlotSetState(SmppBindSlot *slot, SmppBindState state)
{
	if (pg_atomic_read_u32(&slot->state) == (uint32) state)
		return;
	pg_atomic_write_u32(&slot->state, state);
	SpinLockAcquire(&slot->mutex);
	slot->since = GetCurrentTimestamp();
	SpinLockRelease(&slot->mutex);
}

void
SmppSlotSetError(SmppBindSlot *slot, const char *fmt,...)
{
	char		buf[SMPP_ERROR_LEN];
	va_list		ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	SpinLockAcquire(&slot->mutex);
	strlcpy(slot->last_error, buf, sizeof(slot->last_error));
	SpinLockRelease(&slot->mutex);
}

/* ---- the supervisor */

typedef struct BindProc
{
	char		carrier_id[SMPP_CARRIER_ID_LEN];
	char		config_hash[33];
	BackgroundWorkerHandle *handle;	/* NULL = slot unused */
	bool		terminating;
} BindProc;

typedef struct WantedCarrier
{
	char		carrier_id[SMPP_CARRIER_ID_LEN];
	char		config_hash[33];
} WantedCarrier;

static BindProc binds[SMPP_MAX_BINDS];
static WantedCarrier wanted[SMPP_MAX_BINDS];
static int	n_wanted;
static bool too_many_warned = false;

/* Read the enabled smpp carriers (none until the extension exists). */
static void
read_wanted_carriers(void)
{
	int			ret;
	uint64		i;

	n_wanted = 0;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "reading smpp carriers");

	ret = SPI_execute("SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'envoisms'", true, 1);
	if (ret == SPI_OK_SELECT && SPI_processed == 1)
	{
		ret = SPI_execute("SELECT carrier_id, md5(config::text || '|' || coalesce(max_per_second::text, ''))"
						  " FROM envoisms.carriers WHERE kind = 'smpp' AND enabled ORDER BY carrier_id",
						  true, 0);
		if (ret != SPI_OK_SELECT)
			elog(ERROR, "reading the smpp carriers failed: %s", SPI_result_code_string(ret));
		for (i = 0; i < SPI_processed; i++)
		{
			char	   *id = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
			char	   *hash = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2);

			if (n_wanted == SMPP_MAX_BINDS)
			{
				if (!too_many_warned)
					ereport(WARNING,
							(errmsg("envoisms runs at most %d SMPP binds; carrier \"%s\" and later ones get none",
									SMPP_MAX_BINDS, id)));
				too_many_warned = true;
				break;
			}
			strlcpy(wanted[n_wanted].carrier_id, id, SMPP_CARRIER_ID_LEN);
			strlcpy(wanted[n_wanted].config_hash, hash, 33);
			n_wanted++;
		}
	}
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_activity(STATE_IDLE, NULL);
}

static int
find_wanted(const char *carrier_id)
{
	int			i;

	for (i = 0; i < n_wanted; i++)
		if (strcmp(wanted[i].carrier_id, carrier_id) == 0)
			return i;
	return -1;
}

static bool
bind_running_for(const char *carrier_id)
{
	int			i;

	for (i = 0; i < SMPP_MAX_BINDS; i++)
		if (binds[i].handle && strcmp(binds[i].carrier_id, carrier_id) == 0)
			return true;
	return false;
}

static void
start_bind(int slot, const WantedCarrier *w)
{
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "envoisms");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "SmppBindMain");
	snprintf(worker.bgw_name, BGW_MAXLEN, "envoisms smpp bind %s", w->carrier_id);
	snprintf(worker.bgw_type, BGW_MAXLEN, "envoisms smpp bind");
	strlcpy(worker.bgw_extra, w->carrier_id, BGW_EXTRALEN);
	worker.bgw_main_arg = Int32GetDatum(slot);
	worker.bgw_notify_pid = MyProcPid;
	if (!RegisterDynamicBackgroundWorker(&worker, &handle))
	{
		ereport(WARNING,
				(errmsg("could not start the SMPP bind of carrier \"%s\"", w->carrier_id),
				 errhint("Raise max_worker_processes.")));
		return;
	}
	binds[slot].handle = handle;
	binds[slot].terminating = false;
	strlcpy(binds[slot].carrier_id, w->carrier_id, SMPP_CARRIER_ID_LEN);
	strlcpy(binds[slot].config_hash, w->config_hash, 33);
	ereport(LOG, (errmsg("envoisms smpp: starting the bind of carrier \"%s\"", w->carrier_id)));
}

/* Stop binds that should not run, forget dead ones, start missing ones. */
static void
reconcile(void)
{
	int			i;

	for (i = 0; i < SMPP_MAX_BINDS; i++)
	{
		BindProc   *b = &binds[i];
		pid_t		pid;
		int			w;

		if (b->handle == NULL)
			continue;
		if (GetBackgroundWorkerPid(b->handle, &pid) == BGWH_STOPPED)
		{
			pfree(b->handle);
			b->handle = NULL;
			continue;
		}
		w = find_wanted(b->carrier_id);
		if (!b->terminating && (w < 0 || strcmp(wanted[w].config_hash, b->config_hash) != 0))
		{
			ereport(LOG, (errmsg("envoisms smpp: stopping the bind of carrier \"%s\" (%s)", b->carrier_id,
								 w < 0 ? "disabled or removed" : "its configuration changed")));
			TerminateBackgroundWorker(b->handle);
			b->terminating = true;
		}
	}
	for (i = 0; i < n_wanted; i++)
	{
		int			slot;

		if (bind_running_for(wanted[i].carrier_id))
			continue;
		for (slot = 0; slot < SMPP_MAX_BINDS; slot++)
			if (binds[slot].handle == NULL)
				break;
		if (slot < SMPP_MAX_BINDS)
			start_bind(slot, &wanted[i]);
	}
}

void
SmppSupervisorMain(Datum arg)
{
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(worker_database, NULL, 0);
	pgstat_report_appname("envoisms smpp supervisor");

	SpinLockAcquire(&smpp_shared->mutex);
	smpp_shared->supervisor_latch = MyLatch;
	SpinLockRelease(&smpp_shared->mutex);

	while (!ShutdownRequestPending)
	{
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		read_wanted_carriers();
		reconcile();
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 smpp_supervisor_naptime_ms, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
	/* The binds get their own SIGTERM at shutdown; we only stop starting them. */
	SpinLockAcquire(&smpp_shared->mutex);
	smpp_shared->supervisor_latch = NULL;
	SpinLockRelease(&smpp_shared->mutex);
	proc_exit(0);
}

/* ---- waking the supervisor when carriers change */

static bool carriers_changed = false;
static bool xact_callback_registered = false;

static void
carriers_xact_callback(XactEvent event, void *arg)
{
	Latch	   *latch;

	if (event == XACT_EVENT_COMMIT && carriers_changed && smpp_shared != NULL)
	{
		SpinLockAcquire(&smpp_shared->mutex);
		latch = smpp_shared->supervisor_latch;
		SpinLockRelease(&smpp_shared->mutex);
		if (latch)
			SetLatch(latch);
	}
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT ||
		event == XACT_EVENT_PARALLEL_COMMIT || event == XACT_EVENT_PARALLEL_ABORT)
		carriers_changed = false;
}

PG_FUNCTION_INFO_V1(smpp_carriers_changed);

/* Statement trigger on envoisms.carriers: wake the supervisor at commit. */
Datum
smpp_carriers_changed(PG_FUNCTION_ARGS)
{
	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("smpp_carriers_changed must be called as a trigger")));
	if (!xact_callback_registered)
	{
		RegisterXactCallback(carriers_xact_callback, NULL);
		xact_callback_registered = true;
	}
	carriers_changed = true;
	return PointerGetDatum(NULL);
}

/* ---- envoisms.smpp_binds() */

static const char *
state_name(uint32 state)
{
	switch ((SmppBindState) state)
	{
		case SMPP_STATE_STARTING:
			return "starting";
		case SMPP_STATE_BACKOFF:
			return "backoff";
		case SMPP_STATE_CONNECTING:
			return "connecting";
		case SMPP_STATE_BINDING:
			return "binding";
		case SMPP_STATE_BOUND:
			return "bound";
		case SMPP_STATE_THROTTLED:
			return "throttled";
		case SMPP_STATE_UNBINDING:
			return "unbinding";
		case SMPP_STATE_INVALID_CONFIG:
			return "invalid_config";
	}
	return "unknown";
}

PG_FUNCTION_INFO_V1(smpp_binds);

/* smpp_binds() → one row per running bind worker. */
Datum
smpp_binds(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int			i;

	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	if (smpp_shared == NULL)
		return (Datum) 0;
	for (i = 0; i < SMPP_MAX_BINDS; i++)
	{
		SmppBindSlot *s = &smpp_shared->slots[i];
		Datum		values[14];
		bool		nulls[14] = {0};
		char		carrier_id[SMPP_CARRIER_ID_LEN];
		char		last_error[SMPP_ERROR_LEN];
		pid_t		pid;
		TimestampTz since;

		SpinLockAcquire(&s->mutex);
		pid = s->pid;
		strlcpy(carrier_id, s->carrier_id, sizeof(carrier_id));
		strlcpy(last_error, s->last_error, sizeof(last_error));
		since = s->since;
		SpinLockRelease(&s->mutex);
		if (pid == 0)
			continue;
		values[0] = CStringGetTextDatum(carrier_id);
		values[1] = Int32GetDatum(pid);
		values[2] = CStringGetTextDatum(state_name(pg_atomic_read_u32(&s->state)));
		values[3] = TimestampTzGetDatum(since);
		values[4] = Int64GetDatum((int64) pg_atomic_read_u64(&s->submitted));
		values[5] = Int64GetDatum((int64) pg_atomic_read_u64(&s->accepted));
		values[6] = Int64GetDatum((int64) pg_atomic_read_u64(&s->rejected));
		values[7] = Int64GetDatum((int64) pg_atomic_read_u64(&s->throttled));
		values[8] = Int64GetDatum((int64) pg_atomic_read_u64(&s->timeouts));
		values[9] = Int64GetDatum((int64) pg_atomic_read_u64(&s->receipts));
		values[10] = Int64GetDatum((int64) pg_atomic_read_u64(&s->inbound));
		values[11] = Int32GetDatum((int32) pg_atomic_read_u32(&s->in_flight));
		values[12] = Int64GetDatum((int64) pg_atomic_read_u64(&s->reconnects));
		values[13] = CStringGetTextDatum(last_error);
		nulls[13] = last_error[0] == '\0';
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
