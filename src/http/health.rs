//! `/healthz` (the process answers) and `/readyz` (database reachable, migrations
//! current, the live schema whole: `schema_watch`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::AppState;

/// The process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "`{\"status\": \"ok\"}`")))]
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// The database is reachable, the migrations are current, and the schema is whole.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "Ready, with a per-component report"),
    (status = 503, description = "Not ready, with a per-component report"),
))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let database = state.store.ping().await;
    let migrations = match &database {
        Ok(()) => state
            .store
            .pending_migrations()
            .await
            .map_err(|e| e.to_string()),
        Err(_) => Err("not checked: database unreachable".to_owned()),
    };
    let db_report = match &database {
        Ok(()) => json!({"status": "ok", "backend": state.store.backend_name()}),
        Err(e) => {
            json!({"status": "error", "backend": state.store.backend_name(), "message": e.to_string()})
        }
    };
    let (migrations_ok, migrations_report) = match migrations {
        Ok(pending) if pending.is_empty() => (true, json!({"status": "ok"})),
        Ok(pending) => (false, json!({"status": "pending", "pending": pending})),
        Err(message) => (false, json!({"status": "error", "message": message})),
    };
    let drift = state.schema.drift();
    let schema_report = match &drift {
        None => json!({"status": "ok"}),
        Some(d) => json!({
            "status": "drift",
            "missing": d.missing,
            "lastWholeAt": d.last_whole_at,
            "prismaMigrations": d.prisma_migrations,
            "fix": "run `clerk-sync diagnose --fix` (or the SQL of each piece), or fix the app's migration; readiness returns within one check interval",
        }),
    };
    let ready = database.is_ok() && migrations_ok && drift.is_none();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "status": if ready { "ready" } else { "not_ready" },
            "database": db_report,
            "migrations": migrations_report,
            "schema": schema_report,
        })),
    )
}
