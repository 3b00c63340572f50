//! `warrant-replay`: the command line over the `warrant_replay` library.
//! `--help` is the manual.

// Errors end a run (at most once per process), so their size never matters
// on a hot path; boxing every Kafka error would only add noise.
#![allow(clippy::result_large_err)]

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use warrant_kafka::KafkaArgs;
use warrant_replay::{
    export, replay, text, verify, ExportOptions, Keep, RangeSpec, Replay, ReplayOptions, Source,
    VerifyOptions, VerifyReport,
};
use warrant_runtime::{init_tracing, LogFormat};

/// mimalloc instead of glibc malloc: under the fold's allocate-and-free
/// churn glibc keeps trimming and refaulting its per-thread heaps, which
/// cost as much as the fold itself on 1M events.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ABOUT: &str = "Replay Warrant's log for auditors: rebuild execution records, verify a projector, export ranges.";

const MANUAL: &str = "\
Replay Warrant's log for auditors: rebuild execution records, verify a projector, export ranges.

warrant-replay reads a range of the authoritative log (--log-topic, default
warrant.log) or an export file, folds it with the same code as the projector
and prints the execution record of every instance (docs/contract.md §7).

RANGES are half-open per partition: --from is the first offset read, --to the
first offset NOT read (like a high watermark or a projector checkpoint offset).
Without --partition they apply to every partition. --from-time/--to-time take
RFC 3339 (2026-11-18T08:26:40Z, 2026-11-18T09:26:40+01:00, 2026-11-18) or epoch
milliseconds and select by Kafka record timestamp (offsets_for_times). By
default the whole log is read, up to the high watermarks seen at start, so a
replay always ends. Partitions are assigned directly: no consumer group, no
commits.

PARTIAL instances: when the range starts after the log does, an instance whose
first event in the range is not its (applied) proposal may have earlier events
outside the range. Its record is marked partial (\"partial\": true in JSON, a
PARTIAL line in text). --verify still asks the projector: PARTIAL (not a
failure) when the projector's history starts before the range, DIFFERS when it
starts inside the range (replay never saw that record), MISSING when the
projector does not know the instance.

