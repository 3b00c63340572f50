//! The deadline sweeper (docs/contract.md §3 `DeadlineReached`).
//!
//! It asks the projector what is due (`GET /v1/deadlines`: paused instances
//! by their decision deadline, authorized ones by their grant's
//! `not_after`, from the projector's deadline index) and appends
//! `DeadlineReached` once a deadline has passed by intake's clock. The
//! fold re-checks against the event's `recorded_at` and refuses an early
//! one, so the sweeper decides nothing. Event ids are derived from the
//! instance, the deadline and the history length it saw, so a restarted or
//! second sweeper appends a recorded duplicate, never a second transition.
//!
//! A sweep costs one request per page of due instances (per shard), however
//! many instances are paused: nothing that is not due is read.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use warrant_authority::StatusName;
use warrant_schema::{DeadlineKind, DeadlineReached, Envelope, EventBody};

use crate::http::Clock;
use crate::ids;
use crate::log::LogAppender;
use crate::metrics::{DeadlineLabels, Metrics};
use crate::projector::{Projector, ProjectorError};

/// `submitted_by` of every sweeper event.
pub const SUBMITTED_BY: &str = "warrant:sweeper";
/// Due deadlines asked of the projector per page.
pub const PAGE_SIZE: usize = 200;
/// Event ids remembered as already appended (cleared when exceeded).
const REMEMBERED: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("cannot read the projector's state")]
    Projector(#[from] ProjectorError),
    #[error("cannot append a DeadlineReached for {instance_id}")]
    Append {
        instance_id: String,
        #[source]
        source: crate::log::AppendError,
    },
}

/// What one sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Due deadlines the projector returned.
    pub examined: usize,
    pub emitted: Vec<(String, DeadlineKind)>,
}

/// The sweeper's memory between sweeps (only an optimisation: the derived
/// event ids make repeats harmless).
pub struct Sweeper {
    log: Arc<dyn LogAppender>,
    projector: Arc<dyn Projector>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    emitted: HashSet<String>,
}

impl std::fmt::Debug for Sweeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sweeper")
            .field("emitted", &self.emitted.len())
            .finish_non_exhaustive()
    }
}

fn kind_name(kind: DeadlineKind) -> &'static str {
    match kind {
        DeadlineKind::Decision => "DECISION",
        DeadlineKind::Grant => "GRANT",
    }
}

/// Whether a deadline of `kind` still applies to an instance in `status`
/// (the projector leaves out those that moved on; a cheap second look).
fn applies(kind: DeadlineKind, status: Option<StatusName>) -> bool {
    match kind {
        DeadlineKind::Decision => matches!(
            status,
            Some(StatusName::AwaitingSignals | StatusName::AwaitingDecision | StatusName::Blocked)
        ),
        DeadlineKind::Grant => status == Some(StatusName::Authorized),
    }
}

impl Sweeper {
    pub fn new(
        log: Arc<dyn LogAppender>,
        projector: Arc<dyn Projector>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Sweeper {
        Sweeper {
            log,
            projector,
            clock,
            metrics,
            emitted: HashSet::new(),
        }
    }

    /// Sweep every `interval` until `shutdown` turns true.
    pub async fn run(mut self, interval: Duration, mut shutdown: watch::Receiver<bool>) {
        loop {
            match self.sweep().await {
                Ok(report) if !report.emitted.is_empty() => {
                    tracing::info!(
                        examined = report.examined,
                        emitted = report.emitted.len(),
                        "deadline sweep"
                    );
                }
                Ok(_) => {}
                Err(error) => {
                    self.metrics.sweeps_failed.inc();
                    tracing::warn!(error = %crate::error_chain(&error), "deadline sweep failed");
                }
            }
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tokio::time::sleep(interval) => {}
            }
            if *shutdown.borrow() {
                break;
            }
        }
        tracing::info!("sweeper stopped");
    }

