-- ?1 callout id, ?2 attempt, ?3 series, ?4 started at, ?5 duration (ms), ?6 HTTP status,
-- ?7 error kind, ?8 error message, ?9 response bytes, ?10 route, ?11 connection
INSERT INTO attempts (
    callout_id, attempt, series, started_at, duration_ms, http_status, error_kind,
    error_message, response_bytes, route, connection
)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
