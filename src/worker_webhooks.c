/*
 * worker_webhooks.c — signed webhook deliveries to customers' endpoints.
 *
 * Same shape as the dispatcher: claim (envoisms.webhook_claim, a lease per
 * delivery, at most envoisms.webhook_max_per_endpoint in flight per
 * webhook so a slow receiver cannot starve the others), POST through the
 * curl multi pool outside any transaction, record the outcomes in one
 * short transaction (envoisms.webhook_record), wait on latch + sockets +
 * timers. Woken on commit by envoisms.wake_webhooks() (webhook_enqueue).
 *
 * Each POST carries the exact payload queued with the event (same event id
 * and bytes on every retry), signed at send time (webhook_signature.c has
 * the headers and their schemes).
 * Success is a 2xx; redirects are not followed (a 3xx is a failure); the
 * address connected to passes the SSRF guard (worker_ssrf.c), whose
 * refusal is final for that delivery. Failures retry on
 * envoisms.webhook_retry_schedule x envoisms.webhook_retry_scale with
 * jitter; the SQL side disables a webhook on 410 or after
 * envoisms.webhook_disable_after of failures.
 */
#include "worker.h"

#include "executor/spi.h"
#include "lib/ilist.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "http_pool.h"
#include "json_text.h"
#include "ssrf.h"
#include "webhook_signature.h"

PGDLLEXPORT void envoisms_webhooks_main(Datum main_arg);

/* ---- settings (WebhooksInit; webhook_allow_private belongs to worker_ssrf.c) */
static int	webhook_workers = 1;
static int	webhook_batch_size = 200;
static int	webhook_max_in_flight = 512;
static int	webhook_max_per_endpoint = 16;
static int	webhook_timeout_ms = 10000;
static int	webhook_lease_s = 60;
static int	webhook_poll_ms = 1000;
static char *webhook_retry_schedule = NULL;
static double webhook_retry_scale = 1.0;
static int	webhook_disable_after_s = 5 * 86400;
static bool webhook_allow_http = false;

/* The retry schedule: the delay in milliseconds before attempt i + 1. */
static int	webhook_schedule_len = 0;
static int	webhook_schedule_ms[32];

#define ENDPOINT_KEY_LEN 160

typedef struct WebhookItem
{
	dlist_node	node;
	char	   *account_id;
	int64		delivery_id;
	char	   *webhook_id;
	char	   *event_id;
	char	   *payload;
	int			attempts;
	char	   *url;
	char	   *secret;
	bool		timestamped;	/* signature_format = 'timestamped' */
	char		endpoint[ENDPOINT_KEY_LEN];
	HttpTransfer *transfer;
} WebhookItem;

typedef struct EndpointCount
{
	char		key[ENDPOINT_KEY_LEN];
	int			in_flight;
} EndpointCount;

static HttpPool *pool = NULL;
static MemoryContext items_cxt = NULL;
static MemoryContext pass_cxt = NULL;
static dlist_head in_flight = DLIST_STATIC_INIT(in_flight);
static int	in_flight_count = 0;
static HTAB *endpoints = NULL;
static StringInfoData outcomes;
static int	outcome_count = 0;
static TimestampTz soonest_retry = 0;	/* earliest retry recorded since the last claim */
static TimestampTz first_outcome_at = 0;	/* when the oldest unrecorded outcome was added */

/* Transactions are paced: outcomes are recorded, and claims made, at most
 * every WORKER_PACE_MS unless a large batch is ready, so a fast receiver
 * gets big batches instead of one commit per finished request. */
#define WORKER_PACE_MS 10

typedef struct ClaimResult
{
	int			wanted;
	int			got;
	char	   *busy;
	List	   *items;
	TimestampTz next_due;
} ClaimResult;

/* "0,5,300" or "0, 100ms, 5s, 5min, 2h, 1d": milliseconds before each attempt
 * (a bare number is seconds). */
