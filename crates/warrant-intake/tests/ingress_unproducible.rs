//! Ingress records Kafka can never take must not wedge their partition:
//! one too large to dead-letter whole is dead-lettered truncated (with its
//! original size and SHA-256 in headers), an envelope the log refuses for
//! good is dead-lettered with that reason, and the records behind them on
//! the same partition are appended as usual.

mod common;

use std::time::Duration;

use common::{count, create_topic, eventually, example, header, metrics_text, read_all};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use warrant_intake::{ids, Args, Intake};
use warrant_kafka::KafkaArgs;
use warrant_schema::{samples, Envelope, ProposalSubmitted};

/// The size of the record that wedged a partition: within the broker's
/// 1 MiB limit, above librdkafka's default `message.max.bytes` (1,000,000).
const WEDGING_SIZE: usize = 1_040_095;

/// Hex digits from a fixed xorshift sequence: hardly compressible, so the
/// sizes the broker sees are the sizes written.
fn noise(len: usize, mut seed: u64) -> String {
    let mut text = String::with_capacity(len + 16);
    while text.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        text.push_str(&format!("{seed:016x}"));
    }
    text.truncate(len);
    text
}

/// A valid ProposalSubmitted whose encoding is exactly `size` bytes, under
/// its own instance id.
fn proposal_of_size(size: usize, instance: u64) -> Vec<u8> {
    let mut proposal: ProposalSubmitted = samples::proposal_submitted();
    // A random-format (v4) id: intake refuses chosen v5 ones.
    proposal.instance_id = Some(format!("00000000-0000-4000-8000-{instance:012x}"));
    let mut padding = size.saturating_sub(1000);
    // The string's length prefix grows with it: adjust until exact.
    for _ in 0..10 {
        proposal
            .action
            .parameters
            .insert("padding".to_owned(), noise(padding, instance + 1));
        let bytes = warrant_schema::encode(&proposal).expect("encode");
        match bytes.len().cmp(&size) {
            std::cmp::Ordering::Equal => return bytes,
            std::cmp::Ordering::Less => padding += size - bytes.len(),
            std::cmp::Ordering::Greater => padding -= bytes.len() - size,
        }
    }
    panic!("cannot build a proposal of exactly {size} bytes");
}

fn small_proposal(instance: u64) -> Vec<u8> {
    let mut proposal = samples::proposal_submitted();
    proposal.instance_id = Some(format!("00000000-0000-4000-9000-{instance:012x}"));
    warrant_schema::encode(&proposal).expect("encode")
}

/// A test producer that may write records up to the broker's limit, as
/// another client of the ingress topics might.
fn big_producer(topics: &KafkaArgs) -> FutureProducer {
    topics
        .client_config()
        .set("message.max.bytes", "2000000")
        .set("compression.type", "none")
        .create()
        .expect("producer")
}

/// Produce `records` one after the other to partition 0 of `topic`,
/// waiting for each; returns their offsets.
async fn produce_in_order(producer: &FutureProducer, topic: &str, records: &[&[u8]]) -> Vec<i64> {
    let mut offsets = Vec::new();
    for value in records {
        let record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(topic).partition(0).payload(value);
        let delivered = producer
            .send(record, Timeout::After(Duration::from_secs(30)))
            .await
            .map_err(|(error, _)| error)
            .expect("the test record is on the ingress topic");
        assert_eq!(delivered.partition, 0);
        offsets.push(delivered.offset);
    }
    offsets
}

fn dead_letter_from(dead: &[OwnedMessage], offset: i64) -> &OwnedMessage {
    dead.iter()
        .find(|m| header(m, "warrant.source.offset") == Some(offset.to_string()))
        .unwrap_or_else(|| panic!("no dead letter for source offset {offset}"))
}

/// The envelope the log holds for ingress position (partition 0, offset).
fn envelope_from(topics: &KafkaArgs, offset: i64) -> Option<Envelope> {
    let event_id = ids::ingress_event_id(&topics.proposals_topic, 0, offset);
    read_all(topics, &topics.log_topic)
        .iter()
        .filter_map(|m| warrant_schema::decode::<Envelope>(m.payload()?).ok())
        .find(|envelope| envelope.event_id == event_id)
}

