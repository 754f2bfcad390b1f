-- ?1 id, ?2 now
UPDATE callouts
SET status = 'queued',
    series = series + 1,
    series_attempts = 0,
    series_started_at = ?2,
    next_attempt_at = ?2,
    result = NULL,
    updated_at = ?2
WHERE id = ?1 AND status IN ('succeeded', 'failed')
RETURNING *
