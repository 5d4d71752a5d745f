//! `[telemetry]`: where traces go, and how many of them.
//!
//! Tracing is off unless a receiver is named, so a fleet that does not use it pays nothing for
//! it. The standard OpenTelemetry variables (`OTEL_EXPORTER_OTLP_ENDPOINT`,
//! `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER_ARG`) are honoured because platforms set them for
//! every container; a `KYC__TELEMETRY__…` value wins over them, like every other layer here.

use std::{collections::HashMap, time::Duration};

use serde::Deserialize;
use url::Url;

use super::{
    parse::{parse_count, parse_http_url, parse_positive_duration},
    SettingsError,
};

/// The standard variable naming the OTLP receiver's base URL.
pub const OTEL_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// The standard variable naming the service in every span's resource.
pub const OTEL_SERVICE_NAME_VAR: &str = "OTEL_SERVICE_NAME";
/// The standard variable giving the sampler's ratio.
pub const OTEL_SAMPLER_ARG_VAR: &str = "OTEL_TRACES_SAMPLER_ARG";

/// The path OTLP/HTTP receivers take spans on, under their base URL.
const TRACES_PATH: &str = "v1/traces";

#[derive(Debug, Clone, PartialEq)]
pub struct TelemetrySettings {
    /// The OTLP/HTTP receiver's base URL; `None`: nothing is exported.
    pub otlp_endpoint: Option<Url>,
    /// Share of new traces recorded, 0.0–1.0. A trace a caller started keeps the caller's
    /// decision (its `traceparent`'s sampled flag).
    pub sampling_ratio: f64,
    /// `service.name` of every span.
    pub service_name: String,
    /// Finished spans waiting for export at most; more are dropped and counted
    /// (`kyc_trace_spans_dropped_total`), so a receiver that is down never holds up a job.
    pub export_queue: usize,
    /// How long one export may take before it is given up (its spans count as dropped).
    pub export_timeout: Duration,
}

impl TelemetrySettings {
    /// Where spans are posted: the base URL + `/v1/traces`.
    pub fn traces_url(&self) -> Option<String> {
        self.otlp_endpoint
            .as_ref()
            .map(|base| format!("{}/{TRACES_PATH}", base.as_str().trim_end_matches('/')))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTelemetry {
    otlp_endpoint: String,
    sampling_ratio: String,
    service_name: String,
    export_queue: String,
    export_timeout: String,
}

/// `0.0`–`1.0`.
fn parse_ratio(key: &str, value: &str) -> Result<f64, SettingsError> {
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|r| (0.0..=1.0).contains(r))
        .ok_or_else(|| {
            SettingsError::new(
                key,
                format!("expected a number from 0 to 1, got \"{value}\""),
            )
        })
}

impl RawTelemetry {
    /// `env` is the process environment, for the standard `OTEL_…` variables; an empty
    /// setting falls back to them.
    pub(super) fn validate(
        self,
        env: &HashMap<String, String>,
    ) -> Result<TelemetrySettings, SettingsError> {
        let standard = |var: &str| {
            env.get(var)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let otlp_endpoint = match self.otlp_endpoint.trim() {
            "" => match standard(OTEL_ENDPOINT_VAR) {
                Some(url) => Some(parse_http_url(OTEL_ENDPOINT_VAR, &url).map_err(|e| {
                    // The standard variable is not one of ours: name it as it is spelled.
                    SettingsError {
                        key: OTEL_ENDPOINT_VAR.to_owned(),
                        reason: e.reason,
                    }
                })?),
                None => None,
            },
            url => Some(parse_http_url("telemetry.otlp_endpoint", url)?),
        };
        let sampling_ratio = match self.sampling_ratio.trim() {
            "" => match standard(OTEL_SAMPLER_ARG_VAR) {
                Some(arg) => {
                    parse_ratio(OTEL_SAMPLER_ARG_VAR, &arg).map_err(|e| SettingsError {
                        key: OTEL_SAMPLER_ARG_VAR.to_owned(),
                        reason: e.reason,
                    })?
                }
                None => 1.0,
            },
            ratio => parse_ratio("telemetry.sampling_ratio", ratio)?,
        };
        let service_name = match self.service_name.trim() {
            "" => standard(OTEL_SERVICE_NAME_VAR).unwrap_or_else(|| "kyc-worker".to_owned()),
            name => name.to_owned(),
        };
        Ok(TelemetrySettings {
            otlp_endpoint,
            sampling_ratio,
            service_name,
            export_queue: parse_count("telemetry.export_queue", &self.export_queue)?,
            export_timeout: parse_positive_duration(
                "telemetry.export_timeout",
                &self.export_timeout,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::load;

    #[test]
    fn tracing_is_off_by_default() {
        let s = load(&[]).expect("defaults");
        assert_eq!(s.telemetry.otlp_endpoint, None);
        assert_eq!(s.telemetry.traces_url(), None);
        assert_eq!(s.telemetry.sampling_ratio, 1.0);
        assert_eq!(s.telemetry.service_name, "kyc-worker");
    }

    #[test]
    fn the_standard_variables_are_honoured_and_ours_win() {
        let s = load(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_SERVICE_NAME", "kyc-eu"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ])
        .expect("valid");
        assert_eq!(
            s.telemetry.traces_url().as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        assert_eq!(s.telemetry.service_name, "kyc-eu");
        assert_eq!(s.telemetry.sampling_ratio, 0.25);

        let s = load(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            (
                "KYC__TELEMETRY__OTLP_ENDPOINT",
                "https://otel.internal/base/",
            ),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ("KYC__TELEMETRY__SAMPLING_RATIO", "0.5"),
        ])
        .expect("valid");
        assert_eq!(
            s.telemetry.traces_url().as_deref(),
            Some("https://otel.internal/base/v1/traces")
        );
        assert_eq!(s.telemetry.sampling_ratio, 0.5);
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("KYC__TELEMETRY__OTLP_ENDPOINT", "collector:4318", "http://"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://x", "http://"),
            ("KYC__TELEMETRY__SAMPLING_RATIO", "2", "from 0 to 1"),
            ("OTEL_TRACES_SAMPLER_ARG", "half", "from 0 to 1"),
            ("KYC__TELEMETRY__EXPORT_QUEUE", "0", "at least 1"),
            ("KYC__TELEMETRY__EXPORT_TIMEOUT", "0s", "longer than zero"),
        ];
        for (var, value, reason) in cases {
            let err = load(&[(var, value)]).expect_err(var);
            assert_eq!(err.key, var, "{err}");
            assert!(err.reason.contains(reason), "{var}={value}: {err}");
        }
    }
}
