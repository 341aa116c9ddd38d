/*
 * config.c — the gateway's settings: built-in defaults, then the
 * ENVOISMS_GATEWAY_* environment, then command-line flags (the last word
 * wins). Bad input stops the process with a message naming the setting;
 * nothing is silently clamped.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "gateway.h"

#ifndef CONSOLE_DIR
#define CONSOLE_DIR "/usr/share/postgresql/15/envoisms-console"
#endif
#ifndef OPENAPI_PATH
#define OPENAPI_PATH "/usr/share/postgresql/15/extension/envoisms-openapi.json"
#endif

GatewayConfig config;

/* The --help text; every flag with its default and environment variable. */
static void
Usage(FILE *out)
{
	fprintf(out,
			"envoisms-gateway " GATEWAY_VERSION " — HTTP front of envoisms.api()\n"
			"\n"
			"Usage: envoisms-gateway [options]\n"
			"\n"
			"  --listen ADDR:PORT      address to listen on (default 127.0.0.1:8080;\n"
			"                          [::1]:8080 for IPv6)          env ENVOISMS_GATEWAY_LISTEN\n"
			"  --db CONNINFO           libpq conninfo or URI (default \"dbname=envoisms\")\n"
			"                                                        env ENVOISMS_GATEWAY_DB\n"
			"  --threads N             HTTP I/O threads (default: the CPU count, at least 2)\n"
			"                                                        env ENVOISMS_GATEWAY_THREADS\n"
			"  --pool N                database connections, each with its worker thread:\n"
			"                          requests in the database at once (default 2 x CPUs\n"
			"                          + 4, at least 8)              env ENVOISMS_GATEWAY_POOL\n"
			"  --recover-wait SECONDS  when the connection drops after a write request\n"
			"                          was sent, how long to reconnect (to a new primary)\n"
			"                          and learn its outcome by its request token before\n"
			"                          answering 503 (default 30; 0: no request tokens,\n"
			"                          answer 503 at once)\n"
			"                                                        env ENVOISMS_GATEWAY_RECOVER_WAIT\n"
			"  --max-body BYTES        largest request body (default 16777216); larger\n"
			"                          bodies get 413 unread         env ENVOISMS_GATEWAY_MAX_BODY\n"
			"  --max-body-total BYTES  request bodies held at once, all connections\n"
			"                          together (default 67108864, at least --max-body);\n"
			"                          past it 503 with Retry-After, the body unread\n"
			"                                                        env ENVOISMS_GATEWAY_MAX_BODY_TOTAL\n"
			"  --precheck-above BYTES  a body larger than this (or chunked) is read only\n"
			"                          after envoisms.api_precheck() accepted the key\n"
			"                          (default 65536)               env ENVOISMS_GATEWAY_PRECHECK_ABOVE\n"
			"  --max-url BYTES         longest request target (default 8192) -> 414\n"
			"                                                        env ENVOISMS_GATEWAY_MAX_URL\n"
			"  --max-headers BYTES     largest header block (default 32768) -> 431\n"
			"                                                        env ENVOISMS_GATEWAY_MAX_HEADERS\n"
			"  --trusted-proxy CIDR    peer whose --proxy-header is believed; repeatable\n"
			"                          (default none)  env ENVOISMS_GATEWAY_TRUSTED_PROXIES (comma list)\n"
			"  --proxy-header NAME     the header the trusted proxies append the client to:\n"
			"                          X-Forwarded-For (default) or Forwarded (RFC 7239)\n"
			"                                                        env ENVOISMS_GATEWAY_PROXY_HEADER\n"
			"  --cors-origin ORIGIN    allowed browser origin; repeatable (default '*')\n"
			"                                          env ENVOISMS_GATEWAY_CORS_ORIGINS (comma list)\n"
			"  --timeout SECONDS       a request must arrive within this time; idle\n"
			"                          connections close after it (default 15)\n"
			"                                                        env ENVOISMS_GATEWAY_TIMEOUT\n"
			"  --max-connections N     open connections at most (default 4096)\n"
			"                                                        env ENVOISMS_GATEWAY_MAX_CONNECTIONS\n"
			"  --openapi PATH          the JSON served at /v1/openapi.json\n"
			"                          (default " OPENAPI_PATH ")\n"
			"                                                        env ENVOISMS_GATEWAY_OPENAPI\n"
			"  --console-dir DIR       the console's files, served under /console/\n"
			"                          (default " CONSOLE_DIR ")\n"
			"                                                        env ENVOISMS_GATEWAY_CONSOLE_DIR\n"
			"  --help                  this text\n"
			"\n"
			"Endpoints of its own: GET /healthz, GET /metrics, GET /v1/openapi.json,\n"
			"GET /console/... (the web console's files; / and /console redirect there),\n"
			"OPTIONS * (CORS preflight). Everything else is one call of envoisms.api().\n"
			"SIGTERM or SIGINT: stop accepting, finish requests in flight, exit 0.\n");
}

