-- ?1 id
SELECT status FROM callouts WHERE id = ?1
