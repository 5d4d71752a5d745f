//! Auto-decision rules: the operator's policy on top of Didit's own decision.
//!
//! Didit's workflow settings cannot say "decline anyone under 18", "send AML hits to a person"
//! or "approve a review that only has warnings when both biometric scores are strong". The
//! operator writes those as rules in `config/rules.toml` (CEL conditions over a fixed
//! [`view::DecisionView`]), and the fleet applies them to every decision Didit reached by
//! itself. Everything here is pure: [`RuleSet::evaluate`] takes the decision and "now" and
//! returns an [`Evaluation`] — every rule matched or not with the values it read, and the one
//! [`Outcome`] — which the pipeline turns into Didit calls and the outcome event.
//!
//! Rules are checked when loaded, so a broken file stops the fleet at start naming the rule:
//! each condition must parse, name only known fields, and give true or false.

mod country;
pub mod view;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::Path,
    sync::Arc,
};

use cel::common::ast::{EntryExpr, Expr, IdedExpr};
use didit::types::{Decision, NodeToResubmit};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use crate::{
    domain::SessionStatus,
    settings::{RulesSettings, RulesSource},
};
use view::DecisionView;

/// The default pack, used when the setting `rules.file` is unset.
pub const DEFAULT_RULES: &str = include_str!("../../config/rules.toml");

/// Why a rules file cannot be used. Errors about one rule name it.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("cannot read rules file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("rules file is not valid TOML: {0}")]
    Syntax(String),
    #[error("rules file: {0}")]
    File(String),
    #[error("rule \"{rule}\": {reason}")]
    Rule { rule: String, reason: String },
}

impl RuleError {
    fn rule(rule: &str, reason: impl Into<String>) -> Self {
        RuleError::Rule {
            rule: rule.to_owned(),
            reason: reason.into(),
        }
    }
}

/// What a matching rule asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Action {
    Approve,
    Decline,
    /// Leave the session to a person (In Review).
    Review,
    /// Ask the user to redo these steps (`update-status` with `nodes_to_resubmit`).
    Resubmit {
        nodes: Vec<NodeToResubmit>,
    },
    /// Decline (or keep Didit's decline) and add the session's face, document, phone
    /// and/or e-mail to Didit's blocklist.
    Blocklist {
        face: bool,
        document: bool,
        phone: bool,
        email: bool,
    },
    /// Record the match only.
    None,
}

impl Action {
    /// Precedence: the strongest matching action wins.
    fn strength(&self) -> u8 {
        match self {
            Action::None => 0,
            Action::Approve => 1,
            Action::Resubmit { .. } => 2,
            Action::Review => 3,
            Action::Decline => 4,
            Action::Blocklist { .. } => 5,
        }
    }

    /// `approve`, `decline`, … as written in the rules file (also the metrics label).
    pub fn name(&self) -> &'static str {
        match self {
            Action::Approve => "approve",
            Action::Decline => "decline",
            Action::Review => "review",
            Action::Resubmit { .. } => "resubmit",
            Action::Blocklist { .. } => "blocklist",
            Action::None => "none",
        }
    }

    /// The session status this action leads to; `None` for [`Action::None`].
    pub fn status(&self) -> Option<SessionStatus> {
        match self {
            Action::Approve => Some(SessionStatus::Approved),
            Action::Decline | Action::Blocklist { .. } => Some(SessionStatus::Declined),
            Action::Review => Some(SessionStatus::InReview),
            Action::Resubmit { .. } => Some(SessionStatus::Resubmitted),
            Action::None => None,
        }
    }
}

/// One checked rule.
#[derive(Debug)]
pub struct Rule {
    pub name: String,
    /// The CEL condition as written.
    pub when: String,
    pub action: Action,
    /// The comment template (`"under 18 ({age})"`).
    pub comment: Option<String>,
    pub enabled: bool,
    /// Recorded, never wins.
    pub shadow: bool,
    /// The Didit statuses the rule applies to.
    pub on: Vec<SessionStatus>,
    program: cel::Program,
    /// Fields the condition and the comment read, and whether the field may be absent (a
    /// `has()` guards it, or only the comment shows it) instead of failing the rule.
    reads: BTreeMap<String, bool>,
}

/// The rules of one file: a default list and optional lists per named workflow.
#[derive(Debug)]
pub struct RuleSet {
    pub version: String,
    pub rules: Vec<Rule>,
    pub workflows: BTreeMap<String, Vec<Rule>>,
    lists: BTreeMap<String, Vec<String>>,
}

