-- Back to version 3: events no longer name their Clerk user. The rows stay.
DROP INDEX IF EXISTS "WebhookEvent_clerkId_idx";
ALTER TABLE "WebhookEvent" DROP COLUMN "clerkId";
