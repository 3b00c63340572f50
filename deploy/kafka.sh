#!/usr/bin/env bash
# Run a local single-node Apache Kafka (KRaft, broker+controller) for Warrant.
#
# The broker is not installed system-wide: its jars come from Maven Central
# through deploy/kafka/pom.xml (Maven's ~/.m2 is the cache CI keeps), and all
# state lives under .cache/ in the repo. See usage() below.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONF_DIR="$REPO/deploy/kafka"
POM="$CONF_DIR/pom.xml"

CACHE="${WARRANT_KAFKA_CACHE:-$REPO/.cache/kafka}"
DATA="${WARRANT_KAFKA_DATA:-$REPO/.cache/kafka-data}"
PORT="${WARRANT_KAFKA_PORT:-9092}"
CONTROLLER_PORT="${WARRANT_KAFKA_CONTROLLER_PORT:-9093}"
START_TIMEOUT="${WARRANT_KAFKA_START_TIMEOUT:-90}"
STOP_TIMEOUT="${WARRANT_KAFKA_STOP_TIMEOUT:-60}"
# Optional: override the Kafka version pinned in pom.xml.
KAFKA_VERSION_OVERRIDE="${WARRANT_KAFKA_VERSION:-}"

LIB="$CACHE/lib"
LIB_STAMP="$CACHE/lib.sha256"
BOOTSTRAP="127.0.0.1:$PORT"
PID_FILE="$DATA/broker.pid"
CONFIG="$DATA/server.properties"
LOG_DIR="$DATA/logs"
CLUSTER_ID_FILE="$DATA/cluster-id"
# Written when we create the data dir; `reset` refuses to delete a directory
# without it, so a mistyped WARRANT_KAFKA_DATA cannot wipe something else.
DATA_MARKER="$DATA/.warrant-kafka-data"

# Warrant's topics. Names are overridable so several checkouts or test runs
# can share one broker without colliding.
LOG_TOPIC="${WARRANT_LOG_TOPIC:-warrant.log}"
PROPOSALS_TOPIC="${WARRANT_PROPOSALS_TOPIC:-warrant.proposals}"
SIGNALS_TOPIC="${WARRANT_SIGNALS_TOPIC:-warrant.signals}"
DEAD_LETTER_TOPIC="${WARRANT_DEAD_LETTER_TOPIC:-warrant.dead-letter}"
RULESETS_TOPIC="${WARRANT_RULESETS_TOPIC:-warrant.rulesets}"
PRINCIPALS_TOPIC="${WARRANT_PRINCIPALS_TOPIC:-warrant.principals}"
LOG_PARTITIONS="${WARRANT_LOG_PARTITIONS:-3}"

JAVA="${JAVA_HOME:+$JAVA_HOME/bin/}java"

usage() {
  cat <<EOF
Usage: deploy/kafka.sh <command>

Local single-node Kafka (KRaft) for Warrant, fetched from Maven Central.

Commands:
  fetch    Copy the Kafka jars into the cache (only when missing or pom.xml changed).
  start    fetch, format storage on first use, start the broker in the background,
           wait until it answers, then create the topics. No-op if already running.
  topics   Create Warrant's topics if they do not exist (broker must be running).
  delete-topics NAME...
           Delete these topics (benchmarks' throwaway topics; broker must be running).
  stop     Stop the broker (SIGTERM, SIGKILL after ${STOP_TIMEOUT}s). No-op if not running.
  status   Print whether the broker is running; exit 0 if it is, 1 if not.
  reset    stop, then delete the data dir (topics, offsets, cluster id). Keeps the jars.

Environment (current value):
  WARRANT_KAFKA_CACHE             jar cache        ($CACHE)
  WARRANT_KAFKA_DATA              data + logs      ($DATA)
  WARRANT_KAFKA_PORT              client port      ($PORT)
  WARRANT_KAFKA_CONTROLLER_PORT   controller port  ($CONTROLLER_PORT)
  WARRANT_KAFKA_START_TIMEOUT     seconds          ($START_TIMEOUT)
  WARRANT_KAFKA_VERSION           override the Kafka version pinned in deploy/kafka/pom.xml
  WARRANT_LOG_PARTITIONS          partitions of $LOG_TOPIC ($LOG_PARTITIONS)
  WARRANT_{LOG,PROPOSALS,SIGNALS,DEAD_LETTER,RULESETS,PRINCIPALS}_TOPIC   topic names

Broker log: \$WARRANT_KAFKA_DATA/logs/server.log (JVM stdout/stderr: logs/broker.out).
EOF
}

log() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

sha256() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum "$1" | cut -d' ' -f1
  else
    shasum -a 256 "$1" | cut -d' ' -f1 # macOS
  fi
}

