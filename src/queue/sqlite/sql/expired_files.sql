-- ?1 now, ?2 limit. Walks files_by_expiry in order and stops after ?2 rows.
SELECT * FROM files INDEXED BY files_by_expiry
WHERE expires_at <= ?1
ORDER BY expires_at, id
LIMIT ?2
