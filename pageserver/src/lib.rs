//! The OmenDB pageserver: for each timeline of its tenant (a root timeline and its
//! branches), follows the committed WAL on the safekeepers, keeps the versioned rows, uploads
//! them to the object store, and answers reads "at LSN X" from computes.
//!
//! ```text
//!   safekeepers ──WalData──▶ walreceiver ──▶ timeline: in-memory layers ◀── server ◀── computes
//!                                               │ checkpoint (every interval, at shutdown):
//!                                               │ delta layers; compaction: image layers
//!                                               ▼
//!     object store: layer files (delta_layer, image_layer) + index (manifest)
//!                   read back by byte ranges through the block cache (block_cache)
//! ```
//!
//! Local disk is only a cache: a pageserver started on an empty `data_dir` opens its
//! timelines from the object store's indexes alone, reads layer files on demand, and follows
//! the WAL from the LSN the object store holds. A branch's reads below its branch LSN go to
//! its ancestor. Per-timeline background work (WAL receiver, checkpointer and compaction) is
//! started and stopped by [`timelines`]; the read server and metrics by [`run`].

pub mod block_cache;
pub mod column_pages;
pub mod delta_layer;
pub mod error;
pub mod image_layer;
pub mod layer_map;
pub mod layers;
pub mod limits;
pub mod manifest;
pub mod metrics;
pub mod page_source;
pub mod remote_layout;
pub mod server;
pub mod store;
pub mod timeline;
pub mod timelines;
pub mod walreceiver;

#[cfg(test)]
mod e2e_tests;
#[cfg(test)]
mod test_util;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

pub use error::PageserverError;

use remote_storage::RemoteStorage;
use timelines::{TaskConfig, Timelines};

/// How often the pageserver checks its timelines' background tasks for panics.
const TASK_CHECK_INTERVAL_MS: u64 = 1_000;

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: std::net::SocketAddr,
    /// Local disk: a cache only (may be empty or new at any start).
    pub data_dir: std::path::PathBuf,
    /// The object store: a local folder, `file:///abs/path` or `s3://bucket/prefix`
    /// (see `remote_storage::RemoteStorage::from_spec`).
    pub object_store: String,
    pub safekeepers: Vec<std::net::SocketAddr>,
    /// The tenant whose timelines this pageserver serves (every one the object store has an
    /// index for, plus those created while it runs).
    pub tenant: ids::TenantId,
    /// A root timeline served from the start, created empty if the object store has none.
    pub timeline: ids::TimelineId,
    /// Upload what was ingested at least this often (default `limits::CHECKPOINT_INTERVAL_DEFAULT_MS`).
    pub checkpoint_interval: Duration,
    /// Garbage collection runs this often (default `limits::GC_INTERVAL_DEFAULT_MS`).
    pub gc_interval: Duration,
    /// Every timeline keeps the history of this long a past (default
    /// `limits::PITR_WINDOW_DEFAULT_SECS`): reads and branches at any moment inside it.
    pub pitr_window: Duration,
    /// Reads wait at most this long for WAL (default `limits::WAIT_LSN_TIMEOUT_DEFAULT_MS`).
    pub wait_lsn_timeout: Duration,
    /// Memory for cached layer-file blocks (default
    /// `block_cache::BLOCK_CACHE_MEMORY_BYTES_DEFAULT`).
    pub cache_memory_bytes: u64,
    /// Local disk for cached layer-file blocks, under `data_dir/cache` (default
    /// `block_cache::BLOCK_CACHE_DISK_BYTES_DEFAULT`).
    pub cache_disk_bytes: u64,
    /// Where to serve `GET /metrics` (Prometheus text format), if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// Binds, logs "pageserver listening on {addr}", ingests and serves until `shutdown`
/// resolves; then uploads what is not yet uploaded and returns.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
    // A bad object store spec stops the pageserver before anyone can connect to it.
    remote_storage::ObjectStoreSpec::parse(&config.object_store)?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding the pageserver to {}", config.listen))?;
    run_with_listener(config, listener, shutdown).await
}

