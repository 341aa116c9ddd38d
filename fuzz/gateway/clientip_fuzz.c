/*
 * clientip_fuzz.c — libFuzzer target for the gateway's client address
 * (src/gateway/clientip.c): the proxy header (X-Forwarded-For, or RFC 7239
 * Forwarded) as a client sends it, behind a peer and a trusted-proxy list
 * chosen by the input's first two bytes.
 *
 * Input: byte 0 picks trusted CIDRs (one bit each of the first seven of
 * the list below) and with its top bit the Forwarded syntax, byte 1 the
 * peer address, the rest is the header value (up to a NUL).
 * Beyond memory safety it checks what the IP allowlist relies on: the
 * answer is an address, and an untrusted peer is always the answer.
 */
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway.h"

GatewayConfig config;

static const char *const cidrs[] = {
	"127.0.0.1/32", "10.0.0.0/8", "::1/128", "fd00::/8",
	"192.168.1.0/24", "2001:db8::/32", "0.0.0.0/0", "172.16.0.0/12",
};

static const char *const peers[] = {
	"127.0.0.1", "10.1.2.3", "203.0.113.9", "192.168.1.77",
	"::1", "fd00::1", "2001:db8::5", "::ffff:10.0.0.1",
};

static void
fail(const char *what, const char *xff, const char *out)
{
	fprintf(stderr, "==fuzz== gateway_clientip: %s (X-Forwarded-For \"%s\", answer \"%s\")\n",
			what, xff, out);
	abort();
}

/* The peer as the kernel hands it over. */
static socklen_t
peer_sockaddr(const char *text, struct sockaddr_storage *ss)
{
	memset(ss, 0, sizeof(*ss));
	if (strchr(text, ':') == NULL)
	{
		struct sockaddr_in *in = (struct sockaddr_in *) ss;

		in->sin_family = AF_INET;
		inet_pton(AF_INET, text, &in->sin_addr);
		return sizeof(*in);
	}
	else
	{
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *) ss;

		in6->sin6_family = AF_INET6;
		inet_pton(AF_INET6, text, &in6->sin6_addr);
		return sizeof(*in6);
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct sockaddr_storage ss;
	const char *peer;
	char	   *xff;
	char		out[INET6_ADDRSTRLEN];
	unsigned char buf[16];
	Cidr		cidr;

	if (size < 2)
		return -1;
	config.ntrusted = 0;
	config.proxy_header = (data[0] & 0x80) ? PROXY_HEADER_FORWARDED : PROXY_HEADER_X_FORWARDED_FOR;
	for (int i = 0; i < 7; i++)
		if ((data[0] >> i) & 1)
		{
			if (!CidrParse(cidrs[i], &config.trusted[config.ntrusted]))
				fail("a valid CIDR was refused", cidrs[i], "");
			config.ntrusted++;
		}
	peer = peers[data[1] % 8];
	peer_sockaddr(peer, &ss);

	xff = malloc(size - 2 + 1);	/* exactly the header, as MHD hands it over */
	memcpy(xff, data + 2, size - 2);
	xff[size - 2] = '\0';

	ClientIpResolve((struct sockaddr *) &ss, xff, out, sizeof(out));
	if (memchr(out, '\0', sizeof(out)) == NULL)
		fail("the answer is not NUL-terminated", xff, "");
	/* (empty only when out of memory: no address, which no allowlist admits) */
	if (out[0] != '\0' && inet_pton(AF_INET, out, buf) != 1 && inet_pton(AF_INET6, out, buf) != 1)
		fail("the answer is not an address", xff, out);
	ClientIpResolve((struct sockaddr *) &ss, NULL, out, sizeof(out));
	{
		char		direct[INET6_ADDRSTRLEN];
		bool		trusted = false;
		Cidr		peer_cidr;

		snprintf(direct, sizeof(direct), "%s", out);
		if (!CidrParse(peer, &peer_cidr))
			fail("a peer address is not a CIDR", peer, "");
		ClientIpResolve((struct sockaddr *) &ss, xff, out, sizeof(out));
		for (int i = 0; i < config.ntrusted; i++)
		{
			const Cidr *c = &config.trusted[i];
			int			full = c->bits / 8;
			int			rest = c->bits % 8;

			if (c->family == peer_cidr.family && memcmp(c->addr, peer_cidr.addr, full) == 0 &&
				(rest == 0 || ((c->addr[full] ^ peer_cidr.addr[full]) & (0xFF << (8 - rest))) == 0))
				trusted = true;
		}
		if (!trusted && strcmp(out, direct) != 0)
			fail("an untrusted peer was replaced by the proxy header", xff, out);
	}

	/* the configuration parser, on the same text */
	if (CidrParse(xff, &cidr) && (cidr.bits < 0 || cidr.bits > (cidr.family == AF_INET ? 32 : 128)))
		fail("CidrParse accepted an impossible prefix length", xff, "");
	free(xff);
	return 0;
}
