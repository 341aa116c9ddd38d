/*
 * cluster.c — whether this database runs the distributed (Citus) layout
 * of src/sql/96_distribute.sql, asked by every function that behaves
 * differently on a cluster, so answered from a per-backend flag.
 *
 * The flag is computed once per backend: Citus is installed in the
 * database and envoisms.messages is one of its hash-distributed tables.
 * envoisms.distribute() changes the metadata of envoisms.messages, and
 * Citus announces every change of a table's metadata with a relcache
 * invalidation of that table (on each node, metadata sync included), so
 * the flag is forgotten on an invalidation of envoisms.messages, or on a
 * full reset, and computed again at the next call.
 */
#include "envoisms.h"

#include "catalog/namespace.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"

typedef enum ClusterState
{
	CLUSTER_UNKNOWN,
	CLUSTER_NO,
	CLUSTER_YES
} ClusterState;

static ClusterState mode = CLUSTER_UNKNOWN;
static Oid	messages_relid = InvalidOid;
static bool callback_registered = false;

static void
mode_forget(Datum arg, Oid relid)
{
	if (!OidIsValid(relid) || relid == messages_relid)
		mode = CLUSTER_UNKNOWN;
}

static ClusterState
mode_compute(void)
{
	Oid			schema = get_namespace_oid("envoisms", true);
	bool		distributed = false;

	messages_relid = OidIsValid(schema) ? get_relname_relid("messages", schema) : InvalidOid;
	if (!OidIsValid(messages_relid) || !OidIsValid(get_extension_oid("citus", true)))
		return CLUSTER_NO;

	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	{
		Oid			type = OIDOID;
		Datum		arg = ObjectIdGetDatum(messages_relid);

		if (SPI_execute_with_args("SELECT 1 FROM pg_catalog.pg_dist_partition "
								  "WHERE logicalrelid = $1 AND partmethod = 'h'",
								  1, &type, &arg, NULL, true, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not read pg_dist_partition");
		distributed = SPI_processed == 1;
	}
	SPI_finish();
	PopActiveSnapshot();
	return distributed ? CLUSTER_YES : CLUSTER_NO;
}

/* True when envoisms runs sharded by Citus in this database. */
bool
ClusterMode(void)
{
	if (!callback_registered)
	{
		CacheRegisterRelcacheCallback(mode_forget, (Datum) 0);
		callback_registered = true;
	}
	AcceptInvalidationMessages();
	if (mode == CLUSTER_UNKNOWN)
	{
		ClusterState computed = mode_compute();

		/* before CREATE EXTENSION there is no table whose invalidation would tell */
		if (!OidIsValid(messages_relid))
			return false;
		mode = computed;
	}
	return mode == CLUSTER_YES;
}

PG_FUNCTION_INFO_V1(cluster_mode);

Datum
cluster_mode(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(ClusterMode());
}
