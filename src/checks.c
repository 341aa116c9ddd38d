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
 *
 * And a field rule of every send, checked here for the same reason:
 *
 *   sender_id_valid(sender)  the contract's sender id: a number of 3 to 15
 *       digits (an optional leading +), or 1 to 11 characters of letters,
 *       digits, space . _ & - that start with a letter or digit and hold at
 *       least one letter. check_sender_id() raises the error that names the
 *       field; with two regular expressions and its own search_path it cost
 *       a twentieth of a send.
 */
#include "envoisms.h"

#include "utils/numeric.h"

PG_FUNCTION_INFO_V1(message_charge_valid);
PG_FUNCTION_INFO_V1(sender_id_valid);

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

/* sender_id_valid(sender) — a number of 3 to 15 digits, or an alphanumeric id of 1 to 11 characters. */
Datum
sender_id_valid(PG_FUNCTION_ARGS)
{
	text	   *sender = PG_GETARG_TEXT_PP(0);
	const char *s = VARDATA_ANY(sender);
	int			len = VARSIZE_ANY_EXHDR(sender);
	int			start = (len > 0 && s[0] == '+') ? 1 : 0;
	bool		digits = len - start >= 3 && len - start <= 15;
	bool		letter = false;

	for (int i = start; i < len && digits; i++)
		digits = envoisms_is_digit(s[i]);
	if (digits)
		PG_RETURN_BOOL(true);
	if (len < 1 || len > 11 || !(envoisms_is_letter(s[0]) || envoisms_is_digit(s[0])))
		PG_RETURN_BOOL(false);
	for (int i = 0; i < len; i++)
	{
		if (envoisms_is_letter(s[i]))
			letter = true;
		else if (!envoisms_is_digit(s[i]) && s[i] != ' ' && s[i] != '.' && s[i] != '_' &&
				 s[i] != '&' && s[i] != '-')
			PG_RETURN_BOOL(false);
	}
	PG_RETURN_BOOL(letter);
}
