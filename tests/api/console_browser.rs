//! The console in headless Chromium (`tests/browser/console.py`, Selenium and Debian's
//! chromium + chromedriver, installed by `scripts/test` into `target/browser-tools`):
//! log in, replay a failed event, retry a dead job against the fake Clerk, page through a
//! ledger, read the health page, see a forged form refused. The database is checked after.
//! Screenshots: `target/browser-screenshots/<backend>/`.

use serde_json::json;

use crate::both_backends;
use crate::diagnose::not_null_plan_column;
use crate::helpers::*;

both_backends!(the_console_works_in_a_browser);

async fn the_console_works_in_a_browser(backend: Backend) {
    let root = env!("CARGO_MANIFEST_DIR");
    let python = format!("{root}/target/browser-tools/bin/python");
    assert!(
        std::path::Path::new(&python).exists(),
        "{python} is missing: scripts/test installs Selenium there (tests/browser/requirements.txt)"
    );
    for tool in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        assert!(
            std::path::Path::new(tool).exists(),
            "{tool} is missing: scripts/test installs Debian's chromium and chromium-driver"
        );
    }

    let db = TestDb::new(backend).await;
    let clerk = FakeClerk::start().await;
    let app = TestApp::spawn_with(
        &db,
        AppOptions {
            clerk_api_url: Some(clerk.url.clone()),
            clerk_secret_key: Some(FakeClerk::KEY.to_owned()),
            run_worker: true,
            ..AppOptions::default()
        },
    )
    .await;

    // A failed signup (first, while "User" is empty): the seed's failure class, then
    // the schema fixed.
    let (broken, fixed) = not_null_plan_column(backend);
    db.exec(&broken).await;
    let (s, _) = status_json(
        app.post_webhook("msg_b_failed", &created_for("browser_failed"))
            .await,
    )
    .await;
    assert_eq!(s, 500);
    db.exec(&fixed).await;

    // A user with a ledger of 25 rows (the signup bonus and 24 grants): three pages of 10.
    app.post_webhook("msg_b_user", &created_for("browser_ledger"))
        .await;
    for i in 0..24 {
        let (s, _) = app
            .api(
                reqwest::Method::POST,
                "/v1/users/user_browser_ledger/credits/grant",
                Some(json!({"amount": 1, "kind": "grant", "idempotencyKey": format!("g{i}")})),
            )
            .await;
        assert_eq!(s, 200);
    }
    // Its metadata job goes through; a dead one: Clerk refuses the next user's for good.
    wait_for_metric(&app, "clerk_sync_outbox_jobs_total{outcome=\"done\"}", 1.0).await;
    clerk.script(&[400]);
    app.post_webhook("msg_b_dead", &created_for("browser_dead"))
        .await;
    wait_for_metric(&app, "clerk_sync_outbox_jobs_total{outcome=\"dead\"}", 1.0).await;
    let dead = jobs(&app.store)
        .await
        .into_iter()
        .find(|j| j.status == "dead")
        .expect("a dead job");

    let out = format!(
        "{root}/target/browser-screenshots/{}",
        match backend {
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
        }
    );
    let result = tokio::process::Command::new(&python)
        .arg(format!("{root}/tests/browser/console.py"))
        .args(["--url", &app.address])
        .args(["--key", ADMIN_KEY])
        .args(["--failed-event", "msg_b_failed"])
        .args(["--email", "browser_failed@example.org"])
        .args(["--masked", "b***@example.org"])
        .args(["--dead-job", &dead.id])
        .args(["--user", "user_browser_ledger"])
        .args(["--ledger-rows", "25"])
        .args(["--out", &out])
        .output()
        .await
        .expect("run the browser script");
    let stdout = String::from_utf8_lossy(&result.stdout);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.matches("ok: ").count() >= 20, "{stdout}");

    // What the browser did is in the database.
    let all = users(&app.store).await;
    assert!(
        all.iter().any(|u| u.clerk_id == "user_browser_failed"),
        "the replayed signup created its user"
    );
    let replayed = events(&app.store)
        .await
        .into_iter()
        .find(|e| e.event_id == "msg_b_failed")
        .unwrap();
    assert_eq!(replayed.status.as_deref(), Some("processed"));
    let retried = jobs(&app.store)
        .await
        .into_iter()
        .find(|j| j.id == dead.id)
        .unwrap();
    assert_eq!(retried.status, "done", "the retried job was delivered");
    assert_eq!(clerk.applied_patches("user_browser_dead"), 1);
    assert_eq!(
        metric(
            &app,
            "clerk_sync_replayed_events_total{outcome=\"processed\"}"
        )
        .await,
        1.0
    );
    for page in ["events", "event-failed", "outbox-dead", "user", "health"] {
        assert!(
            std::path::Path::new(&format!("{out}/{page}.png")).exists(),
            "screenshot {page}"
        );
    }
    app.stop().await;
}
