//! `warrant`: the reviewers' command line over `warrant_client`. `--help`
//! is the manual.

mod decide;
mod render;
mod rules;

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use serde_json::json;
use warrant_authority::{Effect, ExecutionRecord, Outcome};
use warrant_client::{
    unix_now_millis, Client, DecisionReceipt, ErrorKind, KeyError, QueueQuery, Reader, ReviewerKey,
};
use warrant_replay::ReplayedRecord;
use warrant_schema::DecisionVerdict;

const ABOUT: &str = "Warrant for reviewers: make a key, see what awaits a decision, read a record, and approve, reject or override it with your own signature.";

const MANUAL: &str = "\
Warrant for reviewers: make a key, see what awaits a decision, read a record,
and approve, reject or override it with your own signature.

Every decision is signed with your own Ed25519 key, and the log keeps the
signed bytes and the signature: anyone replaying the log can check that you,
not intake, decided, and on exactly which action (docs/signatures.md).

GETTING STARTED
  warrant keygen --out ~/.config/warrant/erin.key --principal erin
      Writes a new private key file (JSON: scheme, key_id, public_key and the
      secret key in hex; mode 0600; an existing file is never overwritten)
      and prints the line for your entry in the principals file,
      keys: [\"ed25519:<hex>\"] (docs/identities.md). An operator adds it and
      reloads intake (SIGHUP). Keep the key file to yourself.
  export WARRANT_KEY_FILE=~/.config/warrant/erin.key
  warrant whoami            intake knows your key: who you are, your roles
  warrant queue             what awaits a decision, its age and time left
  warrant show ID           an execution record, as warrant-replay prints it
  warrant approve ID --justification \"heap profile confirms the leak\"

DECIDING
  approve, reject and override fetch the record, show the action, its digest
  and the rule, and ask you to confirm on the terminal. Then they sign that
  digest, your verdict, justification and scope, timestamped now, and post
  it. Intake refuses a signature over any other digest than the instance's,
  so you can only approve what you were shown. --yes decides without asking;
  without a terminal to ask on, --yes is required. Intake's 202 means the
  decision is on the log; the command then waits (--wait-ms) for the fold
  to apply or refuse it, and says which.
  Scope narrows what your approval allows: --not-after (RFC 3339 or unix
  milliseconds), --max-executions, --constraint KEY=VALUE (repeatable).

READING
  queue, show and whoami open a read-only session by signing a one-time
  challenge with your key, and close it on exit. --token reads with a bearer
  token instead. Decisions never use either: each carries its own signature.

RULES
  warrant rules check FILE
      Loads a ruleset with intake's own loader: prints its version, rule
      count and digest, or the error naming the rule (exit 4).
  warrant rules explain FILE --action '{\"kind\": \"service.restart\", \"target\": \"prod/api\", \"parameters\": {}}'
      Which rule applies and why each earlier one does not (kind, target,
      when false, when error: ...). Pass {\"action\", \"proposer\",
      \"context_refs\"} instead when conditions look at the proposer or the
      context (docs/rules.md). Neither needs intake or a key.
  warrant rules diff OLD NEW --from-log [--from N --to N | --from-time T --to-time T] [--file EXPORT]
      Resolves every proposal of that range of the log (Kafka: --brokers,
      --log-topic; or an export file) under OLD and under NEW, and lists the
      instances whose requirement would differ, grouped by rule change (old
      rule -> new rule, and each field that differs). Exit 0 whatever it
      finds; --json for scripts (docs/operations.md: rolling out a ruleset).

OUTPUT
  --json prints one JSON document on stdout. Errors are one line on stderr
  (a JSON object with --json).

EXIT CODES
  0 done; 1 declined at the prompt, or an unexpected answer; 2 usage (bad
  flags, no terminal to confirm on); 3 authentication (key file unusable;
  key, signature, session or token refused); 4 refused (intake refused the
  request, or the fold refused the decision); 5 unavailable (intake
  unreachable, timed out or failing: try again).

Every flag also reads the WARRANT_* environment variable shown with it.
The HTTP API is crates/warrant-intake/openapi.json and docs/contract.md §6.1.";

#[derive(Debug, Parser)]
#[command(name = "warrant", version, about = ABOUT, long_about = MANUAL)]
struct Cli {
    #[command(flatten, next_help_heading = "Global options")]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Global {
    /// Intake's base URL.
    #[arg(
        long,
        env = "WARRANT_INTAKE_URL",
        default_value = "http://127.0.0.1:8080",
        global = true,
        value_name = "URL"
    )]
    intake_url: String,
    /// Your private key file (from `warrant keygen`): signs sessions and decisions.
    #[arg(long, env = "WARRANT_KEY_FILE", global = true, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// Read (queue, show, whoami) with this bearer token instead of a key's session.
    #[arg(
        long,
        env = "WARRANT_TOKEN",
        global = true,
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    token: Option<String>,
    /// Machine-readable output: one JSON document on stdout, errors as JSON on stderr.
    #[arg(long, env = "WARRANT_JSON", global = true)]
    json: bool,
    /// Give up on each HTTP request after this many milliseconds.
    #[arg(
        long,
        env = "WARRANT_TIMEOUT_MS",
        default_value_t = 10_000,
        global = true,
        value_name = "MS"
    )]
    timeout_ms: u64,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Make a new Ed25519 key file and print the line for the principals file.
    Keygen(KeygenArgs),
    /// Show who intake says you are (checks that your key is registered).
    Whoami,
    /// List what awaits a decision, with its age and the time left.
    Queue(QueueArgs),
    /// Print an instance's execution record (the layout of warrant-replay --format text).
    Show(ShowArgs),
    /// Approve an instance, signed with your key.
    Approve(DecideArgs),
    /// Reject an instance (or revoke its authorization), signed with your key.
    Reject(DecideArgs),
    /// Override: authorize without the quorum or past a DENY, signed with your key.
    Override(DecideArgs),
    /// Try a ruleset file before it ships (no intake needed).
    #[command(subcommand)]
    Rules(RulesCommand),
}

