/*
 * carrier_http.c — the generic JSON carrier (kind 'http').
 *
 * Submit: POST config.url with a JSON body
 *   {"id": <our message id>, "to", "from", "body", "channel", "encoding",
 *    "segments", "metadata", "buttons"}
 * and the headers Content-Type: application/json, Idempotency-Key: <our
 * message id> (a message sent twice after a crash carries the same key),
 * and Authorization: Bearer config.token when set. A 2xx reply is 'sent';
 * the carrier's id for it is read from the reply's field config.id_field
 * (default "id"; a dotted path such as "data.id" also works) and is what
 * its delivery reports (POST /v1/carriers/:id/dlr) name. A reply without
 * that field is still sent, with our message id as the reference.
 *
 * Failures: timeouts, connection errors, 408, 429 (Retry-After honoured),
 * 3xx and 5xx are transient (retried with backoff and jitter until the
 * message's validity ends); any other 4xx is a permanent rejection
 * (failed, refunded), with the reply's "error"/"message" as the reason.
 */
#include "carrier.h"

#include "utils/memutils.h"

/* Append ,"key": and a JSON text as it is (null when NULL). */
static void
append_raw_json(StringInfo buf, const char *key, const char *json)
{
	appendStringInfo(buf, ",\"%s\":%s", key, json ? json : "null");
}

/* The submit request of a message; NULL (retried later) without config.url. */
static HttpTransfer *
http_prepare(const DispatchItem *item, CarrierResult *result)
{
	char	   *url = JsonGetPath(item->config, strlen(item->config), "url");
	char	   *token = JsonGetPath(item->config, strlen(item->config), "token");
	StringInfoData body;
	HttpTransfer *t;

	if (url == NULL)
	{
		CarrierRetryBackoff(result, "CARRIER_MISCONFIGURED",
							psprintf("carrier %s has no config.url", item->carrier_id), 0);
		return NULL;
	}
	initStringInfo(&body);
	appendStringInfoString(&body, "{\"id\":");
	JsonAppendString(&body, item->message_id);
	appendStringInfoString(&body, ",\"to\":");
	JsonAppendString(&body, item->to_number);
	appendStringInfoString(&body, ",\"from\":");
	JsonAppendString(&body, item->sender_id);
	appendStringInfoString(&body, ",\"body\":");
	JsonAppendString(&body, item->body);
	appendStringInfoString(&body, ",\"channel\":");
	JsonAppendString(&body, item->channel);
	appendStringInfoString(&body, ",\"encoding\":");
	JsonAppendString(&body, item->encoding);
	appendStringInfo(&body, ",\"segments\":%d", item->segments);
	append_raw_json(&body, "metadata", item->metadata);
	append_raw_json(&body, "buttons", item->buttons);
	appendStringInfoChar(&body, '}');

	t = HttpTransferNew(NULL, false);
	curl_easy_setopt(t->easy, CURLOPT_URL, url);
	curl_easy_setopt(t->easy, CURLOPT_TIMEOUT_MS, (long) carrier_timeout_ms);
	curl_easy_setopt(t->easy, CURLOPT_CONNECTTIMEOUT_MS, (long) carrier_timeout_ms);
	HttpTransferAddHeader(t, "Content-Type: application/json");
	HttpTransferAddHeader(t, "Accept: application/json");
	HttpTransferAddHeader(t, psprintf("Idempotency-Key: %s", item->message_id));
	if (token)
		HttpTransferAddHeader(t, psprintf("Authorization: Bearer %s", token));
	HttpTransferSetBody(t, body.data, body.len);
	return t;
}

/* The carrier's answer: sent with its id, or the failure it describes. */
static void
http_finish(const DispatchItem *item, const HttpTransfer *t, CarrierResult *result)
{
	if (t->result == CURLE_OK && t->http_status >= 200 && t->http_status < 300)
	{
		char	   *id_field = JsonGetPath(item->config, strlen(item->config), "id_field");
		char	   *ref = JsonGetPath(t->response, t->response_len, id_field ? id_field : "id");

		CarrierSent(result, ref ? ref : item->message_id);
		return;
	}
	if (t->result == CURLE_OK)
	{
		char	   *code = JsonGetPath(t->response, t->response_len, "error.code");
		char	   *message = JsonGetPath(t->response, t->response_len, "error.message");

		if (message == NULL)
			message = JsonGetPath(t->response, t->response_len, "message");
		if (message == NULL)
			message = JsonGetPath(t->response, t->response_len, "error");
		CarrierClassifyFailure(t, code ? psprintf("CARRIER_%s", code) : NULL,
							   message ? psprintf("HTTP %ld: %s", t->http_status, message) : NULL, result);
		return;
	}
	CarrierClassifyFailure(t, NULL, NULL, result);
}

const CarrierOps HttpCarrier = {
	.kind = "http",
	.prepare = http_prepare,
	.finish = http_finish,
	.reports_from_dispatcher = false,
};
