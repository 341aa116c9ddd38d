/*
 * text_fuzz.c — libFuzzer target for the gateway's own text handling, the
 * parts callable without a server:
 *
 *   AddSqlHeaders/JsonString (src/gateway/response.c, compiled into this
 *       file as it is, AddSqlHeaders being static): SQL's response-header
 *       object turned into response headers;
 *   JsonQuote, Utf8Valid, ErrorEnvelope (src/gateway/util.c): request
 *       headers quoted for SQL, bodies and targets checked for UTF-8;
 *   RouteTemplate (src/gateway/metrics.c, compiled in too for its word
 *       list): the metrics label of any path.
 *
 * Input: the text (up to a NUL, as C strings arrive), the same bytes for
 * every function. Checks: quoting yields a JSON string of valid UTF-8 with
 * no raw control character; a route label is "other" or a "/..." template
 * made only of the API's words and ":id".
 */
#include "../../src/gateway/response.c"
#include "../../src/gateway/metrics.c"

static void
fail(const char *what, const char *input)
{
	fprintf(stderr, "==fuzz== gateway_text: %s (input \"%s\")\n", what, input);
	abort();
}

static void
check_quoted(const char *s, size_t len, const char *input)
{
	if (len < 2 || s[0] != '"' || s[len - 1] != '"')
		fail("JsonQuote did not write one JSON string", input);
	if (!Utf8Valid(s, len))
		fail("JsonQuote wrote invalid UTF-8", input);
	for (size_t i = 1; i + 1 < len; i++)
	{
		if ((unsigned char) s[i] < 0x20)
			fail("JsonQuote left a raw control character", input);
		if (s[i] == '\\')
			i++;				/* the escaped character */
		else if (s[i] == '"')
			fail("JsonQuote left a bare quote", input);
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char	   *input = malloc(size + 1);
	char		key_id[64];
	struct MHD_Response *resp;
	StrBuf		sb = {0};
	char	   *envelope;
	char		route[96];

	memcpy(input, data, size);
	input[size] = '\0';

	/* SQL's headers object onto a response */
	key_id[0] = '\0';
	resp = MHD_create_response_from_buffer(0, "", MHD_RESPMEM_PERSISTENT);
	if (resp == NULL)
		abort();
	(void) AddSqlHeaders(resp, input, key_id, sizeof(key_id));
	if (memchr(key_id, '\0', sizeof(key_id)) == NULL)
		fail("the key id is not NUL-terminated", input);
	MHD_destroy_response(resp);

	/* quoting, validation, the envelope */
	(void) Utf8Valid((const char *) data, size);
	if (!JsonQuote(&sb, input))
		abort();
	check_quoted(sb.data, sb.len, input);
	StrBufFree(&sb);
	envelope = ErrorEnvelope("VALIDATION_ERROR", input);
	if (envelope == NULL || !Utf8Valid(envelope, strlen(envelope)))
		fail("ErrorEnvelope wrote invalid UTF-8", input);
	free(envelope);

	/* the metrics label of the same text as a path */
	RouteTemplate(input, route, sizeof(route));
	if (memchr(route, '\0', sizeof(route)) == NULL)
		fail("the route label is not NUL-terminated", input);
	if (strcmp(route, "other") != 0)
	{
		char	   *copy = strdup(route);
		char	   *save = NULL;

		if (route[0] != '/')
			fail("a route label that is neither \"other\" nor a path", input);
		for (char *seg = strtok_r(copy, "/", &save); seg; seg = strtok_r(NULL, "/", &save))
			if (strcmp(seg, ":id") != 0 && !IsRouteWord(seg, strlen(seg)))
				fail("a route label carries a word of the client's", input);
		free(copy);
	}
	free(input);
	return 0;
}
