-- Tables that only clerk-sync uses.

CREATE TABLE IF NOT EXISTS "ClerkUserSync" (
    "clerkId" TEXT NOT NULL PRIMARY KEY,
    "clerkUpdatedAt" INTEGER NOT NULL,
    "deletedAt" DATETIME
);

CREATE TABLE IF NOT EXISTS "OutboxJob" (
    "id" TEXT NOT NULL PRIMARY KEY,
    "kind" TEXT NOT NULL,
    "payload" TEXT NOT NULL,
    "status" TEXT NOT NULL DEFAULT 'pending' CHECK ("status" IN ('pending', 'done', 'dead')),
    "attempts" INTEGER NOT NULL DEFAULT 0,
    "nextAttemptAt" DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "lastError" TEXT,
    "createdAt" DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX IF NOT EXISTS "OutboxJob_status_nextAttemptAt_idx" ON "OutboxJob"("status", "nextAttemptAt");
