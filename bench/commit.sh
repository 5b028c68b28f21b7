#!/usr/bin/env bash
# The `commit` suite: single-row INSERT commits against OmenDB and PostgreSQL 15 on the same
# machine, one after the other, with the same durability (PostgreSQL: fsync=on,
# synchronous_commit=on; OmenDB: a majority of 3 safekeepers fsynced).
#
#   bash bench/commit.sh [--clients "1 8 32"] [--seconds 10] [--runs 3] [--json out.json]
#
# Prints a table of TPS and average latency per client count (median of the runs, min–max
# beside it) with OmenDB/PostgreSQL ratios, and writes the same figures as JSON. Needs
# pgbench, initdb and pg_ctl (PostgreSQL 15) and builds OmenDB in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."

clients="1 8 32"; seconds=10; runs=3; json=bench/commit.json
while [ $# -gt 0 ]; do
    case "$1" in
        --clients) clients="$2"; shift 2 ;;
        --seconds) seconds="$2"; shift 2 ;;
        --runs) runs="$2"; shift 2 ;;
        --json) json="$2"; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/omendb-target}"
cargo build --release --locked --bin omendb >&2
omendb="$CARGO_TARGET_DIR/release/omendb"

work=$(mktemp -d /tmp/omendb-bench-commit.XXXXXX)
pg_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
om_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" = 0 ] && chown postgres "$work"

cleanup() {
    [ -n "${om_pid:-}" ] && kill -TERM "$om_pid" 2>/dev/null && wait "$om_pid" 2>/dev/null
    as_pg pg_ctl -D "$work/pg" -m fast stop >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

echo "starting PostgreSQL 15 (fsync=on, synchronous_commit=on) and OmenDB (3 safekeepers)" >&2
as_pg initdb -D "$work/pg" -A trust -U postgres --no-sync >/dev/null
as_pg pg_ctl -D "$work/pg" -l "$work/pg.log" -w -t 60 \
    -o "-p $pg_port -k $work -c listen_addresses=127.0.0.1 -c fsync=on -c synchronous_commit=on -c max_connections=200" start >/dev/null
"$omendb" start --data-dir "$work/omendb" --port "$om_port" >"$work/omendb.url" 2>"$work/omendb.log" &
om_pid=$!
for _ in $(seq 1 120); do [ -s "$work/omendb.url" ] && break; sleep 0.5; done
[ -s "$work/omendb.url" ] || { echo "OmenDB did not start; see $work/omendb.log" >&2; exit 1; }

pg_url="postgres://postgres@127.0.0.1:$pg_port/postgres"
om_url=$(head -1 "$work/omendb.url")
echo "INSERT INTO commit_bench VALUES (1, 'x');" > "$work/insert.sql"
for url in "$pg_url" "$om_url"; do psql -X -q "$url" -c "CREATE TABLE commit_bench (id int, v text)"; done

# One pgbench run: prints "tps latency_ms".
run_once() {
    local url=$1 n=$2 out
    out=$(pgbench -n -f "$work/insert.sql" -c "$n" -j "$n" -T "$seconds" "$url" 2>&1) || { echo "$out" >&2; exit 1; }
    echo "$(echo "$out" | grep -oP 'tps = \K[0-9.]+' | head -1) $(echo "$out" | grep -oP 'latency average = \K[0-9.]+')"
}
# Median, min and max of the numbers on stdin.
stats() { sort -g | awk '{ v[NR] = $1 } END { printf "%s %s %s\n", v[int((NR + 1) / 2)], v[1], v[NR] }'; }

printf '%-8s %-9s %12s %20s %14s %20s\n' clients server tps "tps min-max" latency_ms "latency min-max"
echo "[" > "$json.tmp"
first=1
for n in $clients; do
    declare -A med
    for server in postgres omendb; do
        url=$pg_url; [ "$server" = omendb ] && url=$om_url
        results=$(for _ in $(seq 1 "$runs"); do run_once "$url" "$n"; done)
        read -r tps tps_min tps_max < <(echo "$results" | awk '{ print $1 }' | stats)
        read -r lat lat_min lat_max < <(echo "$results" | awk '{ print $2 }' | stats)
        med[$server.tps]=$tps; med[$server.lat]=$lat
        printf '%-8s %-9s %12s %20s %14s %20s\n' "$n" "$server" "$tps" "$tps_min-$tps_max" "$lat" "$lat_min-$lat_max"
        [ $first = 1 ] || echo "," >> "$json.tmp"; first=0
        printf '  {"suite": "commit", "clients": %s, "server": "%s", "seconds": %s, "runs": %s, "tps_median": %s, "tps_min": %s, "tps_max": %s, "latency_ms_median": %s, "latency_ms_min": %s, "latency_ms_max": %s}' \
            "$n" "$server" "$seconds" "$runs" "$tps" "$tps_min" "$tps_max" "$lat" "$lat_min" "$lat_max" >> "$json.tmp"
    done
    awk -v a="${med[omendb.tps]}" -v b="${med[postgres.tps]}" -v c="${med[omendb.lat]}" -v d="${med[postgres.lat]}" -v n="$n" \
        'BEGIN { printf "%-8s ratio     tps omendb/postgres = %.2f, latency omendb/postgres = %.2f\n", n, a / b, c / d }'
    unset med
done
printf '\n]\n' >> "$json.tmp"
mv "$json.tmp" "$json"
echo "figures written to $json" >&2
