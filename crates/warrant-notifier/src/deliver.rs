//! Delivery: one worker task per channel, each with its own HTTP client,
//! queue and in-flight limit, so a receiver that hangs or fails only ever
//! delays its own channel.
//!
//! At least once: an outbox entry leaves the store only after the receiver
//! answered 2xx. A failed attempt (non-2xx, timeout, connection error) is
//! retried after an exponential backoff with jitter (a 429 or 503's
//! `Retry-After` is honoured, within the channel's `backoff_max_ms`); after
//! `max_attempts` the entry is parked: kept in the store, counted in
//! `/metrics`, logged, and not retried until the notifier is started with
//! `--retry-parked`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use sha2::Sha256;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use uuid::Uuid;
use warrant_authority::error_chain;

use crate::channels::{Channel, Channels, Delivery, Target};
use crate::error::Error;
use crate::metrics::{Metrics, SentLabel};
use crate::store::{Pending, Store};
use crate::unix_millis;

/// What an attempt came to.
#[derive(Debug)]
enum Attempt {
    Delivered,
    Failed {
        error: String,
        retry_after: Option<Duration>,
    },
}

/// The channel workers and the dispatcher that feeds them.
#[derive(Debug)]
pub struct Workers {
    dispatcher: tokio::task::JoinHandle<()>,
}

