//! `warrant rules`: try a ruleset before it ships, with the same loader and
//! the same resolution intake uses (warrant-authority), and no intake.

use std::path::Path;

use anyhow::Context as _;
use serde::Deserialize;
use serde_json::json;
use warrant_authority::{check_action, Facts, Ruleset};
use warrant_schema::{Action, ContextRef, Proposer, ProposerKind};

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
    if json {
        return print_json(&json!({
            "path": path,
            "version": ruleset.version(),
            "digest": ruleset.digest(),
            "rules": ruleset.rules().iter().map(|r| &r.id).collect::<Vec<_>>(),
        }));
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
