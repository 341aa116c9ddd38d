/*
 * checks.c — table rules checked by a C function.
 *
 * PostgreSQL keeps no plan of a table CHECK between statements: every INSERT
 * and every UPDATE of the table reads the rule back from its stored text and
 * plans it again. On messages (one insert per send, an update per status
 * change) a rule over numerics and booleans cost 5% of a send; a call of one
 * C function is the cheapest expression to read and plan. The rule stays a
 * CHECK, so it holds for every writer.
 *
 *   message_charge_valid(charged_mad, refunded_mad, sandbox)  a refund never
 *       exceeds the charge, and a sandbox message is never charged.
 */
#include "envoisms.h"

#include "utils/numeric.h"

PG_FUNCTION_INFO_V1(message_charge_valid);

/* message_charge_valid(charged_mad, refunded_mad, sandbox) — refunded <= charged, and nothing charged in the sandbox. */
Datum
message_charge_valid(PG_FUNCTION_ARGS)
{
	Datum		charged = PG_GETARG_DATUM(0);
	Datum		refunded = PG_GETARG_DATUM(1);
	bool		sandbox = PG_GETARG_BOOL(2);

	if (DatumGetInt32(DirectFunctionCall2(numeric_cmp, refunded, charged)) > 0)
		PG_RETURN_BOOL(false);
	if (sandbox &&
		DatumGetInt32(DirectFunctionCall2(numeric_cmp, charged,
										  NumericGetDatum(int64_to_numeric(0)))) != 0)
		PG_RETURN_BOOL(false);
	PG_RETURN_BOOL(true);
}
