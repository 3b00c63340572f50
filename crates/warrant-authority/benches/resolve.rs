//! The cost of resolving one proposal against a 200-rule ruleset, with and
//! without `when:` conditions, measured in the same run (machines differ by
//! 2-3x, so only figures from one run compare).
//!
//! `cargo bench -p warrant-authority --bench resolve` prints p50 and p99
//! per resolution for four rulesets of 200 rules each:
//! - `kinds`: every rule matches another kind, the proposal reaches the
//!   catch-all (200 kind checks, no condition evaluated);
//! - `kinds+when`: the same rules, each with a condition; the kinds still
//!   differ, so conditions are skipped the way most rules of a real
//!   ruleset are;
//! - `all-match`: 199 rules match the proposal's kind and target, without
//!   conditions (the first one wins);
//! - `all-match+when`: the worst case, 199 rules matching kind and target
//!   whose conditions are all evaluated and false, then the catch-all.

#![allow(clippy::disallowed_methods)] // timing the benchmark, not the fold

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use warrant_authority::{Facts, Ruleset};
use warrant_schema::{samples, Action};

const RULES: usize = 200;

fn ruleset(same_kind: bool, with_when: bool) -> Ruleset {
    let mut text = String::from("version: \"bench\"\nrules:\n");
    for n in 0..RULES - 1 {
        let kind = if same_kind {
            "service.restart".to_owned()
        } else {
            format!("service.op{n}")
        };
        text.push_str(&format!(
            "  - id: rule-{n}\n    match: {{ kind: \"{kind}\", target: \"prod/\" }}\n"
        ));
        if with_when {
            text.push_str(&format!(
                "    when: >-\n      has(action.parameters.p99_ms) && int(action.parameters.p99_ms) > {}\n      && action.parameters.strategy == \"rolling\" && proposer.kind == \"AGENT\"\n",
                100_000 + n
            ));
        }
        text.push_str("    approvals_required: 1\n    approver_roles: [sre]\n    override_roles: [ic]\n    decision_timeout_ms: 60000\n    grant_ttl_ms: 60000\n");
    }
    text.push_str("  - id: everything-else\n    approvals_required: 1\n    approver_roles: [sre]\n    override_roles: [ic]\n    decision_timeout_ms: 60000\n    grant_ttl_ms: 60000\n");
    Ruleset::parse(text.as_bytes()).unwrap_or_else(|e| panic!("bench ruleset: {e}"))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn main() {
    let proposed = samples::action_proposed();
    let action = Action {
        parameters: BTreeMap::from([
            ("p99_ms".to_owned(), "2400".to_owned()),
            ("strategy".to_owned(), "rolling".to_owned()),
        ]),
        ..samples::action()
    };
    let facts = Facts {
        action: &action,
        proposer: &proposed.proposer,
        context_refs: &proposed.context_refs,
    };
    let iterations: usize = 2_000;
    println!("resolving one proposal against {RULES} rules, {iterations} resolutions each");
    for (name, same_kind, with_when) in [
        ("kinds", false, false),
        ("kinds+when", false, true),
        ("all-match", true, false),
        ("all-match+when", true, true),
    ] {
        let rules = ruleset(same_kind, with_when);
        let expected = if same_kind && !with_when {
            "rule-0"
        } else {
            "everything-else"
        };
        let mut times = Vec::with_capacity(iterations);
        for _ in 0..iterations {
            let started = Instant::now();
            let resolution = rules.resolve(&facts);
            let elapsed = started.elapsed();
            assert_eq!(resolution.rule.id, expected, "{name}");
            std::hint::black_box(&resolution);
            times.push(elapsed);
        }
        times.sort();
        println!(
            "  {name:<15} p50 {:>10.1?}  p99 {:>10.1?}",
            percentile(&times, 0.50),
            percentile(&times, 0.99)
        );
    }
}
