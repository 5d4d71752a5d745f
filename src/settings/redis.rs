//! `[redis]`: how to reach the fleet's one Redis (a standalone server or a master found
//! through Sentinel), with which credentials and TLS, and the namespace of its keys.
//!
//! Only the shape is checked here; the files named by `tls_*_file` are read when a connection
//! is made (see [`crate::queue::Connector`]), so commands that never touch Redis do not need
//! them. Credentials are [`SecretString`]s: `Debug` prints `[REDACTED]`.

use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

use super::{parse::parse_bool, SettingsError};

/// How the fleet finds its Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisMode {
    /// One server at `redis.url` (a managed Redis's primary endpoint is one too).
    Standalone,
    /// The master of `redis.sentinel_master`, as the sentinels at `redis.nodes` name it.
    Sentinel,
}

/// One `host:port` of `redis.nodes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisNode {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for RedisNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub mode: RedisMode,
    /// Standalone: `redis://` or `rediss://`, may carry `user:password@` (hence secret).
    pub url: SecretString,
    /// Sentinel: the sentinels.
    pub nodes: Vec<RedisNode>,
    /// Sentinel: the name the sentinels monitor the master under.
    pub sentinel_master: String,
    /// ACL user and password of the data nodes (win over the URL's).
    pub username: Option<String>,
    pub password: Option<SecretString>,
    /// ACL user and password of the sentinels themselves.
    pub sentinel_username: Option<String>,
    pub sentinel_password: Option<SecretString>,
    /// Sentinel: TLS to the sentinels and the data nodes (standalone: the `rediss://` scheme).
    pub tls: bool,
    /// A CA bundle to trust instead of the public roots.
    pub tls_ca_file: Option<PathBuf>,
    /// A client certificate and its key, for servers that require mutual TLS.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    pub prefix: String,
}

impl RedisSettings {
    /// The standalone URL, credentials included: only for building a connection.
    pub fn url(&self) -> &str {
        self.url.expose_secret()
    }

