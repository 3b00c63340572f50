//! The notifier's own sled store: per-instance fold states, consumed
//! offsets, the reminder schedule and the outbox of pending deliveries.
//!
//! The fold thread writes states, offsets, schedule changes and new outbox
//! entries of one Kafka batch in one atomic `sled::Batch`, flushed before
//! anything is handed to a channel: a restart resumes from the stored
//! offsets with the stored states, so it derives exactly the notifications
//! (and ids) a run without the crash would have, and loses none of the
//! queued ones. Channel workers only update or remove their own outbox
//! entries.
//!
//! Unlike the projector's view this store is not disposable: the outbox
//! holds deliveries the log cannot give back once the offsets moved past
//! them. A directory of another format or another topic is refused, never
//! wiped.
//!
//! Layout (one tree; the first byte of a key names its table):
//!
//! | key | value |
//! |---|---|
//! | `~format` | [`FORMAT`] |
//! | `~topic` | the log topic name |
//! | `~since` | i64 BE, Unix ms: entries recorded before this are folded but not notified (see `--backfill`) |
//! | `s` instance-id | the `InstanceState` (MessagePack) |
//! | `o` partition-i32-BE | next offset to consume, i64 BE |
//! | `r` deadline-i64-BE instance-id | empty: the instance may get a reminder before that decision deadline |
//! | `f` instance-id | empty: its reminder was fired (sent or found moot); never scheduled again while it stays paused |
//! | `q` channel 0x00 notification-id (16 bytes) | a [`Pending`] delivery (JSON) |

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;
use warrant_authority::InstanceState;

use crate::error::Error;
use crate::notification::Notification;

/// Bump when the layout or an encoding changes.
///
/// 2: the folded states' counted approvals keep roles and approval group
/// (envelope v3); states of format 1 would count for no group.
pub const FORMAT: &str = "warrant-notifier/2";

const META_FORMAT: &[u8] = b"~format";
const META_TOPIC: &[u8] = b"~topic";
const META_SINCE: &[u8] = b"~since";
const STATE: u8 = b's';
const OFFSET: u8 = b'o';
const REMINDER: u8 = b'r';
const OUTBOX: u8 = b'q';
const FIRED: u8 = b'f';

/// One notification waiting for one channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub channel: String,
    pub notification: Notification,
    /// Attempts made so far.
    pub attempts: u32,
    /// Unix ms before which it is not tried again.
    pub next_attempt_at: i64,
    /// Given up after the channel's `max_attempts`: kept, counted, not retried
    /// (until `--retry-parked`).
    pub parked: bool,
    pub last_error: Option<String>,
}

impl Pending {
    pub fn new(channel: &str, notification: Notification) -> Pending {
        Pending {
            channel: channel.to_owned(),
            notification,
            attempts: 0,
            next_attempt_at: 0,
            parked: false,
            last_error: None,
        }
    }

    pub fn key(&self) -> Vec<u8> {
        outbox_key(&self.channel, &self.notification.id)
    }
}

#[derive(Debug)]
pub struct Store {
    db: sled::Db,
    path: PathBuf,
    since: i64,
    /// Keeps a second notifier off this directory.
    _lock: File,
}

/// How the store was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    Fresh,
    Resumed,
}

