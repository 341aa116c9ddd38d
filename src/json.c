/*
 * json.c — JSON work on the request path that SQL does too slowly or only
 * with an exception block.
 *
 *   message_bulk_items(ids, numbers)  the "messages" array of a bulk reply,
 *       [{"id", "to", "status": "queued"}, ...], built as one jsonb value.
 *       jsonb_agg(jsonb_build_object(...)) spends ~5 us per entry (each
 *       object is built, then taken apart again by the aggregate), which was
 *       a fifth of a 10,000-message bulk send.
 *   message_send_reply(...)  the POST /v1/messages response.
 *       jsonb_build_object looks up how to convert each argument's type on
 *       every call; the two nested calls of a send's reply cost 5% of it.
 *   iso_time(ts)  "2026-05-15T10:30:00Z", the contract's time format, without
 *       to_char's format parsing (every message in a reply has two or three).
 *   headers_normalize(headers)  the request headers with lower-case names,
 *       every value as a string (what jsonb_each_text gives): one pass in C
 *       instead of a query per request.
 *   message_request(body)  the fields of a POST /v1/messages body with
 *       their defaults, or the first field of a wrong type: one call where
 *       a dozen jsonb operators and type tests were the largest expression
 *       of a send (PL/pgSQL sets each expression up again per transaction).
 *   body_jsonb(body)  the request body as jsonb, or why it is not a JSON
 *       object jsonb accepts: envoisms.api tells 400 INVALID_JSON or
 *       VALIDATION_ERROR from it, so a bad body needs no subtransaction to
 *       catch a cast's error, and a number jsonb cannot hold (1e1000000) is
 *       a 400, not a 500. One parse, where a check and then the cast parsed
 *       every body twice.
 */
#include "envoisms.h"

#include "catalog/pg_collation.h"
#include "catalog/pg_type.h"
#include "common/jsonapi.h"
#include "mb/pg_wchar.h"
#include "utils/array.h"
#include "utils/datetime.h"
#include "utils/formatting.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"

#include "cache.h"

/* Largest decimal exponent a request body's number may have (numeric holds 131072 digits). */
#define BODY_NUMBER_MAX_EXPONENT 1000

static void
push_string(JsonbParseState **state, JsonbIteratorToken token, const char *s, int len)
{
	JsonbValue	v;

	v.type = jbvString;
	v.val.string.val = (char *) s;
	v.val.string.len = len;
	pushJsonbValue(state, token, &v);
}

static void
push_text(JsonbParseState **state, Datum value, bool isnull)
{
	JsonbValue	v;

	if (isnull)
	{
		v.type = jbvNull;
		pushJsonbValue(state, WJB_VALUE, &v);
		return;
	}
	push_string(state, WJB_VALUE, VARDATA_ANY(DatumGetPointer(value)),
				VARSIZE_ANY_EXHDR(DatumGetPointer(value)));
}

PG_FUNCTION_INFO_V1(message_bulk_items);

/* message_bulk_items(ids text[], numbers text[]) — [{"id", "to", "status": "queued"}, ...] in array order. */
Datum
message_bulk_items(PG_FUNCTION_ARGS)
{
	ArrayType  *ids = PG_GETARG_ARRAYTYPE_P(0);
	ArrayType  *numbers = PG_GETARG_ARRAYTYPE_P(1);
	Datum	   *idv,
			   *numv;
	bool	   *idnull,
			   *numnull;
	int			nids,
				nnums;
	JsonbParseState *state = NULL;
	JsonbValue *result;

	deconstruct_array(ids, TEXTOID, -1, false, TYPALIGN_INT, &idv, &idnull, &nids);
	deconstruct_array(numbers, TEXTOID, -1, false, TYPALIGN_INT, &numv, &numnull, &nnums);
	if (nids != nnums)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("ids and numbers must have the same length (%d and %d)", nids, nnums)));

	pushJsonbValue(&state, WJB_BEGIN_ARRAY, NULL);
	for (int i = 0; i < nids; i++)
	{
		pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
		push_string(&state, WJB_KEY, "id", 2);
		push_text(&state, idv[i], idnull[i]);
		push_string(&state, WJB_KEY, "to", 2);
		push_text(&state, numv[i], numnull[i]);
		push_string(&state, WJB_KEY, "status", 6);
		push_string(&state, WJB_VALUE, "queued", 6);
		pushJsonbValue(&state, WJB_END_OBJECT, NULL);
	}
	result = pushJsonbValue(&state, WJB_END_ARRAY, NULL);
	PG_RETURN_JSONB_P(JsonbValueToJsonb(result));
}

