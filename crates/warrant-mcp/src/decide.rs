//! What the gateway does next, given an execution record: pure, so every
//! branch is tested without a broker.

use serde::Deserialize;
use warrant_authority::StatusName;

/// The part of an execution record (docs/contract.md §7) the gateway reads.
/// Other fields are ignored, so a record that grows stays readable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Record {
    pub instance_id: String,
    pub status: Option<StatusName>,
    #[serde(default)]
    pub proposal: Option<ProposalSeen>,
    #[serde(default)]
    pub decisions: Vec<DecisionSeen>,
    #[serde(default)]
    pub grants: Vec<GrantSeen>,
    #[serde(default)]
    pub history: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ProposalSeen {
    pub action: warrant_schema::Action,
    pub action_digest: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DecisionSeen {
    pub reviewer: String,
    pub verdict: String,
    #[serde(default)]
    pub justification: String,
    #[serde(default)]
    pub outcome: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct GrantSeen {
    pub grant_id: String,
    #[serde(default)]
    pub executor: String,
    /// The log position of the grant, when the record says.
    #[serde(default)]
    pub granted_seq: Option<u64>,
}

impl Record {
    pub fn entries(&self) -> u64 {
        self.history.len() as u64
    }

    /// Approvals the fold applied, for progress messages.
    pub fn approvals(&self) -> usize {
        self.decisions
            .iter()
            .filter(|d| d.verdict == "APPROVE" && d.outcome == "applied")
            .count()
    }
}

/// Whether an instance id of the epoch sequence can carry a new call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    /// Nothing was proposed under it: propose here.
    Free,
    /// A proposal of this call that has not run yet: a retry continues it.
    Continue,
    /// Used up by an earlier call: move on to the next epoch.
    Used,
}

/// Reads the record found at one id of the sequence.
///
/// A final instance is used. So is one that ever issued a grant, even if
/// the authorization allows more executions or the grant was never
/// reported: the call it stood for ran (or may have run), and a new call
/// must not be answered by that old approval.
pub fn slot(record: Option<&Record>) -> Slot {
    let Some(record) = record else {
        return Slot::Free;
    };
    match record.status {
        None => Slot::Free,
        Some(status) if status.is_final() => Slot::Used,
        Some(_) if !record.grants.is_empty() => Slot::Used,
        Some(_) => Slot::Continue,
    }
}

/// Why a call ends without running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stop {
    pub status: StatusName,
    /// Who decided and why, when the record says (a rejection).
    pub detail: Option<String>,
}

/// What to do with an instance the gateway is waiting on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Paused, or not folded yet: keep waiting.
    Wait,
    /// Authorized: claim and run.
    Claim,
    /// Nothing will run.
    Stop(Stop),
}

pub fn next(record: &Record) -> Next {
    let Some(status) = record.status else {
        return Next::Wait;
    };
    match status {
        StatusName::AwaitingSignals | StatusName::AwaitingDecision | StatusName::Blocked => {
            Next::Wait
        }
        // An authorization for several executions that already issued a
        // grant answered an earlier call: a new call never rides on it.
        StatusName::Authorized if !record.grants.is_empty() => Next::Stop(Stop {
            status,
            detail: Some(
                "this instance already issued a grant (another call ran on this approval); \
                 it is not run again"
                    .to_owned(),
            ),
        }),
        StatusName::Authorized => Next::Claim,
        // Someone else claimed or finished it while this call waited (another
        // gateway making the same call): never run a second time on it.
        StatusName::Executing
        | StatusName::Completed
        | StatusName::Failed
        | StatusName::Rejected
        | StatusName::Expired
        | StatusName::Withdrawn => Next::Stop(Stop {
            status,
            detail: stop_detail(record, status),
        }),
    }
}

/// Whether `grant_id`, just granted to this call, was the first grant the
/// instance issued. `None` while the record does not show it yet. A later
/// grant means another call claimed the same approval first (two callers
/// held on one instance of a rule allowing several executions): it must
/// not run as well.
pub fn first_grant(record: &Record, grant_id: &str) -> Option<bool> {
    let (position, ours) = record
        .grants
        .iter()
        .enumerate()
        .find(|(_, g)| g.grant_id == grant_id)?;
    let older = record.grants.iter().enumerate().any(|(at, other)| {
        other.grant_id != grant_id
            && match (other.granted_seq, ours.granted_seq) {
                (Some(theirs), Some(mine)) => theirs < mine,
                _ => at < position,
            }
    });
    Some(!older)
}