GAPS: Warrant's writers are not transactional and the log is never compacted,
so a range's offsets are contiguous. An offset with no record (a transaction
marker standing in for a deleted record, a record taken out of a file) is
printed as a GAP line (\"gaps\" in JSON) and fails --verify; export reports
the gaps it wrote and exits 1. A partition whose last stable offset is behind
its high watermark (an open transaction) is warned about on stderr
(\"open_transactions\" in JSON): records after it are not read.

FILES are input: the export header must hold together and every record must
lie in the ranges it claims, with offsets growing per partition, or the file is
an input error (exit 2). A file without a header, with an inexact one, or
narrowed by time cannot prove that nothing is missing at the ends of its
ranges: --verify then says COMPLETENESS NOT PROVEN instead of ok (and
\"completeness_not_proven\" in JSON) but exits 0.

--verify URL compares every replayed instance with the projector at URL
(GET /v1/instances/{id}, GET /v1/checkpoint): entry by entry on the entries the
range holds (hash and log position; the projector may have folded more), and
the checkpoint digest when the range covers every partition from the log's start
to exactly the checkpoint's offsets. The projector having more entries is a
difference when its next entry comes from a record inside the range: the range
held that record and replay did not fold it. It compares what the log and the
hash chain establish (hashes, positions, statuses, decisions, grants, effects),
never the wording of a refusal's or violation's reason, which a newer build may
phrase differently. Only differences are listed, naming the instance and the
first entry that differs, then a summary line; it goes to stdout (to stderr
with --format json/ndjson, whose document then carries it). To verify a copy
of the log under another name (a mirror, a restored backup) against the
projector of the original, pass --verify-topic ORIGINAL so the checkpoint
digest is compared too. --to-checkpoint (with --verify) reads each partition up
to the projector's checkpoint offset, so a live projector's digest can be
compared; only such a range, from the log start, proves that no instance is
missing (a whole instance removed from a partial range leaves nothing to
compare). Text output escapes control characters in every string from the log.

SHARDS: a projector sharded by partition (warrant-projector --partitions) is
verified with every shard's URL (--verify URL1,URL2 or the flag repeated).
Each shard's checkpoint says which partitions it folds; each instance is
compared with the shard of its partition, each shard's digest with replay's
over its partitions (a line per shard, then the composed checkpoint), and
--to-checkpoint reads each partition up to its shard's offset. A partition
folded by two shards given is a usage error; one that no shard given folds
fails the comparison (UNOWNED), so some shards are never taken for the log.

MEMORY follows what is printed. --format none (the default with --verify)
keeps each instance's state (serialized once its status is final), and with
--verify a 32-byte digest of every entry's hash and position: memory per
instance, whatever the number of events. An instance whose digest does not match the projector's is read
again, with the other such instances only and every entry kept, to name the
entry. --format text/json/ndjson print whole records in id order after the
range is read, so they keep every entry of every instance: memory grows with
the events. Every event id is remembered for the DUPLICATE check: a filter
of 2 bytes an event in memory, the ids (24 bytes an event) in a file under
--spill-dir, in a directory of its own removed at exit.

--check-rules resolves every proposal in the range again against the ruleset
the rulesets topic (--rulesets-topic) holds under the proposal's recorded
digest (the text must hash to it) and lists every instance whose recorded
requirement, or resolution trace, differs: proof that intake applied the
published rules. Kafka sources only; exit 1 if any differs.

export --out FILE writes the range to an Avro object container file (schema
warrant.LogRecord, schemas/log_record.avsc, codec null) that any Avro tool can
read; values are kept byte for byte. --file FILE replays such a file instead of
Kafka; every other flag works the same.

EXIT CODES: 0 ok (every comparable instance verified; also when completeness
is not proven, which the report says), 1 verification found a difference or a
gap, or --check-rules found a requirement that differs (export: the range has
gaps), 2 usage, input or I/O error.

EXAMPLES:
  warrant-replay --instance 6f1c2b9e-4d0a-4c7e-9a51-0d2f3b8c7e11
  warrant-replay --format ndjson --from-time 2026-11-01 --to-time 2026-12-01
  warrant-replay --verify http://127.0.0.1:8081 --to-checkpoint
  warrant-replay --verify http://projector-0:8081,http://projector-1:8081 --to-checkpoint
  warrant-replay export --out log-2026-11.avro --from-time 2026-11-01 --to-time 2026-12-01
  warrant-replay --file log-2026-11.avro --verify http://127.0.0.1:8081";

#[derive(Debug, Parser)]
#[command(
    name = "warrant-replay",
    version,
    about = ABOUT,
    long_about = MANUAL,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    replay: ReplayArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a range of the log to an Avro object container file.
    Export(ExportArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// A readable report per instance (keeps every entry: memory per event).
    Text,
    /// One JSON document: source, ranges, summary, records (and
    /// verification); keeps every entry: memory per event.
    Json,
    /// One record per line, in id order after the range (keeps every entry:
    /// memory per event).
    Ndjson,
    /// No records (the summary and any verification only): memory per
    /// instance, not per event.
    None,
}

/// Flags shared by replay and export.
#[derive(Debug, Args)]
struct Common {
    /// Read this export file instead of Kafka.
    #[arg(
        long,
        env = "WARRANT_REPLAY_FILE",
        value_name = "FILE",
        help_heading = "Input"
    )]
    file: Option<PathBuf>,

    /// Only these partitions (repeat or comma-separate); default all.
    #[arg(
        long = "partition",
        env = "WARRANT_REPLAY_PARTITIONS",
        value_name = "N",
        value_delimiter = ',',
        help_heading = "Range"
    )]
    partitions: Vec<i32>,
    /// First offset to read (inclusive) on each selected partition.
    #[arg(
        long,
        env = "WARRANT_REPLAY_FROM",
        value_name = "OFFSET",
        conflicts_with = "from_time",
        help_heading = "Range"
    )]
    from: Option<i64>,
    /// First offset NOT to read (exclusive); default the high watermark at start.
    #[arg(
        long,
        env = "WARRANT_REPLAY_TO",
        value_name = "OFFSET",
        conflicts_with = "to_time",
        help_heading = "Range"
    )]
    to: Option<i64>,
    /// Start at the first record with a timestamp at/after TIME (RFC 3339 or epoch ms).
    #[arg(
        long,
        env = "WARRANT_REPLAY_FROM_TIME",
        value_name = "TIME",
        help_heading = "Range"
    )]
    from_time: Option<String>,
    /// Stop before the first record with a timestamp at/after TIME.
    #[arg(
        long,
        env = "WARRANT_REPLAY_TO_TIME",
        value_name = "TIME",
        help_heading = "Range"
    )]
    to_time: Option<String>,

    /// Fail when no record arrives for this many seconds.
    #[arg(
        long,
        env = "WARRANT_REPLAY_STALL_TIMEOUT",
        value_name = "SECONDS",
        default_value_t = 30,
        help_heading = "Input"
    )]
    stall_timeout: u64,
    /// No progress lines and no info logs.
    #[arg(long, short, env = "WARRANT_REPLAY_QUIET")]
    quiet: bool,
    /// Format of the logs on stderr (filter with RUST_LOG).
    #[arg(long, env = "WARRANT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    #[command(flatten, next_help_heading = "Kafka")]
    kafka: KafkaArgs,
}

