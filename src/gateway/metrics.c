/*
 * metrics.c — what /metrics shows, in Prometheus text format:
 *
 *   envoisms_gateway_requests_total{method,route,status}
 *   envoisms_gateway_request_duration_seconds{method,route} (histogram)
 *   envoisms_gateway_db_errors_total{kind}  connect | prepare | lost | disconnected | query
 *   envoisms_gateway_outcomes_total{kind}  recovered | replayed | unknown (pool.c)
 *   envoisms_gateway_db_connects_total, envoisms_gateway_pool_{size,in_use,connected}
 *   envoisms_gateway_connections_open, envoisms_gateway_requests_in_flight
 *
 * Routes are the labels the caller gives: the template envoisms.api()
 * matched ("/v1/messages/:id"), the gateway's own route, or "other" for
 * anything no route served, so label cardinality is bounded by the routes
 * whatever clients send. One mutex guards the table; it is taken once per
 * request, for a few hundred nanoseconds, next to a database round trip.
 *
 * A leaf: it calls nothing of the gateway but util.c's buffers. What
 * others keep (the pool's connections, the requests in flight) is read by
 * the caller and handed to MetricsRender as MetricsGauges.
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway.h"

#define MAX_SERIES 512

static const double bucket_bounds[] = {
	0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10
};
#define NBUCKETS (int) (sizeof(bucket_bounds) / sizeof(bucket_bounds[0]))

typedef struct Series
{
	char		method[8];
	char		route[80];
	int			status;
	unsigned long long count;
} Series;

typedef struct Histogram
{
	char		method[8];
	char		route[80];
	unsigned long long buckets[NBUCKETS];
	unsigned long long count;
	double		sum;
} Histogram;

static const char *const db_error_kinds[] = {"connect", "prepare", "lost", "disconnected", "query"};
#define NKINDS (int) (sizeof(db_error_kinds) / sizeof(db_error_kinds[0]))

/* what became of write requests whose connection dropped after they were sent */
static const char *const outcome_kinds[] = {"recovered", "replayed", "unknown"};
#define NOUTCOMES (int) (sizeof(outcome_kinds) / sizeof(outcome_kinds[0]))

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static Series series[MAX_SERIES];
static int	nseries;
static Histogram histograms[MAX_SERIES];
static int	nhistograms;
static unsigned long long db_errors[NKINDS];
static unsigned long long outcomes[NOUTCOMES];
static unsigned long long db_connects;
static unsigned long long dropped_series;
static int	connections_open;

/* The method label: a known method, else "OTHER" (label cardinality stays bounded). */
static const char *
MethodLabel(const char *method)
{
	static const char *const known[] = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", NULL};

	for (int i = 0; known[i]; i++)
		if (strcmp(known[i], method) == 0)
			return known[i];
	return "OTHER";
}

/* Counts a finished request and its duration. */
void
MetricsObserve(const char *method, const char *route, int status, double seconds)
{
	const char *m = MethodLabel(method);
	Series	   *s = NULL;
	Histogram  *h = NULL;

	pthread_mutex_lock(&lock);
	for (int i = 0; i < nseries; i++)
		if (series[i].status == status && strcmp(series[i].method, m) == 0 &&
			strcmp(series[i].route, route) == 0)
		{
			s = &series[i];
			break;
		}
	if (s == NULL && nseries < MAX_SERIES)
	{
		s = &series[nseries++];
		snprintf(s->method, sizeof(s->method), "%s", m);
		snprintf(s->route, sizeof(s->route), "%s", route);
		s->status = status;
	}
	for (int i = 0; i < nhistograms; i++)
		if (strcmp(histograms[i].method, m) == 0 && strcmp(histograms[i].route, route) == 0)
		{
			h = &histograms[i];
			break;
		}
	if (h == NULL && nhistograms < MAX_SERIES)
	{
		h = &histograms[nhistograms++];
		snprintf(h->method, sizeof(h->method), "%s", m);
		snprintf(h->route, sizeof(h->route), "%s", route);
	}
	if (s)
		s->count++;
	else
		dropped_series++;
	if (h)
	{
		for (int b = 0; b < NBUCKETS; b++)
			if (seconds <= bucket_bounds[b])
				h->buckets[b]++;
		h->count++;
		h->sum += seconds;
	}
	pthread_mutex_unlock(&lock);
}

/* Counts a database error of one kind. */
void
MetricsDbError(const char *kind)
{
	pthread_mutex_lock(&lock);
	for (int i = 0; i < NKINDS; i++)
		if (strcmp(kind, db_error_kinds[i]) == 0)
			db_errors[i]++;
	pthread_mutex_unlock(&lock);
}

/* Counts a write request whose connection dropped: its reply recovered by
 * its token, the request replayed, or its outcome left unknown. */
void
MetricsOutcome(const char *kind)
{
	pthread_mutex_lock(&lock);
	for (int i = 0; i < NOUTCOMES; i++)
		if (strcmp(kind, outcome_kinds[i]) == 0)
			outcomes[i]++;
	pthread_mutex_unlock(&lock);
}

/* Counts a successful database connect. */
void
MetricsConnected(void)
{
	pthread_mutex_lock(&lock);
	db_connects++;
	pthread_mutex_unlock(&lock);
}

