#!/usr/bin/env bash
# The `bank` soak: the bank test of tests/durability.rs (10 concurrent transfer clients while a
# random safekeeper is SIGKILLed and restarted, cycle after cycle) against a release build.
#
#   bash bench/bank.sh [cycles]        (default 1000)
#
# Prints the test's summary line and writes it as JSON to bench/bank.json (cycles,
# acknowledged, ambiguous, retried, elapsed_s, passed, date, commit). Exits non-zero if the
# test failed; its cluster folder is then kept under /tmp for inspection.
set -euo pipefail
cd "$(dirname "$0")/.."

cycles="${1:-1000}"; json=bench/bank.json
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/omendb-target}"
cargo build --release --locked >&2

log=$(mktemp /tmp/omendb-bench-bank.XXXXXX)
trap 'rm -f "$log"' EXIT
passed=true
OMENDB_BANK_CYCLES="$cycles" cargo test --release --locked --test durability bank -- --nocapture 2>&1 \
    | tee "$log" >&2 || passed=false

summary=$(grep -o 'bank summary: .*' "$log" | tail -1 || true)
echo "${summary:-bank summary: none (the test did not get that far)} passed=$passed"
# A figure from the summary line, or null when the test did not print one.
field() { echo "$summary" | grep -oP "\b$1=\K[0-9.]+" || echo null; }
printf '{"suite": "bank", "cycles": %s, "acknowledged": %s, "ambiguous": %s, "retried": %s, "elapsed_s": %s, "passed": %s, "date": "%s", "commit": "%s"}\n' \
    "$cycles" "$(field acknowledged)" "$(field ambiguous)" "$(field retried)" "$(field elapsed_s)" \
    "$passed" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(git describe --always --dirty)" > "$json"
echo "figures written to $json" >&2
[ "$passed" = true ]
