//! The column lists of the tables clerk-sync writes, each written once here and used by
//! every statement that inserts into its table, on both backends. A statement names the
//! list, then gives the values in the same order.

/// `"WebhookEvent"` (the app's table, with the columns clerk-sync adds).
pub const WEBHOOK_EVENT: &str = r#""id", "eventId", "eventType", "processed", "processedAt", "createdAt", "status", "error", "payload", "clerkId""#;

/// `"User"` (the app's table).
pub const USER: &str = r#""id", "clerkId", "email", "photo", "firstName", "lastName", "usedGenerations", "availableGenerations", "createdAt", "updatedAt""#;

/// `"Transaction"`, the ledger (the app's table, with the columns clerk-sync adds).
pub const TRANSACTION: &str = r#""id", "tracking_id", "userId", "status", "amount", "type", "description", "reason", "webhookEventId", "idempotencyKey", "balanceAfter", "createdAt""#;

/// `"ClerkUserSync"` (clerk-sync's own).
pub const CLERK_USER_SYNC: &str = r#""clerkId", "clerkUpdatedAt", "deletedAt""#;

/// `"OutboxJob"` (clerk-sync's own).
pub const OUTBOX_JOB: &str =
    r#""id", "kind", "payload", "status", "attempts", "nextAttemptAt", "createdAt", "updatedAt""#;
