-- ?1 connection, ?2 until
UPDATE callouts INDEXED BY callouts_ready_by_connection
SET next_attempt_at = ?2
WHERE connection = ?1 AND status IN ('queued', 'retrying') AND next_attempt_at < ?2
