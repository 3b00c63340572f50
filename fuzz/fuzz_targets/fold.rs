//! The fold over arbitrary event sequences. Input bytes pick events from a
//! palette of real envelopes (the sample history of every event kind, plus
//! the signed decision), shifted in time and given colliding or fresh event
//! ids, with raw garbage mixed in. Whatever the sequence:
//! - exactly one entry per event, numbered 1..=n, and no panic;
//! - the fold is deterministic: folding the same records again gives the
//!   same head hash;
//! - a final status is final: no later event moves the instance out of it.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use warrant_authority::{fold, step, InstanceState, LogEvent, LogPosition};
use warrant_schema::{encode, samples, Envelope};

/// Bytes per event in the input: template, time shift, event-id variant.
const OP_BYTES: usize = 3;
/// Longest sequence tried: enough for every transition, short enough to be fast.
const MAX_EVENTS: usize = 64;

fn palette() -> &'static [Envelope] {
    static PALETTE: OnceLock<Vec<Envelope>> = OnceLock::new();
    PALETTE.get_or_init(|| {
        let mut envelopes: Vec<Envelope> =
            samples::envelopes().into_iter().map(|(_, e)| e).collect();
        envelopes.push(samples::signed_decision());
        envelopes
    })
}

/// The record bytes of one op, or garbage when the template byte says so.
fn record(op: &[u8]) -> Vec<u8> {
    let (template, shift, variant) = (op[0], op[1], op[2]);
    if template >= 0xf0 {
        // A record that is not an envelope (truncated or foreign bytes).
        return op.to_vec();
    }
    let palette = palette();
    let mut envelope = palette[usize::from(template) % palette.len()].clone();
    // Minutes, either way: before and past every deadline the rules set.
    envelope.recorded_at += (i64::from(shift as i8)) * 60_000;
    if variant % 4 != 0 {
        envelope.event_id = format!("{}-{}", envelope.event_id, variant % 4);
    }
    encode(&envelope).unwrap_or_else(|_| op.to_vec())
}

fuzz_target!(|data: &[u8]| {
    let records: Vec<Vec<u8>> = data
        .chunks_exact(OP_BYTES)
        .take(MAX_EVENTS)
        .map(record)
        .collect();
    let events = || {
        records.iter().enumerate().map(|(offset, bytes)| {
            LogEvent::decode(
                LogPosition {
                    partition: 0,
                    offset: offset as i64,
                },
                bytes,
            )
        })
    };

    let mut state = InstanceState::new(samples::INSTANCE_ID);
    let mut final_status = None;
    for (index, event) in events().enumerate() {
        let entry = step(&mut state, event);
        assert_eq!(entry.seq, index as u64 + 1, "one entry per event, in order");
        if let Some(status) = final_status {
            assert_eq!(
                state.status(),
                Some(status),
                "left a final status at entry {}",
                entry.seq
            );
        } else if state.status().is_some_and(|s| s.is_final()) {
            final_status = state.status();
        }
    }
    assert_eq!(state.entries, records.len() as u64);

    let (again, history) = fold(samples::INSTANCE_ID, events());
    assert_eq!(history.len(), records.len());
    assert_eq!(again.head, state.head, "the fold is deterministic");
});
