-- ?1 id, ?2 now, ?3 lease expiry
UPDATE callouts
SET status = 'running',
    attempts = attempts + 1,
    series_attempts = series_attempts + 1,
    next_attempt_at = NULL,
    claimed_at = ?2,
    lease_expires_at = ?3,
    updated_at = ?2
WHERE id = ?1 AND status IN ('queued', 'retrying')
RETURNING *
