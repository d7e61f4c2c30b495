-- PostgreSQL moves clerk-sync's own tables into schema clerk_sync here. A SQLite
-- database is one file with one schema, used by clerk-sync alone: nothing to move.
SELECT 1;
