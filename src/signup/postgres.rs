//! The signup transaction on PostgreSQL as ONE statement, for a batch of webhooks.

use std::sync::LazyLock;

use sqlx::postgres::PgArguments;
use sqlx::query::QueryAs;
use sqlx::{PgConnection, Postgres};

use super::*;
use crate::domain::{LedgerReason, LedgerType};
use crate::store::tables::{CLERK_USER_SYNC, OUTBOX_JOB, TRANSACTION, USER, WEBHOOK_EVENT};
use crate::store::{PgStore, OWN_SCHEMA};

/// Steps 1–5 on PostgreSQL, as ONE statement run on its own (autocommit), for a batch of
/// webhooks: one row per webhook in each array parameter (`$11` now, `$13` the signup
/// credits and `$17` the job kind are shared). A lone webhook is a batch of one: one round
/// trip per signup, which is what matters on Neon, where every round trip crosses a
/// network. Under load [`SignupQueue`] groups concurrent webhooks into one statement, so
/// they share a round trip and a commit.
///
/// Its parts all see the statement's snapshot, so every decision that must survive a
/// concurrent writer is taken by a unique index, never by a plain read:
/// - `sync` claims the per-user row with `INSERT … ON CONFLICT DO UPDATE … WHERE newer`,
///   which waits for a concurrent event of the same user and then judges the latest
///   committed row;
/// - `ev` records the event with `ON CONFLICT ("eventId")`, so of concurrent deliveries
///   of one message exactly one gets a row back; the others are duplicates;
/// - `usr` inserts the user with `ON CONFLICT ("clerkId") DO UPDATE`, so a user created
///   by a concurrent event is updated, not inserted twice; the user is new exactly when
///   the returned id is the one we proposed, and only then are the `signup_bonus` row and
///   the outbox job written.
///
/// Every unique index those decisions rest on is named by the statement, so that it
/// fails (`StoreError::Schema`, 503 `schema_drift`) rather than decide without one when
/// another writer's migration dropped it: the `ON CONFLICT` targets by their columns, and
/// `"User_email_key"`, which only a concurrent insert would meet, as a `regclass` literal
/// (resolved when the statement is analysed; dropping an index makes a cached plan be
/// analysed again).
///
/// `handled` (a delivery already handled) and `taken` (the email address belongs to
/// another Clerk user) are plain reads: they only keep a message that will change nothing
/// from claiming the per-user row. They are scalar subqueries, not `EXISTS`, so that the
/// planner always looks them up by index: on a new database's empty tables it would plan
/// an `EXISTS` as one scan of the whole table, and keep that plan as the table grows.
///
/// The arrays are read through a subquery with `OFFSET 0`, as the credits statement
/// reads its own: the planner cannot see their lengths, so a plan made for given arrays
/// costs what the generic plan costs, and PostgreSQL keeps the prepared statement's
/// generic plan instead of planning every execution again. Before, a batch of one or two
/// (a quiet service) was planned at every bind: 0.99 ms of bind against 0.49 ms of
/// execution, from PostgreSQL's log at C = 1; with this form, bind takes 0.15 ms.
///
/// Rows of one batch must not share a `svix-id`, a Clerk user or an email address
/// ([`SignupRow::conflicts_with`]): within one statement they could not see each other.
/// Rows are written in Clerk id order, so two statements lock rows in the same order.
/// Any write that fails (a constraint, a missing table) fails the whole statement, and
/// nothing is written.
///
/// Returns a row per webhook that is not a duplicate: its `svix-id`, the event's status
/// and reason, and whether the user was created ([`Applied`]).
static PG_SIGNUP: LazyLock<String> = LazyLock::new(|| {
    for reason in [EMAIL_TAKEN, REASON_DELETED, REASON_STALE] {
        assert!(
            !reason.contains('\''),
            "reasons are inlined as SQL literals"
        );
    }
    let [processed, ignored, failed] = [
        EventStatus::Processed,
        EventStatus::Ignored,
        EventStatus::Failed,
    ]
    .map(TextEnum::as_str);
    let credit = LedgerType::Credit.as_str();
    let signup_bonus = LedgerReason::SignupBonus.as_str();
    let event_id_conflict = &*EVENT_ID_CONFLICT;
    format!(
        r#"
WITH input AS (
    SELECT i.*,
           COALESCE((SELECT w."status" <> '{failed}' FROM "WebhookEvent" w
                     WHERE w."eventId" = i."eventId"), false) AS "handled",
           COALESCE((SELECT u."clerkId" <> i."clerkId" FROM "User" u
                     WHERE u."email" = i."email"), false) AS "taken"
    FROM (SELECT $1::text[] AS a1, $2::text[] AS a2, $3::text[] AS a3, $4::text[] AS a4,
                 $5::text[] AS a5, $6::int8[] AS a6, $7::text[] AS a7, $8::text[] AS a8,
                 $9::text[] AS a9, $10::text[] AS a10, $12::text[] AS a12,
                 $14::text[] AS a14, $15::text[] AS a15, $16::text[] AS a16,
                 $18::text[] AS a18
          OFFSET 0) AS p
    CROSS JOIN LATERAL unnest(p.a1, p.a2, p.a3, p.a4, p.a5, p.a6, p.a7, p.a8, p.a9, p.a10,
                              p.a12, p.a14, p.a15, p.a16, p.a18)
        AS i("rowId", "eventId", "eventType", "payload", "clerkId", "clerkUpdatedAt",
             "email", "photo", "firstName", "lastName", "userId", "bonusId",
             "signupKey", "jobId", "jobPayload")
),
sync AS (
    INSERT INTO {OWN_SCHEMA}."ClerkUserSync" ({CLERK_USER_SYNC})
    SELECT i."clerkId", i."clerkUpdatedAt", NULL FROM input i
    WHERE NOT i."handled" AND NOT i."taken"
    ORDER BY i."clerkId"
    {USER_SYNC_CONFLICT}
    RETURNING "clerkId"
),
verdict AS (
    SELECT i.*,
           CASE WHEN s."clerkId" IS NOT NULL THEN '{processed}'
                WHEN i."taken" THEN '{failed}'
                ELSE '{ignored}' END AS "status",
           CASE WHEN s."clerkId" IS NOT NULL THEN NULL
                WHEN i."taken" THEN '{EMAIL_TAKEN}'
                WHEN (SELECT c."deletedAt" IS NOT NULL FROM {OWN_SCHEMA}."ClerkUserSync" c
                      WHERE c."clerkId" = i."clerkId") THEN '{REASON_DELETED}'
                ELSE '{REASON_STALE}' END AS "error"
    FROM input i LEFT JOIN sync s ON s."clerkId" = i."clerkId"
),
ev AS (
    INSERT INTO "WebhookEvent" ({WEBHOOK_EVENT})
    SELECT v."rowId", v."eventId", v."eventType", v."status" <> '{failed}',
           CASE WHEN v."status" <> '{failed}' THEN $11 END, $11, v."status", v."error",
           v."payload"::jsonb, v."clerkId"
    FROM verdict v
    ORDER BY v."clerkId"
    {event_id_conflict}
    RETURNING "eventId", "status", "error"
),
usr AS (
    INSERT INTO "User" ({USER})
    SELECT i."userId", i."clerkId", i."email", i."photo", i."firstName", i."lastName",
           0, $13, $11, $11
    FROM input i JOIN ev ON ev."eventId" = i."eventId"
    WHERE ev."status" = '{processed}'
      AND '"User_email_key"'::regclass IS NOT NULL
    ORDER BY i."clerkId"
    ON CONFLICT ("clerkId") DO UPDATE SET
        "email" = excluded."email", "photo" = excluded."photo",
        "firstName" = excluded."firstName", "lastName" = excluded."lastName",
        "updatedAt" = excluded."updatedAt"
    RETURNING "id"
),
bonus AS (
    INSERT INTO "Transaction" ({TRANSACTION})
    SELECT i."bonusId", i."clerkId", usr."id", 'completed', $13, '{credit}', 'Signup bonus',
           '{signup_bonus}', i."eventId", i."signupKey", $13, $11
    FROM usr JOIN input i ON i."userId" = usr."id"
    WHERE $13 > 0
),
job AS (
    INSERT INTO {OWN_SCHEMA}."OutboxJob" ({OUTBOX_JOB})
    SELECT i."jobId", $17, i."jobPayload"::jsonb, 'pending', 0, $11, $11, $11
    FROM usr JOIN input i ON i."userId" = usr."id"
)
SELECT ev."eventId", ev."status", ev."error",
       EXISTS (SELECT 1 FROM usr WHERE usr."id" = i."userId") AS "created"
FROM input i JOIN ev ON ev."eventId" = i."eventId""#
    )
});