/// Everything one evaluation found: serialisable so the outcome event can carry it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// The rule set's version.
    pub version: String,
    /// The workflow whose own list was used; `None` for the default list.
    pub workflow: Option<String>,
    /// Didit's status the rules saw.
    pub status: String,
    pub matches: Vec<RuleMatch>,
    pub not_matched: Vec<NotMatched>,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleMatch {
    pub rule: String,
    pub action: Action,
    pub shadow: bool,
    /// Each field the condition read and its value (`null`: absent).
    pub values_read: BTreeMap<String, Value>,
    /// The rule's comment with the values filled in.
    pub comment: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotMatched {
    pub rule: String,
    pub reason: String,
    pub values_read: BTreeMap<String, Value>,
}

/// What the rules decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// `None`: no rule decided, Didit's status stands.
    pub action: Option<Action>,
    pub decided_by_rule: Option<String>,
    pub comment: Option<String>,
}

impl Outcome {
    /// The status after the rules: the winning action's, else Didit's.
    pub fn status(&self, didit: &SessionStatus) -> SessionStatus {
        self.action
            .as_ref()
            .and_then(Action::status)
            .unwrap_or_else(|| didit.clone())
    }
}

impl RuleSet {
    /// No rules: every evaluation leaves Didit's status.
    pub fn empty() -> Self {
        RuleSet {
            version: String::new(),
            rules: Vec::new(),
            workflows: BTreeMap::new(),
            lists: BTreeMap::new(),
        }
    }

    /// The rule set the settings name (the embedded pack, none, or a file).
    pub fn from_settings(settings: &RulesSettings) -> Result<Self, RuleError> {
        match &settings.source {
            RulesSource::Embedded => Self::parse(DEFAULT_RULES),
            RulesSource::Disabled => Ok(Self::empty()),
            RulesSource::File(path) => Self::load(path),
        }
    }

