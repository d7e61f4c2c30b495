//! `clerk-sync replay`: webhooks recorded `failed` while the schema refused them are
//! applied once it is fixed, through the path a delivery takes, and never twice.

use serde_json::{json, Value};

use crate::both_backends;
use crate::diagnose::{clerk_sync, not_null_plan_column};
use crate::helpers::*;

both_backends!(failed_signups_are_replayed_once_the_schema_is_fixed);

async fn failed_signups_are_replayed_once_the_schema_is_fixed(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    // The seed's failure class: another writer adds a NOT NULL column without a default.
    let (broken, fixed) = not_null_plan_column(backend);
    db.exec(&broken).await;

    for (msg, name) in [("msg_r1", "ada"), ("msg_r2", "bob")] {
        let (s, b) = status_json(app.post_webhook(msg, &created_for(name)).await).await;
        assert_eq!(
            (s, b["error"].as_str()),
            (500, Some("constraint_violation")),
            "{b}"
        );
    }
    let (s, _) = status_json(app.post_webhook("msg_r3", b"{not json").await).await;
    assert_eq!(s, 200);
    let failed = |events: &[EventRow]| {
        events
            .iter()
            .filter(|e| e.status.as_deref() == Some("failed"))
            .count()
    };
    assert_eq!(failed(&events(&app.store).await), 3);

    // A dry run lists and changes nothing.
    let (ok, out, err) = clerk_sync(&["replay", "--dry-run", "--database-url", &db.url]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("would replay msg_r1 (user.created)"), "{out}");
    assert!(out.contains("2 event(s) would be replayed"), "{out}");
    assert!(
        out.contains("1 failed event(s) have no stored payload"),
        "{out}"
    );
    assert!(users(&app.store).await.is_empty());

    db.exec(&fixed).await;

    // One event by its svix-id.
    let (ok, out, err) = clerk_sync(&[
        "replay",
        "--svix-id",
        "msg_r1",
        "--json",
        "--database-url",
        &db.url,
    ]);
    assert!(ok, "{out}{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        report["events"],
        json!([{"svixId": "msg_r1", "eventType": "user.created", "status": "processed",
                "detail": "created", "was": report["events"][0]["was"]}])
    );
    assert!(report["events"][0]["was"]
        .as_str()
        .unwrap()
        .contains("plan"));
    let ada = users(&app.store).await;
    assert_eq!(ada.len(), 1);
    assert_eq!(
        (ada[0].clerk_id.as_str(), ada[0].available),
        ("user_ada", 20)
    );

    // Then the rest; then nothing is left.
    let (ok, out, err) = clerk_sync(&["replay", "--database-url", &db.url]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("msg_r2 (user.created): failed → processed (created)"),
        "{out}"
    );
    assert!(out.contains("replayed: processed 1"), "{out}");
    let (ok, out, _) = clerk_sync(&["replay", "--database-url", &db.url]);
    assert!(ok && out.contains("replayed: nothing to replay"), "{out}");

    assert_eq!(users(&app.store).await.len(), 2);
    let bonuses = ledger(&app.store).await;
    assert_eq!(bonuses.len(), 2, "one signup bonus each");
    assert_eq!(jobs(&app.store).await.len(), 2);
    let events = events(&app.store).await;
    assert_eq!(failed(&events), 1, "only the body that was not JSON");
    assert_ledger_adds_up(&app.store).await;
}
