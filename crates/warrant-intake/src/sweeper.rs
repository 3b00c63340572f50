//! The deadline sweeper (docs/contract.md §3 `DeadlineReached`).
//!
//! It derives what is due from the projector's state — paused instances
//! against their decision deadline, authorized ones against their grant's
//! `not_after` — and appends `DeadlineReached` once a deadline has passed
//! by intake's clock. The fold re-checks against the event's `recorded_at`
//! and refuses an early one, so the sweeper decides nothing. Event ids are
//! derived from the instance, the deadline and the history length it saw,
//! so a restarted or second sweeper appends a recorded duplicate, never a
//! second transition.

use std::collections::{HashMap, HashSet};
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
/// Instances asked of the projector per page.
pub const PAGE_SIZE: usize = 200;
/// Event ids remembered as already appended (cleared when exceeded).
const REMEMBERED: usize = 100_000;

/// Which statuses each deadline applies to.
const SWEPT: [(StatusName, DeadlineKind); 4] = [
    (StatusName::AwaitingSignals, DeadlineKind::Decision),
    (StatusName::AwaitingDecision, DeadlineKind::Decision),
    (StatusName::Blocked, DeadlineKind::Decision),
    (StatusName::Authorized, DeadlineKind::Grant),
];

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
    /// Deadline per (instance, kind): fixed once proposed / authorized.
    deadlines: HashMap<(String, u8), i64>,
    emitted: HashSet<String>,
}

impl std::fmt::Debug for Sweeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sweeper")
            .field("deadlines", &self.deadlines.len())
            .field("emitted", &self.emitted.len())
            .finish_non_exhaustive()
    }
}

fn kind_key(kind: DeadlineKind) -> u8 {
    match kind {
        DeadlineKind::Decision => 0,
        DeadlineKind::Grant => 1,
    }
}

fn kind_name(kind: DeadlineKind) -> &'static str {
    match kind {
        DeadlineKind::Decision => "DECISION",
        DeadlineKind::Grant => "GRANT",
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
            deadlines: HashMap::new(),
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

    /// One pass over every paused and authorized instance.
    pub async fn sweep(&mut self) -> Result<SweepReport, SweepError> {
        let mut report = SweepReport::default();
        let mut seen: HashSet<(String, u8)> = HashSet::new();
        for (status, kind) in SWEPT {
            let mut after: Option<String> = None;
            loop {
                let page = self
                    .projector
                    .list(status, after.as_deref(), PAGE_SIZE)
                    .await?;
                for summary in &page.instances {
                    if summary.status != Some(status) {
                        continue;
                    }
                    report.examined += 1;
                    let key = (summary.instance_id.clone(), kind_key(kind));
                    seen.insert(key.clone());
                    let Some(deadline) = self.deadline(&summary.instance_id, kind).await? else {
                        continue;
                    };
                    self.deadlines.insert(key, deadline);
                    let now = self.clock.now_millis();
                    // The fold applies a deadline only once `recorded_at > deadline`.
                    if now <= deadline {
                        continue;
                    }
                    let event_id = ids::deadline_event_id(
                        &summary.instance_id,
                        kind,
                        deadline,
                        summary.entries,
                    );
                    if self.emitted.contains(&event_id) {
                        continue;
                    }
                    self.emit(&summary.instance_id, kind, event_id.clone(), now)
                        .await?;
                    if self.emitted.len() >= REMEMBERED {
                        self.emitted.clear();
                    }
                    self.emitted.insert(event_id);
                    report.emitted.push((summary.instance_id.clone(), kind));
                }
                match page.next {
                    Some(next) if Some(&next) != after.as_ref() && !page.instances.is_empty() => {
                        after = Some(next);
                    }
                    Some(_) | None => break,
                }
            }
        }
        self.deadlines.retain(|key, _| seen.contains(key));
        Ok(report)
    }

    /// The deadline of `kind` for an instance, from the cache or the
    /// projector's facts; `None` if the record no longer has one.
    async fn deadline(
        &self,
        instance_id: &str,
        kind: DeadlineKind,
    ) -> Result<Option<i64>, SweepError> {
        if let Some(deadline) = self
            .deadlines
            .get(&(instance_id.to_owned(), kind_key(kind)))
        {
            return Ok(Some(*deadline));
        }
        let Some(facts) = self.projector.facts(instance_id).await? else {
            return Ok(None);
        };
        Ok(match kind {
            DeadlineKind::Decision => facts.decision_deadline,
            DeadlineKind::Grant => facts.grant_not_after,
        })
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
    use warrant_authority::RefusalCode;

    use super::*;
    use crate::http::tests::{harness, Harness, INSTANCE, NOW_MS};

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
        assert_eq!(report.examined, 1);
        assert!(
            report.emitted.is_empty(),
            "not yet due at the deadline itself"
        );
        h.clock.set(NOW_MS + HOUR + 1);
        let report = sweeper.sweep().await.expect("sweep");
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
        assert!(sweeper.sweep().await.expect("sweep").emitted.is_empty());
        h.clock.set(NOW_MS + 900_001);
        let report = sweeper.sweep().await.expect("sweep");
        assert_eq!(
            report.emitted,
            vec![(INSTANCE.to_owned(), DeadlineKind::Grant)]
        );
        assert_eq!(h.status_of(INSTANCE), Some(StatusName::Expired));
    }

    #[tokio::test]
    async fn many_instances_are_paged_and_a_down_projector_fails_the_sweep() {
        let h = harness();
        for n in 0..(PAGE_SIZE + 3) as u8 {
            h.propose_restart(&crate::http::tests::instance(n)).await;
        }
        // More than one page of paused instances.
        let mut sweeper = sweeper(&h);
        h.clock.set(NOW_MS + 2 * HOUR);
        let report = sweeper.sweep().await.expect("sweep");
        assert_eq!(report.emitted.len(), PAGE_SIZE + 3);
        h.projector
            .down
            .store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(matches!(
            sweeper.sweep().await,
            Err(SweepError::Projector(_))
        ));
    }
}
