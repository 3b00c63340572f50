//! The tamper suite: a log is folded by a projector, then copies of it are
//! changed the ways a forger would change them (a flipped byte, a deleted
//! record, two records reordered) and `warrant-replay --verify` against the
//! projector of the original must fail each copy, naming the instance and
//! the entry where it first differs. Every change is made both in an
//! exported Avro file and in a copy of the log topic, and the untouched
//! copies must verify: otherwise the suite would prove nothing.
//!
//! What "the same log" means for a copy: the same records (key, value,
//! timestamp) in the same order in the same partition, at the same
//! offsets. A topic copy written in order by a non-transactional producer
//! gets offsets 0, 1, 2… like the original (which has no transaction
//! markers, Warrant's writers being idempotent but not transactional); the
//! control asserts it. A copy is verified as the original with
//! `--verify-topic`, so the checkpoint digest is compared as for the log.
//!
//! A forged record *appended* to the log is not a tamper this suite can
//! catch: the projector folds it too (docs/contract.md §6.3).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use apache_avro::types::Value;
use apache_avro::{Codec, Reader, Writer};
use warrant_authority::instance_key;
use warrant_e2e::{binary, checkpoint_total, eventually, get_json, read_topic};
use warrant_kafka::rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use warrant_kafka::rdkafka::message::Message;
use warrant_kafka::rdkafka::producer::FutureRecord;
use warrant_kafka::KafkaArgs;
use warrant_projector::{Config, Projector};

const PARTITIONS: i32 = 3;

/// One record of the log, as a copy must reproduce it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rec {
    partition: i32,
    offset: i64,
    timestamp: Option<i64>,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
}

/// How a copy of the log is changed. Positions are (partition, offset) of
/// the original.
#[derive(Debug, Clone, Copy)]
enum Tamper {
    /// None: the control.
    Untouched,
    /// XOR one byte of a record's value at this index.
    Flip { at: (i32, i64), byte: usize },
    /// XOR one byte of a record's key (not hashed: it routes the record).
    FlipKey { at: (i32, i64), byte: usize },
    /// Change a record's Kafka timestamp (not folded at all).
    Retime { at: (i32, i64) },
    /// Drop a record.
    Delete { at: (i32, i64) },
    /// Exchange the contents (key, value, timestamp) of two records of one
    /// partition: each offset now holds the other's record.
    Swap { a: (i32, i64), b: (i32, i64) },
}

impl Tamper {
    fn apply(self, log: &[Rec]) -> Vec<Rec> {
        let mut out: Vec<Rec> = log.to_vec();
        let index = |out: &[Rec], (p, o): (i32, i64)| {
            out.iter()
                .position(|r| r.partition == p && r.offset == o)
                .unwrap_or_else(|| panic!("no record at {p}/{o}"))
        };
        match self {
            Tamper::Untouched => {}
            Tamper::Flip { at, byte } => {
                let i = index(&out, at);
                let value = out[i].value.as_mut().expect("a value to flip");
                value[byte] ^= 0x01;
            }
            Tamper::FlipKey { at, byte } => {
                let i = index(&out, at);
                let key = out[i].key.as_mut().expect("a key to flip");
                key[byte] ^= 0x01;
            }
            Tamper::Retime { at } => {
                let i = index(&out, at);
                out[i].timestamp = out[i].timestamp.map(|t| t + 3_600_000);
            }
            Tamper::Delete { at } => {
                let i = index(&out, at);
                out.remove(i);
            }
            Tamper::Swap { a, b } => {
                let (i, j) = (index(&out, a), index(&out, b));
                assert_eq!(out[i].partition, out[j].partition);
                let (first, second) = (out[i].clone(), out[j].clone());
                out[i] = Rec {
                    offset: first.offset,
                    ..second
                };
                out[j] = Rec {
                    offset: second.offset,
                    ..first
                };
            }
        }
        out
    }
}

/// A case: the change, the instance the report must name and what it must
/// say about it (the entry where it first differs).
struct Case {
    name: &'static str,
    tamper: Tamper,
    instance: String,
    says: String,
}

/// The original: a real log on throwaway topics, folded to completion by a
/// projector, and its export.
struct Original {
    args: KafkaArgs,
    projector: Projector,
    url: String,
    log: Vec<Rec>,
    export: PathBuf,
    dir: tempfile::TempDir,
}