# ---------------------------------------------------------------- fetch ----

# What the current lib dir must have been built from: the pom plus any
# version override. Any difference means the jars are stale.
wanted_stamp() {
  printf '%s %s\n' "$(sha256 "$POM")" "${KAFKA_VERSION_OVERRIDE:-pom}"
}

kafka_version() {
  local jar
  for jar in "$LIB"/kafka_2.13-*.jar; do
    [[ -e "$jar" ]] || break
    jar="${jar##*/kafka_2.13-}"
    printf '%s\n' "${jar%.jar}"
    return
  done
  echo unknown
}

cmd_fetch() {
  if [[ -d "$LIB" && -f "$LIB_STAMP" && "$(cat "$LIB_STAMP")" == "$(wanted_stamp)" ]]; then
    return 0
  fi
  command -v mvn >/dev/null 2>&1 || die "mvn not found; Maven is needed to fetch Kafka's jars"
  # Swapping jars under a running JVM ends in NoClassDefFoundError later on.
  if broker_pid >/dev/null; then
    die "the Kafka jars need updating but the broker is running; run deploy/kafka.sh stop first"
  fi

  local -a mvn_args=(-B -q -f "$POM" dependency:copy-dependencies
    -DincludeScope=runtime -DoutputDirectory="$LIB.tmp")
  [[ -n "$KAFKA_VERSION_OVERRIDE" ]] && mvn_args+=(-Dkafka.version="$KAFKA_VERSION_OVERRIDE")

  # Copy into a scratch dir and swap it in, so an interrupted fetch never
  # leaves a half-filled lib dir, and a version change never leaves old jars
  # next to new ones on the classpath.
  mkdir -p "$CACHE"
  rm -rf "$LIB.tmp"
  log "fetching Kafka jars with Maven into $LIB"
  # Offline first: when ~/.m2 already holds everything (CI cache hit) this
  # needs no network. Fall back to Maven Central otherwise. Maven's output is
  # kept in a file and shown only on failure (even -q prints stray ANSI codes).
  local mvn_log="$CACHE/fetch.log"
  if ! mvn -o "${mvn_args[@]}" >"$mvn_log" 2>&1; then
    rm -rf "$LIB.tmp"
    log "not everything is in ~/.m2 yet; downloading from Maven Central"
    mvn "${mvn_args[@]}" >"$mvn_log" 2>&1 || {
      cat "$mvn_log" >&2
      die "Maven could not fetch Kafka (output above, also in $mvn_log)"
    }
  fi
  rm -rf "$LIB"
  mv "$LIB.tmp" "$LIB"
  wanted_stamp >"$LIB_STAMP"
  log "copied $(find "$LIB" -name "*.jar" | wc -l | tr -d " ") jars"
}

# ------------------------------------------------------------- helpers ----

