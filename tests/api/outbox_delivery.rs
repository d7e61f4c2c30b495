//! The outbox delivers once in effect, several at a time, at Clerk's pace: an attempt
//! that recorded nothing is checked with Clerk before it is sent again; a slow call holds
//! one delivery, not the others; a 429's `Retry-After` pauses every delivery.

use std::time::{Duration, Instant};

use clerk_sync::outbox::worker::Outcome;
use clerk_sync::store::Store;
use clerk_sync::with_pool;
use serde_json::json;

use crate::both_backends;
use crate::helpers::*;

both_backends!(
    an_attempt_that_recorded_nothing_is_checked_with_clerk_not_sent_twice,
    a_slow_clerk_call_holds_one_delivery_not_the_others,
    a_429_pauses_every_delivery_for_its_retry_after,
);

fn clerk_opts(clerk: &FakeClerk) -> AppOptions {
    AppOptions {
        clerk_api_url: Some(clerk.url.clone()),
        clerk_secret_key: Some(FakeClerk::KEY.to_owned()),
        ..AppOptions::default()
    }
}

/// Put the job back as a claim whose lease ran out: claimed `attempts` times, due now,
/// with `last_error` recorded (or none, when the attempt died before recording).
async fn expire_claim(store: &Store, attempts: i32, last_error: Option<&str>) {
    let sql = format!(
        r#"UPDATE {} SET "status" = 'pending', "attempts" = $1, "lastError" = $2,
                          "nextAttemptAt" = $3"#,
        own_table(store, "OutboxJob")
    );
    with_pool!(store, |pool, _p| {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(attempts)
            .bind(last_error)
            .bind(clerk_sync::store::now() - chrono::Duration::seconds(1))
            .execute(pool)
            .await
            .unwrap();
    });
}

async fn an_attempt_that_recorded_nothing_is_checked_with_clerk_not_sent_twice(backend: Backend) {
    let db = TestDb::new(backend).await;
    let clerk = FakeClerk::start().await;
    let app = TestApp::spawn_with(&db, clerk_opts(&clerk)).await;
    let (s, _) = status_json(app.post_webhook("msg_a", &created_for("ada")).await).await;
    assert_eq!(s, 200);
    let user = users(&app.store).await.remove(0);

    // The PATCH succeeds; then the process dies before "done" is written: the job is
    // claimed again once its lease ends, with no result recorded.
    assert_eq!(step_worker(&app.store, &clerk).await, Outcome::Done);
    expire_claim(&app.store, 1, None).await;
    assert_eq!(step_worker(&app.store, &clerk).await, Outcome::Done);
    assert_eq!(clerk.applied_patches("user_ada"), 1, "sent once");
    let calls: Vec<String> = clerk.requests().iter().map(|r| r.method.clone()).collect();
    assert_eq!(calls, ["PATCH", "GET"], "the second attempt only looked");
    let job = jobs(&app.store).await.remove(0);
    assert_eq!((job.status.as_str(), job.attempts), ("done", 2));
    assert_eq!(job.payload.0["userId"], json!(user.id));

    // The look itself fails (Clerk 500): nothing is sent, and the next attempt looks again
    // rather than sending blind.
    expire_claim(&app.store, 2, None).await;
    clerk.script(&[500]);
    assert_eq!(step_worker(&app.store, &clerk).await, Outcome::Retried);
    let job = jobs(&app.store).await.remove(0);
    assert_eq!(
        job.last_error.as_deref(),
        Some("unverified: Clerk API answered 500")
    );
    make_jobs_due(&app.store).await;
    assert_eq!(step_worker(&app.store, &clerk).await, Outcome::Done);
    assert_eq!(clerk.applied_patches("user_ada"), 1, "still sent once");

    // An attempt that died before it reached Clerk: the look finds nothing; sent once.
    let (s, _) = status_json(app.post_webhook("msg_b", &created_for("bob")).await).await;
    assert_eq!(s, 200);
    let bob_job = jobs(&app.store)
        .await
        .into_iter()
        .find(|j| j.payload.0["clerkId"] == "user_bob")
        .unwrap();
    with_pool!(&app.store, |pool, _p| {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            r#"UPDATE {} SET "attempts" = 1 WHERE "id" = $1"#,
            own_table(&app.store, "OutboxJob")
        )))
        .bind(&bob_job.id)
        .execute(pool)
        .await
        .unwrap();
    });
    assert_eq!(step_worker(&app.store, &clerk).await, Outcome::Done);
    assert_eq!(clerk.applied_patches("user_bob"), 1);

    // An attempt that recorded a failure is sent again without looking first.
    expire_claim(&app.store, 3, Some("retryable: Clerk API answered 500")).await;
    let before = clerk.requests().len();
    assert_eq!(step_worker(&app.store, &clerk).await, Outcome::Done);
    assert_eq!(step_worker(&app.store, &clerk).await, Outcome::Done);
    let after: Vec<String> = clerk.requests()[before..]
        .iter()
        .map(|r| r.method.clone())
        .collect();
    assert_eq!(after, ["PATCH", "PATCH"]);
}

