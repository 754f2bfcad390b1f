-- Failover and OAuth2.
--
-- The journal names the connection of every try. An attempt that fails over keeps one row per
-- connection it tried: `route` 0 is the function's own connection, 1 its first fallback, and
-- so on. Rows from before this version are the callout's own connection, route 0.
CREATE TABLE attempts_v2 (
    callout_id     TEXT    NOT NULL REFERENCES callouts (id) ON DELETE CASCADE,
    attempt        INTEGER NOT NULL,
    route          INTEGER NOT NULL CHECK (route >= 0),
    connection     TEXT    NOT NULL,
    series         INTEGER NOT NULL,
    started_at     INTEGER NOT NULL,
    duration_ms    INTEGER NOT NULL,
    http_status    INTEGER,
    -- NULL for a success.
    error_kind     TEXT,
    error_message  TEXT,
    response_bytes INTEGER NOT NULL,
    PRIMARY KEY (callout_id, attempt, route)
) STRICT, WITHOUT ROWID;

INSERT INTO attempts_v2 (
    callout_id, attempt, route, connection, series, started_at, duration_ms, http_status,
    error_kind, error_message, response_bytes
)
SELECT a.callout_id, a.attempt, 0, c.connection, a.series, a.started_at, a.duration_ms,
       a.http_status, a.error_kind, a.error_message, a.response_bytes
FROM attempts AS a JOIN callouts AS c ON c.id = a.callout_id;

DROP TABLE attempts;
ALTER TABLE attempts_v2 RENAME TO attempts;

-- What the engine keeps between runs besides callouts, by key: the newest OAuth2 refresh
-- token of a connection whose provider rotates them (`oauth2.refresh_token:<connection>`).
-- Values are JSON text. The file must be protected like the secrets it holds.
CREATE TABLE engine_state (
    key        TEXT    NOT NULL PRIMARY KEY,
    value      TEXT    NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;
