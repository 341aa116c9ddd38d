/*
 * static.c — the console's files: GET and HEAD of /console/... answered
 * from --console-dir (make install puts console/ there), without the
 * database.
 *
 * A request path becomes a file in three steps, each able to refuse it
 * with a 404 that says nothing about the disk:
 *   1. StaticRelativePath() decodes the percent-encoded path after
 *      "/console/" and refuses what cannot name one of our files: a NUL or
 *      control byte, a backslash, a bad escape, an empty, "." or ".."
 *      segment or any segment starting with a dot (so "%2e%2e" is refused
 *      after decoding as ".." is before it), a name whose extension is not
 *      in the MIME table below. A path ending in "/" means its index.html.
 *   2. realpath() of --console-dir joined with that path must lie inside
 *      realpath() of --console-dir: a symbolic link that leads out of it
 *      is refused as a missing file is.
 *   3. The file must be a regular file that open() and fstat() accept.
 * Nothing else of the file system is reachable, whatever the request.
 *
 * Every answer carries the console's security headers: a
 * Content-Security-Policy without inline script or style and with
 * frame-ancestors 'none', nosniff, DENY framing, no referrer leaving the
 * origin. Files are revalidated on each use (Cache-Control: no-cache) with
 * an ETag of size and modification time, so a page load after an upgrade
 * never mixes old and new modules while an unchanged file costs a 304.
 *
 * "/" and "/console" redirect to "/console/".
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gateway.h"

#define CONSOLE_CSP "default-src 'self'; script-src 'self'; style-src 'self'; " \
	"img-src 'self' data:; connect-src 'self'; font-src 'self'; object-src 'none'; " \
	"frame-ancestors 'none'; base-uri 'none'; form-action 'self'"

static char console_root[PATH_MAX];	/* realpath of --console-dir; "" if absent */
static size_t console_root_len;

static const struct
{
	const char *extension;
	const char *type;
}			mime_types[] =
{
	{".html", "text/html; charset=utf-8"},
	{".css", "text/css; charset=utf-8"},
	{".js", "text/javascript; charset=utf-8"},
	{".mjs", "text/javascript; charset=utf-8"},
	{".json", "application/json; charset=utf-8"},
	{".svg", "image/svg+xml"},
	{".png", "image/png"},
	{".ico", "image/x-icon"},
	{".woff2", "font/woff2"},
	{".txt", "text/plain; charset=utf-8"},
};

/* Resolves --console-dir once; a missing console only makes /console/ 404. */
bool
StaticInit(void)
{
	if (realpath(config.console_dir, console_root) == NULL)
	{
		ErrorLog("cannot open the console directory %s: %s; /console/ will answer 404",
				 config.console_dir, strerror(errno));
		console_root[0] = '\0';
		return true;
	}
	console_root_len = strlen(console_root);
	return true;
}