async fn start(topics: &KafkaArgs) -> (Intake, String) {
    let args = Args::for_tests(
        topics.clone(),
        example("ruleset.yaml"),
        example("principals.yaml"),
    );
    let intake = Intake::start(args).await.expect("intake starts");
    let base = format!("http://{}", intake.local_addr());
    (intake, base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_too_large_to_dead_letter_whole_is_dead_lettered_truncated() {
    let topics = warrant_testkit::fresh_topics(3)
        .await
        .expect("broker and topics");
    let (intake, base) = start(&topics).await;

    let big = proposal_of_size(WEDGING_SIZE, 7);
    assert_eq!(big.len(), WEDGING_SIZE);
    let valid = small_proposal(8);
    let producer = big_producer(&topics);
    let offsets = produce_in_order(&producer, &topics.proposals_topic, &[&big, &valid]).await;

    assert!(
        eventually(Duration::from_secs(60), || count(
            &topics,
            &topics.dead_letter_topic
        ) >= 1
            && envelope_from(&topics, offsets[1]).is_some())
        .await,
        "the record behind the large one was not appended (the partition is wedged)"
    );

    let dead = read_all(&topics, &topics.dead_letter_topic);
    assert_eq!(dead.len(), 1, "one dead letter, for the large record");
    let letter = dead_letter_from(&dead, offsets[0]);
    let value = letter.payload().expect("a truncated value");
    assert!(value.len() < big.len(), "{} bytes", value.len());
    assert!(!value.is_empty());
    assert_eq!(value, &big[..value.len()], "a prefix of the original");
    assert_eq!(header(letter, "warrant.truncated").as_deref(), Some("true"));
    assert_eq!(
        header(letter, "warrant.original.size"),
        Some(WEDGING_SIZE.to_string())
    );
    assert_eq!(
        header(letter, "warrant.original.sha256"),
        Some(warrant_authority::sha256_hex(&big))
    );
    assert!(
        header(letter, "warrant.truncated.cause").is_some_and(|cause| cause.contains("too large"))
    );
    assert!(header(letter, "warrant.reason").is_some_and(|reason| !reason.is_empty()));
    assert_eq!(
        header(letter, "warrant.source.topic").as_deref(),
        Some(topics.proposals_topic.as_str())
    );
    assert_eq!(
        header(letter, "warrant.source.partition").as_deref(),
        Some("0")
    );

    // Both are acknowledged, so both offsets are committed.
    let group = format!("{}-intake", topics.log_topic);
    assert!(
        eventually(Duration::from_secs(30), || common::committed(
            &topics,
            &group,
            &topics.proposals_topic
        )
        .get(&0)
            == Some(&(offsets[1] + 1)))
        .await,
        "offsets not committed past both records"
    );

    let metrics = metrics_text(&base).await;
    let topic = &topics.proposals_topic;
    for line in [
        format!("warrant_intake_dead_letters_truncated_total{{topic=\"{topic}\"}} 1"),
        format!("warrant_intake_ingress_refused_total{{topic=\"{topic}\",target=\"dead_letter\",error=\"MessageSizeTooLarge\"}} 1"),
        format!("warrant_intake_ingress_records_total{{topic=\"{topic}\",result=\"dead_lettered\"}} 1"),
        format!("warrant_intake_ingress_records_total{{topic=\"{topic}\",result=\"appended\"}} 1"),
    ] {
        assert!(metrics.contains(&line), "missing {line}:\n{metrics}");
    }

    intake.stop();
    intake.wait().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_the_broker_refuses_as_too_large_is_sent_truncated() {
    let mut topics = warrant_testkit::fresh_topics(3)
        .await
        .expect("broker and topics");
    // librdkafka would send it whole; the broker refuses it for this topic.
    topics.dead_letter_topic = format!("{}-small", topics.dead_letter_topic);
    create_topic(
        &topics,
        &topics.dead_letter_topic,
        1,
        &[("max.message.bytes", "100000")],
    )
    .await;
    let (intake, base) = start(&topics).await;

    let garbage = noise(300_000, 99).into_bytes();
    let valid = small_proposal(9);
    let producer = big_producer(&topics);
    let offsets = produce_in_order(&producer, &topics.proposals_topic, &[&garbage, &valid]).await;

    assert!(
        eventually(Duration::from_secs(60), || count(
            &topics,
            &topics.dead_letter_topic
        ) >= 1
            && envelope_from(&topics, offsets[1]).is_some())
        .await,
        "the record behind the refused one was not appended (the partition is wedged)"
    );
    let dead = read_all(&topics, &topics.dead_letter_topic);
    let letter = dead_letter_from(&dead, offsets[0]);
    let value = letter.payload().expect("a truncated value");
    assert!(
        !value.is_empty() && value.len() < 100_000,
        "{}",
        value.len()
    );
    assert_eq!(value, &garbage[..value.len()]);
    assert_eq!(header(letter, "warrant.truncated").as_deref(), Some("true"));
    assert_eq!(
        header(letter, "warrant.original.size"),
        Some(garbage.len().to_string())
    );
    assert_eq!(
        header(letter, "warrant.original.sha256"),
        Some(warrant_authority::sha256_hex(&garbage))
    );
    assert!(header(letter, "warrant.reason")
        .is_some_and(|reason| reason.contains("not a warrant.ProposalSubmitted")));

    let metrics = metrics_text(&base).await;
    let line = format!(
        "warrant_intake_ingress_refused_total{{topic=\"{}\",target=\"dead_letter\",error=\"MessageSizeTooLarge\"}} 1",
        topics.proposals_topic
    );
    assert!(metrics.contains(&line), "missing {line}:\n{metrics}");

    intake.stop();
    intake.wait().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_the_log_refuses_for_good_is_dead_lettered_with_that_reason() {
    let mut topics = warrant_testkit::fresh_topics(3)
        .await
        .expect("broker and topics");
    // A log topic that takes less than intake's own envelope limit: the
    // envelope passes intake's checks and only the broker refuses it.
    topics.log_topic = format!("{}-small", topics.log_topic);
    create_topic(
        &topics,
        &topics.log_topic,
        1,
        &[("max.message.bytes", "20000")],
    )
    .await;
    let (intake, base) = start(&topics).await;

    let large = proposal_of_size(60_000, 11);
    let valid = small_proposal(12);
    let producer = big_producer(&topics);
    let offsets = produce_in_order(&producer, &topics.proposals_topic, &[&large, &valid]).await;

    assert!(
        eventually(Duration::from_secs(60), || count(
            &topics,
            &topics.dead_letter_topic
        ) >= 1
            && envelope_from(&topics, offsets[1]).is_some())
        .await,
        "the record behind the refused one was not appended (the partition is wedged)"
    );
    assert!(
        envelope_from(&topics, offsets[0]).is_none(),
        "the log took it after all"
    );
    let dead = read_all(&topics, &topics.dead_letter_topic);
    let letter = dead_letter_from(&dead, offsets[0]);
    // The dead-letter topic takes it whole: the original bytes, untouched.
    assert_eq!(letter.payload(), Some(large.as_slice()));
    assert_eq!(header(letter, "warrant.truncated"), None);
    let reason = header(letter, "warrant.reason").expect("reason");
    assert!(
        reason.contains("the log refused the envelope") && reason.contains("too large"),
        "{reason}"
    );

    let metrics = metrics_text(&base).await;
    let line = format!(
        "warrant_intake_ingress_refused_total{{topic=\"{}\",target=\"log\",error=\"MessageSizeTooLarge\"}} 1",
        topics.proposals_topic
    );
    assert!(metrics.contains(&line), "missing {line}:\n{metrics}");

    intake.stop();
    intake.wait().await.expect("clean stop");
}
