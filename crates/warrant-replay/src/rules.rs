//! `--check-rules`: proof that intake applied the published rules. Each
//! proposal's ruleset is looked up on the rulesets topic by the digest the
//! proposal records, the recorded action is resolved again with the same
//! resolution intake uses, and any instance whose recorded requirement (or
//! resolution trace) differs is reported.
//!
//! Pure: the caller reads the rulesets topic and folds the log.

use std::collections::BTreeMap;

use serde::Serialize;
use warrant_authority::{Facts, ProposalView, Ruleset};

/// One instance whose record does not match its published ruleset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mismatch {
    pub instance_id: String,
    pub recorded_rule: String,
    pub problem: String,
}

#[derive(Debug, Default, Serialize)]
pub struct RulesReport {
    /// Proposals resolved again.
    pub checked: u64,
    pub mismatches: Vec<Mismatch>,
}

impl RulesReport {
    pub fn failed(&self) -> bool {
        !self.mismatches.is_empty()
    }

    pub fn write_text(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        writeln!(
            out,
            "rules check: {} proposal(s) resolved again against their published ruleset, {} differ",
            self.checked,
            self.mismatches.len()
        )?;
        for m in &self.mismatches {
            writeln!(
                out,
                "  instance {} (recorded rule {}): {}",
                m.instance_id, m.recorded_rule, m.problem
            )?;
        }
        Ok(())
    }
}

/// Resolve every proposal again. `rulesets` maps digests (the topic's keys)
/// to the exact published text.
pub fn check<'a>(
    proposals: impl IntoIterator<Item = (&'a str, &'a ProposalView)>,
    rulesets: &BTreeMap<String, Vec<u8>>,
) -> RulesReport {
    let mut parsed: BTreeMap<&str, Result<Ruleset, String>> = BTreeMap::new();
    let mut report = RulesReport::default();
    for (instance_id, proposal) in proposals {
        report.checked += 1;
        let digest = proposal.ruleset.digest.as_str();
        let mismatch = |problem: String| Mismatch {
            instance_id: instance_id.to_owned(),
            recorded_rule: proposal.rule.rule_id.clone(),
            problem,
        };
        let Some(text) = rulesets.get(digest) else {
            report.mismatches.push(mismatch(format!(
                "ruleset {digest} is not on the rulesets topic"
            )));
            continue;
        };
        let ruleset = parsed.entry(digest).or_insert_with(|| {
            // The key is only a claim: the text must hash to it.
            Ruleset::parse(text)
                .map_err(|e| format!("the published ruleset {digest} does not load: {e}"))
                .and_then(|r| {
                    if r.digest() == digest {
                        Ok(r)
                    } else {
                        Err(format!(
                            "the text published under {digest} hashes to {}",
                            r.digest()
                        ))
                    }
                })
        });
        let ruleset = match ruleset {
            Ok(ruleset) => ruleset,
            Err(problem) => {
                report.mismatches.push(mismatch(problem.clone()));
                continue;
            }
        };
        let resolution = ruleset.resolve(&Facts {
            action: &proposal.action,
            proposer: &proposal.proposer,
            context_refs: &proposal.context_refs,
        });
        if resolution.requirement() != &proposal.rule {
            report.mismatches.push(mismatch(format!(
                "the published ruleset gives rule {} with {}, the record says {}",
                resolution.rule.id,
                summary(resolution.requirement()),
                summary(&proposal.rule)
            )));
        } else if !proposal.resolution.is_empty() && resolution.not_matched != proposal.resolution {
            // Events before envelope v3 carry no trace: only the
            // requirement can be compared for them.
            report.mismatches.push(mismatch(format!(
                "the resolution trace differs: recorded {:?}, resolved {:?}",
                proposal.resolution, resolution.not_matched
            )));
        }
    }
    report
}

fn summary(requirement: &warrant_schema::Requirement) -> String {
    serde_json::to_string(requirement).unwrap_or_else(|_| requirement.rule_id.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use warrant_authority::{ExecutionRecord, Ledger, LogPosition};
    use warrant_schema::{samples, EventBody};

    const RULESET: &[u8] = include_bytes!("../../../deploy/examples/ruleset.yaml");

    /// The record of a proposal intake made with the example ruleset,
    /// after `change` (an altered envelope) is applied to it.
    fn record(change: impl FnOnce(&mut warrant_schema::ActionProposed)) -> ExecutionRecord {
        let ruleset = Ruleset::parse(RULESET).expect("example");
        let mut envelope = samples::envelopes()[0].1.clone();
        let EventBody::ActionProposed(proposed) = &mut envelope.body else {
            panic!("sample is a proposal");
        };
        let resolution = ruleset.resolve(&Facts {
            action: &proposed.action,
            proposer: &proposed.proposer,
            context_refs: &proposed.context_refs,
        });
        proposed.requirement = resolution.requirement().clone();
        proposed.resolution = resolution.not_matched.clone();
        proposed.ruleset = ruleset.reference();
        change(proposed);
        let bytes = warrant_schema::encode(&envelope).expect("encode");
        let mut ledger = Ledger::new();
        ledger.apply(
            LogPosition {
                partition: 0,
                offset: 0,
            },
            Some(samples::INSTANCE_ID.as_bytes()),
            &bytes,
        );
        ledger.get(samples::INSTANCE_ID).expect("folded").record()
    }

    fn published() -> BTreeMap<String, Vec<u8>> {
        let digest = Ruleset::parse(RULESET)
            .expect("example")
            .digest()
            .to_owned();
        BTreeMap::from([(digest, RULESET.to_vec())])
    }

    fn run(record: &ExecutionRecord, rulesets: &BTreeMap<String, Vec<u8>>) -> RulesReport {
        let proposal = record.proposal.as_ref().expect("proposed");
        check([(record.instance_id.as_str(), proposal)], rulesets)
    }

    #[test]
    fn a_proposal_resolved_as_published_passes() {
        let record = record(|_| {});
        let report = run(&record, &published());
        assert_eq!(report.checked, 1);
        assert!(!report.failed(), "{report:?}");
        assert_eq!(
            record.proposal.as_ref().map(|p| p.rule.rule_id.as_str()),
            Some("prod-restarts")
        );
    }

    #[test]
    fn an_altered_requirement_is_reported() {
        let record = record(|p| p.requirement.approvals_required = 1);
        let report = run(&record, &published());
        assert!(report.failed());
        assert!(
            report.mismatches[0]
                .problem
                .starts_with("the published ruleset gives rule prod-restarts with"),
            "{report:?}"
        );
        let record = record_with_trace_removed();
        assert!(
            !run(&record, &published()).failed(),
            "no trace: requirement only"
        );
    }

    fn record_with_trace_removed() -> ExecutionRecord {
        record(|p| p.resolution.clear())
    }

    #[test]
    fn an_altered_trace_is_reported() {
        let record = record(|p| {
            p.resolution[0].reason = "kind".to_owned();
        });
        let report = run(&record, &published());
        assert!(report.failed());
        assert!(report.mismatches[0]
            .problem
            .starts_with("the resolution trace differs"));
    }

    #[test]
    fn a_ruleset_missing_or_not_matching_its_digest_is_reported() {
        let record = record(|_| {});
        let report = run(&record, &BTreeMap::new());
        assert!(report.mismatches[0]
            .problem
            .contains("is not on the rulesets topic"));
        let mut forged = published();
        for text in forged.values_mut() {
            text.extend_from_slice(b"\n# edited after publication\n");
        }
        let report = run(&record, &forged);
        assert!(
            report.mismatches[0].problem.contains("hashes to"),
            "{report:?}"
        );
    }
}
