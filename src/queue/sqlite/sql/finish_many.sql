-- ?1 the results to record: a JSON array of objects with `id`, `attempt` (the fence), `now`,
-- `status`, `next` (next attempt at, or null) and `result` (JSON text) — finish.sql for a whole
-- group in one statement, with the same guard. Returns the rows it changed.
-- The unary + on status keeps SQLite from walking callouts_by_status: each result is looked
-- up by primary key.
UPDATE callouts
SET status = j.value ->> 'status',
    next_attempt_at = j.value ->> 'next',
    result = j.value ->> 'result',
    updated_at = j.value ->> 'now',
    claimed_at = NULL,
    lease_expires_at = NULL
FROM json_each(?1) AS j
WHERE callouts.id = j.value ->> 'id'
  AND callouts.attempts = j.value ->> 'attempt'
  AND +callouts.status = 'running'
  AND callouts.lease_expires_at >= j.value ->> 'now'
RETURNING callouts.id, callouts.series
