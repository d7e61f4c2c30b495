//! Clerk's event payloads, parsed from a verified body into what the signup path needs.
//! Error messages name the field and the problem, never the value.

use serde::Deserialize;
use serde_json::value::RawValue;
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
    /// Addresses, none of them verified: an address belongs to one user only, so taking
    /// an unverified one could refuse its real owner's signup later.
    #[error("user has no verified email address")]
    NoVerifiedEmail,
}

impl PayloadError {
    fn field(field: impl Into<String>, problem: impl ToString) -> Self {
        Self::Field {
            field: field.into(),
            problem: problem.to_string(),
        }
    }
}

/// The outer event: `{"type": ..., "data": {...}, "timestamp": ms}`. `data` stays text
/// until the event's type says what it holds: building a `Value` of it first, then the
/// typed user from that, was most of the JSON work of a signup.
#[derive(Debug, Deserialize)]
pub struct Envelope {
    #[serde(rename = "type")]
    pub event_type: EventType,
    data: Box<RawValue>,
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
    /// Clerk's verification object; `null` (as its SDK may give) counts as unverified.
    #[serde(default)]
    verification: Option<RawVerification>,
}

#[derive(Debug, Deserialize)]
struct RawVerification {
    status: Option<String>,
}

impl RawEmail {
    fn verified(&self) -> bool {
        self.verification.as_ref().and_then(|v| v.status.as_deref()) == Some("verified")
    }
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
fn deserialize_at<'de, D, T>(from: D, prefix: &str) -> Result<T, PayloadError>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    serde_path_to_error::deserialize(from).map_err(|e| {
        let mut field = prefix.to_owned();
        let path = e.path().to_string();
        if path != "." {
            field = format!("{field}.{path}");
        }
        // serde names a missing field in its message, in backquotes (never a value).
        let message = e.inner().to_string();
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next());
        let problem = match missing {
            Some(name) => {
                field = format!("{field}.{name}");
                "is missing"
            }
            None => "has the wrong type or value",
        };
        PayloadError::Field {
            field,
            problem: problem.to_owned(),
        }
    })
}

/// Parse the body into its envelope; the first thing done after verification.
/// A body that is not JSON at all is `NotJson`, whatever else is wrong with it: when the
/// one typed pass fails, a pass that only checks the syntax says which it was.
pub fn parse_envelope(body: &[u8]) -> Result<Envelope, PayloadError> {
    let mut json = serde_json::Deserializer::from_slice(body);
    let parsed = deserialize_at(&mut json, "event").and_then(|envelope| {
        json.end().map_err(|_| PayloadError::NotJson)?;
        Ok(envelope)
    });
    parsed.map_err(
        |e| match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
            Ok(_) => e,
            Err(_) => PayloadError::NotJson,
        },
    )
}

impl Envelope {
    /// The user of a `user.created` / `user.updated` event.
    pub fn user_profile(&self) -> Result<UserProfile, PayloadError> {
        profile_from_raw(self.data()?, self.timestamp)
    }

    /// `data` as `T`, errors named from `data`.
    fn data<'a, T: Deserialize<'a>>(&'a self) -> Result<T, PayloadError> {
        deserialize_at(
            &mut serde_json::Deserializer::from_str(self.data.get()),
            "data",
        )
    }

    /// `data.id` when it is a string, whatever the event (a label for `clerk-sync dev`).
    pub fn data_id(&self) -> Option<String> {
        serde_json::from_str::<RawDeleted>(self.data.get())
            .ok()
            .and_then(|raw| raw.id)
    }
}

/// A Clerk user object (an event's `data`, or the Backend API's `GET /v1/users/{id}`)
/// as the profile the signup path stores. `fallback_ms` orders it when Clerk sent no
/// `updated_at`.
pub fn profile_from_user(
    user: &Value,
    fallback_ms: Option<i64>,
) -> Result<UserProfile, PayloadError> {
    profile_from_raw(deserialize_at(user, "data")?, fallback_ms)
}