#[derive(Debug, Subcommand)]
enum RulesCommand {
    /// Load and validate a ruleset as intake would; errors name the rule.
    Check {
        /// The ruleset file.
        file: PathBuf,
    },
    /// Which rule applies to an action, and why each earlier rule does not.
    Explain {
        /// The ruleset file.
        file: PathBuf,
        /// The action as JSON ({"kind", "target", "parameters"}), or a
        /// proposal ({"action", "proposer", "context_refs"}) for conditions
        /// on the proposer or the context.
        #[arg(long, value_name = "JSON")]
        action: String,
    },
    /// Which proposals of a range of the log would get a different
    /// requirement under NEW than under OLD, grouped by rule change.
    Diff(Box<DiffArgs>),
}

#[derive(Debug, Args)]
struct DiffArgs {
    /// The ruleset in force (the one the range ran on).
    old: PathBuf,
    /// The ruleset about to ship.
    new: PathBuf,
    /// Resolve the proposals recorded on the log (the only source so far;
    /// required so the command says where its proposals come from).
    #[arg(long, required = true)]
    from_log: bool,
    /// Read an export file (warrant-replay export) instead of Kafka.
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// Only these partitions (repeatable); default all.
    #[arg(long = "partition", value_name = "N")]
    partitions: Vec<i32>,
    /// First offset read (per partition).
    #[arg(long, value_name = "OFFSET")]
    from: Option<i64>,
    /// First offset NOT read (per partition).
    #[arg(long, value_name = "OFFSET")]
    to: Option<i64>,
    /// First record at or after this time (RFC 3339 or epoch milliseconds).
    #[arg(long, value_name = "TIME")]
    from_time: Option<String>,
    /// Stop before the first record at or after this time.
    #[arg(long, value_name = "TIME")]
    to_time: Option<String>,
    #[command(flatten)]
    kafka: warrant_kafka::KafkaArgs,
}

