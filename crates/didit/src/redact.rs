//! Error messages without the values they quote, but with the schema they name.
//!
//! Decode errors travel far: a producer's HTTP answer, the intake's rejected stream, the dead
//! set, the console, logs. serde's messages quote the value they failed on
//! (`invalid type: string "Jane"`), which may be personal data, so values are masked. Field
//! names and the values a schema expects are never personal, and they are what a producer
//! needs to fix a request, so they stay: `unknown field `vendor_dta`, expected one of
//! `request_id`, `vendor_data`, …`. An unknown field's name is the sender's text, though; it
//! is shown only when it looks like a field name, else the message says "an unknown field".

/// Longest unknown field name that is shown.
const FIELD_NAME_MAX: usize = 64;

/// Replaces the values quoted in an error message with `…` and keeps the names of fields and
/// the expected values (see the module docs). Everything it does not recognise as schema is
/// treated as a value.
pub fn redact_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(c) = rest.chars().next() {
        if let Some(after) = rest.strip_prefix("unknown field `") {
            match unknown(after) {
                Some((name, tail, remaining)) => {
                    if is_field_name(name) {
                        out.push_str("unknown field `");
                        out.push_str(name);
                        out.push('`');
                    } else {
                        out.push_str("an unknown field");
                    }
                    out.push_str(tail);
                    rest = remaining;
                }
                None => {
                    out.push_str("an unknown field …");
                    return out;
                }
            }
        } else if let Some(after) = rest.strip_prefix("unknown variant `") {
            match unknown(after) {
                Some((_, tail, remaining)) => {
                    out.push_str("unknown variant `…`");
                    out.push_str(tail);
                    rest = remaining;
                }
                None => {
                    out.push_str("unknown variant `…");
                    return out;
                }
            }
        } else if let Some((phrase, after)) = ["missing field `", "duplicate field `"]
            .iter()
            .find_map(|p| rest.strip_prefix(p).map(|after| (*p, after)))
        {
            // serde names these from the type's own fields, never from the input.
            match after.split_once('`') {
                Some((name, remaining)) if is_field_name(name) => {
                    out.push_str(phrase);
                    out.push_str(name);
                    out.push('`');
                    rest = remaining;
                }
                _ => {
                    out.push_str(phrase);
                    rest = mask(&mut out, after, '`');
                }
            }
        } else if let Some(len) = rest
            .strip_prefix("expected ")
            .and_then(expected_list)
            .map(|n| "expected ".len() + n)
        {
            out.push_str(&rest[..len]);
            rest = &rest[len..];
        } else if c == '"' || c == '`' {
            out.push(c);
            rest = mask(&mut out, &rest[c.len_utf8()..], c);
        } else {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// Masks a quoted value whose opening `quote` was just written; returns what follows the
/// closing quote. In double quotes a backslash escapes the next character (serde quotes
/// strings with `{:?}`), so an escaped quote does not end the value.
fn mask<'a>(out: &mut String, value: &'a str, quote: char) -> &'a str {
    let mut chars = value.char_indices();
    while let Some((i, c)) = chars.next() {
        if c == '\\' && quote == '"' {
            chars.next();
        } else if c == quote {
            out.push('…');
            out.push(quote);
            return &value[i + c.len_utf8()..];
        }
    }
    out.push('…');
    ""
}

/// Splits what follows "unknown field `" (or variant) into the name, serde's explanation
/// after it (", expected one of `a`, `b`" or ", there are no fields") and the rest. The name
/// is the sender's text and may itself hold backticks and that very phrase, so the split is
/// the *last* backtick followed by a well-formed explanation: serde writes its explanation
/// after the name, and a well-formed list holds no ", expected", so a later split can only
/// make the name longer (and then it is not shown), never shorter.
fn unknown(after: &str) -> Option<(&str, &str, &str)> {
    after.match_indices('`').rev().find_map(|(i, _)| {
        let tail = &after[i + 1..];
        let len = explanation(tail)?;
        Some((&after[..i], &tail[..len], &tail[len..]))
    })
}

/// The length of serde's explanation at the start of `tail`, when it is one.
fn explanation(tail: &str) -> Option<usize> {
    for fixed in [", there are no fields", ", there are no variants"] {
        if tail.starts_with(fixed) {
            return Some(fixed.len());
        }
    }
    let prefix = ", expected ";
    let list = tail.strip_prefix(prefix)?;
    expected_list(list).map(|n| prefix.len() + n)
}

/// The length of a list of expected names at the start of `s`: `` `a` ``, `` `a` or `b` ``
/// or `` one of `a`, `b`, … `` (serde's wording).
fn expected_list(s: &str) -> Option<usize> {
    if let Some(items) = s.strip_prefix("one of ") {
        let mut len = "one of ".len() + name_item(items)?;
        while let Some(next) = s[len..].strip_prefix(", ") {
            match name_item(next) {
                Some(n) => len += ", ".len() + n,
                None => break,
            }
        }
        return Some(len);
    }
    let first = name_item(s)?;
    if let Some(n) = s[first..].strip_prefix(" or ").and_then(name_item) {
        return Some(first + " or ".len() + n);
    }
    Some(first)
}

