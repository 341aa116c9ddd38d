/*
 * carrier.c — the table of the dispatcher's carriers, and what the HTTP
 * carriers share: how a failed transfer becomes a result.
 *
 * The table is the one place that lists the kinds the dispatcher serves:
 * the dispatcher claims exactly these kinds (CarrierKinds) and drives each
 * message through the CarrierOps of its kind (CarrierFind). A new carrier
 * is a carrier_<kind>.c that defines its CarrierOps, plus a line here.
 */
#include "carrier.h"

#include "lib/stringinfo.h"

/* Set by envoisms.carrier_timeout (defined by DispatchInit). */
int			carrier_timeout_ms = 10000;

static const CarrierOps *const carriers[] = {
	&SandboxCarrier,
	&HttpCarrier,
	&WhatsappCarrier,
};

/* The carrier of a kind, or NULL when the dispatcher has none for it. */
const CarrierOps *
CarrierFind(const char *kind)
{
	for (int i = 0; i < (int) lengthof(carriers); i++)
		if (strcmp(carriers[i]->kind, kind) == 0)
			return carriers[i];
	return NULL;
}

/* Every kind of the table as a text[] literal, built once. */
const char *
CarrierKinds(void)
{
	static char kinds[128];

	if (kinds[0] == '\0')
	{
		StringInfoData buf;

		initStringInfo(&buf);
		appendStringInfoChar(&buf, '{');
		for (int i = 0; i < (int) lengthof(carriers); i++)
			appendStringInfo(&buf, "%s%s", i > 0 ? "," : "", carriers[i]->kind);
		appendStringInfoChar(&buf, '}');
		if (buf.len >= (int) sizeof(kinds))
			elog(ERROR, "the carrier kinds do not fit in %zu bytes", sizeof(kinds));
		memcpy(kinds, buf.data, buf.len + 1);
		pfree(buf.data);
	}
	return kinds;
}

/* The result of a transfer that did not succeed (see carrier.h). */
void
CarrierClassifyFailure(const HttpTransfer *t, const char *code, const char *message,
					   CarrierResult *result)
{
	long		status = t->http_status;

	if (t->result != CURLE_OK)
		CarrierRetryBackoff(result,
							t->result == CURLE_OPERATION_TIMEDOUT ? "CARRIER_TIMEOUT" : "CARRIER_UNREACHABLE",
							pstrdup(HttpTransferError(t)), 0);
	else if (status == 408 || status == 429 || status >= 500 || (status >= 300 && status < 400) || status < 200)
		CarrierRetryBackoff(result, code ? code : psprintf("CARRIER_HTTP_%ld", status),
							message ? message : psprintf("carrier answered HTTP %ld", status),
							t->retry_after_s > 0 ? Min(t->retry_after_s, 3600L) * 1000L : 0);
	else
		CarrierFailed(result, code ? code : "CARRIER_REJECTED",
					  message ? message : psprintf("carrier rejected the message (HTTP %ld)", status));
}