impl Common {
    fn source(&self) -> Source {
        match &self.file {
            Some(path) => Source::File(path.clone()),
            None => Source::Kafka(self.kafka.clone()),
        }
    }

    fn range(&self) -> Result<RangeSpec, warrant_replay::Error> {
        RangeSpec::from_flags(
            &self.partitions,
            self.from,
            self.to,
            self.from_time.as_deref(),
            self.to_time.as_deref(),
        )
    }
}

#[derive(Debug, Args)]
struct ReplayArgs {
    #[command(flatten)]
    common: Common,

    /// Only this instance: a UUID, quarantine-<partition> (records whose key
    /// is not an instance id), or quarantine (every partition's).
    #[arg(
        long,
        env = "WARRANT_REPLAY_INSTANCE",
        value_name = "ID",
        help_heading = "Output"
    )]
    instance: Option<String>,
    /// How to print records [default: text, or none with --verify].
    #[arg(
        long,
        env = "WARRANT_REPLAY_FORMAT",
        value_enum,
        help_heading = "Output"
    )]
    format: Option<Format>,

    /// Resolve every proposal again against the ruleset the rulesets topic
    /// holds under its recorded digest; exit 1 if any recorded requirement
    /// differs (proof that intake applied the published rules).
    #[arg(long, env = "WARRANT_REPLAY_CHECK_RULES", help_heading = "Verify")]
    check_rules: bool,
    /// Compare with the projector at this base URL (e.g. http://127.0.0.1:8081).
    /// For a projector sharded by partition, every shard's URL: repeat the
    /// flag or separate them with commas; each instance is compared with
    /// the shard that folds its partition.
    #[arg(
        long,
        env = "WARRANT_REPLAY_VERIFY",
        value_name = "URL",
        value_delimiter = ',',
        help_heading = "Verify"
    )]
    verify: Vec<String>,
    /// Requests to the projector in flight at once.
    #[arg(
        long,
        env = "WARRANT_REPLAY_VERIFY_CONCURRENCY",
        value_name = "N",
        default_value_t = 8,
        help_heading = "Verify"
    )]
    verify_concurrency: usize,
    /// Timeout of each request to the projector.
    #[arg(
        long,
        env = "WARRANT_REPLAY_VERIFY_TIMEOUT",
        value_name = "SECONDS",
        default_value_t = 30,
        help_heading = "Verify"
    )]
    verify_timeout: u64,
    /// Read each partition up to the projector's checkpoint offset (fetched
    /// first), so a live projector's checkpoint digest can be compared.
    #[arg(
        long,
        env = "WARRANT_REPLAY_TO_CHECKPOINT",
        requires = "verify",
        conflicts_with_all = ["to", "to_time"],
        help_heading = "Verify"
    )]
    to_checkpoint: bool,
    /// The topic the projector folds, when the log read is a copy of it
    /// under another name (a mirror, a restored backup), so the checkpoint
    /// digest is compared [default: the topic read, or the export's].
    #[arg(
        long,
        env = "WARRANT_REPLAY_VERIFY_TOPIC",
        value_name = "TOPIC",
        help_heading = "Verify"
    )]
    verify_topic: Option<String>,

    /// Directory for the duplicate check's spill file (24 bytes per event,
    /// in a directory of its own removed at exit) [default: the system's
    /// temporary directory].
    #[arg(
        long,
        env = "WARRANT_REPLAY_SPILL_DIR",
        value_name = "DIR",
        help_heading = "Input"
    )]
    spill_dir: Option<PathBuf>,

    /// Kafka reader threads, at most one per partition (0 = two per CPU).
    #[arg(
        long,
        env = "WARRANT_REPLAY_THREADS",
        value_name = "N",
        default_value_t = 0,
        help_heading = "Input"
    )]
    threads: usize,
}