static int
HexValue(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* The MIME type of a file name by its extension, or NULL when not served. */
const char *
StaticMimeType(const char *name)
{
	const char *dot = strrchr(name, '.');
	const char *slash = strrchr(name, '/');

	if (dot == NULL || (slash != NULL && dot < slash))
		return NULL;
	for (size_t i = 0; i < sizeof(mime_types) / sizeof(mime_types[0]); i++)
		if (strcmp(dot, mime_types[i].extension) == 0)
			return mime_types[i].type;
	return NULL;
}

/*
 * Step 1 above: raw is the percent-encoded path after "/console/" (no
 * query). Writes the relative file path to out; false when the path cannot
 * name a console file.
 */
bool
StaticRelativePath(const char *raw, char *out, size_t outlen)
{
	size_t		n = 0;
	size_t		segment = 0;	/* where the current segment starts in out */

	for (const char *p = raw;; p++)
	{
		unsigned char c = (unsigned char) *p;
		bool		end = (c == '\0');

		if (c == '%')
		{
			int			hi = HexValue(p[1]);
			int			lo = hi < 0 ? -1 : HexValue(p[2]);

			if (lo < 0)
				return false;
			c = (unsigned char) (hi * 16 + lo);
			p += 2;
			if (c == '\0' || c == '/')
				return false;	/* an encoded separator is never ours */
		}
		if (end || c == '/')
		{
			size_t		len = n - segment;

			if (len == 0 && !end)
				return false;	/* "//" */
			if (len > 0 && out[segment] == '.')
				return false;	/* ".", "..", hidden files */
			if (end)
				break;
		}
		else if (c < 0x20 || c == 0x7f || c == '\\')
			return false;
		if (n + 1 >= outlen)
			return false;
		out[n++] = (char) c;
		if (c == '/')
			segment = n;
	}
	if (n == 0 || out[n - 1] == '/')
	{
		static const char index[] = "index.html";

		if (n + sizeof(index) > outlen)
			return false;
		memcpy(out + n, index, sizeof(index));
		n += sizeof(index) - 1;
	}
	out[n] = '\0';
	return StaticMimeType(out) != NULL;
}

/* The console's security headers, on every answer under /console/. */
static bool
AddSecurityHeaders(struct MHD_Response *resp)
{
	return MHD_add_response_header(resp, "Content-Security-Policy", CONSOLE_CSP) == MHD_YES &&
		MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff") == MHD_YES &&
		MHD_add_response_header(resp, "X-Frame-Options", "DENY") == MHD_YES &&
		MHD_add_response_header(resp, "Referrer-Policy", "same-origin") == MHD_YES &&
		MHD_add_response_header(resp, "Cross-Origin-Opener-Policy", "same-origin") == MHD_YES &&
		MHD_add_response_header(resp, "Cross-Origin-Resource-Policy", "same-origin") == MHD_YES;
}

/* Whether If-None-Match (a list, or "*") names etag; W/ prefixes are ignored. */
static bool
EtagMatches(const char *header, const char *etag)
{
	size_t		len = strlen(etag);
	const char *p = header;

	if (header == NULL)
		return false;
	while (*p)
	{
		while (*p == ' ' || *p == ',')
			p++;
		if (strncmp(p, "W/", 2) == 0)
			p += 2;
		if (*p == '*' || (strncmp(p, etag, len) == 0 && (p[len] == '\0' || p[len] == ',' || p[len] == ' ')))
			return true;
		p += strcspn(p, ",");
	}
	return false;
}

/* Queues resp with status and the security headers, then frees it. */
static enum MHD_Result
QueueWithHeaders(struct MHD_Connection *connection, int status, struct MHD_Response *resp)
{
	enum MHD_Result ret = MHD_NO;

	if (AddSecurityHeaders(resp))
		ret = MHD_queue_response(connection, status, resp);
	else
		ErrorLog("cannot add the console's headers");
	MHD_destroy_response(resp);
	return ret;
}

/* A small text answer (404, 405, redirect) with the security headers. */
static enum MHD_Result
StaticMessage(struct MHD_Connection *connection, int status, const char *text,
			  const char *header, const char *value)
{
	struct MHD_Response *resp = MHD_create_response_from_buffer(strlen(text), (void *) text,
																 MHD_RESPMEM_PERSISTENT);

	if (resp == NULL)
		return MHD_NO;
	if (MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; charset=utf-8") != MHD_YES ||
		MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store") != MHD_YES ||
		(header != NULL && MHD_add_response_header(resp, header, value) != MHD_YES))
	{
		MHD_destroy_response(resp);
		return MHD_NO;
	}
	return QueueWithHeaders(connection, status, resp);
}

/*
 * Whether the gateway answers this request itself: any method under
 * /console (405 but for GET and HEAD), and a GET or HEAD of "/" (other
 * methods of "/" stay envoisms.api()'s, as before the console).
 */
bool
StaticPath(const char *method, const char *path)
{
	if (strcmp(path, "/") == 0)
		return strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
	return strcmp(path, "/console") == 0 || strncmp(path, "/console/", 9) == 0;
}

/*
 * Answers a request StaticPath() accepted; *status gets the HTTP status.
 * path is the raw target without its query.
 */
enum MHD_Result
StaticServe(struct MHD_Connection *connection, const char *method, const char *path,
			int *status)
{
	char		relative[PATH_MAX];
	char		joined[PATH_MAX * 2];
	char		resolved[PATH_MAX];
	char		etag[64];
	struct stat st;
	struct MHD_Response *resp;
	const char *type;
	int			fd;

	if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
	{
		*status = MHD_HTTP_METHOD_NOT_ALLOWED;
		return StaticMessage(connection, *status, "method not allowed\n", "Allow", "GET, HEAD");
	}
	if (strcmp(path, "/") == 0 || strcmp(path, "/console") == 0)
	{
		*status = MHD_HTTP_FOUND;
		return StaticMessage(connection, *status, "/console/\n", "Location", "/console/");
	}
	*status = MHD_HTTP_NOT_FOUND;
	if (console_root[0] == '\0' || !StaticRelativePath(path + 9, relative, sizeof(relative)))
		return StaticMessage(connection, *status, "not found\n", NULL, NULL);
	snprintf(joined, sizeof(joined), "%s/%s", console_root, relative);
	if (realpath(joined, resolved) == NULL ||
		strncmp(resolved, console_root, console_root_len) != 0 ||
		resolved[console_root_len] != '/' ||
		(type = StaticMimeType(resolved)) == NULL)
		return StaticMessage(connection, *status, "not found\n", NULL, NULL);
	fd = open(resolved, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return StaticMessage(connection, *status, "not found\n", NULL, NULL);
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
	{
		close(fd);
		return StaticMessage(connection, *status, "not found\n", NULL, NULL);
	}
	snprintf(etag, sizeof(etag), "\"%llx-%llx\"", (unsigned long long) st.st_size,
			 (unsigned long long) st.st_mtim.tv_sec * 1000000000ULL + st.st_mtim.tv_nsec);
	if (EtagMatches(MHD_lookup_connection_value(connection, MHD_HEADER_KIND,
												MHD_HTTP_HEADER_IF_NONE_MATCH), etag))
	{
		close(fd);
		resp = MHD_create_response_from_buffer(0, "", MHD_RESPMEM_PERSISTENT);
		*status = MHD_HTTP_NOT_MODIFIED;
	}
	else
	{
		/* libmicrohttpd closes fd with the response */
		resp = MHD_create_response_from_fd((uint64_t) st.st_size, fd);
		if (resp == NULL)
			close(fd);
		*status = MHD_HTTP_OK;
	}
	if (resp == NULL)
		return MHD_NO;
	if ((*status == MHD_HTTP_OK &&
		 MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type) != MHD_YES) ||
		MHD_add_response_header(resp, MHD_HTTP_HEADER_ETAG, etag) != MHD_YES ||
		MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache") != MHD_YES)
	{
		MHD_destroy_response(resp);
		return MHD_NO;
	}
	return QueueWithHeaders(connection, *status, resp);
}
