#!/usr/bin/env python3
"""The `tpch` suite: the 22 TPC-H queries on OmenDB against DuckDB (and PostgreSQL 15).

What it measures:
  * ingest: the whole load of the TPC-H CSV files into each system, in rows per second. OmenDB
    and PostgreSQL get exactly the same client-side stream (`COPY <table> FROM STDIN`, FORMAT csv,
    `--copy-rows` rows per COPY, each COPY its own transaction), so OmenDB/PostgreSQL is the
    ingest ratio. DuckDB (in memory) reads the files itself and is shown for information.
  * answers: every query runs once on each system and its rows are compared with DuckDB's
    (row by row in ORDER BY order; numbers as floats equal within 1e-6, relative or absolute, dates as ISO
    strings, strings without trailing spaces). A query whose answer is wrong or that fails is
    reported as such and is not timed on that system.
  * query time: after the checking run (which is also the warm-up), `--runs` timed runs per
    query and system, wall time of execute + fetchall measured in this client; median, min and
    max in ms, the OmenDB/DuckDB (and OmenDB/PostgreSQL) ratio of medians per query, and the
    total of the medians over the queries every system answered correctly.

The schema is bench/tpch/schema.sql and the queries bench/tpch/queries/qNN.sql (the
specification's validation parameters). bench/tpch.sh starts the servers, makes the data and
calls this script; `--omendb-url` may be any PostgreSQL-protocol URL.
"""
import argparse
import datetime
import decimal
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCHEMA = HERE / "tpch" / "schema.sql"
QUERY_DIR = HERE / "tpch" / "queries"
TABLES = ["region", "nation", "part", "supplier", "partsupp", "customer", "orders", "lineitem"]

# Queries whose ORDER BY may leave ties: the 0-based result columns it sorts on. Those columns are
# compared in order, the whole rows as sorted multisets. The other queries are compared row by row.
PARTIAL_ORDER = {3: [1, 2], 5: [1], 10: [2], 11: [1], 18: [4, 3]}
REL_TOL = 1e-6
# Absolute tolerance for numbers: an average of decimal(15,2) values comes back from OmenDB as a
# decimal with 6 digits after the point (DataFusion's avg), so it may differ by up to 5e-7.
ABS_TOL = 1e-6


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def schema_statements():
    text = "\n".join(line.split("--", 1)[0] for line in SCHEMA.read_text().splitlines())
    return [s.strip() for s in text.split(";") if s.strip()]


def csv_path(args, table):
    return Path(args.data_dir) / f"{table}.csv"


def has_header(path):
    with open(path, "rb") as f:
        first = f.readline()
    return bool(first) and not first.split(b",", 1)[0].strip().isdigit()


# ---------------------------------------------------------------------------------------------
# Loading


class Progress:
    """Progress of one table's load on stderr, at most every 2 s (a rewritten line on a tty)."""

    def __init__(self, system, table):
        self.system, self.table, self.start = system, table, time.perf_counter()
        self.last = self.start
        self.tty = sys.stderr.isatty()

    def update(self, rows, fraction, final=False):
        now = time.perf_counter()
        if not final and now - self.last < 2.0:
            return
        self.last = now
        secs = max(now - self.start, 1e-9)
        msg = (f"  {self.system:<8} {self.table:<9} {rows:>12,} rows {100 * fraction:5.1f}% "
               f"{rows / secs:>12,.0f} rows/s {secs:7.1f} s")
        if self.tty:
            print("\r" + msg, end="\n" if final else "", file=sys.stderr, flush=True)
        else:
            log(msg)


def copy_table(conn, system, table, args):
    """Streams one CSV file with COPY FROM STDIN, --copy-rows rows per COPY (one transaction each)."""
    path = csv_path(args, table)
    size = max(path.stat().st_size, 1)
    sql = f"COPY {table} FROM STDIN (FORMAT csv)"
    progress = Progress(system, table)
    rows = 0

    def send(chunk):
        with conn.cursor() as cur:
            with cur.copy(sql) as copy:
                copy.write(b"".join(chunk))

    with open(path, "rb") as f:
        if has_header(path):
            f.readline()
        chunk = []
        for line in f:
            chunk.append(line)
            if len(chunk) >= args.copy_rows:
                try:
                    send(chunk)
                except Exception as e:
                    raise RuntimeError(f"COPY {table} failed after {rows} rows: {e}") from e
                rows += len(chunk)
                chunk = []
                progress.update(rows, f.tell() / size)
        if chunk:
            try:
                send(chunk)
            except Exception as e:
                raise RuntimeError(f"COPY {table} failed after {rows} rows: {e}") from e
            rows += len(chunk)
    progress.update(rows, 1.0, final=True)
    return rows


