/*
 * carrier_sandbox.c — the built-in sandbox carrier: no network. Sandbox
 * messages (env_test_ keys) only ever come here (envoisms.route_carrier).
 * A submit is accepted at once with the reference "sbx_<message id>"; the
 * delivery report follows envoisms.sandbox_delivery_delay later
 * (envoisms.sandbox_deliver_due, run by the dispatcher), so webhooks can be
 * tested end to end. Magic numbers (envoisms.sandbox_magic_numbers(),
 * docs/workers.md) simulate the other outcomes: +212600000001 delivery
 * fails, +212600000002 expires, +212600000003 is rejected at submit,
 * +212600000004 fails transiently once and is retried after 1 s.
 */
#include "carrier.h"

/* Decide a sandbox message at once: it never needs a transfer. */
static HttpTransfer *
sandbox_prepare(const DispatchItem *item, CarrierResult *result)
{
	if (strcmp(item->to_number, "+212600000003") == 0)
		CarrierFailed(result, "SANDBOX_REJECTED", "sandbox magic number: the carrier rejected the number");
	else if (strcmp(item->to_number, "+212600000004") == 0 && item->attempts <= 1)
		CarrierRetryAfter(result, "SANDBOX_UNAVAILABLE",
						  "sandbox magic number: the carrier was unavailable, retrying", 1000);
	else
		CarrierSent(result, psprintf("sbx_%s", item->message_id));
	return NULL;
}

const CarrierOps SandboxCarrier = {
	.kind = "sandbox",
	.prepare = sandbox_prepare,
	.finish = NULL,
	.reports_from_dispatcher = true,
};