impl Store {
    /// Open (or create) the store under `data_dir` for `topic`. A new store
    /// notifies about entries recorded from `now` on (or from the start of
    /// the log with `backfill`).
    pub fn open(
        data_dir: &Path,
        topic: &str,
        now: i64,
        backfill: bool,
    ) -> Result<(Store, Opened), Error> {
        let data_dir_error = |source| Error::DataDir {
            path: data_dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(data_dir).map_err(data_dir_error)?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(data_dir.join("notifier.lock"))
            .map_err(data_dir_error)?;
        lock.try_lock().map_err(|source| Error::Locked {
            path: data_dir.to_owned(),
            source,
        })?;
        let path = data_dir.join("sled");
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(64 * 1024 * 1024)
            // Each fold batch is flushed explicitly; the workers' updates
            // ride on this (a lost removal only means one more delivery).
            .flush_every_ms(Some(200))
            .open()
            .map_err(|source| Error::Open {
                path: path.clone(),
                source,
            })?;
        let get = |key: &[u8]| db.get(key).map_err(Error::sled("read meta"));
        let opened = match get(META_FORMAT)? {
            None if db.is_empty() => {
                let since = if backfill { i64::MIN } else { now };
                let mut batch = sled::Batch::default();
                batch.insert(META_FORMAT, FORMAT.as_bytes());
                batch.insert(META_TOPIC, topic.as_bytes());
                batch.insert(META_SINCE, &since.to_be_bytes());
                db.apply_batch(batch).map_err(Error::sled("write meta"))?;
                db.flush().map_err(Error::sled("flush"))?;
                Opened::Fresh
            }
            None => return Err(Error::incompatible(&path, "it has no format marker")),
            Some(format) if format.as_ref() != FORMAT.as_bytes() => {
                return Err(Error::incompatible(
                    &path,
                    format!(
                        "its format is {:?}, this notifier writes {FORMAT:?}",
                        String::from_utf8_lossy(&format)
                    ),
                ))
            }
            Some(_) => match get(META_TOPIC)? {
                Some(stored) if stored.as_ref() == topic.as_bytes() => Opened::Resumed,
                stored => {
                    return Err(Error::incompatible(
                        &path,
                        format!(
                            "it follows topic {:?}, not {topic:?}",
                            stored.map(|s| String::from_utf8_lossy(&s).into_owned())
                        ),
                    ))
                }
            },
        };
        let since = get(META_SINCE)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(i64::from_be_bytes)
            .ok_or_else(|| Error::incompatible(&path, "its ~since marker does not decode"))?;
        Ok((
            Store {
                db,
                path,
                since,
                _lock: lock,
            },
            opened,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Entries recorded before this (Unix ms) are not notified.
    pub fn since(&self) -> i64 {
        self.since
    }

    pub fn offsets(&self) -> Result<BTreeMap<i32, i64>, Error> {
        let mut offsets = BTreeMap::new();
        for item in self.db.scan_prefix([OFFSET]) {
            let (key, value) = item.map_err(Error::sled("read offsets"))?;
            let partition = key
                .get(1..5)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(i32::from_be_bytes);
            let next = <[u8; 8]>::try_from(value.as_ref())
                .ok()
                .map(i64::from_be_bytes);
            match (partition, next) {
                (Some(partition), Some(next)) => {
                    offsets.insert(partition, next);
                }
                _ => return Err(Error::Corrupt("an offset does not decode".to_owned())),
            }
        }
        Ok(offsets)
    }

    pub fn state(&self, instance_id: &str) -> Result<Option<InstanceState>, Error> {
        let Some(value) = self
            .db
            .get(table_key(STATE, instance_id.as_bytes()))
            .map_err(Error::sled("read a state"))?
        else {
            return Ok(None);
        };
        rmp_serde::from_slice(&value)
            .map(Some)
            .map_err(|e| Error::Corrupt(format!("state of {instance_id}: {e}")))
    }

    /// The reminder schedule: (decision deadline, instance id), in order.
    pub fn reminders(&self) -> Result<Vec<(i64, String)>, Error> {
        let mut out = Vec::new();
        for item in self.db.scan_prefix([REMINDER]) {
            let (key, _) = item.map_err(Error::sled("read reminders"))?;
            let deadline = key
                .get(1..9)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(i64::from_be_bytes);
            let id = key
                .get(9..)
                .map(|b| String::from_utf8_lossy(b).into_owned());
            match (deadline, id) {
                (Some(deadline), Some(id)) => out.push((deadline, id)),
                _ => return Err(Error::Corrupt("a reminder key does not decode".to_owned())),
            }
        }
        Ok(out)
    }

    /// Instances whose reminder has fired.
    pub fn fired(&self) -> Result<std::collections::HashSet<String>, Error> {
        let mut out = std::collections::HashSet::new();
        for item in self.db.scan_prefix([FIRED]) {
            let (key, _) = item.map_err(Error::sled("read fired reminders"))?;
            out.insert(String::from_utf8_lossy(&key[1..]).into_owned());
        }
        Ok(out)
    }

    /// Every outbox entry, parked or not.
    pub fn outbox(&self) -> Result<Vec<Pending>, Error> {
        let mut out = Vec::new();
        for item in self.db.scan_prefix([OUTBOX]) {
            let (_, value) = item.map_err(Error::sled("read the outbox"))?;
            let pending: Pending = serde_json::from_slice(&value)
                .map_err(|e| Error::Corrupt(format!("an outbox entry: {e}")))?;
            out.push(pending);
        }
        Ok(out)
    }

    /// Write one delivery's new state (a worker after an attempt).
    pub fn put_pending(&self, pending: &Pending) -> Result<(), Error> {
        self.db
            .insert(pending.key(), encode_pending(pending)?)
            .map_err(Error::sled("update the outbox"))?;
        Ok(())
    }

    /// A delivery is done.
    pub fn remove_pending(&self, channel: &str, id: &Uuid) -> Result<(), Error> {
        self.db
            .remove(outbox_key(channel, id))
            .map_err(Error::sled("update the outbox"))?;
        Ok(())
    }

    pub fn apply(&self, batch: sled::Batch) -> Result<(), Error> {
        self.db
            .apply_batch(batch)
            .map_err(Error::sled("apply a batch"))
    }

    pub fn flush(&self) -> Result<(), Error> {
        self.db.flush().map_err(Error::sled("flush"))?;
        Ok(())
    }
}

/// Builds the atomic batch of one Kafka batch (or one round of reminders).
#[derive(Debug, Default)]
pub struct BatchWriter {
    batch: sled::Batch,
    pub writes: usize,
}

impl BatchWriter {
    pub fn state(&mut self, state: &InstanceState) -> Result<(), Error> {
        let value = rmp_serde::to_vec(state).map_err(|source| Error::Encode {
            what: "an instance state",
            source,
        })?;
        self.batch
            .insert(table_key(STATE, state.instance_id.as_bytes()), value);
        self.writes += 1;
        Ok(())
    }

    pub fn offset(&mut self, partition: i32, next: i64) {
        let mut key = vec![OFFSET];
        key.extend_from_slice(&partition.to_be_bytes());
        self.batch.insert(key, &next.to_be_bytes());
        self.writes += 1;
    }

    pub fn schedule(&mut self, deadline: i64, instance_id: &str) {
        self.batch.insert(reminder_key(deadline, instance_id), &[]);
        self.writes += 1;
    }

    pub fn unschedule(&mut self, deadline: i64, instance_id: &str) {
        self.batch.remove(reminder_key(deadline, instance_id));
        self.writes += 1;
    }

    pub fn fired(&mut self, instance_id: &str) {
        self.batch
            .insert(table_key(FIRED, instance_id.as_bytes()), &[]);
        self.writes += 1;
    }

    pub fn unfired(&mut self, instance_id: &str) {
        self.batch.remove(table_key(FIRED, instance_id.as_bytes()));
        self.writes += 1;
    }

    pub fn pending(&mut self, pending: &Pending) -> Result<(), Error> {
        self.batch.insert(pending.key(), encode_pending(pending)?);
        self.writes += 1;
        Ok(())
    }

    pub fn into_batch(self) -> sled::Batch {
        self.batch
    }
}

fn encode_pending(pending: &Pending) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(pending).map_err(|source| Error::Json {
        what: "an outbox entry",
        source,
    })
}

fn table_key(table: u8, rest: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + rest.len());
    key.push(table);
    key.extend_from_slice(rest);
    key
}

fn reminder_key(deadline: i64, instance_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + instance_id.len());
    key.push(REMINDER);
    // Deadlines are positive Unix ms, so big-endian bytes sort by time.
    key.extend_from_slice(&deadline.to_be_bytes());
    key.extend_from_slice(instance_id.as_bytes());
    key
}

fn outbox_key(channel: &str, id: &Uuid) -> Vec<u8> {
    let mut key = Vec::with_capacity(18 + channel.len());
    key.push(OUTBOX);
    key.extend_from_slice(channel.as_bytes());
    key.push(0);
    key.extend_from_slice(id.as_bytes());
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notification::{Kind, Links, ProposerSummary, RuleSummary};

    fn pending(channel: &str, n: u128) -> Pending {
        Pending::new(
            channel,
            Notification {
                id: Uuid::from_u128(n),
                kind: Kind::Outcome,
                instance_id: "i".to_owned(),
                seq: 1,
                status: "REJECTED".to_owned(),
                recorded_at: 5,
                action: warrant_schema::samples::action(),
                action_digest: "d".to_owned(),
                rule: RuleSummary {
                    id: "r".to_owned(),
                    approvals_required: 1,
                    approver_roles: vec!["sre".to_owned()],
                    override_roles: vec!["ic".to_owned()],
                },
                proposer: ProposerSummary {
                    principal: "svc".to_owned(),
                    kind: warrant_schema::ProposerKind::Service,
                },
                decision_deadline: 9,
                roles: vec![],
                quorum: None,
                alert: None,
                links: Links::default(),
            },
        )
    }

    #[test]
    fn a_batch_lands_whole_and_survives_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (store, opened) = Store::open(dir.path(), "log", 1000, false).expect("open");
            assert_eq!(opened, Opened::Fresh);
            assert_eq!(store.since(), 1000);
            let mut state = InstanceState::new("i");
            state.entries = 3;
            let mut writer = BatchWriter::default();
            writer.state(&state).expect("state");
            writer.offset(2, 17);
            writer.schedule(50, "i");
            writer.schedule(40, "j");
            writer.fired("k");
            writer.fired("l");
            writer.unfired("l");
            writer.pending(&pending("a", 1)).expect("pending");
            writer.pending(&pending("b", 1)).expect("pending");
            store.apply(writer.into_batch()).expect("apply");
            store.flush().expect("flush");
            let mut done = pending("a", 1);
            done.attempts = 2;
            done.parked = true;
            store.put_pending(&done).expect("put");
            store
                .remove_pending("b", &Uuid::from_u128(1))
                .expect("remove");
            store.flush().expect("flush");
            // A second notifier on the same directory is refused.
            assert!(matches!(
                Store::open(dir.path(), "log", 0, false),
                Err(Error::Locked { .. })
            ));
        }
        let (store, opened) = reopen(dir.path(), "log", 2000, true).expect("reopen");
        assert_eq!(opened, Opened::Resumed);
        assert_eq!(
            store.since(),
            1000,
            "since is fixed when the store is created"
        );
        assert_eq!(store.offsets().expect("offsets"), BTreeMap::from([(2, 17)]));
        assert_eq!(store.state("i").expect("state").map(|s| s.entries), Some(3));
        assert_eq!(store.state("x").expect("state"), None);
        assert_eq!(
            store.reminders().expect("reminders"),
            [(40, "j".to_owned()), (50, "i".to_owned())]
        );
        assert_eq!(
            store.fired().expect("fired"),
            std::collections::HashSet::from(["k".to_owned()])
        );
        let outbox = store.outbox().expect("outbox");
        assert_eq!(outbox.len(), 1);
        assert!(outbox[0].parked && outbox[0].attempts == 2 && outbox[0].channel == "a");
    }

    /// Open again right after a drop: sled's flusher thread lets go of the
    /// directory's lock at its next tick, so an in-process reopen may need a
    /// few tries (a restarted process never does).
    fn reopen(
        dir: &std::path::Path,
        topic: &str,
        since: i64,
        backfill: bool,
    ) -> Result<(Store, Opened), Error> {
        let started = std::time::Instant::now();
        loop {
            match Store::open(dir, topic, since, backfill) {
                Err(Error::Open { .. })
                    if started.elapsed() < std::time::Duration::from_secs(5) =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    #[test]
    fn another_topic_is_refused_not_wiped() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(Store::open(dir.path(), "log", 0, false).expect("open"));
        let Err(error) = reopen(dir.path(), "other", 0, false) else {
            panic!("a store of another topic must be refused");
        };
        assert!(error.to_string().contains("cannot use"), "{error}");
        reopen(dir.path(), "log", 0, false).expect("still there");
    }
}