static bool
parse_schedule(const char *value, int *out, int *n)
{
	const char *p = value;

	*n = 0;
	while (*p)
	{
		char	   *end;
		double		v;
		double		unit = 1000;

		while (*p == ' ' || *p == ',')
			p++;
		if (!*p)
			break;
		v = strtod(p, &end);
		if (end == p || v < 0 || *n >= 32)
			return false;
		p = end;
		if (strncmp(p, "ms", 2) == 0)
			unit = 1, p += 2;
		else if (strncmp(p, "min", 3) == 0)
			unit = 60000, p += 3;
		else if (*p == 's')
			unit = 1000, p++;
		else if (*p == 'h')
			unit = 3600000, p++;
		else if (*p == 'd')
			unit = 86400000, p++;
		if (*p && *p != ',' && *p != ' ')
			return false;
		if (v * unit > 30.0 * 86400000)
			return false;
		out[(*n)++] = (int) (v * unit);
	}
	return *n > 0;
}

/* GUC check hook: refuse a schedule parse_schedule cannot read. */
static bool
check_webhook_retry_schedule(char **newval, void **extra, GucSource source)
{
	int			tmp[32];
	int			n;

	if (*newval == NULL || !parse_schedule(*newval, tmp, &n))
	{
		GUC_check_errdetail("envoisms.webhook_retry_schedule is a comma-separated list of 1 to 32 delays such as \"0, 5s, 5min, 30min, 2h\", each at most 30 days.");
		return false;
	}
	return true;
}

/* GUC assign hook: the schedule in milliseconds, for retry_delay(). */
static void
assign_webhook_retry_schedule(const char *newval, void *extra)
{
	if (newval && !parse_schedule(newval, webhook_schedule_ms, &webhook_schedule_len))
		webhook_schedule_len = 0;
}

