-- Readiness: the queue can be read. One row at most, whatever the size of the table.
SELECT id FROM callouts LIMIT 1
