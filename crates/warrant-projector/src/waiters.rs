//! Record long-polls, woken per instance. A waiter registers the instance
//! it waits on; after each committed batch the commit thread hands over the
//! new entry count of every instance the batch wrote, and only the waiters
//! of those instances wake. An idle waiter costs a parked task and a map
//! entry, however busy the log is: no store read, no wake, until its own
//! instance changes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

/// Every waiter slot is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

#[derive(Debug)]
struct Watched {
    /// The instance's entry count as of the last batch that wrote it.
    entries: watch::Sender<u64>,
    waiting: usize,
}

#[derive(Debug)]
struct Inner {
    by_instance: HashMap<String, Watched>,
    /// The fold has stopped: nothing will change any more.
    closed: bool,
}

/// The registry of record waiters, bounded by a number of slots.
#[derive(Debug)]
pub struct RecordWaiters {
    slots: Arc<Semaphore>,
    inner: Mutex<Inner>,
}

/// One registered waiter; unregisters when dropped, however the request
/// ends (a client hanging up included).
#[derive(Debug)]
pub struct Waiting {
    waiters: Arc<RecordWaiters>,
    instance_id: String,
    /// Changes when a batch writes the instance; closed when the fold stops.
    pub entries: watch::Receiver<u64>,
    _slot: OwnedSemaphorePermit,
}

impl RecordWaiters {
    pub fn new(max_waiters: usize) -> RecordWaiters {
        RecordWaiters {
            slots: Arc::new(Semaphore::new(max_waiters)),
            inner: Mutex::new(Inner {
                by_instance: HashMap::new(),
                closed: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Take a slot and watch `instance_id`. Register before reading the
    /// store: a batch committed after this call wakes the receiver, one
    /// committed before it is in the store.
    pub fn register(self: &Arc<Self>, instance_id: &str) -> Result<Waiting, Full> {
        let slot = self.slots.clone().try_acquire_owned().map_err(|_| Full)?;
        let mut inner = self.lock();
        let receiver = if inner.closed {
            // Nothing will ever be sent: a receiver whose sender is gone
            // makes the wait answer at once.
            watch::channel(0).1
        } else {
            let watched = inner
                .by_instance
                .entry(instance_id.to_owned())
                .or_insert_with(|| Watched {
                    entries: watch::channel(0).0,
                    waiting: 0,
                });
            watched.waiting += 1;
            watched.entries.subscribe()
        };
        Ok(Waiting {
            waiters: self.clone(),
            instance_id: instance_id.to_owned(),
            entries: receiver,
            _slot: slot,
        })
    }

    /// A batch was committed: `written` yields each instance it wrote with
    /// its new entry count. Cheap when nobody waits.
    pub fn committed<'a>(&self, written: impl IntoIterator<Item = (&'a str, u64)>) {
        let inner = self.lock();
        if inner.by_instance.is_empty() {
            return;
        }
        for (instance_id, entries) in written {
            if let Some(watched) = inner.by_instance.get(instance_id) {
                watched.entries.send_replace(entries);
            }
        }
    }

    /// The fold stopped: answer every waiter now, and every later one at once.
    pub fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        inner.by_instance.clear();
    }

    /// Waiters registered right now.
    pub fn waiting(&self) -> usize {
        self.lock().by_instance.values().map(|w| w.waiting).sum()
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut inner = self.waiters.lock();
        if let Some(watched) = inner.by_instance.get_mut(&self.instance_id) {
            watched.waiting -= 1;
            if watched.waiting == 0 {
                inner.by_instance.remove(&self.instance_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn only_the_waiters_of_a_written_instance_wake() {
        let waiters = Arc::new(RecordWaiters::new(8));
        let mut a = waiters.register("a").unwrap();
        let b = waiters.register("b").unwrap();
        waiters.committed([("a", 3), ("c", 9)]);
        assert!(a.entries.has_changed().unwrap());
        assert_eq!(*a.entries.borrow_and_update(), 3);
        assert!(!b.entries.has_changed().unwrap());
        assert_eq!(waiters.waiting(), 2);
    }

    #[tokio::test]
    async fn slots_are_bounded_and_given_back_on_drop() {
        let waiters = Arc::new(RecordWaiters::new(2));
        let first = waiters.register("a").unwrap();
        let _second = waiters.register("a").unwrap();
        assert_eq!(waiters.register("b").unwrap_err(), Full);
        drop(first);
        assert_eq!(waiters.waiting(), 1);
        let _third = waiters.register("b").unwrap();
        assert_eq!(waiters.waiting(), 2);
    }

    #[tokio::test]
    async fn closing_answers_every_waiter_and_every_later_one() {
        let waiters = Arc::new(RecordWaiters::new(4));
        let mut before = waiters.register("a").unwrap();
        waiters.close();
        assert!(before.entries.changed().await.is_err());
        let mut after = waiters.register("a").unwrap();
        assert!(after.entries.changed().await.is_err());
        drop(before);
        assert_eq!(waiters.waiting(), 0);
    }
}
