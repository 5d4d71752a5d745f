//! `[rules]`: which auto-decision rules apply (see [`crate::rules`]) and how far they may go.

use serde::Deserialize;

use super::{parse::parse_bool, SettingsError};

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRules {
    file: Option<String>,
    dry_run: String,
    max_resubmits: String,
}

impl RawRules {
    pub(super) fn validate(self) -> Result<RulesSettings, SettingsError> {
        Ok(RulesSettings {
            source: match self.file.as_deref().map(str::trim) {
                None => RulesSource::Embedded,
                Some("") => RulesSource::Disabled,
                Some(path) => RulesSource::File(path.into()),
            },
            dry_run: parse_bool("rules.dry_run", &self.dry_run)?,
            max_resubmits: self.max_resubmits.trim().parse().map_err(|_| {
                SettingsError::new(
                    "rules.max_resubmits",
                    format!("expected a whole number, got \"{}\"", self.max_resubmits),
                )
            })?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::load;
    use super::RulesSource;

    #[test]
    fn the_default_is_the_embedded_pack_applied_for_real() {
        let s = load(&[]).expect("defaults");
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
}
