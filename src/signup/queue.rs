//! The PostgreSQL signup queue: webhooks that arrive while a statement runs share the next.

use crate::store::batch_queue::{BatchQueue, Batched};
use crate::store::PgStore;

use super::postgres::{run_pg_signup, Applied, SignupRow};
use super::*;

/// Webhooks waiting for `PG_SIGNUP` (`postgres.rs`): those that arrive while the
/// database is busy go to it together (group commit, [`BatchQueue`]). The events of one
/// user are applied in arrival order and never in one statement, nor are two webhooks with
/// one `svix-id` or email address (`SignupRow::conflicts_with`).
pub type SignupQueue = BatchQueue<SignupStatement>;

/// `PG_SIGNUP` (`postgres.rs`) for a batch of webhooks.
#[derive(Debug, Clone)]
pub struct SignupStatement {
    pg: PgStore,
    signup_credits: i32,
}

impl SignupStatement {
    pub fn new(pg: &PgStore, settings: &SignupSettings) -> Self {
        Self {
            pg: pg.clone(),
            signup_credits: settings.signup_credits,
        }
    }
}

impl Batched for SignupStatement {
    type Request = SignupRow;
    /// `None` for a duplicate delivery.
    type Answer = Option<Applied>;
    const NAME: &'static str = "webhooks";
    /// A signed body may be 256 KiB, and 64 of them in one message would be 16 MiB.
    const MAX_BATCH_BYTES: usize = 1024 * 1024;

    fn conflicts(a: &SignupRow, b: &SignupRow) -> bool {
        a.conflicts_with(b)
    }

    fn bytes(row: &SignupRow) -> usize {
        row.payload_bytes()
    }

    async fn run(&self, rows: &[SignupRow]) -> Result<Vec<Option<Applied>>, StoreError> {
        Ok(run_pg_signup(&self.pg, self.signup_credits, rows).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhooks_of_one_user_message_or_address_conflict() {
        let row = |clerk_id: &str, msg_id: &str, email: &str| SignupRow {
            event_row_id: new_id(),
            msg_id: msg_id.into(),
            event_type: "user.created".into(),
            payload: Some("x".repeat(10)),
            clerk_id: clerk_id.into(),
            clerk_updated_at: 1,
            email: email.into(),
            photo: String::new(),
            first_name: None,
            last_name: None,
            user_id: new_id(),
            bonus_id: new_id(),
            signup_key: format!("signup:{clerk_id}"),
            job_id: new_id(),
            job_kind: "update_clerk_metadata",
            job_payload: "{}".into(),
        };
        let first = row("user_a", "msg_1", "a@example.org");
        let conflicts = |other: &SignupRow| SignupStatement::conflicts(&first, other);
        assert!(conflicts(&row("user_a", "msg_2", "a2@example.org")));
        assert!(conflicts(&row("user_b", "msg_1", "b@example.org")));
        assert!(conflicts(&row("user_c", "msg_3", "a@example.org")));
        assert!(!conflicts(&row("user_d", "msg_4", "d@example.org")));
        assert_eq!(SignupStatement::bytes(&first), 10);
    }
}
