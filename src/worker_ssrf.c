/*
 * worker_ssrf.c — the address guard of webhook deliveries.
 *
 * A webhook URL is chosen by a customer, so a delivery must not become a way
 * to reach the database host's own services or the private network behind
 * it (server-side request forgery). The check runs on the address libcurl
 * is about to connect to (CURLOPT_OPENSOCKETFUNCTION), after DNS: a host
 * name that resolves to 127.0.0.1, DNS rebinding between a check and the
 * connect, or a literal such as [::ffff:10.0.0.1] cannot get around it, and
 * redirects are never followed anyway.
 *
 * Refused unless envoisms.webhook_allow_private is on (tests): IPv4
 * unspecified/"this network" 0/8, private 10/8, 172.16/12, 192.168/16,
 * CGNAT 100.64/10, loopback 127/8, link-local 169.254/16 (cloud metadata),
 * IETF 192.0.0/24, benchmarking 198.18/15, multicast 224/4, reserved 240/4
 * and broadcast; IPv6 unspecified ::, loopback ::1, IPv4-mapped
 * ::ffff:0:0/96 and IPv4-compatible ::/96, NAT64 64:ff9b::/96 and the
 * local-use NAT64 64:ff9b:1::/48, the transition prefixes that carry an IPv4
 * address inside (6to4 2002::/16, Teredo 2001::/32: both deprecated, so
 * refused whole rather than trusting the embedded address), discard-only
 * 100::/64, ULA fc00::/7, link-local fe80::/10, site-local fec0::/10,
 * multicast ff00::/8 and documentation 2001:db8::/32.
 *
 * envoisms.webhook_address_refusal(inet) exposes the classifier to SQL, so
 * that it is tested address by address without connecting anywhere.
 */
#include "envoisms.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "utils/inet.h"

#include "http_pool.h"
#include "ssrf.h"

/* Set by envoisms.webhook_allow_private (defined by WebhooksInit). */
bool		webhook_allow_private = false;

/* Whether an IPv4 address (host order) is outside every refused range. */
static bool
ipv4_allowed(uint32 a, char *reason, size_t reasonlen)
{
	static const struct
	{
		uint32		net;
		int			bits;
		const char *what;
	}			refused[] = {
		{0x00000000, 8, "unspecified"},
		{0x0A000000, 8, "private"},
		{0x64400000, 10, "carrier-grade NAT"},
		{0x7F000000, 8, "loopback"},
		{0xA9FE0000, 16, "link-local"},
		{0xAC100000, 12, "private"},
		{0xC0000000, 24, "IETF protocol assignments"},
		{0xC0A80000, 16, "private"},
		{0xC6120000, 15, "benchmarking"},
		{0xE0000000, 4, "multicast"},
		{0xF0000000, 4, "reserved"},
	};

	for (int i = 0; i < (int) lengthof(refused); i++)
	{
		uint32		mask = refused[i].bits == 0 ? 0 : 0xFFFFFFFFu << (32 - refused[i].bits);

		if ((a & mask) == refused[i].net)
		{
			snprintf(reason, reasonlen, "%s address", refused[i].what);
			return false;
		}
	}
	return true;
}

