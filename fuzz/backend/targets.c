/*
 * targets.c — the fuzz targets that run inside a backend (driver.c), one per
 * parser of the extension that reads what outsiders send:
 *
 *   json_body     a request body: body_jsonb (one-pass parse, compared with
 *                 the jsonb cast), then message_request and headers_normalize
 *                 on what it built (src/json.c)
 *   phone         a number and a region: phone_e164, phone_parse,
 *                 phone_country_name, through libphonenumber (src/phone.c,
 *                 src/phone_lib.cpp)
 *   segments      a message body: sms_segments, sms_encoding,
 *                 sms_segment_count, sms_split (src/segments.c), each part
 *                 encoded for SMPP and decoded back (src/smpp_pdu.c)
 *   smpp_pdu      a PDU from an SMSC, framed as the bind frames it: header,
 *                 deliver_sm, submit_sm_resp, the text decoder, the receipt
 *                 (src/smpp_pdu.c, src/smpp_receipt.c)
 *   smpp_receipt  a delivery receipt's text: SmppParseReceipt on raw bytes,
 *                 envoisms.smpp_parse_receipt on text
 *   request_text  the small per-request parsers: api_key_hash (the
 *                 Authorization header), sender_id_valid, id_time
 *
 * Beyond "no crash, no sanitizer report, no unexpected error", each target
 * checks what its callers rely on (that what is billed is what is sent,
 * that every text handed to SQL is valid UTF-8 ...), and FuzzFail()s when
 * it does not hold.
 */
#include "postgres.h"

#include <sanitizer/allocator_interface.h>

#include "catalog/pg_type.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

#include "smpp_pdu.h"
#include "smpp_receipt.h"
#include "fuzz_backend.h"

static char *
text_of(Datum d)
{
	return text_to_cstring(DatumGetTextPP(d));
}

static void
check_utf8(const char *what, const char *s, int len)
{
	if (memchr(s, '\0', len) != NULL || !pg_verifymbstr(s, len, true))
		FuzzFail("%s is not valid text: \"%.*s\"", what, len, s);
}

/* A field of a composite result, by position (1-based). */
static Datum
field(Datum row, int attno, bool *isnull)
{
	return GetAttributeByNum(DatumGetHeapTupleHeader(row), attno, isnull);
}

/* ---- json_body */

static FuzzFunction *body_jsonb,
		   *message_request,
		   *headers_normalize;

static void
json_setup(void)
{
	body_jsonb = FuzzLookup("envoisms.body_jsonb(text)");
	message_request = FuzzLookup("envoisms.message_request(jsonb)");
	headers_normalize = FuzzLookup("envoisms.headers_normalize(jsonb)");
}

/* The jsonb cast of the body; NULL (and *sqlstate) when it raises. */
static Jsonb *
cast_jsonb(text *body, const char **sqlstate)
{
	MemoryContext context = CurrentMemoryContext;
	Jsonb	   *volatile result = NULL;

	*sqlstate = NULL;
	PG_TRY();
	{
		result = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(text_to_cstring(body))));
	}
	PG_CATCH();
	{
		ErrorData  *e;

		MemoryContextSwitchTo(context);
		e = CopyErrorData();
		FlushErrorState();
		*sqlstate = pstrdup(unpack_sql_state(e->sqlerrcode));
	}
	PG_END_TRY();
	return result;
}

static bool
blank_only(const char *s, int len)
{
	for (int i = 0; i < len; i++)
		if (s[i] != ' ' && s[i] != '\t' && s[i] != '\n' && s[i] != '\r')
			return false;
	return true;
}

