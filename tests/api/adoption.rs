//! `clerk-sync migrate` adopts a database the seed's Prisma app already uses: the tables
//! as Prisma Migrate emits them (`updatedAt` NOT NULL without DEFAULT, `id` without
//! DEFAULT), with users and ledger rows in them.

use serde_json::json;

use crate::both_backends;
use crate::helpers::*;

both_backends!(migrate_adopts_the_prisma_database_without_touching_a_row);

/// The seed app's schema as `prisma migrate` writes it for PostgreSQL.
const PRISMA_POSTGRES: &str = r#"
CREATE TABLE "User" (
    "id" TEXT NOT NULL,
    "clerkId" TEXT NOT NULL,
    "email" TEXT NOT NULL,
    "photo" TEXT NOT NULL,
    "firstName" TEXT,
    "lastName" TEXT,
    "usedGenerations" INTEGER NOT NULL DEFAULT 0,
    "availableGenerations" INTEGER NOT NULL DEFAULT 20,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL,
    CONSTRAINT "User_pkey" PRIMARY KEY ("id")
);
CREATE TABLE "WebhookEvent" (
    "id" TEXT NOT NULL,
    "eventId" TEXT NOT NULL,
    "eventType" TEXT NOT NULL,
    "processed" BOOLEAN NOT NULL DEFAULT false,
    "processedAt" TIMESTAMP(3),
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    CONSTRAINT "WebhookEvent_pkey" PRIMARY KEY ("id")
);
CREATE TABLE "Transaction" (
    "id" TEXT NOT NULL,
    "tracking_id" TEXT NOT NULL,
    "userId" TEXT,
    "status" TEXT,
    "amount" INTEGER,
    "currency" TEXT,
    "description" TEXT,
    "type" TEXT,
    "payment_method_type" TEXT,
    "message" TEXT,
    "paid_at" TIMESTAMP(3),
    "receipt_url" TEXT,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "reason" TEXT,
    "webhookEventId" TEXT,
    CONSTRAINT "Transaction_pkey" PRIMARY KEY ("id")
);
CREATE UNIQUE INDEX "User_clerkId_key" ON "User"("clerkId");
CREATE UNIQUE INDEX "User_email_key" ON "User"("email");
CREATE UNIQUE INDEX "WebhookEvent_eventId_key" ON "WebhookEvent"("eventId");
CREATE UNIQUE INDEX "Transaction_webhookEventId_key" ON "Transaction"("webhookEventId");
"#;

