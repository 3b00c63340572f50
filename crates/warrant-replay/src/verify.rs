//! `--verify`: compare what replay rebuilt with what a projector serves.
//!
//! The projector may have folded more of the log than the range (it keeps
//! consuming), so an instance is compared on the entries replay folded:
//! entry `seq` of replay against `history[seq-1]` of the projector. The
//! comparison itself ([`compare`]) is a pure function; [`verify`] fetches.
//!
//! A projector sharded by partition (`warrant-projector --partitions`) is
//! verified by giving every shard's URL: each shard's checkpoint says which
//! partitions it folds, each instance is compared with the shard of its
//! partition, each shard's digest with replay's over those partitions, and
//! a partition that no shard given folds fails the comparison
//! ([`Verdict::Unowned`]), so verifying some shards is never mistaken for
//! verifying the log.
//!
//! "May have folded more" has a limit: the projector's next entry for the
//! instance sits at a log position. When that position lies inside the
//! range replay read, the range held that record and replay did not fold
//! it (it was deleted from a file or a copy of the log): a difference, not
//! a longer projector ([`Verdict::EntryMissing`]). Only an entry at or
//! after the range's end may be one the range does not reach.
//!
//! What is compared is what the log and the hash chain establish: entry
//! hashes (or the head), log positions, statuses and the record's facts.
//! The reason text of a refusal or violation is not: it explains, the
//! chain does not commit to it, and a later build may word it differently.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use warrant_authority::{
    checkpoint_digest, error_chain, EntryView, ExecutionRecord, Hash32, LogPosition, Outcome,
};

use crate::range::PartitionRange;
use crate::replayed::{Replay, ReplayedInstance};
use crate::Error;

/// What replay knows about one instance, for [`compare`].
#[derive(Debug, Clone)]
pub struct Ours<'a> {
    pub instance_id: &'a str,
    pub partial: bool,
    /// Other partitions with records under this id.
    pub other_partitions: &'a [i32],
    /// Its first event in the range.
    pub first: LogPosition,
    /// Where the range starts on that partition.
    pub range_start: i64,
    /// Where the range ends on that partition (exclusive), when replay read
    /// every record from `range_start` up to it (`None`: not known, e.g. a
    /// file without export metadata, or a file narrowed by time).
    pub range_end: Option<i64>,
    pub entries: u64,
    /// Every entry's hash by `seq - 1`, if kept; else only the head is known.
    pub hashes: Option<&'a [Hash32]>,
    /// Every entry's log position by `seq - 1`, if kept; else only the first.
    pub positions: Option<&'a [LogPosition]>,
    /// When `hashes` is not kept: the trail ([`crate::trail`]) of every
    /// entry's hash and position, if kept.
    pub trail: Option<Hash32>,
    /// The record replay built: full, or from the state alone.
    pub record: &'a ExecutionRecord,
    /// Whether `record` has its history lists (signals, decisions,
    /// transitions, history) or only the state's fields.
    pub full: bool,
}

/// The finding for one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Verdict {
    /// Every replayed entry matches the projector's (which may have more).
    Verified {
        entries: u64,
        projector_entries: u64,
    },
    /// Cannot be checked from this range (its first event lies before
    /// it); not a failure.
    NotVerifiable { reason: String },
    /// Records under this id sit in several partitions: off contract (an
    /// instance lives in one partition), and the projector, which folds
    /// by id, and replay, which folds each partition on its own, can then
    /// disagree about what was authorized. A failure: an auditor must look.
    Split { partitions: Vec<i32> },
    /// The projector does not know the instance.
    Missing,
    /// The projector has fewer entries than replay folded.
    Behind {
        entries: u64,
        projector_entries: u64,
    },
    /// Entry `seq` hashes differently.
    Differs {
        seq: u64,
        expected: Hash32,
        actual: Hash32,
    },
    /// Replay kept only the trail of the entries ([`crate::trail`]), and
    /// the projector's first `entries` do not give it (an entry's hash or
    /// position differs), or the projector has fewer: which entry differs
    /// first, or whether it is only behind, takes the entries themselves.
    /// `warrant-replay --verify` folds such instances again, keeping every
    /// entry, to say ([`VerifyReport::locate`]).
    Unlocated {
        entries: u64,
        projector_entries: u64,
    },
    /// The projector places entry `seq` elsewhere on the log.
    PositionDiffers {
        seq: u64,
        expected: LogPosition,
        actual: LogPosition,
    },
    /// The projector's entry `seq` comes from a record inside the range,
    /// yet replay folded only `entries` entries: the range lacks a record
    /// the projector folded.
    EntryMissing {
        seq: u64,
        position: LogPosition,
        entries: u64,
    },
    /// The projector's history starts at `position`, inside the range
    /// replay read in full, yet replay's first record of the instance is
    /// at `first`: the range lacks the record the projector folded first.
    StartMissing {
        position: LogPosition,
        first: LogPosition,
    },
    /// Same entries, but the record's fields differ.
    FieldsDiffer { fields: Vec<String> },
    /// The projector's answer is not a usable execution record.
    Malformed { reason: String },
    /// None of the projectors given folds the instance's partition (they
    /// are shards, and not every shard was given).
    Unowned { partition: i32 },
}

impl Verdict {
    pub fn is_failure(&self) -> bool {
        match self {
            Verdict::Verified { .. } | Verdict::NotVerifiable { .. } => false,
            Verdict::Split { .. }
            | Verdict::Missing
            | Verdict::Behind { .. }
            | Verdict::Differs { .. }
            | Verdict::Unlocated { .. }
            | Verdict::PositionDiffers { .. }
            | Verdict::EntryMissing { .. }
            | Verdict::StartMissing { .. }
            | Verdict::FieldsDiffer { .. }
            | Verdict::Malformed { .. }
            | Verdict::Unowned { .. } => true,
        }
    }

    /// One word for reports.
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Verified { .. } => "VERIFIED",
            Verdict::NotVerifiable { .. } => "PARTIAL",
            Verdict::Split { .. } => "SPLIT",
            Verdict::Missing => "MISSING",
            Verdict::Behind { .. } => "BEHIND",
            Verdict::Differs { .. }
            | Verdict::Unlocated { .. }
            | Verdict::PositionDiffers { .. }
            | Verdict::EntryMissing { .. }
            | Verdict::StartMissing { .. }
            | Verdict::FieldsDiffer { .. } => "DIFFERS",
            Verdict::Malformed { .. } => "MALFORMED",
            Verdict::Unowned { .. } => "UNOWNED",
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Verified {
                entries,
                projector_entries,
            } if entries == projector_entries => write!(f, "all {entries} entries match"),
            Verdict::Verified {
                entries,
                projector_entries,
            } => write!(
                f,
                "the {entries} replayed entries match (the projector has folded {projector_entries})"
            ),
            Verdict::NotVerifiable { reason } => write!(f, "not verifiable: {reason}"),
            Verdict::Split { partitions } => write!(
                f,
                "records under this id are also in partition(s) {partitions:?}: an instance must live in one partition (were partitions added to the log?)"
            ),
            Verdict::Missing => write!(f, "the projector does not know this instance"),
            Verdict::Behind {
                entries,
                projector_entries,
            } => write!(
                f,
                "the projector has {projector_entries} of the {entries} replayed entries"
            ),
            Verdict::Differs {
                seq,
                expected,
                actual,
            } => write!(
                f,
                "entry {seq} differs: replay {expected}, projector {actual}"
            ),
            Verdict::Unlocated {
                entries,
                projector_entries,
            } => write!(
                f,
                "the {entries} replayed entries do not all match the projector's {projector_entries} (replay with --instance to name the first that differs)"
            ),
            Verdict::PositionDiffers {
                seq,
                expected,
                actual,
            } => write!(
                f,
                "entry {seq} is at {}/{} on the log but the projector says {}/{}",
                expected.partition, expected.offset, actual.partition, actual.offset
            ),
            Verdict::EntryMissing {
                seq,
                position,
                entries,
            } => write!(
                f,
                "entry {seq} is missing: the projector folded it from {}/{}, inside the range, but the range holds only {entries} entries",
                position.partition, position.offset
            ),
            Verdict::StartMissing { position, first } => write!(
                f,
                "its history starts at {}/{} on the projector, inside the range, but replay's first record of it is {}/{}: the range lacks its first record",
                position.partition, position.offset, first.partition, first.offset
            ),
            Verdict::FieldsDiffer { fields } => {
                write!(f, "same entries but different {}", fields.join(", "))
            }
            Verdict::Malformed { reason } => write!(f, "unusable answer: {reason}"),
            Verdict::Unowned { partition } => write!(
                f,
                "no projector given folds partition {partition} (give --verify every shard's URL)"
            ),
        }
    }
}

impl Ours<'_> {
    /// Whether replay read every record at this offset of the instance's
    /// partition: from the range's start up to its end when that is known,
    /// else up to the instance's first record (replay read all before it).
    fn read_in_full(&self, offset: i64) -> bool {
        let end = self.range_end.unwrap_or(self.first.offset);
        offset >= self.range_start && offset < end.max(self.first.offset)
    }
}

