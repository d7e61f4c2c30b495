//! The independent tools, against a live service on each backend (both installed by
//! `scripts/test` into `target/contract-tools` from `tests/contract/requirements.txt`):
//! openapi-spec-validator on the served document, then schemathesis with every check,
//! bounded, with real Clerk ids and fresh idempotency keys (`tests/contract/hooks.py`).
//! It must report zero failures, and the success paths must have been covered: hundreds
//! of consumes and grants in the ledger.

use crate::both_backends;
use crate::helpers::*;

both_backends!(schemathesis_finds_nothing_and_the_success_paths_are_covered);

/// Examples per operation and phase: about 90 s for both backends at once on 2 cores.
const MAX_EXAMPLES: &str = "800";

async fn schemathesis_finds_nothing_and_the_success_paths_are_covered(backend: Backend) {
    let root = env!("CARGO_MANIFEST_DIR");
    let tools = format!("{root}/target/contract-tools/bin");
    assert!(
        std::path::Path::new(&format!("{tools}/schemathesis")).exists(),
        "{tools}/schemathesis is missing: scripts/test installs it (tests/contract/requirements.txt)"
    );
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let doc = app.get("/openapi.json").await.text().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let doc_path = dir.path().join("openapi.json");
    std::fs::write(&doc_path, doc).unwrap();

    let out = tokio::process::Command::new(format!("{tools}/openapi-spec-validator"))
        .arg(&doc_path)
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains(": OK"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = tokio::process::Command::new(format!("{tools}/schemathesis"))
        .current_dir(format!("{root}/tests/contract"))
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .env("PYTHONPATH", format!("{root}/tests/contract"))
        .env("CLERK_SYNC_URL", &app.address)
        .env("CLERK_SYNC_SECRET", SECRET)
        .env("NO_COLOR", "1")
        .args(["run", &format!("{}/openapi.json", app.address)])
        .args(["--checks", "all", "--continue-on-failure"])
        .args(["--max-examples", MAX_EXAMPLES, "--seed", "20261130"])
        .args(["-H", &format!("Authorization: Bearer {API_KEY}")])
        .output()
        .await
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = report
        .lines()
        .find(|l| l.contains(" generated, "))
        .unwrap_or_else(|| panic!("no summary: {report}"));
    assert!(summary.contains(" passed"), "{summary}");
    println!("schemathesis ({backend:?}): {summary}");

    // The success paths were reached, not only the refusals.
    let rows = ledger(&app.store).await;
    let count = |reason: &str| {
        rows.iter()
            .filter(|r| r.reason.as_deref() == Some(reason))
            .count()
    };
    let grants = count("grant") + count("purchase") + count("refund") + count("adjustment");
    println!(
        "schemathesis ({backend:?}): {} consumes, {grants} grants succeeded",
        count("consume")
    );
    // Measured with this seed: 165-209 consumes and 239-275 grants per backend.
    assert!(count("consume") >= 100, "consumes: {}", count("consume"));
    assert!(grants >= 100, "grants: {grants}");
    assert!(count("consume") + grants >= 300, "hundreds, not dozens");
    app.stop().await;
}
