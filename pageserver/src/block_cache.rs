//! The block cache: layer files read on demand from the object store, one block at a time,
//! kept in memory and on local disk.
//!
//! ```text
//!   RemoteSource::read(offset, n)          one layer file, its length known from the index
//!       │ blocks [offset / B, (offset + n - 1) / B]          B = BLOCK_BYTES = 64 KiB
//!       ▼
//!   BlockCache (foyer hybrid cache)        key: (layer file key, block number)
//!       │ memory (LRU over bytes) ──▶ local disk (written when a block is fetched)
//!       │ each run of consecutive missing blocks
//!       ▼
//!   RemoteStorage::get_range(key, first * B .. min((last + 1) * B, len))   ONE ranged GET
//!       │ split into blocks, each inserted into the cache
//!       ▼
//!   the requested bytes, cut out of the blocks
//! ```
//!
//! What it caches: blocks of immutable layer files. A block is the `BLOCK_BYTES` bytes at
//! `block * BLOCK_BYTES` of a file; the last block of a file is shorter. The key is the
//! layer file's object key and the block number, nothing else: the cache assumes that the
//! bytes under a key never change (layer file names carry their LSN range and generation).
//! A cached block whose length is not what the file's length says is dropped and fetched
//! again.
//!
//! What a miss costs: one ranged GET per run of consecutive missing blocks of a read (with
//! `RemoteStorage`'s retries), a copy of each fetched block into its own buffer (so that
//! evicting one block frees its memory), and a queued write of each block to the disk
//! cache. A read of blocks that are all cached makes no request. Two readers that miss
//! the same block at the same time both fetch it (the second insert replaces the first
//! with the same bytes): foyer's `get_or_fetch` coalesces concurrent misses of one key, but
//! not a fetch of several keys at once, which is what saves requests here.
//!
//! The disk tier is not recovered when a cache is opened: a cache starts cold, so a disk
//! folder reused by another process, or by a store with other objects under the same keys,
//! never serves stale blocks. A failure of the disk tier is logged and counted as a miss;
//! a failure of the object store is the read's error, and nothing is cached for it.
//!
//! Metrics ([`BlockCache::metrics`]): blocks served from memory, blocks served from disk,
//! blocks missed (fetched, or failed to fetch), ranged GETs made and bytes fetched from
//! the object store. foyer tells where a hit came from, so memory and disk hits are
//! counted apart.
//!
//! A cache spawns its disk flushers on the Tokio runtime it is opened in; open it in the
//! runtime that uses it. Does I/O.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use foyer::{
    BlockEngineConfig, Code, DeviceBuilder, FsDeviceBuilder, HybridCache, HybridCacheBuilder,
    HybridCachePolicy, LruConfig, PsyncIoEngineConfig, RecoverMode, Source,
};
use remote_storage::RemoteStorage;

use crate::error::{PageserverError, Result};
use crate::page_source::PageSource;

/// Bytes per cached block (the last block of a file is shorter). Large enough that a read of
/// a page or a footer is one block, small enough that a miss fetches little more than asked.
pub const BLOCK_BYTES: u64 = 64 * 1024;
/// Default memory tier size, in bytes of cached blocks.
pub const BLOCK_CACHE_MEMORY_BYTES_DEFAULT: u64 = 256 * 1024 * 1024;
/// Default disk tier size, in bytes of the cache files.
pub const BLOCK_CACHE_DISK_BYTES_DEFAULT: u64 = 1024 * 1024 * 1024;
/// The unit foyer's disk engine writes and evicts (its "block"; foyer's default). The disk
/// tier is a whole number of them.
pub const DISK_REGION_BYTES: u64 = 16 * 1024 * 1024;
/// The smallest disk tier: foyer keeps regions free for flushing and reclaiming, so fewer
/// regions leave no room to cache anything.
pub const BLOCK_CACHE_DISK_BYTES_MIN: u64 = 4 * DISK_REGION_BYTES;