/* Open HTTP connections go up or down by delta. */
void
MetricsConnections(int delta)
{
	pthread_mutex_lock(&lock);
	connections_open += delta;
	pthread_mutex_unlock(&lock);
}

static bool
Printf(StrBuf *sb, const char *fmt,...) __attribute__((format(printf, 2, 3)));

/* Appends formatted text to the exposition. */
static bool
Printf(StrBuf *sb, const char *fmt,...)
{
	char		buf[512];
	va_list		ap;
	int			n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n < 0)
		return false;
	return StrBufAppend(sb, buf, (size_t) n < sizeof(buf) ? (size_t) n : sizeof(buf) - 1);
}

/* The Prometheus text exposition of everything counted, and of the caller's gauges. */
char *
MetricsRender(const MetricsGauges *gauges, size_t *len)
{
	StrBuf		sb = {0};
	bool		ok = true;

	pthread_mutex_lock(&lock);
	ok &= Printf(&sb, "# HELP envoisms_gateway_requests_total HTTP requests answered, by route template and status.\n"
				 "# TYPE envoisms_gateway_requests_total counter\n");
	for (int i = 0; i < nseries && ok; i++)
		ok &= Printf(&sb, "envoisms_gateway_requests_total{method=\"%s\",route=\"%s\",status=\"%d\"} %llu\n",
					 series[i].method, series[i].route, series[i].status, series[i].count);
	ok &= Printf(&sb, "# HELP envoisms_gateway_request_duration_seconds Time from request line to response queued.\n"
				 "# TYPE envoisms_gateway_request_duration_seconds histogram\n");
	for (int i = 0; i < nhistograms && ok; i++)
	{
		Histogram  *h = &histograms[i];

		for (int b = 0; b < NBUCKETS; b++)
			ok &= Printf(&sb, "envoisms_gateway_request_duration_seconds_bucket{method=\"%s\",route=\"%s\",le=\"%g\"} %llu\n",
						 h->method, h->route, bucket_bounds[b], h->buckets[b]);
		ok &= Printf(&sb, "envoisms_gateway_request_duration_seconds_bucket{method=\"%s\",route=\"%s\",le=\"+Inf\"} %llu\n"
					 "envoisms_gateway_request_duration_seconds_sum{method=\"%s\",route=\"%s\"} %.6f\n"
					 "envoisms_gateway_request_duration_seconds_count{method=\"%s\",route=\"%s\"} %llu\n",
					 h->method, h->route, h->count, h->method, h->route, h->sum,
					 h->method, h->route, h->count);
	}
	ok &= Printf(&sb, "# HELP envoisms_gateway_db_errors_total Database failures seen by the pool.\n"
				 "# TYPE envoisms_gateway_db_errors_total counter\n");
	for (int i = 0; i < NKINDS; i++)
		ok &= Printf(&sb, "envoisms_gateway_db_errors_total{kind=\"%s\"} %llu\n", db_error_kinds[i], db_errors[i]);
	ok &= Printf(&sb, "# HELP envoisms_gateway_outcomes_total Write requests whose connection dropped after "
				 "they were sent: reply recovered by request token, request replayed, outcome unknown.\n"
				 "# TYPE envoisms_gateway_outcomes_total counter\n");
	for (int i = 0; i < NOUTCOMES; i++)
		ok &= Printf(&sb, "envoisms_gateway_outcomes_total{kind=\"%s\"} %llu\n", outcome_kinds[i], outcomes[i]);
	ok &= Printf(&sb, "# HELP envoisms_gateway_db_connects_total Database connections opened.\n"
				 "# TYPE envoisms_gateway_db_connects_total counter\n"
				 "envoisms_gateway_db_connects_total %llu\n"
				 "# HELP envoisms_gateway_pool_size Database connections the pool may hold.\n"
				 "# TYPE envoisms_gateway_pool_size gauge\n"
				 "envoisms_gateway_pool_size %d\n"
				 "# HELP envoisms_gateway_pool_in_use Database connections serving a request now.\n"
				 "# TYPE envoisms_gateway_pool_in_use gauge\n"
				 "envoisms_gateway_pool_in_use %d\n"
				 "# HELP envoisms_gateway_pool_connected Database connections open now.\n"
				 "# TYPE envoisms_gateway_pool_connected gauge\n"
				 "envoisms_gateway_pool_connected %d\n",
				 db_connects, gauges->pool_size, gauges->pool_in_use, gauges->pool_connected);
	ok &= Printf(&sb, "# HELP envoisms_gateway_connections_open HTTP connections open now.\n"
				 "# TYPE envoisms_gateway_connections_open gauge\n"
				 "envoisms_gateway_connections_open %d\n"
				 "# HELP envoisms_gateway_requests_in_flight Requests received and not yet answered.\n"
				 "# TYPE envoisms_gateway_requests_in_flight gauge\n"
				 "envoisms_gateway_requests_in_flight %d\n"
				 "# HELP envoisms_gateway_series_dropped_total Observations not counted because the series table was full.\n"
				 "# TYPE envoisms_gateway_series_dropped_total counter\n"
				 "envoisms_gateway_series_dropped_total %llu\n",
				 connections_open, gauges->requests_in_flight, dropped_series);
	pthread_mutex_unlock(&lock);
	if (!ok)
	{
		StrBufFree(&sb);
		return NULL;
	}
	*len = sb.len;
	return sb.data;
}
