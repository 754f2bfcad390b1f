-- ?1 now, ?2 connections to skip (a JSON array of strings), ?3 limit.
-- Walks callouts_ready in order and stops after ?3 rows: its cost does not grow with the
-- backlog. INDEXED BY keeps it so (SQLite would otherwise pick callouts_by_status and sort
-- every ready row), and makes a schema change that loses the index an error, not a slow queue.
-- `status IN ('queued', 'retrying')` must match the index's WHERE clause word for word.
SELECT id FROM callouts INDEXED BY callouts_ready
WHERE status IN ('queued', 'retrying')
  AND next_attempt_at <= ?1
  AND connection NOT IN (SELECT value FROM json_each(?2))
ORDER BY next_attempt_at, id
LIMIT ?3
