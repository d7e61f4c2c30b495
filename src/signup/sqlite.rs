//! A webhook's signup transaction on SQLite: steps 1–4 of the module's list, one
//! statement at a time, as one request to SQLite's writer ([`SqliteWriter`]), which
//! commits it together with every other request waiting. The same statements and
//! decisions as `stepwise.rs` (which `diagnose` rehearses, and lazy provisioning runs),
//! here on the writer's own connection.

use rusqlite::Connection;

use super::*;
use crate::store::sqlite_writer::{bind, sqlite_time};
use crate::store::{SqliteStore, Step};

/// What the writer's thread needs of the webhook, owned.
struct Request {
    event_id: String,
    msg_id: String,
    event_type: String,
    payload: Option<String>,
    clerk_id: String,
    email: String,
    photo: String,
    first_name: Option<String>,
    last_name: Option<String>,
    clerk_updated_at: i64,
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
        clerk_id: profile.clerk_id.as_str().to_owned(),
        email: profile.email.as_str().to_owned(),
        photo: profile.photo.clone(),
        first_name: profile.first_name.clone(),
        last_name: profile.last_name.clone(),
        clerk_updated_at: profile.clerk_updated_at,
        signup_credits,
        now: sqlite_time(store::now()),
    };
    let result = lite.writer.write(move |conn| run(conn, &request)).await?;
    if let UpsertResult::Done(Outcome::Processed(Action::Created)) = &result {
        info!("user created");
    }
    Ok(result)
}

fn run(conn: &Connection, r: &Request) -> Result<Step<UpsertResult>, StoreError> {
    let done = |outcome| Ok(Step::Commit(UpsertResult::Done(outcome)));
    let processed = EventStatus::Processed;
    let inserted: Option<String> = bind(
        conn,
        INSERT_EVENT.as_str(),
        &[
            &r.event_id,
            &r.msg_id,
            &r.event_type,
            &true,
            &r.now,
            &r.now,
            &processed.as_str(),
            &None::<String>,
            &r.payload,
            &r.clerk_id,
        ],
    )?
    .raw_query()
    .next()?
    .map(|row| row.get(0))
    .transpose()?;
    if inserted.is_none() {
        return done(Outcome::Duplicate);
    }

    let taken: bool = bind(conn, EMAIL_OWNED_BY_OTHER, &[&r.email, &r.clerk_id])?
        .raw_query()
        .next()?
        .expect("EXISTS returns one row")
        .get(0)?;
    if taken {
        return Ok(Step::Rollback(UpsertResult::Refused(
            EMAIL_TAKEN.to_owned(),
        )));
    }

    let fresh = bind(
        conn,
        CLAIM_USER_SYNC.sqlite(),
        &[&r.clerk_id, &r.clerk_updated_at],
    )?
    .raw_query()
    .next()?
    .is_some();
    if !fresh {
        let deleted: bool = bind(conn, USER_IS_DELETED.sqlite(), &[&r.clerk_id])?
            .raw_query()
            .next()?
            .map(|row| row.get(0))
            .transpose()?
            .unwrap_or(false);
        let reason = ignored_reason(deleted);
        bind(
            conn,
            MARK_EVENT_IGNORED,
            &[&r.event_id, &reason, &EventStatus::Ignored.as_str()],
        )?
        .raw_execute()?;
        info!(reason, "event ignored");
        return done(Outcome::Ignored(reason.to_owned()));
    }

    let updated = bind(
        conn,
        UPDATE_USER,
        &[
            &r.clerk_id,
            &r.email,
            &r.photo,
            &r.first_name,
            &r.last_name,
            &r.now,
        ],
    )?
    .raw_query()
    .next()?
    .is_some();
    if updated {
        return done(Outcome::Processed(Action::Updated));
    }
    let user_id = new_id();
    bind(
        conn,
        INSERT_USER.as_str(),
        &[
            &user_id,
            &r.clerk_id,
            &r.email,
            &r.photo,
            &r.first_name,
            &r.last_name,
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
                &r.clerk_id,
                &user_id,
                &r.signup_credits,
                &r.msg_id,
                &signup_key(&r.clerk_id),
                &r.now,
            ],
        )?
        .raw_execute()?;
    }
    let job = Job::UpdateClerkMetadata {
        clerk_id: r.clerk_id.clone(),
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
