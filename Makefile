# One entry point for routine tasks. The README's two commands are
# `make demo` and `make test`.
.PHONY: test demo chaos kafka-up kafka-down bench-fold bench-log bench-replay-mem bench-intake bench-scale fuzz fuzz-smoke api-fuzz fmt lint

test: ## every test: Rust, Python, and end-to-end against a local Kafka
	bash scripts/test.sh

demo: ## start Kafka and Warrant, run one instance end to end, print its replayed record
	bash scripts/demo.sh

chaos: ## every fault at full length (broker stopped and killed, intake and projector killed, full disk, damaged view), one line each
	bash scripts/chaos.sh

kafka-up: ## start the local single-node Kafka and create the topics
	bash deploy/kafka.sh start

kafka-down: ## stop the local Kafka
	bash deploy/kafka.sh stop

bench-fold: ## decode + fold + hash per event (criterion), and its ratio to SHA-256 alone
	bash scripts/bench-fold.sh

bench-log: ## 1M events: kcat vs warrant-replay vs projector catch-up, and projector RSS
	bash scripts/bench-log.sh

bench-replay-mem: ## warrant-replay's peak RSS over 1M and 10M events of the same instances (flat: <= 1.2x), beside kcat
	bash scripts/bench-replay-mem.sh

bench-scale: ## 10M events / 1M instances / 12 partitions: 1 and 2 projector shards beside kcat, claims while a shard catches up, replay
	bash scripts/bench-scale.sh

bench-intake: ## claim round trip and decisions at 2,000/s (acks=all), beside Kafka and HTTP baselines
	bash scripts/bench-intake.sh

FUZZ_SECONDS ?= 600
fuzz: ## cargo fuzz, every target for FUZZ_SECONDS each (default 600); crashes fail the run
	bash scripts/fuzz.sh $(FUZZ_SECONDS)

fuzz-smoke: ## every fuzz target for a few seconds (what make test runs)
	bash scripts/fuzz.sh 5

API_FUZZ_EXAMPLES ?= 20
api-fuzz: ## schemathesis against intake's OpenAPI document, API_FUZZ_EXAMPLES per operation (Kafka must run)
	cargo build -p warrant-intake -p warrant-projector -p warrant-replay --bins
	test -x .cache/venv/bin/python || python3 -m venv .cache/venv
	.cache/venv/bin/pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt -r tests/schemathesis/requirements.txt
	WARRANT_FUZZ_EXAMPLES=$(API_FUZZ_EXAMPLES) WARRANT_BIN_DIR=$${CARGO_TARGET_DIR:-target}/debug .cache/venv/bin/python tests/schemathesis/run.py

fmt:
	cargo fmt --all

lint:
	cargo clippy --workspace --all-targets -- -D warnings