impl Original {
    async fn build() -> Original {
        let args = warrant_testkit::fresh_topics(PARTITIONS)
            .await
            .expect("broker");
        // Multi-entry instances ending in every status, with duplicates,
        // garbage values and stray keys, over three partitions.
        let script = warrant_testkit::scripted_history(24);
        let positions = warrant_testkit::produce(&args, script.records)
            .await
            .expect("produced");
        let dir = tempfile::tempdir().expect("tempdir");
        let projector = Projector::start(Config::new(args.clone(), dir.path().join("view")))
            .await
            .expect("starts");
        let url = format!("http://{}", projector.local_addr());
        let total = positions.len() as i64;
        eventually(
            Duration::from_secs(60),
            "the projector to fold the whole log",
            || async {
                let (_, checkpoint) = get_json(&format!("{url}/v1/checkpoint")).await;
                (checkpoint_total(&checkpoint) == total).then_some(())
            },
        )
        .await;

        let mut log: Vec<Rec> = read_topic(&args, &args.log_topic)
            .iter()
            .map(|m| Rec {
                partition: m.partition(),
                offset: m.offset(),
                timestamp: m.timestamp().to_millis(),
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().map(<[u8]>::to_vec),
            })
            .collect();
        log.sort_by_key(|r| (r.partition, r.offset));
        assert_eq!(log.len(), positions.len());

        let export = dir.path().join("log.avro");
        let output = Command::new(binary("warrant-replay"))
            .args(["export", "--quiet"])
            .args(kafka_flags(&args.brokers, &args.log_topic))
            .arg("--out")
            .arg(&export)
            .output()
            .expect("export runs");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        Original {
            args,
            projector,
            url,
            log,
            export,
            dir,
        }
    }

    /// The records of `instance_id`, in log order.
    fn records_of(&self, instance_id: &str) -> Vec<&Rec> {
        self.log
            .iter()
            .filter(|r| r.key.as_deref() == Some(instance_id.as_bytes()))
            .collect()
    }

    /// The projector's (seq, position) for each entry of `instance_id`:
    /// the entry numbers the report must use.
    async fn entries(&self, instance_id: &str) -> BTreeMap<(i32, i64), u64> {
        let (status, record) = get_json(&format!("{}/v1/instances/{instance_id}", self.url)).await;
        assert_eq!(status, 200, "{instance_id}");
        record["history"]
            .as_array()
            .expect("a history")
            .iter()
            .map(|entry| {
                let position = &entry["position"];
                (
                    (
                        position["partition"].as_i64().expect("partition") as i32,
                        position["offset"].as_i64().expect("offset"),
                    ),
                    entry["seq"].as_u64().expect("seq"),
                )
            })
            .collect()
    }

    /// The instance the changes are made to: several entries with distinct
    /// values, its last record followed on its partition by another
    /// instance's (deleting the last record of a partition from a topic
    /// copy is the one change verify cannot see; the topic test pins it).
    fn victim(&self) -> String {
        let last_offset: BTreeMap<i32, i64> =
            self.log.iter().map(|r| (r.partition, r.offset)).collect();
        let mut candidates: Vec<(usize, String)> = self
            .log
            .iter()
            .filter_map(|r| instance_key(r.key.as_deref()).map(str::to_owned))
            .collect::<std::collections::BTreeSet<String>>()
            .into_iter()
            .filter_map(|id| {
                let records = self.records_of(&id);
                let values: std::collections::BTreeSet<_> =
                    records.iter().map(|r| r.value.clone()).collect();
                let last = records.last()?;
                let distinct = values.len() == records.len();
                let not_last = last.offset < last_offset[&last.partition];
                (records.len() >= 4 && distinct && not_last).then_some((records.len(), id))
            })
            .collect();
        candidates.sort();
        candidates.pop().expect("an instance to tamper with").1
    }

    /// The position of the last record of a partition, one of an
    /// instance's (not a stray key's): deleting it leaves a shorter instance.
    fn tail(&self) -> (i32, i64) {
        let mut last: BTreeMap<i32, &Rec> = BTreeMap::new();
        for r in &self.log {
            last.insert(r.partition, r);
        }
        last.values()
            .find(|r| instance_key(r.key.as_deref()).is_some())
            .map(|r| (r.partition, r.offset))
            .expect("a partition ending with an instance's record")
    }

