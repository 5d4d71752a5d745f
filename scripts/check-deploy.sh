#!/usr/bin/env bash
# Static checks of the deployment files (nothing here needs Docker, Kubernetes or Grafana):
#   - promtool parses the alert rules, the Prometheus config and every dashboard query, and
#     runs the alerts' unit tests (deploy/prometheus/alerts.test.yml);
#   - every metric the alerts, the PrometheusRule, the KEDA scaler and the dashboard use is
#     exported by a real /metrics scrape of `kyc-worker run` after a short demo run;
#   - the PrometheusRule carries exactly the rules of alerts.yml;
#   - docker-compose.yml and every deploy/k8s file parse, with the expected services/kinds
#     and the Deployment invariants (probes, ports, POD_NAME, secrets, grace period).
# One line per check, then "check-deploy: N passed, M failed"; exit 1 on any failure.
#
# Usage: scripts/check-deploy.sh            run every check (what `make check-deploy` does)
#        scripts/check-deploy.sh sync-rules regenerate deploy/k8s/prometheusrule.yaml
# Environment:
#   KYC_CHECK_DEPLOY_SCRAPE=path   compare against this scrape instead of a live run
#   KYC_CHECK_DEPLOY_TIMEOUT=60    seconds the live run may take to publish an event
#   KYC_BIN=path                   the kyc-worker binary (default: target/debug/kyc-worker, rebuilt
#                                  by cargo when sources changed; `make test` has just built it)
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=target/check-deploy
BIN=${KYC_BIN:-target/debug/kyc-worker}
TIMEOUT=${KYC_CHECK_DEPLOY_TIMEOUT:-60}
HELPER=scripts/check_deploy.py

# ---------------------------------------------------------------------------- prerequisites

# Installs Debian packages as root, or names the command and fails otherwise.
apt_install() {
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "check-deploy: missing $*; install with: sudo apt-get install -y --no-install-recommends $*" >&2
    exit 1
  fi
  echo "check-deploy: installing $* with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  # The prometheus package's postinst would start a Prometheus daemon on :9090 where init
  # scripts run; forbid service starts for the duration of the install (policy-rc.d 101) so
  # nothing binds ports on this machine. Only when no policy is in place already.
  local policy=/usr/sbin/policy-rc.d own_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && own_policy=1
  fi
  local rc=0
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends "$@" >/dev/null; } || rc=$?
  if [ "$own_policy" -eq 1 ]; then rm -f "$policy"; fi
  return "$rc"
}

need_apt=()
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
if ! command -v python3 >/dev/null 2>&1; then
  need_apt+=(python3 python3-yaml)
elif ! python3 -c 'import yaml' >/dev/null 2>&1; then
  need_apt+=(python3-yaml)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  apt_install "${need_apt[@]}"
fi

if [ "${1:-}" = "sync-rules" ]; then
  python3 "$HELPER" sync-rules
  echo "check-deploy: wrote deploy/k8s/prometheusrule.yaml from deploy/prometheus/alerts.yml"
  exit 0
