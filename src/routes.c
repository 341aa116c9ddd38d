/*
 * routes.c — the route of a request, cached per backend.
 *
 * envoisms.api maps (method, path) to a handler through the rows of
 * envoisms.api_endpoints: the exact path, else the path with its third
 * segment as :id (/v1/messages/msg_123 → /v1/messages/:id), else with its
 * fourth (/v1/billing/topups/top_123 → /v1/billing/topups/:id). api_route()
 * keeps the whole table per backend (it holds a few dozen rows, changed
 * only by installing or upgrading the extension) and answers both lookups
 * in one call; the cache is emptied in every backend when the table
 * changes (cache.c).
 */
#include "envoisms.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"

#include "cache.h"

#define ROUTE_METHOD_MAX 15
#define ROUTE_TEMPLATE_MAX 111
#define ROUTE_PERMISSION_MAX 31

typedef struct RouteKey
{
	char		method[ROUTE_METHOD_MAX + 1];	/* "" marks "the whole table is here" */
	char		template[ROUTE_TEMPLATE_MAX + 1];
} RouteKey;

typedef struct Route
{
	RouteKey	key;
	Oid			handler;
	char		permission[ROUTE_PERMISSION_MAX + 1];
	bool		public;
} Route;

static BackendCache route_cache = {{"api_endpoints", NULL}, sizeof(RouteKey), sizeof(Route)};
static SPIPlanPtr load_plan = NULL;

/* Fill key; false when method or template is too long to be a route. */
static bool
route_key(RouteKey *key, const char *method, int method_len, const char *template, int template_len)
{
	memset(key, 0, sizeof(*key));
	if (method_len > ROUTE_METHOD_MAX || template_len > ROUTE_TEMPLATE_MAX)
		return false;
	memcpy(key->method, method, method_len);
	memcpy(key->template, template, template_len);
	return true;
}

/* Every row of api_endpoints, read in a new snapshot; *fits is false when one cannot be cached. */
static Route *
load_routes(int *count, bool *fits)
{
	MemoryContext caller = CurrentMemoryContext;
	Route	   *routes = NULL;

	*count = 0;
	*fits = true;
	BackendCacheQuery(&load_plan, "SELECT e.method, e.template, e.handler::oid, e.permission, e.public"
					  "  FROM envoisms.api_endpoints e", 0, NULL, NULL);
	routes = MemoryContextAllocZero(caller, sizeof(Route) * (SPI_processed + 1));
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	row = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		char	   *method = SPI_getvalue(row, desc, 1);
		char	   *template = SPI_getvalue(row, desc, 2);
		char	   *permission = SPI_getvalue(row, desc, 4);
		bool		isnull;
		Route	   *route = &routes[*count];

		if (!route_key(&route->key, method, strlen(method), template, strlen(template)) ||
			strlen(permission) > ROUTE_PERMISSION_MAX)
		{
			*fits = false;
			continue;
		}
		strcpy(route->permission, permission);
		route->handler = DatumGetObjectId(SPI_getbinval(row, desc, 3, &isnull));
		route->public = DatumGetBool(SPI_getbinval(row, desc, 5, &isnull));
		(*count)++;
	}
	BackendCacheQueryEnd();
	return routes;
}

/* The route for key: from the cache, or from the rows just read. */
static Route *
find_route(const RouteKey *key, Route *routes, int count)
{
	if (routes == NULL)
		return BackendCacheFind(&route_cache, key);
	for (int i = 0; i < count; i++)
		if (memcmp(&routes[i].key, key, sizeof(RouteKey)) == 0)
			return &routes[i];
	return NULL;
}

/*
 * The route of path with its segment after the first `skip` ones of
 * /v1/<segment>/... taken as :id (skip 0: /v1/<segment>/<id>[/rest] as
 * /v1/<segment>/:id[/rest]); NULL when there is none.
 */
static Route *
find_template_route(text *method, const char *p, int len, int skip, Route *routes, int count)
{
	const char *id = p + 4;
	const char *id_end;
	char		template[ROUTE_TEMPLATE_MAX + 1];
	RouteKey	key;
	int			prefix;
	int			rest;

	if (len <= 4 || strncmp(p, "/v1/", 4) != 0)
		return NULL;
	/* step over the literal segments before the id; none may be empty */
	for (int i = 0; i <= skip; i++)
	{
		const char *segment_end = memchr(id, '/', p + len - id);

		if (segment_end == NULL || segment_end == id)
			return NULL;
		id = segment_end + 1;
	}
	if (id >= p + len || *id == '/')
		return NULL;
	id_end = memchr(id, '/', p + len - id);
	if (id_end == NULL)
		id_end = p + len;
	prefix = id - p;
	rest = p + len - id_end;
	if (prefix + 3 + rest > ROUTE_TEMPLATE_MAX)
		return NULL;
	memcpy(template, p, prefix);
	memcpy(template + prefix, ":id", 3);
	memcpy(template + prefix + 3, id_end, rest);
	if (!route_key(&key, VARDATA_ANY(method), VARSIZE_ANY_EXHDR(method), template, prefix + 3 + rest))
		return NULL;
	return find_route(&key, routes, count);
}

PG_FUNCTION_INFO_V1(api_route);

/*
 * api_route(method, path) — (handler, permission, template, public,
 * by_template) of the route serving the request: the exact path's, else
 * the :id template's (by_template true); every field NULL when none does.
 */
Datum
api_route(PG_FUNCTION_ARGS)
{
	text	   *method = PG_GETARG_TEXT_PP(0);
	text	   *path = PG_GETARG_TEXT_PP(1);
	const char *p = VARDATA_ANY(path);
	int			len = VARSIZE_ANY_EXHDR(path);
	TupleDesc	result;
	Datum		values[5] = {0};
	bool		nulls[5] = {true, true, true, true, true};
	RouteKey	key;
	RouteKey	marker;
	Route	   *routes = NULL;
	Route	   *route = NULL;
	int			count = 0;
	bool		by_template = false;
	bool		usable;

	result = BackendResultType(fcinfo);

	memset(&marker, 0, sizeof(marker));
	usable = BackendCacheUsable(&route_cache);
	if (!usable || BackendCacheFind(&route_cache, &marker) == NULL)
	{
		uint64		generation = route_cache.generation;
		bool		fits;

		routes = load_routes(&count, &fits);
		if (fits && usable)
		{
			int			i;
			Route	   *entry = NULL;

			for (i = 0; i < count; i++)
			{
				if ((entry = BackendCacheStore(&route_cache, &routes[i].key, generation)) == NULL)
					break;
				memcpy(entry, &routes[i], sizeof(Route));
			}
			if (i == count)
				BackendCacheStore(&route_cache, &marker, generation);
		}
	}

	if (route_key(&key, VARDATA_ANY(method), VARSIZE_ANY_EXHDR(method), p, len))
		route = find_route(&key, routes, count);
	/* else /v1/<segment>/<id>[/rest], then /v1/<segment>/<segment>/<id>[/rest] */
	for (int skip = 0; route == NULL && skip < 2; skip++)
	{
		route = find_template_route(method, p, len, skip, routes, count);
		by_template = route != NULL;
	}

	if (route != NULL)
	{
		values[0] = ObjectIdGetDatum(route->handler);
		values[1] = CStringGetTextDatum(route->permission);
		values[2] = CStringGetTextDatum(route->key.template);
		values[3] = BoolGetDatum(route->public);
		values[4] = BoolGetDatum(by_template);
		memset(nulls, false, sizeof(nulls));
	}
	return HeapTupleGetDatum(heap_form_tuple(result, values, nulls));
}
