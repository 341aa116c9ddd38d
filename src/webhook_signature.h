/*
 * webhook_signature.h — the signatures of a webhook delivery
 * (webhook_signature.c): what the webhook worker puts into the headers of
 * each POST, computed at send time from the webhook's secret.
 */
#ifndef ENVOISMS_WEBHOOK_SIGNATURE_H
#define ENVOISMS_WEBHOOK_SIGNATURE_H

#include "envoisms.h"

typedef struct WebhookSignature
{
	/* X-EnvoiSMS.ma-Signature: "sha256=<hex>", or "t=<unix>,v1=<hex>" (palloc'd) */
	char	   *contract;
	/* webhook-signature after "v1,": Standard Webhooks' base64 HMAC */
	char		standard[64];
} WebhookSignature;

/* Sign the payload (len bytes) of event event_id at Unix time ts with a webhook's secret. */
extern void WebhookSign(const char *secret, bool timestamped, const char *event_id,
						const char *payload, size_t len, long ts, WebhookSignature *out);

#endif							/* ENVOISMS_WEBHOOK_SIGNATURE_H */