fi
if [ $# -gt 0 ]; then
  echo "usage: $0 [sync-rules]" >&2
  exit 2
fi

mkdir -p "$OUT"

# ---------------------------------------------------------------------------- reporting

passed=0
failed=0

# check NAME COMMAND...: runs COMMAND, prints "ok NAME" or "FAIL NAME" with its output.
check() {
  local name=$1 output
  shift
  if output=$("$@" 2>&1); then
    echo "ok    $name"
    passed=$((passed + 1))
  else
    echo "FAIL  $name"
    if [ -n "$output" ]; then printf '%s\n' "$output" | sed 's/^/        /'; fi
    failed=$((failed + 1))
  fi
}

# ---------------------------------------------------------------------------- static checks

check "promtool check rules deploy/prometheus/alerts.yml" \
  promtool check rules deploy/prometheus/alerts.yml
check "promtool check config deploy/prometheus/prometheus.yml" \
  promtool check config deploy/prometheus/prometheus.yml
check "promtool test rules deploy/prometheus/alerts.test.yml" \
  promtool test rules deploy/prometheus/alerts.test.yml

# The PrometheusRule's rules, parsed by promtool too (they should equal alerts.yml anyway).
prometheusrule_groups() {
  python3 -c 'import sys, yaml
docs = [d for d in yaml.safe_load_all(open("deploy/k8s/prometheusrule.yaml")) if d]
yaml.safe_dump({"groups": docs[0]["spec"]["groups"]}, sys.stdout, sort_keys=False)' >"$OUT/prometheusrule-groups.yml" &&
    promtool check rules "$OUT/prometheusrule-groups.yml"
}
check "promtool check rules deploy/k8s/prometheusrule.yaml (spec.groups)" prometheusrule_groups
check "PrometheusRule in sync with alerts.yml" python3 "$HELPER" rules-in-sync

dashboard_queries_parse() {
  python3 "$HELPER" dashboard-rules "$OUT/dashboard-rules.yml" >/dev/null &&
    promtool check rules "$OUT/dashboard-rules.yml"
}
check "dashboard: every targets[].expr parses (promtool, $OUT/dashboard-rules.yml)" dashboard_queries_parse
check "dashboard: unique panel ids, every range is \$__rate_interval" python3 "$HELPER" dashboard-lint
check "dashboard: uses every core metric" python3 "$HELPER" dashboard-coverage

check "compose: services redis, worker-1..3, sandbox, prometheus, grafana; AOF; mounts exist" \
  python3 "$HELPER" compose
check "k8s: every file parses; Deployment, PDB, Service, Ingress, ServiceMonitor, PrometheusRule, ScaledObject, ConfigMap" \
  python3 "$HELPER" k8s-kinds
check "k8s: Deployment probes, ports, POD_NAME, secret refs, grace period > drain; Ingress TLS routes" \
  python3 "$HELPER" k8s-deployment

dockerfile_shape() {
  local f=deploy/Dockerfile missing=()
  grep -Eq '^FROM rust:1-bookworm AS builder' "$f" || missing+=("FROM rust:1-bookworm AS builder")
  grep -Eq '^COPY Cargo.toml Cargo.lock' "$f" || missing+=("COPY Cargo.toml Cargo.lock (dependency layer)")
  grep -Eq 'cargo fetch' "$f" || missing+=("cargo fetch")
  grep -Eq '^USER nonroot' "$f" || missing+=("USER nonroot")
  grep -Eq '^EXPOSE 8080 9090' "$f" || missing+=("EXPOSE 8080 9090")
  grep -Fq 'ENTRYPOINT ["kyc-worker"]' "$f" || missing+=('ENTRYPOINT ["kyc-worker"]')
  grep -Fq 'CMD ["run"]' "$f" || missing+=('CMD ["run"]')
  if [ ${#missing[@]} -gt 0 ]; then
    printf 'missing: %s\n' "${missing[@]}"
    return 1
  fi
}
check "Dockerfile: multi-stage, dependency layer, non-root, ports, entrypoint" dockerfile_shape

# ---------------------------------------------------------------------------- live scrape

pids=()
tmp=""
cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if [ -n "$tmp" ]; then rm -rf "$tmp"; fi
}
trap cleanup EXIT
# Turn INT/TERM into a normal exit so the EXIT trap stops what we started.
trap 'exit 130' INT
trap 'exit 143' TERM

# Prints N distinct free TCP ports on 127.0.0.1 (held open together so they differ).
free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

http_get() {
  curl -fsS --max-time 5 "$1" 2>/dev/null ||
    python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' "$1" 2>/dev/null
}

# Sum of a counter over all its series in a scrape on stdin (0 when absent).
counter_sum() {
  awk -v name="$1" '$1 == name || index($1, name "{") == 1 { s += $NF } END { print s + 0 }'
}

# Starts redis-server, the sandbox and `kyc-worker run` on free ports, enqueues a few
# verifications and saves /metrics once an outcome event was published.
live_scrape() {
  local scrape=$1
  if [ -z "${KYC_BIN:-}" ]; then
    # Up to date with the sources (a no-op right after `cargo test`).
    cargo build --quiet --bin kyc-worker || return 1
  fi
  command -v redis-server >/dev/null 2>&1 || { echo "redis-server missing: scripts/install-deps.sh"; return 1; }
  tmp=$(mktemp -d)
  local redis_port http_port internal_port
  read -r redis_port http_port internal_port < <(free_ports 3) || return 1

  redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$tmp" >"$tmp/redis.log" 2>&1 &
  pids+=($!)
  # Settings: KYC_ENV names no file, so a developer's config/local.toml cannot interfere.
  # A short drain keeps the exit quick when the trap stops the worker.
  export KYC_ENV=check-deploy KYC__REDIS__URL="redis://127.0.0.1:$redis_port" KYC__LOG__FORMAT=json \
    KYC__WORKER__SHUTDOWN_TIMEOUT=2s

  "$BIN" sandbox --port 0 --complete-after-ms 300 \
    --webhook-url "http://127.0.0.1:$http_port/webhooks/didit" >"$tmp/sandbox.log" 2>&1 &
  pids+=($!)

  local deadline=$((SECONDS + TIMEOUT)) sandbox_url=""
  until redis-cli -p "$redis_port" ping >/dev/null 2>&1 && sandbox_url=$(grep -Eo 'http://[0-9.]+:[0-9]+' "$tmp/sandbox.log" | head -n1) && [ -n "$sandbox_url" ]; do
    if [ $SECONDS -ge $deadline ]; then
      echo "redis or the sandbox did not start"; tail -n 20 "$tmp/redis.log" "$tmp/sandbox.log"; return 1
    fi
    sleep 0.1
  done

  KYC__DIDIT__BASE_URL=$sandbox_url KYC__DIDIT__AUTH_BASE_URL=$sandbox_url/auth/v2 \
    KYC__HTTP__HOST=127.0.0.1 KYC__HTTP__PORT=$http_port KYC__HTTP__INTERNAL_PORT=$internal_port \
    "$BIN" run >"$tmp/worker.log" 2>&1 &
  pids+=($!)

  until http_get "http://127.0.0.1:$http_port/readyz" >/dev/null; do
    if [ $SECONDS -ge $deadline ]; then
      echo "kyc-worker run did not become ready"; tail -n 20 "$tmp/worker.log"; return 1
    fi
    sleep 0.1
  done

  local scenario n=0
  # A consumer of the outcome stream, as a real deployment has one: its lag is a metric.
  redis-cli -p "$redis_port" XGROUP CREATE kyc:events check-deploy '$' MKSTREAM >/dev/null || return 1
  for scenario in approve decline_document_expired review_face_match_borderline; do
    n=$((n + 1))
    "$BIN" enqueue --vendor-data "check-deploy-$n" --sandbox-scenario "$scenario" >/dev/null 2>>"$tmp/enqueue.log" ||
      { echo "enqueue failed"; tail -n 20 "$tmp/enqueue.log"; return 1; }
  done

  local metrics_url="http://127.0.0.1:$internal_port/metrics" published=0 served=no
  while :; do
    if http_get "$metrics_url" >"$tmp/metrics.txt"; then
      served=yes
      published=$(counter_sum kyc_events_published_total <"$tmp/metrics.txt")
      # Sampled gauges (consumer lag) appear within one sampling period (5 s).
      if awk -v p="$published" 'BEGIN { exit !(p >= 1) }' && grep -q '^kyc_events_consumer_lag{' "$tmp/metrics.txt"; then
        break
      fi
    fi
    if [ $SECONDS -ge $deadline ]; then
      echo "no kyc_events_published_total >= 1 on $metrics_url within ${TIMEOUT}s" \
        "(published: $published; GET /metrics answered 200: $served)"
      tail -n 20 "$tmp/worker.log"
      return 1
    fi
    sleep 0.2
  done
  # Best effort: a few more seconds for decisions, so their histograms have observations.
  local settle=$((SECONDS + 10))
  while [ $SECONDS -lt $settle ] &&
    [ "$(counter_sum kyc_decisions_total <"$tmp/metrics.txt")" = 0 ]; do
    sleep 0.2
    http_get "$metrics_url" >"$tmp/metrics.txt" || true
  done
  cp "$tmp/metrics.txt" "$scrape"
}

scrape=$OUT/metrics.txt
if [ -n "${KYC_CHECK_DEPLOY_SCRAPE:-}" ]; then
  check "scrape: using KYC_CHECK_DEPLOY_SCRAPE=$KYC_CHECK_DEPLOY_SCRAPE (live run skipped)" \
    test -s "$KYC_CHECK_DEPLOY_SCRAPE"
  scrape=$KYC_CHECK_DEPLOY_SCRAPE
else
  rm -f "$scrape"
  # Not through check(): its command substitution would run in a subshell (the processes
  # started there would escape the EXIT trap) and would wait for their output to close.
  name="scrape: demo run (redis-server, sandbox, kyc-worker run, 3 verifications) -> $scrape"
  if live_scrape "$scrape" >"$OUT/live-run.log" 2>&1; then
    echo "ok    $name"
    passed=$((passed + 1))
  else
    echo "FAIL  $name"
    sed 's/^/        /' "$OUT/live-run.log"
    failed=$((failed + 1))
  fi
  cleanup
  pids=()
  tmp=""
fi
if [ -s "$scrape" ]; then
  check "metrics used by alerts, PrometheusRule, KEDA and dashboard are exported" \
    python3 "$HELPER" compare-metrics "$scrape"
else
  echo "FAIL  metrics used by alerts, PrometheusRule, KEDA and dashboard are exported (no scrape)"
  failed=$((failed + 1))
fi

echo "check-deploy: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