/// Compare replay's view of an instance with the projector's record
/// (`None`: the projector answered 404).
pub fn compare(ours: &Ours<'_>, theirs: Option<&ExecutionRecord>) -> Verdict {
    if !ours.other_partitions.is_empty() {
        return Verdict::Split {
            partitions: ours.other_partitions.to_vec(),
        };
    }
    // Not known to the projector is a difference for a partial instance
    // too: one whose first record is a copied decision under a new id is
    // exactly what a forger appends.
    let Some(theirs) = theirs else {
        return Verdict::Missing;
    };
    if ours.partial {
        // The start of its history may lie before the range; the
        // projector says where. Inside the part of the range replay read
        // in full, it is a record the range held and replay never saw.
        let Some(start) = theirs.history.first().map(|e| e.position) else {
            return Verdict::Malformed {
                reason: "the projector's record has no history".to_owned(),
            };
        };
        if start.partition == ours.first.partition && ours.read_in_full(start.offset) {
            return Verdict::StartMissing {
                position: start,
                first: ours.first,
            };
        }
        return Verdict::NotVerifiable {
            reason: format!(
                "its first event in the range ({}/{}) is not its proposal, the range starts at offset {}, after the log does, and the projector's history starts at {}/{}, outside the range",
                ours.first.partition, ours.first.offset, ours.range_start, start.partition, start.offset
            ),
        };
    }
    if theirs.instance_id != ours.instance_id {
        return Verdict::Malformed {
            reason: format!(
                "asked for {} but got {}",
                ours.instance_id, theirs.instance_id
            ),
        };
    }
    if let Some(seq) = theirs
        .history
        .iter()
        .zip(1u64..)
        .find_map(|(entry, seq)| (entry.seq != seq).then_some(seq))
    {
        return Verdict::Malformed {
            reason: format!(
                "history entry {} carries seq {}",
                seq,
                theirs.history[(seq - 1) as usize].seq
            ),
        };
    }
    let projector_entries = theirs.history.len() as u64;
    if let Some(first) = theirs.history.first() {
        if first.position != ours.first {
            let earlier_on_same_partition = first.position.partition == ours.first.partition
                && first.position.offset < ours.range_start;
            if earlier_on_same_partition {
                return Verdict::NotVerifiable {
                    reason: format!(
                        "the projector's history starts at {}/{}, before the range",
                        first.position.partition, first.position.offset
                    ),
                };
            }
            return Verdict::PositionDiffers {
                seq: 1,
                expected: ours.first,
                actual: first.position,
            };
        }
    }
    let common = ours.entries.min(projector_entries);
    // With only the trail kept, equal trails stand for every entry below
    // being equal; else only the entries can say which differs.
    if let (None, Some(trail)) = (ours.hashes, ours.trail) {
        let equal = ours.entries <= projector_entries
            && crate::trail::of(
                theirs
                    .history
                    .iter()
                    .take(ours.entries as usize)
                    .map(|entry| (&entry.hash, entry.position)),
            ) == trail;
        if !equal {
            return Verdict::Unlocated {
                entries: ours.entries,
                projector_entries,
            };
        }
    }
    // Entry by entry, the first difference wins: its hash (the bytes and
    // the outcome), then its position (which the chain does not commit to).
    for (seq, entry) in (1u64..).zip(&theirs.history).take(common as usize) {
        let index = (seq - 1) as usize;
        if let Some(expected) = ours.hashes.and_then(|h| h.get(index)) {
            if *expected != entry.hash {
                return Verdict::Differs {
                    seq,
                    expected: *expected,
                    actual: entry.hash,
                };
            }
        }
        if let Some(expected) = ours.positions.and_then(|p| p.get(index)) {
            if *expected != entry.position {
                return Verdict::PositionDiffers {
                    seq,
                    expected: *expected,
                    actual: entry.position,
                };
            }
        }
    }
    match ours.hashes {
        Some(_) => {}
        None if ours.entries <= projector_entries && ours.entries > 0 => {
            let actual = theirs.history[(ours.entries - 1) as usize].hash;
            if actual != ours.record.head_hash {
                return Verdict::Differs {
                    seq: ours.entries,
                    expected: ours.record.head_hash,
                    actual,
                };
            }
        }
        None => {}
    }
    if ours.entries > common {
        return Verdict::Behind {
            entries: ours.entries,
            projector_entries,
        };
    }
    if let (Some(range_end), Some(next)) = (ours.range_end, theirs.history.get(common as usize)) {
        let inside = next.position.partition == ours.first.partition
            && (ours.range_start..range_end).contains(&next.position.offset);
        if inside {
            return Verdict::EntryMissing {
                seq: common + 1,
                position: next.position,
                entries: ours.entries,
            };
        }
    }
    if ours.entries == projector_entries {
        let fields = differing_fields(ours.record, theirs, ours.full);
        if !fields.is_empty() {
            return Verdict::FieldsDiffer { fields };
        }
    }
    Verdict::Verified {
        entries: ours.entries,
        projector_entries,
    }
}

/// Fields of two records of the same entries that differ; the history
/// lists only when `full` (replay kept the history).
///
/// The history is compared on its facts (`same_entry_facts`), never on
/// the wording of a refusal's or violation's reason.
pub fn differing_fields(
    ours: &ExecutionRecord,
    theirs: &ExecutionRecord,
    full: bool,
) -> Vec<String> {
    let mut fields = Vec::new();
    let mut check = |name: &str, equal: bool| {
        if !equal {
            fields.push(name.to_owned());
        }
    };
    check("status", ours.status == theirs.status);
    check("proposal", ours.proposal == theirs.proposal);
    check("authorization", ours.authorization == theirs.authorization);
    check("grants", ours.grants == theirs.grants);
    check("violations", ours.violations == theirs.violations);
    check("head_hash", ours.head_hash == theirs.head_hash);
    if full {
        check("signals", ours.signals == theirs.signals);
        check("decisions", ours.decisions == theirs.decisions);
        check("transitions", ours.transitions == theirs.transitions);
        check(
            "history",
            ours.history.len() == theirs.history.len()
                && ours
                    .history
                    .iter()
                    .zip(&theirs.history)
                    .all(|(ours, theirs)| same_entry_facts(ours, theirs)),
        );
    }
    fields
}

/// Whether two history entries record the same facts: everything but the
/// reason texts of their outcomes. A reason explains a refusal or a
/// violation; the hash chain commits to the code alone
/// (`Outcome::chain_code`), and the same log folded years later by a newer
/// build words some reasons differently (a `Malformed` reason quotes the
/// Avro decoder's error, for one). Replay exists for exactly that case, so
/// a reworded reason must never fail `--verify`.
fn same_entry_facts(ours: &EntryView, theirs: &EntryView) -> bool {
    // Destructured in full so that a field added to `EntryView` cannot be
    // left out of the comparison unnoticed.
    let EntryView {
        seq,
        recorded_at,
        position,
        event_id,
        event,
        submitted_by,
        outcome,
        hash,
    } = ours;
    *seq == theirs.seq
        && *recorded_at == theirs.recorded_at
        && *position == theirs.position
        && *event_id == theirs.event_id
        && *event == theirs.event
        && *submitted_by == theirs.submitted_by
        && *hash == theirs.hash
        && same_outcome_facts(outcome, &theirs.outcome)
}

/// Outcomes equal but for their reasons: the same status change and effect
/// (an effect is a fact: who was counted, what was authorized or granted),
/// the same refusal code, the same violation kind.
fn same_outcome_facts(ours: &Outcome, theirs: &Outcome) -> bool {
    match ours {
        Outcome::Applied { from, to, effect } => matches!(
            theirs,
            Outcome::Applied { from: f, to: t, effect: e } if f == from && t == to && e == effect
        ),
        Outcome::Refused { code, reason: _ } => {
            matches!(theirs, Outcome::Refused { code: c, .. } if c == code)
        }
        Outcome::Violation {
            violation,
            reason: _,
        } => matches!(theirs, Outcome::Violation { violation: v, .. } if v == violation),
    }
}

/// `GET /v1/checkpoint`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectorCheckpoint {
    pub topic: String,
    /// Partition (as a string, JSON keys being strings) to next offset.
    pub partitions: BTreeMap<String, i64>,
    /// The partitions it folds, when it says (a projector from before
    /// shards does not, and folds them all).
    #[serde(default)]
    pub owned: Option<Vec<i32>>,
    /// How many partitions the log had when it resolved `owned`.
    #[serde(default)]
    pub log_partitions: Option<i32>,
    #[serde(default)]
    pub instances: Option<u64>,
    pub digest: Hash32,
}

impl ProjectorCheckpoint {
    pub fn next_offset(&self, partition: i32) -> Option<i64> {
        self.partitions.get(&partition.to_string()).copied()
    }

    /// Its topic and offsets.
    pub fn offsets(&self) -> CheckpointOffsets {
        CheckpointOffsets {
            topic: self.topic.clone(),
            partitions: self.partitions.clone(),
        }
    }
}

/// What the projectors given have consumed, composed: one projector's
/// checkpoint offsets, or every shard's offsets of the partitions it owns.
/// `--to-checkpoint` reads up to them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointOffsets {
    pub topic: String,
    /// Partition (as a string) to next offset.
    pub partitions: BTreeMap<String, i64>,
}

impl CheckpointOffsets {
    pub fn next_offset(&self, partition: i32) -> Option<i64> {
        self.partitions.get(&partition.to_string()).copied()
    }
}

