-- ?1 id, ?2 attempt (the fence), ?3 now, ?4 new status, ?5 next attempt at, ?6 result (JSON).
-- Changes nothing unless ?2 is the latest claim, still running, with its lease not expired.
UPDATE callouts
SET status = ?4,
    next_attempt_at = ?5,
    result = ?6,
    updated_at = ?3,
    claimed_at = NULL,
    lease_expires_at = NULL
WHERE id = ?1 AND attempts = ?2 AND status = 'running' AND lease_expires_at >= ?3
RETURNING series
