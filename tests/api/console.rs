//! The console at /admin over plain HTTP: off without keys, nothing without a session,
//! the cookie's attributes, CSRF on every form, and the outcomes of Replay and Retry in
//! the database. `console_browser.rs` drives the same pages in Chromium.

use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::redirect::Policy;

use crate::both_backends;
use crate::helpers::*;

both_backends!(
    the_console_needs_its_key_and_a_csrf_token,
    the_console_is_off_without_admin_keys,
);

/// A client that does not follow redirects, so each answer is seen.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap()
}

/// Log in; the session cookie (`name=value`).
pub async fn log_in(app: &TestApp, https: bool) -> String {
    let mut request = client()
        .post(format!("{}/admin/login", app.address))
        .form(&[("key", ADMIN_KEY)]);
    if https {
        request = request.header("x-forwarded-proto", "https");
    }
    let r = request.send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()[LOCATION], "/admin/events");
    let set = r.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/admin"] {
        assert!(set.contains(attribute), "{set}");
    }
    assert_eq!(set.contains("; Secure"), https, "{set}");
    set.split(';').next().unwrap().to_owned()
}

/// The text of a console page, fetched with a session cookie.
pub(crate) async fn page(app: &TestApp, session: &str, path: &str) -> String {
    client()
        .get(format!("{}{path}", app.address))
        .header(COOKIE, session)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The CSRF token of the forms on a page.
fn csrf_of(page: &str) -> String {
    let at = page.find(r#"name="csrf" value=""#).expect("a form") + r#"name="csrf" value=""#.len();
    page[at..].split('"').next().unwrap().to_owned()
}

async fn the_console_needs_its_key_and_a_csrf_token(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let http = client();

    // Without a session every page sends to the login form, and no form is accepted.
    for path in [
        "/admin",
        "/admin/events",
        "/admin/events/msg_x",
        "/admin/outbox",
        "/admin/users?q=user_x",
        "/admin/health",
    ] {
        let r = http
            .get(format!("{}{path}", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303, "{path}");
        let to = r.headers()[LOCATION].to_str().unwrap();
        assert!(
            to == "/admin/login" || to == "/admin/events",
            "{path}: {to}"
        );
    }
    let r = http
        .post(format!("{}/admin/outbox/job_x/retry", app.address))
        .form(&[("csrf", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        303,
        "a form without a session goes to the login"
    );
    let r = http
        .post(format!("{}/admin/login", app.address))
        .form(&[("key", "not-the-admin-key-0123")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get(SET_COOKIE).is_none());
    // An API key is not an admin key.
    let r = http
        .post(format!("{}/admin/login", app.address))
        .form(&[("key", API_KEY)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let _ = log_in(&app, true).await;
    let session = log_in(&app, false).await;
    let events = http
        .get(format!("{}/admin/events", app.address))
        .header(COOKIE, &session)
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    let csp = events.headers()["content-security-policy"]
        .to_str()
        .unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"));
    assert_eq!(events.headers()["cache-control"], "no-store");
    let token = csrf_of(&events.text().await.unwrap());

    // A dead job: Retry without the token, with another session's token, then with it.
    app.post_webhook("msg_console_1", &created_for("console_one"))
        .await;
    let job = jobs(&app.store).await.remove(0);
    db.exec(&format!(
        r#"UPDATE {} SET "status" = 'dead', "lastError" = 'HTTP 400 from Clerk' WHERE "id" = '{}'"#,
        match backend {
            Backend::Postgres => r#"clerk_sync."OutboxJob""#,
            Backend::Sqlite => r#""OutboxJob""#,
        },
        job.id
    ))
    .await;
    let other_session = log_in(&app, false).await;
    let other_token = csrf_of(&page(&app, &other_session, "/admin/outbox").await);
    let retry = |token: Option<String>| {
        let mut form = Vec::new();
        if let Some(t) = token {
            form.push(("csrf", t));
        }
        http.post(format!("{}/admin/outbox/{}/retry", app.address, job.id))
            .header(COOKIE, &session)
            .form(&form)
            .send()
    };
    for (token, what) in [
        (None, "no token"),
        (Some(other_token), "another session's token"),
    ] {
        let r = retry(token).await.unwrap();
        assert_eq!(r.status(), 403, "{what}");
        assert!(r.text().await.unwrap().contains("not from this session"));
        assert_eq!(
            jobs(&app.store).await[0].status,
            "dead",
            "{what}: nothing changed"
        );
    }
    let r = retry(Some(token.clone())).await.unwrap();
    assert_eq!(r.status(), 303);
    let job_now = jobs(&app.store).await.remove(0);
    assert_eq!(
        (job_now.status.as_str(), job_now.attempts),
        ("pending", 0),
        "queued again from its first attempt"
    );
    let r = retry(Some(token.clone())).await.unwrap();
    assert_eq!(r.status(), 400, "a job that is not dead is not retried");

    // The event page masks the email; user lookup by email finds the user.
    let event = page(&app, &session, "/admin/events/msg_console_1").await;
    assert!(event.contains("c***@example.org") && !event.contains("console_one@example.org"));
    let user = page(&app, &session, "/admin/users?q=console_one%40example.org").await;
    assert!(
        user.contains(r#"<td id="clerk-id">user_console_one</td>"#),
        "{user}"
    );
    assert!(user.contains(r#"<td id="balance">20 (20 available, 0 used)</td>"#));

    // Text from a payload is escaped.
    let mut event = fixture_json("clerk-user-created.json");
    event["data"]["id"] = "user_xss".into();
    event["data"]["first_name"] = "<script>alert(1)</script>".into();
    app.post_webhook("msg_console_xss", &serde_json::to_vec(&event).unwrap())
        .await;
    let xss = page(&app, &session, "/admin/users?q=user_xss").await;
    assert!(xss.contains("&lt;script&gt;alert(1)&lt;/script&gt;") && !xss.contains("<script>"));

    // Logging out needs the token too; then the cookie is cleared.
    let r = http
        .post(format!("{}/admin/logout", app.address))
        .header(COOKIE, &session)
        .form(&[("csrf", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert!(r.headers()[SET_COOKIE]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    app.stop().await;
}

async fn the_console_is_off_without_admin_keys(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn_with(
        &db,
        AppOptions {
            admin_keys: String::new(),
            ..AppOptions::default()
        },
    )
    .await;
    for path in ["/admin", "/admin/login", "/admin/events"] {
        let r = client()
            .get(format!("{}{path}", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    let r = client()
        .post(format!("{}/admin/login", app.address))
        .form(&[("key", ADMIN_KEY)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    app.stop().await;
}
