//! The OmenDB pageserver: follows one timeline's committed WAL on the safekeepers, keeps its
//! versioned rows, uploads them to the object store, and answers reads "at LSN X" from
//! computes.
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
//! Local disk is only a cache: a pageserver started on an empty `data_dir` opens the
//! timeline from the object store's index alone, reads layer files on demand, and follows the
//! WAL from the LSN the object store holds. Background work (WAL receiver, checkpointer and
//! compaction, read server) is started and stopped in one place, [`run`].

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
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use error::PageserverError;

use remote_storage::RemoteStorage;
use timeline::Timeline;

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: std::net::SocketAddr,
    /// Local disk: a cache only (may be empty or new at any start).
    pub data_dir: std::path::PathBuf,
    /// The object store: a local folder, `file:///abs/path` or `s3://bucket/prefix`
    /// (see `remote_storage::RemoteStorage::from_spec`).
    pub object_store: String,
    pub safekeepers: Vec<std::net::SocketAddr>,
    pub tenant: ids::TenantId,
    pub timeline: ids::TimelineId,
    /// Upload what was ingested at least this often (default `limits::CHECKPOINT_INTERVAL_DEFAULT_MS`).
    pub checkpoint_interval: Duration,
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
    let timeline = tokio::select! {
        _ = &mut shutdown => return Ok(()),
        loaded = Timeline::load(remote, cache, config.tenant, config.timeline) => Arc::new(
            loaded.with_context(|| format!("loading timeline {} from the object store", config.timeline))?,
        ),
    };
    tracing::info!(
        "timeline {}: generation {}, starting at LSN {}",
        config.timeline,
        timeline.generation(),
        timeline.last_record_lsn()
    );
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
    tasks.spawn(walreceiver::run(
        timeline.clone(),
        config.safekeepers.clone(),
        cancel.clone(),
    ));
    tasks.spawn(walreceiver::send_feedback(
        timeline.clone(),
        config.safekeepers.clone(),
        cancel.clone(),
    ));
    tasks.spawn(checkpointer(
        timeline.clone(),
        config.checkpoint_interval,
        cancel.clone(),
    ));
    if let Some(metrics_listener) = metrics_listener {
        tracing::info!(
            "pageserver metrics on http://{}/metrics",
            metrics_listener.local_addr()?
        );
        tasks.spawn(metrics::serve(
            metrics_listener,
            timeline.clone(),
            cancel.clone(),
        ));
    }
    tasks.spawn(server::serve(
        listener,
        timeline.clone(),
        config.wait_lsn_timeout,
        cancel,
    ));

    // The tasks run until cancelled, so one that ends first has panicked.
    let early_exit = tokio::select! {
        _ = &mut shutdown => None,
        Some(joined) = tasks.join_next() => Some(joined),
    };
    cancel_sender.send_replace(true);
    while let Some(joined) = tasks.join_next().await {
        if let Err(err) = joined {
            tracing::error!("pageserver task failed while stopping: {err}");
        }
    }
    let uploaded = timeline.checkpoint().await;
    if let Some(joined) = early_exit {
        anyhow::bail!("a pageserver task stopped unexpectedly: {joined:?}");
    }
    uploaded.context("uploading the last ingested WAL at shutdown")?;
    tracing::info!(
        "pageserver stopped; the object store holds LSN {}",
        timeline.remote_consistent_lsn()
    );
    Ok(())
}

/// Checkpoints, then compacts where enough delta layers piled up, every `interval` until
/// cancelled (a checkpoint with nothing new is free).
async fn checkpointer(
    timeline: Arc<Timeline>,
    interval: Duration,
    mut cancel: watch::Receiver<bool>,
) {
    // `tokio::time::interval` panics on a zero period.
    let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.wait_for(|cancelled| *cancelled) => return,
            _ = ticker.tick() => {}
        }
        // Not raced against cancellation: a checkpoint abandoned halfway could leave an
        // index write in flight that lands after the final checkpoint's newer one.
        if let Err(err) = timeline.checkpoint().await {
            tracing::warn!(
                "checkpoint of timeline {} failed (will retry): {err}",
                timeline.timeline_id()
            );
            continue;
        }
        if let Err(err) = timeline.compact().await {
            tracing::warn!(
                "compaction of timeline {} failed (will retry): {err}",
                timeline.timeline_id()
            );
        }
    }
}