    /// One pass over every deadline that is due now.
    pub async fn sweep(&mut self) -> Result<SweepReport, SweepError> {
        let mut report = SweepReport::default();
        // The fold applies a deadline only once `recorded_at > deadline`:
        // due now means a deadline before now.
        let due_before = self.clock.now_millis().saturating_sub(1);
        let mut after: Option<String> = None;
        loop {
            let page = self
                .projector
                .due(due_before, after.as_deref(), PAGE_SIZE)
                .await?;
            for due in &page.deadlines {
                if !applies(due.kind, due.status) {
                    continue;
                }
                report.examined += 1;
                let now = self.clock.now_millis();
                if now <= due.deadline {
                    continue;
                }
                let event_id =
                    ids::deadline_event_id(&due.instance_id, due.kind, due.deadline, due.entries);
                if self.emitted.contains(&event_id) {
                    continue;
                }
                self.emit(&due.instance_id, due.kind, event_id.clone(), now)
                    .await?;
                if self.emitted.len() >= REMEMBERED {
                    self.emitted.clear();
                }
                self.emitted.insert(event_id);
                report.emitted.push((due.instance_id.clone(), due.kind));
            }
            match page.next {
                // A page may be short, even empty, with more to come; a
                // cursor that does not move would loop forever.
                Some(next) if Some(&next) != after.as_ref() => after = Some(next),
                Some(_) | None => break,
            }
        }
        Ok(report)
    }

