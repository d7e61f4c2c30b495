//! Clerk Backend API client (reqwest + rustls).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use url::Url;

use crate::domain::Redacted;

#[derive(Clone)]
pub struct ClerkClient {
    http: reqwest::Client,
    base: Url,
    secret_key: Redacted<String>,
    /// Shared by every clone: the process's user lookups ([`ClerkClient::find_user`]).
    lookups: Arc<Lookups>,
}

/// How long Clerk's "no such user" is believed without asking again: a burst of calls
/// for an id Clerk does not have costs one GET.
pub const NOT_FOUND_TTL: Duration = Duration::from_secs(30);

/// At most this many ids are remembered as not found; past it the expired ones go, then
/// all of them.
const NOT_FOUND_LIMIT: usize = 10_000;

type SharedLookup = Arc<tokio::sync::OnceCell<Result<Option<serde_json::Value>, DeliveryError>>>;

#[derive(Default)]
struct Lookups {
    /// A GET under way per Clerk id; callers for the same id wait for its answer.
    in_flight: Mutex<HashMap<String, SharedLookup>>,
    /// Ids Clerk answered 404 for, until when.
    not_found: Mutex<HashMap<String, Instant>>,
}

impl std::fmt::Debug for ClerkClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClerkClient")
            .field("base", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

/// Why a call to Clerk did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DeliveryError {
    /// 429, 5xx, timeouts and connection failures: try again later.
    #[error("retryable: {reason}")]
    Retryable {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Any other 4xx: the same request will fail again.
    #[error("permanent: {0}")]
    Permanent(String),
    /// Clerk has no such user (its 404 with `resource_not_found`): deleted in Clerk, or
    /// never there. Not a 404 without Clerk's error body, which is a wrong URL.
    #[error("no such user in Clerk: {0}")]
    NotFound(String),
}

impl ClerkClient {
    pub fn new(base: Url, secret_key: Redacted<String>) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config())
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("clerk-sync/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            base,
            secret_key,
            lookups: Arc::default(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base.as_str().trim_end_matches('/'), path)
    }

    /// `PATCH /v1/users/{id}/metadata` with `{"public_metadata": {"userId": ...}}`.
    /// Clerk merges metadata, so repeating the call is harmless.
    pub async fn update_metadata(
        &self,
        clerk_id: &str,
        user_id: &str,
    ) -> Result<(), DeliveryError> {
        let response = self
            .http
            .patch(self.url(&format!("/v1/users/{clerk_id}/metadata")))
            .bearer_auth(&self.secret_key.0)
            .json(&serde_json::json!({"public_metadata": {"userId": user_id}}))
            .send()
            .await
            .map_err(unreachable)?;
        if !response.status().is_success() {
            return Err(self.failure(response).await);
        }
        Ok(())
    }
}

impl ClerkClient {
    /// `GET /v1/users/{id}`: the Clerk user object, or `None` when Clerk has no such user.
    pub async fn get_user(
        &self,
        clerk_id: &str,
    ) -> Result<Option<serde_json::Value>, DeliveryError> {
        let response = self
            .http
            .get(self.url(&format!("/v1/users/{clerk_id}")))
            .bearer_auth(&self.secret_key.0)
            .send()
            .await
            .map_err(unreachable)?;
        if !response.status().is_success() {
            return match self.failure(response).await {
                DeliveryError::NotFound(_) => Ok(None),
                other => Err(other),
            };
        }
        response.json().await.map(Some).map_err(|_| {
            DeliveryError::Permanent("Clerk API answered with a body that is not JSON".to_owned())
        })
    }
}

impl ClerkClient {
    /// [`ClerkClient::get_user`] for a person's request path (lazy provisioning):
    /// concurrent calls for one id share one GET and its answer, and a 404 is remembered
    /// for [`NOT_FOUND_TTL`].
    pub async fn find_user(
        &self,
        clerk_id: &str,
    ) -> Result<Option<serde_json::Value>, DeliveryError> {
        {
            let mut not_found = self.lookups.not_found.lock().expect("not poisoned");
            match not_found.get(clerk_id) {
                Some(until) if *until > Instant::now() => return Ok(None),
                Some(_) => {
                    not_found.remove(clerk_id);
                }
                None => {}
            }
        }
        let cell = self
            .lookups
            .in_flight
            .lock()
            .expect("not poisoned")
            .entry(clerk_id.to_owned())
            .or_default()
            .clone();
        let result = cell.get_or_init(|| self.get_user(clerk_id)).await.clone();
        // The first caller back removes the shared lookup; later callers ask anew.
        {
            let mut in_flight = self.lookups.in_flight.lock().expect("not poisoned");
            if in_flight
                .get(clerk_id)
                .is_some_and(|c| Arc::ptr_eq(c, &cell))
            {
                in_flight.remove(clerk_id);
            }
        }
        if let Ok(None) = result {
            let mut not_found = self.lookups.not_found.lock().expect("not poisoned");
            if not_found.len() >= NOT_FOUND_LIMIT {
                let now = Instant::now();
                not_found.retain(|_, until| *until > now);
                if not_found.len() >= NOT_FOUND_LIMIT {
                    not_found.clear();
                }
            }
            not_found.insert(clerk_id.to_owned(), Instant::now() + NOT_FOUND_TTL);
        }
        result
    }
}

