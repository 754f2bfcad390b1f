-- ?1 now, ?2 all (1: every running callout; 0: only expired leases)
-- Running callouts only, through their partial index (bounded by what is in flight).
UPDATE callouts INDEXED BY callouts_leases
SET status = 'retrying',
    next_attempt_at = ?1,
    claimed_at = NULL,
    lease_expires_at = NULL,
    updated_at = ?1
WHERE status = 'running' AND (?2 OR lease_expires_at < ?1)
