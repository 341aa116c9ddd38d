/*
 * envoisms.c — library entry point.
 *
 * _PG_init runs each module's initialiser. Modules that need shared memory
 * or background workers (the rate limiter, the workers) only work when the
 * library is in shared_preload_libraries; SQL functions that need them call
 * EnvoismsRequirePreload(), which fails with a hint instead of misbehaving.
 */
#include "envoisms.h"

PG_MODULE_MAGIC;

bool		envoisms_preloaded = false;

void		_PG_init(void);

void
_PG_init(void)
{
	envoisms_preloaded = process_shared_preload_libraries_in_progress;

	RateLimitInit();
	WorkersInit();
	DispatchInit();
	WebhooksInit();
	SchedulerInit();
	SmppInit();

	MarkGUCPrefixReserved("envoisms");
}

void
EnvoismsRequirePreload(const char *feature)
{
	if (!envoisms_preloaded)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s requires envoisms in shared_preload_libraries", feature),
				 errhint("Add shared_preload_libraries = 'envoisms' to postgresql.conf and restart the server.")));
}
