/*
 * log.c — the gateway's two kinds of line on stderr, one JSON object each:
 * an access line per request (time, method, route template, status,
 * duration, client address, api_key_id when SQL named it) and error lines.
 * The API key itself is never logged, nor the path's ids, query or body.
 * Each line goes out in one write(2) so that lines from many threads do not
 * interleave.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "gateway.h"

/* UTC with milliseconds, the time field of every line. */
static void
Timestamp(char *out, size_t outlen)
{
	struct timeval tv;
	struct tm	tm;

	gettimeofday(&tv, NULL);
	gmtime_r(&tv.tv_sec, &tm);
	snprintf(out, outlen, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
			 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
			 tm.tm_hour, tm.tm_min, tm.tm_sec, (int) (tv.tv_usec / 1000));
}

/* Writes a line in one write(2) so that threads do not interleave; frees it. */
static void
WriteLine(StrBuf *sb)
{
	if (sb->data == NULL)
		return;
	if (StrBufAppend(sb, "\n", 1))
	{
		size_t		off = 0;

		while (off < sb->len)
		{
			ssize_t		n = write(STDERR_FILENO, sb->data + off, sb->len - off);

			if (n <= 0)
				break;			/* nowhere else to report a logging failure */
			off += n;
		}
	}
	StrBufFree(sb);
}

/* The access line of a request; never the key, the ids, the query or the body. */
void
AccessLog(const char *method, const char *route, int status, double ms,
		  const char *key_id, const char *client_ip, size_t bytes_in)
{
	StrBuf		sb = {0};
	char		head[160];
	char		tail[96];
	bool		ok;

	Timestamp(head, sizeof(head));
	ok = StrBufAppend(&sb, "{\"ts\":\"", 7) && StrBufAppend(&sb, head, strlen(head)) &&
		StrBufAppend(&sb, "\",\"method\":", 11) && JsonQuote(&sb, method) &&
		StrBufAppend(&sb, ",\"route\":", 9) && JsonQuote(&sb, route);
	snprintf(tail, sizeof(tail), ",\"status\":%d,\"duration_ms\":%.3f,\"bytes_in\":%zu",
			 status, ms, bytes_in);
	ok = ok && StrBufAppend(&sb, tail, strlen(tail)) &&
		StrBufAppend(&sb, ",\"client_ip\":", 13) && JsonQuote(&sb, client_ip ? client_ip : "");
	if (ok && key_id && *key_id)
		ok = StrBufAppend(&sb, ",\"key_id\":", 10) && JsonQuote(&sb, key_id);
	ok = ok && StrBufAppend(&sb, "}", 1);
	if (!ok)
	{
		StrBufFree(&sb);
		return;
	}
	WriteLine(&sb);
}

/* An error or info line. */
static void
MessageLine(const char *level, const char *fmt, va_list ap)
{
	StrBuf		sb = {0};
	char		ts[64];
	char		msg[1024];
	size_t		n;

	vsnprintf(msg, sizeof(msg), fmt, ap);
	/* libpq messages end with a newline */
	n = strlen(msg);
	while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
		msg[--n] = '\0';
	Timestamp(ts, sizeof(ts));
	if (StrBufAppend(&sb, "{\"ts\":\"", 7) && StrBufAppend(&sb, ts, strlen(ts)) &&
		StrBufAppend(&sb, "\",\"level\":\"", 11) && StrBufAppend(&sb, level, strlen(level)) &&
		StrBufAppend(&sb, "\",\"message\":", 12) && JsonQuote(&sb, msg) &&
		StrBufAppend(&sb, "}", 1))
		WriteLine(&sb);
	else
		StrBufFree(&sb);
}

/* Something went wrong that an operator should see. */
void
ErrorLog(const char *fmt,...)
{
	va_list		ap;

	va_start(ap, fmt);
	MessageLine("error", fmt, ap);
	va_end(ap);
}

/* Start, stop and other events of the process. */
void
InfoLog(const char *fmt,...)
{
	va_list		ap;

	va_start(ap, fmt);
	MessageLine("info", fmt, ap);
	va_end(ap);
}
