use std::fmt;

/// A Clerk user id such as `user_29w83sxmDNGwOuEthce5gg56FcC`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClerkUserId(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClerkUserIdError {
    #[error("is empty")]
    Empty,
    #[error("is longer than {max} characters", max = ClerkUserId::MAX_LEN)]
    TooLong,
    #[error("must contain only ASCII letters, digits and underscores")]
    BadCharacters,
}

impl ClerkUserId {
    pub const MAX_LEN: usize = 128;

    pub fn parse(raw: &str) -> Result<Self, ClerkUserIdError> {
        if raw.is_empty() {
            return Err(ClerkUserIdError::Empty);
        }
        if raw.len() > Self::MAX_LEN {
            return Err(ClerkUserIdError::TooLong);
        }
        if !raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(ClerkUserIdError::BadCharacters);
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClerkUserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_clerk_ids() {
        assert_eq!(
            ClerkUserId::parse("user_29w83sxmDNGwOuEthce5gg56FcC")
                .unwrap()
                .as_str(),
            "user_29w83sxmDNGwOuEthce5gg56FcC"
        );
    }

    #[test]
    fn rejects_bad_ids() {
        assert_eq!(ClerkUserId::parse(""), Err(ClerkUserIdError::Empty));
        assert_eq!(
            ClerkUserId::parse("user 1"),
            Err(ClerkUserIdError::BadCharacters)
        );
        assert_eq!(
            ClerkUserId::parse("user_1'; drop table"),
            Err(ClerkUserIdError::BadCharacters)
        );
        assert_eq!(
            ClerkUserId::parse(&"a".repeat(129)),
            Err(ClerkUserIdError::TooLong)
        );
    }
}
