#!/usr/bin/env bash
# The `coldstart` suite: how long a client waits for its first row when its endpoint is
# suspended (the proxy wakes it: a new compute process starts, finds its timeline, wins
# the election, loads the catalog), against the same connection to a running endpoint.
#
#   bash bench/coldstart.sh [--wakes 100] [--runs 3] [--json bench/coldstart.json]
#
# Each wake: `omendb endpoint suspend` (returns once the compute process has exited), then
# `psql "<connection string>" -c "SELECT count(*) FROM coldstart"` is timed from launch to
# exit (TLS, SCRAM-SHA-256, wake, session, query, answer); then the same psql command again
# against the now running endpoint is the warm figure. psql's own start-up is in both.
# The same again over SQL over HTTP: `curl` POSTing the query to /sql (plain HTTP on
# loopback), cold after a suspend and warm right after.
# Prints p50/p99 (median of the runs, min–max beside it) and writes them as JSON.
# Builds OmenDB in release mode; needs psql.
set -euo pipefail
cd "$(dirname "$0")/.."

wakes=100; runs=3; json=bench/coldstart.json
while [ $# -gt 0 ]; do
    case "$1" in
        --wakes) wakes="$2"; shift 2 ;;
        --runs) runs="$2"; shift 2 ;;
        --json) json="$2"; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/omendb-target}"
cargo build --release --locked --bin omendb >&2
omendb="$CARGO_TARGET_DIR/release/omendb"

work=$(mktemp -d /tmp/omendb-bench-coldstart.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cleanup() {
    [ -n "${om_pid:-}" ] && kill -TERM "$om_pid" 2>/dev/null && wait "$om_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

echo "starting OmenDB (3 safekeepers, pageserver, proxy)" >&2
"$omendb" start --data-dir "$work/omendb" --port "$port" >"$work/omendb.url" 2>"$work/omendb.log" &
om_pid=$!
for _ in $(seq 1 120); do [ -s "$work/omendb.url" ] && break; sleep 0.5; done
[ -s "$work/omendb.url" ] || { echo "OmenDB did not start; see $work/omendb.log" >&2; exit 1; }
url=$(head -1 "$work/omendb.url")
endpoint=${url##*endpoint%3D}
psql -X -q "$url" -c "CREATE TABLE coldstart (id int PRIMARY KEY, v text)"
psql -X -q "$url" -c "INSERT INTO coldstart SELECT * FROM (VALUES (1, 'a'), (2, 'b'), (3, 'c')) t(id, v)"
# Idle suspension off, so that only `endpoint suspend` stops the compute.
"$omendb" endpoint set "$endpoint" --idle-timeout-secs 0 --data-dir "$work/omendb" >/dev/null

python3 - "$omendb" "$work/omendb" "$url" "$endpoint" "$wakes" "$runs" "$json" <<'EOF'
import json, subprocess, sys, time

omendb, data_dir, url, endpoint, wakes, runs, out = sys.argv[1:]
wakes, runs = int(wakes), int(runs)
with open(f"{data_dir}/control-plane.json") as f:
    sql_url = json.load(f)["sql_over_http"]
clients = {
    "psql": (["psql", "-X", "-A", "-t", url, "-c", "SELECT count(*) FROM coldstart"],
             lambda out: out.strip() == "3"),
    "http": (["curl", "-sS", "--fail-with-body", sql_url, "-H", f"Neon-Connection-String: {url}",
              "-d", '{"query": "SELECT count(*) AS n FROM coldstart"}'],
             lambda out: json.loads(out)["rows"] == [{"n": "3"}]),
}

def first_row_ms(client):
    command, check = clients[client]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    elapsed = (time.perf_counter() - start) * 1000
    if result.returncode != 0 or not check(result.stdout):
        sys.exit(f"{client} failed or answered wrongly: {result.stdout!r} {result.stderr!r}")
    return elapsed

def state():
    listed = subprocess.run([omendb, "endpoint", "list", "--data-dir", data_dir, "--json"],
                            capture_output=True, text=True, check=True)
    return next(e["state"] for e in json.loads(listed.stdout)["endpoints"] if e["id"] == endpoint)

def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]

def suspend():
    subprocess.run([omendb, "endpoint", "suspend", endpoint, "--data-dir", data_dir],
                   capture_output=True, check=True)

per_run = []
for run in range(runs):
    times = {f"{c}_{k}": [] for c in clients for k in ("cold", "warm")}
    for i in range(wakes):
        for client in clients:
            suspend()
            if i == 0 and state() != "suspended":
                sys.exit("the endpoint did not suspend")
            times[f"{client}_cold"].append(first_row_ms(client))
            times[f"{client}_warm"].append(first_row_ms(client))
        if (i + 1) % 25 == 0:
            print(f"run {run + 1}/{runs}: {i + 1}/{wakes} wakes", file=sys.stderr)
    figures = {}
    for key, values in times.items():
        figures[f"{key}_p50"] = percentile(values, 50)
        figures[f"{key}_p99"] = percentile(values, 99)
    per_run.append(figures)

def stats(key):
    values = sorted(r[key] for r in per_run)
    return values[(len(values) - 1) // 2], values[0], values[-1]

print(f"{'figure':<16} {'median ms':>10} {'min-max ms':>16}")
results = {"suite": "coldstart", "wakes_per_run": wakes, "runs": runs}
for key in per_run[0]:
    median, low, high = stats(key)
    print(f"{key:<16} {median:>10.1f} {low:>7.1f}-{high:<8.1f}")
    results[key + "_ms"] = {"median": round(median, 2), "min": round(low, 2), "max": round(high, 2)}
for client in clients:
    ratio = stats(f"{client}_cold_p50")[0] / stats(f"{client}_warm_p50")[0]
    print(f"{client} cold/warm p50 ratio: {ratio:.2f}")
    results[f"{client}_cold_warm_p50_ratio"] = round(ratio, 2)
with open(out, "w") as f:
    json.dump(results, f, indent=2)
    f.write("\n")
EOF
echo "wrote $json" >&2
