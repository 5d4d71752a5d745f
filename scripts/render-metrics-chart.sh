#!/usr/bin/env bash
# Renders docs/img/demo-metrics.png from a real /metrics scrape of a demo run (Grafana cannot
# run everywhere; this needs only redis-server, gnuplot and python3's standard library).
#
#   1. builds target/release/kyc-worker when it is missing (what `make demo` builds);
#   2. starts a private redis-server and the Didit sandbox on free ports and `kyc-worker run`
#      with its /metrics on a separate internal port;
#   3. scrapes /metrics every second for SCRAPE_SECONDS into timestamped files while it
#      enqueues VERIFICATIONS verifications over ENQUEUE_SECONDS across the sandbox scenarios;
#   4. stops everything it started, extracts three series (decisions by status, sessions and
#      events by type, queue depth by state) and draws them with gnuplot.
#
# Usage: scripts/render-metrics-chart.sh            (what `make metrics-chart` runs)
# Environment:
#   KYC_BIN=path                 the binary (default target/release/kyc-worker, built if absent)
#   KYC_CHART_OUT=path           the PNG (default docs/img/demo-metrics.png)
#   KYC_CHART_SCRAPES=dir        re-render from the scrapes in dir, without a run
#   KYC_CHART_VERIFICATIONS=60   KYC_CHART_ENQUEUE_SECONDS=20   KYC_CHART_SCRAPE_SECONDS=30
# Scrapes, extracted data and logs stay in target/metrics-chart/.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${KYC_BIN:-target/release/kyc-worker}
PNG=${KYC_CHART_OUT:-docs/img/demo-metrics.png}
VERIFICATIONS=${KYC_CHART_VERIFICATIONS:-60}
ENQUEUE_SECONDS=${KYC_CHART_ENQUEUE_SECONDS:-20}
SCRAPE_SECONDS=${KYC_CHART_SCRAPE_SECONDS:-30}
STARTUP_TIMEOUT=30
OUT=target/metrics-chart
SCENARIOS=(approve decline_document_expired decline_face_mismatch decline_liveness
  decline_aml_hit review_face_match_borderline review_high_scores_warning
  review_aml_possible_match approve_underage)

say() { echo "metrics-chart: $*" >&2; }
die() {
  say "$*"
  exit 1
}

# ---------------------------------------------------------------------------- prerequisites

command -v python3 >/dev/null 2>&1 || die "python3 missing"
if ! command -v gnuplot >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing gnuplot-nox with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gnuplot-nox >/dev/null ||
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gnuplot-nox >/dev/null; }
  else
    die "gnuplot missing; install with: sudo apt-get install -y --no-install-recommends gnuplot-nox"
  fi
fi

# ---------------------------------------------------------------------------- the run

pids=()
cleanup() {
  local pid
  # Reverse order: the worker first (it drains), then the sandbox, then redis.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill "${pids[i]}" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  pids=()
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Prints N distinct free TCP ports on 127.0.0.1 (held open together so they differ), never 6379.
free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
while len(socks) < int(sys.argv[1]):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    if s.getsockname()[1] == 6379:
        continue
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# GET url to stdout; curl when present, else python3.
http_get() {
  if command -v curl >/dev/null 2>&1; then
    curl -fsS --max-time 2 "$1" 2>/dev/null
  else
    python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode())' "$1" 2>/dev/null
  fi
}

# Polls COMMAND until it succeeds or STARTUP_TIMEOUT passes (then prints WHAT and LOG, fails).
wait_for() {
  local what=$1 log=$2 deadline=$((SECONDS + STARTUP_TIMEOUT))
  shift 2
  until "$@"; do
    if [ $SECONDS -ge $deadline ]; then
      say "$what did not come up within ${STARTUP_TIMEOUT}s; $log:"
      tail -n 20 "$log" >&2 || true
      return 1
    fi
    sleep 0.1
  done
}

