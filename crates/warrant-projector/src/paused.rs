//! The paused instances in the order they were proposed, so the age of the
//! longest wait (what reviewers have left undecided) is a lookup, not a scan
//! of the view at every `/metrics` scrape.

use std::collections::BTreeSet;

use warrant_authority::StatusName;

/// The paused statuses (docs/contract.md §5), in a fixed order.
pub const PAUSED: [StatusName; 3] = [
    StatusName::AwaitingSignals,
    StatusName::AwaitingDecision,
    StatusName::Blocked,
];

/// `(proposed_at, instance id)` of every paused instance, per paused status.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PausedQueue {
    by_status: [BTreeSet<(i64, String)>; 3],
}

/// When the longest-waiting instance of each paused status was proposed
/// (Unix milliseconds); `None` when no instance has that status.
pub type OldestPaused = [(StatusName, Option<i64>); 3];

fn slot(status: Option<StatusName>) -> Option<usize> {
    PAUSED.iter().position(|paused| Some(*paused) == status)
}

impl PausedQueue {
    /// Record that an instance proposed at `proposed_at` moved from
    /// `before` to `after` (either may be a status that is not paused).
    pub fn moved(
        &mut self,
        instance_id: &str,
        proposed_at: i64,
        before: Option<StatusName>,
        after: Option<StatusName>,
    ) {
        if let Some(slot) = slot(before) {
            self.by_status[slot].remove(&(proposed_at, instance_id.to_owned()));
        }
        if let Some(slot) = slot(after) {
            self.by_status[slot].insert((proposed_at, instance_id.to_owned()));
        }
    }

    pub fn oldest(&self) -> OldestPaused {
        let mut oldest = PAUSED.map(|status| (status, None));
        for (entry, set) in oldest.iter_mut().zip(&self.by_status) {
            entry.1 = set.first().map(|(at, _)| *at);
        }
        oldest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_follows_instances_in_and_out_of_each_paused_status() {
        let mut queue = PausedQueue::default();
        assert!(queue.oldest().iter().all(|(_, at)| at.is_none()));

        queue.moved("b", 2_000, None, Some(StatusName::AwaitingSignals));
        queue.moved("a", 1_000, None, Some(StatusName::AwaitingSignals));
        assert_eq!(
            queue.oldest()[0],
            (StatusName::AwaitingSignals, Some(1_000))
        );

        // a waits for a decision now; b is still the only one awaiting signals.
        queue.moved(
            "a",
            1_000,
            Some(StatusName::AwaitingSignals),
            Some(StatusName::AwaitingDecision),
        );
        assert_eq!(queue.oldest()[0].1, Some(2_000));
        assert_eq!(
            queue.oldest()[1],
            (StatusName::AwaitingDecision, Some(1_000))
        );

        // Authorized and then completed: no longer paused anywhere.
        queue.moved(
            "a",
            1_000,
            Some(StatusName::AwaitingDecision),
            Some(StatusName::Authorized),
        );
        queue.moved(
            "a",
            1_000,
            Some(StatusName::Authorized),
            Some(StatusName::Completed),
        );
        assert_eq!(queue.oldest()[1].1, None);
        queue.moved(
            "b",
            2_000,
            Some(StatusName::AwaitingSignals),
            Some(StatusName::Blocked),
        );
        assert_eq!(
            queue.oldest(),
            [
                (StatusName::AwaitingSignals, None),
                (StatusName::AwaitingDecision, None),
                (StatusName::Blocked, Some(2_000)),
            ]
        );
    }
}

#[cfg(test)]
mod view_tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use warrant_schema::Envelope;

    use super::*;
    use crate::testutil::{apply, history_for, instance_id, open, record, Record};

    /// Instance `n`'s first `take` sample events, all `n` seconds later.
    fn shifted(n: u32, take: usize) -> Vec<Record> {
        history_for(&instance_id(n), take)
            .into_iter()
            .map(|mut envelope: Envelope| {
                envelope.recorded_at += i64::from(n) * 1000;
                record(0, &envelope)
            })
            .collect()
    }

    #[test]
    fn commits_report_the_oldest_paused_and_a_restart_rebuilds_it() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path());
        let proposed =
            |n: u32| history_for(&instance_id(n), 1)[0].recorded_at + i64::from(n) * 1000;

        let mut projection = crate::projection::Projection::new(store.clone(), 1000).unwrap();
        // 5 and 3 wait for signals, 4 and 2 for a decision; 1 ran to the end.
        for (n, take) in [(5, 1), (4, 3), (3, 1), (2, 3), (1, usize::MAX)] {
            apply(&mut projection, &shifted(n, take));
        }
        let sealed = projection.commit_now().unwrap().expect("a batch");
        let expected = [
            (StatusName::AwaitingSignals, Some(proposed(3))),
            (StatusName::AwaitingDecision, Some(proposed(2))),
            (StatusName::Blocked, None),
        ];
        assert_eq!(sealed.oldest_paused, expected);

        // 2's decision arrives (the rest of its history): 4 is the oldest.
        let rest: Vec<Record> = shifted(2, usize::MAX).split_off(3);
        apply(&mut projection, &rest);
        let sealed = projection.commit_now().unwrap().expect("a batch");
        assert_eq!(
            sealed.oldest_paused[1],
            (StatusName::AwaitingDecision, Some(proposed(4)))
        );

        // A projector started on this view knows the same queue.
        let reopened = store.waiting().unwrap().paused;
        assert_eq!(reopened.oldest(), sealed.oldest_paused);
    }
}
