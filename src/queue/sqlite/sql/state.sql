-- ?1 key
SELECT value FROM engine_state WHERE key = ?1
