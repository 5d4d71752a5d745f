//! HTML building blocks: the page frame, masking, formatting.
//!
//! Pages are `maud` templates, checked at compile time: every value spliced into one is
//! escaped unless it is wrapped in `PreEscaped`, which the console never does with a value
//! it did not write itself. So a forgotten call cannot open an injection; what remains a
//! rule is that personal data goes through [`pii`] (masked unless the viewer presented the
//! admin token).

use maud::{html, Markup, DOCTYPE};
use serde_json::Value;

use super::Access;

/// A personal value as a read-only viewer sees it: the first two characters, then dots.
pub fn mask(s: &str) -> String {
    if s.is_empty() {
        return String::new();
    }
    let shown: String = s.chars().take(2).collect();
    let hidden = s.chars().count().saturating_sub(2).clamp(3, 8);
    format!("{shown}{}", "•".repeat(hidden))
}

/// A personal value for this viewer (the template escapes it).
pub fn pii(access: &Access, s: &str) -> String {
    if access.admin {
        s.to_owned()
    } else {
        mask(s)
    }
}

/// Keys of a job's arguments that never hold personal data.
const SAFE_KEYS: [&str; 12] = [
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
];

/// A stored job for this viewer: every string outside [`SAFE_KEYS`] masked unless admin.
pub fn payload(access: &Access, raw: &str) -> String {
    let Ok(mut value) = serde_json::from_str::<Value>(raw) else {
        return if access.admin {
            raw.chars().take(2000).collect()
        } else {
            format!("[undecodable payload, {} bytes]", raw.len())
        };
    };
    if !access.admin {
        mask_values(&mut value, None);
    }
    value.to_string()
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
pub fn page(title: &str, access: Option<&Access>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { (title) " · kyc-worker console" }
                link rel="stylesheet" href="/console/assets/console.css";
                script src="/console/assets/console.js" defer {}
            }
            body {
                header {
                    a.brand href="/console/" { "kyc-worker" }
                    nav {
                        a href="/console/" { "Overview" }
                        a href="/console/sessions" { "Sessions" }
                        a href="/console/reviews" { "Reviews" }
                        a href="/console/dead" { "Dead set" }
                    }
                    div.who {
                        @match access {
                            Some(a) if a.admin => {
                                span.badge.admin {
                                    "admin"
                                    @if let Some(o) = &a.operator { ": " (o) }
                                }
                                form.inline method="post" action="/console/logout" {
                                    button type="submit" { "Log out" }
                                }
                            }
                            Some(_) => {
                                span.badge { "read-only, PII masked" }
                                a href="/console/login" { "Log in" }
                            }
                            None => {}
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// A notice carried in `?notice=` after an action.
pub fn notice(text: Option<&str>) -> Markup {
    html! {
        @if let Some(t) = text.filter(|t| !t.is_empty()) {
            p.notice #notice { (t.chars().take(300).collect::<String>()) }
        }
    }
}

/// The auto-refresh switch of a list page: `console.js` reloads the page every few
/// seconds while it is on (and no form field has the focus), and remembers it per page.
pub fn refresh_toggle() -> Markup {
    html! {
        label.refresh {
            input type="checkbox" #auto-refresh;
            " auto-refresh every 5 s"
        }
    }
}

/// Links to the newest and the next (older) page of a list.
pub fn pager(first: Option<&str>, next: Option<&str>) -> Markup {
    html! {
        @if first.is_some() || next.is_some() {
            nav.pager {
                @if let Some(href) = first { a #first-page href=(href) { "« newest" } }
                @if let Some(href) = next { a #next-page href=(href) { "older »" } }
            }
        }
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
    fn spliced_values_are_escaped_in_text_and_attributes() {
        let hostile = r#"<script>alert("x")</script>&'"#;
        let markup = html! { p title=(hostile) { (hostile) } }.into_string();
        assert!(!markup.contains("<script>"), "{markup}");
        assert!(markup.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;"));
        let framed = page(hostile, Some(&viewer(true)), notice(Some(hostile))).into_string();
        assert!(!framed.contains("<script>alert"), "{framed}");
    }

    #[test]
    fn masking_keeps_two_characters_and_hides_the_length() {
        assert_eq!(mask("alice@example.com"), "al••••••••");
        assert_eq!(mask("a"), "a•••");
        assert_eq!(mask(""), "");
        assert_eq!(pii(&viewer(true), "<b>"), "<b>");
        assert_eq!(pii(&viewer(false), "<b>x"), "<b•••");
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