/// The same schema as `prisma migrate` writes it for SQLite.
const PRISMA_SQLITE: &str = r#"
CREATE TABLE "User" (
    "id" TEXT NOT NULL PRIMARY KEY,
    "clerkId" TEXT NOT NULL,
    "email" TEXT NOT NULL,
    "photo" TEXT NOT NULL,
    "firstName" TEXT,
    "lastName" TEXT,
    "usedGenerations" INTEGER NOT NULL DEFAULT 0,
    "availableGenerations" INTEGER NOT NULL DEFAULT 20,
    "createdAt" DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" DATETIME NOT NULL
);
CREATE TABLE "WebhookEvent" (
    "id" TEXT NOT NULL PRIMARY KEY,
    "eventId" TEXT NOT NULL,
    "eventType" TEXT NOT NULL,
    "processed" BOOLEAN NOT NULL DEFAULT false,
    "processedAt" DATETIME,
    "createdAt" DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE "Transaction" (
    "id" TEXT NOT NULL PRIMARY KEY,
    "tracking_id" TEXT NOT NULL,
    "userId" TEXT,
    "status" TEXT,
    "amount" INTEGER,
    "currency" TEXT,
    "description" TEXT,
    "type" TEXT,
    "payment_method_type" TEXT,
    "message" TEXT,
    "paid_at" DATETIME,
    "receipt_url" TEXT,
    "createdAt" DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "reason" TEXT,
    "webhookEventId" TEXT
);
CREATE UNIQUE INDEX "User_clerkId_key" ON "User"("clerkId");
CREATE UNIQUE INDEX "User_email_key" ON "User"("email");
CREATE UNIQUE INDEX "WebhookEvent_eventId_key" ON "WebhookEvent"("eventId");
CREATE UNIQUE INDEX "Transaction_webhookEventId_key" ON "Transaction"("webhookEventId");
"#;

/// What the Prisma app wrote before clerk-sync: three users whose ledgers add up, fall
/// short, or are missing, and a webhook event keyed (wrongly) by the Clerk user id.
const EXISTING_ROWS: &str = r#"
INSERT INTO "User" ("id", "clerkId", "email", "photo", "firstName", "lastName", "usedGenerations", "availableGenerations", "createdAt", "updatedAt") VALUES
  ('cmh4xuw230000ml65kgdej2kx', 'user_alice', 'alice@example.com', 'https://img/a', 'Alice', NULL, 5, 20, '2025-10-20 10:00:00', '2025-10-21 10:00:00'),
  ('cmh4xuw230001ml65kgdej2ky', 'user_bob', 'bob@example.com', 'https://img/b', NULL, NULL, 10, 50, '2025-10-20 11:00:00', '2025-10-20 11:00:00'),
  ('cmh4xuw230002ml65kgdej2kz', 'user_carol', 'carol@example.com', 'https://img/c', 'Carol', 'C', 0, 20, '2025-10-20 12:00:00', '2025-10-20 12:00:00');
INSERT INTO "Transaction" ("id", "tracking_id", "userId", "status", "amount", "currency", "type", "reason", "webhookEventId", "createdAt") VALUES
  ('tx_alice_signup', 'user_alice', 'cmh4xuw230000ml65kgdej2kx', 'completed', 20, NULL, 'credit', 'signup_bonus', 'user_alice', '2025-10-20 10:00:00'),
  ('tx_carol_signup', 'user_carol', 'cmh4xuw230002ml65kgdej2kz', 'completed', 20, NULL, 'credit', 'signup_bonus', 'user_carol', '2025-10-20 12:00:00');
INSERT INTO "WebhookEvent" ("id", "eventId", "eventType", "processed", "processedAt", "createdAt") VALUES
  ('evt_old', 'user_alice', 'user.created', true, '2025-10-20 10:00:01', '2025-10-20 10:00:00');
"#;

async fn run_migrate(db: &TestDb) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_clerk-sync"))
        .args(["migrate", "--database-url", &db.url])
        .env_remove("DIRECT_URL")
        .env("LOG_FORMAT", "json")
        .output()
        .expect("run clerk-sync migrate");
    assert!(
        out.status.success(),
        "migrate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn migrate_adopts_the_prisma_database_without_touching_a_row(backend: Backend) {
    let db = TestDb::new(backend).await;
    db.exec(match backend {
        Backend::Postgres => PRISMA_POSTGRES,
        Backend::Sqlite => PRISMA_SQLITE,
    })
    .await;
    db.exec(EXISTING_ROWS).await;
    let store = db.store().await;
    let users_before = users(&store).await;
    let old_ledger_ids = ["tx_alice_signup", "tx_carol_signup"];

    let first = run_migrate(&db).await;
    assert!(first.contains("applied 8 migration(s)"), "{first}");

    assert_eq!(
        users(&store).await,
        users_before,
        "every old user row intact"
    );
    let ledger_after = ledger(&store).await;
    for id in old_ledger_ids {
        let row = ledger_after
            .iter()
            .find(|t| t.id == id)
            .expect("old ledger row kept");
        assert_eq!(
            (row.amount, row.kind.as_deref()),
            (Some(20), Some("credit"))
        );
    }
    let ev = events(&store).await;
    assert_eq!(ev.len(), 1);
    assert_eq!(
        (ev[0].event_id.as_str(), ev[0].processed),
        ("user_alice", true)
    );
    // Alice: 15 left but 20 credited → a debit of 5; Bob: 40 left, no rows → a credit
    // of 40; Carol adds up already → nothing.
    let mut adjustments: Vec<_> = ledger_after
        .iter()
        .filter(|t| t.reason.as_deref() == Some("adjustment"))
        .map(|t| {
            (
                t.tracking_id.clone(),
                t.kind.clone().unwrap(),
                t.amount.unwrap(),
                t.balance_after.unwrap(),
            )
        })
        .collect();
    adjustments.sort();
    assert_eq!(
        adjustments,
        vec![
            ("user_alice".to_owned(), "debit".to_owned(), 5, 15),
            ("user_bob".to_owned(), "credit".to_owned(), 40, 40),
        ]
    );
    assert_ledger_adds_up(&store).await;

    // Running it again changes nothing.
    let second = run_migrate(&db).await;
    assert!(second.contains("applied 0 migration(s)"), "{second}");
    assert_eq!(ledger(&store).await.len(), ledger_after.len());

    // Signups work on the adopted database, and an existing user is updated, not re-granted.
    let app = TestApp::spawn(&db).await;
    let (s, b) = status_json(
        app.post_webhook("msg_new", &fixture("clerk-user-created.json"))
            .await,
    )
    .await;
    assert_eq!(
        (s, b),
        (200, json!({"status": "processed", "action": "created"}))
    );
    let mut alice = fixture_json("clerk-user-updated.json");
    alice["data"]["id"] = json!("user_alice");
    let (s, b) = status_json(
        app.post_webhook("msg_alice", &serde_json::to_vec(&alice).unwrap())
            .await,
    )
    .await;
    assert_eq!(
        (s, b),
        (200, json!({"status": "processed", "action": "updated"}))
    );
    let after = users(&store).await;
    assert_eq!(after.len(), 4);
    let alice_row = after.iter().find(|u| u.clerk_id == "user_alice").unwrap();
    assert_eq!((alice_row.used, alice_row.available), (5, 20));
    assert_eq!(alice_row.email, "example.new@example.org");
    assert_eq!(
        ledger(&store).await.len(),
        ledger_after.len() + 1,
        "one bonus, for the new user"
    );
    assert_ledger_adds_up(&store).await;
}