#[derive(Debug, Args)]
struct ExportArgs {
    /// The Avro container file to write (created atomically).
    #[arg(long, env = "WARRANT_REPLAY_OUT", value_name = "FILE")]
    out: PathBuf,
    #[command(flatten)]
    common: Common,
}

fn init_logs(common: &Common) {
    init_tracing(
        common.log_format,
        if common.quiet { "warn" } else { "info" },
    );
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Export(args)) => run_export(&args),
        None => run_replay(&cli.replay),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("warrant-replay: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn run_export(args: &ExportArgs) -> anyhow::Result<ExitCode> {
    init_logs(&args.common);
    let options = ExportOptions {
        source: args.common.source(),
        range: args.common.range()?,
        out: args.out.clone(),
        stall_timeout: Duration::from_secs(args.common.stall_timeout),
        progress: !args.common.quiet,
    };
    let started = Instant::now();
    let summary = export(&options)?;
    eprintln!(
        "exported {} records of {} ({} partition(s)) to {} in {:.1} s",
        summary.records,
        summary.metadata.source,
        summary.metadata.ranges.len(),
        summary.out.display(),
        started.elapsed().as_secs_f64()
    );
    for gap in &summary.gaps {
        eprintln!("GAP       {gap} (the log's offsets are contiguous: it was rewritten)");
    }
    // The file is kept (it is the evidence), but the range was not a log
    // Warrant wrote.
    if !summary.gaps.is_empty() {
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn run_replay(args: &ReplayArgs) -> anyhow::Result<ExitCode> {
    let common = &args.common;
    init_logs(common);
    let format = args.format.unwrap_or(if !args.verify.is_empty() {
        Format::None
    } else {
        Format::Text
    });
    let keep = match (format, args.verify.is_empty()) {
        (Format::Text | Format::Json | Format::Ndjson, _) => Keep::History,
        (Format::None, false) => Keep::Trail,
        (Format::None, true) => Keep::State,
    };
    let mut range = common.range()?;
    let verify_options = (!args.verify.is_empty()).then(|| VerifyOptions {
        urls: args.verify.clone(),
        concurrency: args.verify_concurrency,
        timeout: Duration::from_secs(args.verify_timeout),
        projector_topic: args.verify_topic.clone(),
    });
    let runtime = match &verify_options {
        None => None,
        Some(_) => Some(
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the HTTP client runtime")?,
        ),
    };
    if let (true, Some(runtime), Some(verify_options)) =
        (args.to_checkpoint, &runtime, &verify_options)
    {
        let checkpoint = runtime.block_on(warrant_replay::verify::checkpoint(verify_options))?;
        // Reading up to another topic's offsets would compare nothing.
        if common.file.is_none() {
            let topic = args
                .verify_topic
                .as_deref()
                .unwrap_or(&common.kafka.log_topic);
            if checkpoint.topic != topic {
                anyhow::bail!(
                    "--to-checkpoint: the projector folds topic {}, not {topic} (pass --verify-topic if the log read is a copy of it)",
                    checkpoint.topic
                );
            }
        }
        let mut ends = std::collections::BTreeMap::new();
        for (partition, next) in &checkpoint.partitions {
            let partition: i32 = partition.parse().with_context(|| {
                format!("--to-checkpoint: the checkpoint names partition {partition:?}")
            })?;
            ends.insert(partition, *next);
        }
        range.to_offsets = Some(ends);
    }
    let options = ReplayOptions {
        source: common.source(),
        range,
        keep,
        instance: args.instance.clone(),
        threads: args.threads,
        stall_timeout: Duration::from_secs(common.stall_timeout),
        progress: !common.quiet,
        spill_dir: args.spill_dir.clone(),
    };
    let started = Instant::now();
    let replayed = replay(&options)?;
    let fold_time = started.elapsed();

    let report = match (&runtime, &verify_options) {
        (Some(runtime), Some(verify_options)) => {
            let mut report = runtime.block_on(verify(&replayed, verify_options))?;
            // Only the trails were kept: fold the instances that differ
            // again, with every entry, to name the entry.
            let unlocated = report.unlocated();
            if !unlocated.is_empty() {
                let ids: Vec<String> = unlocated.into_iter().map(|(id, _)| id).collect();
                let again = warrant_replay::refold_chains(&options, &replayed, &ids)?;
                report.locate(runtime.block_on(verify(&again, verify_options))?);
            }
            Some(report)
        }
        _ => None,
    };

    // Every signed decision is checked offline: its proof (the fold did)
    // and its key against the reviewer directory published before it.
    let directories = match &options.source {
        // Nothing signed, nothing to tie to a reviewer: no need to read them.
        _ if replayed.signed_decisions.is_empty() => Some(Vec::new()),
        Source::Kafka(kafka) => Some(
            warrant_replay::kafka::read_directories(kafka)
                .context("cannot read the reviewer directories (--principals-topic)")?,
        ),
        Source::File(_) => None,
    };
    let signatures = warrant_replay::signatures::audit(
        &replayed.signed_decisions,
        replayed.attested_decisions,
        directories.as_deref(),
    );

    let stdout = std::io::stdout();
    let mut out = BufWriter::with_capacity(1 << 16, stdout.lock());
    match write_output(&mut out, format, &replayed, report.as_ref()).and_then(|()| out.flush()) {
        Ok(()) => {}
        // `| head` closed the pipe: the reader has what it wanted.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(e) => return Err(warrant_replay::Error::Output(e).into()),
    }
    drop(out);

    let summary = replayed.summary();
    eprintln!("{summary} in {:.2} s", fold_time.as_secs_f64());
    // With --verify the report lists them (and fails); without, they are
    // still evidence an auditor must see.
    if report.is_none() {
        for gap in &replayed.gaps {
            eprintln!("GAP       {gap} (the log's offsets are contiguous: it was rewritten)");
        }
    }
    if let Err(error) = signatures.write_text(&mut std::io::stderr().lock()) {
        tracing::warn!(error = %error, "cannot print the signature audit");
    }
    if args.instance.is_some() && replayed.instances.is_empty() {
        eprintln!("warrant-replay: no record of that instance in the range");
    }
    let rules = if args.check_rules {
        let Source::Kafka(kafka) = &options.source else {
            anyhow::bail!("--check-rules reads the rulesets topic: replay from Kafka, not a file");
        };
        let published = warrant_replay::kafka::read_rulesets(kafka)
            .context("cannot read the published rulesets (--rulesets-topic)")?;
        let records = replayed
            .instances
            .iter()
            .map(|instance| instance.state_record())
            .collect::<Result<Vec<_>, _>>()?;
        let report = warrant_replay::rules::check(
            records
                .iter()
                .filter_map(|r| r.proposal.as_ref().map(|p| (r.instance_id.as_str(), p))),
            &published,
        );
        if let Err(error) = report.write_text(&mut std::io::stderr().lock()) {
            tracing::warn!(error = %error, "cannot print the rules check");
        }
        Some(report)
    } else {
        None
    };
    let code = match &report {
        Some(report) if report.failed() => ExitCode::from(1),
        _ if signatures.failed() => ExitCode::from(1),
        _ if rules.as_ref().is_some_and(|r| r.failed()) => ExitCode::from(1),
        _ => ExitCode::SUCCESS,
    };
    // Freeing a million instance states one by one takes longer than the
    // exit that follows; the operating system reclaims them at once.
    std::mem::forget(replayed);
    Ok(code)
}

fn write_output(
    out: &mut dyn Write,
    format: Format,
    replayed: &Replay,
    report: Option<&VerifyReport>,
) -> std::io::Result<()> {
    let json_error = std::io::Error::other;
    match format {
        Format::Text => {
            for (index, record) in replayed.records().enumerate() {
                if index > 0 {
                    writeln!(out)?;
                }
                out.write_all(text::render(&record).as_bytes())?;
            }
        }
        Format::Ndjson => {
            for record in replayed.records() {
                serde_json::to_writer(&mut *out, &record).map_err(json_error)?;
                out.write_all(b"\n")?;
            }
        }
        Format::Json => {
            // Streamed by hand so the records are never all in memory as JSON.
            out.write_all(b"{\"source\":")?;
            serde_json::to_writer(&mut *out, &replayed.source).map_err(json_error)?;
            out.write_all(b",\"topic\":")?;
            serde_json::to_writer(&mut *out, &replayed.topic).map_err(json_error)?;
            out.write_all(b",\"ranges\":")?;
            serde_json::to_writer(&mut *out, &replayed.ranges).map_err(json_error)?;
            out.write_all(b",\"open_transactions\":")?;
            serde_json::to_writer(&mut *out, &replayed.open_transactions).map_err(json_error)?;
            out.write_all(b",\"gaps\":")?;
            serde_json::to_writer(&mut *out, &replayed.gaps).map_err(json_error)?;
            out.write_all(b",\"summary\":")?;
            serde_json::to_writer(&mut *out, &replayed.summary()).map_err(json_error)?;
            if let Some(report) = report {
                out.write_all(b",\"verification\":")?;
                serde_json::to_writer(&mut *out, report).map_err(json_error)?;
            }
            out.write_all(b",\"records\":[")?;
            for (index, record) in replayed.records().enumerate() {
                if index > 0 {
                    out.write_all(b",")?;
                }
                serde_json::to_writer(&mut *out, &record).map_err(json_error)?;
            }
            out.write_all(b"]}\n")?;
        }
        Format::None => {}
    }
    if let Some(report) = report {
        match format {
            Format::Text | Format::None => {
                if format == Format::Text {
                    writeln!(out)?;
                }
                report.write_text(out)?;
            }
            Format::Json | Format::Ndjson => {
                let stderr = std::io::stderr();
                report.write_text(&mut stderr.lock())?;
            }
        }
    }
    Ok(())
}