/// The statements a `user.created` for a new user runs on PostgreSQL, in order: one
/// statement, in autocommit, with arrays of one element when the webhook goes alone.
/// `clerk-sync bench --print-pgbench-script` turns them into the pgbench peer of
/// `bench/compare`: keep this list in step with `upsert_user_postgres`.
pub fn new_user_statements_postgres() -> [&'static str; 1] {
    [PG_SIGNUP.as_str()]
}

/// The parameters of [`PG_SIGNUP`] that hold one element per webhook; the others are
/// shared by the batch.
pub const PG_SIGNUP_ARRAY_PARAMS: [usize; 15] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14, 15, 16, 18];

/// One `user.created` / `user.updated` webhook as a row of [`PG_SIGNUP`], owned so that
/// it can wait in the [`SignupQueue`].
#[derive(Debug)]
pub struct SignupRow {
    pub(super) event_row_id: String,
    pub(super) msg_id: String,
    pub(super) event_type: String,
    /// The event as JSON text (the column is `jsonb`).
    pub(super) payload: Option<String>,
    pub(super) clerk_id: String,
    pub(super) clerk_updated_at: i64,
    pub(super) email: String,
    pub(super) photo: String,
    pub(super) first_name: Option<String>,
    pub(super) last_name: Option<String>,
    pub(super) user_id: String,
    pub(super) bonus_id: String,
    pub(super) signup_key: String,
    pub(super) job_id: String,
    pub(super) job_kind: &'static str,
    pub(super) job_payload: String,
}

