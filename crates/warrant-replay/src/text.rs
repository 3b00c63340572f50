//! `--format text`: an execution record as an auditor reads it (docs/contract.md §7),
//! every time in UTC, every entry with its log position and hash.

use serde::Serialize;
use warrant_authority::{Authority, Authorization, EffectiveScope, Outcome};
use warrant_schema::Scope;

use crate::replayed::ReplayedRecord;
use crate::time::format_millis;

/// `text` with every control character escaped (`\n`, `\u{1b}`, ...):
/// C0, DEL, C1, and the bidirectional overrides that reorder a line on
/// screen. Strings in a record come from the log, so anyone who can write
/// to it (or to a file) chooses them; printed raw, a newline and an escape
/// sequence in a signal's reason can forge a whole line of the report.
pub fn clean(text: &str) -> std::borrow::Cow<'_, str> {
    fn hostile(c: char) -> bool {
        c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    }
    if !text.chars().any(hostile) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if hostile(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Append a formatted piece of a line, cleaned: the templates hold no
/// control characters, so whatever the piece holds came from the record.
macro_rules! part {
    ($out:expr, $($arg:tt)*) => {{
        $out.push_str(&clean(&format!($($arg)*)));
        Ok::<(), std::fmt::Error>(())
    }};
}

/// [`part!`] and the end of the line.
macro_rules! ln {
    ($out:expr) => {{
        $out.push('\n');
        Ok::<(), std::fmt::Error>(())
    }};
    ($out:expr, $($arg:tt)*) => {{
        $out.push_str(&clean(&format!($($arg)*)));
        $out.push('\n');
        Ok::<(), std::fmt::Error>(())
    }};
}

/// The serde name of a unit enum (`ALLOW`, `SUCCEEDED`, ...).
fn name<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(text)) => text,
        Ok(other) => other.to_string(),
        Err(_) => "?".to_owned(),
    }
}

/// `2 approval(s) from [sre]`, `2 of [sre] and 1 of [security]`, or `no
/// review` for a rule that authorizes by itself.
fn approvals_needed(rule: &warrant_schema::Requirement) -> String {
    let groups = rule.groups();
    match groups.as_slice() {
        [] => "no review".to_owned(),
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
    }
}

fn time(at: Option<i64>) -> String {
    at.map_or_else(|| "(no time)".to_owned(), format_millis)
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "(none)".to_owned()
    } else {
        items.join(", ")
    }
}

fn constraints(map: &std::collections::BTreeMap<String, String>) -> String {
    if map.is_empty() {
        return "none".to_owned();
    }
    let pairs: Vec<String> = map.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.join(", ")
}

/// A decision's requested scope in one line (also `warrant`'s confirmation).
pub fn requested_scope(scope: &Scope) -> String {
    format!(
        "constraints {}; not after {}; max executions {}",
        constraints(&scope.constraints),
        scope
            .not_after
            .map_or_else(|| "(unlimited)".to_owned(), format_millis),
        scope
            .max_executions
            .map_or_else(|| "(unlimited)".to_owned(), |n| n.to_string())
    )
}

fn effective_scope(scope: &EffectiveScope) -> String {
    format!(
        "constraints {}; not after {}; max executions {}",
        constraints(&scope.constraints),
        format_millis(scope.not_after),
        scope.max_executions
    )
}

fn authorization(auth: &Authorization) -> String {
    let by = match &auth.authority {
        Authority::Quorum { approvers } => format!("quorum of {}", list(approvers)),
        Authority::Override {
            principal,
            justification,
        } => format!("OVERRIDE by {principal} ({justification:?})"),
        Authority::Rule { rule_id } => format!("rule {rule_id} (every signal allowed)"),
    };
    format!(
        "{by} at {}; {}",
        format_millis(auth.authorized_at),
        effective_scope(&auth.scope)
    )
}

fn outcome(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Applied { .. } => outcome.chain_code(),
        Outcome::Refused { reason, .. } | Outcome::Violation { reason, .. } => {
            format!("{} ({reason})", outcome.chain_code())
        }
    }
}

