//! Settings: what an operator can change without a rebuild.
//!
//! The layers are fixed by DESIGN.md: `config/default.toml` compiled into the binary, then
//! `config/{KYC_ENV}.toml` when it exists, then `KYC__SECTION__KEY` environment variables.
//! Loading also validates: every problem becomes one [`SettingsError`] that names the key the
//! operator has to fix (as the environment variable they would set) and why, so `main` can
//! print one line and exit 2 before anything touches Redis or Didit.
//!
//! Each section of the file has its own module: the validated type, the raw shape it is read
//! from, and the checks between them. This module layers the sources and assembles them.

mod didit;
mod events;
mod http;
mod intake;
mod log;
mod parse;
mod poll;
mod queue;
mod ratelimit;
mod redis;
mod rules;
mod worker;

use std::{collections::HashMap, path::Path, str::FromStr};

use serde::Deserialize;

pub use self::{
    didit::{DiditSettings, SANDBOX_API_KEY, SANDBOX_WEBHOOK_SECRET},
    events::{EventSettings, SANDBOX_SUBJECT_SALT},
    http::HttpSettings,
    log::{LogFormat, LogSettings},
    parse::{parse_duration, HumanDuration},
    poll::PollSettings,
    queue::QueueSettings,
    ratelimit::RateLimitSettings,
    redis::{RedisMode, RedisNode, RedisSettings},
    rules::{RulesSettings, RulesSource},
    worker::WorkerSettings,
};

/// The compiled-in defaults; the file is also the documentation of every key.
pub const DEFAULT_SETTINGS: &str = include_str!("../../config/default.toml");

/// The environment variable that selects `config/{KYC_ENV}.toml`.
pub const ENVIRONMENT_VAR: &str = "KYC_ENV";

#[derive(Debug, Clone)]
pub struct Settings {
    pub log: LogSettings,
    pub redis: RedisSettings,
    pub http: HttpSettings,
    pub didit: DiditSettings,
    pub worker: WorkerSettings,
    pub queue: QueueSettings,
    pub poll: PollSettings,
    pub events: EventSettings,
    pub ratelimit: RateLimitSettings,
    /// Size limits of start requests (`[intake]`).
    pub intake: crate::domain::IntakeLimits,
    /// Named workflows a start request may ask for (`workflow = "premium"`).
    pub workflows: HashMap<String, uuid::Uuid>,
    pub rules: RulesSettings,
}

/// A setting that cannot be used, with the key to fix and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting {key}: {reason}")]
pub struct SettingsError {
    /// The key as an environment variable, e.g. `KYC__DIDIT__BASE_URL`.
    pub key: String,
    pub reason: String,
}

impl SettingsError {
    /// `path` is the dotted key of the file, e.g. `didit.base_url`.
    pub(crate) fn new(path: &str, reason: impl Into<String>) -> Self {
        Self {
            key: env_key(path),
            reason: reason.into(),
        }
    }
}

/// `didit.base_url` → `KYC__DIDIT__BASE_URL`.
fn env_key(path: &str) -> String {
    if path.is_empty() {
        return "settings".to_owned();
    }
    format!("KYC__{}", path.replace('.', "__").to_uppercase())
}

/// Where the layers come from. Tests pass their own environment instead of mutating the
/// process's, which would leak between tests running in parallel.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    /// The directory holding `{KYC_ENV}.toml`; `config` under the working directory by default.
    pub config_dir: Option<std::path::PathBuf>,
    /// Environment variables; the process environment when `None`.
    pub env: Option<HashMap<String, String>>,
}

impl Settings {
    /// Loads the settings from the process environment and `./config`.
    pub fn load() -> Result<Self, SettingsError> {
        Self::load_from(&Sources::default())
    }

    pub fn load_from(sources: &Sources) -> Result<Self, SettingsError> {
        let env: HashMap<String, String> = match &sources.env {
            Some(env) => env.clone(),
            None => std::env::vars().collect(),
        };
        let environment = env
            .get(ENVIRONMENT_VAR)
            .cloned()
            .unwrap_or_else(|| "local".to_owned());
        let dir = sources
            .config_dir
            .clone()
            .unwrap_or_else(|| Path::new("config").to_path_buf());
        let overlay = dir.join(format!("{environment}.toml"));

        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_SETTINGS,
            config::FileFormat::Toml,
        ));
        if overlay.is_file() {
            builder = builder.add_source(config::File::from(overlay.as_path()));
        }
        let env_source = config::Environment::with_prefix("KYC")
            .prefix_separator("__")
            .separator("__")
            .source(Some(
                env.into_iter()
                    .filter(|(k, _)| k.starts_with("KYC__"))
                    .collect(),
            ));
        let raw: RawSettings = builder
            .add_source(env_source)
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(from_config_error)?;
        raw.validate()
    }
}

/// Turns the `config` crate's error into one with a key, where it names one.
fn from_config_error(error: config::ConfigError) -> SettingsError {
    match error {
        config::ConfigError::Type {
            key: Some(key),
            unexpected,
            expected,
            ..
        } => SettingsError::new(&key, format!("expected {expected}, got {unexpected}")),
        config::ConfigError::NotFound(key) => SettingsError::new(&key, "missing"),
        config::ConfigError::Message(message) => {
            // Messages look like "missing field `x` for key `didit`" or carry a key suffix.
            match message.rsplit_once(" for key `") {
                Some((reason, key)) => SettingsError::new(key.trim_end_matches('`'), reason),
                None => SettingsError::new("", message),
            }
        }
        config::ConfigError::FileParse { uri, cause } => SettingsError {
            key: uri.unwrap_or_else(|| "settings file".to_owned()),
            reason: cause.to_string(),
        },
        other => SettingsError::new("", other.to_string()),
    }
}