    /// Whether connections use TLS in the configured mode.
    pub fn uses_tls(&self) -> bool {
        match self.mode {
            RedisMode::Standalone => self.url().trim_start().starts_with("rediss://"),
            RedisMode::Sentinel => self.tls,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRedis {
    mode: String,
    url: String,
    nodes: String,
    sentinel_master: String,
    username: String,
    password: String,
    sentinel_username: String,
    sentinel_password: String,
    tls: String,
    tls_ca_file: String,
    tls_cert_file: String,
    tls_key_file: String,
    prefix: String,
}

fn optional(value: &str) -> Option<String> {
    Some(value.trim().to_owned()).filter(|v| !v.is_empty())
}

fn optional_secret(value: &str) -> Option<SecretString> {
    optional(value).map(SecretString::from)
}

/// `host:port, host:port` (IPv6 hosts in brackets).
fn parse_nodes(value: &str) -> Result<Vec<RedisNode>, SettingsError> {
    value
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|node| {
            let (host, port) = node.rsplit_once(':').ok_or_else(|| {
                SettingsError::new("redis.nodes", format!("expected host:port, got \"{node}\""))
            })?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port = port.parse::<u16>().ok().filter(|p| *p != 0);
            match port {
                Some(port) if !host.is_empty() => Ok(RedisNode {
                    host: host.to_owned(),
                    port,
                }),
                _ => Err(SettingsError::new(
                    "redis.nodes",
                    format!("expected host:port, got \"{node}\""),
                )),
            }
        })
        .collect()
}

impl RawRedis {
    pub(super) fn validate(self) -> Result<RedisSettings, SettingsError> {
        let mode = match self.mode.trim() {
            "standalone" => RedisMode::Standalone,
            "sentinel" => RedisMode::Sentinel,
            "cluster" => {
                return Err(SettingsError::new(
                    "redis.mode",
                    "\"cluster\" is not supported yet: use \"standalone\" (a managed Redis's primary endpoint) or \"sentinel\"",
                ))
            }
            other => {
                return Err(SettingsError::new(
                    "redis.mode",
                    format!("expected \"standalone\" or \"sentinel\", got \"{other}\""),
                ))
            }
        };
        let tls = parse_bool("redis.tls", &self.tls)?;
        let tls_ca_file = optional(&self.tls_ca_file).map(PathBuf::from);
        let tls_cert_file = optional(&self.tls_cert_file).map(PathBuf::from);
        let tls_key_file = optional(&self.tls_key_file).map(PathBuf::from);
        match (&tls_cert_file, &tls_key_file) {
            (Some(_), None) => {
                return Err(SettingsError::new(
                    "redis.tls_key_file",
                    "missing: a client certificate (redis.tls_cert_file) needs its key",
                ))
            }
            (None, Some(_)) => {
                return Err(SettingsError::new(
                    "redis.tls_cert_file",
                    "missing: a client key (redis.tls_key_file) needs its certificate",
                ))
            }
            _ => {}
        }
        let tls_files = tls_ca_file.is_some() || tls_cert_file.is_some();

        // The value is not echoed: a Redis URL may carry a password.
        let url = self.url.trim();
        let nodes = parse_nodes(&self.nodes)?;
        let sentinel_master = self.sentinel_master.trim().to_owned();
        match mode {
            RedisMode::Standalone => {
                let parsed = Url::parse(url)
                    .map_err(|e| SettingsError::new("redis.url", format!("not a URL ({e})")))?;
                if !matches!(parsed.scheme(), "redis" | "rediss" | "redis+unix" | "unix") {
                    return Err(SettingsError::new(
                        "redis.url",
                        format!(
                            "expected a redis:// or rediss:// URL, got scheme \"{}\"",
                            parsed.scheme()
                        ),
                    ));
                }
                if tls_files && parsed.scheme() != "rediss" {
                    return Err(SettingsError::new(
                        "redis.url",
                        "TLS files are set (redis.tls_ca_file, redis.tls_cert_file) but the URL is not rediss://",
                    ));
                }
            }
            RedisMode::Sentinel => {
                if nodes.is_empty() {
                    return Err(SettingsError::new(
                        "redis.nodes",
                        "missing: sentinel mode needs the sentinels as host:port, comma-separated",
                    ));
                }
                if sentinel_master.is_empty() {
                    return Err(SettingsError::new(
                        "redis.sentinel_master",
                        "missing: the name the sentinels monitor the master under",
                    ));
                }
                if tls_files && !tls {
                    return Err(SettingsError::new(
                        "redis.tls",
                        "TLS files are set (redis.tls_ca_file, redis.tls_cert_file) but redis.tls is false",
                    ));
                }
            }
        }

        let prefix = self.prefix;
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
        Ok(RedisSettings {
            mode,
            url: SecretString::from(url.to_owned()),
            nodes,
            sentinel_master,
            username: optional(&self.username),
            password: optional_secret(&self.password),
            sentinel_username: optional(&self.sentinel_username),
            sentinel_password: optional_secret(&self.sentinel_password),
            tls,
            tls_ca_file,
            tls_cert_file,
            tls_key_file,
            prefix,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::load;
    use super::*;

    #[test]
    fn the_default_is_one_standalone_redis_on_this_machine() {
        let s = load(&[]).expect("defaults");
        assert_eq!(s.redis.mode, RedisMode::Standalone);
        assert_eq!(s.redis.url(), "redis://127.0.0.1:6379");
        assert!(!s.redis.uses_tls());
        assert!(s.redis.password.is_none());
    }

    #[test]
    fn a_bad_redis_url_is_refused_without_echoing_its_password() {
        let err = load(&[("KYC__REDIS__URL", "redis//:hunter2@host")]).expect_err("bad url");
        assert_eq!(err.key, "KYC__REDIS__URL");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn only_redis_urls_are_accepted() {
        let err = load(&[("KYC__REDIS__URL", "http://x")]).expect_err("http");
        assert_eq!(err.key, "KYC__REDIS__URL");
        assert!(err.reason.contains("redis://"), "{err}");
        let s = load(&[("KYC__REDIS__URL", "rediss://u:p@redis.example:6380")]).expect("tls");
        assert!(s.redis.uses_tls());
    }

    #[test]
    fn the_prefix_is_one_plain_word() {
        let s = load(&[("KYC__REDIS__PREFIX", "other")]).expect("valid");
        assert_eq!(s.redis.prefix, "other");
        let err = load(&[("KYC__REDIS__PREFIX", "a b")]).expect_err("space");
        assert_eq!(err.key, "KYC__REDIS__PREFIX");
    }

    #[test]
    fn cluster_mode_is_refused_as_not_supported_yet() {
        let err = load(&[("KYC__REDIS__MODE", "cluster")]).expect_err("cluster");
        assert_eq!(err.key, "KYC__REDIS__MODE");
        assert!(err.reason.contains("not supported yet"), "{err}");
        let err = load(&[("KYC__REDIS__MODE", "replicated")]).expect_err("unknown");
        assert_eq!(err.key, "KYC__REDIS__MODE");
    }

    #[test]
    fn sentinel_mode_needs_the_sentinels_and_the_master_name() {
        let err = load(&[("KYC__REDIS__MODE", "sentinel")]).expect_err("no nodes");
        assert_eq!(err.key, "KYC__REDIS__NODES");
        let err = load(&[
            ("KYC__REDIS__MODE", "sentinel"),
            ("KYC__REDIS__NODES", "10.0.0.1:26379"),
        ])
        .expect_err("no master");
        assert_eq!(err.key, "KYC__REDIS__SENTINEL_MASTER");
        let s = load(&[
            ("KYC__REDIS__MODE", "sentinel"),
            (
                "KYC__REDIS__NODES",
                "10.0.0.1:26379, sentinel-b:26380,[::1]:26381",
            ),
            ("KYC__REDIS__SENTINEL_MASTER", "kyc"),
            ("KYC__REDIS__TLS", "true"),
        ])
        .expect("valid");
        assert_eq!(s.redis.mode, RedisMode::Sentinel);
        assert_eq!(
            s.redis
                .nodes
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["10.0.0.1:26379", "sentinel-b:26380", "[::1]:26381"]
        );
        assert!(s.redis.uses_tls());
        for bad in ["10.0.0.1", "host:0", ":26379", "host:port"] {
            let err = load(&[
                ("KYC__REDIS__MODE", "sentinel"),
                ("KYC__REDIS__NODES", bad),
                ("KYC__REDIS__SENTINEL_MASTER", "kyc"),
            ])
            .expect_err(bad);
            assert_eq!(err.key, "KYC__REDIS__NODES", "{bad}");
        }
    }

    #[test]
    fn tls_files_need_tls_and_come_as_a_pair() {
        let err = load(&[("KYC__REDIS__TLS_CA_FILE", "/etc/ca.pem")]).expect_err("plain url");
        assert_eq!(err.key, "KYC__REDIS__URL");
        let err = load(&[
            ("KYC__REDIS__URL", "rediss://127.0.0.1:6380"),
            ("KYC__REDIS__TLS_CERT_FILE", "/etc/client.pem"),
        ])
        .expect_err("no key");
        assert_eq!(err.key, "KYC__REDIS__TLS_KEY_FILE");
        let err = load(&[
            ("KYC__REDIS__MODE", "sentinel"),
            ("KYC__REDIS__NODES", "10.0.0.1:26379"),
            ("KYC__REDIS__SENTINEL_MASTER", "kyc"),
            ("KYC__REDIS__TLS_CA_FILE", "/etc/ca.pem"),
        ])
        .expect_err("tls off");
        assert_eq!(err.key, "KYC__REDIS__TLS");
    }

    #[test]
    fn passwords_are_redacted_in_debug_output() {
        let s = load(&[
            ("KYC__REDIS__PASSWORD", "data-node-secret"),
            ("KYC__REDIS__SENTINEL_PASSWORD", "sentinel-secret"),
            ("KYC__REDIS__URL", "redis://u:url-secret@127.0.0.1:6379"),
        ])
        .expect("valid");
        let printed = format!("{:?}", s.redis);
        for secret in ["data-node-secret", "sentinel-secret", "url-secret"] {
            assert!(!printed.contains(secret), "{printed}");
        }
        assert!(printed.contains("[REDACTED]"));
    }
}
