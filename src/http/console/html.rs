//! The console's HTML: escaping, the page frame, and the chart (inline SVG, no script).

use std::fmt::Write as _;

use crate::metrics::Minute;

/// Text for HTML content and quoted attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A query-string value.
pub fn url(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

const STYLE: &str = r#"
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:10px 24px;display:flex;gap:20px;align-items:center}
header a{color:#cfd6e4;text-decoration:none}header a.on{color:#fff;font-weight:600}
header form{margin-left:auto}main{padding:20px 24px;max-width:1200px}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{text-align:left;padding:6px 8px;border-bottom:1px solid #e3e6ec;vertical-align:top}
th{background:#eef0f4;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
.processed,.done,.ok{color:#17803d}.failed,.dead,.error{color:#b42318;font-weight:600}
.duplicate,.ignored,.pending,.warn{color:#9a6700}
.flash{background:#e7f5ec;border:1px solid #9bd3ae;padding:8px 12px;margin:0 0 16px}
.flash.bad{background:#fdecea;border-color:#f1a9a0}
form.filters{display:flex;gap:8px;flex-wrap:wrap;margin:0 0 16px;align-items:end}
label{display:flex;flex-direction:column;font-size:12px;color:#555}
input,select,button{font:inherit;padding:4px 8px}button{cursor:pointer}
pre{background:#fff;border:1px solid #e3e6ec;padding:12px;overflow:auto;max-height:480px}
.card{background:#fff;border:1px solid #e3e6ec;padding:12px 16px;margin:0 0 16px}
.muted{color:#6b7280}
"#;

/// The frame around a page's body: the navigation (with `active` marked) and logout.
pub fn page(title: &str, active: &str, csrf: &str, body: &str) -> String {
    let mut nav = String::new();
    for (href, name) in [
        ("/admin/events", "Events"),
        ("/admin/outbox", "Outbox"),
        ("/admin/users", "Users"),
        ("/admin/health", "Health"),
    ] {
        let _ = write!(
            nav,
            r#"<a href="{href}"{}>{name}</a>"#,
            if name == active { r#" class="on""# } else { "" }
        );
    }
    format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title} · clerk-sync</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>
<body><header><strong>clerk-sync</strong>{nav}<form method="post" action="/admin/logout"><input type="hidden" name="csrf" value="{csrf}"><button type="submit">Log out</button></form></header>
<main><h1>{title}</h1>{body}</main></body></html>"#,
        title = esc(title),
        csrf = esc(csrf),
    )
}

/// The login page (no navigation).
pub fn login(problem: Option<&str>) -> String {
    let problem = problem
        .map(|p| format!(r#"<p class="flash bad">{}</p>"#, esc(p)))
        .unwrap_or_default();
    format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Log in · clerk-sync</title><style>{STYLE}</style></head>
<body><main><h1>clerk-sync console</h1>{problem}<form method="post" action="/admin/login" class="card">
<label>Admin key (one of CLERK_SYNC_ADMIN_KEYS)<input type="password" name="key" autocomplete="current-password" autofocus required></label>
<p><button type="submit">Log in</button></p></form></main></body></html>"#
    )
}

/// A status word in its colour.
pub fn status(word: &str) -> String {
    format!(r#"<span class="{0}">{0}</span>"#, esc(word))
}

/// A time as the console shows it (UTC).
pub fn at(t: chrono::NaiveDateTime) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// Signups per minute over the last hour as stacked bars (processed, unchanged, failed),
/// and p99 latency as a line on its own scale.
pub fn signup_chart(minutes: &[Minute]) -> String {
    let (w, h, pad) = (720.0, 220.0, 36.0);
    let plot_w = w - 2.0 * pad;
    let plot_h = h - 2.0 * pad;
    let max_count = minutes
        .iter()
        .map(|m| m.processed + m.unchanged + m.failed)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let max_ms = minutes
        .iter()
        .filter_map(|m| m.quantile_ms(0.99))
        .fold(1.0_f64, f64::max);
    let bar_w = plot_w / minutes.len().max(1) as f64;
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="Signups per minute and p99 latency, last hour">
<rect x="0" y="0" width="{w}" height="{h}" fill="#fff"/>
<line x1="{pad}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#999"/>
<text x="{pad}" y="{ty}" font-size="11" fill="#555">signups/min (max {max_count})</text>
<text x="{x1}" y="{ty}" font-size="11" fill="#1f4fd1" text-anchor="end">p99 latency (max {max_ms} ms)</text>
"##,
        y0 = h - pad,
        x1 = w - pad,
        ty = pad - 12.0,
    );
    let mut line = Vec::new();
    for (i, m) in minutes.iter().enumerate() {
        let x = pad + i as f64 * bar_w;
        let mut y = h - pad;
        for (n, colour, what) in [
            (m.processed, "#17803d", "processed"),
            (m.unchanged, "#d4a72c", "duplicate or ignored"),
            (m.failed, "#b42318", "failed"),
        ] {
            if n == 0 {
                continue;
            }
            let bar_h = f64::from(n) / max_count * plot_h;
            y -= bar_h;
            let _ = write!(
                svg,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{bar_h:.1}" fill="{colour}"><title>{n} {what}</title></rect>"#,
                (bar_w - 1.0).max(1.0)
            );
        }
        if let Some(ms) = m.quantile_ms(0.99) {
            let (cx, cy) = (x + bar_w / 2.0, h - pad - ms / max_ms * plot_h);
            line.push(format!("{cx:.1},{cy:.1}"));
            let _ = write!(
                svg,
                r##"<circle cx="{cx:.1}" cy="{cy:.1}" r="2.5" fill="#1f4fd1"><title>p99 {ms} ms</title></circle>"##
            );
        }
    }
    if !line.is_empty() {
        let _ = write!(
            svg,
            r##"<polyline points="{}" fill="none" stroke="#1f4fd1" stroke-width="1.5"/>"##,
            line.join(" ")
        );
    }
    let _ = write!(
        svg,
        r##"<text x="{pad}" y="{}" font-size="11" fill="#555">60 min ago</text><text x="{}" y="{}" font-size="11" fill="#555" text-anchor="end">now</text></svg>"##,
        h - pad + 16.0,
        w - pad,
        h - pad + 16.0
    );
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_for_content_and_attributes() {
        assert_eq!(
            esc(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
        assert_eq!(url("user_1 a&b"), "user_1+a%26b");
    }
}