/// No answer at all: a timeout or a connection failure, worth a retry.
impl ClerkClient {
    /// One page of Clerk's users, oldest first, created after `created_at_after` (ms),
    /// following the user `starting_after` (the last id of the previous page):
    /// `GET /v1/users?order_by=+created_at&created_at_after=…&starting_after=…&limit=…`.
    /// Clerk's cursor orders users sharing a creation millisecond too, so a scan never
    /// stalls on ties (imports set `created_at`); `offset` would skip users deleted
    /// mid-scan.
    pub async fn list_users(
        &self,
        limit: u32,
        created_at_after: Option<i64>,
        starting_after: Option<&str>,
    ) -> Result<Vec<serde_json::Value>, DeliveryError> {
        let mut url = Url::parse(&self.url("/v1/users")).expect("the base is a URL");
        url.query_pairs_mut()
            .append_pair("limit", &limit.to_string())
            .append_pair("order_by", "+created_at");
        if let Some(after) = created_at_after {
            url.query_pairs_mut()
                .append_pair("created_at_after", &after.to_string());
        }
        if let Some(id) = starting_after {
            url.query_pairs_mut().append_pair("starting_after", id);
        }
        let response = self
            .http
            .get(url)
            .bearer_auth(&self.secret_key.0)
            .send()
            .await
            .map_err(unreachable)?;
        if !response.status().is_success() {
            return Err(self.failure(response).await);
        }
        response.json().await.map_err(|_| {
            DeliveryError::Permanent(
                "Clerk API answered a user list that is not a JSON array".to_owned(),
            )
        })
    }
}

impl ClerkClient {
    /// The id of the Clerk instance the secret key belongs to: `GET /v1/instance`
    /// (`ins_…`). `None` when the API has no such endpoint (404).
    pub async fn instance_id(&self) -> Result<Option<String>, DeliveryError> {
        let response = self
            .http
            .get(self.url("/v1/instance"))
            .bearer_auth(&self.secret_key.0)
            .send()
            .await
            .map_err(unreachable)?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !response.status().is_success() {
            return Err(self.failure(response).await);
        }
        let body: serde_json::Value = response.json().await.map_err(|_| {
            DeliveryError::Permanent("Clerk API answered an instance that is not JSON".to_owned())
        })?;
        Ok(body["id"].as_str().map(str::to_owned))
    }

    /// How many users Clerk has: `GET /v1/users/count` (for a scan's ETA).
    pub async fn count_users(&self) -> Result<u64, DeliveryError> {
        let response = self
            .http
            .get(self.url("/v1/users/count"))
            .bearer_auth(&self.secret_key.0)
            .send()
            .await
            .map_err(unreachable)?;
        if !response.status().is_success() {
            return Err(self.failure(response).await);
        }
        let body: serde_json::Value = response.json().await.map_err(|_| {
            DeliveryError::Permanent("Clerk API answered a count that is not JSON".to_owned())
        })?;
        body["total_count"].as_u64().ok_or_else(|| {
            DeliveryError::Permanent("Clerk API answered a count without total_count".to_owned())
        })
    }
}