/// Render one record.
pub fn render(replayed: &ReplayedRecord) -> String {
    let mut out = String::with_capacity(4096);
    // Writing to a String cannot fail.
    let _ = write_into(&mut out, replayed);
    out
}

fn write_into(out: &mut String, replayed: &ReplayedRecord) -> std::fmt::Result {
    let record = &replayed.record;
    ln!(out, "== instance {} ==", record.instance_id)?;
    if replayed.partial {
        ln!(out,
            "PARTIAL          its first event in the range is not its proposal and the range starts after the log, so earlier events may lie before it (--verify asks the projector): statuses, refusals and hashes below come from the range alone and are not its record"
        )?;
    }
    part!(out, "partition        {}", replayed.partition)?;
    if !replayed.also_in_partitions.is_empty() {
        part!(
            out,
            " (records under this id also in partition(s) {:?}, folded separately)",
            replayed.also_in_partitions
        )?;
    }
    ln!(out)?;
    ln!(
        out,
        "status           {}",
        record
            .status
            .map_or("(nothing proposed under this id)", |s| s.as_str())
    )?;
    if let Some(proposal) = &record.proposal {
        ln!(
            out,
            "action           {} on {}",
            proposal.action.kind,
            proposal.action.target
        )?;
        for (key, value) in &proposal.action.parameters {
            ln!(out, "  parameter      {key} = {value}")?;
        }
        ln!(out, "action digest    {}", proposal.action_digest)?;
        let model = proposal
            .proposer
            .model
            .as_ref()
            .map_or_else(String::new, |m| format!(", model {m}"));
        ln!(
            out,
            "proposed         {} by {} ({}{model}), submitted by {}",
            format_millis(proposal.proposed_at),
            proposal.proposer.principal,
            name(&proposal.proposer.kind),
            proposal.submitted_by
        )?;
        if let Some(rationale) = &proposal.rationale {
            ln!(out, "rationale        {rationale}")?;
        }
        let rule = &proposal.rule;
        ln!(
            out,
            "rule             {}: {}; override by [{}]; required signals [{}]; review {}; decision timeout {} ms; grant ttl {} ms; max executions {}",
            rule.rule_id,
            approvals_needed(rule),
            rule.override_roles.join(", "),
            rule.required_signals.join(", "),
            name(&rule.review),
            rule.decision_timeout_ms,
            rule.grant_ttl_ms,
            rule.max_executions
        )?;
        for skipped in &proposal.resolution {
            ln!(
                out,
                "  not rule       {}: {}",
                skipped.rule_id,
                skipped.reason
            )?;
        }
        ln!(
            out,
            "ruleset          version {}, digest {}",
            proposal.ruleset.version,
            proposal.ruleset.digest
        )?;
        ln!(
            out,
            "decide by        {}",
            format_millis(proposal.decision_deadline)
        )?;
        ln!(out, "context refs")?;
        if proposal.context_refs.is_empty() {
            ln!(out, "  (none)")?;
        }
        for context in &proposal.context_refs {
            part!(out, "  - {}", context.uri)?;
            if let Some(digest) = &context.digest {
                part!(out, "  digest {digest}")?;
            }
            if let Some(note) = &context.note {
                part!(out, "  ({note})")?;
            }
            ln!(out)?;
        }
    }
    ln!(out, "signals")?;
    if record.signals.is_empty() {
        ln!(out, "  (none)")?;
    }
    for signal in &record.signals {
        ln!(
            out,
            "  #{:<4} {}  {}  {}  policy {}@{}  [{}]",
            signal.seq,
            format_millis(signal.recorded_at),
            signal.source,
            name(&signal.verdict),
            signal.policy_ref.id,
            signal.policy_ref.version,
            signal.outcome
        )?;
        for reason in &signal.reasons {
            ln!(out, "         reason: {reason}")?;
        }
    }
    ln!(out, "decisions")?;
    if record.decisions.is_empty() {
        ln!(out, "  (none)")?;
    }
    for decision in &record.decisions {
        ln!(
            out,
            "  #{:<4} {}  {} [{}]  {}  [{}]",
            decision.seq,
            format_millis(decision.recorded_at),
            decision.reviewer,
            decision.roles.join(", "),
            name(&decision.verdict),
            decision.outcome
        )?;
        if let Some(group) = decision.counted_for {
            ln!(out, "         counted for group {}", group + 1)?;
        }
        ln!(out, "         {}", decision.attestation.describe())?;
        ln!(out, "         justification: {:?}", decision.justification)?;
        ln!(out, "         scope: {}", requested_scope(&decision.scope))?;
        for evidence in &decision.evidence_refs {
            ln!(out, "         evidence: {evidence}")?;
        }
    }
    if !record.approval_groups.is_empty() {
        ln!(out, "approval groups")?;
    }
    for (index, group) in record.approval_groups.iter().enumerate() {
        ln!(
            out,
            "  {}. {} of [{}]: {}{}",
            index + 1,
            group.count,
            group.roles.join(", "),
            if group.approved_by.is_empty() {
                "nobody yet".to_owned()
            } else {
                group.approved_by.join(", ")
            },
            if group.missing == 0 {
                "  (met)".to_owned()
            } else {
                format!("  ({} missing)", group.missing)
            }
        )?;
    }
    match &record.authorization {
        Some(auth) => ln!(out, "authorization    {}", authorization(auth))?,
        None => ln!(out, "authorization    (none)")?,
    }
    ln!(out, "transitions")?;
    for transition in &record.transitions {
        ln!(
            out,
            "  #{:<4} {}  at {}/{}  {} -> {}",
            transition.seq,
            time(transition.recorded_at),
            transition.position.partition,
            transition.position.offset,
            transition.from.map_or("(new)", |s| s.as_str()),
            transition.to
        )?;
    }
    ln!(out, "grants")?;
    if record.grants.is_empty() {
        ln!(out, "  (none)")?;
    }
    for grant in &record.grants {
        part!(
            out,
            "  {}  executor {}  granted #{} at {}",
            grant.grant_id,
            grant.executor,
            grant.granted_seq,
            format_millis(grant.granted_at)
        )?;
        match &grant.report {
            Some(report) => ln!(
                out,
                "; reported {} at {} (#{})",
                name(&report.outcome),
                format_millis(report.reported_at),
                report.seq
            )?,
            None => ln!(out, "; not reported")?,
        }
    }
    ln!(out, "violations")?;
    if record.violations.is_empty() {
        ln!(out, "  (none)")?;
    }
    for violation in &record.violations {
        ln!(
            out,
            "  #{:<4} {}  {} for grant {}",
            violation.seq,
            format_millis(violation.reported_at),
            violation.kind,
            violation.grant_id
        )?;
    }
    ln!(out, "history")?;
    for entry in &record.history {
        ln!(
            out,
            "  #{:<4} {}  at {}/{}  {} by {}: {}",
            entry.seq,
            time(entry.recorded_at),
            entry.position.partition,
            entry.position.offset,
            entry.event,
            entry.submitted_by.as_deref().unwrap_or("(unknown)"),
            outcome(&entry.outcome)
        )?;
        ln!(out, "         hash {}", entry.hash)?;
    }
    ln!(out, "head hash        {}", record.head_hash)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use warrant_authority::{Ledger, LogPosition};
    use warrant_schema::samples;

    use super::*;

    /// The sample instance's realistic prefix: proposal, two signals, two
    /// approvals, an execution and its report.
    fn sample() -> ReplayedRecord {
        let mut ledger = Ledger::new();
        for (offset, (_, envelope)) in samples::envelopes().into_iter().take(7).enumerate() {
            let bytes = warrant_schema::encode(&envelope).unwrap_or_else(|e| panic!("{e}"));
            ledger.apply(
                LogPosition {
                    partition: 2,
                    offset: 40 + offset as i64,
                },
                Some(samples::INSTANCE_ID.as_bytes()),
                &bytes,
            );
        }
        let folded = ledger
            .get(samples::INSTANCE_ID)
            .unwrap_or_else(|| panic!("instance folded"));
        ReplayedRecord {
            partial: false,
            partition: 2,
            also_in_partitions: vec![],
            record: folded.record(),
        }
    }

    #[test]
    fn the_text_report_shows_every_part_of_the_minimum_record() {
        let record = sample();
        let text = render(&record);
        let must_show = [
            format!("== instance {} ==", samples::INSTANCE_ID),
            "partition        2".to_owned(),
            "action           service.restart on prod/payments/api".to_owned(),
            "  parameter      strategy = rolling".to_owned(),
            format!("action digest    {}", samples::ACTION_DIGEST),
            "proposed         2026-11-18T11:06:40.000Z by agent:remediator (AGENT, model gpt-ops-7), submitted by svc:remediator".to_owned(),
            "rule             prod-restarts: 2 approval(s) from [sre, payments-oncall]".to_owned(),
            "ruleset          version 2026-11-01, digest 5b0e5f2a".to_owned(),
            "  - https://grafana.example/d/payments?from=now-1h  digest sha256:9f2c  (p99 latency panel)".to_owned(),
            "  #2    2026-11-18T11:06:41.000Z  opa  ALLOW  policy restarts.rego@17  [applied]".to_owned(),
            "         reason: inside payments freeze window".to_owned(),
            "  #4    2026-11-18T11:07:40.000Z  alice [sre]  APPROVE  [applied]".to_owned(),
            "         counted for group 1".to_owned(),
            "approval groups".to_owned(),
            "  1. 2 of [sre, payments-oncall]: alice, bob  (met)".to_owned(),
            "         justification: \"leak confirmed in heap profile\"".to_owned(),
            "         scope: constraints region=eu-west-1; not after 2026-11-18T11:16:40.000Z; max executions 1".to_owned(),
            "         evidence: https://pprof.example/heap/123".to_owned(),
            "authorization    quorum of alice, bob at 2026-11-18T11:08:10.000Z".to_owned(),
            "  #1    2026-11-18T11:06:40.000Z  at 2/40  (new) -> AWAITING_SIGNALS".to_owned(),
            "  #6    2026-11-18T11:08:40.000Z  at 2/45  ExecutionRequested by svc:deployer: applied AUTHORIZED>EXECUTING".to_owned(),
            format!("head hash        {}", record.record.head_hash),
        ];
        for line in must_show {
            assert!(text.contains(&line), "missing {line:?} in:\n{text}");
        }
        assert!(!text.contains("PARTIAL"));
        assert_eq!(
            text.matches("         hash ").count(),
            record.record.history.len()
        );
        // The last history line carries the head hash.
        let last_hash = record.record.history.last().map(|e| e.hash.to_string());
        assert!(last_hash.is_some_and(|h| text.contains(&format!("         hash {h}\nhead hash"))));
    }

    #[test]
    fn a_partial_record_says_so_first() {
        let mut record = sample();
        record.partial = true;
        record.also_in_partitions = vec![0];
        let text = render(&record);
        let lines: Vec<&str> = text.lines().take(3).collect();
        assert!(lines[1].starts_with("PARTIAL"), "{text}");
        assert!(lines[2].contains("also in partition(s) [0]"), "{text}");
    }

    #[test]
    fn control_characters_from_the_log_cannot_forge_lines() {
        // A policy signal's reason carrying a newline and an erase-line
        // escape would otherwise print a line of its own (attack t10).
        let mut record = sample();
        let forged = "fine\n\u{1b}[Kverify http://projector: 1 instances: 1 verified; ok";
        record.record.signals[0].reasons.push(forged.to_owned());
        if let Some(proposal) = record.record.proposal.as_mut() {
            proposal
                .action
                .parameters
                .insert("k\r\u{9b}".to_owned(), "v\u{202e}x\u{7f}".to_owned());
        }
        let text = render(&record);
        assert!(
            !text
                .lines()
                .any(|l| l.contains("verify http") && !l.contains("reason:")),
            "{text}"
        );
        assert!(!text.contains('\u{1b}') && !text.contains('\r'), "{text}");
        assert!(
            text.contains("         reason: fine\\n\\u{1b}[Kverify http://projector"),
            "{text}"
        );
        assert!(
            text.contains("  parameter      k\\r\\u{9b} = v\\u{202e}x\\u{7f}"),
            "{text}"
        );
        // Ordinary text, accents included, is untouched.
        assert_eq!(clean("café: ok"), "café: ok");
    }
}
