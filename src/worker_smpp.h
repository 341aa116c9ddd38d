/*
 * worker_smpp.h — the SMPP connector's background workers: a supervisor
 * (worker_smpp.c) that keeps one bind worker (worker_smpp_bind.c) running
 * per enabled smpp carrier, and the shared-memory slots through which the
 * binds report their state to envoisms.smpp_binds().
 */
#ifndef ENVOISMS_WORKER_SMPP_H
#define ENVOISMS_WORKER_SMPP_H

#include "envoisms.h"

#include "datatype/timestamp.h"
#include "port/atomics.h"
#include "storage/spin.h"

#define SMPP_MAX_BINDS 32
#define SMPP_CARRIER_ID_LEN 64	/* carriers.carrier_id is at most 40 */
#define SMPP_ERROR_LEN 256

typedef enum SmppBindState
{
	SMPP_STATE_STARTING,
	SMPP_STATE_BACKOFF,
	SMPP_STATE_CONNECTING,
	SMPP_STATE_BINDING,
	SMPP_STATE_BOUND,
	SMPP_STATE_THROTTLED,
	SMPP_STATE_UNBINDING,
	SMPP_STATE_INVALID_CONFIG,
} SmppBindState;

/* One bind's public state; counters are written by the bind only. */
typedef struct SmppBindSlot
{
	slock_t		mutex;			/* protects pid, carrier_id, since, last_error */
	pid_t		pid;			/* 0 = free */
	char		carrier_id[SMPP_CARRIER_ID_LEN];
	pg_atomic_uint32 state;
	TimestampTz since;			/* when the state last changed */
	pg_atomic_uint64 submitted;
	pg_atomic_uint64 accepted;
	pg_atomic_uint64 rejected;
	pg_atomic_uint64 throttled;
	pg_atomic_uint64 timeouts;
	pg_atomic_uint64 receipts;
	pg_atomic_uint64 inbound;
	pg_atomic_uint64 reconnects;
	pg_atomic_uint32 in_flight;
	char		last_error[SMPP_ERROR_LEN];
} SmppBindSlot;

/* GUCs (worker_smpp.c). */
extern int	smpp_supervisor_naptime_ms;
extern int	smpp_poll_ms;
extern int	smpp_lease_s;

/* Claim slot `index` for this process (a bind worker) until it exits. */
extern SmppBindSlot *SmppSlotAttach(int index, const char *carrier_id);
extern void SmppSlotSetState(SmppBindSlot *slot, SmppBindState state);
extern void SmppSlotSetError(SmppBindSlot *slot, const char *fmt,...) pg_attribute_printf(2, 3);

/* Entry points (bgw_function_name). */
extern PGDLLEXPORT void SmppSupervisorMain(Datum arg);
extern PGDLLEXPORT void SmppBindMain(Datum arg);

#endif							/* ENVOISMS_WORKER_SMPP_H */