/* Whether a delivery may connect to this address; else the reason, in words. */
bool
SsrfAddressAllowed(const struct sockaddr *sa, char *reason, size_t reasonlen)
{
	if (sa->sa_family == AF_INET)
	{
		const struct sockaddr_in *in = (const struct sockaddr_in *) sa;

		return ipv4_allowed(ntohl(in->sin_addr.s_addr), reason, reasonlen);
	}
	if (sa->sa_family == AF_INET6)
	{
		const uint8 *b = ((const struct sockaddr_in6 *) sa)->sin6_addr.s6_addr;
		static const uint8 zero[16] = {0};
		static const uint8 mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
		static const uint8 nat64[12] = {0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0};
		static const uint8 nat64_local[6] = {0, 0x64, 0xff, 0x9b, 0, 0x01};
		static const uint8 discard[8] = {0x01, 0, 0, 0, 0, 0, 0, 0};
		const char *what = NULL;

		if (memcmp(b, zero, 15) == 0 && (b[15] == 0 || b[15] == 1))
			what = b[15] == 0 ? "unspecified" : "loopback";
		else if (memcmp(b, mapped, 12) == 0)
			what = "IPv4-mapped";
		else if (memcmp(b, zero, 12) == 0)
			what = "IPv4-compatible";
		else if (memcmp(b, nat64, 12) == 0 || memcmp(b, nat64_local, 6) == 0)
			what = "NAT64";
		else if (b[0] == 0x20 && b[1] == 0x02)
			what = "6to4";
		else if (b[0] == 0x20 && b[1] == 0x01 && b[2] == 0 && b[3] == 0)
			what = "Teredo";
		else if (memcmp(b, discard, 8) == 0)
			what = "discard-only";
		else if ((b[0] & 0xfe) == 0xfc)
			what = "unique local";
		else if (b[0] == 0xfe && (b[1] & 0xc0) == 0x80)
			what = "link-local";
		else if (b[0] == 0xfe && (b[1] & 0xc0) == 0xc0)
			what = "site-local";
		else if (b[0] == 0xff)
			what = "multicast";
		else if (b[0] == 0x20 && b[1] == 0x01 && b[2] == 0x0d && b[3] == 0xb8)
			what = "documentation";
		if (what)
		{
			snprintf(reason, reasonlen, "%s IPv6 address", what);
			return false;
		}
		return true;
	}
	snprintf(reason, reasonlen, "address family %d", sa->sa_family);
	return false;
}

/* Open the socket curl asks for, unless the guard refuses its address. */
curl_socket_t
SsrfOpenSocket(void *clientp, curlsocktype purpose, struct curl_sockaddr *address)
{
	HttpTransfer *t = (HttpTransfer *) clientp;

	if (!webhook_allow_private &&
		!SsrfAddressAllowed(&address->addr, t->ssrf_reason, sizeof(t->ssrf_reason)))
	{
		char		host[INET6_ADDRSTRLEN] = "?";

		if (address->family == AF_INET)
			inet_ntop(AF_INET, &((struct sockaddr_in *) &address->addr)->sin_addr, host, sizeof(host));
		else if (address->family == AF_INET6)
			inet_ntop(AF_INET6, &((struct sockaddr_in6 *) &address->addr)->sin6_addr, host, sizeof(host));
		strlcat(t->ssrf_reason, " ", sizeof(t->ssrf_reason));
		strlcat(t->ssrf_reason, host, sizeof(t->ssrf_reason));
		t->ssrf_refused = true;
		return CURL_SOCKET_BAD;
	}
	return socket(address->family, address->socktype, address->protocol);
}

PG_FUNCTION_INFO_V1(webhook_address_refusal);

/*
 * webhook_address_refusal(address inet) → text: why a webhook delivery
 * would refuse to connect to this address, or NULL when it would connect.
 * The classifier itself, whatever envoisms.webhook_allow_private says.
 */
Datum
webhook_address_refusal(PG_FUNCTION_ARGS)
{
	inet	   *address = PG_GETARG_INET_PP(0);
	struct sockaddr_storage ss;
	char		reason[128];

	memset(&ss, 0, sizeof(ss));
	if (ip_family(address) == PGSQL_AF_INET)
	{
		struct sockaddr_in *in = (struct sockaddr_in *) &ss;

		in->sin_family = AF_INET;
		memcpy(&in->sin_addr, ip_addr(address), 4);
	}
	else
	{
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *) &ss;

		in6->sin6_family = AF_INET6;
		memcpy(&in6->sin6_addr, ip_addr(address), 16);
	}
	if (SsrfAddressAllowed((struct sockaddr *) &ss, reason, sizeof(reason)))
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(reason));
}
