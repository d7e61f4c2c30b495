//! The console at `/admin`: server-rendered pages over `crate::admin`, behind
//! `CLERK_SYNC_ADMIN_KEYS`. A login sets a signed session cookie (HttpOnly,
//! SameSite=Strict, Path=/admin, Secure when the request came over HTTPS); every form
//! carries the session's CSRF token and a POST without it is refused with 403. No script,
//! no build step: HTML and one inline SVG chart.

mod html;
mod pages;
pub mod session;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;

pub use session::ConsoleKeys;

use super::{ApiError, AppState};
use session::{Session, COOKIE};

/// Renders the `diagnose` report for the Health page. The service does not depend on
/// the commands: the binary plugs `clerk-sync diagnose` in (`Application::with_diagnose`).
pub type DiagnoseReport = std::sync::Arc<
    dyn Fn(
            crate::store::Store,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send>>
        + Send
        + Sync,
>;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin", get(home))
        .route("/admin/login", get(login_page).post(login))
        .route("/admin/logout", post(logout))
        .route("/admin/events", get(pages::events))
        .route("/admin/events/{svix_id}", get(pages::event))
        .route("/admin/events/{svix_id}/replay", post(pages::replay))
        .route("/admin/outbox", get(pages::outbox))
        .route("/admin/outbox/{id}/retry", post(pages::retry))
        .route("/admin/users", get(pages::users))
        .route("/admin/health", get(pages::health))
}

/// A page's failure, as a page.
pub enum PageError {
    /// The console is off (no `CLERK_SYNC_ADMIN_KEYS`): 404, as for any unknown path.
    Off,
    /// A POST without this session's CSRF token.
    Forged,
    Api(ApiError),
}

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}

impl From<crate::store::StoreError> for PageError {
    fn from(e: crate::store::StoreError) -> Self {
        Self::Api(e.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            Self::Off => return ApiError::NotFound.into_response(),
            Self::Forged => (
                StatusCode::FORBIDDEN,
                "This form is not from this session (no valid CSRF token): reload the page and \
                 try again."
                    .to_owned(),
            ),
            Self::Api(e) => {
                let status = e.status();
                if status.is_server_error() {
                    tracing::error!(error.cause_chain = ?e, error.message = %e, "console page failed");
                }
                (status, e.to_string())
            }
        };
        let body = format!(
            r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{status}</title></head><body><h1>{status}</h1><p>{}</p><p><a href="/admin/events">Back to the console</a></p></body></html>"#,
            html::esc(&message)
        );
        with_headers((status, Html(body)).into_response())
    }
}

/// Every console answer: not cached, not framed, no script, nothing loaded from
/// elsewhere.
fn with_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// A page's answer: HTML with the console's headers.
pub fn html(body: String) -> Response {
    with_headers(Html(body).into_response())
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Behind a TLS-terminating proxy, the request came over HTTPS.
fn over_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

/// A logged-in operator: the request carried a valid session cookie.
pub struct Operator {
    keys: ConsoleKeys,
    session: Session,
}

impl Operator {
    /// The token every form of this session carries.
    pub fn csrf(&self) -> String {
        self.keys.csrf(&self.session)
    }

    /// Refuse a form that does not carry this session's token.
    pub fn check(&self, form: &CsrfForm) -> Result<(), PageError> {
        if self.keys.csrf_matches(&self.session, &form.csrf) {
            Ok(())
        } else {
            tracing::warn!("console form refused: no valid CSRF token");
            Err(PageError::Forged)
        }
    }
}

/// Without a session: to the login page (the console is off: 404).
pub enum NotLoggedIn {
    Off,
    Login,
}

impl IntoResponse for NotLoggedIn {
    fn into_response(self) -> Response {
        match self {
            Self::Off => PageError::Off.into_response(),
            Self::Login => with_headers(Redirect::to("/admin/login").into_response()),
        }
    }
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = NotLoggedIn;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let keys = state.console.clone().ok_or(NotLoggedIn::Off)?;
        let session = cookie(&parts.headers, COOKIE)
            .and_then(|c| keys.verify(c, now()))
            .ok_or(NotLoggedIn::Login)?;
        Ok(Self { keys, session })
    }
}

/// A form with nothing but its CSRF token (a missing one is an empty one: refused).
#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

async fn home(State(state): State<AppState>) -> Result<Response, PageError> {
    state.console.as_ref().ok_or(PageError::Off)?;
    Ok(with_headers(Redirect::to("/admin/events").into_response()))
}

async fn login_page(State(state): State<AppState>) -> Result<Response, PageError> {
    state.console.as_ref().ok_or(PageError::Off)?;
    Ok(html(html::login(None)))
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    #[serde(default)]
    key: String,
}

async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Result<Response, PageError> {
    let keys = state.console.as_ref().ok_or(PageError::Off)?;
    let Some(key) = keys.login(&form.key) else {
        tracing::warn!("console login refused: not an admin key");
        let mut response = html(html::login(Some(
            "That is not one of CLERK_SYNC_ADMIN_KEYS.",
        )));
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        return Ok(response);
    };
    let cookie = format!(
        "{COOKIE}={}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={}{}",
        keys.issue(key, now()),
        session::SESSION_SECONDS,
        if over_https(&headers) { "; Secure" } else { "" }
    );
    tracing::info!("console login");
    let mut response = with_headers(Redirect::to("/admin/events").into_response());
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("cookie text is ASCII"),
    );
    Ok(response)
}

async fn logout(operator: Operator, Form(form): Form<CsrfForm>) -> Result<Response, PageError> {
    operator.check(&form)?;
    let mut response = with_headers(Redirect::to("/admin/login").into_response());
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "clerk_sync_console=; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    Ok(response)
}
