//! `warrant rules`: try a ruleset before it ships, with the same loader and
//! the same resolution intake uses (warrant-authority), and no intake.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use serde_json::json;
use warrant_authority::{check_action, Facts, ProposalView, Ruleset};
use warrant_replay::{Keep, RangeSpec, ReplayOptions, Source};
use warrant_schema::{Action, ContextRef, Proposer, ProposerKind, Requirement, RulesetRef};

use crate::{fail, print_json, Class};

/// Load the file as intake would; a refusal names the rule.
pub fn load(path: &Path) -> anyhow::Result<Ruleset> {
    let text = std::fs::read(path)
        .with_context(|| format!("cannot read {}", path.display()))
        .map_err(|e| fail(Class::Usage, format!("{e:#}")))?;
    Ruleset::parse(&text).map_err(|error| {
        let mut message = format!("{} is refused: {error}", path.display());
        if let Some(cause) = std::error::Error::source(&error) {
            message.push_str(&format!(": {cause}"));
        }
        fail(Class::Refused, message)
    })
}

pub fn check(path: &Path, json: bool) -> anyhow::Result<()> {
    let ruleset = load(path)?;
    let with_when = ruleset.rules().iter().filter(|r| r.when.is_some()).count();
    // Warnings, not refusals: the ruleset is valid, intake would load it.
    let warnings = ruleset.warnings();
    if json {
        return print_json(&json!({
            "path": path,
            "version": ruleset.version(),
            "digest": ruleset.digest(),
            "rules": ruleset.rules().iter().map(|r| &r.id).collect::<Vec<_>>(),
            "warnings": warnings,
        }));
    }
    for warning in &warnings {
        eprintln!("warning: {warning}");
    }
    println!(
        "{}: version {}, {} rule(s), {with_when} with a condition; digest {}",
        path.display(),
        ruleset.version(),
        ruleset.rules().len(),
        ruleset.digest()
    );
    Ok(())
}

/// What `--action` may hold: an action, or a proposal with the proposer and
/// context refs conditions can see.
#[derive(Deserialize)]
#[serde(untagged)]
enum Proposed {
    Proposal {
        action: Action,
        #[serde(default)]
        proposer: Option<Proposer>,
        #[serde(default)]
        context_refs: Vec<ContextRef>,
    },
    Action(Action),
}

pub fn explain(path: &Path, action_json: &str, json: bool) -> anyhow::Result<()> {
    let ruleset = load(path)?;
    let proposed: Proposed = serde_json::from_str(action_json).map_err(|e| {
        fail(
            Class::Usage,
            format!("--action is not an action {{kind, target, parameters}} or a proposal {{action, proposer?, context_refs?}}: {e}"),
        )
    })?;
    let (action, proposer, context_refs) = match proposed {
        Proposed::Proposal {
            action,
            proposer,
            context_refs,
        } => (action, proposer, context_refs),
        Proposed::Action(action) => (action, None, Vec::new()),
    };
    // Intake resolves only canonical actions; say so rather than explain a
    // resolution that could never happen.
    check_action(&action).map_err(|e| {
        fail(
            Class::Refused,
            format!("intake would refuse this action before resolving it: {e}"),
        )
    })?;
    if context_refs.len() > warrant_authority::MAX_CONTEXT_REFS {
        return Err(fail(
            Class::Refused,
            format!(
                "intake would refuse this proposal before resolving it: context_refs has {} refs; a proposal may carry at most {}",
                context_refs.len(),
                warrant_authority::MAX_CONTEXT_REFS
            ),
        ));
    }
    let proposer = proposer.unwrap_or_else(|| Proposer {
        principal: "agent:explain".to_owned(),
        kind: ProposerKind::Agent,
        model: None,
    });
    let resolution = ruleset.resolve(&Facts {
        action: &action,
        proposer: &proposer,
        context_refs: &context_refs,
    });
    let requirement = resolution.requirement();
    if json {
        return print_json(&json!({
            "rule_id": resolution.rule.id,
            "requirement": requirement,
            "resolution": resolution.not_matched,
            "ruleset": ruleset.reference(),
        }));
    }
    for skipped in &resolution.not_matched {
        println!(
            "rule {:<24} does not match: {}",
            skipped.rule_id, skipped.reason
        );
    }
    let needs = match requirement.groups().as_slice() {
        [] => "no review: authorized by the rule at proposal".to_owned(),
        [only] => format!(
            "{} approval(s) from [{}]",
            only.count,
            only.roles.join(", ")
        ),
        several => several
            .iter()
            .map(|g| format!("{} of [{}]", g.count, g.roles.join(", ")))
            .collect::<Vec<_>>()
            .join(" and "),
    };
    println!("rule {:<24} applies: {needs}", resolution.rule.id);
    if !requirement.required_signals.is_empty() {
        println!(
            "  after signals [{}]; review {:?}",
            requirement.required_signals.join(", "),
            requirement.review
        );
    }
    Ok(())
}