/// The shape of the layered settings before validation. Values that need parsing stay
/// strings in each section's raw shape so a bad one is reported with its key.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    log: log::RawLog,
    redis: redis::RawRedis,
    http: http::RawHttp,
    intake: intake::RawIntake,
    didit: didit::RawDidit,
    worker: worker::RawWorker,
    queue: queue::RawQueue,
    poll: poll::RawPoll,
    events: events::RawEvents,
    ratelimit: ratelimit::RawRateLimit,
    #[serde(default)]
    workflows: HashMap<String, String>,
    rules: rules::RawRules,
}

impl RawSettings {
    /// Validates section by section, in the order of the file, so the first bad key wins.
    fn validate(self) -> Result<Settings, SettingsError> {
        let log = self.log.validate()?;
        let redis = self.redis.validate()?;
        let http = self.http.validate()?;
        let intake = self.intake.validate()?;
        let didit = self.didit.validate()?;
        let worker = self.worker.validate()?;
        let queue = self.queue.validate()?;
        let poll = self.poll.validate()?;
        let events = self.events.validate(didit.is_sandbox())?;
        let ratelimit = self.ratelimit.validate()?;
        let workflows = validate_workflows(self.workflows)?;
        let rules = self.rules.validate()?;
        Ok(Settings {
            log,
            redis,
            http,
            didit,
            worker,
            queue,
            poll,
            events,
            ratelimit,
            intake,
            workflows,
            rules,
        })
    }
}

/// `[workflows]`: names a start request may use instead of a workflow UUID.
fn validate_workflows(
    raw: HashMap<String, String>,
) -> Result<HashMap<String, uuid::Uuid>, SettingsError> {
    raw.into_iter()
        .map(|(name, id)| {
            let key = format!("workflows.{name}");
            let id = uuid::Uuid::from_str(id.trim())
                .map_err(|e| SettingsError::new(&key, format!("expected a workflow UUID: {e}")))?;
            Ok((name, id))
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Loads the embedded defaults under `vars`, with an empty overlay directory.
    pub(crate) fn load(vars: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let dir = tempfile::tempdir().expect("tempdir");
        Settings::load_from(&Sources {
            config_dir: Some(dir.path().to_path_buf()),
            env: Some(
                vars.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
        })
    }

    #[test]
    fn the_embedded_defaults_load_without_a_config_directory() {
        let sources = Sources {
            config_dir: Some(std::path::PathBuf::from("/nonexistent")),
            env: Some(HashMap::new()),
        };
        let settings = Settings::load_from(&sources).expect("embedded defaults load");
        assert!(settings.didit.is_sandbox());
        assert_eq!(settings.redis.prefix, "kyc");
        assert!(settings.workflows.is_empty());
    }

    #[test]
    fn environment_variables_override_the_file() {
        let s =
            load(&[("KYC__REDIS__PREFIX", "other"), ("KYC__HTTP__PORT", "9999")]).expect("valid");
        assert_eq!(s.redis.prefix, "other");
        assert_eq!(s.http.port, 9999);
    }

    #[test]
    fn the_environment_file_layer_sits_between_defaults_and_env() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("staging.toml"),
            "[redis]\nprefix = \"staging\"\n[http]\nport = 7000\n",
        )
        .expect("write");
        let s = Settings::load_from(&Sources {
            config_dir: Some(dir.path().to_path_buf()),
            env: Some(HashMap::from([
                ("KYC_ENV".to_owned(), "staging".to_owned()),
                ("KYC__HTTP__PORT".to_owned(), "7001".to_owned()),
            ])),
        })
        .expect("valid");
        assert_eq!(s.redis.prefix, "staging");
        assert_eq!(s.http.port, 7001);
    }

    #[test]
    fn named_workflows_must_be_uuids() {
        let id = "11111111-2222-3333-4444-555555555555";
        let s = load(&[("KYC__WORKFLOWS__PREMIUM", id)]).expect("valid");
        assert_eq!(s.workflows["premium"].to_string(), id);
        let err = load(&[("KYC__WORKFLOWS__PREMIUM", "abc")]).expect_err("not a uuid");
        assert_eq!(err.key, "KYC__WORKFLOWS__PREMIUM");
        assert!(err.reason.contains("UUID"), "{err}");
    }

    #[test]
    fn secrets_do_not_appear_in_debug_output() {
        let s = load(&[
            ("KYC__DIDIT__API_KEY", "very-secret-key-123"),
            ("KYC__REDIS__URL", "redis://:hunter2@127.0.0.1:6379"),
            ("KYC__HTTP__ADMIN_TOKEN", "admin-token-never-printed"),
        ])
        .expect("valid");
        let printed = format!("{s:?}");
        assert!(!printed.contains("admin-token-never-printed"));
        assert!(!printed.contains("very-secret-key-123"));
        assert!(!printed.contains("hunter2"));
        assert!(!printed.contains("sandbox-webhook-secret"));
        assert!(printed.contains("[REDACTED]"));
    }

    #[test]
    fn an_unknown_key_is_refused_by_name() {
        let err = load(&[("KYC__DIDIT__API_KEYY", "x")]).expect_err("typo");
        assert!(err.reason.contains("api_keyy"), "{err}");
    }
}
