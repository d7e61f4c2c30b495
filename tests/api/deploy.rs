//! `deploy/`: every metric the alert rules and the Grafana dashboard query is one the
//! service serves (their PromQL is checked by promtool in `deploy/check`).

use crate::both_backends;
use crate::helpers::*;

both_backends!(alerts_and_dashboard_query_only_served_metrics);

/// The `clerk_sync_…` names in `text`.
fn metric_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("clerk_sync_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.push(name);
    }
    names.sort();
    names.dedup();
    names
}

async fn alerts_and_dashboard_query_only_served_metrics(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let served = app.get("/metrics").await.text().await.unwrap();
    let series: Vec<&str> = served
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let root = env!("CARGO_MANIFEST_DIR");
    let mut checked = 0;
    for file in [
        "deploy/prometheus/alerts.yml",
        "deploy/grafana/clerk-sync.json",
    ] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        let names = metric_names(&text);
        assert!(names.len() >= 5, "{file}: {names:?}");
        for name in names {
            assert!(
                series.contains(&name.as_str()),
                "{file} queries {name}, which /metrics does not serve"
            );
            checked += 1;
        }
    }
    assert!(checked >= 20, "{checked}");
    app.stop().await;
}
