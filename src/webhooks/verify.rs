//! Svix / Standard Webhooks signature verification.
//!
//! The signed content is `{msg_id}.{timestamp}.{body}`, HMAC-SHA256 with the base64 key
//! after `whsec_`. The signature header holds space-separated `v1,<base64>` entries; any
//! one matching any configured secret (key rotation) is enough. The timestamp must be
//! within ±5 minutes of `now`, which is passed in so the boundaries are testable.

use std::fmt;

use axum::http::HeaderMap;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::domain::SvixMessageId;

type HmacSha256 = Hmac<Sha256>;

/// Accepted distance between the signed timestamp and our clock, both directions.
pub const TOLERANCE_SECS: i64 = 300;

/// A webhook signing secret (`whsec_<base64>`). Debug never shows the key.
#[derive(Clone)]
pub struct WebhookSecret(Vec<u8>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("is not base64 after the optional `whsec_` prefix")]
    NotBase64,
    #[error("is empty")]
    Empty,
    #[error(
        "is {0} byte(s) long; a Svix signing secret is {MIN_SECRET_BYTES} or more \
         (`whsec_` and 32 base64 characters): copy the whole Signing Secret of the endpoint \
         from the Clerk dashboard"
    )]
    TooShort(usize),
}

/// Svix generates 24-byte keys and accepts 24 to 75; anything shorter is a truncated copy
/// (or a key anyone could guess).
pub const MIN_SECRET_BYTES: usize = 24;

impl WebhookSecret {
    pub fn parse(raw: &str) -> Result<Self, SecretError> {
        let b64 = raw.trim().strip_prefix("whsec_").unwrap_or(raw.trim());
        let key = STANDARD.decode(b64).map_err(|_| SecretError::NotBase64)?;
        match key.len() {
            0 => Err(SecretError::Empty),
            n if n < MIN_SECRET_BYTES => Err(SecretError::TooShort(n)),
            _ => Ok(Self(key)),
        }
    }

    /// A new random secret, for development.
    pub fn generate() -> (Self, String) {
        use rand::RngCore;
        let mut key = [0u8; 24];
        rand::thread_rng().fill_bytes(&mut key);
        let text = format!("whsec_{}", STANDARD.encode(key));
        (Self(key.to_vec()), text)
    }

