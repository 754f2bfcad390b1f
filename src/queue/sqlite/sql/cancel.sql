-- ?1 id, ?2 now
UPDATE callouts
SET status = 'cancelled',
    next_attempt_at = NULL,
    updated_at = ?2
WHERE id = ?1 AND status IN ('queued', 'retrying')
RETURNING *
