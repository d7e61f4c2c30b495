-- Which Clerk user an event is about, so that user.deleted can erase the payloads
-- stored for that user (they hold the email address). Nullable: the Prisma app's
-- client keeps working, and old rows stay as they are.
ALTER TABLE "WebhookEvent" ADD COLUMN IF NOT EXISTS "clerkId" TEXT;
CREATE INDEX IF NOT EXISTS "WebhookEvent_clerkId_idx" ON "WebhookEvent"("clerkId");
