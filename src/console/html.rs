//! HTML building blocks: escaping, masking, the page frame.
//!
//! Pages are plain `format!` strings, so the one rule is: every value that did not come from
//! this file goes through [`esc`] (text and attribute values alike), and personal data
//! goes through [`mask`] unless the viewer presented the admin token.

use std::fmt::Write;

use serde_json::Value;

use super::Access;

/// Escapes text for an HTML element body or a quoted attribute value.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
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

/// A personal value as a read-only viewer sees it: the first two characters, then dots.
pub fn mask(s: &str) -> String {
    if s.is_empty() {
        return String::new();
    }
    let shown: String = s.chars().take(2).collect();
    let hidden = s.chars().count().saturating_sub(2).clamp(3, 8);
    format!("{shown}{}", "•".repeat(hidden))
}

/// A personal value for this viewer, escaped.
pub fn pii(access: &Access, s: &str) -> String {
    if access.admin {
        esc(s)
    } else {
        esc(&mask(s))
    }
}

/// Keys of a job's arguments that never hold personal data.
const SAFE_KEYS: [&str; 15] = [
    "v",
    "id",
    "attempt",
    "deadline_ms",
    "session_id",
    "request_id",
    "workflow_id",
    "workflow",
    "sandbox_scenario",
    "polls",
    "urgent",
    "action",
    "subscriber",
    "event_id",
    "type",
];

/// A stored job for this viewer: every string outside [`SAFE_KEYS`] masked unless admin.
pub fn payload(access: &Access, raw: &str) -> String {
    let Ok(mut value) = serde_json::from_str::<Value>(raw) else {
        return if access.admin {
            esc(&raw.chars().take(2000).collect::<String>())
        } else {
            format!("[undecodable payload, {} bytes]", raw.len())
        };
    };
    if !access.admin {
        mask_values(&mut value, None);
    }
    esc(&value.to_string())
}

fn mask_values(value: &mut Value, key: Option<&str>) {
    match value {
        Value::String(s) if !key.is_some_and(|k| SAFE_KEYS.contains(&k)) => *s = mask(s),
        Value::Array(items) => items.iter_mut().for_each(|v| mask_values(v, key)),
        Value::Object(map) => map
            .iter_mut()
            .for_each(|(k, v)| mask_values(v, Some(k.as_str()))),
        _ => {}
    }
}

/// Unix ms as `2026-11-26 15:04:05 UTC`.
pub fn time(ms: u64) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// A duration in ms as `3.2 s` / `4 min` / `2.5 h`.
pub fn age(ms: u64) -> String {
    let s = ms as f64 / 1000.0;
    if s < 120.0 {
        format!("{s:.1} s")
    } else if s < 7200.0 {
        format!("{:.0} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

/// The page frame: head, navigation, who is looking, the body.
pub fn page(title: &str, access: Option<&Access>, body: &str) -> String {
    let mut who = String::new();
    match access {
        Some(a) if a.admin => {
            let _ = write!(
                who,
                "<span class=\"badge admin\">admin{}</span> <form method=\"post\" action=\"/console/logout\" class=\"inline\"><button type=\"submit\">Log out</button></form>",
                a.operator
                    .as_deref()
                    .map(|o| format!(": {}", esc(o)))
                    .unwrap_or_default()
            );
        }
        Some(_) => who.push_str(
            "<span class=\"badge\">read-only, PII masked</span> <a href=\"/console/login\">Log in</a>",
        ),
        None => {}
    }
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · kyc-worker console</title>
<link rel="stylesheet" href="/console/assets/console.css">
<script src="/console/assets/console.js" defer></script>
</head>
<body>
<header>
<a class="brand" href="/console/">kyc-worker</a>
<nav>
<a href="/console/">Overview</a>
<a href="/console/sessions">Sessions</a>
<a href="/console/reviews">Reviews</a>
<a href="/console/dead">Dead set</a>
</nav>
<div class="who">{who}</div>
</header>
<main>
{body}
</main>
</body>
</html>
"#,
        title = esc(title),
    )
}

/// A notice carried in `?notice=` after an action, escaped.
pub fn notice(text: Option<&str>) -> String {
    match text {
        Some(t) if !t.is_empty() => format!(
            "<p class=\"notice\" id=\"notice\">{}</p>",
            esc(&t.chars().take(300).collect::<String>())
        ),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn viewer(admin: bool) -> Access {
        Access {
            admin,
            via_cookie: false,
            operator: None,
        }
    }

    #[test]
    fn escaping_covers_text_and_attribute_contexts() {
        assert_eq!(
            esc(r#"<script>alert("x")</script>&'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;"
        );
    }

    #[test]
    fn masking_keeps_two_characters_and_hides_the_length() {
        assert_eq!(mask("alice@example.com"), "al••••••••");
        assert_eq!(mask("a"), "a•••");
        assert_eq!(mask(""), "");
        assert_eq!(pii(&viewer(true), "<b>"), "&lt;b&gt;");
    }

    #[test]
    fn payloads_are_masked_except_for_identifiers() {
        let raw = r#"{"v":1,"id":"j1","args":{"vendor_data":"alice","request_id":"r-1","contact_details":{"email":"a@x.io"}}}"#;
        let shown = payload(&viewer(false), raw);
        assert!(!shown.contains("alice"), "{shown}");
        assert!(!shown.contains("a@x.io"), "{shown}");
        assert!(shown.contains("r-1"), "{shown}");
        assert!(payload(&viewer(true), raw).contains("alice"));
        assert_eq!(
            payload(&viewer(false), "not json <x>"),
            "[undecodable payload, 12 bytes]"
        );
    }
}