/// TLS for the Clerk API: rustls with the Mozilla roots of `webpki-roots` built into
/// the binary, the same roots sqlx uses for the database. reqwest's default verifier
/// reads the operating system's CA store, which the runtime image (debian:bookworm-slim,
/// no ca-certificates) does not have: `serve` with CLERK_SECRET_KEY could not start there.
/// Built in, the roots are the same on every host and in the image, and move with a
/// release (the crate is updated with the others).
fn tls_config() -> rustls::ClientConfig {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// Clerk's error body: `{"errors": [{"message", "long_message", "code"}], "clerk_trace_id"}`
/// (bapi 2026-05-12, `ClerkErrors`).
#[derive(Debug, Default, serde::Deserialize)]
struct ClerkErrors {
    #[serde(default)]
    errors: Vec<ClerkError>,
    clerk_trace_id: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
struct ClerkError {
    code: Option<String>,
    message: Option<String>,
    long_message: Option<String>,
}

/// Clerk's words are kept to this many characters in a job's `lastError` and the logs.
const DETAIL_LIMIT: usize = 300;

/// What Clerk said of a failure, for a person: ` resource_not_found: User not found
/// (clerk_trace_id 1a2b…)`; empty when the body is not Clerk's.
fn clerk_detail(errors: &ClerkErrors) -> String {
    let mut detail = String::new();
    if let Some(e) = errors.errors.first() {
        if let Some(code) = &e.code {
            detail.push(' ');
            detail.push_str(code);
        }
        if let Some(text) = e.long_message.as_ref().or(e.message.as_ref()) {
            detail.push_str(": ");
            detail.extend(text.chars().take(DETAIL_LIMIT));
        }
    }
    if let Some(trace) = &errors.clerk_trace_id {
        detail.push_str(&format!(
            " (clerk_trace_id {})",
            trace.chars().take(64).collect::<String>()
        ));
    }
    detail
}

impl ClerkClient {
    /// A non-2xx answer as an error, with Clerk's code, message and trace id. A 404 is
    /// "no such user" only when Clerk's body says `resource_not_found`; any other 404 is
    /// a URL that is not Clerk's Backend API.
    async fn failure(&self, response: reqwest::Response) -> DeliveryError {
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.unwrap_or_default();
        let errors: Option<ClerkErrors> = serde_json::from_slice(&body).ok();
        let detail = errors.as_ref().map(clerk_detail).unwrap_or_default();
        match classify(status, &headers) {
            Err(DeliveryError::Retryable {
                reason,
                retry_after,
            }) => DeliveryError::Retryable {
                reason: format!("{reason}{detail}"),
                retry_after,
            },
            _ if status == StatusCode::NOT_FOUND => {
                let clerks = errors.as_ref().is_some_and(|e| {
                    e.errors
                        .iter()
                        .any(|e| e.code.as_deref() == Some("resource_not_found"))
                });
                if clerks {
                    DeliveryError::NotFound(format!("Clerk API answered 404{detail}"))
                } else {
                    DeliveryError::Permanent(format!(
                        "Clerk API answered 404 without Clerk's error body{detail}: is CLERK_API_URL ({}) Clerk's Backend API?",
                        self.base
                    ))
                }
            }
            Err(DeliveryError::Permanent(reason)) => {
                DeliveryError::Permanent(format!("{reason}{detail}"))
            }
            _ => {
                DeliveryError::Permanent(format!("Clerk API answered {}{detail}", status.as_u16()))
            }
        }
    }
}

fn unreachable(e: reqwest::Error) -> DeliveryError {
    DeliveryError::Retryable {
        reason: if e.is_timeout() {
            "request timed out".to_owned()
        } else {
            "could not reach the Clerk API".to_owned()
        },
        retry_after: None,
    }
}

fn classify(status: StatusCode, headers: &reqwest::header::HeaderMap) -> Result<(), DeliveryError> {
    if status.is_success() {
        return Ok(());
    }
    let reason = format!("Clerk API answered {}", status.as_u16());
    if status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::UNAUTHORIZED
    {
        // 401 too: a rotated key fixed by the operator makes the job deliverable again.
        let retry_after = headers
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        Err(DeliveryError::Retryable {
            reason,
            retry_after,
        })
    } else {
        Err(DeliveryError::Permanent(reason))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};

    #[test]
    fn classifies_statuses() {
        let none = HeaderMap::new();
        assert!(classify(StatusCode::OK, &none).is_ok());
        assert!(matches!(
            classify(StatusCode::INTERNAL_SERVER_ERROR, &none),
            Err(DeliveryError::Retryable { .. })
        ));
        assert!(matches!(
            classify(StatusCode::NOT_FOUND, &none),
            Err(DeliveryError::Permanent(_))
        ));
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("30"));
        match classify(StatusCode::TOO_MANY_REQUESTS, &h) {
            Err(DeliveryError::Retryable { retry_after, .. }) => {
                assert_eq!(retry_after, Some(Duration::from_secs(30)))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_clerk_clients_roots_are_built_in() {
        let config = tls_config();
        // The public roots api.clerk.com's chains end in (Let's Encrypt's ISRG and
        // Google Trust Services) are there, from the binary, whatever the host has.
        let names: Vec<String> = webpki_roots::TLS_SERVER_ROOTS
            .iter()
            .map(|r| String::from_utf8_lossy(r.subject.as_ref()).into_owned())
            .collect();
        for root in ["ISRG Root X1", "GTS Root R1"] {
            assert!(names.iter().any(|n| n.contains(root)), "{root} missing");
        }
        assert!(names.len() > 100, "{}", names.len());
        assert!(config.alpn_protocols.is_empty());
        ClerkClient::new(
            Url::parse("https://api.clerk.com").unwrap(),
            Redacted("sk_test_x".to_owned()),
        )
        .expect("builds without reading the system's CA store");
    }

    #[test]
    fn clerks_error_body_is_kept_short() {
        let errors: ClerkErrors = serde_json::from_str(
            r#"{"errors":[{"message":"not found","long_message":"User not found","code":"resource_not_found"}],"clerk_trace_id":"abc123"}"#,
        )
        .unwrap();
        assert_eq!(
            clerk_detail(&errors),
            " resource_not_found: User not found (clerk_trace_id abc123)"
        );
        let long: ClerkErrors = serde_json::from_value(serde_json::json!({
            "errors": [{"code": "x", "message": "y".repeat(1000)}]
        }))
        .unwrap();
        assert_eq!(clerk_detail(&long).len(), " x: ".len() + DETAIL_LIMIT);
        assert_eq!(clerk_detail(&ClerkErrors::default()), "");
    }
}