#[derive(Debug, Args)]
struct KeygenArgs {
    /// Where to write the new private key (must not exist yet).
    #[arg(long, env = "WARRANT_KEYGEN_OUT", value_name = "FILE")]
    out: PathBuf,
    /// Your principal, recorded in the key file as a label (intake knows you by the key).
    #[arg(long, env = "WARRANT_PRINCIPAL", value_name = "NAME")]
    principal: Option<String>,
}

#[derive(Debug, Args)]
struct QueueArgs {
    /// Instances in this status.
    #[arg(
        long,
        env = "WARRANT_QUEUE_STATUS",
        default_value = "AWAITING_DECISION",
        value_name = "STATUS"
    )]
    status: String,
    /// Only instances this role may approve or override.
    #[arg(long, env = "WARRANT_QUEUE_ROLE", value_name = "ROLE")]
    role: Option<String>,
    /// At most this many instances (1 to 200).
    #[arg(
        long,
        env = "WARRANT_QUEUE_LIMIT",
        default_value_t = 50,
        value_name = "N"
    )]
    limit: usize,
    /// Start after this instance id (the `more:` line of the previous page).
    #[arg(long, env = "WARRANT_QUEUE_AFTER", value_name = "ID")]
    after: Option<String>,
}

#[derive(Debug, Args)]
struct ShowArgs {
    /// The instance id.
    id: String,
}

#[derive(Debug, Args)]
struct DecideArgs {
    /// The instance id.
    id: String,
    /// Why: recorded on the log with your decision (not blank for an override).
    #[arg(long, env = "WARRANT_JUSTIFICATION", value_name = "TEXT")]
    justification: String,
    /// Your approval is valid until TIME (RFC 3339, or unix milliseconds).
    #[arg(long, env = "WARRANT_NOT_AFTER", value_name = "TIME")]
    not_after: Option<String>,
    /// At most N executions on your approval.
    #[arg(
        long,
        env = "WARRANT_MAX_EXECUTIONS",
        value_name = "N",
        value_parser = clap::value_parser!(i32).range(1..)
    )]
    max_executions: Option<i32>,
    /// A constraint KEY=VALUE on the execution (repeat for more; the variable holds one).
    #[arg(
        long = "constraint",
        env = "WARRANT_CONSTRAINT",
        value_name = "KEY=VALUE"
    )]
    constraints: Vec<String>,
    /// A reference to evidence you relied on (repeat for more; the variable holds one).
    #[arg(long = "evidence", env = "WARRANT_EVIDENCE", value_name = "URI")]
    evidence: Vec<String>,
    /// Decide without asking for confirmation (required without a terminal).
    #[arg(long, short = 'y', env = "WARRANT_YES")]
    yes: bool,
    /// Wait this long for the fold's verdict on the decision (0: do not wait).
    #[arg(
        long,
        env = "WARRANT_WAIT_MS",
        default_value_t = 10_000,
        value_name = "MS"
    )]
    wait_ms: u64,
}

/// How a run ends, as an exit code (the manual's EXIT CODES).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Failure = 1,
    Usage = 2,
    Auth = 3,
    Refused = 4,
    Unavailable = 5,
}

impl Class {
    fn name(self) -> &'static str {
        match self {
            Class::Failure => "failure",
            Class::Usage => "usage",
            Class::Auth => "auth",
            Class::Refused => "refused",
            Class::Unavailable => "unavailable",
        }
    }
}

/// A failure the CLI itself names, with its class.
#[derive(Debug)]
struct Failure {
    class: Class,
    message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

fn fail(class: Class, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Failure {
        class,
        message: message.into(),
    })
}

