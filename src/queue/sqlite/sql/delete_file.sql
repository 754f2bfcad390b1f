-- ?1 id
DELETE FROM files WHERE id = ?1
