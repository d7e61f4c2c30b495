//! The outbox against a local fake Clerk API: delivered once, retried on 500 and 429,
//! still pending after a restart and then delivered by the worker inside `serve`.

use std::time::{Duration, Instant};

use serde_json::json;

use clerk_sync::outbox::worker::Outcome;

use crate::both_backends;
use crate::helpers::*;

both_backends!(
    delivered_once_on_success,
    retried_on_500_and_429_then_delivered,
    permanent_refusal_is_dead_at_once,
    pending_after_restart_then_delivered_by_the_serve_worker,
    clerks_error_details_are_kept_and_a_user_gone_from_clerk_ends_the_job,
);

/// Issue #31: Clerk's `code`, message and `clerk_trace_id` reach `lastError`; a user
/// Clerk deleted before delivery ends its job `done` (`gone`), not `dead`; a 404 without
/// Clerk's error body names CLERK_API_URL.
async fn clerks_error_details_are_kept_and_a_user_gone_from_clerk_ends_the_job(backend: Backend) {
    let db = TestDb::new(backend).await;
    let clerk = FakeClerk::start().await;
    let app = TestApp::spawn_with(&db, clerk_opts(&clerk)).await;
    // One job at a time, each signed up just before its delivery.
    let job_after = |name: &'static str| {
        let app = &app;
        let clerk = &clerk;
        async move {
            let (s, _) = status_json(
                app.post_webhook(&format!("msg_{name}"), &created_for(name))
                    .await,
            )
            .await;
            assert_eq!(s, 200);
            let outcome = step_worker(&app.store, clerk).await;
            let job = jobs(&app.store)
                .await
                .into_iter()
                .find(|j| j.payload.0["clerkId"] == format!("user_{name}"))
                .expect("its job");
            (outcome, job)
        }
    };

    clerk.fail_next_with(422, "form_param_value_invalid");
    let (outcome, refused) = job_after("refused").await;
    assert_eq!((outcome, refused.status.as_str()), (Outcome::Dead, "dead"));
    let error = refused.last_error.unwrap();
    assert!(
        error.contains("422 form_param_value_invalid: fake Clerk error")
            && error.contains("clerk_trace_id fake0trace0id"),
        "{error}"
    );

    clerk.delete_user("user_gone");
    let (outcome, gone) = job_after("gone").await;
    assert_eq!((outcome, gone.status.as_str()), (Outcome::Gone, "done"));
    let error = gone.last_error.unwrap();
    assert!(
        error.starts_with("the user no longer exists in Clerk")
            && error.contains("resource_not_found"),
        "{error}"
    );

    // A 404 that is not Clerk's (a wrong CLERK_API_URL) is no "no such user".
    clerk.script(&[404]);
    let (outcome, lost) = job_after("lost").await;
    assert_eq!((outcome, lost.status.as_str()), (Outcome::Dead, "dead"));
    let error = lost.last_error.unwrap();
    assert!(
        error.contains("without Clerk's error body") && error.contains("CLERK_API_URL"),
        "{error}"
    );
}

fn clerk_opts(clerk: &FakeClerk) -> AppOptions {
    AppOptions {
        clerk_api_url: Some(clerk.url.clone()),
        clerk_secret_key: Some(FakeClerk::KEY.to_owned()),
        ..AppOptions::default()
    }
}

async fn delivered_once_on_success(backend: Backend) {
    let db = TestDb::new(backend).await;
    let clerk = FakeClerk::start().await;
    let app = TestApp::spawn_with(&db, clerk_opts(&clerk)).await;
    status_json(
        app.post_webhook("msg_1", &fixture("clerk-user-created.json"))
            .await,
    )
    .await;
    let user = users(&app.store).await.remove(0);

    assert_eq!(step_worker(&app.store, &clerk).await, Outcome::Done);
    assert_eq!(step_worker(&app.store, &clerk).await, Outcome::Empty);

    let requests = clerk.requests();
    assert_eq!(requests.len(), 1, "delivered exactly once");
    assert_eq!(requests[0].method, "PATCH");
    assert_eq!(
        requests[0].path,
        format!("/v1/users/{}/metadata", user.clerk_id)
    );
    assert_eq!(
        requests[0].authorization.as_deref(),
        Some("Bearer sk_test_fake_clerk_key")
    );
    assert_eq!(
        requests[0].body,
        json!({"public_metadata": {"userId": user.id}})
    );
    let jobs = jobs(&app.store).await;
    assert_eq!((jobs[0].status.as_str(), jobs[0].attempts), ("done", 1));
    assert_eq!(jobs[0].last_error, None);
}

