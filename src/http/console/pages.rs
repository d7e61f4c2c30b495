//! The console's pages: Events (and one event, with Replay), Outbox (with Retry), Users,
//! Health. Thin: each reads through `crate::admin` (or the use case it names) and renders.

use std::fmt::Write as _;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use chrono::NaiveDateTime;
use serde::Deserialize;

use super::html::{self, at, esc, status, url};
use super::{with_headers, CsrfForm, Operator, PageError};
use crate::admin::{self, EventFilter};
use crate::http::AppState;
use crate::metrics::Metrics;

/// An empty form field is no filter.
fn given(value: &Option<String>) -> Option<String> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// `2026-11-30T08:00` (a datetime-local field) or `2026-11-30`, as UTC.
fn parse_time(raw: &str) -> Option<NaiveDateTime> {
    NaiveDateTime::parse_from_str(raw, "%Y-%m-%dT%H:%M")
        .or_else(|_| NaiveDateTime::parse_from_str(raw, "%Y-%m-%dT%H:%M:%S"))
        .ok()
        .or_else(|| {
            chrono::NaiveDate::parse_from_str(raw, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
        })
}

/// The keyset of a page of events: `<ms>.<id>` of its last row.
fn parse_before(raw: &str) -> Option<(NaiveDateTime, String)> {
    let (ms, id) = raw.split_once('.')?;
    let at = chrono::DateTime::from_timestamp_millis(ms.parse().ok()?)?.naive_utc();
    Some((at, id.to_owned()))
}

fn select(name: &str, label: &str, options: &[&str], chosen: Option<&str>) -> String {
    let mut out = format!(r#"<label>{label}<select name="{name}"><option value="">any</option>"#);
    for option in options {
        let _ = write!(
            out,
            r#"<option{}>{option}</option>"#,
            if chosen == Some(*option) {
                " selected"
            } else {
                ""
            }
        );
    }
    out.push_str("</select></label>");
    out
}

#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    #[serde(rename = "type")]
    event_type: Option<String>,
    status: Option<String>,
    clerk_id: Option<String>,
    since: Option<String>,
    before: Option<String>,
}

pub async fn events(
    operator: Operator,
    State(state): State<AppState>,
    Query(q): Query<EventsQuery>,
) -> Result<Response, PageError> {
    let since_raw = given(&q.since);
    let filter = EventFilter {
        event_type: given(&q.event_type),
        status: given(&q.status),
        clerk_id: given(&q.clerk_id),
        since: since_raw.as_deref().and_then(parse_time),
        before: given(&q.before).as_deref().and_then(parse_before),
    };
    let (rows, more) = admin::events(&state.store, &filter).await?;
    let mut body = format!(
        r#"<form class="filters" method="get" action="/admin/events">{}{}<label>Clerk id<input name="clerk_id" value="{}"></label><label>Since (UTC)<input type="datetime-local" name="since" value="{}"></label><button type="submit">Filter</button></form>"#,
        select(
            "type",
            "Type",
            &["user.created", "user.updated", "user.deleted"],
            filter.event_type.as_deref()
        ),
        select(
            "status",
            "Status",
            &<crate::signup::EventStatus as crate::store::TextEnum>::ALL
                .iter()
                .map(|s| crate::store::TextEnum::as_str(*s))
                .collect::<Vec<_>>(),
            filter.status.as_deref()
        ),
        esc(filter.clerk_id.as_deref().unwrap_or("")),
        esc(since_raw.as_deref().unwrap_or("")),
    );
    body.push_str(
        "<table><thead><tr><th>Received</th><th>Type</th><th>Clerk id</th><th>Outcome</th><th>Reason</th><th>Latency</th><th>svix-id</th></tr></thead><tbody>",
    );
    for row in &rows {
        let _ = write!(
            body,
            r#"<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class="num">{}</td><td><a href="/admin/events/{}">{}</a></td></tr>"#,
            at(row.received_at),
            esc(&row.event_type),
            row.clerk_id
                .as_deref()
                .map(|c| format!(r#"<a href="/admin/users?q={}">{}</a>"#, url(c), esc(c)))
                .unwrap_or_default(),
            status(row.status.as_deref().unwrap_or("")),
            esc(row.error.as_deref().unwrap_or("")),
            row.latency_ms()
                .map(|ms| format!("{ms} ms"))
                .unwrap_or_default(),
            url(&row.svix_id),
            esc(&row.svix_id),
        );
    }
    if rows.is_empty() {
        body.push_str(r#"<tr><td colspan="7" class="muted">No events match.</td></tr>"#);
    }
    body.push_str("</tbody></table>");
    if let (true, Some(last)) = (more, rows.last()) {
        let mut next = format!(
            "/admin/events?before={}.{}",
            last.received_at.and_utc().timestamp_millis(),
            url(&last.id)
        );
        for (name, value) in [
            ("type", &filter.event_type),
            ("status", &filter.status),
            ("clerk_id", &filter.clerk_id),
            ("since", &since_raw),
        ] {
            if let Some(v) = value {
                let _ = write!(next, "&{name}={}", url(v));
            }
        }
        let _ = write!(body, r#"<p><a href="{}">Older →</a></p>"#, esc(&next));
    }
    Ok(super::html(html::page(
        "Events",
        "Events",
        &operator.csrf(),
        &body,
    )))
}

#[derive(Debug, Deserialize)]
pub struct Flash {
    replayed: Option<String>,
}

pub async fn event(
    operator: Operator,
    State(state): State<AppState>,
    Path(svix_id): Path<String>,
    Query(flash): Query<Flash>,
) -> Result<Response, PageError> {
    let Some((row, payload)) = admin::event(&state.store, &svix_id).await? else {
        return Err(crate::http::ApiError::NotFound.into());
    };
    let mut body = String::new();
    if let Some(outcome) = given(&flash.replayed) {
        let _ = write!(
            body,
            r#"<p class="flash{}">Replayed: {}</p>"#,
            if outcome == "processed" { "" } else { " bad" },
            esc(&outcome)
        );
    }
    let _ = write!(
        body,
        r#"<table class="card"><tbody><tr><th>svix-id</th><td>{}</td></tr><tr><th>Type</th><td>{}</td></tr><tr><th>Clerk id</th><td>{}</td></tr><tr><th>Outcome</th><td>{}</td></tr><tr><th>Reason</th><td>{}</td></tr><tr><th>Received</th><td>{}</td></tr><tr><th>Latency</th><td>{}</td></tr></tbody></table>"#,
        esc(&row.svix_id),
        esc(&row.event_type),
        esc(row.clerk_id.as_deref().unwrap_or("")),
        status(row.status.as_deref().unwrap_or("")),
        esc(row.error.as_deref().unwrap_or("")),
        at(row.received_at),
        row.latency_ms()
            .map(|ms| format!("{ms} ms"))
            .unwrap_or_default(),
    );
    if row.status.as_deref() == Some("failed") {
        if row.has_payload {
            let _ = write!(
                body,
                r#"<form method="post" action="/admin/events/{}/replay" class="card"><input type="hidden" name="csrf" value="{}"><p>Apply this event again from its stored payload, through the same path and idempotency as a delivery (once the cause of the failure is fixed).</p><button type="submit" id="replay">Replay</button></form>"#,
                url(&row.svix_id),
                esc(&operator.csrf())
            );
        } else {
            body.push_str(r#"<p class="muted">No stored payload (the body was not JSON, or the user was deleted): it cannot be replayed.</p>"#);
        }
    }
    if let Some(payload) = payload {
        let _ = write!(
            body,
            "<h2>Stored payload (email addresses masked)</h2><pre>{}</pre>",
            esc(&payload)
        );
    }
    Ok(super::html(html::page(
        "Event",
        "Events",
        &operator.csrf(),
        &body,
    )))
}

/// Replay one failed event: `crate::replay`, the path `clerk-sync replay` takes.
pub async fn replay(
    operator: Operator,
    State(state): State<AppState>,
    Path(svix_id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, PageError> {
    operator.check(&form)?;
    let selection = crate::replay::Selection {
        since: None,
        svix_ids: vec![svix_id.clone()],
    };
    let report = crate::replay::run(&state.store, &state.signup, &selection, false).await?;
    let outcome = report
        .events
        .first()
        .map_or("not failed", |e| e.status.as_str());
    let label = match outcome {
        "processed" => "processed",
        "duplicate" => "duplicate",
        "ignored" => "ignored",
        "failed" => "failed",
        _ => "error",
    };
    if !report.events.is_empty() {
        Metrics::count(&state.metrics.replayed_events, label);
    }
    if outcome == "processed" {
        state.outbox_wake.notify_one();
    }
    tracing::info!(outcome, "console replayed an event");
    Ok(with_headers(
        Redirect::to(&format!(
            "/admin/events/{}?replayed={}",
            url(&svix_id),
            url(outcome)
        ))
        .into_response(),
    ))
}

#[derive(Debug, Deserialize)]
pub struct OutboxQuery {
    status: Option<String>,
    retried: Option<String>,
}

pub async fn outbox(
    operator: Operator,
    State(state): State<AppState>,
    Query(q): Query<OutboxQuery>,
) -> Result<Response, PageError> {
    let chosen = match given(&q.status).as_deref() {
        Some("dead") => "dead",
        Some("done") => "done",
        _ => "pending",
    };
    let jobs = admin::jobs(&state.store, chosen).await?;
    let backlog = crate::outbox::backlog(&state.store).await?;
    let mut body = String::new();
    if let Some(id) = given(&q.retried) {
        let _ = write!(
            body,
            r#"<p class="flash">Job {} queued again.</p>"#,
            esc(&id)
        );
    }
    let _ = write!(
        body,
        r#"<p class="card">{} pending (oldest {} s), {} dead. Show: <a href="/admin/outbox?status=pending">pending</a> · <a href="/admin/outbox?status=dead">dead</a> · <a href="/admin/outbox?status=done">done</a></p>"#,
        backlog.pending, backlog.oldest_pending_age_seconds, backlog.dead
    );
    let _ = write!(
        body,
        "<h2>{}</h2><table><thead><tr><th>Job</th><th>Clerk id</th><th>Status</th><th>Attempts</th><th>Last error</th><th>Next attempt</th><th>Changed</th><th></th></tr></thead><tbody>",
        chosen
    );
    for job in &jobs {
        let action = if job.status == "dead" {
            format!(
                r#"<form method="post" action="/admin/outbox/{}/retry"><input type="hidden" name="csrf" value="{}"><button type="submit">Retry</button></form>"#,
                url(&job.id),
                esc(&operator.csrf())
            )
        } else {
            String::new()
        };
        let _ = write!(
            body,
            r#"<tr id="job-{}"><td>{}</td><td>{}</td><td>{}</td><td class="num">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{action}</td></tr>"#,
            esc(&job.id),
            esc(&job.id),
            esc(job.clerk_id().unwrap_or("")),
            status(&job.status),
            job.attempts,
            esc(job.last_error.as_deref().unwrap_or("")),
            if job.status == "pending" {
                at(job.next_attempt_at)
            } else {
                String::new()
            },
            at(job.updated_at),
        );
    }
    if jobs.is_empty() {
        body.push_str(r#"<tr><td colspan="8" class="muted">None.</td></tr>"#);
    }
    body.push_str("</tbody></table>");
    Ok(super::html(html::page(
        "Outbox",
        "Outbox",
        &operator.csrf(),
        &body,
    )))
}

/// Queue a dead job again; the worker is woken to deliver it.
pub async fn retry(
    operator: Operator,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, PageError> {
    operator.check(&form)?;
    if !admin::retry_dead_job(&state.store, &id).await? {
        return Err(crate::http::ApiError::invalid(
            "job",
            "is not dead (already retried, or unknown)",
        )
        .into());
    }
    state.outbox_wake.notify_one();
    tracing::info!(job_id = %id, "console queued a dead job again");
    Ok(with_headers(
        Redirect::to(&format!(
            "/admin/outbox?status=pending&retried={}",
            url(&id)
        ))
        .into_response(),
    ))
}

#[derive(Debug, Deserialize)]
pub struct UsersQuery {
    q: Option<String>,
    cursor: Option<String>,
}

/// Ledger rows per page on the user page.
const LEDGER_PAGE: u32 = 10;

pub async fn users(
    operator: Operator,
    State(state): State<AppState>,
    Query(query): Query<UsersQuery>,
) -> Result<Response, PageError> {
    let q = given(&query.q);
    let mut body = format!(
        r#"<form class="filters" method="get" action="/admin/users"><label>Clerk id or email<input name="q" value="{}" size="40"></label><button type="submit">Look up</button></form>"#,
        esc(q.as_deref().unwrap_or(""))
    );
    if let Some(q) = &q {
        match admin::find_user(&state.store, q).await? {
            None => {
                let _ = write!(
                    body,
                    r#"<p class="muted">No user with Clerk id or email {}.</p>"#,
                    esc(q)
                );
            }
            Some(user) => {
                let _ = write!(
                    body,
                    r#"<table class="card"><tbody><tr><th>Clerk id</th><td id="clerk-id">{}</td></tr><tr><th>User id</th><td>{}</td></tr><tr><th>Email</th><td>{}</td></tr><tr><th>Name</th><td>{} {}</td></tr><tr><th>Balance</th><td id="balance">{} ({} available, {} used)</td></tr><tr><th>Created</th><td>{}</td></tr><tr><th>Updated</th><td>{}</td></tr></tbody></table>"#,
                    esc(&user.clerk_id),
                    esc(&user.id),
                    esc(&user.email),
                    esc(user.first_name.as_deref().unwrap_or("")),
                    esc(user.last_name.as_deref().unwrap_or("")),
                    user.balance,
                    user.available_generations,
                    user.used_generations,
                    at(user.created_at),
                    at(user.updated_at),
                );
                let cursor = given(&query.cursor)
                    .as_deref()
                    .and_then(crate::credits::Cursor::parse);
                let (rows, next) = crate::credits::ledger_page(
                    &state.store,
                    &user.id,
                    LEDGER_PAGE,
                    cursor.as_ref(),
                )
                .await?;
                body.push_str("<h2>Ledger</h2><table id=\"ledger\"><thead><tr><th>When</th><th>Type</th><th>Reason</th><th>Amount</th><th>Balance after</th><th>Reference</th></tr></thead><tbody>");
                for row in &rows {
                    let _ = write!(
                        body,
                        r#"<tr><td>{}</td><td>{}</td><td>{}</td><td class="num">{}</td><td class="num">{}</td><td>{}</td></tr>"#,
                        at(row.created_at),
                        row.kind.map(crate::store::TextEnum::as_str).unwrap_or(""),
                        row.reason.map(crate::store::TextEnum::as_str).unwrap_or(""),
                        row.amount.map(|a| a.to_string()).unwrap_or_default(),
                        row.balance_after.map(|a| a.to_string()).unwrap_or_default(),
                        esc(&row.reference),
                    );
                }
                body.push_str("</tbody></table>");
                if let Some(next) = next {
                    let _ = write!(
                        body,
                        r#"<p><a id="older" href="/admin/users?q={}&amp;cursor={}">Older →</a></p>"#,
                        url(&user.clerk_id),
                        url(&next.encode())
                    );
                }
                let (events, _) = admin::events(
                    &state.store,
                    &EventFilter {
                        clerk_id: Some(user.clerk_id.clone()),
                        ..EventFilter::default()
                    },
                )
                .await?;
                body.push_str("<h2>Events</h2><table><thead><tr><th>Received</th><th>Type</th><th>Outcome</th><th>svix-id</th></tr></thead><tbody>");
                for e in &events {
                    let _ = write!(
                        body,
                        r#"<tr><td>{}</td><td>{}</td><td>{}</td><td><a href="/admin/events/{}">{}</a></td></tr>"#,
                        at(e.received_at),
                        esc(&e.event_type),
                        status(e.status.as_deref().unwrap_or("")),
                        url(&e.svix_id),
                        esc(&e.svix_id)
                    );
                }
                body.push_str("</tbody></table>");
            }
        }
    }
    Ok(super::html(html::page(
        "Users",
        "Users",
        &operator.csrf(),
        &body,
    )))
}

pub async fn health(
    operator: Operator,
    State(state): State<AppState>,
) -> Result<Response, PageError> {
    let reachable = state.store.ping().await;
    let pending = match &reachable {
        Ok(()) => state.store.pending_migrations().await.ok(),
        Err(_) => None,
    };
    let drift = state.schema.drift();
    let ready = reachable.is_ok() && pending.as_ref().is_some_and(Vec::is_empty) && drift.is_none();
    let mut body = format!(
        r#"<p class="card">Readiness: {} — database {}, migrations {}, schema {}.</p>"#,
        status(if ready { "ok" } else { "error" }),
        match &reachable {
            Ok(()) => format!("reachable ({})", state.store.backend_name()),
            Err(e) => format!("unreachable: {}", esc(&e.to_string())),
        },
        match &pending {
            Some(p) if p.is_empty() => "current".to_owned(),
            Some(p) => format!("pending {p:?}"),
            None => "not checked".to_owned(),
        },
        match &drift {
            None => "whole".to_owned(),
            Some(d) => format!(
                "drifted: {} (writes answer 503 schema_drift; run clerk-sync diagnose --fix)",
                esc(&d.summary())
            ),
        }
    );
    if let Ok(backlog) = crate::outbox::backlog(&state.store).await {
        let _ = write!(
            body,
            r#"<p class="card">Outbox: {} pending (oldest {} s), {} dead.</p>"#,
            backlog.pending, backlog.oldest_pending_age_seconds, backlog.dead
        );
    }
    let minutes = state
        .metrics
        .recent_signups
        .last_hour(chrono::Utc::now().timestamp());
    let (processed, unchanged, failed) = minutes.iter().fold((0, 0, 0), |(p, u, f), m| {
        (p + m.processed, u + m.unchanged, f + m.failed)
    });
    let _ = write!(
        body,
        r#"<h2>Signups, last hour (this replica)</h2><p>{processed} processed, {unchanged} duplicate or ignored, {failed} failed. Bars: signups per minute (green processed, yellow duplicate or ignored, red failed); line: p99 latency.</p><div class="card">{}</div>"#,
        html::signup_chart(&minutes)
    );
    match &state.diagnose {
        Some(report) => {
            let text = report(state.store.clone()).await;
            let _ = write!(
                body,
                "<h2>diagnose</h2><pre id=\"diagnose\">{}</pre>",
                esc(&text)
            );
        }
        None => body.push_str(
            r#"<p class="muted">The diagnose report is not available in this process.</p>"#,
        ),
    }
    Ok(super::html(html::page(
        "Health",
        "Health",
        &operator.csrf(),
        &body,
    )))
}
