//! `clerk-sync reconcile` against a fake Clerk that serves its user list in Clerk's shape
//! and pages: missing users provisioned once, stale ones updated, deleted ones reported;
//! an interrupted pass resumed; users created and deleted mid-scan; webhooks racing it.

use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::*;

both_backends!(
    one_pass_provisions_the_missing_updates_the_stale_and_reports_the_deleted,
    an_interrupted_pass_resumes_and_users_changing_mid_scan_are_neither_skipped_nor_doubled,
    webhooks_racing_a_pass_give_one_user_and_one_bonus,
    serve_reconciles_on_its_interval_one_replica_at_a_time,
    a_pass_killed_mid_page_and_run_again_ends_in_the_same_state,
    six_hundred_users_of_one_millisecond_are_all_reconciled_once,
    a_scan_that_does_not_advance_is_never_reported_complete,
    delete_refuses_to_empty_the_database,
    a_dead_metadata_job_is_healed_and_a_foreign_user_id_reported,
    a_key_of_another_instance_is_refused_before_anything_changes,
);

/// Issue #31: the key belongs to another Clerk instance than the applied webhooks: the
/// pass refuses at once, naming both instances; nothing is listed, created or deleted.
async fn a_key_of_another_instance_is_refused_before_anything_changes(backend: Backend) {
    let db = TestDb::new(backend).await;
    let clerk = FakeClerk::start().await;
    let app = TestApp::spawn(&db).await;
    let (s, _) = status_json(
        app.post_webhook("msg_here", &fixture("clerk-user-created.json"))
            .await,
    )
    .await;
    assert_eq!(s, 200);
    for i in 0..3 {
        clerk.add_user(clerk_user(i));
    }
    clerk.set_instance("ins_2someOtherInstance00000000");
    let (ok, out, err) = reconcile(&db, &clerk, &["--delete", "--allow-mass-delete"]);
    assert!(!ok, "{out}{err}");
    assert!(
        err.contains("ins_2someOtherInstance00000000") && err.contains(FIXTURE_INSTANCE),
        "{err}"
    );
    assert_eq!(
        users(&app.store).await.len(),
        1,
        "nothing created or deleted"
    );
    assert!(!clerk.requests().iter().any(|r| r.path == "/v1/users"));

    // The instance of the webhooks: the pass runs.
    clerk.set_instance(FIXTURE_INSTANCE);
    let (ok, out, err) = reconcile(&db, &clerk, &["--json"]);
    assert!(ok, "{out}{err}");
    assert_eq!(summary(&out)["created"], 3);
}

