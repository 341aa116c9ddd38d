/*
 * worker_smpp_bind.c — one SMPP 3.4 transceiver bind, held by a background
 * worker for one smpp carrier (started by the supervisor, worker_smpp.c).
 *
 * The loop: one wait on the latch, the socket (readable; writable while
 * output is pending or a connect is in progress) and the earliest deadline.
 * Then, in order: read and handle every complete PDU, expire deadlines,
 * claim messages when there is room, submit segments as the window, the
 * per-bind rate and any throttle pause allow, record outcomes, write.
 *
 * Transactions: the claim (envoisms.dispatch_claim for this carrier, with
 * the parts cut by envoisms.sms_split — the same C walk as billing) is one
 * short transaction; outcomes, receipts and inbound messages collected in a
 * pass are recorded in one more (each in a subtransaction, so one bad item
 * cannot lose the others). The socket is only touched between them, never
 * inside. A deliver_sm is answered after its transaction committed: an
 * SMSC that gets ESME_ROK can forget the PDU, so it must be stored first;
 * if storing failed it gets ESME_RX_T_APPN and delivers it again.
 *
 * Messages and segments: a claimed message lives in memory until each of
 * its segments was accepted (one submit_sm per segment: UDH concatenation,
 * or one message_payload PDU when the carrier asks for it), then it is
 * recorded 'sent' with the SMSC's ids (envoisms.smpp_sent). A segment
 * answered ESME_RTHROTTLED or ESME_RMSGQFUL goes back to the front of the
 * line and the whole bind pauses (throttle_pause_ms, doubled while the SMSC
 * keeps refusing); other transient statuses retry the segment a few times;
 * a permanent status fails the message (refunded by dispatch_failed); a
 * segment without an answer within response_timeout sends the message back
 * to the queue (dispatch_retry: the debit was taken once at send, a retry
 * never debits). When the link drops, messages with no accepted segment are
 * released (dispatch_release: claimable again at once, the attempt does not
 * count) and the others wait for the reconnect to finish their segments.
 *
 * Delivery is at least once: a submit whose answer was lost can be sent
 * twice; a message id is never recorded twice (outcomes only apply to a
 * compatible state, 85_carriers.sql).
 */
#include "envoisms.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "lib/ilist.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "nodes/pg_list.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "utils/array.h"
#include "utils/fmgrprotos.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "carrier_smpp.h"
#include "carrier_smpp_receipt.h"
#include "worker.h"
#include "worker_smpp.h"

#define MAX_TRANSIENT_TRIES 3		/* non-throttle transient answers per message */
#define MAX_THROTTLE_TRIES 200		/* then the message goes back to the queue */
#define THROTTLE_PAUSE_MAX_MS 30000
#define UNBIND_WAIT_MS 2000
#define WAIT_MAX_MS 10000

/* ---- settings (envoisms.smpp_carrier_settings) */

typedef struct Settings
{
	char		host[256];
	int			port;
	char		system_id[16];
	char		password[9];
	char		system_type[13];
	char		service_type[6];
	int			window;
	int			max_per_second;
	int			enquire_link_s;
	int			response_timeout_s;
	int			reconnect_min_s;
	int			reconnect_max_s;
	int			throttle_pause_ms;
	int			retry_delay_s;
	bool		payload;
	bool		gsm_packed;
	int			registered_delivery;
	int			batch;
} Settings;

/* ---- messages in memory */

typedef enum SegmentState
{
	SEG_WAITING,
	SEG_IN_FLIGHT,
	SEG_ACCEPTED,
} SegmentState;

typedef struct OutMessage
{
	dlist_node	node;
	char	   *account_id;
	char	   *message_id;
	char		source[SMPP_ADDRESS_MAX + 1];
	uint8_t		source_ton;
	uint8_t		source_npi;
	char		destination[SMPP_ADDRESS_MAX + 1];
	uint8_t		data_coding;
	char		validity[17];
	int			nsegs;
	SmppSegment *segs;
	uint8_t    *payload;		/* one message_payload PDU when not NULL */
	int			payload_length;
	SegmentState *state;
	char	  (*ids)[SMPP_MESSAGE_ID_MAX + 1];
	int			accepted;
	int			in_flight;
	int			transient_tries;
	int			throttle_tries;
	bool		done;			/* outcome recorded: later answers are ignored */
	TimestampTz not_before;		/* segment retry pause */
	TimestampTz claimed_at;
} OutMessage;

typedef struct WindowSlot
{
	bool		used;
	uint32_t	sequence;
	OutMessage *message;
	int			segment;
	TimestampTz deadline;
} WindowSlot;

/* ---- what a pass records in the database */

typedef enum OutcomeKind
{
	OUT_SENT,
	OUT_RETRY,
	OUT_FAILED,
	OUT_RELEASE,
	OUT_RECEIPT,
	OUT_INBOUND,
	OUT_INBOUND_PART,
} OutcomeKind;

typedef struct Outcome
{
	OutcomeKind kind;
	char	   *account_id;
	char	   *message_id;
	char	  **ids;
	int			nids;
	char	   *code;			/* error code, or the receipt's stat */
	char	   *text;			/* error message, receipt err, or inbound body */
	int			delay_s;
	char	   *receipt_id;
	char	   *from;
	char	   *to;
	int			ref;
	int			total;
	int			seq;
	bool		answer;			/* a deliver_sm to answer after the commit */
	uint32_t	answer_sequence;
	bool		ok;
} Outcome;

typedef enum LinkState
{
	LINK_DOWN,
	LINK_CONNECTING,
	LINK_BINDING,
	LINK_BOUND,
	LINK_UNBINDING,
} LinkState;

/* ---- the bind's state (one bind per process) */

static char carrier_id[SMPP_CARRIER_ID_LEN];
static SmppBindSlot *slot;
static Settings cfg;
static MemoryContext message_cxt;	/* OutMessages, until they are done */
static MemoryContext pass_cxt;	/* outcomes of one pass */

