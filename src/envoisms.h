/*
 * envoisms.h — the one header that gathers the PostgreSQL includes every C
 * file of the extension needs, plus the module entry points called from
 * _PG_init. Version shims, if any are ever needed, live here and only here.
 */
#ifndef ENVOISMS_H
#define ENVOISMS_H

#include "postgres.h"

#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"

/* Character classes of request text, ASCII only (not the locale's ctype). */
static inline bool
envoisms_is_blank(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static inline bool
envoisms_is_letter(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static inline bool
envoisms_is_digit(char c)
{
	return c >= '0' && c <= '9';
}

/* Set once the library was loaded through shared_preload_libraries. */
extern bool envoisms_preloaded;

/* Raise a clear error when a feature needs the preload and it is missing. */
extern void EnvoismsRequirePreload(const char *feature);

/* Whether the database runs the distributed layout (cluster.c). */
extern bool ClusterMode(void);

/* Module initialisers, each defining its own GUCs and shared memory. */
extern void RateLimitInit(void);
extern void WorkersInit(void);
extern void DispatchInit(void);
extern void WebhooksInit(void);
extern void SchedulerInit(void);
extern void SmppInit(void);

#endif							/* ENVOISMS_H */
