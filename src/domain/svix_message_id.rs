use std::fmt;

/// The `svix-id` header: the idempotency key of one webhook message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SvixMessageId(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SvixMessageIdError {
    #[error("is empty")]
    Empty,
    #[error("is longer than 256 characters")]
    TooLong,
    #[error("must be printable ASCII without spaces")]
    BadCharacters,
}

impl SvixMessageId {
    pub fn parse(raw: &str) -> Result<Self, SvixMessageIdError> {
        if raw.is_empty() {
            return Err(SvixMessageIdError::Empty);
        }
        if raw.len() > 256 {
            return Err(SvixMessageIdError::TooLong);
        }
        if !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(SvixMessageIdError::BadCharacters);
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SvixMessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