/// Issue #31: a metadata job that died (Clerk refused it) leaves Clerk without
/// `public_metadata.userId`; reconcile sees it missing, revives the job, and the worker
/// delivers it. A user whose Clerk metadata names another id is reported, not changed.
async fn a_dead_metadata_job_is_healed_and_a_foreign_user_id_reported(backend: Backend) {
    let db = TestDb::new(backend).await;
    let clerk = FakeClerk::start().await;
    let app = TestApp::spawn_with(&db, clerk.app_options()).await;
    let mut healed = clerk_user(1);
    healed["id"] = json!("user_healed");
    let mut foreign = clerk_user(2);
    foreign["id"] = json!("user_foreign");
    foreign["public_metadata"] = json!({"userId": "c_from_another_database"});
    for user in [&healed, &foreign] {
        let (s, _) = status_json(
            app.post_webhook(
                &format!("msg_{}", user["id"].as_str().unwrap()),
                &created_event(user),
            )
            .await,
        )
        .await;
        assert_eq!(s, 200);
        clerk.add_user(user.clone());
    }
    // Both jobs die: Clerk refuses them for good.
    clerk.script(&[400, 400]);
    for _ in 0..2 {
        assert_eq!(
            step_worker(&app.store, &clerk).await,
            clerk_sync::outbox::worker::Outcome::Dead
        );
    }

    let (ok, out, err) = reconcile(&db, &clerk, &["--json"]);
    assert!(ok, "{out}{err}");
    let report = summary(&out);
    assert_eq!(report["metadataRequeued"], 1, "{report}");
    let local_foreign = users(&app.store)
        .await
        .into_iter()
        .find(|u| u.clerk_id == "user_foreign")
        .unwrap();
    assert_eq!(
        report["metadataConflicts"],
        json!([format!(
            "user_foreign: Clerk's public_metadata.userId is c_from_another_database, here {}",
            local_foreign.id
        )]),
        "{report}"
    );
    let jobs_now = jobs(&app.store).await;
    let status_of = |clerk_id: &str| {
        jobs_now
            .iter()
            .find(|j| j.payload.0["clerkId"] == clerk_id)
            .map(|j| (j.status.clone(), j.attempts))
            .unwrap()
    };
    assert_eq!(status_of("user_healed"), ("pending".to_owned(), 0));
    assert_eq!(status_of("user_foreign").0, "dead", "left alone");
    assert_eq!(jobs_now.len(), 2, "revived, not queued twice");

    // The worker delivers it; the next pass finds Clerk whole.
    assert_eq!(
        step_worker(&app.store, &clerk).await,
        clerk_sync::outbox::worker::Outcome::Done
    );
    let local_healed = users(&app.store)
        .await
        .into_iter()
        .find(|u| u.clerk_id == "user_healed")
        .unwrap();
    let (ok, out, err) = reconcile(&db, &clerk, &["--json"]);
    assert!(ok, "{out}{err}");
    assert_eq!(summary(&out)["metadataRequeued"], 0);
    let patched = clerk
        .requests()
        .into_iter()
        .filter(|r| r.path == "/v1/users/user_healed/metadata" && r.status == 200)
        .map(|r| r.body)
        .collect::<Vec<_>>();
    assert_eq!(
        patched,
        vec![json!({"public_metadata": {"userId": local_healed.id}})]
    );
}

/// Issue #31: a key of another Clerk instance (a Clerk that has none of these users) makes
/// every local user look deleted: `--delete` deletes nothing and exits 1 saying why;
/// `--allow-mass-delete` is the operator's explicit yes.
async fn delete_refuses_to_empty_the_database(backend: Backend) {
    let db = TestDb::new(backend).await;
    let clerk = FakeClerk::start().await;
    let app = TestApp::spawn(&db).await;
    for i in 0..5 {
        let (s, _) = status_json(
            app.post_webhook(&format!("msg_{i}"), &created_for(&format!("local{i}")))
                .await,
        )
        .await;
        assert_eq!(s, 200);
    }
    let (ok, out, err) = reconcile(&db, &clerk, &["--delete"]);
    assert!(!ok, "{out}{err}");
    assert!(
        err.contains("Clerk lacks 5 of the 5 local users") && err.contains("--allow-mass-delete"),
        "{err}"
    );
    assert_eq!(users(&app.store).await.len(), 5, "nobody deleted");

    // One user really deleted in Clerk is within the share.
    for i in 1..5 {
        let mut user = clerk_user(i);
        user["id"] = json!(format!("user_local{i}"));
        user["email_addresses"][0]["email_address"] = json!(format!("local{i}@example.org"));
        clerk.add_user(user);
    }
    let (ok, out, err) = reconcile(&db, &clerk, &["--delete", "--json"]);
    assert!(ok, "{out}{err}");
    assert_eq!(summary(&out)["deleted"], 1);
    assert_eq!(users(&app.store).await.len(), 4);

    clerk.delete_user("user_local1");
    clerk.delete_user("user_local2");
    let (ok, _, _) = reconcile(&db, &clerk, &["--delete"]);
    assert!(!ok, "2 of 4 is more than the share");
    let (ok, out, err) = reconcile(&db, &clerk, &["--delete", "--allow-mass-delete", "--json"]);
    assert!(ok, "{out}{err}");
    assert_eq!(summary(&out)["deleted"], 2);
    assert_eq!(users(&app.store).await.len(), 2);
}

