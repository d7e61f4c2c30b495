//! `clerk-sync send`: post a correctly signed event to a running server, for local
//! development without a tunnel.

use anyhow::Context;

use crate::cli::SendArgs;
use crate::config::{parse_secrets, DatabaseUrl};
use crate::dev_secret;
use crate::webhooks::sign;

/// A `user.created` event in Clerk's shape, for a new random user.
pub fn sample_user_created(now_ms: i64) -> serde_json::Value {
    let suffix = cuid2::create_id();
    serde_json::json!({
        "data": {
            "id": format!("user_{suffix}"),
            "object": "user",
            "email_addresses": [{
                "id": format!("idn_{suffix}"),
                "email_address": format!("{suffix}@example.com"),
                "object": "email_address",
                "verification": {"status": "verified", "strategy": "email_code"},
            }],
            "primary_email_address_id": format!("idn_{suffix}"),
            "first_name": "Sample",
            "last_name": "User",
            "image_url": "https://img.clerk.com/sample",
            "created_at": now_ms,
            "updated_at": now_ms,
        },
        "object": "event",
        "timestamp": now_ms,
        "type": "user.created",
    })
}

/// The signing secret from the flag / environment, else the development secret that
/// `serve` keeps in the data directory of `database_url`.
pub fn signing_secret(
    configured: Option<&str>,
    database_url: &str,
) -> anyhow::Result<crate::webhooks::WebhookSecret> {
    Ok(match configured.filter(|s| !s.trim().is_empty()) {
        Some(raw) => parse_secrets(raw)?
            .into_iter()
            .next()
            .context("CLERK_WEBHOOK_SIGNING_SECRET is empty")?,
        None => {
            let url = DatabaseUrl::parse(database_url)
                .map_err(|p| anyhow::anyhow!("DATABASE_URL: {p}"))?;
            let dir = url.data_dir();
            dev_secret::load(&dir)?
                .map(|(secret, _)| secret)
                .with_context(|| {
                    format!(
                        "no CLERK_WEBHOOK_SIGNING_SECRET and no development secret at {}; start `clerk-sync serve` first",
                        dev_secret::path(&dir).display()
                    )
                })?
        }
    })
}

/// `http://HOST:PORT` of a server started with `serve`'s HOST and PORT: a wildcard
/// address is reached on loopback, an IPv6 one in brackets.
pub fn origin(host: &str, port: u16) -> String {
    let host = match host {
        "0.0.0.0" | "::" | "[::]" => "127.0.0.1",
        host => host,
    };
    if host.contains(':') && !host.starts_with('[') {
        format!("http://[{host}]:{port}")
    } else {
        format!("http://{host}:{port}")
    }
}

pub async fn run(args: SendArgs) -> anyhow::Result<()> {
    let secret = signing_secret(
        args.clerk_webhook_signing_secret.as_deref(),
        &args.database_url,
    )?;
    let now = chrono::Utc::now();
    let body = match &args.payload {
        Some(path) => std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        None => serde_json::to_vec(&sample_user_created(now.timestamp_millis()))?,
    };
    let url = args
        .url
        .clone()
        .unwrap_or_else(|| format!("{}/api/webhooks/clerk", origin(&args.host, args.port)));
    let clerk_id = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|event| event["data"]["id"].as_str().map(str::to_owned));
    let msg_id = format!("msg_{}", cuid2::create_id());
    let timestamp = now.timestamp();
    let signature = sign(&secret, &msg_id, timestamp, &body);
    let response = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/json")
        .header("svix-id", &msg_id)
        .header("svix-timestamp", timestamp.to_string())
        .header("svix-signature", signature)
        .body(body)
        .send()
        .await
        .map_err(|e| {
            let cause = if e.is_connect() {
                "connection refused"
            } else if e.is_timeout() {
                "timed out"
            } else {
                "no answer"
            };
            anyhow::anyhow!(
                "posting to {url}: {cause}. Is `clerk-sync serve` running there? send reads the \
                 same HOST and PORT as serve (or pass --url)"
            )
        })?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    println!("svix-id: {msg_id}");
    println!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    println!("{text}");
    anyhow::ensure!(status.is_success(), "the server answered {status}");
    if let Some(clerk_id) = clerk_id {
        println!("clerk user id: {clerk_id} (its credits: GET /v1/users/{clerk_id})");
    }
    Ok(())
}