impl Workers {
    /// Start a worker for every channel with entries in the store or in the
    /// configuration, and one more whenever a reload adds a channel. Each
    /// stops once `stop` is true and its in-flight attempts are done (or
    /// `grace` has passed).
    pub fn start(
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        channels: watch::Receiver<Arc<Channels>>,
        mut incoming: mpsc::UnboundedReceiver<Pending>,
        backlog: Vec<Pending>,
        stop: watch::Receiver<bool>,
        grace: Duration,
    ) -> Workers {
        let dispatcher = tokio::spawn(async move {
            let mut senders: HashMap<String, mpsc::UnboundedSender<Pending>> = HashMap::new();
            let mut workers = JoinSet::new();
            let spawn = |name: &str,
                         senders: &mut HashMap<String, mpsc::UnboundedSender<Pending>>,
                         workers: &mut JoinSet<()>| {
                if senders.contains_key(name) {
                    return;
                }
                let (tx, rx) = mpsc::unbounded_channel();
                senders.insert(name.to_owned(), tx);
                let worker = Worker {
                    name: name.to_owned(),
                    store: store.clone(),
                    metrics: metrics.clone(),
                    channels: channels.clone(),
                    queue: BTreeSet::new(),
                    entries: HashMap::new(),
                    parked: 0,
                };
                workers.spawn(worker.run(rx, stop.clone(), grace));
            };
            let mut config = channels.clone();
            for channel in &config.borrow_and_update().channels {
                spawn(&channel.name, &mut senders, &mut workers);
            }
            for pending in backlog {
                spawn(&pending.channel, &mut senders, &mut workers);
                if let Some(tx) = senders.get(&pending.channel) {
                    let _ = tx.send(pending);
                }
            }
            let mut stop = stop.clone();
            loop {
                tokio::select! {
                    received = incoming.recv() => match received {
                        Some(pending) => {
                            spawn(&pending.channel, &mut senders, &mut workers);
                            if let Some(tx) = senders.get(&pending.channel) {
                                let _ = tx.send(pending);
                            }
                        }
                        // The fold thread has stopped: nothing more comes.
                        None => break,
                    },
                    changed = config.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        let names: Vec<String> = config.borrow_and_update().channels.iter().map(|c| c.name.clone()).collect();
                        for name in names {
                            spawn(&name, &mut senders, &mut workers);
                        }
                    }
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
            drop(senders);
            while workers.join_next().await.is_some() {}
        });
        Workers { dispatcher }
    }

    /// Wait until every worker has stopped.
    pub async fn wait(self) {
        let _ = self.dispatcher.await;
    }
}

struct Worker {
    name: String,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    channels: watch::Receiver<Arc<Channels>>,
    /// Not parked and not in flight, by (next attempt, id).
    queue: BTreeSet<(i64, Uuid)>,
    entries: HashMap<Uuid, Pending>,
    parked: i64,
}

impl Worker {
    async fn run(
        mut self,
        mut inbox: mpsc::UnboundedReceiver<Pending>,
        mut stop: watch::Receiver<bool>,
        grace: Duration,
    ) {
        let label = Metrics::channel(&self.name);
        let mut in_flight: JoinSet<(Uuid, Attempt, Duration)> = JoinSet::new();
        let mut client: Option<(Channel, reqwest::Client)> = None;
        let mut warned_missing = false;
        loop {
            // The channel as configured now (a reload may change or drop it).
            let current = self.channels.borrow().get(&self.name).cloned();
            match (&current, &client) {
                (Some(channel), Some((built, _))) if built == channel => {}
                (Some(channel), _) => match http_client(channel) {
                    Ok(http) => {
                        client = Some((channel.clone(), http));
                        warned_missing = false;
                    }
                    Err(error) => {
                        tracing::error!(channel = %self.name, error = %error_chain(&error), "cannot build the channel's HTTP client");
                        client = None;
                    }
                },
                (None, _) => {
                    if !warned_missing && !self.entries.is_empty() {
                        tracing::warn!(channel = %self.name, pending = self.entries.len(), "channel is no longer configured; its notifications wait in the store");
                        warned_missing = true;
                    }
                    client = None;
                }
            }
            self.metrics
                .pending
                .get_or_create(&label)
                .set(i64::try_from(self.entries.len()).unwrap_or(i64::MAX) - self.parked);
            self.metrics
                .parked_pending
                .get_or_create(&label)
                .set(self.parked);

            let now = unix_millis();
            let mut next_wake = Duration::from_secs(3600);
            if let Some((channel, http)) = &client {
                while in_flight.len() < channel.delivery.concurrency {
                    let Some(&(at, id)) = self.queue.first() else {
                        break;
                    };
                    if at > now {
                        next_wake = Duration::from_millis(u64::try_from(at - now).unwrap_or(0));
                        break;
                    }
                    self.queue.pop_first();
                    let Some(pending) = self.entries.get(&id) else {
                        continue;
                    };
                    let request = build_request(http, channel, pending);
                    in_flight.spawn(async move {
                        let began = Instant::now();
                        let attempt = send(request).await;
                        (id, attempt, began.elapsed())
                    });
                }
            }
            tokio::select! {
                received = inbox.recv() => match received {
                    Some(pending) => self.add(pending),
                    None => break,
                },
                Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                    if let Ok((id, attempt, took)) = done {
                        self.settle(id, attempt, took, current.as_ref().map(|c| &c.delivery));
                    }
                }
                () = tokio::time::sleep(next_wake) => {}
                changed = self.channels.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        // Stopping: let the attempts under way finish (up to the grace), so
        // what a receiver accepted is not sent again after the restart.
        let delivery = self
            .channels
            .borrow()
            .get(&self.name)
            .map(|c| c.delivery.clone());
        let deadline = tokio::time::Instant::now() + grace;
        while !in_flight.is_empty() {
            match tokio::time::timeout_at(deadline, in_flight.join_next()).await {
                Ok(Some(Ok((id, attempt, took)))) => {
                    self.settle(id, attempt, took, delivery.as_ref())
                }
                Ok(Some(Err(_))) => {}
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(channel = %self.name, in_flight = in_flight.len(), "attempts still in flight at shutdown; they are retried on the next start");
                    in_flight.abort_all();
                    break;
                }
            }
        }
        if let Err(error) = self.store.flush() {
            tracing::error!(channel = %self.name, error = %error_chain(&error), "cannot flush the outbox");
        }
    }

    fn add(&mut self, pending: Pending) {
        let id = pending.notification.id;
        if self.entries.contains_key(&id) {
            return;
        }
        if pending.parked {
            self.parked += 1;
        } else {
            self.queue.insert((pending.next_attempt_at, id));
        }
        self.entries.insert(id, pending);
    }

