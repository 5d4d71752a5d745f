# kyc-worker: the commands a developer and CI use. `make test` is everything CI runs.
CARGO ?= cargo
BIN := target/release/kyc-worker
BENCH := target/release/kyc-bench

.PHONY: all build deps demo test test-rust lint fmt console-screenshots bench bench-quick bench-smoke bench-queue bench-lifecycle bench-tracing clean

all: build

build:
	$(CARGO) build --release --bins

deps:
	@scripts/install-deps.sh

## demo: redis-server + sandbox + `kyc-worker run` on free ports, 20 verifications end to end
demo: deps
	$(CARGO) build --release --bins --examples
	$(CARGO) run --release --example demo

## test: lint, every test suite (unit and integration, real redis-server + sandbox), and the
## static and live checks of deploy/
test: deps lint doc deny check-docs test-rust bench-smoke check-deploy

test-rust:
	$(CARGO) test --workspace --all-targets
	$(CARGO) test --workspace --doc

## bench: every benchmark: the queue, then the fleet end to end (in-process and as 1/2/4
## `kyc-worker run` child processes), merged with the targets into target/bench/report.json
## and report.md, with a CPU profile of the fleet in target/bench/flamegraph.svg
bench: deps build
	$(BENCH) all --profile --out target/bench

## bench-quick: the same with small sizes (under a minute on 2 CPUs), for CI
bench-quick: deps build
	$(BENCH) all --quick --out target/bench

## bench-smoke: bench-quick on the debug build (numbers not meant to be read), run by
## `make test` so the benchmarks never rot
bench-smoke:
	$(CARGO) build --bin kyc-worker --bin kyc-bench
	target/debug/kyc-bench all --quick --out target/bench-smoke

## bench-queue: the job queue alone vs apalis-redis 1.0.0 (target/bench/queue.json, .md)
bench-queue: deps build
	$(BENCH) queue --out target/bench

## bench-lifecycle: the fleet alone (report.json, .md; merges queue.json when present)
bench-lifecycle: deps build
	$(BENCH) lifecycle --out target/bench

## bench-tracing: what tracing costs a worker, against a kyc-worker built without the `otel`
## feature (target/release/kyc-worker-no-otel): target/bench/tracing.json and tracing.md
bench-tracing: deps
	$(CARGO) build --release -p kyc-worker --no-default-features
	cp target/release/kyc-worker target/release/kyc-worker-no-otel
	$(CARGO) build --release -p kyc-worker -p kyc-bench
	$(BENCH) tracing --baseline-worker target/release/kyc-worker-no-otel --out target/bench

## console-screenshots: the console's browser tests, saving docs/img/console-*.png for the README
console-screenshots: deps
	KYC_CONSOLE_SCREENSHOTS=$(CURDIR)/docs/img $(CARGO) test --test it console::

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p kyc-worker --no-default-features -- -D warnings

.PHONY: deny check-docs

## deny: licenses, duplicate crates and sources of every dependency against deny.toml
## (advisories are not checked: that needs the network)
deny: deps
	$(CARGO) deny check bans licenses sources

## check-docs: every Markdown table renders on GitHub, every link stays in the repository and
## resolves, README.md is at most 200 lines (scripts/check-markdown.py)
check-docs:
	python3 scripts/check-markdown.py

## doc: the API documentation of every crate, with any rustdoc warning (a broken link, an
## undocumented public item of the SDK) an error
.PHONY: doc
doc:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --workspace

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean

## up / down: the local fleet in Docker (Redis, 3 workers, sandbox, Prometheus, Grafana);
## see deploy/README.md
COMPOSE ?= docker compose -f deploy/docker-compose.yml

.PHONY: up down check-deploy

up:
	$(COMPOSE) up -d --build

down:
	$(COMPOSE) down

## check-deploy: static checks of deploy/ (promtool, YAML, metric names vs a real scrape)
check-deploy: deps
	@scripts/check-deploy.sh

## metrics-chart: docs/img/demo-metrics.png, drawn with gnuplot from a real /metrics scrape of
## a 30 s demo run (redis-server + sandbox + `kyc-worker run`, 60 verifications)
.PHONY: metrics-chart

metrics-chart: deps
	$(CARGO) build --release --bins --examples
	@scripts/render-metrics-chart.sh

## chaos: the chaos suite at full size (500 sessions per scenario, release build): workers
## SIGKILLed and SIGTERMed under load, Redis restarted from its AOF, a faulty rate-limited Didit
.PHONY: chaos

chaos: deps
	KYC_CHAOS_SESSIONS=500 $(CARGO) test --release --test it chaos -- --nocapture --test-threads 1