def load_over_pg_protocol(system, url, args):
    """CREATE TABLEs and COPY every table; returns (autocommit connection, load figures)."""
    import psycopg

    conn = psycopg.connect(url, autocommit=True)
    log(f"loading {system} ({args.copy_rows} rows per COPY)")
    start = time.perf_counter()
    for stmt in schema_statements():
        conn.execute(stmt)
    tables = {}
    for table in TABLES:
        t0 = time.perf_counter()
        rows = copy_table(conn, system, table, args)
        tables[table] = {"rows": rows, "seconds": round(time.perf_counter() - t0, 3)}
    secs = time.perf_counter() - start
    total = sum(t["rows"] for t in tables.values())
    log(f"  {system}: {total:,} rows in {secs:.1f} s, {total / secs:,.0f} rows/s")
    return conn, {"rows": total, "seconds": round(secs, 3), "rows_per_s": round(total / secs, 1),
                  "method": f"COPY FROM STDIN (FORMAT csv), {args.copy_rows} rows per COPY",
                  "tables": tables}


def load_duckdb(args):
    import duckdb

    con = duckdb.connect()  # in memory, default threads
    log("loading duckdb (in memory)")
    start = time.perf_counter()
    for stmt in schema_statements():
        con.execute(stmt)
    tables = {}
    for table in TABLES:
        t0 = time.perf_counter()
        path = str(csv_path(args, table)).replace("'", "''")
        header = "true" if has_header(csv_path(args, table)) else "false"
        con.execute(f"COPY {table} FROM '{path}' (FORMAT csv, HEADER {header})")
        secs = time.perf_counter() - t0
        rows = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        tables[table] = {"rows": rows, "seconds": round(secs, 3)}
        log(f"  duckdb   {table:<9} {rows:>12,} rows {rows / max(secs, 1e-9):>12,.0f} rows/s {secs:7.1f} s")
    secs = time.perf_counter() - start
    total = sum(t["rows"] for t in tables.values())
    log(f"  duckdb: {total:,} rows in {secs:.1f} s, {total / secs:,.0f} rows/s")
    return con, {"rows": total, "seconds": round(secs, 3), "rows_per_s": round(total / secs, 1),
                 "method": "COPY FROM 'file' (FORMAT csv), in-memory database", "tables": tables}


def settle_omendb(conn, args):
    """Runs after OmenDB's load and before any query: `VACUUM` has the pageserver write out what
    the load left in memory and build image layers (row and column pages) of every table, as
    background compaction would in time, so that reads start from column pages instead of
    merging the last deltas. Returns its duration in seconds (None when --no-vacuum)."""
    if args.no_vacuum:
        return None
    log("VACUUM on omendb (image layers with row and column pages of every table)")
    start = time.perf_counter()
    conn.execute("VACUUM")
    seconds = time.perf_counter() - start
    log(f"VACUUM took {seconds:.1f} s")
    return seconds


# ---------------------------------------------------------------------------------------------
# Running and checking


class Timeout(Exception):
    pass


class PgSystem:
    def __init__(self, name, conn, timeout_secs=None):
        self.name, self.conn = name, conn
        if timeout_secs:
            conn.execute(f"SET statement_timeout = {int(timeout_secs * 1000)}")

    def run(self, sql):
        import psycopg

        try:
            with self.conn.cursor() as cur:
                cur.execute(sql)
                rows = cur.fetchall() if cur.description else []
                cols = [d.name for d in cur.description] if cur.description else []
                return cols, rows
        except psycopg.errors.QueryCanceled as e:
            raise Timeout(str(e).strip()) from e


class DuckSystem:
    name = "duckdb"

    def __init__(self, con):
        self.con = con

    def run(self, sql):
        cur = self.con.execute(sql)
        rows = cur.fetchall()
        return [d[0] for d in cur.description], rows


def norm(v):
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, (int, float, decimal.Decimal)):
        return float(v)
    if isinstance(v, datetime.datetime):
        return v.isoformat(sep=" ")
    if isinstance(v, datetime.date):
        return v.isoformat()
    if isinstance(v, str):
        return v.rstrip()
    return str(v)