static int
json_run(const uint8_t *data, size_t size)
{
	text	   *body = FuzzText(data, size);
	Datum		arg;
	Datum		row;
	Datum		value;
	bool		isnull,
				value_null,
				problem_null;
	const char *problem = NULL;
	Jsonb	   *cast;
	const char *cast_error;

	if (body == NULL)
		return -1;
	arg = PointerGetDatum(body);
	row = FuzzCall(body_jsonb, 1, &arg, NULL, &isnull);
	if (isnull)
		FuzzFail("body_jsonb returned NULL instead of a row");
	value = field(row, 1, &value_null);
	(void) field(row, 2, &problem_null);
	if (!problem_null)
		problem = text_of(field(row, 2, &isnull));

	/* blanks only: no body, no problem; anything else: exactly one of the two */
	if (blank_only((const char *) data, size))
	{
		if (!value_null || !problem_null)
			FuzzFail("a blank body gave a value or a problem");
		return 0;
	}
	if (value_null == problem_null)
		FuzzFail("body_jsonb gave %s value and %s problem",
				 value_null ? "no" : "a", problem_null ? "no" : "a");

	/* what the cast says of the same text (envoisms.api relies on their agreement) */
	cast = cast_jsonb(body, &cast_error);
	if (problem == NULL)
	{
		Datum		cast_datum;

		if (cast == NULL)
			FuzzFail("body_jsonb accepted a body the jsonb cast refuses (%s)", cast_error);
		cast_datum = JsonbPGetDatum(cast);
		if (!DatumGetBool(DirectFunctionCall2(jsonb_eq, value, cast_datum)))
			FuzzFail("body_jsonb built %s, the cast %s",
					 JsonbToCString(NULL, &DatumGetJsonbP(value)->root, -1),
					 JsonbToCString(NULL, &cast->root, -1));
	}
	else if (strcmp(problem, "syntax") == 0 || strcmp(problem, "nul") == 0)
	{
		if (cast != NULL)
			FuzzFail("body_jsonb found \"%s\" in a body the jsonb cast accepts", problem);
	}
	else if (strcmp(problem, "object") == 0)
	{
		/* a scalar document is not built, so a number it holds is not checked */
		if (cast != NULL && JB_ROOT_IS_OBJECT(cast))
			FuzzFail("body_jsonb found no object where the cast found one");
		return 0;
	}
	else if (strcmp(problem, "number") != 0)
		FuzzFail("body_jsonb gave an unknown problem \"%s\"", problem);
	if (value_null)
		return 0;

	/* the handlers' readers of the same document */
	row = FuzzCall(message_request, 1, &value, NULL, &isnull);
	{
		bool		bad_null;
		Datum		bad = field(row, 8, &bad_null);

		if (!bad_null)
		{
			const char *name = text_of(bad);
			static const char *const fields[] = {"metadata", "buttons", "to", "message", "body",
			"from", "channel", "cascade", NULL};
			bool		known = false;

			for (int i = 0; fields[i]; i++)
				known |= strcmp(fields[i], name) == 0;
			if (!known)
				FuzzFail("message_request named an unknown bad field \"%s\"", name);
		}
	}
	{
		Datum		headers = FuzzCall(headers_normalize, 1, &value, NULL, &isnull);
		JsonbIterator *it;
		JsonbValue	v;
		JsonbIteratorToken token;

		if (isnull || !JB_ROOT_IS_OBJECT(DatumGetJsonbP(headers)))
			FuzzFail("headers_normalize did not return an object");
		it = JsonbIteratorInit(&DatumGetJsonbP(headers)->root);
		while ((token = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
			if (token == WJB_VALUE && v.type != jbvString && v.type != jbvNull)
				FuzzFail("headers_normalize left a value that is no string");
	}
	return 0;
}

static const char *const json_errors[] = {
	"54001",					/* stack depth: nesting deeper than the server allows (413) */
	"54000",					/* program limit: a document jsonb cannot hold (413) */
	NULL
};

/* ---- phone: "number" or "number\nregion" */

static FuzzFunction *phone_e164,
		   *phone_parse,
		   *phone_country_name;

static void
phone_setup(void)
{
	phone_e164 = FuzzLookup("envoisms.phone_e164(text,text)");
	phone_parse = FuzzLookup("envoisms.phone_parse(text,text)");
	phone_country_name = FuzzLookup("envoisms.phone_country_name(text)");
}

static bool
e164_shape(const char *s)
{
	int			digits = 0;

	if (s[0] != '+' || s[1] < '1' || s[1] > '9')
		return false;
	for (s++; *s; s++, digits++)
		if (*s < '0' || *s > '9')
			return false;
	return digits >= 2 && digits <= 15;
}

static int
phone_run(const uint8_t *data, size_t size)
{
	const uint8_t *newline = memchr(data, '\n', size);
	size_t		numlen = newline ? (size_t) (newline - data) : size;
	text	   *number = FuzzText(data, numlen);
	text	   *region = newline ? FuzzText(newline + 1, size - numlen - 1) : NULL;
	Datum		args[2];
	bool		nulls[2] = {false, region == NULL};
	bool		isnull,
				again_null;
	Datum		e164;
	char	   *e164_text = NULL;
	Datum	  **rows;
	bool	  **rownulls;
	int			count;

	if (number == NULL || (newline && region == NULL))
		return -1;
	args[0] = PointerGetDatum(number);
	args[1] = PointerGetDatum(region);

	e164 = FuzzCall(phone_e164, 2, args, nulls, &isnull);
	if (!isnull)
	{
		e164_text = text_of(e164);
		if (!e164_shape(e164_text))
			FuzzFail("phone_e164 returned \"%s\", not E.164", e164_text);
	}
	/* the second call is answered by the backend's cache: the same answer */
	e164 = FuzzCall(phone_e164, 2, args, nulls, &again_null);
	if (again_null != isnull || (!isnull && strcmp(text_of(e164), e164_text) != 0))
		FuzzFail("phone_e164 answered differently from its cache");

	rows = FuzzCallSRF(phone_parse, 2, args, nulls, &rownulls, &count);
	if (count != 1)
		FuzzFail("phone_parse returned %d rows", count);
	if (DatumGetBool(rows[0][0]) != (e164_text != NULL))
		FuzzFail("phone_parse says %s, phone_e164 %s",
				 DatumGetBool(rows[0][0]) ? "valid" : "invalid", e164_text ? e164_text : "NULL");
	for (int a = 1; a < 8; a++)
		if (!rownulls[0][a])
		{
			char	   *s = text_of(rows[0][a]);

			check_utf8("a phone_parse column", s, strlen(s));
		}
	if (e164_text && strcmp(text_of(rows[0][1]), e164_text) != 0)
		FuzzFail("phone_parse's e164 %s differs from phone_e164's %s",
				 text_of(rows[0][1]), e164_text);

	/* a valid number's E.164 form is itself valid, without a region */
	if (e164_text)
	{
		Datum		again[2] = {PointerGetDatum(cstring_to_text(e164_text)), (Datum) 0};
		bool		again_nulls[2] = {false, true};
		Datum		e = FuzzCall(phone_e164, 2, again, again_nulls, &isnull);

		if (isnull || strcmp(text_of(e), e164_text) != 0)
			FuzzFail("%s is valid, but its E.164 form parses to %s",
					 text_of(args[0]), isnull ? "NULL" : text_of(e));
	}
	if (region)
	{
		Datum		name = FuzzCall(phone_country_name, 1, &args[1], NULL, &isnull);

		if (!isnull)
		{
			char	   *s = text_of(name);

			check_utf8("phone_country_name", s, strlen(s));
		}
	}
	return 0;
}

/* ---- segments */

static FuzzFunction *sms_segments,
		   *sms_encoding,
		   *sms_segment_count,
		   *sms_split;

static void
segments_setup(void)
{
	sms_segments = FuzzLookup("envoisms.sms_segments(text)");
	sms_encoding = FuzzLookup("envoisms.sms_encoding(text)");
	sms_segment_count = FuzzLookup("envoisms.sms_segment_count(text)");
	sms_split = FuzzLookup("envoisms.sms_split(text)");
}

/* Decode one encoded segment and compare it with the part it came from. */
static void
check_roundtrip(const SmppSegment *seg, const char *part, bool ucs2, bool packed,
				int nparts, int index, uint8_t ref)
{
	int			r,
				total,
				seq;
	char	   *back = SmppDecodeText(seg->data, seg->length, ucs2 ? SMPP_DC_UCS2 : SMPP_DC_DEFAULT,
									  (seg->esm_class & SMPP_ESM_UDHI) != 0, packed,
									  &r, &total, &seq);

	/*
	 * Packed GSM cannot tell a trailing CR that ends exactly on an octet
	 * boundary from the CR that pads 7 spare bits (3GPP 23.038; an SMPP
	 * short message counts octets, not septets): that one CR may be lost.
	 */
	size_t		plen = strlen(part);

	if (packed && !ucs2 && plen > 0 && part[plen - 1] == '\r' &&
		strlen(back) == plen - 1 && strncmp(back, part, plen - 1) == 0)
		return;
	if (strcmp(back, part) != 0)
		FuzzFail("part %d of %d (%s%s) decodes to \"%s\", not \"%s\"", index + 1, nparts,
				 ucs2 ? "UCS-2" : "GSM", packed ? ", packed" : "", back, part);
	if (nparts > 1 && (r != ref || total != nparts || seq != index + 1))
		FuzzFail("part %d of %d carries the header ref %d, %d of %d", index + 1, nparts,
				 r, seq, total);
}

static int
segments_run(const uint8_t *data, size_t size)
{
	text	   *body = FuzzText(data, size);
	Datum		arg;
	Datum	  **rows;
	bool	  **rownulls;
	int			count;
	int			nparts;
	const char *encoding;
	int			segments;
	bool		ucs2;
	bool		isnull;
	StringInfoData joined;
	char	  **parts;
	SmppSegment *segs;

	if (body == NULL)
		return -1;
	arg = PointerGetDatum(body);
	rows = FuzzCallSRF(sms_segments, 1, &arg, NULL, &rownulls, &count);
	if (count != 1)
		FuzzFail("sms_segments returned %d rows", count);
	encoding = text_of(rows[0][0]);
	segments = DatumGetInt32(rows[0][1]);
	ucs2 = strcmp(encoding, "ucs2") == 0;
	if (!ucs2 && strcmp(encoding, "gsm7") != 0)
		FuzzFail("unknown encoding %s", encoding);
	if (strcmp(text_of(FuzzCall(sms_encoding, 1, &arg, NULL, &isnull)), encoding) != 0 ||
		DatumGetInt32(FuzzCall(sms_segment_count, 1, &arg, NULL, &isnull)) != segments)
		FuzzFail("sms_encoding or sms_segment_count disagrees with sms_segments");
	if ((segments == 0) != (size == 0))
		FuzzFail("%d segments for %zu bytes", segments, size);

	/* what is sent is what is billed: as many parts, the body in order */
	rows = FuzzCallSRF(sms_split, 1, &arg, NULL, &rownulls, &nparts);
	if (nparts != segments)
		FuzzFail("sms_split cut %d parts, sms_segments counts %d", nparts, segments);
	initStringInfo(&joined);
	parts = palloc0(sizeof(char *) * (nparts + 1));
	for (int i = 0; i < nparts; i++)
	{
		parts[i] = text_of(rows[i][0]);
		if (parts[i][0] == '\0')
			FuzzFail("part %d is empty", i + 1);
		appendStringInfoString(&joined, parts[i]);
	}
	if (joined.len != (int) size || memcmp(joined.data, data, size) != 0)
		FuzzFail("the parts do not join back into the body");
	if (nparts == 0 || nparts > 255)
		return 0;				/* the UDH counts parts in one octet */

	/* every part fits one SMS in the body's encoding, packed or not, and decodes back */
	segs = palloc0(sizeof(SmppSegment) * nparts);
	for (int packed = 0; packed <= 1; packed++)
	{
		const char *error;
		uint8_t		ref = (uint8_t) (size & 0xFF);

		if (!SmppEncodeParts(parts, nparts, ucs2, packed, nparts > 1 ? ref : 0, segs, &error))
			FuzzFail("SmppEncodeParts refused sms_split's %d %s parts%s: %s", nparts, encoding,
					 packed ? " (packed)" : "", error);
		for (int i = 0; i < nparts; i++)
			check_roundtrip(&segs[i], parts[i], ucs2, packed, nparts, i, nparts > 1 ? ref : 0);

		/* the same body as one message_payload, when it fits */
		{
			uint8_t		payload[SMPP_PAYLOAD_MAX];
			int			n = SmppEncodeText((const char *) VARDATA_ANY(body), size, ucs2, packed,
										   payload, sizeof(payload));
			SmppSegment whole;

			if (n > (int) sizeof(payload))
				FuzzFail("SmppEncodeText wrote %d bytes into %zu", n, sizeof(payload));
			if (n > 0 && n <= SMPP_SHORT_MESSAGE_MAX)
			{
				memcpy(whole.data, payload, n);
				whole.length = n;
				whole.esm_class = 0;
				check_roundtrip(&whole, joined.data, ucs2, packed, 1, 0, 0);
			}
		}
	}
	return 0;
}

/* ---- smpp_pdu: the bind's framing gives a PDU its header's length */

/*
 * libsmpp34 logs each field it unpacks into its global smpp34_strerror
 * through ptrerror; ptrerror past the buffer's end means it wrote past it.
 * (Its .bss is not instrumented, so ASan sees such a write only when it
 * happens to break something.)
 */
extern char smpp34_strerror[2048];
extern char *ptrerror;

static void
check_smpp34_log(const char *pdu_kind)
{
	if (ptrerror > smpp34_strerror + sizeof(smpp34_strerror))
		FuzzFail("libsmpp34 wrote the log of a %s %ld bytes past the end of its %zu-byte buffer",
				 pdu_kind, (long) (ptrerror - smpp34_strerror - sizeof(smpp34_strerror)),
				 sizeof(smpp34_strerror));
}

static void
check_cstring(const char *what, const char *s, size_t size)
{
	if (strnlen(s, size) >= size)
		FuzzFail("%s is not NUL-terminated within its %zu bytes", what, size);
}

static int
smpp_pdu_run(const uint8_t *data, size_t size)
{
	SmppHeader	h;
	uint8_t    *pdu;
	char		name[64];

	if (size < SMPP_HEADER_LEN || size > SMPP_PDU_MAX)
		return -1;
	/* as read_input() hands it over: exactly the PDU, then one NUL byte */
	pdu = palloc(size + 1);
	memcpy(pdu, data, size);
	pdu[0] = (size >> 24) & 0xFF;
	pdu[1] = (size >> 16) & 0xFF;
	pdu[2] = (size >> 8) & 0xFF;
	pdu[3] = size & 0xFF;
	pdu[size] = '\0';
	SmppReadHeader(pdu, &h);
	if (h.length != size)
		FuzzFail("SmppReadHeader read length %u of a %zu-byte PDU", h.length, size);
	SmppStatusName(h.status, name, sizeof(name));
	check_cstring("the status name", name, sizeof(name));

	if (h.command_id == SMPP_SUBMIT_SM_RESP)
	{
		char		id[SMPP_MESSAGE_ID_MAX + 1];
		const char *error;

		bool		parsed = SmppParseSubmitResp(pdu, (int) size, id, &error);

		check_smpp34_log("submit_sm_resp");
		if (parsed)
			check_cstring("submit_sm_resp's message_id", id, sizeof(id));
		else if (error == NULL)
			FuzzFail("SmppParseSubmitResp failed without a reason");
	}
	else if (h.command_id == SMPP_DELIVER_SM)
	{
		SmppDeliver d;
		const char *error;
		size_t		before = __sanitizer_get_current_allocated_bytes();
		bool		parsed = SmppParseDeliver(pdu, (int) size, &d, &error);
		size_t		after = __sanitizer_get_current_allocated_bytes();

		check_smpp34_log("deliver_sm");
		/* the bind calls this for every deliver_sm of its life */
		if (after > before)
			FuzzFail("SmppParseDeliver kept %zu bytes of libsmpp34's after it returned (%s)",
					 after - before, parsed ? "parsed" : error);
		if (!parsed)
		{
			if (error == NULL)
				FuzzFail("SmppParseDeliver failed without a reason");
			return 0;
		}
		check_cstring("deliver_sm's source", d.source, sizeof(d.source));
		check_cstring("deliver_sm's destination", d.destination, sizeof(d.destination));
		check_cstring("deliver_sm's receipted_message_id", d.receipted_id, sizeof(d.receipted_id));
		check_cstring("deliver_sm's network_error", d.network_error, sizeof(d.network_error));
		if (d.message_length < 0 || d.message_length > SMPP_PAYLOAD_MAX)
			FuzzFail("deliver_sm's message is %d bytes", d.message_length);

		/* both readings the bind makes of a deliver_sm: a receipt, an inbound text */
		{
			uint8_t    *message = palloc(Max(d.message_length, 1));	/* exactly the bytes */
			SmppReceipt r;

			memcpy(message, d.message, d.message_length);
			(void) SmppParseReceipt((const char *) message, d.message_length, &r, &error);
		}
		for (int packed = 0; packed <= 1; packed++)
		{
			int			ref,
						total,
						seq;
			char	   *body = SmppDecodeText(d.message, d.message_length, d.data_coding,
											  (d.esm_class & SMPP_ESM_UDHI) != 0, packed,
											  &ref, &total, &seq);

			/* the inbound text goes to SQL as text */
			check_utf8("a decoded inbound message", body, strlen(body));
		}
	}
	return 0;
}

/* ---- smpp_receipt */

static FuzzFunction *smpp_parse_receipt;

static void
receipt_setup(void)
{
	smpp_parse_receipt = FuzzLookup("envoisms.smpp_parse_receipt(text)");
}

static int
receipt_run(const uint8_t *data, size_t size)
{
	char	   *copy = palloc(size > 0 ? size : 1);	/* exactly the bytes: no slack to read */
	SmppReceipt r;
	const char *error;
	text	   *receipt;

	memcpy(copy, data, size);
	if (SmppParseReceipt(copy, (int) size, &r, &error))
	{
		check_cstring("id", r.id, sizeof(r.id));
		check_cstring("stat", r.stat, sizeof(r.stat));
		check_cstring("err", r.err, sizeof(r.err));
		check_cstring("text", r.text, sizeof(r.text));
		check_cstring("submit date", r.submit_date, sizeof(r.submit_date));
		check_cstring("done date", r.done_date, sizeof(r.done_date));
		if (r.id[0] == '\0' || r.stat[0] == '\0')
			FuzzFail("a receipt parsed without an id or a stat");
	}
	else if (error == NULL)
		FuzzFail("SmppParseReceipt failed without a reason");

	/* the SQL face: every text it returns is valid text */
	receipt = FuzzText(data, size);
	if (receipt != NULL)
	{
		Datum		arg = PointerGetDatum(receipt);
		Datum	  **rows;
		bool	  **nulls;
		int			count;

		rows = FuzzCallSRF(smpp_parse_receipt, 1, &arg, NULL, &nulls, &count);
		if (count != 1)
			FuzzFail("smpp_parse_receipt returned %d rows", count);
		for (int a = 0; a < 8; a++)
			if (!nulls[0][a] && a != 1 && a != 2)
			{
				text	   *t = DatumGetTextPP(rows[0][a]);

				check_utf8("a smpp_parse_receipt column", VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
			}
	}
	return 0;
}

static const char *const receipt_errors[] = {
	"22P02",					/* malformed SMPP delivery receipt */
	NULL
};

/* ---- request_text: one line each for api_key_hash, sender_id_valid, id_time */

static FuzzFunction *api_key_hash,
		   *sender_id_valid,
		   *id_time;

static void
request_setup(void)
{
	api_key_hash = FuzzLookup("envoisms.api_key_hash(text)");
	sender_id_valid = FuzzLookup("envoisms.sender_id_valid(text)");
	id_time = FuzzLookup("envoisms.id_time(text)");
}

static int
request_run(const uint8_t *data, size_t size)
{
	text	   *input = FuzzText(data, size);
	Datum		arg;
	Datum		d;
	bool		isnull;

	if (input == NULL)
		return -1;
	arg = PointerGetDatum(input);
	d = FuzzCall(api_key_hash, 1, &arg, NULL, &isnull);
	if (!isnull)
	{
		char	   *hash = text_of(d);

		if (strlen(hash) != 64 || strspn(hash, "0123456789abcdef") != 64)
			FuzzFail("api_key_hash returned \"%s\"", hash);
	}
	(void) FuzzCall(sender_id_valid, 1, &arg, NULL, &isnull);
	d = FuzzCall(id_time, 1, &arg, NULL, &isnull);
	if (!isnull && TIMESTAMP_NOT_FINITE(DatumGetTimestampTz(d)))
		FuzzFail("id_time returned an infinite time");
	return 0;
}

const FuzzTarget fuzz_targets[] = {
	{"json_body", json_setup, json_run, json_errors},
	{"phone", phone_setup, phone_run, NULL},
	{"segments", segments_setup, segments_run, NULL},
	{"smpp_pdu", NULL, smpp_pdu_run, NULL},
	{"smpp_receipt", receipt_setup, receipt_run, receipt_errors},
	{"request_text", request_setup, request_run, NULL},
	{NULL}
};
