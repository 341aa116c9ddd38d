/*
 * clientip.c — who the client is. The IP allowlist of an API key is checked
 * in SQL against the address this file hands over, so it must not be
 * spoofable: the socket's peer address is the answer unless that peer is a
 * configured trusted proxy. Only then is the proxy header read
 * (--proxy-header: X-Forwarded-For, or RFC 7239 Forwarded's for=), as one
 * list made of all its lines in order (a proxy may add its own line after
 * one the client sent rather than extend it). The list is walked from the
 * right (the hop our proxy added) leftwards, skipping addresses that are
 * themselves trusted proxies; the first untrusted one is the client. Empty
 * list elements are skipped; an element that is no address (garbage,
 * "unknown", an obfuscated Forwarded node) stops the walk at the last
 * address we could believe.
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "gateway.h"

typedef struct IpAddr
{
	int			family;
	unsigned char addr[16];
} IpAddr;

/* One element of a comma-separated list. */
typedef struct Span
{
	const char *start;
	size_t		len;
} Span;

/* Parses a bare IPv4 or IPv6 address; IPv4-mapped IPv6 becomes IPv4. */
static bool
IpParse(const char *text, IpAddr *out)
{
	memset(out, 0, sizeof(*out));
	if (inet_pton(AF_INET, text, out->addr) == 1)
	{
		out->family = AF_INET;
		return true;
	}
	if (inet_pton(AF_INET6, text, out->addr) == 1)
	{
		static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

		out->family = AF_INET6;
		if (memcmp(out->addr, mapped, 12) == 0)
		{
			memmove(out->addr, out->addr + 12, 4);
			memset(out->addr + 4, 0, 12);
			out->family = AF_INET;
		}
		return true;
	}
	return false;
}

/* "a.b.c.d/n", "x::y/n" or a bare address, for --trusted-proxy. */
bool
CidrParse(const char *text, Cidr *out)
{
	char		buf[INET6_ADDRSTRLEN + 8];
	char	   *slash;
	IpAddr		ip;
	int			maxbits;

	if (strlen(text) >= sizeof(buf))
		return false;
	strcpy(buf, text);
	slash = strchr(buf, '/');
	if (slash)
		*slash = '\0';
	if (!IpParse(buf, &ip))
		return false;
	maxbits = ip.family == AF_INET ? 32 : 128;
	out->family = ip.family;
	memcpy(out->addr, ip.addr, 16);
	out->bits = maxbits;
	if (slash)
	{
		char	   *end;
		long		bits = strtol(slash + 1, &end, 10);

		if (end == slash + 1 || *end != '\0' || bits < 0 || bits > maxbits)
			return false;
		out->bits = (int) bits;
	}
	return true;
}

/* Whether ip lies in cidr (families must match). */
static bool
CidrContains(const Cidr *cidr, const IpAddr *ip)
{
	int			full = cidr->bits / 8;
	int			rest = cidr->bits % 8;

	if (cidr->family != ip->family)
		return false;
	if (memcmp(cidr->addr, ip->addr, full) != 0)
		return false;
	if (rest)
	{
		unsigned char mask = (unsigned char) (0xFF << (8 - rest));

		if ((cidr->addr[full] & mask) != (ip->addr[full] & mask))
			return false;
	}
	return true;
}

/* Whether ip is one of the --trusted-proxy networks. */
static bool
IsTrusted(const IpAddr *ip)
{
	for (int i = 0; i < config.ntrusted; i++)
		if (CidrContains(&config.trusted[i], ip))
			return true;
	return false;
}

/* The address as PostgreSQL's inet reads it; empty when it cannot be written. */
static void
IpFormat(const IpAddr *ip, char *out, size_t outlen)
{
	if (inet_ntop(ip->family, ip->addr, out, outlen) == NULL)
		out[0] = '\0';
}

/*
 * Parses one node: an address with optional port, "a.b.c.d:port",
 * "[v6]" or "[v6]:port", or a bare IPv6 address; spaces around are trimmed.
 */
static bool
NodeParse(const char *start, size_t len, IpAddr *out)
{
	char		buf[INET6_ADDRSTRLEN + 16];
	char	   *p;
	char	   *port = NULL;

	while (len > 0 && (*start == ' ' || *start == '\t'))
		start++, len--;
	while (len > 0 && (start[len - 1] == ' ' || start[len - 1] == '\t'))
		len--;
	if (len == 0 || len >= sizeof(buf))
		return false;
	memcpy(buf, start, len);
	buf[len] = '\0';
	p = buf;
	if (p[0] == '[')
	{
		char	   *close = strchr(p, ']');

		if (!close || (close[1] != '\0' && close[1] != ':'))
			return false;
		if (close[1] == ':')
			port = close + 2;
		*close = '\0';
		p++;
	}
	else if (strchr(p, ':') && strchr(p, ':') == strrchr(p, ':') && strchr(p, '.'))
	{
		port = strchr(p, ':');	/* a.b.c.d:port */
		*port++ = '\0';
	}
	if (port != NULL && (port[0] == '\0' || strspn(port, "0123456789") != strlen(port)))
		return false;
	return IpParse(p, out);
}

