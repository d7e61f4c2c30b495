//! The TypeScript client (`clients/typescript`) against a live service on each backend.
//! `scripts/test` installs it (`npm ci`), checks that its generated types are those of
//! its `openapi.json`, type-checks it (`tsc --noEmit`) and builds it; here its
//! `openapi.json` must be the document the service serves, and its end-to-end script
//! must get every answer it expects (signup by webhook, consume, replay, 409, grant, 402,
//! the ledger paged).

use serde_json::Value;

use crate::both_backends;
use crate::helpers::*;

both_backends!(the_typescript_client_matches_the_service_and_works);

async fn the_typescript_client_matches_the_service_and_works(backend: Backend) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/typescript");
    let script = format!("{dir}/dist/scripts/e2e.js");
    assert!(
        std::path::Path::new(&script).exists(),
        "{script} is missing: scripts/test builds the client (npm ci, npm run build)"
    );
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;

    let served: Value = app.get("/openapi.json").await.json().await.unwrap();
    let committed: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{dir}/openapi.json")).unwrap())
            .unwrap();
    assert!(
        served == committed,
        "clients/typescript/openapi.json is not the served document: save GET /openapi.json \
         there, then `npm run generate` in clients/typescript"
    );

    let out = tokio::process::Command::new("node")
        .arg(&script)
        .env("CLERK_SYNC_URL", &app.address)
        .env("CLERK_SYNC_API_KEY", API_KEY)
        .env("CLERK_SYNC_SECRET", SECRET)
        .output()
        .await
        .expect("node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("e2e: all answers as expected"), "{stdout}");
    assert!(stdout.matches("ok: ").count() >= 30, "{stdout}");

    // What the script did is in the database: one user, 23 ledger rows that add up.
    let user = users(&app.store)
        .await
        .into_iter()
        .find(|u| u.clerk_id.starts_with("user_ts"))
        .expect("the user the script signed up");
    assert_eq!(user.available - user.used, 45);
    assert_ledger_adds_up(&app.store).await;
    app.stop().await;
}
