/*
 * worker_smpp_record.c — the database side of an SMPP bind worker: every
 * transaction it runs, each short and never across network I/O.
 *
 *   SmppLoadSettings    envoisms.smpp_carrier_settings (defaults, checks)
 *   SmppReleaseLeases   leases a dead predecessor left (smpp_release_leases)
 *   SmppClaim           envoisms.dispatch_claim for this carrier, with the
 *                       parts cut by envoisms.sms_split (billing's C walk)
 *   SmppRecordOutcomes  the pass's outcomes: simple message outcomes in one
 *                       envoisms.dispatch_record call, then multi-part sends
 *                       (smpp_sent), then receipts (smpp_receipt) and inbound
 *                       messages (inbound_receive[_part]), each step in a
 *                       subtransaction so one bad item loses nothing else.
 *
 * Durability: the claim and outcome-only transactions commit without
 * waiting for the WAL flush (a crash makes those messages claimable again
 * when the lease ends: sent twice at worst, which a crash with submits in
 * flight can do anyway). A transaction holding a receipt or an inbound
 * message waits for its flush, and its deliver_sm is answered only after
 * that: ESME_ROK if stored, ESME_RX_T_APPN (the SMSC sends it again) if not.
 */
#include "envoisms.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "pgstat.h"
#include "utils/array.h"
#include "utils/fmgrprotos.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"

#include "json_text.h"
#include "worker.h"
#include "worker_smpp_bind.h"

/* ---- transactions */

/*
 * Run fn(arg) in a transaction through the workers' WorkerRunTransaction
 * (SPI, snapshot, error logged and kept as the worker slot's last error);
 * a failure is also shown on the bind's own slot (smpp_binds()). The bind
 * goes on either way.
 */
static bool
run_transaction(const char *activity, void (*fn) (void *), void *arg)
{
	char		error[WORKER_ERROR_LEN];

	if (WorkerRunTransaction(activity, fn, arg))
		return true;
	SpinLockAcquire(&MyWorkerSlot->mutex);
	strlcpy(error, MyWorkerSlot->last_error, sizeof(error));
	SpinLockRelease(&MyWorkerSlot->mutex);
	SmppSlotSetError(smpp_slot, "%s", error);
	return false;
}

static Datum
text_or_null(const char *s, bool *isnull)
{
	*isnull = (s == NULL);
	return s ? CStringGetTextDatum(s) : (Datum) 0;
}

/*
 * Commit this transaction without waiting for its WAL flush. Used for the
 * claim and for outcomes: a crash that loses them only makes a message
 * claimable again when its lease ends (sent twice at worst, which a crash
 * with submits in flight can do anyway). Never for receipts and inbound
 * messages: the SMSC forgets those once answered, so they are flushed first.
 */
