-- ?1 callout id. Attempt numbers grow over replays, so this is oldest first.
SELECT * FROM attempts WHERE callout_id = ?1 ORDER BY attempt