/// The exit class and API code of an error, from the first cause that has one.
fn classify(error: &anyhow::Error) -> (Class, Option<String>) {
    for cause in error.chain() {
        if let Some(failure) = cause.downcast_ref::<Failure>() {
            return (failure.class, None);
        }
        if let Some(client) = cause.downcast_ref::<warrant_client::Error>() {
            let class = match client.kind() {
                ErrorKind::Usage => Class::Usage,
                ErrorKind::Auth => Class::Auth,
                ErrorKind::Refused => Class::Refused,
                ErrorKind::Unavailable => Class::Unavailable,
                ErrorKind::Other => Class::Failure,
            };
            return (class, client.code().map(str::to_owned));
        }
        if let Some(key) = cause.downcast_ref::<KeyError>() {
            // Classed as the client classes it when it carries one.
            let class = match key {
                KeyError::Exists { .. } => Class::Usage,
                _ => Class::Auth,
            };
            return (class, None);
        }
    }
    (Class::Failure, None)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.global.json;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("warrant: cannot start: {error}");
            return ExitCode::from(Class::Failure as u8);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let (class, code) = classify(&error);
            // One line, whatever the causes' own messages contain.
            let message = format!("{error:#}").replace('\n', " ");
            if json {
                let line = json!({
                    "error": { "class": class.name(), "code": code, "message": message },
                    "exit": class as u8,
                });
                eprintln!("{line}");
            } else {
                eprintln!("warrant: {message}");
            }
            ExitCode::from(class as u8)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let global = &cli.global;
    match &cli.command {
        Command::Keygen(args) => keygen(global, args),
        Command::Whoami => whoami(global).await,
        Command::Queue(args) => queue(global, args).await,
        Command::Show(args) => show(global, args).await,
        Command::Approve(args) => decide(global, DecisionVerdict::Approve, args).await,
        Command::Reject(args) => decide(global, DecisionVerdict::Reject, args).await,
        Command::Override(args) => decide(global, DecisionVerdict::Override, args).await,
        Command::Rules(RulesCommand::Check { file }) => rules::check(file, global.json),
        Command::Rules(RulesCommand::Explain { file, action }) => {
            rules::explain(file, action, global.json)
        }
        Command::Rules(RulesCommand::Diff(args)) => {
            let range = warrant_replay::RangeSpec::from_flags(
                &args.partitions,
                args.from,
                args.to,
                args.from_time.as_deref(),
                args.to_time.as_deref(),
            )
            .map_err(|e| fail(Class::Usage, e.to_string()))?;
            let source = match &args.file {
                Some(path) => warrant_replay::Source::File(path.clone()),
                None => warrant_replay::Source::Kafka(args.kafka.clone()),
            };
            rules::diff(
                &args.old,
                &args.new,
                rules::LogSource { source, range },
                global.json,
            )
        }
    }
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value).context("cannot print JSON")?;
    println!("{text}");
    Ok(())
}

fn key_path(global: &Global) -> anyhow::Result<&Path> {
    global.key_file.as_deref().ok_or_else(|| {
        fail(
            Class::Usage,
            "no key file: pass --key-file FILE or set WARRANT_KEY_FILE (make one with `warrant keygen`)",
        )
    })
}

fn load_key(global: &Global) -> anyhow::Result<ReviewerKey> {
    Ok(ReviewerKey::load(key_path(global)?)?)
}

fn client(global: &Global) -> anyhow::Result<Client> {
    Ok(Client::new(
        &global.intake_url,
        Duration::from_millis(global.timeout_ms),
    )?)
}

fn keygen(global: &Global, args: &KeygenArgs) -> anyhow::Result<()> {
    let key = ReviewerKey::generate(args.principal.clone())?;
    key.create(&args.out)?;
    let entry = key.principals_entry();
    if global.json {
        return print_json(&json!({
            "path": args.out,
            "scheme": "ed25519",
            "principal": key.principal(),
            "key_id": key.key_id(),
            "public_key": key.public_key_hex(),
            "principals_entry": entry,
        }));
    }
    let whose = args
        .principal
        .as_deref()
        .map_or_else(|| "your".to_owned(), |p| format!("{p}'s"));
    println!(
        "Wrote a new Ed25519 key to {} (mode 0600: keep it to yourself).",
        args.out.display()
    );
    println!("key id      {}", key.key_id());
    println!("public key  {entry}");
    println!();
    println!("Add this line to {whose} entry under `reviewers:` in the principals file");
    println!("(at most two keys per reviewer), then reload intake (SIGHUP):");
    println!();
    println!("    keys: [\"{entry}\"]");
    Ok(())
}