static void
commit_without_wait(void)
{
	if (SPI_execute("SET LOCAL synchronous_commit = off", false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "could not set synchronous_commit");
}

/* Execute sql with text arguments (NULL pointers are NULLs). */
static void
exec_text(const char *sql, int nargs, const char **args)
{
	Oid			types[8];
	Datum		values[8];
	char		nulls[8];
	int			i;
	int			ret;

	for (i = 0; i < nargs; i++)
	{
		bool		isnull;

		types[i] = TEXTOID;
		values[i] = text_or_null(args[i], &isnull);
		nulls[i] = isnull ? 'n' : ' ';
	}
	ret = SPI_execute_with_args(sql, nargs, types, values, nulls, false, 0);
	if (ret < 0)
		elog(ERROR, "%s failed: %s", sql, SPI_result_code_string(ret));
}

/* ---- settings */

static void
load_settings_tx(void *arg)
{
	bool	   *found = (bool *) arg;
	const char *args[1] = {smpp_carrier_id};
	HeapTuple	tup;
	TupleDesc	desc;

#define FIELD(n) SPI_getvalue(tup, desc, (n))
#define INTFIELD(n) pg_strtoint32(FIELD(n))

	exec_text("SELECT * FROM envoisms.smpp_carrier_settings($1)", 1, args);
	*found = SPI_processed == 1;
	if (!*found)
		return;
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	strlcpy(smpp_cfg.host, FIELD(1), sizeof(smpp_cfg.host));
	smpp_cfg.port = INTFIELD(2);
	strlcpy(smpp_cfg.system_id, FIELD(3), sizeof(smpp_cfg.system_id));
	strlcpy(smpp_cfg.password, FIELD(4), sizeof(smpp_cfg.password));
	strlcpy(smpp_cfg.system_type, FIELD(5), sizeof(smpp_cfg.system_type));
	strlcpy(smpp_cfg.service_type, FIELD(6), sizeof(smpp_cfg.service_type));
	smpp_cfg.window = INTFIELD(7);
	smpp_cfg.max_per_second = INTFIELD(8);
	smpp_cfg.enquire_link_s = INTFIELD(9);
	smpp_cfg.response_timeout_s = INTFIELD(10);
	smpp_cfg.reconnect_min_s = INTFIELD(11);
	smpp_cfg.reconnect_max_s = INTFIELD(12);
	smpp_cfg.throttle_pause_ms = INTFIELD(13);
	smpp_cfg.retry_delay_s = INTFIELD(14);
	smpp_cfg.payload = strcmp(FIELD(15), "payload") == 0;
	smpp_cfg.gsm_packed = strcmp(FIELD(16), "t") == 0;
	smpp_cfg.registered_delivery = INTFIELD(17);
	smpp_cfg.batch = INTFIELD(18);
#undef FIELD
#undef INTFIELD
}

/* Leases of this carrier that a previous bind left behind (only a bind of
 * this carrier claims its messages, and only one runs at a time). */
static void
release_leases_tx(void *arg)
{
	const char *args[1] = {smpp_carrier_id};

	exec_text("SELECT envoisms.smpp_release_leases($1)", 1, args);
}

typedef struct ClaimArgs
{
	int			claimed;
	TimestampTz now;
} ClaimArgs;

static void
claim_tx(void *arg)
{
	ClaimArgs  *c = (ClaimArgs *) arg;
	Oid			types[3] = {TEXTOID, INT4OID, INT4OID};
	Datum		values[3];
	int			ret;
	uint64		i;
	char	   *fields[8];
	char	  **parts;
	int			nparts = 0;
	char	   *current = NULL;

	commit_without_wait();
	values[0] = CStringGetTextDatum(smpp_carrier_id);
	values[1] = Int32GetDatum(smpp_cfg.batch);
	values[2] = Int32GetDatum(smpp_lease_s);
	ret = SPI_execute_with_args(
		"WITH c AS (SELECT d.*, row_number() OVER () AS n"
		"             FROM envoisms.dispatch_claim(ARRAY['smpp'], $1, $2, make_interval(secs => $3)) d)"
		" SELECT c.account_id, c.message_id, c.to_number, c.sender_id, c.channel, c.body, c.encoding,"
		"        to_char(c.expires_at AT TIME ZONE 'UTC', 'YYMMDDHH24MISS') || '000+', p.part"
		"   FROM c LEFT JOIN LATERAL envoisms.sms_split(c.body) WITH ORDINALITY p(part, ord) ON true"
		"  ORDER BY c.n, p.ord",
		3, types, values, NULL, false, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "claiming SMPP messages failed: %s", SPI_result_code_string(ret));

	parts = palloc(sizeof(char *) * (SPI_processed + 1));
	for (i = 0; i <= SPI_processed; i++)
	{
		HeapTuple	tup = i < SPI_processed ? SPI_tuptable->vals[i] : NULL;
		char	   *id = tup ? SPI_getvalue(tup, SPI_tuptable->tupdesc, 2) : NULL;

		if (current && (id == NULL || strcmp(id, current) != 0))
		{
			SmppMessageAdd(fields, parts, nparts, c->now);
			c->claimed++;
			nparts = 0;
		}
		if (tup == NULL)
			break;
		if (current == NULL || strcmp(id, current) != 0)
		{
			int			k;

			for (k = 0; k < 8; k++)
				fields[k] = SPI_getvalue(tup, SPI_tuptable->tupdesc, k + 1);
			current = id;
		}
		parts[nparts] = SPI_getvalue(tup, SPI_tuptable->tupdesc, 9);
		if (parts[nparts])
			nparts++;
	}
}

bool
SmppLoadSettings(void)
{
	bool		found = false;

	return run_transaction("reading the carrier settings", load_settings_tx, &found) && found;
}

void
SmppReleaseLeases(void)
{
	(void) run_transaction("releasing old leases", release_leases_tx, NULL);
}

int
SmppClaim(TimestampTz now)
{
	ClaimArgs	c = {0, now};

	if (!run_transaction("claiming messages", claim_tx, &c))
		return -1;
	return c.claimed;
}

/* ---- recording outcomes */

static void
apply_outcome(Outcome *o)
{
	const char *args[8];

	switch (o->kind)
	{
		case OUT_SENT:
			{
				Datum	   *elems = palloc(sizeof(Datum) * o->nids);
				Oid			types[4] = {TEXTOID, TEXTOID, TEXTOID, TEXTARRAYOID};
				Datum		values[4];
				int			i;
				int			ret;

				for (i = 0; i < o->nids; i++)
					elems[i] = CStringGetTextDatum(o->ids[i]);
				values[0] = CStringGetTextDatum(o->account_id);
				values[1] = CStringGetTextDatum(o->message_id);
				values[2] = CStringGetTextDatum(smpp_carrier_id);
				values[3] = PointerGetDatum(construct_array(elems, o->nids, TEXTOID, -1, false, TYPALIGN_INT));
				ret = SPI_execute_with_args("SELECT envoisms.smpp_sent($1, $2, $3, $4)",
											4, types, values, NULL, false, 0);
				if (ret < 0)
					elog(ERROR, "smpp_sent failed: %s", SPI_result_code_string(ret));
				break;
			}
		case OUT_RETRY:
			{
				Oid			types[5] = {TEXTOID, TEXTOID, TEXTOID, TEXTOID, INT4OID};
				Datum		values[5];
				int			ret;

				values[0] = CStringGetTextDatum(o->account_id);
				values[1] = CStringGetTextDatum(o->message_id);
				values[2] = CStringGetTextDatum(o->code);
				values[3] = CStringGetTextDatum(o->text);
				values[4] = Int32GetDatum(o->delay_s);
				ret = SPI_execute_with_args("SELECT envoisms.dispatch_retry($1, $2, $3, $4, make_interval(secs => $5))",
											5, types, values, NULL, false, 0);
				if (ret < 0)
					elog(ERROR, "dispatch_retry failed: %s", SPI_result_code_string(ret));
				break;
			}
		case OUT_FAILED:
			args[0] = o->account_id;
			args[1] = o->message_id;
			args[2] = o->code;
			args[3] = o->text;
			exec_text("SELECT envoisms.dispatch_failed($1, $2, $3, $4)", 4, args);
			break;
		case OUT_RELEASE:
			args[0] = o->account_id;
			args[1] = o->message_id;
			exec_text("SELECT envoisms.dispatch_release($1, $2)", 2, args);
			break;
		case OUT_RECEIPT:
			if (o->receipt_id == NULL)
				break;
			args[0] = smpp_carrier_id;
			args[1] = o->receipt_id;
			args[2] = o->code;
			args[3] = o->text;
			exec_text("SELECT envoisms.smpp_receipt($1, $2, $3, $4)", 4, args);
			break;
		case OUT_INBOUND:
		case OUT_INBOUND_PART:
			{
				char	   *body = pg_any_to_server(o->text, strlen(o->text), PG_UTF8);

				args[0] = smpp_carrier_id;
				args[1] = o->from;
				args[2] = o->to;
				args[3] = body;
				if (o->kind == OUT_INBOUND)
					exec_text("SELECT envoisms.inbound_receive($1, $2, $3, $4, NULL, 'sms')", 4, args);
				else
				{
					char		ref[16],
								total[16],
								seq[16];

					snprintf(ref, sizeof(ref), "%d", o->ref);
					snprintf(total, sizeof(total), "%d", o->total);
					snprintf(seq, sizeof(seq), "%d", o->seq);
					args[3] = ref;
					args[4] = total;
					args[5] = seq;
					args[6] = body;
					exec_text("SELECT envoisms.inbound_receive_part($1, $2, $3, $4::int, $5::int, $6::int, $7)",
							  7, args);
				}
				break;
			}
	}
}

/* Run fn(arg) in a subtransaction; false (logged) when it failed. */
static bool
in_subtransaction(void (*fn) (void *), void *arg, const char *what)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	volatile bool ok = true;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcxt);
	PG_TRY();
	{
		fn(arg);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
		SmppSlotSetError(smpp_slot, "recording %s: %s", what, edata->message);
		ereport(WARNING,
				(errmsg("envoisms smpp bind \"%s\": could not record %s: %s", smpp_carrier_id, what, edata->message)));
		FreeErrorData(edata);
		ok = false;
	}
	PG_END_TRY();
	return ok;
}