/*
 * The contract's time format into buf (ISO_TIME_LEN + 1 bytes): UTC, whole
 * seconds, as to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
 * writes it. False for an infinite time, which to_char turns into NULL.
 */
#define ISO_TIME_LEN 63
static bool
format_iso_time(TimestampTz ts, char *buf)
{
	struct pg_tm tm;
	fsec_t		fsec;

	if (TIMESTAMP_NOT_FINITE(ts) || timestamp2tm(ts, NULL, &tm, &fsec, NULL, NULL) != 0)
		return false;
	/* YYYY of a BC year is its number counted back from 1 BC, as in to_char */
	snprintf(buf, ISO_TIME_LEN + 1, "%04d-%02d-%02dT%02d:%02d:%02dZ",
			 tm.tm_year > 0 ? tm.tm_year : -(tm.tm_year - 1),
			 tm.tm_mon, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
	return true;
}

PG_FUNCTION_INFO_V1(iso_time);

/* iso_time(ts timestamptz) — "2026-05-15T10:30:00Z", or NULL for an infinite time. */
Datum
iso_time(PG_FUNCTION_ARGS)
{
	char		buf[ISO_TIME_LEN + 1];

	if (!format_iso_time(PG_GETARG_TIMESTAMPTZ(0), buf))
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(buf));
}

/* A money amount as a JSON number without trailing zeros (envoisms.money). */
static void
push_money(JsonbParseState **state, const char *key, Datum amount)
{
	JsonbValue	v;

	push_string(state, WJB_KEY, key, strlen(key));
	v.type = jbvNumeric;
	v.val.numeric = DatumGetNumeric(DirectFunctionCall1(numeric_trim_scale, amount));
	pushJsonbValue(state, WJB_VALUE, &v);
}

PG_FUNCTION_INFO_V1(message_send_reply);

/*
 * message_send_reply(id, to, channel, cascade, cost_eur, cost_mad, segments,
 * created_at) — {"id", "to", "channel", "cascade", "status": "queued",
 * "cost": {"eur", "mad"}, "segments", "created_at"}, and the names the
 * official clients read beside them: "message_id" (= id), "parts"
 * (= segments), "cost_mad" and "cost_eur" (= cost).
 */
Datum
message_send_reply(PG_FUNCTION_ARGS)
{
	JsonbParseState *state = NULL;
	JsonbValue	v;
	JsonbValue *result;
	char		created[ISO_TIME_LEN + 1];

	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	push_string(&state, WJB_KEY, "id", 2);
	push_text(&state, PG_GETARG_DATUM(0), false);
	push_string(&state, WJB_KEY, "message_id", 10);
	push_text(&state, PG_GETARG_DATUM(0), false);
	push_string(&state, WJB_KEY, "to", 2);
	push_text(&state, PG_GETARG_DATUM(1), false);
	push_string(&state, WJB_KEY, "channel", 7);
	push_text(&state, PG_GETARG_DATUM(2), false);
	push_string(&state, WJB_KEY, "cascade", 7);
	v.type = jbvBool;
	v.val.boolean = PG_GETARG_BOOL(3);
	pushJsonbValue(&state, WJB_VALUE, &v);
	push_string(&state, WJB_KEY, "status", 6);
	push_string(&state, WJB_VALUE, "queued", 6);
	push_string(&state, WJB_KEY, "cost", 4);
	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	push_money(&state, "eur", PG_GETARG_DATUM(4));
	push_money(&state, "mad", PG_GETARG_DATUM(5));
	pushJsonbValue(&state, WJB_END_OBJECT, NULL);
	push_money(&state, "cost_eur", PG_GETARG_DATUM(4));
	push_money(&state, "cost_mad", PG_GETARG_DATUM(5));
	v.type = jbvNumeric;
	v.val.numeric = int64_to_numeric(PG_GETARG_INT32(6));
	push_string(&state, WJB_KEY, "segments", 8);
	pushJsonbValue(&state, WJB_VALUE, &v);
	push_string(&state, WJB_KEY, "parts", 5);
	pushJsonbValue(&state, WJB_VALUE, &v);
	push_string(&state, WJB_KEY, "created_at", 10);
	if (format_iso_time(PG_GETARG_TIMESTAMPTZ(7), created))
		push_string(&state, WJB_VALUE, created, strlen(created));
	else
	{
		v.type = jbvNull;
		pushJsonbValue(&state, WJB_VALUE, &v);
	}
	result = pushJsonbValue(&state, WJB_END_OBJECT, NULL);
	PG_RETURN_JSONB_P(JsonbValueToJsonb(result));
}