check_java() {
  command -v "$JAVA" >/dev/null 2>&1 || die "java not found (install JDK 17+ or set JAVA_HOME)"
  local version major
  version="$("$JAVA" -version 2>&1 | sed -n 's/.*version "\([^"]*\)".*/\1/p' | head -n1)"
  major="${version%%.*}"
  [[ "$major" =~ ^[0-9]+$ && "$major" -ge 17 ]] || die "Kafka 4 needs Java 17+, found '${version:-?}' ($JAVA)"
}

# Run a Kafka command-line tool (short-lived JVM). No log4j config is given:
# log4j2's built-in default prints only ERRORs, to the console.
# C1-only JIT and a small serial-GC heap trim ~20% off each tool's run time.
TOOL_JAVA=("$JAVA" -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xshare:auto -cp "$LIB/*")
kafka_tool() {
  "${TOOL_JAVA[@]}" "$@"
}

topic_cmd() {
  kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" "$@"
}

# Pid of our broker, if it is alive. Checks the command line too, so a stale
# pid file whose pid was reused by an unrelated process is not mistaken for it.
broker_pid() {
  [[ -f "$PID_FILE" ]] || return 1
  local pid
  pid="$(cat "$PID_FILE")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  ps -ww -o args= -p "$pid" 2>/dev/null | grep -qF "kafka.Kafka $CONFIG" || return 1
  echo "$pid"
}

# True if something accepts TCP connections on 127.0.0.1:$1.
port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

show_broker_log() {
  local f
  for f in "$LOG_DIR/broker.out" "$LOG_DIR/server.log"; do
    [[ -s "$f" ]] || continue
    log "---- last lines of $f ----"
    tail -n 40 "$f" >&2
  done
}

# Render the template with this run's paths and ports. Quoting the
# replacement keeps '&' and '\' in paths literal (bash 5.2 patsub_replacement).
render_config() {
  local text
  text="$(cat "$CONF_DIR/server.properties")"
  text="${text//@DATA_DIR@/"$DATA"}"
  text="${text//@CONTROLLER_PORT@/"$CONTROLLER_PORT"}"
  text="${text//@PORT@/"$PORT"}"
  printf '%s\n' "$text" >"$CONFIG"
}

# KRaft refuses to start on an unformatted log dir. The cluster id is kept in
# the data dir so a re-format after a partial failure reuses it.
format_storage() {
  [[ -f "$DATA/kraft-logs/meta.properties" ]] && return 0
  local cluster_id
  if [[ -s "$CLUSTER_ID_FILE" ]]; then
    cluster_id="$(cat "$CLUSTER_ID_FILE")"
  else
    cluster_id="$(kafka_tool kafka.tools.StorageTool random-uuid)"
    printf '%s\n' "$cluster_id" >"$CLUSTER_ID_FILE"
  fi
  log "formatting storage in $DATA/kraft-logs (cluster id $cluster_id)"
  # No --standalone: the config uses a static controller.quorum.voters.
  kafka_tool kafka.tools.StorageTool format --ignore-formatted \
    -t "$cluster_id" -c "$CONFIG" >"$LOG_DIR/format.out" 2>&1 ||
    { cat "$LOG_DIR/format.out" >&2; die "storage format failed"; }
}

# Wait for the broker process to accept connections and answer an admin
# request. Prints the topic list (the admin request) on success.
wait_until_ready() {
  local pid="$1" deadline=$((SECONDS + START_TIMEOUT))
  while ! port_open "$PORT"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      show_broker_log
      die "broker exited during startup"
    fi
    if ((SECONDS >= deadline)); then
      show_broker_log
      die "broker did not open port $PORT within ${START_TIMEOUT}s (pid $pid still running)"
    fi
    sleep 0.5
  done
  # The port opens slightly before the broker has caught up with the metadata
  # log; the admin client retries until it is ready. Bound it by what is left
  # of the start timeout (`timeout` is absent on stock macOS: then unbounded).
  local remaining=$((deadline - SECONDS))
  ((remaining > 10)) || remaining=10
  local -a bound=()
  command -v timeout >/dev/null 2>&1 && bound=(timeout "$remaining")
  ${bound[@]+"${bound[@]}"} "${TOOL_JAVA[@]}" org.apache.kafka.tools.TopicCommand \
    --bootstrap-server "$BOOTSTRAP" --list 2>"$LOG_DIR/probe.err" || {
    show_broker_log
    cat "$LOG_DIR/probe.err" >&2
    die "broker on port $PORT is not answering admin requests"
  }
}

# Serialise concurrent `start`s (e.g. parallel test processes each calling
# it): without this, two brokers race for the same data dir and the loser
# overwrites the pid file. The lock is released when this script exits.
# flock(1) is Linux-only; elsewhere concurrent starts are simply not guarded.
take_start_lock() {
  command -v flock >/dev/null 2>&1 || return 0
  exec 9>"$DATA/.start.lock"
  flock -w "$START_TIMEOUT" 9 || die "another deploy/kafka.sh start is still running"
}

# ------------------------------------------------------------- commands ----

cmd_start() {
  check_java
  mkdir -p "$DATA" "$LOG_DIR"
  take_start_lock

  local pid
  if pid="$(broker_pid)"; then
    if port_open "$PORT"; then
      log "already running (pid $pid, $BOOTSTRAP, Kafka $(kafka_version))"
      # A checkout newer than the running broker may need a new topic.
      cmd_topics
      return 0
    fi
    log "broker pid $pid exists but port $PORT is not open yet; waiting"
    wait_until_ready "$pid" >/dev/null
    log "running (pid $pid, $BOOTSTRAP)"
    return 0
  fi

  cmd_fetch

  # Someone else (another checkout's broker, a Docker Kafka...) owns the port:
  # starting would fail with a bind error buried in the log.
  port_open "$PORT" && die "port $PORT is already in use by another process (set WARRANT_KAFKA_PORT)"
  port_open "$CONTROLLER_PORT" &&
    die "controller port $CONTROLLER_PORT is already in use (set WARRANT_KAFKA_CONTROLLER_PORT)"

  touch "$DATA_MARKER"
  rm -f "$PID_FILE"
  render_config
  format_storage

  log "starting Kafka $(kafka_version) on $BOOTSTRAP (data: $DATA)"
  # Detached from our stdin/stdout so callers (CI steps, `$(...)`) don't wait
  # on the broker. JVM flags follow Kafka's own kafka-server-start.sh, with a
  # small heap since this is a dev broker.
  nohup "$JAVA" -Xms256m -Xmx512m \
    -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
    -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
    -Dkafka.logs.dir="$LOG_DIR" \
    -Dlog4j2.configurationFile="$CONF_DIR/log4j2.yaml" \
    -cp "$LIB/*" kafka.Kafka "$CONFIG" \
    </dev/null >"$LOG_DIR/broker.out" 2>&1 9>&- &
  pid=$!
  echo "$pid" >"$PID_FILE"

  # A broker that never became ready is stopped again, so the next `start`
  # begins from a clean slate instead of waiting on a wedged JVM.
  local existing
  if ! existing="$(wait_until_ready "$pid")"; then
    cmd_stop
    exit 1
  fi
  log "ready (pid $pid, $BOOTSTRAP) after ${SECONDS}s"
  create_topics "$existing"
}

# Create the topics missing from "$1" (the broker's current topic list, one
# per line). Each TopicCommand call is a JVM start (~0.5-2 s), so existing
# topics are skipped and the missing ones are created in parallel.
# --if-not-exists keeps it safe if two callers race.
create_topics() {
  local existing="$1"

  # name partitions [extra TopicCommand args...]
  local -a specs=(
    # The log is the record and the dead letters wait for a human: neither
    # may age out (the broker default would delete them after 7 days).
    "$LOG_TOPIC $LOG_PARTITIONS --config retention.ms=-1"
    "$PROPOSALS_TOPIC 3"
    "$SIGNALS_TOPIC 3"
    "$DEAD_LETTER_TOPIC 1 --config retention.ms=-1"
    # Rulesets are keyed state: compaction keeps the latest version per key.
    "$RULESETS_TOPIC 1 --config cleanup.policy=compact"
    # Reviewer directories too: one record per directory digest.
    "$PRINCIPALS_TOPIC 1 --config cleanup.policy=compact"
  )

  local tmp spec name partitions extra_str failed=0
  local -a extra pids=() names=()
  tmp="$(mktemp -d)"
  for spec in "${specs[@]}"; do
    read -r name partitions extra_str <<<"$spec"
    if grep -qxF "$name" <<<"$existing"; then
      continue
    fi
    read -r -a extra <<<"${extra_str:-}"
    topic_cmd --create --if-not-exists --topic "$name" \
      --partitions "$partitions" --replication-factor 1 ${extra[@]+"${extra[@]}"} \
      >"$tmp/$name.out" 2>&1 &
    pids+=("$!")
    names+=("$name")
  done

  local i
  for i in "${!pids[@]}"; do
    if wait "${pids[$i]}"; then
      log "created topic ${names[$i]}"
    else
      log "failed to create topic ${names[$i]}:"
      cat "$tmp/${names[$i]}.out" >&2
      failed=1
    fi
  done
  rm -rf "$tmp"
  ((failed == 0)) || die "topic creation failed"
  ((${#pids[@]} > 0)) || log "topics already exist"
}

cmd_topics() {
  check_java
  [[ -d "$LIB" ]] || cmd_fetch
  broker_pid >/dev/null || port_open "$PORT" || die "no broker on port $PORT (run: deploy/kafka.sh start)"
  local existing
  existing="$(topic_cmd --list)"
  create_topics "$existing"
}

cmd_delete_topics() {
  (($# > 0)) || die "delete-topics: name the topics to delete"
  check_java
  [[ -d "$LIB" ]] || cmd_fetch
  broker_pid >/dev/null || port_open "$PORT" || die "no broker on port $PORT (run: deploy/kafka.sh start)"
  # One JVM per topic (~1-2 s each), so in parallel, as create_topics does.
  local name failed=0
  local -a pids=()
  for name in "$@"; do
    topic_cmd --delete --if-exists --topic "$name" &
    pids+=("$!")
  done
  local i
  for i in "${!pids[@]}"; do
    if wait "${pids[$i]}"; then
      log "deleted topic ${*:i+1:1}"
    else
      log "failed to delete topic ${*:i+1:1}"
      failed=1
    fi
  done
  ((failed == 0)) || die "topic deletion failed"
}

cmd_stop() {
  local pid
  if ! pid="$(broker_pid)"; then
    rm -f "$PID_FILE"
    log "not running"
    return 0
  fi
  # SIGTERM triggers Kafka's shutdown hook: controlled shutdown, then a clean
  # close of the logs, so the next start skips log recovery.
  log "stopping broker (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + STOP_TIMEOUT))
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      log "broker did not stop within ${STOP_TIMEOUT}s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 1
      break
    fi
    sleep 0.5
  done
  rm -f "$PID_FILE"
  log "stopped"
}

cmd_status() {
  local pid
  if pid="$(broker_pid)"; then
    if port_open "$PORT"; then
      echo "running (pid $pid, $BOOTSTRAP, Kafka $(kafka_version))"
      return 0
    fi
    echo "starting or unresponsive (pid $pid, port $PORT not open)"
    return 1
  fi
  echo "not running"
  return 1
}

cmd_reset() {
  cmd_stop
  [[ -d "$DATA" ]] || return 0
  if [[ ! -f "$DATA_MARKER" ]]; then
    die "$DATA does not look like a Warrant Kafka data dir (no ${DATA_MARKER##*/}); not deleting it"
  fi
  rm -rf "$DATA"
  log "deleted $DATA"
}

check_settings() {
  local name
  for name in PORT CONTROLLER_PORT START_TIMEOUT STOP_TIMEOUT LOG_PARTITIONS; do
    [[ "${!name}" =~ ^[0-9]+$ ]] || die "$name must be a number, got '${!name}'"
  done
  [[ "$PORT" != "$CONTROLLER_PORT" ]] || die "client and controller ports must differ ($PORT)"
}

main() {
  check_settings
  case "${1:-}" in
    fetch) cmd_fetch; log "Kafka $(kafka_version) jars in $LIB" ;;
    start) cmd_start ;;
    topics) cmd_topics ;;
    delete-topics) shift; cmd_delete_topics "$@" ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    reset) cmd_reset ;;
    -h | --help | help | "") usage ;;
    *) usage >&2; exit 2 ;;
  esac
}

main "$@"
