/*
 * worker_dispatch.c — the dispatcher: queued messages to the sandbox, http
 * and whatsapp_cloud carriers (the SMPP connector has its own worker).
 *
 * Phases of one pass, each transaction short and none around network I/O:
 *   1. drive the curl pool; finished transfers become outcomes;
 *   2. claim (transaction 1): envoisms.dispatch_claim() leases up to
 *      min(batch, room) due messages; sandbox messages get their outcome at
 *      once, the others become transfers in the pool;
 *   3. record (transaction 2): envoisms.dispatch_record() applies the
 *      batch of outcomes (sent / retry / failed); if the batch fails as a
 *      whole, each outcome is recorded on its own so one bad row cannot
 *      make the others be sent twice;
 *   4. sandbox delivery reports that are due (envoisms.sandbox_deliver_due);
 *   5. wait: latch (a commit called envoisms.wake_dispatcher(), or a
 *      signal), the pool's sockets, curl's timer, the next due message
 *      (retry or throttled carrier), the next sandbox report, or the poll
 *      interval.
 *
 * Carriers: each claimed message goes to the CarrierOps of its kind
 * (carrier.h; the kinds claimed are those of carrier.c's table). A carrier
 * only fills a CarrierResult; record_result() turns it into a row of the
 * outcome batch, applies the retry backoff and counts it.
 *
 * Restart and crash: at start the leases taken before this server's shared
 * memory began (workers killed by a crash) are released; leases of a
 * worker that died alone run out after envoisms.dispatch_lease. On SIGTERM
 * the dispatcher stops claiming, lets transfers in flight finish for
 * envoisms.worker_shutdown_grace, releases the leases of the rest and
 * exits. A message may thus reach a carrier twice only when its transfer
 * was in flight at a crash; carriers get our message id (and an
 * Idempotency-Key header) to recognise it.
 *
 * Memory: claimed items live in items_cxt until their outcome is built
 * (one chunk each, freed then); everything else of a pass lives in
 * pass_cxt, reset every pass, so a long-running dispatcher does not grow.
 */
#include "worker.h"

#include "executor/spi.h"
#include "lib/ilist.h"
#include "nodes/pg_list.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "carrier.h"
#include "http_pool.h"
#include "json_text.h"

PGDLLEXPORT void envoisms_dispatch_main(Datum main_arg);

/* ---- settings (DispatchInit; carrier_timeout_ms belongs to carrier.c) */
static int	dispatch_workers = 1;
static int	dispatch_batch_size = 500;
static int	dispatch_max_in_flight = 1000;
static int	dispatch_lease_s = 60;
static int	dispatch_poll_ms = 1000;
static int	carrier_max_connections = 128;
static int	dispatch_retry_base_ms = 5000;
static int	dispatch_retry_max_ms = 3600000;
static int	sandbox_delivery_delay_ms = 1000;

/* A message whose transfer runs in the pool. */
typedef struct InFlight
{
	dlist_node	node;
	DispatchItem *item;
	const CarrierOps *carrier;
	HttpTransfer *transfer;
} InFlight;

static HttpPool *pool = NULL;
static MemoryContext items_cxt = NULL;
static MemoryContext pass_cxt = NULL;
static MemoryContext outcome_cxt = NULL;
static dlist_head in_flight = DLIST_STATIC_INIT(in_flight);
static int	in_flight_count = 0;
static List *outcomes = NIL;	/* JSON texts in outcome_cxt */
static TimestampTz sandbox_next_at = 0;
static TimestampTz soonest_retry = 0;	/* earliest retry recorded since the last claim */

/* claim results, built inside the claim transaction */
typedef struct ClaimResult
{
	int			wanted;
	int			got;
	DispatchItem *items;
	TimestampTz next_due;
} ClaimResult;

