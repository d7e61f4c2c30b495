//! What a ledger row (`"Transaction"`) says: its type and its reason, as clerk-sync writes
//! them, bound to the database as text. A value read back that is not one of these is an
//! error, never a guess.

use crate::store::TextEnum;
use crate::text_enum;

/// `"Transaction"."type"`: which way the balance moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerType {
    Credit,
    Debit,
}

impl TextEnum for LedgerType {
    const ALL: &'static [Self] = &[Self::Credit, Self::Debit];
    const COLUMN: &'static str = r#""Transaction"."type""#;

    fn as_str(self) -> &'static str {
        match self {
            Self::Credit => "credit",
            Self::Debit => "debit",
        }
    }
}
text_enum!(LedgerType);

/// What a caller may grant for: the `kind` of a grant through the API, and its ledger
/// reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantReason {
    Purchase,
    Refund,
    Grant,
    Adjustment,
}

impl TextEnum for GrantReason {
    const ALL: &'static [Self] = &[Self::Purchase, Self::Refund, Self::Grant, Self::Adjustment];
    const COLUMN: &'static str = r#""Transaction"."reason""#;

    fn as_str(self) -> &'static str {
        match self {
            Self::Purchase => "purchase",
            Self::Refund => "refund",
            Self::Grant => "grant",
            Self::Adjustment => "adjustment",
        }
    }
}
text_enum!(GrantReason);

/// `"Transaction"."reason"`: why the balance moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerReason {
    /// The generations a new user starts with (the signup transaction).
    SignupBonus,
    Consume,
    /// A grant through the API, for the caller's reason.
    Granted(GrantReason),
    /// Written by the ledger trigger (migration 6) for a balance another writer changed.
    DirectWrite,
}

impl TextEnum for LedgerReason {
    const ALL: &'static [Self] = &[
        Self::SignupBonus,
        Self::Consume,
        Self::Granted(GrantReason::Purchase),
        Self::Granted(GrantReason::Refund),
        Self::Granted(GrantReason::Grant),
        Self::Granted(GrantReason::Adjustment),
        Self::DirectWrite,
    ];
    const COLUMN: &'static str = r#""Transaction"."reason""#;

    fn as_str(self) -> &'static str {
        match self {
            Self::SignupBonus => "signup_bonus",
            Self::Consume => "consume",
            Self::Granted(kind) => kind.as_str(),
            Self::DirectWrite => "direct_write",
        }
    }
}
text_enum!(LedgerReason);

/// A movement through the credits API: spend, or grant for a reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreditChange {
    Consume,
    Grant(GrantReason),
}

impl CreditChange {
    pub fn ledger_type(self) -> LedgerType {
        match self {
            Self::Consume => LedgerType::Debit,
            Self::Grant(_) => LedgerType::Credit,
        }
    }

    pub fn reason(self) -> LedgerReason {
        match self {
            Self::Consume => LedgerReason::Consume,
            Self::Grant(kind) => LedgerReason::Granted(kind),
        }
    }

    /// The ledger row's `description`.
    pub fn description(self) -> &'static str {
        match self {
            Self::Consume => "Generations spent",
            Self::Grant(_) => "Generations granted",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_reads_back_as_written_and_serialises_as_stored() {
        for r in LedgerReason::ALL {
            assert_eq!(LedgerReason::parse(r.as_str()), Some(*r));
            assert_eq!(
                serde_json::to_value(r).unwrap(),
                serde_json::Value::from(r.as_str())
            );
        }
        for t in LedgerType::ALL {
            assert_eq!(LedgerType::parse(t.as_str()), Some(*t));
            assert_eq!(
                serde_json::to_value(t).unwrap(),
                serde_json::Value::from(t.as_str())
            );
        }
        for unknown in ["", "Consume", "debit ", "bonus"] {
            assert_eq!(LedgerReason::parse(unknown), None, "{unknown:?}");
        }
        let kind: GrantReason = serde_json::from_str("\"refund\"").unwrap();
        assert_eq!(kind, GrantReason::Refund);
        let err = serde_json::from_str::<GrantReason>("\"gift\"").unwrap_err();
        assert!(err.to_string().starts_with("unknown variant"), "{err}");
    }
}
