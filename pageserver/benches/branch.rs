//! Branch creation time against database size: a root timeline is filled with n rows (one
//! user table, 100-byte values, committed 1,000 rows per transaction), uploaded as delta
//! layers and compacted to image layers (row pages and Parquet column pages) in a local
//! object-store folder; then `Timelines::create` makes a branch of it at its latest LSN,
//! `BRANCH_BENCH_RUNS` times, each a new timeline id. The claim under test: creating a branch
//! copies no data, so its time does not grow with n.
//!
//! Sizes: `BRANCH_BENCH_ROWS=10000,1000000` (the default). Prints, per size, the object-store
//! bytes of the root timeline and the median, min and max branch creation time, then the
//! ratio of the medians (largest size / smallest). Also checks that each branch reads the
//! root's last row, so a branch that copied nothing because it read nothing cannot pass.
//!
//! Run: `cargo bench -p pageserver --bench branch`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ids::{Lsn, TenantId, TimelineId};
use pageserver::block_cache::{BlockCache, BlockCacheConfig, BLOCK_CACHE_DISK_BYTES_MIN};
use pageserver::timelines::{TaskConfig, Timelines};
use pageserver_api::BranchPoint;
use remote_storage::RemoteStorage;
use rowcodec::{ColumnDef, ColumnType, TableDef, Value, CATALOG_TABLE_ID};
use wal::{Op, Transaction};

const TENANT: TenantId = TenantId([0x42; 16]);
const ROWS_PER_COMMIT: usize = 1_000;
const RUNS_DEFAULT: usize = 20;

fn main() -> anyhow::Result<()> {
    let sizes: Vec<usize> = std::env::var("BRANCH_BENCH_ROWS")
        .unwrap_or_else(|_| "10000,1000000".into())
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()?;
    let runs: usize = match std::env::var("BRANCH_BENCH_RUNS") {
        Ok(v) => v.parse()?,
        Err(_) => RUNS_DEFAULT,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut medians = Vec::new();
    for n_rows in sizes {
        let (bytes, times) = runtime.block_on(measure(n_rows, runs))?;
        let mut sorted = times.clone();
        sorted.sort();
        let median = sorted[sorted.len() / 2];
        println!(
            "rows {n_rows:>10}  object store {:>8.1} MiB  branch create median {:>8.3} ms  (min {:.3}, max {:.3}, {runs} runs)",
            bytes as f64 / (1 << 20) as f64,
            ms(median),
            ms(sorted[0]),
            ms(*sorted.last().expect("runs > 0")),
        );
        medians.push((n_rows, median));
    }
    if let (Some(first), Some(last)) = (medians.first(), medians.last()) {
        println!(
            "ratio of medians, {} rows / {} rows: {:.2}",
            last.0,
            first.0,
            last.1.as_secs_f64() / first.1.as_secs_f64()
        );
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn measure(n_rows: usize, runs: usize) -> anyhow::Result<(u64, Vec<Duration>)> {
    let dir = std::env::temp_dir().join(format!(
        "omendb-branch-bench-{}-{n_rows}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let cache = BlockCache::open(BlockCacheConfig {
        memory_bytes: 64 << 20,
        disk_dir: dir.join("cache"),
        disk_bytes: BLOCK_CACHE_DISK_BYTES_MIN,
    })
    .await?;
    let remote = RemoteStorage::local(&dir.join("store"))?;
    let (failures, _failures_rx) = tokio::sync::mpsc::unbounded_channel();
    let timelines = Timelines::new(
        remote,
        Arc::new(cache),
        TaskConfig {
            safekeepers: Vec::new(),
            checkpoint_interval: Duration::from_secs(3600),
            wait_lsn_timeout: Duration::from_secs(10),
        },
        failures,
    );
    let root_id = TimelineId::from_u128(1);
    let root = timelines.create(TENANT, root_id, None).await?;
    let def = TableDef {
        id: 16,
        name: "bench".into(),
        columns: vec![
            ColumnDef {
                name: "id".into(),
                column_type: ColumnType::BigInt,
                not_null: true,
            },
            ColumnDef {
                name: "payload".into(),
                column_type: ColumnType::Text,
                not_null: false,
            },
        ],
        primary_key: vec![0],
    };
    let mut lsn = Lsn(0);
    let mut ops = vec![Op::Put {
        table: CATALOG_TABLE_ID,
        key: Bytes::from_static(b"bench"),
        value: def.encode(),
    }];
    let payload = "x".repeat(100);
    let mut last_key = Bytes::new();
    for id in 0..n_rows as i64 {
        let mut value = Vec::new();
        rowcodec::encode_values(&[Value::Int64(id), Value::Text(&payload)], &mut value)?;
        last_key = Bytes::copy_from_slice(&((id as u64) ^ (1 << 63)).to_be_bytes());
        ops.push(Op::Put {
            table: 16,
            key: last_key.clone(),
            value: Bytes::from(value),
        });
        if ops.len() >= ROWS_PER_COMMIT || id as usize == n_rows - 1 {
            lsn = lsn.add(1 + ops.len() as u64 * 120);
            let txn = Transaction {
                xid: lsn.0,
                commit_time_us: 0,
                ops: std::mem::take(&mut ops),
            };
            root.ingest(lsn, txn)?;
        }
        if id as usize % (n_rows / 12).max(1) == 0 {
            root.checkpoint().await?;
        }
    }
    root.checkpoint().await?;
    root.compact().await?;
    let bytes = dir_bytes(&dir.join("store"));
    let mut times = Vec::with_capacity(runs);
    for run in 0..runs {
        let id = TimelineId::from_u128(1000 + run as u128);
        let started = Instant::now();
        let branch = timelines
            .create(TENANT, id, Some((root_id, BranchPoint::Latest)))
            .await?;
        times.push(started.elapsed());
        let row = branch.get(16, &last_key, lsn).await?;
        anyhow::ensure!(
            row.is_some(),
            "the branch does not read the root's last row"
        );
    }
    timelines.shutdown().await?;
    std::fs::remove_dir_all(&dir)?;
    Ok((bytes, times))
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| {
            let path = entry.path();
            if path.is_dir() {
                dir_bytes(&path)
            } else {
                entry.metadata().map(|m| m.len()).unwrap_or(0)
            }
        })
        .sum()
}
