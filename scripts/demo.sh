#!/usr/bin/env bash
# The demo: start the Didit sandbox on a free port, run `kyc-worker didit full` for a few
# scenarios (each prints the link a user would open, then the decision), stop the sandbox.
# Needs `cargo build --release` first (`make demo` does both).
set -euo pipefail

cd "$(dirname "$0")/.."
BIN="${KYC_WORKER_BIN:-target/release/kyc-worker}"
if [[ ! -x "$BIN" ]]; then
    echo "demo: $BIN not found; run 'cargo build --release' (or 'make demo')" >&2
    exit 1
fi

LOG="$(mktemp -t kyc-sandbox.XXXXXX.log)"

# Port 0: the kernel picks a free port; the sandbox prints the address it listens on.
"$BIN" sandbox --port 0 --complete-after-ms 400 >"$LOG" 2>&1 &
SANDBOX_PID=$!
stop_sandbox() {
    kill "$SANDBOX_PID" 2>/dev/null || true
    wait "$SANDBOX_PID" 2>/dev/null || true
    rm -f "$LOG"
}
trap stop_sandbox EXIT

# Wait for the address line, with a deadline, instead of sleeping a fixed time.
deadline=$((SECONDS + 15))
PORT=""
until [[ -n "$PORT" ]]; do
    PORT="$(sed -n 's|.*listening on http://127\.0\.0\.1:\([0-9]*\).*|\1|p' "$LOG" | head -n 1)"
    [[ -n "$PORT" ]] && break
    if ! kill -0 "$SANDBOX_PID" 2>/dev/null; then
        echo "demo: the sandbox exited:" >&2
        cat "$LOG" >&2
        exit 1
    fi
    if ((SECONDS >= deadline)); then
        echo "demo: the sandbox did not start listening within 15 s" >&2
        exit 1
    fi
    sleep 0.1
done
cat "$LOG"

export KYC_ENV=demo-none
export KYC__DIDIT__BASE_URL="http://127.0.0.1:$PORT"
export KYC__DIDIT__AUTH_BASE_URL="http://127.0.0.1:$PORT/auth/v2"
export KYC__DIDIT__API_KEY=sandbox
export KYC__LOG__LEVEL=warn

for scenario in approve decline_document_expired review_face_match_borderline decline_aml_hit approve_underage; do
    echo
    echo "== scenario: $scenario"
    "$BIN" didit full --vendor-data "demo-$scenario" --scenario "$scenario" --interval 1 --timeout 30
done

echo
echo "== balance"
"$BIN" didit balance