    /// Reads and checks a rules file; an empty file is an empty rule set.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, RuleError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| RuleError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses and checks rules from TOML text.
    pub fn parse(text: &str) -> Result<Self, RuleError> {
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| RuleError::Syntax(e.message().trim().to_owned()))?;
        let version = match table.remove("version") {
            None => String::new(),
            Some(toml::Value::String(v)) => v.trim().to_owned(),
            Some(other) => {
                return Err(RuleError::File(format!(
                    "version must be a string, got {}",
                    other.type_str()
                )))
            }
        };
        let lists: BTreeMap<String, Vec<String>> = match table.remove("lists") {
            None => BTreeMap::new(),
            Some(value) => value.try_into().map_err(|e: toml::de::Error| {
                RuleError::File(format!("lists: {}", e.message().trim()))
            })?,
        };
        let rules = match table.remove("rules") {
            None => Vec::new(),
            Some(value) => compile_list(value, &lists, "rules")?,
        };
        let mut workflows = BTreeMap::new();
        if let Some(value) = table.remove("workflows") {
            let toml::Value::Table(by_name) = value else {
                return Err(RuleError::File("workflows must be a table".into()));
            };
            for (name, mut section) in by_name {
                let list = section
                    .as_table_mut()
                    .and_then(|t| t.remove("rules"))
                    .ok_or_else(|| {
                        RuleError::File(format!("workflows.{name} must have a rules list"))
                    })?;
                if let Some(extra) = section.as_table().and_then(|t| t.keys().next()) {
                    return Err(RuleError::File(format!(
                        "workflows.{name}: unknown key \"{extra}\""
                    )));
                }
                let where_ = format!("workflows.{name}.rules");
                workflows.insert(name, compile_list(list, &lists, &where_)?);
            }
        }
        if let Some(extra) = table.keys().next() {
            return Err(RuleError::File(format!(
                "unknown key \"{extra}\" (expected version, lists, rules, workflows)"
            )));
        }
        let has_rules = !rules.is_empty() || workflows.values().any(|list| !list.is_empty());
        if has_rules && version.is_empty() {
            return Err(RuleError::File(
                "version is missing: every outcome carries it, set it and change it with the rules"
                    .into(),
            ));
        }
        Ok(RuleSet {
            version,
            rules,
            workflows,
            lists,
        })
    }

    /// The list that applies to a session of `workflow`: its own, else the default.
    pub fn rules_for(&self, workflow: Option<&str>) -> (Option<&str>, &[Rule]) {
        match workflow.and_then(|w| self.workflows.get_key_value(w)) {
            Some((name, rules)) => (Some(name.as_str()), rules.as_slice()),
            None => (None, self.rules.as_slice()),
        }
    }

    /// Applies the rules of `workflow` to `decision` as of `now`.
    pub fn evaluate(
        &self,
        workflow: Option<&str>,
        decision: &Decision,
        now: OffsetDateTime,
    ) -> Evaluation {
        self.evaluate_view(workflow, &DecisionView::new(decision, now))
    }

    /// [`RuleSet::evaluate`] over an already built view.
    pub fn evaluate_view(&self, workflow: Option<&str>, view: &DecisionView) -> Evaluation {
        let (used, rules) = self.rules_for(workflow);
        let json = view.to_json();
        let mut context = cel::Context::default();
        for (name, value) in json.as_object().into_iter().flatten() {
            context.add_variable_from_value(name.clone(), to_cel(value));
        }
        for section in ["document", "aml", "ip", "metadata"] {
            if view::lookup(&json, section).is_none() {
                context
                    .add_variable_from_value(section, to_cel(&Value::Object(Default::default())));
            }
        }
        context.add_variable_from_value("lists", lists_value(&self.lists));

        let status = SessionStatus::parse(&view.status);
        let mut matches = Vec::new();
        let mut not_matched = Vec::new();
        for rule in rules {
            let values_read: BTreeMap<String, Value> = rule
                .reads
                .keys()
                .map(|path| {
                    let value = view::lookup(&json, path).cloned().unwrap_or(Value::Null);
                    (path.clone(), value)
                })
                .collect();
            let reason = if !rule.enabled {
                Some("disabled".to_owned())
            } else if !rule.on.contains(&status) {
                Some(format!(
                    "applies on {}, the decision is {}",
                    rule.on
                        .iter()
                        .map(SessionStatus::as_str)
                        .collect::<Vec<_>>()
                        .join(", "),
                    view.status
                ))
            } else if let Some(path) = rule
                .reads
                .iter()
                .find(|(path, guarded)| !**guarded && view::lookup(&json, path).is_none())
                .map(|(path, _)| path)
            {
                Some(view::explain_absent(&json, path))
            } else {
                match rule.program.execute(&context) {
                    Ok(cel::Value::Bool(true)) => None,
                    Ok(cel::Value::Bool(false)) => Some("condition is false".to_owned()),
                    Ok(other) => Some(format!(
                        "condition gave {}, not true or false",
                        other.type_of()
                    )),
                    Err(e) => Some(format!("condition failed: {e}")),
                }
            };
            match reason {
                Some(reason) => not_matched.push(NotMatched {
                    rule: rule.name.clone(),
                    reason,
                    values_read,
                }),
                None => matches.push(RuleMatch {
                    rule: rule.name.clone(),
                    action: rule.action.clone(),
                    shadow: rule.shadow,
                    comment: render_comment(rule, &json),
                    values_read,
                }),
            }
        }

        let winner = matches
            .iter()
            .filter(|m| !m.shadow && m.action != Action::None)
            .fold(None::<&RuleMatch>, |best, m| match best {
                Some(b) if b.action.strength() >= m.action.strength() => Some(b),
                _ => Some(m),
            });
        let outcome = Outcome {
            action: winner.map(|m| m.action.clone()),
            decided_by_rule: winner.map(|m| m.rule.clone()),
            comment: winner.map(|m| m.comment.clone()),
        };
        Evaluation {
            version: self.version.clone(),
            workflow: used.map(str::to_owned),
            status: view.status.clone(),
            matches,
            not_matched,
            outcome,
        }
    }
}

/// One rule as written in the file, before checking.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    when: String,
    action: String,
    #[serde(default)]
    nodes: Option<Vec<String>>,
    #[serde(default)]
    blocklist: Option<RawBlocklist>,
    #[serde(default)]
    comment: Option<String>,
    #[serde(default = "default_true")]
    enabled: bool,
    #[serde(default)]
    shadow: bool,
    #[serde(default)]
    on: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBlocklist {
    #[serde(default)]
    face: bool,
    #[serde(default)]
    document: bool,
    #[serde(default)]
    phone: bool,
    #[serde(default)]
    email: bool,
}

fn default_true() -> bool {
    true
}

