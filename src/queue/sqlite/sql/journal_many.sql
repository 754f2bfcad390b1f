-- ?1 the attempts to journal: a JSON array of objects with `id`, `attempt`, `route`,
-- `connection`, `series`, `started_at`, `duration_ms`, `http_status`, `error_kind`,
-- `error_message` and `response_bytes` — journal.sql for a whole group in one statement.
INSERT INTO attempts (
    callout_id, attempt, route, connection, series, started_at, duration_ms, http_status,
    error_kind, error_message, response_bytes
)
SELECT value ->> 'id', value ->> 'attempt', value ->> 'route', value ->> 'connection',
       value ->> 'series', value ->> 'started_at', value ->> 'duration_ms',
       value ->> 'http_status', value ->> 'error_kind', value ->> 'error_message',
       value ->> 'response_bytes'
FROM json_each(?1)