impl SignupRow {
    fn new(event: &EventRow<'_>, profile: &UserProfile) -> Self {
        let clerk_id = profile.clerk_id.as_str();
        let user_id = new_id();
        let job = Job::UpdateClerkMetadata {
            clerk_id: clerk_id.to_owned(),
            user_id: user_id.clone(),
        };
        Self {
            event_row_id: new_id(),
            msg_id: event.msg_id.as_str().to_owned(),
            event_type: event.event_type.to_owned(),
            payload: event.payload.map(str::to_owned),
            clerk_id: clerk_id.to_owned(),
            clerk_updated_at: profile.clerk_updated_at,
            email: profile.email.as_str().to_owned(),
            photo: profile.photo.clone(),
            first_name: profile.first_name.clone(),
            last_name: profile.last_name.clone(),
            user_id,
            bonus_id: new_id(),
            signup_key: signup_key(clerk_id),
            job_id: new_id(),
            job_kind: job.kind(),
            job_payload: serde_json::to_string(&job).expect("a job serialises"),
        }
    }

    pub(super) fn payload_bytes(&self) -> usize {
        self.payload.as_ref().map_or(0, String::len)
    }

    /// Whether two webhooks must go to the database in different statements.
    pub(super) fn conflicts_with(&self, other: &Self) -> bool {
        self.clerk_id == other.clerk_id || self.msg_id == other.msg_id || self.email == other.email
    }
}

/// What [`PG_SIGNUP`] decided for one webhook that was not a duplicate.
#[derive(Debug, sqlx::FromRow)]
pub struct Applied {
    #[sqlx(rename = "eventId")]
    msg_id: String,
    status: EventStatus,
    #[sqlx(rename = "error")]
    reason: Option<String>,
    created: bool,
}

