/*
 * body.c — where request bodies live, and how much of them at once.
 *
 * Every stored byte of a request body is counted against --max-body-total,
 * across all connections, before it is stored: a buffer's capacity is
 * exactly what its request holds of the total. A body whose length is
 * declared (Content-Length) is reserved whole before its first byte is read,
 * so a request that does not fit is refused unread; a chunked one grows by
 * doubling, up to --max-body, each step reserved first. The reservation is
 * given back when the body is freed (once the database has it, or when the
 * request ends). Large buffers are mmap'd (main.c fixes the threshold), so
 * freeing one returns it to the system and the resident size follows the
 * bodies in flight.
 *
 * Locking: the total is one atomic counter; a Body belongs to its request.
 */
#include <stdlib.h>

#include "gateway.h"

#define FIRST_RESERVE (64 * 1024)

static size_t held;				/* sum of Body.reserved */

/* Takes n more bytes of the total for body; false when they are not there. */
static bool
Take(Body *body, size_t n)
{
	size_t		now = __atomic_load_n(&held, __ATOMIC_RELAXED);

	do
	{
		if (now + n > config.max_body_total)
			return false;
	} while (!__atomic_compare_exchange_n(&held, &now, now + n, true,
										  __ATOMIC_SEQ_CST, __ATOMIC_RELAXED));
	body->reserved += n;
	return true;
}

/* A declared body, reserved whole before any of it is read. */
BodyStore
BodyReserve(Body *body, size_t length)
{
	if (length == 0)
		return BODY_STORED;
	if (!Take(body, length + 1))
		return BODY_OVER_BUDGET;
	if (!StrBufReserve(&body->buf, body->reserved))
		return BODY_NO_MEMORY;
	return BODY_STORED;
}

/* Appends n bytes, reserving first when the buffer must grow. */
BodyStore
BodyAppend(Body *body, const char *data, size_t n)
{
	size_t		need = body->buf.len + n + 1;

	if (need > body->reserved)
	{
		size_t		want = body->reserved > 0 ? 2 * body->reserved : FIRST_RESERVE;

		if (want < need)
			want = need;
		if (want > config.max_body + 1)
			want = config.max_body + 1;
		if (want < need || !Take(body, want - body->reserved))
			return BODY_OVER_BUDGET;
	}
	if (!StrBufReserve(&body->buf, body->reserved) || !StrBufAppend(&body->buf, data, n))
		return BODY_NO_MEMORY;
	return BODY_STORED;
}

/* Frees the body and gives its bytes back to the total. */
void
BodyRelease(Body *body)
{
	StrBufFree(&body->buf);
	if (body->reserved > 0)
		__atomic_sub_fetch(&held, body->reserved, __ATOMIC_SEQ_CST);
	body->reserved = 0;
}
