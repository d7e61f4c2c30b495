use std::fmt;

/// An email address as Clerk reports it: trimmed, one `@`, a non-empty local part and a
/// domain with a dot. `Debug` hides the address so it cannot reach a log line by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct EmailAddress(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EmailError {
    #[error("is empty")]
    Empty,
    #[error("is longer than 320 characters")]
    TooLong,
    #[error("is not a valid email address")]
    Malformed,
}

impl EmailAddress {
    pub fn parse(raw: &str) -> Result<Self, EmailError> {
        let s = raw.trim();
        if s.is_empty() {
            return Err(EmailError::Empty);
        }
        if s.len() > 320 {
            return Err(EmailError::TooLong);
        }
        let (local, domain) = s.split_once('@').ok_or(EmailError::Malformed)?;
        let well_formed = !local.is_empty()
            && !domain.contains('@')
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !s.chars().any(|c| c.is_whitespace() || c.is_control());
        if !well_formed {
            return Err(EmailError::Malformed);
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EmailAddress(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_trims() {
        assert_eq!(
            EmailAddress::parse(" example@example.org ")
                .unwrap()
                .as_str(),
            "example@example.org"
        );
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "  ",
            "no-at.example.org",
            "@example.org",
            "a@b",
            "a@@b.org",
            "a b@c.org",
            "a@.org",
            "a@org.",
        ] {
            assert!(
                EmailAddress::parse(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn debug_does_not_leak_the_address() {
        let e = EmailAddress::parse("secret.person@example.org").unwrap();
        assert!(!format!("{e:?}").contains("secret"));
    }
}
