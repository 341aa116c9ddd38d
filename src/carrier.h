/*
 * carrier.h — the interface between the dispatcher (worker_dispatch.c) and
 * the carriers it sends messages through (carrier_*.c).
 *
 * A carrier is a table of operations, CarrierOps, found by its kind (the
 * kind column of envoisms.carriers) in the one table of carrier.c. For
 * each claimed message the dispatcher calls prepare(): a carrier without
 * network (the sandbox) decides at once and fills the result; a network
 * carrier returns the HTTP transfer to run, or NULL with the result filled
 * when it cannot build one (a bad config). When the transfer has finished,
 * finish() reads the answer into the result. The dispatcher then records
 * the result (a row of envoisms.dispatch_record) and counts it. A carrier
 * never calls back into the dispatcher: it fills a CarrierResult, and what
 * the dispatcher owns (the retry backoff, the outcome batch, the counters)
 * stays there.
 *
 * Memory: what a carrier puts into a result (reference, error texts) is
 * palloc'd in the current memory context, the dispatcher's per-pass one,
 * and is copied when the dispatcher records it.
 *
 * The smpp kind has no CarrierOps: the SMPP connector runs its own workers
 * (worker_smpp*.c), with its codec in smpp_pdu.c.
 */
#ifndef ENVOISMS_CARRIER_H
#define ENVOISMS_CARRIER_H

#include "envoisms.h"

#include "datatype/timestamp.h"

#include "http_pool.h"
#include "json_text.h"

/* Timeout of one carrier request (envoisms.carrier_timeout). */
extern int	carrier_timeout_ms;

/* A claimed message, as envoisms.dispatch_claim returns it. */
typedef struct DispatchItem
{
	char	   *account_id;
	char	   *message_id;
	char	   *carrier_id;
	char	   *carrier_kind;
	char	   *to_number;
	char	   *sender_id;
	char	   *channel;
	char	   *body;
	char	   *encoding;
	int			segments;
	char	   *buttons;		/* JSON text or NULL */
	char	   *metadata;		/* JSON text or NULL */
	int			attempts;
	TimestampTz expires_at;
	char	   *config;			/* the carrier's config, JSON text */
	struct DispatchItem *next;	/* the dispatcher's list of one claim */
} DispatchItem;

/* What becomes of a message (the op of envoisms.dispatch_record). */
typedef enum CarrierOutcome
{
	CARRIER_RELEASE,			/* its lease given back without an attempt */
	CARRIER_SENT,				/* accepted; carrier_ref names it */
	CARRIER_RETRY,				/* a transient failure: queued again later */
	CARRIER_FAILED,				/* a permanent failure: failed, refunded */
} CarrierOutcome;

/* A carrier's verdict on one message, which the dispatcher records. */
typedef struct CarrierResult
{
	CarrierOutcome outcome;
	const char *carrier_ref;	/* SENT: the carrier's id for the message */
	const char *error_code;		/* RETRY, FAILED */
	const char *error_message;
	/*
	 * RETRY: wait retry_after_ms before the next attempt or, with backoff,
	 * the dispatcher's backoff for the message's attempt number
	 * (envoisms.dispatch_retry_base, _max, with jitter) if that is longer.
	 */
	long		retry_after_ms;
	bool		backoff;
} CarrierResult;

/* Fill a whole result (the helpers below say it shorter). */
static inline void
CarrierResultSet(CarrierResult *result, CarrierOutcome outcome, const char *carrier_ref,
				 const char *error_code, const char *error_message,
				 long retry_after_ms, bool backoff)
{
	result->outcome = outcome;
	result->carrier_ref = carrier_ref;
	result->error_code = error_code;
	result->error_message = error_message;
	result->retry_after_ms = retry_after_ms;
	result->backoff = backoff;
}

/* The carrier accepted the message as carrier_ref. */
static inline void
CarrierSent(CarrierResult *result, const char *carrier_ref)
{
	CarrierResultSet(result, CARRIER_SENT, carrier_ref, NULL, NULL, 0, false);
}

/* The carrier refused the message for good. */
static inline void
CarrierFailed(CarrierResult *result, const char *error_code, const char *error_message)
{
	CarrierResultSet(result, CARRIER_FAILED, NULL, error_code, error_message, 0, false);
}

/* Try again after exactly delay_ms. */
static inline void
CarrierRetryAfter(CarrierResult *result, const char *error_code, const char *error_message,
				  long delay_ms)
{
	CarrierResultSet(result, CARRIER_RETRY, NULL, error_code, error_message, delay_ms, false);
}

/* Try again after the dispatcher's backoff, and not before at_least_ms. */
static inline void
CarrierRetryBackoff(CarrierResult *result, const char *error_code, const char *error_message,
					long at_least_ms)
{
	CarrierResultSet(result, CARRIER_RETRY, NULL, error_code, error_message, at_least_ms, true);
}

/* One kind of carrier, as the dispatcher drives it. */
typedef struct CarrierOps
{
	const char *kind;			/* envoisms.carriers.kind */

	/*
	 * The request of a message, which the dispatcher runs; or NULL with
	 * *result filled, when the outcome is known without one.
	 */
	HttpTransfer *(*prepare) (const DispatchItem *item, CarrierResult *result);

	/* Read a finished transfer into *result (unused when prepare never returns one). */
	void		(*finish) (const DispatchItem *item, const HttpTransfer *t, CarrierResult *result);

	/*
	 * Its delivery reports come from the dispatcher itself,
	 * envoisms.sandbox_delivery_delay after sent (the sandbox).
	 */
	bool		reports_from_dispatcher;
} CarrierOps;

extern const CarrierOps SandboxCarrier;	/* carrier_sandbox.c */
extern const CarrierOps HttpCarrier;	/* carrier_http.c */
extern const CarrierOps WhatsappCarrier;	/* carrier_whatsapp.c */

/* The carrier of a kind, or NULL when the dispatcher has none for it. */
extern const CarrierOps *CarrierFind(const char *kind);

/* Every kind CarrierFind knows, as a text[] literal ("{sandbox,http,…}"). */
extern const char *CarrierKinds(void);

/*
 * The result of a transfer that did not succeed, common to the HTTP
 * carriers: transport errors, 408, 429, 3xx and 5xx are retried (honouring
 * Retry-After), any other status fails the message. error_code and
 * error_message, when not NULL, are what the carrier read from the reply.
 */
extern void CarrierClassifyFailure(const HttpTransfer *t, const char *error_code,
								   const char *error_message, CarrierResult *result);

#endif							/* ENVOISMS_CARRIER_H */
