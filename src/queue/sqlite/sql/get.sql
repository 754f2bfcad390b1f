-- ?1 id
SELECT * FROM callouts WHERE id = ?1
