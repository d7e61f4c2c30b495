-- Nothing was moved on SQLite (see the up migration).
SELECT 1;
