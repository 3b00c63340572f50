//! The deadline index: every paused instance by its decision deadline and
//! every authorized one by its grant's `not_after`, in deadline order, so
//! intake's sweeper asks for what is due (`GET /v1/deadlines`) instead of
//! listing every paused instance and reading each one's facts.
//!
//! The deadlines are the ones `GET /v1/instances/{id}/facts` reports
//! (`decision_deadline`, `grant_not_after`), read from the fold's state by
//! [`watched`]. The fold keeps, per cached instance, the deadline its last
//! sealed batch leaves it with, and each sealed batch carries the changes
//! ([`DeadlineChange`]); the commit thread applies them to the published
//! index ([`Deadlines`], held by the store) only once the batch is durable,
//! in batch order, as it reports the oldest paused instance to the metrics.
//! At start the index is rebuilt from the store by the same scan that
//! rebuilds the paused queue ([`crate::store::Store::waiting`]).

use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::{PoisonError, RwLock};

use warrant_authority::{InstanceState, StatusName};
use warrant_schema::DeadlineKind;

/// A deadline an instance is waiting on: when, and of which kind.
pub type Watch = (i64, DeadlineKind);

/// The deadline the sweeper must watch for an instance in this state: the
/// decision deadline while paused, the grant's `not_after` while
/// authorized, none otherwise (executing, final, never proposed).
pub fn watched(state: &InstanceState) -> Option<Watch> {
    let instance = state.instance()?;
    match state.status()? {
        StatusName::AwaitingSignals | StatusName::AwaitingDecision | StatusName::Blocked => {
            Some((instance.proposal.decision_deadline, DeadlineKind::Decision))
        }
        StatusName::Authorized => instance
            .status
            .authorization()
            .map(|authorization| (authorization.scope.not_after, DeadlineKind::Grant)),
        StatusName::Executing
        | StatusName::Completed
        | StatusName::Failed
        | StatusName::Rejected
        | StatusName::Expired
        | StatusName::Withdrawn => None,
    }
}

/// The statuses a deadline of `kind` applies to: what an instance must
/// still be for its entry to be served.
pub fn applies_to(kind: DeadlineKind, status: Option<StatusName>) -> bool {
    match kind {
        DeadlineKind::Decision => matches!(
            status,
            Some(StatusName::AwaitingSignals | StatusName::AwaitingDecision | StatusName::Blocked)
        ),
        DeadlineKind::Grant => status == Some(StatusName::Authorized),
    }
}

/// The name of a kind on the wire (`DECISION`, `GRANT`).
pub fn kind_name(kind: DeadlineKind) -> &'static str {
    match kind {
        DeadlineKind::Decision => "DECISION",
        DeadlineKind::Grant => "GRANT",
    }
}

fn kind_of(name: &str) -> Option<DeadlineKind> {
    match name {
        "DECISION" => Some(DeadlineKind::Decision),
        "GRANT" => Some(DeadlineKind::Grant),
        _ => None,
    }
}

/// One entry of the index, in its order: deadline, instance id, kind.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Due {
    pub deadline: i64,
    pub instance_id: String,
    pub kind: DeadlineKind,
}

impl Due {
    /// The paging cursor of this entry: `<deadline>:<instance id>:<KIND>`.
    pub fn cursor(&self) -> String {
        format!(
            "{}:{}:{}",
            self.deadline,
            self.instance_id,
            kind_name(self.kind)
        )
    }

    /// Read a cursor [`Due::cursor`] wrote.
    pub fn parse_cursor(text: &str) -> Option<Due> {
        let (deadline, rest) = text.split_once(':')?;
        let (instance_id, kind) = rest.rsplit_once(':')?;
        if instance_id.is_empty() {
            return None;
        }
        Some(Due {
            deadline: deadline.parse().ok()?,
            instance_id: instance_id.to_owned(),
            kind: kind_of(kind)?,
        })
    }
}

/// What one sealed batch changes in the index for one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadlineChange {
    pub instance_id: String,
    pub before: Option<Watch>,
    pub after: Option<Watch>,
}

/// Every watched deadline, in [`Due`] order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DeadlineIndex {
    entries: BTreeSet<Due>,
}