static LinkState link_state = LINK_DOWN;
static pgsocket sock = PGINVALID_SOCKET;
static StringInfoData inbuf;
static StringInfoData outbuf;
static uint32_t next_sequence = 1;
static uint8_t next_concat_ref = 0;
static TimestampTz link_deadline;	/* connect, bind or unbind answer due */
static uint32_t control_sequence;	/* the bind or unbind awaiting its answer */
static TimestampTz next_connect;
static int	backoff_s;
static TimestampTz next_enquire;
static uint32_t enquire_sequence;	/* 0 = none outstanding */
static TimestampTz enquire_deadline;

static dlist_head messages = DLIST_STATIC_INIT(messages);
static int	n_messages;
static WindowSlot *window;
static int	window_used;
static TimestampTz paused_until;
static int	throttle_streak;
static double tokens;
static TimestampTz tokens_at;
static TimestampTz next_claim;
static bool stopping = false;

static List *outcomes = NIL;

static void link_down(const char *reason, bool quick);
static void forget_wait_set(void);

static long
ms_until(TimestampTz t, TimestampTz now)
{
	if (t <= now)
		return 0;
	return (long) ((t - now + 999) / 1000);
}

static uint32_t
take_sequence(void)
{
	uint32_t	s = next_sequence++;

	if (next_sequence > 0x7FFFFFFF)
		next_sequence = 1;
	return s;
}

static char *
pass_strdup(const char *s)
{
	return s ? MemoryContextStrdup(pass_cxt, s) : NULL;
}

static Outcome *
add_outcome(OutcomeKind kind)
{
	MemoryContext old = MemoryContextSwitchTo(pass_cxt);
	Outcome    *o = palloc0(sizeof(Outcome));

	o->kind = kind;
	outcomes = lappend(outcomes, o);
	MemoryContextSwitchTo(old);
	return o;
}

/* ---- transactions */

/*
 * Run fn(arg) in a transaction with SPI and a snapshot. On error the error
 * is logged and kept as the slot's last error, the transaction rolled back,
 * and false returned: the bind goes on.
 */
static bool
run_transaction(const char *activity, void (*fn) (void *), void *arg)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	volatile bool ok = true;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PG_TRY();
	{
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		PushActiveSnapshot(GetTransactionSnapshot());
		pgstat_report_activity(STATE_RUNNING, activity);
		fn(arg);
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		SmppSlotSetError(slot, "%s: %s", activity, edata->message);
		ereport(WARNING,
				(errmsg("envoisms smpp bind \"%s\": %s failed: %s", carrier_id, activity, edata->message)));
		FreeErrorData(edata);
		ok = false;
	}
	PG_END_TRY();
	pgstat_report_activity(STATE_IDLE, NULL);
	MemoryContextSwitchTo(oldcxt);
	return ok;
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
	const char *args[1] = {carrier_id};
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
	strlcpy(cfg.host, FIELD(1), sizeof(cfg.host));
	cfg.port = INTFIELD(2);
	strlcpy(cfg.system_id, FIELD(3), sizeof(cfg.system_id));
	strlcpy(cfg.password, FIELD(4), sizeof(cfg.password));
	strlcpy(cfg.system_type, FIELD(5), sizeof(cfg.system_type));
	strlcpy(cfg.service_type, FIELD(6), sizeof(cfg.service_type));
	cfg.window = INTFIELD(7);
	cfg.max_per_second = INTFIELD(8);
	cfg.enquire_link_s = INTFIELD(9);
	cfg.response_timeout_s = INTFIELD(10);
	cfg.reconnect_min_s = INTFIELD(11);
	cfg.reconnect_max_s = INTFIELD(12);
	cfg.throttle_pause_ms = INTFIELD(13);
	cfg.retry_delay_s = INTFIELD(14);
	cfg.payload = strcmp(FIELD(15), "payload") == 0;
	cfg.gsm_packed = strcmp(FIELD(16), "t") == 0;
	cfg.registered_delivery = INTFIELD(17);
	cfg.batch = INTFIELD(18);
#undef FIELD
#undef INTFIELD
}

/* Leases of this carrier that a previous bind left behind (only a bind of
 * this carrier claims its messages, and only one runs at a time). */
static void
release_leases_tx(void *arg)
{
	const char *args[1] = {carrier_id};

	exec_text("SELECT envoisms.smpp_release_leases($1)", 1, args);
}

/* ---- socket I/O */

static void
queue_pdu(const uint8_t *pdu, int len)
{
	appendBinaryStringInfo(&outbuf, (const char *) pdu, len);
}

static void
queue_empty_pdu(uint32_t command_id, uint32_t status, uint32_t sequence)
{
	uint8_t		buf[64];
	const char *error;
	int			len = SmppBuildEmpty(buf, sizeof(buf), command_id, status, sequence, &error);

	if (len < 0)
		elog(ERROR, "could not build SMPP PDU 0x%08X: %s", command_id, error);
	queue_pdu(buf, len);
}

/* Write what the socket takes; false when the link broke. */
static bool
flush_output(void)
{
	while (outbuf.len > 0 && sock != PGINVALID_SOCKET)
	{
		ssize_t		n = send(sock, outbuf.data, outbuf.len, MSG_NOSIGNAL);

		if (n < 0)
		{
			if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
				return true;
			link_down(strerror(errno), false);
			return false;
		}
		memmove(outbuf.data, outbuf.data + n, outbuf.len - n);
		outbuf.len -= n;
	}
	return true;
}

