//! Settings: what an operator can change without a rebuild.
//!
//! The layers are fixed by DESIGN.md: `config/default.toml` compiled into the binary, then
//! `config/{KYC_ENV}.toml` when it exists, then `KYC__SECTION__KEY` environment variables.
//! Loading also validates: every problem becomes one [`SettingsError`] that names the key the
//! operator has to fix (as the environment variable they would set) and why, so `main` can
//! print one line and exit 2 before anything touches Redis or Didit.

use std::{collections::HashMap, fmt, path::Path, str::FromStr, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

/// The compiled-in defaults; the file is also the documentation of every key.
pub const DEFAULT_SETTINGS: &str = include_str!("../config/default.toml");

/// The environment variable that selects `config/{KYC_ENV}.toml`.
pub const ENVIRONMENT_VAR: &str = "KYC_ENV";

/// The key the sandbox accepts by default; refused for a real Didit base URL.
pub const SANDBOX_API_KEY: &str = didit_sandbox::DEFAULT_API_KEY;
/// The subject-hash salt of the embedded defaults; refused for a real Didit base URL.
pub const SANDBOX_SUBJECT_SALT: &str = "sandbox-subject-salt-not-secret";

/// The webhook secret the sandbox signs with by default; refused for a real Didit base URL.
pub const SANDBOX_WEBHOOK_SECRET: &str = didit_sandbox::DEFAULT_WEBHOOK_SECRET;

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
    /// Named workflows a start request may ask for (`workflow = "premium"`).
    pub workflows: HashMap<String, uuid::Uuid>,
    pub rules: RulesSettings,
}

/// The auto-decision rules (see [`crate::rules`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulesSettings {
    pub source: RulesSource,
    /// Evaluate and publish what the rules decided, but never change the status at Didit.
    pub dry_run: bool,
    /// Resubmissions a rule may ask for per session; past it a `resubmit` goes to review.
    pub max_resubmits: u32,
}

/// Where the rule set comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RulesSource {
    /// `file` unset: the default pack compiled into the binary.
    Embedded,
    /// `file = ""`: no rules, Didit's status always stands.
    Disabled,
    File(std::path::PathBuf),
}

#[derive(Debug, Clone, PartialEq)]
pub struct PollSettings {
    /// Webhooks are configured: polls are only a safety net.
    pub with_webhooks: crate::domain::PollSchedule,
    /// No webhooks: polls are how decisions are seen.
    pub polling_only: crate::domain::PollSchedule,
    /// Added to the workflow's session expiration before we give up on a session.
    pub expiry_grace: Duration,
    /// How often a session In Review is re-read, and for how long.
    pub review_interval: Duration,
    pub review_horizon: Duration,
    /// How often work waiting on a paused account checks again.
    pub pause_recheck: Duration,
    /// How often open and In Review sessions are re-read whatever else happened (Didit
    /// drops a webhook after three failed tries; reviews are decided days later).
    pub sweep_interval: Duration,
}

/// The fleet's share of Didit's per-key limits (see `ratelimit`).
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitSettings {
    pub enabled: bool,
    pub window: Duration,
    /// Added to the window: the longest a call may take to reach Didit after admission.
    pub margin: Duration,
    pub get: u32,
    pub write: u32,
    pub create: u32,
    pub pdf: u32,
    /// Share of each window that low-priority calls (safety-net polls) may use.
    pub low_share: f64,
}

#[derive(Debug, Clone)]
pub struct EventSettings {
    /// Events older than this are trimmed from the stream.
    pub retention: Duration,
    /// Salt of the subject hash (`kyc.subject.erased` carries the hash, never the value).
    pub subject_salt: SecretString,
    /// How long the fleet remembers what it published, and which request a session serves.
    pub record_retention: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// Kept secret: a Redis URL may carry a password.
    pub url: SecretString,
    pub prefix: String,
}

#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub host: String,
    pub port: u16,
    pub internal_port: Option<u16>,
    /// Bearer token of `/v1/verifications`; `None` turns the HTTP intake off.
    pub api_token: Option<SecretString>,
    /// Serve the operator console under `/console/`.
    pub console: bool,
    /// The console's admin token: actions and unmasked PII; `None`: the console is read-only.
    pub admin_token: Option<SecretString>,
}

