//! Clerk's event payloads, parsed from a verified body into what the signup path needs.
//! Error messages name the field and the problem, never the value.

use serde::Deserialize;
use serde_json::Value;

use crate::domain::text::storable_owned;
use crate::domain::{ClerkUserId, EmailAddress};

/// A problem with a verified payload that no retry can fix; recorded as `failed`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PayloadError {
    #[error("body is not valid JSON")]
    NotJson,
    #[error("field `{field}`: {problem}")]
    Field { field: String, problem: String },
    #[error("user has no email address")]
    NoEmail,
}

impl PayloadError {
    fn field(field: impl Into<String>, problem: impl ToString) -> Self {
        Self::Field {
            field: field.into(),
            problem: problem.to_string(),
        }
    }
}

/// The outer event: `{"type": ..., "data": {...}, "timestamp": ms}`.
#[derive(Debug, Deserialize)]
pub struct Envelope {
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub data: Value,
    /// Milliseconds since the epoch, when Clerk emitted the event.
    #[serde(default)]
    pub timestamp: Option<i64>,
}

/// An event's `type`: the three the signup path handles, or another, kept as Clerk sent
/// it (recorded as `ignored`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventType {
    UserCreated,
    UserUpdated,
    UserDeleted,
    Other(String),
}

impl EventType {
    const HANDLED: [(Self, &'static str); 3] = [
        (Self::UserCreated, "user.created"),
        (Self::UserUpdated, "user.updated"),
        (Self::UserDeleted, "user.deleted"),
    ];

    pub fn parse(raw: &str) -> Self {
        Self::HANDLED
            .iter()
            .find(|(_, name)| *name == raw)
            .map_or_else(|| Self::Other(raw.to_owned()), |(t, _)| t.clone())
    }

    /// A bounded label (a metric's): the handled type's name, or `other`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Other(_) => "other",
            handled => Self::HANDLED
                .iter()
                .find(|(t, _)| t == handled)
                .map(|(_, name)| *name)
                .expect("every handled type is listed"),
        }
    }

    /// The type as Clerk spells it.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Other(raw) => raw,
            handled => Self::HANDLED
                .iter()
                .find(|(t, _)| t == handled)
                .map(|(_, name)| *name)
                .expect("every handled type is listed"),
        }
    }
}

impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|raw| Self::parse(&raw))
    }
}

/// What Clerk tells us about a user, already checked.
#[derive(Debug, Clone)]
pub struct UserProfile {
    pub clerk_id: ClerkUserId,
    pub email: EmailAddress,
    pub photo: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    /// Clerk's `updated_at`, milliseconds: orders events for one user.
    pub clerk_updated_at: i64,
}

#[derive(Debug, Deserialize)]
struct RawEmail {
    id: Option<String>,
    email_address: String,
}

#[derive(Debug, Deserialize)]
struct RawUser {
    id: String,
    #[serde(default)]
    email_addresses: Vec<RawEmail>,
    primary_email_address_id: Option<String>,
    image_url: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
    updated_at: Option<i64>,
    created_at: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct RawDeleted {
    id: Option<String>,
}

/// Deserialize with the failing field's path in the error, but not serde's message
/// (which quotes the offending value).
fn from_value<T: serde::de::DeserializeOwned>(
    value: &Value,
    prefix: &str,
) -> Result<T, PayloadError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            prefix.to_owned()
        } else {
            format!("{prefix}.{path}")
        };
        let problem = if e.inner().to_string().starts_with("missing field") {
            "is missing".to_owned()
        } else {
            "has the wrong type or value".to_owned()
        };
        PayloadError::Field { field, problem }
    })
}

/// Parse the body into its envelope; the first thing done after verification.
pub fn parse_envelope(body: &[u8]) -> Result<Envelope, PayloadError> {
    let value: Value = serde_json::from_slice(body).map_err(|_| PayloadError::NotJson)?;
    from_value::<Envelope>(&value, "event")
}

impl Envelope {
    /// The user of a `user.created` / `user.updated` event.
    pub fn user_profile(&self) -> Result<UserProfile, PayloadError> {
        profile_from_user(&self.data, self.timestamp)
    }
}