/// The statuses a rule without `on` applies to: Didit's own Declined stands.
const DEFAULT_ON: [SessionStatus; 2] = [SessionStatus::Approved, SessionStatus::InReview];

fn compile_list(
    value: toml::Value,
    lists: &BTreeMap<String, Vec<String>>,
    where_: &str,
) -> Result<Vec<Rule>, RuleError> {
    let toml::Value::Array(items) = value else {
        return Err(RuleError::File(format!(
            "{where_} must be a list of rules ([[{where_}]])"
        )));
    };
    let mut seen = BTreeSet::new();
    let mut rules = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        let label = item
            .get("name")
            .and_then(toml::Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{where_}[{index}]"));
        let raw: RawRule = item
            .try_into()
            .map_err(|e: toml::de::Error| RuleError::rule(&label, e.message().trim()))?;
        let rule = compile(raw, lists)?;
        if !seen.insert(rule.name.clone()) {
            return Err(RuleError::rule(
                &rule.name,
                format!("duplicate name in {where_}"),
            ));
        }
        rules.push(rule);
    }
    Ok(rules)
}

fn compile(raw: RawRule, lists: &BTreeMap<String, Vec<String>>) -> Result<Rule, RuleError> {
    let name = raw.name.trim().to_owned();
    let err = |reason: String| RuleError::rule(&name, reason);
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
    {
        return Err(err(
            "name must be letters, digits, '_', '-' or '.', at least one".into(),
        ));
    }
    let action = match (raw.action.trim(), raw.nodes, raw.blocklist) {
        ("resubmit", Some(nodes), None) if !nodes.is_empty() => Action::Resubmit {
            nodes: nodes
                .iter()
                .map(|node| parse_node(node))
                .collect::<Result<_, _>>()
                .map_err(&err)?,
        },
        ("resubmit", _, _) => {
            return Err(err(
                "resubmit needs nodes = [\"<node_id>:<FEATURE>\", ...] (e.g. \"feature_ocr:OCR\")"
                    .into(),
            ))
        }
        ("blocklist", None, Some(b)) if b.face || b.document || b.phone || b.email => {
            Action::Blocklist {
                face: b.face,
                document: b.document,
                phone: b.phone,
                email: b.email,
            }
        }
        ("blocklist", _, _) => {
            return Err(err(
                "blocklist needs blocklist = { face = true } (or document, phone, email)".into(),
            ))
        }
        (_, Some(_), _) => return Err(err("nodes only go with action = \"resubmit\"".into())),
        (_, _, Some(_)) => {
            return Err(err(
                "blocklist flags only go with action = \"blocklist\"".into(),
            ))
        }
        ("approve", None, None) => Action::Approve,
        ("decline", None, None) => Action::Decline,
        ("review", None, None) => Action::Review,
        ("none", None, None) => Action::None,
        (other, None, None) => {
            return Err(err(format!(
                "unknown action \"{other}\" (expected approve, decline, review, resubmit, blocklist or none)"
            )))
        }
    };
    let on = match raw.on {
        None => DEFAULT_ON.to_vec(),
        Some(list) if list.is_empty() => {
            return Err(err("on is empty: the rule would never apply".into()))
        }
        Some(list) => list
            .iter()
            .map(|s| match SessionStatus::parse(s.trim()) {
                SessionStatus::Unknown(s) => Err(err(format!(
                    "on: unknown status \"{s}\" (expected Didit's spelling, e.g. \"In Review\")"
                ))),
                status => Ok(status),
            })
            .collect::<Result<_, _>>()?,
    };
    let when = raw.when.trim().to_owned();
    let program = cel::Program::compile(&when).map_err(|e| {
        err(format!(
            "condition does not compile: {}",
            one_line(&e.to_string())
        ))
    })?;
    let mut reads = BTreeMap::new();
    collect_reads(program.expression(), &HashMap::new(), lists, &mut reads).map_err(&err)?;
    check_on_sample(&program, lists).map_err(&err)?;
    if let Some(template) = &raw.comment {
        for path in placeholders(template).map_err(&err)? {
            if !view::is_known(path) {
                return Err(err(format!("comment names unknown field \"{path}\"")));
            }
            // Recorded with the values read; its absence shows as "absent" in the comment.
            reads.entry(path.to_owned()).or_insert(true);
        }
    }
    Ok(Rule {
        name,
        when,
        action,
        comment: raw.comment,
        enabled: raw.enabled,
        shadow: raw.shadow,
        on,
        program,
        reads,
    })
}