    fn settle(&mut self, id: Uuid, attempt: Attempt, took: Duration, delivery: Option<&Delivery>) {
        let label = Metrics::channel(&self.name);
        let Some(mut pending) = self.entries.remove(&id) else {
            return;
        };
        let notification = &pending.notification;
        match attempt {
            Attempt::Delivered => {
                let now = unix_millis();
                self.metrics
                    .sent
                    .get_or_create(&SentLabel {
                        channel: self.name.clone(),
                        kind: notification.kind.as_str(),
                    })
                    .inc();
                self.metrics
                    .delivery_seconds
                    .get_or_create(&label)
                    .observe(((now - notification.recorded_at) as f64 / 1000.0).max(0.0));
                tracing::debug!(channel = %self.name, id = %id, kind = %notification.kind, instance_id = %notification.instance_id, attempts = pending.attempts + 1, ms = took.as_millis() as u64, "delivered");
                if let Err(error) = self.store.remove_pending(&self.name, &id) {
                    tracing::error!(channel = %self.name, id = %id, error = %error_chain(&error), "cannot remove a delivered notification; it will be sent again");
                }
            }
            Attempt::Failed { error, retry_after } => {
                self.metrics.failed_attempts.get_or_create(&label).inc();
                pending.attempts += 1;
                pending.last_error = Some(error.clone());
                let delivery = delivery.cloned().unwrap_or_default();
                if pending.attempts >= delivery.max_attempts {
                    pending.parked = true;
                    self.parked += 1;
                    self.metrics.parked.get_or_create(&label).inc();
                    tracing::error!(channel = %self.name, id = %id, kind = %pending.notification.kind, instance_id = %pending.notification.instance_id, attempts = pending.attempts, error = %error, "notification parked after max_attempts; it stays in the store");
                } else {
                    let delay = backoff(&delivery, pending.attempts, retry_after);
                    pending.next_attempt_at =
                        unix_millis() + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
                    tracing::warn!(channel = %self.name, id = %id, attempts = pending.attempts, retry_in_ms = delay.as_millis() as u64, error = %error, "delivery failed; retrying");
                    self.queue.insert((pending.next_attempt_at, id));
                }
                if let Err(error) = self.store.put_pending(&pending) {
                    tracing::error!(channel = %self.name, id = %id, error = %error_chain(&error), "cannot record a failed attempt");
                }
                self.entries.insert(id, pending);
            }
        }
    }
}

/// `initial · 2^(attempts-1)`, capped at `backoff_max`, times a random
/// factor in [0.5, 1) so that many failed notifications do not retry in
/// step; at least a receiver's `Retry-After`, within the cap.
pub fn backoff(delivery: &Delivery, attempts: u32, retry_after: Option<Duration>) -> Duration {
    let exponent = attempts.saturating_sub(1).min(30);
    let raw = delivery
        .backoff_initial
        .saturating_mul(1u32 << exponent)
        .min(delivery.backoff_max);
    let jitter = 0.5 + (RandomState::new().hash_one(attempts) % 1000) as f64 / 2000.0;
    let jittered = raw.mul_f64(jitter);
    match retry_after {
        Some(wait) => jittered.max(wait.min(delivery.backoff_max)),
        None => jittered,
    }
}

fn http_client(channel: &Channel) -> Result<reqwest::Client, Error> {
    reqwest::Client::builder()
        .user_agent(concat!("warrant-notifier/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(channel.delivery.timeout)
        .timeout(channel.delivery.timeout)
        // A receiver's redirect could take a signed body somewhere else.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|source| Error::HttpClient {
            channel: channel.name.clone(),
            source,
        })
}

/// The signature intake's reviewers' webhook checks, over the exact body.
pub fn signature(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

fn build_request(
    http: &reqwest::Client,
    channel: &Channel,
    pending: &Pending,
) -> reqwest::RequestBuilder {
    let notification = &pending.notification;
    let (url, body, secret) = match &channel.target {
        Target::Webhook { url, secret } => (
            url,
            serde_json::to_vec(notification).unwrap_or_default(),
            Some(secret),
        ),
        Target::Slack { url } => (
            url,
            serde_json::to_vec(&notification.slack_message()).unwrap_or_default(),
            None,
        ),
    };
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(id) = HeaderValue::from_str(&notification.id.to_string()) {
        headers.insert("Idempotency-Key", id);
    }
    if let Ok(kind) = HeaderValue::from_str(notification.kind.as_str()) {
        headers.insert("X-Warrant-Notification-Kind", kind);
    }
    if let Some(secret) = secret {
        // Signed afresh on every attempt: receivers refuse old timestamps.
        let timestamp = (unix_millis() / 1000).to_string();
        let signature = signature(secret, &timestamp, &body);
        if let (Ok(ts), Ok(sig)) = (
            HeaderValue::from_str(&timestamp),
            HeaderValue::from_str(&signature),
        ) {
            headers.insert("X-Warrant-Timestamp", ts);
            headers.insert("X-Warrant-Signature", sig);
        }
    }
    http.post(url).headers(headers).body(body)
}

async fn send(request: reqwest::RequestBuilder) -> Attempt {
    match request.send().await {
        Ok(response) if response.status().is_success() => Attempt::Delivered,
        Ok(response) => {
            let status = response.status();
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            Attempt::Failed {
                error: format!("the receiver answered {status}"),
                retry_after,
            }
        }
        Err(error) if error.is_timeout() => Attempt::Failed {
            error: "the receiver did not answer in time".to_owned(),
            retry_after: None,
        },
        // Never the URL: a Slack webhook URL is its secret, and this text
        // goes to the log, the store and GET /v1/outbox.
        Err(error) => Attempt::Failed {
            error: error_chain(&error.without_url()),
            retry_after: None,
        },
    }
}

/// Parked and pending counts per channel, for `/v1/outbox`.
pub fn summary(outbox: &[Pending]) -> BTreeMap<String, (u64, u64)> {
    let mut counts: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for pending in outbox {
        let entry = counts.entry(pending.channel.clone()).or_default();
        if pending.parked {
            entry.1 += 1;
        } else {
            entry.0 += 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failed_delivery_never_names_the_url() {
        // A Slack webhook URL is its secret; nothing listens on port 1.
        let client = reqwest::Client::new();
        let request = client.post("http://127.0.0.1:1/services/T0/B0/SECRET-TOKEN");
        match send(request).await {
            Attempt::Failed { error, .. } => {
                assert!(!error.contains("SECRET-TOKEN"), "{error}");
                assert!(!error.is_empty());
            }
            Attempt::Delivered => panic!("nothing listens on port 1"),
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_and_stays_under_the_cap() {
        let delivery = Delivery {
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1000),
            ..Delivery::default()
        };
        for _ in 0..50 {
            let first = backoff(&delivery, 1, None);
            assert!(
                first >= Duration::from_millis(50) && first < Duration::from_millis(100),
                "{first:?}"
            );
            let third = backoff(&delivery, 3, None);
            assert!(
                third >= Duration::from_millis(200) && third < Duration::from_millis(400),
                "{third:?}"
            );
            let late = backoff(&delivery, 40, None);
            assert!(
                late >= Duration::from_millis(500) && late < Duration::from_millis(1000),
                "{late:?}"
            );
            let told = backoff(&delivery, 1, Some(Duration::from_secs(30)));
            assert_eq!(
                told,
                Duration::from_millis(1000),
                "Retry-After, within the cap"
            );
        }
    }

    #[test]
    fn the_signature_is_intakes_webhook_signature() {
        // HMAC-SHA256("secret", "1700000000.{}"), computed independently
        // with Python's hmac module.
        assert_eq!(
            signature(b"secret", "1700000000", b"{}"),
            "v1=b8569b78799ff9e3cbff0fc2d63a33a2b57f3282abd07c37ae5e8e7d79a5f163"
        );
    }
}
