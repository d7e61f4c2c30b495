-- When the service last found the live schema whole (every table, column, unique index
-- and trigger it needs; see schema_watch), so that a drift names the Prisma migrations
-- applied since. clerk-sync's own, in schema clerk_sync; one row per watched contract.
CREATE TABLE IF NOT EXISTS clerk_sync."SchemaWatch" (
    "name" TEXT NOT NULL PRIMARY KEY,
    "wholeAt" TIMESTAMP(3) NOT NULL
);