def same(a, b):
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=ABS_TOL)
    return a == b


def sort_key(row):
    return tuple((0, 0) if v is None else (1, v) if isinstance(v, float) else (2, str(v)) for v in row)


def short(v):
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


def compare(qnum, cols, expected, got):
    """None when `got` is the same answer as `expected`, else a short reason."""
    exp = [tuple(norm(v) for v in r) for r in expected]
    act = [tuple(norm(v) for v in r) for r in got]
    if len(act) != len(exp):
        return f"{len(act)} rows, expected {len(exp)}"
    if act and len(act[0]) != len(exp[0]):
        return f"{len(act[0])} columns, expected {len(exp[0])}"

    def diff(rows_a, rows_e, which, what=""):
        for i, (ra, re) in enumerate(zip(rows_a, rows_e)):
            for j in which:
                if not same(ra[j], re[j]):
                    return f"row {i + 1}{what} column {cols[j]}: {short(ra[j])}, expected {short(re[j])}"
        return None

    all_cols = range(len(exp[0])) if exp else []
    if qnum in PARTIAL_ORDER:
        reason = diff(act, exp, PARTIAL_ORDER[qnum], " (ORDER BY)")
        if reason:
            return reason
        return diff(sorted(act, key=sort_key), sorted(exp, key=sort_key), all_cols, " (sorted)")
    return diff(act, exp, all_cols)


def first_line(e):
    s = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return s if len(s) <= 160 else s[:157] + "..."


def check(system, qnum, sql, reference):
    """Runs the query once (the warm-up) and returns its answer status."""
    try:
        cols, rows = system.run(sql)
    except Timeout:
        return "timeout"
    except Exception as e:
        return f"error: {first_line(e)}"
    if reference is None:
        return "unchecked: no reference answer"
    reason = compare(qnum, reference[0], reference[1], rows)
    return "match" if reason is None else f"mismatch: {reason}"


def timed_runs(system, sql, runs):
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        system.run(sql)
        times.append((time.perf_counter() - t0) * 1000.0)
    return {"median_ms": round(statistics.median(times), 3), "min_ms": round(min(times), 3),
            "max_ms": round(max(times), 3), "runs_ms": [round(t, 3) for t in times]}


# ---------------------------------------------------------------------------------------------
# Configuration and report


def git_commit():
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=HERE,
                               capture_output=True, text=True).stdout.strip()
        return rev + ("+uncommitted changes" if dirty else "")
    except Exception:
        return None


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def scalar(conn, sql):
    try:
        return conn.execute(sql).fetchone()[0]
    except Exception:
        return None


def fmt_time(t):
    if t is None:
        return "-"
    return f"{t['median_ms']:.1f} [{t['min_ms']:.1f}-{t['max_ms']:.1f}]"


def fmt_ratio(r):
    return "-" if r is None else f"{r:.2f}"


def ratio(a, b):
    if a is None or b is None or b["median_ms"] <= 0:
        return None
    return round(a["median_ms"] / b["median_ms"], 3)