/// One way the new ruleset changes the requirement: the rule that applied
/// under the old one, the rule under the new one and what differs, with
/// the instances it concerns.
#[derive(Debug, Serialize)]
pub struct RuleChange {
    pub old_rule: String,
    pub new_rule: String,
    /// `field: old -> new`, one per field of the requirement that differs.
    pub changes: Vec<String>,
    pub instances: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct DiffReport {
    pub old: RulesetRef,
    pub new: RulesetRef,
    /// Proposals in the range resolved under both rulesets.
    pub proposals: u64,
    /// Instances whose proposal lies before the range (partial): not resolved.
    pub partial: u64,
    /// Instances whose requirement would differ, grouped by rule change.
    pub changed: Vec<RuleChange>,
    /// Instances whose recorded requirement is not what the old ruleset gives
    /// (they were resolved under another ruleset): the diff is still between
    /// old and new, but this says the old one is not what the log ran on.
    pub recorded_differs_from_old: u64,
}

/// How `groups` reads in a report: `2 of [sre] and 1 of [security]`.
fn approvals(requirement: &Requirement) -> String {
    match requirement.groups().as_slice() {
        [] => "none (review never)".to_owned(),
        groups => groups
            .iter()
            .map(|g| format!("{} of [{}]", g.count, g.roles.join(", ")))
            .collect::<Vec<_>>()
            .join(" and "),
    }
}

/// Every field of the requirement that differs, as `field: old -> new`.
fn requirement_changes(old: &Requirement, new: &Requirement) -> Vec<String> {
    let mut changes = Vec::new();
    let mut field = |name: &str, old: String, new: String| {
        if old != new {
            changes.push(format!("{name}: {old} -> {new}"));
        }
    };
    field("approvals", approvals(old), approvals(new));
    field(
        "override_roles",
        format!("[{}]", old.override_roles.join(", ")),
        format!("[{}]", new.override_roles.join(", ")),
    );
    field(
        "required_signals",
        format!("[{}]", old.required_signals.join(", ")),
        format!("[{}]", new.required_signals.join(", ")),
    );
    field(
        "review",
        format!("{:?}", old.review),
        format!("{:?}", new.review),
    );
    field(
        "decision_timeout_ms",
        old.decision_timeout_ms.to_string(),
        new.decision_timeout_ms.to_string(),
    );
    field(
        "grant_ttl_ms",
        old.grant_ttl_ms.to_string(),
        new.grant_ttl_ms.to_string(),
    );
    field(
        "max_executions",
        old.max_executions.to_string(),
        new.max_executions.to_string(),
    );
    field(
        "signed_decisions",
        old.signed_decisions.to_string(),
        new.signed_decisions.to_string(),
    );
    changes
}

/// Resolve every proposal of the replayed range under `old` and `new`.
/// Pure: the caller reads the log.
pub fn diff_proposals<'a>(
    old: &Ruleset,
    new: &Ruleset,
    proposals: impl IntoIterator<Item = (&'a str, &'a ProposalView)>,
) -> DiffReport {
    let mut report = DiffReport {
        old: old.reference(),
        new: new.reference(),
        proposals: 0,
        partial: 0,
        changed: Vec::new(),
        recorded_differs_from_old: 0,
    };
    let mut groups: BTreeMap<(String, String, Vec<String>), Vec<String>> = BTreeMap::new();
    for (instance_id, proposal) in proposals {
        report.proposals += 1;
        let facts = Facts {
            action: &proposal.action,
            proposer: &proposal.proposer,
            context_refs: &proposal.context_refs,
        };
        let before = old.resolve(&facts);
        let after = new.resolve(&facts);
        if before.requirement() != &proposal.rule {
            report.recorded_differs_from_old += 1;
        }
        if before.requirement() == after.requirement() {
            continue;
        }
        groups
            .entry((
                before.rule.id.clone(),
                after.rule.id.clone(),
                requirement_changes(before.requirement(), after.requirement()),
            ))
            .or_default()
            .push(instance_id.to_owned());
    }
    report.changed = groups
        .into_iter()
        .map(|((old_rule, new_rule, changes), instances)| RuleChange {
            old_rule,
            new_rule,
            changes,
            instances,
        })
        .collect();
    report
}

