/*
 * worker_smpp_bind.c — one SMPP 3.4 transceiver bind, held by a background
 * worker for one smpp carrier (started by the supervisor, worker_smpp.c).
 *
 * The loop: the worker's one wait (WorkerWait, worker_common.c) on the
 * latch, the socket (readable; writable while output is pending or a
 * connect is in progress) and the earliest deadline.
 * Then, in order: read and handle every complete PDU, expire deadlines,
 * claim messages when there is room, submit segments as the window, the
 * per-bind rate and any throttle pause allow, record outcomes, write.
 *
 * Transactions live in worker_smpp_record.c: the claim (dispatch_claim for
 * this carrier, with the parts cut by envoisms.sms_split — the same C walk
 * as billing) is one short transaction; the outcomes, receipts and inbound
 * messages collected in a pass are recorded in one more. The socket is
 * only touched between them, never inside. A deliver_sm is answered after
 * its transaction committed: an SMSC that gets ESME_ROK can forget the PDU,
 * so it must be stored first; if storing failed it gets ESME_RX_T_APPN and
 * delivers it again.
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
 * compatible state, 86_dispatch.sql).
 */
#include "envoisms.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lib/ilist.h"
#include "lib/stringinfo.h"
#include "nodes/pg_list.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "smpp_pdu.h"
#include "smpp_receipt.h"
#include "worker.h"
#include "worker_smpp_bind.h"

#define MAX_TRANSIENT_TRIES 3		/* non-throttle transient answers per message */
#define MAX_THROTTLE_TRIES 200		/* then the message goes back to the queue */
#define THROTTLE_PAUSE_MAX_MS 30000
#define UNBIND_WAIT_MS 2000
#define WAIT_MAX_MS 10000
#define BUSY_CLAIM_RETRY_MS 20

/* ---- the window */

typedef struct WindowSlot
{
	bool		used;
	uint32_t	sequence;
	OutMessage *message;
	int			segment;
	TimestampTz deadline;
} WindowSlot;

/* ---- the bind's state (one bind per process) */

char		smpp_carrier_id[SMPP_CARRIER_ID_LEN];
SmppBindSlot *smpp_slot;
Settings	smpp_cfg;
MemoryContext smpp_pass_cxt;	/* outcomes of one pass */
List	   *smpp_outcomes = NIL;
static MemoryContext message_cxt;	/* OutMessages, until they are done */

static LinkState link_state = LINK_DOWN;
static pgsocket bind_sock = PGINVALID_SOCKET;
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
static TimestampTz last_claimed_at;	/* when a claim last returned messages */
static bool stopping = false;


static void link_down(const char *reason, bool quick);

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
	return s ? MemoryContextStrdup(smpp_pass_cxt, s) : NULL;
}

