//! `[http]`: where the HTTP servers listen, the tokens that guard the intake and console,
//! and the reverse proxies whose word on the client's address is believed.

use secrecy::SecretString;
use serde::Deserialize;

use super::{
    parse::{parse_bool, parse_port},
    SettingsError,
};
use crate::domain::TrustedProxies;

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
    /// Proxies whose `X-Forwarded-For` names the client (`http.trusted_proxies`).
    pub trusted_proxies: TrustedProxies,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    host: String,
    port: String,
    internal_port: Option<String>,
    api_token: String,
    console: String,
    admin_token: String,
    trusted_proxies: String,
}

/// An empty token switches its surface off; a short one is refused rather than guessed.
fn optional_token(key: &str, value: &str) -> Result<Option<SecretString>, SettingsError> {
    match value.trim() {
        "" => Ok(None),
        token if token.len() < 16 => Err(SettingsError::new(key, "must be at least 16 characters")),
        token => Ok(Some(SecretString::from(token.to_owned()))),
    }
}

impl RawHttp {
    pub(super) fn validate(self) -> Result<HttpSettings, SettingsError> {
        Ok(HttpSettings {
            host: self.host,
            port: parse_port("http.port", &self.port)?,
            internal_port: match self.internal_port.as_deref().map(str::trim) {
                None | Some("") => None,
                Some(p) => Some(parse_port("http.internal_port", p)?),
            },
            api_token: optional_token("http.api_token", &self.api_token)?,
            console: parse_bool("http.console", &self.console)?,
            admin_token: optional_token("http.admin_token", &self.admin_token)?,
            trusted_proxies: TrustedProxies::parse(&self.trusted_proxies)
                .map_err(|reason| SettingsError::new("http.trusted_proxies", reason))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::load;

    #[test]
    fn the_defaults_serve_everything_on_one_port_with_the_intake_off() {
        let s = load(&[]).expect("defaults load");
        assert_eq!(s.http.internal_port, None);
        assert!(s.http.api_token.is_none());
        assert!(s.http.console);
        assert!(s.http.admin_token.is_none());
        assert!(s.http.trusted_proxies.is_empty());
    }

    #[test]
    fn trusted_proxies_are_addresses_and_networks_named_when_wrong() {
        let s = load(&[(
            "KYC__HTTP__TRUSTED_PROXIES",
            "10.0.0.0/8, 127.0.0.1, fd00::/8",
        )])
        .expect("valid");
        assert!(s.http.trusted_proxies.trusts([10, 1, 2, 3].into()));
        assert!(s.http.trusted_proxies.trusts([127, 0, 0, 1].into()));
        assert!(!s.http.trusted_proxies.trusts([192, 0, 2, 1].into()));
        for (value, reason) in [
            ("10.0.0.0/33", "prefix length"),
            ("proxy.internal", "not an IP address"),
        ] {
            let err = load(&[("KYC__HTTP__TRUSTED_PROXIES", value)]).expect_err(value);
            assert_eq!(err.key, "KYC__HTTP__TRUSTED_PROXIES", "{err}");
            assert!(err.reason.contains(reason), "{value}: {err}");
        }
    }

    #[test]
    fn ports_and_tokens_are_checked() {
        let s = load(&[
            ("KYC__HTTP__PORT", "9999"),
            ("KYC__HTTP__INTERNAL_PORT", "9100"),
        ])
        .expect("valid");
        assert_eq!(s.http.port, 9999);
        assert_eq!(s.http.internal_port, Some(9100));
        let cases = [
            ("KYC__HTTP__PORT", "70000", "port number"),
            ("KYC__HTTP__ADMIN_TOKEN", "short", "at least 16"),
            ("KYC__HTTP__API_TOKEN", "short", "at least 16"),
            ("KYC__HTTP__CONSOLE", "maybe", "true"),
        ];
        for (var, value, reason) in cases {
            let err = load(&[(var, value)]).expect_err(var);
            assert_eq!(err.key, var, "{err}");
            assert!(err.reason.contains(reason), "{var}={value}: {err}");
        }
    }
}
