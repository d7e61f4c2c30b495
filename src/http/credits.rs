//! `/v1` credits API: thin handlers over `crate::credits`.

use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Deserialize;

use super::auth::Authenticated;
use super::extract::ValidJson;
use super::{ApiError, AppState, ErrorBody};
use crate::credits::{self, Cursor, LedgerEntry, Movement, MovementRequest, UserCredits};
use crate::domain::{Amount, CallerKey, ClerkUserId, CreditChange, GrantReason};
use crate::metrics::KindLabel;
use utoipa::ToSchema;

fn clerk_id(raw: &str) -> Result<ClerkUserId, ApiError> {
    ClerkUserId::parse(raw).map_err(|e| ApiError::invalid("clerkId", e))
}

async fn user(state: &AppState, raw_id: &str) -> Result<UserCredits, ApiError> {
    let id = clerk_id(raw_id)?;
    Ok(credits::resolve_user(&state.store, state.clerk.as_ref(), &state.signup, &id).await?)
}

/// The user and their credits.
#[utoipa::path(
    get, path = "/v1/users/{clerk_id}", tag = "credits",
    params(("clerk_id" = String, Path, description = "Clerk user id, e.g. user_29w83sxmDNGwOuEthce5gg56FcC")),
    security(("api_key" = [])),
    responses(
        (status = 200, body = UserCredits),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody),
    )
)]
pub async fn get_user(
    _: Authenticated,
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
) -> Result<Json<UserCredits>, ApiError> {
    Ok(Json(user(&state, &raw_id).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsumeRequest {
    /// Generations to spend.
    #[schema(minimum = 1, maximum = 1000000)]
    #[serde(deserialize_with = "super::extract::integer")]
    amount: i64,
    /// Your key for this request: the same key returns the first result.
    #[schema(min_length = 1, max_length = 200, pattern = "^[ -~]+$")]
    idempotency_key: String,
    /// Your reference, stored as the ledger row's `tracking_id` (default: the key).
    #[schema(min_length = 1, max_length = 200, pattern = "^[ -~]+$")]
    reference: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrantRequest {
    /// Generations to grant.
    #[schema(minimum = 1, maximum = 1000000)]
    #[serde(deserialize_with = "super::extract::integer")]
    amount: i64,
    kind: GrantReason,
    /// Your key for this request: the same key returns the first result.
    #[schema(min_length = 1, max_length = 200, pattern = "^[ -~]+$")]
    idempotency_key: String,
    /// Your reference, stored as the ledger row's `tracking_id` (default: the key).
    #[schema(min_length = 1, max_length = 200, pattern = "^[ -~]+$")]
    reference: Option<String>,
}

struct Parsed {
    amount: Amount,
    key: CallerKey,
    reference: Option<CallerKey>,
}

fn parse(amount: i64, key: &str, reference: Option<&str>) -> Result<Parsed, ApiError> {
    Ok(Parsed {
        amount: Amount::parse(amount).map_err(|e| ApiError::invalid("amount", e))?,
        key: CallerKey::parse(key).map_err(|e| ApiError::invalid("idempotencyKey", e))?,
        reference: reference
            .map(CallerKey::parse)
            .transpose()
            .map_err(|e| ApiError::invalid("reference", e))?,
    })
}

async fn movement(
    state: &AppState,
    raw_id: &str,
    change: CreditChange,
    p: Parsed,
) -> Result<Json<Movement>, ApiError> {
    let id = clerk_id(raw_id)?;
    state.writable()?;
    let request = MovementRequest {
        change,
        amount: p.amount,
        key: &p.key,
        reference: p.reference.as_ref(),
    };
    let m = credits::move_credits(
        &state.store,
        state.credits_queue.as_ref(),
        state.clerk.as_ref(),
        &state.signup,
        &id,
        &request,
    )
    .await?;
    if !m.replayed {
        let amount = u64::from(m.amount.unsigned_abs());
        match change {
            CreditChange::Consume => state.metrics.credits_consumed.inc_by(amount),
            CreditChange::Grant(kind) => state
                .metrics
                .credits_granted
                .get_or_create(&KindLabel {
                    kind: crate::store::TextEnum::as_str(kind),
                })
                .inc_by(amount),
        };
    }
    Ok(Json(m))
}

/// Spend generations: raises `usedGenerations`, never past `availableGenerations`.
#[utoipa::path(
    post, path = "/v1/users/{clerk_id}/credits/consume", tag = "credits",
    params(("clerk_id" = String, Path, description = "Clerk user id")),
    request_body = ConsumeRequest,
    security(("api_key" = [])),
    responses(
        (status = 200, body = Movement, description = "Spent, or the first result of this idempotency key"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 402, body = ErrorBody, description = "Not enough credits; `balance` holds the current balance"),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "Idempotency key reused for a different request"),
        (status = 415, body = ErrorBody, description = "The body is not `application/json`"),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn consume(
    _: Authenticated,
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
    ValidJson(req): ValidJson<ConsumeRequest>,
) -> Result<Json<Movement>, ApiError> {
    let parsed = parse(req.amount, &req.idempotency_key, req.reference.as_deref())?;
    movement(&state, &raw_id, CreditChange::Consume, parsed).await
}

/// Grant generations: raises `availableGenerations`.
#[utoipa::path(
    post, path = "/v1/users/{clerk_id}/credits/grant", tag = "credits",
    params(("clerk_id" = String, Path, description = "Clerk user id")),
    request_body = GrantRequest,
    security(("api_key" = [])),
    responses(
        (status = 200, body = Movement, description = "Granted, or the first result of this idempotency key"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn grant(
    _: Authenticated,
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
    ValidJson(req): ValidJson<GrantRequest>,
) -> Result<Json<Movement>, ApiError> {
    let parsed = parse(req.amount, &req.idempotency_key, req.reference.as_deref())?;
    movement(&state, &raw_id, CreditChange::Grant(req.kind), parsed).await
}

#[derive(Debug, Deserialize)]
pub struct LedgerQuery {
    limit: Option<String>,
    cursor: Option<String>,
}

#[derive(Debug, serde::Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LedgerPage {
    items: Vec<LedgerEntry>,
    next_cursor: Option<String>,
}

/// The user's ledger, newest first, keyset-paginated.
#[utoipa::path(
    get, path = "/v1/users/{clerk_id}/ledger", tag = "credits",
    params(
        ("clerk_id" = String, Path, description = "Clerk user id"),
        ("limit" = Option<u32>, Query, description = "1 to 200, default 50"),
        ("cursor" = Option<String>, Query, description = "`nextCursor` of the previous page"),
    ),
    security(("api_key" = [])),
    responses(
        (status = 200, body = LedgerPage),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
    )
)]
pub async fn ledger(
    _: Authenticated,
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
    Query(q): Query<LedgerQuery>,
) -> Result<Json<LedgerPage>, ApiError> {
    let limit = match q.limit.as_deref() {
        None => 50,
        Some(raw) => raw
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=200).contains(n))
            .ok_or_else(|| ApiError::invalid("limit", "must be an integer between 1 and 200"))?,
    };
    let cursor = q
        .cursor
        .as_deref()
        .map(|raw| {
            Cursor::parse(raw)
                .ok_or_else(|| ApiError::invalid("cursor", "is not a cursor this API returned"))
        })
        .transpose()?;
    let user = user(&state, &raw_id).await?;
    let (items, next) =
        credits::ledger_page(&state.store, &user.id, limit, cursor.as_ref()).await?;
    Ok(Json(LedgerPage {
        items,
        next_cursor: next.map(|c| c.encode()),
    }))
}
