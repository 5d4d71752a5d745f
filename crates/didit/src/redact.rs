//! Error messages without the values they quote.

/// Replaces quoted values in an error message with `…`. serde's messages quote the value
/// they failed on (`invalid type: string "Jane"`), which may be personal data; the rest of
/// the message (what was expected, where) is what an operator needs.
pub fn redact_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut quote: Option<char> = None;
    for c in message.chars() {
        match quote {
            Some(q) if c == q => {
                out.push('…');
                out.push(c);
                quote = None;
            }
            Some(_) => {}
            None if c == '"' || c == '`' => {
                out.push(c);
                quote = Some(c);
            }
            None => out.push(c),
        }
    }
    if quote.is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_values_are_redacted_and_the_rest_kept() {
        let e = serde_json::from_str::<u32>("\"Jane Doe\"").expect_err("type");
        let redacted = redact_values(&e.to_string());
        assert!(!redacted.contains("Jane"), "{redacted}");
        assert!(redacted.contains("expected u32"), "{redacted}");
        assert_eq!(redact_values("a `x` and \"y\""), "a `…` and \"…\"");
        assert_eq!(redact_values("open \"tail"), "open \"…");
    }
}