/*
 * Splits a list at the commas that are not inside a quoted string (RFC 9110
 * 5.6: a quoted-string may hold a comma; X-Forwarded-For never quotes).
 * Returns a malloc'd array of *count spans, NULL when out of memory.
 */
static Span *
ListSplit(const char *list, int *count)
{
	int			n = 1;
	Span	   *spans;
	const char *start = list;
	bool		quoted = false;

	for (const char *p = list; *p; p++)
		n += *p == ',';
	spans = malloc(n * sizeof(Span));
	if (spans == NULL)
		return NULL;
	n = 0;
	for (const char *p = list;; p++)
	{
		if (*p == '\\' && quoted && p[1] != '\0')
			p++;
		else if (*p == '"')
			quoted = !quoted;
		else if ((*p == ',' && !quoted) || *p == '\0')
		{
			spans[n].start = start;
			spans[n].len = p - start;
			n++;
			if (*p == '\0')
				break;
			start = p + 1;
		}
	}
	*count = n;
	return spans;
}

/* Whether a list element holds nothing but spaces (RFC 9110 lets lists have such). */
static bool
SpanBlank(Span s)
{
	for (size_t i = 0; i < s.len; i++)
		if (s.start[i] != ' ' && s.start[i] != '\t')
			return false;
	return true;
}

/*
 * The for= node of one Forwarded element (RFC 7239 4: pairs separated by
 * ';', a value a token or a quoted string), unquoted into out. False when
 * the element has no for=, has it twice, or is malformed.
 */
static bool
ForwardedFor(Span element, char *out, size_t outlen)
{
	const char *p = element.start;
	const char *end = element.start + element.len;
	bool		found = false;

	while (p < end)
	{
		const char *name;
		size_t		namelen;
		size_t		n = 0;
		bool		is_for;

		while (p < end && (*p == ' ' || *p == '\t' || *p == ';'))
			p++;
		if (p == end)
			break;
		name = p;
		while (p < end && *p != '=' && *p != ';')
			p++;
		if (p == end || *p != '=')
			return false;
		namelen = p - name;
		while (namelen > 0 && (name[namelen - 1] == ' ' || name[namelen - 1] == '\t'))
			namelen--;
		is_for = namelen == 3 && strncasecmp(name, "for", 3) == 0;
		if (is_for && found)
			return false;
		p++;
		if (p < end && *p == '"')
		{
			for (p++; p < end && *p != '"'; p++)
			{
				if (*p == '\\' && p + 1 < end)
					p++;
				if (is_for && n + 1 < outlen)
					out[n++] = *p;
				else if (is_for)
					return false;
			}
			if (p == end)
				return false;	/* unterminated quoted string */
			p++;
		}
		else
		{
			for (; p < end && *p != ';' && *p != ' ' && *p != '\t'; p++)
			{
				if (is_for && n + 1 < outlen)
					out[n++] = *p;
				else if (is_for)
					return false;
			}
		}
		while (p < end && (*p == ' ' || *p == '\t'))
			p++;
		if (p < end && *p != ';')
			return false;
		if (is_for)
		{
			out[n] = '\0';
			found = true;
		}
	}
	return found;
}

/* The address of one list element of the configured proxy header. */
static bool
ElementParse(Span element, IpAddr *out)
{
	char		node[INET6_ADDRSTRLEN + 16];

	if (config.proxy_header == PROXY_HEADER_X_FORWARDED_FOR)
		return NodeParse(element.start, element.len, out);
	return ForwardedFor(element, node, sizeof(node)) && NodeParse(node, strlen(node), out);
}

/* The header whose lines http.c gathers for ClientIpResolve(). */
const char *
ProxyHeaderName(void)
{
	return config.proxy_header == PROXY_HEADER_FORWARDED ? "Forwarded" : "X-Forwarded-For";
}

/* The peer, or behind a trusted proxy the right-most untrusted hop (see the top). */
void
ClientIpResolve(const struct sockaddr *peer, const char *forwarded,
				char *out, size_t outlen)
{
	IpAddr		client;

	memset(&client, 0, sizeof(client));
	out[0] = '\0';
	if (peer == NULL)
		return;
	if (peer->sa_family == AF_INET)
	{
		client.family = AF_INET;
		memcpy(client.addr, &((const struct sockaddr_in *) peer)->sin_addr, 4);
	}
	else if (peer->sa_family == AF_INET6)
	{
		char		text[INET6_ADDRSTRLEN];

		if (inet_ntop(AF_INET6, &((const struct sockaddr_in6 *) peer)->sin6_addr,
					  text, sizeof(text)) == NULL || !IpParse(text, &client))
			return;
	}
	else
		return;

	if (forwarded != NULL && config.ntrusted > 0 && IsTrusted(&client))
	{
		int			count;
		Span	   *elements = ListSplit(forwarded, &count);

		if (elements == NULL)
			return;				/* out of memory: no address, which no allowlist admits */
		/* walk the list right to left while the hops are our proxies */
		for (int i = count - 1; i >= 0; i--)
		{
			IpAddr		hop;

			if (SpanBlank(elements[i]))
				continue;
			if (!ElementParse(elements[i], &hop))
				break;
			client = hop;
			if (!IsTrusted(&hop))
				break;
		}
		free(elements);
	}
	IpFormat(&client, out, outlen);
}
