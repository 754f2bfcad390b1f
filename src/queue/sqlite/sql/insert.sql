-- ?1 id, ?2 function, ?3 connection, ?4 input (JSON), ?5 idempotency key, ?6 request hash,
-- ?7 now, ?8 run at (the series starts when the callout may first run: a scheduled callout's
-- retry age counts from then)
INSERT INTO callouts (
    id, function, connection, input, idempotency_key, request_hash, status,
    attempts, series, series_attempts, series_started_at, created_at, updated_at, next_attempt_at
)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'queued', 0, 0, 0, ?8, ?7, ?7, ?8)
