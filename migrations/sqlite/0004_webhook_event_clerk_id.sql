-- Which Clerk user an event is about, so that user.deleted can erase the payloads
-- stored for that user (they hold the email address).
ALTER TABLE "WebhookEvent" ADD COLUMN "clerkId" TEXT;
CREATE INDEX IF NOT EXISTS "WebhookEvent_clerkId_idx" ON "WebhookEvent"("clerkId");
