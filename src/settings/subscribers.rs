//! `[[subscribers]]` and `[delivery]`: the services that receive outcome events over HTTP,
//! signed as Standard Webhooks, and how deliveries to them are retried.
//!
//! Subscribers come from `[[subscribers]]` tables in a config file or, in containers where
//! a file is awkward, from `KYC__SUBSCRIBERS` holding a JSON array of the same objects (the
//! variable replaces the file's list). Each is checked at start: a bad URL, secret or event
//! type names the subscriber and the field, never the secret.

use std::{collections::HashSet, time::Duration};

use serde::Deserialize;
use serde_json::Value;
use url::Url;

use super::{
    parse::{parse_count, parse_duration_setting, parse_positive_duration},
    SettingsError,
};
use crate::domain::{check_literal, EventType, SigningKey};

/// The event types a subscriber may ask for.
pub fn event_types() -> Vec<&'static str> {
    EventType::ALL
        .iter()
        .chain([EventType::Erased].iter())
        .map(|t| t.as_str())
        .collect()
}

/// One service that receives outcome events.
#[derive(Debug, Clone)]
pub struct Subscriber {
    /// Letters, digits, `-`, `_`, `.`: it names the subscriber in metrics, logs and keys.
    pub name: String,
    pub url: Url,
    /// The current key first, then those still signing during a rotation.
    pub keys: Vec<SigningKey>,
    /// The event types sent to it (every type when the setting is absent).
    pub types: Vec<String>,
    /// May point at a private, loopback or link-local address.
    pub allow_private: bool,
    /// May use `http://`.
    pub allow_insecure: bool,
}

impl Subscriber {
    /// Whether events of `kind` go to this subscriber.
    pub fn wants(&self, kind: &str) -> bool {
        self.types.iter().any(|t| t == kind)
    }
}

/// How deliveries to subscribers are retried and bounded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliverySettings {
    /// Waits before each retry after a failed attempt (the first attempt is at once); each
    /// wait is moved by up to ±20 %. After the last, the delivery goes to the dead set.
    pub retry_schedule: Vec<Duration>,
    /// One attempt's limit: connect, send and read the answer.
    pub timeout: Duration,
    /// Deliveries one process runs at once, for all subscribers together.
    pub concurrency: usize,
    /// Deliveries one process runs at once to any one subscriber.
    pub per_subscriber: usize,
    /// Consecutive failed attempts that open a subscriber's circuit.
    pub circuit_after: u32,
    /// The longest pause of an open circuit before it tries again (the pause starts at 5 s
    /// and doubles).
    pub circuit_max: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDelivery {
    retry_schedule: Value,
    timeout: String,
    concurrency: String,
    per_subscriber: String,
    circuit_after: String,
    circuit_max: String,
}

impl RawDelivery {
    pub(super) fn validate(self) -> Result<DeliverySettings, SettingsError> {
        const KEY: &str = "delivery.retry_schedule";
        // A list in a file; comma-separated text from the environment.
        let items: Vec<String> = match self.retry_schedule {
            Value::Array(items) => items
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    other => Err(SettingsError::new(
                        KEY,
                        format!("expected durations such as \"5s\", got {other}"),
                    )),
                })
                .collect::<Result<_, _>>()?,
            Value::String(text) => text
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            other => {
                return Err(SettingsError::new(
                    KEY,
                    format!("expected a list of durations, got {other}"),
                ))
            }
        };
        let retry_schedule = items
            .iter()
            .map(|d| parse_duration_setting(KEY, d))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(DeliverySettings {
            retry_schedule,
            timeout: parse_positive_duration("delivery.timeout", &self.timeout)?,
            concurrency: parse_count("delivery.concurrency", &self.concurrency)?,
            per_subscriber: parse_count("delivery.per_subscriber", &self.per_subscriber)?,
            circuit_after: parse_count("delivery.circuit_after", &self.circuit_after)?,
            circuit_max: parse_positive_duration("delivery.circuit_max", &self.circuit_max)?,
        })
    }
}

/// One subscriber as written, before its checks.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSubscriber {
    name: String,
    url: String,
    secret: String,
    #[serde(default)]
    types: Option<Vec<String>>,
    #[serde(default)]
    previous_secrets: Vec<String>,
    #[serde(default)]
    allow_private: bool,
    #[serde(default)]
    allow_insecure: bool,
}

