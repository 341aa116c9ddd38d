/*
 * segments.c — SMS encoding detection, segment counting and splitting.
 *
 * Rules (GSM 03.38 / 3GPP TS 23.040):
 * - A text is GSM-7 when every character is in the basic table or the
 *   extension table; extension characters (^ { } \ [ ~ ] | € and form feed)
 *   are sent as ESC + char and cost two septets. Otherwise it is UCS-2, where
 *   a character outside the BMP is a surrogate pair and costs two units.
 * - One part holds 160 septets (GSM-7) or 70 units (UCS-2). A longer text is
 *   sent as concatenated parts whose user-data header leaves 153 septets or
 *   67 units each. A part never ends between the two halves of an escape
 *   pair or of a surrogate pair: such a character moves whole to the next
 *   part, so parts are filled greedily character by character.
 *
 * sms_segments (billing) and sms_split (the SMPP connector) both call
 * SmsWalk, so what we bill and what we send cannot disagree.
 *
 * Input is handled as UTF-8; in a database of another encoding the text is
 * converted to UTF-8 first and each part converted back.
 */
#include "envoisms.h"

#include "mb/pg_wchar.h"

#define GSM7_SINGLE 160
#define GSM7_MULTI 153
#define UCS2_SINGLE 70
#define UCS2_MULTI 67

typedef enum SmsEncoding
{
	SMS_GSM7,
	SMS_UCS2
} SmsEncoding;

typedef struct SmsCount
{
	SmsEncoding encoding;
	int			segments;
	int			units;			/* septets (GSM-7) or UTF-16 code units */
	int			characters;		/* Unicode code points */
} SmsCount;

/*
 * Cost of a code point in GSM-7 septets: 1 for the basic table, 2 for the
 * extension table, 0 when the character has no GSM-7 form.
 */
static int
gsm7_cost(pg_wchar c)
{
	if (c < 0x80)
	{
		switch (c)
		{
			case '\n':
			case '\r':
				return 1;
			case '\f':
			case '^':
			case '{':
			case '}':
			case '\\':
			case '[':
			case '~':
			case ']':
			case '|':
				return 2;
			case '`':
				return 0;
			default:
				return (c >= 0x20 && c < 0x7f) ? 1 : 0;
		}
	}
	switch (c)
	{
		case 0x00A1:			/* ¡ */
		case 0x00A3:			/* £ */
		case 0x00A4:			/* ¤ */
		case 0x00A5:			/* ¥ */
		case 0x00A7:			/* § */
		case 0x00BF:			/* ¿ */
		case 0x00C4:			/* Ä */
		case 0x00C5:			/* Å */
		case 0x00C6:			/* Æ */
		case 0x00C7:			/* Ç */
		case 0x00C9:			/* É */
		case 0x00D1:			/* Ñ */
		case 0x00D6:			/* Ö */
		case 0x00D8:			/* Ø */
		case 0x00DC:			/* Ü */
		case 0x00DF:			/* ß */
		case 0x00E0:			/* à */
		case 0x00E4:			/* ä */
		case 0x00E5:			/* å */
		case 0x00E6:			/* æ */
		case 0x00E8:			/* è */
		case 0x00E9:			/* é */
		case 0x00EC:			/* ì */
		case 0x00F1:			/* ñ */
		case 0x00F2:			/* ò */
		case 0x00F6:			/* ö */
		case 0x00F8:			/* ø */
		case 0x00F9:			/* ù */
		case 0x00FC:			/* ü */
		case 0x0393:			/* Γ */
		case 0x0394:			/* Δ */
		case 0x0398:			/* Θ */
		case 0x039B:			/* Λ */
		case 0x039E:			/* Ξ */
		case 0x03A0:			/* Π */
		case 0x03A3:			/* Σ */
		case 0x03A6:			/* Φ */
		case 0x03A8:			/* Ψ */
		case 0x03A9:			/* Ω */
			return 1;
		case 0x20AC:			/* € */
			return 2;
		default:
			return 0;
	}
}

/*
 * Decode one UTF-8 sequence at s (len bytes left) into *c; returns its byte
 * length. The server already validated the text, so this only guards
 * against reading past the end.
 */
static int
utf8_next(const unsigned char *s, int len, pg_wchar *c)
{
	int			n = pg_utf_mblen(s);

	if (n > len || n < 1)
		n = 1;
	*c = utf8_to_unicode(s);
	return n;
}

/*
 * Walk a UTF-8 text to count it and, when starts is not NULL, record the
 * byte offset where each part begins (starts must have room for one entry
 * per segment, as a first call with NULL tells). Returns the counts; an
 * empty text is GSM-7 with zero segments.
 */