/// A client that can read: with `--token`, or a session opened with the key.
async fn reader(global: &Global) -> anyhow::Result<Client> {
    let client = client(global)?;
    if let Some(token) = &global.token {
        return Ok(client.with_token(token));
    }
    let key = load_key(global)?;
    let mut client = client;
    client
        .open_session(&key)
        .await
        .context("cannot open a session with the key")?;
    Ok(client)
}

/// Run `body` with a reading client, then close its session whatever
/// happened: a session left open is a bearer credential lying around.
async fn with_reader<T, F>(global: &Global, body: F) -> anyhow::Result<T>
where
    F: AsyncFnOnce(&Client) -> anyhow::Result<T>,
{
    let mut client = reader(global).await?;
    let result = body(&client).await;
    // The session expires on its own; failing to close it early is not
    // worth failing a command that did its work.
    let _ = client.close_session().await;
    result
}

async fn whoami(global: &Global) -> anyhow::Result<()> {
    let reader = with_reader(global, async |client: &Client| Ok(client.whoami().await?)).await?;
    if global.json {
        return print_json(&reader);
    }
    match reader {
        Reader::Reviewer(session) => println!(
            "{} [{}], key {} (intake {})",
            session.reviewer.principal,
            session.reviewer.roles.join(", "),
            session.key_id,
            global.intake_url
        ),
        Reader::Token { principal } => {
            println!("{principal} (bearer token; intake {})", global.intake_url);
        }
    }
    Ok(())
}

async fn queue(global: &Global, args: &QueueArgs) -> anyhow::Result<()> {
    // Status names are SCREAMING_SNAKE_CASE; accept what people type.
    let status = args.status.trim().to_ascii_uppercase().replace('-', "_");
    let query = QueueQuery {
        status: Some(status.clone()),
        role: args.role.clone(),
        after: args.after.clone(),
        limit: Some(args.limit),
    };
    let page = with_reader(global, async |client: &Client| {
        Ok(client.queue(&query).await?)
    })
    .await?;
    if global.json {
        return print_json(&page);
    }
    print!(
        "{}",
        render::queue(&page, &status, args.role.as_deref(), unix_now_millis())
    );
    Ok(())
}

/// The record as replay renders it: replay's own layout, its partition
/// taken from the history (every entry of an instance is in one).
fn replay_text(record: ExecutionRecord) -> String {
    let partition = record
        .history
        .first()
        .map_or(0, |entry| entry.position.partition);
    warrant_replay::text::render(&ReplayedRecord {
        partial: false,
        partition,
        also_in_partitions: Vec::new(),
        record,
    })
}

async fn show(global: &Global, args: &ShowArgs) -> anyhow::Result<()> {
    let record = with_reader(global, async |client: &Client| {
        Ok(client.record(&args.id).await?)
    })
    .await?;
    if global.json {
        return print_json(&record);
    }
    print!("{}", replay_text(record));
    Ok(())
}

/// Ask on the terminal; true only for an explicit yes.
fn confirm(question: &str) -> anyhow::Result<bool> {
    let mut stderr = std::io::stderr();
    write!(stderr, "{question} [y/N] ").context("cannot ask for confirmation")?;
    stderr.flush().context("cannot ask for confirmation")?;
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .context("cannot read the answer")?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

/// The fold's entry for `event_id` in `record`, if it has made one.
fn entry_outcome<'a>(record: &'a ExecutionRecord, event_id: &str) -> Option<&'a Outcome> {
    record
        .history
        .iter()
        .find(|entry| entry.event_id.as_deref() == Some(event_id))
        .map(|entry| &entry.outcome)
}