/// A list that does not move past its first page (a Clerk that ignores the cursor): the
/// pass fails, saying so; it neither finishes nor looks for deleted users, so `--delete`
/// deletes nothing.
async fn a_scan_that_does_not_advance_is_never_reported_complete(backend: Backend) {
    let db = TestDb::new(backend).await;
    let clerk = FakeClerk::start().await;
    clerk.ignore_starting_after();
    let app = one_local_user_and_600_clerk_users_of_one_millisecond(&db, &clerk).await;
    let (ok, out, err) = reconcile(&db, &clerk, &["--delete"]);
    assert!(!ok, "a stalled scan exited 0: {out}{err}");
    assert!(
        format!("{out}{err}").contains("did not advance"),
        "{out}{err}"
    );
    let all = users(&app.store).await;
    assert_eq!(all.len(), 501, "the first page applied, nobody deleted");
    assert!(all.iter().any(|u| u.clerk_id == "user_gone"));
    assert!(
        !clerk
            .requests()
            .iter()
            .any(|r| r.path == "/v1/users/user_gone"),
        "the deleted-user check ran on an incomplete scan"
    );
}

/// A local user Clerk no longer has (`user_gone`: only a complete scan may report it),
/// and 600 Clerk users created in one millisecond (imports set `created_at`).
async fn one_local_user_and_600_clerk_users_of_one_millisecond(
    db: &TestDb,
    clerk: &FakeClerk,
) -> TestApp {
    let app = TestApp::spawn(db).await;
    let (s, _) = status_json(app.post_webhook("msg_gone", &created_for("gone")).await).await;
    assert_eq!(s, 200);
    for i in 0..600 {
        let mut user = clerk_user(i);
        user["created_at"] = json!(T0);
        user["updated_at"] = json!(T0);
        clerk.add_user(user);
    }
    app
}

/// Imports set `created_at`: 600 users created in one millisecond, more than a page.
/// Clerk's `starting_after` cursor pages through them all; the pass is complete (the
/// deleted-user check runs and finds the one local user Clerk lacks), and a second pass
/// changes nothing.
async fn six_hundred_users_of_one_millisecond_are_all_reconciled_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let clerk = FakeClerk::start().await;
    let app = one_local_user_and_600_clerk_users_of_one_millisecond(&db, &clerk).await;
    let (ok, out, err) = reconcile(&db, &clerk, &["--json"]);
    assert!(ok, "{out}{err}");
    let first = summary(&out);
    assert_eq!(first["created"], 600, "{first}");
    assert_eq!(first["scanned"], 600, "{first}");
    assert_eq!(first["pages"], 2, "{first}");
    assert_eq!(first["deletedInClerk"], json!(["user_gone"]), "{first}");
    let all = users(&app.store).await;
    let ids: std::collections::HashSet<&str> = all.iter().map(|u| u.clerk_id.as_str()).collect();
    assert_eq!((all.len(), ids.len()), (601, 601));
    assert_eq!(ledger(&app.store).await.len(), 601, "one bonus each");
    let pages: Vec<String> = clerk
        .requests()
        .iter()
        .filter(|r| r.path == "/v1/users" && r.method == "GET")
        .map(|r| r.status.to_string())
        .collect();
    assert_eq!(pages, vec!["200", "200"], "two pages, no error");

    let (ok, out, err) = reconcile(&db, &clerk, &["--json"]);
    assert!(ok, "{out}{err}");
    let second = summary(&out);
    assert_eq!(
        (second["created"].clone(), second["unchanged"].clone()),
        (json!(0), json!(600)),
        "{second}"
    );
}

/// kill -9 in the middle of a page (some of its users applied, its cursor not yet saved),
/// then run again: the same end state, no user twice, no second bonus.
async fn a_pass_killed_mid_page_and_run_again_ends_in_the_same_state(backend: Backend) {
    let db = TestDb::new(backend).await;
    let clerk = FakeClerk::start().await;
    let app = TestApp::spawn(&db).await;
    for i in 0..800 {
        clerk.add_user(clerk_user(i));
    }
    let mut pass = reconcile_command(&db, &clerk, &[])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let n = users(&app.store).await.len();
        if n >= 100 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the pass made no progress"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    pass.kill().await.unwrap();
    let partial = users(&app.store).await.len();
    assert!(partial < 800, "killed before the end: {partial}");

    let (ok, out, err) = reconcile(&db, &clerk, &["--json"]);
    assert!(ok, "{out}{err}");
    let all = users(&app.store).await;
    let ids: std::collections::HashSet<&str> = all.iter().map(|u| u.clerk_id.as_str()).collect();
    assert_eq!((all.len(), ids.len()), (800, 800), "every user, none twice");
    assert_eq!(ledger(&app.store).await.len(), 800, "no second bonus");
    assert_eq!(jobs(&app.store).await.len(), 800);
    assert_ledger_adds_up(&app.store).await;
}

