//! Helpers for the unit tests: sample logs and a store in a temp directory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use warrant_authority::{Ledger, LogPosition};
use warrant_schema::{samples, Envelope};

use crate::projection::Projection;
use crate::store::{Opened, Store, StoreOptions};

pub const TOPIC: &str = "warrant.log.test";

/// One log record: partition, key, value.
pub type Record = (i32, Option<Vec<u8>>, Option<Vec<u8>>);

/// The sample history (`warrant_schema::samples::envelopes`), re-keyed to
/// `instance_id` with event ids unique to it; the first `take` events.
pub fn history_for(instance_id: &str, take: usize) -> Vec<Envelope> {
    samples::envelopes()
        .into_iter()
        .take(take)
        .enumerate()
        .map(|(n, (_, mut envelope))| {
            envelope.instance_id = instance_id.to_owned();
            envelope.event_id = format!("{}-{n:04}", &instance_id[..8]);
            envelope
        })
        .collect()
}

pub fn record(partition: i32, envelope: &Envelope) -> Record {
    (
        partition,
        Some(envelope.instance_id.clone().into_bytes()),
        Some(warrant_schema::encode(envelope).unwrap()),
    )
}

/// A deterministic instance id (canonical lowercase UUID form).
pub fn instance_id(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

/// A log on one partition: the full sample history of the sample instance,
/// a second instance cut short, a record that is not Avro, a record with a
/// non-UUID key and one without a value.
pub fn mixed_log() -> Vec<Record> {
    let mut log: Vec<Record> = history_for(samples::INSTANCE_ID, usize::MAX)
        .iter()
        .map(|e| record(0, e))
        .collect();
    let other = instance_id(7);
    log.extend(history_for(&other, 3).iter().map(|e| record(0, e)));
    log.push((0, Some(other.into_bytes()), Some(b"not avro".to_vec())));
    log.push((
        0,
        Some(b"not-a-uuid".to_vec()),
        Some(b"\xc3\x01garbage".to_vec()),
    ));
    log.push((0, Some(samples::INSTANCE_ID.as_bytes().to_vec()), None));
    log
}

/// Fold `records` (offsets counted per partition from `first`) with the
/// shared in-memory ledger: what the view must equal.
pub fn ledger_of(records: &[Record]) -> Ledger {
    let mut ledger = Ledger::new();
    let mut offsets = std::collections::BTreeMap::new();
    for (partition, key, value) in records {
        let offset = offsets.entry(*partition).or_insert(0i64);
        ledger.apply(
            LogPosition {
                partition: *partition,
                offset: *offset,
            },
            key.as_deref(),
            value.as_deref().unwrap_or_default(),
        );
        *offset += 1;
    }
    ledger
}

/// Open the view in `dir`. A test that just dropped its last handle may
/// find sled's lock still held for a moment by a thread of that handle
/// winding down (seen under a loaded CI machine): that passes, so wait.
pub fn open(dir: &std::path::Path) -> (Arc<Store>, Opened) {
    let options = StoreOptions {
        cache_bytes: 8 << 20,
    };
    let mut attempts = 0;
    loop {
        match Store::open(dir, TOPIC, options.clone()) {
            Err(crate::Error::Open {
                source: sled::Error::Io(error),
                ..
            }) if crate::store::is_handle_busy(&error) && attempts < 250 => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            opened => {
                let (store, opened) = opened.unwrap();
                return (Arc::new(store), opened);
            }
        }
    }
}

/// Fold `records` into the store (offsets per partition continue from what
/// the projection has folded) and commit them as one batch.
pub fn fold_into(store: &Arc<Store>, records: &[Record]) -> Projection {
    let mut projection = Projection::new(store.clone(), 1000).unwrap();
    apply(&mut projection, records);
    projection.commit_now().unwrap();
    projection
}

pub fn apply(projection: &mut Projection, records: &[Record]) {
    for (partition, key, value) in records {
        let offset = projection.offsets().get(partition).copied().unwrap_or(0);
        assert!(projection
            .apply(*partition, offset, key.as_deref(), value.as_deref())
            .unwrap());
    }
}
