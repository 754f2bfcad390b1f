-- ?1 id, ?2 attempt (the fence), ?3 now.
-- The attempt did not happen: the counters go back, and the callout is ready again in the
-- status it had before the claim (expressions read the values from before this update).
UPDATE callouts
SET status = CASE WHEN series_attempts > 1 THEN 'retrying' ELSE 'queued' END,
    attempts = attempts - 1,
    series_attempts = series_attempts - 1,
    next_attempt_at = ?3,
    claimed_at = NULL,
    lease_expires_at = NULL,
    updated_at = ?3
WHERE id = ?1 AND attempts = ?2 AND status = 'running'
