#!/usr/bin/env bash
# The `tpch` suite: the 22 TPC-H queries on OmenDB against DuckDB (from PyPI, in memory, on the
# same CSV files) and, with --postgres, PostgreSQL 15 on the same machine, one after the other.
#
#   bash bench/tpch.sh [--sf 1] [--runs 3] [--json bench/tpch.json] [--postgres] [--copy-rows 50000]
#                      [--no-vacuum] [--pg-timeout-secs 300] [--queries 1-22]
#
# Makes the data once with tpchgen-cli into ~/.cache/omendb-tpch/sf<SF>/, loads it into every
# system (OmenDB and PostgreSQL through COPY FROM STDIN, --copy-rows rows per transaction; then
# VACUUM on OmenDB, which builds every table's row and column pages, unless --no-vacuum),
# checks every query's answer against DuckDB's before timing anything, then prints a table of
# per-query times (median of the runs, min–max beside it) with OmenDB/DuckDB and
# OmenDB/PostgreSQL ratios, the load rates, and writes the same figures as JSON (bench/tpch.py
# does the work). Builds OmenDB in release mode unless OMENDB_BIN names a binary; installs
# duckdb, psycopg and tpchgen-cli from PyPI when missing; --postgres needs initdb and pg_ctl
# (PostgreSQL 15).
set -euo pipefail
cd "$(dirname "$0")/.."

sf=1; runs=3; json=bench/tpch.json; postgres=0; copy_rows=50000
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --sf) sf="$2"; shift 2 ;;
        --runs) runs="$2"; shift 2 ;;
        --json) json="$2"; shift 2 ;;
        --postgres) postgres=1; shift ;;
        --copy-rows) copy_rows="$2"; shift 2 ;;
        --no-vacuum) extra+=("$1"); shift ;;
        --pg-timeout-secs|--queries) extra+=("$1" "$2"); shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done

if [ -n "${OMENDB_BIN:-}" ]; then
    omendb="$OMENDB_BIN"
else
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/omendb-target}"
    cargo build --release --locked --bin omendb >&2
    omendb="$CARGO_TARGET_DIR/release/omendb"
fi
[ -x "$omendb" ] || { echo "no OmenDB binary at $omendb" >&2; exit 1; }
if [ "$postgres" = 1 ]; then
    command -v initdb >/dev/null || export PATH="$PATH:/usr/lib/postgresql/15/bin"
    command -v initdb >/dev/null && command -v pg_ctl >/dev/null \
        || { echo "--postgres needs initdb and pg_ctl (PostgreSQL 15)" >&2; exit 1; }
fi

# Python packages, from PyPI when missing.
python3 -c 'import duckdb' 2>/dev/null || python3 -m pip install --quiet duckdb >&2
python3 -c 'import psycopg' 2>/dev/null || python3 -m pip install --quiet 'psycopg[binary]' >&2
tpchgen=$(command -v tpchgen-cli || true)
if [ -z "$tpchgen" ]; then
    python3 -m pip install --quiet tpchgen-cli >&2
    for d in "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')" \
             "$(python3 -m site --user-base)/bin"; do
        [ -x "$d/tpchgen-cli" ] && { tpchgen="$d/tpchgen-cli"; break; }
    done
    [ -n "$tpchgen" ] || { echo "tpchgen-cli was installed but is not on PATH" >&2; exit 1; }
fi

# The data, made once per scale factor (CSV with a header line, one file per table).
data="$HOME/.cache/omendb-tpch/sf$sf"
if [ ! -f "$data/.complete" ]; then
    echo "generating TPC-H SF $sf into $data" >&2
    rm -rf "$data" "$data.tmp"
    mkdir -p "$data.tmp"
    "$tpchgen" csv -s "$sf" --output-dir="$data.tmp" >&2
    for t in region nation part supplier partsupp customer orders lineitem; do
        [ -s "$data.tmp/$t.csv" ] || { echo "tpchgen-cli made no $t.csv" >&2; exit 1; }
    done
    mv "$data.tmp" "$data"
    "$tpchgen" --version > "$data/.complete"
fi

work=$(mktemp -d /tmp/omendb-bench-tpch.XXXXXX)
pg_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
om_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" = 0 ] && chown postgres "$work"

cleanup() {
    [ -n "${om_pid:-}" ] && kill -TERM "$om_pid" 2>/dev/null && wait "$om_pid" 2>/dev/null
    [ "$postgres" = 1 ] && { as_pg pg_ctl -D "$work/pg" -m fast stop >/dev/null 2>&1 || true; }
    rm -rf "$work"
}
trap cleanup EXIT

pg_args=()
if [ "$postgres" = 1 ]; then
    # Same durability as OmenDB (fsync=on, synchronous_commit=on); memory for an analytic load.
    echo "starting PostgreSQL 15 (fsync=on, synchronous_commit=on, shared_buffers=2GB, work_mem=256MB)" >&2
    as_pg initdb -D "$work/pg" -A trust -U postgres --no-sync >/dev/null
    as_pg pg_ctl -D "$work/pg" -l "$work/pg.log" -w -t 60 \
        -o "-p $pg_port -k $work -c listen_addresses=127.0.0.1 -c fsync=on -c synchronous_commit=on -c shared_buffers=2GB -c work_mem=256MB -c effective_cache_size=8GB -c max_wal_size=8GB" start >/dev/null
    pg_args=(--postgres-url "postgres://postgres@127.0.0.1:$pg_port/postgres")
fi
echo "starting OmenDB" >&2
"$omendb" start --data-dir "$work/omendb" --port "$om_port" >"$work/omendb.url" 2>"$work/omendb.log" &
om_pid=$!
for _ in $(seq 1 120); do [ -s "$work/omendb.url" ] && break; sleep 0.5; done
[ -s "$work/omendb.url" ] || { echo "OmenDB did not start; its log:" >&2; tail -20 "$work/omendb.log" >&2; exit 1; }
om_url=$(head -1 "$work/omendb.url")

python3 bench/tpch.py --omendb-url "$om_url" "${pg_args[@]}" --data-dir "$data" --sf "$sf" \
    --runs "$runs" --json "$json" --copy-rows "$copy_rows" "${extra[@]}"
