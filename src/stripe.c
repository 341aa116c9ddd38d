/*
 * stripe.c — the one call envoisms makes to Stripe's REST API from a
 * request: stripe_post(url, secret key, idempotency key, fields, timeout)
 * POSTs the fields form-encoded (Stripe's documented request format, keys
 * such as line_items[0][price_data][currency] kept as written) with
 * "Authorization: Bearer <secret key>" and an Idempotency-Key, and returns
 * the HTTP status and the reply's body, or why there is none.
 *
 * Why in the request, not in a worker: POST /v1/billing/topups must answer
 * the Checkout Session's URL, and a worker could only see the top-up once
 * the request's transaction committed. The caller (topup_create,
 * 82_billing.sql) calls this before it writes anything, so the request holds
 * no lock of its own across the call; the call is bounded by timeout_ms
 * (connect and transfer together) and is abandoned at once when the backend
 * is asked to cancel or to die (statement_timeout, pg_cancel_backend,
 * shutdown): curl's progress callback stops the transfer, then
 * CHECK_FOR_INTERRUPTS raises.
 *
 * Secrets: the secret key goes into the Authorization header only; our
 * buffer and curl's copy of the header list are wiped before they are
 * freed, and it is never part of an error message (curl's messages name the
 * host at most). Memory: the reply buffer is malloc'd because curl's callbacks must
 * never ereport; it is freed on every path.
 */
#include "envoisms.h"

#include <curl/curl.h>

#include "mb/pg_wchar.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"

#define STRIPE_REPLY_MAX (256 * 1024)

typedef struct Reply
{
	char	   *data;
	size_t		len;
	size_t		cap;
	bool		truncated;
} Reply;

static bool curl_ready = false;

static size_t
reply_write(char *data, size_t size, size_t nmemb, void *userp)
{
	Reply	   *r = (Reply *) userp;
	size_t		n = size * nmemb;

	if (r->len + n + 1 > r->cap)
	{
		size_t		cap = Max(r->cap * 2, Max(r->len + n + 1, 8192));
		char	   *p;

		if (cap > STRIPE_REPLY_MAX + 1)
			cap = STRIPE_REPLY_MAX + 1;
		if (r->len + n + 1 > cap)
		{
			r->truncated = true;
			return 0;			/* curl fails the transfer: a reply this large is no session */
		}
		p = realloc(r->data, cap);
		if (p == NULL)
			return 0;
		r->data = p;
		r->cap = cap;
	}
	memcpy(r->data + r->len, data, n);
	r->len += n;
	r->data[r->len] = '\0';
	return n;
}

/* Stop the transfer when the backend is asked to cancel or to die. */
static int
reply_progress(void *clientp, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow)
{
	return (QueryCancelPending || ProcDiePending) ? 1 : 0;
}

/* Append s percent-encoded as application/x-www-form-urlencoded does; brackets kept in keys. */
static void
form_append(StringInfo out, const char *s, int len, bool key)
{
	static const char hex[] = "0123456789ABCDEF";

	for (int i = 0; i < len; i++)
	{
		unsigned char c = (unsigned char) s[i];

		if (envoisms_is_letter(c) || envoisms_is_digit(c) || c == '-' || c == '.' || c == '_' || c == '~' ||
			(key && (c == '[' || c == ']')))
			appendStringInfoChar(out, c);
		else
		{
			appendStringInfoChar(out, '%');
			appendStringInfoChar(out, hex[c >> 4]);
			appendStringInfoChar(out, hex[c & 0x0f]);
		}
	}
}

/* The fields of a flat JSON object (strings, numbers, booleans) as a form body. */
static char *
form_encode(Jsonb *fields)
{
	StringInfoData out;
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken token;
	bool		first = true;

	if (!JB_ROOT_IS_OBJECT(fields))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("stripe_post fields must be a JSON object")));
	initStringInfo(&out);
	it = JsonbIteratorInit(&fields->root);
	while ((token = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (token == WJB_KEY)
		{
			if (!first)
				appendStringInfoChar(&out, '&');
			first = false;
			form_append(&out, v.val.string.val, v.val.string.len, true);
			appendStringInfoChar(&out, '=');
		}
		else if (token == WJB_VALUE)
		{
			if (v.type == jbvString)
				form_append(&out, v.val.string.val, v.val.string.len, false);
			else if (v.type == jbvNumeric)
			{
				char	   *n = DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(v.val.numeric)));

				form_append(&out, n, strlen(n), false);
			}
			else if (v.type == jbvBool)
				appendStringInfoString(&out, v.val.boolean ? "true" : "false");
			else
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("stripe_post fields must be strings, numbers or booleans")));
		}
	}
	return out.data;
}

/* A header value must not be able to end its line. */
static void
check_header_value(const char *what, const char *s, int len)
{
	for (int i = 0; i < len; i++)
		if ((unsigned char) s[i] < 0x20 || s[i] == 0x7f)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("the %s holds a character an HTTP header cannot carry", what)));
}

PG_FUNCTION_INFO_V1(stripe_post);

/*
 * stripe_post(url, secret_key, idempotency_key, fields, timeout_ms) →
 * (status, body, error): the HTTP status and body of Stripe's answer, or
 * status and body NULL and error saying why no answer came (never the key).
 */
