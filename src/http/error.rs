//! `ApiError`: the only `IntoResponse` error in the crate. Every error body is
//! `{"error": "<machine code>", "message": "<for a human>"}`; 5xx causes are logged once
//! here and never sent to the client.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::credits::{CreditsError, Refusal};
use crate::store::{ConstraintViolation, StoreError};
use crate::webhooks::VerifyError;

use super::ErrorBody;

#[derive(thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadSignatureHeaders(VerifyError),
    #[error("{0}")]
    InvalidSignature(VerifyError),
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("could not read the request body")]
    BodyUnreadable,
    #[error("the request body did not arrive within {} s", super::BODY_READ_TIMEOUT.as_secs())]
    BodyTimeout,
    #[error("no such route")]
    NotFound,
    #[error("the body must be JSON: send `Content-Type: application/json`")]
    UnsupportedMediaType,
    #[error("a valid `Authorization: Bearer <key>` header is required")]
    Unauthorized,
    #[error("`{field}` {problem}")]
    InvalidRequest { field: String, problem: String },
    /// A refusal of the credits API (its store errors map like any other).
    #[error(transparent)]
    Credits(Refusal),
    #[error("the database is unavailable; retry later")]
    Unavailable(#[source] StoreError),
    /// The live schema lacks what the write needs (`schema_watch`); names the pieces.
    #[error("the database schema lacks what this write needs; retry once it is restored (see /readyz): {0}")]
    SchemaDrift(String),
    /// The schema refused a write: named (table, column or constraint, hint), never the
    /// SQL or the values.
    #[error("{0}")]
    Constraint(ConstraintViolation),
    #[error("internal error")]
    Internal(#[source] StoreError),
}

impl std::fmt::Debug for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        error_chain_fmt(self, f)
    }
}

/// `Display` of the error and then of each `source()`, one per line.
pub fn error_chain_fmt(
    e: &impl std::error::Error,
    f: &mut std::fmt::Formatter<'_>,
) -> std::fmt::Result {
    writeln!(f, "{e}")?;
    let mut current = e.source();
    while let Some(cause) = current {
        writeln!(f, "Caused by:\n\t{cause}")?;
        current = cause.source();
    }
    Ok(())
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Schema(cause) => {
                // The schema watch logs the episode once; each request only at debug.
                tracing::debug!(error.message = %cause, "statement failed for want of a piece of the schema");
                Self::SchemaDrift(
                    "a statement named a table, column or index the database lacks".into(),
                )
            }
            e if e.is_retryable() => Self::Unavailable(e),
            StoreError::Constraint(v) => Self::Constraint(v),
            e => Self::Internal(e),
        }
    }
}

impl From<CreditsError> for ApiError {
    fn from(e: CreditsError) -> Self {
        match e {
            CreditsError::Refused(refusal) => Self::Credits(refusal),
            CreditsError::Store(e) => e.into(),
        }
    }
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, problem: impl ToString) -> Self {
        Self::InvalidRequest {
            field: field.into(),
            problem: problem.to_string(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadSignatureHeaders(_) | Self::BodyUnreadable => StatusCode::BAD_REQUEST,
            Self::InvalidSignature(_) => StatusCode::UNAUTHORIZED,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::NotFound | Self::Credits(Refusal::UnknownUser) => StatusCode::NOT_FOUND,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Credits(Refusal::InsufficientCredits { .. }) => StatusCode::PAYMENT_REQUIRED,
            Self::Credits(Refusal::IdempotencyConflict) => StatusCode::CONFLICT,
            Self::Credits(Refusal::LimitExceeded | Refusal::Unprovisionable(_)) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Self::Credits(Refusal::Clerk(_)) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unavailable(_) | Self::SchemaDrift(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) | Self::Constraint(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::BadSignatureHeaders(VerifyError::MissingHeader(_)) => "missing_svix_headers",
            Self::BadSignatureHeaders(_) => "malformed_svix_headers",
            Self::InvalidSignature(VerifyError::TimestampTooOld | VerifyError::TimestampTooNew) => {
                "timestamp_out_of_tolerance"
            }
            Self::InvalidSignature(_) => "invalid_signature",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::BodyTimeout => "request_timeout",
            Self::BodyUnreadable => "body_unreadable",
            Self::NotFound => "not_found",
            Self::Unauthorized => "unauthorized",
            Self::InvalidRequest { .. } => "invalid_request",
            Self::Credits(Refusal::UnknownUser) => "user_not_found",
            Self::Credits(Refusal::InsufficientCredits { .. }) => "insufficient_credits",
            Self::Credits(Refusal::IdempotencyConflict) => "idempotency_conflict",
            Self::Credits(Refusal::LimitExceeded) => "limit_exceeded",
            Self::Credits(Refusal::Clerk(_)) => "clerk_unavailable",
            Self::Credits(Refusal::Unprovisionable(_)) => "unprovisionable_user",
            Self::Unavailable(_) => "database_unavailable",
            Self::SchemaDrift(_) => "schema_drift",
            Self::Constraint(_) => "constraint_violation",
            Self::Internal(_) => "internal_error",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let Self::SchemaDrift(_) = self {
            // Logged once per episode by the schema watch, not per request.
            tracing::debug!(error.code = self.code(), error.message = %self, "request refused");
        } else if status.is_server_error() {
            tracing::error!(error.cause_chain = ?self, error.message = %self, "request failed");
        } else {
            tracing::info!(error.code = self.code(), error.message = %self, "request refused");
        }
        let body = ErrorBody {
            error: self.code().to_owned(),
            message: self.to_string(),
            balance: match &self {
                Self::Credits(Refusal::InsufficientCredits { balance }) => Some(*balance),
                _ => None,
            },
        };
        let mut response = (status, Json(body)).into_response();
        // Clerk's own Retry-After (its rate limit), passed on to whoever must wait.
        if let Self::Credits(Refusal::Clerk(crate::outbox::DeliveryError::Retryable {
            retry_after: Some(wait),
            ..
        })) = &self
        {
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(seconds.max(1)),
            );
        }
        if let Self::Unauthorized = self {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl From<VerifyError> for ApiError {
    fn from(e: VerifyError) -> Self {
        if e.is_header_problem() {
            Self::BadSignatureHeaders(e)
        } else {
            Self::InvalidSignature(e)
        }
    }
}
