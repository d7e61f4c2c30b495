//! `ValidJson<T>`: a JSON body whose errors name the field (never echo the value).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap};
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
        if !is_json(req.headers()) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let (parts, body) = req.into_parts();
        let bytes = read_body(&parts.headers, body, MAX_JSON_BYTES).await?;
        parse(&bytes).map(ValidJson)
    }
}

/// The body, at most `limit` bytes: refused at once when its declared length is larger
/// (413), and when it does not arrive within `BODY_READ_TIMEOUT` (408).
pub(super) async fn read_body(
    headers: &HeaderMap,
    body: axum::body::Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let declared_too_large = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|n| n > limit as u64);
    if declared_too_large {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&e);
        while let Some(c) = cause {
            if c.is::<http_body_util::LengthLimitError>() {
                return ApiError::PayloadTooLarge(limit);
            }
            if c.is::<tower_http::timeout::TimeoutError>() {
                return ApiError::BodyTimeout;
            }
            cause = c.source();
        }
        ApiError::BodyUnreadable
    })
}

/// `Content-Type: application/json`, or another JSON type (`application/*+json`), with
/// any parameters (`; charset=utf-8`).
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (subtype.eq_ignore_ascii_case("json") || subtype.to_ascii_lowercase().ends_with("+json"))
}

fn parse<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        // Without serde_json's ` at line 1 column 47`: the field is named instead.
        let inner = e.inner().to_string();
        let inner = inner
            .split(" at line ")
            .next()
            .unwrap_or_default()
            .to_owned();
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
        // `unknown variant `x`, expected one of a, b`: the accepted values, not the value.
        let problem = match inner.split_once("expected one of ") {
            Some((_, accepted)) if inner.starts_with("unknown variant") => {
                format!("must be one of: {}", accepted.replace('`', ""))
            }
            _ => "has the wrong type or value".to_owned(),
        };
        ApiError::invalid(if path == "." { "body".to_owned() } else { path }, problem)
    })
}

/// A JSON integer, also when written with a zero fraction (`27.0`): JSON Schema's
/// `integer`, which the OpenAPI document declares. `27.5` and text are refused.
pub fn integer<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    use serde::de::Error;
    let n = <serde_json::Number as serde::Deserialize>::deserialize(d)?;
    if let Some(i) = n.as_i64() {
        return Ok(i);
    }
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() <= 9.0e15 => Ok(f as i64),
        _ => Err(D::Error::custom("expected an integer")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_with_a_fraction_are_refused_however_close_to_whole() {
        let parse = |text: &str| {
            let mut de = serde_json::Deserializer::from_str(text);
            integer(&mut de).ok()
        };
        assert_eq!(parse("27"), Some(27));
        assert_eq!(parse("27.0"), Some(27));
        assert_eq!(parse("1e3"), Some(1000));
        // serde_json's default float parser rounded this to 1.0 (schemathesis found it:
        // a grant of 0.9999999999999999 granted 1); `float_roundtrip` parses it exactly.
        assert_eq!(parse("0.9999999999999999"), None);
        assert_eq!(parse("27.5"), None);
        assert_eq!(parse("\"27\""), None);
    }

    #[test]
    fn only_json_content_types_are_json() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, v.parse().unwrap());
            is_json(&h)
        };
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/merge-patch+json",
        ] {
            assert!(with(ok), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/jsonx",
            "json",
            "",
        ] {
            assert!(!with(bad), "{bad}");
        }
        assert!(!is_json(&HeaderMap::new()));
    }
}