Datum
stripe_post(PG_FUNCTION_ARGS)
{
	text	   *url = PG_GETARG_TEXT_PP(0);
	text	   *secret = PG_GETARG_TEXT_PP(1);
	text	   *idempotency = PG_GETARG_TEXT_PP(2);
	Jsonb	   *fields = PG_GETARG_JSONB_P(3);
	int32		timeout_ms = PG_GETARG_INT32(4);
	TupleDesc	result;
	Datum		values[3] = {0};
	bool		nulls[3] = {true, true, true};
	char	   *form;
	char	   *url_c = text_to_cstring(url);
	StringInfoData auth;
	StringInfoData idem;
	CURL	   *easy;
	struct curl_slist *headers = NULL;
	struct curl_slist *h;
	Reply		reply = {0};
	char		errbuf[CURL_ERROR_SIZE] = "";
	CURLcode	rc;
	long		status = 0;

	if (get_call_result_type(fcinfo, NULL, &result) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "stripe_post must return a composite type");
	result = BlessTupleDesc(result);
	if (timeout_ms < 100 || timeout_ms > 60000)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("stripe_post timeout must be from 100 to 60000 ms")));
	check_header_value("secret key", VARDATA_ANY(secret), VARSIZE_ANY_EXHDR(secret));
	check_header_value("idempotency key", VARDATA_ANY(idempotency), VARSIZE_ANY_EXHDR(idempotency));
	form = form_encode(fields);

	if (!curl_ready)
	{
		if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
			elog(ERROR, "could not initialise libcurl");
		curl_ready = true;
	}
	initStringInfo(&auth);
	appendStringInfoString(&auth, "Authorization: Bearer ");
	appendBinaryStringInfo(&auth, VARDATA_ANY(secret), VARSIZE_ANY_EXHDR(secret));
	initStringInfo(&idem);
	appendStringInfoString(&idem, "Idempotency-Key: ");
	appendBinaryStringInfo(&idem, VARDATA_ANY(idempotency), VARSIZE_ANY_EXHDR(idempotency));

	easy = curl_easy_init();
	if (easy == NULL)
		elog(ERROR, "curl_easy_init failed");
	/* nothing below ereports until the handle and the lists are freed */
	if ((h = curl_slist_append(headers, auth.data)) != NULL)
		headers = h;
	if (h != NULL && (h = curl_slist_append(headers, idem.data)) != NULL)
		headers = h;
	if (h != NULL && (h = curl_slist_append(headers, "Content-Type: application/x-www-form-urlencoded")) != NULL)
		headers = h;
	if (h != NULL && (h = curl_slist_append(headers, "Accept: application/json")) != NULL)
		headers = h;
	explicit_bzero(auth.data, auth.len);
	if (h == NULL)
		rc = CURLE_OUT_OF_MEMORY;
	else
	{
		curl_easy_setopt(easy, CURLOPT_URL, url_c);
		curl_easy_setopt(easy, CURLOPT_HTTPHEADER, headers);
		curl_easy_setopt(easy, CURLOPT_POSTFIELDS, form);
		curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) strlen(form));
		curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, (long) timeout_ms);
		curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, (long) Min(timeout_ms, 5000));
		curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
		curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, reply_write);
		curl_easy_setopt(easy, CURLOPT_WRITEDATA, &reply);
		curl_easy_setopt(easy, CURLOPT_NOPROGRESS, 0L);
		curl_easy_setopt(easy, CURLOPT_XFERINFOFUNCTION, reply_progress);
		curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, errbuf);
		curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L);
		curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
		curl_easy_setopt(easy, CURLOPT_PROXY, "");	/* never an environment proxy */
		curl_easy_setopt(easy, CURLOPT_USERAGENT, "envoisms");
		rc = curl_easy_perform(easy);
		if (rc == CURLE_OK)
			curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
	}
	curl_easy_cleanup(easy);
	for (h = headers; h != NULL; h = h->next)
		explicit_bzero(h->data, strlen(h->data));	/* the key's copy in the list */
	curl_slist_free_all(headers);
	pfree(auth.data);
	pfree(idem.data);

	if (rc == CURLE_ABORTED_BY_CALLBACK)
	{
		free(reply.data);
		reply.data = NULL;
		reply.len = 0;
		CHECK_FOR_INTERRUPTS();
	}
	if (rc == CURLE_OK && reply.len > 0 && strlen(reply.data) == reply.len &&
		pg_verifymbstr(reply.data, reply.len, true))
	{
		values[0] = Int32GetDatum((int32) status);
		values[1] = CStringGetTextDatum(reply.data);
		nulls[0] = nulls[1] = false;
	}
	else if (rc == CURLE_OK)
	{
		values[0] = Int32GetDatum((int32) status);
		nulls[0] = false;
		values[2] = CStringGetTextDatum(reply.len == 0 ? "an empty reply" : "a reply that is no UTF-8 text");
		nulls[2] = false;
	}
	else
	{
		values[2] = CStringGetTextDatum(reply.truncated ? "a reply larger than 256 kB"
										: errbuf[0] != '\0' ? errbuf : curl_easy_strerror(rc));
		nulls[2] = false;
	}
	free(reply.data);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(result, values, nulls)));
}
