/*
 * driver.c — libFuzzer inside a real PostgreSQL backend.
 *
 * The extension's parsers are SQL functions built on the backend's own
 * palloc, ereport, text, jsonb and tuplestores, and the postgres executable
 * cannot be linked into a fuzzer. So the fuzzer comes to the backend: this
 * library holds the extension's source files (compiled as they are, with
 * coverage and sanitizers), the targets and libFuzzer's driver, and is
 * loaded by a single-user backend (fuzz/run.sh) that calls
 *
 *   SELECT fuzz_main('json_body', ARRAY['-max_total_time=60', 'corpus/json_body']);
 *
 * fuzz_main() looks the target's SQL functions up in the catalog (run.sh
 * declares them from the extension's own install script, pointing at this
 * library) and hands control to LLVMFuzzerRunDriver, which never returns:
 * libFuzzer exits the process, with status 0 when every input passed.
 *
 * Per input: a fresh memory context where every palloc is its own malloc
 * (malloc_context.c, so ASan sees palloc overflows), the target run under
 * PG_TRY, then the context reset. An error the target lists as a possible
 * answer to bad input is caught and forgotten (the functions hold no locks,
 * buffers or snapshots of their own); any other error aborts, which
 * libFuzzer records as a crash with the input that caused it.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/tuptable.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "nodes/execnodes.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/regproc.h"

#include "fuzz_backend.h"

PG_MODULE_MAGIC;

extern int	LLVMFuzzerRunDriver(int *argc, char ***argv,
								int (*callback) (const uint8_t *data, size_t size));

static const FuzzTarget *current;
static MemoryContext input_context;

FuzzFunction *
FuzzLookup(const char *signature)
{
	FuzzFunction *f = MemoryContextAllocZero(TopMemoryContext, sizeof(FuzzFunction));
	Oid			oid = DatumGetObjectId(DirectFunctionCall1(regprocedurein,
														   CStringGetDatum(signature)));
	TupleDesc	desc;
	Oid			rettype;

	fmgr_info_cxt(oid, &f->flinfo, TopMemoryContext);
	if (f->flinfo.fn_retset)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		switch (get_func_result_type(oid, &rettype, &desc))
		{
			case TYPEFUNC_COMPOSITE:
				f->result = CreateTupleDescCopy(desc);
				break;
			case TYPEFUNC_SCALAR:
				f->result = CreateTemplateTupleDesc(1);
				TupleDescInitEntry(f->result, 1, "value", rettype, -1, 0);
				break;
			default:
				elog(ERROR, "%s: unsupported result type", signature);
		}
		MemoryContextSwitchTo(old);
	}
	return f;
}

static FunctionCallInfo
make_call(FuzzFunction *f, int nargs, const Datum *args, const bool *argnulls)
{
	FunctionCallInfo fcinfo = palloc0(SizeForFunctionCallInfo(nargs));

	InitFunctionCallInfoData(*fcinfo, &f->flinfo, nargs, InvalidOid, NULL, NULL);
	for (int i = 0; i < nargs; i++)
	{
		fcinfo->args[i].value = args[i];
		fcinfo->args[i].isnull = argnulls ? argnulls[i] : false;
	}
	return fcinfo;
}

static bool
strict_null(FuzzFunction *f, int nargs, const bool *argnulls)
{
	if (!f->flinfo.fn_strict || argnulls == NULL)
		return false;
	for (int i = 0; i < nargs; i++)
		if (argnulls[i])
			return true;
	return false;
}

Datum
FuzzCall(FuzzFunction *f, int nargs, const Datum *args, const bool *argnulls, bool *isnull)
{
	FunctionCallInfo fcinfo;
	Datum		result;

	if (strict_null(f, nargs, argnulls))
	{
		*isnull = true;
		return (Datum) 0;
	}
	fcinfo = make_call(f, nargs, args, argnulls);
	result = FunctionCallInvoke(fcinfo);
	*isnull = fcinfo->isnull;
	return result;
}

Datum **
FuzzCallSRF(FuzzFunction *f, int nargs, const Datum *args, const bool *argnulls,
			bool ***nulls, int *count)
{
	FunctionCallInfo fcinfo;
	ReturnSetInfo rsinfo = {T_ReturnSetInfo};
	ExprContext econtext = {T_ExprContext};
	TupleTableSlot *slot;
	Datum	  **rows;
	int			natts = f->result->natts;
	int			n;

	*count = 0;
	*nulls = NULL;
	if (strict_null(f, nargs, argnulls))
		return NULL;
	econtext.ecxt_per_query_memory = CurrentMemoryContext;
	econtext.ecxt_per_tuple_memory = CurrentMemoryContext;
	rsinfo.econtext = &econtext;
	rsinfo.expectedDesc = f->result;
	rsinfo.allowedModes = SFRM_Materialize | SFRM_Materialize_Random;
	rsinfo.returnMode = SFRM_ValuePerCall;
	fcinfo = make_call(f, nargs, args, argnulls);
	fcinfo->resultinfo = (Node *) &rsinfo;
	(void) FunctionCallInvoke(fcinfo);
	if (rsinfo.setResult == NULL)
		return NULL;
	if (rsinfo.returnMode != SFRM_Materialize)
		FuzzFail("%s returned in mode %d, not materialize",
				 get_func_name(f->flinfo.fn_oid), rsinfo.returnMode);

	n = (int) tuplestore_tuple_count(rsinfo.setResult);
	rows = palloc0(sizeof(Datum *) * (n + 1));
	*nulls = palloc0(sizeof(bool *) * (n + 1));
	slot = MakeSingleTupleTableSlot(rsinfo.setDesc, &TTSOpsMinimalTuple);
	for (int i = 0; i < n && tuplestore_gettupleslot(rsinfo.setResult, true, false, slot); i++)
	{
		slot_getallattrs(slot);
		rows[i] = palloc(sizeof(Datum) * natts);
		(*nulls)[i] = palloc(sizeof(bool) * natts);
		for (int a = 0; a < natts; a++)
		{
			(*nulls)[i][a] = slot->tts_isnull[a];
			rows[i][a] = slot->tts_isnull[a] ? (Datum) 0 :
				datumCopy(slot->tts_values[a], TupleDescAttr(rsinfo.setDesc, a)->attbyval,
						  TupleDescAttr(rsinfo.setDesc, a)->attlen);
		}
		(*count)++;
	}
	ExecDropSingleTupleTableSlot(slot);
	return rows;
}

text *
FuzzText(const uint8_t *data, size_t size)
{
	if (size > MaxAllocSize - VARHDRSZ || memchr(data, '\0', size) != NULL ||
		!pg_verifymbstr((const char *) data, (int) size, true))
		return NULL;
	return cstring_to_text_with_len((const char *) data, (int) size);
}

void
FuzzFail(const char *fmt,...)
{
	va_list		ap;

	fprintf(stderr, "\n==fuzz== target %s: ", current ? current->name : "?");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n");
	fflush(stderr);
	abort();
}

static bool
error_allowed(const ErrorData *error)
{
	const char *state = unpack_sql_state(error->sqlerrcode);

	for (const char *const *e = current->allowed_errors; e && *e; e++)
		if (strcmp(*e, state) == 0)
			return true;
	return false;
}

/* libFuzzer's callback: one input, in its own context, errors judged. */
static int
one_input(const uint8_t *data, size_t size)
{
	MemoryContext old = MemoryContextSwitchTo(input_context);
	volatile int result = 0;

	PG_TRY();
	{
		result = current->run(data, size);
	}
	PG_CATCH();
	{
		ErrorData  *error;

		MemoryContextSwitchTo(input_context);
		error = CopyErrorData();
		FlushErrorState();
		if (!error_allowed(error))
			FuzzFail("unexpected error %s: %s%s%s%s%s",
					 unpack_sql_state(error->sqlerrcode), error->message,
					 error->detail ? "\nDETAIL: " : "", error->detail ? error->detail : "",
					 error->context ? "\nCONTEXT: " : "", error->context ? error->context : "");
	}
	PG_END_TRY();
	MemoryContextSwitchTo(old);
	MemoryContextReset(input_context);
	return result;
}

PG_FUNCTION_INFO_V1(fuzz_main);

/* fuzz_main(target text, args text[]) — runs libFuzzer on one target; exits the process. */
Datum
fuzz_main(PG_FUNCTION_ARGS)
{
	const char *name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	Datum	   *elems;
	bool	   *elnulls;
	int			nelems;
	int			argc;
	char	  **argv;

	for (const FuzzTarget *t = fuzz_targets; t->name; t++)
		if (strcmp(t->name, name) == 0)
			current = t;
	if (current == NULL)
		ereport(ERROR, (errmsg("no fuzz target \"%s\"", name)));

	deconstruct_array(PG_GETARG_ARRAYTYPE_P(1), TEXTOID, -1, false, TYPALIGN_INT,
					  &elems, &elnulls, &nelems);
	argv = palloc0(sizeof(char *) * (nelems + 2));
	argv[0] = psprintf("fuzz-%s", name);
	for (argc = 1; argc <= nelems; argc++)
		argv[argc] = TextDatumGetCString(elems[argc - 1]);

	if (current->setup)
		current->setup();
	input_context = MallocContextCreate(TopMemoryContext, "fuzz input");
	PG_RETURN_INT32(LLVMFuzzerRunDriver(&argc, &argv, one_input));
}
