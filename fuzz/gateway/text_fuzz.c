/*
 * text_fuzz.c — libFuzzer target for the gateway's own text handling, the
 * parts callable without a server:
 *
 *   AddSqlHeaders/JsonString (src/gateway/response.c, compiled into this
 *       file as it is, AddSqlHeaders being static): SQL's response-header
 *       object turned into response headers, and the notes meant for the
 *       gateway alone (the key id and the route label) taken out of it;
 *   JsonQuote, Utf8Valid, ErrorEnvelope (src/gateway/util.c): request
 *       headers quoted for SQL, bodies and targets checked for UTF-8.
 *
 * Input: the text (up to a NUL, as C strings arrive), the same bytes for
 * every function. Checks: quoting yields a JSON string of valid UTF-8 with
 * no raw control character; the notes are NUL-terminated, and a route label
 * taken is a "/..." template of letters, digits and "/:._-" only (it goes
 * into metrics labels and the access log as it is).
 */
#include "../../src/gateway/response.c"

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
	ReplyNotes	notes;
	struct MHD_Response *resp;
	StrBuf		sb = {0};
	char	   *envelope;

	memcpy(input, data, size);
	input[size] = '\0';

	/* SQL's headers object onto a response */
	notes.key_id[0] = '\0';
	notes.route[0] = '\0';
	resp = MHD_create_response_from_buffer(0, "", MHD_RESPMEM_PERSISTENT);
	if (resp == NULL)
		abort();
	(void) AddSqlHeaders(resp, input, &notes);
	if (memchr(notes.key_id, '\0', sizeof(notes.key_id)) == NULL)
		fail("the key id is not NUL-terminated", input);
	if (memchr(notes.route, '\0', sizeof(notes.route)) == NULL)
		fail("the route label is not NUL-terminated", input);
	if (notes.route[0] != '\0' &&
		(notes.route[0] != '/' ||
		 notes.route[strspn(notes.route, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/:._-")] != '\0'))
		fail("a route label of characters a label must not hold", input);
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

	free(input);
	return 0;
}