fn profile_from_raw(raw: RawUser, fallback_ms: Option<i64>) -> Result<UserProfile, PayloadError> {
    let clerk_id = ClerkUserId::parse(&raw.id).map_err(|e| PayloadError::field("data.id", e))?;
    if raw.email_addresses.is_empty() {
        return Err(PayloadError::NoEmail);
    }
    // The primary address when it is verified, else the first verified one; never an
    // unverified address.
    let verified = |e: &&RawEmail| e.verified();
    let primary = raw
        .primary_email_address_id
        .as_deref()
        .and_then(|pid| {
            raw.email_addresses
                .iter()
                .find(|e| e.id.as_deref() == Some(pid))
        })
        .filter(verified)
        .or_else(|| raw.email_addresses.iter().find(verified))
        .ok_or(PayloadError::NoVerifiedEmail)?;
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
        let raw: RawDeleted = self.data()?;
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
    fn an_unverified_address_is_never_the_email() {
        let with = |primary: Option<&str>, emails: serde_json::Value| {
            let mut user =
                serde_json::from_slice::<serde_json::Value>(&fixture("clerk-user-created.json"))
                    .unwrap()["data"]
                    .clone();
            user["primary_email_address_id"] = serde_json::json!(primary);
            user["email_addresses"] = emails;
            profile_from_user(&user, None).map(|p| p.email.as_str().to_owned())
        };
        let address = |id: &str, email: &str, status: Option<&str>| {
            serde_json::json!({"id": id, "email_address": email,
                "verification": status.map(|s| serde_json::json!({"status": s}))})
        };
        let unverified = address("e1", "squatted@example.org", Some("unverified"));
        let no_verification = address("e2", "nobody@example.org", None);
        let verified = address("e3", "owner@example.org", Some("verified"));
        assert_eq!(
            with(None, serde_json::json!([unverified, no_verification])),
            Err(PayloadError::NoVerifiedEmail)
        );
        assert_eq!(
            with(None, serde_json::json!([unverified, verified])).as_deref(),
            Ok("owner@example.org")
        );
        assert_eq!(
            with(Some("e1"), serde_json::json!([unverified, verified])).as_deref(),
            Ok("owner@example.org"),
            "an unverified primary is not taken either"
        );
        assert_eq!(
            with(Some("e3"), serde_json::json!([verified.clone()])).as_deref(),
            Ok("owner@example.org")
        );
    }

    #[test]
    fn no_email_is_a_payload_error() {
        let env = parse_envelope(&fixture("clerk-user-created-no-email.json")).unwrap();
        assert_eq!(env.user_profile().unwrap_err(), PayloadError::NoEmail);
    }

    #[test]
    fn data_id_is_the_users_id_of_any_event_or_none() {
        let id = |body: &[u8]| parse_envelope(body).unwrap().data_id();
        assert_eq!(
            id(&fixture("clerk-user-deleted.json")).as_deref(),
            Some("user_29w83sxmDNGwOuEthce5gg56FcC")
        );
        assert_eq!(id(br#"{"type":"x","data":{"id":7}}"#), None);
        assert_eq!(id(br#"{"type":"x","data":[]}"#), None);
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
        assert_eq!(
            parse_envelope(br#"{"data":{}}"#).unwrap_err(),
            PayloadError::field("event.type", "is missing")
        );
        assert_eq!(
            parse_envelope(br#"{"type":"user.created"}"#).unwrap_err(),
            PayloadError::field("event.data", "is missing")
        );
        assert_eq!(
            parse_envelope(br#"{"type":5,"data":{}}"#).unwrap_err(),
            PayloadError::field("event.type", "has the wrong type or value")
        );
        let env =
            parse_envelope(br#"{"type":"user.created","data":{"email_addresses":[]}}"#).unwrap();
        assert_eq!(
            env.user_profile().unwrap_err(),
            PayloadError::field("data.id", "is missing")
        );
        let env = parse_envelope(
            br#"{"type":"user.created","data":{"id":"user_1","email_addresses":[{"id":"e"}]}}"#,
        )
        .unwrap();
        assert_eq!(
            env.user_profile().unwrap_err(),
            PayloadError::field("data.email_addresses[0].email_address", "is missing")
        );
        // Not JSON wins over a wrong type met first.
        assert_eq!(
            parse_envelope(br#"{"type":5,"data":"#).unwrap_err(),
            PayloadError::NotJson
        );
        assert_eq!(
            parse_envelope(br#"{"type":"user.created","data":{}} trailing"#).unwrap_err(),
            PayloadError::NotJson
        );
    }
}
