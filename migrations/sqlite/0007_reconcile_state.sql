-- Where `clerk-sync reconcile` is in its scan of Clerk's users, so that an interrupted
-- scan resumes.
CREATE TABLE IF NOT EXISTS "ReconcileState" (
    "name" TEXT NOT NULL PRIMARY KEY,
    -- Resume after Clerk users created at this time (ms); NULL: no scan under way.
    "createdAtAfter" INTEGER,
    "startedAt" DATETIME,
    "finishedAt" DATETIME,
    -- The replica running a pass inside `serve` (RECONCILE_INTERVAL), until when.
    "leaseHolder" TEXT,
    "leaseUntil" DATETIME,
    "updatedAt" DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP
);