PG_FUNCTION_INFO_V1(headers_normalize);

/*
 * headers_normalize(headers jsonb) — the same object with lower-case names
 * and string values (numbers, booleans, objects as their JSON text; null
 * stays null); of two names that differ only in case the later one in jsonb
 * order wins. Anything but an object gives {}.
 */
Datum
headers_normalize(PG_FUNCTION_ARGS)
{
	Jsonb	   *in;
	JsonbIterator *it;
	JsonbIteratorToken token;
	JsonbValue	v;
	JsonbParseState *state = NULL;
	JsonbValue *result;

	if (PG_ARGISNULL(0))
		in = NULL;
	else
		in = PG_GETARG_JSONB_P(0);

	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	if (in != NULL && JB_ROOT_IS_OBJECT(in))
	{
		it = JsonbIteratorInit(&in->root);
		token = JsonbIteratorNext(&it, &v, false);	/* WJB_BEGIN_OBJECT */
		while ((token = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
		{
			char	   *name;

			if (token != WJB_KEY)
				continue;
			name = str_tolower(v.val.string.val, v.val.string.len, DEFAULT_COLLATION_OID);
			push_string(&state, WJB_KEY, name, strlen(name));
			token = JsonbIteratorNext(&it, &v, true);
			Assert(token == WJB_VALUE);
			if (v.type == jbvString || v.type == jbvNull)
				pushJsonbValue(&state, WJB_VALUE, &v);
			else
			{
				/* a container (skipped as jbvBinary) or a number/boolean: its JSON text */
				char	   *text;

				if (v.type == jbvBinary)
					text = JsonbToCString(NULL, v.val.binary.data, v.val.binary.len);
				else
				{
					Jsonb	   *scalar = JsonbValueToJsonb(&v);

					text = JsonbToCString(NULL, &scalar->root, VARSIZE(scalar));
				}
				push_string(&state, WJB_VALUE, text, strlen(text));
			}
		}
	}
	result = pushJsonbValue(&state, WJB_END_OBJECT, NULL);
	PG_RETURN_JSONB_P(JsonbValueToJsonb(result));
}

/* body_jsonb's parse: the document built as jsonb_in builds it, and what it found. */
typedef struct BodyParse
{
	JsonbParseState *state;
	JsonbValue *result;
	bool		number_out_of_range;
} BodyParse;

static void
body_push(BodyParse *parse, JsonbIteratorToken token, JsonbValue *value)
{
	parse->result = pushJsonbValue(&parse->state, token, value);
}

static void
body_object_start(void *state)
{
	body_push(state, WJB_BEGIN_OBJECT, NULL);
}

static void
body_object_end(void *state)
{
	body_push(state, WJB_END_OBJECT, NULL);
}

static void
body_array_start(void *state)
{
	body_push(state, WJB_BEGIN_ARRAY, NULL);
}

static void
body_array_end(void *state)
{
	body_push(state, WJB_END_ARRAY, NULL);
}

static void
body_field(void *state, char *fname, bool isnull)
{
	JsonbValue	key;

	key.type = jbvString;
	key.val.string.val = fname;
	key.val.string.len = strlen(fname);
	body_push(state, WJB_KEY, &key);
}

/*
 * Whether numeric_in could refuse a JSON number, so that it is refused
 * first, as out of range, without an error: beyond 1e±BODY_NUMBER_MAX_EXPONENT
 * (the decimal exponent of its leading digit: 123.4e5 → 7), or with more
 * than BODY_NUMBER_MAX_EXPONENT decimals (its scale: digits after the point
 * minus the written exponent). A zero has no leading digit but still its
 * scale (0e-100000 would overflow numeric's display scale) and its written
 * exponent, refused far beyond the range (0e2000000000 overflows numeric_in's
 * exponent).
 */
static bool
number_out_of_range(const char *token)
{
	const char *p = token;
	long		significant = 0;	/* integer digits from the first nonzero */
	long		zeros_after_point = 0;	/* before the first nonzero decimal */
	long		decimals = 0;
	bool		nonzero_seen = false;
	long		exponent = 0;
	long		lead;

	if (*p == '-')
		p++;
	for (; *p >= '0' && *p <= '9'; p++)
	{
		if (*p != '0')
			nonzero_seen = true;
		if (nonzero_seen)
			significant++;
	}
	if (*p == '.')
		for (p++; *p >= '0' && *p <= '9'; p++)
		{
			decimals++;
			if (!nonzero_seen && *p == '0')
				zeros_after_point++;
			else
				nonzero_seen = true;
		}
	if (*p == 'e' || *p == 'E')
	{
		bool		negative = false;

		p++;
		if (*p == '+' || *p == '-')
			negative = (*p++ == '-');
		for (; *p >= '0' && *p <= '9'; p++)
		{
			exponent = exponent * 10 + (*p - '0');
			if (exponent > 100 * BODY_NUMBER_MAX_EXPONENT)
				break;			/* far out of range already; avoid overflow */
		}
		if (negative)
			exponent = -exponent;
	}
	if (decimals - exponent > BODY_NUMBER_MAX_EXPONENT)
		return true;
	if (!nonzero_seen)
		return exponent > 100 * BODY_NUMBER_MAX_EXPONENT;	/* numeric_in: 2^30 */
	lead = (significant > 0 ? significant - 1 : -(zeros_after_point + 1)) + exponent;
	return lead > BODY_NUMBER_MAX_EXPONENT || lead < -BODY_NUMBER_MAX_EXPONENT;
}

/* The scalar callback of a parse that only checks: numbers in range. */
static void
body_number_check(void *state, char *token, JsonTokenType tokentype)
{
	if (tokentype == JSON_TOKEN_NUMBER && number_out_of_range(token))
		((BodyParse *) state)->number_out_of_range = true;
}

static void
body_scalar(void *state, char *token, JsonTokenType tokentype)
{
	BodyParse  *parse = (BodyParse *) state;
	JsonbValue	v;

	if (parse->state == NULL)
		return;					/* a scalar document: refused as no object */
	switch (tokentype)
	{
		case JSON_TOKEN_STRING:
			v.type = jbvString;
			v.val.string.val = token;
			v.val.string.len = strlen(token);
			break;
		case JSON_TOKEN_NUMBER:
			if (number_out_of_range(token))
			{
				/* numeric_in might fail on it: refused, the parse goes on */
				parse->number_out_of_range = true;
				v.type = jbvNull;
				break;
			}
			v.type = jbvNumeric;
			v.val.numeric = DatumGetNumeric(DirectFunctionCall3(numeric_in, CStringGetDatum(token),
																ObjectIdGetDatum(InvalidOid),
																Int32GetDatum(-1)));
			break;
		case JSON_TOKEN_TRUE:
		case JSON_TOKEN_FALSE:
			v.type = jbvBool;
			v.val.boolean = tokentype == JSON_TOKEN_TRUE;
			break;
		default:
			v.type = jbvNull;
			break;
	}
	body_push(parse, parse->state->contVal.type == jbvArray ? WJB_ELEM : WJB_VALUE, &v);
}

/*
 * Parses a request body: NULL when it is JSON that jsonb accepts (the
 * document in *result when build), else 'nul', 'number' or 'syntax'.
 */
static const char *
parse_body(const char *p, int len, bool build, JsonbValue **result)
{
	JsonLexContext *lex;
	JsonSemAction sem = {0};
	BodyParse	parse = {NULL, NULL, false};
	JsonParseErrorType error;

	/* need_escapes: decode strings, so that \u0000 and bad surrogates are found */
	lex = makeJsonLexContextCstringLen((char *) p, len, GetDatabaseEncoding(), true);
	sem.semstate = &parse;
	if (build)
	{
		sem.object_start = body_object_start;
		sem.object_end = body_object_end;
		sem.array_start = body_array_start;
		sem.array_end = body_array_end;
		sem.object_field_start = body_field;
	}
	sem.scalar = build ? body_scalar : body_number_check;
	error = pg_parse_json(lex, &sem);
	*result = parse.result;
	if (error == JSON_UNICODE_CODE_POINT_ZERO)
		return "nul";
	if (error != JSON_SUCCESS)
		return "syntax";
	if (parse.number_out_of_range)
		return "number";
	return NULL;
}

PG_FUNCTION_INFO_V1(body_jsonb);

/*
 * body_jsonb(body text) — (value, problem): the request body as jsonb, in
 * one pass that also finds what the cast would refuse with an error. value
 * is NULL for a body of blanks only, and whenever problem is set: 'nul' (a
 * \u0000 escape, which jsonb refuses), 'number' (a number beyond 1e±1000),
 * 'syntax' (anything else a JSON parser refuses, including bad \u escapes
 * and lone surrogates) or 'object' (a JSON document that is no object).
 */
Datum
body_jsonb(PG_FUNCTION_ARGS)
{
	text	   *body = PG_GETARG_TEXT_PP(0);
	const char *p = VARDATA_ANY(body);
	int			len = VARSIZE_ANY_EXHDR(body);
	TupleDesc	result = BackendResultType(fcinfo);
	Datum		values[2] = {0};
	bool		nulls[2] = {true, true};
	const char *problem = NULL;
	int			i;

	for (i = 0; i < len && envoisms_is_blank(p[i]); i++)
		;
	if (i < len)
	{
		JsonbValue *document;

		problem = parse_body(p, len, true, &document);
		if (problem == NULL && (document == NULL || document->type != jbvObject))
			problem = "object";
		else if (problem == NULL)
		{
			values[0] = JsonbPGetDatum(JsonbValueToJsonb(document));
			nulls[0] = false;
		}
	}
	if (problem != NULL)
	{
		values[1] = CStringGetTextDatum(problem);
		nulls[1] = false;
	}
	return HeapTupleGetDatum(heap_form_tuple(result, values, nulls));
}

PG_FUNCTION_INFO_V1(body_problem);

/*
 * body_problem(body text) — 'nul', 'number', 'syntax' or NULL. 0.4.0's SQL
 * no longer has it (body_jsonb answers in the same pass that parses); the
 * symbol stays because the frozen 0.2.0 -> 0.3.0 upgrade script creates it.
 */
Datum
body_problem(PG_FUNCTION_ARGS)
{
	text	   *body = PG_GETARG_TEXT_PP(0);
	JsonbValue *unused;
	const char *problem = parse_body(VARDATA_ANY(body), VARSIZE_ANY_EXHDR(body), false, &unused);

	if (problem == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(problem));
}

/* The value of key in an object, or NULL when absent (or the body is no object). */
static JsonbValue *
object_field(Jsonb *body, const char *key, JsonbValue *buf)
{
	if (!JB_ROOT_IS_OBJECT(body))
		return NULL;
	return getKeyJsonValueFromContainer(&body->root, key, strlen(key), buf);
}

static bool
is_null(JsonbValue *v)
{
	return v == NULL || v->type == jbvNull;
}

static bool
is_container(JsonbValue *v, bool object)
{
	return v != NULL && v->type == jbvBinary &&
		(object ? JsonContainerIsObject(v->val.binary.data) : JsonContainerIsArray(v->val.binary.data));
}

static Datum
string_datum(JsonbValue *v)
{
	return PointerGetDatum(cstring_to_text_with_len(v->val.string.val, v->val.string.len));
}

/*
 * A text field: its string, the fallback when absent or null (fallback NULL:
 * a NULL result), or false when it has another type.
 */
static bool
text_field(Jsonb *body, const char *key, const char *fallback, Datum *value, bool *isnull)
{
	JsonbValue	buf;
	JsonbValue *v = object_field(body, key, &buf);

	*isnull = false;
	if (is_null(v))
	{
		if (fallback == NULL)
			*isnull = true;
		else
			*value = CStringGetTextDatum(fallback);
		return true;
	}
	if (v->type != jbvString)
		return false;
	*value = string_datum(v);
	return true;
}

#define MESSAGE_REQUEST_FIELDS 8

PG_FUNCTION_INFO_V1(message_request);

/*
 * message_request(body) — ("to", message, "from", channel, cascade,
 * metadata, buttons, bad_field) of a POST /v1/messages body. Absent or
 * null: to and message NULL (message falls back to the "body" alias),
 * from 'ENVOISMS', channel 'sms', cascade false, metadata and buttons NULL.
 * bad_field names the first field of a wrong type, in the order the
 * errors are raised: metadata (not an object), buttons (not an array), to,
 * message, body, from, channel (not strings), cascade (not a boolean); the
 * other fields are then NULL.
 */
Datum
message_request(PG_FUNCTION_ARGS)
{
	Jsonb	   *body = PG_GETARG_JSONB_P(0);
	TupleDesc	result = BackendResultType(fcinfo);
	Datum		values[MESSAGE_REQUEST_FIELDS] = {0};
	bool		nulls[MESSAGE_REQUEST_FIELDS] = {true, true, true, true, true, true, true, true};
	JsonbValue	buf;
	JsonbValue *v;
	const char *bad = NULL;

	v = object_field(body, "metadata", &buf);
	if (!is_null(v) && !is_container(v, true))
		bad = "metadata";
	else if (!is_null(v))
	{
		values[5] = JsonbPGetDatum(JsonbValueToJsonb(v));
		nulls[5] = false;
	}
	if (bad == NULL)
	{
		v = object_field(body, "buttons", &buf);
		if (!is_null(v) && !is_container(v, false))
			bad = "buttons";
		else if (!is_null(v))
		{
			values[6] = JsonbPGetDatum(JsonbValueToJsonb(v));
			nulls[6] = false;
		}
	}
	if (bad == NULL && !text_field(body, "to", NULL, &values[0], &nulls[0]))
		bad = "to";
	if (bad == NULL && !text_field(body, "message", NULL, &values[1], &nulls[1]))
		bad = "message";
	if (bad == NULL && nulls[1] && !text_field(body, "body", NULL, &values[1], &nulls[1]))
		bad = "body";
	if (bad == NULL && !text_field(body, "from", "ENVOISMS", &values[2], &nulls[2]))
		bad = "from";
	if (bad == NULL && !text_field(body, "channel", "sms", &values[3], &nulls[3]))
		bad = "channel";
	if (bad == NULL)
	{
		v = object_field(body, "cascade", &buf);
		if (is_null(v) || v->type == jbvBool)
		{
			values[4] = BoolGetDatum(!is_null(v) && v->val.boolean);
			nulls[4] = false;
		}
		else
			bad = "cascade";
	}
	if (bad != NULL)
	{
		memset(values, 0, sizeof(values));
		for (int i = 0; i < MESSAGE_REQUEST_FIELDS; i++)
			nulls[i] = true;
		values[7] = CStringGetTextDatum(bad);
		nulls[7] = false;
	}
	return HeapTupleGetDatum(heap_form_tuple(result, values, nulls));
}
