-- Where `clerk-sync reconcile` is in its scan of Clerk's users, so that an interrupted
-- scan resumes, and the lease that lets one replica at a time reconcile. clerk-sync's
-- own, in schema clerk_sync.
CREATE TABLE IF NOT EXISTS clerk_sync."ReconcileState" (
    "name" TEXT NOT NULL PRIMARY KEY,
    -- Resume after Clerk users created at this time (ms); NULL: no scan under way.
    "createdAtAfter" BIGINT,
    "startedAt" TIMESTAMP(3),
    "finishedAt" TIMESTAMP(3),
    -- The replica running a pass inside `serve` (RECONCILE_INTERVAL), until when.
    "leaseHolder" TEXT,
    "leaseUntil" TIMESTAMP(3),
    "updatedAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP
);
