//! Values of the credits API, parsed once at the edge.

/// The most generations one call may move (and `SIGNUP_CREDITS` may grant).
pub const MAX_CREDITS: i32 = 1_000_000;

/// A number of generations moved by one call: 1 ..= `MAX_CREDITS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Amount(i32);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("must be an integer between 1 and {max}", max = MAX_CREDITS)]
pub struct AmountError;

impl Amount {
    pub fn parse(n: i64) -> Result<Self, AmountError> {
        if (1..=i64::from(MAX_CREDITS)).contains(&n) {
            Ok(Self(n as i32))
        } else {
            Err(AmountError)
        }
    }

    pub fn get(self) -> i32 {
        self.0
    }
}

/// The caller's idempotency key (or reference): 1 to 200 printable ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerKey(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("must be 1 to 200 printable ASCII characters")]
pub struct CallerKeyError;

impl CallerKey {
    pub fn parse(raw: &str) -> Result<Self, CallerKeyError> {
        if (1..=200).contains(&raw.len()) && raw.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        {
            Ok(Self(raw.to_owned()))
        } else {
            Err(CallerKeyError)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_within_bounds() {
        assert_eq!(Amount::parse(1).unwrap().get(), 1);
        assert_eq!(Amount::parse(1_000_000).unwrap().get(), 1_000_000);
        for bad in [0, -1, 1_000_001, i64::MAX] {
            assert_eq!(Amount::parse(bad), Err(AmountError));
        }
    }

    #[test]
    fn caller_keys() {
        assert!(CallerKey::parse("order-123").is_ok());
        assert!(CallerKey::parse("").is_err());
        assert!(CallerKey::parse(&"k".repeat(201)).is_err());
        assert!(CallerKey::parse("tab\there").is_err());
    }
}
