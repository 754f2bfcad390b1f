-- ?1 the ids found by claim_ready.sql (a JSON array of strings), ?2 now, ?3 lease expiry.
-- Each by primary key (the unary + keeps SQLite from walking callouts_by_status instead).
UPDATE callouts
SET status = 'running',
    attempts = attempts + 1,
    series_attempts = series_attempts + 1,
    next_attempt_at = NULL,
    claimed_at = ?2,
    lease_expires_at = ?3,
    updated_at = ?2
WHERE id IN (SELECT value FROM json_each(?1)) AND +status IN ('queued', 'retrying')
RETURNING *