/// One shard's part of the checkpoint comparison.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardCheck {
    pub url: String,
    /// The partitions it folds.
    pub owned: Vec<i32>,
    pub checkpoint: CheckpointCheck,
}

/// What the checkpoint says about the range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum CheckpointCheck {
    /// The projector offered no usable checkpoint.
    Unavailable {
        reason: String,
    },
    /// The digests were not compared, and why.
    Skipped {
        reason: String,
    },
    Equal {
        digest: Hash32,
        instances: u64,
    },
    Differs {
        expected: Hash32,
        actual: Hash32,
    },
}

/// A partition the projector has not consumed to the end of the range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lag {
    pub partition: i32,
    /// The projector's next offset (`None`: absent from its checkpoint).
    pub projector_next: Option<i64>,
    pub range_end: i64,
}

/// The outcome of `--verify`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifyReport {
    pub url: String,
    pub instances: Vec<InstanceVerdict>,
    pub checkpoint: CheckpointCheck,
    pub behind: Vec<Lag>,
    /// Why the comparison cannot show that the range read was complete
    /// (see [`Replay::inexact`]); `None` when it can. Not a failure by
    /// itself: nothing differed, but nothing proves records were not
    /// removed from the ends of the ranges either.
    #[serde(default)]
    pub completeness_not_proven: Option<String>,
    /// Offsets inside the range with no record ([`Replay::gaps`]): the log
    /// read was rewritten, so the comparison fails whatever else agrees.
    #[serde(default)]
    pub gaps: Vec<crate::Gap>,
    /// With several shards, each one's digest against replay's over its
    /// partitions (`checkpoint` then sums them up).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<ShardCheck>,
    /// Partitions of the log (or of the range) that none of the projectors
    /// given folds: a failure, the log was not verified whole.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unowned: Vec<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceVerdict {
    pub instance_id: String,
    pub partition: i32,
    #[serde(flatten)]
    pub verdict: Verdict,
}

impl VerifyReport {
    /// Any difference at all (exit code 1).
    pub fn failed(&self) -> bool {
        self.instances.iter().any(|i| i.verdict.is_failure())
            || matches!(self.checkpoint, CheckpointCheck::Differs { .. })
            || !self.gaps.is_empty()
            || !self.unowned.is_empty()
    }

    /// Verdict label to count.
    pub fn counts(&self) -> BTreeMap<&'static str, u64> {
        let mut counts = BTreeMap::new();
        for instance in &self.instances {
            *counts.entry(instance.verdict.label()).or_insert(0) += 1;
        }
        counts
    }

    /// The instances whose verdict is [`Verdict::Unlocated`]: what must be
    /// folded again, keeping every entry, to name the entry that differs.
    pub fn unlocated(&self) -> Vec<(String, i32)> {
        self.instances
            .iter()
            .filter(|i| matches!(i.verdict, Verdict::Unlocated { .. }))
            .map(|i| (i.instance_id.clone(), i.partition))
            .collect()
    }

    /// Replace unlocated verdicts by those of `located`, a verification of
    /// the same instances folded again with every entry kept.
    pub fn locate(&mut self, located: VerifyReport) {
        let mut by_instance: BTreeMap<(String, i32), Verdict> = located
            .instances
            .into_iter()
            .map(|i| ((i.instance_id, i.partition), i.verdict))
            .collect();
        for instance in &mut self.instances {
            if !matches!(instance.verdict, Verdict::Unlocated { .. }) {
                continue;
            }
            let key = (
                std::mem::take(&mut instance.instance_id),
                instance.partition,
            );
            if let Some(verdict) = by_instance.remove(&key) {
                instance.verdict = verdict;
            }
            instance.instance_id = key.0;
        }
    }

    /// The verdict for one instance (its first partition).
    pub fn verdict(&self, instance_id: &str) -> Option<&Verdict> {
        self.instances
            .iter()
            .find(|i| i.instance_id == instance_id)
            .map(|i| &i.verdict)
    }

    /// The human report: one line per instance that is not verified, then
    /// the checkpoint and a summary line.
    pub fn write_text(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        for instance in &self.instances {
            if matches!(instance.verdict, Verdict::Verified { .. }) {
                continue;
            }
            writeln!(
                out,
                "{:<9} {} (partition {}): {}",
                instance.verdict.label(),
                crate::text::clean(&instance.instance_id),
                instance.partition,
                // A reason may quote the projector's answer.
                crate::text::clean(&instance.verdict.to_string())
            )?;
        }
        for gap in &self.gaps {
            writeln!(
                out,
                "GAP       {gap} (the log's offsets are contiguous: it was rewritten)"
            )?;
        }
        for lag in &self.behind {
            match lag.projector_next {
                Some(next) => writeln!(
                    out,
                    "BEHIND    the projector has consumed partition {} up to offset {next}; the range ends at {} (re-run when it has caught up, or pass --to-checkpoint)",
                    lag.partition, lag.range_end
                )?,
                None => writeln!(
                    out,
                    "BEHIND    the projector's checkpoint has no partition {}; the range ends at {}",
                    lag.partition, lag.range_end
                )?,
            }
        }
        if !self.unowned.is_empty() {
            writeln!(
                out,
                "UNOWNED   partitions {}: none of the projectors given folds them (give --verify every shard's URL)",
                warrant_authority::ranges(&self.unowned)
            )?;
        }
        for shard in &self.shards {
            write!(
                out,
                "  shard {} (partitions {}): ",
                crate::text::clean(&shard.url),
                warrant_authority::ranges(&shard.owned)
            )?;
            write_checkpoint(out, &shard.checkpoint)?;
        }
        if !self.shards.is_empty() {
            write!(out, "composed ")?;
        }
        write_checkpoint(out, &self.checkpoint)?;
        if let Some(reason) = &self.completeness_not_proven {
            writeln!(
                out,
                "UNPROVEN  completeness is not proven: {}",
                crate::text::clean(reason)
            )?;
        }
        let counts: Vec<String> = self
            .counts()
            .iter()
            .map(|(label, n)| format!("{n} {}", label.to_lowercase()))
            .collect();
        writeln!(
            out,
            "verify {}: {} instances: {}; {}",
            self.url,
            self.instances.len(),
            if counts.is_empty() {
                "none".to_owned()
            } else {
                counts.join(", ")
            },
            match (self.failed(), &self.completeness_not_proven) {
                (true, _) => "FAILED",
                (false, Some(_)) => "ok as far as compared, but COMPLETENESS NOT PROVEN",
                (false, None) => "ok",
            }
        )
    }
}

/// One checkpoint line of the text report.
fn write_checkpoint(out: &mut dyn std::io::Write, check: &CheckpointCheck) -> std::io::Result<()> {
    match check {
        CheckpointCheck::Unavailable { reason } => writeln!(
            out,
            "checkpoint: unavailable ({})",
            crate::text::clean(reason)
        ),
        CheckpointCheck::Skipped { reason } => writeln!(
            out,
            "checkpoint: digest not compared ({})",
            crate::text::clean(reason)
        ),
        CheckpointCheck::Equal { digest, instances } => writeln!(
            out,
            "checkpoint: digest equal over {instances} instances ({digest})"
        ),
        CheckpointCheck::Differs { expected, actual } => writeln!(
            out,
            "DIFFERS   checkpoint digest: replay {expected}, projector {actual}"
        ),
    }
}

/// How to talk to the projector.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Base URL, e.g. `http://127.0.0.1:8081`; several for the shards of a
    /// projector sharded by partition (every shard's).
    pub urls: Vec<String>,
    /// Requests in flight at once.
    pub concurrency: usize,
    pub timeout: Duration,
    /// The topic the projector folds, when the log read is a copy of it
    /// under another name (a mirror, a restored backup); `None`: the topic
    /// read. Only the checkpoint comparison looks at names.
    pub projector_topic: Option<String>,
}

impl VerifyOptions {
    pub fn new(url: impl Into<String>) -> VerifyOptions {
        VerifyOptions::sharded(vec![url.into()])
    }

    /// Every shard of a projector sharded by partition.
    pub fn sharded(urls: Vec<String>) -> VerifyOptions {
        VerifyOptions {
            urls,
            concurrency: 8,
            timeout: Duration::from_secs(30),
            projector_topic: None,
        }
    }
}

/// Whether the range covers every partition from the log's start to
/// exactly the checkpoint's offsets, so the digests must be equal.
/// `topic`: the topic the range stands for (see
/// [`VerifyOptions::projector_topic`]).
fn digest_comparable(
    replay: &Replay,
    topic: &str,
    checkpoint: &CheckpointOffsets,
) -> Result<(), String> {
    if replay.only.is_some() {
        return Err("only one instance was replayed".to_owned());
    }
    if checkpoint.topic != topic {
        return Err(format!(
            "the projector folds topic {}, the range is of {topic}",
            checkpoint.topic
        ));
    }
    if let Some(reason) = &replay.inexact {
        return Err(format!("the exact offsets read are not known: {reason}"));
    }
    let ours: BTreeSet<String> = replay
        .ranges
        .iter()
        .map(|r| r.partition.to_string())
        .collect();
    let theirs: BTreeSet<String> = checkpoint.partitions.keys().cloned().collect();
    if ours != theirs {
        return Err(format!(
            "the range covers partitions {ours:?}, the checkpoint {theirs:?}"
        ));
    }
    for range in &replay.ranges {
        if range.start != range.log_start {
            return Err(format!(
                "partition {} is read from offset {}, not from the log's start {}",
                range.partition, range.start, range.log_start
            ));
        }
        // The partition sets are equal (above): the checkpoint has this one.
        if let Some(next) = checkpoint
            .next_offset(range.partition)
            .filter(|next| *next != range.end)
        {
            return Err(format!(
                "partition {} is read up to offset {}, the checkpoint is at {next} (pass --to-checkpoint to read up to it)",
                range.partition, range.end,
            ));
        }
    }
    if replay
        .instances
        .iter()
        .any(|i| !i.other_partitions.is_empty())
    {
        return Err("an instance id has records in several partitions".to_owned());
    }
    Ok(())
}