/// Every problem is reported under `KYC__SUBSCRIBERS` with the subscriber and field named.
fn invalid(reason: impl Into<String>) -> SettingsError {
    SettingsError::new("subscribers", reason)
}

/// `subscribers`: an array of tables from a file, or a JSON array as text from
/// `KYC__SUBSCRIBERS`.
pub(super) fn validate_subscribers(raw: Option<Value>) -> Result<Vec<Subscriber>, SettingsError> {
    let items = match raw {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(text)) if text.trim().is_empty() => return Ok(Vec::new()),
        Some(Value::String(text)) => match serde_json::from_str::<Value>(&text) {
            Ok(Value::Array(items)) => items,
            Ok(_) => return Err(invalid("expected a JSON array of subscriber objects")),
            // The position only: the text may hold secrets.
            Err(e) => {
                return Err(invalid(format!(
                    "not valid JSON (line {}, column {})",
                    e.line(),
                    e.column()
                )))
            }
        },
        Some(Value::Array(items)) => items,
        Some(_) => return Err(invalid("expected a list of subscribers")),
    };
    let mut names = HashSet::new();
    let mut subscribers = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        let label = item
            .get("name")
            .and_then(Value::as_str)
            .map(|n| format!("subscriber \"{n}\""))
            .unwrap_or_else(|| format!("subscriber #{}", index + 1));
        // serde's message may quote a value (a secret in the wrong field): keep only names.
        // The redaction is the SDK's (telemetry re-exports it), since telemetry reads the
        // settings and the settings may not import it back.
        let raw: RawSubscriber = serde_json::from_value(item)
            .map_err(|e| invalid(format!("{label}: {}", didit::redact_values(&e.to_string()))))?;
        let subscriber = raw
            .validate()
            .map_err(|r| invalid(format!("{label}: {r}")))?;
        if !names.insert(subscriber.name.clone()) {
            return Err(invalid(format!("{label}: the name is used twice")));
        }
        subscribers.push(subscriber);
    }
    Ok(subscribers)
}

