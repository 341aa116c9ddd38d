/*
 * smpp_receipt.c — parser of the text form of SMPP delivery receipts.
 *
 * The format is only "suggested" by SMPP 3.4 (appendix B), so SMSCs vary:
 * keys in another case, fields missing or reordered, submit_date with an
 * underscore, text with spaces and colons. The parser is therefore keyed,
 * not positional: it finds every known key at the start of a word, takes a
 * field's value up to the next key, and lets "text:" run to the end. It is
 * strict about what it returns (id and stat present, numbers numeric,
 * nothing before the first key) so a garbled receipt fails with a sentence
 * instead of updating the wrong message.
 *
 * It works on a length-bounded byte buffer and never allocates: the SMPP
 * worker feeds it short_message bytes straight from the wire, and the
 * fuzz test feeds it truncated and malformed texts through SQL.
 */
#include "envoisms.h"

#include <ctype.h>

#include "mb/pg_wchar.h"

#include "smpp_receipt.h"

typedef enum ReceiptField
{
	FIELD_ID,
	FIELD_SUB,
	FIELD_DLVRD,
	FIELD_SUBMIT_DATE,
	FIELD_DONE_DATE,
	FIELD_STAT,
	FIELD_ERR,
	FIELD_TEXT,
	FIELD_COUNT
} ReceiptField;

typedef struct ReceiptKey
{
	const char *key;
	ReceiptField field;
} ReceiptKey;

static const ReceiptKey receipt_keys[] = {
	{"id:", FIELD_ID},
	{"sub:", FIELD_SUB},
	{"dlvrd:", FIELD_DLVRD},
	{"submit date:", FIELD_SUBMIT_DATE},
	{"submit_date:", FIELD_SUBMIT_DATE},
	{"done date:", FIELD_DONE_DATE},
	{"done_date:", FIELD_DONE_DATE},
	{"stat:", FIELD_STAT},
	{"err:", FIELD_ERR},
	{"text:", FIELD_TEXT},
};

#define RECEIPT_KEY_COUNT (sizeof(receipt_keys) / sizeof(receipt_keys[0]))

/* The key starting at s[pos] (a word start), its length in *keylen, or -1. */
static int
key_at(const char *s, int n, int pos, int *keylen)
{
	size_t		k;

	if (pos > 0 && !isspace((unsigned char) s[pos - 1]))
		return -1;
	for (k = 0; k < RECEIPT_KEY_COUNT; k++)
	{
		int			len = (int) strlen(receipt_keys[k].key);

		if (pos + len <= n && pg_strncasecmp(s + pos, receipt_keys[k].key, len) == 0)
		{
			*keylen = len;
			return (int) k;
		}
	}
	return -1;
}

/* Copy s[start..end) into out (size outsize) unless too long. */
static bool
copy_value(const char *s, int start, int end, char *out, int outsize)
{
	if (end - start >= outsize)
		return false;
	memcpy(out, s + start, end - start);
	out[end - start] = '\0';
	return true;
}

static bool
all_digits(const char *v)
{
	if (*v == '\0')
		return false;
	for (; *v; v++)
		if (!isdigit((unsigned char) *v))
			return false;
	return true;
}

static bool
parse_count(const char *s, int start, int end, int *out)
{
	char		buf[10];

	if (!copy_value(s, start, end, buf, sizeof(buf)) || !all_digits(buf))
		return false;
	*out = atoi(buf);
	return true;
}

