/*
 * head_fuzz.c — libFuzzer target for the gateway's first look at a request
 * head (src/gateway/head.c HeadInspect), the raw bytes as the acceptor
 * peeks them before libmicrohttpd parses anything, and for the refusal it
 * then writes (src/gateway/response.c ResponseRawError).
 *
 * The acceptor calls HeadInspect on whatever has arrived, so each input is
 * also inspected cut at a few points: a framing refusal (400) of a prefix
 * must stay a refusal of the whole head, and a refusal is a status the
 * contract has with an envelope that reads back.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway.h"

static void
fail(const char *what, const uint8_t *data, size_t size)
{
	fprintf(stderr, "==fuzz== gateway_head: %s (%zu-byte head \"%.*s\")\n", what, size,
			(int) (size < 300 ? size : 300), (const char *) data);
	abort();
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	config.max_url = 8192;
	config.max_headers = 32768;
	config.max_body = 16 * 1024 * 1024;
	return 0;
}

/* HeadInspect on exactly len bytes (a buffer of that size: no slack to read). */
static HeadState
inspect(const uint8_t *data, size_t len, HeadRefusal *refusal)
{
	char	   *copy = malloc(len ? len : 1);
	HeadState	state;

	memcpy(copy, data, len);
	memset(refusal, 0, sizeof(*refusal));
	state = HeadInspect(copy, len, refusal);
	free(copy);
	return state;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	HeadRefusal whole;
	HeadState	state = inspect(data, size, &whole);

	if (state == HEAD_REFUSED)
	{
		char	   *raw;
		size_t		len = 0;
		char		expect[16];

		if (whole.code == NULL || whole.code[0] == '\0' ||
			memchr(whole.message, '\0', sizeof(whole.message)) == NULL)
			fail("a refusal without a code or a message", data, size);
		if (whole.status != 400 && whole.status != 413 && whole.status != 414 &&
			whole.status != 431 && whole.status != 501 && whole.status != 505)
			fail("a refusal with a status the contract does not have", data, size);
		raw = ResponseRawError(whole.status, whole.code, whole.message, &len);
		snprintf(expect, sizeof(expect), "HTTP/1.1 %d ", whole.status);
		if (raw == NULL || len < strlen(expect) || memcmp(raw, expect, strlen(expect)) != 0 ||
			strstr(raw, "\r\n\r\n{\"error\": {\"code\": ") == NULL)
			fail("the refusal's raw response is not an envelope", data, size);
		free(raw);
	}
	else if (state != HEAD_INCOMPLETE && state != HEAD_COMPLETE)
		fail("an unknown state", data, size);

	/* as the bytes arrive: cut at a few points the input itself chooses */
	for (size_t i = 0; i < 3 && i < size; i++)
	{
		HeadRefusal part;
		size_t		cut = (size_t) data[i] * size / 256;

		if (inspect(data, cut, &part) == HEAD_REFUSED && part.status == 400 &&
			state != HEAD_REFUSED)
			fail("a prefix refused as malformed, the whole head accepted", data, size);
	}
	return 0;
}