/// `n` users `user_{prefix}0…` signed up by an app with no worker, then stopped: their
/// metadata jobs are all due when the next app's worker starts.
async fn sign_up_with_no_worker(db: &TestDb, prefix: &str, n: usize) {
    let writer = TestApp::spawn(db).await;
    for i in 0..n {
        let body = created_for(&format!("{prefix}{i}"));
        let (s, _) = status_json(writer.post_webhook(&format!("msg_{i}"), &body).await).await;
        assert_eq!(s, 200);
    }
    writer.stop().await;
}

async fn wait_until_done(store: &Store, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let done = jobs(store)
            .await
            .iter()
            .filter(|j| j.status == "done")
            .count();
        if done >= n {
            return;
        }
        assert!(Instant::now() < deadline, "{done} of {n} jobs done");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn a_slow_clerk_call_holds_one_delivery_not_the_others(backend: Backend) {
    let db = TestDb::new(backend).await;
    let clerk = FakeClerk::start().await;
    // Written before the worker starts, so every job is due at once.
    sign_up_with_no_worker(&db, "u", 21).await;
    clerk.delay_every_call(Duration::from_millis(20));
    // The first call hangs longer than the whole test takes otherwise.
    clerk.hang_next(1, Duration::from_secs(8));
    let app = TestApp::spawn_with(
        &db,
        AppOptions {
            run_worker: true,
            ..clerk_opts(&clerk)
        },
    )
    .await;

    wait_until_done(&app.store, 20, Duration::from_secs(7)).await;
    assert_eq!(
        clerk.hung_answered(),
        0,
        "the other 20 did not wait for the slow call"
    );
    wait_until_done(&app.store, 21, Duration::from_secs(20)).await;
    for i in 0..21 {
        assert_eq!(clerk.applied_patches(&format!("user_u{i}")), 1, "u{i}");
    }
    app.stop().await;
}

async fn a_429_pauses_every_delivery_for_its_retry_after(backend: Backend) {
    let db = TestDb::new(backend).await;
    let clerk = FakeClerk::start().await;
    sign_up_with_no_worker(&db, "r", 10).await;
    // The first answer is 429 with `Retry-After: 1`.
    clerk.script(&[429]);
    let app = TestApp::spawn_with(
        &db,
        AppOptions {
            run_worker: true,
            ..clerk_opts(&clerk)
        },
    )
    .await;
    wait_until_done(&app.store, 9, Duration::from_secs(15)).await;
    let requests = clerk.requests();
    let limited = requests.iter().position(|r| r.status == 429).unwrap();
    let paused_from = requests[limited].at;
    // Deliveries already past the pace when the 429 arrived may land just after it (on a
    // busy machine, some 100 ms later); none starts after that until Retry-After passed.
    let too_early: Vec<Duration> = requests[limited + 1..]
        .iter()
        .map(|r| r.at.duration_since(paused_from))
        .filter(|d| *d > Duration::from_millis(300) && *d < Duration::from_millis(900))
        .collect();
    assert!(
        too_early.is_empty(),
        "calls during the pause: {too_early:?}"
    );
    app.stop().await;
}
