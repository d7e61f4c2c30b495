//! `ValidJson<T>`: a JSON body whose errors name the field (never echo the value).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use super::ApiError;

/// Credits requests are tiny.
const MAX_JSON_BYTES: usize = 64 * 1024;

pub struct ValidJson<T>(pub T);

impl<S, T> FromRequest<S> for ValidJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::to_bytes(req.into_body(), MAX_JSON_BYTES)
            .await
            .map_err(|_| ApiError::PayloadTooLarge(MAX_JSON_BYTES))?;
        parse(&bytes).map(ValidJson)
    }
}

fn parse<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let inner = e.inner().to_string();
        let path = e.path().to_string();
        // serde names missing and unknown fields in its message (a field name, not a value).
        let named = |prefix: &str| {
            inner
                .strip_prefix(prefix)
                .and_then(|rest| rest.split('`').nth(1))
                .map(str::to_owned)
        };
        if let Some(field) = named("missing field") {
            return ApiError::invalid(field, "is required");
        }
        if let Some(field) = named("unknown field") {
            return ApiError::invalid(field, "is not a known field");
        }
        if e.inner().is_syntax() || e.inner().is_eof() {
            return ApiError::invalid("body", "is not valid JSON");
        }
        let problem = if inner.starts_with("unknown variant") {
            "is not one of the accepted values"
        } else {
            "has the wrong type or value"
        };
        ApiError::invalid(if path == "." { "body".to_owned() } else { path }, problem)
    })
}
