//! Point lookups through the pageserver: `GetRow` requests over TCP to the read server, on a
//! root timeline of n rows compacted to an image layer (row pages with a learned index) in a
//! local object-store folder. A second pageserver registry on an empty block cache serves
//! them, so every block comes from the object store first:
//!
//! - first lookup: the image layer is opened (footer and learned index read) and its page
//!   fetched;
//! - cold: `LOOKUP_BENCH_LOOKUPS` keys, each in a block no earlier lookup touched;
//! - warm: the same keys again, every block now in the memory tier.
//!
//! Prints, per phase, latency (median, p99, mean) and per lookup the object-store ranged GETs,
//! the cache blocks missed and the bytes fetched. Every answer is checked (the row's id).
//!
//! Run: `cargo bench -p pageserver --bench lookup` (`LOOKUP_BENCH_ROWS`, default 1000000;
//! `LOOKUP_BENCH_LOOKUPS`, default 400).

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use ids::Lsn;
use pageserver::timelines::Timelines;
use pageserver_api::{Request, Response};
use support::{row_key, Served, ROOT, TABLE};
use tokio::net::TcpStream;

fn env_or(name: &str, default: usize) -> anyhow::Result<usize> {
    Ok(match std::env::var(name) {
        Ok(v) => v.parse()?,
        Err(_) => default,
    })
}

fn main() -> anyhow::Result<()> {
    let n_rows = env_or("LOOKUP_BENCH_ROWS", 1_000_000)?;
    let n_lookups = env_or("LOOKUP_BENCH_LOOKUPS", 400)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(n_rows, n_lookups))
}

/// Counters read before and after each lookup.
#[derive(Clone, Copy)]
struct Counters {
    gets: u64,
    misses: u64,
    bytes: u64,
}

fn counters(timelines: &Timelines) -> Counters {
    let cache = timelines.cache().metrics();
    Counters {
        gets: timelines.remote().stats().requests,
        misses: cache.misses,
        bytes: cache.bytes_fetched,
    }
}

struct Phase {
    times: Vec<Duration>,
    gets: u64,
    misses: u64,
    bytes: u64,
}

impl Phase {
    fn print(&self, name: &str) {
        let mut sorted = self.times.clone();
        sorted.sort();
        let n = sorted.len();
        let mean = sorted.iter().sum::<Duration>() / n as u32;
        println!(
            "{name:<14} lookups {n:>5}  median {:>8.1} µs  p99 {:>8.1} µs  mean {:>8.1} µs  GETs/lookup {:.2}  blocks missed/lookup {:.2}  KiB fetched/lookup {:.1}",
            us(sorted[n / 2]),
            us(sorted[(n * 99 / 100).min(n - 1)]),
            us(mean),
            self.gets as f64 / n as f64,
            self.misses as f64 / n as f64,
            self.bytes as f64 / n as f64 / 1024.0,
        );
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

async fn run(n_rows: usize, n_lookups: usize) -> anyhow::Result<()> {
    // The serving registry's cache holds every block touched.
    let mut served = Served::start("lookup", n_rows, 1 << 30).await?;
    println!("rows {n_rows}, object store {:.1} MiB", served.store_mib());
    let (lsn, timelines) = (served.lsn, served.timelines.clone());
    let stream = &mut served.stream;

    // Keys in distinct blocks: rows are ~130 bytes, blocks 64 KiB, so keys 2,000 rows apart
    // never share one. Visited in a scrambled order.
    let spacing = (n_rows / (n_lookups + 1)).max(1);
    let mut ids: Vec<i64> = (1..=n_lookups).map(|i| (i * spacing) as i64).collect();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for i in (1..ids.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ids.swap(i, (state % (i as u64 + 1)) as usize);
    }

    let first = lookup(stream, &timelines, 0, lsn).await?;
    let cold = phase(stream, &timelines, &ids, lsn).await?;
    let warm = phase(stream, &timelines, &ids, lsn).await?;
    first.print("first (open)");
    cold.print("cold");
    warm.print("warm");

    served.stop().await
}

async fn phase(
    stream: &mut TcpStream,
    timelines: &Timelines,
    ids: &[i64],
    lsn: Lsn,
) -> anyhow::Result<Phase> {
    let mut all = Phase {
        times: Vec::with_capacity(ids.len()),
        gets: 0,
        misses: 0,
        bytes: 0,
    };
    for id in ids {
        let one = lookup(stream, timelines, *id, lsn).await?;
        all.times.extend(one.times);
        all.gets += one.gets;
        all.misses += one.misses;
        all.bytes += one.bytes;
    }
    Ok(all)
}

/// One `GetRow` of row `id`, checked.
async fn lookup(
    stream: &mut TcpStream,
    timelines: &Timelines,
    id: i64,
    lsn: Lsn,
) -> anyhow::Result<Phase> {
    let request = Request::GetRow {
        timeline: ROOT,
        table: TABLE,
        key: row_key(id),
        lsn,
    }
    .encode();
    let before = counters(timelines);
    let started = Instant::now();
    wire::write_frame(stream, &request).await?;
    let frame = wire::read_frame(stream)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the pageserver closed the connection"))?;
    let elapsed = started.elapsed();
    let after = counters(timelines);
    let value: Bytes = match Response::decode(&frame)? {
        Response::Row { value: Some(value) } => value,
        other => anyhow::bail!("row {id}: {other:?}"),
    };
    let mut expected = Vec::new();
    let payload = "x".repeat(100);
    rowcodec::encode_values(
        &[rowcodec::Value::Int64(id), rowcodec::Value::Text(&payload)],
        &mut expected,
    )?;
    anyhow::ensure!(value == expected, "row {id}: another row's value");
    Ok(Phase {
        times: vec![elapsed],
        gets: after.gets - before.gets,
        misses: after.misses - before.misses,
        bytes: after.bytes - before.bytes,
    })
}