static void
apply_outcome_cb(void *arg)
{
	apply_outcome((Outcome *) arg);
}

/* A simple message outcome: dispatch_record takes a batch of them in one call. */
static bool
batchable(const Outcome *o)
{
	return (o->kind == OUT_SENT && o->nids == 1) || o->kind == OUT_RETRY ||
		o->kind == OUT_FAILED || o->kind == OUT_RELEASE;
}

static void
apply_batch_cb(void *arg)
{
	StringInfo	json = (StringInfo) arg;
	Oid			types[1] = {JSONBOID};
	Datum		values[1];
	int			ret;

	values[0] = DirectFunctionCall1(jsonb_in, CStringGetDatum(json->data));
	ret = SPI_execute_with_args("SELECT envoisms.dispatch_record($1)", 1, types, values, NULL, false, 0);
	if (ret < 0)
		elog(ERROR, "dispatch_record failed: %s", SPI_result_code_string(ret));
}

static void
json_member(StringInfo buf, const char *key, const char *value)
{
	if (value == NULL || value[0] == '\0')
		return;
	appendStringInfo(buf, ",\"%s\":", key);
	JsonAppendString(buf, value);
}

/*
 * Apply the pass's outcomes in order of dependence: message outcomes first
 * (one dispatch_record call for the simple ones, then multi-part sends), so
 * that receipts and inbound messages of the same pass find their messages.
 * Each step in its own subtransaction; a failed batch is applied one by one.
 */