    /// The export's header metadata, to give a rewritten file the same.
    fn export_metadata(&self) -> (String, Vec<u8>) {
        let file = std::fs::File::open(&self.export).expect("the export");
        let reader = Reader::new(std::io::BufReader::new(file)).expect("an Avro container");
        let metadata = reader
            .user_metadata()
            .get("warrant.export")
            .expect("export metadata")
            .clone();
        let json: serde_json::Value = serde_json::from_slice(&metadata).expect("json");
        let topic = json["topic"].as_str().expect("a topic").to_owned();
        (topic, metadata)
    }

    /// `log` as an export file: the schema of `schemas/log_record.avsc`
    /// and the original export's metadata (so its ranges are claimed).
    fn write_file(&self, log: &[Rec], name: &str) -> PathBuf {
        let (_, metadata) = self.export_metadata();
        self.write_file_with(log, name, Some(metadata))
    }

    /// `log` as an export file with this header (`None`: no header, as any
    /// Avro writer may produce).
    fn write_file_with(&self, log: &[Rec], name: &str, metadata: Option<Vec<u8>>) -> PathBuf {
        let (topic, _) = self.export_metadata();
        let avsc =
            std::fs::read_to_string(warrant_e2e::repo_root().join("schemas/log_record.avsc"))
                .expect("the schema");
        let schema = apache_avro::Schema::parse_str(&avsc).expect("a schema");
        let mut writer = Writer::with_codec(&schema, Vec::new(), Codec::Null).expect("a writer");
        if let Some(metadata) = metadata {
            writer
                .add_user_metadata("warrant.export".to_owned(), metadata)
                .expect("metadata");
        }
        let optional = |value: Option<Value>| match value {
            None => Value::Union(0, Box::new(Value::Null)),
            Some(value) => Value::Union(1, Box::new(value)),
        };
        for r in log {
            let record = Value::Record(vec![
                ("topic".to_owned(), Value::String(topic.clone())),
                ("partition".to_owned(), Value::Int(r.partition)),
                ("offset".to_owned(), Value::Long(r.offset)),
                (
                    "timestamp".to_owned(),
                    optional(r.timestamp.map(Value::TimestampMillis)),
                ),
                ("key".to_owned(), optional(r.key.clone().map(Value::Bytes))),
                (
                    "value".to_owned(),
                    Value::Bytes(r.value.clone().unwrap_or_default()),
                ),
            ]);
            writer.append_value(record).expect("a record");
        }
        let path = self.dir.path().join(format!("{name}.avro"));
        std::fs::write(&path, writer.into_inner().expect("the file")).expect("written");
        path
    }

