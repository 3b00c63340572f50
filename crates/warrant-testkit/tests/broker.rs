//! The plumbing the end-to-end tests stand on, against the real local broker.

use std::collections::{BTreeMap, BTreeSet};

use warrant_kafka::{partitions_of, watermarks};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_records_land_in_order_one_partition_per_instance() {
    let args = warrant_testkit::fresh_topics(3)
        .await
        .expect("broker and topics");
    let script = warrant_testkit::scripted_history(30);
    let positions = warrant_testkit::produce(&args, script.records.clone())
        .await
        .expect("produced");
    assert_eq!(positions.len(), script.records.len());

    // Every record of an instance is in one partition, in the order sent.
    let mut seen: BTreeMap<Vec<u8>, (i32, i64)> = BTreeMap::new();
    for (record, (partition, offset)) in script.records.iter().zip(&positions) {
        let key = record.key.clone().unwrap_or_default();
        if let Some((known_partition, last_offset)) = seen.insert(key, (*partition, *offset)) {
            assert_eq!(known_partition, *partition);
            assert!(last_offset < *offset);
        }
    }

    // The records under keys that are not instance ids land in two
    // partitions, as `scripted_history` promises.
    let stray: BTreeSet<i32> = script
        .records
        .iter()
        .zip(&positions)
        .filter(|(record, _)| warrant_authority::instance_key(record.key.as_deref()).is_none())
        .map(|(_, (partition, _))| *partition)
        .collect();
    assert_eq!(stray, BTreeSet::from([1, 2]));

    let consumer = args.assigned_consumer().expect("consumer");
    let partitions = partitions_of(&consumer, &args.log_topic).expect("metadata");
    assert_eq!(partitions, vec![0, 1, 2]);
    let total: i64 = partitions
        .iter()
        .map(|p| {
            let (low, high) = watermarks(&consumer, &args.log_topic, *p).expect("watermarks");
            high - low
        })
        .sum();
    assert_eq!(total, script.records.len() as i64);
}
