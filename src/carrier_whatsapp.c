/*
 * carrier_whatsapp.c — the WhatsApp Business Cloud API carrier (kind
 * 'whatsapp_cloud').
 *
 * Submit: POST {config.base_url, default https://graph.facebook.com}/
 * {config.version, default v19.0}/{config.phone_number_id}/messages with
 * Authorization: Bearer config.token. The claim (dispatch_claim,
 * whatsapp_sender) puts into config.phone_number_id the account's own
 * WhatsApp number the message goes from; an OTP keeps the carrier's (the
 * platform's shared sender). The message becomes:
 *   - a template campaign's message (config.template, which the claim
 *     copies from its metadata.template: name, language, parameters
 *     [{name, text}]): that template, its body parameters named as in the
 *     template ({{name}}, {{custom1}} …);
 *   - a "copy" button: the authentication template config.auth_template
 *     (default "otp_code", language config.language, default "fr") with
 *     the code as body parameter and as the copy-code button's parameter
 *     (Meta's shape: button sub_type "url", index "0");
 *   - a "url" button: an interactive cta_url message (Meta's free-form
 *     call-to-action), display_text the button's text;
 *   - a "call" button: the same cta_url with a tel: URL (free-form
 *     messages have no other call-to-action for a phone number; a
 *     PHONE_NUMBER button exists only in templates);
 *   - no button: a text message.
 * The API accepts only what this can carry (check_buttons: one button,
 * call-to-action texts of at most 20 characters), so nothing is dropped.
 * The reply's messages[0].id (wamid…) is the reference that status
 * callbacks (POST /v1/carriers/:id/whatsapp, X-Hub-Signature-256) name.
 *
 * Failures: HTTP 429/5xx and Meta's throttling or temporary error codes
 * (1, 2, 4, 80007, 130429, 131000, 131048, 131056, 133004) are retried;
 * any other 4xx is permanent — and a cascade message then goes on as SMS.
 * Meta's codes are recorded as WHATSAPP_<code>, as status callbacks are.
 */
#include "carrier.h"

#include "utils/memutils.h"

/* Whether a Meta error code means "try again later". */
static bool
meta_transient(const char *code)
{
	static const char *codes[] = {"1", "2", "4", "80007", "130429", "131000", "131048", "131056", "133004"};

	if (code == NULL)
		return false;
	for (int i = 0; i < (int) lengthof(codes); i++)
		if (strcmp(code, codes[i]) == 0)
			return true;
	return false;
}

/* A value of the carrier's config, else fallback. */
static char *
cfg(const DispatchItem *item, const char *key, const char *fallback)
{
	char	   *v = JsonGetPath(item->config, strlen(item->config), key);

	return v ? v : (char *) fallback;
}

/*
 * A template campaign's message: Meta's template with its body parameters
 * named as in the template. The claim puts the template into the config
 * (whatsapp_sender) only for a template campaign's messages, so a message's
 * own metadata cannot turn it into a template.
 */
static void
append_template(const DispatchItem *item, StringInfo b, const char *name)
{
	const char *config = item->config;
	size_t		clen = strlen(config);
	int			i;

	appendStringInfoString(b, ",\"type\":\"template\",\"template\":{\"name\":");
	JsonAppendString(b, name);
	appendStringInfoString(b, ",\"language\":{\"code\":");
	JsonAppendString(b, cfg(item, "template.language", cfg(item, "language", "fr")));
	appendStringInfoChar(b, '}');
	for (i = 0; i < 16; i++)
	{
		char	   *param = JsonGetPath(config, clen, psprintf("template.parameters.%d.name", i));

		if (param == NULL)
			break;
		appendStringInfoString(b, i == 0 ? ",\"components\":[{\"type\":\"body\",\"parameters\":[" : ",");
		appendStringInfoString(b, "{\"type\":\"text\",\"parameter_name\":");
		JsonAppendString(b, param);
		appendStringInfoString(b, ",\"text\":");
		JsonAppendString(b, JsonGetPath(config, clen, psprintf("template.parameters.%d.text", i)));
		appendStringInfoChar(b, '}');
	}
	if (i > 0)
		appendStringInfoString(b, "]}]");
	appendStringInfoChar(b, '}');
}