    /// `log` written to a new throwaway topic of as many partitions, each
    /// record to its partition, in order; returns the topic. Offsets are
    /// Kafka's: a deleted record shifts the later ones of its partition.
    async fn write_topic(&self, log: &[Rec], name: &str) -> String {
        let topic = format!("{}-copy-{name}", self.args.log_topic);
        let admin = self.args.admin().expect("admin");
        let new = NewTopic::new(&topic, PARTITIONS, TopicReplication::Fixed(1));
        for result in admin
            .create_topics([&new], &AdminOptions::new())
            .await
            .expect("create")
        {
            result.expect("topic created");
        }
        let producer = self.args.producer().expect("a producer");
        let mut deliveries = Vec::new();
        for r in log {
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&topic).partition(r.partition);
            if let Some(key) = &r.key {
                record = record.key(key.as_slice());
            }
            if let Some(value) = &r.value {
                record = record.payload(value.as_slice());
            }
            if let Some(timestamp) = r.timestamp {
                record = record.timestamp(timestamp);
            }
            // Idempotent: retries keep each partition's order.
            deliveries.push(producer.send_result(record).expect("enqueued"));
        }
        let mut offsets = Vec::new();
        for delivery in deliveries {
            let delivered = delivery.await.expect("delivered").expect("acked");
            offsets.push((delivered.partition, delivered.offset));
        }
        // Kafka numbers each partition's records 0, 1, 2… in order.
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        for (partition, offset) in offsets {
            let expected = next.entry(partition).or_insert(0);
            assert_eq!(offset, *expected, "offsets of {topic}/{partition}");
            *expected += 1;
        }
        topic
    }

    /// Run `warrant-replay --verify` against the original's projector on
    /// `input` (its own flags); exit code and the report.
    fn verify(&self, input: &[String]) -> (Option<i32>, String) {
        let output = Command::new(binary("warrant-replay"))
            .args(input)
            .args(["--quiet", "--verify", &self.url])
            .output()
            .expect("replay runs");
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.code(), report)
    }

    fn verify_file(&self, path: &Path) -> (Option<i32>, String) {
        self.verify(&["--file".to_owned(), path.display().to_string()])
    }

    /// A copy of the log under another name, verified as the original
    /// (`--verify-topic`), so the checkpoint digest is compared too.
    fn verify_topic(&self, topic: &str) -> (Option<i32>, String) {
        let mut input = kafka_flags(&self.args.brokers, topic);
        input.push(format!("--verify-topic={}", self.args.log_topic));
        self.verify(&input)
    }

    /// The changes, each with what the report must say.
    async fn cases(&self) -> Vec<Case> {
        let victim = self.victim();
        let records = self.records_of(&victim);
        let seq_of = self.entries(&victim).await;
        let seq = |r: &Rec| seq_of[&(r.partition, r.offset)];
        let at = |r: &Rec| (r.partition, r.offset);
        let (second, third, last) = (records[1], records[2], records[records.len() - 1]);
        assert_eq!(
            seq(last) as usize,
            records.len(),
            "every record is an entry"
        );
        let middle = second.value.as_ref().expect("a value").len() / 2;
        // The record right after one of the victim's, of another instance:
        // exchanging the two keeps both hash chains and moves both entries.
        let (mine, neighbour) = records
            .iter()
            .find_map(|r| {
                let next = self
                    .log
                    .iter()
                    .find(|n| n.partition == r.partition && n.offset == r.offset + 1)?;
                let other = instance_key(next.key.as_deref())?;
                (other != victim).then_some((*r, next))
            })
            .expect("a record of another instance right after one of the victim's");
        vec![
            Case {
                name: "flip-inside-value",
                tamper: Tamper::Flip {
                    at: at(second),
                    byte: middle,
                },
                instance: victim.clone(),
                says: format!("entry {} differs", seq(second)),
            },
            // The envelope's first byte is the single-object marker: the
            // value no longer decodes, and the fold refuses it as Malformed
            // in the same instance (its key still names it), a different
            // entry from the projector's.
            Case {
                name: "flip-undecodable",
                tamper: Tamper::Flip {
                    at: at(second),
                    byte: 0,
                },
                instance: victim.clone(),
                says: format!("entry {} differs", seq(second)),
            },
            // The key is not hashed, but it says whose record it is: with a
            // digit changed the record belongs to another (unknown to the
            // projector) instance, and this one lacks an entry.
            Case {
                name: "flip-inside-key",
                tamper: Tamper::FlipKey {
                    at: at(second),
                    byte: 0,
                },
                instance: victim.clone(),
                says: format!("entry {} differs", seq(second)),
            },
            Case {
                name: "delete-middle",
                tamper: Tamper::Delete { at: at(second) },
                instance: victim.clone(),
                says: format!("entry {} differs", seq(second)),
            },
            // The instance's last record: replay has one entry fewer, which
            // is a difference because the range held the missing record.
            Case {
                name: "delete-last",
                tamper: Tamper::Delete { at: at(last) },
                instance: victim.clone(),
                says: format!("entry {} is missing", seq(last)),
            },
            Case {
                name: "swap-same-instance",
                tamper: Tamper::Swap {
                    a: at(second),
                    b: at(third),
                },
                instance: victim.clone(),
                says: format!("entry {} differs", seq(second)),
            },
            // Two instances' records exchanged: bytes and per-instance
            // order unchanged, so every hash is equal; only positions say.
            Case {
                name: "swap-across-instances",
                tamper: Tamper::Swap {
                    a: at(mine),
                    b: at(neighbour),
                },
                instance: victim.clone(),
                says: format!(
                    "entry {} is at {}/{} on the log but the projector says {}/{}",
                    seq(mine),
                    neighbour.partition,
                    neighbour.offset,
                    mine.partition,
                    mine.offset
                ),
            },
        ]
    }
}

fn kafka_flags(brokers: &str, topic: &str) -> Vec<String> {
    vec![
        format!("--brokers={brokers}"),
        format!("--log-topic={topic}"),
    ]
}