/// The length of one `` `name` `` at the start of `s`: a name of the schema (printable
/// ASCII, no backtick, at most 64 characters).
fn name_item(s: &str) -> Option<usize> {
    let inner = s.strip_prefix('`')?;
    let end = inner.find('`')?;
    let name = &inner[..end];
    let ok = !name.is_empty()
        && name.len() <= FIELD_NAME_MAX
        && name.chars().all(|c| c.is_ascii_graphic() || c == ' ');
    ok.then_some(end + 2)
}

/// `[A-Za-z0-9_.-]{1,64}`: a name that can be a field's, safe to print.
fn is_field_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= FIELD_NAME_MAX
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Request {
        vendor_data: String,
        request_id: Option<String>,
        workflow: Option<String>,
        kind: Option<Kind>,
        n: Option<u32>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Kind {
        Approve,
        Decline,
    }

    fn error_of(json: &str) -> String {
        let e = serde_json::from_str::<Request>(json).expect_err("invalid on purpose");
        redact_values(&e.to_string())
    }

    #[test]
    fn quoted_values_are_redacted_and_the_rest_kept() {
        let e = serde_json::from_str::<u32>("\"Jane Doe\"").expect_err("type");
        let redacted = redact_values(&e.to_string());
        assert!(!redacted.contains("Jane"), "{redacted}");
        assert!(redacted.contains("expected u32"), "{redacted}");
        assert_eq!(redact_values("a `x` and \"y\""), "a `…` and \"…\"");
        assert_eq!(redact_values("open \"tail"), "open \"…");
    }

    #[test]
    fn an_unknown_field_is_named_with_the_expected_ones() {
        assert_eq!(
            error_of(r#"{"vendor_data":"Jane","vendor_dta":"x"}"#),
            "unknown field `vendor_dta`, expected one of `vendor_data`, `request_id`, \
             `workflow`, `kind`, `n` at line 1 column 34"
        );
    }

    #[test]
    fn an_unknown_field_that_is_not_a_name_is_not_repeated() {
        for name in [
            "Jane Doe",
            "x`, expected `Jane",
            "x`, there are no fields",
            "`",
            &"a".repeat(65),
        ] {
            let json = serde_json::json!({ "vendor_data": "u", name: 1 }).to_string();
            let redacted = error_of(&json);
            assert!(
                redacted.starts_with("an unknown field, expected one of `vendor_data`"),
                "{name}: {redacted}"
            );
            assert!(!redacted.contains("Jane"), "{redacted}");
        }
    }

    #[test]
    fn an_unknown_variant_is_masked_and_the_expected_ones_shown() {
        assert_eq!(
            error_of(r#"{"vendor_data":"u","kind":"Jane"}"#),
            "unknown variant `…`, expected `approve` or `decline` at line 1 column 32"
        );
    }

    #[test]
    fn missing_fields_and_wrong_types_name_the_field_not_the_value() {
        assert_eq!(
            error_of(r#"{"request_id":"r"}"#),
            "missing field `vendor_data` at line 1 column 18"
        );
        let redacted = error_of(r#"{"vendor_data":"u","n":"Jane \"Doe\" Smith"}"#);
        assert_eq!(
            redacted,
            "invalid type: string \"…\", expected u32 at line 1 column 43"
        );
        assert_eq!(
            error_of(r#"{"vendor_data":"u","n":-7}"#),
            "invalid value: integer `…`, expected u32 at line 1 column 25"
        );
    }

    #[test]
    fn syntax_errors_keep_the_expected_tokens() {
        assert_eq!(
            error_of(r#"{"vendor_data" "u"}"#),
            "expected `:` at line 1 column 16"
        );
    }

    proptest! {
        /// Whatever the name of an unknown field, it is printed only when it is a plain name,
        /// and the expected names always are.
        #[test]
        fn an_unknown_field_name_is_printed_only_when_plain(name in "\\PC{1,40}") {
            prop_assume!(!["vendor_data", "request_id", "workflow", "kind", "n"].contains(&name.as_str()));
            let json = serde_json::json!({ "vendor_data": "u", &name: 1 }).to_string();
            let redacted = error_of(&json);
            prop_assert!(redacted.contains("`vendor_data`, `request_id`, `workflow`, `kind`, `n`"), "{}", redacted);
            if is_field_name(&name) {
                let shown = format!("unknown field `{name}`");
                prop_assert!(redacted.starts_with(&shown), "{}", redacted);
            } else {
                prop_assert!(redacted.starts_with("an unknown field, expected"), "{}", redacted);
            }
        }

        /// A string value never survives, whatever it holds.
        #[test]
        fn a_string_value_is_never_printed(value in "[A-Za-z`\"\\\\, ]{0,20}Jane[A-Za-z`\"\\\\, ]{0,20}") {
            let json = serde_json::json!({ "vendor_data": "u", "n": value }).to_string();
            let redacted = error_of(&json);
            prop_assert!(!redacted.contains("Jane"), "{}", redacted);
        }
    }
}
