//! Shared by the end-to-end tests: the example files, producing to and
//! reading back from the real broker.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{DeliveryFuture, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use warrant_kafka::{partitions_of, watermarks, KafkaArgs};

pub fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/examples")
        .join(name)
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Produce records (key, value) to `topic`, waiting for every ack; returns
/// where each landed, in order.
pub async fn produce(
    args: &KafkaArgs,
    topic: &str,
    records: &[(Option<Vec<u8>>, Vec<u8>)],
) -> Vec<(i32, i64)> {
    let producer = args.producer().expect("producer");
    let mut deliveries: Vec<DeliveryFuture> = Vec::with_capacity(records.len());
    for (key, value) in records {
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).payload(value);
        if let Some(key) = key {
            record = record.key(key);
        }
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    deliveries.push(delivery);
                    break;
                }
                Err((_, returned)) => {
                    record = returned;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    }
    let mut positions = Vec::with_capacity(deliveries.len());
    for delivery in deliveries {
        let delivered = delivery.await.expect("not cancelled").expect("delivered");
        positions.push((delivered.partition, delivered.offset));
    }
    positions
}

/// Every record currently in `topic`, partition by partition.
pub fn read_all(args: &KafkaArgs, topic: &str) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = args.assigned_consumer().expect("consumer");
    let mut list = TopicPartitionList::new();
    let mut highs: BTreeMap<i32, i64> = BTreeMap::new();
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    for partition in partitions_of(&consumer, topic).expect("partitions") {
        let (low, high) = watermarks(&consumer, topic, partition).expect("watermarks");
        if high > low {
            list.add_partition_offset(topic, partition, Offset::Offset(low))
                .expect("partition");
            highs.insert(partition, high);
            next.insert(partition, low);
        }
    }
    let mut messages = Vec::new();
    if highs.is_empty() {
        return messages;
    }
    consumer.assign(&list).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(60);
    while highs.iter().any(|(p, high)| next[p] < *high) {
        assert!(Instant::now() < deadline, "timed out reading {topic}");
        // Errors here are end-of-partition notices; the loop condition decides.
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            next.insert(message.partition(), message.offset() + 1);
            messages.push(message.detach());
        }
    }
    messages
}

/// Sum over partitions of (high - low): how many records the topic holds.
pub fn count(args: &KafkaArgs, topic: &str) -> i64 {
    let consumer: BaseConsumer = args.assigned_consumer().expect("consumer");
    partitions_of(&consumer, topic)
        .expect("partitions")
        .into_iter()
        .map(|p| {
            let (low, high) = watermarks(&consumer, topic, p).expect("watermarks");
            high - low
        })
        .sum()
}

/// Poll `condition` every 50 ms until it holds or `timeout` passes.
pub async fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The committed offsets of `group` for `topic`, by partition.
pub fn committed(args: &KafkaArgs, group: &str, topic: &str) -> BTreeMap<i32, i64> {
    let consumer: BaseConsumer = args.consumer_config(group).create().expect("consumer");
    let mut list = TopicPartitionList::new();
    for partition in partitions_of(&consumer, topic).expect("partitions") {
        list.add_partition(topic, partition);
    }
    let committed = consumer
        .committed_offsets(list, Duration::from_secs(10))
        .expect("committed offsets");
    committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(offset) => Some((e.partition(), offset)),
            _ => None,
        })
        .collect()
}

/// The high watermark of every partition of `topic`.
pub fn highs(args: &KafkaArgs, topic: &str) -> BTreeMap<i32, i64> {
    let consumer: BaseConsumer = args.assigned_consumer().expect("consumer");
    partitions_of(&consumer, topic)
        .expect("partitions")
        .into_iter()
        .map(|p| (p, watermarks(&consumer, topic, p).expect("watermarks").1))
        .filter(|(_, high)| *high > 0)
        .collect()
}

/// Create `topic` with `partitions` and the given topic-level configs (the
/// broker does not auto-create topics, so one never created stays missing).
pub async fn create_topic(
    args: &KafkaArgs,
    topic: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) {
    let admin = args.admin().expect("admin client");
    let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for (key, value) in configs {
        new = new.set(key, value);
    }
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics([&new], &options)
        .await
        .expect("create topics");
    for result in results {
        result.expect("topic created");
    }
    // Creation is acknowledged before every metadata answer lists it.
    let consumer: BaseConsumer = args.assigned_consumer().expect("consumer");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !partitions_of(&consumer, topic).is_ok_and(|p| p.len() == partitions as usize) {
        assert!(
            Instant::now() < deadline,
            "{topic} never showed up in metadata"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A record's header as text, if it has it.
pub fn header(message: &OwnedMessage, key: &str) -> Option<String> {
    use rdkafka::message::Headers;
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// `GET /metrics` of an intake, as text.
pub async fn metrics_text(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text")
}