/// `"feature_ocr:OCR"` → node `feature_ocr`, feature `OCR`.
fn parse_node(text: &str) -> Result<NodeToResubmit, String> {
    match text.split_once(':') {
        Some((node, feature)) if !node.trim().is_empty() && !feature.trim().is_empty() => {
            Ok(NodeToResubmit {
                node_id: node.trim().to_owned(),
                feature: feature.trim().to_owned(),
            })
        }
        _ => Err(format!(
            "node \"{text}\" is not \"<node_id>:<FEATURE>\" (e.g. \"feature_ocr:OCR\")"
        )),
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// What a name bound by a comprehension (`warnings.exists(w, …)`) stands for: the fields its
/// elements have, when known.
type Bound<'a> = HashMap<&'a str, Option<&'static [&'static str]>>;

/// Walks the condition, checking every field it names and recording the fields it reads.
fn collect_reads<'a>(
    expr: &'a IdedExpr,
    bound: &Bound<'a>,
    lists: &BTreeMap<String, Vec<String>>,
    reads: &mut BTreeMap<String, bool>,
) -> Result<(), String> {
    let mut recurse = |e: &'a IdedExpr| collect_reads(e, bound, lists, reads);
    match &expr.expr {
        Expr::Ident(name) => check_path(name, &[], false, bound, lists, reads),
        Expr::Select(select) => {
            let mut fields = vec![select.field.as_str()];
            let mut operand = select.operand.as_ref();
            while let Expr::Select(inner) = &operand.expr {
                fields.push(inner.field.as_str());
                operand = inner.operand.as_ref();
            }
            fields.reverse();
            match &operand.expr {
                Expr::Ident(root) => check_path(root, &fields, select.test, bound, lists, reads),
                _ => recurse(operand),
            }
        }
        Expr::Call(call) => {
            if let Some(target) = &call.target {
                recurse(target)?;
            }
            call.args.iter().try_for_each(recurse)
        }
        Expr::List(list) => list.elements.iter().try_for_each(recurse),
        Expr::Map(map) => map.entries.iter().try_for_each(|entry| match &entry.expr {
            EntryExpr::MapEntry(e) => {
                recurse(&e.key)?;
                recurse(&e.value)
            }
            EntryExpr::StructField(f) => recurse(&f.value),
        }),
        Expr::Struct(s) => s.entries.iter().try_for_each(|entry| match &entry.expr {
            EntryExpr::MapEntry(e) => {
                recurse(&e.key)?;
                recurse(&e.value)
            }
            EntryExpr::StructField(f) => recurse(&f.value),
        }),
        Expr::Comprehension(c) => {
            recurse(&c.iter_range)?;
            recurse(&c.accu_init)?;
            let elements = match &c.iter_range.expr {
                Expr::Ident(name) if name == "warnings" && !bound.contains_key("warnings") => {
                    Some(view::WARNING_FIELDS)
                }
                _ => None,
            };
            let mut inner = bound.clone();
            inner.insert(c.iter_var.as_str(), elements);
            if let Some(second) = &c.iter_var2 {
                inner.insert(second.as_str(), None);
            }
            inner.insert(c.accu_var.as_str(), None);
            for part in [&c.loop_cond, &c.loop_step, &c.result] {
                collect_reads(part, &inner, lists, reads)?;
            }
            Ok(())
        }
        Expr::Literal(_) | Expr::Unspecified => Ok(()),
    }
}

