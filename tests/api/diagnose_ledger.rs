//! `clerk-sync diagnose` on the ledger: rows that do not add up, balances changed by
//! another writer, and the trigger that records them.

use crate::both_backends;
use crate::diagnose::{
    break_and_repair, clerk_sync, database_with_a_user, diagnose_json, problems, Repair,
};
use crate::helpers::*;

both_backends!(
    ledger_that_does_not_add_up,
    direct_column_changes_are_recorded_in_the_ledger,
    missing_ledger_trigger,
);

const CLERK_ID: &str = "user_29w83sxmDNGwOuEthce5gg56FcC";

/// A ledger row that moved no column (the app recorded a purchase but never granted the
/// credits): named by Clerk id with the row, and no fix is called safe.
async fn ledger_that_does_not_add_up(backend: Backend) {
    let purchase = r#"INSERT INTO "Transaction" ("id", "tracking_id", "userId", "status", "amount", "type", "reason")
        SELECT 'tx_app_purchase', 'pi_123', "id", 'completed', 100, 'credit', 'purchase' FROM "User""#;
    let db = break_and_repair(
        backend,
        purchase,
        purchase,
        &[
            &format!("{CLERK_ID}: balance 20, ledger 120 (ledger - balance = 100)"),
            "rows written by another writer: tx_app_purchase (purchase 100)",
            "'adjustment'",
        ],
        Repair::PrintedSql,
    )
    .await;
    let store = db.store().await;
    let rows = ledger(&store).await;
    assert!(
        rows.iter().any(|t| t.id == "tx_app_purchase"),
        "the app's row is never rewritten"
    );
    let adjustments: Vec<&LedgerRow> = rows
        .iter()
        .filter(|t| t.reason.as_deref() == Some("adjustment"))
        .collect();
    assert_eq!(adjustments.len(), 1, "only the reviewed fix appended a row");
    assert_eq!(
        (adjustments[0].kind.as_deref(), adjustments[0].amount),
        (Some("debit"), Some(100))
    );
    assert_ledger_adds_up(&store).await;
}

/// The app spends and grants by changing the columns itself, as the seed app did: the
/// ledger trigger records each change, `diagnose` passes and says so, and the credits API
/// shows the balance.
async fn direct_column_changes_are_recorded_in_the_ledger(backend: Backend) {
    let db = database_with_a_user(backend).await;
    db.exec(r#"UPDATE "User" SET "usedGenerations" = "usedGenerations" + 1"#)
        .await;
    db.exec(r#"UPDATE "User" SET "usedGenerations" = "usedGenerations" + 2, "firstName" = 'X'"#)
        .await;
    db.exec(r#"UPDATE "User" SET "firstName" = 'Y'"#).await;
    // An app that writes its own row and then changes the columns, in one transaction.
    db.exec(
        r#"BEGIN;
        INSERT INTO "Transaction" ("id", "tracking_id", "userId", "status", "amount", "type", "reason")
            SELECT 'tx_app_purchase', 'pi_1', "id", 'completed', 50, 'credit', 'purchase' FROM "User";
        UPDATE "User" SET "availableGenerations" = "availableGenerations" + 50;
        COMMIT;"#,
    )
    .await;

    let (ok, report) = diagnose_json(&db);
    assert!(ok, "{}", problems(&report));
    let step = &report["steps"][9];
    assert_eq!(step["status"], "pass");
    assert!(
        step["summary"]
            .as_str()
            .unwrap()
            .contains("2 direct change(s) by another writer recorded"),
        "{step}"
    );
    let store = db.store().await;
    let direct: Vec<(Option<String>, Option<i32>, Option<i32>)> = ledger(&store)
        .await
        .into_iter()
        .filter(|t| t.reason.as_deref() == Some("direct_write"))
        .map(|t| (t.kind, t.amount, t.balance_after))
        .collect();
    assert_eq!(
        direct,
        vec![
            (Some("debit".into()), Some(1), Some(19)),
            (Some("debit".into()), Some(2), Some(17)),
        ]
    );
    assert_ledger_adds_up(&store).await;
    store.close().await;

    let app = TestApp::spawn(&db).await;
    assert_eq!(app.credits_of(CLERK_ID).await, (67, 3, 70));
    // clerk-sync's own movements are not recorded twice.
    let (s, b) = app
        .api(
            reqwest::Method::POST,
            &format!("/v1/users/{CLERK_ID}/credits/consume"),
            Some(serde_json::json!({"amount": 7, "idempotencyKey": "k1"})),
        )
        .await;
    assert_eq!((s, b["balanceAfter"].as_i64()), (200, Some(60)), "{b}");
    let rows = ledger(&app.store).await;
    assert_eq!(
        rows.iter()
            .filter(|t| t.reason.as_deref() == Some("direct_write"))
            .count(),
        2
    );
    assert_ledger_adds_up(&app.store).await;
}

async fn missing_ledger_trigger(backend: Backend) {
    break_and_repair(
        backend,
        r#"DROP TRIGGER "User_credits_ledger" ON "User""#,
        r#"DROP TRIGGER "User_credits_ledger""#,
        &[r#"the ledger trigger \"User_credits_ledger\" on \"User\" is missing"#],
        Repair::FixFlag,
    )
    .await;
    let db = database_with_a_user(backend).await;
    db.exec(match backend {
        Backend::Postgres => r#"DROP TRIGGER "User_credits_ledger" ON "User""#,
        Backend::Sqlite => r#"DROP TRIGGER "User_credits_ledger""#,
    })
    .await;
    let (ok, _, _) = clerk_sync(&["diagnose", "--fix", "--yes", "--database-url", &db.url]);
    assert!(ok);
    // Restored, it records the next direct change.
    db.exec(r#"UPDATE "User" SET "usedGenerations" = "usedGenerations" + 1"#)
        .await;
    let store = db.store().await;
    assert_ledger_adds_up(&store).await;
}
