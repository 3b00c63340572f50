#!/usr/bin/env bash
# Example Kafka ACLs for Warrant: only Warrant's own services write the
# authoritative log (docs/contract.md §2), and everyone else is denied by default.
#
#   DRY_RUN=1 bash deploy/kubernetes/kafka-acls.sh     # print the commands
#   BOOTSTRAP=kafka:9093 COMMAND_CONFIG=admin.properties \
#     bash deploy/kubernetes/kafka-acls.sh            # apply them
#
# Prerequisites on the brokers (server.properties, KRaft):
#
#   authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
#   allow.everyone.if.no.acl.found=false    # no ACL = denied: the default-deny
#   super.users=User:admin;User:<the brokers' and controllers' own principal>
#
# and authenticated listeners (SASL or mTLS) that map clients to the
# principals below. With default-deny, NO explicit DENY rule is needed (and
# a DENY for User:* would also deny Warrant itself: DENY beats ALLOW).
#
# The binaries authenticate with librdkafka properties given through
# --kafka-property / WARRANT_KAFKA_PROPERTIES (SASL/PLAIN, SCRAM or TLS; see
# docs/operations.md), so Kafka sees them as the principals below.
#
# Principals (rename to your naming scheme):
#   User:warrant-intake      the only writer of warrant.log, warrant.rulesets
#                            and warrant.dead-letter; consumes the ingress topics
#   User:warrant-projector   reads warrant.log
#   User:warrant-auditor     warrant-replay: reads warrant.log and warrant.rulesets
#   User:warrant-operator    inspects the dead letters
#   PROPOSER / SIGNALLER     the one agent and the one policy engine that use
#                            the Kafka ingress instead of HTTP (each ingress
#                            topic is one identity, declared in the
#                            principals file)
#
# Consumer groups: intake's ingress consumer is a real group member (Read on
# its group). The projector and replay assign partitions by hand and never
# join or commit, but librdkafka insists on a group.id and still looks up
# that group's coordinator, which Kafka authorizes as Describe on the group
# (without it: GROUP_AUTHORIZATION_FAILED errors; see rust-rdkafka#717 and
# confluent-kafka-python#250). So they get Describe, which cannot join the
# group or commit offsets, on the fixed group ids the code uses:
# warrant-projector and warrant-assigned (projector), warrant-replay and
# warrant-assigned (replay).
#
# Idempotent producer (intake): since Kafka 2.8 (KIP-679) Write on a topic
# implies IdempotentWrite; on older brokers also allow
#   --cluster --operation IdempotentWrite   for User:warrant-intake.
set -euo pipefail

BOOTSTRAP="${BOOTSTRAP:-kafka-bootstrap.kafka.svc.cluster.local:9093}"
# Client properties of an admin principal (security.protocol, sasl.*, ssl.*).
COMMAND_CONFIG="${COMMAND_CONFIG:-admin.properties}"
KAFKA_ACLS="${KAFKA_ACLS:-kafka-acls.sh}"
DRY_RUN="${DRY_RUN:-0}"

# The binaries' --help defaults (and WARRANT_*_TOPIC to override).
LOG_TOPIC="${WARRANT_LOG_TOPIC:-warrant.log}"
PROPOSALS_TOPIC="${WARRANT_PROPOSALS_TOPIC:-warrant.proposals}"
SIGNALS_TOPIC="${WARRANT_SIGNALS_TOPIC:-warrant.signals}"
DEAD_LETTER_TOPIC="${WARRANT_DEAD_LETTER_TOPIC:-warrant.dead-letter}"
RULESETS_TOPIC="${WARRANT_RULESETS_TOPIC:-warrant.rulesets}"
PRINCIPALS_TOPIC="${WARRANT_PRINCIPALS_TOPIC:-warrant.principals}"
INGRESS_GROUP="${WARRANT_INGRESS_GROUP:-warrant-intake}"

# The one Kafka user allowed to produce to each ingress topic. Intake takes
# every record on the proposals topic as proposed by the principal declared
# in the principals file (ingress.proposals.principal) and every signal as
# from its declared source (ingress.signals.source): these ACLs are what
# make that declaration true, so each topic gets exactly one writer.
PROPOSER="${PROPOSER:-User:agent-remediator}"
SIGNALLER="${SIGNALLER:-User:policy-opa}"

# allow PRINCIPAL topic|group NAME OPERATION...
allow() {
  local principal="$1" type="$2" name="$3"
  shift 3
  local -a command=("$KAFKA_ACLS" --bootstrap-server "$BOOTSTRAP"
    --command-config "$COMMAND_CONFIG" --add --allow-principal "$principal"
    "--$type" "$name")
  local operation
  for operation in "$@"; do
    command+=(--operation "$operation")
  done
  if [[ "$DRY_RUN" == 1 ]]; then
    printf '%q ' "${command[@]}"
    printf '\n'
  else
    "${command[@]}"
  fi
}

# Intake: the only door into the log (and the rulesets and dead letters).
allow User:warrant-intake topic "$LOG_TOPIC" Write Describe
allow User:warrant-intake topic "$RULESETS_TOPIC" Write Describe
allow User:warrant-intake topic "$PRINCIPALS_TOPIC" Write Describe
allow User:warrant-intake topic "$DEAD_LETTER_TOPIC" Write Describe
# Intake: the ingress consumer group.
allow User:warrant-intake topic "$PROPOSALS_TOPIC" Read Describe
allow User:warrant-intake topic "$SIGNALS_TOPIC" Read Describe
allow User:warrant-intake group "$INGRESS_GROUP" Read Describe

# Projector: reads every partition of the log, by manual assignment.
allow User:warrant-projector topic "$LOG_TOPIC" Read Describe
allow User:warrant-projector group warrant-projector Describe
allow User:warrant-projector group warrant-assigned Describe

# Auditors (warrant-replay): the log, and the rulesets that were in force.
allow User:warrant-auditor topic "$LOG_TOPIC" Read Describe
allow User:warrant-auditor topic "$RULESETS_TOPIC" Read Describe
allow User:warrant-auditor topic "$PRINCIPALS_TOPIC" Read Describe
allow User:warrant-auditor group warrant-replay Describe
allow User:warrant-auditor group warrant-assigned Describe

# Operators: look at what was dead-lettered, and why (record headers).
# (kafka-console-consumer --group warrant-operator --property print.headers=true)
allow User:warrant-operator topic "$DEAD_LETTER_TOPIC" Read Describe
allow User:warrant-operator group warrant-operator Read Describe

# Producers of ingress: one identity per topic, never the log itself.
allow "$PROPOSER" topic "$PROPOSALS_TOPIC" Write Describe
allow "$SIGNALLER" topic "$SIGNALS_TOPIC" Write Describe
