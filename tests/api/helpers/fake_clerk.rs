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
    /// When the request arrived.
    pub at: std::time::Instant,
    /// The status it was answered with.
    pub status: u16,
}

#[derive(Default)]
struct FakeState {
    /// Statuses to answer with, in order; 200 once they run out.
    script: VecDeque<u16>,
    requests: Vec<Recorded>,
    /// Users returned by `GET /v1/users/{id}`.
    users: std::collections::HashMap<String, Value>,
    /// `public_metadata` written by successful PATCHes, by user: what Clerk now holds
    /// (`GET` shows it, for a user added or not).
    metadata: std::collections::HashMap<String, Value>,
    /// Every answer is delayed this long (Clerk's latency).
    delay: std::time::Duration,
    /// The next this many calls wait this long before answering.
    hang: (usize, std::time::Duration),
    /// Calls answered after hanging.
    hung_answered: usize,
    /// `GET /v1/users` calls so far, and changes to make once that many have been made.
    list_calls: usize,
    list_mutations: Vec<(usize, ListMutation)>,
    /// Serve the list as a Clerk without `starting_after` would: the parameter ignored.
    ignore_starting_after: bool,
    /// Users deleted in Clerk: their metadata PATCH answers Clerk's 404.
    deleted: std::collections::HashSet<String>,
    /// The next calls answer these statuses with Clerk's error body and this code.
    clerk_errors: VecDeque<(u16, String)>,
    /// `GET /v1/instance`'s id; `None`: the fixtures' instance.
    instance_id: Option<String>,
}

/// The instance of the Clerk fixtures' events (`instance_id`).
pub const FIXTURE_INSTANCE: &str = "ins_2g7np7Hrk0SN6kj5EDMLDaKNL0S";

/// Clerk's error body, as its Backend API writes it (bapi 2026-05-12 `ClerkErrors`).
pub fn clerk_error_body(code: &str, message: &str) -> Value {
    serde_json::json!({
        "errors": [{"message": message, "long_message": message, "code": code}],
        "clerk_trace_id": "fake0trace0id",
    })
}

/// A change to Clerk's users while a scan pages through them.
#[derive(Debug, Clone)]
pub enum ListMutation {
    Add(Value),
    Remove(String),
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
            .route("/v1/users", axum::routing::get(fake_list_users))
            .route("/v1/users/count", axum::routing::get(fake_count_users))
            .route("/v1/instance", axum::routing::get(fake_instance))
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

