//! Reading a user's ledger: newest first, keyset-paginated.

use chrono::NaiveDateTime;
use serde::Serialize;

use crate::domain::{LedgerReason, LedgerType};
use crate::store::{Store, StoreError};
use crate::with_pool;

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LedgerEntry {
    pub id: String,
    #[serde(rename = "type")]
    #[sqlx(rename = "type")]
    pub kind: Option<LedgerType>,
    pub reason: Option<LedgerReason>,
    pub amount: Option<i32>,
    #[sqlx(rename = "balanceAfter")]
    pub balance_after: Option<i32>,
    /// The caller's reference (`tracking_id`).
    #[sqlx(rename = "tracking_id")]
    pub reference: String,
    #[sqlx(rename = "idempotencyKey")]
    pub idempotency_key: Option<String>,
    #[sqlx(rename = "createdAt")]
    #[serde(serialize_with = "crate::domain::time::rfc3339_utc")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: NaiveDateTime,
}

/// Keyset position in a user's ledger: newest first by (`createdAt`, `id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    created_at: NaiveDateTime,
    id: String,
}

impl Cursor {
    pub fn encode(&self) -> String {
        format!(
            "{}.{}",
            self.created_at.and_utc().timestamp_millis(),
            self.id
        )
    }

    pub fn parse(raw: &str) -> Option<Self> {
        let (ms, id) = raw.split_once('.')?;
        let created_at = chrono::DateTime::from_timestamp_millis(ms.parse().ok()?)?.naive_utc();
        (!id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')).then(|| {
            Self {
                created_at,
                id: id.to_owned(),
            }
        })
    }
}

const LEDGER_FIRST_PAGE: &str = r#"
SELECT "id", "type", "reason", "amount", "balanceAfter", "tracking_id", "idempotencyKey", "createdAt"
FROM "Transaction" WHERE "userId" = $1
ORDER BY "createdAt" DESC, "id" DESC LIMIT $2"#;

const LEDGER_NEXT_PAGE: &str = r#"
SELECT "id", "type", "reason", "amount", "balanceAfter", "tracking_id", "idempotencyKey", "createdAt"
FROM "Transaction"
WHERE "userId" = $1 AND ("createdAt" < $3 OR ("createdAt" = $3 AND "id" < $4))
ORDER BY "createdAt" DESC, "id" DESC LIMIT $2"#;

/// One page of a user's ledger, newest first, and the cursor of the next page.
pub async fn ledger_page(
    store: &Store,
    user_id: &str,
    limit: u32,
    cursor: Option<&Cursor>,
) -> Result<(Vec<LedgerEntry>, Option<Cursor>), StoreError> {
    let fetch = i64::from(limit) + 1;
    let mut rows: Vec<LedgerEntry> = with_pool!(store, |pool, p| {
        match cursor {
            None => {
                sqlx::query_as(LEDGER_FIRST_PAGE)
                    .bind(user_id)
                    .bind(fetch)
                    .persistent(p)
                    .fetch_all(pool)
                    .await?
            }
            Some(c) => {
                sqlx::query_as(LEDGER_NEXT_PAGE)
                    .bind(user_id)
                    .bind(fetch)
                    .bind(c.created_at)
                    .bind(&c.id)
                    .persistent(p)
                    .fetch_all(pool)
                    .await?
            }
        }
    });
    let next = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|r| Cursor {
            created_at: r.created_at,
            id: r.id.clone(),
        })
    } else {
        None
    };
    Ok((rows, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let c = Cursor {
            created_at: crate::store::now(),
            id: "abc123".into(),
        };
        assert_eq!(Cursor::parse(&c.encode()), Some(c));
        for bad in ["", "x.y", "123", "123.", "123.a'b"] {
            assert_eq!(Cursor::parse(bad), None, "{bad}");
        }
    }
}
