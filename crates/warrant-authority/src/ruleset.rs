//! The authority rules (docs/contract.md §4): a versioned YAML file that says, for each
//! kind of action on each target, who must approve and under which limits.
//!
//! Loading is where mistakes are caught: a ruleset that could leave an action
//! without a rule, a rule nobody can satisfy, or a field nobody reads is
//! refused with an error that names the rule. Resolution is then total.

use serde::Deserialize;
use warrant_schema::{
    Action, ApprovalGroup, ContextRef, Proposer, Requirement, ReviewMode, RuleNotMatched,
    RulesetRef,
};

use crate::canonical::{check_target, target_has_prefix};
use crate::condition::Bound;
pub use crate::condition::Condition;
use crate::digest::sha256_hex;

/// A validated ruleset, ready to resolve actions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    version: String,
    digest: String,
    rules: Vec<Rule>,
}

/// One rule. Matching is on `action.kind` (exact, or a glob with `*` and
/// `?`) and on `target` (a prefix of whole `/`-separated segments); the
/// first matching rule wins. Intake only resolves canonical actions
/// (docs/canonical-actions.md), so one action has one spelling to match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub id: String,
    pub kind_pattern: String,
    pub target_prefix: String,
    /// `when:`: the rule applies only where this holds (docs/rules.md).
    pub when: Option<Condition>,
    pub requirement: Requirement,
}