/// [`run`] on a listener bound by the caller (tests bind port 0 and read the address).
pub(crate) async fn run_with_listener(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the data folder {}", config.data_dir.display()))?;
    let remote = RemoteStorage::from_spec(&config.object_store)
        .with_context(|| format!("opening the object store {}", config.object_store))?;
    let cache_dir = config.data_dir.join("cache");
    let cache = block_cache::BlockCache::open(block_cache::BlockCacheConfig {
        memory_bytes: config.cache_memory_bytes,
        disk_dir: cache_dir.clone(),
        disk_bytes: config.cache_disk_bytes,
    })
    .await
    .with_context(|| format!("opening the block cache in {}", cache_dir.display()))?;
    let cache = Arc::new(cache);
    let (failures_sender, mut failures) = mpsc::unbounded_channel();
    let timelines = Arc::new(Timelines::new(
        remote,
        cache,
        TaskConfig {
            safekeepers: config.safekeepers.clone(),
            checkpoint_interval: config.checkpoint_interval,
            wait_lsn_timeout: config.wait_lsn_timeout,
        },
        failures_sender,
    ));
    let loaded = async {
        timelines
            .load_tenant(config.tenant)
            .await
            .with_context(|| format!("loading the timelines of tenant {}", config.tenant))?;
        timelines
            .attach_or_create_root(config.tenant, config.timeline)
            .await
            .with_context(|| format!("loading timeline {} from the object store", config.timeline))
    };
    let loaded = tokio::select! {
        _ = &mut shutdown => None,
        loaded = loaded => Some(loaded),
    };
    let Some(loaded) = loaded else {
        // Stopped while loading: stop what was opened (uploading what it ingested meanwhile).
        timelines.shutdown().await?;
        return Ok(());
    };
    if let Err(err) = loaded {
        // The load error is the one to report; a failed upload is logged by `shutdown`.
        let _ = timelines.shutdown().await;
        return Err(err);
    }
    for timeline in timelines.list()? {
        tracing::info!(
            "timeline {}: generation {}, starting at LSN {}",
            timeline.timeline_id(),
            timeline.generation(),
            timeline.last_record_lsn()
        );
    }
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the metrics endpoint to {addr}"))?,
        ),
        None => None,
    };
    tracing::info!("pageserver listening on {}", listener.local_addr()?);

    let (cancel_sender, cancel) = watch::channel(false);
    let mut tasks = JoinSet::new();
    if let Some(metrics_listener) = metrics_listener {
        tracing::info!(
            "pageserver metrics on http://{}/metrics",
            metrics_listener.local_addr()?
        );
        tasks.spawn(metrics::serve(
            metrics_listener,
            timelines.clone(),
            cancel.clone(),
        ));
    }
    tasks.spawn(timelines::gc_loop(
        timelines.clone(),
        config.gc_interval,
        config.pitr_window,
        cancel.clone(),
    ));
    tasks.spawn(server::serve(
        listener,
        timelines.clone(),
        config.wait_lsn_timeout,
        cancel,
    ));

    // The tasks run until cancelled, so one that ends first has panicked; a timeline's
    // tasks report through `failures`.
    let mut reap = tokio::time::interval(Duration::from_millis(TASK_CHECK_INTERVAL_MS));
    let early_exit = loop {
        tokio::select! {
            _ = &mut shutdown => break None,
            Some(joined) = tasks.join_next() => break Some(format!("{joined:?}")),
            Some(failure) = failures.recv() => break Some(failure),
            _ = reap.tick() => timelines.reap_panics()?,
        }
    };
    cancel_sender.send_replace(true);
    while let Some(joined) = tasks.join_next().await {
        if let Err(err) = joined {
            tracing::error!("pageserver task failed while stopping: {err}");
        }
    }
    let uploaded = timelines.shutdown().await;
    if let Some(failure) = early_exit {
        anyhow::bail!("a pageserver task stopped unexpectedly: {failure}");
    }
    uploaded.context("uploading the last ingested WAL at shutdown")?;
    tracing::info!("pageserver stopped");
    Ok(())
}
