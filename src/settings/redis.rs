//! `[redis]`: where the fleet's one Redis is and the namespace of its keys.

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

use super::SettingsError;

#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// Kept secret: a Redis URL may carry a password.
    pub url: SecretString,
    pub prefix: String,
}

impl RedisSettings {
    pub fn url(&self) -> &str {
        self.url.expose_secret()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRedis {
    url: String,
    prefix: String,
}

impl RawRedis {
    pub(super) fn validate(self) -> Result<RedisSettings, SettingsError> {
        // The value is not echoed: a Redis URL may carry a password.
        let redis_url = Url::parse(self.url.trim())
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
            url: SecretString::from(self.url.trim().to_owned()),
            prefix,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::load;

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
    }

    #[test]
    fn the_prefix_is_one_plain_word() {
        let s = load(&[("KYC__REDIS__PREFIX", "other")]).expect("valid");
        assert_eq!(s.redis.prefix, "other");
        let err = load(&[("KYC__REDIS__PREFIX", "a b")]).expect_err("space");
        assert_eq!(err.key, "KYC__REDIS__PREFIX");
    }
}
