//! `[didit]`: how to reach Didit, the credentials, and the sandbox guard: a real Didit base
//! URL refuses the sandbox's well-known key and secret, so a demo value never reaches
//! production.

use std::{str::FromStr, time::Duration};

use secrecy::SecretString;
use serde::Deserialize;
use url::Url;

use super::{
    parse::{parse_bool, parse_duration_setting, parse_http_url, parse_positive_duration},
    SettingsError,
};

/// The key the sandbox accepts by default; refused for a real Didit base URL.
pub const SANDBOX_API_KEY: &str = didit_sandbox::DEFAULT_API_KEY;

/// The webhook secret the sandbox signs with by default; refused for a real Didit base URL.
pub const SANDBOX_WEBHOOK_SECRET: &str = didit_sandbox::DEFAULT_WEBHOOK_SECRET;

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

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDidit {
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

impl RawDidit {
    pub(super) fn validate(self) -> Result<DiditSettings, SettingsError> {
        let base_url = parse_http_url("didit.base_url", &self.base_url)?;
        let auth_base_url = parse_http_url("didit.auth_base_url", &self.auth_base_url)?;
        let sandbox = is_loopback(&base_url);
        let api_key = self.api_key.trim().to_owned();
        if api_key.is_empty() || (!sandbox && api_key == SANDBOX_API_KEY) {
            return Err(SettingsError::new(
                "didit.api_key",
                format!("missing: {base_url} is not the local sandbox, set your Didit API key"),
            ));
        }
        let webhook_secret = self.webhook_secret.trim().to_owned();
        if webhook_secret.is_empty() || (!sandbox && webhook_secret == SANDBOX_WEBHOOK_SECRET) {
            return Err(SettingsError::new(
                "didit.webhook_secret",
                format!(
                    "missing: {base_url} is not the local sandbox, set the secret_shared_key of your webhook destination"
                ),
            ));
        }
        let previous_webhook_secrets = self
            .previous_webhook_secrets
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| SecretString::from(s.to_owned()))
            .collect();
        Ok(DiditSettings {
            base_url,
            auth_base_url,
            api_key: SecretString::from(api_key),
            webhook_secret: SecretString::from(webhook_secret),
            previous_webhook_secrets,
            webhook_tolerance: parse_duration_setting(
                "didit.webhook_tolerance",
                &self.webhook_tolerance,
            )?,
            workflow_id: uuid::Uuid::from_str(self.workflow_id.trim()).map_err(|e| {
                SettingsError::new("didit.workflow_id", format!("expected a UUID: {e}"))
            })?,
            connect_timeout: parse_positive_duration(
                "didit.connect_timeout",
                &self.connect_timeout,
            )?,
            request_timeout: parse_positive_duration(
                "didit.request_timeout",
                &self.request_timeout,
            )?,
            pdf_timeout: parse_positive_duration("didit.pdf_timeout", &self.pdf_timeout)?,
            webhooks: parse_bool("didit.webhooks", &self.webhooks)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::load;

    #[test]
    fn the_sandbox_workflow_is_the_one_the_default_settings_name() {
        let settings = load(&[]).expect("embedded defaults load");
        assert!(settings.didit.is_sandbox());
        assert_eq!(settings.didit.workflow_id, didit_sandbox::WORKFLOW_ID);
        assert!(super::super::DEFAULT_SETTINGS.contains(&didit_sandbox::WORKFLOW_ID.to_string()));
        assert_eq!(
            settings.didit.base_url.port(),
            Some(didit_sandbox::DEFAULT_PORT)
        );
        assert_eq!(settings.didit.webhook_tolerance, Duration::from_secs(300));
    }

    #[test]
    fn previous_webhook_secrets_are_accepted_after_the_current_one() {
        let s = load(&[("KYC__DIDIT__PREVIOUS_WEBHOOK_SECRETS", "old-1, old-2")]).expect("valid");
        assert_eq!(s.didit.webhook_secrets().len(), 3);
    }

    #[test]
    fn each_bad_value_names_its_key_and_the_reason() {
        let cases = [
            ("KYC__DIDIT__BASE_URL", "not a url", "not a URL"),
            ("KYC__DIDIT__BASE_URL", "ftp://x", "http://"),
            ("KYC__DIDIT__REQUEST_TIMEOUT", "10 parsecs", "duration"),
            ("KYC__DIDIT__CONNECT_TIMEOUT", "0s", "longer than zero"),
            ("KYC__DIDIT__WORKFLOW_ID", "abc", "UUID"),
        ];
        for (var, value, reason) in cases {
            let err = load(&[(var, value)]).expect_err(var);
            assert_eq!(err.key, var, "{err}");
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
}