def total(results, systems, keys):
    """Sums of medians over the queries that every system in `systems` answered correctly."""
    qs = [r for r in results if all(r.get(k) == "match" for k in keys)
          and all(r["times"].get(s) for s in systems)]
    sums = {s: round(sum(r["times"][s]["median_ms"] for r in qs), 3) for s in systems}
    return {"queries": [r["query"] for r in qs], "sum_median_ms": sums}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--omendb-url", required=True, help="PostgreSQL-protocol URL of OmenDB")
    p.add_argument("--postgres-url", help="PostgreSQL 15 URL; the PostgreSQL baseline runs when given")
    p.add_argument("--data-dir", required=True, help="folder with the tpchgen-cli CSV files")
    p.add_argument("--sf", default="1", help="scale factor of the data (reported only)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--json", default=str(HERE / "tpch.json"))
    p.add_argument("--copy-rows", type=int, default=50000, help="rows per COPY (one transaction each)")
    p.add_argument("--no-vacuum", action="store_true",
                   help="query OmenDB as the load left it, without VACUUM first")
    p.add_argument("--pg-timeout-secs", type=float, default=300, help="PostgreSQL statement_timeout (0: none)")
    p.add_argument("--queries", default="1-22", help="e.g. 1-22 or 1,3,6")
    args = p.parse_args()

    qnums = []
    for part in args.queries.split(","):
        a, _, b = part.partition("-")
        qnums += list(range(int(a), int(b or a) + 1))
    missing = [t for t in TABLES if not csv_path(args, t).is_file()]
    if missing:
        sys.exit(f"no CSV file for {', '.join(missing)} in {args.data_dir}")
    import duckdb
    import psycopg

    with_pg = bool(args.postgres_url)
    names = ["omendb", "duckdb"] + (["postgres"] if with_pg else [])
    loads = {}
    duck, loads["duckdb"] = load_duckdb(args)
    if with_pg:
        pg_conn, loads["postgres"] = load_over_pg_protocol("postgres", args.postgres_url, args)
        log("ANALYZE on postgres")
        pg_conn.execute("ANALYZE")
    try:
        om_conn, loads["omendb"] = load_over_pg_protocol("omendb", args.omendb_url, args)
    except Exception as e:
        log(f"OmenDB could not be loaded, so the suite cannot run: {first_line(e)}")
        Path(args.json).write_text(json.dumps({"suite": "tpch", "sf": args.sf, "error":
                                               f"OmenDB load failed: {first_line(e)}"}, indent=2) + "\n")
        sys.exit(1)
    vacuum_secs = settle_omendb(om_conn, args)

    systems = {"omendb": PgSystem("omendb", om_conn), "duckdb": DuckSystem(duck)}
    if with_pg:
        systems["postgres"] = PgSystem("postgres", pg_conn, args.pg_timeout_secs)

    config = {
        "sf": args.sf, "runs": args.runs, "queries": [f"q{q:02d}" for q in qnums],
        "cores": os.cpu_count(), "cpu": cpu_model(), "host": platform.node(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "omendb_commit": git_commit(), "omendb_version": scalar(om_conn, "SELECT version()"),
        "duckdb_version": duckdb.__version__,
        "duckdb_threads": scalar(duck, "SELECT current_setting('threads')"),
        "psycopg_version": psycopg.__version__, "copy_rows": args.copy_rows,
        "omendb_vacuum_secs": vacuum_secs, "data_dir": str(args.data_dir),
        "timing": "wall time of execute + fetchall in the client, after one untimed checking run",
    }
    if with_pg:
        config["postgres_version"] = scalar(pg_conn, "SHOW server_version")
        config["postgres_settings"] = {k: scalar(pg_conn, f"SHOW {k}") for k in (
            "shared_buffers", "work_mem", "effective_cache_size", "max_parallel_workers_per_gather",
            "fsync", "synchronous_commit", "statement_timeout")}

    # Correctness first: every answer is checked before anything is timed.
    log("checking answers against DuckDB")
    results = []
    for q in qnums:
        sql = (QUERY_DIR / f"q{q:02d}.sql").read_text()
        r = {"query": f"q{q:02d}", "times": {}}
        try:
            reference = duck.execute(sql)
            reference = ([d[0] for d in reference.description], reference.fetchall())
            r["duckdb_answer"] = "ok"
        except Exception as e:
            reference = None
            r["duckdb_answer"] = f"error: {first_line(e)}"
        r["answer"] = check(systems["omendb"], q, sql, reference)
        if with_pg:
            r["postgres_answer"] = check(systems["postgres"], q, sql, reference)
        log(f"  {r['query']}: omendb {r['answer']}" + (f"; postgres {r['postgres_answer']}" if with_pg else "")
            + ("" if reference is not None else f"; duckdb {r['duckdb_answer']}"))
        results.append(r)

    log(f"timing, {args.runs} runs per query and system")
    for r in results:
        sql = (QUERY_DIR / f"{r['query']}.sql").read_text()
        todo = {"duckdb": r["duckdb_answer"] == "ok", "omendb": r["answer"] == "match"}
        if with_pg:
            todo["postgres"] = r["postgres_answer"] == "match"
        for name in names:
            if not todo[name]:
                r["times"][name] = None
                continue
            try:
                r["times"][name] = timed_runs(systems[name], sql, args.runs)
            except Timeout:
                r["times"][name] = None
                key = "postgres_answer" if name == "postgres" else "answer"
                r[key] = "timeout"
            except Exception as e:
                r["times"][name] = None
                key = {"postgres": "postgres_answer", "omendb": "answer"}.get(name, "duckdb_answer")
                r[key] = f"error: {first_line(e)} (in a timed run)"
        r["ratio_omendb_duckdb"] = ratio(r["times"]["omendb"], r["times"]["duckdb"])
        if with_pg:
            r["ratio_omendb_postgres"] = ratio(r["times"]["omendb"], r["times"]["postgres"])
        log(f"  {r['query']}: " + ", ".join(f"{n} {fmt_time(r['times'][n])} ms" for n in names))

    # Totals: over the queries all systems answered correctly, and (with PostgreSQL) also over
    # those OmenDB and DuckDB answered correctly, so that PostgreSQL timeouts do not hide queries.
    keys = ["answer"] + (["postgres_answer"] if with_pg else [])
    totals = {"all_systems": total(results, names, keys)}
    t = totals["all_systems"]["sum_median_ms"]
    totals["all_systems"]["ratio_omendb_duckdb"] = round(t["omendb"] / t["duckdb"], 3) if t["duckdb"] else None
    if with_pg:
        totals["all_systems"]["ratio_omendb_postgres"] = (
            round(t["omendb"] / t["postgres"], 3) if t["postgres"] else None)
        totals["omendb_duckdb"] = total(results, ["omendb", "duckdb"], ["answer"])
        t2 = totals["omendb_duckdb"]["sum_median_ms"]
        totals["omendb_duckdb"]["ratio_omendb_duckdb"] = round(t2["omendb"] / t2["duckdb"], 3) if t2["duckdb"] else None

    ingest = None
    if with_pg:
        ingest = round(loads["omendb"]["rows_per_s"] / loads["postgres"]["rows_per_s"], 3)

    # Report.
    print()
    print("TPC-H configuration")
    for k, v in config.items():
        if k != "queries":
            print(f"  {k}: {v}")
    print()
    print(f"{'load':<10} {'rows':>12} {'seconds':>10} {'rows/s':>14}  method")
    for n in names:
        l = loads[n]
        print(f"{n:<10} {l['rows']:>12,} {l['seconds']:>10.2f} {l['rows_per_s']:>14,.0f}  {l['method']}")
    if ingest is not None:
        print(f"ingest ratio rows/s omendb/postgres = {ingest:.2f}")
    print()
    head = f"{'query':<6} {'answer':<28} {'omendb ms [min-max]':>26} {'duckdb ms [min-max]':>26} {'om/duck':>8}"
    if with_pg:
        head += f"  {'postgres answer':<18} {'postgres ms [min-max]':>26} {'om/pg':>7}"
    print(head)
    for r in results:
        ans = r["answer"] if len(r["answer"]) <= 28 else r["answer"][:25] + "..."
        line = (f"{r['query']:<6} {ans:<28} {fmt_time(r['times']['omendb']):>26} "
                f"{fmt_time(r['times']['duckdb']):>26} {fmt_ratio(r['ratio_omendb_duckdb']):>8}")
        if with_pg:
            pa = r["postgres_answer"] if len(r["postgres_answer"]) <= 18 else r["postgres_answer"][:15] + "..."
            line += (f"  {pa:<18} {fmt_time(r['times']['postgres']):>26} "
                     f"{fmt_ratio(r['ratio_omendb_postgres']):>7}")
        print(line)
    for label, tot in totals.items():
        s = tot["sum_median_ms"]
        line = (f"total over {len(tot['queries'])} queries answered correctly by "
                f"{'every system' if label == 'all_systems' else 'omendb and duckdb'}: "
                + ", ".join(f"{n} {v:.1f} ms" for n, v in s.items())
                + f"; omendb/duckdb = {fmt_ratio(tot.get('ratio_omendb_duckdb'))}")
        if "ratio_omendb_postgres" in tot:
            line += f", omendb/postgres = {fmt_ratio(tot['ratio_omendb_postgres'])}"
        print(line)
    wrong = [r["query"] for r in results if r["answer"] != "match"]
    if wrong:
        print(f"OmenDB did not answer correctly, so these are not timed for it: {', '.join(wrong)}")
    for r in results:
        for who, key in (("omendb", "answer"), ("postgres", "postgres_answer"), ("duckdb", "duckdb_answer")):
            if r.get(key, "match") not in ("match", "ok"):
                print(f"  {r['query']} {who}: {r[key]}")
    print("ratios are medians omendb / baseline: above 1 means OmenDB is slower")

    out = {"suite": "tpch", "config": config, "load": loads, "ingest_ratio_omendb_postgres": ingest,
           "queries": results, "totals": totals}
    tmp = Path(str(args.json) + ".tmp")
    tmp.write_text(json.dumps(out, indent=2, default=str) + "\n")
    tmp.replace(args.json)
    log(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
