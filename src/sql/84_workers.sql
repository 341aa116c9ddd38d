-- 84_workers.sql — what every background worker shares on the SQL side:
-- the commit wakes (a transaction that queued work wakes the workers when it
-- commits, never before) and the worker_stats view of their shared-memory
-- counters. Each worker's own interface is in its area: the dispatcher's in
-- 86_dispatch.sql, the webhook worker's in 87_webhook_delivery.sql, the
-- SMPP binds' in 88_smpp.sql, the scheduler's sweeps in 91_scheduler.sql.

CREATE FUNCTION envoisms.wake_dispatcher() RETURNS boolean
AS 'MODULE_PATHNAME', 'wake_dispatcher' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION envoisms.wake_dispatcher() IS
'Wake the dispatchers when the calling transaction commits; false (and nothing happens) without the preload';

CREATE FUNCTION envoisms.wake_webhooks() RETURNS boolean
AS 'MODULE_PATHNAME', 'wake_webhooks' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION envoisms.wake_webhooks() IS
'Wake the webhook workers when the calling transaction commits; false (and nothing happens) without the preload';

CREATE FUNCTION envoisms.worker_stats_raw()
RETURNS TABLE (worker text, kind text, index int, pid int, started_at timestamptz, claimed bigint,
               sent bigint, failed bigint, retried bigint, in_flight int, last_error text,
               last_error_at timestamptz)
AS 'MODULE_PATHNAME', 'worker_stats' LANGUAGE C VOLATILE;

-- Per worker: messages (or webhook deliveries) claimed, sent (delivered to
-- the receiver for webhooks), failed for good, retried, in flight now, and
-- the last error. pid is NULL while a worker is not running.
CREATE VIEW envoisms.worker_stats AS
    SELECT worker, kind, index, pid, started_at, claimed, sent, failed, retried, in_flight,
           last_error, last_error_at
      FROM envoisms.worker_stats_raw();
