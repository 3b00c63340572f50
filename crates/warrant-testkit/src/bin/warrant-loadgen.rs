//! Fill a topic with the realistic mix, for the benchmarks in scripts/.
//!
//! `warrant-loadgen --events 1000000 --log-topic bench.log` produces whole
//! instances (proposal, two signals, two approvals, a claim, a report),
//! interleaved, through Warrant's own producer (acks=all, idempotent);
//! `--instances N` spreads them over N instances instead.

use std::time::Instant;

use anyhow::Context;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(about = "Produce the realistic event mix to a Kafka topic (benchmarks only).")]
struct Args {
    #[command(flatten)]
    kafka: warrant_kafka::KafkaArgs,
    /// How many events to produce.
    #[arg(long, env = "WARRANT_LOADGEN_EVENTS", default_value_t = 1_000_000)]
    events: usize,
    /// Spread the events over this many instances (at least seven events
    /// each; more become policy signals reported again while authorized,
    /// which do not grow the state) [default: seven events an instance].
    #[arg(long, env = "WARRANT_LOADGEN_INSTANCES", value_name = "N")]
    instances: Option<usize>,
    /// Create the topics first (log with this many partitions).
    #[arg(long, env = "WARRANT_LOADGEN_PARTITIONS", default_value_t = 3)]
    partitions: i32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    args.kafka
        .create_topics(args.partitions)
        .await
        .context("creating topics")?;
    let started = Instant::now();
    let instances = args
        .instances
        .unwrap_or(args.events.div_ceil(warrant_testkit::BULK_PER_INSTANCE));
    let positions = warrant_testkit::produce(
        &args.kafka,
        warrant_testkit::bulk_history_over(args.events, instances),
    )
    .await
    .context("producing")?;
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "produced {} events to {} in {seconds:.1} s ({:.0} events/s)",
        positions.len(),
        args.kafka.log_topic,
        positions.len() as f64 / seconds
    );
    Ok(())
}