fn checkpoint_check(
    replay: &Replay,
    topic: &str,
    checkpoint: &ProjectorCheckpoint,
) -> CheckpointCheck {
    if let Err(reason) = digest_comparable(replay, topic, &checkpoint.offsets()) {
        return CheckpointCheck::Skipped { reason };
    }
    match replay.checkpoint_digest() {
        None => CheckpointCheck::Skipped {
            reason: "an instance id has records in several partitions".to_owned(),
        },
        Some(expected) if expected == checkpoint.digest => CheckpointCheck::Equal {
            digest: expected,
            instances: replay.instances.len() as u64,
        },
        Some(expected) => CheckpointCheck::Differs {
            expected,
            actual: checkpoint.digest,
        },
    }
}

fn lags(replay: &Replay, topic: &str, checkpoint: &CheckpointOffsets) -> Vec<Lag> {
    if checkpoint.topic != topic {
        return Vec::new();
    }
    replay
        .ranges
        .iter()
        .filter(|r| !r.is_empty())
        .filter_map(|r| {
            let next = checkpoint.next_offset(r.partition);
            (next.is_none_or(|n| n < r.end)).then_some(Lag {
                partition: r.partition,
                projector_next: next,
                range_end: r.end,
            })
        })
        .collect()
}

/// The projector's answer for one instance.
enum Fetched {
    Record(Box<ExecutionRecord>),
    NotFound,
    Unusable(String),
}

async fn get(
    client: &reqwest::Client,
    url: String,
) -> Result<(reqwest::StatusCode, Vec<u8>), Error> {
    let http = |source| Error::Http {
        url: url.clone(),
        source,
    };
    let response = client.get(&url).send().await.map_err(http)?;
    let status = response.status();
    let body = response.bytes().await.map_err(http)?;
    Ok((status, body.to_vec()))
}

async fn fetch_instance(
    client: reqwest::Client,
    base: String,
    instance_id: String,
) -> Result<Fetched, Error> {
    let url = format!("{base}/v1/instances/{instance_id}");
    let (status, body) = get(&client, url.clone()).await?;
    // 421: the shard that folds the instance's partition does not hold it
    // (its key routes elsewhere, and no record of it reached the shard).
    if status == reqwest::StatusCode::NOT_FOUND
        || status == reqwest::StatusCode::MISDIRECTED_REQUEST
    {
        return Ok(Fetched::NotFound);
    }
    if !status.is_success() {
        return Err(Error::HttpStatus {
            url,
            status: status.as_u16(),
            body: String::from_utf8_lossy(&body).chars().take(200).collect(),
        });
    }
    Ok(match serde_json::from_slice::<ExecutionRecord>(&body) {
        Ok(record) => Fetched::Record(Box::new(record)),
        Err(e) => Fetched::Unusable(format!("not an execution record: {e}")),
    })
}

async fn fetch_checkpoint(
    client: &reqwest::Client,
    base: &str,
) -> Result<ProjectorCheckpoint, String> {
    let url = format!("{base}/v1/checkpoint");
    let (status, body) = get(client, url.clone())
        .await
        .map_err(|e| error_chain(&e))?;
    if !status.is_success() {
        return Err(format!("{url} answered HTTP {}", status.as_u16()));
    }
    serde_json::from_slice(&body).map_err(|e| format!("{url}: {e}"))
}

/// The projectors given, and which of them folds each partition.
struct Projectors {
    /// Base URLs, without a trailing slash.
    urls: Vec<String>,
    /// Each one's checkpoint, fetched first.
    checkpoints: Vec<Result<ProjectorCheckpoint, String>>,
    /// The projector of each partition it says it folds; `None` for one
    /// projector that does not say (from before shards: it folds them all).
    owners: Option<BTreeMap<i32, usize>>,
    /// The log's partition count, as the projectors saw it.
    log_partitions: Option<i32>,
}

impl Projectors {
    /// Which projector to ask about a record of `partition`.
    fn owner(&self, partition: i32) -> Option<usize> {
        match &self.owners {
            None => Some(0),
            Some(owners) => owners.get(&partition).copied(),
        }
    }

    /// Partitions of the log and of the range that no projector given
    /// folds (none known for one projector that does not say).
    fn unowned(&self, replay: &Replay) -> Vec<i32> {
        let Some(owners) = &self.owners else {
            return Vec::new();
        };
        let mut partitions: BTreeSet<i32> = replay.ranges.iter().map(|r| r.partition).collect();
        partitions.extend(0..self.log_partitions.unwrap_or(0));
        partitions
            .into_iter()
            .filter(|p| !owners.contains_key(p))
            .collect()
    }

    /// The checkpoint composed: the topic, and every projector's offsets of
    /// the partitions it folds.
    fn offsets(&self) -> Result<CheckpointOffsets, String> {
        let mut composed: Option<CheckpointOffsets> = None;
        for (n, checkpoint) in self.checkpoints.iter().enumerate() {
            let checkpoint = checkpoint.as_ref().map_err(Clone::clone)?;
            let composed = composed.get_or_insert_with(|| CheckpointOffsets {
                topic: checkpoint.topic.clone(),
                partitions: BTreeMap::new(),
            });
            for (partition, next) in &checkpoint.partitions {
                let own = partition
                    .parse::<i32>()
                    .is_ok_and(|p| self.owner(p) == Some(n));
                if own {
                    composed.partitions.insert(partition.clone(), *next);
                }
            }
        }
        composed.ok_or_else(|| "no projector given".to_owned())
    }
}

fn http_client(options: &VerifyOptions) -> Result<reqwest::Client, Error> {
    reqwest::Client::builder()
        .timeout(options.timeout)
        .build()
        .map_err(|source| Error::Http {
            url: options.urls.join(","),
            source,
        })
}

/// Fetch every projector's checkpoint and learn who folds what. With one
/// projector, an unreadable checkpoint is reported, not fatal (today's
/// `--verify`); several must all say what they fold, once each.
async fn projectors(
    client: &reqwest::Client,
    options: &VerifyOptions,
) -> Result<Projectors, Error> {
    let urls: Vec<String> = options
        .urls
        .iter()
        .map(|url| url.trim().trim_end_matches('/').to_owned())
        .filter(|url| !url.is_empty())
        .collect();
    if urls.is_empty() {
        return Err(Error::Usage("--verify needs a projector URL".to_owned()));
    }
    let mut checkpoints = Vec::with_capacity(urls.len());
    for url in &urls {
        checkpoints.push(fetch_checkpoint(client, url).await);
    }
    if let [only] = checkpoints.as_slice() {
        let said = only.as_ref().ok();
        return Ok(Projectors {
            owners: said
                .and_then(|c| c.owned.as_ref())
                .map(|owned| owned.iter().map(|p| (*p, 0)).collect()),
            log_partitions: said.and_then(|c| c.log_partitions),
            urls,
            checkpoints,
        });
    }
    let usage = |message: String| Error::Usage(format!("--verify: {message}"));
    let mut owners = BTreeMap::new();
    let mut first: Option<(&str, &ProjectorCheckpoint)> = None;
    for (n, (url, checkpoint)) in urls.iter().zip(&checkpoints).enumerate() {
        let checkpoint = checkpoint.as_ref().map_err(|reason| {
            usage(format!(
                "cannot read the checkpoint of {url}, which says the partitions it folds: {reason}"
            ))
        })?;
        let owned = checkpoint.owned.as_ref().ok_or_else(|| {
            usage(format!(
                "{url} does not say which partitions it folds (a projector from before shards, or one not connected to Kafka yet); several URLs must be shards of one projector"
            ))
        })?;
        if let Some((first_url, first)) = first {
            if checkpoint.topic != first.topic {
                return Err(usage(format!(
                    "{url} folds topic {}, {first_url} folds {}",
                    checkpoint.topic, first.topic
                )));
            }
            if checkpoint.log_partitions != first.log_partitions {
                return Err(usage(format!(
                    "{url} sees {:?} partitions of the log, {first_url} sees {:?}",
                    checkpoint.log_partitions, first.log_partitions
                )));
            }
        } else {
            first = Some((url, checkpoint));
        }
        for partition in owned {
            if let Some(other) = owners.insert(*partition, n) {
                return Err(usage(format!(
                    "partition {partition} is folded by both {} and {url}: each partition needs exactly one shard",
                    urls[other]
                )));
            }
        }
    }
    let log_partitions = first.and_then(|(_, c)| c.log_partitions);
    Ok(Projectors {
        urls,
        checkpoints,
        owners: Some(owners),
        log_partitions,
    })
}

