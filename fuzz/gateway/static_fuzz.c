/*
 * static_fuzz.c — libFuzzer target for the console's path rule
 * (src/gateway/static.c StaticRelativePath): the percent-encoded path
 * after "/console/" as a client sends it.
 *
 * Beyond memory safety it checks what keeps the file system closed: an
 * accepted path is relative, has no empty, "." or ".." segment nor any
 * segment starting with a dot, no NUL, control byte or backslash, and ends
 * in an extension the MIME table serves; and the same input accepted twice
 * gives the same file.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway.h"

static void
fail(const char *what, const char *raw, const char *out)
{
	fprintf(stderr, "==fuzz== gateway_static: %s (path \"%s\", file \"%s\")\n", what, raw, out);
	abort();
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char		raw[1024];
	char		out[512];
	char		again[512];
	size_t		n = size < sizeof(raw) - 1 ? size : sizeof(raw) - 1;

	memcpy(raw, data, n);
	raw[n] = '\0';				/* the target arrives as a C string */
	if (!StaticRelativePath(raw, out, sizeof(out)))
		return 0;
	if (out[0] == '/' || out[0] == '\0')
		fail("an accepted path is not relative", raw, out);
	for (const char *seg = out; seg != NULL; seg = strchr(seg, '/') ? strchr(seg, '/') + 1 : NULL)
	{
		if (*seg == '/' || *seg == '\0')
			fail("an empty segment", raw, out);
		if (*seg == '.')
			fail("a segment starting with a dot", raw, out);
	}
	for (const unsigned char *p = (const unsigned char *) out; *p; p++)
		if (*p < 0x20 || *p == 0x7f || *p == '\\')
			fail("a control byte or backslash", raw, out);
	if (StaticMimeType(out) == NULL)
		fail("an extension that is not served", raw, out);
	if (!StaticRelativePath(raw, again, sizeof(again)) || strcmp(out, again) != 0)
		fail("the same path read twice differs", raw, out);
	return 0;
}
