-- ?1 callout id. Attempt numbers grow over replays, so this is oldest first; within an
-- attempt, the connections in the order they were tried.
SELECT * FROM attempts WHERE callout_id = ?1 ORDER BY attempt, route