static SmsCount
SmsWalk(const char *text, int len, int *starts)
{
	const unsigned char *s = (const unsigned char *) text;
	SmsCount	count = {SMS_GSM7, 0, 0, 0};
	int			septets = 0;
	int			utf16 = 0;
	bool		gsm = true;
	int			single;
	int			multi;
	int			fill;
	int			pos;

	for (pos = 0; pos < len;)
	{
		pg_wchar	c;
		int			cost;

		pos += utf8_next(s + pos, len - pos, &c);
		count.characters++;
		utf16 += (c > 0xFFFF) ? 2 : 1;
		if (gsm)
		{
			cost = gsm7_cost(c);
			if (cost == 0)
				gsm = false;
			septets += cost;
		}
	}
	if (count.characters == 0)
		return count;

	count.encoding = gsm ? SMS_GSM7 : SMS_UCS2;
	count.units = gsm ? septets : utf16;
	single = gsm ? GSM7_SINGLE : UCS2_SINGLE;
	multi = gsm ? GSM7_MULTI : UCS2_MULTI;

	if (count.units <= single)
	{
		count.segments = 1;
		if (starts)
			starts[0] = 0;
		return count;
	}

	/* Greedy fill; a two-unit character that does not fit opens a new part. */
	fill = multi;				/* forces a part to open at the first char */
	for (pos = 0; pos < len;)
	{
		pg_wchar	c;
		int			n = utf8_next(s + pos, len - pos, &c);
		int			cost = gsm ? gsm7_cost(c) : ((c > 0xFFFF) ? 2 : 1);

		if (fill + cost > multi)
		{
			if (starts)
				starts[count.segments] = pos;
			count.segments++;
			fill = 0;
		}
		fill += cost;
		pos += n;
	}
	return count;
}

/*
 * The text as UTF-8: the argument itself in a UTF-8 database, else a
 * converted copy. *converted tells whether parts must be converted back.
 */
static char *
text_as_utf8(text *t, int *len, bool *converted)
{
	char	   *raw = VARDATA_ANY(t);
	int			rawlen = VARSIZE_ANY_EXHDR(t);
	char	   *utf8;

	*converted = false;
	if (GetDatabaseEncoding() == PG_UTF8)
	{
		*len = rawlen;
		return raw;
	}
	utf8 = pg_server_to_any(raw, rawlen, PG_UTF8);
	if (utf8 == raw)
	{
		/* SQL_ASCII: no conversion, bytes taken as they are. */
		*len = rawlen;
		return raw;
	}
	*converted = true;
	*len = strlen(utf8);
	return utf8;
}

/* How the body would be sent (text_as_utf8 + SmsWalk). */
static SmsCount
count_body(text *body)
{
	SmsCount	count;
	char	   *utf8;
	int			len;
	bool		converted;

	utf8 = text_as_utf8(body, &len, &converted);
	count = SmsWalk(utf8, len, NULL);
	if (converted)
		pfree(utf8);
	return count;
}

PG_FUNCTION_INFO_V1(sms_segments);

/*
 * sms_segments(body) → one row (encoding, segments, units, characters):
 * how the body would be sent and billed.
 */
Datum
sms_segments(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	text	   *body = PG_GETARG_TEXT_PP(0);
	Datum		values[4];
	bool		nulls[4] = {false, false, false, false};
	SmsCount	count;

	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	count = count_body(body);

	values[0] = CStringGetTextDatum(count.encoding == SMS_GSM7 ? "gsm7" : "ucs2");
	values[1] = Int32GetDatum(count.segments);
	values[2] = Int32GetDatum(count.units);
	values[3] = Int32GetDatum(count.characters);
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	return (Datum) 0;
}

PG_FUNCTION_INFO_V1(sms_encoding);

/* sms_encoding(body) → 'gsm7' or 'ucs2': sms_segments' encoding as a plain value (the send path). */
Datum
sms_encoding(PG_FUNCTION_ARGS)
{
	PG_RETURN_TEXT_P(cstring_to_text(count_body(PG_GETARG_TEXT_PP(0)).encoding == SMS_GSM7 ? "gsm7" : "ucs2"));
}

PG_FUNCTION_INFO_V1(sms_segment_count);

/* sms_segment_count(body) → sms_segments' segments as a plain value (the send path). */
Datum
sms_segment_count(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT32(count_body(PG_GETARG_TEXT_PP(0)).segments);
}

PG_FUNCTION_INFO_V1(sms_split);

/*
 * sms_split(body) → the parts of the body, in order, exactly as counted by
 * sms_segments; their concatenation is the body. No rows for an empty body.
 */
Datum
sms_split(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	text	   *body = PG_GETARG_TEXT_PP(0);
	SmsCount	count;
	char	   *utf8;
	int			len;
	bool		converted;
	int		   *starts;
	int			i;

	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);

	utf8 = text_as_utf8(body, &len, &converted);
	/* Count first, then record where each part starts, plus an end sentinel. */
	count = SmsWalk(utf8, len, NULL);
	starts = palloc((count.segments + 1) * sizeof(int));
	(void) SmsWalk(utf8, len, starts);
	starts[count.segments] = len;

	for (i = 0; i < count.segments; i++)
	{
		const char *part = utf8 + starts[i];
		int			partlen = starts[i + 1] - starts[i];
		Datum		value;
		bool		isnull = false;

		if (converted)
		{
			char	   *server = pg_any_to_server(part, partlen, PG_UTF8);

			if (server == part)
				value = PointerGetDatum(cstring_to_text_with_len(part, partlen));
			else
			{
				value = PointerGetDatum(cstring_to_text(server));
				pfree(server);
			}
		}
		else
			value = PointerGetDatum(cstring_to_text_with_len(part, partlen));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, &value, &isnull);
	}
	pfree(starts);
	if (converted)
		pfree(utf8);
	return (Datum) 0;
}