impl DiffReport {
    pub fn changed_instances(&self) -> usize {
        self.changed.iter().map(|c| c.instances.len()).sum()
    }

    fn print(&self) {
        println!(
            "rules diff: {} proposal(s) in the range resolved under ruleset {} ({}) and {} ({}); {} would get a different requirement",
            self.proposals,
            self.old.version,
            short(&self.old.digest),
            self.new.version,
            short(&self.new.digest),
            self.changed_instances()
        );
        if self.partial > 0 {
            println!(
                "  {} instance(s) without their proposal in the range were not resolved",
                self.partial
            );
        }
        if self.recorded_differs_from_old > 0 {
            println!(
                "  note: {} proposal(s) recorded a requirement OLD does not give: the log ran on another ruleset",
                self.recorded_differs_from_old
            );
        }
        for change in &self.changed {
            if change.old_rule == change.new_rule {
                println!(
                    "rule {}: {} instance(s)",
                    change.old_rule,
                    change.instances.len()
                );
            } else {
                println!(
                    "rule {} -> {}: {} instance(s)",
                    change.old_rule,
                    change.new_rule,
                    change.instances.len()
                );
            }
            for line in &change.changes {
                println!("  {line}");
            }
            for instance in &change.instances {
                println!("    {instance}");
            }
        }
    }
}

fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

/// Where `rules diff` reads the proposals from: the log (Kafka) or an export.
pub struct LogSource {
    pub source: Source,
    pub range: RangeSpec,
}

pub fn diff(old: &Path, new: &Path, log: LogSource, json: bool) -> anyhow::Result<()> {
    let (old, new) = (load(old)?, load(new)?);
    let mut options = ReplayOptions::new(log.source);
    options.range = log.range;
    // Only each instance's proposal is read, not its history.
    options.keep = Keep::State;
    let replayed = warrant_replay::replay(&options).map_err(|e| {
        let class = match e {
            warrant_replay::Error::Usage(_) => Class::Usage,
            _ => Class::Unavailable,
        };
        fail(class, format!("cannot read the log: {e}"))
    })?;
    let records = replayed
        .instances
        .iter()
        .map(|instance| instance.state_record())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(Class::Unavailable, format!("cannot read the log: {e}")))?;
    let mut report = diff_proposals(
        &old,
        &new,
        records
            .iter()
            .filter_map(|r| r.proposal.as_ref().map(|p| (r.instance_id.as_str(), p))),
    );
    report.partial = replayed.instances.iter().filter(|i| i.partial).count() as u64;
    if json {
        return print_json(&report);
    }
    report.print();
    Ok(())
}
