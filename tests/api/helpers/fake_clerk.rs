//! A fake Clerk Backend API on loopback.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::patch;
use axum::{Json, Router};
use serde_json::Value;
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    pub body: Value,
}

#[derive(Default)]
struct FakeState {
    /// Statuses to answer with, in order; 200 once they run out.
    script: VecDeque<u16>,
    requests: Vec<Recorded>,
    /// Users returned by `GET /v1/users/{id}`.
    users: std::collections::HashMap<String, Value>,
}

#[derive(Clone)]
pub struct FakeClerk {
    pub url: String,
    state: Arc<Mutex<FakeState>>,
}

impl FakeClerk {
    pub const KEY: &'static str = "sk_test_fake_clerk_key";

    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(FakeState::default()));
        let app = Router::new()
            .route("/v1/users/{id}/metadata", patch(fake_patch_metadata))
            .route("/v1/users/{id}", axum::routing::get(fake_get_user))
            .with_state(state.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, state }
    }

    /// Answer the next calls with these statuses.
    pub fn script(&self, statuses: &[u16]) {
        self.state.lock().unwrap().script.extend(statuses);
    }

    /// Answer 200 from now on.
    pub fn clear_script(&self) {
        self.state.lock().unwrap().script.clear();
    }

    pub fn add_user(&self, user: Value) {
        let id = user["id"].as_str().unwrap().to_owned();
        self.state.lock().unwrap().users.insert(id, user);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }
}

fn record(
    state: &Mutex<FakeState>,
    method: &str,
    path: String,
    headers: &HeaderMap,
    body: Value,
) -> StatusCode {
    let mut s = state.lock().unwrap();
    s.requests.push(Recorded {
        method: method.to_owned(),
        path,
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body,
    });
    StatusCode::from_u16(s.script.pop_front().unwrap_or(200)).unwrap()
}

async fn fake_patch_metadata(
    State(state): State<Arc<Mutex<FakeState>>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let status = record(
        &state,
        "PATCH",
        format!("/v1/users/{id}/metadata"),
        &headers,
        body.clone(),
    );
    (
        status,
        Json(serde_json::json!({"id": id, "public_metadata": body["public_metadata"]})),
    )
}

async fn fake_get_user(
    State(state): State<Arc<Mutex<FakeState>>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> (StatusCode, Json<Value>) {
    let status = record(
        &state,
        "GET",
        format!("/v1/users/{id}"),
        &headers,
        Value::Null,
    );
    let user = state.lock().unwrap().users.get(&id).cloned();
    match user {
        Some(u) if status.is_success() => (status, Json(u)),
        Some(_) => (status, Json(serde_json::json!({"errors": []}))),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"errors": [{"code": "resource_not_found"}]})),
        ),
    }
}