fn stop_detail(record: &Record, status: StatusName) -> Option<String> {
    match status {
        StatusName::Rejected => record
            .decisions
            .iter()
            .rev()
            .find(|d| d.verdict == "REJECT" && d.outcome == "applied")
            .map(|d| {
                if d.justification.trim().is_empty() {
                    format!("rejected by {}", d.reviewer)
                } else {
                    format!("rejected by {}: {}", d.reviewer, d.justification)
                }
            }),
        StatusName::Executing | StatusName::Completed | StatusName::Failed => Some(
            "another executor claimed this instance while the call waited; it is not run again"
                .to_owned(),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(status: Option<StatusName>, grants: usize) -> Record {
        Record {
            instance_id: "i".into(),
            status,
            grants: (0..grants)
                .map(|n| GrantSeen {
                    grant_id: format!("g{n}"),
                    executor: "gateway:mcp".into(),
                    granted_seq: Some(10 + n as u64),
                })
                .collect(),
            ..Record::default()
        }
    }

    #[test]
    fn slots_along_the_epoch_sequence() {
        assert_eq!(slot(None), Slot::Free);
        assert_eq!(slot(Some(&record(None, 0))), Slot::Free);
        for status in StatusName::ALL {
            let expected = if status.is_final() {
                Slot::Used
            } else {
                Slot::Continue
            };
            assert_eq!(slot(Some(&record(Some(status), 0))), expected, "{status:?}");
        }
        // Authorized for several executions but one already granted: a new
        // call does not ride on the old approval.
        assert_eq!(
            slot(Some(&record(Some(StatusName::Authorized), 1))),
            Slot::Used
        );
        // A grant that was never reported (the gateway died mid-call).
        assert_eq!(
            slot(Some(&record(Some(StatusName::Executing), 1))),
            Slot::Used
        );
    }

    #[test]
    fn next_step_per_status() {
        assert_eq!(next(&record(None, 0)), Next::Wait);
        for status in StatusName::ALL {
            let got = next(&record(Some(status), 0));
            match status {
                s if s.is_paused() => assert_eq!(got, Next::Wait, "{s:?}"),
                StatusName::Authorized => assert_eq!(got, Next::Claim),
                s => match got {
                    Next::Stop(stop) => assert_eq!(stop.status, s),
                    other => panic!("{s:?}: expected a stop, got {other:?}"),
                },
            }
        }
    }

    #[test]
    fn an_authorization_that_already_granted_is_not_claimed_again() {
        // Several executions allowed, one grant issued to another call.
        match next(&record(Some(StatusName::Authorized), 1)) {
            Next::Stop(stop) => {
                assert_eq!(stop.status, StatusName::Authorized);
                assert!(stop
                    .detail
                    .is_some_and(|d| d.contains("already issued a grant")));
            }
            other => panic!("expected a stop, got {other:?}"),
        }
    }

    #[test]
    fn only_the_first_grant_runs() {
        let two = record(Some(StatusName::Executing), 2);
        assert_eq!(first_grant(&two, "g0"), Some(true));
        assert_eq!(first_grant(&two, "g1"), Some(false));
        assert_eq!(first_grant(&two, "g9"), None, "not on the record yet");
        // Sequence numbers win over list order.
        let mut swapped = two.clone();
        swapped.grants.reverse();
        assert_eq!(first_grant(&swapped, "g0"), Some(true));
        assert_eq!(first_grant(&swapped, "g1"), Some(false));
        // Without sequence numbers, the order of the list.
        let mut bare = two;
        for grant in &mut bare.grants {
            grant.granted_seq = None;
        }
        assert_eq!(first_grant(&bare, "g0"), Some(true));
        assert_eq!(first_grant(&bare, "g1"), Some(false));
    }

    #[test]
    fn a_rejection_names_the_reviewer_and_reason() {
        let mut rejected = record(Some(StatusName::Rejected), 0);
        rejected.decisions = vec![
            DecisionSeen {
                reviewer: "reviewer:alice".into(),
                verdict: "APPROVE".into(),
                justification: String::new(),
                outcome: "applied".into(),
            },
            DecisionSeen {
                reviewer: "reviewer:bob".into(),
                verdict: "REJECT".into(),
                justification: "not during the freeze".into(),
                outcome: "applied".into(),
            },
        ];
        assert_eq!(rejected.approvals(), 1);
        match next(&rejected) {
            Next::Stop(Stop { detail, .. }) => assert_eq!(
                detail.as_deref(),
                Some("rejected by reviewer:bob: not during the freeze")
            ),
            other => panic!("expected a stop, got {other:?}"),
        }
    }

    #[test]
    fn reads_a_projector_record() {
        let json = serde_json::json!({
            "instance_id": "0b0f7c1e-0000-4000-8000-000000000000",
            "status": "AWAITING_DECISION",
            "proposal": {
                "action": {"kind": "mcp.tool", "target": "demo/restart",
                           "parameters": {"service": "\"api\""}},
                "action_digest": "ab",
                "proposer": {"principal": "gateway:mcp", "kind": "AGENT"},
                "extra": 1
            },
            "signals": [], "decisions": [], "grants": [], "violations": [],
            "transitions": [],
            "history": [{"seq": 1}],
            "head_hash": "00"
        });
        let record: Record = serde_json::from_value(json).expect("readable");
        assert_eq!(record.status, Some(StatusName::AwaitingDecision));
        assert_eq!(record.entries(), 1);
        assert_eq!(
            record
                .proposal
                .map(|p| p.action.parameters["service"].clone()),
            Some("\"api\"".to_owned())
        );
    }
}