/* Stops the process on a bad setting, naming it; nothing is silently clamped. */
static void
Fail(const char *setting, const char *value, const char *why)
{
	fprintf(stderr, "envoisms-gateway: invalid %s \"%s\": %s\n", setting, value, why);
	exit(2);
}

/* A whole number within [min, max], or Fail(). */
static long long
ParseInteger(const char *setting, const char *value, long long min, long long max)
{
	char	   *end;
	long long	v;

	errno = 0;
	v = strtoll(value, &end, 10);
	if (errno != 0 || end == value || *end != '\0')
		Fail(setting, value, "not an integer");
	if (v < min || v > max)
	{
		char		why[96];

		snprintf(why, sizeof(why), "must be between %lld and %lld", min, max);
		Fail(setting, value, why);
	}
	return v;
}

/* --listen ADDR:PORT or [IPv6]:PORT. */
static void
ParseListen(const char *value)
{
	const char *colon;
	size_t		hostlen;

	if (value[0] == '[')
	{
		const char *close = strchr(value, ']');

		if (close == NULL || close[1] != ':')
			Fail("--listen", value, "expected [IPv6]:PORT");
		hostlen = close - value - 1;
		colon = close + 1;
		value++;
	}
	else
	{
		colon = strrchr(value, ':');
		if (colon == NULL)
			Fail("--listen", value, "expected ADDR:PORT");
		hostlen = colon - value;
	}
	if (hostlen == 0 || hostlen >= sizeof(config.listen_host))
		Fail("--listen", value, "missing or too long address");
	memcpy(config.listen_host, value, hostlen);
	config.listen_host[hostlen] = '\0';
	config.listen_port = (int) ParseInteger("--listen port", colon + 1, 0, 65535);
}

/* --proxy-header: one of the two names, in any case. */
static void
ParseProxyHeader(const char *setting, const char *value)
{
	if (strcasecmp(value, "X-Forwarded-For") == 0)
		config.proxy_header = PROXY_HEADER_X_FORWARDED_FOR;
	else if (strcasecmp(value, "Forwarded") == 0)
		config.proxy_header = PROXY_HEADER_FORWARDED;
	else
		Fail(setting, value, "expected X-Forwarded-For or Forwarded");
}

/* One --trusted-proxy network. */
static void
AddTrusted(const char *value)
{
	if (config.ntrusted >= MAX_CIDRS)
		Fail("--trusted-proxy", value, "too many trusted proxies");
	if (!CidrParse(value, &config.trusted[config.ntrusted]))
		Fail("--trusted-proxy", value, "not an address or CIDR");
	config.ntrusted++;
}

/* One --cors-origin; "*" allows any. */
static void
AddOrigin(const char *value)
{
	if (strcmp(value, "*") == 0)
	{
		config.cors_any = true;
		return;
	}
	if (config.ncors >= MAX_ORIGINS)
		Fail("--cors-origin", value, "too many origins");
	if (strpbrk(value, "\r\n ,") != NULL || value[0] == '\0')
		Fail("--cors-origin", value, "an origin is scheme://host[:port]");
	config.cors_origins[config.ncors++] = strdup(value);
}

/* Calls add for each non-empty item of a comma-separated list. */
static void
EachItem(const char *list, void (*add) (const char *))
{
	char	   *copy = strdup(list);
	char	   *save = NULL;

	if (copy == NULL)
	{
		fprintf(stderr, "envoisms-gateway: out of memory\n");
		exit(1);
	}
	for (char *item = strtok_r(copy, ", \t", &save); item; item = strtok_r(NULL, ", \t", &save))
		add(item);
	free(copy);
}

