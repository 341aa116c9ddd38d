/*
 * fuzz_backend.h — what the fuzz targets that run inside a PostgreSQL
 * backend share: the target table, calling the extension's SQL functions
 * the way the executor does, and failing an input.
 */
#ifndef FUZZ_BACKEND_H
#define FUZZ_BACKEND_H

#include "postgres.h"

#include "access/tupdesc.h"
#include "fmgr.h"
#include "utils/tuplestore.h"

/*
 * One target: run() takes one input and returns 0, or -1 when the input is
 * not something the code can receive (libFuzzer then does not keep it).
 * Errors the code may raise for a bad input are listed by SQLSTATE in
 * allowed_errors (NULL-terminated, "22P02" ...); any other error fails the
 * input, as does a crash, a sanitizer report or FuzzFail().
 */
typedef struct FuzzTarget
{
	const char *name;
	void		(*setup) (void);
	int			(*run) (const uint8_t *data, size_t size);
	const char *const *allowed_errors;
} FuzzTarget;

extern const FuzzTarget fuzz_targets[];

/* An SQL function of the fuzzed library, looked up once. */
typedef struct FuzzFunction
{
	FmgrInfo	flinfo;
	TupleDesc	result;			/* row type of a set-returning function */
} FuzzFunction;

/* The function named by signature ("envoisms.phone_e164(text,text)"). */
extern FuzzFunction *FuzzLookup(const char *signature);

/* Call it as the executor would; *isnull says whether the result is NULL. */
extern Datum FuzzCall(FuzzFunction *f, int nargs, const Datum *args,
					  const bool *argnulls, bool *isnull);

/*
 * Call a set-returning function (materialize mode) and return its rows;
 * *count gets how many. Each row is an array of f->result->natts values,
 * NULL ones as (Datum) 0 with their flag in the parallel nulls rows.
 */
extern Datum **FuzzCallSRF(FuzzFunction *f, int nargs, const Datum *args,
						   const bool *argnulls, bool ***nulls, int *count);

/* The input as a text value of the database (UTF-8, no NUL), else NULL. */
extern text *FuzzText(const uint8_t *data, size_t size);

/* Fail the current input: print why to stderr and abort (libFuzzer saves it). */
extern void FuzzFail(const char *fmt,...) pg_attribute_printf(1, 2) pg_attribute_noreturn();

/* The per-input context (malloc_context.c). */
extern MemoryContext MallocContextCreate(MemoryContext parent, const char *name);

#endif							/* FUZZ_BACKEND_H */