/// The projectors' checkpoint offsets, composed across shards
/// (`--to-checkpoint` reads up to them).
pub async fn checkpoint(options: &VerifyOptions) -> Result<CheckpointOffsets, Error> {
    let client = http_client(options)?;
    let projectors = projectors(&client, options).await?;
    projectors.offsets().map_err(|reason| {
        Error::Usage(format!(
            "--to-checkpoint: cannot read the projector's checkpoint: {reason}"
        ))
    })
}

/// Each shard's digest against replay's over its partitions, and what they
/// say together: equal when every shard's is (the digest then is replay's
/// over the whole range, what one projector of the log would report).
fn shard_checks(
    replay: &Replay,
    topic: &str,
    projectors: &Projectors,
) -> (CheckpointCheck, Vec<ShardCheck>) {
    let composed = projectors.offsets();
    let comparable = composed
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|offsets| digest_comparable(replay, topic, offsets));
    let mut shards = Vec::with_capacity(projectors.urls.len());
    let mut differs = None;
    for (n, (url, checkpoint)) in projectors
        .urls
        .iter()
        .zip(&projectors.checkpoints)
        .enumerate()
    {
        let owned: Vec<i32> = projectors
            .owners
            .iter()
            .flatten()
            .filter(|(_, owner)| **owner == n)
            .map(|(p, _)| *p)
            .collect();
        let check = match (checkpoint, &comparable) {
            (Err(reason), _) => CheckpointCheck::Unavailable {
                reason: reason.clone(),
            },
            (Ok(_), Err(reason)) => CheckpointCheck::Skipped {
                reason: reason.clone(),
            },
            (Ok(checkpoint), Ok(())) => {
                let heads: Vec<(&str, Hash32)> = replay
                    .instances
                    .iter()
                    .filter(|i| owned.contains(&i.partition))
                    .map(|i| (i.instance_id(), i.head()))
                    .collect();
                let expected = checkpoint_digest(heads.iter().map(|(id, head)| (*id, head)));
                if expected == checkpoint.digest {
                    CheckpointCheck::Equal {
                        digest: expected,
                        instances: heads.len() as u64,
                    }
                } else {
                    let found = CheckpointCheck::Differs {
                        expected,
                        actual: checkpoint.digest,
                    };
                    differs.get_or_insert_with(|| found.clone());
                    found
                }
            }
        };
        shards.push(ShardCheck {
            url: url.clone(),
            owned,
            checkpoint: check,
        });
    }
    let overall = match (differs, comparable, replay.checkpoint_digest()) {
        (Some(differs), _, _) => differs,
        (None, Err(reason), _) => match composed {
            Err(reason) => CheckpointCheck::Unavailable { reason },
            Ok(_) => CheckpointCheck::Skipped { reason },
        },
        (None, Ok(()), Some(digest)) => CheckpointCheck::Equal {
            digest,
            instances: replay.instances.len() as u64,
        },
        (None, Ok(()), None) => CheckpointCheck::Skipped {
            reason: "an instance id has records in several partitions".to_owned(),
        },
    };
    (overall, shards)
}

/// Compare every replayed instance with the projector at `options.urls`
/// (with several, the shard that folds its partition).
pub async fn verify(replay: &Replay, options: &VerifyOptions) -> Result<VerifyReport, Error> {
    let topic = options.projector_topic.as_deref().unwrap_or(&replay.topic);
    let client = http_client(options)?;
    // The checkpoints first: a projector only moves forward, so anything
    // it reports as consumed here is in the records fetched afterwards.
    let projectors = projectors(&client, options).await?;

    let ranges: BTreeMap<i32, &PartitionRange> =
        replay.ranges.iter().map(|r| (r.partition, r)).collect();
    let mut verdicts: Vec<Option<Verdict>> = vec![None; replay.instances.len()];
    let mut in_flight = tokio::task::JoinSet::new();
    let concurrency = options.concurrency.max(1);
    let mut next = 0;
    loop {
        while in_flight.len() < concurrency && next < replay.instances.len() {
            // Every instance is fetched, partial ones too: only the
            // projector can say whether a partial instance's history really
            // starts before the range.
            let instance = &replay.instances[next];
            let index = next;
            next += 1;
            let Some(owner) = projectors.owner(instance.partition) else {
                verdicts[index] = Some(Verdict::Unowned {
                    partition: instance.partition,
                });
                continue;
            };
            let (client, base, id) = (
                client.clone(),
                projectors.urls[owner].clone(),
                instance.instance_id().to_owned(),
            );
            in_flight.spawn(async move { (index, fetch_instance(client, base, id).await) });
        }
        let Some(joined) = in_flight.join_next().await else {
            if next >= replay.instances.len() {
                break;
            }
            continue;
        };
        let (index, fetched) = joined.map_err(|_| Error::Worker)?;
        let instance = &replay.instances[index];
        let range = ranges.get(&instance.partition).copied();
        verdicts[index] = Some(judge(instance, range, replay.exact_ranges(), fetched?)?);
    }

    let instances = replay
        .instances
        .iter()
        .zip(verdicts)
        .map(|(instance, verdict)| InstanceVerdict {
            instance_id: instance.instance_id().to_owned(),
            partition: instance.partition,
            verdict: verdict.unwrap_or(Verdict::Malformed {
                reason: "not compared".to_owned(),
            }),
        })
        .collect();
    let unowned = projectors.unowned(replay);
    // A partition nobody given folds is reported as unowned, not as behind.
    let behind = projectors
        .offsets()
        .map(|offsets| lags(replay, topic, &offsets))
        .unwrap_or_default()
        .into_iter()
        .filter(|lag| !unowned.contains(&lag.partition))
        .collect();
    let (checkpoint, shards) = match projectors.checkpoints.as_slice() {
        // One projector: its checkpoint, as it always was.
        [only] => (
            match only {
                Ok(checkpoint) => checkpoint_check(replay, topic, checkpoint),
                Err(reason) => CheckpointCheck::Unavailable {
                    reason: reason.clone(),
                },
            },
            Vec::new(),
        ),
        _ => shard_checks(replay, topic, &projectors),
    };
    Ok(VerifyReport {
        url: projectors.urls.join(","),
        instances,
        checkpoint,
        behind,
        completeness_not_proven: replay.inexact.clone(),
        gaps: replay.gaps.clone(),
        unowned,
        shards,
    })
}

/// `range`: the range on the instance's partition; `exact`: whether replay
/// read every record in it.
fn judge(
    instance: &ReplayedInstance,
    range: Option<&PartitionRange>,
    exact: bool,
    fetched: Fetched,
) -> Result<Verdict, Error> {
    let theirs = match fetched {
        Fetched::Record(record) => Some(record),
        Fetched::NotFound => None,
        Fetched::Unusable(reason) => return Ok(Verdict::Malformed { reason }),
    };
    let hashes = instance.hashes();
    let positions = instance.positions();
    let (record, full) = match instance.record() {
        Some(replayed) => (replayed.record, true),
        None => (instance.state_record()?, false),
    };
    let ours = Ours {
        instance_id: instance.instance_id(),
        partial: instance.partial,
        other_partitions: &instance.other_partitions,
        first: instance.first,
        range_start: range.map_or(0, |r| r.start),
        range_end: range.filter(|_| exact).map(|r| r.end),
        entries: instance.entries(),
        hashes: hashes.as_deref(),
        positions: positions.as_deref(),
        trail: instance.trail(),
        record: &record,
        full,
    };
    Ok(compare(&ours, theirs.as_deref()))
}

#[cfg(test)]
mod tests {
    use warrant_authority::{Effect, Ledger, RefusalCode, StatusName};
    use warrant_schema::samples;

    use super::*;

    /// The projector's record of the sample instance after `len` events at
    /// partition 1 from offset 100 on.
    fn projector(len: usize) -> ExecutionRecord {
        let mut ledger = Ledger::new();
        for (n, (_, envelope)) in samples::envelopes().into_iter().take(len).enumerate() {
            let bytes = warrant_schema::encode(&envelope).unwrap_or_else(|e| panic!("{e}"));
            ledger.apply(
                LogPosition {
                    partition: 1,
                    offset: 100 + n as i64,
                },
                Some(samples::INSTANCE_ID.as_bytes()),
                &bytes,
            );
        }
        ledger
            .get(samples::INSTANCE_ID)
            .map(|f| f.record())
            .unwrap_or_else(|| panic!("folded"))
    }

    struct Mine {
        record: ExecutionRecord,
        hashes: Vec<Hash32>,
        positions: Vec<LogPosition>,
    }

    fn mine(len: usize) -> Mine {
        let record = projector(len);
        let hashes = record.history.iter().map(|e| e.hash).collect();
        let positions = record.history.iter().map(|e| e.position).collect();
        Mine {
            record,
            hashes,
            positions,
        }
    }