/* Defines the webhook workers' settings; with the preload, registers the workers. */
void
WebhooksInit(void)
{
	DefineCustomIntVariable("envoisms.webhook_workers",
							"Number of webhook delivery workers.",
							NULL, &webhook_workers, 1, 0, 16,
							PGC_POSTMASTER, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("envoisms.webhook_batch_size",
							"Webhook deliveries a worker claims per transaction.",
							NULL, &webhook_batch_size, 200, 1, 10000,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("envoisms.webhook_max_in_flight",
							"Webhook requests a worker keeps in flight at once.",
							NULL, &webhook_max_in_flight, 512, 1, 100000,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("envoisms.webhook_max_per_endpoint",
							"Webhook requests a worker keeps in flight to one endpoint (a slow receiver cannot starve the others).",
							NULL, &webhook_max_per_endpoint, 16, 1, 10000,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("envoisms.webhook_timeout",
							"Timeout of one webhook request (connect to last byte).",
							NULL, &webhook_timeout_ms, 10000, 100, 600000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("envoisms.webhook_lease",
							"How long a claimed webhook delivery stays reserved for its worker.",
							NULL, &webhook_lease_s, 60, 5, 86400,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("envoisms.webhook_poll_interval",
							"Longest a webhook worker sleeps without a wake (deliveries queued without envoisms.wake_webhooks()).",
							NULL, &webhook_poll_ms, 1000, 10, 600000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomStringVariable("envoisms.webhook_retry_schedule",
							   "Delay before each webhook attempt: the first is the initial attempt, then one per retry.",
							   NULL, &webhook_retry_schedule, "0, 5s, 5min, 30min, 2h, 5h, 10h, 14h, 20h, 24h",
							   PGC_SIGHUP, 0, check_webhook_retry_schedule, assign_webhook_retry_schedule, NULL);
	DefineCustomRealVariable("envoisms.webhook_retry_scale",
							 "Factor applied to the webhook retry schedule (tests use small values).",
							 NULL, &webhook_retry_scale, 1.0, 0.0, 100.0,
							 PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("envoisms.webhook_disable_after",
							"A webhook whose deliveries fail for this long without one success is disabled.",
							NULL, &webhook_disable_after_s, 5 * 86400, 1, 365 * 86400,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomBoolVariable("envoisms.webhook_allow_private",
							 "Lets webhook deliveries connect to loopback, private, link-local and other internal addresses (tests only).",
							 NULL, &webhook_allow_private, false,
							 PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomBoolVariable("envoisms.webhook_allow_http",
							 "Lets POST /v1/webhooks accept http:// URLs (tests only; the contract asks for https).",
							 NULL, &webhook_allow_http, false,
							 PGC_SIGHUP, 0, NULL, NULL, NULL);

	WorkersRegister("envoisms webhooks", "envoisms_webhooks_main", webhook_workers);
}

/* Count a request more (delta 1) or less (-1) in flight to an endpoint. */
static void
endpoint_adjust(const char *key, int delta)
{
	bool		found;
	EndpointCount *e = hash_search(endpoints, key, delta > 0 ? HASH_ENTER : HASH_FIND, &found);

	if (e == NULL)
		return;
	if (!found)
		e->in_flight = 0;
	e->in_flight += delta;
	if (e->in_flight <= 0)
		hash_search(endpoints, key, HASH_REMOVE, NULL);
}

/* The endpoints at their cap, as webhook_claim's JSON object {endpoint: in flight}. */
static char *
busy_json(void)
{
	StringInfoData buf;
	HASH_SEQ_STATUS seq;
	EndpointCount *e;
	bool		first = true;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	hash_seq_init(&seq, endpoints);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		if (!first)
			appendStringInfoChar(&buf, ',');
		first = false;
		JsonAppendString(&buf, e->key);
		appendStringInfo(&buf, ":%d", e->in_flight);
	}
	appendStringInfoChar(&buf, '}');
	return buf.data;
}

/* Copy a claimed delivery into items_cxt. */
static WebhookItem *
item_from_row(HeapTuple row, TupleDesc desc)
{
	WebhookItem *item = MemoryContextAllocZero(items_cxt, sizeof(WebhookItem));
	char	   *v;

#define COPY(i) MemoryContextStrdup(items_cxt, (v = SPI_getvalue(row, desc, (i))) ? v : "")
	item->account_id = COPY(1);
	v = SPI_getvalue(row, desc, 2);
	item->delivery_id = v ? strtoll(v, NULL, 10) : 0;
	item->webhook_id = COPY(3);
	item->event_id = COPY(4);
	item->payload = COPY(6);
	v = SPI_getvalue(row, desc, 7);
	item->attempts = v ? atoi(v) : 1;
	item->url = COPY(8);
	item->secret = COPY(9);
	v = SPI_getvalue(row, desc, 10);
	item->timestamped = v != NULL && strcmp(v, "timestamped") == 0;
#undef COPY
	snprintf(item->endpoint, sizeof(item->endpoint), "%s/%s", item->account_id, item->webhook_id);
	return item;
}

/* Claim due deliveries into res (a transaction), and when fewer came, when the next falls due. */
static void
claim_txn(void *arg)
{
	ClaimResult *res = (ClaimResult *) arg;
	Oid			argtypes[1] = {TEXTOID};
	Datum		values[1];
	char		sql[512];
	MemoryContext old;

	/* a claim lost in a crash only means a lease that never was: no need to wait for the flush */
	SPI_execute("SET LOCAL synchronous_commit = off", false, 0);
	snprintf(sql, sizeof(sql),
			 "SELECT account_id, delivery_id, webhook_id, event_id, event_type, payload, attempts, url, secret, signature_format "
			 "FROM envoisms.webhook_claim(%d, make_interval(secs => %d), %d, $1::jsonb)",
			 res->wanted, webhook_lease_s, webhook_max_per_endpoint);
	values[0] = CStringGetTextDatum(res->busy);
	if (SPI_execute_with_args(sql, 1, argtypes, values, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "webhook_claim failed");
	res->got = (int) SPI_processed;
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		WebhookItem *item = item_from_row(SPI_tuptable->vals[i], SPI_tuptable->tupdesc);

		old = MemoryContextSwitchTo(pass_cxt);
		res->items = lappend(res->items, item);
		MemoryContextSwitchTo(old);
	}
	res->next_due = 0;
	if (res->got < res->wanted &&
		SPI_execute("SELECT envoisms.webhook_next_due()", true, 1) == SPI_OK_SELECT && SPI_processed == 1)
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
			res->next_due = DatumGetTimestampTz(d);
	}
}

/* Sign a delivery (webhook_signature.c) and start its POST in the pool. */
static void
start_item(WebhookItem *item)
{
	HttpTransfer *t = HttpTransferNew(item, true);
	size_t		body_len = strlen(item->payload);
	long		ts = (long) time(NULL);
	WebhookSignature sig;

	WebhookSign(item->secret, item->timestamped, item->event_id, item->payload, body_len, ts, &sig);

	curl_easy_setopt(t->easy, CURLOPT_URL, item->url);
	curl_easy_setopt(t->easy, CURLOPT_TIMEOUT_MS, (long) webhook_timeout_ms);
	curl_easy_setopt(t->easy, CURLOPT_CONNECTTIMEOUT_MS, (long) Min(webhook_timeout_ms, 5000));
	HttpTransferAddHeader(t, "Content-Type: application/json");
	HttpTransferAddHeader(t, "User-Agent: EnvoiSMS.ma-Webhooks/1.0");
	HttpTransferAddHeader(t, psprintf("X-EnvoiSMS.ma-Signature: %s", sig.contract));
	HttpTransferAddHeader(t, psprintf("X-EnvoiSMS-Signature: %s", sig.contract));
	HttpTransferAddHeader(t, psprintf("X-EnvoiSMS.ma-Timestamp: %ld", ts));
	HttpTransferAddHeader(t, psprintf("X-EnvoiSMS.ma-Event: %s", item->event_id));
	HttpTransferAddHeader(t, psprintf("webhook-id: %s", item->event_id));
	HttpTransferAddHeader(t, psprintf("webhook-timestamp: %ld", ts));
	HttpTransferAddHeader(t, psprintf("webhook-signature: v1,%s", sig.standard));
	HttpTransferAddHeader(t, "Expect:");
	HttpTransferSetBody(t, item->payload, body_len);
	item->transfer = t;
	HttpPoolStart(pool, t);
	dlist_push_tail(&in_flight, &item->node);
	in_flight_count++;
	endpoint_adjust(item->endpoint, 1);
}

/* Add a delivery's outcome to the batch (status, error, retry delay; -1 =
 * final; how long the attempt took, -1 = unknown). */
static void
add_outcome(WebhookItem *item, long status, const char *error, long retry_ms, long latency_ms)
{
	MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

	appendStringInfoString(&outcomes, outcome_count ? "," : "[");
	appendStringInfoString(&outcomes, "{\"a\":");
	JsonAppendString(&outcomes, item->account_id);
	appendStringInfo(&outcomes, ",\"d\":" INT64_FORMAT, item->delivery_id);
	if (status > 0)
		appendStringInfo(&outcomes, ",\"s\":%ld", status);
	if (error)
	{
		appendStringInfoString(&outcomes, ",\"e\":");
		JsonAppendString(&outcomes, error);
	}
	if (retry_ms >= 0)
		appendStringInfo(&outcomes, ",\"r\":%ld", retry_ms);
	if (latency_ms >= 0)
		appendStringInfo(&outcomes, ",\"l\":%ld", latency_ms);
	appendStringInfoChar(&outcomes, '}');
	if (outcome_count++ == 0)
		first_outcome_at = GetCurrentTimestamp();
	MemoryContextSwitchTo(old);
}

/* Milliseconds before the attempt after `attempts` failed ones; -1 = give up. */
static long
retry_delay(int attempts)
{
	if (attempts >= webhook_schedule_len)
		return -1;
	return WorkerJitter((long) (webhook_schedule_ms[attempts] * webhook_retry_scale));
}

/* Turn a finished POST into its outcome and count it. */
static void
finish_item(WebhookItem *item, HttpTransfer *t)
{
	curl_off_t	total_us = -1;
	long		latency_ms;

	/* the attempt's duration, for the console's deliveries log */
	if (curl_easy_getinfo(t->easy, CURLINFO_TOTAL_TIME_T, &total_us) != CURLE_OK)
		total_us = -1;
	latency_ms = total_us >= 0 ? (long) (total_us / 1000) : -1;
	if (t->result == CURLE_OK && t->http_status >= 200 && t->http_status < 300)
	{
		add_outcome(item, t->http_status, NULL, -1, latency_ms);
		pg_atomic_fetch_add_u64(&MyWorkerSlot->sent, 1);
		return;
	}
	{
		long		delay = t->ssrf_refused || t->http_status == 410 ? -1 : retry_delay(item->attempts);
		const char *error = HttpTransferError(t);

		if (t->result == CURLE_OK && t->http_status >= 300 && t->http_status < 400)
			error = psprintf("HTTP %ld (redirects are not followed)", t->http_status);
		add_outcome(item, t->result == CURLE_OK ? t->http_status : 0, error, delay, latency_ms);
		if (delay >= 0)
		{
			TimestampTz at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), delay);

			soonest_retry = WorkerEarlier(soonest_retry, at);
		}
		WorkerNoteError("%s to %s: %s", item->event_id, item->url, error);
		if (delay < 0)
			pg_atomic_fetch_add_u64(&MyWorkerSlot->failed, 1);
		else
			pg_atomic_fetch_add_u64(&MyWorkerSlot->retried, 1);
	}
}

/* Forget a finished delivery and free what it held. */
static void
free_item(WebhookItem *item)
{
	endpoint_adjust(item->endpoint, -1);
	dlist_delete(&item->node);
	in_flight_count--;
	HttpTransferFree(item->transfer);
	pfree(item->account_id);
	pfree(item->webhook_id);
	pfree(item->event_id);
	pfree(item->payload);
	pfree(item->url);
	pfree(item->secret);
	pfree(item);
}

/* Returns how many transfers finished. */
static int
finish_transfers(void)
{
	HttpTransfer *t;
	int			n = 0;

	HttpPoolPerform(pool);
	while ((t = HttpPoolNextDone(pool)) != NULL)
	{
		WebhookItem *item = (WebhookItem *) t->owner;

		finish_item(item, t);
		free_item(item);
		n++;
	}
	pg_atomic_write_u32(&MyWorkerSlot->in_flight, (uint32) in_flight_count);
	return n;
}

/* Apply a JSON array of outcomes with envoisms.webhook_record (a transaction). */
static void
record_txn(void *arg)
{
	Oid			argtypes[1] = {TEXTOID};
	Datum		values[1];
	char		sql[256];

	values[0] = CStringGetTextDatum((char *) arg);
	snprintf(sql, sizeof(sql), "SELECT envoisms.webhook_record($1::jsonb, make_interval(secs => %d))",
			 webhook_disable_after_s);
	if (SPI_execute_with_args(sql, 1, argtypes, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "webhook_record failed");
}

/* Record the batch of outcomes, if any, in one transaction. */
static void
flush_outcomes(void)
{
	if (outcome_count == 0)
		return;
	appendStringInfoChar(&outcomes, ']');
	WorkerRunTransaction("recording webhook outcomes", record_txn, outcomes.data);
	resetStringInfo(&outcomes);
	outcome_count = 0;
}

/* Give back the leases of the deliveries still in flight (at shutdown). */
static void
release_txn(void *arg)
{
	dlist_iter	iter;

	dlist_foreach(iter, &in_flight)
	{
		WebhookItem *item = dlist_container(WebhookItem, node, iter.cur);
		char	   *sql = psprintf("SELECT envoisms.webhook_release(%s, " INT64_FORMAT ")",
								   quote_literal_cstr(item->account_id), item->delivery_id);

		SPI_execute(sql, false, 0);
	}
}

/* Release the leases taken before this server's workers started (lost in a crash or with a dead primary). */
static void
reclaim_txn(void *arg)
{
	char	   *sql = psprintf("SELECT envoisms.webhook_reclaim(%s, make_interval(secs => %d))",
							   quote_literal_cstr(timestamptz_to_str(WorkersLeaseEpoch())), webhook_lease_s);

	SPI_execute(sql, false, 1);
}

/* SIGTERM: let requests finish for the grace period, record, release the rest. */
static void
shutdown_webhooks(void)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), worker_shutdown_grace_ms);
	int			released = in_flight_count;

	while (in_flight_count > 0 && GetCurrentTimestamp() < deadline)
	{
		WorkerWait(WorkerWaitTime(WorkerMsUntil(deadline), HttpPoolTimeout(pool), 0));
		finish_transfers();
	}
	flush_outcomes();
	released = in_flight_count;
	if (in_flight_count > 0)
		WorkerRunTransaction("releasing webhook leases", release_txn, NULL);
	ereport(LOG, (errmsg("%s: stopping; %d unfinished leases released", MyWorkerSlot->name, released)));
}

/* The webhook worker's entry point: claim, POST, record, wait, until SIGTERM. */
void
envoisms_webhooks_main(Datum main_arg)
{
	int			index = DatumGetInt32(main_arg);
	char		name[64];
	HASHCTL		info;
	bool		claim_wanted = true;
	TimestampTz next_claim_at = 0;
	TimestampTz last_claim_at = 0;

	snprintf(name, sizeof(name), "envoisms webhooks %d", index);
	WorkerAttach(WORKER_WEBHOOKS, index, name);
	WorkerAwaitExtension();

	items_cxt = AllocSetContextCreate(TopMemoryContext, "envoisms webhook items", ALLOCSET_DEFAULT_SIZES);
	pass_cxt = AllocSetContextCreate(TopMemoryContext, "envoisms webhook pass", ALLOCSET_DEFAULT_SIZES);
	memset(&info, 0, sizeof(info));
	info.keysize = ENDPOINT_KEY_LEN;
	info.entrysize = sizeof(EndpointCount);
	endpoints = hash_create("envoisms webhook endpoints", 256, &info, HASH_ELEM | HASH_STRINGS);
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		initStringInfo(&outcomes);
		MemoryContextSwitchTo(old);
	}
	pool = HttpPoolCreate(0, 1024);
	WorkerWatchSocket(HttpPoolSocket(pool), WL_SOCKET_READABLE);
	WorkerRunTransaction("releasing webhook leases of the previous run", reclaim_txn, NULL);

	while (!WorkerStopping())
	{
		TimestampTz now;
		int			room;
		long		timeout;

		MemoryContextSwitchTo(pass_cxt);
		/* a finished transfer frees a slot of an endpoint that was at its cap */
		if (finish_transfers() > 0 && next_claim_at != 0)
			claim_wanted = true;
		now = GetCurrentTimestamp();
		if (next_claim_at != 0 && now >= next_claim_at)
			claim_wanted = true;
		if (TimestampDifferenceExceeds(last_claim_at, now, webhook_poll_ms))
			claim_wanted = true;
		room = webhook_max_in_flight - in_flight_count;
		if (claim_wanted && room > 0 &&
			(room >= Min(webhook_batch_size, webhook_max_in_flight / 4) || in_flight_count == 0 ||
			 TimestampDifferenceExceeds(last_claim_at, now, WORKER_PACE_MS)))
		{
			ClaimResult res;

			/* outcomes first: a retry due now must be in the table the claim reads */
			flush_outcomes();

			memset(&res, 0, sizeof(res));
			res.wanted = Min(webhook_batch_size, room);
			res.busy = busy_json();
			last_claim_at = now;
			if (WorkerRunTransaction("claiming webhook deliveries", claim_txn, &res))
			{
				ListCell   *lc;

				pg_atomic_fetch_add_u64(&MyWorkerSlot->claimed, res.got);
				claim_wanted = res.got == res.wanted;
				next_claim_at = 0;
				if (!claim_wanted && res.next_due != 0)
					next_claim_at = Max(res.next_due, TimestampTzPlusMilliseconds(now, 50));
				foreach(lc, res.items)
					start_item((WebhookItem *) lfirst(lc));
				pg_atomic_write_u32(&MyWorkerSlot->in_flight, (uint32) in_flight_count);
				HttpPoolPerform(pool);
			}
			else
			{
				claim_wanted = false;
				next_claim_at = TimestampTzPlusMilliseconds(now, 1000);
			}
		}
		finish_transfers();
		if (outcome_count >= 256 ||
			(outcome_count > 0 && TimestampDifferenceExceeds(first_outcome_at, GetCurrentTimestamp(), WORKER_PACE_MS)))
			flush_outcomes();
		/* a retry recorded is due before anything the last claim saw */
		if (outcome_count == 0)
		{
			next_claim_at = WorkerEarlier(next_claim_at, soonest_retry);
			soonest_retry = 0;
		}
		MemoryContextReset(pass_cxt);

		if (claim_wanted && webhook_max_in_flight - in_flight_count > 0)
			timeout = 0;
		else
			timeout = WorkerWaitTime(webhook_poll_ms, HttpPoolTimeout(pool), next_claim_at);
		if (claim_wanted && timeout == 0)
			timeout = WorkerMsUntil(TimestampTzPlusMilliseconds(last_claim_at, WORKER_PACE_MS));
		if (outcome_count > 0)
		{
			long		t = WorkerMsUntil(TimestampTzPlusMilliseconds(first_outcome_at, WORKER_PACE_MS));

			if (t < timeout || timeout < 0)
				timeout = t;
		}
		if (WorkerWait(timeout) & WORKER_WOKE_LATCH)
			claim_wanted = true;
	}
	MemoryContextSwitchTo(pass_cxt);
	shutdown_webhooks();
	proc_exit(1);
}
