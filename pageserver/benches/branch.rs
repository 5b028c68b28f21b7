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

mod support;

use std::time::{Duration, Instant};

use ids::TimelineId;
use pageserver_api::BranchPoint;
use support::{dir_bytes, fill, registry, row_key, ROOT, TENANT};

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
    let timelines = registry(&dir, "cache", 64 << 20).await?;
    let root = timelines.create(TENANT, ROOT, None).await?;
    let lsn = fill(&root, n_rows).await?;
    let last_key = row_key(n_rows as i64 - 1);
    let bytes = dir_bytes(&dir.join("store"));
    let mut times = Vec::with_capacity(runs);
    for run in 0..runs {
        let id = TimelineId::from_u128(1000 + run as u128);
        let started = Instant::now();
        let branch = timelines
            .create(TENANT, id, Some((ROOT, BranchPoint::Latest)))
            .await?;
        times.push(started.elapsed());
        let row = branch.get(support::TABLE, &last_key, lsn).await?;
        anyhow::ensure!(
            row.is_some(),
            "the branch does not read the root's last row"
        );
    }
    timelines.shutdown().await?;
    std::fs::remove_dir_all(&dir)?;
    Ok((bytes, times))
}