async fn decide(
    global: &Global,
    verdict: DecisionVerdict,
    args: &DecideArgs,
) -> anyhow::Result<()> {
    let flags = decide::Flags {
        justification: &args.justification,
        not_after: args.not_after.as_deref(),
        max_executions: args.max_executions,
        constraints: &args.constraints,
        evidence: &args.evidence,
    };
    let decision = decide::decision(verdict, &flags, unix_now_millis())
        .map_err(|message| fail(Class::Usage, message))?;
    let instance_id = warrant_client::canonical_instance_id(&args.id)?;
    // Decided before anything is fetched or signed: a script that forgot
    // --yes must fail at once, not hang on a prompt nobody sees.
    if !args.yes && !std::io::stdin().is_terminal() {
        return Err(fail(
            Class::Usage,
            "no terminal to confirm on: pass --yes to decide without confirmation",
        ));
    }
    let key = load_key(global)?;
    let mut client = client(global)?;
    let session = client
        .open_session(&key)
        .await
        .context("cannot open a session with the key")?;
    let result = decide_in_session(
        global,
        args,
        &client,
        &key,
        &session,
        &instance_id,
        &decision,
    )
    .await;
    let _ = client.close_session().await;
    result
}

async fn decide_in_session(
    global: &Global,
    args: &DecideArgs,
    client: &Client,
    key: &ReviewerKey,
    session: &warrant_client::Session,
    instance_id: &str,
    decision: &warrant_client::Decision,
) -> anyhow::Result<()> {
    let record = client.record(instance_id).await?;
    let Some(digest) = record.proposal.as_ref().map(|p| p.action_digest.clone()) else {
        return Err(fail(
            Class::Refused,
            format!("nothing has been proposed under {instance_id}"),
        ));
    };
    let summary = render::summary(&record, session, key.key_id(), decision, unix_now_millis());
    // What is about to be signed goes to stderr: stdout carries the result
    // (and is the JSON document with --json).
    eprint!("{summary}");
    let verdict = render::verdict(decision.verdict);
    if !args.yes {
        let question = format!(
            "Sign {verdict} over action digest {}… as {}?",
            &digest[..digest.len().min(16)],
            session.reviewer.principal
        );
        if !confirm(&question)? {
            return Err(fail(Class::Failure, "declined: nothing was signed or sent"));
        }
    }
    let receipt = client.decide(key, instance_id, &digest, decision).await?;
    let folded = if args.wait_ms == 0 {
        Ok(None)
    } else {
        client
            .await_event(
                instance_id,
                &receipt.event_id,
                Duration::from_millis(args.wait_ms),
            )
            .await
    };
    report(global, &receipt, verdict, folded)
}

