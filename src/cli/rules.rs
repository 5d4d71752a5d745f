//! `kyc-worker rules …`: check a rules file before deploying it, and show what the rules make
//! of one decision, rule by rule, with the values each read.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde_json::Value;
use time::{format_description::well_known::Rfc3339, OffsetDateTime};

use super::CliError;
use crate::{
    rules::{view, Evaluation, RuleSet},
    settings::{RulesSource, Settings},
};
use didit::types::Decision;

#[derive(Debug, Args)]
pub struct RulesArgs {
    #[command(subcommand)]
    command: RulesCommand,
}

#[derive(Debug, Subcommand)]
enum RulesCommand {
    /// Check a rules file (default: the one the settings name); exit code 2 when invalid
    Check {
        /// The rules file (TOML)
        file: Option<PathBuf>,
        /// Also list every field a condition may read
        #[arg(long)]
        fields: bool,
    },
    /// Evaluate the rules on a decision and print each rule, matched or not, with the values
    /// it read, and the outcome
    Explain {
        /// A decision as `GET /v3/session/{id}/decision/` returns it (or a webhook body)
        #[arg(long)]
        decision: PathBuf,
        /// The named workflow whose own rules apply (default: the default list)
        #[arg(long)]
        workflow: Option<String>,
        /// The moment ages and expiry are computed at, RFC 3339 (default: now)
        #[arg(long, value_parser = parse_now)]
        now: Option<OffsetDateTime>,
        /// The rules file (default: the one the settings name)
        #[arg(long)]
        rules: Option<PathBuf>,
        /// Print the evaluation as JSON (as the outcome event carries it)
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: RulesArgs) -> Result<(), CliError> {
    match args.command {
        RulesCommand::Check { file, fields } => {
            let (rules, source) = load(file.as_deref())?;
            let workflows: Vec<String> = rules
                .workflows
                .iter()
                .map(|(name, list)| format!("{name} ({})", count_rules(list.len())))
                .collect();
            println!(
                "ok: {source}: version \"{}\", {} in the default list{}",
                rules.version,
                count_rules(rules.rules.len()),
                if workflows.is_empty() {
                    String::new()
                } else {
                    format!(", workflows: {}", workflows.join(", "))
                }
            );
            if fields {
                println!("\nfields a condition may read:");
                for field in view::FIELDS {
                    println!(
                        "  {:<26} {}{}",
                        field.path,
                        field.kind,
                        field
                            .absent_when
                            .map(|why| format!("; absent when {why}"))
                            .unwrap_or_default()
                    );
                }
                println!(
                    "  {:<26} each warning's fields",
                    view::WARNING_FIELDS.join(", ")
                );
                println!("  {:<26} the file's [lists]", "lists.<name>");
            }
            Ok(())
        }
        RulesCommand::Explain {
            decision,
            workflow,
            now,
            rules,
            json,
        } => {
            let (rules, source) = load(rules.as_deref())?;
            let decision = read_decision(&decision)?;
            let now = now.unwrap_or_else(OffsetDateTime::now_utc);
            let evaluation = rules.evaluate(workflow.as_deref(), &decision, now);
            if json {
                let text = serde_json::to_string_pretty(&evaluation)
                    .map_err(|e| CliError::Failed(e.into()))?;
                println!("{text}");
            } else {
                print!("{}", explain(&rules, &source, &decision, now, &evaluation));
            }
            Ok(())
        }
    }
}

/// `1 rule`, `6 rules`.
fn count_rules(n: usize) -> String {
    if n == 1 {
        "1 rule".to_owned()
    } else {
        format!("{n} rules")
    }
}

/// The rules file named on the command line, else the one the settings name.
fn load(file: Option<&Path>) -> Result<(RuleSet, String), CliError> {
    if let Some(path) = file {
        return Ok((RuleSet::load(path)?, path.display().to_string()));
    }
    let settings = Settings::load()?;
    let source = match &settings.rules.source {
        RulesSource::Embedded => "the embedded default pack".to_owned(),
        RulesSource::Disabled => "no rules (rules.file is empty)".to_owned(),
        RulesSource::File(path) => path.display().to_string(),
    };
    Ok((RuleSet::from_settings(&settings.rules)?, source))
}

fn read_decision(path: &Path) -> Result<Decision, CliError> {
    let bad = |reason: String| CliError::Usage(format!("--decision {}: {reason}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let mut value: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    // A webhook body carries the decision under `decision`, the status and ids beside it.
    if let Some(Value::Object(inner)) = value.get("decision").cloned() {
        for (key, field) in inner {
            value[key] = field;
        }
    }
    serde_json::from_value(value).map_err(|e| bad(format!("not a Didit decision: {e}")))
}

fn parse_now(text: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(text, &Rfc3339).map_err(|e| format!("expected RFC 3339: {e}"))
}

/// The human report: every rule in order, then the outcome.
fn explain(
    rules: &RuleSet,
    source: &str,
    decision: &Decision,
    now: OffsetDateTime,
    evaluation: &Evaluation,
) -> String {
    let (workflow, list) = rules.rules_for(evaluation.workflow.as_deref());
    let mut out = format!(
        "rules: {source}, version \"{}\", {} list\ndecision: session {}, Didit status {}, evaluated at {}\n\n",
        evaluation.version,
        workflow.map_or_else(|| "default".to_owned(), |w| format!("workflow {w}")),
        decision.session_id,
        evaluation.status,
        now.format(&Rfc3339).unwrap_or_default(),
    );
    let values = |read: &std::collections::BTreeMap<String, Value>| {
        read.iter()
            .map(|(path, value)| match value {
                Value::Null => format!("{path} = absent"),
                other => format!("{path} = {other}"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    for rule in list {
        let condition = rule.when.split_whitespace().collect::<Vec<_>>().join(" ");
        if let Some(m) = evaluation.matches.iter().find(|m| m.rule == rule.name) {
            out.push_str(&format!(
                "  MATCH  {} -> {}{}\n",
                rule.name,
                m.action.name(),
                if m.shadow {
                    " (shadow: recorded only)"
                } else {
                    ""
                }
            ));
            out.push_str(&format!("         when: {condition}\n"));
            out.push_str(&format!("         read: {}\n", values(&m.values_read)));
            out.push_str(&format!("         comment: {}\n", m.comment));
        } else if let Some(n) = evaluation.not_matched.iter().find(|n| n.rule == rule.name) {
            out.push_str(&format!("  no     {}: {}\n", rule.name, n.reason));
            out.push_str(&format!("         when: {condition}\n"));
            if !n.values_read.is_empty() {
                out.push_str(&format!("         read: {}\n", values(&n.values_read)));
            }
        }
    }
    if list.is_empty() {
        out.push_str("  (no rules)\n");
    }
    let outcome = &evaluation.outcome;
    out.push('\n');
    match (&outcome.action, &outcome.decided_by_rule) {
        (Some(action), Some(rule)) => out.push_str(&format!(
            "outcome: {} by rule {} (\"{}\"): {} -> {}\n",
            action.name(),
            rule,
            outcome.comment.as_deref().unwrap_or_default(),
            evaluation.status,
            outcome.status(&decision.status).as_str(),
        )),
        _ => out.push_str(&format!(
            "outcome: no rule decided, Didit's status stands: {}\n",
            evaluation.status
        )),
    }
    out
}
