/*
 * webhook_signature.c — how a webhook delivery is signed. The webhook
 * worker (worker_webhooks.c) sends the exact payload queued with the event
 * (same event id and bytes on every retry) with these headers, signed at
 * send time:
 *   X-EnvoiSMS.ma-Signature: sha256=<hex HMAC-SHA256(secret, raw body)>
 *       the contract's scheme; the key is the whole secret string as shown
 *       to the customer ("whsec_…"), as the contract's Node snippet uses it;
 *       a webhook whose signature_format is "timestamped" gets instead
 *       t=<unix>,v1=<hex HMAC-SHA256(secret, "<unix>.<raw body>")>, the
 *       official SDKs' other form (they check t within 300 s);
 *   X-EnvoiSMS-Signature: the same value, under the name the official SDKs
 *       and receivers written from their READMEs read (a header name with a
 *       dot is dropped by nginx and others by default);
 *   X-EnvoiSMS.ma-Timestamp: <unix seconds> (replay protection);
 *   webhook-id: <event id>, webhook-timestamp: <unix seconds>,
 *   webhook-signature: v1,<base64 HMAC-SHA256(key, "id.timestamp.body")>
 *       Standard Webhooks; as that specification says, the key is the
 *       base64-decoded part after "whsec_" when it decodes, else the raw
 *       secret bytes.
 */
#include "envoisms.h"

#include "common/base64.h"
#include "lib/stringinfo.h"

#include "crypto.h"
#include "webhook_signature.h"

/* The Standard Webhooks key of a secret (see the file comment); its length. */
static int
standard_key(const char *secret, char *out, int outlen)
{
	if (strncmp(secret, "whsec_", 6) == 0)
	{
		const char *b64 = secret + 6;
		int			len = strlen(b64);

		if (len > 0 && pg_b64_dec_len(len) <= outlen)
		{
			int			n = pg_b64_decode(b64, len, out, outlen);

			if (n > 0)
				return n;
		}
	}
	{
		int			len = Min((int) strlen(secret), outlen);

		memcpy(out, secret, len);
		return len;
	}
}

/* Sign a delivery's payload both ways (see the file comment). */
void
WebhookSign(const char *secret, bool timestamped, const char *event_id,
			const char *payload, size_t len, long ts, WebhookSignature *out)
{
	char		hex[65];
	unsigned char mac[32];
	char		key[512];
	int			keylen;
	StringInfoData signed_content;
	int			b64len;

	if (timestamped)
	{
		char	   *content = psprintf("%ld.%s", ts, payload);

		EnvoismsHmacSha256Hex(secret, strlen(secret), content, strlen(content), hex);
		out->contract = psprintf("t=%ld,v1=%s", ts, hex);
		pfree(content);
	}
	else
	{
		EnvoismsHmacSha256Hex(secret, strlen(secret), payload, len, hex);
		out->contract = psprintf("sha256=%s", hex);
	}
	keylen = standard_key(secret, key, sizeof(key));
	initStringInfo(&signed_content);
	appendStringInfo(&signed_content, "%s.%ld.", event_id, ts);
	appendBinaryStringInfo(&signed_content, payload, len);
	EnvoismsHmacSha256(key, keylen, signed_content.data, signed_content.len, mac);
	pfree(signed_content.data);
	b64len = pg_b64_encode((const char *) mac, 32, out->standard, sizeof(out->standard) - 1);
	out->standard[Max(b64len, 0)] = '\0';
}