/// A Clerk user object (an event's `data`, or the Backend API's `GET /v1/users/{id}`)
/// as the profile the signup path stores. `fallback_ms` orders it when Clerk sent no
/// `updated_at`.
pub fn profile_from_user(
    user: &Value,
    fallback_ms: Option<i64>,
) -> Result<UserProfile, PayloadError> {
    let raw: RawUser = from_value(user, "data")?;
    let clerk_id = ClerkUserId::parse(&raw.id).map_err(|e| PayloadError::field("data.id", e))?;
    let primary = raw
        .primary_email_address_id
        .as_deref()
        .and_then(|pid| {
            raw.email_addresses
                .iter()
                .find(|e| e.id.as_deref() == Some(pid))
        })
        .or_else(|| raw.email_addresses.first())
        .ok_or(PayloadError::NoEmail)?;
    let email = EmailAddress::parse(&primary.email_address)
        .map_err(|e| PayloadError::field("data.email_addresses[].email_address", e))?;
    let clerk_updated_at = raw
        .updated_at
        .or(raw.created_at)
        .or(fallback_ms)
        .ok_or_else(|| PayloadError::field("data.updated_at", "is missing"))?;
    Ok(UserProfile {
        clerk_id,
        email,
        photo: storable_owned(raw.image_url.unwrap_or_default()),
        first_name: raw.first_name.filter(|s| !s.is_empty()).map(storable_owned),
        last_name: raw.last_name.filter(|s| !s.is_empty()).map(storable_owned),
        clerk_updated_at,
    })
}

impl Envelope {
    /// The user id of a `user.deleted` event.
    pub fn deleted_user(&self) -> Result<ClerkUserId, PayloadError> {
        let raw: RawDeleted = from_value(&self.data, "data")?;
        let id = raw
            .id
            .ok_or_else(|| PayloadError::field("data.id", "is missing"))?;
        ClerkUserId::parse(&id).map_err(|e| PayloadError::field("data.id", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
    }

    #[test]
    fn parses_the_created_fixture() {
        let env = parse_envelope(&fixture("clerk-user-created.json")).unwrap();
        assert_eq!(env.event_type, EventType::UserCreated);
        assert_eq!(env.event_type.as_str(), "user.created");
        let p = env.user_profile().unwrap();
        assert_eq!(p.clerk_id.as_str(), "user_29w83sxmDNGwOuEthce5gg56FcC");
        assert_eq!(p.email.as_str(), "example@example.org");
        assert_eq!(p.photo, "https://img.clerk.com/xxxxxx");
        assert_eq!(p.first_name.as_deref(), Some("Example"));
        assert_eq!(p.last_name.as_deref(), Some("Example"));
        assert_eq!(p.clerk_updated_at, 1654012591835);
    }

    #[test]
    fn picks_the_primary_email_on_update() {
        let env = parse_envelope(&fixture("clerk-user-updated.json")).unwrap();
        let p = env.user_profile().unwrap();
        assert_eq!(p.email.as_str(), "example.new@example.org");
        assert_eq!(p.clerk_updated_at, 1654012710000);
    }

    #[test]
    fn no_email_is_a_payload_error() {
        let env = parse_envelope(&fixture("clerk-user-created-no-email.json")).unwrap();
        assert_eq!(env.user_profile().unwrap_err(), PayloadError::NoEmail);
    }

    #[test]
    fn deleted_fixture_names_the_user() {
        let env = parse_envelope(&fixture("clerk-user-deleted.json")).unwrap();
        assert_eq!(
            env.deleted_user().unwrap().as_str(),
            "user_29w83sxmDNGwOuEthce5gg56FcC"
        );
    }

    #[test]
    fn event_types_parse_to_their_variant_and_back() {
        for raw in [
            "user.created",
            "user.updated",
            "user.deleted",
            "session.created",
            "",
        ] {
            let t = EventType::parse(raw);
            assert_eq!(t.as_str(), raw);
            assert_eq!(
                matches!(t, EventType::Other(_)),
                raw.starts_with("session") || raw.is_empty()
            );
        }
    }

    #[test]
    fn errors_name_the_field_but_not_the_value() {
        assert_eq!(
            parse_envelope(b"{not json").unwrap_err(),
            PayloadError::NotJson
        );
        let env = parse_envelope(
            br#"{"type":"user.created","data":{"id":"user_1","updated_at":"secret@example.org"}}"#,
        )
        .unwrap();
        let err = env.user_profile().unwrap_err().to_string();
        assert!(err.contains("data.updated_at"), "{err}");
        assert!(!err.contains("secret"), "{err}");
        let err = parse_envelope(br#"{"data":{}}"#).unwrap_err().to_string();
        assert!(err.contains("event") && err.contains("missing"), "{err}");
    }
}
