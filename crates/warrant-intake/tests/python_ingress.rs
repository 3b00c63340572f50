//! An independent Python producer (confluent-kafka + fastavro, only
//! schemas/*.avsc) writes a ProposalSubmitted to the ingress topic of the
//! real broker; intake must append it to the log, resolved and stamped.
//! Runs tests/python/test_ingress.py in the repository's venv
//! (.cache/venv, created here if `scripts/test.sh` has not yet).

mod common;

use std::process::Command;
use std::time::Duration;

use common::{count, eventually, example, read_all, repo_root};
use rdkafka::message::Message;
use warrant_intake::{ids, Args, Intake};
use warrant_schema::{Envelope, EventBody, ProposerKind};
use warrant_testkit::run_ok as run;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_produced_by_python_is_appended_to_the_log() {
    let topics = warrant_testkit::fresh_topics(3)
        .await
        .expect("broker and topics");
    let intake = Intake::start(Args::for_tests(
        topics.clone(),
        example("ruleset.yaml"),
        example("principals.yaml"),
    ))
    .await
    .expect("intake starts");

    let root = repo_root();
    let python = warrant_testkit::venv_python();
    let dir = tempfile::tempdir().expect("tempdir");
    let expect_file = dir.path().join("expect.json");
    let instance_id = ids::random();
    let output = run(Command::new(&python)
        .args(["-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider"])
        .arg("tests/python/test_ingress.py")
        .current_dir(&root)
        .env("WARRANT_TEST_BROKERS", &topics.brokers)
        .env("WARRANT_TEST_PROPOSALS_TOPIC", &topics.proposals_topic)
        .env("WARRANT_TEST_INSTANCE_ID", &instance_id)
        .env("WARRANT_TEST_EXPECT_FILE", &expect_file));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("1 passed"),
        "the Python test did not run: {stdout}"
    );
    assert!(
        !stdout.contains("skipped"),
        "the Python test was skipped: {stdout}"
    );

    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&expect_file).expect("expect file")).expect("JSON");
    assert_eq!(expected["instance_id"], instance_id.as_str());
    let partition = expected["partition"].as_i64().expect("partition") as i32;
    let offset = expected["offset"].as_i64().expect("offset");

    assert!(
        eventually(Duration::from_secs(60), || count(
            &topics,
            &topics.log_topic
        ) >= 1)
        .await,
        "intake did not append the proposal"
    );
    let log = read_all(&topics, &topics.log_topic);
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].key(), Some(instance_id.as_bytes()));
    let envelope: Envelope =
        warrant_schema::decode(log[0].payload().expect("value")).expect("an envelope");
    assert_eq!(envelope.instance_id, instance_id);
    assert_eq!(
        envelope.event_id,
        ids::ingress_event_id(&topics.proposals_topic, partition, offset)
    );
    assert_eq!(
        envelope.submitted_by,
        format!("kafka:{}", topics.proposals_topic)
    );
    let EventBody::ActionProposed(proposed) = envelope.body else {
        panic!("not a proposal");
    };
    assert_eq!(proposed.action.kind, "db.migrate");
    assert_eq!(proposed.action.parameters["note"], "naïve → ✓");
    assert_eq!(proposed.proposer.principal, "agent:remediator");
    assert_eq!(proposed.proposer.kind, ProposerKind::Agent);
    // The digest Python computed with json.dumps(sort_keys=True, ...) is the one intake stamped.
    assert_eq!(
        proposed.action_digest,
        expected["action_digest"].as_str().expect("digest")
    );
    assert_eq!(proposed.requirement.rule_id, "everything-else");
    assert!(read_all(&topics, &topics.dead_letter_topic).is_empty());

    intake.stop();
    intake.wait().await.expect("clean stop");
}
