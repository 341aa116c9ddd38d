-- 91_scheduler.sql — the scheduler worker's sweeps, each one small batch in
-- its own short transaction: expiry of messages past their validity, and
-- retention.
--
-- Retention (docs/workers.md): past envoisms.retention_days, a final
-- message keeps its row (so analytics totals and the ledger are untouched
-- and envoisms.balance_check() still holds) but loses its body, and its
-- delivery log (message_events) is deleted; old finished webhook
-- deliveries and week-old unmatched delivery reports are deleted.

-- Sent messages waiting for a delivery report, by validity (the expiry sweep).
CREATE INDEX messages_sent_expiry ON envoisms.messages (expires_at) WHERE status = 'sent';

-- Expire up to `batch` queued or sent messages past their validity (refunded,
-- webhook, NOTIFY through the status trigger). Returns how many.
CREATE FUNCTION envoisms.expiry_sweep(batch int DEFAULT 1000) RETURNS int
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    m record;
    n int := 0;
    shard regclass;
BEGIN
    -- on a cluster, this node's shards of messages (96_distribute.sql)
    FOR shard IN SELECT * FROM envoisms.local_shards('envoisms.messages') LOOP
        FOR m IN EXECUTE format('SELECT x.account_id, x.message_id FROM %s x
                                  WHERE x.status = ''sent'' AND x.expires_at <= now()
                                  ORDER BY x.expires_at LIMIT $1 FOR UPDATE SKIP LOCKED', shard) USING batch
        LOOP
            IF envoisms.message_expire(m.account_id, m.message_id) THEN
                n := n + 1;
            END IF;
        END LOOP;
        FOR m IN EXECUTE format('SELECT x.account_id, x.message_id FROM %s x
                                  WHERE x.status = ''queued'' AND x.expires_at <= now()
                                    AND (x.locked_until IS NULL OR x.locked_until < now())
                                  ORDER BY x.next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED', shard) USING batch
        LOOP
            IF envoisms.message_expire(m.account_id, m.message_id) THEN
                n := n + 1;
            END IF;
        END LOOP;
    END LOOP;
    RETURN n;
END
$$;
COMMENT ON FUNCTION envoisms.expiry_sweep(int) IS
'Expire a batch of messages past their validity (the scheduler calls it); returns how many';

-- Purge one batch of what is older than `days`: message bodies and delivery
-- logs of final messages, finished webhook deliveries, and unmatched
-- delivery reports older than 7 days. Returns the number of messages purged.
CREATE FUNCTION envoisms.retention_purge(days int DEFAULT 90, batch int DEFAULT 1000) RETURNS int
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    cutoff timestamptz := now() - make_interval(days => days);
    n int;
    purged int := 0;
    shard regclass;
BEGIN
    IF days IS NULL OR days <= 0 THEN
        RETURN 0;
    END IF;
    -- on a cluster, this node's shards (96_distribute.sql)
    FOR shard IN SELECT * FROM envoisms.local_shards('envoisms.messages') LOOP
        EXECUTE format($purge$
        WITH old AS (
            SELECT x.account_id, x.message_id FROM %1$s x
             WHERE x.created_at < $1 AND x.body IS NOT NULL
               AND x.status IN ('delivered', 'failed', 'expired', 'received')
             LIMIT $2 FOR UPDATE SKIP LOCKED
        ), gone AS (
            DELETE FROM %2$s e USING old
             WHERE e.account_id = old.account_id AND e.message_id = old.message_id
            RETURNING 1
        ), emptied AS (
            UPDATE %1$s x SET body = NULL
              FROM old WHERE x.account_id = old.account_id AND x.message_id = old.message_id
            RETURNING 1
        )
        SELECT count(*) FROM emptied
        $purge$, shard, envoisms.colocated_shard(shard, 'envoisms.message_events')) INTO n USING cutoff, batch - purged;
        purged := purged + n;
        EXECUTE format('DELETE FROM %1$s d
                         WHERE d.ctid = ANY (ARRAY(SELECT x.ctid FROM %1$s x
                                                    WHERE x.status <> ''pending'' AND x.created_at < $1 LIMIT $2))',
                       envoisms.colocated_shard(shard, 'envoisms.webhook_deliveries')) USING cutoff, batch;
        EXIT WHEN purged >= batch;
    END LOOP;
    DELETE FROM envoisms.pending_dlrs p
     WHERE p.ctid = ANY (ARRAY(SELECT x.ctid FROM envoisms.pending_dlrs x
                                WHERE x.received_at < now() - interval '7 days' LIMIT batch));
    RETURN purged;
END
$$;
COMMENT ON FUNCTION envoisms.retention_purge(int, int) IS
'Purge the bodies and delivery logs of a batch of messages older than the retention (the scheduler calls it); returns how many';
