-- When the service last found the live schema whole (every table, column, unique index
-- and trigger it needs; see schema_watch). One row per watched contract.
CREATE TABLE IF NOT EXISTS "SchemaWatch" (
    "name" TEXT NOT NULL PRIMARY KEY,
    "wholeAt" DATETIME NOT NULL
);