#[derive(Debug, Clone)]
pub struct DiditSettings {
    pub base_url: Url,
    pub auth_base_url: Url,
    pub api_key: SecretString,
    pub webhook_secret: SecretString,
    pub previous_webhook_secrets: Vec<SecretString>,
    pub webhook_tolerance: Duration,
    pub workflow_id: uuid::Uuid,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub pdf_timeout: Duration,
    /// Whether Didit delivers webhooks to this fleet (chooses the poll schedule).
    pub webhooks: bool,
}

impl DiditSettings {
    /// What the Didit client needs of these settings.
    pub fn client_config(&self) -> didit::ClientConfig {
        didit::ClientConfig {
            connect_timeout: self.connect_timeout,
            request_timeout: self.request_timeout,
            pdf_timeout: self.pdf_timeout,
            user_agent: concat!("kyc-worker/", env!("CARGO_PKG_VERSION")).to_owned(),
            ..didit::ClientConfig::new(
                self.base_url.clone(),
                self.auth_base_url.clone(),
                self.api_key.clone(),
            )
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSettings {
    pub concurrency: usize,
    pub shutdown_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSettings {
    pub reclaim_after: Duration,
    pub max_deliveries: u32,
    pub max_attempts: u32,
    pub job_deadline: Duration,
    pub retry_min: Duration,
    pub retry_max: Duration,
    pub fetch_batch: usize,
    pub fetch_block: Duration,
    /// Longest a lost wake-up (a broken subscription) can delay a delayed job: the promoter
    /// checks its subscription twice per period.
    pub wake_bound: Duration,
    pub dead_max_len: u64,
    /// Start requests waiting (ready + scheduled) past which producers are told to back off.
    pub backpressure_limit: u64,
}

impl Default for QueueSettings {
    /// The values of `config/default.toml`.
    fn default() -> Self {
        Self {
            reclaim_after: Duration::from_secs(30),
            max_deliveries: 5,
            max_attempts: 25,
            job_deadline: Duration::from_secs(24 * 3600),
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            fetch_batch: 32,
            fetch_block: Duration::from_secs(5),
            wake_bound: Duration::from_secs(1),
            dead_max_len: 100_000,
            backpressure_limit: 100_000,
        }
    }
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
    fn new(path: &str, reason: impl Into<String>) -> Self {
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
/// strings here so a bad one is reported with its key by [`RawSettings::validate`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    log: RawLog,
    redis: RawRedis,
    http: RawHttp,
    didit: RawDidit,
    worker: RawWorker,
    queue: RawQueue,
    poll: RawPoll,
    events: RawEvents,
    ratelimit: RawRateLimit,
    #[serde(default)]
    workflows: HashMap<String, String>,
    rules: RawRules,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRules {
    file: Option<String>,
    dry_run: String,
    max_resubmits: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPoll {
    webhook_initial: String,
    webhook_max: String,
    polling_initial: String,
    polling_max: String,
    multiplier: String,
    jitter: String,
    expiry_grace: String,
    review_interval: String,
    review_horizon: String,
    pause_recheck: String,
    sweep_interval: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    enabled: String,
    window: String,
    margin: String,
    get: String,
    write: String,
    create: String,
    pdf: String,
    low_share: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvents {
    retention: String,
    subject_salt: String,
    record_retention: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    reclaim_after: String,
    max_deliveries: String,
    max_attempts: String,
    job_deadline: String,
    retry_min: String,
    retry_max: String,
    fetch_batch: String,
    fetch_block: String,
    wake_bound: String,
    dead_max_len: String,
    backpressure_limit: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: String,
    format: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedis {
    url: String,
    prefix: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    host: String,
    port: String,
    internal_port: Option<String>,
    api_token: String,
    console: String,
    admin_token: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDidit {
    base_url: String,
    auth_base_url: String,
    api_key: String,
    webhook_secret: String,
    previous_webhook_secrets: String,
    webhook_tolerance: String,
    workflow_id: String,
    connect_timeout: String,
    request_timeout: String,
    pdf_timeout: String,
    webhooks: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorker {
    concurrency: String,
    shutdown_timeout: String,
}

impl RawSettings {
    fn validate(self) -> Result<Settings, SettingsError> {
        let log = LogSettings {
            format: match self.log.format.as_str() {
                "pretty" => LogFormat::Pretty,
                "json" => LogFormat::Json,
                other => {
                    return Err(SettingsError::new(
                        "log.format",
                        format!("expected \"pretty\" or \"json\", got \"{other}\""),
                    ))
                }
            },
            level: self.log.level,
        };
        tracing_subscriber::EnvFilter::try_new(&log.level)
            .map_err(|e| SettingsError::new("log.level", e.to_string()))?;

        // The value is not echoed: a Redis URL may carry a password.
        let redis_url = Url::parse(self.redis.url.trim())
            .map_err(|e| SettingsError::new("redis.url", format!("not a URL ({e})")))?;
        if !matches!(
            redis_url.scheme(),
            "redis" | "rediss" | "redis+unix" | "unix"
        ) {
            return Err(SettingsError::new(
                "redis.url",
                format!(
                    "expected a redis:// or rediss:// URL, got scheme \"{}\"",
                    redis_url.scheme()
                ),
            ));
        }
        let prefix = self.redis.prefix;
        if prefix.is_empty()
            || !prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(SettingsError::new(
                "redis.prefix",
                "expected letters, digits, '-', '_' or '.', at least one",
            ));
        }

        let http = HttpSettings {
            host: self.http.host,
            port: parse_port("http.port", &self.http.port)?,
            internal_port: match self.http.internal_port.as_deref().map(str::trim) {
                None | Some("") => None,
                Some(p) => Some(parse_port("http.internal_port", p)?),
            },
            api_token: match self.http.api_token.trim() {
                "" => None,
                token if token.len() < 16 => {
                    return Err(SettingsError::new(
                        "http.api_token",
                        "must be at least 16 characters",
                    ))
                }
                token => Some(SecretString::from(token.to_owned())),
            },
            console: parse_bool("http.console", &self.http.console)?,
            admin_token: match self.http.admin_token.trim() {
                "" => None,
                token if token.len() < 16 => {
                    return Err(SettingsError::new(
                        "http.admin_token",
                        "must be at least 16 characters",
                    ))
                }
                token => Some(SecretString::from(token.to_owned())),
            },
        };

        let base_url = parse_http_url("didit.base_url", &self.didit.base_url)?;
        let auth_base_url = parse_http_url("didit.auth_base_url", &self.didit.auth_base_url)?;
        let sandbox = is_loopback(&base_url);
        let api_key = self.didit.api_key.trim().to_owned();
        if api_key.is_empty() || (!sandbox && api_key == SANDBOX_API_KEY) {
            return Err(SettingsError::new(
                "didit.api_key",
                format!("missing: {base_url} is not the local sandbox, set your Didit API key"),
            ));
        }
        let webhook_secret = self.didit.webhook_secret.trim().to_owned();
        if webhook_secret.is_empty() || (!sandbox && webhook_secret == SANDBOX_WEBHOOK_SECRET) {
            return Err(SettingsError::new(
                "didit.webhook_secret",
                format!(
                    "missing: {base_url} is not the local sandbox, set the secret_shared_key of your webhook destination"
                ),
            ));
        }
        let previous_webhook_secrets = self
            .didit
            .previous_webhook_secrets
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| SecretString::from(s.to_owned()))
            .collect();
        let didit = DiditSettings {
            base_url,
            auth_base_url,
            api_key: SecretString::from(api_key),
            webhook_secret: SecretString::from(webhook_secret),
            previous_webhook_secrets,
            webhook_tolerance: parse_duration_setting(
                "didit.webhook_tolerance",
                &self.didit.webhook_tolerance,
            )?,
            workflow_id: uuid::Uuid::from_str(self.didit.workflow_id.trim()).map_err(|e| {
                SettingsError::new("didit.workflow_id", format!("expected a UUID: {e}"))
            })?,
            connect_timeout: parse_positive_duration(
                "didit.connect_timeout",
                &self.didit.connect_timeout,
            )?,
            request_timeout: parse_positive_duration(
                "didit.request_timeout",
                &self.didit.request_timeout,
            )?,
            pdf_timeout: parse_positive_duration("didit.pdf_timeout", &self.didit.pdf_timeout)?,
            webhooks: parse_bool("didit.webhooks", &self.didit.webhooks)?,
        };

        let concurrency: usize = self.worker.concurrency.trim().parse().map_err(|_| {
            SettingsError::new(
                "worker.concurrency",
                format!(
                    "expected a whole number, got \"{}\"",
                    self.worker.concurrency
                ),
            )
        })?;
        if concurrency == 0 {
            return Err(SettingsError::new(
                "worker.concurrency",
                "must be at least 1",
            ));
        }
        let worker = WorkerSettings {
            concurrency,
            shutdown_timeout: parse_duration_setting(
                "worker.shutdown_timeout",
                &self.worker.shutdown_timeout,
            )?,
        };

        let q = &self.queue;
        let queue = QueueSettings {
            reclaim_after: parse_positive_duration("queue.reclaim_after", &q.reclaim_after)?,
            max_deliveries: parse_count("queue.max_deliveries", &q.max_deliveries)?,
            max_attempts: parse_count("queue.max_attempts", &q.max_attempts)?,
            job_deadline: parse_positive_duration("queue.job_deadline", &q.job_deadline)?,
            retry_min: parse_positive_duration("queue.retry_min", &q.retry_min)?,
            retry_max: parse_positive_duration("queue.retry_max", &q.retry_max)?,
            fetch_batch: parse_count("queue.fetch_batch", &q.fetch_batch)?,
            fetch_block: parse_positive_duration("queue.fetch_block", &q.fetch_block)?,
            wake_bound: parse_positive_duration("queue.wake_bound", &q.wake_bound)?,
            dead_max_len: parse_count("queue.dead_max_len", &q.dead_max_len)?,
            backpressure_limit: parse_count("queue.backpressure_limit", &q.backpressure_limit)?,
        };
        if queue.fetch_block >= Duration::from_secs(10) {
            return Err(SettingsError::new(
                "queue.fetch_block",
                "must be shorter than 10s (the Redis reply timeout)",
            ));
        }
        if queue.reclaim_after < queue.fetch_block * 2 {
            return Err(SettingsError::new(
                "queue.reclaim_after",
                "must be at least twice queue.fetch_block (a blocked read must not look like a dead worker)",
            ));
        }
        if queue.retry_max < queue.retry_min {
            return Err(SettingsError::new(
                "queue.retry_max",
                "must not be shorter than queue.retry_min",
            ));
        }

        let p = &self.poll;
        let multiplier: f64 = p
            .multiplier
            .trim()
            .parse()
            .ok()
            .filter(|m: &f64| *m >= 1.0)
            .ok_or_else(|| {
                SettingsError::new(
                    "poll.multiplier",
                    format!("expected a number >= 1, got \"{}\"", p.multiplier),
                )
            })?;
        let jitter: f64 = p
            .jitter
            .trim()
            .parse()
            .ok()
            .filter(|j: &f64| (0.0..1.0).contains(j))
            .ok_or_else(|| {
                SettingsError::new(
                    "poll.jitter",
                    format!("expected a fraction in [0, 1), got \"{}\"", p.jitter),
                )
            })?;
        let schedule = |initial: &str,
                        ikey: &str,
                        max: &str,
                        mkey: &str|
         -> Result<crate::domain::PollSchedule, SettingsError> {
            Ok(crate::domain::PollSchedule {
                initial: parse_positive_duration(ikey, initial)?,
                max: parse_positive_duration(mkey, max)?,
                multiplier,
                jitter,
            })
        };
        let poll = PollSettings {
            with_webhooks: schedule(
                &p.webhook_initial,
                "poll.webhook_initial",
                &p.webhook_max,
                "poll.webhook_max",
            )?,
            polling_only: schedule(
                &p.polling_initial,
                "poll.polling_initial",
                &p.polling_max,
                "poll.polling_max",
            )?,
            expiry_grace: parse_duration_setting("poll.expiry_grace", &p.expiry_grace)?,
            review_interval: parse_positive_duration("poll.review_interval", &p.review_interval)?,
            review_horizon: parse_duration_setting("poll.review_horizon", &p.review_horizon)?,
            pause_recheck: parse_positive_duration("poll.pause_recheck", &p.pause_recheck)?,
            sweep_interval: parse_positive_duration("poll.sweep_interval", &p.sweep_interval)?,
        };
        let events = EventSettings {
            retention: parse_positive_duration("events.retention", &self.events.retention)?,
            subject_salt: {
                let salt = self.events.subject_salt.trim();
                if salt.len() < 16 || (!sandbox && salt == SANDBOX_SUBJECT_SALT) {
                    return Err(SettingsError::new(
                        "events.subject_salt",
                        "set a random value of at least 16 characters (it keeps erased subjects' hashes unguessable)",
                    ));
                }
                SecretString::from(salt.to_owned())
            },
            record_retention: parse_positive_duration(
                "events.record_retention",
                &self.events.record_retention,
            )?,
        };
        let r = &self.ratelimit;
        let ratelimit = RateLimitSettings {
            enabled: parse_bool("ratelimit.enabled", &r.enabled)?,
            window: parse_positive_duration("ratelimit.window", &r.window)?,
            margin: parse_duration_setting("ratelimit.margin", &r.margin)?,
            get: parse_count("ratelimit.get", &r.get)?,
            write: parse_count("ratelimit.write", &r.write)?,
            create: parse_count("ratelimit.create", &r.create)?,
            pdf: parse_count("ratelimit.pdf", &r.pdf)?,
            low_share: r
                .low_share
                .trim()
                .parse()
                .ok()
                .filter(|s: &f64| *s > 0.0 && *s <= 1.0)
                .ok_or_else(|| {
                    SettingsError::new(
                        "ratelimit.low_share",
                        format!("expected a fraction in (0, 1], got \"{}\"", r.low_share),
                    )
                })?,
        };
        let mut workflows = HashMap::new();
        for (name, id) in self.workflows {
            let key = format!("workflows.{name}");
            let id = uuid::Uuid::from_str(id.trim())
                .map_err(|e| SettingsError::new(&key, format!("expected a workflow UUID: {e}")))?;
            workflows.insert(name, id);
        }

        let rules = RulesSettings {
            source: match self.rules.file.as_deref().map(str::trim) {
                None => RulesSource::Embedded,
                Some("") => RulesSource::Disabled,
                Some(path) => RulesSource::File(path.into()),
            },
            dry_run: parse_bool("rules.dry_run", &self.rules.dry_run)?,
            max_resubmits: self.rules.max_resubmits.trim().parse().map_err(|_| {
                SettingsError::new(
                    "rules.max_resubmits",
                    format!(
                        "expected a whole number, got \"{}\"",
                        self.rules.max_resubmits
                    ),
                )
            })?,
        };

        Ok(Settings {
            poll,
            events,
            ratelimit,
            workflows,
            rules,
            queue,
            log,
            redis: RedisSettings {
                url: SecretString::from(self.redis.url.trim().to_owned()),
                prefix,
            },
            http,
            didit,
            worker,
        })
    }
}

impl DiditSettings {
    /// True when the base URL is this machine, i.e. the sandbox rather than Didit.
    pub fn is_sandbox(&self) -> bool {
        is_loopback(&self.base_url)
    }

    /// The current secret first, then those still accepted during a rotation.
    pub fn webhook_secrets(&self) -> Vec<SecretString> {
        std::iter::once(self.webhook_secret.clone())
            .chain(self.previous_webhook_secrets.iter().cloned())
            .collect()
    }
}

impl RedisSettings {
    pub fn url(&self) -> &str {
        self.url.expose_secret()
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

fn parse_url(key: &str, value: &str) -> Result<Url, SettingsError> {
    Url::parse(value.trim())
        .map_err(|e| SettingsError::new(key, format!("not a URL ({e}): \"{value}\"")))
}

fn parse_http_url(key: &str, value: &str) -> Result<Url, SettingsError> {
    let url = parse_url(key, value)?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(SettingsError::new(
            key,
            format!("expected an http:// or https:// URL with a host, got \"{value}\""),
        ));
    }
    Ok(url)
}

fn parse_port(key: &str, value: &str) -> Result<u16, SettingsError> {
    value.trim().parse::<u16>().map_err(|_| {
        SettingsError::new(
            key,
            format!("expected a port number 0-65535, got \"{value}\""),
        )
    })
}

fn parse_bool(key: &str, value: &str) -> Result<bool, SettingsError> {
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
fn parse_count<T: FromStr + PartialOrd + From<u8>>(
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

fn parse_duration_setting(key: &str, value: &str) -> Result<Duration, SettingsError> {
    parse_duration(value).map_err(|reason| SettingsError::new(key, reason))
}

fn parse_positive_duration(key: &str, value: &str) -> Result<Duration, SettingsError> {
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
    #[test]
    fn the_sandbox_workflow_is_the_one_the_default_settings_name() {
        // Only the embedded defaults: no overlay file, no environment.
        let sources = super::Sources {
            config_dir: Some(std::path::PathBuf::from("/nonexistent")),
            env: Some(std::collections::HashMap::new()),
        };
        let settings = super::Settings::load_from(&sources).expect("embedded defaults load");
        assert_eq!(settings.didit.workflow_id, didit_sandbox::WORKFLOW_ID);
        assert!(super::DEFAULT_SETTINGS.contains(&didit_sandbox::WORKFLOW_ID.to_string()));
        assert_eq!(
            settings.didit.base_url.port(),
            Some(didit_sandbox::DEFAULT_PORT)
        );
    }

    use super::*;

    fn load(vars: &[(&str, &str)]) -> Result<Settings, SettingsError> {
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
    fn the_embedded_defaults_are_valid_and_point_at_the_sandbox() {
        let s = load(&[]).expect("defaults load");
        assert!(s.didit.is_sandbox());
        assert_eq!(s.redis.prefix, "kyc");
        assert_eq!(s.http.internal_port, None);
        assert!(s.http.api_token.is_none());
        assert!(s.http.console);
        assert!(s.http.admin_token.is_none());
        assert_eq!(s.didit.webhook_tolerance, Duration::from_secs(300));
        assert_eq!(s.worker.concurrency, 64);
        assert_eq!(s.rules.source, RulesSource::Embedded);
        assert!(!s.rules.dry_run);
        assert_eq!(s.rules.max_resubmits, 1);
    }

    #[test]
    fn the_rules_file_can_be_named_or_switched_off() {
        let s = load(&[("KYC__RULES__FILE", "ops/rules.toml")]).expect("valid");
        assert_eq!(s.rules.source, RulesSource::File("ops/rules.toml".into()));
        let s = load(&[("KYC__RULES__FILE", "")]).expect("valid");
        assert_eq!(s.rules.source, RulesSource::Disabled);
        let err = load(&[("KYC__RULES__MAX_RESUBMITS", "-1")]).expect_err("negative");
        assert_eq!(err.key, "KYC__RULES__MAX_RESUBMITS");
    }

    #[test]
    fn environment_variables_override_the_file() {
        let s = load(&[
            ("KYC__REDIS__PREFIX", "other"),
            ("KYC__HTTP__PORT", "9999"),
            ("KYC__HTTP__INTERNAL_PORT", "9100"),
            ("KYC__DIDIT__PREVIOUS_WEBHOOK_SECRETS", "old-1, old-2"),
        ])
        .expect("valid");
        assert_eq!(s.redis.prefix, "other");
        assert_eq!(s.http.port, 9999);
        assert_eq!(s.http.internal_port, Some(9100));
        assert_eq!(s.didit.webhook_secrets().len(), 3);
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
    fn each_bad_value_names_its_key_and_the_reason() {
        let cases: &[(&str, &str, &str, &str)] = &[
            (
                "KYC__DIDIT__BASE_URL",
                "not a url",
                "KYC__DIDIT__BASE_URL",
                "not a URL",
            ),
            (
                "KYC__DIDIT__BASE_URL",
                "ftp://x",
                "KYC__DIDIT__BASE_URL",
                "http://",
            ),
            (
                "KYC__WORKER__CONCURRENCY",
                "0",
                "KYC__WORKER__CONCURRENCY",
                "at least 1",
            ),
            (
                "KYC__WORKER__CONCURRENCY",
                "many",
                "KYC__WORKER__CONCURRENCY",
                "whole number",
            ),
            (
                "KYC__DIDIT__REQUEST_TIMEOUT",
                "10 parsecs",
                "KYC__DIDIT__REQUEST_TIMEOUT",
                "duration",
            ),
            (
                "KYC__DIDIT__CONNECT_TIMEOUT",
                "0s",
                "KYC__DIDIT__CONNECT_TIMEOUT",
                "longer than zero",
            ),
            ("KYC__HTTP__PORT", "70000", "KYC__HTTP__PORT", "port number"),
            ("KYC__LOG__FORMAT", "xml", "KYC__LOG__FORMAT", "pretty"),
            ("KYC__REDIS__URL", "http://x", "KYC__REDIS__URL", "redis://"),
            (
                "KYC__QUEUE__JOB_DEADLINE",
                "99999999d",
                "KYC__QUEUE__JOB_DEADLINE",
                "3650d",
            ),
            (
                "KYC__DIDIT__WORKFLOW_ID",
                "abc",
                "KYC__DIDIT__WORKFLOW_ID",
                "UUID",
            ),
            (
                "KYC__HTTP__ADMIN_TOKEN",
                "short",
                "KYC__HTTP__ADMIN_TOKEN",
                "at least 16",
            ),
            ("KYC__HTTP__CONSOLE", "maybe", "KYC__HTTP__CONSOLE", "true"),
        ];
        for (var, value, key, reason) in cases {
            let err = load(&[(var, value)]).expect_err(var);
            assert_eq!(&err.key, key, "{var}={value}: {err}");
            assert!(err.reason.contains(reason), "{var}={value}: {err}");
        }
    }

    #[test]
    fn a_real_didit_base_url_requires_a_real_key_and_secret() {
        let err =
            load(&[("KYC__DIDIT__BASE_URL", "https://verification.didit.me")]).expect_err("key");
        assert_eq!(err.key, "KYC__DIDIT__API_KEY");
        let err = load(&[
            ("KYC__DIDIT__BASE_URL", "https://verification.didit.me"),
            ("KYC__DIDIT__API_KEY", "live-key"),
        ])
        .expect_err("secret");
        assert_eq!(err.key, "KYC__DIDIT__WEBHOOK_SECRET");
        let err = load(&[
            ("KYC__DIDIT__BASE_URL", "https://verification.didit.me"),
            ("KYC__DIDIT__API_KEY", "live-key"),
            ("KYC__DIDIT__WEBHOOK_SECRET", "whsec"),
        ])
        .expect_err("salt");
        assert_eq!(err.key, "KYC__EVENTS__SUBJECT_SALT");
        load(&[
            ("KYC__DIDIT__BASE_URL", "https://verification.didit.me"),
            ("KYC__DIDIT__API_KEY", "live-key"),
            ("KYC__DIDIT__WEBHOOK_SECRET", "whsec"),
            ("KYC__EVENTS__SUBJECT_SALT", "a-random-salt-of-some-length"),
        ])
        .expect("valid");
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
    fn a_bad_redis_url_is_refused_without_echoing_its_password() {
        let err = load(&[("KYC__REDIS__URL", "redis//:hunter2@host")]).expect_err("bad url");
        assert_eq!(err.key, "KYC__REDIS__URL");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn an_unknown_key_is_refused_by_name() {
        let err = load(&[("KYC__DIDIT__API_KEYY", "x")]).expect_err("typo");
        assert!(err.reason.contains("api_keyy"), "{err}");
    }

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
}
