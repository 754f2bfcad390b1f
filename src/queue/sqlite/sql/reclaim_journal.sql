-- ?1 now, ?2 all (1: every running callout; 0: only expired leases), ?3 error kind,
-- ?4 error message. Runs before reclaim.sql, over the same rows. The lost attempt is
-- journalled on the callout's own connection (route 0): where it was is not known.
INSERT INTO attempts (
    callout_id, attempt, route, connection, series, started_at, duration_ms, http_status,
    error_kind, error_message, response_bytes
)
SELECT id, attempts, 0, connection, series, coalesce(claimed_at, ?1), 0, NULL, ?3, ?4, 0
FROM callouts INDEXED BY callouts_leases
WHERE status = 'running' AND (?2 OR lease_expires_at < ?1)