/// [`PG_SIGNUP`] with its parameters bound for `rows` (at least one, no two in conflict).
fn pg_signup_query(
    rows: &[SignupRow],
    signup_credits: i32,
    now: chrono::NaiveDateTime,
    prepared: bool,
) -> QueryAs<'_, Postgres, Applied, PgArguments> {
    let texts = |f: fn(&SignupRow) -> &str| rows.iter().map(f).collect::<Vec<_>>();
    let maybe = |f: fn(&SignupRow) -> Option<&str>| rows.iter().map(f).collect::<Vec<_>>();
    sqlx::query_as(PG_SIGNUP.as_str())
        .bind(texts(|r| &r.event_row_id))
        .bind(texts(|r| &r.msg_id))
        .bind(texts(|r| &r.event_type))
        .bind(maybe(|r| r.payload.as_deref()))
        .bind(texts(|r| &r.clerk_id))
        .bind(rows.iter().map(|r| r.clerk_updated_at).collect::<Vec<_>>())
        .bind(texts(|r| &r.email))
        .bind(texts(|r| &r.photo))
        .bind(maybe(|r| r.first_name.as_deref()))
        .bind(maybe(|r| r.last_name.as_deref()))
        .bind(now)
        .bind(texts(|r| &r.user_id))
        .bind(signup_credits)
        .bind(texts(|r| &r.bonus_id))
        .bind(texts(|r| &r.signup_key))
        .bind(texts(|r| &r.job_id))
        .bind(rows[0].job_kind)
        .bind(texts(|r| &r.job_payload))
        .persistent(prepared)
}

/// Each row's result, in the order of `rows`; `None` for a duplicate.
fn per_row(rows: &[SignupRow], mut found: Vec<Applied>) -> Vec<Option<Applied>> {
    rows.iter()
        .map(|row| {
            let at = found.iter().position(|f| f.msg_id == row.msg_id)?;
            Some(found.swap_remove(at))
        })
        .collect()
}

/// Run [`PG_SIGNUP`] for `rows` (at least one, no two in conflict) in autocommit.
pub(super) async fn run_pg_signup(
    pg: &PgStore,
    signup_credits: i32,
    rows: &[SignupRow],
) -> Result<Vec<Option<Applied>>, sqlx::Error> {
    let now = store::now();
    // One statement, idempotent by `svix-id`: safe to run again on a new connection.
    pg.waits.note(&pg.pool);
    let found = store::retry_lost_connection(&pg.pool, || {
        pg_signup_query(rows, signup_credits, now, pg.prepared).fetch_all(&pg.pool)
    })
    .await?;
    Ok(per_row(rows, found))
}

/// One webhook's transaction on PostgreSQL: the [`SignupQueue`] when there is one, else
/// [`PG_SIGNUP`] alone.
pub(super) async fn upsert_user_postgres(
    pg: &PgStore,
    signup_credits: i32,
    queue: Option<&SignupQueue>,
    event: &EventRow<'_>,
    profile: &UserProfile,
) -> Result<UpsertResult, StoreError> {
    let row = SignupRow::new(event, profile);
    let user_id = row.user_id.clone();
    let applied = match queue {
        Some(queue) => queue.apply(row).await?,
        None => run_pg_signup(pg, signup_credits, std::slice::from_ref(&row))
            .await?
            .pop()
            .flatten(),
    };
    Ok(UpsertResult::Done(outcome(applied, &user_id)))
}

/// The same statement inside the caller's transaction (see [`super::apply_in`]).
pub(super) async fn upsert_user_postgres_in(
    conn: &mut PgConnection,
    prepared: bool,
    signup_credits: i32,
    event: &EventRow<'_>,
    profile: &UserProfile,
) -> Result<UpsertResult, StoreError> {
    let rows = [SignupRow::new(event, profile)];
    let found = pg_signup_query(&rows, signup_credits, store::now(), prepared)
        .fetch_all(conn)
        .await?;
    let applied = per_row(&rows, found).pop().flatten();
    Ok(UpsertResult::Done(outcome(applied, &rows[0].user_id)))
}

fn outcome(applied: Option<Applied>, user_id: &str) -> Outcome {
    let Some(Applied {
        status,
        reason,
        created,
        ..
    }) = applied
    else {
        return Outcome::Duplicate;
    };
    let reason = reason.unwrap_or_default();
    match status {
        EventStatus::Processed if created => {
            info!(user_id = %user_id, "user created");
            Outcome::Processed(Action::Created)
        }
        EventStatus::Processed => Outcome::Processed(Action::Updated),
        EventStatus::Ignored => {
            info!(reason = %reason, "event ignored");
            Outcome::Ignored(reason)
        }
        EventStatus::Failed => {
            tracing::error!(reason = %reason, "webhook event failed permanently");
            Outcome::Failed(reason)
        }
    }
}
