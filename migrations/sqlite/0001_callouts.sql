-- The callout queue: one row per callout, and the journal of every attempt.
--
-- Times are milliseconds since the Unix epoch. Ids are UUID v7 strings made by the caller, so
-- ordering by id is ordering by creation time. Every per-callout statement goes through the
-- primary key or one of the partial indexes below, so its cost does not grow with the backlog.

CREATE TABLE callouts (
    id                TEXT    NOT NULL PRIMARY KEY,
    function          TEXT    NOT NULL,
    connection        TEXT    NOT NULL,
    -- JSON text.
    input             TEXT    NOT NULL,
    -- NULLs do not collide in a UNIQUE column: callouts without a key never conflict.
    idempotency_key   TEXT    UNIQUE,
    request_hash      TEXT    NOT NULL,
    status            TEXT    NOT NULL CHECK (status IN
                          ('queued', 'running', 'retrying', 'succeeded', 'failed', 'cancelled')),
    -- Claims over all series; the latest claim's number fences results.
    attempts          INTEGER NOT NULL CHECK (attempts >= 0),
    series            INTEGER NOT NULL CHECK (series >= 0),
    series_attempts   INTEGER NOT NULL CHECK (series_attempts >= 0),
    series_started_at INTEGER NOT NULL,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    -- Set while queued or retrying, NULL otherwise.
    next_attempt_at   INTEGER,
    -- Set while running: when the current attempt was claimed, and until when it is leased.
    claimed_at        INTEGER,
    lease_expires_at  INTEGER,
    -- JSON text: the standard result of the last finished attempt.
    result            TEXT
) STRICT;

-- Claims: ready callouts, oldest due first. The WHERE clause must appear word for word in the
-- claim query for SQLite to use this index.
CREATE INDEX callouts_ready ON callouts (next_attempt_at, id)
    WHERE status IN ('queued', 'retrying');

-- delay_connection: the ready callouts of one connection.
CREATE INDEX callouts_ready_by_connection ON callouts (connection, next_attempt_at)
    WHERE status IN ('queued', 'retrying');

-- reclaim: running callouts by lease expiry (bounded by what is in flight, not the backlog).
CREATE INDEX callouts_leases ON callouts (lease_expires_at)
    WHERE status = 'running';

-- Listing newest first: the primary key's index serves the unfiltered list (ids sort by
-- creation time); these serve the filtered ones, with the `before_id` cursor as a range.
-- callouts_by_status also answers counts without reading the rows.
CREATE INDEX callouts_by_status ON callouts (status, id);
CREATE INDEX callouts_by_function ON callouts (function, id);

CREATE TABLE attempts (
    callout_id     TEXT    NOT NULL REFERENCES callouts (id) ON DELETE CASCADE,
    attempt        INTEGER NOT NULL,
    series         INTEGER NOT NULL,
    started_at     INTEGER NOT NULL,
    duration_ms    INTEGER NOT NULL,
    http_status    INTEGER,
    -- NULL for a success.
    error_kind     TEXT,
    error_message  TEXT,
    response_bytes INTEGER NOT NULL,
    PRIMARY KEY (callout_id, attempt)
) STRICT, WITHOUT ROWID;
