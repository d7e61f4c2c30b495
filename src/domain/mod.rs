//! Domain types that parse, not validate: once built, a value is known to be well formed.
//! Error messages never echo the input (it may be an email address).

mod clerk_user_id;
mod credits;
mod email;
mod ledger;
mod redacted;
mod svix_message_id;
pub mod text;
pub mod time;

pub use clerk_user_id::{ClerkUserId, ClerkUserIdError};
pub use credits::{Amount, AmountError, CallerKey, CallerKeyError, MAX_CREDITS};
pub use email::{EmailAddress, EmailError};
pub use ledger::{CreditChange, GrantReason, LedgerReason, LedgerType};
pub use redacted::Redacted;
pub use svix_message_id::{SvixMessageId, SvixMessageIdError};