/* Defaults, then the environment, then the flags; then the checks across settings. */
void
ConfigLoad(int argc, char **argv)
{
	static const struct option options[] = {
		{"listen", required_argument, NULL, 'l'},
		{"db", required_argument, NULL, 'd'},
		{"threads", required_argument, NULL, 't'},
		{"pool", required_argument, NULL, 'p'},
		{"recover-wait", required_argument, NULL, 'r'},
		{"max-body", required_argument, NULL, 'b'},
		{"max-body-total", required_argument, NULL, 'B'},
		{"precheck-above", required_argument, NULL, 'P'},
		{"max-url", required_argument, NULL, 'u'},
		{"max-headers", required_argument, NULL, 'H'},
		{"trusted-proxy", required_argument, NULL, 'x'},
		{"proxy-header", required_argument, NULL, 'F'},
		{"cors-origin", required_argument, NULL, 'c'},
		{"timeout", required_argument, NULL, 'T'},
		{"max-connections", required_argument, NULL, 'm'},
		{"openapi", required_argument, NULL, 'o'},
		{"console-dir", required_argument, NULL, 'C'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0}
	};
	const char *env;
	long		cpus = sysconf(_SC_NPROCESSORS_ONLN);
	bool		cors_given = false;
	bool		cors_flag = false;
	bool		trusted_given = false;
	int			opt;

	memset(&config, 0, sizeof(config));
	strcpy(config.listen_host, "127.0.0.1");
	config.listen_port = 8080;
	config.conninfo = "dbname=envoisms";
	config.threads = cpus > 2 ? (int) cpus : 2;
	/*
	 * Requests in the database at once. The work is CPU in the backends
	 * plus the wait for each commit's flush, so a couple of connections per
	 * core keep the cores busy and let commits share flushes; more only add
	 * context switches and lock contention (on 2 cores: 8 connections served
	 * 1,770 sends/s, 16 served 1,680, 32 served 1,340 with a 1.3 s p99).
	 */
	config.pool_size = cpus > 2 ? (int) (2 * cpus + 4) : 8;
	config.recover_wait = 30;
	config.max_body = 16 * 1024 * 1024;
	config.max_body_total = 64 * 1024 * 1024;
	config.precheck_above = 64 * 1024;
	config.max_url = 8192;
	config.max_headers = 32768;
	config.timeout = 15;
	config.max_connections = 4096;
	config.openapi_path = OPENAPI_PATH;
	config.console_dir = CONSOLE_DIR;
	config.proxy_header = PROXY_HEADER_X_FORWARDED_FOR;

	if ((env = getenv("ENVOISMS_GATEWAY_LISTEN")) && *env)
		ParseListen(env);
	if ((env = getenv("ENVOISMS_GATEWAY_DB")) && *env)
		config.conninfo = strdup(env);
	if ((env = getenv("ENVOISMS_GATEWAY_THREADS")) && *env)
		config.threads = (int) ParseInteger("ENVOISMS_GATEWAY_THREADS", env, 1, 1024);
	if ((env = getenv("ENVOISMS_GATEWAY_POOL")) && *env)
	{
		config.pool_size = (int) ParseInteger("ENVOISMS_GATEWAY_POOL", env, 1, 1024);
	}
	if ((env = getenv("ENVOISMS_GATEWAY_RECOVER_WAIT")) && *env)
		config.recover_wait = (int) ParseInteger("ENVOISMS_GATEWAY_RECOVER_WAIT", env, 0, 3600);
	if ((env = getenv("ENVOISMS_GATEWAY_MAX_BODY")) && *env)
		config.max_body = ParseInteger("ENVOISMS_GATEWAY_MAX_BODY", env, 1, 1LL << 32);
	if ((env = getenv("ENVOISMS_GATEWAY_MAX_BODY_TOTAL")) && *env)
		config.max_body_total = ParseInteger("ENVOISMS_GATEWAY_MAX_BODY_TOTAL", env, 1, 1LL << 40);
	if ((env = getenv("ENVOISMS_GATEWAY_PRECHECK_ABOVE")) && *env)
		config.precheck_above = ParseInteger("ENVOISMS_GATEWAY_PRECHECK_ABOVE", env, 0, 1LL << 32);
	if ((env = getenv("ENVOISMS_GATEWAY_MAX_URL")) && *env)
		config.max_url = ParseInteger("ENVOISMS_GATEWAY_MAX_URL", env, 256, 1 << 20);
	if ((env = getenv("ENVOISMS_GATEWAY_MAX_HEADERS")) && *env)
		config.max_headers = ParseInteger("ENVOISMS_GATEWAY_MAX_HEADERS", env, 1024, 1 << 20);
	if ((env = getenv("ENVOISMS_GATEWAY_TIMEOUT")) && *env)
		config.timeout = (int) ParseInteger("ENVOISMS_GATEWAY_TIMEOUT", env, 1, 86400);
	if ((env = getenv("ENVOISMS_GATEWAY_MAX_CONNECTIONS")) && *env)
		config.max_connections = (int) ParseInteger("ENVOISMS_GATEWAY_MAX_CONNECTIONS", env, 1, 1000000);
	if ((env = getenv("ENVOISMS_GATEWAY_OPENAPI")) && *env)
		config.openapi_path = strdup(env);
	if ((env = getenv("ENVOISMS_GATEWAY_CONSOLE_DIR")) && *env)
		config.console_dir = strdup(env);
	if ((env = getenv("ENVOISMS_GATEWAY_PROXY_HEADER")) && *env)
		ParseProxyHeader("ENVOISMS_GATEWAY_PROXY_HEADER", env);
	if ((env = getenv("ENVOISMS_GATEWAY_TRUSTED_PROXIES")) && *env)
		EachItem(env, AddTrusted);
	if ((env = getenv("ENVOISMS_GATEWAY_CORS_ORIGINS")) && *env)
	{
		EachItem(env, AddOrigin);
		cors_given = true;
	}

	while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1)
	{
		switch (opt)
		{
			case 'l':
				ParseListen(optarg);
				break;
			case 'd':
				config.conninfo = optarg;
				break;
			case 't':
				config.threads = (int) ParseInteger("--threads", optarg, 1, 1024);
				break;
			case 'p':
				config.pool_size = (int) ParseInteger("--pool", optarg, 1, 1024);
				break;
			case 'r':
				config.recover_wait = (int) ParseInteger("--recover-wait", optarg, 0, 3600);
				break;
			case 'b':
				config.max_body = ParseInteger("--max-body", optarg, 1, 1LL << 32);
				break;
			case 'B':
				config.max_body_total = ParseInteger("--max-body-total", optarg, 1, 1LL << 40);
				break;
			case 'P':
				config.precheck_above = ParseInteger("--precheck-above", optarg, 0, 1LL << 32);
				break;
			case 'u':
				config.max_url = ParseInteger("--max-url", optarg, 256, 1 << 20);
				break;
			case 'H':
				config.max_headers = ParseInteger("--max-headers", optarg, 1024, 1 << 20);
				break;
			case 'x':
				/* flags replace the environment's list rather than extend it */
				if (!trusted_given)
					config.ntrusted = 0;
				trusted_given = true;
				AddTrusted(optarg);
				break;
			case 'F':
				ParseProxyHeader("--proxy-header", optarg);
				break;
			case 'c':
				if (!cors_flag)
				{
					config.ncors = 0;
					config.cors_any = false;
				}
				cors_given = cors_flag = true;
				AddOrigin(optarg);
				break;
			case 'T':
				config.timeout = (int) ParseInteger("--timeout", optarg, 1, 86400);
				break;
			case 'm':
				config.max_connections = (int) ParseInteger("--max-connections", optarg, 1, 1000000);
				break;
			case 'o':
				config.openapi_path = optarg;
				break;
			case 'C':
				config.console_dir = optarg;
				break;
			case 'h':
				Usage(stdout);
				exit(0);
			default:
				Usage(stderr);
				exit(2);
		}
	}
	if (optind < argc)
		Fail("argument", argv[optind], "unexpected; see --help");
	if (!cors_given)
		config.cors_any = true;
	if (config.max_body_total < config.max_body)
	{
		char		value[32];

		/* a body of --max-body could then never be accepted */
		snprintf(value, sizeof(value), "%zu", config.max_body_total);
		Fail("--max-body-total", value, "must be at least --max-body");
	}
}