/// A labelled metric, or 0 before it was first counted.
async fn counted(app: &TestApp, name: &str) -> f64 {
    let text = app.get("/metrics").await.text().await.unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Two replicas with `RECONCILE_INTERVAL=1s`: the users webhooks missed appear without
/// anyone running a command, each once; the lease lets one replica at a time run a pass.
async fn serve_reconciles_on_its_interval_one_replica_at_a_time(backend: Backend) {
    let db = TestDb::new(backend).await;
    let clerk = FakeClerk::start().await;
    let opts = AppOptions {
        clerk_api_url: Some(clerk.url.clone()),
        clerk_secret_key: Some(FakeClerk::KEY.to_owned()),
        reconcile_interval: Some("1s".into()),
        ..AppOptions::default()
    };
    let a = TestApp::spawn_with(&db, opts.clone()).await;
    for i in 0..30 {
        let user = clerk_user(i);
        if i < 10 {
            let (s, _) = status_json(
                a.post_webhook(&format!("msg_sv{i}"), &created_event(&user))
                    .await,
            )
            .await;
            assert_eq!(s, 200);
        }
        clerk.add_user(user);
    }
    let b = TestApp::spawn_with(&db, opts).await;

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while users(&a.store).await.len() < 30 {
        assert!(std::time::Instant::now() < deadline, "not reconciled");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Let a few more passes run: they change nothing.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let created = counted(
        &a,
        r#"clerk_sync_reconciled_users_total{outcome="created"}"#,
    )
    .await
        + counted(
            &b,
            r#"clerk_sync_reconciled_users_total{outcome="created"}"#,
        )
        .await;
    assert_eq!(
        created, 20.0,
        "each missing user created once, by one replica"
    );
    let done = counted(&a, r#"clerk_sync_reconcile_passes_total{outcome="done"}"#).await
        + counted(&b, r#"clerk_sync_reconcile_passes_total{outcome="done"}"#).await;
    assert!(done >= 2.0, "{done} passes");
    let last = counted(&a, "clerk_sync_reconcile_last_success_timestamp_seconds")
        .await
        .max(counted(&b, "clerk_sync_reconcile_last_success_timestamp_seconds").await);
    assert!(last > 1.7e9, "{last}");
    assert_eq!(ledger(&a.store).await.len(), 30, "one bonus each");
    assert_ledger_adds_up(&a.store).await;

    // The lease itself: held, refused to another, released, taken.
    let hold = std::time::Duration::from_secs(60);
    let store = db.store().await;
    use clerk_sync::reconcile::{release_lease, take_lease};
    a.stop().await;
    b.stop().await;
    assert!(take_lease(&store, "one", hold).await.unwrap());
    assert!(!take_lease(&store, "two", hold).await.unwrap());
    assert!(
        take_lease(&store, "one", hold).await.unwrap(),
        "renewed by its holder"
    );
    release_lease(&store, "one").await.unwrap();
    assert!(take_lease(&store, "two", hold).await.unwrap());
}

const T0: i64 = 1_700_000_000_000;

/// Clerk user `i`: created at `T0 + i / 2` seconds, so pairs share a millisecond and
/// straddle page boundaries.
fn clerk_user(i: usize) -> Value {
    let mut user = fixture_json("clerk-user-created.json")["data"].clone();
    let created = T0 + (i as i64 / 2) * 1000;
    user["id"] = json!(format!("user_rc{i}"));
    user["email_addresses"][0]["email_address"] = json!(format!("rc{i}@example.org"));
    user["created_at"] = json!(created);
    user["updated_at"] = json!(created);
    user
}

fn created_event(user: &Value) -> Vec<u8> {
    let mut event = fixture_json("clerk-user-created.json");
    event["data"] = user.clone();
    serde_json::to_vec(&event).unwrap()
}

/// `clerk-sync reconcile` against `db` and the fake Clerk, at 100 requests per second.
fn reconcile_command(db: &TestDb, clerk: &FakeClerk, extra: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_clerk-sync"));
    command
        .args([
            "reconcile",
            "--database-url",
            &db.url,
            "--clerk-api-url",
            &clerk.url,
            "--clerk-secret-key",
            FakeClerk::KEY,
            "--rate",
            "100",
        ])
        .args(extra)
        .env_remove("DIRECT_URL");
    command
}

/// Run a pass to its end: (success, stdout, stderr).
fn reconcile(db: &TestDb, clerk: &FakeClerk, extra: &[&str]) -> (bool, String, String) {
    let out = reconcile_command(db, clerk, extra)
        .as_std_mut()
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn summary(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

async fn one_pass_provisions_the_missing_updates_the_stale_and_reports_the_deleted(
    backend: Backend,
) {
    let db = TestDb::new(backend).await;
    let clerk = FakeClerk::start().await;
    let app = TestApp::spawn(&db).await;
    // 1,000 users in Clerk. 700 are here already (their user.created arrived), 20 of them
    // since deleted in Clerk; 300 of Clerk's never arrived; 50 changed in Clerk after.
    for i in 0..1000 {
        let user = clerk_user(i);
        if i < 700 {
            let (s, _) = status_json(
                app.post_webhook(&format!("msg_rc{i}"), &created_event(&user))
                    .await,
            )
            .await;
            assert_eq!(s, 200);
        }
        let mut now = user.clone();
        if (100..150).contains(&i) {
            now["updated_at"] = json!(user["updated_at"].as_i64().unwrap() + 500);
            now["last_name"] = json!("Newer");
        }
        if !(600..620).contains(&i) {
            clerk.add_user(now);
        }
    }

    let (ok, out, err) = reconcile(&db, &clerk, &["--dry-run", "--json"]);
    assert!(ok, "{out}{err}");
    let dry = summary(&out);
    assert_eq!(
        (dry["created"].as_u64(), dry["updated"].as_u64()),
        (Some(300), Some(50))
    );
    assert_eq!(
        users(&app.store).await.len(),
        700,
        "a dry run changes nothing"
    );

    let (ok, out, err) = reconcile(&db, &clerk, &["--json"]);
    assert!(ok, "{out}{err}");
    let first = summary(&out);
    assert_eq!(first["scanned"], 980);
    assert_eq!(first["clerkTotal"], 980, "the count a terminal's ETA uses");
    assert_eq!(first["created"], 300);
    assert_eq!(first["updated"], 50);
    assert_eq!(first["unchanged"], 630);
    assert_eq!(first["deletedInClerk"].as_array().unwrap().len(), 20);
    assert_eq!(first["deleted"], 0);
    assert!(first["deletedInClerk"]
        .as_array()
        .unwrap()
        .contains(&json!("user_rc600")));

    let all = users(&app.store).await;
    assert_eq!(all.len(), 1000, "980 in Clerk + 20 only reported");
    let newer = all
        .iter()
        .filter(|u| u.last_name.as_deref() == Some("Newer"));
    assert_eq!(newer.count(), 50);
    let bonuses = ledger(&app.store)
        .await
        .into_iter()
        .filter(|t| t.reason.as_deref() == Some("signup_bonus"))
        .count();
    assert_eq!(bonuses, 1000, "one bonus per user, none twice");
    assert_eq!(
        jobs(&app.store).await.len(),
        1000,
        "a metadata job per user"
    );
    assert_ledger_adds_up(&app.store).await;

    // The second pass changes nothing, and says so.
    let (ok, out, err) = reconcile(&db, &clerk, &[]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("nothing to change"), "{out}");
    assert!(out.contains("unchanged: 980"), "{out}");
    assert!(
        out.contains("deleted in Clerk but still here: 20 (run with --delete"),
        "{out}"
    );

    // --delete removes them (their ledger rows stay).
    let (ok, out, err) = reconcile(&db, &clerk, &["--delete", "--json"]);
    assert!(ok, "{out}{err}");
    assert_eq!(summary(&out)["deleted"], 20);
    assert_eq!(users(&app.store).await.len(), 980);
    assert_ledger_adds_up(&app.store).await;
}

async fn an_interrupted_pass_resumes_and_users_changing_mid_scan_are_neither_skipped_nor_doubled(
    backend: Backend,
) {
    let db = TestDb::new(backend).await;
    let clerk = FakeClerk::start().await;
    let app = TestApp::spawn(&db).await;
    for i in 0..1200 {
        clerk.add_user(clerk_user(i));
    }
    // After the first page: a user is created and one not yet listed is deleted.
    let mut late = clerk_user(5000);
    late["created_at"] = json!(T0 + 10_000_000);
    clerk.on_list_call(1, ListMutation::Add(late));
    clerk.on_list_call(1, ListMutation::Remove("user_rc900".into()));
    // The pass stops at its second page: Clerk refuses it (as a process killed there).
    // The calls: the user count, page 1, page 2.
    clerk.script(&[200, 200, 400]);
    let (ok, out, err) = reconcile(&db, &clerk, &["--json"]);
    assert!(!ok, "{out}");
    assert!(err.contains("Clerk API"), "{err}");
    assert_eq!(users(&app.store).await.len(), 500, "the first page, kept");

    let (ok, out, err) = reconcile(&db, &clerk, &["--json"]);
    assert!(ok, "{out}{err}");
    let resumed = summary(&out);
    assert!(resumed["resumedFrom"].is_i64(), "{resumed}");
    let all = users(&app.store).await;
    let ids: std::collections::HashSet<&str> = all.iter().map(|u| u.clerk_id.as_str()).collect();
    assert_eq!(ids.len(), all.len(), "no user twice");
    assert_eq!(all.len(), 1200, "1,200 − user_rc900 + user_rc5000");
    assert!(ids.contains("user_rc5000") && !ids.contains("user_rc900"));
    for i in (0..1200).filter(|i| *i != 900) {
        assert!(
            ids.contains(format!("user_rc{i}").as_str()),
            "user_rc{i} skipped"
        );
    }
    let bonuses = ledger(&app.store).await.len();
    assert_eq!(bonuses, 1200, "no second bonus");

    // A complete pass afterwards changes nothing.
    let (ok, out, err) = reconcile(&db, &clerk, &["--json"]);
    assert!(ok, "{out}{err}");
    let again = summary(&out);
    assert_eq!(
        (again["created"].as_u64(), again["updated"].as_u64()),
        (Some(0), Some(0))
    );
    assert_ledger_adds_up(&app.store).await;
}

async fn webhooks_racing_a_pass_give_one_user_and_one_bonus(backend: Backend) {
    let db = TestDb::new(backend).await;
    let clerk = FakeClerk::start().await;
    let app = TestApp::spawn(&db).await;
    let users_in_clerk: Vec<Value> = (0..300).map(clerk_user).collect();
    for u in &users_in_clerk {
        clerk.add_user(u.clone());
    }
    let pass = reconcile_command(&db, &clerk, &["--json"]).output();
    let hooks = async {
        for (i, u) in users_in_clerk.iter().enumerate().rev() {
            let (s, _) = status_json(
                app.post_webhook(&format!("msg_race{i}"), &created_event(u))
                    .await,
            )
            .await;
            assert_eq!(s, 200);
        }
    };
    let (out, ()) = tokio::join!(pass, hooks);
    let out = out.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all = users(&app.store).await;
    assert_eq!(all.len(), 300);
    let bonuses = ledger(&app.store).await;
    assert_eq!(bonuses.len(), 300, "one bonus each");
    assert_eq!(jobs(&app.store).await.len(), 300);
    assert_ledger_adds_up(&app.store).await;
}