impl DeadlineIndex {
    /// Record that an instance's watched deadline went from `before` to
    /// `after` (either may be none).
    pub fn moved(&mut self, instance_id: &str, before: Option<Watch>, after: Option<Watch>) {
        if before == after {
            return;
        }
        if let Some((deadline, kind)) = before {
            self.entries.remove(&Due {
                deadline,
                instance_id: instance_id.to_owned(),
                kind,
            });
        }
        if let Some((deadline, kind)) = after {
            self.entries.insert(Due {
                deadline,
                instance_id: instance_id.to_owned(),
                kind,
            });
        }
    }

    pub fn apply(&mut self, changes: &[DeadlineChange]) {
        for change in changes {
            self.moved(&change.instance_id, change.before, change.after);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Up to `limit` entries due by `due_before` (deadline ≤ it), after the
    /// cursor, in order; and whether more are due after the last one.
    pub fn due(&self, due_before: i64, after: Option<&Due>, limit: usize) -> (Vec<Due>, bool) {
        let start = match after {
            Some(after) => Bound::Excluded(after),
            None => Bound::Unbounded,
        };
        let mut due = self
            .entries
            .range((start, Bound::Unbounded))
            .take_while(|entry| entry.deadline <= due_before);
        let page: Vec<Due> = due.by_ref().take(limit).cloned().collect();
        let more = due.next().is_some();
        (page, more)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Due> {
        self.entries.iter()
    }
}

/// The index as of the last durable batch, shared by the commit thread (its
/// only writer) and HTTP. `None` until the fold has rebuilt it from the
/// store, which it does when it starts folding.
#[derive(Debug, Default)]
pub struct Deadlines {
    index: RwLock<Option<DeadlineIndex>>,
}

impl Deadlines {
    /// Publish a whole index: the one rebuilt from the store at start, or
    /// an empty one for a view just emptied.
    pub fn replace(&self, index: DeadlineIndex) {
        *self.index.write().unwrap_or_else(PoisonError::into_inner) = Some(index);
    }

    /// Apply a durable batch's changes.
    pub fn apply(&self, changes: &[DeadlineChange]) {
        if changes.is_empty() {
            return;
        }
        if let Some(index) = self
            .index
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            index.apply(changes);
        }
    }

    /// [`DeadlineIndex::due`] of the published index; `None` before it is
    /// built.
    pub fn due(
        &self,
        due_before: i64,
        after: Option<&Due>,
        limit: usize,
    ) -> Option<(Vec<Due>, bool)> {
        self.index
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|index| index.due(due_before, after, limit))
    }

    /// A copy of the published index (tests).
    pub fn snapshot(&self) -> Option<DeadlineIndex> {
        self.index
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn due(deadline: i64, id: &str, kind: DeadlineKind) -> Due {
        Due {
            deadline,
            instance_id: id.to_owned(),
            kind,
        }
    }

    #[test]
    fn entries_come_in_deadline_order_up_to_due_before_and_page_by_cursor() {
        let mut index = DeadlineIndex::default();
        index.moved("b", None, Some((30, DeadlineKind::Decision)));
        index.moved("a", None, Some((30, DeadlineKind::Grant)));
        index.moved("c", None, Some((10, DeadlineKind::Decision)));
        index.moved("d", None, Some((40, DeadlineKind::Decision)));
        let (page, more) = index.due(30, None, 2);
        assert_eq!(
            page,
            [
                due(10, "c", DeadlineKind::Decision),
                due(30, "a", DeadlineKind::Grant)
            ]
        );
        assert!(more);
        let cursor = Due::parse_cursor(&page[1].cursor()).unwrap();
        assert_eq!(cursor, page[1]);
        let (page, more) = index.due(30, Some(&cursor), 2);
        assert_eq!(page, [due(30, "b", DeadlineKind::Decision)]);
        assert!(!more, "d is not due by 30");
        assert_eq!(index.due(9, None, 10), (Vec::new(), false));

        // Moving out and back in; an unchanged move changes nothing.
        index.moved("c", Some((10, DeadlineKind::Decision)), None);
        index.moved(
            "a",
            Some((30, DeadlineKind::Grant)),
            Some((30, DeadlineKind::Grant)),
        );
        assert_eq!(index.len(), 3);
        assert_eq!(index.due(30, None, 10).0[0].instance_id, "a");
    }

    #[test]
    fn cursors_round_trip_and_bad_ones_are_refused() {
        for entry in [
            due(
                -5,
                "00000000-0000-4000-8000-000000000001",
                DeadlineKind::Grant,
            ),
            due(1_800_000_000_000, "odd:id", DeadlineKind::Decision),
        ] {
            assert_eq!(Due::parse_cursor(&entry.cursor()), Some(entry));
        }
        for bad in ["", "12", "12:id", "x:id:GRANT", "12::GRANT", "12:id:grant"] {
            assert_eq!(Due::parse_cursor(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_published_index_is_none_until_built_and_applies_changes() {
        let shared = Deadlines::default();
        assert!(shared.due(i64::MAX, None, 10).is_none());
        let change = DeadlineChange {
            instance_id: "a".to_owned(),
            before: None,
            after: Some((5, DeadlineKind::Decision)),
        };
        // Changes before the rebuild are nothing to apply them to.
        shared.apply(std::slice::from_ref(&change));
        assert!(shared.snapshot().is_none());
        shared.replace(DeadlineIndex::default());
        shared.apply(&[change]);
        assert_eq!(
            shared.due(5, None, 10),
            Some((vec![due(5, "a", DeadlineKind::Decision)], false))
        );
    }
}

#[cfg(test)]
mod view_tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use warrant_authority::{InstanceFacts, Ledger};
    use warrant_schema::{DecisionVerdict, Envelope, EventBody};

    use super::*;
    use crate::projection::Projection;
    use crate::testutil::{apply, history_for, instance_id, ledger_of, open, record, Record};

    /// The index the fold's states call for, read the way the facts
    /// endpoint reads them: what the published index must equal.
    fn index_of(ledger: &Ledger) -> DeadlineIndex {
        let mut index = DeadlineIndex::default();
        for (id, folded) in ledger.instances() {
            let facts = InstanceFacts::of(&folded.state);
            let watch = match facts.status {
                Some(
                    StatusName::AwaitingSignals
                    | StatusName::AwaitingDecision
                    | StatusName::Blocked,
                ) => facts.decision_deadline.map(|d| (d, DeadlineKind::Decision)),
                Some(StatusName::Authorized) => {
                    facts.grant_not_after.map(|d| (d, DeadlineKind::Grant))
                }
                _ => None,
            };
            index.moved(id, None, watch);
        }
        index
    }

    fn watch_of(index: &DeadlineIndex, id: &str) -> Option<Watch> {
        index
            .iter()
            .find(|due| due.instance_id == id)
            .map(|due| (due.deadline, due.kind))
    }

    /// Instance `n`'s sample history cut to the first `take` events.
    fn first(n: u32, take: usize) -> Vec<Record> {
        history_for(&instance_id(n), take)
            .iter()
            .map(|e| record(0, e))
            .collect()
    }

    /// Its proposal, then `event` of the sample history (0-based).
    fn proposal_then(n: u32, event: usize, edit: impl FnOnce(&mut Envelope)) -> Vec<Record> {
        let history = history_for(&instance_id(n), event + 1);
        let mut then = history[event].clone();
        edit(&mut then);
        vec![record(0, &history[0]), record(0, &then)]
    }

    #[test]
    fn instances_move_in_and_out_and_a_reopened_view_rebuilds_the_same_index() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path());
        // A cache of one state: most instances are read back from sled
        // between batches, with the deadline they were stored with.
        let mut projection = Projection::new(store.clone(), 1).unwrap();
        assert_eq!(store.deadlines().snapshot(), Some(DeadlineIndex::default()));
        let mut log: Vec<Record> = Vec::new();
        let mut commit = |projection: &mut Projection, records: Vec<Record>| {
            apply(projection, &records);
            projection.commit_now().unwrap();
            log.extend(records);
            let ledger = ledger_of(&log);
            let published = store.deadlines().snapshot().unwrap();
            assert_eq!(published, index_of(&ledger));
            (published, ledger)
        };

        // Instance 1 walks its whole history, one event per batch.
        let history = first(1, usize::MAX);
        let mut seen = Vec::new();
        for event in history {
            let (index, _) = commit(&mut projection, vec![event]);
            seen.push(watch_of(&index, &instance_id(1)));
        }
        let proposed = history_for(&instance_id(1), 1)[0].recorded_at;
        let decision = Some((proposed + 3_600_000, DeadlineKind::Decision));
        assert_eq!(seen[0], decision, "paused: its decision deadline");
        let authorized = seen
            .iter()
            .position(|watch| matches!(watch, Some((_, DeadlineKind::Grant))))
            .expect("authorized at some point");
        assert!(seen[..authorized].iter().all(|watch| *watch == decision));
        // The grant's not_after: the earliest a reviewer gave.
        assert_eq!(
            seen[authorized],
            Some((proposed + 600_000, DeadlineKind::Grant))
        );
        // Executing, then completed: no deadline any more.
        assert!(
            seen[authorized + 1..].iter().all(Option::is_none),
            "{seen:?}"
        );

        // Several instances in one batch: two paused, one rejected, one expired.
        let mut batch = first(2, 1);
        batch.extend(first(3, 3));
        batch.extend(proposal_then(4, 3, |decision| {
            if let EventBody::DecisionRecorded(recorded) = &mut decision.body {
                recorded.verdict = DecisionVerdict::Reject;
            }
        }));
        // The sample's DeadlineReached comes 1 ms after the decision deadline.
        batch.extend(proposal_then(5, 8, |_| {}));
        let (index, ledger) = commit(&mut projection, batch);
        assert_eq!(watch_of(&index, &instance_id(2)), decision);
        assert_eq!(watch_of(&index, &instance_id(3)), decision);
        assert_eq!(watch_of(&index, &instance_id(4)), None, "rejected");
        assert_eq!(watch_of(&index, &instance_id(5)), None, "expired");
        assert_eq!(
            ledger.get(&instance_id(4)).unwrap().state.status(),
            Some(StatusName::Rejected)
        );
        assert_eq!(
            ledger.get(&instance_id(5)).unwrap().state.status(),
            Some(StatusName::Expired)
        );

        // 2 and 3 get their decisions later, 2 in two batches.
        let rest = |n: u32, from: usize, to: usize| first(n, to).split_off(from);
        commit(&mut projection, rest(2, 1, 3));
        let (index, _) = commit(&mut projection, [rest(2, 3, 5), rest(3, 3, 5)].concat());
        assert_eq!(index.len(), 2, "both authorized");
        assert!(index.iter().all(|due| due.kind == DeadlineKind::Grant));

        // A projector started on this view rebuilds the same index, by the
        // scan that rebuilds the paused queue.
        let live = store.deadlines().snapshot().unwrap();
        drop(projection);
        drop(store);
        let (store, _) = open(dir.path());
        assert_eq!(
            store.deadlines().snapshot(),
            None,
            "not built before folding"
        );
        assert_eq!(store.waiting().unwrap().deadlines, live);
        let _projection = Projection::new(store.clone(), 1).unwrap();
        assert_eq!(store.deadlines().snapshot(), Some(live));

        // Emptying the view empties the index.
        store.reset("a test", None).unwrap();
        assert_eq!(store.deadlines().snapshot(), Some(DeadlineIndex::default()));
    }

    #[test]
    fn a_batch_is_published_only_once_it_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path());
        let mut projection = Projection::new(store.clone(), 1000).unwrap();
        apply(&mut projection, &first(1, 1));
        let mut sealed = projection.seal().unwrap().expect("a batch");
        assert_eq!(sealed.deadlines.len(), 1);
        let (batch, written) = sealed.take_batch();
        store.apply(batch, sealed.seq, &written).unwrap();
        // Folded and applied, but not flushed and not published yet.
        assert_eq!(store.deadlines().snapshot(), Some(DeadlineIndex::default()));
        store.flush().unwrap();
        store.deadlines().apply(&sealed.deadlines);
        assert_eq!(store.deadlines().snapshot().unwrap().len(), 1);
        // A batch that changes no deadline carries no change.
        apply(&mut projection, &first(1, 2).split_off(1));
        assert!(projection
            .seal()
            .unwrap()
            .expect("a batch")
            .deadlines
            .is_empty());
    }
}