/// Where and how large the cache's tiers are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockCacheConfig {
    /// Memory tier size, in bytes of cached blocks (keys and bookkeeping not counted).
    pub memory_bytes: u64,
    /// Folder of the disk tier's files, created if missing. What earlier caches left there
    /// is not served.
    pub disk_dir: PathBuf,
    /// Disk tier size in bytes; at least [`BLOCK_CACHE_DISK_BYTES_MIN`].
    pub disk_bytes: u64,
}

impl BlockCacheConfig {
    /// The default sizes, with the disk tier in `disk_dir`.
    pub fn with_default_sizes(disk_dir: PathBuf) -> BlockCacheConfig {
        BlockCacheConfig {
            memory_bytes: BLOCK_CACHE_MEMORY_BYTES_DEFAULT,
            disk_dir,
            disk_bytes: BLOCK_CACHE_DISK_BYTES_DEFAULT,
        }
    }
}

/// A copy of the cache's counters at one moment. Hits and misses count blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BlockCacheMetrics {
    pub memory_hits: u64,
    pub disk_hits: u64,
    /// Blocks that were in neither tier (each is fetched, or its read fails).
    pub misses: u64,
    /// Ranged GETs made for missing blocks, failed ones included.
    pub fetches: u64,
    /// Bytes the successful ranged GETs returned.
    pub bytes_fetched: u64,
}

#[derive(Debug, Default)]
struct Counters {
    memory_hits: AtomicU64,
    disk_hits: AtomicU64,
    misses: AtomicU64,
    fetches: AtomicU64,
    bytes_fetched: AtomicU64,
}

/// A cache key: block `block` of the layer file stored under `file`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct BlockKey {
    file: String,
    block: u64,
}

impl Code for BlockKey {
    fn encode(&self, writer: &mut impl std::io::Write) -> foyer::Result<()> {
        self.file.encode(writer)?;
        self.block.encode(writer)
    }

    fn decode(reader: &mut impl std::io::Read) -> foyer::Result<BlockKey> {
        let file = String::decode(reader)?;
        let block = u64::decode(reader)?;
        Ok(BlockKey { file, block })
    }

    fn estimated_size(&self) -> usize {
        self.file.estimated_size() + self.block.estimated_size()
    }
}

/// Blocks of layer files, in memory and on local disk; shared by every [`RemoteSource`].
pub struct BlockCache {
    cache: HybridCache<BlockKey, Bytes>,
    counters: Counters,
}

impl std::fmt::Debug for BlockCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockCache")
            .field("metrics", &self.metrics())
            .finish_non_exhaustive()
    }
}

fn cache_error(context: String, error: foyer::Error) -> PageserverError {
    PageserverError::Io(std::io::Error::other(format!("{context}: {error}")))
}

impl BlockCache {
    /// Opens a cache whose disk tier lives in `config.disk_dir` (created if missing; the
    /// cache files already there are reused as space, never served).
    pub async fn open(config: BlockCacheConfig) -> Result<BlockCache> {
        let context = || format!("opening the block cache in {}", config.disk_dir.display());
        if config.disk_bytes < BLOCK_CACHE_DISK_BYTES_MIN {
            return Err(PageserverError::Io(std::io::Error::other(format!(
                "{}: a disk tier of {} bytes is below the minimum of {BLOCK_CACHE_DISK_BYTES_MIN} bytes",
                context(),
                config.disk_bytes
            ))));
        }
        let as_usize = |bytes: u64| usize::try_from(bytes).unwrap_or(usize::MAX);
        let device = FsDeviceBuilder::new(&config.disk_dir)
            .with_capacity(as_usize(config.disk_bytes))
            .build()
            .map_err(|e| cache_error(context(), e))?;
        let cache = HybridCacheBuilder::new()
            .with_name("omendb-block-cache")
            // Every fetched block goes to disk at once: evicting it from memory costs no I/O,
            // and the disk tier holds everything fetched that still fits.
            .with_policy(HybridCachePolicy::WriteOnInsertion)
            .with_flush_on_close(false)
            .memory(as_usize(config.memory_bytes))
            .with_eviction_config(LruConfig::default())
            .with_weighter(|_key: &BlockKey, block: &Bytes| block.len())
            .storage()
            .with_io_engine_config(PsyncIoEngineConfig::new())
            .with_engine_config(
                BlockEngineConfig::new(device).with_block_size(as_usize(DISK_REGION_BYTES)),
            )
            .with_recover_mode(RecoverMode::None)
            .build()
            .await
            .map_err(|e| cache_error(context(), e))?;
        Ok(BlockCache {
            cache,
            counters: Counters::default(),
        })
    }