/// Print what became of a posted decision; a refusal by the fold is a
/// failure (exit 4), even though intake accepted the request.
fn report(
    global: &Global,
    receipt: &DecisionReceipt,
    verdict: &str,
    folded: Result<Option<ExecutionRecord>, warrant_client::Error>,
) -> anyhow::Result<()> {
    let (outcome, status, note) = match &folded {
        Ok(Some(record)) => (
            entry_outcome(record, &receipt.event_id).cloned(),
            record.status.map(|s| s.as_str().to_owned()),
            None,
        ),
        Ok(None) => (
            None,
            None,
            Some("not folded yet: see `warrant show`".to_owned()),
        ),
        // The decision is on the log whatever happens now; say so rather
        // than fail and invite a second decision.
        Err(error) => (
            None,
            None,
            Some(format!("cannot read the fold's verdict: {error}")),
        ),
    };
    if global.json {
        print_json(&json!({
            "decision": receipt,
            "fold": { "outcome": outcome, "status": status, "note": note },
        }))?;
    } else {
        println!(
            "{verdict} by {} [{}] is on the log: event {} at {}/{}, {} (key {})",
            receipt.reviewer.principal,
            receipt.reviewer.roles.join(", "),
            receipt.event_id,
            receipt.partition,
            receipt.offset,
            receipt.attestation,
            receipt.key_id
        );
        match (&outcome, &status) {
            (Some(Outcome::Applied { effect, .. }), Some(status)) => {
                let what = match effect {
                    Some(Effect::ApprovalCounted {
                        distinct, required, ..
                    }) => format!("counted it ({distinct} of {required} approvals)"),
                    Some(Effect::ApprovalAlreadyCounted { .. }) => {
                        "had counted your approval already".to_owned()
                    }
                    _ => "applied it".to_owned(),
                };
                println!(
                    "the fold {what}: instance {} is {status}",
                    receipt.instance_id
                );
            }
            (Some(Outcome::Violation { violation, .. }), _) => {
                println!(
                    "the fold recorded it as a violation: {}",
                    violation.as_str()
                );
            }
            _ => {}
        }
        if let Some(note) = &note {
            println!("{note}");
        }
    }
    if let Some(Outcome::Refused { code, reason }) = &outcome {
        return Err(fail(
            Class::Refused,
            format!(
                "the fold refused the decision: {} ({reason})",
                code.as_str()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn the_command_line_is_well_formed_and_every_flag_has_a_variable() {
        Cli::command().debug_assert();
        let mut missing = Vec::new();
        let root = Cli::command();
        let mut commands = vec![root.clone()];
        commands.extend(root.get_subcommands().cloned());
        for command in &commands {
            for arg in command.get_arguments() {
                let positional = arg.get_long().is_none() && arg.get_short().is_none();
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !positional && !builtin && arg.get_env().is_none() {
                    missing.push(format!("{} --{}", command.get_name(), arg.get_id()));
                }
            }
        }
        assert!(missing.is_empty(), "flags without WARRANT_*: {missing:?}");
    }

    #[test]
    fn the_manual_points_only_at_files_in_the_repository() {
        let manual = MANUAL;
        for path in [
            "docs/signatures.md",
            "docs/identities.md",
            "docs/contract.md",
        ] {
            assert!(manual.contains(path), "{path}");
        }
        assert!(!manual.contains("/work/") && !manual.contains("STYLE"));
    }

    #[test]
    fn errors_map_to_distinct_exit_codes() {
        let api = |status: u16| {
            anyhow::Error::new(warrant_client::Error::Api {
                status,
                code: "c".to_owned(),
                message: "m".to_owned(),
            })
            .context("while doing something")
        };
        assert_eq!(classify(&api(401)), (Class::Auth, Some("c".to_owned())));
        assert_eq!(classify(&api(404)).0, Class::Refused);
        assert_eq!(classify(&api(503)).0, Class::Unavailable);
        assert_eq!(classify(&fail(Class::Usage, "x")).0, Class::Usage);
        let exists = KeyError::Exists { path: "k".into() };
        assert_eq!(classify(&anyhow::Error::new(exists)).0, Class::Usage);
        let loose = KeyError::Permissions {
            path: "k".into(),
            mode: 0o644,
        };
        assert_eq!(classify(&anyhow::Error::new(loose)).0, Class::Auth);
        assert_eq!(classify(&anyhow::anyhow!("other")).0, Class::Failure);
        let codes = [
            Class::Failure,
            Class::Usage,
            Class::Auth,
            Class::Refused,
            Class::Unavailable,
        ]
        .map(|c| c as u8);
        assert_eq!(codes, [1, 2, 3, 4, 5]);
    }

    #[test]
    fn decision_flags_parse_as_documented() {
        let cli = Cli::try_parse_from([
            "warrant",
            "approve",
            "6f1c2b9e-4d0a-4c7e-9a51-0d2f3b8c7e11",
            "--justification",
            "ok",
            "--constraint",
            "a=1",
            "--constraint",
            "b=2",
            "--max-executions",
            "1",
            "--yes",
            "--json",
        ])
        .expect("parses");
        let Command::Approve(args) = cli.command else {
            panic!("approve");
        };
        assert_eq!(args.constraints, ["a=1", "b=2"]);
        assert!(args.yes && cli.global.json);
        assert!(Cli::try_parse_from([
            "warrant",
            "approve",
            "x",
            "--justification",
            "j",
            "--max-executions",
            "0"
        ])
        .is_err());
        assert!(Cli::try_parse_from(["warrant", "approve", "x"]).is_err());
    }
}