/* Defines the dispatcher's settings; with the preload, registers the dispatchers. */
void
DispatchInit(void)
{
	DefineCustomIntVariable("envoisms.dispatch_workers",
							"Number of dispatcher workers (sandbox, http and whatsapp_cloud carriers).",
							NULL, &dispatch_workers, 1, 0, 16,
							PGC_POSTMASTER, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("envoisms.dispatch_batch_size",
							"Messages a dispatcher claims per transaction.",
							NULL, &dispatch_batch_size, 500, 1, 10000,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("envoisms.dispatch_max_in_flight",
							"Carrier requests a dispatcher keeps in flight at once.",
							NULL, &dispatch_max_in_flight, 1000, 1, 100000,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("envoisms.dispatch_lease",
							"How long a claimed message stays reserved for its dispatcher.",
							NULL, &dispatch_lease_s, 60, 5, 86400,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("envoisms.dispatch_poll_interval",
							"Longest a dispatcher sleeps without a wake (messages queued without envoisms.wake_dispatcher()).",
							NULL, &dispatch_poll_ms, 1000, 10, 600000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("envoisms.carrier_timeout",
							"Timeout of one request to a carrier.",
							NULL, &carrier_timeout_ms, 10000, 100, 600000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("envoisms.carrier_max_connections",
							"Connections a dispatcher opens to one carrier host at most.",
							NULL, &carrier_max_connections, 128, 1, 10000,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("envoisms.dispatch_retry_base",
							"First retry delay after a transient carrier failure; doubles with each attempt (with jitter).",
							NULL, &dispatch_retry_base_ms, 5000, 1, 86400000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("envoisms.dispatch_retry_max",
							"Longest retry delay after a transient carrier failure.",
							NULL, &dispatch_retry_max_ms, 3600000, 1, 86400000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("envoisms.sandbox_delivery_delay",
							"Delay between sent and the delivery report of a sandbox message.",
							NULL, &sandbox_delivery_delay_ms, 1000, 0, 3600000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);

	WorkersRegister("envoisms dispatcher", "envoisms_dispatch_main", dispatch_workers);
}

/* The retry delay for a message's attempt number: doubling, capped, with jitter. */
static long
backoff_ms(int attempts)
{
	double		ms = dispatch_retry_base_ms;

	for (int i = 1; i < attempts && ms < dispatch_retry_max_ms; i++)
		ms *= 2;
	return WorkerJitter((long) Min(ms, (double) dispatch_retry_max_ms));
}

/* Add a carrier's result to the batch of outcomes, and count it. */
static void
record_result(const DispatchItem *item, const CarrierOps *carrier, const CarrierResult *result)
{
	static const char *const ops[] = {
		[CARRIER_RELEASE] = "release",
		[CARRIER_SENT] = "sent",
		[CARRIER_RETRY] = "retry",
		[CARRIER_FAILED] = "failed",
	};
	long		delay_ms = 0;
	MemoryContext old;
	StringInfoData buf;

	if (result->outcome == CARRIER_RETRY)
	{
		delay_ms = result->retry_after_ms;
		if (result->backoff)
			delay_ms = Max(backoff_ms(item->attempts), delay_ms);
	}

	old = MemoryContextSwitchTo(outcome_cxt);
	initStringInfo(&buf);
	appendStringInfo(&buf, "{\"op\":\"%s\",\"a\":", ops[result->outcome]);
	JsonAppendString(&buf, item->account_id);
	appendStringInfoString(&buf, ",\"m\":");
	JsonAppendString(&buf, item->message_id);
	appendStringInfoString(&buf, ",\"c\":");
	JsonAppendString(&buf, item->carrier_id);
	if (result->carrier_ref)
	{
		appendStringInfoString(&buf, ",\"r\":");
		JsonAppendString(&buf, result->carrier_ref);
	}
	if (result->error_code)
	{
		appendStringInfoString(&buf, ",\"code\":");
		JsonAppendString(&buf, result->error_code);
	}
	if (result->error_message)
	{
		appendStringInfoString(&buf, ",\"msg\":");
		JsonAppendString(&buf, result->error_message);
	}
	appendStringInfo(&buf, ",\"delay_ms\":%ld}", Max(delay_ms, 0L));
	outcomes = lappend(outcomes, buf.data);
	MemoryContextSwitchTo(old);

	switch (result->outcome)
	{
		case CARRIER_SENT:
			pg_atomic_fetch_add_u64(&MyWorkerSlot->sent, 1);
			if (carrier != NULL && carrier->reports_from_dispatcher)
			{
				TimestampTz due = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), sandbox_delivery_delay_ms);

				sandbox_next_at = WorkerEarlier(sandbox_next_at, due);
			}
			break;
		case CARRIER_RETRY:
			{
				TimestampTz at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), Max(delay_ms, 0L));

				soonest_retry = WorkerEarlier(soonest_retry, at);
			}
			pg_atomic_fetch_add_u64(&MyWorkerSlot->retried, 1);
			WorkerNoteError("%s via %s: %s", item->message_id, item->carrier_id,
							result->error_message ? result->error_message : "retry");
			break;
		case CARRIER_FAILED:
			pg_atomic_fetch_add_u64(&MyWorkerSlot->failed, 1);
			break;
		case CARRIER_RELEASE:
			break;
	}
}

/* Give a message's lease back without an attempt. */
static void
record_release(const DispatchItem *item)
{
	CarrierResult result;

	CarrierResultSet(&result, CARRIER_RELEASE, NULL, NULL, NULL, 0, false);
	record_result(item, NULL, &result);
}

/* Copy a claimed row into one chunk of items_cxt. */
static DispatchItem *
item_from_row(HeapTuple row, TupleDesc desc)
{
	char	   *v[15];
	size_t		total = MAXALIGN(sizeof(DispatchItem));
	DispatchItem *item;
	char	   *p;

	for (int i = 0; i < 15; i++)
	{
		v[i] = SPI_getvalue(row, desc, i + 1);
		if (v[i])
			total += strlen(v[i]) + 1;
	}
	item = MemoryContextAllocZero(items_cxt, total);
	p = (char *) item + MAXALIGN(sizeof(DispatchItem));
#define TAKE(field, i) \
	do { if (v[i]) { size_t l = strlen(v[i]) + 1; memcpy(p, v[i], l); item->field = p; p += l; } } while (0)
	TAKE(account_id, 0);
	TAKE(message_id, 1);
	TAKE(carrier_id, 2);
	TAKE(carrier_kind, 3);
	TAKE(to_number, 4);
	TAKE(sender_id, 5);
	TAKE(channel, 6);
	TAKE(body, 7);
	TAKE(encoding, 8);
	item->segments = v[9] ? atoi(v[9]) : 0;
	TAKE(buttons, 10);
	TAKE(metadata, 11);
	item->attempts = v[12] ? atoi(v[12]) : 0;
	TAKE(config, 14);
#undef TAKE
	return item;
}

/* Claim due messages into res (transaction 1), and when fewer came, when the next falls due. */
static void
claim_txn(void *arg)
{
	ClaimResult *res = (ClaimResult *) arg;
	char		sql[512];
	DispatchItem *tail = NULL;

	/* a claim lost in a crash only means a lease that never was: no need to wait for the flush */
	SPI_execute("SET LOCAL synchronous_commit = off", false, 0);
	snprintf(sql, sizeof(sql),
			 "SELECT account_id, message_id, carrier_id, carrier_kind, to_number, sender_id, channel, body, "
			 "encoding, segments, buttons::text, metadata::text, attempts, expires_at, carrier_config::text "
			 "FROM envoisms.dispatch_claim('%s', NULL, %d, make_interval(secs => %d))",
			 CarrierKinds(), res->wanted, dispatch_lease_s);
	if (SPI_execute(sql, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "dispatch_claim failed");
	res->got = (int) SPI_processed;
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		DispatchItem *item = item_from_row(SPI_tuptable->vals[i], SPI_tuptable->tupdesc);

		if (tail)
			tail->next = item;
		else
			res->items = item;
		tail = item;
	}
	res->next_due = 0;
	if (res->got < res->wanted)
	{
		bool		isnull;

		if (SPI_execute("SELECT envoisms.dispatch_next_due()", true, 1) == SPI_OK_SELECT && SPI_processed == 1)
		{
			Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

			if (!isnull)
				res->next_due = DatumGetTimestampTz(d);
		}
	}
}

/* Apply a JSON array of outcomes with envoisms.dispatch_record (transaction 2). */
static void
record_txn(void *arg)
{
	const char *json = (const char *) arg;
	Oid			argtypes[1] = {TEXTOID};
	Datum		values[1];

	values[0] = CStringGetTextDatum(json);
	if (SPI_execute_with_args("SELECT envoisms.dispatch_record($1::jsonb)", 1, argtypes, values, NULL,
							  false, 1) != SPI_OK_SELECT)
		elog(ERROR, "dispatch_record failed");
}

/* Record the outcomes gathered so far: in one transaction, else one by one. */
static void
flush_outcomes(void)
{
	StringInfoData buf;
	ListCell   *lc;

	if (outcomes == NIL)
		return;
	initStringInfo(&buf);
	appendStringInfoChar(&buf, '[');
	foreach(lc, outcomes)
	{
		if (foreach_current_index(lc) > 0)
			appendStringInfoChar(&buf, ',');
		appendStringInfoString(&buf, (char *) lfirst(lc));
	}
	appendStringInfoChar(&buf, ']');
	if (!WorkerRunTransaction("recording dispatch outcomes", record_txn, buf.data))
	{
		foreach(lc, outcomes)
		{
			char	   *one = psprintf("[%s]", (char *) lfirst(lc));

			WorkerRunTransaction("recording one dispatch outcome", record_txn, one);
		}
	}
	pfree(buf.data);
	outcomes = NIL;
	MemoryContextReset(outcome_cxt);
}

/* Hand a claimed message to its carrier: an outcome at once, or a transfer in the pool. */
static void
start_item(DispatchItem *item)
{
	const CarrierOps *carrier = CarrierFind(item->carrier_kind);
	CarrierResult result;
	HttpTransfer *t = NULL;
	InFlight   *f;

	/* what a carrier leaves unset gives the lease back */
	CarrierResultSet(&result, CARRIER_RELEASE, NULL, NULL, NULL, 0, false);
	if (carrier != NULL)
		t = carrier->prepare(item, &result);
	if (t == NULL)
	{
		record_result(item, carrier, &result);
		pfree(item);
		return;
	}
	HttpPoolStart(pool, t);
	f = MemoryContextAlloc(items_cxt, sizeof(InFlight));
	f->item = item;
	f->carrier = carrier;
	f->transfer = t;
	t->owner = f;
	dlist_push_tail(&in_flight, &f->node);
	in_flight_count++;
}

/* Drive the pool and record what its carriers make of every finished transfer. */
static void
finish_transfers(void)
{
	HttpTransfer *t;

	HttpPoolPerform(pool);
	while ((t = HttpPoolNextDone(pool)) != NULL)
	{
		InFlight   *f = (InFlight *) t->owner;
		CarrierResult result;

		CarrierResultSet(&result, CARRIER_RELEASE, NULL, NULL, NULL, 0, false);
		f->carrier->finish(f->item, t, &result);
		record_result(f->item, f->carrier, &result);
		dlist_delete(&f->node);
		in_flight_count--;
		HttpTransferFree(t);
		pfree(f->item);
		pfree(f);
	}
	pg_atomic_write_u32(&MyWorkerSlot->in_flight, (uint32) in_flight_count);
}

/* Release the leases taken before this server's workers started (lost in a crash or with a dead primary). */
static void
reclaim_txn(void *arg)
{
	char		sql[256];
	char	   *since = pstrdup(timestamptz_to_str(WorkersLeaseEpoch()));

	snprintf(sql, sizeof(sql), "SELECT envoisms.dispatch_reclaim('%s', %s)",
			 CarrierKinds(), quote_literal_cstr(since));
	if (SPI_execute(sql, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "dispatch_reclaim failed");
	if (SPI_processed == 1)
	{
		char	   *n = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

		if (n && strcmp(n, "0") != 0)
			ereport(LOG, (errmsg("%s: released %s message leases left by the previous server run",
								 MyWorkerSlot->name, n)));
	}
}

/* Apply the sandbox delivery reports that are due; note when the next one is. */
static void
sandbox_txn(void *arg)
{
	int		   *done = (int *) arg;
	char		sql[256];
	bool		isnull;

	snprintf(sql, sizeof(sql), "SELECT envoisms.sandbox_deliver_due(make_interval(secs => %f), %d)",
			 sandbox_delivery_delay_ms / 1000.0, dispatch_batch_size);
	if (SPI_execute(sql, false, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "sandbox_deliver_due failed");
	*done = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	sandbox_next_at = 0;
	if (*done < dispatch_batch_size)
	{
		snprintf(sql, sizeof(sql), "SELECT envoisms.sandbox_next_due(make_interval(secs => %f))",
				 sandbox_delivery_delay_ms / 1000.0);
		if (SPI_execute(sql, true, 1) == SPI_OK_SELECT && SPI_processed == 1)
		{
			Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

			if (!isnull)
				sandbox_next_at = DatumGetTimestampTz(d);
		}
	}
	else
		sandbox_next_at = GetCurrentTimestamp();
}

/* SIGTERM: let transfers finish for the grace period, release the rest. */
static void
shutdown_dispatcher(void)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), worker_shutdown_grace_ms);
	dlist_mutable_iter iter;
	int			released = 0;

	while (in_flight_count > 0 && GetCurrentTimestamp() < deadline)
	{
		WorkerWait(WorkerWaitTime(WorkerMsUntil(deadline), HttpPoolTimeout(pool), 0));
		finish_transfers();
	}
	dlist_foreach_modify(iter, &in_flight)
	{
		InFlight   *f = dlist_container(InFlight, node, iter.cur);

		HttpPoolAbort(pool, f->transfer);
		HttpTransferFree(f->transfer);
		record_release(f->item);
		dlist_delete(&f->node);
		released++;
	}
	in_flight_count = 0;
	flush_outcomes();
	ereport(LOG, (errmsg("%s: stopping; %d unfinished leases released", MyWorkerSlot->name, released)));
}

/* The dispatcher's entry point: the loop of the file comment, until SIGTERM. */
void
envoisms_dispatch_main(Datum main_arg)
{
	int			index = DatumGetInt32(main_arg);
	char		name[64];
	bool		claim_wanted = true;
	TimestampTz next_claim_at = 0;
	TimestampTz last_claim_at = 0;
	int			connections;

	snprintf(name, sizeof(name), "envoisms dispatcher %d", index);
	WorkerAttach(WORKER_DISPATCH, index, name);
	WorkerAwaitExtension();

	items_cxt = AllocSetContextCreate(TopMemoryContext, "envoisms dispatch items", ALLOCSET_DEFAULT_SIZES);
	pass_cxt = AllocSetContextCreate(TopMemoryContext, "envoisms dispatch pass", ALLOCSET_DEFAULT_SIZES);
	outcome_cxt = AllocSetContextCreate(TopMemoryContext, "envoisms dispatch outcomes", ALLOCSET_DEFAULT_SIZES);
	connections = carrier_max_connections;
	pool = HttpPoolCreate(connections, connections * 4L);
	WorkerWatchSocket(HttpPoolSocket(pool), WL_SOCKET_READABLE);

	WorkerRunTransaction("releasing leases of the previous run", reclaim_txn, NULL);
	sandbox_next_at = GetCurrentTimestamp();

	while (!WorkerStopping())
	{
		TimestampTz now;
		long		timeout;
		int			room;
		int			woke;

		MemoryContextSwitchTo(pass_cxt);
		if (connections != carrier_max_connections)
		{
			connections = carrier_max_connections;
			HttpPoolSetLimits(pool, connections, connections * 4L);
		}
		finish_transfers();

		now = GetCurrentTimestamp();
		if (next_claim_at != 0 && now >= next_claim_at)
			claim_wanted = true;
		if (TimestampDifferenceExceeds(last_claim_at, now, dispatch_poll_ms))
			claim_wanted = true;
		room = dispatch_max_in_flight - in_flight_count;
		if (claim_wanted && room > 0)
		{
			ClaimResult res;

			memset(&res, 0, sizeof(res));
			res.wanted = Min(dispatch_batch_size, room);
			last_claim_at = now;
			if (WorkerRunTransaction("claiming messages", claim_txn, &res))
			{
				DispatchItem *item = res.items;

				pg_atomic_fetch_add_u64(&MyWorkerSlot->claimed, res.got);
				claim_wanted = res.got == res.wanted;
				next_claim_at = 0;
				if (!claim_wanted && res.next_due != 0)
					/* due rows we could not take (other kinds, throttled, locked): look again soon */
					next_claim_at = Max(res.next_due, TimestampTzPlusMilliseconds(now, 100));
				while (item)
				{
					DispatchItem *next = item->next;

					item->next = NULL;
					start_item(item);
					item = next;
				}
				pg_atomic_write_u32(&MyWorkerSlot->in_flight, (uint32) in_flight_count);
				HttpPoolPerform(pool);
			}
			else
			{
				claim_wanted = false;
				next_claim_at = TimestampTzPlusMilliseconds(now, 1000);
			}
		}
		flush_outcomes();
		HttpPoolPerform(pool);
		/* a retry recorded just now is due before anything the claim saw */
		next_claim_at = WorkerEarlier(next_claim_at, soonest_retry);
		soonest_retry = 0;

		if (sandbox_next_at != 0 && GetCurrentTimestamp() >= sandbox_next_at)
		{
			int			done = 0;

			if (!WorkerRunTransaction("delivering sandbox reports", sandbox_txn, &done))
				sandbox_next_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 1000);
		}
		MemoryContextReset(pass_cxt);

		/* how long to sleep */
		if (claim_wanted && dispatch_max_in_flight - in_flight_count > 0)
			timeout = 0;
		else
			timeout = WorkerWaitTime(dispatch_poll_ms, HttpPoolTimeout(pool),
									 WorkerEarlier(next_claim_at, sandbox_next_at));
		woke = WorkerWait(timeout);
		if (woke & WORKER_WOKE_LATCH)
			claim_wanted = true;
	}
	MemoryContextSwitchTo(pass_cxt);
	shutdown_dispatcher();
	proc_exit(1);
}