static Outcome *
add_outcome(OutcomeKind kind)
{
	MemoryContext old = MemoryContextSwitchTo(smpp_pass_cxt);
	Outcome    *o = palloc0(sizeof(Outcome));

	o->kind = kind;
	smpp_outcomes = lappend(smpp_outcomes, o);
	MemoryContextSwitchTo(old);
	return o;
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

void
SmppAnswerDeliver(uint32_t status, uint32_t sequence)
{
	uint8_t		buf[64];
	const char *error;
	int			n;

	if (bind_sock == PGINVALID_SOCKET)
		return;
	n = SmppBuildDeliverResp(buf, sizeof(buf), status, sequence, &error);
	if (n < 0)
		elog(ERROR, "could not build deliver_sm_resp: %s", error);
	queue_pdu(buf, n);
}

/* Write what the socket takes; false when the link broke. */
static bool
flush_output(void)
{
	while (outbuf.len > 0 && bind_sock != PGINVALID_SOCKET)
	{
		ssize_t		n = send(bind_sock, outbuf.data, outbuf.len, MSG_NOSIGNAL);

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

	pg_atomic_fetch_add_u64(&smpp_slot->reconnects, 1);
	SmppSlotSetState(smpp_slot, SMPP_STATE_CONNECTING);
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	snprintf(port, sizeof(port), "%d", smpp_cfg.port);
	rc = getaddrinfo(smpp_cfg.host, port, &hints, &res);
	if (rc != 0 || res == NULL)
	{
		if (res)
			freeaddrinfo(res);
		link_down(gai_strerror(rc), false);
		return;
	}
	bind_sock = socket(res->ai_family, SOCK_STREAM, 0);
	if (bind_sock < 0)
	{
		bind_sock = PGINVALID_SOCKET;
		freeaddrinfo(res);
		link_down(strerror(errno), false);
		return;
	}
	WorkerWatchSocket(PGINVALID_SOCKET, 0);
	(void) fcntl(bind_sock, F_SETFL, fcntl(bind_sock, F_GETFL) | O_NONBLOCK);
	(void) setsockopt(bind_sock, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	rc = connect(bind_sock, res->ai_addr, res->ai_addrlen);
	freeaddrinfo(res);
	if (rc != 0 && errno != EINPROGRESS)
	{
		link_down(strerror(errno), false);
		return;
	}
	link_state = LINK_CONNECTING;
	link_deadline = now + (int64) smpp_cfg.response_timeout_s * USECS_PER_SEC;
}

static void
send_bind(TimestampTz now)
{
	uint8_t		buf[256];
	const char *error;
	int			len;

	control_sequence = take_sequence();
	len = SmppBuildBindTransceiver(buf, sizeof(buf), control_sequence, smpp_cfg.system_id,
								   smpp_cfg.password, smpp_cfg.system_type, &error);
	if (len < 0)
	{
		link_down(error, false);
		return;
	}
	queue_pdu(buf, len);
	link_state = LINK_BINDING;
	link_deadline = now + (int64) smpp_cfg.response_timeout_s * USECS_PER_SEC;
	SmppSlotSetState(smpp_slot, SMPP_STATE_BINDING);
}

/* The connect finished (the socket became writable): bind, or fail. */
static void
connect_finished(TimestampTz now)
{
	int			err = 0;
	socklen_t	len = sizeof(err);

	if (getsockopt(bind_sock, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0)
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
	o->ids = MemoryContextAlloc(smpp_pass_cxt, sizeof(char *) * m->nsegs);
	for (i = 0; i < m->nsegs; i++)
		o->ids[i] = pass_strdup(m->ids[i]);
	m->done = true;
	pg_atomic_fetch_add_u64(&MyWorkerSlot->sent, 1);
}

/* Give a message back to the queue (no debit: it was paid once, at send). */
static void
message_retry(OutMessage *m, const char *code, const char *text)
{
	message_outcome(m, OUT_RETRY, code, text, smpp_cfg.retry_delay_s);
}

static void
window_release(WindowSlot *w)
{
	w->used = false;
	w->message->in_flight--;
	window_used--;
	pg_atomic_write_u32(&smpp_slot->in_flight, window_used);
	pg_atomic_write_u32(&MyWorkerSlot->in_flight, window_used);
}

static WindowSlot *
window_find(uint32_t sequence)
{
	int			i;

	for (i = 0; i < smpp_cfg.window; i++)
		if (window[i].used && window[i].sequence == sequence)
			return &window[i];
	return NULL;
}

/* Fill an OutMessage from the claimed row's fields and its parts. */
void
SmppMessageAdd(char **f, char **parts, int nparts, TimestampTz now)
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

	if (error == NULL && smpp_cfg.payload && nparts > 1)
	{
		uint8_t		buf[SMPP_PAYLOAD_MAX];
		int			n = SmppEncodeText(body, strlen(body), ucs2, smpp_cfg.gsm_packed, buf, sizeof(buf));

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
		if (!SmppEncodeParts(parts, nparts, ucs2, smpp_cfg.gsm_packed,
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
	return waiting < smpp_cfg.window;
}

/* Claim due messages when the bind has room for them. */
static void
maybe_claim(TimestampTz now, bool woken)
{
	int			claimed;

	if ((!woken && now < next_claim) || !room_to_claim())
		return;
	claimed = SmppClaim(now);
	if (claimed < 0)
	{
		next_claim = now + (int64) smpp_poll_ms * 1000;
		return;
	}
	pg_atomic_fetch_add_u64(&MyWorkerSlot->claimed, claimed);
	if (claimed > 0)
		last_claimed_at = now;
	/*
	 * A full batch means more may be due: claim again as soon as there is
	 * room. An empty claim right after busy ones may only mean that another
	 * claimer (the dispatcher's SKIP LOCKED scan) holds the queue's head for
	 * a moment: look again shortly rather than after a whole poll interval.
	 */
	if (claimed >= smpp_cfg.batch)
		next_claim = now;
	else if (now - last_claimed_at < USECS_PER_SEC)
		next_claim = now + Min(smpp_poll_ms, BUSY_CLAIM_RETRY_MS) * 1000;
	else
		next_claim = now + (int64) smpp_poll_ms * 1000;
}

/* ---- submitting */

static bool
take_token(TimestampTz now)
{
	if (smpp_cfg.max_per_second <= 0)
		return true;
	tokens = Min((double) smpp_cfg.max_per_second,
				 tokens + (now - tokens_at) / (double) USECS_PER_SEC * smpp_cfg.max_per_second);
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

	for (i = 0; i < smpp_cfg.window; i++)
		if (!window[i].used)
		{
			w = &window[i];
			break;
		}
	if (w == NULL)
		return false;

	memset(&s, 0, sizeof(s));
	s.sequence = take_sequence();
	s.system_type = smpp_cfg.service_type;
	s.source = m->source;
	s.source_ton = m->source_ton;
	s.source_npi = m->source_npi;
	s.destination = m->destination;
	s.data_coding = m->data_coding;
	s.registered_delivery = (uint8_t) smpp_cfg.registered_delivery;
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
	w->deadline = now + (int64) smpp_cfg.response_timeout_s * USECS_PER_SEC;
	window_used++;
	m->in_flight++;
	m->state[seg] = SEG_IN_FLIGHT;
	pg_atomic_fetch_add_u64(&smpp_slot->submitted, 1);
	pg_atomic_write_u32(&smpp_slot->in_flight, window_used);
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
			if (window_used >= smpp_cfg.window || !take_token(now))
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
		if (pg_atomic_read_u32(&smpp_slot->state) == SMPP_STATE_THROTTLED)
			SmppSlotSetState(smpp_slot, SMPP_STATE_BOUND);
		pg_atomic_fetch_add_u64(&smpp_slot->accepted, 1);
		if (m->accepted == m->nsegs)
			message_sent(m);
	}
	else if (status == SMPP_ESME_RTHROTTLED || status == SMPP_ESME_RMSGQFUL)
	{
		long		pause = (long) smpp_cfg.throttle_pause_ms << Min(throttle_streak, 8);

		m->state[seg] = SEG_WAITING;
		pause = Min(pause, THROTTLE_PAUSE_MAX_MS);
		if (paused_until < now + pause * 1000)
			paused_until = now + (int64) pause * 1000;
		throttle_streak++;
		pg_atomic_fetch_add_u64(&smpp_slot->throttled, 1);
		SmppSlotSetState(smpp_slot, SMPP_STATE_THROTTLED);
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
		pg_atomic_fetch_add_u64(&smpp_slot->rejected, 1);
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
				(errmsg("envoisms smpp bind \"%s\": unreadable deliver_sm refused", smpp_carrier_id),
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

		int			k;
		bool		known = false;

		if (d.message_state >= 1 && d.message_state <= 8)
			stat = states[d.message_state];
		else if (parsed)
			stat = r.stat;
		/* A stat word we cannot map would fail forever: answered, not recorded. */
		for (k = 1; k <= 8 && stat; k++)
			known |= strcmp(stat, states[k]) == 0;
		pg_atomic_fetch_add_u64(&smpp_slot->receipts, 1);
		if (id == NULL || !known)
		{
			ereport(WARNING,
					(errmsg("envoisms smpp bind \"%s\": delivery receipt without id or known state ignored",
							smpp_carrier_id),
					 errdetail("%s", !parsed && d.message_state < 0 ? error :
							   stat ? psprintf("Unknown stat \"%s\".", stat) : "No receipted_message_id or message_state.")));
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
										  (d.esm_class & SMPP_ESM_UDHI) != 0, smpp_cfg.gsm_packed,
										  &ref, &total, &seq);

		pg_atomic_fetch_add_u64(&smpp_slot->inbound, 1);
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
	SmppSlotSetState(smpp_slot, SMPP_STATE_BOUND);
	SmppSlotSetError(smpp_slot, "%s", "");
	ereport(LOG, (errmsg("envoisms smpp bind \"%s\": bound to %s:%d as \"%s\"",
						 smpp_carrier_id, smpp_cfg.host, smpp_cfg.port, smpp_cfg.system_id)));
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
				elog(DEBUG1, "envoisms smpp bind \"%s\": late submit_sm_resp %u ignored", smpp_carrier_id, h.sequence);
				return;
			}
			{
				char		id[SMPP_MESSAGE_ID_MAX + 1] = "";
				const char *error;

				if (h.status == SMPP_ESME_ROK && !SmppParseSubmitResp(pdu, len, id, &error))
					ereport(WARNING,
							(errmsg("envoisms smpp bind \"%s\": submit_sm_resp without a readable message id",
									smpp_carrier_id),
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
									 smpp_carrier_id, h.status, h.sequence)));
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
		n = recv(bind_sock, inbuf.data + inbuf.len, inbuf.maxlen - inbuf.len - 1, 0);
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
			if (bind_sock == PGINVALID_SOCKET)
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

	WorkerWatchSocket(PGINVALID_SOCKET, 0);	/* before the close: its number may come back */
	if (bind_sock != PGINVALID_SOCKET)
	{
		closesocket(bind_sock);
		bind_sock = PGINVALID_SOCKET;
	}
	if (link_state == LINK_BOUND || link_state == LINK_UNBINDING)
		ereport(LOG, (errmsg("envoisms smpp bind \"%s\": link down: %s", smpp_carrier_id, reason)));
	else
		ereport(LOG, (errmsg("envoisms smpp bind \"%s\": could not bind to %s:%d: %s",
							 smpp_carrier_id, smpp_cfg.host, smpp_cfg.port, reason)));
	if (strcmp(reason, "unbound") != 0)
		SmppSlotSetError(smpp_slot, "%s", reason);
	link_state = LINK_DOWN;
	inbuf.len = 0;
	outbuf.len = 0;
	enquire_sequence = 0;
	for (i = 0; i < smpp_cfg.window; i++)
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
		backoff_s = smpp_cfg.reconnect_min_s;
	else
		backoff_s = Min(backoff_s * 2, smpp_cfg.reconnect_max_s);
	next_connect = now + (int64) (quick ? smpp_cfg.reconnect_min_s : backoff_s) * USECS_PER_SEC;
	SmppSlotSetState(smpp_slot, stopping ? SMPP_STATE_UNBINDING : SMPP_STATE_BACKOFF);
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
	for (i = 0; i < smpp_cfg.window; i++)
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
		pg_atomic_fetch_add_u64(&smpp_slot->timeouts, 1);
		timed_out = true;
		if (!m->done)
		{
			char		text[128];

			snprintf(text, sizeof(text), "no submit_sm_resp within %d s", smpp_cfg.response_timeout_s);
			message_retry(m, "SMPP_TIMEOUT", text);
		}
		maybe_free(m);
	}
	pg_atomic_write_u32(&smpp_slot->in_flight, window_used);
	/* A silent SMSC may be a dead link: ask now. */
	if (timed_out && enquire_sequence == 0)
		next_enquire = now;
	if (enquire_sequence == 0 && now >= next_enquire)
	{
		enquire_sequence = take_sequence();
		queue_empty_pdu(SMPP_ENQUIRE_LINK, SMPP_ESME_ROK, enquire_sequence);
		enquire_deadline = now + (int64) smpp_cfg.response_timeout_s * USECS_PER_SEC;
		next_enquire = now + (int64) smpp_cfg.enquire_link_s * USECS_PER_SEC;
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
			for (i = 0; i < smpp_cfg.window; i++)
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
			if (waiting && window_used < smpp_cfg.window)
			{
				if (paused_until > now)
					EARLIER(paused_until);
				else if (smpp_cfg.max_per_second > 0 && tokens < 1.0)
					EARLIER(now + (int64) ((1.0 - tokens) / smpp_cfg.max_per_second * USECS_PER_SEC) + 1000);
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
	SmppRecordOutcomes();
	flush_output();
	ereport(LOG, (errmsg("envoisms smpp bind \"%s\": stopped", smpp_carrier_id)));
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
		SmppSlotSetState(smpp_slot, SMPP_STATE_UNBINDING);
	}
	else if (link_state != LINK_UNBINDING)
		link_down("stopping", true);
}

void
SmppBindMain(Datum arg)
{
	int			index = DatumGetInt32(arg);
	bool		woken = true;

	char		name[SMPP_CARRIER_ID_LEN + 16];

	strlcpy(smpp_carrier_id, MyBgworkerEntry->bgw_extra, sizeof(smpp_carrier_id));
	snprintf(name, sizeof(name), "envoisms smpp %s", smpp_carrier_id);
	/* Signals, database, and a WORKER_SMPP slot: commits of sends wake us. */
	WorkerAttach(WORKER_SMPP, index, name);
	smpp_slot = SmppSlotAttach(index, smpp_carrier_id);

	message_cxt = AllocSetContextCreate(TopMemoryContext, "envoisms smpp messages", ALLOCSET_DEFAULT_SIZES);
	smpp_pass_cxt = AllocSetContextCreate(TopMemoryContext, "envoisms smpp pass", ALLOCSET_DEFAULT_SIZES);
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		initStringInfo(&inbuf);
		initStringInfo(&outbuf);
		MemoryContextSwitchTo(old);
	}

	if (!SmppLoadSettings())
	{
		/* Invalid or vanished: wait for the supervisor to stop us. */
		SmppSlotSetState(smpp_slot, SMPP_STATE_INVALID_CONFIG);
		while (!WorkerStopping())
			WorkerWait(-1);
		proc_exit(0);
	}
	window = MemoryContextAllocZero(TopMemoryContext, sizeof(WindowSlot) * smpp_cfg.window);
	tokens = smpp_cfg.max_per_second;
	tokens_at = GetCurrentTimestamp();
	SmppReleaseLeases();
	next_connect = GetCurrentTimestamp();

	for (;;)
	{
		TimestampTz now = GetCurrentTimestamp();
		int			events;
		int			woke;

		CHECK_FOR_INTERRUPTS();
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
		SmppRecordOutcomes();
		if (!flush_output())
			continue;

		events = WL_SOCKET_READABLE;
		if (outbuf.len > 0 || link_state == LINK_CONNECTING)
			events |= WL_SOCKET_WRITEABLE;
		/* the worker's one wait (worker_common.c): latch, this socket, the next deadline */
		WorkerWatchSocket(bind_sock, events);
		woke = WorkerWait(next_timeout(GetCurrentTimestamp()));
		woken = (woke & WORKER_WOKE_LATCH) != 0;
		now = GetCurrentTimestamp();
		if (bind_sock != PGINVALID_SOCKET && link_state == LINK_CONNECTING && (woke & WORKER_WOKE_WRITABLE))
			connect_finished(now);
		if (bind_sock != PGINVALID_SOCKET && link_state != LINK_CONNECTING && (woke & WORKER_WOKE_READABLE))
			read_input(now);
	}
}
