//! Writes the seed corpora under `fuzz/seeds/<target>/` from the samples the
//! unit tests use, so every target starts from inputs that reach deep
//! (valid envelopes, the example config files, well-formed request bodies).
//! Run: `cargo +nightly run --manifest-path fuzz/Cargo.toml --example make_seeds`.

use std::path::Path;

use warrant_schema::{encode, samples};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target);
    std::fs::create_dir_all(&dir).expect("seed directory");
    std::fs::write(dir.join(name), bytes).expect("seed file");
}

fn main() {
    let mut envelopes: Vec<(String, warrant_schema::Envelope)> = samples::envelopes()
        .into_iter()
        .map(|(name, e)| (name.to_owned(), e))
        .collect();
    envelopes.push(("signed_decision".to_owned(), samples::signed_decision()));
    for (name, envelope) in &envelopes {
        write("envelope", name, &encode(envelope).expect("encodes"));
    }
    write(
        "ingress_records",
        "proposal",
        &encode(&samples::proposal_submitted()).expect("encodes"),
    );
    write(
        "ingress_records",
        "signal",
        &encode(&samples::signal_submitted()).expect("encodes"),
    );

    // The fold: the sample history in order, then shuffled, duplicated and
    // shifted past the deadlines (see fold.rs for the op layout).
    let count = envelopes.len() as u8;
    let in_order: Vec<u8> = (0..count).flat_map(|n| [n, 0, 0]).collect();
    write("fold", "in_order", &in_order);
    let reversed: Vec<u8> = (0..count).rev().flat_map(|n| [n, 0, 1]).collect();
    write("fold", "reversed", &reversed);
    let late: Vec<u8> = (0..count).flat_map(|n| [n, 120, 2]).collect();
    write("fold", "late", &late);
    let twice: Vec<u8> = (0..count).flat_map(|n| [n, 0, 0, n, 0, 0]).collect();
    write("fold", "duplicates", &twice);

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let example =
        |name: &str| std::fs::read(root.join("deploy/examples").join(name)).expect("example");
    write("ruleset", "example", &example("ruleset.yaml"));
    write("principals", "example", &example("principals.yaml"));

    // Intake: [route, credential, idempotency key] + body (intake_bodies.rs).
    let instance = samples::INSTANCE_ID;
    let bodies: [(&str, [u8; 3], String); 7] = [
        (
            "proposal",
            [0, 1, 1],
            r#"{"action":{"kind":"service.restart","target":"prod/payments/api","parameters":{"strategy":"rolling"}},"rationale":"p99 over 2s"}"#.to_owned(),
        ),
        (
            "signal",
            [1, 2, 0],
            r#"{"verdict":"ALLOW","reasons":["ok"],"policy_ref":{"id":"restart.rego","version":"7"}}"#.to_owned(),
        ),
        (
            "decision",
            [2, 4, 0],
            format!(r#"{{"instance_id":"{instance}","verdict":"APPROVE","justification":"heap profile","scope":{{"constraints":{{"strategy":"rolling"}},"max_executions":1}}}}"#),
        ),
        (
            "claim",
            [3, 3, 1],
            format!(r#"{{"action_digest":"{}"}}"#, samples::ACTION_DIGEST),
        ),
        (
            "report",
            [4, 3, 0],
            r#"{"grant_id":"3f0d9a5e-2b1c-5d4e-8f7a-6b5c4d3e2f1a","outcome":"SUCCEEDED","detail":"done"}"#.to_owned(),
        ),
        ("withdrawal", [5, 1, 0], r#"{"reason":"no longer needed"}"#.to_owned()),
        (
            "session",
            [6, 0, 0],
            r#"{"key_id":"b600306cfa76723f","challenge":"x","signature":"00"}"#.to_owned(),
        ),
    ];
    for (name, head, body) in bodies {
        let mut bytes = head.to_vec();
        bytes.extend_from_slice(body.as_bytes());
        write("intake_bodies", name, &bytes);
    }
}
