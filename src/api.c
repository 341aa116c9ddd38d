/*
 * api.c — the one piece of C in the HTTP dispatcher: calling a route's handler.
 *
 * Routes are rows of envoisms.api_endpoints naming a handler function
 * (regprocedure) that takes an envoisms.api_request and returns an
 * envoisms.api_reply. Calling it through fmgr rather than through dynamic
 * SQL (EXECUTE format(...)) avoids parsing and planning a statement on every
 * HTTP request, and keeps routing data-driven: an area adds its routes by
 * inserting rows, without touching the dispatcher.
 */
#include "envoisms.h"

#include "catalog/pg_type.h"
#include "utils/lsyscache.h"
#include "utils/typcache.h"

PG_FUNCTION_INFO_V1(api_call);

/* api_call(handler regprocedure, request envoisms.api_request) → envoisms.api_reply */
Datum
api_call(PG_FUNCTION_ARGS)
{
	Oid			handler = PG_GETARG_OID(0);
	Oid			rettype;
	Oid			expected;
	Datum		result;
	LOCAL_FCINFO(callinfo, 1);
	FmgrInfo	flinfo;

	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("api request must not be null")));

	/*
	 * The handler must return what api_call is declared to return
	 * (envoisms.api_reply): two catalog-cache reads, where
	 * get_call_result_type() would build the row's tuple descriptor on
	 * every request.
	 */
	rettype = get_func_rettype(handler);
	expected = get_func_rettype(fcinfo->flinfo->fn_oid);
	if (rettype != expected)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("api handler %u does not return envoisms.api_reply", handler)));

	fmgr_info(handler, &flinfo);
	InitFunctionCallInfoData(*callinfo, &flinfo, 1, PG_GET_COLLATION(), NULL, NULL);
	callinfo->args[0].value = PG_GETARG_DATUM(1);
	callinfo->args[0].isnull = false;
	result = FunctionCallInvoke(callinfo);
	if (callinfo->isnull)
		elog(ERROR, "api handler %u returned null", handler);
	PG_RETURN_DATUM(result);
}
