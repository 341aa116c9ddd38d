/*
 * worker_scheduler.c — the scheduler: time-driven work, one short
 * transaction per task, every envoisms.scheduler_interval.
 *
 * Each pass:
 *   - on a Citus node, envoisms.cluster_node_sequences() (96_distribute.sql);
 *   - envoisms.campaigns_start_due() and envoisms.campaigns_complete_finished()
 *     (the campaigns area, src/sql/55_campaigns.sql), then a wake of the
 *     dispatchers so a started campaign's messages go at once;
 *   - envoisms.console_rollup_fold() (src/sql/94_console_views.sql): the
 *     console's rollup deltas folded into its daily counters;
 *   - the expiry sweep, envoisms.expiry_sweep() (every 10 s): queued or sent
 *     messages past their validity become expired and are refunded;
 * and every minute:
 *   - envoisms.idempotency_purge() (stored Idempotency-Key replies past 24 h)
 *     and envoisms.request_outcome_purge() (the gateway's request tokens
 *     past an hour);
 *   - the retention purge, envoisms.retention_purge(envoisms.retention_days,
 *     envoisms.retention_batch_size), repeated in small transactions until a
 *     batch comes back short, so no lock is held for long.
 * A function from another area is only called when it exists
 * (to_regprocedure), so the scheduler works while that area is absent. A
 * failing task is logged, shown in worker_stats, and tried again next pass.
 *
 * worker_stats for the scheduler: claimed = tasks run, sent = messages
 * expired, retried = messages purged by retention, failed = tasks that
 * failed.
 */
#include "worker.h"

#include "executor/spi.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

PGDLLEXPORT void envoisms_scheduler_main(Datum main_arg);

/* ---- settings (SchedulerInit) */
static bool scheduler_enabled = true;
static int	scheduler_interval_ms = 1000;
static int	retention_days = 90;
static int	retention_batch_size = 1000;

/* Defines the scheduler's settings; with the preload, registers the scheduler. */
void
SchedulerInit(void)
{
	DefineCustomBoolVariable("envoisms.scheduler",
							 "Runs the scheduler worker (campaigns, expiry, retention).",
							 NULL, &scheduler_enabled, true,
							 PGC_POSTMASTER, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("envoisms.scheduler_interval",
							"How often the scheduler starts due campaigns and sweeps expired messages.",
							NULL, &scheduler_interval_ms, 1000, 10, 3600000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("envoisms.retention_days",
							"Message bodies and delivery logs older than this are purged (0 = never).",
							NULL, &retention_days, 90, 0, 36500,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("envoisms.retention_batch_size",
							"Messages purged per short transaction by the retention purge.",
							NULL, &retention_batch_size, 1000, 1, 100000,
							PGC_SIGHUP, 0, NULL, NULL, NULL);

	WorkersRegister("envoisms scheduler", "envoisms_scheduler_main", scheduler_enabled ? 1 : 0);
}

typedef struct Task
{
	const char *signature;		/* for to_regprocedure; NULL = always there */
	const char *sql;
	int64		result;
} Task;

/* Run one task's statement if its function exists; keep its numeric result. */
static void
task_txn(void *arg)
{
	Task	   *task = (Task *) arg;
	bool		isnull;

	task->result = -1;
	if (task->signature)
	{
		char	   *check = psprintf("SELECT to_regprocedure(%s) IS NOT NULL", quote_literal_cstr(task->signature));

		if (SPI_execute(check, true, 1) != SPI_OK_SELECT || SPI_processed != 1 ||
			!DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)))
			return;
	}
	if (SPI_execute(task->sql, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "%s failed", task->sql);
	task->result = 0;
	if (SPI_processed == 1 && SPI_tuptable->tupdesc->natts == 1)
	{
		char	   *v = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

		if (v && v[0] >= '0' && v[0] <= '9')
			task->result = strtoll(v, NULL, 10);
	}
}

/* Run one task in its own transaction; its numeric result, or -1. */
static int64
run_task(const char *activity, const char *signature, const char *sql)
{
	Task		task = {signature, sql, -1};

	pg_atomic_fetch_add_u64(&MyWorkerSlot->claimed, 1);
	if (!WorkerRunTransaction(activity, task_txn, &task))
	{
		pg_atomic_fetch_add_u64(&MyWorkerSlot->failed, 1);
		return -1;
	}
	return task.result;
}

/* The scheduler's entry point: a pass every envoisms.scheduler_interval, until SIGTERM. */
void
envoisms_scheduler_main(Datum main_arg)
{
	MemoryContext pass_cxt;
	TimestampTz last_expiry = 0;
	TimestampTz last_minute = 0;

	WorkerAttach(WORKER_SCHEDULER, 0, "envoisms scheduler");
	WorkerAwaitExtension();
	pass_cxt = AllocSetContextCreate(TopMemoryContext, "envoisms scheduler pass", ALLOCSET_DEFAULT_SIZES);

	while (!WorkerStopping())
	{
		TimestampTz now = GetCurrentTimestamp();
		int64		n;

		MemoryContextSwitchTo(pass_cxt);
		/* on a Citus node: its identity sequences in the node's range (96_distribute.sql) */
		run_task("placing this node's ids", "envoisms.cluster_node_sequences()",
				 "SELECT envoisms.cluster_node_sequences()");
		n = run_task("starting due campaigns", "envoisms.campaigns_start_due()",
					 "SELECT envoisms.campaigns_start_due()");
		if (n > 0)
			WakeWorkers(WORKER_DISPATCH);
		run_task("completing finished campaigns", "envoisms.campaigns_complete_finished()",
				 "SELECT envoisms.campaigns_complete_finished()");
		run_task("folding the console's rollups", "envoisms.console_rollup_fold(text,integer)",
				 "SELECT envoisms.console_rollup_fold(NULL, 10000)");

		if (TimestampDifferenceExceeds(last_expiry, now, 10000))
		{
			last_expiry = now;
			n = run_task("expiring messages past validity", NULL,
						 psprintf("SELECT envoisms.expiry_sweep(%d)", retention_batch_size));
			if (n > 0)
				pg_atomic_fetch_add_u64(&MyWorkerSlot->sent, n);
		}

		if (TimestampDifferenceExceeds(last_minute, now, 60000))
		{
			last_minute = now;
			run_task("purging idempotency keys", "envoisms.idempotency_purge()",
					 "SELECT envoisms.idempotency_purge()");
			run_task("purging request outcomes", "envoisms.request_outcome_purge(interval)",
					 "SELECT envoisms.request_outcome_purge()");
			do
			{
				n = run_task("purging messages past retention", NULL,
							 psprintf("SELECT envoisms.retention_purge(%d, %d)", retention_days,
									  retention_batch_size));
				if (n > 0)
					pg_atomic_fetch_add_u64(&MyWorkerSlot->retried, n);
				CHECK_FOR_INTERRUPTS();
			} while (n >= retention_batch_size && !WorkerStopping());
		}
		MemoryContextReset(pass_cxt);
		WorkerWait(scheduler_interval_ms);
	}
	ereport(LOG, (errmsg("envoisms scheduler: stopping")));
	proc_exit(1);
}
