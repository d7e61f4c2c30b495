//! The twelve steps (ledger: `ledger.rs`), each a `StepResult`.

use super::*;

pub(super) async fn connection(store: &Store, target: &Target) -> StepResult {
    let start = Instant::now();
    // A direct connection first: it says why (a pool only says that it failed), and it
    // sees a search_path that names no schema, which connects and fails later.
    let probed = crate::store::connect::probe(&target.url).await;
    let pinged = store.ping().await;
    if let Some(why) = match (probed, pinged) {
        (Err(unreachable), _) => Some(unreachable),
        (Ok(()), Err(e)) => Some(crate::store::connect::Unreachable {
            cause: e.to_string(),
            fix: "Check DATABASE_URL / DIRECT_URL and that the instance is running",
        }),
        (Ok(()), Ok(())) => None,
    } {
        return fail(
            format!("cannot connect: {}", why.cause),
            vec![Problem {
                what: why.fix.to_owned(),
                fix: None,
            }],
        );
    }
    let connect = start.elapsed();
    let mut samples = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        if store.ping().await.is_err() {
            break;
        }
        samples.push(t.elapsed());
    }
    samples.sort();
    let latency = samples.get(samples.len() / 2).copied().unwrap_or(connect);
    let latency_ms = latency.as_secs_f64() * 1000.0;
    match store {
        Store::Postgres(pg) => {
            let info: Result<(String, i32, bool), sqlx::Error> = sqlx::query_as(
                "SELECT current_setting('server_version'), current_setting('server_version_num')::int, \
                 COALESCE((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)",
            )
            .persistent(pg.prepared)
            .fetch_one(&pg.pool)
            .await;
            let (version, num, tls) = match info {
                Ok(i) => i,
                Err(e) => return errored(&e.into()),
            };
            let summary = format!(
                "PostgreSQL {version}, TLS {}, {}, latency {latency_ms:.1} ms",
                if tls { "in use" } else { "off" },
                if target.pgbouncer {
                    "transaction pooler (pgbouncer=true, unprepared statements)"
                } else {
                    "direct connection"
                }
            );
            if num < MIN_PG_VERSION {
                return fail(
                    summary,
                    vec![Problem {
                        what: format!("PostgreSQL {version} is older than the supported 13"),
                        fix: None,
                    }],
                );
            }
            pass(summary)
        }
        Store::Sqlite(lite) => {
            let info: Result<(String, String), sqlx::Error> = sqlx::query_as(
                "SELECT sqlite_version(), (SELECT journal_mode FROM pragma_journal_mode)",
            )
            .fetch_one(&lite.pool)
            .await;
            match info {
                Ok((version, journal)) => pass(format!(
                    "SQLite {version}, journal {journal}, latency {latency_ms:.2} ms"
                )),
                Err(e) => errored(&e.into()),
            }
        }
    }
}

pub(super) fn schema_step(store: &Store, catalog: &Catalog, drifts: &[Drift]) -> StepResult {
    let problems: Vec<Problem> = drifts
        .iter()
        .map(|d| Problem {
            what: d.what.clone(),
            fix: fix_for(store, catalog, d),
        })
        .collect();
    if problems.is_empty() {
        let mut summary =
            "every contract table, column, type, nullability, default and unique index as expected"
                .to_owned();
        if let Some(note) = schema::client_side_note(catalog) {
            summary.push_str(&format!("; note: {note}"));
        }
        pass(summary)
    } else {
        fail(
            format!("{} difference(s) from the contract", problems.len()),
            problems,
        )
    }
}

pub(super) async fn migrations_step(store: &Store) -> StepResult {
    match store.pending_migrations().await {
        Ok(pending) if pending.is_empty() => pass(format!(
            "{} embedded migrations applied",
            store::migrations::latest(store.migrator())
        )),
        Ok(pending) => {
            let names: Vec<String> = store
                .migrator()
                .iter()
                .filter(|m| !m.migration_type.is_down_migration())
                .filter(|m| pending.contains(&m.version))
                .map(|m| format!("{} {}", m.version, m.description))
                .collect();
            fail(
                format!("{} migration(s) not applied", pending.len()),
                vec![Problem {
                    what: format!("not applied: {}", names.join(", ")),
                    fix: Some(Fix {
                        action: FixAction::Command("clerk-sync migrate".into()),
                        safe: true,
                    }),
                }],
            )
        }
        Err(e) => errored(&e),
    }
}

