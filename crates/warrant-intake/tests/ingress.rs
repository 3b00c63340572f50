//! Kafka ingress against the real local broker: valid records become
//! envelopes on the log, invalid ones go to the dead-letter topic with
//! their origin, and offsets are committed.

mod common;

use std::time::Duration;

use common::{committed, count, eventually, example, highs, produce, read_all};
use rdkafka::message::{Headers, Message};
use warrant_authority::{Ledger, LogPosition, StatusName};
use warrant_intake::{ids, Args, Intake};
use warrant_schema::{samples, Envelope, EventBody};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_records_become_envelopes_or_dead_letters() {
    let topics = warrant_testkit::fresh_topics(3)
        .await
        .expect("broker and topics");
    let mut args = Args::for_tests(
        topics.clone(),
        example("ruleset.yaml"),
        example("principals.yaml"),
    );
    args.ingress_batch = 10;
    let group = args.ingress_group.clone();
    let intake = Intake::start(args).await.expect("intake starts");

    // The ruleset in force is published under its digest, byte for byte.
    let ruleset_text = std::fs::read(example("ruleset.yaml")).expect("ruleset");
    let rulesets = read_all(&topics, &topics.rulesets_topic);
    assert_eq!(rulesets.len(), 1);
    assert_eq!(rulesets[0].payload(), Some(ruleset_text.as_slice()));
    assert_eq!(
        rulesets[0].key(),
        Some(warrant_authority::sha256_hex(&ruleset_text).as_bytes())
    );

    // A proposal under a known id, one without an id, and two bad records.
    let proposal = warrant_schema::encode(&samples::proposal_submitted()).expect("encode");
    let mut anonymous = samples::proposal_submitted();
    anonymous.instance_id = None;
    let anonymous = warrant_schema::encode(&anonymous).expect("encode");
    let mut bad_id = samples::proposal_submitted();
    bad_id.instance_id = Some("not-a-uuid".to_owned());
    let bad_id = warrant_schema::encode(&bad_id).expect("encode");
    let garbage = b"\xc3\x01 definitely not avro".to_vec();
    let records = vec![
        (Some(b"p-1".to_vec()), proposal),
        (None, anonymous),
        (Some(b"bad-1".to_vec()), garbage.clone()),
        (Some(b"bad-2".to_vec()), bad_id.clone()),
    ];
    let positions = produce(&topics, &topics.proposals_topic, &records).await;
    assert!(
        eventually(Duration::from_secs(60), || count(
            &topics,
            &topics.log_topic
        ) >= 2
            && count(&topics, &topics.dead_letter_topic) >= 2)
        .await,
        "intake did not append and dead-letter in time"
    );
    // Only now the signal, so it lands after its proposal.
    let signal = warrant_schema::encode(&samples::signal_submitted()).expect("encode");
    let signal_positions = produce(&topics, &topics.signals_topic, &[(None, signal)]).await;
    assert!(
        eventually(Duration::from_secs(60), || count(
            &topics,
            &topics.log_topic
        ) >= 3)
        .await,
        "the signal was not appended in time"
    );

    let log = read_all(&topics, &topics.log_topic);
    assert_eq!(log.len(), 3, "exactly the three valid records");
    let mut ledger = Ledger::new();
    let mut envelopes: Vec<Envelope> = Vec::new();
    for message in &log {
        let bytes = message.payload().expect("value");
        let envelope: Envelope = warrant_schema::decode(bytes).expect("an envelope");
        assert_eq!(message.key(), Some(envelope.instance_id.as_bytes()));
        ledger.apply(
            LogPosition {
                partition: message.partition(),
                offset: message.offset(),
            },
            message.key(),
            bytes,
        );
        envelopes.push(envelope);
    }
    let by_event = |event_id: &str| {
        envelopes
            .iter()
            .find(|e| e.event_id == event_id)
            .unwrap_or_else(|| panic!("no envelope with event id {event_id}"))
    };
    let (p, o) = positions[0];
    let known = by_event(&ids::ingress_event_id(&topics.proposals_topic, p, o));
    assert_eq!(known.instance_id, samples::INSTANCE_ID);
    assert_eq!(
        known.submitted_by,
        format!("kafka:{}", topics.proposals_topic)
    );
    let EventBody::ActionProposed(proposed) = &known.body else {
        panic!("not a proposal");
    };
    assert_eq!(proposed.action_digest, samples::ACTION_DIGEST);
    assert_eq!(proposed.requirement.rule_id, "prod-restarts");
    assert_eq!(
        proposed.ruleset.digest,
        warrant_authority::sha256_hex(&ruleset_text)
    );

    let (p, o) = positions[1];
    let anonymous = by_event(&ids::ingress_event_id(&topics.proposals_topic, p, o));
    assert_eq!(
        anonymous.instance_id,
        ids::ingress_instance_id(&topics.proposals_topic, p, o)
    );

    let (p, o) = signal_positions[0];
    let signal = by_event(&ids::ingress_event_id(&topics.signals_topic, p, o));
    assert_eq!(
        signal.submitted_by,
        format!("kafka:{}", topics.signals_topic)
    );
    // The sample signal is OPA's DENY: the proposal is blocked.
    assert_eq!(
        ledger
            .get(samples::INSTANCE_ID)
            .and_then(|f| f.state.status()),
        Some(StatusName::Blocked)
    );
    assert!(ledger
        .instances()
        .all(|(_, f)| f.history.iter().all(|e| e.outcome.refusal().is_none())));

    // Dead letters: original key and bytes, and where they came from.
    let dead = read_all(&topics, &topics.dead_letter_topic);
    assert_eq!(dead.len(), 2);
    for (index, original) in [(2usize, &garbage), (3, &bad_id)] {
        let (partition, offset) = positions[index];
        let letter = dead
            .iter()
            .find(|m| m.payload() == Some(original.as_slice()))
            .expect("dead letter with the original bytes");
        assert_eq!(letter.key(), records[index].0.as_deref());
        let headers = letter.headers().expect("headers");
        let header = |name: &str| {
            headers
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_else(|| panic!("no {name} header"))
        };
        assert_eq!(header("warrant.source.topic"), topics.proposals_topic);
        assert_eq!(header("warrant.source.partition"), partition.to_string());
        assert_eq!(header("warrant.source.offset"), offset.to_string());
        assert!(!header("warrant.reason").is_empty());
    }
    let reasons: Vec<String> = dead
        .iter()
        .filter_map(|m| m.headers())
        .flat_map(|h| {
            h.iter()
                .filter(|h| h.key == "warrant.reason")
                .filter_map(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("not a warrant.ProposalSubmitted")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("\"not-a-uuid\" is not a UUID")),
        "{reasons:?}"
    );

    intake.stop();
    intake.wait().await.expect("clean stop");

    // Everything consumed is committed: nothing would be re-delivered.
    assert_eq!(
        committed(&topics, &group, &topics.proposals_topic),
        highs(&topics, &topics.proposals_topic)
    );
    assert_eq!(
        committed(&topics, &group, &topics.signals_topic),
        highs(&topics, &topics.signals_topic)
    );
}