fn check_path(
    root: &str,
    fields: &[&str],
    guarded: bool,
    bound: &Bound<'_>,
    lists: &BTreeMap<String, Vec<String>>,
    reads: &mut BTreeMap<String, bool>,
) -> Result<(), String> {
    if root.starts_with('@') {
        return Ok(());
    }
    if let Some(elements) = bound.get(root) {
        return match (elements, fields.first()) {
            (Some(known), Some(field)) if !known.contains(field) => Err(format!(
                "unknown field \"{root}.{field}\" (a warning has {})",
                known.join(", ")
            )),
            _ => Ok(()),
        };
    }
    if root == "lists" {
        return match fields {
            [] => Ok(()),
            [name] if lists.contains_key(*name) => Ok(()),
            _ => Err(format!(
                "unknown list \"{}\" (the file's [lists] has: {})",
                fields.join("."),
                lists.keys().cloned().collect::<Vec<_>>().join(", ")
            )),
        };
    }
    let path = std::iter::once(root)
        .chain(fields.iter().copied())
        .collect::<Vec<_>>()
        .join(".");
    if !view::is_known(&path) {
        return Err(format!(
            "unknown field \"{path}\" (known: {}, metadata.*)",
            view::FIELDS
                .iter()
                .map(|f| f.path)
                .filter(|p| !view::FIELDS
                    .iter()
                    .any(|o| o.path.starts_with(&format!("{p}."))))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let entry = reads.entry(path).or_insert(guarded);
    *entry |= guarded;
    Ok(())
}

/// Runs the condition once over a view where every field is present, to catch what parsing
/// cannot: unknown functions, comparing a number with a string, a result that is not a bool.
fn check_on_sample(
    program: &cel::Program,
    lists: &BTreeMap<String, Vec<String>>,
) -> Result<(), String> {
    let sample = serde_json::json!({
        "status": "In Review",
        "features": ["ID_VERIFICATION", "LIVENESS", "FACE_MATCH", "AML", "IP_ANALYSIS"],
        "document": {"type": "Passport", "issuing_country": "ESP", "nationality": "ESP",
                     "expiry_date": "2030-01-01", "days_to_expiry": 1000},
        "age": 30,
        "scores": {"face_match": 95.0, "liveness": 95.0},
        "aml": {"hits": 0, "max_score": 0.0},
        "warnings": [{"risk": "QR_NOT_DETECTED", "feature": "ID_VERIFICATION", "log_type": "information"}],
        "ip": {"country": "ESP", "is_vpn_or_tor": false},
        "expected": {"mismatch": false},
        "metadata": {},
    });
    let mut context = cel::Context::default();
    for (name, value) in sample.as_object().into_iter().flatten() {
        context.add_variable_from_value(name.clone(), to_cel(value));
    }
    context.add_variable_from_value("lists", lists_value(lists));
    match program.execute(&context) {
        Ok(cel::Value::Bool(_)) => Ok(()),
        Ok(other) => Err(format!(
            "the condition gives a {}, not true or false",
            other.type_of()
        )),
        Err(e @ cel::ExecutionError::UndeclaredReference(_)) => {
            Err(format!("unknown function or name: {e}"))
        }
        Err(
            e @ (cel::ExecutionError::NoSuchOverload
            | cel::ExecutionError::ValuesNotComparable(..)
            | cel::ExecutionError::UnsupportedBinaryOperator(..)
            | cel::ExecutionError::UnexpectedType { .. }
            | cel::ExecutionError::InvalidArgumentCount { .. }),
        ) => Err(format!("type error: {e}")),
        // Anything else depends on the data (a metadata key, an index), not on the rule.
        Err(_) => Ok(()),
    }
}

/// The `{path}` placeholders of a comment template.
fn placeholders(template: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("comment has an unclosed '{{': \"{template}\""))?;
        out.push(after[..end].trim());
        rest = &after[end + 1..];
    }
    Ok(out)
}

fn render_comment(rule: &Rule, view: &Value) -> String {
    let Some(template) = &rule.comment else {
        return rule.name.clone();
    };
    let mut out = String::new();
    let mut rest = template.as_str();
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let Some(end) = after.find('}') else {
            break;
        };
        out.push_str(&match view::lookup(view, after[..end].trim()) {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => "absent".to_owned(),
        });
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

fn lists_value(lists: &BTreeMap<String, Vec<String>>) -> cel::Value {
    let map: HashMap<String, cel::Value> = lists
        .iter()
        .map(|(name, items)| {
            let items: Vec<cel::Value> = items.iter().map(|s| s.as_str().into()).collect();
            (name.clone(), cel::Value::List(Arc::new(items)))
        })
        .collect();
    map.into()
}

fn to_cel(value: &Value) -> cel::Value {
    match value {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => cel::Value::Int(i),
            (None, Some(u), _) => cel::Value::UInt(u),
            (None, None, f) => cel::Value::Float(f.unwrap_or(f64::NAN)),
        },
        Value::String(s) => s.as_str().into(),
        Value::Array(items) => cel::Value::List(Arc::new(items.iter().map(to_cel).collect())),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| (k.clone(), to_cel(v)))
            .collect::<HashMap<String, cel::Value>>()
            .into(),
    }
}

#[cfg(test)]
mod tests;