    fn ours<'a>(mine: &'a Mine, hashes: bool) -> Ours<'a> {
        Ours {
            instance_id: samples::INSTANCE_ID,
            partial: false,
            other_partitions: &[],
            first: LogPosition {
                partition: 1,
                offset: 100,
            },
            range_start: 100,
            // An honest partial range: it ends where replay's entries do.
            range_end: Some(100 + mine.hashes.len() as i64),
            entries: mine.hashes.len() as u64,
            hashes: hashes.then_some(mine.hashes.as_slice()),
            positions: hashes.then_some(mine.positions.as_slice()),
            trail: None,
            record: &mine.record,
            full: true,
        }
    }

    #[test]
    fn equal_records_verify_with_or_without_every_hash() {
        let mine = mine(7);
        let theirs = projector(7);
        let verified = Verdict::Verified {
            entries: 7,
            projector_entries: 7,
        };
        assert_eq!(compare(&ours(&mine, true), Some(&theirs)), verified);
        assert_eq!(compare(&ours(&mine, false), Some(&theirs)), verified);
        assert!(!verified.is_failure());
    }

    #[test]
    fn a_projector_further_along_verifies_on_the_replayed_prefix() {
        let mine = mine(5);
        let theirs = projector(9);
        let expected = Verdict::Verified {
            entries: 5,
            projector_entries: 9,
        };
        assert_eq!(compare(&ours(&mine, true), Some(&theirs)), expected);
        assert_eq!(compare(&ours(&mine, false), Some(&theirs)), expected);
    }

    #[test]
    fn a_shorter_replay_differs_only_when_the_range_held_the_missing_record() {
        // Replay folded five entries; the projector has seven, the sixth
        // from offset 105. A range ending at 105 never reached it (the
        // projector folded more, honestly); a range ending after it held
        // that record and replay did not fold it: it was removed.
        let mine = mine(5);
        let theirs = projector(7);
        let mut ours = ours(&mine, true);
        let verified = Verdict::Verified {
            entries: 5,
            projector_entries: 7,
        };
        assert_eq!(compare(&ours, Some(&theirs)), verified);
        ours.range_end = Some(106);
        let verdict = compare(&ours, Some(&theirs));
        assert_eq!(
            verdict,
            Verdict::EntryMissing {
                seq: 6,
                position: LogPosition {
                    partition: 1,
                    offset: 105,
                },
                entries: 5,
            }
        );
        assert!(verdict.is_failure());
        assert_eq!(verdict.label(), "DIFFERS");
        assert!(
            verdict.to_string().starts_with("entry 6 is missing"),
            "{verdict}"
        );
        // Also with only the head kept (no per-entry hashes or positions).
        assert_eq!(
            compare(
                &Ours {
                    hashes: None,
                    positions: None,
                    ..ours.clone()
                },
                Some(&theirs)
            ),
            verdict
        );
        // Where the range's end is not known, the projector may have more.
        ours.range_end = None;
        assert_eq!(compare(&ours, Some(&theirs)), verified);
        // An entry in another partition is not one this range could hold.
        let mut elsewhere = projector(7);
        elsewhere.history[5].position.partition = 2;
        ours.range_end = Some(106);
        assert_eq!(compare(&ours, Some(&elsewhere)), verified);
    }

    #[test]
    fn every_entry_position_is_compared_not_only_the_first() {
        // The chain commits to bytes, not positions: a record moved to
        // another offset keeps its hash, and is found by its position.
        let mine = mine(7);
        let mut theirs = projector(7);
        let moved = LogPosition {
            partition: 1,
            offset: 150,
        };
        theirs.history[3].position = moved;
        assert_eq!(
            compare(&ours(&mine, true), Some(&theirs)),
            Verdict::PositionDiffers {
                seq: 4,
                expected: mine.positions[3],
                actual: moved,
            }
        );
        // Without the positions kept, the full record's history still differs.
        let verdict = compare(&ours(&mine, false), Some(&theirs));
        assert_eq!(
            verdict,
            Verdict::FieldsDiffer {
                fields: vec!["history".to_owned()],
            }
        );
    }

    #[test]
    fn the_first_differing_entry_is_named() {
        let mine = mine(7);
        let mut theirs = projector(7);
        let forged = Hash32([0xee; 32]);
        theirs.history[2].hash = forged;
        theirs.history[5].hash = forged;
        let verdict = compare(&ours(&mine, true), Some(&theirs));
        assert_eq!(
            verdict,
            Verdict::Differs {
                seq: 3,
                expected: mine.hashes[2],
                actual: forged,
            }
        );
        assert!(verdict.is_failure());
        assert!(verdict.to_string().contains("entry 3 differs"));
        // With only the head kept, replay can compare the head's entry alone
        // (the chain makes an earlier change show up there too).
        let mut theirs = projector(7);
        theirs.history[6].hash = forged;
        assert_eq!(
            compare(&ours(&mine, false), Some(&theirs)),
            Verdict::Differs {
                seq: 7,
                expected: mine.record.head_hash,
                actual: forged,
            }
        );
    }

    #[test]
    fn a_projector_with_fewer_entries_is_behind_and_unknown_is_missing() {
        let mine = mine(7);
        assert_eq!(
            compare(&ours(&mine, true), Some(&projector(4))),
            Verdict::Behind {
                entries: 7,
                projector_entries: 4,
            }
        );
        assert_eq!(compare(&ours(&mine, true), None), Verdict::Missing);
        assert!(Verdict::Missing.is_failure());
    }

    #[test]
    fn partial_instances_are_not_verifiable_but_split_ones_fail() {
        // Replay saw the instance from its fourth event (1/103) on; the
        // projector's history starts at 1/100.
        let mine = mine(3);
        let theirs = projector(7);
        let mut partial = ours(&mine, true);
        partial.partial = true;
        partial.first = LogPosition {
            partition: 1,
            offset: 103,
        };
        partial.range_start = 103;
        partial.range_end = Some(107);
        let verdict = compare(&partial, Some(&theirs));
        assert!(
            matches!(verdict, Verdict::NotVerifiable { .. }),
            "{verdict:?}"
        );
        assert!(!verdict.is_failure());
        assert!(
            verdict
                .to_string()
                .contains("starts at 1/100, outside the range"),
            "{verdict}"
        );

        // The range started at 100 after all (a forged log_start made it
        // partial, or its first records were removed): the projector's
        // first entry lies inside what replay read, so it is missing.
        partial.range_start = 100;
        let missing_start = Verdict::StartMissing {
            position: LogPosition {
                partition: 1,
                offset: 100,
            },
            first: partial.first,
        };
        assert_eq!(compare(&partial, Some(&theirs)), missing_start);
        assert!(missing_start.is_failure());
        assert_eq!(missing_start.label(), "DIFFERS");
        // Also where the range's end is not known: replay read everything
        // from the range's start up to its first record.
        partial.range_end = None;
        assert_eq!(compare(&partial, Some(&theirs)), missing_start);

        // A partial instance the projector has never heard of (a copied
        // decision under a new id, appended): a difference, not skipped.
        assert_eq!(compare(&partial, None), Verdict::Missing);

        // An instance in two partitions (partitions added to the log): the
        // projector, folding by id, may have granted what replay refuses.
        let mut split = ours(&mine, true);
        split.other_partitions = &[0, 2];
        let verdict = compare(&split, Some(&projector(3)));
        assert_eq!(
            verdict,
            Verdict::Split {
                partitions: vec![0, 2]
            }
        );
        assert!(verdict.is_failure());
    }

    #[test]
    fn positions_before_the_range_are_partial_elsewhere_a_difference() {
        // Replay saw the instance from offset 102 only (say the range started
        // there and the proposal was re-sent): the projector's history starts
        // before the range, so it cannot be checked.
        let mine = mine(3);
        let mut late = ours(&mine, true);
        late.first = LogPosition {
            partition: 1,
            offset: 102,
        };
        late.range_start = 101;
        assert!(matches!(
            compare(&late, Some(&projector(3))),
            Verdict::NotVerifiable { .. }
        ));
        // Inside the range, a different first position is a finding.
        late.range_start = 50;
        assert_eq!(
            compare(&late, Some(&projector(3))),
            Verdict::PositionDiffers {
                seq: 1,
                expected: late.first,
                actual: LogPosition {
                    partition: 1,
                    offset: 100,
                },
            }
        );
    }

    #[test]
    fn same_entries_with_a_different_status_is_a_difference() {
        let mine = mine(7);
        let mut theirs = projector(7);
        theirs.status = Some(StatusName::Completed);
        theirs.decisions.clear();
        assert_eq!(
            compare(&ours(&mine, true), Some(&theirs)),
            Verdict::FieldsDiffer {
                fields: vec!["status".to_owned(), "decisions".to_owned()],
            }
        );
        // Without the history, only the state's fields can be compared.
        let mut state_only = ours(&mine, true);
        state_only.full = false;
        assert_eq!(
            compare(&state_only, Some(&theirs)),
            Verdict::FieldsDiffer {
                fields: vec!["status".to_owned()],
            }
        );
    }

    /// The sample instance folded in full, with its refusals and violation.
    const ALL: usize = usize::MAX;

    /// `seq - 1` of the first entry whose outcome matches.
    fn first_entry(record: &ExecutionRecord, wanted: impl Fn(&Outcome) -> bool) -> usize {
        record
            .history
            .iter()
            .position(|entry| wanted(&entry.outcome))
            .unwrap_or_else(|| panic!("the sample history has no such entry"))
    }

    #[test]
    fn reworded_reasons_verify() {
        // Replay years later, by a build (or an apache-avro) that words its
        // refusals and violations differently: same log, same chain.
        let mine = mine(ALL);
        let mut theirs = projector(ALL);
        let refused = first_entry(&theirs, |o| matches!(o, Outcome::Refused { .. }));
        let violation = first_entry(&theirs, |o| matches!(o, Outcome::Violation { .. }));
        for index in [refused, violation] {
            match &mut theirs.history[index].outcome {
                Outcome::Refused { reason, .. } | Outcome::Violation { reason, .. } => {
                    *reason = format!("{reason} (worded by an older build)");
                }
                Outcome::Applied { .. } => unreachable!("picked for its reason"),
            }
        }
        assert_ne!(theirs.history, mine.record.history);
        let entries = mine.hashes.len() as u64;
        let verified = Verdict::Verified {
            entries,
            projector_entries: entries,
        };
        assert_eq!(compare(&ours(&mine, true), Some(&theirs)), verified);
        assert_eq!(compare(&ours(&mine, false), Some(&theirs)), verified);
    }

    #[test]
    fn a_different_code_or_effect_under_the_same_hashes_still_differs() {
        // A projector whose chain matches but whose record says something
        // else happened: the facts are compared, not only the hashes.
        let mine = mine(ALL);
        let differs = Verdict::FieldsDiffer {
            fields: vec!["history".to_owned()],
        };

        let mut theirs = projector(ALL);
        let refused = first_entry(&theirs, |o| matches!(o, Outcome::Refused { .. }));
        if let Outcome::Refused { code, .. } = &mut theirs.history[refused].outcome {
            *code = if *code == RefusalCode::Expired {
                RefusalCode::Early
            } else {
                RefusalCode::Expired
            };
        }
        assert_eq!(compare(&ours(&mine, true), Some(&theirs)), differs);

        let mut theirs = projector(ALL);
        let counted = first_entry(&theirs, |o| {
            matches!(
                o,
                Outcome::Applied {
                    effect: Some(Effect::ApprovalCounted { .. }),
                    ..
                }
            )
        });
        if let Outcome::Applied {
            effect: Some(Effect::ApprovalCounted { principal, .. }),
            ..
        } = &mut theirs.history[counted].outcome
        {
            principal.push_str("-someone-else");
        }
        assert_eq!(compare(&ours(&mine, true), Some(&theirs)), differs);

        let mut theirs = projector(ALL);
        let applied = first_entry(&theirs, |o| matches!(o, Outcome::Applied { .. }));
        theirs.history[applied].submitted_by = Some("svc:impostor".to_owned());
        assert_eq!(compare(&ours(&mine, true), Some(&theirs)), differs);
    }

    #[test]
    fn a_trail_verifies_equal_entries_and_leaves_any_difference_unlocated() {
        let mine = mine(7);
        let trail = crate::trail::of(mine.hashes.iter().zip(mine.positions.iter().copied()));
        let with_trail = Ours {
            hashes: None,
            positions: None,
            trail: Some(trail),
            full: false,
            ..ours(&mine, false)
        };
        let unlocated = |projector_entries| Verdict::Unlocated {
            entries: 7,
            projector_entries,
        };
        assert_eq!(
            compare(&with_trail, Some(&projector(7))),
            compare(&ours(&mine, true), Some(&projector(7)))
        );
        assert!(matches!(
            compare(&with_trail, Some(&projector(7))),
            Verdict::Verified { entries: 7, .. }
        ));
        let mut moved = projector(7);
        moved.history[3].position.offset += 1000;
        assert_eq!(compare(&with_trail, Some(&moved)), unlocated(7));
        let mut rehashed = projector(7);
        rehashed.history[2].hash = Hash32([9; 32]);
        assert_eq!(compare(&with_trail, Some(&rehashed)), unlocated(7));
        // Fewer entries on the projector: behind, or a difference before.
        assert_eq!(compare(&with_trail, Some(&projector(5))), unlocated(5));
        let verdict = unlocated(5);
        assert!(verdict.is_failure());
        assert_eq!(verdict.label(), "DIFFERS");
        assert!(verdict.to_string().contains("--instance"), "{verdict}");

        // A range ending before the projector's last entries: the first
        // five entries' trail against the projector's first five.
        let five = super::tests::mine(5);
        let trail = crate::trail::of(five.hashes.iter().zip(five.positions.iter().copied()));
        let shorter = Ours {
            hashes: None,
            positions: None,
            trail: Some(trail),
            full: false,
            ..ours(&five, false)
        };
        assert_eq!(
            compare(&shorter, Some(&projector(7))),
            Verdict::Verified {
                entries: 5,
                projector_entries: 7
            }
        );
    }

    #[test]
    fn located_verdicts_replace_the_unlocated_ones_only() {
        let verdict = |instance_id: &str, partition, verdict| InstanceVerdict {
            instance_id: instance_id.to_owned(),
            partition,
            verdict,
        };
        let unlocated = Verdict::Unlocated {
            entries: 3,
            projector_entries: 3,
        };
        let differs = Verdict::Differs {
            seq: 2,
            expected: Hash32([1; 32]),
            actual: Hash32([2; 32]),
        };
        let missing = Verdict::Missing;
        let mut report = VerifyReport {
            url: "http://projector".to_owned(),
            instances: vec![
                verdict("a", 0, unlocated.clone()),
                verdict("b", 1, missing.clone()),
                verdict("c", 2, unlocated.clone()),
            ],
            checkpoint: CheckpointCheck::Skipped {
                reason: "test".to_owned(),
            },
            behind: Vec::new(),
            completeness_not_proven: None,
            gaps: Vec::new(),
            shards: Vec::new(),
            unowned: Vec::new(),
        };
        assert_eq!(
            report.unlocated(),
            vec![("a".to_owned(), 0), ("c".to_owned(), 2)]
        );
        let mut located = report.clone();
        located.instances = vec![
            verdict("a", 0, differs.clone()),
            // Another partition's record of the same id is not this one.
            verdict("c", 1, differs.clone()),
        ];
        report.locate(located);
        let verdicts: Vec<_> = report.instances.iter().map(|i| &i.verdict).collect();
        assert_eq!(verdicts, vec![&differs, &missing, &unlocated]);
        assert_eq!(report.instances[0].instance_id, "a");
    }

    #[test]
    fn broken_answers_are_malformed() {
        let mine = mine(3);
        let mut theirs = projector(3);
        theirs.history[1].seq = 7;
        assert!(matches!(
            compare(&ours(&mine, true), Some(&theirs)),
            Verdict::Malformed { .. }
        ));
        let mut other = projector(3);
        other.instance_id = "quarantine-1".to_owned();
        assert!(matches!(
            compare(&ours(&mine, true), Some(&other)),
            Verdict::Malformed { .. }
        ));
    }

    #[test]
    fn the_report_lists_only_what_is_not_verified_and_fails_on_differences() {
        let verdict = |id: &str, verdict| InstanceVerdict {
            instance_id: id.to_owned(),
            partition: 0,
            verdict,
        };
        let mut report = VerifyReport {
            url: "http://projector".to_owned(),
            instances: vec![
                verdict(
                    "a",
                    Verdict::Verified {
                        entries: 3,
                        projector_entries: 3,
                    },
                ),
                verdict(
                    "b",
                    Verdict::NotVerifiable {
                        reason: "partial".to_owned(),
                    },
                ),
            ],
            checkpoint: CheckpointCheck::Skipped {
                reason: "test".to_owned(),
            },
            behind: vec![],
            completeness_not_proven: None,
            gaps: Vec::new(),
            shards: Vec::new(),
            unowned: Vec::new(),
        };
        assert!(!report.failed());
        report.instances.push(verdict(
            "c",
            Verdict::Differs {
                seq: 2,
                expected: Hash32([1; 32]),
                actual: Hash32([2; 32]),
            },
        ));
        assert!(report.failed());
        let mut text = Vec::new();
        report
            .write_text(&mut text)
            .unwrap_or_else(|e| panic!("{e}"));
        let text = String::from_utf8_lossy(&text);
        assert!(!text.contains(" a "), "{text}");
        assert!(
            text.contains("PARTIAL   b (partition 0): not verifiable: partial"),
            "{text}"
        );
        assert!(
            text.contains("DIFFERS   c (partition 0): entry 2 differs"),
            "{text}"
        );
        assert!(
            text.ends_with("3 instances: 1 differs, 1 partial, 1 verified; FAILED\n"),
            "{text}"
        );

        report.instances.truncate(2);
        // A gap alone fails, and is named.
        report.gaps = vec![crate::Gap {
            partition: 0,
            from: 6,
            to: 7,
        }];
        assert!(report.failed());
        let mut text = Vec::new();
        report
            .write_text(&mut text)
            .unwrap_or_else(|e| panic!("{e}"));
        let text = String::from_utf8_lossy(&text);
        assert!(
            text.contains("GAP       partition 0: no record at offset 6 inside the range"),
            "{text}"
        );
        assert!(text.ends_with("; FAILED\n"), "{text}");
        report.gaps.clear();
        // Nothing differs, yet nothing proves the range complete: the
        // summary must not be a plain "ok", and says why.
        report.completeness_not_proven = Some("the file has no export header".to_owned());
        assert!(!report.failed());
        let mut text = Vec::new();
        report
            .write_text(&mut text)
            .unwrap_or_else(|e| panic!("{e}"));
        let text = String::from_utf8_lossy(&text);
        assert!(
            text.contains("UNPROVEN  completeness is not proven: the file has no export header"),
            "{text}"
        );
        assert!(text.ends_with("COMPLETENESS NOT PROVEN\n"), "{text}");
        assert!(!text.ends_with("; ok\n"), "{text}");
        let json = serde_json::to_value(&report).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            json["completeness_not_proven"],
            "the file has no export header"
        );
        report.checkpoint = CheckpointCheck::Differs {
            expected: Hash32([1; 32]),
            actual: Hash32([2; 32]),
        };
        assert!(report.failed());
    }

    #[test]
    fn a_copy_under_another_name_compares_digests_only_when_told_whose_copy() {
        let replay = Replay {
            signed_decisions: Vec::new(),
            attested_decisions: 0,
            source: "kafka test".to_owned(),
            topic: "warrant.log.restored".to_owned(),
            ranges: vec![PartitionRange {
                partition: 0,
                log_start: 0,
                start: 0,
                end: 12,
            }],
            inexact: None,
            gaps: Vec::new(),
            open_transactions: Vec::new(),
            instances: Vec::new(),
            records: BTreeMap::new(),
            events: 0,
            keep: crate::Keep::Chain,
            only: None,
        };
        let checkpoint = ProjectorCheckpoint {
            topic: "warrant.log".to_owned(),
            partitions: BTreeMap::from([("0".to_owned(), 12)]),
            owned: None,
            log_partitions: None,
            instances: Some(0),
            digest: Hash32([7; 32]),
        };
        let skipped = digest_comparable(&replay, &replay.topic, &checkpoint.offsets());
        assert_eq!(
            skipped,
            Err(
                "the projector folds topic warrant.log, the range is of warrant.log.restored"
                    .to_owned()
            )
        );
        assert_eq!(
            digest_comparable(&replay, "warrant.log", &checkpoint.offsets()),
            Ok(())
        );
        // Told, the digests are compared (and differ here: no instances).
        assert!(matches!(
            checkpoint_check(&replay, "warrant.log", &checkpoint),
            CheckpointCheck::Differs { .. }
        ));
    }

    /// A replay of partitions 0 (offsets 0..12) and 1 (0..5) of warrant.log
    /// in which nothing was folded.
    fn empty_replay() -> Replay {
        let range = |partition, end| PartitionRange {
            partition,
            log_start: 0,
            start: 0,
            end,
        };
        Replay {
            signed_decisions: Vec::new(),
            attested_decisions: 0,
            source: "kafka test".to_owned(),
            topic: "warrant.log".to_owned(),
            ranges: vec![range(0, 12), range(1, 5)],
            inexact: None,
            gaps: Vec::new(),
            open_transactions: Vec::new(),
            instances: Vec::new(),
            records: BTreeMap::new(),
            events: 0,
            keep: crate::Keep::Chain,
            only: None,
        }
    }

    fn shard(owned: &[i32], offsets: &[(i32, i64)], digest: Hash32) -> ProjectorCheckpoint {
        ProjectorCheckpoint {
            topic: "warrant.log".to_owned(),
            partitions: offsets
                .iter()
                .map(|(p, next)| (p.to_string(), *next))
                .collect(),
            owned: Some(owned.to_vec()),
            log_partitions: Some(2),
            instances: Some(0),
            digest,
        }
    }

    fn two_shards(checkpoints: Vec<ProjectorCheckpoint>) -> Projectors {
        let mut owners = BTreeMap::new();
        for (n, checkpoint) in checkpoints.iter().enumerate() {
            for p in checkpoint.owned.iter().flatten() {
                owners.insert(*p, n);
            }
        }
        Projectors {
            urls: vec!["http://a".to_owned(), "http://b".to_owned()],
            checkpoints: checkpoints.into_iter().map(Ok).collect(),
            owners: Some(owners),
            log_partitions: Some(2),
        }
    }

    #[test]
    fn shards_compose_one_checkpoint_and_each_digest_is_compared_on_its_partitions() {
        let replay = empty_replay();
        let nothing = checkpoint_digest(std::iter::empty());
        let projectors = two_shards(vec![
            // A stale offset of a partition it does not own is not its to report.
            shard(&[0], &[(0, 12), (1, 99)], nothing),
            shard(&[1], &[(1, 5)], nothing),
        ]);
        assert_eq!(projectors.owner(1), Some(1));
        let offsets = projectors.offsets().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            offsets.partitions,
            BTreeMap::from([("0".to_owned(), 12), ("1".to_owned(), 5)])
        );
        assert!(projectors.unowned(&replay).is_empty());
        let (overall, shards) = shard_checks(&replay, "warrant.log", &projectors);
        assert_eq!(
            overall,
            CheckpointCheck::Equal {
                digest: nothing,
                instances: 0
            }
        );
        assert_eq!(shards.len(), 2);
        assert_eq!(shards[1].owned, [1]);
        assert!(shards
            .iter()
            .all(|s| matches!(s.checkpoint, CheckpointCheck::Equal { .. })));

        // One shard's digest differs: so does the whole.
        let projectors = two_shards(vec![
            shard(&[0], &[(0, 12)], nothing),
            shard(&[1], &[(1, 5)], Hash32([9; 32])),
        ]);
        let (overall, shards) = shard_checks(&replay, "warrant.log", &projectors);
        assert_eq!(
            overall,
            CheckpointCheck::Differs {
                expected: nothing,
                actual: Hash32([9; 32])
            }
        );
        assert!(matches!(
            shards[0].checkpoint,
            CheckpointCheck::Equal { .. }
        ));

        // A shard behind the range: no digest is comparable, and the lag says where.
        let projectors = two_shards(vec![
            shard(&[0], &[(0, 12)], nothing),
            shard(&[1], &[(1, 3)], nothing),
        ]);
        let (overall, _) = shard_checks(&replay, "warrant.log", &projectors);
        assert!(
            matches!(overall, CheckpointCheck::Skipped { .. }),
            "{overall:?}"
        );
        let behind = lags(
            &replay,
            "warrant.log",
            &projectors.offsets().unwrap_or_else(|e| panic!("{e}")),
        );
        assert_eq!(
            behind,
            vec![Lag {
                partition: 1,
                projector_next: Some(3),
                range_end: 5
            }]
        );
    }

    #[test]
    fn a_partition_no_shard_given_folds_fails_the_report() {
        let replay = empty_replay();
        let nothing = checkpoint_digest(std::iter::empty());
        let mut projectors = two_shards(vec![shard(&[0], &[(0, 12)], nothing)]);
        projectors.urls.truncate(1);
        assert_eq!(projectors.owner(1), None);
        assert_eq!(projectors.unowned(&replay), [1]);
        let mut report = VerifyReport {
            url: "http://a".to_owned(),
            instances: vec![InstanceVerdict {
                instance_id: "x".to_owned(),
                partition: 1,
                verdict: Verdict::Unowned { partition: 1 },
            }],
            checkpoint: CheckpointCheck::Skipped {
                reason: "test".to_owned(),
            },
            behind: Vec::new(),
            completeness_not_proven: None,
            gaps: Vec::new(),
            shards: Vec::new(),
            unowned: projectors.unowned(&replay),
        };
        assert!(report.failed());
        let mut text = Vec::new();
        report
            .write_text(&mut text)
            .unwrap_or_else(|e| panic!("{e}"));
        let text = String::from_utf8_lossy(&text);
        assert!(
            text.contains("UNOWNED   x (partition 1): no projector given folds partition 1"),
            "{text}"
        );
        assert!(
            text.contains("UNOWNED   partitions 1: none of the projectors given folds them"),
            "{text}"
        );
        assert!(text.ends_with("1 unowned; FAILED\n"), "{text}");
        // Even with no instance there, an unowned partition alone fails.
        report.instances.clear();
        assert!(report.failed());
        // A projector that does not say what it folds folds everything.
        let legacy = Projectors {
            urls: vec!["http://a".to_owned()],
            checkpoints: Vec::new(),
            owners: None,
            log_partitions: None,
        };
        assert_eq!(legacy.owner(7), Some(0));
        assert!(legacy.unowned(&replay).is_empty());
    }

    #[test]
    fn a_checkpoint_parses_from_the_projectors_json() {
        let json = format!(
            r#"{{"topic":"warrant.log","partitions":{{"0":12,"2":7}},"instances":3,"digest":"{}"}}"#,
            Hash32([7; 32])
        );
        let checkpoint: ProjectorCheckpoint =
            serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(checkpoint.next_offset(0), Some(12));
        assert_eq!(checkpoint.next_offset(1), None);
        assert_eq!(checkpoint.digest, Hash32([7; 32]));
        assert_eq!(checkpoint.owned, None);
        // A shard says what it owns, of how many.
        let json = json.replacen(
            r#""instances""#,
            r#""owned":[0,2],"log_partitions":6,"instances""#,
            1,
        );
        let checkpoint: ProjectorCheckpoint =
            serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(checkpoint.owned, Some(vec![0, 2]));
        assert_eq!(checkpoint.log_partitions, Some(6));
    }
}