bool
SmppParseReceipt(const char *s, int len, SmppReceipt *r, const char **error)
{
	int			n = 0;
	int			starts[FIELD_COUNT];	/* value start of each field, -1 absent */
	int			ends[FIELD_COUNT];
	int			current = -1;	/* field whose value is being read */
	int			pos;
	int			i;

	memset(r, 0, sizeof(*r));
	r->sub = -1;
	r->dlvrd = -1;
	for (i = 0; i < FIELD_COUNT; i++)
		starts[i] = ends[i] = -1;
	if (s == NULL || len <= 0)
	{
		*error = "The receipt is empty.";
		return false;
	}
	while (n < len && s[n] != '\0')
		n++;

	for (pos = 0; pos < n;)
	{
		int			keylen;
		int			k = (current == FIELD_TEXT) ? -1 : key_at(s, n, pos, &keylen);

		if (k < 0)
		{
			if (current < 0 && !isspace((unsigned char) s[pos]))
			{
				*error = "The receipt does not start with a field such as \"id:\".";
				return false;
			}
			pos++;
			continue;
		}
		if (current >= 0)
			ends[current] = pos;
		current = receipt_keys[k].field;
		if (starts[current] >= 0)
		{
			*error = "The receipt repeats a field.";
			return false;
		}
		pos += keylen;
		starts[current] = pos;
	}
	if (current >= 0)
		ends[current] = n;

	/* Trim the blanks around every value. */
	for (i = 0; i < FIELD_COUNT; i++)
	{
		if (starts[i] < 0)
			continue;
		while (starts[i] < ends[i] && isspace((unsigned char) s[starts[i]]))
			starts[i]++;
		while (ends[i] > starts[i] && isspace((unsigned char) s[ends[i] - 1]))
			ends[i]--;
	}

	if (starts[FIELD_ID] < 0 || starts[FIELD_ID] == ends[FIELD_ID])
	{
		*error = "The receipt has no \"id:\" value.";
		return false;
	}
	if (!copy_value(s, starts[FIELD_ID], ends[FIELD_ID], r->id, sizeof(r->id)))
	{
		*error = "The receipt id is longer than 64 characters.";
		return false;
	}
	for (i = 0; r->id[i]; i++)
		if (!isgraph((unsigned char) r->id[i]))
		{
			*error = "The receipt id contains a blank or a control character.";
			return false;
		}

	if (starts[FIELD_STAT] < 0 || starts[FIELD_STAT] == ends[FIELD_STAT])
	{
		*error = "The receipt has no \"stat:\" value.";
		return false;
	}
	if (!copy_value(s, starts[FIELD_STAT], ends[FIELD_STAT], r->stat, sizeof(r->stat)))
	{
		*error = "The receipt stat is longer than 7 characters.";
		return false;
	}
	for (i = 0; r->stat[i]; i++)
	{
		if (!isalpha((unsigned char) r->stat[i]))
		{
			*error = "The receipt stat is not a word such as DELIVRD.";
			return false;
		}
		r->stat[i] = pg_ascii_toupper((unsigned char) r->stat[i]);
	}

	if (starts[FIELD_SUB] >= 0 && !parse_count(s, starts[FIELD_SUB], ends[FIELD_SUB], &r->sub))
	{
		*error = "The receipt sub is not a number.";
		return false;
	}
	if (starts[FIELD_DLVRD] >= 0 && !parse_count(s, starts[FIELD_DLVRD], ends[FIELD_DLVRD], &r->dlvrd))
	{
		*error = "The receipt dlvrd is not a number.";
		return false;
	}
	if (starts[FIELD_SUBMIT_DATE] >= 0 &&
		(!copy_value(s, starts[FIELD_SUBMIT_DATE], ends[FIELD_SUBMIT_DATE],
					 r->submit_date, sizeof(r->submit_date)) || !all_digits(r->submit_date)))
	{
		*error = "The receipt submit date is not 1 to 16 digits.";
		return false;
	}
	if (starts[FIELD_DONE_DATE] >= 0 &&
		(!copy_value(s, starts[FIELD_DONE_DATE], ends[FIELD_DONE_DATE],
					 r->done_date, sizeof(r->done_date)) || !all_digits(r->done_date)))
	{
		*error = "The receipt done date is not 1 to 16 digits.";
		return false;
	}
	if (starts[FIELD_ERR] >= 0)
	{
		if (!copy_value(s, starts[FIELD_ERR], ends[FIELD_ERR], r->err, sizeof(r->err)))
		{
			*error = "The receipt err is longer than 16 characters.";
			return false;
		}
		for (i = 0; r->err[i]; i++)
			if (!isgraph((unsigned char) r->err[i]))
			{
				*error = "The receipt err contains a blank or a control character.";
				return false;
			}
	}
	if (starts[FIELD_TEXT] >= 0)
	{
		r->has_text = true;
		/* The text is informative only: cut it rather than fail. */
		copy_value(s, starts[FIELD_TEXT],
				   Min(ends[FIELD_TEXT], starts[FIELD_TEXT] + SMPP_RECEIPT_TEXT_MAX),
				   r->text, sizeof(r->text));
	}
	*error = NULL;
	return true;
}

PG_FUNCTION_INFO_V1(smpp_parse_receipt);

/*
 * smpp_parse_receipt(text) → one row (id, sub, dlvrd, submit_date,
 * done_date, stat, err, txt); a malformed receipt is an error saying why.
 */
Datum
smpp_parse_receipt(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	text	   *input = PG_GETARG_TEXT_PP(0);
	SmppReceipt r;
	const char *error;
	Datum		values[8];
	bool		nulls[8] = {false, false, false, false, false, false, false, false};

	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);

	if (!SmppParseReceipt(VARDATA_ANY(input), VARSIZE_ANY_EXHDR(input), &r, &error))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("malformed SMPP delivery receipt"),
				 errdetail("%s", error)));

	values[0] = CStringGetTextDatum(r.id);
	values[1] = Int32GetDatum(r.sub);
	nulls[1] = r.sub < 0;
	values[2] = Int32GetDatum(r.dlvrd);
	nulls[2] = r.dlvrd < 0;
	values[3] = CStringGetTextDatum(r.submit_date);
	nulls[3] = r.submit_date[0] == '\0';
	values[4] = CStringGetTextDatum(r.done_date);
	nulls[4] = r.done_date[0] == '\0';
	values[5] = CStringGetTextDatum(r.stat);
	values[6] = CStringGetTextDatum(r.err);
	nulls[6] = r.err[0] == '\0';
	nulls[7] = !r.has_text;
	if (r.has_text)
	{
		/* The text was cut at 255 bytes: never in the middle of a character. */
		int			textlen = strlen(r.text);

		values[7] = PointerGetDatum(cstring_to_text_with_len(r.text,
															 pg_mbcliplen(r.text, textlen, textlen)));
	}
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	return (Datum) 0;
}
