-- ?1 idempotency key
SELECT * FROM callouts WHERE idempotency_key = ?1
