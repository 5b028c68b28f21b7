//! Scan throughput through the pageserver, row pages against column pages: a root timeline
//! of n rows (bigint key, 100-byte text) compacted to an image layer (row pages and Parquet
//! column pages) in a local object-store folder, served over TCP by a pageserver registry with
//! a block cache large enough to hold it. Each variant reads the whole table at the latest
//! LSN:
//!
//! - `rows`: `Scan` (row pages; whole rows in `RowBatch` frames);
//! - `columns id`: `ColumnScan` of the key column alone (what `SELECT sum(id)` asks for);
//! - `columns all`: `ColumnScan` of both columns.
//!
//! Every variant runs once to warm the cache, then `SCAN_BENCH_RUNS` times; prints the
//! median time, rows per second and bytes received per row, and each column variant's median
//! over the row variant's. Every run must return all n rows.
//!
//! Run: `cargo bench -p pageserver --bench scan` (`SCAN_BENCH_ROWS`, default 1000000;
//! `SCAN_BENCH_RUNS`, default 5).

mod support;

use std::time::{Duration, Instant};

use ids::Lsn;
use pageserver_api::{Request, Response};
use support::{Served, ROOT, TABLE};
use tokio::net::TcpStream;

fn env_or(name: &str, default: usize) -> anyhow::Result<usize> {
    Ok(match std::env::var(name) {
        Ok(v) => v.parse()?,
        Err(_) => default,
    })
}

fn main() -> anyhow::Result<()> {
    let n_rows = env_or("SCAN_BENCH_ROWS", 1_000_000)?;
    let runs = env_or("SCAN_BENCH_RUNS", 5)?.max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(n_rows, runs))
}

#[derive(Clone, Copy, Debug)]
enum Variant {
    Rows,
    Columns(&'static [u32]),
}

impl Variant {
    fn name(&self) -> &'static str {
        match self {
            Variant::Rows => "rows",
            Variant::Columns(columns) if columns.len() == 1 => "columns id",
            Variant::Columns(_) => "columns all",
        }
    }
}

async fn run(n_rows: usize, runs: usize) -> anyhow::Result<()> {
    // The serving registry's cache holds the whole table after one scan.
    let mut served = Served::start("scan", n_rows, 2 << 30).await?;
    println!(
        "rows {n_rows}, object store {:.1} MiB, {runs} runs per variant after one warm-up run",
        served.store_mib()
    );
    let lsn = served.lsn;
    let stream = &mut served.stream;
    let variants = [
        Variant::Rows,
        Variant::Columns(&[0]),
        Variant::Columns(&[0, 1]),
    ];
    let mut medians = Vec::new();
    for variant in variants {
        scan(stream, variant, lsn, n_rows).await?;
        let mut times = Vec::with_capacity(runs);
        let mut bytes = 0;
        for _ in 0..runs {
            let started = Instant::now();
            bytes = scan(stream, variant, lsn, n_rows).await?;
            times.push(started.elapsed());
        }
        times.sort();
        let median = times[times.len() / 2];
        println!(
            "{:<12} median {:>9.1} ms  (min {:.1}, max {:.1})  {:>6.2} M rows/s  {:>6.1} bytes received/row",
            variant.name(),
            ms(median),
            ms(times[0]),
            ms(*times.last().expect("runs > 0")),
            n_rows as f64 / median.as_secs_f64() / 1e6,
            bytes as f64 / n_rows as f64,
        );
        medians.push((variant, median));
    }
    let rows = medians[0].1;
    for (variant, median) in &medians[1..] {
        println!(
            "{} / rows: {:.2}",
            variant.name(),
            median.as_secs_f64() / rows.as_secs_f64()
        );
    }

    served.stop().await
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One whole-table scan; returns the bytes received (frame payloads). Fails unless it
/// returns exactly `n_rows` rows.
async fn scan(
    stream: &mut TcpStream,
    variant: Variant,
    lsn: Lsn,
    n_rows: usize,
) -> anyhow::Result<usize> {
    let request = match variant {
        Variant::Rows => Request::Scan {
            timeline: ROOT,
            table: TABLE,
            start: None,
            end: None,
            lsn,
        },
        Variant::Columns(columns) => Request::ColumnScan {
            timeline: ROOT,
            table: TABLE,
            lsn,
            columns: columns.to_vec(),
            predicates: Vec::new(),
            batch_rows: pageserver_api::COLUMN_SCAN_BATCH_ROWS_MAX,
        },
    };
    wire::write_frame(stream, &request.encode()).await?;
    let mut received = 0usize;
    let mut n = 0usize;
    let mut ipc = Vec::new();
    loop {
        let frame = wire::read_frame(stream)
            .await?
            .ok_or_else(|| anyhow::anyhow!("the pageserver closed the connection"))?;
        received += frame.len();
        match Response::decode(&frame)? {
            Response::RowBatch { rows } => n += rows.len(),
            Response::ColumnBatch { ipc: part } => ipc.extend_from_slice(&part),
            Response::ScanEnd => break,
            other => anyhow::bail!("{}: {other:?}", variant.name()),
        }
    }
    if !ipc.is_empty() {
        let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(ipc), None)?;
        for batch in reader {
            n += batch?.num_rows();
        }
    }
    anyhow::ensure!(n == n_rows, "{}: {n} rows, not {n_rows}", variant.name());
    Ok(received)
}
