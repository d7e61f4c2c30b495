//! Reverting: every migration's `.down.sql` takes a database back to the catalog a fresh
//! database of that version has, keeping every row of the tables that remain.

use serde_json::json;

use crate::both_backends;
use crate::helpers::*;
use crate::upgrade::{current, run, table_digests, PREVIOUS_VERSION};

both_backends!(every_version_reverts_to_the_catalog_of_a_fresh_database);

/// The catalog of a database: every object of the app's schema and of clerk-sync's, as
/// text lines to compare.
async fn catalog(db: &TestDb) -> Vec<String> {
    let store = db.store().await;
    let lines: Vec<String> = match &store {
        clerk_sync::store::Store::Postgres(pg) => sqlx::query_scalar(
            r#"
SELECT 'column ' || table_schema || '.' || table_name || '.' || column_name || ' ' || data_type
       || ' null=' || is_nullable || ' default=' || COALESCE(column_default, '-')
FROM information_schema.columns WHERE table_schema IN ('public', 'clerk_sync')
UNION ALL
SELECT 'index ' || schemaname || ' ' || indexdef FROM pg_indexes
WHERE schemaname IN ('public', 'clerk_sync')
UNION ALL
SELECT 'constraint ' || n.nspname || '.' || c.conname || ' ' || pg_get_constraintdef(c.oid)
FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
WHERE n.nspname IN ('public', 'clerk_sync')
UNION ALL
SELECT 'trigger ' || tgname || ' ' || pg_get_triggerdef(t.oid) FROM pg_trigger t WHERE NOT tgisinternal
UNION ALL
SELECT 'function ' || n.nspname || '.' || p.proname || ' ' || md5(p.prosrc)
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname IN ('public', 'clerk_sync')
UNION ALL
SELECT 'type ' || n.nspname || '.' || t.typname || ' ' || t.typtype::text FROM pg_type t
JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE n.nspname IN ('public', 'clerk_sync') AND t.typtype IN ('d', 'e')
UNION ALL
SELECT 'schema ' || nspname FROM pg_namespace WHERE nspname IN ('public', 'clerk_sync')
ORDER BY 1"#,
        )
        .fetch_all(&pg.pool)
        .await
        .unwrap(),
        clerk_sync::store::Store::Sqlite(lite) => sqlx::query_scalar(
            r#"
SELECT 'object ' || m.type || ' ' || m.name || ' on ' || m.tbl_name
       || CASE WHEN m.type = 'trigger' THEN ' ' || m.sql ELSE '' END
FROM sqlite_master m WHERE m.name NOT LIKE 'sqlite_%'
UNION ALL
SELECT 'column ' || m.name || '.' || c.name || ' ' || c.type || ' notnull=' || c."notnull"
       || ' default=' || COALESCE(c.dflt_value, '-') || ' pk=' || c.pk
FROM sqlite_master m, pragma_table_info(m.name) c WHERE m.type = 'table'
UNION ALL
SELECT 'index ' || m.name || ' ' || il.name || ' unique=' || il."unique" || ' '
       || (SELECT group_concat(ii.name, ',') FROM pragma_index_info(il.name) ii)
FROM sqlite_master m, pragma_index_list(m.name) il WHERE m.type = 'table'
ORDER BY 1"#,
        )
        .fetch_all(&lite.pool)
        .await
        .unwrap(),
    };
    store.close().await;
    lines
}

/// A fresh database taken to `version` the way the release that shipped it did: versions
/// up to 4 with the history in the app's schema, later ones in clerk-sync's.
async fn fresh_at(backend: Backend, version: i64) -> TestDb {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    match &store {
        clerk_sync::store::Store::Postgres(pg) if version <= PREVIOUS_VERSION => {
            let legacy = sqlx::migrate::Migrator::with_migrations(
                clerk_sync::store::migrations::POSTGRES
                    .iter()
                    .filter(|m| m.version <= version && !m.migration_type.is_down_migration())
                    .cloned()
                    .collect(),
            );
            legacy.run(&pg.pool).await.unwrap();
        }
        clerk_sync::store::Store::Postgres(pg) => {
            clerk_sync::store::migrations::POSTGRES
                .run_to(version, &pg.pool)
                .await
                .unwrap();
        }
        clerk_sync::store::Store::Sqlite(lite) => {
            clerk_sync::store::migrations::SQLITE
                .run_to(version, &lite.pool)
                .await
                .unwrap();
        }
    }
    store.close().await;
    db
}

async fn every_version_reverts_to_the_catalog_of_a_fresh_database(backend: Backend) {
    let latest = clerk_sync::store::migrations::latest(&clerk_sync::store::migrations::POSTGRES);
    for version in (1..latest).rev() {
        // The latest version, with rows in every table.
        let db = TestDb::new(backend).await;
        let app = TestApp::spawn(&db).await;
        for i in 0..3 {
            let mut event = fixture_json("clerk-user-created.json");
            event["data"]["id"] = json!(format!("user_{i}"));
            event["data"]["email_addresses"][0]["email_address"] =
                json!(format!("u{i}@example.com"));
            let (s, _) = status_json(
                app.post_webhook(&format!("msg_{i}"), &serde_json::to_vec(&event).unwrap())
                    .await,
            )
            .await;
            assert_eq!(s, 200);
        }
        app.stop().await;
        let before = table_digests(&db, backend, true).await;

        let mut args = vec!["migrate", "--revert-to"];
        let v = version.to_string();
        args.extend([v.as_str(), "--database-url", &db.url]);
        if version < 2 {
            // Dropping clerk-sync's own tables with rows in them needs --yes.
            let (ok, out, err) = run(current(), &args);
            assert!(!ok && err.contains("Add --yes"), "{out}{err}");
            args.push("--yes");
        }
        let (ok, out, err) = run(current(), &args);
        assert!(ok, "revert to {version}: {out}{err}");

        let fresh = fresh_at(backend, version).await;
        assert_eq!(
            catalog(&db).await,
            catalog(&fresh).await,
            "reverted to {version} differs from a fresh database at {version}"
        );
        // The app's tables keep every row (and clerk-sync's too, from version 2 on).
        let after = table_digests(&db, backend, version >= 5).await;
        let kept = if version >= 2 { 5 } else { 3 };
        assert_eq!(
            after[..kept]
                .iter()
                .map(|(t, n, _)| (t, n))
                .collect::<Vec<_>>(),
            before[..kept]
                .iter()
                .map(|(t, n, _)| (t, n))
                .collect::<Vec<_>>(),
            "rows kept at {version}"
        );
        if version >= 4 {
            assert_eq!(after, before, "every row as it was at {version}");
        }
    }
}