    /// Apply `change` right after the `after_calls`-th `GET /v1/users`.
    pub fn on_list_call(&self, after_calls: usize, change: ListMutation) {
        self.state
            .lock()
            .unwrap()
            .list_mutations
            .push((after_calls, change));
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    /// The metadata PATCHes answered 2xx for this Clerk user: the updates Clerk applied.
    pub fn applied_patches(&self, clerk_id: &str) -> usize {
        let path = format!("/v1/users/{clerk_id}/metadata");
        self.requests()
            .iter()
            .filter(|r| r.method == "PATCH" && r.path == path && (200..300).contains(&r.status))
            .count()
    }

    /// The service's options for talking to this fake (its URL and key).
    pub fn app_options(&self) -> super::AppOptions {
        super::AppOptions {
            clerk_api_url: Some(self.url.clone()),
            clerk_secret_key: Some(Self::KEY.to_owned()),
            ..super::AppOptions::default()
        }
    }

    /// The key now belongs to another instance (`GET /v1/instance`).
    pub fn set_instance(&self, id: &str) {
        self.state.lock().unwrap().instance_id = Some(id.to_owned());
    }

    /// Clerk deleted this user: a metadata update for it answers Clerk's 404.
    pub fn delete_user(&self, id: &str) {
        let mut s = self.state.lock().unwrap();
        s.users.remove(id);
        s.deleted.insert(id.to_owned());
    }

    /// Answer the next call with `status` and Clerk's error body with `code`.
    pub fn fail_next_with(&self, status: u16, code: &str) {
        self.state
            .lock()
            .unwrap()
            .clerk_errors
            .push_back((status, code.to_owned()));
    }

    /// Ignore `starting_after`, as an older API would: every page starts over.
    pub fn ignore_starting_after(&self) {
        self.state.lock().unwrap().ignore_starting_after = true;
    }

    /// Delay every answer (Clerk's latency).
    pub fn delay_every_call(&self, delay: std::time::Duration) {
        self.state.lock().unwrap().delay = delay;
    }

    /// The next `calls` calls wait `hang` before answering.
    pub fn hang_next(&self, calls: usize, hang: std::time::Duration) {
        self.state.lock().unwrap().hang = (calls, hang);
    }

    /// How many hung calls have been answered.
    pub fn hung_answered(&self) -> usize {
        self.state.lock().unwrap().hung_answered
    }
}

/// How long this call waits before answering, and whether it is a hung one.
fn wait_for(state: &Mutex<FakeState>) -> (std::time::Duration, bool) {
    let mut s = state.lock().unwrap();
    if s.hang.0 > 0 {
        s.hang.0 -= 1;
        (s.hang.1, true)
    } else {
        (s.delay, false)
    }
}

async fn latency(state: &Mutex<FakeState>) {
    let (wait, hung) = wait_for(state);
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    if hung {
        state.lock().unwrap().hung_answered += 1;
    }
}

/// A 429 says when to come back, as Clerk's does.
fn answer(status: StatusCode, body: Value) -> (StatusCode, HeaderMap, Json<Value>) {
    let mut headers = HeaderMap::new();
    if status == StatusCode::TOO_MANY_REQUESTS {
        headers.insert("retry-after", "1".parse().unwrap());
    }
    (status, headers, Json(body))
}

fn record(
    state: &Mutex<FakeState>,
    method: &str,
    path: String,
    headers: &HeaderMap,
    body: Value,
) -> StatusCode {
    let scripted = state.lock().unwrap().script.pop_front().unwrap_or(200);
    let status = StatusCode::from_u16(scripted).unwrap();
    record_answered(state, method, path, headers, body, status);
    status
}

/// Record a call answered with `status`, whatever the script says.
fn record_answered(
    state: &Mutex<FakeState>,
    method: &str,
    path: String,
    headers: &HeaderMap,
    body: Value,
    status: StatusCode,
) {
    state.lock().unwrap().requests.push(Recorded {
        method: method.to_owned(),
        path,
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body,
        at: std::time::Instant::now(),
        status: status.as_u16(),
    });
}

async fn fake_patch_metadata(
    State(state): State<Arc<Mutex<FakeState>>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, HeaderMap, Json<Value>) {
    latency(&state).await;
    let (clerk_error, gone) = {
        let mut s = state.lock().unwrap();
        (s.clerk_errors.pop_front(), s.deleted.contains(&id))
    };
    if let Some((status, code)) =
        clerk_error.or(gone.then(|| (404, "resource_not_found".to_owned())))
    {
        let status = StatusCode::from_u16(status).unwrap();
        let path = format!("/v1/users/{id}/metadata");
        record_answered(&state, "PATCH", path, &headers, body, status);
        return answer(status, clerk_error_body(&code, "fake Clerk error"));
    }
    let status = record(
        &state,
        "PATCH",
        format!("/v1/users/{id}/metadata"),
        &headers,
        body.clone(),
    );
    if status.is_success() {
        let mut s = state.lock().unwrap();
        let held = s
            .metadata
            .entry(id.clone())
            .or_insert_with(|| serde_json::json!({}));
        if let (Some(held), Some(new)) = (held.as_object_mut(), body["public_metadata"].as_object())
        {
            held.extend(new.clone());
        }
    }
    answer(
        status,
        serde_json::json!({"id": id, "public_metadata": body["public_metadata"]}),
    )
}

async fn fake_get_user(
    State(state): State<Arc<Mutex<FakeState>>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> (StatusCode, HeaderMap, Json<Value>) {
    latency(&state).await;
    let status = record(
        &state,
        "GET",
        format!("/v1/users/{id}"),
        &headers,
        Value::Null,
    );
    let user = {
        let s = state.lock().unwrap();
        let metadata = s.metadata.get(&id).cloned();
        match (s.users.get(&id).cloned(), metadata) {
            (Some(mut user), Some(m)) => {
                user["public_metadata"] = m;
                Some(user)
            }
            (Some(user), None) => Some(user),
            // A user only ever PATCHed exists in Clerk all the same.
            (None, Some(m)) => Some(serde_json::json!({"id": id, "public_metadata": m})),
            (None, None) => None,
        }
    };
    match user {
        // A scripted failure (a rate limit, an outage) comes before the lookup, as
        // Clerk's does.
        _ if !status.is_success() => answer(status, serde_json::json!({"errors": []})),
        Some(u) => answer(status, u),
        None => answer(
            StatusCode::NOT_FOUND,
            serde_json::json!({"errors": [{"code": "resource_not_found"}]}),
        ),
    }
}

#[derive(serde::Deserialize)]
struct ListQuery {
    limit: Option<usize>,
    order_by: Option<String>,
    created_at_after: Option<i64>,
    starting_after: Option<String>,
    offset: Option<usize>,
}

/// `GET /v1/users`: Clerk's shape (a JSON array of users), oldest first by `created_at`,
/// after `created_at_after`, at most `limit` (default 10, Clerk's).
async fn fake_list_users(
    State(state): State<Arc<Mutex<FakeState>>>,
    axum::extract::Query(q): axum::extract::Query<ListQuery>,
    headers: HeaderMap,
) -> (StatusCode, HeaderMap, Json<Value>) {
    latency(&state).await;
    let status = record(&state, "GET", "/v1/users".to_owned(), &headers, Value::Null);
    if !status.is_success() {
        return answer(status, serde_json::json!({"errors": []}));
    }
    assert_eq!(
        q.order_by.as_deref(),
        Some("+created_at"),
        "the scan orders by creation"
    );
    let mut s = state.lock().unwrap();
    let mut users: Vec<Value> = s
        .users
        .values()
        .filter(|u| u["created_at"].as_i64().unwrap_or(0) > q.created_at_after.unwrap_or(i64::MIN))
        .cloned()
        .map(|mut u| {
            if let Some(m) = s.metadata.get(u["id"].as_str().unwrap_or("")) {
                u["public_metadata"] = m.clone();
            }
            u
        })
        .collect();
    users.sort_by_key(|u| {
        (
            u["created_at"].as_i64().unwrap_or(0),
            u["id"].as_str().unwrap_or("").to_owned(),
        )
    });
    // Clerk's cursor: the users after the one named, in its own order (which breaks ties
    // of `created_at` in no order a client may rely on; here, by id). Only with a
    // `created_at` ordering and no offset, else 422.
    if let Some(after) = q
        .starting_after
        .as_ref()
        .filter(|_| !s.ignore_starting_after)
    {
        if q.offset.unwrap_or(0) > 0 {
            return answer(
                StatusCode::UNPROCESSABLE_ENTITY,
                serde_json::json!({"errors": [{"code": "form_param_value_invalid", "message": "starting_after cannot be combined with offset"}]}),
            );
        }
        match users
            .iter()
            .position(|u| u["id"].as_str() == Some(after.as_str()))
        {
            Some(at) => {
                users.drain(..=at);
            }
            None => {
                return answer(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    serde_json::json!({"errors": [{"code": "form_param_value_invalid", "message": "starting_after is not a user of this list"}]}),
                )
            }
        }
    }
    users.truncate(q.limit.unwrap_or(10).min(500));
    s.list_calls += 1;
    let calls = s.list_calls;
    let due: Vec<ListMutation> = s
        .list_mutations
        .iter()
        .filter(|(after, _)| *after == calls)
        .map(|(_, m)| m.clone())
        .collect();
    for change in due {
        match change {
            ListMutation::Add(user) => {
                let id = user["id"].as_str().unwrap().to_owned();
                s.users.insert(id, user);
            }
            ListMutation::Remove(id) => {
                s.users.remove(&id);
            }
        }
    }
    answer(status, Value::Array(users))
}

/// `GET /v1/users/count`, in Clerk's shape.
async fn fake_count_users(
    State(state): State<Arc<Mutex<FakeState>>>,
    headers: HeaderMap,
) -> (StatusCode, HeaderMap, Json<Value>) {
    let status = record(
        &state,
        "GET",
        "/v1/users/count".to_owned(),
        &headers,
        Value::Null,
    );
    let n = state.lock().unwrap().users.len();
    answer(
        status,
        serde_json::json!({"object": "total_count", "total_count": n}),
    )
}

/// `GET /v1/instance`: the key's instance, in Clerk's `Instance` shape (bapi 2026-05-12).
/// Recorded, but it takes no scripted status: those are for the calls a test is about.
async fn fake_instance(
    State(state): State<Arc<Mutex<FakeState>>>,
    headers: HeaderMap,
) -> (StatusCode, HeaderMap, Json<Value>) {
    let path = "/v1/instance".to_owned();
    record_answered(&state, "GET", path, &headers, Value::Null, StatusCode::OK);
    let id = state.lock().unwrap().instance_id.clone();
    let id = id.unwrap_or_else(|| FIXTURE_INSTANCE.to_owned());
    answer(
        StatusCode::OK,
        serde_json::json!({"object": "instance", "id": id, "environment_type": "development",
                           "allowed_origins": null, "workspace_id": null}),
    )
}
