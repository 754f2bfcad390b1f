-- ?1 id
SELECT * FROM files WHERE id = ?1