impl RawSubscriber {
    fn validate(self) -> Result<Subscriber, String> {
        let name = self.name.trim().to_owned();
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(
                "name: use 1 to 64 letters, digits, '-', '_' or '.' (it labels metrics)".into(),
            );
        }
        let url = Url::parse(self.url.trim()).map_err(|e| format!("url: not a URL ({e})"))?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_insecure => {}
            "http" => {
                return Err("url: https is required (set allow_insecure = true for http)".into())
            }
            other => return Err(format!("url: expected https://, got {other}://")),
        }
        if url.host().is_none() {
            return Err("url: no host".into());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("url: credentials in the URL are not allowed".into());
        }
        if !self.allow_private {
            check_literal(&url).map_err(|e| format!("url: {e}"))?;
        }
        let keys = std::iter::once(&self.secret)
            .chain(self.previous_secrets.iter())
            .enumerate()
            .map(|(i, secret)| {
                SigningKey::parse(secret).map_err(|e| {
                    if i == 0 {
                        format!("secret: {e}")
                    } else {
                        format!("previous_secrets[{}]: {e}", i - 1)
                    }
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let known = event_types();
        let types = match self.types {
            None => known.iter().map(|t| (*t).to_owned()).collect(),
            Some(types) if types.is_empty() => {
                return Err("types: empty (leave it out to receive every type)".into())
            }
            Some(types) => {
                for t in &types {
                    if !known.contains(&t.as_str()) {
                        return Err(format!(
                            "types: unknown event type \"{t}\" (known: {})",
                            known.join(", ")
                        ));
                    }
                }
                types
            }
        };
        Ok(Subscriber {
            name,
            url,
            keys,
            types,
            allow_private: self.allow_private,
            allow_insecure: self.allow_insecure,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::load;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn subscribers_come_from_a_json_array_in_the_environment() {
        let json = format!(
            r#"[{{"name":"billing","url":"https://billing.example.com/hooks","secret":"{SECRET}","types":["kyc.session.decided"]}},
                {{"name":"crm","url":"http://10.0.0.5/kyc","secret":"{SECRET}","previous_secrets":["whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"],"allow_private":true,"allow_insecure":true}}]"#
        );
        let s = load(&[("KYC__SUBSCRIBERS", json.as_str())]).expect("valid");
        assert_eq!(s.subscribers.len(), 2);
        assert_eq!(s.subscribers[0].name, "billing");
        assert!(s.subscribers[0].wants("kyc.session.decided"));
        assert!(!s.subscribers[0].wants("kyc.session.created"));
        assert!(
            s.subscribers[1].wants("kyc.subject.erased"),
            "default: every type"
        );
        assert_eq!(s.subscribers[1].keys.len(), 2);
        assert!(
            !format!("{s:?}").contains("MfKQ9r8"),
            "secrets stay out of Debug"
        );
    }

    #[test]
    fn subscribers_come_from_tables_in_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("staging.toml"),
            format!(
                "[[subscribers]]\nname = \"billing\"\nurl = \"https://billing.example.com/hooks\"\nsecret = \"{SECRET}\"\ntypes = [\"kyc.session.failed\"]\n"
            ),
        )
        .expect("write");
        let s = super::super::Settings::load_from(&super::super::Sources {
            config_dir: Some(dir.path().to_path_buf()),
            env: Some(std::collections::HashMap::from([(
                "KYC_ENV".to_owned(),
                "staging".to_owned(),
            )])),
        })
        .expect("valid");
        assert_eq!(s.subscribers.len(), 1);
        assert_eq!(s.subscribers[0].types, ["kyc.session.failed"]);
    }

    #[test]
    fn a_bad_subscriber_is_named_with_its_field_and_never_echoes_the_secret() {
        let cases = [
            (
                format!(r#"[{{"name":"a","url":"http://hooks.example.com","secret":"{SECRET}"}}]"#),
                "subscriber \"a\": url: https is required",
            ),
            (
                format!(r#"[{{"name":"b","url":"https://127.0.0.1/x","secret":"{SECRET}"}}]"#),
                "subscriber \"b\": url: 127.0.0.1",
            ),
            (
                r#"[{"name":"c","url":"https://hooks.example.com","secret":"not-a-whsec-secret"}]"#
                    .to_owned(),
                "subscriber \"c\": secret: expected a secret starting with \"whsec_\"",
            ),
            (
                format!(
                    r#"[{{"name":"d","url":"https://hooks.example.com","secret":"{SECRET}","types":["kyc.session.approved"]}}]"#
                ),
                "subscriber \"d\": types: unknown event type \"kyc.session.approved\"",
            ),
            (
                format!(
                    r#"[{{"name":"e f","url":"https://hooks.example.com","secret":"{SECRET}"}}]"#
                ),
                "subscriber \"e f\": name",
            ),
            (
                format!(
                    r#"[{{"name":"g","url":"https://a.example.com","secret":"{SECRET}"}},{{"name":"g","url":"https://b.example.com","secret":"{SECRET}"}}]"#
                ),
                "used twice",
            ),
            (
                r#"[{"name":"h","url":"https://a.example.com","secret":"whsec_secretvalue!!"}"#
                    .to_owned(),
                "not valid JSON",
            ),
        ];
        for (json, expected) in cases {
            let err = load(&[("KYC__SUBSCRIBERS", json.as_str())]).expect_err(expected);
            assert_eq!(err.key, "KYC__SUBSCRIBERS");
            assert!(err.reason.contains(expected), "{err} lacks {expected}");
            assert!(!err.reason.contains("secretvalue"), "{err}");
            assert!(!err.reason.contains("MfKQ9r8"), "{err}");
        }
    }

    #[test]
    fn the_default_retry_schedule_is_svix_s_and_a_list_in_seconds_can_replace_it() {
        let s = load(&[]).expect("defaults");
        let total: u64 = s.delivery.retry_schedule.iter().map(|d| d.as_secs()).sum();
        assert_eq!(s.delivery.retry_schedule.len(), 7);
        assert_eq!(total, 5 + 300 + 1800 + 7200 + 18000 + 36000 + 36000);
        assert_eq!(s.delivery.timeout.as_secs(), 10);
        let s = load(&[("KYC__DELIVERY__RETRY_SCHEDULE", "1s, 2s,500ms")]).expect("valid");
        assert_eq!(s.delivery.retry_schedule.len(), 3);
        let err = load(&[("KYC__DELIVERY__RETRY_SCHEDULE", "1s,soon")]).expect_err("bad");
        assert_eq!(err.key, "KYC__DELIVERY__RETRY_SCHEDULE");
    }
}
