/*
 * carrier.h — the carriers the dispatcher sends messages through
 * (carrier_*.c) and the messages it hands them.
 */
#ifndef ENVOISMS_CARRIER_H
#define ENVOISMS_CARRIER_H

#include "envoisms.h"

#include "datatype/timestamp.h"

#include "http_pool.h"
#include "json_text.h"

/* Timeout of one carrier request (envoisms.carrier_timeout). */
extern int	carrier_timeout_ms;

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
	HttpTransfer *transfer;
	struct DispatchItem *next;
} DispatchItem;

/* An outcome the dispatcher records for a message. */
typedef enum DispatchOp
{
	DISPATCH_SENT,
	DISPATCH_RETRY,
	DISPATCH_FAILED,
	DISPATCH_RELEASE,
} DispatchOp;

/* Append one outcome to the dispatcher's batch (worker_dispatch.c). */
extern void DispatchOutcome(DispatchItem *item, DispatchOp op, const char *carrier_ref,
							const char *error_code, const char *error_message, long delay_ms);

/* The retry delay for a message's attempt number (backoff with jitter). */
extern long DispatchBackoff(int attempts);

extern void SandboxSubmit(DispatchItem *item);
extern HttpTransfer *HttpCarrierPrepare(DispatchItem *item);
extern void HttpCarrierFinish(DispatchItem *item, HttpTransfer *t);
extern HttpTransfer *WhatsappPrepare(DispatchItem *item);
extern void WhatsappFinish(DispatchItem *item, HttpTransfer *t);

/* Classify a finished carrier transfer: common to http and whatsapp. */
extern void CarrierClassifyFailure(DispatchItem *item, HttpTransfer *t, const char *error_code_from_body,
								   const char *error_message_from_body);

#endif							/* ENVOISMS_CARRIER_H */