    async fn emit(
        &self,
        instance_id: &str,
        kind: DeadlineKind,
        event_id: String,
        now: i64,
    ) -> Result<(), SweepError> {
        let envelope = Envelope {
            event_id,
            instance_id: instance_id.to_owned(),
            recorded_at: now,
            submitted_by: SUBMITTED_BY.to_owned(),
            body: EventBody::DeadlineReached(DeadlineReached { deadline: kind }),
        };
        match self.log.append(&envelope).await {
            Ok(_) => {
                self.metrics.append("sweeper", "DeadlineReached", true);
                self.metrics
                    .deadlines
                    .get_or_create(&DeadlineLabels {
                        deadline: kind_name(kind),
                    })
                    .inc();
                Ok(())
            }
            Err(source) => {
                self.metrics.append("sweeper", "DeadlineReached", false);
                Err(SweepError::Append {
                    instance_id: instance_id.to_owned(),
                    source,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use warrant_authority::RefusalCode;

    use super::*;
    use crate::http::tests::{harness, instance, Harness, INSTANCE, NOW_MS};

    fn sweeper(h: &Harness) -> Sweeper {
        Sweeper::new(
            h.state.log.clone(),
            h.state.projector.clone(),
            h.state.clock.clone(),
            h.state.metrics.clone(),
        )
    }

    const HOUR: i64 = 3_600_000;

    #[tokio::test]
    async fn a_decision_deadline_is_emitted_once_it_has_passed() {
        let h = harness();
        h.propose_restart(INSTANCE).await;
        let mut sweeper = sweeper(&h);
        // prod-restarts gives reviewers one hour.
        h.clock.set(NOW_MS + HOUR);
        let report = sweeper.sweep().await.expect("sweep");
        assert_eq!(
            (report.examined, report.emitted.len()),
            (0, 0),
            "not yet due at the deadline itself"
        );
        h.clock.set(NOW_MS + HOUR + 1);
        let report = sweeper.sweep().await.expect("sweep");
        assert_eq!(report.examined, 1);
        assert_eq!(
            report.emitted,
            vec![(INSTANCE.to_owned(), DeadlineKind::Decision)]
        );
        assert_eq!(h.status_of(INSTANCE), Some(StatusName::Expired));
        let envelopes = h.log.ledger();
        let last = envelopes
            .get(INSTANCE)
            .and_then(|f| f.history.last().cloned())
            .expect("history");
        let envelope = last.event.expect("decoded");
        assert_eq!(envelope.submitted_by, SUBMITTED_BY);
        assert_eq!(envelope.recorded_at, NOW_MS + HOUR + 1);
        assert_eq!(
            envelope.event_id,
            ids::deadline_event_id(INSTANCE, DeadlineKind::Decision, NOW_MS + HOUR, 1)
        );
        // Nothing left to do.
        let report = sweeper.sweep().await.expect("sweep");
        assert_eq!((report.examined, report.emitted.len()), (0, 0));
        // Learnt from the due listing alone: no instance's facts were read.
        assert_eq!(h.projector.facts_asked.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn an_instance_not_due_yet_is_neither_returned_nor_emitted() {
        let h = harness();
        h.propose_restart(&instance(1)).await;
        h.clock.set(NOW_MS + 10 * 60_000);
        h.propose_restart(&instance(2)).await;
        let mut sweeper = sweeper(&h);
        // 1's hour has passed, 2's has not.
        h.clock.set(NOW_MS + HOUR + 1);
        let report = sweeper.sweep().await.expect("sweep");
        assert_eq!(report.examined, 1, "only the due instance is returned");
        assert_eq!(report.emitted, vec![(instance(1), DeadlineKind::Decision)]);
        assert_eq!(h.status_of(&instance(2)), Some(StatusName::AwaitingSignals));
        let page = h
            .projector
            .due(NOW_MS + HOUR, None, PAGE_SIZE)
            .await
            .expect("due");
        assert!(page.deadlines.is_empty(), "{page:?}");
    }

    #[tokio::test]
    async fn two_sweepers_over_a_lagging_view_append_one_transition_and_a_duplicate() {
        let h = harness();
        h.propose_restart(INSTANCE).await;
        h.clock.set(NOW_MS + HOUR + 5);
        h.projector.freeze(Some(h.log.len()));
        let (mut first, mut second) = (sweeper(&h), sweeper(&h));
        assert_eq!(first.sweep().await.expect("sweep").emitted.len(), 1);
        // The same sweeper remembers; a restarted or second one does not.
        assert_eq!(first.sweep().await.expect("sweep").emitted.len(), 0);
        assert_eq!(second.sweep().await.expect("sweep").emitted.len(), 1);
        h.projector.freeze(None);
        assert_eq!(h.status_of(INSTANCE), Some(StatusName::Expired));
        assert_eq!(h.refusals(INSTANCE), vec![RefusalCode::Duplicate]);
    }

    #[tokio::test]
    async fn a_grant_deadline_expires_an_unused_authorization() {
        let h = harness();
        h.authorized(INSTANCE).await;
        let mut sweeper = sweeper(&h);
        h.clock.set(NOW_MS + 900_000);
        let report = sweeper.sweep().await.expect("sweep");
        assert_eq!((report.examined, report.emitted.len()), (0, 0));
        h.clock.set(NOW_MS + 900_001);
        let report = sweeper.sweep().await.expect("sweep");
        assert_eq!(
            report.emitted,
            vec![(INSTANCE.to_owned(), DeadlineKind::Grant)]
        );
        assert_eq!(h.status_of(INSTANCE), Some(StatusName::Expired));
        let last = h
            .log
            .ledger()
            .get(INSTANCE)
            .and_then(|f| f.history.last().cloned())
            .and_then(|entry| entry.event)
            .expect("the sweeper's event");
        assert_eq!(
            last.body,
            EventBody::DeadlineReached(DeadlineReached {
                deadline: DeadlineKind::Grant
            })
        );
    }

    #[tokio::test]
    async fn many_due_instances_are_paged_and_a_down_projector_fails_the_sweep() {
        let h = harness();
        for n in 0..(PAGE_SIZE + 3) as u8 {
            h.propose_restart(&instance(n)).await;
        }
        // More than one page of due instances.
        let mut sweeper = sweeper(&h);
        h.clock.set(NOW_MS + 2 * HOUR);
        let report = sweeper.sweep().await.expect("sweep");
        assert_eq!(report.emitted.len(), PAGE_SIZE + 3);
        assert_eq!(h.projector.due_asked.load(Ordering::SeqCst), 2);
        assert!((0..(PAGE_SIZE + 3) as u8)
            .all(|n| h.status_of(&instance(n)) == Some(StatusName::Expired)));
        h.projector.down.store(true, Ordering::SeqCst);
        assert!(matches!(
            sweeper.sweep().await,
            Err(SweepError::Projector(_))
        ));
    }
}