static void
start_connect(TimestampTz now)
{
	struct addrinfo hints;
	struct addrinfo *res = NULL;
	char		port[16];
	int			rc;
	int			one = 1;

	pg_atomic_fetch_add_u64(&slot->reconnects, 1);
	SmppSlotSetState(slot, SMPP_STATE_CONNECTING);
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	snprintf(port, sizeof(port), "%d", cfg.port);
	rc = getaddrinfo(cfg.host, port, &hints, &res);
	if (rc != 0 || res == NULL)
	{
		if (res)
			freeaddrinfo(res);
		link_down(gai_strerror(rc), false);
		return;
	}
	sock = socket(res->ai_family, SOCK_STREAM, 0);
	if (sock < 0)
	{
		sock = PGINVALID_SOCKET;
		freeaddrinfo(res);
		link_down(strerror(errno), false);
		return;
	}
	forget_wait_set();
	(void) fcntl(sock, F_SETFL, fcntl(sock, F_GETFL) | O_NONBLOCK);
	(void) setsockopt(sock, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	rc = connect(sock, res->ai_addr, res->ai_addrlen);
	freeaddrinfo(res);
	if (rc != 0 && errno != EINPROGRESS)
	{
		link_down(strerror(errno), false);
		return;
	}
	link_state = LINK_CONNECTING;
	link_deadline = now + (int64) cfg.response_timeout_s * USECS_PER_SEC;
}

static void
send_bind(TimestampTz now)
{
	uint8_t		buf[256];
	const char *error;
	int			len;

	control_sequence = take_sequence();
	len = SmppBuildBindTransceiver(buf, sizeof(buf), control_sequence, cfg.system_id,
								   cfg.password, cfg.system_type, &error);
	if (len < 0)
	{
		link_down(error, false);
		return;
	}
	queue_pdu(buf, len);
	link_state = LINK_BINDING;
	link_deadline = now + (int64) cfg.response_timeout_s * USECS_PER_SEC;
	SmppSlotSetState(slot, SMPP_STATE_BINDING);
}

/* The connect finished (the socket became writable): bind, or fail. */
static void
connect_finished(TimestampTz now)
{
	int			err = 0;
	socklen_t	len = sizeof(err);

	if (getsockopt(sock, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0)
	{
		link_down(strerror(err ? err : errno), false);
		return;
	}
	send_bind(now);
}

/* ---- messages */

static void
message_free(OutMessage *m)
{
	dlist_delete(&m->node);
	n_messages--;
	pfree(m->account_id);
	pfree(m->message_id);
	if (m->segs)
		pfree(m->segs);
	if (m->payload)
		pfree(m->payload);
	pfree(m->state);
	pfree(m->ids);
	pfree(m);
}

static void
maybe_free(OutMessage *m)
{
	if (m->done && m->in_flight == 0)
		message_free(m);
}

static void
message_outcome(OutMessage *m, OutcomeKind kind, const char *code, const char *text, int delay_s)
{
	Outcome    *o = add_outcome(kind);

	o->account_id = pass_strdup(m->account_id);
	o->message_id = pass_strdup(m->message_id);
	o->code = pass_strdup(code);
	o->text = pass_strdup(text);
	o->delay_s = delay_s;
	m->done = true;
	if (kind == OUT_FAILED)
		pg_atomic_fetch_add_u64(&MyWorkerSlot->failed, 1);
	else if (kind == OUT_RETRY)
		pg_atomic_fetch_add_u64(&MyWorkerSlot->retried, 1);
}

static void
message_sent(OutMessage *m)
{
	Outcome    *o = add_outcome(OUT_SENT);
	int			i;

	o->account_id = pass_strdup(m->account_id);
	o->message_id = pass_strdup(m->message_id);
	o->nids = m->nsegs;
	o->ids = MemoryContextAlloc(pass_cxt, sizeof(char *) * m->nsegs);
	for (i = 0; i < m->nsegs; i++)
		o->ids[i] = pass_strdup(m->ids[i]);
	m->done = true;
	pg_atomic_fetch_add_u64(&MyWorkerSlot->sent, 1);
}

/* Give a message back to the queue (no debit: it was paid once, at send). */
static void
message_retry(OutMessage *m, const char *code, const char *text)
{
	message_outcome(m, OUT_RETRY, code, text, cfg.retry_delay_s);
}

static void
window_release(WindowSlot *w)
{
	w->used = false;
	w->message->in_flight--;
	window_used--;
	pg_atomic_write_u32(&slot->in_flight, window_used);
	pg_atomic_write_u32(&MyWorkerSlot->in_flight, window_used);
}

static WindowSlot *
window_find(uint32_t sequence)
{
	int			i;

	for (i = 0; i < cfg.window; i++)
		if (window[i].used && window[i].sequence == sequence)
			return &window[i];
	return NULL;
}

/* Fill an OutMessage from the claimed row's fields and its parts. */
static void
message_add(char **f, char **parts, int nparts, TimestampTz now)
{
	MemoryContext old = MemoryContextSwitchTo(message_cxt);
	OutMessage *m = palloc0(sizeof(OutMessage));
	const char *to = f[2];
	const char *sender = f[3];
	const char *channel = f[4];
	const char *body = f[5];
	bool		ucs2 = strcmp(f[6], "ucs2") == 0;
	const char *error = NULL;
	bool		numeric_sender = true;
	const char *p;

	m->account_id = pstrdup(f[0]);
	m->message_id = pstrdup(f[1]);
	m->claimed_at = now;
	dlist_push_tail(&messages, &m->node);
	n_messages++;

	if (to[0] == '+')
		to++;
	strlcpy(m->destination, to, sizeof(m->destination));
	p = sender[0] == '+' ? sender + 1 : sender;
	if (*p == '\0')
		numeric_sender = false;
	for (; *p; p++)
		if (*p < '0' || *p > '9')
			numeric_sender = false;
	if (numeric_sender)
	{
		strlcpy(m->source, sender[0] == '+' ? sender + 1 : sender, sizeof(m->source));
		m->source_ton = 1;		/* international */
		m->source_npi = 1;		/* E.164 */
	}
	else
	{
		strlcpy(m->source, sender, sizeof(m->source));
		m->source_ton = 5;		/* alphanumeric */
		m->source_npi = 0;
	}
	m->data_coding = ucs2 ? SMPP_DC_UCS2 : SMPP_DC_DEFAULT;
	strlcpy(m->validity, f[7] ? f[7] : "", sizeof(m->validity));

	if (strcmp(channel, "sms") != 0)
		error = "the SMPP carrier only sends SMS";
	else if (body == NULL || nparts == 0)
		error = "the message has no body";
	else if (strlen(to) > SMPP_ADDRESS_MAX || strlen(sender) > SMPP_ADDRESS_MAX)
		error = "the number or sender id is too long for SMPP";

	if (error == NULL && cfg.payload && nparts > 1)
	{
		uint8_t		buf[SMPP_PAYLOAD_MAX];
		int			n = SmppEncodeText(body, strlen(body), ucs2, cfg.gsm_packed, buf, sizeof(buf));

		if (n > 0)
		{
			m->payload = palloc(n);
			memcpy(m->payload, buf, n);
			m->payload_length = n;
			m->nsegs = 1;
		}
		/* too long for one message_payload: concatenated parts instead */
	}
	if (error == NULL && m->payload == NULL)
	{
		m->segs = palloc0(sizeof(SmppSegment) * nparts);
		m->nsegs = nparts;
		if (!SmppEncodeParts(parts, nparts, ucs2, cfg.gsm_packed,
							 nparts > 1 ? next_concat_ref++ : 0, m->segs, &error))
			m->nsegs = 0;
	}
	if (m->nsegs == 0)
		m->nsegs = 1;			/* room for the arrays below */
	m->state = palloc0(sizeof(SegmentState) * m->nsegs);
	m->ids = palloc0(sizeof(*m->ids) * m->nsegs);
	MemoryContextSwitchTo(old);

	if (error)
	{
		message_outcome(m, OUT_FAILED, "SMPP_INVALID_MESSAGE", error, 0);
		maybe_free(m);
	}
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
	values[0] = CStringGetTextDatum(carrier_id);
	values[1] = Int32GetDatum(cfg.batch);
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
			message_add(fields, parts, nparts, c->now);
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

/* Whether the bind has room for more messages (fewer waiting segments than its window). */
static bool
room_to_claim(void)
{
	int			waiting = 0;
	dlist_iter	it;

	if (link_state != LINK_BOUND || stopping)
		return false;
	dlist_foreach(it, &messages)
	{
		OutMessage *m = dlist_container(OutMessage, node, it.cur);

		if (!m->done)
			waiting += m->nsegs - m->accepted - m->in_flight;
	}
	return waiting < cfg.window;
}

/* Claim due messages when the bind has room for them. */
static void
maybe_claim(TimestampTz now, bool woken)
{
	ClaimArgs	c = {0, now};

	if ((!woken && now < next_claim) || !room_to_claim())
		return;
	if (!run_transaction("claiming messages", claim_tx, &c))
	{
		next_claim = now + (int64) smpp_poll_ms * 1000;
		return;
	}
	pg_atomic_fetch_add_u64(&MyWorkerSlot->claimed, c.claimed);
	/* A full batch means more may be due: claim again as soon as there is room. */
	next_claim = (c.claimed >= cfg.batch) ? now : now + (int64) smpp_poll_ms * 1000;
}

/* ---- submitting */

static bool
take_token(TimestampTz now)
{
	if (cfg.max_per_second <= 0)
		return true;
	tokens = Min((double) cfg.max_per_second,
				 tokens + (now - tokens_at) / (double) USECS_PER_SEC * cfg.max_per_second);
	tokens_at = now;
	if (tokens < 1.0)
		return false;
	tokens -= 1.0;
	return true;
}

static bool
submit_segment(OutMessage *m, int seg, TimestampTz now)
{
	SmppSubmit	s;
	uint8_t		buf[SMPP_PDU_MAX];
	const char *error;
	int			len;
	int			i;
	WindowSlot *w = NULL;

	for (i = 0; i < cfg.window; i++)
		if (!window[i].used)
		{
			w = &window[i];
			break;
		}
	if (w == NULL)
		return false;

	memset(&s, 0, sizeof(s));
	s.sequence = take_sequence();
	s.system_type = cfg.service_type;
	s.source = m->source;
	s.source_ton = m->source_ton;
	s.source_npi = m->source_npi;
	s.destination = m->destination;
	s.data_coding = m->data_coding;
	s.registered_delivery = (uint8_t) cfg.registered_delivery;
	s.validity = m->validity;
	if (m->payload)
	{
		s.payload = m->payload;
		s.payload_length = m->payload_length;
	}
	else
	{
		s.esm_class = m->segs[seg].esm_class;
		s.short_message = m->segs[seg].data;
		s.sm_length = m->segs[seg].length;
	}
	len = SmppBuildSubmit(buf, sizeof(buf), &s, &error);
	if (len < 0)
	{
		message_outcome(m, OUT_FAILED, "SMPP_INVALID_MESSAGE", error, 0);
		return true;
	}
	queue_pdu(buf, len);
	w->used = true;
	w->sequence = s.sequence;
	w->message = m;
	w->segment = seg;
	w->deadline = now + (int64) cfg.response_timeout_s * USECS_PER_SEC;
	window_used++;
	m->in_flight++;
	m->state[seg] = SEG_IN_FLIGHT;
	pg_atomic_fetch_add_u64(&slot->submitted, 1);
	pg_atomic_write_u32(&slot->in_flight, window_used);
	return true;
}

/* Submit waiting segments, in claim order, while the bind allows it. */
static void
submit_more(TimestampTz now)
{
	dlist_mutable_iter it;

	if (link_state != LINK_BOUND || stopping || now < paused_until)
		return;
	dlist_foreach_modify(it, &messages)
	{
		OutMessage *m = dlist_container(OutMessage, node, it.cur);
		int			seg;

		if (m->done || now < m->not_before)
			continue;
		for (seg = 0; seg < m->nsegs && !m->done; seg++)
		{
			if (m->state[seg] != SEG_WAITING)
				continue;
			if (window_used >= cfg.window || !take_token(now))
				return;
			if (!submit_segment(m, seg, now))
				return;
		}
		maybe_free(m);
	}
}

/* ---- answers */

static bool
status_is_transient(uint32_t status)
{
	switch (status)
	{
		case SMPP_ESME_RSYSERR:
		case SMPP_ESME_RX_T_APPN:
		case 0x04:				/* ESME_RINVBNDSTS: the SMSC lost our bind */
		case 0xFF:				/* ESME_RUNKNOWNERR */
			return true;
	}
	return false;
}

/* An answer to one of our submit_sm (or a generic_nack for it). */
static void
submit_answered(WindowSlot *w, uint32_t status, const char *smsc_id, TimestampTz now)
{
	OutMessage *m = w->message;
	int			seg = w->segment;
	char		name[64];
	char		text[160];

	window_release(w);
	if (m->done)
	{
		maybe_free(m);
		return;
	}
	if (status == SMPP_ESME_ROK)
	{
		m->state[seg] = SEG_ACCEPTED;
		strlcpy(m->ids[seg], smsc_id, sizeof(m->ids[seg]));
		m->accepted++;
		throttle_streak = 0;
		if (pg_atomic_read_u32(&slot->state) == SMPP_STATE_THROTTLED)
			SmppSlotSetState(slot, SMPP_STATE_BOUND);
		pg_atomic_fetch_add_u64(&slot->accepted, 1);
		if (m->accepted == m->nsegs)
			message_sent(m);
	}
	else if (status == SMPP_ESME_RTHROTTLED || status == SMPP_ESME_RMSGQFUL)
	{
		long		pause = (long) cfg.throttle_pause_ms << Min(throttle_streak, 8);

		m->state[seg] = SEG_WAITING;
		pause = Min(pause, THROTTLE_PAUSE_MAX_MS);
		if (paused_until < now + pause * 1000)
			paused_until = now + (int64) pause * 1000;
		throttle_streak++;
		pg_atomic_fetch_add_u64(&slot->throttled, 1);
		SmppSlotSetState(slot, SMPP_STATE_THROTTLED);
		if (++m->throttle_tries > MAX_THROTTLE_TRIES)
			message_retry(m, "SMPP_THROTTLED", "the SMSC kept throttling the bind");
	}
	else if (status_is_transient(status) && ++m->transient_tries <= MAX_TRANSIENT_TRIES)
	{
		m->state[seg] = SEG_WAITING;
		m->not_before = now + (int64) m->transient_tries * USECS_PER_SEC;
	}
	else
	{
		SmppStatusName(status, name, sizeof(name));
		snprintf(text, sizeof(text), "the SMSC answered %s (0x%08X)", name, status);
		pg_atomic_fetch_add_u64(&slot->rejected, 1);
		if (status_is_transient(status))
			message_retry(m, name, text);
		else
			message_outcome(m, OUT_FAILED, name, text, 0);
	}
	maybe_free(m);
}

/* A deliver_sm: a delivery receipt or an inbound message. */
static void
deliver_received(const uint8_t *pdu, int len, const SmppHeader *h)
{
	SmppDeliver d;
	const char *error;
	Outcome    *o;
	int			type;

	if (!SmppParseDeliver(pdu, len, &d, &error))
	{
		ereport(WARNING,
				(errmsg("envoisms smpp bind \"%s\": unreadable deliver_sm refused", carrier_id),
				 errdetail("libsmpp34: %s", error)));
		{
			uint8_t		buf[64];
			int			n = SmppBuildDeliverResp(buf, sizeof(buf), SMPP_ESME_RX_P_APPN, h->sequence, &error);

			if (n > 0)
				queue_pdu(buf, n);
		}
		return;
	}
	type = d.esm_class & SMPP_ESM_RECEIPT_MASK;
	if (type == SMPP_ESM_DELIVERY_RECEIPT || type == 0x20)
	{
		SmppReceipt r;
		bool		parsed = SmppParseReceipt((const char *) d.message, d.message_length, &r, &error);
		const char *id = d.receipted_id[0] ? d.receipted_id : (parsed ? r.id : NULL);
		const char *stat = NULL;
		static const char *const states[] = {NULL, "ENROUTE", "DELIVRD", "EXPIRED", "DELETED",
		"UNDELIV", "ACCEPTD", "UNKNOWN", "REJECTD"};

		if (d.message_state >= 1 && d.message_state <= 8)
			stat = states[d.message_state];
		else if (parsed)
			stat = r.stat;
		pg_atomic_fetch_add_u64(&slot->receipts, 1);
		if (id == NULL || stat == NULL)
		{
			ereport(WARNING,
					(errmsg("envoisms smpp bind \"%s\": delivery receipt without id or state ignored", carrier_id),
					 errdetail("%s", parsed ? "no receipted_message_id or message_state" : error)));
			o = add_outcome(OUT_RECEIPT);	/* no receipt_id: only answered */
		}
		else
		{
			o = add_outcome(OUT_RECEIPT);
			o->receipt_id = pass_strdup(id);
			o->code = pass_strdup(stat);
			o->text = pass_strdup(d.network_error[0] ? d.network_error : (parsed ? r.err : NULL));
		}
	}
	else
	{
		int			ref,
					total,
					seq;
		char	   *body = SmppDecodeText(d.message, d.message_length, d.data_coding,
										  (d.esm_class & SMPP_ESM_UDHI) != 0, cfg.gsm_packed,
										  &ref, &total, &seq);

		pg_atomic_fetch_add_u64(&slot->inbound, 1);
		o = add_outcome(total > 1 && seq >= 1 && seq <= total ? OUT_INBOUND_PART : OUT_INBOUND);
		o->from = pass_strdup(d.source);
		o->to = pass_strdup(d.destination);
		o->text = pass_strdup(body);
		o->ref = ref;
		o->total = total;
		o->seq = seq;
		pfree(body);
	}
	o->answer = true;
	o->answer_sequence = h->sequence;
}

static void
bound(void)
{
	link_state = LINK_BOUND;
	backoff_s = 0;
	SmppSlotSetState(slot, SMPP_STATE_BOUND);
	SmppSlotSetError(slot, "%s", "");
	ereport(LOG, (errmsg("envoisms smpp bind \"%s\": bound to %s:%d as \"%s\"",
						 carrier_id, cfg.host, cfg.port, cfg.system_id)));
}

/* Handle one complete PDU. */
static void
handle_pdu(const uint8_t *pdu, int len, TimestampTz now)
{
	SmppHeader	h;
	WindowSlot *w;
	char		name[64];

	SmppReadHeader(pdu, &h);
	switch (h.command_id)
	{
		case SMPP_BIND_TRANSCEIVER_RESP:
			if (link_state != LINK_BINDING || h.sequence != control_sequence)
				return;
			if (h.status == SMPP_ESME_ROK)
				bound();
			else
			{
				char		reason[128];

				SmppStatusName(h.status, name, sizeof(name));
				snprintf(reason, sizeof(reason), "bind refused: %s (0x%08X)", name, h.status);
				link_down(reason, false);
			}
			return;
		case SMPP_SUBMIT_SM_RESP:
			w = window_find(h.sequence);
			if (w == NULL)
			{
				elog(DEBUG1, "envoisms smpp bind \"%s\": late submit_sm_resp %u ignored", carrier_id, h.sequence);
				return;
			}
			{
				char		id[SMPP_MESSAGE_ID_MAX + 1] = "";
				const char *error;

				if (h.status == SMPP_ESME_ROK && !SmppParseSubmitResp(pdu, len, id, &error))
					ereport(WARNING,
							(errmsg("envoisms smpp bind \"%s\": submit_sm_resp without a readable message id",
									carrier_id),
							 errdetail("libsmpp34: %s", error)));
				submit_answered(w, h.status, id, now);
			}
			return;
		case SMPP_GENERIC_NACK:
			w = window_find(h.sequence);
			if (w)
				submit_answered(w, h.status == SMPP_ESME_ROK ? SMPP_ESME_RSYSERR : h.status, "", now);
			else if (link_state == LINK_BINDING && h.sequence == control_sequence)
				link_down("bind answered by generic_nack", false);
			else
				ereport(LOG, (errmsg("envoisms smpp bind \"%s\": generic_nack 0x%08X for sequence %u",
									 carrier_id, h.status, h.sequence)));
			return;
		case SMPP_DELIVER_SM:
			deliver_received(pdu, len, &h);
			return;
		case SMPP_ENQUIRE_LINK:
			queue_empty_pdu(SMPP_ENQUIRE_LINK_RESP, SMPP_ESME_ROK, h.sequence);
			return;
		case SMPP_ENQUIRE_LINK_RESP:
			if (h.sequence == enquire_sequence)
				enquire_sequence = 0;
			return;
		case SMPP_UNBIND:
			queue_empty_pdu(SMPP_UNBIND_RESP, SMPP_ESME_ROK, h.sequence);
			flush_output();
			link_down("the SMSC unbound", true);
			return;
		case SMPP_UNBIND_RESP:
			if (link_state == LINK_UNBINDING)
				link_down("unbound", true);
			return;
		default:
			/* A request we do not serve (data_sm, alert_notification ...). */
			if (!(h.command_id & SMPP_RESPONSE_BIT))
				queue_empty_pdu(SMPP_GENERIC_NACK, SMPP_ESME_RINVCMDID, h.sequence);
			return;
	}
}

/* Read what arrived and handle every complete PDU. */
static void
read_input(TimestampTz now)
{
	for (;;)
	{
		ssize_t		n;
		int			off = 0;

		enlargeStringInfo(&inbuf, 16384);
		n = recv(sock, inbuf.data + inbuf.len, inbuf.maxlen - inbuf.len - 1, 0);
		if (n == 0)
		{
			link_down("the SMSC closed the connection", false);
			return;
		}
		if (n < 0)
		{
			if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
				return;
			link_down(strerror(errno), false);
			return;
		}
		inbuf.len += n;
		while (inbuf.len - off >= SMPP_HEADER_LEN)
		{
			SmppHeader	h;

			SmppReadHeader((uint8_t *) inbuf.data + off, &h);
			if (h.length < SMPP_HEADER_LEN || h.length > SMPP_PDU_MAX)
			{
				queue_empty_pdu(SMPP_GENERIC_NACK, SMPP_ESME_RINVCMDLEN, h.sequence ? h.sequence : 1);
				flush_output();
				link_down("the SMSC sent a PDU of an impossible length", false);
				return;
			}
			if (inbuf.len - off < (int) h.length)
				break;
			{
				/* libsmpp34 reads C strings: a NUL after the PDU bounds them. */
				uint8_t		pdu[SMPP_PDU_MAX + 1];

				memcpy(pdu, inbuf.data + off, h.length);
				pdu[h.length] = '\0';
				off += h.length;
				handle_pdu(pdu, h.length, now);
			}
			if (sock == PGINVALID_SOCKET)
				return;
		}
		memmove(inbuf.data, inbuf.data + off, inbuf.len - off);
		inbuf.len -= off;
	}
}

/* ---- the link going down */

/*
 * Close the link: in-flight segments wait again; messages with no accepted
 * segment go back to the queue at once (released, the attempt not counted);
 * the others stay to finish after the reconnect. quick: reconnect after the
 * minimum delay (a clean unbind), else back off.
 */
static void
link_down(const char *reason, bool quick)
{
	TimestampTz now = GetCurrentTimestamp();
	dlist_mutable_iter it;
	int			i;

	forget_wait_set();
	if (sock != PGINVALID_SOCKET)
	{
		closesocket(sock);
		sock = PGINVALID_SOCKET;
	}
	if (link_state == LINK_BOUND || link_state == LINK_UNBINDING)
		ereport(LOG, (errmsg("envoisms smpp bind \"%s\": link down: %s", carrier_id, reason)));
	else
		ereport(LOG, (errmsg("envoisms smpp bind \"%s\": could not bind to %s:%d: %s",
							 carrier_id, cfg.host, cfg.port, reason)));
	if (strcmp(reason, "unbound") != 0)
		SmppSlotSetError(slot, "%s", reason);
	link_state = LINK_DOWN;
	inbuf.len = 0;
	outbuf.len = 0;
	enquire_sequence = 0;
	for (i = 0; i < cfg.window; i++)
		if (window[i].used)
		{
			window[i].message->state[window[i].segment] = SEG_WAITING;
			window_release(&window[i]);
		}
	dlist_foreach_modify(it, &messages)
	{
		OutMessage *m = dlist_container(OutMessage, node, it.cur);

		if (!m->done && (m->accepted == 0 || stopping))
			message_outcome(m, OUT_RELEASE, NULL, NULL, 0);
		maybe_free(m);
	}
	if (quick || backoff_s == 0)
		backoff_s = cfg.reconnect_min_s;
	else
		backoff_s = Min(backoff_s * 2, cfg.reconnect_max_s);
	next_connect = now + (int64) (quick ? cfg.reconnect_min_s : backoff_s) * USECS_PER_SEC;
	SmppSlotSetState(slot, stopping ? SMPP_STATE_UNBINDING : SMPP_STATE_BACKOFF);
}

/* ---- deadlines */

static void
check_deadlines(TimestampTz now)
{
	int			i;
	bool		timed_out = false;
	dlist_mutable_iter it;

	if ((link_state == LINK_CONNECTING || link_state == LINK_BINDING || link_state == LINK_UNBINDING)
		&& now >= link_deadline)
	{
		link_down(link_state == LINK_UNBINDING ? "unbound" :
				  link_state == LINK_CONNECTING ? "connect timed out" : "no answer to bind_transceiver",
				  link_state == LINK_UNBINDING);
		return;
	}
	if (link_state != LINK_BOUND)
		return;
	if (enquire_sequence != 0 && now >= enquire_deadline)
	{
		link_down("no answer to enquire_link", false);
		return;
	}
	for (i = 0; i < cfg.window; i++)
	{
		WindowSlot *w = &window[i];
		OutMessage *m;

		if (!w->used || now < w->deadline)
			continue;
		m = w->message;
		w->used = false;		/* a late answer will be ignored */
		m->in_flight--;
		window_used--;
		m->state[w->segment] = SEG_WAITING;
		pg_atomic_fetch_add_u64(&slot->timeouts, 1);
		timed_out = true;
		if (!m->done)
		{
			char		text[128];

			snprintf(text, sizeof(text), "no submit_sm_resp within %d s", cfg.response_timeout_s);
			message_retry(m, "SMPP_TIMEOUT", text);
		}
		maybe_free(m);
	}
	pg_atomic_write_u32(&slot->in_flight, window_used);
	/* A silent SMSC may be a dead link: ask now. */
	if (timed_out && enquire_sequence == 0)
		next_enquire = now;
	if (enquire_sequence == 0 && now >= next_enquire)
	{
		enquire_sequence = take_sequence();
		queue_empty_pdu(SMPP_ENQUIRE_LINK, SMPP_ESME_ROK, enquire_sequence);
		enquire_deadline = now + (int64) cfg.response_timeout_s * USECS_PER_SEC;
		next_enquire = now + (int64) cfg.enquire_link_s * USECS_PER_SEC;
	}
	/* Never keep a message past most of its lease: another claim could take it. */
	dlist_foreach_modify(it, &messages)
	{
		OutMessage *m = dlist_container(OutMessage, node, it.cur);

		if (!m->done && m->in_flight == 0 && m->accepted == 0 &&
			now - m->claimed_at > (int64) smpp_lease_s * USECS_PER_SEC * 8 / 10)
		{
			message_outcome(m, OUT_RELEASE, NULL, NULL, 0);
			maybe_free(m);
		}
	}
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
				values[2] = CStringGetTextDatum(carrier_id);
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
			args[0] = carrier_id;
			args[1] = o->receipt_id;
			args[2] = o->code;
			args[3] = o->text;
			exec_text("SELECT envoisms.smpp_receipt($1, $2, $3, $4)", 4, args);
			break;
		case OUT_INBOUND:
		case OUT_INBOUND_PART:
			{
				char	   *body = pg_any_to_server(o->text, strlen(o->text), PG_UTF8);

				args[0] = carrier_id;
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
		SmppSlotSetError(slot, "recording %s: %s", what, edata->message);
		ereport(WARNING,
				(errmsg("envoisms smpp bind \"%s\": could not record %s: %s", carrier_id, what, edata->message)));
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

	foreach(lc, outcomes)
		durable |= ((Outcome *) lfirst(lc))->answer;
	if (!durable)
		commit_without_wait();

	initStringInfo(&json);
	appendStringInfoChar(&json, '[');
	foreach(lc, outcomes)
	{
		Outcome    *o = (Outcome *) lfirst(lc);

		if (!batchable(o))
			continue;
		appendStringInfoString(&json, nbatch++ ? ",{\"op\":" : "{\"op\":");
		JsonAppendString(&json, o->kind == OUT_SENT ? "sent" : o->kind == OUT_RETRY ? "retry" :
						 o->kind == OUT_FAILED ? "failed" : "release");
		json_member(&json, "a", o->account_id);
		json_member(&json, "m", o->message_id);
		json_member(&json, "c", carrier_id);
		if (o->kind == OUT_SENT)
			json_member(&json, "r", o->ids[0]);
		json_member(&json, "code", o->code);
		json_member(&json, "msg", o->text);
		appendStringInfo(&json, ",\"delay_ms\":%d}", o->delay_s * 1000);
	}
	appendStringInfoChar(&json, ']');
	if (nbatch > 0 && in_subtransaction(apply_batch_cb, &json, "a batch of message outcomes"))
	{
		foreach(lc, outcomes)
			if (batchable((Outcome *) lfirst(lc)))
				((Outcome *) lfirst(lc))->ok = true;
	}
	/* pass 0: message outcomes left (multi-part, or a failed batch); pass 1: the rest */
	for (pass = 0; pass < 2; pass++)
		foreach(lc, outcomes)
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
static void
record_outcomes(void)
{
	ListCell   *lc;
	bool		committed;

	if (outcomes == NIL)
		return;
	committed = run_transaction("recording SMPP outcomes", record_tx, NULL);
	foreach(lc, outcomes)
	{
		Outcome    *o = (Outcome *) lfirst(lc);

		if (o->answer && sock != PGINVALID_SOCKET)
		{
			uint8_t		buf[64];
			const char *error;
			int			n = SmppBuildDeliverResp(buf, sizeof(buf),
												 (committed && o->ok) ? SMPP_ESME_ROK : SMPP_ESME_RX_T_APPN,
												 o->answer_sequence, &error);

			if (n > 0)
				queue_pdu(buf, n);
		}
	}
	outcomes = NIL;
	MemoryContextReset(pass_cxt);
}

/* ---- waiting */

static WaitEventSet *wait_set = NULL;
static int	wait_socket_pos = -1;

/* The set is rebuilt when the socket changes: its descriptor number may be reused. */
static void
forget_wait_set(void)
{
	if (wait_set)
		FreeWaitEventSet(wait_set);
	wait_set = NULL;
	wait_socket_pos = -1;
}

/* One wait on the latch, postmaster death and the socket; WL_* bits. */
static int
wait_for_events(int socket_events, long timeout_ms)
{
	WaitEvent	events[3];
	int			n;
	int			i;
	int			rc = 0;

	if (wait_set == NULL)
	{
		wait_set = CreateWaitEventSet(TopMemoryContext, 3);
		AddWaitEventToSet(wait_set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
		AddWaitEventToSet(wait_set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
		if (sock != PGINVALID_SOCKET)
			wait_socket_pos = AddWaitEventToSet(wait_set, socket_events, sock, NULL, NULL);
	}
	else if (wait_socket_pos >= 0)
		ModifyWaitEvent(wait_set, wait_socket_pos, socket_events, NULL);
	n = WaitEventSetWait(wait_set, timeout_ms, events, lengthof(events), PG_WAIT_EXTENSION);
	if (n == 0)
		rc |= WL_TIMEOUT;
	for (i = 0; i < n; i++)
		rc |= events[i].events;
	return rc;
}

/* ---- the loop */

static long
next_timeout(TimestampTz now)
{
	TimestampTz t = now + (int64) WAIT_MAX_MS * 1000;
	int			i;
	dlist_iter	it;
	bool		waiting = false;

#define EARLIER(x) do { if ((x) < t) t = (x); } while (0)
	switch (link_state)
	{
		case LINK_DOWN:
			EARLIER(next_connect);
			break;
		case LINK_CONNECTING:
		case LINK_BINDING:
		case LINK_UNBINDING:
			EARLIER(link_deadline);
			break;
		case LINK_BOUND:
			for (i = 0; i < cfg.window; i++)
				if (window[i].used)
					EARLIER(window[i].deadline);
			EARLIER(enquire_sequence ? enquire_deadline : next_enquire);
			dlist_foreach(it, &messages)
			{
				OutMessage *m = dlist_container(OutMessage, node, it.cur);

				if (m->done || m->accepted + m->in_flight >= m->nsegs)
					continue;
				waiting = true;
				if (m->not_before > now)
					EARLIER(m->not_before);
			}
			if (waiting && window_used < cfg.window)
			{
				if (paused_until > now)
					EARLIER(paused_until);
				else if (cfg.max_per_second > 0 && tokens < 1.0)
					EARLIER(now + (int64) ((1.0 - tokens) / cfg.max_per_second * USECS_PER_SEC) + 1000);
				else
					EARLIER(now);
			}
			if (room_to_claim())
				EARLIER(next_claim);
			break;
	}
#undef EARLIER
	return ms_until(t, now);
}

/* Unbind (or just close), give every message back, record, exit. */
static void
stop_bind(void)
{
	dlist_mutable_iter it;

	dlist_foreach_modify(it, &messages)
	{
		OutMessage *m = dlist_container(OutMessage, node, it.cur);

		if (!m->done && m->in_flight == 0)
			message_outcome(m, OUT_RELEASE, NULL, NULL, 0);
		maybe_free(m);
	}
	record_outcomes();
	flush_output();
	ereport(LOG, (errmsg("envoisms smpp bind \"%s\": stopped", carrier_id)));
	proc_exit(0);
}

static void
begin_stop(TimestampTz now)
{
	stopping = true;
	if (link_state == LINK_BOUND)
	{
		control_sequence = take_sequence();
		queue_empty_pdu(SMPP_UNBIND, SMPP_ESME_ROK, control_sequence);
		link_state = LINK_UNBINDING;
		link_deadline = now + (int64) UNBIND_WAIT_MS * 1000;
		SmppSlotSetState(slot, SMPP_STATE_UNBINDING);
	}
	else if (link_state != LINK_UNBINDING)
		link_down("stopping", true);
}

void
SmppBindMain(Datum arg)
{
	int			index = DatumGetInt32(arg);
	bool		found = false;
	bool		woken = true;

	char		name[SMPP_CARRIER_ID_LEN + 16];

	strlcpy(carrier_id, MyBgworkerEntry->bgw_extra, sizeof(carrier_id));
	snprintf(name, sizeof(name), "envoisms smpp %s", carrier_id);
	/* Signals, database, and a WORKER_SMPP slot: commits of sends wake us. */
	WorkerAttach(WORKER_SMPP, index, name);
	slot = SmppSlotAttach(index, carrier_id);

	message_cxt = AllocSetContextCreate(TopMemoryContext, "envoisms smpp messages", ALLOCSET_DEFAULT_SIZES);
	pass_cxt = AllocSetContextCreate(TopMemoryContext, "envoisms smpp pass", ALLOCSET_DEFAULT_SIZES);
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		initStringInfo(&inbuf);
		initStringInfo(&outbuf);
		MemoryContextSwitchTo(old);
	}

	if (!run_transaction("reading the carrier settings", load_settings_tx, &found) || !found)
	{
		/* Invalid or vanished: wait for the supervisor to stop us. */
		SmppSlotSetState(slot, SMPP_STATE_INVALID_CONFIG);
		while (!WorkerStopping())
		{
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_EXIT_ON_PM_DEATH, -1, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
			CHECK_FOR_INTERRUPTS();
		}
		proc_exit(0);
	}
	window = MemoryContextAllocZero(TopMemoryContext, sizeof(WindowSlot) * cfg.window);
	tokens = cfg.max_per_second;
	tokens_at = GetCurrentTimestamp();
	(void) run_transaction("releasing old leases", release_leases_tx, NULL);
	next_connect = GetCurrentTimestamp();

	for (;;)
	{
		TimestampTz now = GetCurrentTimestamp();
		int			events;
		int			rc;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		if (WorkerStopping() && !stopping)
			begin_stop(now);
		if (stopping && link_state == LINK_DOWN)
			stop_bind();
		if (link_state == LINK_DOWN && now >= next_connect)
			start_connect(now);

		check_deadlines(now);
		maybe_claim(now, woken);
		submit_more(now);
		/* Submits leave before the outcomes are recorded: the SMSC works meanwhile. */
		if (!flush_output())
			continue;
		record_outcomes();
		if (!flush_output())
			continue;

		events = WL_SOCKET_READABLE;
		if (outbuf.len > 0 || link_state == LINK_CONNECTING)
			events |= WL_SOCKET_WRITEABLE;
		rc = wait_for_events(events, next_timeout(GetCurrentTimestamp()));
		woken = (rc & WL_LATCH_SET) != 0;
		if (woken)
			ResetLatch(MyLatch);
		now = GetCurrentTimestamp();
		if (sock != PGINVALID_SOCKET && link_state == LINK_CONNECTING && (rc & WL_SOCKET_WRITEABLE))
			connect_finished(now);
		if (sock != PGINVALID_SOCKET && link_state != LINK_CONNECTING && (rc & WL_SOCKET_READABLE))
			read_input(now);
	}
}
