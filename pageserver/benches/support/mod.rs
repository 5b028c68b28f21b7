//! What the pageserver benchmarks share: a registry over a local object-store folder, and a
//! root timeline filled with n rows of one user table (bigint key, 100-byte text, 1,000 rows
//! per commit), uploaded as about 12 delta layers and compacted to image layers (row pages
//! and Parquet column pages).

// Each benchmark uses a part of this module.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ids::{Lsn, TenantId, TimelineId};
use pageserver::block_cache::{BlockCache, BlockCacheConfig, BLOCK_CACHE_DISK_BYTES_MIN};
use pageserver::timeline::Timeline;
use pageserver::timelines::{TaskConfig, Timelines};
use remote_storage::RemoteStorage;
use rowcodec::{ColumnDef, ColumnType, TableDef, Value, CATALOG_TABLE_ID};
use wal::{Op, Transaction};

pub const TENANT: TenantId = TenantId([0x42; 16]);
pub const ROOT: TimelineId = TimelineId([0x01; 16]);
/// The user table's id.
pub const TABLE: u32 = 16;
const ROWS_PER_COMMIT: usize = 1_000;

/// A registry over the object-store folder `dir/store`, with an empty block cache of
/// `cache_memory_bytes` in memory (and the smallest disk tier) in the folder `dir/<cache>`.
pub async fn registry(
    dir: &std::path::Path,
    cache: &str,
    cache_memory_bytes: u64,
) -> anyhow::Result<Timelines> {
    let cache_dir = dir.join(cache);
    let _ = std::fs::remove_dir_all(&cache_dir);
    let cache = BlockCache::open(BlockCacheConfig {
        memory_bytes: cache_memory_bytes,
        disk_dir: cache_dir,
        disk_bytes: BLOCK_CACHE_DISK_BYTES_MIN,
    })
    .await?;
    let remote = RemoteStorage::local(&dir.join("store"))?;
    let (failures, failures_rx) = tokio::sync::mpsc::unbounded_channel();
    // Nobody reads the failures: keep the receiver alive for the process's life.
    std::mem::forget(failures_rx);
    Ok(Timelines::new(
        remote,
        Arc::new(cache),
        TaskConfig {
            safekeepers: Vec::new(),
            checkpoint_interval: Duration::from_secs(3600),
            wait_lsn_timeout: Duration::from_secs(10),
        },
        failures,
    ))
}

/// The row key of `id` (the order-preserving encoding of a bigint).
pub fn row_key(id: i64) -> Bytes {
    Bytes::copy_from_slice(&((id as u64) ^ (1 << 63)).to_be_bytes())
}

/// Fills `root` with rows `0..n_rows`, checkpoints about 12 times along the way, and
/// compacts. Returns the LSN of the last commit.
pub async fn fill(root: &Timeline, n_rows: usize) -> anyhow::Result<Lsn> {
    let def = TableDef {
        id: TABLE,
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
    let mut lsn = root.last_record_lsn();
    let mut ops = vec![Op::Put {
        table: CATALOG_TABLE_ID,
        key: Bytes::from_static(b"bench"),
        value: def.encode(),
    }];
    let payload = "x".repeat(100);
    for id in 0..n_rows as i64 {
        let mut value = Vec::new();
        rowcodec::encode_values(&[Value::Int64(id), Value::Text(&payload)], &mut value)?;
        ops.push(Op::Put {
            table: TABLE,
            key: row_key(id),
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
        if (id as usize).is_multiple_of((n_rows / 12).max(1)) {
            root.checkpoint().await?;
        }
    }
    root.checkpoint().await?;
    root.compact().await?;
    Ok(lsn)
}

/// The bytes of every file under `dir`.
pub fn dir_bytes(dir: &std::path::Path) -> u64 {
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

/// A filled root timeline served over TCP by a second registry on an empty block cache:
/// what the read benchmarks measure against.
pub struct Served {
    pub dir: std::path::PathBuf,
    /// The LSN of the last commit.
    pub lsn: Lsn,
    pub timelines: Arc<Timelines>,
    /// One client connection to the read server (`TCP_NODELAY`).
    pub stream: tokio::net::TcpStream,
    cancel: tokio::sync::watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
}

impl Served {
    /// Fills a root timeline with `n_rows` in a new folder named after `bench`, then serves it
    /// from a registry whose cache has `cache_memory_bytes` of memory.
    pub async fn start(
        bench: &str,
        n_rows: usize,
        cache_memory_bytes: u64,
    ) -> anyhow::Result<Served> {
        let dir = std::env::temp_dir().join(format!("omendb-{bench}-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let lsn = {
            let writer = registry(&dir, "cache-fill", 64 << 20).await?;
            let root = writer.create(TENANT, ROOT, None).await?;
            let lsn = fill(&root, n_rows).await?;
            writer.shutdown().await?;
            lsn
        };
        let timelines = Arc::new(registry(&dir, "cache-serve", cache_memory_bytes).await?);
        timelines.load_tenant(TENANT).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (cancel, cancelled) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(pageserver::server::serve(
            listener,
            timelines.clone(),
            Duration::from_secs(10),
            cancelled,
        ));
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Served {
            dir,
            lsn,
            timelines,
            stream,
            cancel,
            server,
        })
    }

    /// The object-store bytes, in MiB.
    pub fn store_mib(&self) -> f64 {
        dir_bytes(&self.dir.join("store")) as f64 / (1 << 20) as f64
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.cancel.send_replace(true);
        drop(self.stream);
        self.server.await?;
        self.timelines.shutdown().await?;
        std::fs::remove_dir_all(&self.dir)?;
        Ok(())
    }
}
