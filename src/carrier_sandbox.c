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

/* Submit one message to the sandbox: record its outcome. */
void
SandboxSubmit(DispatchItem *item)
{
	char		ref[128];

	if (strcmp(item->to_number, "+212600000003") == 0)
	{
		DispatchOutcome(item, DISPATCH_FAILED, NULL, "SANDBOX_REJECTED",
						"sandbox magic number: the carrier rejected the number", 0);
		return;
	}
	if (strcmp(item->to_number, "+212600000004") == 0 && item->attempts <= 1)
	{
		DispatchOutcome(item, DISPATCH_RETRY, NULL, "SANDBOX_UNAVAILABLE",
						"sandbox magic number: the carrier was unavailable, retrying", 1000);
		return;
	}
	snprintf(ref, sizeof(ref), "sbx_%s", item->message_id);
	DispatchOutcome(item, DISPATCH_SENT, ref, NULL, NULL, 0);
}
