-- ?1 id, ?2 connection, ?3 bucket, ?4 key, ?5 size, ?6 sha256, ?7 content type, ?8 name,
-- ?9 origin, ?10 created at, ?11 expires at.
-- Inserts nothing if the id is taken: the caller reports that by name, not SQLite's wording.
INSERT INTO files (
    id, connection, bucket, key, size, sha256, content_type, name, origin, created_at, expires_at
)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
ON CONFLICT (id) DO NOTHING
