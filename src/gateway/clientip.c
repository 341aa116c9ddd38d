/*
 * clientip.c — who the client is. The IP allowlist of an API key is checked
 * in SQL against the address this file hands over, so it must not be
 * spoofable: the socket's peer address is the answer unless that peer is a
 * configured trusted proxy. Only then is X-Forwarded-For read, from the
 * right (the hop our proxy added) leftwards, skipping addresses that are
 * themselves trusted proxies; the first untrusted one is the client. A
 * malformed entry stops the walk at the last address we could believe.
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway.h"

typedef struct IpAddr
{
	int			family;
	unsigned char addr[16];
} IpAddr;

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

/* Trims spaces and an optional ":port" / "[v6]:port" from one XFF item. */
static bool
ForwardedItem(const char *start, size_t len, IpAddr *out)
{
	char		buf[INET6_ADDRSTRLEN + 16];
	char	   *p;

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

		if (!close)
			return false;
		*close = '\0';
		p++;
	}
	else if (strchr(p, ':') && strchr(p, ':') == strrchr(p, ':') && strchr(p, '.'))
		*strchr(p, ':') = '\0';	/* a.b.c.d:port */
	return IpParse(p, out);
}

/* The peer, or behind a trusted proxy the right-most untrusted hop (see the top). */
void
ClientIpResolve(const struct sockaddr *peer, const char *forwarded_for,
				char *out, size_t outlen)
{
	IpAddr		client;
	const char *end;

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

	if (forwarded_for != NULL && config.ntrusted > 0 && IsTrusted(&client))
	{
		/* walk the list right to left while the hops are our proxies */
		end = forwarded_for + strlen(forwarded_for);
		while (end > forwarded_for)
		{
			const char *start = end;
			IpAddr		hop;

			while (start > forwarded_for && start[-1] != ',')
				start--;
			if (!ForwardedItem(start, end - start, &hop))
				break;
			client = hop;
			if (!IsTrusted(&hop))
				break;
			end = start > forwarded_for ? start - 1 : start;
		}
	}
	IpFormat(&client, out, outlen);
}
