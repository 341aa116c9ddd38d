/*
 * json_text.h — JSON texts read and written from C (json_text.c): what the
 * carriers read from a reply and how the workers write JSON strings.
 */
#ifndef ENVOISMS_JSON_TEXT_H
#define ENVOISMS_JSON_TEXT_H

#include "envoisms.h"

#include "lib/stringinfo.h"

/* Extract a scalar at a dotted path ("messages.0.id") from a JSON text;
 * palloc'd string in CurrentMemoryContext, NULL when absent or not JSON. */
extern char *JsonGetPath(const char *json, size_t len, const char *path);

/* Append s as a JSON string literal. */
extern void JsonAppendString(StringInfo buf, const char *s);

#endif							/* ENVOISMS_JSON_TEXT_H */
