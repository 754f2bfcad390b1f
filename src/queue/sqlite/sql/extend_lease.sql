-- ?1 id, ?2 attempt (the fence), ?3 new lease expiry
UPDATE callouts
SET lease_expires_at = ?3
WHERE id = ?1 AND attempts = ?2 AND status = 'running'