async fn retried_on_500_and_429_then_delivered(backend: Backend) {
    let db = TestDb::new(backend).await;
    let clerk = FakeClerk::start().await;
    clerk.script(&[500, 429]);
    let app = TestApp::spawn_with(&db, clerk_opts(&clerk)).await;
    status_json(
        app.post_webhook("msg_1", &fixture("clerk-user-created.json"))
            .await,
    )
    .await;

    assert_eq!(step_worker(&app.store, &clerk).await, Outcome::Retried);
    let job = jobs(&app.store).await.remove(0);
    assert_eq!((job.status.as_str(), job.attempts), ("pending", 1));
    assert_eq!(job.last_error.as_deref(), Some("Clerk API answered 500"));
    assert!(
        job.next_attempt_at > clerk_sync::store::now(),
        "backed off into the future"
    );
    assert_eq!(
        step_worker(&app.store, &clerk).await,
        Outcome::Empty,
        "not due yet"
    );

    make_jobs_due(&app.store).await;
    assert_eq!(step_worker(&app.store, &clerk).await, Outcome::Retried);
    let job = jobs(&app.store).await.remove(0);
    assert_eq!(job.last_error.as_deref(), Some("Clerk API answered 429"));

    make_jobs_due(&app.store).await;
    assert_eq!(step_worker(&app.store, &clerk).await, Outcome::Done);
    let job = jobs(&app.store).await.remove(0);
    assert_eq!((job.status.as_str(), job.attempts), ("done", 3));
    assert_eq!(clerk.requests().len(), 3);
}

async fn permanent_refusal_is_dead_at_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let clerk = FakeClerk::start().await;
    clerk.script(&[404]);
    let app = TestApp::spawn_with(&db, clerk_opts(&clerk)).await;
    status_json(
        app.post_webhook("msg_1", &fixture("clerk-user-created.json"))
            .await,
    )
    .await;

    assert_eq!(step_worker(&app.store, &clerk).await, Outcome::Dead);
    make_jobs_due(&app.store).await;
    assert_eq!(
        step_worker(&app.store, &clerk).await,
        Outcome::Empty,
        "dead jobs are not retried"
    );
    let job = jobs(&app.store).await.remove(0);
    assert_eq!(job.status, "dead");
    let error = job.last_error.unwrap();
    assert!(
        error.starts_with("permanent: Clerk API answered 404 without Clerk's error body"),
        "{error}"
    );
}

async fn pending_after_restart_then_delivered_by_the_serve_worker(backend: Backend) {
    let db = TestDb::new(backend).await;
    let clerk = FakeClerk::start().await;
    // First run: no CLERK_SECRET_KEY, so the job waits.
    let first = TestApp::spawn(&db).await;
    status_json(
        first
            .post_webhook("msg_1", &fixture("clerk-user-created.json"))
            .await,
    )
    .await;
    first.stop().await;
    let store = db.store().await;
    assert_eq!(jobs(&store).await[0].status, "pending");

    // Second run, with the key and the worker running inside serve.
    let second = TestApp::spawn_with(
        &db,
        AppOptions {
            run_worker: true,
            ..clerk_opts(&clerk)
        },
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while jobs(&store).await[0].status != "done" {
        assert!(
            Instant::now() < deadline,
            "the worker did not deliver the job"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    assert_eq!(clerk.requests().len(), 1);
    second.stop().await;
}