/// A throwaway identity for the diagnostic writes; every one is rolled back.
pub(super) fn probe_ids() -> (String, String, String) {
    let tag = new_id();
    (
        new_id(),
        format!("diag_{tag}"),
        format!("diag_{tag}@diagnose.invalid"),
    )
}

pub(super) async fn service_insert(store: &Store) -> StepResult {
    let (id, clerk_id, email) = probe_ids();
    let now = store::now();
    let result: Result<i64, StoreError> = async {
        with_tx!(store, |tx, p| {
            insert_probe_user!(&mut *tx, p, &id, &clerk_id, &email, 20, now).await?;
            let n: i64 = sqlx::query_scalar(r#"SELECT COUNT(*) FROM "User" WHERE "id" = $1"#)
                .bind(&id)
                .persistent(p)
                .fetch_one(&mut *tx)
                .await?;
            tx.rollback().await?;
            Ok(n)
        })
    }
    .await;
    match result {
        Ok(1) => pass("the service's INSERT into \"User\" succeeded (rolled back)"),
        Ok(n) => fail(format!("inserted row read back {n} times"), Vec::new()),
        Err(e) => fail(format!("{e}"), Vec::new()),
    }
}

/// What a hand-written or foreign writer sends: only the columns without a default
/// (and the id, which has none), exactly like the seed's failing Prisma INSERT.
pub(super) const RAW_INSERTS: &[(&str, &str)] = &[
    (
        "User",
        r#"INSERT INTO "User" ("id", "clerkId", "email", "photo") VALUES ($1, $2, $3, '')"#,
    ),
    (
        "WebhookEvent",
        r#"INSERT INTO "WebhookEvent" ("id", "eventId", "eventType") VALUES ($1, $2, 'diagnose')"#,
    ),
    (
        "Transaction",
        r#"INSERT INTO "Transaction" ("id", "tracking_id") VALUES ($1, $2)"#,
    ),
];

pub(super) async fn raw_insert(store: &Store, catalog: &Catalog, drifts: &[Drift]) -> StepResult {
    let mut problems = Vec::new();
    let mut done = Vec::new();
    for (table, sql) in RAW_INSERTS {
        if !catalog.columns.contains_key(*table) {
            continue;
        }
        let (id, clerk_id, email) = probe_ids();
        let result: Result<(), StoreError> = async {
            with_tx!(store, |tx, p| {
                // Reviewed: constant statements above.
                sqlx::query(sqlx::AssertSqlSafe(*sql))
                    .bind(&id)
                    .bind(&clerk_id)
                    .bind(&email)
                    .persistent(p)
                    .execute(&mut *tx)
                    .await?;
                tx.rollback().await?;
                Ok(())
            })
        }
        .await;
        match result {
            Ok(()) => done.push(*table),
            Err(StoreError::Constraint(v)) if v.kind == ConstraintKind::NotNull => {
                let fix = drifts
                    .iter()
                    .find(|d| {
                        d.table == *table
                            && v.target.as_deref().is_some_and(|c| {
                                d.kind
                                    == DriftKind::MissingDefault(
                                        schema::column(schema::table(table), c).name,
                                    )
                            })
                    })
                    .and_then(|d| fix_for(store, catalog, d));
                problems.push(Problem {
                    what: format!("INSERT into \"{table}\" omitting defaulted columns failed: {v}"),
                    fix,
                });
            }
            Err(e) => problems.push(Problem {
                what: format!("INSERT into \"{table}\" failed: {e}"),
                fix: None,
            }),
        }
    }
    if problems.is_empty() {
        pass(format!(
            "INSERTs into {} relying on database defaults succeeded (rolled back)",
            done.join(", ")
        ))
    } else {
        fail(
            format!(
                "{} table(s) refuse an INSERT that omits defaulted columns",
                problems.len()
            ),
            problems,
        )
    }
}

pub(super) async fn signup_transaction(store: &Store) -> StepResult {
    let (_, clerk_id, email) = probe_ids();
    let now_ms = chrono::Utc::now().timestamp_millis();
    let body = serde_json::json!({
        "type": "user.created",
        "object": "event",
        "timestamp": now_ms,
        "data": {
            "id": clerk_id,
            "email_addresses": [{"id": "idn_diag", "email_address": email,
                                  "verification": {"status": "verified", "strategy": "admin"}}],
            "primary_email_address_id": "idn_diag",
            "image_url": "",
            "updated_at": now_ms,
        }
    });
    let body = serde_json::to_vec(&body).expect("serializable");
    let (secret, _) = WebhookSecret::generate();
    let msg_id = format!("msg_{clerk_id}");
    let now = now_ms / 1000;
    let mut headers = axum::http::HeaderMap::new();
    for (k, v) in [
        ("svix-id", msg_id.clone()),
        ("svix-timestamp", now.to_string()),
        ("svix-signature", sign(&secret, &msg_id, now, &body)),
    ] {
        headers.insert(k, v.parse().expect("ascii header"));
    }
    let hook = match verify(&[secret], &headers, body.into(), now) {
        Ok(h) => h,
        Err(e) => return fail(format!("could not sign a probe: {e}"), Vec::new()),
    };
    // diagnose owns the transaction: the service's statements run in it, then it is
    // rolled back, so the probe leaves nothing behind.
    let rehearsal = async {
        let mut tx = store.begin().await?;
        let outcome = signup::apply_in(&mut tx, 20, &hook).await;
        tx.rollback().await?;
        outcome
    };
    match tokio::time::timeout(Duration::from_secs(10), rehearsal).await {
        Ok(Ok(Outcome::Processed(_))) => {
            pass("event, user, ledger row and outbox job inserted in one transaction (rolled back)")
        }
        Ok(Ok(other)) => fail(format!("unexpected outcome {other:?}"), Vec::new()),
        Ok(Err(e)) => fail(format!("{e}"), Vec::new()),
        Err(_) => fail(
            "the signup transaction did not finish within 10 s",
            Vec::new(),
        ),
    }
}

pub(super) async fn insert_probe_user(
    store: &Store,
    users: &[(&str, &str, &str)],
) -> Result<(), StoreError> {
    let now = store::now();
    with_tx!(store, |tx, p| {
        let mut result = Ok(());
        for (id, clerk_id, email) in users {
            let r = insert_probe_user!(&mut *tx, p, *id, *clerk_id, *email, 0, now).await;
            if let Err(e) = r {
                result = Err(e.into());
                break;
            }
        }
        tx.rollback().await?;
        result
    })
}

pub(super) async fn unique_step(store: &Store, drifts: &[Drift]) -> StepResult {
    let (a, clerk_a, email_a) = probe_ids();
    let (b, clerk_b, email_b) = probe_ids();
    let mut problems = Vec::new();
    let cases = [
        (
            "clerkId",
            "User_clerkId_key",
            [
                (a.as_str(), clerk_a.as_str(), email_a.as_str()),
                (b.as_str(), clerk_a.as_str(), email_b.as_str()),
            ],
        ),
        (
            "email",
            "User_email_key",
            [
                (a.as_str(), clerk_a.as_str(), email_a.as_str()),
                (b.as_str(), clerk_b.as_str(), email_a.as_str()),
            ],
        ),
    ];
    for (column, index, rows) in cases {
        match insert_probe_user(store, &rows).await {
            Err(StoreError::Constraint(v)) if v.kind == ConstraintKind::Unique => {}
            Ok(()) => {
                let fix = drifts
                    .iter()
                    .find(|d| d.kind == DriftKind::MissingUnique(index))
                    .map(|_| Fix {
                        action: FixAction::Sql(format!("CREATE UNIQUE INDEX IF NOT EXISTS \"{index}\" ON \"User\"(\"{column}\");")),
                        safe: true,
                    });
                problems.push(Problem {
                    what: format!("two users with the same {column} were accepted"),
                    fix,
                });
            }
            Err(e) => problems.push(Problem {
                what: format!("probe insert failed: {e}"),
                fix: None,
            }),
        }
    }
    if problems.is_empty() {
        pass("duplicate clerkId and duplicate email both refused by unique indexes (rolled back)")
    } else {
        fail("the database accepts duplicates", problems)
    }
}

pub(super) async fn update_step(store: &Store) -> StepResult {
    let (id, clerk_id, email) = probe_ids();
    let earlier = store::now() - chrono::Duration::minutes(1);
    let result: Result<(NaiveDateTime, NaiveDateTime), StoreError> = async {
        with_tx!(store, |tx, p| {
            insert_probe_user!(&mut *tx, p, &id, &clerk_id, &email, 0, earlier).await?;
            sqlx::query(UPDATE_USER)
                .bind(&clerk_id)
                .bind(&email)
                .bind("updated")
                .bind(Some("Diag"))
                .bind(None::<String>)
                .bind(store::now())
                .persistent(p)
                .fetch_optional(&mut *tx)
                .await?;
            let row: (NaiveDateTime, NaiveDateTime) =
                sqlx::query_as(r#"SELECT "createdAt", "updatedAt" FROM "User" WHERE "id" = $1"#)
                    .bind(&id)
                    .persistent(p)
                    .fetch_one(&mut *tx)
                    .await?;
            tx.rollback().await?;
            Ok(row)
        })
    }
    .await;
    match result {
        Ok((created, updated)) if updated > created => pass(format!(
            "updatedAt moved forward by {} ms (rolled back)",
            (updated - created).num_milliseconds()
        )),
        Ok(_) => fail("updatedAt did not move on update", Vec::new()),
        Err(e) => fail(format!("{e}"), Vec::new()),
    }
}

pub(super) async fn outbox_step(store: &Store) -> StepResult {
    static REQUEUE_DEAD: OwnTablesSql = OwnTablesSql::new(
        r#"UPDATE {own}"OutboxJob" SET "status" = 'pending', "attempts" = 0, "nextAttemptAt" = CURRENT_TIMESTAMP WHERE "status" = 'dead';"#,
    );
    match crate::outbox::backlog(store).await {
        Ok(crate::outbox::Backlog {
            pending,
            dead,
            oldest_pending_age_seconds: age,
        }) => {
            let summary = format!("{pending} pending (oldest {age} s), {dead} dead");
            let mut problems = Vec::new();
            if dead > 0 {
                problems.push(Problem {
                    what: format!("{dead} dead job(s): see \"lastError\"; after fixing the cause, requeue them"),
                    fix: Some(Fix {
                        action: FixAction::Sql(REQUEUE_DEAD.for_store(store).into()),
                        safe: false,
                    }),
                });
            }
            if age > 900 {
                problems.push(Problem {
                    what: "pending jobs older than 15 minutes: is a worker running with CLERK_SECRET_KEY set?".into(),
                    fix: None,
                });
            }
            StepResult {
                status: if problems.is_empty() {
                    Status::Pass
                } else {
                    Status::Warn
                },
                summary,
                problems,
            }
        }
        Err(e) => errored(&e),
    }
}

pub(super) async fn cleanup_step(store: &Store) -> StepResult {
    const LEFTOVERS: &str = r#"
SELECT (SELECT COUNT(*) FROM "User" WHERE substr("clerkId", 1, 5) = 'diag_')
     + (SELECT COUNT(*) FROM "WebhookEvent" WHERE substr("eventId", 1, 9) = 'msg_diag_')
     + (SELECT COUNT(*) FROM "Transaction" WHERE substr("tracking_id", 1, 5) = 'diag_')"#;
    let n: Result<i64, StoreError> = async {
        Ok(with_pool!(store, |pool, p| {
            sqlx::query_scalar(LEFTOVERS)
                .persistent(p)
                .fetch_one(pool)
                .await?
        }))
    }
    .await;
    match n {
        Ok(0) => pass("no diagnostic row left behind"),
        Ok(n) => fail(
            format!("{n} diagnostic row(s) left behind"),
            vec![Problem {
                what: "rows tagged diag_ exist".into(),
                fix: Some(Fix {
                    action: FixAction::Sql(
                        "DELETE FROM \"User\" WHERE substr(\"clerkId\", 1, 5) = 'diag_';\n\
                         DELETE FROM \"WebhookEvent\" WHERE substr(\"eventId\", 1, 9) = 'msg_diag_';\n\
                         DELETE FROM \"Transaction\" WHERE substr(\"tracking_id\", 1, 5) = 'diag_';"
                            .into(),
                    ),
                    safe: true,
                }),
            }],
        ),
        Err(e) => errored(&e),
    }
}
