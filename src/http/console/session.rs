//! The console's keys and sessions. A session is a signed cookie, so any replica that has
//! the same `CLERK_SYNC_ADMIN_KEYS` accepts it (no session table): `v1.<expiry>.<nonce>.
//! <HMAC-SHA256 over "v1.<expiry>.<nonce">>`, keyed by a key derived from one admin key.
//! Removing that key ends its sessions. A form's CSRF token is an HMAC of the session's
//! nonce under the same key: bound to the session, checked on every POST.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::domain::Redacted;

type HmacSha256 = Hmac<Sha256>;

/// How long a login lasts.
pub const SESSION_SECONDS: i64 = 12 * 3600;

/// The session cookie's name.
pub const COOKIE: &str = "clerk_sync_console";

#[derive(Clone)]
pub struct ConsoleKeys {
    /// SHA-256 of each key, for the login comparison; and the session key derived from it.
    keys: Vec<([u8; 32], [u8; 32])>,
}

impl std::fmt::Debug for ConsoleKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConsoleKeys({} keys)", self.keys.len())
    }
}

/// A valid session: which key signed it, and its nonce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    key: usize,
    nonce: String,
}

fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

impl ConsoleKeys {
    /// `None` when no key is configured: the console is off.
    pub fn new(keys: &[Redacted<String>]) -> Option<Self> {
        use sha2::Digest;
        (!keys.is_empty()).then(|| Self {
            keys: keys
                .iter()
                .map(|k| {
                    (
                        Sha256::digest(k.0.as_bytes()).into(),
                        mac(k.0.as_bytes(), &[b"clerk-sync console session v1"]),
                    )
                })
                .collect(),
        })
    }

    /// The key a login form carried, if it is one of ours (every key compared, in
    /// constant time).
    pub fn login(&self, candidate: &str) -> Option<usize> {
        use sha2::Digest;
        let digest: [u8; 32] = Sha256::digest(candidate.trim().as_bytes()).into();
        let mut found = None;
        for (i, (key, _)) in self.keys.iter().enumerate() {
            if bool::from(key.ct_eq(&digest)) {
                found = Some(i);
            }
        }
        found
    }

    /// A new session's cookie value, signed with key `key`.
    pub fn issue(&self, key: usize, now: i64) -> String {
        use rand::RngCore;
        let mut nonce = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut nonce);
        let body = format!(
            "v1.{}.{}",
            now + SESSION_SECONDS,
            URL_SAFE_NO_PAD.encode(nonce)
        );
        let signature = mac(&self.keys[key].1, &[body.as_bytes()]);
        format!("{body}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    /// The session a cookie holds, if it is signed by one of the keys and not expired.
    pub fn verify(&self, cookie: &str, now: i64) -> Option<Session> {
        let (body, signature) = cookie.rsplit_once('.')?;
        let mut parts = body.split('.');
        let (version, expiry, nonce) = (parts.next()?, parts.next()?, parts.next()?);
        if version != "v1" || parts.next().is_some() || expiry.parse::<i64>().ok()? <= now {
            return None;
        }
        let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
        let mut found = None;
        for (i, (_, session_key)) in self.keys.iter().enumerate() {
            let expected = mac(session_key, &[body.as_bytes()]);
            if bool::from(expected.as_slice().ct_eq(&signature)) {
                found = Some(i);
            }
        }
        found.map(|key| Session {
            key,
            nonce: nonce.to_owned(),
        })
    }

    /// The CSRF token of a session's forms.
    pub fn csrf(&self, session: &Session) -> String {
        URL_SAFE_NO_PAD.encode(mac(
            &self.keys[session.key].1,
            &[b"csrf.", session.nonce.as_bytes()],
        ))
    }

    /// Whether a form's token is this session's (constant time).
    pub fn csrf_matches(&self, session: &Session, token: &str) -> bool {
        bool::from(self.csrf(session).as_bytes().ct_eq(token.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(list: &[&str]) -> ConsoleKeys {
        let list: Vec<_> = list.iter().map(|k| Redacted((*k).to_owned())).collect();
        ConsoleKeys::new(&list).unwrap()
    }

    #[test]
    fn a_session_is_accepted_until_it_expires_or_its_key_is_removed() {
        let both = keys(&["admin-key-one-0123456789", "admin-key-two-0123456789"]);
        assert_eq!(both.login("admin-key-two-0123456789"), Some(1));
        assert_eq!(both.login("admin-key-three-012345678"), None);
        let cookie = both.issue(1, 1_000);
        let session = both.verify(&cookie, 1_001).expect("valid");
        assert!(
            both.verify(&cookie, 1_000 + SESSION_SECONDS).is_none(),
            "expired"
        );
        // Another replica with the same keys accepts it; one without key two does not.
        let same = keys(&["admin-key-one-0123456789", "admin-key-two-0123456789"]);
        assert_eq!(same.verify(&cookie, 1_001), Some(session.clone()));
        let rotated = keys(&["admin-key-one-0123456789"]);
        assert!(rotated.verify(&cookie, 1_001).is_none());
        // Tampering with any part breaks it.
        let longer = cookie.replacen(
            &format!("v1.{}", 1_000 + SESSION_SECONDS),
            "v1.9999999999",
            1,
        );
        assert!(both.verify(&longer, 1_001).is_none());
        assert!(both.verify("v1.9999999999.x.y", 1_001).is_none());
        // The CSRF token belongs to the session.
        let token = both.csrf(&session);
        assert!(both.csrf_matches(&session, &token));
        let other = both.verify(&both.issue(1, 1_000), 1_001).unwrap();
        assert!(!both.csrf_matches(&other, &token));
        assert!(!both.csrf_matches(&session, ""));
    }
}