#[derive(Debug, thiserror::Error)]
pub enum RulesetError {
    #[error("ruleset is not valid YAML of the expected shape")]
    Yaml(#[source] serde_yaml::Error),
    #[error("rule #{index} ({id}): {message}")]
    InvalidRule {
        index: usize,
        id: String,
        message: String,
    },
    #[error("ruleset has no rules")]
    NoRules,
    #[error("rule id {0:?} is used twice")]
    DuplicateRuleId(String),
    #[error("rule {rule:?}: approvals_required must be at least 1, got {got}")]
    ApprovalsRequired { rule: String, got: i32 },
    #[error("rule {rule:?}: approvals[{group}].count must be at least 1, got {got}")]
    GroupCount {
        rule: String,
        group: usize,
        got: i32,
    },
    #[error("rule {rule:?}: when {problem}")]
    Condition { rule: String, problem: String },
    #[error("rule {rule:?}: missing field `{field}`")]
    Missing { rule: String, field: &'static str },
    #[error("rule {rule:?}: {problem}")]
    Approvals { rule: String, problem: String },
    #[error(
        "rule {rule:?}: review never takes no reviews, so {field} would never be read; remove it"
    )]
    NeverReviewed { rule: String, field: &'static str },
    #[error("rule {rule:?}: {field} must name at least one role")]
    EmptyRoles { rule: String, field: &'static str },
    #[error("rule {rule:?}: {field} must be positive, got {got}")]
    NotPositive {
        rule: String,
        field: &'static str,
        got: i64,
    },
    #[error("rule {rule:?}: review unless_all_signals_allow needs at least one required signal, or nothing would ever be reviewed")]
    UnreviewedWithoutSignals { rule: String },
    #[error("ruleset has no catch-all rule (kind \"*\", no target prefix, no when) as its last rule, so some action could match nothing")]
    NoCatchAll,
    #[error("rule {rule:?}: match.{field} {problem}")]
    BadMatch {
        rule: String,
        field: &'static str,
        problem: String,
    },
    #[error("rule {rule:?} can never match: the catch-all rule {catch_all:?} comes before it")]
    Unreachable { rule: String, catch_all: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesetFile {
    version: String,
    rules: Vec<serde_yaml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    id: String,
    #[serde(rename = "match", default)]
    matches: MatchFile,
    /// A CEL condition over the proposal.
    #[serde(default)]
    when: Option<String>,
    /// The single-group form: `approvals_required` of `approver_roles`.
    #[serde(default)]
    approvals_required: Option<i32>,
    #[serde(default)]
    approver_roles: Option<Vec<String>>,
    /// The several-group form: every group met by distinct principals.
    #[serde(default)]
    approvals: Option<Vec<GroupFile>>,
    override_roles: Vec<String>,
    #[serde(default)]
    required_signals: Vec<String>,
    #[serde(default)]
    review: ReviewFile,
    /// Required unless `review: never` (nothing waits for a decision then).
    #[serde(default)]
    decision_timeout_ms: Option<i64>,
    grant_ttl_ms: i64,
    #[serde(default = "one")]
    max_executions: i32,
    /// `signed`: only decisions signed with the reviewer's own key count.
    #[serde(default)]
    decisions: DecisionsFile,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum DecisionsFile {
    /// Signed by the reviewer's key, or attested by intake (HMAC).
    #[default]
    Any,
    Signed,
}

fn one() -> i32 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupFile {
    roles: Vec<String>,
    count: i32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MatchFile {
    #[serde(default = "any_kind")]
    kind: String,
    #[serde(default)]
    target: String,
}

impl Default for MatchFile {
    fn default() -> Self {
        MatchFile {
            kind: any_kind(),
            target: String::new(),
        }
    }
}

fn any_kind() -> String {
    "*".to_owned()
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum ReviewFile {
    #[default]
    Always,
    UnlessAllSignalsAllow,
    /// Low-risk actions: the rule authorizes at proposal.
    Never,
}

impl Ruleset {
    /// Parse and validate ruleset text. The digest is the SHA-256 of exactly
    /// these bytes, so an auditor can match the text on `warrant.rulesets`.
    pub fn parse(text: &[u8]) -> Result<Ruleset, RulesetError> {
        let file: RulesetFile = serde_yaml::from_slice(text).map_err(RulesetError::Yaml)?;
        if file.rules.is_empty() {
            return Err(RulesetError::NoRules);
        }
        let mut rules: Vec<Rule> = Vec::with_capacity(file.rules.len());
        for (index, value) in file.rules.into_iter().enumerate() {
            let id = value
                .get("id")
                .and_then(|id| id.as_str())
                .unwrap_or("<no id>")
                .to_owned();
            let rule: RuleFile =
                serde_yaml::from_value(value).map_err(|e| RulesetError::InvalidRule {
                    index: index + 1,
                    id,
                    message: e.to_string(),
                })?;
            if rules.iter().any(|known| known.id == rule.id) {
                return Err(RulesetError::DuplicateRuleId(rule.id));
            }
            rules.push(validate(rule)?);
        }
        let catch_all = rules.iter().position(Rule::is_catch_all);
        match catch_all {
            None => return Err(RulesetError::NoCatchAll),
            Some(at) if at + 1 < rules.len() => {
                return Err(RulesetError::Unreachable {
                    rule: rules[at + 1].id.clone(),
                    catch_all: rules[at].id.clone(),
                })
            }
            Some(_) => {}
        }
        Ok(Ruleset {
            version: file.version,
            digest: sha256_hex(text),
            rules,
        })
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    /// Lowercase hex SHA-256 of the ruleset's bytes.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// What an `ActionProposed` records as the ruleset in force.
    pub fn reference(&self) -> RulesetRef {
        RulesetRef {
            version: self.version.clone(),
            digest: self.digest.clone(),
        }
    }

    /// What `warrant rules check` warns about, one sentence each: a ruleset
    /// that loads but likely does not do what its author meant.
    ///
    /// - A condition that names no variable and is false (`false`,
    ///   `1 > 2`) never holds.
    /// - A rule with a condition followed by a later rule that matches
    ///   everything it does (kind and target, no condition) with fewer
    ///   approvals: since a condition that cannot be evaluated does not
    ///   match, any proposal that makes the strict condition err (`" 5000"`
    ///   for `int(amount) >= 1000`) falls through to the laxer rule. Put
    ///   the condition on the lax rule instead (docs/rules.md).
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        for (index, rule) in self.rules.iter().enumerate() {
            let Some(when) = &rule.when else { continue };
            if when.constant() == Some(false) {
                let source = when
                    .source()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ");
                warnings.push(if source == "false" {
                    format!(
                        "rule {:?}: when is `false`, so the rule never matches",
                        rule.id
                    )
                } else {
                    format!(
                        "rule {:?}: when `{source}` is always false, so the rule never matches",
                        rule.id
                    )
                });
                continue;
            }
            let strict = approvals_of_requirement(&rule.requirement);
            let laxer = self.rules[index + 1..].iter().find(|later| {
                later.when.is_none()
                    && covers(later, rule)
                    && approvals_of_requirement(&later.requirement) < strict
            });
            if let Some(later) = laxer {
                warnings.push(format!(
                    "rule {:?} has a condition and the later rule {:?} matches all it does with fewer approvals ({} < {strict}): a proposal whose condition cannot be evaluated falls through to the laxer rule; put the condition on the lax rule, before the strict one",
                    rule.id,
                    later.id,
                    approvals_of_requirement(&later.requirement)
                ));
            }
        }
        warnings
    }

    /// The first rule that matches, with why each earlier one did not.
    /// Total: loading guaranteed a catch-all, the last rule.
    pub fn resolve(&self, facts: &Facts<'_>) -> Resolution<'_> {
        let mut not_matched = Vec::new();
        // Bound on the first rule with a condition, then shared.
        let mut bound: Option<Bound> = None;
        for rule in &self.rules {
            match rule.check_with(facts, &mut bound) {
                Ok(()) => return Resolution { rule, not_matched },
                Err(reason) => not_matched.push(RuleNotMatched {
                    rule_id: rule.id.clone(),
                    reason,
                }),
            }
        }
        // Unreachable for a loaded ruleset (the catch-all matches everything);
        // the last rule is the catch-all, so fall back to it all the same.
        let rule = &self.rules[self.rules.len() - 1];
        not_matched.retain(|skipped| skipped.rule_id != rule.id);
        Resolution { rule, not_matched }
    }
}

/// What resolution may look at: the proposed action, who proposes it and
/// the context it cites. Intake builds it from the canonical proposal.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub action: &'a Action,
    pub proposer: &'a Proposer,
    pub context_refs: &'a [ContextRef],
}

/// The rule that applies, and every earlier rule with the reason it did not:
/// what `ActionProposed` records so an auditor can re-check the choice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution<'r> {
    pub rule: &'r Rule,
    pub not_matched: Vec<RuleNotMatched>,
}

impl Resolution<'_> {
    pub fn requirement(&self) -> &Requirement {
        &self.rule.requirement
    }
}

impl Rule {
    /// Whether the rule's match applies to `action` (kind and target only).
    pub fn matches(&self, action: &Action) -> bool {
        glob_matches(&self.kind_pattern, &action.kind)
            && target_has_prefix(&action.target, &self.target_prefix)
    }

    /// `Ok` when the rule applies, else the short reason recorded for it:
    /// `kind`, `target`, `when false`, or `when error: …` (a condition that
    /// cannot be evaluated on this proposal makes the rule not match).
    pub fn check(&self, facts: &Facts<'_>) -> Result<(), String> {
        self.check_with(facts, &mut None)
    }

    fn check_with(&self, facts: &Facts<'_>, bound: &mut Option<Bound>) -> Result<(), String> {
        if !glob_matches(&self.kind_pattern, &facts.action.kind) {
            return Err("kind".to_owned());
        }
        if !target_has_prefix(&facts.action.target, &self.target_prefix) {
            return Err("target".to_owned());
        }
        let evaluated = self
            .when
            .as_ref()
            .map(|when| when.evaluate(bound.get_or_insert_with(|| Bound::of(facts))));
        match evaluated {
            None | Some(Ok(true)) => Ok(()),
            Some(Ok(false)) => Err("when false".to_owned()),
            Some(Err(error)) => Err(format!("when error: {}", shorten(&error, 160))),
        }
    }

    /// Matches every proposal: any kind, every target, no condition.
    fn is_catch_all(&self) -> bool {
        self.kind_pattern.chars().all(|c| c == '*')
            && self.target_prefix.is_empty()
            && self.when.is_none()
    }
}

fn validate(rule: RuleFile) -> Result<Rule, RulesetError> {
    let id = rule.id.clone();
    if rule
        .override_roles
        .iter()
        .all(|role| role.trim().is_empty())
    {
        return Err(RulesetError::EmptyRoles {
            rule: id,
            field: "override_roles",
        });
    }
    check_match(&id, &rule.matches)?;
    let when = match &rule.when {
        None => None,
        Some(source) => {
            Some(
                Condition::parse(source).map_err(|problem| RulesetError::Condition {
                    rule: id.clone(),
                    problem,
                })?,
            )
        }
    };
    let review = match rule.review {
        ReviewFile::Always => ReviewMode::Always,
        ReviewFile::UnlessAllSignalsAllow if rule.required_signals.is_empty() => {
            return Err(RulesetError::UnreviewedWithoutSignals { rule: id })
        }
        ReviewFile::UnlessAllSignalsAllow => ReviewMode::UnlessAllSignalsAllow,
        ReviewFile::Never => ReviewMode::Never,
    };
    let (approvals_required, approver_roles, approval_groups, decision_timeout_ms) =
        if review == ReviewMode::Never {
            // Nothing is reviewed, so every reviewing field would be dead
            // text an auditor might believe; refuse them rather than ignore.
            let unread = [
                ("approvals_required", rule.approvals_required.is_some()),
                ("approver_roles", rule.approver_roles.is_some()),
                ("approvals", rule.approvals.is_some()),
                ("required_signals", !rule.required_signals.is_empty()),
                ("decision_timeout_ms", rule.decision_timeout_ms.is_some()),
                ("decisions", rule.decisions != DecisionsFile::Any),
            ];
            if let Some((field, _)) = unread.into_iter().find(|(_, set)| *set) {
                return Err(RulesetError::NeverReviewed { rule: id, field });
            }
            // Never paused, so the decision deadline is never reached; the
            // grant window is the one that bounds the instance.
            (0, Vec::new(), Vec::new(), rule.grant_ttl_ms)
        } else {
            let (required, roles, groups) = approvals_of(&id, &rule)?;
            let Some(timeout) = rule.decision_timeout_ms else {
                return Err(RulesetError::Missing {
                    rule: id,
                    field: "decision_timeout_ms",
                });
            };
            (required, roles, groups, timeout)
        };
    for (field, value) in [
        ("decision_timeout_ms", decision_timeout_ms),
        ("grant_ttl_ms", rule.grant_ttl_ms),
        ("max_executions", i64::from(rule.max_executions)),
    ] {
        if value <= 0 {
            return Err(RulesetError::NotPositive {
                rule: id,
                field,
                got: value,
            });
        }
    }
    Ok(Rule {
        kind_pattern: rule.matches.kind,
        target_prefix: rule.matches.target,
        when,
        requirement: Requirement {
            rule_id: id.clone(),
            approvals_required,
            approver_roles,
            override_roles: rule.override_roles,
            required_signals: rule.required_signals,
            review,
            decision_timeout_ms,
            grant_ttl_ms: rule.grant_ttl_ms,
            max_executions: rule.max_executions,
            signed_decisions: rule.decisions == DecisionsFile::Signed,
            approval_groups,
        },
        id,
    })
}

/// The approvals a reviewed rule needs, in the requirement's terms:
/// `(approvals_required, approver_roles, approval_groups)`. One group,
/// in either spelling, is the single-group form (no `approval_groups`), so
/// a rule rewritten from `approvals_required` to `approvals: [..]` resolves
/// to the same requirement. Several groups carry the sum of their counts
/// and the union of their roles as well, for readers of the older form.
fn approvals_of(
    id: &str,
    rule: &RuleFile,
) -> Result<(i32, Vec<String>, Vec<ApprovalGroup>), RulesetError> {
    let problem = |problem: &str| RulesetError::Approvals {
        rule: id.to_owned(),
        problem: problem.to_owned(),
    };
    let groups: Vec<ApprovalGroup> =
        match (
            &rule.approvals,
            rule.approvals_required,
            &rule.approver_roles,
        ) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => return Err(problem(
                "give either approvals: [..] or approvals_required with approver_roles, not both",
            )),
            (None, None, _) | (None, _, None) => return Err(problem(
                "needs approvals_required and approver_roles, or approvals: [{roles, count}, ..]",
            )),
            (None, Some(count), Some(roles)) => {
                if count < 1 {
                    return Err(RulesetError::ApprovalsRequired {
                        rule: id.to_owned(),
                        got: count,
                    });
                }
                if roles.iter().all(|role| role.trim().is_empty()) {
                    return Err(RulesetError::EmptyRoles {
                        rule: id.to_owned(),
                        field: "approver_roles",
                    });
                }
                vec![ApprovalGroup {
                    roles: roles.clone(),
                    count,
                }]
            }
            (Some(groups), None, None) => {
                if groups.is_empty() {
                    return Err(problem("approvals must list at least one group"));
                }
                for (index, group) in groups.iter().enumerate() {
                    if group.count < 1 {
                        return Err(RulesetError::GroupCount {
                            rule: id.to_owned(),
                            group: index,
                            got: group.count,
                        });
                    }
                    if group.roles.iter().all(|role| role.trim().is_empty()) {
                        return Err(problem(&format!(
                            "approvals[{index}].roles must name at least one role"
                        )));
                    }
                }
                groups
                    .iter()
                    .map(|g| ApprovalGroup {
                        roles: g.roles.clone(),
                        count: g.count,
                    })
                    .collect()
            }
        };
    if let [only] = groups.as_slice() {
        return Ok((only.count, only.roles.clone(), Vec::new()));
    }
    let mut roles: Vec<String> = Vec::new();
    for role in groups.iter().flat_map(|g| &g.roles) {
        if !roles.contains(role) {
            roles.push(role.clone());
        }
    }
    let total = groups
        .iter()
        .fold(0i32, |sum, g| sum.saturating_add(g.count));
    Ok((total, roles, groups))
}

/// A pattern that no canonical action could meet is a typo that would
/// silently route actions to a laxer rule, so it is refused at load: kind
/// patterns use the canonical kind alphabet plus `*` and `?`; a target
/// prefix is a canonical target, optionally ending in `/`.
fn check_match(rule: &str, matches: &MatchFile) -> Result<(), RulesetError> {
    let bad = |field, problem: String| RulesetError::BadMatch {
        rule: rule.to_owned(),
        field,
        problem,
    };
    let kind = &matches.kind;
    if kind.is_empty() {
        return Err(bad("kind", "must not be empty (use \"*\")".to_owned()));
    }
    if let Some(c) = kind
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '_' | '-' | '.' | '*' | '?'))
    {
        return Err(bad(
            "kind",
            format!("may hold only lowercase ASCII letters, digits, '_', '-', '.', '*' and '?', not {c:?}"),
        ));
    }
    let prefix = matches.target.strip_suffix('/').unwrap_or(&matches.target);
    if !prefix.is_empty() {
        check_target(prefix).map_err(|problem| bad("target", problem))?;
    }
    Ok(())
}

/// At most `max` characters: recorded reasons stay short.
fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// `*` matches any run of characters (dots included), `?` exactly one.
/// Approvals a requirement asks for in all (none when nothing is
/// reviewed), to compare how strict two rules are.
fn approvals_of_requirement(requirement: &Requirement) -> i64 {
    requirement
        .groups()
        .iter()
        .map(|group| i64::from(group.count))
        .sum()
}

/// Whether `wide` matches every kind and target `narrow` does, conditions
/// aside. Conservative: a glob in `narrow` is covered only by an all-`*`
/// pattern or the same pattern.
fn covers(wide: &Rule, narrow: &Rule) -> bool {
    let kind = wide.kind_pattern.chars().all(|c| c == '*')
        || wide.kind_pattern == narrow.kind_pattern
        || (!narrow.kind_pattern.contains(['*', '?'])
            && glob_matches(&wide.kind_pattern, &narrow.kind_pattern));
    kind && target_has_prefix(&narrow.target_prefix, &wide.target_prefix)
}

fn glob_matches(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                backtrack = Some((p, t));
                p += 1;
            }
            Some(&c) if c == '?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match backtrack {
                Some((star, matched)) => {
                    p = star + 1;
                    t = matched + 1;
                    backtrack = Some((star, matched + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const EXAMPLE: &str = r#"
version: "2026-11-01"
rules:
  - id: payments-prod
    match: { kind: "payments.*", target: "prod/" }
    approvals_required: 2
    approver_roles: [payments-approver]
    override_roles: [incident-commander]
    required_signals: [opa]
    decision_timeout_ms: 3600000
    grant_ttl_ms: 900000
  - id: low-risk
    match: { kind: "cache.flush" }
    approvals_required: 1
    approver_roles: [sre]
    override_roles: [sre-lead]
    required_signals: [opa]
    review: unless_all_signals_allow
    decision_timeout_ms: 600000
    grant_ttl_ms: 60000
    max_executions: 3
  - id: everything-else
    approvals_required: 1
    approver_roles: [sre]
    override_roles: [incident-commander]
    decision_timeout_ms: 86400000
    grant_ttl_ms: 900000
"#;

    /// The rule a proposal of `action` by an agent, citing nothing, gets.
    fn pick<'r>(rules: &'r Ruleset, action: &Action) -> &'r Rule {
        let proposer = Proposer {
            principal: "agent:test".to_owned(),
            kind: warrant_schema::ProposerKind::Agent,
            model: None,
        };
        rules
            .resolve(&Facts {
                action,
                proposer: &proposer,
                context_refs: &[],
            })
            .rule
    }

    fn action(kind: &str, target: &str) -> Action {
        Action {
            kind: kind.to_owned(),
            target: target.to_owned(),
            parameters: BTreeMap::new(),
        }
    }

    /// The error and its causes, as an operator would read them.
    fn error_of(text: &str) -> String {
        match Ruleset::parse(text.as_bytes()) {
            Ok(_) => panic!("ruleset should have been refused"),
            Err(e) => match std::error::Error::source(&e) {
                Some(cause) => format!("{e}: {cause}"),
                None => e.to_string(),
            },
        }
    }

    #[test]
    fn first_matching_rule_wins() {
        let rules = Ruleset::parse(EXAMPLE.as_bytes()).expect("valid");
        assert_eq!(
            pick(&rules, &action("payments.refund", "prod/eu")).id,
            "payments-prod"
        );
        assert_eq!(
            pick(&rules, &action("payments.refund", "staging/eu")).id,
            "everything-else"
        );
        assert_eq!(
            pick(&rules, &action("cache.flush", "prod/eu")).id,
            "low-risk"
        );
        assert_eq!(
            pick(&rules, &action("cache.flushall", "prod/eu")).id,
            "everything-else"
        );
        let low = &pick(&rules, &action("cache.flush", "x")).requirement;
        assert_eq!(low.review, ReviewMode::UnlessAllSignalsAllow);
        assert_eq!(low.max_executions, 3);
    }

    #[test]
    fn digest_is_sha256_of_the_exact_bytes() {
        let rules = Ruleset::parse(EXAMPLE.as_bytes()).expect("valid");
        assert_eq!(rules.digest(), sha256_hex(EXAMPLE.as_bytes()));
        let reformatted = EXAMPLE.replace("version: ", "version:  ");
        assert_ne!(
            Ruleset::parse(reformatted.as_bytes())
                .expect("valid")
                .digest(),
            rules.digest()
        );
    }

    #[test]
    fn a_ruleset_without_a_catch_all_is_refused() {
        let text = EXAMPLE.replace(
            "  - id: everything-else\n",
            "  - id: everything-else\n    match: { target: \"prod/\" }\n",
        );
        assert!(error_of(&text).contains("no catch-all"));
    }

    #[test]
    fn a_rule_after_the_catch_all_is_refused_by_name() {
        let text = format!(
            "{EXAMPLE}  - id: shadowed\n    approvals_required: 1\n    approver_roles: [a]\n    override_roles: [b]\n    decision_timeout_ms: 1\n    grant_ttl_ms: 1\n"
        );
        assert!(error_of(&text).contains("\"shadowed\" can never match"));
    }

    #[test]
    fn zero_approvals_is_refused_by_rule_name() {
        let text = EXAMPLE.replace("approvals_required: 2", "approvals_required: 0");
        assert_eq!(
            error_of(&text),
            "rule \"payments-prod\": approvals_required must be at least 1, got 0"
        );
    }

    #[test]
    fn empty_role_lists_are_refused_by_rule_name() {
        let text = EXAMPLE.replace("override_roles: [sre-lead]", "override_roles: []");
        assert_eq!(
            error_of(&text),
            "rule \"low-risk\": override_roles must name at least one role"
        );
        let text = EXAMPLE.replace("approver_roles: [payments-approver]", "approver_roles: []");
        assert_eq!(
            error_of(&text),
            "rule \"payments-prod\": approver_roles must name at least one role"
        );
    }

    #[test]
    fn unknown_fields_are_refused_naming_the_rule() {
        let text = EXAMPLE.replace("    max_executions: 3\n", "    max_execution: 3\n");
        let error = error_of(&text);
        assert!(
            error.starts_with("rule #2 (low-risk): unknown field `max_execution`"),
            "{error}"
        );
        let text = format!("{EXAMPLE}owner: nobody\n");
        assert!(error_of(&text).contains("unknown field `owner`"));
    }

    #[test]
    fn unreviewed_rules_need_signals() {
        let text = EXAMPLE.replace("    required_signals: [opa]\n    review:", "    review:");
        assert!(error_of(&text).contains("\"low-risk\": review unless_all_signals_allow needs"));
    }

    #[test]
    fn duplicate_rule_ids_are_refused() {
        let text = EXAMPLE.replace("id: low-risk", "id: payments-prod");
        assert_eq!(error_of(&text), "rule id \"payments-prod\" is used twice");
    }

    #[test]
    fn target_prefixes_match_whole_segments_only() {
        let rules = Ruleset::parse(EXAMPLE.as_bytes()).expect("valid");
        assert_eq!(
            pick(&rules, &action("payments.refund", "prod/eu")).id,
            "payments-prod"
        );
        assert_eq!(
            pick(&rules, &action("payments.refund", "prod")).id,
            "payments-prod"
        );
        // A longer first segment is another target, however it is spelled.
        assert_eq!(
            pick(&rules, &action("payments.refund", "production/eu")).id,
            "everything-else"
        );
        let without_slash = EXAMPLE.replace("target: \"prod/\"", "target: \"prod\"");
        let rules = Ruleset::parse(without_slash.as_bytes()).expect("valid");
        assert_eq!(
            pick(&rules, &action("payments.refund", "prod/eu")).id,
            "payments-prod"
        );
        assert_eq!(
            pick(&rules, &action("payments.refund", "production/eu")).id,
            "everything-else"
        );
    }

    #[test]
    fn match_patterns_no_canonical_action_could_meet_are_refused() {
        let upper = EXAMPLE.replace("kind: \"payments.*\"", "kind: \"Payments.*\"");
        assert!(
            error_of(&upper).starts_with("rule \"payments-prod\": match.kind may hold only"),
            "{}",
            error_of(&upper)
        );
        for target in [" prod/", "./prod/", "prod//", "prod/../x"] {
            let text = EXAMPLE.replace("target: \"prod/\"", &format!("target: \"{target}\""));
            assert!(
                error_of(&text).starts_with("rule \"payments-prod\": match.target"),
                "{target}: {}",
                error_of(&text)
            );
        }
    }

    const GROUPS: &str = r#"
version: "2026-12-01"
rules:
  - id: prod-restarts
    match: { kind: "service.restart", target: "prod/" }
    approvals:
      - { roles: [sre], count: 2 }
      - { roles: [security, sre-lead], count: 1 }
    override_roles: [incident-commander]
    decision_timeout_ms: 3600000
    grant_ttl_ms: 900000
  - id: cache-flush
    match: { kind: "cache.flush" }
    review: never
    override_roles: [sre]
    grant_ttl_ms: 60000
    max_executions: 3
  - id: everything-else
    approvals: [{ roles: [sre], count: 1 }]
    override_roles: [incident-commander]
    decision_timeout_ms: 86400000
    grant_ttl_ms: 900000
"#;

    #[test]
    fn several_groups_resolve_with_their_sum_and_union() {
        let rules = Ruleset::parse(GROUPS.as_bytes()).expect("valid");
        let requirement = &pick(&rules, &action("service.restart", "prod/payments")).requirement;
        assert_eq!(requirement.approvals_required, 3);
        assert_eq!(
            requirement.approver_roles,
            ["sre", "security", "sre-lead"].map(str::to_owned)
        );
        assert_eq!(
            requirement.approval_groups,
            vec![
                ApprovalGroup {
                    roles: vec!["sre".to_owned()],
                    count: 2
                },
                ApprovalGroup {
                    roles: vec!["security".to_owned(), "sre-lead".to_owned()],
                    count: 1
                },
            ]
        );
        assert_eq!(requirement.groups(), requirement.approval_groups);
    }

    #[test]
    fn one_group_in_the_list_form_is_the_single_group_form() {
        let rules = Ruleset::parse(GROUPS.as_bytes()).expect("valid");
        let listed = &pick(&rules, &action("db.migrate", "x")).requirement;
        let single = GROUPS.replace(
            "    approvals: [{ roles: [sre], count: 1 }]\n",
            "    approvals_required: 1\n    approver_roles: [sre]\n",
        );
        assert_ne!(single, GROUPS);
        let single = Ruleset::parse(single.as_bytes()).expect("valid");
        assert_eq!(
            listed,
            &pick(&single, &action("db.migrate", "x")).requirement
        );
        assert!(listed.approval_groups.is_empty());
    }

    #[test]
    fn group_mistakes_are_refused_by_rule_name() {
        let text = GROUPS.replace("{ roles: [sre], count: 2 }", "{ roles: [sre], count: 0 }");
        assert_eq!(
            error_of(&text),
            "rule \"prod-restarts\": approvals[0].count must be at least 1, got 0"
        );
        let text = GROUPS.replace(
            "{ roles: [security, sre-lead], count: 1 }",
            "{ roles: [], count: 1 }",
        );
        assert_eq!(
            error_of(&text),
            "rule \"prod-restarts\": approvals[1].roles must name at least one role"
        );
        let text = GROUPS.replace(
            "    approvals:\n      - { roles: [sre], count: 2 }\n",
            "    approvals_required: 2\n    approvals:\n      - { roles: [sre], count: 2 }\n",
        );
        assert!(
            error_of(&text).starts_with("rule \"prod-restarts\": give either approvals"),
            "{}",
            error_of(&text)
        );
        let text = GROUPS.replace("    approvals: [{ roles: [sre], count: 1 }]\n", "");
        assert!(
            error_of(&text).starts_with("rule \"everything-else\": needs approvals_required"),
            "{}",
            error_of(&text)
        );
        let text = GROUPS.replace("{ roles: [sre], count: 2 }", "{ roles: [sre], cout: 2 }");
        assert!(
            error_of(&text).starts_with("rule #1 (prod-restarts): unknown field `cout`"),
            "{}",
            error_of(&text)
        );
    }

    #[test]
    fn review_never_takes_no_review_fields() {
        let rules = Ruleset::parse(GROUPS.as_bytes()).expect("valid");
        let never = &pick(&rules, &action("cache.flush", "prod/x")).requirement;
        assert_eq!(never.review, ReviewMode::Never);
        assert_eq!(never.approvals_required, 0);
        assert!(never.approver_roles.is_empty() && never.groups().is_empty());
        assert_eq!(never.max_executions, 3);
        for (extra, field) in [
            ("    approvals_required: 1\n", "approvals_required"),
            ("    approver_roles: [sre]\n", "approver_roles"),
            ("    required_signals: [opa]\n", "required_signals"),
            ("    decision_timeout_ms: 1000\n", "decision_timeout_ms"),
            ("    decisions: signed\n", "decisions"),
        ] {
            let text = GROUPS.replace(
                "    review: never\n",
                &format!("    review: never\n{extra}"),
            );
            assert_eq!(
                error_of(&text),
                format!("rule \"cache-flush\": review never takes no reviews, so {field} would never be read; remove it")
            );
        }
    }

    #[test]
    fn a_reviewed_rule_needs_a_decision_timeout() {
        let text = GROUPS.replace("    decision_timeout_ms: 86400000\n", "");
        assert_eq!(
            error_of(&text),
            "rule \"everything-else\": missing field `decision_timeout_ms`"
        );
    }

    const CONDITIONS: &str = r#"
version: "2026-12-02"
rules:
  - id: restart-on-latency
    match: { kind: "service.restart", target: "prod/" }
    when: >-
      action.parameters.strategy == "rolling"
      && action.parameters.reason.startsWith("latency")
      && int(action.parameters.p99_ms) > 2000
    approvals_required: 1
    approver_roles: [sre]
    override_roles: [incident-commander]
    decision_timeout_ms: 600000
    grant_ttl_ms: 600000
  - id: agents-with-a-runbook
    when: >-
      proposer.kind == "AGENT"
      && context_refs.exists(r, r.uri.startsWith("runbook://"))
    approvals_required: 1
    approver_roles: [sre]
    override_roles: [incident-commander]
    decision_timeout_ms: 600000
    grant_ttl_ms: 600000
  - id: everything-else
    approvals:
      - { roles: [sre], count: 2 }
      - { roles: [security], count: 1 }
    override_roles: [incident-commander]
    decision_timeout_ms: 3600000
    grant_ttl_ms: 900000
"#;

    fn restart(params: &[(&str, &str)]) -> Action {
        Action {
            kind: "service.restart".to_owned(),
            target: "prod/payments/api".to_owned(),
            parameters: params
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    fn resolve_as<'r>(
        rules: &'r Ruleset,
        action: &Action,
        kind: warrant_schema::ProposerKind,
        context: &[&str],
    ) -> Resolution<'r> {
        let proposer = Proposer {
            principal: "agent:test".to_owned(),
            kind,
            model: None,
        };
        let context_refs: Vec<ContextRef> = context
            .iter()
            .map(|uri| ContextRef {
                uri: (*uri).to_owned(),
                digest: None,
                note: None,
            })
            .collect();
        let resolution = rules.resolve(&Facts {
            action,
            proposer: &proposer,
            context_refs: &context_refs,
        });
        Resolution {
            rule: resolution.rule,
            not_matched: resolution.not_matched,
        }
    }

    fn reasons(resolution: &Resolution<'_>) -> Vec<(String, String)> {
        resolution
            .not_matched
            .iter()
            .map(|n| (n.rule_id.clone(), n.reason.clone()))
            .collect()
    }

    #[test]
    fn a_condition_that_holds_picks_its_rule() {
        let rules = Ruleset::parse(CONDITIONS.as_bytes()).expect("valid");
        let fast = restart(&[
            ("strategy", "rolling"),
            ("reason", "latency p99 over 2s"),
            ("p99_ms", "2600"),
        ]);
        let resolved = resolve_as(&rules, &fast, warrant_schema::ProposerKind::Agent, &[]);
        assert_eq!(resolved.rule.id, "restart-on-latency");
        assert!(resolved.not_matched.is_empty());
    }

    #[test]
    fn a_condition_that_does_not_hold_is_recorded_as_when_false() {
        let rules = Ruleset::parse(CONDITIONS.as_bytes()).expect("valid");
        let canary = restart(&[
            ("strategy", "canary"),
            ("reason", "latency p99 over 2s"),
            ("p99_ms", "2600"),
        ]);
        let resolved = resolve_as(&rules, &canary, warrant_schema::ProposerKind::Agent, &[]);
        assert_eq!(resolved.rule.id, "everything-else");
        assert_eq!(
            reasons(&resolved),
            [
                ("restart-on-latency", "when false"),
                ("agents-with-a-runbook", "when false"),
            ]
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
        let with_runbook = resolve_as(
            &rules,
            &canary,
            warrant_schema::ProposerKind::Agent,
            &["https://grafana.example/d/1", "runbook://payments/restart"],
        );
        assert_eq!(with_runbook.rule.id, "agents-with-a-runbook");
        let by_a_human = resolve_as(
            &rules,
            &canary,
            warrant_schema::ProposerKind::Human,
            &["runbook://payments/restart"],
        );
        assert_eq!(by_a_human.rule.id, "everything-else");
    }

    #[test]
    fn a_condition_that_errors_does_not_match_and_says_why() {
        let rules = Ruleset::parse(CONDITIONS.as_bytes()).expect("valid");
        // No p99_ms parameter, then one that is not a number.
        for params in [
            vec![("strategy", "rolling"), ("reason", "latency p99 over 2s")],
            vec![
                ("strategy", "rolling"),
                ("reason", "latency p99 over 2s"),
                ("p99_ms", "slow"),
            ],
        ] {
            let resolved = resolve_as(
                &rules,
                &restart(&params),
                warrant_schema::ProposerKind::Service,
                &[],
            );
            assert_eq!(resolved.rule.id, "everything-else");
            let (rule, reason) = &reasons(&resolved)[0];
            assert_eq!(rule, "restart-on-latency");
            assert!(reason.starts_with("when error: "), "{reason}");
        }
    }

    #[test]
    fn resolution_is_the_same_every_time() {
        let rules = Ruleset::parse(CONDITIONS.as_bytes()).expect("valid");
        let action = restart(&[
            ("strategy", "rolling"),
            ("reason", "latency"),
            ("p99_ms", "x"),
        ]);
        let first = reasons(&resolve_as(
            &rules,
            &action,
            warrant_schema::ProposerKind::Agent,
            &[],
        ));
        for _ in 0..20 {
            let again = reasons(&resolve_as(
                &rules,
                &action,
                warrant_schema::ProposerKind::Agent,
                &[],
            ));
            assert_eq!(again, first);
        }
    }

    #[test]
    fn conditions_that_cannot_be_checked_are_refused_naming_the_rule() {
        for (condition, problem) in [
            ("action.kind ==", "does not parse"),
            ("request.user == \"x\"", "names \"request\""),
            ("action.kind.startWith(\"a\")", "calls startWith()"),
            (
                "action.parameters.exists(k, k == \"x\")",
                "iterates over a map (action.parameters)",
            ),
            ("   ", "is empty"),
            (
                "action.kind > 5",
                "compares a string with an int (action.kind > 5)",
            ),
            (
                "1 / 0 == 1",
                "always fails: Division by zero of Int(1) (1 / 0)",
            ),
        ] {
            let text = CONDITIONS.replace(
                "      proposer.kind == \"AGENT\"\n      && context_refs.exists(r, r.uri.startsWith(\"runbook://\"))",
                &format!("      {condition}"),
            );
            assert_ne!(text, CONDITIONS);
            let error = error_of(&text);
            assert!(
                error.starts_with(&format!("rule \"agents-with-a-runbook\": when {problem}")),
                "{condition}: {error}"
            );
        }
    }

    #[test]
    fn a_strict_rule_with_a_condition_before_a_laxer_one_is_warned_about() {
        let rule = |id: &str, matches: &str, when: Option<&str>, approvals: i32| {
            let when = when
                .map(|w| format!("    when: '{w}'\n"))
                .unwrap_or_default();
            format!("  - id: {id}\n    match: {{ {matches} }}\n{when}    approvals_required: {approvals}\n    approver_roles: [sre]\n    override_roles: [ic]\n    decision_timeout_ms: 1000\n    grant_ttl_ms: 1000\n")
        };
        let warnings = |rules: &[String]| {
            let text = format!("version: \"t\"\nrules:\n{}", rules.concat());
            Ruleset::parse(text.as_bytes()).expect("loads").warnings()
        };
        let strict = rule(
            "big-refunds",
            "kind: \"payments.refund\", target: \"prod/\"",
            Some("int(action.parameters.amount) >= 1000"),
            3,
        );
        let catch_all = rule("everything-else", "", None, 1);
        // A glob and a shorter target still cover the strict rule.
        let wider = rule(
            "payments",
            "kind: \"payments.*\", target: \"prod\"",
            None,
            2,
        );
        let elsewhere = rule(
            "staging",
            "kind: \"payments.*\", target: \"staging/\"",
            None,
            1,
        );
        let stricter = rule("everything-else", "", None, 5);
        let found = warnings(&[strict.clone(), elsewhere.clone(), wider, catch_all.clone()]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("rule \"big-refunds\" has a condition and the later rule \"payments\" matches all it does with fewer approvals (2 < 3)"), "{found:?}");
        assert_eq!(
            warnings(&[strict.clone(), elsewhere, stricter]),
            Vec::<String>::new()
        );
        // The condition on the lax rule: nothing to warn about.
        let lax = rule(
            "small-refunds",
            "kind: \"payments.refund\", target: \"prod/\"",
            Some("int(action.parameters.amount) < 1000"),
            1,
        );
        assert_eq!(
            warnings(&[lax, rule("everything-else", "", None, 3)]),
            Vec::<String>::new()
        );
        let never = rule("never", "kind: \"x\"", Some("false"), 1);
        assert_eq!(
            warnings(&[never, catch_all.clone()]),
            vec!["rule \"never\": when is `false`, so the rule never matches".to_owned()]
        );
        // Any condition that names no variable has one value: known at load.
        let never = rule("never", "kind: \"x\"", Some("size([1, 2]) > 2"), 1);
        let always = rule("always", "kind: \"x\"", Some("[1, 2].exists(x, x == 2)"), 1);
        assert_eq!(
            warnings(&[never, always, catch_all]),
            vec!["rule \"never\": when `size([1, 2]) > 2` is always false, so the rule never matches".to_owned()]
        );
    }

    #[test]
    fn a_last_rule_with_a_condition_is_no_catch_all() {
        let text = CONDITIONS.replace(
            "  - id: everything-else\n",
            "  - id: everything-else\n    when: \"true\"\n",
        );
        assert!(error_of(&text).contains("no catch-all"));
    }

    #[test]
    fn globs() {
        assert!(glob_matches("*", ""));
        assert!(glob_matches("payments.*", "payments.refund.partial"));
        assert!(glob_matches("*.restart", "service.restart"));
        assert!(glob_matches("a?c", "abc"));
        assert!(!glob_matches("a?c", "ac"));
        assert!(glob_matches("a*b*c", "aXXbYYc"));
        assert!(!glob_matches("a*b*c", "aXXbYY"));
        assert!(!glob_matches("service.restart", "service.restarts"));
    }
}
