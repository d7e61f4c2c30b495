//! `.env` (where Next.js and Prisma projects keep `DATABASE_URL`) is read from the current
//! directory; the environment wins over it; the user is told which file gave which
//! variables, never their values.

use crate::both_backends;
use crate::helpers::*;

both_backends!(dot_env_names_the_database_and_the_environment_wins);

fn migrate_in(dir: &std::path::Path, env: &[(&str, &str)]) -> (bool, String, String) {
    run_to_end(
        std::process::Command::new(env!("CARGO_BIN_EXE_clerk-sync"))
            .arg("migrate")
            .current_dir(dir)
            .env_remove("DATABASE_URL")
            .env_remove("DIRECT_URL")
            .env_remove("CLERK_SECRET_KEY")
            .envs(env.iter().copied()),
    )
}

async fn dot_env_names_the_database_and_the_environment_wins(backend: Backend) {
    let db = TestDb::new(backend).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".env"),
        format!(
            "# the app's .env\nDATABASE_URL=\"{}\"\nCLERK_SECRET_KEY=sk_test_secret_value\n",
            db.url
        ),
    )
    .unwrap();
    let database_name = db.url.rsplit('/').next().unwrap().to_owned();

    // Only .env names a database: that one is migrated, and the user is told so.
    let (ok, out, err) = migrate_in(dir.path(), &[]);
    assert!(ok, "{out}{err}");
    assert!(out.contains(&database_name), "{out}");
    assert!(out.contains("applied 8 migration(s)"), "{out}");
    assert!(
        err.contains(".env: DATABASE_URL, CLERK_SECRET_KEY"),
        "which file, which variables: {err}"
    );
    assert!(!err.contains("sk_test_secret_value") && !out.contains("sk_test_secret_value"));
    assert!(
        !dir.path().join("data").exists(),
        "no SQLite database made in the default place"
    );
    let store = db.store().await;
    assert_eq!(store.applied_migrations().await.unwrap().len(), 8);

    // The environment wins over the file.
    let other = dir.path().join("other.db");
    let other_url = format!("sqlite://{}", other.display());
    let (ok, out, err) = migrate_in(dir.path(), &[("DATABASE_URL", &other_url)]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("other.db") && !out.contains(&database_name),
        "{out}"
    );
    assert!(
        err.contains("(DATABASE_URL already set in the environment, which wins)"),
        "{err}"
    );
    assert!(other.exists());

    // A .env that cannot be read is an error that names the file, not silence.
    std::fs::write(dir.path().join(".env"), "DATABASE_URL='unterminated\n").unwrap();
    let (ok, out, err) = migrate_in(dir.path(), &[]);
    assert!(!ok, "{out}");
    assert!(err.contains(".env"), "{err}");
}