/// Exit code 1 and a DIFFERS line naming the instance and the entry; else
/// what went wrong, for the list of missed cases.
fn caught(case: &Case, medium: &str, (code, report): &(Option<i32>, String)) -> Option<String> {
    let named = report.lines().any(|line| {
        line.starts_with("DIFFERS")
            && line.contains(&format!(" {} ", case.instance))
            && line.contains(&case.says)
    });
    (*code != Some(1) || !named).then(|| {
        format!(
            "{medium} {}: expected exit 1 and a DIFFERS line for {} saying {:?}, got {code:?}:\n{report}",
            case.name, case.instance, case.says
        )
    })
}

fn assert_none_missed(missed: &[String]) {
    assert!(missed.is_empty(), "{}", missed.join("\n"));
}

/// The untouched copy verifies: exit 0 and no line but the summary and
/// the checkpoint.
fn assert_verified(medium: &str, (code, report): &(Option<i32>, String)) {
    assert_eq!(*code, Some(0), "{medium} control:\n{report}");
    assert!(report.contains("; ok"), "{medium} control:\n{report}");
    assert!(
        !report.contains("DIFFERS") && !report.contains("PARTIAL") && !report.contains("MISSING"),
        "{medium} control:\n{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tamper_of_an_export_fails_verify_naming_instance_and_entry() {
    let original = Original::build().await;

    // Controls: the export itself, and the same records rewritten by this
    // test's own writer (what every tampered file goes through).
    for (name, path) in [
        ("export", original.export.clone()),
        (
            "rewritten export",
            original.write_file(&Tamper::Untouched.apply(&original.log), "untouched"),
        ),
    ] {
        let verdict = original.verify_file(&path);
        assert_verified(name, &verdict);
        // The file claims the exported ranges: the digests are compared.
        assert!(
            verdict.1.contains("checkpoint: digest equal"),
            "{}",
            verdict.1
        );
    }

    let export = std::fs::read(&original.export).expect("the export");
    let mut missed = Vec::new();
    for case in original.cases().await {
        let path = match case.tamper {
            // A byte flipped in the exported file itself, not re-encoded:
            // values are stored byte for byte (codec null).
            Tamper::Flip { at, byte } => {
                let record = original
                    .log
                    .iter()
                    .find(|r| (r.partition, r.offset) == at)
                    .expect("the record");
                let value = record.value.as_deref().expect("a value");
                let hits: Vec<usize> = export
                    .windows(value.len())
                    .enumerate()
                    .filter_map(|(i, w)| (w == value).then_some(i))
                    .collect();
                assert_eq!(hits.len(), 1, "the value appears once in the export");
                let mut bytes = export.clone();
                bytes[hits[0] + byte] ^= 0x01;
                let path = original.dir.path().join(format!("{}.avro", case.name));
                std::fs::write(&path, bytes).expect("written");
                path
            }
            tamper => original.write_file(&tamper.apply(&original.log), case.name),
        };
        missed.extend(caught(&case, "file", &original.verify_file(&path)));
    }
    assert_none_missed(&missed);

    // The Kafka timestamp is in the file but not in any record: moving it
    // changes nothing verify compares (docs/contract.md §6.3 says so).
    let victim = original.victim();
    let retimed = original.records_of(&victim)[1];
    let path = original.write_file(
        &Tamper::Retime {
            at: (retimed.partition, retimed.offset),
        }
        .apply(&original.log),
        "retimed",
    );
    let (code, report) = original.verify_file(&path);
    assert_eq!(code, Some(0), "a timestamp is not folded:\n{report}");

    // The last record of a partition: the export's header claims the range
    // up to the end of the log, which held it.
    let tail = original.tail();
    let path = original.write_file(&Tamper::Delete { at: tail }.apply(&original.log), "tail");
    let (code, report) = original.verify_file(&path);
    assert_eq!(code, Some(1), "{report}");
    assert!(
        report.contains("is missing: the projector folded it from"),
        "{report}"
    );

    // The header is not trusted blindly: one that claims less than the
    // file holds (its end lowered to hide the records after it from the
    // claim) is an input error naming partition and offset.
    let (_, metadata) = original.export_metadata();
    let mut header: serde_json::Value = serde_json::from_slice(&metadata).expect("json");
    let (partition, offset) = tail;
    let ranges = header["ranges"].as_array_mut().expect("ranges");
    let range = ranges
        .iter_mut()
        .find(|r| r["partition"].as_i64() == Some(i64::from(partition)))
        .expect("the tail's partition");
    range["end"] = serde_json::json!(offset);
    let path = original.write_file_with(
        &original.log,
        "header-end-lowered",
        Some(serde_json::to_vec(&header).expect("json")),
    );
    let (code, report) = original.verify_file(&path);
    assert_eq!(code, Some(2), "{report}");
    assert!(
        report.contains(&format!(
            "partition {partition} offset {offset}: outside the export header's range"
        )),
        "{report}"
    );

    // Without a header nothing shows where the ranges end: the untouched
    // records verify but the report says completeness is not proven, and
    // a record taken from the middle still leaves a gap, which fails.
    let path = original.write_file_with(&original.log, "no-header", None);
    let (code, report) = original.verify_file(&path);
    assert_eq!(code, Some(0), "{report}");
    assert!(report.contains("COMPLETENESS NOT PROVEN"), "{report}");
    assert!(
        !report
            .lines()
            .any(|l| l.starts_with("verify ") && l.ends_with("; ok")),
        "{report}"
    );
    let second = original.records_of(&victim)[1];
    let at = (second.partition, second.offset);
    let path = original.write_file_with(
        &Tamper::Delete { at }.apply(&original.log),
        "no-header-delete-middle",
        None,
    );
    let (code, report) = original.verify_file(&path);
    assert_eq!(code, Some(1), "{report}");
    assert!(
        report.contains(&format!(
            "GAP       partition {}: no record at offset {} inside the range",
            at.0, at.1
        )),
        "{report}"
    );

    original.projector.stop();
    original.projector.wait().await.expect("stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tamper_of_a_topic_copy_fails_verify_naming_instance_and_entry() {
    let original = Original::build().await;

    // Control: an untouched copy holds the same records at the same
    // offsets (write_topic asserts the offsets) and verifies.
    let copy = original
        .write_topic(&Tamper::Untouched.apply(&original.log), "untouched")
        .await;
    let verdict = original.verify_topic(&copy);
    assert_verified("topic", &verdict);
    assert!(
        verdict.1.contains("checkpoint: digest equal"),
        "{}",
        verdict.1
    );
    // --to-checkpoint reads each partition up to the checkpoint: the
    // digest of a projector that is not at the log's end compares too.
    let mut input = kafka_flags(&original.args.brokers, &copy);
    input.push(format!("--verify-topic={}", original.args.log_topic));
    input.push("--to-checkpoint".to_owned());
    let verdict = original.verify(&input);
    assert_verified("topic --to-checkpoint", &verdict);
    assert!(
        verdict.1.contains("checkpoint: digest equal"),
        "{}",
        verdict.1
    );
    let copied: Vec<Rec> = read_topic(&original.args, &copy)
        .iter()
        .map(|m| Rec {
            partition: m.partition(),
            offset: m.offset(),
            timestamp: m.timestamp().to_millis(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
        })
        .collect();
    let mut copied = copied;
    copied.sort_by_key(|r| (r.partition, r.offset));
    assert_eq!(copied, original.log, "the copy is the same log");

    let mut missed = Vec::new();
    for case in original.cases().await {
        let topic = original
            .write_topic(&case.tamper.apply(&original.log), case.name)
            .await;
        missed.extend(caught(&case, "topic", &original.verify_topic(&topic)));
    }
    assert_none_missed(&missed);

    // The limit, documented in docs/contract.md §6.3: a copy without the
    // last record of a partition is, record for record, the log as it was
    // before that record was written. Nothing in it differs from what the
    // projector folded (which may simply have folded more), so it verifies
    // on the prefix. An export claims its ranges and is caught (below).
    let tail = original.tail();
    let topic = original
        .write_topic(&Tamper::Delete { at: tail }.apply(&original.log), "tail")
        .await;
    let (code, report) = original.verify_topic(&topic);
    assert_eq!(
        code,
        Some(0),
        "a tail-less copy is an earlier copy:\n{report}"
    );
    // What it does say: the copy ends before the projector's checkpoint.
    let (partition, offset) = tail;
    assert!(
        report.contains(&format!(
            "digest not compared (partition {partition} is read up to offset {offset}, the checkpoint is at"
        )),
        "{report}"
    );

    original.projector.stop();
    original.projector.wait().await.expect("stops cleanly");
}