/* The JSON body of a message for the Cloud API. */
static void
build_body(const DispatchItem *item, StringInfo b)
{
	const char *buttons = item->buttons;
	size_t		blen = buttons ? strlen(buttons) : 0;
	char	   *template = cfg(item, "template.name", NULL);
	char	   *type = buttons ? JsonGetPath(buttons, blen, "0.type") : NULL;
	char	   *copy_code = NULL;

	/* a copy button anywhere makes the copy-code template (messages queued before one button was the rule) */
	for (int i = 0; i < 3 && buttons; i++)
	{
		char		path[32];
		char	   *t;

		snprintf(path, sizeof(path), "%d.type", i);
		t = JsonGetPath(buttons, blen, path);
		if (t == NULL)
			break;
		if (strcmp(t, "copy") == 0)
		{
			snprintf(path, sizeof(path), "%d.value", i);
			copy_code = JsonGetPath(buttons, blen, path);
			break;
		}
	}

	appendStringInfoString(b, "{\"messaging_product\":\"whatsapp\",\"recipient_type\":\"individual\",\"to\":");
	JsonAppendString(b, item->to_number[0] == '+' ? item->to_number + 1 : item->to_number);
	if (template != NULL)
		append_template(item, b, template);
	else if (copy_code != NULL)
	{
		appendStringInfoString(b, ",\"type\":\"template\",\"template\":{\"name\":");
		JsonAppendString(b, cfg(item, "auth_template", "otp_code"));
		appendStringInfoString(b, ",\"language\":{\"code\":");
		JsonAppendString(b, cfg(item, "language", "fr"));
		appendStringInfoString(b, "},\"components\":[{\"type\":\"body\",\"parameters\":[{\"type\":\"text\",\"text\":");
		JsonAppendString(b, copy_code);
		appendStringInfoString(b, "}]},{\"type\":\"button\",\"sub_type\":\"url\",\"index\":\"0\",\"parameters\":[{\"type\":\"text\",\"text\":");
		JsonAppendString(b, copy_code);
		appendStringInfoString(b, "}]}]}");
	}
	else if (type != NULL && (strcmp(type, "url") == 0 || strcmp(type, "call") == 0))
	{
		char	   *value = JsonGetPath(buttons, blen, "0.value");

		appendStringInfoString(b, ",\"type\":\"interactive\",\"interactive\":{\"type\":\"cta_url\",\"body\":{\"text\":");
		JsonAppendString(b, item->body);
		appendStringInfoString(b, "},\"action\":{\"name\":\"cta_url\",\"parameters\":{\"display_text\":");
		JsonAppendString(b, JsonGetPath(buttons, blen, "0.text"));
		appendStringInfoString(b, ",\"url\":");
		JsonAppendString(b, strcmp(type, "call") == 0 ? psprintf("tel:%s", value ? value : "") : value);
		appendStringInfoString(b, "}}}");
	}
	else
	{
		appendStringInfoString(b, ",\"type\":\"text\",\"text\":{\"preview_url\":false,\"body\":");
		JsonAppendString(b, item->body);
		appendStringInfoChar(b, '}');
	}
	appendStringInfoChar(b, '}');
}

/* The Cloud API request of a message; NULL (retried) without phone_number_id or token. */
static HttpTransfer *
whatsapp_prepare(const DispatchItem *item, CarrierResult *result)
{
	char	   *phone_id = cfg(item, "phone_number_id", NULL);
	char	   *token = cfg(item, "token", NULL);
	StringInfoData body;
	HttpTransfer *t;

	if (phone_id == NULL || token == NULL)
	{
		CarrierRetryBackoff(result, "CARRIER_MISCONFIGURED",
							psprintf("carrier %s needs config.phone_number_id and config.token", item->carrier_id),
							0);
		return NULL;
	}
	initStringInfo(&body);
	build_body(item, &body);
	t = HttpTransferNew(NULL, false);
	curl_easy_setopt(t->easy, CURLOPT_URL,
					 psprintf("%s/%s/%s/messages", cfg(item, "base_url", "https://graph.facebook.com"),
							  cfg(item, "version", "v19.0"), phone_id));
	curl_easy_setopt(t->easy, CURLOPT_TIMEOUT_MS, (long) carrier_timeout_ms);
	curl_easy_setopt(t->easy, CURLOPT_CONNECTTIMEOUT_MS, (long) carrier_timeout_ms);
	HttpTransferAddHeader(t, "Content-Type: application/json");
	HttpTransferAddHeader(t, psprintf("Authorization: Bearer %s", token));
	HttpTransferSetBody(t, body.data, body.len);
	return t;
}

/* The Cloud API's answer: sent with its wamid, or the failure Meta describes. */
static void
whatsapp_finish(const DispatchItem *item, const HttpTransfer *t, CarrierResult *result)
{
	char	   *code;
	char	   *message;

	if (t->result == CURLE_OK && t->http_status >= 200 && t->http_status < 300)
	{
		char	   *ref = JsonGetPath(t->response, t->response_len, "messages.0.id");

		if (ref)
			CarrierSent(result, ref);
		else
			CarrierRetryBackoff(result, "CARRIER_BAD_REPLY",
								"the WhatsApp Cloud API reply has no messages[0].id", 0);
		return;
	}
	if (t->result != CURLE_OK)
	{
		CarrierClassifyFailure(t, NULL, NULL, result);
		return;
	}
	code = JsonGetPath(t->response, t->response_len, "error.code");
	message = JsonGetPath(t->response, t->response_len, "error.message");
	if (meta_transient(code))
		CarrierRetryBackoff(result, psprintf("WHATSAPP_%s", code),
							message ? message : "WhatsApp throttled the request", 0);
	else
		CarrierClassifyFailure(t, code ? psprintf("WHATSAPP_%s", code) : NULL, message, result);
}

const CarrierOps WhatsappCarrier = {
	.kind = "whatsapp_cloud",
	.prepare = whatsapp_prepare,
	.finish = whatsapp_finish,
	.reports_from_dispatcher = false,
};
