//! Bearer API keys for `/v1`: compared as SHA-256 digests in constant time, every key
//! checked whatever the outcome.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{ApiError, AppState};
use crate::domain::Redacted;

#[derive(Clone, Default)]
pub struct ApiKeys(Vec<[u8; 32]>);

impl ApiKeys {
    pub fn new(keys: &[Redacted<String>]) -> Self {
        Self(
            keys.iter()
                .map(|k| Sha256::digest(k.0.as_bytes()).into())
                .collect(),
        )
    }

    fn accepts(&self, token: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.0
            .iter()
            .fold(subtle::Choice::from(0), |ok, key| ok | key.ct_eq(&digest))
            .into()
    }
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.0.len())
    }
}

/// A request that carried a valid `Authorization: Bearer <key>`.
pub struct Authenticated;

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(ApiError::Unauthorized)?;
        if state.api_keys.accepts(token.trim()) {
            Ok(Self)
        } else {
            Err(ApiError::Unauthorized)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_any_configured_key_only() {
        let keys = ApiKeys::new(&[
            Redacted("key_one_0123456789".into()),
            Redacted("key_two_0123456789".into()),
        ]);
        assert!(keys.accepts("key_one_0123456789"));
        assert!(keys.accepts("key_two_0123456789"));
        assert!(!keys.accepts("key_one_012345678"));
        assert!(!keys.accepts(""));
        assert!(!ApiKeys::default().accepts("anything"));
    }
}
