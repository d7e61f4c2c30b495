//! Svix-signed Clerk webhooks: verify the signature on the raw body first, then parse.

pub mod clerk_event;
pub mod verify;

pub use verify::{sign, verify, VerifiedWebhook, VerifyError, WebhookSecret};
