//! The first hour: a database that cannot be reached is named by its cause, with the fix
//! for that cause, once, at once (PostgreSQL: a SQLite file has no connection to fail).

use crate::diagnose::clerk_sync;
use crate::helpers::*;

mod connection_errors_say_the_cause_and_the_fix {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::connection_errors_say_the_cause_and_the_fix().await
    }
}

async fn connection_errors_say_the_cause_and_the_fix() {
    let db = TestDb::new(Backend::Postgres).await;
    let mut url = url::Url::parse(&db.url).unwrap();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);

    let mut refused = url.clone();
    refused.set_host(Some("127.0.0.1")).unwrap();
    refused.set_port(Some(dead_port)).unwrap();
    let mut no_database = url.clone();
    no_database.set_path("clerk_sync_no_such_database");
    let mut no_schema = url.clone();
    no_schema.set_query(Some("schema=clerk_sync_no_such_schema"));
    url.set_username("clerk_sync_no_such_role").unwrap();
    let no_role = url;

    let cases = [
        (
            refused.to_string(),
            format!("connection refused by 127.0.0.1:{dead_port}"),
            "Is PostgreSQL running there? Check the host and port in DATABASE_URL",
        ),
        (
            no_database.to_string(),
            r#"database "clerk_sync_no_such_database" does not exist"#.to_owned(),
            "Create the database (createdb, or the Neon console) or fix its name",
        ),
        (
            no_schema.to_string(),
            "no schema of the search_path (clerk_sync_no_such_schema) exists in this database"
                .to_owned(),
            "Create the schema Prisma's ?schema= names (CREATE SCHEMA \"name\";), or remove \
             ?schema= from DATABASE_URL",
        ),
        (
            no_role.to_string(),
            r#"role "clerk_sync_no_such_role" does not exist"#.to_owned(),
            "Check the user name in DATABASE_URL",
        ),
    ];
    for (database_url, cause, fix) in &cases {
        let started = std::time::Instant::now();
        let (ok, out, err) = clerk_sync(&["migrate", "--database-url", database_url]);
        assert!(!ok, "{out}");
        assert!(
            err.contains(cause.as_str()) && err.contains(fix),
            "migrate: {err}"
        );
        assert_eq!(err.matches(cause.as_str()).count(), 1, "said once: {err}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "at once, not after a pool timeout"
        );

        let (ok, out, _) = clerk_sync(&["diagnose", "--database-url", database_url]);
        assert!(!ok);
        let first_step = out.lines().find(|l| l.contains("[ 1/12]")).unwrap_or("");
        assert!(first_step.contains(cause.as_str()), "diagnose: {out}");
        assert!(out.contains(fix), "diagnose: {out}");
    }

    // serve stops before it listens, with the same sentence.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_clerk-sync"))
        .args(["serve", "--port", "0", "--database-url", &cases[0].0])
        .env("CLERK_WEBHOOK_SIGNING_SECRET", SECRET)
        .env_remove("DIRECT_URL")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("cannot reach the database: connection refused by")
            && err.contains(cases[0].2),
        "{err}"
    );
}

crate::both_backends!(an_empty_database_says_run_migrate_first);

/// An empty database: `diagnose` says "never migrated" and the one command that fixes it,
/// in a screenful, and `smoke` says so before trying anything.
async fn an_empty_database_says_run_migrate_first(backend: Backend) {
    let db = TestDb::new(backend).await;
    if backend == Backend::Sqlite {
        // An empty file: SQLite's empty database.
        let path = db.url.trim_start_matches("sqlite://");
        std::fs::write(path, b"").unwrap();
    }
    let (ok, out, err) = clerk_sync(&["diagnose", "--database-url", &db.url]);
    assert!(!ok, "{out}{err}");
    let step3 = out.lines().find(|l| l.contains("[ 3/12]")).unwrap_or("");
    assert!(step3.contains("this database was never migrated"), "{out}");
    assert!(
        out.contains("run `clerk-sync migrate --database-url"),
        "{out}"
    );
    assert!(
        out.lines().count() < 30,
        "a screenful, not a CREATE TABLE per table:\n{out}"
    );
    assert!(!out.contains("CREATE TABLE"), "{out}");

    let (ok, out, err) = clerk_sync(&["smoke", "--database-url", &db.url]);
    assert!(!ok, "{out}");
    assert!(err.contains("run `clerk-sync migrate` first"), "{err}");
    assert!(!out.contains("FAILED"), "nothing tried: {out}");
}
