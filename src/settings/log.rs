//! `[log]`: how much the process says and in which shape.

use serde::Deserialize;

use super::SettingsError;

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    level: String,
    format: String,
}

impl RawLog {
    pub(super) fn validate(self) -> Result<LogSettings, SettingsError> {
        let log = LogSettings {
            format: match self.format.as_str() {
                "pretty" => LogFormat::Pretty,
                "json" => LogFormat::Json,
                other => {
                    return Err(SettingsError::new(
                        "log.format",
                        format!("expected \"pretty\" or \"json\", got \"{other}\""),
                    ))
                }
            },
            level: self.level,
        };
        tracing_subscriber::EnvFilter::try_new(&log.level)
            .map_err(|e| SettingsError::new("log.level", e.to_string()))?;
        Ok(log)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::load;

    #[test]
    fn the_format_is_pretty_or_json() {
        let err = load(&[("KYC__LOG__FORMAT", "xml")]).expect_err("xml");
        assert_eq!(err.key, "KYC__LOG__FORMAT");
        assert!(err.reason.contains("pretty"), "{err}");
        let s = load(&[("KYC__LOG__FORMAT", "json")]).expect("json");
        assert_eq!(s.log.format, super::LogFormat::Json);
    }
}
