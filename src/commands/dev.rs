//! `clerk-sync dev`: `serve`, and for each webhook one line (in the spirit of `stripe
//! listen`): when, type, Clerk id, outcome, milliseconds; green when processed, yellow
//! when a duplicate or ignored, red otherwise.

use crate::http::WebhookSeen;

const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const RED: &str = "\x1b[31m";
const RESET: &str = "\x1b[0m";

/// One line for one delivery, coloured with ANSI escapes when `colour`.
pub fn line(seen: &WebhookSeen, at: chrono::DateTime<chrono::Local>, colour: bool) -> String {
    let ms = seen.elapsed.as_secs_f64() * 1000.0;
    let text = format!(
        "{}  {:<13} {:<34} {} ({ms:.1} ms)",
        at.format("%H:%M:%S"),
        seen.event_type.as_deref().unwrap_or("-"),
        seen.clerk_id.as_deref().unwrap_or("-"),
        seen.outcome,
    );
    if !colour {
        return text;
    }
    let tint = if seen.ok {
        GREEN
    } else if seen.outcome.starts_with("duplicate") || seen.outcome.starts_with("ignored") {
        YELLOW
    } else {
        RED
    };
    format!("{tint}{text}{RESET}")
}

/// Colour on a terminal, unless `NO_COLOR` is set (no-color.org).
pub fn colour_wanted() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn seen(outcome: &str, ok: bool) -> WebhookSeen {
        WebhookSeen {
            event_type: Some("user.created".into()),
            clerk_id: Some("user_29w83sxmDNGwOuEthce5gg56FcC".into()),
            outcome: outcome.into(),
            ok,
            elapsed: Duration::from_micros(12_340),
        }
    }

    #[test]
    fn a_line_holds_type_id_outcome_and_time_in_its_colour() {
        let at = chrono::Local::now();
        let plain = line(&seen("processed created", true), at, false);
        assert_eq!(
            plain.split_once("  ").unwrap().1,
            "user.created  user_29w83sxmDNGwOuEthce5gg56FcC   processed created (12.3 ms)"
        );
        assert!(!plain.contains('\x1b'));
        assert!(line(&seen("processed created", true), at, true).starts_with(GREEN));
        assert!(line(&seen("duplicate", false), at, true).starts_with(YELLOW));
        assert!(line(&seen("invalid_signature", false), at, true).starts_with(RED));
    }
}