    pub fn metrics(&self) -> BlockCacheMetrics {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        BlockCacheMetrics {
            memory_hits: load(&self.counters.memory_hits),
            disk_hits: load(&self.counters.disk_hits),
            misses: load(&self.counters.misses),
            fetches: load(&self.counters.fetches),
            bytes_fetched: load(&self.counters.bytes_fetched),
        }
    }

    /// Block `block` of `file` if either tier holds it with the length `block_len`.
    async fn lookup(&self, file: &str, block: u64, block_len: u64) -> Option<Bytes> {
        let key = BlockKey {
            file: file.to_string(),
            block,
        };
        let entry = match self.cache.get(&key).await {
            Ok(Some(entry)) => entry,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(
                    "block cache: reading block {block} of {file} failed, fetching it instead: {e}"
                );
                return None;
            }
        };
        if entry.value().len() as u64 != block_len {
            tracing::warn!(
                "block cache: block {block} of {file} has {} bytes, expected {block_len}; fetching it again",
                entry.value().len()
            );
            self.cache.remove(&key);
            return None;
        }
        let counter = match entry.source() {
            Source::Disk => &self.counters.disk_hits,
            Source::Memory | Source::Outer => &self.counters.memory_hits,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Some(entry.value().clone())
    }

    /// Fetches blocks `blocks` of `file` (`file_len` bytes) with one ranged GET and caches
    /// each; nothing is cached if the GET fails.
    async fn fetch(
        &self,
        remote: &RemoteStorage,
        file: &str,
        file_len: u64,
        blocks: Range<u64>,
    ) -> Result<Vec<Bytes>> {
        let range = blocks.start * BLOCK_BYTES..(blocks.end * BLOCK_BYTES).min(file_len);
        self.counters.fetches.fetch_add(1, Ordering::Relaxed);
        let bytes = remote.get_range(file, range.clone()).await?;
        if bytes.len() as u64 != range.end - range.start {
            return Err(PageserverError::Internal(format!(
                "ranged get of {file} {range:?} returned {} bytes",
                bytes.len()
            )));
        }
        self.counters
            .bytes_fetched
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(bytes
            .chunks(BLOCK_BYTES as usize)
            .zip(blocks)
            .map(|(chunk, block)| {
                // Its own buffer, so that the memory tier's accounting is the memory held.
                let chunk = Bytes::copy_from_slice(chunk);
                let key = BlockKey {
                    file: file.to_string(),
                    block,
                };
                self.cache.insert(key, chunk.clone());
                chunk
            })
            .collect())
    }

    /// Blocks `blocks` of `file` (`file_len` bytes; every block starts before it): each from
    /// the cache, or fetched with one ranged GET per run of consecutive missing blocks.
    async fn read_blocks(
        &self,
        remote: &RemoteStorage,
        file: &str,
        file_len: u64,
        blocks: Range<u64>,
    ) -> Result<Vec<Bytes>> {
        let block_len = |block: u64| (file_len - block * BLOCK_BYTES).min(BLOCK_BYTES);
        let mut found: Vec<Option<Bytes>> = futures::future::join_all(
            blocks
                .clone()
                .map(|block| self.lookup(file, block, block_len(block))),
        )
        .await;
        let mut runs = Vec::new();
        let mut i = 0;
        while i < found.len() {
            if found[i].is_some() {
                i += 1;
                continue;
            }
            let start = i;
            while i < found.len() && found[i].is_none() {
                i += 1;
            }
            runs.push(start..i);
        }
        let n_missing: usize = runs.iter().map(|run| run.len()).sum();
        self.counters
            .misses
            .fetch_add(n_missing as u64, Ordering::Relaxed);
        let fetched = futures::future::try_join_all(runs.iter().map(|run| {
            let run = blocks.start + run.start as u64..blocks.start + run.end as u64;
            self.fetch(remote, file, file_len, run)
        }))
        .await?;
        for (run, run_blocks) in runs.into_iter().zip(fetched) {
            for (slot, block) in found[run].iter_mut().zip(run_blocks) {
                *slot = Some(block);
            }
        }
        found
            .into_iter()
            .map(|block| {
                block.ok_or_else(|| {
                    PageserverError::Internal(format!("block cache: a block of {file} was lost"))
                })
            })
            .collect()
    }

