//! `clerk-sync smoke`: the seed's test-user-insert, through the service's own statements:
//! insert a test user, read it back, update it (checking `updatedAt` moved), delete it.
//! The user is deleted even when a step fails.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use chrono::NaiveDateTime;

use crate::signup::{insert_probe_user, UPDATE_USER};
use crate::store::{self, new_id, Store};
use crate::with_pool;

type UserRow = (String, String, i32, NaiveDateTime, NaiveDateTime);

const READ: &str = r#"SELECT "id", "clerkId", "availableGenerations", "createdAt", "updatedAt" FROM "User" WHERE "id" = $1"#;
const DELETE: &str = r#"DELETE FROM "User" WHERE "id" = $1"#;

pub async fn run(store: &Store, out: &mut impl Write) -> anyhow::Result<()> {
    let pending = store.pending_migrations().await?;
    anyhow::ensure!(
        pending.is_empty(),
        "this database is missing clerk-sync's migrations {pending:?}: run `clerk-sync migrate` first"
    );
    let id = new_id();
    let tag = format!("smoke_{}", chrono::Utc::now().timestamp_millis());
    let result = steps(store, out, &id, &tag).await;
    writeln!(out, "4. cleaning up")?;
    let deleted = with_pool!(store, |pool, p| {
        sqlx::query(DELETE)
            .bind(&id)
            .persistent(p)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
    });
    match (&result, deleted) {
        (_, Ok(n)) => writeln!(out, "   ok: test user deleted ({n} row)")?,
        (_, Err(e)) => writeln!(out, "   FAILED to delete test user {id}: {e}")?,
    }
    result?;
    writeln!(out, "all smoke steps passed")?;
    Ok(())
}

async fn steps(store: &Store, out: &mut impl Write, id: &str, tag: &str) -> anyhow::Result<()> {
    let email = format!("{tag}@smoke.invalid");
    let inserted_at = store::now();
    writeln!(out, "1. inserting test user")?;
    with_pool!(store, |pool, p| {
        insert_probe_user!(pool, p, id, tag, &email, 20, inserted_at)
            .await
            .map_err(store::StoreError::from)
            .context("insert failed")?;
    });
    let read = |store: &Store| {
        let store = store.clone();
        let id = id.to_owned();
        async move {
            let row: Option<UserRow> = with_pool!(&store, |pool, p| {
                sqlx::query_as(READ)
                    .bind(&id)
                    .persistent(p)
                    .fetch_optional(pool)
                    .await
                    .map_err(store::StoreError::from)?
            });
            Ok::<_, store::StoreError>(row)
        }
    };
    let (uid, clerk_id, available, created, updated) =
        read(store).await?.context("inserted user not found")?;
    writeln!(out, "   ok: user {uid} clerkId {clerk_id} availableGenerations {available} createdAt {created} updatedAt {updated}")?;

    writeln!(out, "2. verifying user")?;
    anyhow::ensure!(uid == id && clerk_id == tag, "read back a different user");
    writeln!(out, "   ok: user verified in database")?;

    writeln!(out, "3. updating user")?;
    tokio::time::sleep(Duration::from_millis(5)).await;
    with_pool!(store, |pool, p| {
        sqlx::query(UPDATE_USER)
            .bind(tag)
            .bind(&email)
            .bind("https://example.invalid/smoke.png")
            .bind(Some("Smoke"))
            .bind(Some("Test"))
            .bind(store::now())
            .persistent(p)
            .fetch_optional(pool)
            .await
            .map_err(store::StoreError::from)
            .context("update failed")?;
    });
    let (_, _, _, _, moved) = read(store).await?.context("updated user not found")?;
    anyhow::ensure!(
        moved > updated,
        "updatedAt did not move ({updated} → {moved})"
    );
    writeln!(out, "   ok: updatedAt moved {updated} → {moved}")?;
    Ok(())
}