static void
record_tx(void *arg)
{
	ListCell   *lc;
	bool		durable = false;
	StringInfoData json;
	int			nbatch = 0;
	int			pass;

	foreach(lc, smpp_outcomes)
		durable |= ((Outcome *) lfirst(lc))->answer;
	if (!durable)
		commit_without_wait();

	initStringInfo(&json);
	appendStringInfoChar(&json, '[');
	foreach(lc, smpp_outcomes)
	{
		Outcome    *o = (Outcome *) lfirst(lc);

		if (!batchable(o))
			continue;
		appendStringInfoString(&json, nbatch++ ? ",{\"op\":" : "{\"op\":");
		JsonAppendString(&json, o->kind == OUT_SENT ? "sent" : o->kind == OUT_RETRY ? "retry" :
						 o->kind == OUT_FAILED ? "failed" : "release");
		json_member(&json, "a", o->account_id);
		json_member(&json, "m", o->message_id);
		json_member(&json, "c", smpp_carrier_id);
		if (o->kind == OUT_SENT)
			json_member(&json, "r", o->ids[0]);
		json_member(&json, "code", o->code);
		json_member(&json, "msg", o->text);
		appendStringInfo(&json, ",\"delay_ms\":%d}", o->delay_s * 1000);
	}
	appendStringInfoChar(&json, ']');
	if (nbatch > 0 && in_subtransaction(apply_batch_cb, &json, "a batch of message outcomes"))
	{
		foreach(lc, smpp_outcomes)
			if (batchable((Outcome *) lfirst(lc)))
				((Outcome *) lfirst(lc))->ok = true;
	}
	/* pass 0: message outcomes left (multi-part, or a failed batch); pass 1: the rest */
	for (pass = 0; pass < 2; pass++)
		foreach(lc, smpp_outcomes)
		{
			Outcome    *o = (Outcome *) lfirst(lc);
			bool		message = o->kind <= OUT_RELEASE;

			if (o->ok || message != (pass == 0))
				continue;
			o->ok = in_subtransaction(apply_outcome_cb, o,
									  o->message_id ? o->message_id : "a receipt or an inbound message");
		}
}

/* Record this pass's outcomes, then answer the deliver_sm they came from. */
void
SmppRecordOutcomes(void)
{
	ListCell   *lc;
	bool		committed;

	if (smpp_outcomes == NIL)
		return;
	committed = run_transaction("recording SMPP outcomes", record_tx, NULL);
	foreach(lc, smpp_outcomes)
	{
		Outcome    *o = (Outcome *) lfirst(lc);

		if (o->answer)
			SmppAnswerDeliver((committed && o->ok) ? SMPP_ESME_ROK : SMPP_ESME_RX_T_APPN,
							  o->answer_sequence);
	}
	smpp_outcomes = NIL;
	MemoryContextReset(smpp_pass_cxt);
}