    fn mac(&self, msg_id: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC accepts any key length");
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

/// Why a request was refused before its body was trusted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("missing header `{0}` (or its `webhook-` equivalent)")]
    MissingHeader(&'static str),
    #[error("header `{0}` is malformed")]
    MalformedHeader(&'static str),
    #[error("timestamp is more than {TOLERANCE_SECS} seconds old")]
    TimestampTooOld,
    #[error("timestamp is more than {TOLERANCE_SECS} seconds in the future")]
    TimestampTooNew,
    #[error("no signature matches")]
    NoMatchingSignature,
}

impl VerifyError {
    /// Missing or malformed headers are a 400; everything else a 401.
    pub fn is_header_problem(&self) -> bool {
        matches!(self, Self::MissingHeader(_) | Self::MalformedHeader(_))
    }
}

/// A webhook whose signature has been checked. Only [`verify`] builds one, so a handler
/// that takes it cannot forget the check.
#[derive(Debug)]
pub struct VerifiedWebhook {
    msg_id: SvixMessageId,
    timestamp: i64,
    body: Bytes,
}

impl VerifiedWebhook {
    /// A webhook that was verified when it arrived, read back from its stored payload
    /// (`clerk-sync replay`). The database is the only source of such a payload.
    pub fn from_stored(msg_id: SvixMessageId, timestamp: i64, body: Bytes) -> Self {
        Self {
            msg_id,
            timestamp,
            body,
        }
    }

    pub fn msg_id(&self) -> &SvixMessageId {
        &self.msg_id
    }
    pub fn timestamp(&self) -> i64 {
        self.timestamp
    }
    pub fn body(&self) -> &Bytes {
        &self.body
    }
}

fn header<'a>(headers: &'a HeaderMap, names: [&'static str; 2]) -> Result<&'a str, VerifyError> {
    let value = headers
        .get(names[0])
        .or_else(|| headers.get(names[1]))
        .ok_or(VerifyError::MissingHeader(names[0]))?;
    value
        .to_str()
        .map_err(|_| VerifyError::MalformedHeader(names[0]))
}

/// The three signature headers, `svix-*` or `webhook-*`, without looking at the body.
pub struct SignatureHeaders<'a> {
    msg_id: SvixMessageId,
    timestamp_text: &'a str,
    timestamp: i64,
    signatures: &'a str,
}

impl<'a> SignatureHeaders<'a> {
    pub fn from_headers(headers: &'a HeaderMap) -> Result<Self, VerifyError> {
        let id = header(headers, ["svix-id", "webhook-id"])?;
        let timestamp_text = header(headers, ["svix-timestamp", "webhook-timestamp"])?;
        let signatures = header(headers, ["svix-signature", "webhook-signature"])?;
        let msg_id =
            SvixMessageId::parse(id).map_err(|_| VerifyError::MalformedHeader("svix-id"))?;
        let timestamp = timestamp_text
            .parse::<i64>()
            .map_err(|_| VerifyError::MalformedHeader("svix-timestamp"))?;
        Ok(Self {
            msg_id,
            timestamp_text,
            timestamp,
            signatures,
        })
    }

    pub fn msg_id(&self) -> &SvixMessageId {
        &self.msg_id
    }

    /// Checks the timestamp against `now` (unix seconds) and the signature against every
    /// secret, in constant time per comparison.
    pub fn verify(
        self,
        secrets: &[WebhookSecret],
        body: Bytes,
        now: i64,
    ) -> Result<VerifiedWebhook, VerifyError> {
        if now - self.timestamp > TOLERANCE_SECS {
            return Err(VerifyError::TimestampTooOld);
        }
        if self.timestamp - now > TOLERANCE_SECS {
            return Err(VerifyError::TimestampTooNew);
        }
        let candidates: Vec<Vec<u8>> = self
            .signatures
            .split(' ')
            .filter_map(|entry| entry.strip_prefix("v1,"))
            .filter_map(|b64| STANDARD.decode(b64).ok())
            .collect();
        let matched = secrets.iter().any(|secret| {
            let expected = secret
                .mac(self.msg_id.as_str(), self.timestamp_text, &body)
                .finalize()
                .into_bytes();
            candidates
                .iter()
                .any(|candidate| bool::from(candidate.as_slice().ct_eq(expected.as_slice())))
        });
        if !matched {
            return Err(VerifyError::NoMatchingSignature);
        }
        Ok(VerifiedWebhook {
            msg_id: self.msg_id,
            timestamp: self.timestamp,
            body,
        })
    }
}

/// Verify a request in one call: headers, timestamp, signature.
pub fn verify(
    secrets: &[WebhookSecret],
    headers: &HeaderMap,
    body: Bytes,
    now: i64,
) -> Result<VerifiedWebhook, VerifyError> {
    SignatureHeaders::from_headers(headers)?.verify(secrets, body, now)
}

/// The `v1,<base64>` signature Svix would send; the inverse of [`verify`], for `send` and tests.
pub fn sign(secret: &WebhookSecret, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mac = secret.mac(msg_id, &timestamp.to_string(), body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(id: &str, ts: i64, sig: &str, prefix: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::HeaderName::try_from(format!("{prefix}-id")).unwrap(),
            HeaderValue::from_str(id).unwrap(),
        );
        h.insert(
            axum::http::HeaderName::try_from(format!("{prefix}-timestamp")).unwrap(),
            HeaderValue::from_str(&ts.to_string()).unwrap(),
        );
        h.insert(
            axum::http::HeaderName::try_from(format!("{prefix}-signature")).unwrap(),
            HeaderValue::from_str(sig).unwrap(),
        );
        h
    }

    #[test]
    fn sign_then_verify_round_trips_with_both_header_prefixes() {
        let (secret, _) = WebhookSecret::generate();
        let body = Bytes::from_static(b"{\"type\":\"user.created\"}");
        let sig = sign(&secret, "msg_1", 1_700_000_000, &body);
        for prefix in ["svix", "webhook"] {
            let h = headers("msg_1", 1_700_000_000, &sig, prefix);
            let v = verify(
                std::slice::from_ref(&secret),
                &h,
                body.clone(),
                1_700_000_000,
            )
            .unwrap();
            assert_eq!(v.msg_id().as_str(), "msg_1");
        }
    }

    #[test]
    fn any_of_several_secrets_verifies_during_rotation() {
        let (old, _) = WebhookSecret::generate();
        let (new, _) = WebhookSecret::generate();
        let body = Bytes::from_static(b"{}");
        let sig = sign(&new, "msg_2", 10, &body);
        let h = headers("msg_2", 10, &sig, "svix");
        assert!(verify(&[old.clone(), new], &h, body.clone(), 10).is_ok());
        assert_eq!(
            verify(&[old], &h, body, 10).unwrap_err(),
            VerifyError::NoMatchingSignature
        );
    }

    #[test]
    fn missing_and_malformed_headers_are_header_problems() {
        let h = HeaderMap::new();
        let e = verify(&[], &h, Bytes::new(), 0).unwrap_err();
        assert_eq!(e, VerifyError::MissingHeader("svix-id"));
        assert!(e.is_header_problem());
        let mut h = headers("msg_3", 0, "v1,xx", "svix");
        h.insert("svix-timestamp", HeaderValue::from_static("yesterday"));
        let e = verify(&[], &h, Bytes::new(), 0).unwrap_err();
        assert_eq!(e, VerifyError::MalformedHeader("svix-timestamp"));
    }

    #[test]
    fn secret_debug_is_redacted() {
        let s = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(format!("{s:?}"), "WebhookSecret(<redacted>)");
        assert!(WebhookSecret::parse("whsec_!!!").is_err());
    }

    #[test]
    fn a_truncated_secret_is_refused_with_its_length() {
        // One byte, and the 32-character secret cut to 28 characters (21 bytes).
        assert_eq!(
            WebhookSecret::parse("whsec_AA==").unwrap_err(),
            SecretError::TooShort(1)
        );
        assert_eq!(
            WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2La").unwrap_err(),
            SecretError::TooShort(21)
        );
        assert!(WebhookSecret::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").is_ok());
    }
}
