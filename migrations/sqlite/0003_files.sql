-- File references: objects stored in S3-compatible storage (uploads through `POST /v1/files`,
-- and callout result bodies offloaded there). The row is the reference; the object lives in the
-- bucket until the sweep deletes it after `expires_at`, then the row.
--
-- Times are milliseconds since the Unix epoch. Ids are made by the engine (`f` and a UUID v7 in
-- hex), never derived from the file's name.
CREATE TABLE files (
    id           TEXT    NOT NULL PRIMARY KEY,
    -- The `s3` connection holding the object, its bucket, and the object's key.
    connection   TEXT    NOT NULL,
    bucket       TEXT    NOT NULL,
    key          TEXT    NOT NULL,
    size         INTEGER NOT NULL CHECK (size >= 0),
    -- Lowercase hex SHA-256 of the bytes.
    sha256       TEXT    NOT NULL,
    content_type TEXT    NOT NULL,
    -- The uploader's file name, sanitised; NULL when none was given.
    name         TEXT,
    -- `upload`, or `callout:<id>` for an offloaded result body.
    origin       TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL
) STRICT;

-- The sweep: expired references, soonest expired first. `id` is in the index so that order
-- needs no sort, and a sweep batch costs what it returns, not the size of the table.
CREATE INDEX files_by_expiry ON files (expires_at, id);