run_demo() {
  local scrapes=$1 logs=$2
  command -v redis-server >/dev/null 2>&1 || die "redis-server missing: scripts/install-deps.sh"
  if [ ! -x "$BIN" ]; then
    [ -z "${KYC_BIN:-}" ] || die "KYC_BIN=$BIN is not an executable"
    say "building (cargo build --release --bins --examples)"
    cargo build --release --bins --examples
  fi
  mkdir -p "$scrapes" "$logs/redis"

  local redis_port app_port metrics_port
  read -r redis_port app_port metrics_port < <(free_ports 3)
  redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$logs/redis" >"$logs/redis.log" 2>&1 &
  pids+=($!)
  "$BIN" sandbox --port 0 --complete-after-ms 1500 \
    --webhook-url "http://127.0.0.1:$app_port/webhooks/didit" >"$logs/sandbox.log" 2>&1 &
  pids+=($!)

  # KYC_ENV names no file, so a developer's config/local.toml cannot interfere; a short drain
  # keeps the stop quick.
  export KYC_ENV=metrics-chart KYC__REDIS__URL="redis://127.0.0.1:$redis_port" \
    KYC__WORKER__SHUTDOWN_TIMEOUT=2s
  redis_up() { redis-cli -p "$redis_port" ping >/dev/null 2>&1; }
  wait_for redis-server "$logs/redis.log" redis_up
  local sandbox_url=""
  sandbox_listening() {
    sandbox_url=$(grep -Eo 'listening on http://127\.0\.0\.1:[0-9]+' "$logs/sandbox.log" | head -n1 | cut -d' ' -f3) &&
      [ -n "$sandbox_url" ]
  }
  wait_for "the sandbox" "$logs/sandbox.log" sandbox_listening

  KYC__DIDIT__BASE_URL=$sandbox_url KYC__DIDIT__AUTH_BASE_URL=$sandbox_url/auth/v2 \
    KYC__HTTP__HOST=127.0.0.1 KYC__HTTP__PORT=$app_port KYC__HTTP__INTERNAL_PORT=$metrics_port \
    KYC__LOG__LEVEL=warn "$BIN" run >"$logs/worker.log" 2>&1 &
  pids+=($!)
  local metrics_url="http://127.0.0.1:$metrics_port/metrics"
  wait_for "kyc-worker run" "$logs/worker.log" http_get "http://127.0.0.1:$app_port/readyz" >/dev/null
  wait_for "/metrics" "$logs/worker.log" http_get "$metrics_url" >/dev/null
  say "redis :$redis_port, sandbox $sandbox_url, worker :$app_port, $metrics_url"

  # The scraper: one file per second, named by its Unix time in milliseconds.
  (
    end=$((SECONDS + SCRAPE_SECONDS))
    while [ $SECONDS -lt $end ]; do
      ms=$(date +%s%3N)
      if http_get "$metrics_url" >"$scrapes/.partial"; then
        mv "$scrapes/.partial" "$scrapes/$ms.prom"
      fi
      sleep 1
    done
  ) &
  local scraper=$!
  pids+=("$scraper")
  wait_for "the first scrape" "$logs/worker.log" compgen -G "$scrapes/*.prom" >/dev/null

  # VERIFICATIONS enqueues spread evenly over ENQUEUE_SECONDS (paced against the clock).
  say "enqueuing $VERIFICATIONS verifications over ${ENQUEUE_SECONDS}s, scraping for ${SCRAPE_SECONDS}s"
  local i scenario start_ms due_ms now_ms
  start_ms=$(date +%s%3N)
  echo "$start_ms" >"$logs/enqueue.window"
  for ((i = 0; i < VERIFICATIONS; i++)); do
    due_ms=$((start_ms + i * ENQUEUE_SECONDS * 1000 / VERIFICATIONS))
    now_ms=$(date +%s%3N)
    if [ "$now_ms" -lt "$due_ms" ]; then
      sleep "$(printf '0.%03d' $(((due_ms - now_ms) % 1000)))"
      sleep $(((due_ms - now_ms) / 1000))
    fi
    scenario=${SCENARIOS[i % ${#SCENARIOS[@]}]}
    "$BIN" enqueue --vendor-data "demo-$i" --sandbox-scenario "$scenario" >>"$logs/enqueue.log" 2>&1 ||
      die "enqueue failed; $logs/enqueue.log:$(tail -n 5 "$logs/enqueue.log")"
  done
  date +%s%3N >>"$logs/enqueue.window"
  wait "$scraper" || true
  cleanup
}

stamp=$(date -u +%Y%m%dT%H%M%SZ)
if [ -n "${KYC_CHART_SCRAPES:-}" ]; then
  scrapes=$KYC_CHART_SCRAPES
  [ -d "$scrapes" ] || die "KYC_CHART_SCRAPES=$scrapes is not a directory"
  data=$scrapes/..
else
  data=$OUT/$stamp
  scrapes=$data/scrapes
  run_demo "$scrapes" "$data"
fi

# ---------------------------------------------------------------------------- extraction

# One TSV per panel, first column seconds since the first scrape, a header row of series
# names; prints the run's date and final totals.
summary=$(python3 - "$scrapes" "$data" <<'EOF'
import datetime, glob, os, re, sys

scrapes, out = sys.argv[1], sys.argv[2]
line_re = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
label_re = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

def parse(path):
    samples = []
    with open(path) as f:
        for line in f:
            if line.startswith('#'):
                continue
            m = line_re.match(line)
            if m:
                samples.append((m[1], dict(label_re.findall(m[2] or '')), float(m[3])))
    return samples

def by(samples, name, label):
    acc = {}
    for n, labels, v in samples:
        if n == name:
            key = labels.get(label, '') if label else name
            acc[key] = acc.get(key, 0.0) + v
    return acc

files = sorted(glob.glob(os.path.join(scrapes, '*.prom')), key=lambda p: int(os.path.basename(p)[:-5]))
if not files:
    sys.exit('no scrapes in ' + scrapes)
t0 = int(os.path.basename(files[0])[:-5])
rows = []
for path in files:
    s = parse(path)
    events = by(s, 'kyc_events_published_total', 'type')
    rows.append({
        't': (int(os.path.basename(path)[:-5]) - t0) / 1000.0,
        'decisions': by(s, 'kyc_decisions_total', 'status'),
        'flow': {'sessions created': by(s, 'kyc_sessions_created_total', None).get('kyc_sessions_created_total', 0.0),
                 **{'event ' + k: v for k, v in events.items()}},
        'depth': by(s, 'kyc_queue_depth', 'state'),
    })

def write(panel, preferred):
    last = rows[-1][panel]
    keys = [k for k in preferred if k in last] + sorted(k for k in last if k not in preferred)
    # Series that stay at zero for the whole run only clutter the key.
    zero = [k for k in keys if not any(r[panel].get(k, 0.0) for r in rows)]
    keys = [k for k in keys if k not in zero] or keys[:1]
    zeros[panel] = [k for k in zero if k not in keys]
    with open(os.path.join(out, panel + '.tsv'), 'w') as f:
        f.write('\t'.join(['t'] + ['"%s"' % k for k in keys]) + '\n')
        for r in rows:
            f.write('\t'.join(['%.3f' % r['t']] + ['%g' % r[panel].get(k, 0.0) for k in keys]) + '\n')
    return ', '.join('%s %g' % (k, last.get(k, 0.0)) for k in keys)

zeros = {}
final = [write('decisions', ['Approved', 'Declined', 'In Review']),
         write('flow', ['sessions created', 'event kyc.session.created', 'event kyc.session.decided',
                        'event kyc.session.expired', 'event kyc.session.failed']),
         write('depth', ['ready', 'scheduled', 'in_flight', 'dead'])]
when = datetime.datetime.fromtimestamp(t0 / 1000.0, datetime.timezone.utc)
print(when.strftime('%Y-%m-%d %H:%M UTC'))
# The enqueue window in seconds since the first scrape (0 0 when unknown).
try:
    with open(os.path.join(out, 'enqueue.window')) as f:
        window = [(int(x) - t0) / 1000.0 for x in f.read().split()[:2]]
    print('%.3f %.3f' % tuple(window))
except (OSError, ValueError, TypeError):
    print('0 0')
print(', '.join(zeros['depth']))
print('%d scrapes over %.0f s; final: decisions: %s; %s' % (len(rows), rows[-1]['t'], final[0], final[1]))
EOF
)
run_date=$(sed -n 1p <<<"$summary")
read -r enqueue_from enqueue_to <<<"$(sed -n 2p <<<"$summary")"
depth_zero=$(sed -n 3p <<<"$summary")
say "$(sed -n '4,$p' <<<"$summary")"
depth_key=""
if [ -n "$depth_zero" ]; then depth_key="$depth_zero: 0 at every sample"; fi

# ---------------------------------------------------------------------------- the chart

mkdir -p "$(dirname "$PNG")"
gnuplot <<EOF
set terminal pngcairo size 1100,1050 font "DejaVu Sans,11" linewidth 1.5
set output "$PNG"
set datafile separator "\t"
set key autotitle columnheader outside right top Left reverse noenhanced
set grid ytics lc rgb "#dddddd"
set xrange [0:*]
# The enqueue window, shaded on every panel.
if ($enqueue_to > $enqueue_from) {
  set object 1 rect from $enqueue_from, graph 0 to $enqueue_to, graph 1 behind fc rgb "#eef3fb" fs solid noborder
  set label 1 "enqueuing" at $enqueue_from, graph 0.97 offset 0.5,0 tc rgb "#7a8aa6" font ",9"
}
set yrange [0:*]
set border 3
set tics nomirror
set lmargin 10
set rmargin 34
set multiplot layout 3,1 title "kyc-worker demo run — real /metrics scrape, $run_date\n{/*0.8 $VERIFICATIONS verifications enqueued over ${ENQUEUE_SECONDS} s across 9 sandbox scenarios; one scrape per second}" font "DejaVu Sans,14"

set title "Decisions published: sum by (status) (kyc_decisions_total)" noenhanced
set ylabel "decisions (cumulative)"
stats "$data/decisions.tsv" skip 1 nooutput
plot for [i=2:STATS_columns] "$data/decisions.tsv" using 1:i with steps lw 2

set title "Sessions created and outcome events: kyc_sessions_created_total, sum by (type) (kyc_events_published_total)" noenhanced
set ylabel "count (cumulative)"
stats "$data/flow.tsv" skip 1 nooutput
# Sessions created as points: they coincide with the kyc.session.created events.
plot "$data/flow.tsv" using 1:2 with points pt 7 ps 0.8, \
  for [i=3:STATS_columns] "$data/flow.tsv" using 1:i with steps lw 2

set title "Queue depth: sum by (state) (kyc_queue_depth), sampled by the worker every 5 s" noenhanced
set ylabel "jobs"
set xlabel "seconds since the first scrape"
stats "$data/depth.tsv" skip 1 nooutput
set key title "$depth_key" noenhanced
plot for [i=2:STATS_columns] "$data/depth.tsv" using 1:i with steps lw 2
unset multiplot
EOF
say "wrote $PNG ($(wc -c <"$PNG") bytes) from $(find "$scrapes" -name '*.prom' | wc -l) scrapes in $scrapes"
