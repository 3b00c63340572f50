//! What a person reads: the queue as a table, and the summary of what they
//! are about to sign. Pure functions of the data and `now`, so the layout
//! is tested without a server. `warrant show` does not live here: it is
//! replay's own text (`warrant_replay::text`).

use std::fmt::Write as _;

use warrant_authority::ExecutionRecord;
use warrant_client::{Decision, QueueItem, QueuePage, Session};
use warrant_replay::text::requested_scope;
use warrant_replay::time::format_millis;
use warrant_schema::{DecisionVerdict, Scope};

/// A span of time as people say it: `42s`, `3m12s`, `2h05m`, `3d04h`.
pub fn span(millis: i64) -> String {
    let secs = millis.max(0) / 1000;
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    if d > 0 {
        format!("{d}d{h:02}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

/// Time left before `deadline`, or how long ago it passed.
pub fn time_left(deadline: i64, now: i64) -> String {
    if deadline > now {
        span(deadline - now)
    } else {
        format!("overdue {}", span(now - deadline))
    }
}

/// `service.restart on prod/payments/api`.
fn action(item: &QueueItem) -> String {
    format!("{} on {}", item.action.kind, item.action.target)
}

/// `1/2` for one group; `sre 1/1, security 0/1` for several, since each
/// must be met and the sum would hide which one is missing.
fn approvals(item: &QueueItem) -> String {
    if item.approval_groups.len() <= 1 {
        return format!("{}/{}", item.decided_by.len(), item.rule.approvals_required);
    }
    item.approval_groups
        .iter()
        .map(|group| {
            format!(
                "{} {}/{}",
                group.roles.join("|"),
                group.counted,
                group.count
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The queue as a table, oldest first as intake pages it.
pub fn queue(page: &QueuePage, status: &str, role: Option<&str>, now: i64) -> String {
    let mut out = String::new();
    let scope = role.map_or_else(String::new, |role| format!(" for role {role}"));
    if page.instances.is_empty() {
        let _ = writeln!(out, "nothing is {status}{scope}");
        return out;
    }
    let _ = writeln!(out, "{} instance(s) {status}{scope}", page.instances.len());
    let rule_width = page
        .instances
        .iter()
        .map(|item| item.rule.rule_id.len())
        .max()
        .unwrap_or(0)
        .max("RULE".len());
    let approvals_width = page
        .instances
        .iter()
        .map(|item| approvals(item).chars().count())
        .max()
        .unwrap_or(0)
        .max("APPROVALS".len());
    let _ = writeln!(
        out,
        "{:<36}  {:<7}  {:<15}  {:<approvals_width$}  {:<rule_width$}  ACTION",
        "INSTANCE", "AGE", "LEFT", "APPROVALS", "RULE"
    );
    for item in &page.instances {
        let _ = writeln!(
            out,
            "{:<36}  {:<7}  {:<15}  {:<approvals_width$}  {:<rule_width$}  {}",
            item.instance_id,
            span(now - item.proposed_at),
            time_left(item.decision_deadline, now),
            approvals(item),
            item.rule.rule_id,
            action(item)
        );
    }
    if let Some(next) = &page.next {
        let _ = writeln!(out, "more: warrant queue --after {next}");
    }
    out
}

/// The verdict as the log spells it.
pub fn verdict(verdict: DecisionVerdict) -> &'static str {
    match verdict {
        DecisionVerdict::Approve => "APPROVE",
        DecisionVerdict::Reject => "REJECT",
        DecisionVerdict::Override => "OVERRIDE",
    }
}

/// What the reviewer is about to sign: the action, its digest and the
/// rule as the record has them, who they are, and their decision. The
/// digest printed here is the one signed.
pub fn summary(
    record: &ExecutionRecord,
    session: &Session,
    key_id: &str,
    decision: &Decision,
    now: i64,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "instance         {}", record.instance_id);
    let _ = writeln!(
        out,
        "status           {}",
        record.status.map_or("(nothing proposed)", |s| s.as_str())
    );
    if let Some(proposal) = &record.proposal {
        let _ = writeln!(
            out,
            "action           {} on {}",
            proposal.action.kind, proposal.action.target
        );
        for (key, value) in &proposal.action.parameters {
            let _ = writeln!(out, "  parameter      {key} = {value}");
        }
        let _ = writeln!(out, "action digest    {}", proposal.action_digest);
        let _ = writeln!(
            out,
            "proposed         {} by {}, {} ago",
            format_millis(proposal.proposed_at),
            proposal.proposer.principal,
            span(now - proposal.proposed_at)
        );
        if let Some(rationale) = &proposal.rationale {
            let _ = writeln!(out, "rationale        {rationale}");
        }
        let rule = &proposal.rule;
        let groups = rule.groups();
        let needed = match groups.as_slice() {
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
        };
        let _ = writeln!(
            out,
            "rule             {}: {needed}; override by [{}]",
            rule.rule_id,
            rule.override_roles.join(", ")
        );
        let approved: Vec<&str> = record
            .decisions
            .iter()
            .filter(|d| d.outcome == "applied" && d.verdict == DecisionVerdict::Approve)
            .map(|d| d.reviewer.as_str())
            .collect();
        let _ = writeln!(
            out,
            "approved by      {}",
            if approved.is_empty() {
                "(nobody yet)".to_owned()
            } else {
                approved.join(", ")
            }
        );
        // With several groups, say which ones still need someone: the
        // reviewer should know whether their approval fills a place.
        if record.approval_groups.len() > 1 {
            for (index, group) in record.approval_groups.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "  group {}        {} of [{}]: {}{}",
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
                );
            }
        }
        let left = if proposal.decision_deadline > now {
            format!("{} left", span(proposal.decision_deadline - now))
        } else {
            time_left(proposal.decision_deadline, now)
        };
        let _ = writeln!(
            out,
            "decide by        {} ({left})",
            format_millis(proposal.decision_deadline)
        );
    }
    let _ = writeln!(
        out,
        "you              {} [{}], key {key_id}",
        session.reviewer.principal,
        session.reviewer.roles.join(", ")
    );
    let _ = writeln!(out, "decision         {}", verdict(decision.verdict));
    let _ = writeln!(out, "justification    {:?}", decision.justification);
    let _ = writeln!(
        out,
        "scope            {}",
        requested_scope(&Scope {
            constraints: decision.scope.constraints.clone(),
            not_after: decision.scope.not_after,
            max_executions: decision.scope.max_executions,
        })
    );
    for evidence in &decision.evidence_refs {
        let _ = writeln!(out, "evidence         {evidence}");
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use warrant_authority::{Ledger, LogPosition};
    use warrant_client::{Identity, QueueGroup, QueueRule, SignedScope};
    use warrant_schema::{samples, Action, Proposer, ProposerKind};

    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    /// The sample instance after its proposal, two signals and alice's
    /// approval: awaiting a second approval.
    fn sample_record() -> ExecutionRecord {
        let mut ledger = Ledger::new();
        for (offset, (_, envelope)) in samples::envelopes().into_iter().take(4).enumerate() {
            let bytes = warrant_schema::encode(&envelope).unwrap_or_else(|e| panic!("{e}"));
            ledger.apply(
                LogPosition {
                    partition: 0,
                    offset: offset as i64,
                },
                Some(samples::INSTANCE_ID.as_bytes()),
                &bytes,
            );
        }
        ledger
            .get(samples::INSTANCE_ID)
            .unwrap_or_else(|| panic!("instance folded"))
            .record()
    }

    #[test]
    fn spans_read_as_people_say_them() {
        assert_eq!(span(0), "0s");
        assert_eq!(span(42_999), "42s");
        assert_eq!(span(192_000), "3m12s");
        assert_eq!(span(2 * 3_600_000 + 5 * 60_000), "2h05m");
        assert_eq!(span(3 * 86_400_000 + 4 * 3_600_000), "3d04h");
        assert_eq!(span(-5), "0s");
        assert_eq!(time_left(NOW + 60_000, NOW), "1m00s");
        assert_eq!(time_left(NOW - 61_000, NOW), "overdue 1m01s");
    }

    fn item(id: &str, rule: &str) -> QueueItem {
        QueueItem {
            instance_id: id.to_owned(),
            status: "AWAITING_DECISION".to_owned(),
            entries: 2,
            head_hash: "00".repeat(32),
            action: Action {
                kind: "service.restart".to_owned(),
                target: "prod/payments/api".to_owned(),
                parameters: BTreeMap::new(),
            },
            action_digest: "ab".repeat(32),
            proposer: Proposer {
                principal: "svc:remediator".to_owned(),
                kind: ProposerKind::Service,
                model: None,
            },
            proposed_at: NOW - 192_000,
            decision_deadline: NOW + 3_408_000,
            rule: QueueRule {
                rule_id: rule.to_owned(),
                approvals_required: 2,
                approver_roles: vec!["sre".to_owned()],
                override_roles: vec!["ic".to_owned()],
                signed_decisions: false,
            },
            decided_by: vec!["erin".to_owned()],
            approval_groups: vec![QueueGroup {
                roles: vec!["sre".to_owned()],
                count: 2,
                counted: 1,
                approved_by: vec!["erin".to_owned()],
                missing: 1,
            }],
        }
    }

    #[test]
    fn the_queue_shows_age_time_left_and_approvals_per_instance() {
        let id = "6f1c2b9e-4d0a-4c7e-9a51-0d2f3b8c7e11";
        let page = QueuePage {
            instances: vec![item(id, "prod-restarts")],
            next: Some(id.to_owned()),
        };
        let text = queue(&page, "AWAITING_DECISION", Some("sre"), NOW);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "1 instance(s) AWAITING_DECISION for role sre");
        assert!(lines[1].starts_with("INSTANCE "), "{text}");
        let row = lines[2];
        assert!(row.starts_with(id), "{row}");
        for part in [
            "3m12s",
            "56m48s",
            "1/2",
            "prod-restarts",
            "service.restart on prod/payments/api",
        ] {
            assert!(row.contains(part), "{part} missing in {row:?}");
        }
        // Columns line up: the header's ACTION sits over the row's action.
        assert_eq!(lines[1].find("ACTION"), row.find("service.restart"));
        assert_eq!(lines[3], format!("more: warrant queue --after {id}"));
        assert_eq!(
            queue(
                &QueuePage {
                    instances: vec![],
                    next: None
                },
                "BLOCKED",
                None,
                NOW
            ),
            "nothing is BLOCKED\n"
        );
    }

    /// Given a rule of two groups with the SRE place filled, when the queue
    /// is printed, then each group shows, and the columns still line up.
    #[test]
    fn the_queue_shows_each_group_of_a_rule_with_several() {
        let id = "6f1c2b9e-4d0a-4c7e-9a51-0d2f3b8c7e11";
        let mut access = item(id, "prod-access");
        access.rule.approvals_required = 2;
        access.approval_groups = vec![
            QueueGroup {
                roles: vec!["sre".to_owned()],
                count: 1,
                counted: 1,
                approved_by: vec!["erin".to_owned()],
                missing: 0,
            },
            QueueGroup {
                roles: vec!["security".to_owned(), "ciso".to_owned()],
                count: 1,
                counted: 0,
                approved_by: vec![],
                missing: 1,
            },
        ];
        let page = QueuePage {
            instances: vec![access, item(id, "prod-restarts")],
            next: None,
        };
        let text = queue(&page, "AWAITING_DECISION", None, NOW);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[2].contains("  sre 1/1, security|ciso 0/1  prod-access"),
            "{text}"
        );
        assert!(lines[3].contains("  1/2  "), "{text}");
        let action_at = lines[1].find("ACTION");
        assert_eq!(lines[2].find("service.restart"), action_at, "{text}");
        assert_eq!(lines[3].find("service.restart"), action_at, "{text}");
    }

    #[test]
    fn the_summary_shows_the_digest_signed_and_the_reviewers_decision() {
        let record = sample_record();
        let session = Session {
            reviewer: Identity {
                principal: "erin".to_owned(),
                roles: vec!["sre".to_owned()],
            },
            key_id: "b600306cfa76723f".to_owned(),
            expires_at: NOW,
        };
        let decision = Decision {
            verdict: DecisionVerdict::Override,
            justification: "customer outage".to_owned(),
            scope: SignedScope {
                constraints: BTreeMap::from([("strategy".to_owned(), "rolling".to_owned())]),
                not_after: None,
                max_executions: Some(1),
            },
            evidence_refs: vec!["https://status.example/1".to_owned()],
        };
        let text = summary(&record, &session, "b600306cfa76723f", &decision, NOW);
        for line in [
            "instance         6f1c2b9e-4d0a-4c7e-9a51-0d2f3b8c7e11",
            "status           AWAITING_DECISION",
            "action           service.restart on prod/payments/api",
            "  parameter      strategy = rolling",
            &format!("action digest    {}", samples::ACTION_DIGEST),
            "rule             prod-restarts: 2 approval(s) from [sre, payments-oncall]; override by [incident-commander]",
            "approved by      alice",
            "you              erin [sre], key b600306cfa76723f",
            "decision         OVERRIDE",
            "justification    \"customer outage\"",
            "scope            constraints strategy=rolling; not after (unlimited); max executions 1",
            "evidence         https://status.example/1",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
    }

    #[test]
    fn the_summary_says_which_groups_still_need_someone() {
        let mut ledger = Ledger::new();
        // The sample's two signals and alice's approval, under two groups.
        let rest = samples::envelopes()
            .into_iter()
            .skip(1)
            .take(3)
            .map(|(_, e)| e);
        let events = std::iter::once(samples::two_group_proposal()).chain(rest);
        for (offset, envelope) in events.enumerate() {
            let bytes = warrant_schema::encode(&envelope).unwrap_or_else(|e| panic!("{e}"));
            ledger.apply(
                LogPosition {
                    partition: 0,
                    offset: offset as i64,
                },
                Some(samples::INSTANCE_ID.as_bytes()),
                &bytes,
            );
        }
        let record = ledger
            .get(samples::INSTANCE_ID)
            .unwrap_or_else(|| panic!("instance folded"))
            .record();
        let session = Session {
            reviewer: Identity {
                principal: "sam".to_owned(),
                roles: vec!["security".to_owned()],
            },
            key_id: "k".to_owned(),
            expires_at: NOW,
        };
        let decision = Decision {
            verdict: DecisionVerdict::Approve,
            justification: String::new(),
            scope: SignedScope {
                constraints: BTreeMap::new(),
                not_after: None,
                max_executions: None,
            },
            evidence_refs: vec![],
        };
        let text = summary(&record, &session, "k", &decision, NOW);
        for line in [
            "rule             prod-restarts-two-groups: 2 of [sre] and 1 of [security]; override by [incident-commander]",
            "approved by      alice",
            "  group 1        2 of [sre]: alice  (1 missing)",
            "  group 2        1 of [security]: nobody yet  (1 missing)",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
    }
}
