//! A webhook's signup transaction on SQLite: steps 1–4 of the module's list, one
//! statement at a time, as one request to SQLite's writer ([`SqliteWriter`]), which
//! commits it together with every other request waiting. The same statements and
//! decisions as `stepwise.rs` (which `diagnose` rehearses, and lazy provisioning runs),
//! here on the writer's own connection.

use rusqlite::Connection;

use super::*;
use crate::store::sqlite_writer::{bind, first, sqlite_time};
use crate::store::{SqliteStore, Step};

/// What the writer's thread needs of the webhook, owned.
struct Request {
    event_id: String,
    msg_id: String,
    event_type: String,
    payload: Option<String>,
    profile: UserProfile,
    signup_credits: i32,
    now: String,
}

pub(super) async fn upsert_user_sqlite(
    lite: &SqliteStore,
    signup_credits: i32,
    event: &EventRow<'_>,
    profile: &UserProfile,
) -> Result<UpsertResult, StoreError> {
    let request = Request {
        event_id: new_id(),
        msg_id: event.msg_id.as_str().to_owned(),
        event_type: event.event_type.to_owned(),
        payload: event.payload.map(str::to_owned),
        profile: profile.clone(),
        signup_credits,
        now: sqlite_time(store::now()),
    };
    let result = lite.writer.write(move |conn| run(conn, &request)).await?;
    // Logged here, in the webhook's span, not on the writer's thread.
    match &result {
        UpsertResult::Done(Outcome::Processed(Action::Created)) => info!("user created"),
        UpsertResult::Done(Outcome::Ignored(reason)) => info!(reason, "event ignored"),
        _ => {}
    }
    Ok(result)
}

fn run(conn: &Connection, r: &Request) -> Result<Step<UpsertResult>, StoreError> {
    let done = |outcome| Ok(Step::Commit(UpsertResult::Done(outcome)));
    let p = &r.profile;
    let clerk_id = p.clerk_id.as_str();
    let inserted: Option<String> = first(
        conn,
        INSERT_EVENT.as_str(),
        &[
            &r.event_id,
            &r.msg_id,
            &r.event_type,
            &true,
            &r.now,
            &r.now,
            &EventStatus::Processed.as_str(),
            &None::<String>,
            &r.payload,
            &clerk_id,
        ],
    )?;
    if inserted.is_none() {
        return done(Outcome::Duplicate);
    }

    let taken: Option<bool> = first(conn, EMAIL_OWNED_BY_OTHER, &[&p.email.as_str(), &clerk_id])?;
    if taken.expect("EXISTS returns one row") {
        return Ok(Step::Rollback(UpsertResult::Refused(
            EMAIL_TAKEN.to_owned(),
        )));
    }

    let fresh: Option<String> = first(
        conn,
        CLAIM_USER_SYNC.sqlite(),
        &[&clerk_id, &p.clerk_updated_at],
    )?;
    if fresh.is_none() {
        let deleted: Option<bool> = first(conn, USER_IS_DELETED.sqlite(), &[&clerk_id])?;
        let reason = ignored_reason(deleted.unwrap_or(false));
        bind(
            conn,
            MARK_EVENT_IGNORED,
            &[&r.event_id, &reason, &EventStatus::Ignored.as_str()],
        )?
        .raw_execute()?;
        return done(Outcome::Ignored(reason.to_owned()));
    }

    let updated: Option<String> = first(
        conn,
        UPDATE_USER,
        &[
            &clerk_id,
            &p.email.as_str(),
            &p.photo,
            &p.first_name,
            &p.last_name,
            &r.now,
        ],
    )?;
    if updated.is_some() {
        return done(Outcome::Processed(Action::Updated));
    }
    let user_id = new_id();
    bind(
        conn,
        INSERT_USER.as_str(),
        &[
            &user_id,
            &clerk_id,
            &p.email.as_str(),
            &p.photo,
            &p.first_name,
            &p.last_name,
            &r.signup_credits,
            &r.now,
        ],
    )?
    .raw_execute()?;
    if r.signup_credits > 0 {
        bind(
            conn,
            INSERT_SIGNUP_BONUS.as_str(),
            &[
                &new_id(),
                &clerk_id,
                &user_id,
                &r.signup_credits,
                &r.msg_id,
                &signup_key(clerk_id),
                &r.now,
            ],
        )?
        .raw_execute()?;
    }
    let job = Job::UpdateClerkMetadata {
        clerk_id: clerk_id.to_owned(),
        user_id,
    };
    let job_json = serde_json::to_string(&job).expect("a job serializes");
    bind(
        conn,
        INSERT_OUTBOX_JOB.sqlite(),
        &[&new_id(), &job.kind(), &job_json, &r.now],
    )?
    .raw_execute()?;
    done(Outcome::Processed(Action::Created))
}