    /// Waits for queued disk writes, then empties the memory tier (what is on disk stays).
    #[cfg(test)]
    async fn flush_and_clear_memory(&self) {
        self.cache.storage().wait().await;
        self.cache.memory().clear();
    }
}

/// One layer file in the object store, read through a [`BlockCache`].
#[derive(Debug, Clone)]
pub struct RemoteSource {
    cache: Arc<BlockCache>,
    remote: RemoteStorage,
    key: String,
    len: u64,
}

impl RemoteSource {
    /// The object `key` of `remote`, which has `len` bytes (as the index says; an object
    /// that turns out shorter makes reads of its missing bytes fail).
    pub fn new(
        cache: Arc<BlockCache>,
        remote: RemoteStorage,
        key: String,
        len: u64,
    ) -> RemoteSource {
        RemoteSource {
            cache,
            remote,
            key,
            len,
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }
}

impl PageSource for RemoteSource {
    fn len(&self) -> u64 {
        self.len
    }

    async fn read(&self, offset: u64, n_bytes: u64) -> Result<Bytes> {
        let end = offset
            .checked_add(n_bytes)
            .filter(|end| *end <= self.len)
            .ok_or_else(|| {
                PageserverError::corrupt(
                    format!("layer file {}", self.key),
                    format!("read {offset}+{n_bytes} past the end ({})", self.len),
                )
            })?;
        if n_bytes == 0 {
            return Ok(Bytes::new());
        }
        let first = offset / BLOCK_BYTES;
        let last = (end - 1) / BLOCK_BYTES;
        let blocks = self
            .cache
            .read_blocks(&self.remote, &self.key, self.len, first..last + 1)
            .await?;
        let start_in_first = (offset - first * BLOCK_BYTES) as usize;
        if let [block] = blocks.as_slice() {
            return Ok(block.slice(start_in_first..start_in_first + n_bytes as usize));
        }
        let mut out = BytesMut::with_capacity(n_bytes as usize);
        let mut skip = start_in_first;
        for block in &blocks {
            let take = (block.len() - skip).min(n_bytes as usize - out.len());
            out.extend_from_slice(&block[skip..skip + take]);
            skip = 0;
        }
        Ok(out.freeze())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use remote_storage::faults::{FaultRates, FaultyStore};
    use remote_storage::PutMode;

    use super::*;
    use crate::test_util::{temp_dir, Rng};

    const MEMORY_BYTES: u64 = 4 * 1024 * 1024;

    async fn open_cache(dir: &Path) -> Arc<BlockCache> {
        Arc::new(
            BlockCache::open(BlockCacheConfig {
                memory_bytes: MEMORY_BYTES,
                disk_dir: dir.to_path_buf(),
                disk_bytes: BLOCK_CACHE_DISK_BYTES_MIN,
            })
            .await
            .unwrap(),
        )
    }

    /// `n_bytes` bytes of a file that differ from block to block.
    fn file_bytes(n_bytes: u64) -> Bytes {
        Bytes::from(
            (0..n_bytes)
                .map(|i| (i.wrapping_mul(31) ^ (i >> 16)) as u8)
                .collect::<Vec<u8>>(),
        )
    }

    /// A local object store under `root` holding `content` at `key`.
    async fn store_with(root: &Path, key: &str, content: &Bytes) -> RemoteStorage {
        let remote = RemoteStorage::local(&root.join("objects")).unwrap();
        remote
            .put(key, content.clone(), PutMode::CreateNew)
            .await
            .unwrap();
        remote
    }

    fn expect(content: &Bytes, offset: u64, n_bytes: u64) -> Bytes {
        content.slice(offset as usize..(offset + n_bytes) as usize)
    }

    #[tokio::test]
    async fn reads_at_random_offsets_return_the_files_bytes() {
        let root = temp_dir("block-cache-random");
        let key = "layers/random";
        let content = file_bytes(5 * BLOCK_BYTES + 12_345);
        let remote = store_with(&root, key, &content).await;
        let cache = open_cache(&root.join("cache")).await;
        let source = RemoteSource::new(cache.clone(), remote, key.into(), content.len() as u64);
        assert_eq!(source.len(), content.len() as u64);
        let mut rng = Rng::new(1);
        for _ in 0..20 {
            // Reads of a batch run at once: concurrent misses of a block are fine.
            let reads: Vec<(u64, u64)> = (0..10)
                .map(|_| {
                    let offset = rng.below(source.len() + 1);
                    let n_bytes = rng.below((source.len() - offset).min(3 * BLOCK_BYTES) + 1);
                    (offset, n_bytes)
                })
                .collect();
            let got = futures::future::try_join_all(
                reads
                    .iter()
                    .map(|(offset, n_bytes)| source.read(*offset, *n_bytes)),
            )
            .await
            .unwrap();
            for ((offset, n_bytes), got) in reads.into_iter().zip(got) {
                assert_eq!(got, expect(&content, offset, n_bytes), "{offset}+{n_bytes}");
            }
        }
        assert_eq!(source.read(0, source.len()).await.unwrap(), content);
        let tail = source.len() - 1;
        assert_eq!(
            source.read(tail, 1).await.unwrap(),
            expect(&content, tail, 1)
        );
        assert!(source.read(source.len(), 0).await.unwrap().is_empty());
        let metrics = cache.metrics();
        assert!(
            metrics.misses >= 6 && metrics.memory_hits > 0,
            "{metrics:?}"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[tokio::test]
    async fn a_block_is_fetched_on_its_first_read_then_served_from_memory() {
        let root = temp_dir("block-cache-hit");
        let key = "layers/hit";
        let content = file_bytes(3 * BLOCK_BYTES);
        let remote = store_with(&root, key, &content).await;
        let cache = open_cache(&root.join("cache")).await;
        let source = RemoteSource::new(cache.clone(), remote.clone(), key.into(), 3 * BLOCK_BYTES);
        let requests = remote.stats().requests;
        assert_eq!(
            source.read(100, 10).await.unwrap(),
            expect(&content, 100, 10)
        );
        assert_eq!(
            cache.metrics(),
            BlockCacheMetrics {
                misses: 1,
                fetches: 1,
                bytes_fetched: BLOCK_BYTES,
                ..BlockCacheMetrics::default()
            }
        );
        assert_eq!(remote.stats().requests, requests + 1);
        let bytes_downloaded = remote.stats().bytes_downloaded;
        // Another read of the same block: a memory hit, no request.
        let offset = BLOCK_BYTES - 50;
        assert_eq!(
            source.read(offset, 50).await.unwrap(),
            expect(&content, offset, 50)
        );
        assert_eq!(
            source.read(100, 10).await.unwrap(),
            expect(&content, 100, 10)
        );
        let metrics = cache.metrics();
        assert_eq!(
            (metrics.memory_hits, metrics.misses, metrics.fetches),
            (2, 1, 1)
        );
        assert_eq!(remote.stats().requests, requests + 1);
        assert_eq!(remote.stats().bytes_downloaded, bytes_downloaded);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[tokio::test]
    async fn each_run_of_missing_blocks_costs_one_ranged_get() {
        let root = temp_dir("block-cache-runs");
        let key = "layers/runs";
        let len = 6 * BLOCK_BYTES + 1000;
        let content = file_bytes(len);
        let remote = store_with(&root, key, &content).await;
        let cache = open_cache(&root.join("cache")).await;
        let source = RemoteSource::new(cache.clone(), remote.clone(), key.into(), len);
        let requests = remote.stats().requests;

        // Blocks 1..=4 at once: one GET of four blocks.
        let (offset, n_bytes) = (BLOCK_BYTES + 7, 3 * BLOCK_BYTES + 100);
        assert_eq!(
            source.read(offset, n_bytes).await.unwrap(),
            expect(&content, offset, n_bytes)
        );
        assert_eq!(remote.stats().requests, requests + 1);
        let metrics = cache.metrics();
        assert_eq!((metrics.misses, metrics.fetches), (4, 1));
        assert_eq!(metrics.bytes_fetched, 4 * BLOCK_BYTES);

        // The whole file: blocks 1..=4 are cached; block 0 and blocks 5..=6 (6 is the short
        // last block) are two runs, two GETs.
        assert_eq!(source.read(0, len).await.unwrap(), content);
        assert_eq!(remote.stats().requests, requests + 3);
        let metrics = cache.metrics();
        assert_eq!(
            (metrics.memory_hits, metrics.misses, metrics.fetches),
            (4, 7, 3)
        );
        assert_eq!(metrics.bytes_fetched, len);

        // Once more: all seven from memory, no request.
        assert_eq!(source.read(0, len).await.unwrap(), content);
        assert_eq!(remote.stats().requests, requests + 3);
        assert_eq!(cache.metrics().memory_hits, 11);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[tokio::test]
    async fn blocks_dropped_from_memory_are_served_from_disk() {
        let root = temp_dir("block-cache-disk");
        let key = "layers/disk";
        let len = 3 * BLOCK_BYTES + 10;
        let content = file_bytes(len);
        let remote = store_with(&root, key, &content).await;
        let cache = open_cache(&root.join("cache")).await;
        let source = RemoteSource::new(cache.clone(), remote.clone(), key.into(), len);
        assert_eq!(source.read(0, len).await.unwrap(), content);
        let requests = remote.stats().requests;
        cache.flush_and_clear_memory().await;
        assert_eq!(source.read(0, len).await.unwrap(), content);
        let metrics = cache.metrics();
        assert_eq!((metrics.disk_hits, metrics.misses), (4, 4), "{metrics:?}");
        assert_eq!(
            remote.stats().requests,
            requests,
            "no request for cached blocks"
        );
        // Loaded from disk, they are in memory again.
        assert_eq!(source.read(10, 10).await.unwrap(), expect(&content, 10, 10));
        assert_eq!(cache.metrics().memory_hits, 1);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[tokio::test]
    async fn a_fresh_cache_on_an_empty_disk_dir_fetches_what_it_serves() {
        let root = temp_dir("block-cache-fresh");
        let key = "layers/fresh";
        let len = 2 * BLOCK_BYTES + 3;
        let content = file_bytes(len);
        let remote = store_with(&root, key, &content).await;
        let warm = open_cache(&root.join("cache-1")).await;
        let source = RemoteSource::new(warm.clone(), remote.clone(), key.into(), len);
        assert_eq!(source.read(0, len).await.unwrap(), content);

        let fresh_dir = root.join("cache-2").join("not-yet-there");
        let fresh = open_cache(&fresh_dir).await;
        assert!(fresh_dir.is_dir());
        let source = RemoteSource::new(fresh.clone(), remote.clone(), key.into(), len);
        let requests = remote.stats().requests;
        assert_eq!(
            source.read(5, len - 5).await.unwrap(),
            expect(&content, 5, len - 5)
        );
        assert_eq!(remote.stats().requests, requests + 1);
        let metrics = fresh.metrics();
        assert_eq!(
            (metrics.misses, metrics.fetches, metrics.bytes_fetched),
            (3, 1, len)
        );
        assert_eq!(metrics.memory_hits + metrics.disk_hits, 0);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[tokio::test]
    async fn reads_past_the_end_are_errors() {
        let root = temp_dir("block-cache-past-end");
        let key = "layers/short";
        let content = file_bytes(1000);
        let remote = store_with(&root, key, &content).await;
        let cache = open_cache(&root.join("cache")).await;
        let source = RemoteSource::new(cache.clone(), remote.clone(), key.into(), 1000);
        let requests = remote.stats().requests;
        for (offset, n_bytes) in [
            (990, 11),
            (1000, 1),
            (1001, 0),
            (5 * BLOCK_BYTES, 1),
            (1, u64::MAX),
        ] {
            let err = source.read(offset, n_bytes).await.unwrap_err();
            assert!(
                matches!(&err, PageserverError::Corrupt { what, .. } if what.contains(key)),
                "{offset}+{n_bytes}: {err}"
            );
        }
        assert_eq!(remote.stats().requests, requests, "nothing was asked");
        assert_eq!(cache.metrics(), BlockCacheMetrics::default());

        // An index that says the file is longer than the object: the missing bytes are an
        // error, and nothing is cached for them.
        let longer = RemoteSource::new(cache.clone(), remote, key.into(), 1500);
        let err = longer.read(1200, 10).await.unwrap_err();
        assert!(
            matches!(&err, PageserverError::Remote(e) if e.to_string().contains(key)),
            "{err}"
        );
        assert_eq!(source.read(0, 1000).await.unwrap(), content);
        assert_eq!(
            cache.metrics().memory_hits,
            0,
            "the short block was not cached"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[tokio::test]
    async fn an_object_store_failure_is_an_error_and_caches_nothing() {
        let root = temp_dir("block-cache-faults");
        let key = "layers/faulty";
        let len = 2 * BLOCK_BYTES;
        let content = file_bytes(len);
        let inner = Arc::new(object_store::local::LocalFileSystem::new_with_prefix(&root).unwrap());
        let faulty = Arc::new(FaultyStore::new(inner, FaultRates::default(), 1));
        let remote = RemoteStorage::from_object_store(faulty.clone())
            .with_request_timeout(Duration::from_secs(5));
        remote
            .put(key, content.clone(), PutMode::CreateNew)
            .await
            .unwrap();
        let cache = open_cache(&root.join("cache")).await;
        let source = RemoteSource::new(cache.clone(), remote.clone(), key.into(), len);

        faulty.set_rates(FaultRates {
            fail_percent: 100,
            ..FaultRates::default()
        });
        let err = source.read(10, BLOCK_BYTES).await.unwrap_err();
        assert!(
            matches!(&err, PageserverError::Remote(e) if e.to_string().contains(key)),
            "{err}"
        );
        let metrics = cache.metrics();
        assert_eq!(
            (metrics.misses, metrics.fetches, metrics.bytes_fetched),
            (2, 1, 0)
        );
        assert_eq!(remote.stats().failures, 1);

        // Healed: the same read misses again (nothing was cached) and succeeds.
        faulty.set_rates(FaultRates::default());
        assert_eq!(
            source.read(10, BLOCK_BYTES).await.unwrap(),
            expect(&content, 10, BLOCK_BYTES)
        );
        let metrics = cache.metrics();
        assert_eq!(
            (metrics.memory_hits, metrics.misses, metrics.fetches),
            (0, 4, 2)
        );
        assert_eq!(metrics.bytes_fetched, len);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[tokio::test]
    async fn a_disk_tier_below_the_minimum_is_refused() {
        let root = temp_dir("block-cache-small");
        let err = BlockCache::open(BlockCacheConfig {
            memory_bytes: MEMORY_BYTES,
            disk_dir: root.join("cache"),
            disk_bytes: BLOCK_CACHE_DISK_BYTES_MIN - 1,
        })
        .await
        .unwrap_err();
        assert!(err.to_string().contains("below the minimum"), "{err}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
