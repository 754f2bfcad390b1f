-- ?1 the callouts to insert: a JSON array of objects with `id`, `function`, `connection`,
-- `input` (JSON text), `key` (idempotency key or null), `hash`, `now` and `run_at` — the
-- columns of insert.sql, for a whole group in one statement.
-- A callout whose idempotency key is taken is left out, not an error: the ids returned are the
-- callouts inserted, and the writer looks up the owner of each key that was taken.
-- (`WHERE true` keeps SQLite from reading ON CONFLICT as the ON of a join.)
INSERT INTO callouts (
    id, function, connection, input, idempotency_key, request_hash, status,
    attempts, series, series_attempts, series_started_at, created_at, updated_at, next_attempt_at
)
SELECT value ->> 'id', value ->> 'function', value ->> 'connection', value ->> 'input',
       value ->> 'key', value ->> 'hash', 'queued',
       0, 0, 0, value ->> 'run_at', value ->> 'now', value ->> 'now', value ->> 'run_at'
FROM json_each(?1)
WHERE true
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING id
