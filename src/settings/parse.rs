//! The value parsers every section shares, so a bad value reads the same whichever key it is
//! under: the key, what was expected and what was given.

use std::{fmt, str::FromStr, time::Duration};

use url::Url;

use super::SettingsError;

pub(super) fn parse_url(key: &str, value: &str) -> Result<Url, SettingsError> {
    Url::parse(value.trim())
        .map_err(|e| SettingsError::new(key, format!("not a URL ({e}): \"{value}\"")))
}

pub(super) fn parse_http_url(key: &str, value: &str) -> Result<Url, SettingsError> {
    let url = parse_url(key, value)?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(SettingsError::new(
            key,
            format!("expected an http:// or https:// URL with a host, got \"{value}\""),
        ));
    }
    Ok(url)
}

pub(super) fn parse_port(key: &str, value: &str) -> Result<u16, SettingsError> {
    value.trim().parse::<u16>().map_err(|_| {
        SettingsError::new(
            key,
            format!("expected a port number 0-65535, got \"{value}\""),
        )
    })
}

pub(super) fn parse_bool(key: &str, value: &str) -> Result<bool, SettingsError> {
    match value.trim() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        other => Err(SettingsError::new(
            key,
            format!("expected true or false, got \"{other}\""),
        )),
    }
}

/// A whole number of at least 1.
pub(super) fn parse_count<T: FromStr + PartialOrd + From<u8>>(
    key: &str,
    value: &str,
) -> Result<T, SettingsError> {
    let n: T = value.trim().parse().map_err(|_| {
        SettingsError::new(key, format!("expected a whole number, got \"{value}\""))
    })?;
    if n < T::from(1) {
        return Err(SettingsError::new(key, "must be at least 1"));
    }
    Ok(n)
}

pub(super) fn parse_duration_setting(key: &str, value: &str) -> Result<Duration, SettingsError> {
    parse_duration(value).map_err(|reason| SettingsError::new(key, reason))
}

pub(super) fn parse_positive_duration(key: &str, value: &str) -> Result<Duration, SettingsError> {
    let d = parse_duration_setting(key, value)?;
    if d.is_zero() {
        return Err(SettingsError::new(key, "must be longer than zero"));
    }
    Ok(d)
}

/// Parses `500ms`, `30s`, `15m`, `2h`, `7d` (one number, one unit).
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let v = value.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (number, unit) = v.split_at(split);
    let malformed =
        || format!("expected a duration such as 500ms, 30s, 15m, 2h or 7d, got \"{value}\"");
    let n: u64 = number.parse().map_err(|_| malformed())?;
    let unit_ms: u64 = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(malformed()),
    };
    // Ten years: longer is a typo, and would overflow time arithmetic downstream.
    const MAX_MS: u64 = 3650 * 86_400_000;
    n.checked_mul(unit_ms)
        .filter(|ms| *ms <= MAX_MS)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("duration \"{value}\" is longer than 3650d"))
}

/// Prints a duration back in the units [`parse_duration`] reads.
pub struct HumanDuration(pub Duration);

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        match ms {
            0 => write!(f, "0s"),
            ms if ms % 86_400_000 == 0 => write!(f, "{}d", ms / 86_400_000),
            ms if ms % 3_600_000 == 0 => write!(f, "{}h", ms / 3_600_000),
            ms if ms % 60_000 == 0 => write!(f, "{}m", ms / 60_000),
            ms if ms % 1_000 == 0 => write!(f, "{}s", ms / 1_000),
            ms => write!(f, "{ms}ms"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print_in_the_same_units() {
        for text in ["500ms", "30s", "15m", "2h", "7d"] {
            let d = parse_duration(text).expect(text);
            assert_eq!(HumanDuration(d).to_string(), text);
        }
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("-5s").is_err());
    }

    #[test]
    fn a_too_long_duration_names_the_limit() {
        let err = parse_duration_setting("queue.job_deadline", "99999999d").expect_err("long");
        assert_eq!(err.key, "KYC__QUEUE__JOB_DEADLINE");
        assert!(err.reason.contains("3650d"), "{err}");
    }
}
