//! Many instances folded in memory, in log order: what replay and the tests
//! use. The projector keeps the same states in sled instead.

use std::collections::BTreeMap;

use crate::fold::{step, LogEvent};
use crate::record::{Hash32, HistoryEntry, InstanceState, LogPosition};
use crate::view::{checkpoint_digest, instance_for_key, ExecutionRecord};

/// One instance's state with its full history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Folded {
    pub state: InstanceState,
    pub history: Vec<HistoryEntry>,
}

impl Folded {
    pub fn record(&self) -> ExecutionRecord {
        ExecutionRecord::build(&self.state, &self.history)
    }
}

#[derive(Debug, Default, Clone)]
pub struct Ledger {
    instances: BTreeMap<String, Folded>,
}

impl Ledger {
    pub fn new() -> Self {
        Ledger::default()
    }

    /// Fold one log record into the instance its key names (or its
    /// partition's quarantine, see [`crate::QUARANTINE`]). Records of one
    /// partition must come in log order; how partitions interleave does not
    /// matter, since an instance's records are all in one partition (docs/contract.md
    /// §2) and each partition has its own quarantine.
    pub fn apply(
        &mut self,
        position: LogPosition,
        key: Option<&[u8]>,
        bytes: &[u8],
    ) -> &HistoryEntry {
        let instance_id = instance_for_key(key, position.partition);
        let folded = self
            .instances
            .entry(instance_id.clone())
            .or_insert_with(|| Folded {
                state: InstanceState::new(instance_id),
                history: Vec::new(),
            });
        let entry = step(&mut folded.state, LogEvent::decode(position, bytes));
        folded.history.push(entry);
        // Just pushed, so the history is not empty.
        &folded.history[folded.history.len() - 1]
    }

    pub fn get(&self, instance_id: &str) -> Option<&Folded> {
        self.instances.get(instance_id)
    }

    pub fn instances(&self) -> impl Iterator<Item = (&String, &Folded)> {
        self.instances.iter()
    }

    pub fn len(&self) -> usize {
        self.instances.len()
    }

    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
    }

    pub fn checkpoint_digest(&self) -> Hash32 {
        checkpoint_digest(
            self.instances
                .iter()
                .map(|(id, f)| (id.as_str(), &f.state.head)),
        )
    }
}
