-- Tables that only clerk-sync uses.

CREATE TABLE IF NOT EXISTS "ClerkUserSync" (
    "clerkId" TEXT NOT NULL,
    "clerkUpdatedAt" BIGINT NOT NULL,
    "deletedAt" TIMESTAMP(3),
    CONSTRAINT "ClerkUserSync_pkey" PRIMARY KEY ("clerkId")
);

CREATE TABLE IF NOT EXISTS "OutboxJob" (
    "id" TEXT NOT NULL,
    "kind" TEXT NOT NULL,
    "payload" JSONB NOT NULL,
    "status" TEXT NOT NULL DEFAULT 'pending',
    "attempts" INTEGER NOT NULL DEFAULT 0,
    "nextAttemptAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "lastError" TEXT,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    CONSTRAINT "OutboxJob_pkey" PRIMARY KEY ("id"),
    CONSTRAINT "OutboxJob_status_check" CHECK ("status" IN ('pending', 'done', 'dead'))
);
CREATE INDEX IF NOT EXISTS "OutboxJob_status_nextAttemptAt_idx" ON "OutboxJob"("status", "nextAttemptAt");
