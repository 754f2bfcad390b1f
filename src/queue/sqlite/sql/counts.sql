SELECT status, count(*) AS n FROM callouts GROUP BY status
