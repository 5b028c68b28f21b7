//! One timeline: its in-memory layers (recent WAL), its persisted layers (delta and image
//! layer files in the object store, [`LayerSet`]), how far WAL has been applied
//! (`last_record_lsn`), how far the object store holds it (`remote_consistent_lsn`), and the
//! ways state moves: ingest (from the WAL receiver), checkpoint (freeze and flush the
//! in-memory layers as delta layers) and compaction (image layers at an LSN).
//!
//! ```text
//!  safekeeper ─WAL─▶ ingest ─▶ open in-memory layer ──freeze──▶ frozen layers
//!                                                                   │ checkpoint: delta layer
//!                                                                   ▼ files, then the index
//!  reads at LSN X: memory layers, newest first ─▶ LayerSet (deltas ─▶ image) ◀─ compaction:
//!                                                     │                     image layers at
//!                                                     ▼                     remote_consistent
//!                                       object store via the block cache
//!  startup: highest generation's index ─▶ LayerSet (files opened on first read)
//! ```
//!
//! Invariants:
//! - `last_record_lsn` only grows, and is published only after the transaction it names is
//!   in the open in-memory layer, so a reader that waited for LSN X sees every commit at or
//!   below X.
//! - Every commit above `remote_consistent_lsn` is in exactly one in-memory layer (open or
//!   frozen); every commit at or below it is in the delta layers the index names. A frozen
//!   layer leaves memory in the same state change that adds its delta layer to the
//!   [`LayerSet`], so a reader sees it in one place or the other, never in neither.
//! - Layer files are uploaded before the index that names them. This pageserver writes only
//!   its own generation's index (highest found at startup + 1, claimed at startup with a
//!   create-only put) and layer files named with its generation, so it never overwrites
//!   another pageserver's state; a stale one's later uploads are ignored by newer
//!   generations.
//! - Checkpoints and compactions never interleave (the `uploads` lock): the index in
//!   `UploadState` is always the one last written, and it names exactly the files of the
//!   current [`LayerSet`].
//!
//! I/O goes through [`RemoteStorage`] and the block cache only.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use bytes::Bytes;
use ids::{Lsn, TenantId, TimelineId};
use remote_storage::{Expected, ObjectVersion, PutMode, RemoteStorage};
use tokio::sync::watch;
use wal::{Op, Transaction};

use crate::block_cache::BlockCache;
use crate::column_pages;
use crate::delta_layer;
use crate::error::{PageserverError, Result};
use crate::image_layer;
use crate::layers::{at_key, scan_lower_bound, LayerSet, LayerStorage, Lookup, MemoryRange};
use crate::limits::{
    COMPACTION_DELTA_LAYERS_MIN, DELTA_LAYER_BYTES_TARGET, LAYER_FILE_BYTES_MAX, MANIFEST_BYTES_MAX,
};
use crate::manifest::{Ancestor as ManifestAncestor, DroppedTable, LayerDesc, Manifest};
use crate::remote_layout;
use crate::store::{ScanLimits, ScanPage, Store};
use rowcodec::{TableDef, CATALOG_TABLE_ID, COMMIT_TIMES_TABLE_ID, FIRST_USER_TABLE_ID};

pub struct Timeline {
    tenant_id: TenantId,
    timeline_id: TimelineId,
    generation: u32,
    /// Where reads below the branch point go, for a branch.
    ancestor: Option<AncestorRef>,
    storage: LayerStorage,
    state: RwLock<TimelineState>,
    last_record_lsn: watch::Sender<Lsn>,
    remote_consistent_lsn: watch::Sender<Lsn>,
    /// Held for a whole checkpoint or compaction, so that they never interleave.
    uploads: tokio::sync::Mutex<UploadState>,
    delta_layer_bytes_target: usize,
    compaction_delta_layers_min: std::sync::atomic::AtomicUsize,
}

/// A branch's parent and the LSN it branched at: the branch's state at any LSN at or below
/// `lsn`, and everything its own layers do not hold above it, is the parent's at `lsn`.
pub struct AncestorRef {
    pub timeline: Arc<Timeline>,
    pub lsn: Lsn,
}

/// The WAL above `start` (exclusive) up to `end`, frozen: no longer written, not yet flushed.
struct FrozenLayer {
    store: Store,
    start: Lsn,
    end: Lsn,
}

struct TimelineState {
    /// Commits above `open_start`.
    open: Store,
    open_start: Lsn,
    /// Oldest first, contiguous: the first starts at `remote_consistent_lsn`, the last ends at
    /// `open_start`.
    frozen: Vec<Arc<FrozenLayer>>,
    layers: Arc<LayerSet>,
    /// Table id → LSN of its `DropTable`, over the whole timeline.
    dropped: BTreeMap<u32, Lsn>,
    n_ignored_ops: u64,
    /// The commit time last recorded in `COMMIT_TIMES_TABLE_ID` (kept non-decreasing).
    last_commit_time_us: u64,
    /// Reads below this LSN are refused, except at `gc_retained` (ascending): garbage
    /// collection may have removed what they need. Raised before anything is removed.
    gc_cutoff: Lsn,
    gc_retained: Vec<Lsn>,
}

struct UploadState {
    /// This generation's index as last written (or claimed).
    manifest: Manifest,
    /// The object-store version of that index: the next write is conditional on it, so a
    /// write based on anything but the index as last written is refused.
    manifest_version: ObjectVersion,
    /// The bytes of the last index write whose outcome is unknown (it failed, but may have
    /// landed): if the index now holds exactly them, the next write is based on that.
    unconfirmed: Option<Bytes>,
}

/// Compaction's scans take whole tables.
pub(crate) const UNLIMITED_SCAN: ScanLimits = ScanLimits {
    rows_max: usize::MAX,
    bytes_max: usize::MAX,
    keys_examined_max: usize::MAX,
};

impl Timeline {
    /// Opens a root timeline from the object store alone (its layer files are read on
    /// demand), or starts it empty if the object store has none; claims the next generation.
    pub async fn load(
        remote: RemoteStorage,
        cache: Arc<BlockCache>,
        tenant_id: TenantId,
        timeline_id: TimelineId,
    ) -> Result<Timeline> {
        let index = read_index(&remote, tenant_id, timeline_id).await?;
        Timeline::open(remote, cache, tenant_id, timeline_id, index, None).await
    }

    /// Opens the timeline whose newest index is `index` (`None`: a new, empty root timeline)
    /// and claims the next generation. A branch needs its `ancestor`, opened first.
    pub async fn open(
        remote: RemoteStorage,
        cache: Arc<BlockCache>,
        tenant_id: TenantId,
        timeline_id: TimelineId,
        index: Option<Manifest>,
        ancestor: Option<Arc<Timeline>>,
    ) -> Result<Timeline> {
        let (manifest, generation) = match index {
            None => (Manifest::empty(tenant_id, timeline_id, 0), 1),
            Some(manifest) => {
                let next = manifest.generation.checked_add(1).ok_or_else(|| {
                    PageserverError::Internal(format!(
                        "timeline {timeline_id} has run out of generations"
                    ))
                })?;
                (manifest, next)
            }
        };
        let ancestor = match (&manifest.ancestor, ancestor) {
            (None, None) => None,
            (Some(named), Some(given)) if named.timeline == given.timeline_id.to_string() => {
                Some(AncestorRef {
                    timeline: given,
                    lsn: Lsn(named.lsn),
                })
            }
            (named, given) => {
                return Err(PageserverError::Internal(format!(
                    "timeline {timeline_id}: its index names ancestor {:?}, opened with {:?}",
                    named.as_ref().map(|a| &a.timeline),
                    given.map(|g| g.timeline_id)
                )))
            }
        };
        // Claim the generation now rather than at the first checkpoint: a second pageserver
        // that picked the same number fails here, before it serves anything.
        let claimed = Manifest {
            generation,
            ..manifest
        };
        let (claimed, version) = claim_index(&remote, claimed).await?;
        let (claimed, version) = adopt_predecessor(&remote, claimed, version).await?;
        Ok(Timeline::build(remote, cache, claimed, version, ancestor))
    }

    /// Creates a branch of `ancestor` at `lsn` (at or below what the ancestor has applied;
    /// below the ancestor's own branch LSN is fine too, reads there go further up): an index
    /// naming the ancestor and no layers, so nothing is copied. Refused if the id has an
    /// index already.
    pub async fn create_branch(
        remote: RemoteStorage,
        cache: Arc<BlockCache>,
        timeline_id: TimelineId,
        ancestor: Arc<Timeline>,
        lsn: Lsn,
    ) -> Result<Timeline> {
        let tenant_id = ancestor.tenant_id;
        ancestor.check_readable(lsn)?;
        if lsn > ancestor.last_record_lsn() {
            return Err(PageserverError::Conflict(format!(
                "timeline {} has applied WAL only up to LSN {}, not {lsn}",
                ancestor.timeline_id,
                ancestor.last_record_lsn()
            )));
        }
        if read_index(&remote, tenant_id, timeline_id).await?.is_some() {
            return Err(PageserverError::Conflict(format!(
                "timeline {timeline_id} already exists"
            )));
        }
        let dropped_tables = ancestor
            .read_state()?
            .dropped
            .iter()
            .filter(|(_, dropped)| **dropped <= lsn)
            .map(|(table, dropped)| DroppedTable {
                table: *table,
                lsn: dropped.0,
            })
            .collect();
        let manifest = Manifest {
            generation: 1,
            remote_consistent_lsn: lsn.0,
            ancestor: Some(ManifestAncestor {
                timeline: ancestor.timeline_id.to_string(),
                lsn: lsn.0,
            }),
            dropped_tables,
            ..Manifest::empty(tenant_id, timeline_id, 1)
        };
        let ancestor = AncestorRef {
            timeline: ancestor,
            lsn,
        };
        let (manifest, version) = claim_index(&remote, manifest).await?;
        Ok(Timeline::build(
            remote,
            cache,
            manifest,
            version,
            Some(ancestor),
        ))
    }

    /// The timeline whose index, as last written, is `claimed` at `manifest_version`.
    fn build(
        remote: RemoteStorage,
        cache: Arc<BlockCache>,
        claimed: Manifest,
        manifest_version: ObjectVersion,
        ancestor: Option<AncestorRef>,
    ) -> Timeline {
        let tenant_id: TenantId = claimed.tenant.parse().expect("checked by claim_index");
        let timeline_id: TimelineId = claimed.timeline.parse().expect("checked by claim_index");
        let generation = claimed.generation;
        let remote_consistent_lsn = claimed.remote_consistent_lsn();
        let dropped = claimed
            .dropped_tables
            .iter()
            .map(|d| (d.table, Lsn(d.lsn)))
            .collect();
        Timeline {
            tenant_id,
            timeline_id,
            generation,
            ancestor,
            storage: LayerStorage {
                remote,
                cache,
                tenant: tenant_id,
                timeline: timeline_id,
            },
            state: RwLock::new(TimelineState {
                open: Store::new(),
                open_start: remote_consistent_lsn,
                frozen: Vec::new(),
                layers: Arc::new(LayerSet::new(&claimed.layers)),
                dropped,
                n_ignored_ops: 0,
                last_commit_time_us: 0,
                gc_cutoff: Lsn(claimed.gc_cutoff_lsn),
                gc_retained: claimed
                    .gc_retained_lsns
                    .iter()
                    .map(|lsn| Lsn(*lsn))
                    .collect(),
            }),
            last_record_lsn: watch::Sender::new(remote_consistent_lsn),
            remote_consistent_lsn: watch::Sender::new(remote_consistent_lsn),
            uploads: tokio::sync::Mutex::new(UploadState {
                manifest: claimed,
                manifest_version,
                unconfirmed: None,
            }),
            delta_layer_bytes_target: DELTA_LAYER_BYTES_TARGET,
            compaction_delta_layers_min: COMPACTION_DELTA_LAYERS_MIN.into(),
        }
    }

    /// Refuses `lsn` if garbage collection may have removed what a read at it needs, here
    /// or, below the branch point, up the ancestry.
    pub fn check_readable(&self, lsn: Lsn) -> Result<()> {
        self.read_state()?.check_retained(self.timeline_id, lsn)?;
        match &self.ancestor {
            Some(ancestor) if lsn < ancestor.lsn => ancestor.timeline.check_readable(lsn),
            _ => Ok(()),
        }
    }

    /// The branch's parent and branch LSN (`None` for a root timeline).
    pub fn ancestor(&self) -> Option<&AncestorRef> {
        self.ancestor.as_ref()
    }

    /// Where this timeline's own WAL starts: its branch LSN, or 0.
    pub fn start_lsn(&self) -> Lsn {
        self.ancestor.as_ref().map_or(Lsn::ZERO, |a| a.lsn)
    }

    /// What the read protocol says about this timeline.
    pub fn info(&self) -> pageserver_api::TimelineInfo {
        pageserver_api::TimelineInfo {
            tenant: self.tenant_id,
            timeline: self.timeline_id,
            ancestor: self
                .ancestor
                .as_ref()
                .map(|a| (a.timeline.timeline_id, a.lsn)),
            last_record_lsn: self.last_record_lsn(),
            remote_consistent_lsn: self.remote_consistent_lsn(),
        }
    }

    pub fn tenant_id(&self) -> TenantId {
        self.tenant_id
    }

    pub fn timeline_id(&self) -> TimelineId {
        self.timeline_id
    }

    pub fn generation(&self) -> u32 {
        self.generation
    }

    pub fn remote(&self) -> &RemoteStorage {
        &self.storage.remote
    }

    pub fn cache(&self) -> &Arc<BlockCache> {
        &self.storage.cache
    }

    /// End of the last WAL record applied.
    pub fn last_record_lsn(&self) -> Lsn {
        *self.last_record_lsn.borrow()
    }

    /// Every commit at or below this LSN is in the object store.
    pub fn remote_consistent_lsn(&self) -> Lsn {
        *self.remote_consistent_lsn.borrow()
    }

    /// Operations ignored because they touched a table after its drop.
    pub fn n_ignored_ops(&self) -> Result<u64> {
        Ok(self.read_state()?.n_ignored_ops)
    }

    fn read_state(&self) -> Result<RwLockReadGuard<'_, TimelineState>> {
        self.state.read().map_err(|_| poisoned())
    }

    fn write_state(&self) -> Result<RwLockWriteGuard<'_, TimelineState>> {
        self.state.write().map_err(|_| poisoned())
    }

    /// Applies the transaction whose record ends at `lsn`, and publishes `lsn`. The open
    /// in-memory layer is frozen once it holds `delta_layer_bytes_target` bytes.
    pub fn ingest(&self, lsn: Lsn, mut txn: Transaction) -> Result<()> {
        let mut state = self.write_state()?;
        let last_record_lsn = self.last_record_lsn();
        if lsn <= last_record_lsn {
            return Err(PageserverError::Replication(format!(
                "record ending at LSN {lsn} does not advance past LSN {last_record_lsn}"
            )));
        }
        // Tables dropped by earlier transactions: their ops change nothing (the WAL format
        // promises a dropped id is never used again).
        let n_ops = txn.ops.len();
        txn.ops.retain(|op| {
            let table = match op {
                Op::Put { table, .. } | Op::Delete { table, .. } | Op::DropTable { table } => {
                    *table
                }
            };
            !state.dropped.contains_key(&table)
        });
        state.n_ignored_ops += (n_ops - txn.ops.len()) as u64;
        if txn.commit_time_us > 0 {
            // Kept non-decreasing, so that "the last commit at or before T" is the last key
            // at or below T even when computes' clocks disagree a little.
            let time = txn.commit_time_us.max(state.last_commit_time_us);
            state.last_commit_time_us = time;
            txn.ops.push(Op::Put {
                table: COMMIT_TIMES_TABLE_ID,
                key: Bytes::copy_from_slice(&time.to_be_bytes()),
                value: Bytes::copy_from_slice(&lsn.0.to_be_bytes()),
            });
        }
        state.open.apply(lsn, &txn);
        for op in &txn.ops {
            if let Op::DropTable { table } = op {
                state.dropped.entry(*table).or_insert(lsn);
            }
        }
        if state.open.n_bytes() >= self.delta_layer_bytes_target {
            freeze(&mut state, lsn);
        }
        // Published while the state lock is held, so that LSNs are published in order.
        self.last_record_lsn.send_replace(lsn);
        Ok(())
    }

    /// Waits until WAL up to `lsn` has been applied here and, for a branch, up to the
    /// branch LSN on its ancestors (after a restart they re-apply WAL too); at most `timeout`
    /// each.
    pub async fn wait_lsn(&self, lsn: Lsn, timeout: Duration) -> Result<()> {
        self.wait_own_lsn(lsn, timeout).await?;
        let mut next = self.ancestor.as_ref();
        while let Some(ancestor) = next {
            ancestor
                .timeline
                .wait_own_lsn(lsn.min(ancestor.lsn), timeout)
                .await?;
            next = ancestor.timeline.ancestor.as_ref();
        }
        Ok(())
    }

    async fn wait_own_lsn(&self, lsn: Lsn, timeout: Duration) -> Result<()> {
        let mut receiver = self.last_record_lsn.subscribe();
        let waited = tokio::time::timeout(timeout, receiver.wait_for(|have| *have >= lsn))
            .await
            .map(|r| r.map(|_| ()));
        match waited {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(PageserverError::Internal(
                "last_record_lsn sender dropped".into(),
            )),
            Err(_) => Err(PageserverError::WaitLsnTimeout {
                waited_ms: timeout.as_millis(),
                lsn,
                have: self.last_record_lsn(),
            }),
        }
    }

    /// The row at `(table, key)` as of `lsn`. The caller has waited for `lsn`.
    pub async fn get(&self, table: u32, key: &[u8], lsn: Lsn) -> Result<Option<Bytes>> {
        self.check_readable(lsn)?;
        let layers = {
            let state = self.read_state()?;
            if state
                .dropped
                .get(&table)
                .is_some_and(|dropped| *dropped <= lsn)
            {
                return Ok(None);
            }
            let memory = state.memory_layers();
            for store in memory {
                if let Some((_, value)) = store.newest_version(table, key, lsn) {
                    return Ok(value);
                }
            }
            state.layers.clone()
        };
        match layers.get(&self.storage, table, key, lsn).await? {
            Lookup::Found(value) => Ok(value),
            Lookup::NotHere => match &self.ancestor {
                Some(ancestor) => {
                    Box::pin(ancestor.timeline.get(table, key, lsn.min(ancestor.lsn))).await
                }
                None => Ok(None),
            },
        }
    }

    /// The LSN of the last commit (the highest LSN) whose commit time is at or before
    /// `unix_us` (µs since the Unix epoch, by the committing computes' clocks), on this
    /// timeline or, below the branch point, its ancestors; `None` if no commit that early is
    /// known.
    pub async fn lsn_at_time(&self, unix_us: u64) -> Result<Option<Lsn>> {
        let lsn = self.last_record_lsn();
        let end = unix_us.saturating_add(1).to_be_bytes();
        // Look back over a growing window, so that a recent time costs a short scan. Times
        // are non-decreasing within one timeline, but a branch's first commits may carry
        // times below its ancestor's last ones: take the highest LSN in the window.
        let mut window_us: u64 = 60_000_000;
        loop {
            let from = unix_us.saturating_sub(window_us);
            let start = from.to_be_bytes();
            let mut found: Option<Lsn> = None;
            let mut after: Option<Bytes> = None;
            loop {
                let page = self
                    .scan(
                        COMMIT_TIMES_TABLE_ID,
                        (Some(&start[..]), Some(&end[..])),
                        lsn,
                        after.as_deref(),
                        UNLIMITED_SCAN,
                    )
                    .await?;
                for (_, value) in &page.rows {
                    let bytes: [u8; 8] = value[..].try_into().map_err(|_| {
                        PageserverError::corrupt(
                            format!("commit time entry of timeline {}", self.timeline_id),
                            format!("value of {} bytes, not 8", value.len()),
                        )
                    })?;
                    let commit = Lsn(u64::from_be_bytes(bytes));
                    found = found.max(Some(commit));
                }
                match page.resume_after {
                    Some(key) => after = Some(key),
                    None => break,
                }
            }
            if found.is_some() || from == 0 {
                return Ok(found);
            }
            window_us = window_us.saturating_mul(8);
        }
    }

    /// One step of a scan: the in-memory layers' part is taken under the read lock, then the
    /// persisted layers are read without it.
    pub async fn scan(
        &self,
        table: u32,
        range: (Option<&[u8]>, Option<&[u8]>),
        lsn: Lsn,
        after_key: Option<&[u8]>,
        limits: ScanLimits,
    ) -> Result<ScanPage> {
        self.check_readable(lsn)?;
        let (memory, layers) = {
            let state = self.read_state()?;
            if state
                .dropped
                .get(&table)
                .is_some_and(|dropped| *dropped <= lsn)
            {
                return Ok(ScanPage::default());
            }
            let lower = scan_lower_bound(range.0, after_key);
            let mut covered_to: Option<Bytes> = None;
            // Newest layer first: the first version found for a key is the one visible.
            let mut entries: BTreeMap<Bytes, Option<Bytes>> = BTreeMap::new();
            let memory = state.memory_layers();
            for store in memory {
                let (found, covered) = store.newest_versions_in_range(
                    table,
                    lower,
                    range.1,
                    lsn,
                    limits.keys_examined_max,
                );
                for (key, value) in found {
                    entries.entry(key).or_insert(value);
                }
                if let Some(covered) = covered {
                    if covered_to.as_ref().is_none_or(|current| covered < *current) {
                        covered_to = Some(covered);
                    }
                }
            }
            if let Some(covered) = &covered_to {
                entries.retain(|key, _| key <= covered);
            }
            let memory = MemoryRange {
                entries: entries.into_iter().collect(),
                covered_to,
            };
            (memory, state.layers.clone())
        };
        layers
            .scan_step(
                &self.storage,
                table,
                range,
                lsn,
                after_key,
                &memory,
                self.ancestor.as_ref(),
                limits,
            )
            .await
    }

    /// Freezes the open in-memory layer and uploads every frozen one as a delta layer, then
    /// this generation's index naming them. Returns the new `remote_consistent_lsn`, or
    /// `None` when there was nothing to upload. On failure nothing is forgotten: the frozen
    /// layers stay, and the next checkpoint uploads them again (same names, same bytes).
    pub async fn checkpoint(&self) -> Result<Option<Lsn>> {
        let mut uploads = self.uploads.lock().await;
        let frozen: Vec<Arc<FrozenLayer>> = {
            let mut state = self.write_state()?;
            let last_record_lsn = self.last_record_lsn();
            freeze(&mut state, last_record_lsn);
            state.frozen.clone()
        };
        let Some(end_lsn) = frozen.last().map(|layer| layer.end) else {
            return Ok(None);
        };
        let mut manifest = uploads.manifest.clone();
        let mut added = Vec::with_capacity(frozen.len());
        for layer in &frozen {
            assert_eq!(
                Lsn(manifest.remote_consistent_lsn),
                layer.start,
                "frozen layers continue the uploaded ones"
            );
            let entries = layer.store.delta_entries();
            let dropped = layer.store.dropped_tables();
            let bytes = delta_layer::encode(layer.start, layer.end, &entries, &dropped)?;
            let mut tables: BTreeSet<u32> = dropped.iter().map(|(table, _)| *table).collect();
            for entry in &entries {
                let table_id: [u8; 4] = entry.key[..4]
                    .try_into()
                    .expect("timeline keys have a table id");
                tables.insert(u32::from_be_bytes(table_id));
            }
            let desc = LayerDesc::Delta {
                start_lsn: layer.start.0,
                end_lsn: layer.end.0,
                generation: self.generation,
                size_bytes: bytes.len() as u64,
                tables: tables.into_iter().collect(),
            };
            let key = remote_layout::layer_key(self.tenant_id, self.timeline_id, &desc);
            self.put_layer_file(&key, bytes).await?;
            for (table, lsn) in dropped {
                if !manifest.dropped_tables.iter().any(|d| d.table == table) {
                    manifest
                        .dropped_tables
                        .push(DroppedTable { table, lsn: lsn.0 });
                }
            }
            manifest.layers.push(desc.clone());
            manifest.remote_consistent_lsn = layer.end.0;
            added.push(desc);
        }
        self.write_manifest(&mut uploads, manifest).await?;
        {
            let mut state = self.write_state()?;
            state.layers = Arc::new(state.layers.with(&added, &[]));
            state.frozen.drain(..frozen.len());
        }
        self.remote_consistent_lsn.send_replace(end_lsn);
        tracing::debug!(
            "timeline {}: uploaded up to LSN {end_lsn}",
            self.timeline_id
        );
        Ok(Some(end_lsn))
    }

    /// Writes image layers at `remote_consistent_lsn` for every table with at least
    /// `compaction_delta_layers_min` delta layers above its newest image, then the index
    /// naming them. Returns the tables imaged. Older layers stay (garbage collection decides
    /// what no reader still needs).
    pub async fn compact(&self) -> Result<Vec<u32>> {
        let min = self
            .compaction_delta_layers_min
            .load(std::sync::atomic::Ordering::Relaxed);
        self.compact_where(min, None).await
    }

    /// Uploads everything in memory (a checkpoint), then writes image layers for `table`
    /// (or every table) with at least one delta layer above its newest image: what a
    /// compute's `VACUUM` asks for. Returns the LSN the images are at and the tables imaged.
    pub async fn compact_now(&self, table: Option<u32>) -> Result<(Lsn, Vec<u32>)> {
        self.checkpoint().await?;
        let tables = self.compact_where(1, table).await?;
        Ok((self.remote_consistent_lsn(), tables))
    }

    /// Image layers for the tables (all, or only `only`) with at least `min_deltas` delta
    /// layers above their newest image.
    async fn compact_where(&self, min_deltas: usize, only: Option<u32>) -> Result<Vec<u32>> {
        let mut uploads = self.uploads.lock().await;
        let mut manifest = uploads.manifest.clone();
        let lsn = manifest.remote_consistent_lsn();
        let mut newest_image: BTreeMap<u32, u64> = BTreeMap::new();
        for layer in &manifest.layers {
            if let LayerDesc::Image { table, lsn, .. } = layer {
                let newest = newest_image.entry(*table).or_insert(*lsn);
                *newest = (*newest).max(*lsn);
            }
        }
        let mut deltas_above: BTreeMap<u32, usize> = BTreeMap::new();
        for layer in &manifest.layers {
            if let LayerDesc::Delta {
                end_lsn, tables, ..
            } = layer
            {
                for table in tables {
                    if newest_image.get(table).is_none_or(|image| end_lsn > image) {
                        *deltas_above.entry(*table).or_default() += 1;
                    }
                }
            }
        }
        let dropped: BTreeSet<u32> = manifest.dropped_tables.iter().map(|d| d.table).collect();
        let tables: Vec<u32> = deltas_above
            .into_iter()
            .filter(|(table, n)| {
                *n >= min_deltas && !dropped.contains(table) && only.is_none_or(|t| t == *table)
            })
            .map(|(table, _)| table)
            .collect();
        if tables.is_empty() {
            return Ok(tables);
        }
        let layers = self.read_state()?.layers.clone();
        let mut added = Vec::with_capacity(tables.len());
        let mut catalog: Option<Vec<TableDef>> = None;
        for table in &tables {
            let rows = self.scan_table(&layers, *table, lsn).await?;
            let bytes = image_layer::encode(lsn, &rows)?;
            let size_bytes = bytes.len() as u64;
            // User tables also get column pages, from their definition at the same LSN.
            let mut column_pages = None;
            if *table >= FIRST_USER_TABLE_ID {
                if catalog.is_none() {
                    catalog = Some(self.table_defs(&layers, lsn).await?);
                }
                let def = catalog.iter().flatten().find(|def| def.id == *table);
                match def.map(|def| column_pages::encode(def, &rows)).transpose() {
                    Ok(encoded) => column_pages = encoded,
                    Err(err) => tracing::warn!(
                        "timeline {}: no column pages for table {table} at LSN {lsn}: {err}",
                        self.timeline_id
                    ),
                }
            }
            let desc = LayerDesc::Image {
                table: *table,
                lsn: lsn.0,
                generation: self.generation,
                size_bytes,
                column_bytes: column_pages.as_ref().map(|bytes| bytes.len() as u64),
            };
            if let (Some(bytes), Some(key)) = (
                column_pages,
                remote_layout::column_key(self.tenant_id, self.timeline_id, &desc),
            ) {
                self.put_layer_file(&key, bytes).await?;
            }
            let key = remote_layout::layer_key(self.tenant_id, self.timeline_id, &desc);
            self.put_layer_file(&key, bytes).await?;
            manifest.layers.push(desc.clone());
            added.push(desc);
        }
        self.write_manifest(&mut uploads, manifest).await?;
        let mut state = self.write_state()?;
        state.layers = Arc::new(state.layers.with(&added, &[]));
        tracing::debug!(
            "timeline {}: image layers at LSN {lsn} for tables {tables:?}",
            self.timeline_id
        );
        Ok(tables)
    }

    /// Every row of `table` at `lsn` in `layers` (which hold everything up to `lsn`).
    async fn scan_table(
        &self,
        layers: &LayerSet,
        table: u32,
        lsn: Lsn,
    ) -> Result<Vec<(Bytes, Bytes)>> {
        let mut rows = Vec::new();
        let mut after: Option<Bytes> = None;
        loop {
            let page = layers
                .scan_step(
                    &self.storage,
                    table,
                    (None, None),
                    lsn,
                    after.as_deref(),
                    &MemoryRange::default(),
                    self.ancestor.as_ref(),
                    UNLIMITED_SCAN,
                )
                .await?;
            rows.extend(page.rows);
            match page.resume_after {
                Some(key) => after = Some(key),
                None => return Ok(rows),
            }
        }
    }

    /// The table definitions in the catalog at `lsn`; rows that do not decode are skipped
    /// with a warning (their tables get no column pages).
    async fn table_defs(&self, layers: &LayerSet, lsn: Lsn) -> Result<Vec<TableDef>> {
        let rows = self.scan_table(layers, CATALOG_TABLE_ID, lsn).await?;
        let mut defs = Vec::with_capacity(rows.len());
        for (name, value) in rows {
            match TableDef::decode(&value) {
                Ok(def) => defs.push(def),
                Err(err) => tracing::warn!(
                    "timeline {}: catalog row {:?} at LSN {lsn}: {err}",
                    self.timeline_id,
                    String::from_utf8_lossy(&name)
                ),
            }
        }
        Ok(defs)
    }

    /// Uploads a layer file create-only. A file of this name from an earlier, failed attempt
    /// of this generation holds the same bytes (layers are a function of the frozen WAL or
    /// of the state at an LSN) and is accepted; different bytes are an error.
    async fn put_layer_file(&self, key: &str, bytes: Bytes) -> Result<()> {
        match self
            .storage
            .remote
            .put(key, bytes.clone(), PutMode::CreateNew)
            .await
        {
            Ok(()) => Ok(()),
            Err(err) if err.is_already_exists() => {
                let existing = self.storage.remote.get(key, LAYER_FILE_BYTES_MAX).await?;
                if existing == bytes {
                    Ok(())
                } else {
                    Err(PageserverError::Internal(format!(
                        "layer file {key} already exists with other contents"
                    )))
                }
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Replaces this generation's index, on condition that it is still the one last written
    /// (a compare-and-swap on its object version; refused if anything else wrote it). A
    /// write that failed may still have landed: if the next one is refused and the index
    /// holds exactly what that write sent, the index is ours, and the write goes on from it.
    async fn write_manifest(&self, uploads: &mut UploadState, manifest: Manifest) -> Result<()> {
        let key = remote_layout::index_key(self.tenant_id, self.timeline_id, self.generation);
        let bytes = manifest.encode();
        let remote = &self.storage.remote;
        let expected = Expected::Version(uploads.manifest_version.clone());
        let written = match remote.put_if(&key, bytes.clone(), expected).await {
            Err(e) if e.is_precondition_failed() && uploads.unconfirmed.is_some() => {
                let (stored, version) = remote.get_with_version(&key, MANIFEST_BYTES_MAX).await?;
                if Some(&stored) != uploads.unconfirmed.as_ref() {
                    return Err(e.into());
                }
                uploads.manifest_version = version;
                uploads.unconfirmed = None;
                let expected = Expected::Version(uploads.manifest_version.clone());
                remote.put_if(&key, bytes.clone(), expected).await
            }
            other => other,
        };
        match written {
            Ok(version) => {
                uploads.manifest_version = version;
                uploads.manifest = manifest;
                uploads.unconfirmed = None;
                Ok(())
            }
            Err(e) => {
                if !e.is_precondition_failed() {
                    uploads.unconfirmed = Some(bytes);
                }
                Err(e.into())
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn set_delta_layer_bytes_target(&mut self, bytes: usize) {
        self.delta_layer_bytes_target = bytes;
    }

    #[cfg(test)]
    pub(crate) fn set_compaction_delta_layers_min(&self, n: usize) {
        self.compaction_delta_layers_min
            .store(n, std::sync::atomic::Ordering::Relaxed);
    }

    #[cfg(test)]
    pub(crate) async fn manifest(&self) -> Manifest {
        self.uploads.lock().await.manifest.clone()
    }
}

impl TimelineState {
    /// Refuses a read at `lsn` that garbage collection may have removed layers of.
    fn check_retained(&self, timeline: TimelineId, lsn: Lsn) -> Result<()> {
        if lsn >= self.gc_cutoff || self.gc_retained.binary_search(&lsn).is_ok() {
            Ok(())
        } else {
            Err(PageserverError::NotRetained {
                timeline,
                lsn,
                cutoff: self.gc_cutoff,
            })
        }
    }

    /// The in-memory layers, newest first: the first version found for a key is the newest.
    fn memory_layers(&self) -> impl Iterator<Item = &Store> {
        std::iter::once(&self.open).chain(self.frozen.iter().rev().map(|frozen| &frozen.store))
    }
}

/// Moves the open in-memory layer to the frozen ones if it holds anything up to `end`.
fn freeze(state: &mut TimelineState, end: Lsn) {
    if end > state.open_start {
        let store = std::mem::take(&mut state.open);
        let start = state.open_start;
        state
            .frozen
            .push(Arc::new(FrozenLayer { store, start, end }));
        state.open_start = end;
    }
}

/// Writes `claimed` as its generation's index, create-only: a second pageserver that picked
/// the same generation fails here, before it serves anything. Returns the version written.
async fn claim_index(
    remote: &RemoteStorage,
    claimed: Manifest,
) -> Result<(Manifest, ObjectVersion)> {
    let tenant_id: TenantId = parse_id(&claimed.tenant)?;
    let timeline_id: TimelineId = parse_id(&claimed.timeline)?;
    let generation = claimed.generation;
    let key = remote_layout::index_key(tenant_id, timeline_id, generation);
    let version = remote
        .put_if(&key, claimed.encode(), Expected::Absent)
        .await
        .map_err(|e| match e.is_precondition_failed() {
            true => PageserverError::GenerationTaken {
                generation,
                timeline: timeline_id,
            },
            false => e.into(),
        })?;
    Ok((claimed, version))
}

/// After claiming a generation, reads the newest older index again and, if it changed since
/// it was first read, takes its content. A pageserver of an older generation deletes layer
/// files only after checking that no newer generation has claimed an index, and only those
/// its own index no longer names; reading after claiming means this pageserver starts from
/// an index at least that new, so it never names a file the older one deletes.
async fn adopt_predecessor(
    remote: &RemoteStorage,
    claimed: Manifest,
    version: ObjectVersion,
) -> Result<(Manifest, ObjectVersion)> {
    let tenant_id: TenantId = parse_id(&claimed.tenant)?;
    let timeline_id: TimelineId = parse_id(&claimed.timeline)?;
    let generation = claimed.generation;
    let Some(previous) = read_index_below(remote, tenant_id, timeline_id, generation).await? else {
        return Ok((claimed, version));
    };
    if previous.generation + 1 != generation {
        // The index this claim was based on is gone: a newer pageserver collected it.
        return Err(PageserverError::Conflict(format!(
            "timeline {timeline_id}: generation {}'s index disappeared while generation {generation} was claimed; a newer pageserver serves it",
            generation - 1
        )));
    }
    let previous = Manifest {
        generation,
        ..previous
    };
    if previous == claimed {
        return Ok((claimed, version));
    }
    if previous.ancestor != claimed.ancestor {
        return Err(PageserverError::corrupt(
            format!("timeline index of {timeline_id}"),
            "the ancestor changed between two generations",
        ));
    }
    tracing::info!(
        "timeline {timeline_id}: the previous generation's index changed while generation {generation} was claimed; starting from the newer one"
    );
    let key = remote_layout::index_key(tenant_id, timeline_id, generation);
    let version = remote
        .put_if(&key, previous.encode(), Expected::Version(version))
        .await?;
    Ok((previous, version))
}

/// The index of the newest generation of a timeline, checked; `None` if it has none.
pub async fn read_index(
    remote: &RemoteStorage,
    tenant_id: TenantId,
    timeline_id: TimelineId,
) -> Result<Option<Manifest>> {
    read_index_below(remote, tenant_id, timeline_id, u32::MAX).await
}

/// The generations of the index files of a timeline, ascending.
pub(crate) async fn index_generations(
    remote: &RemoteStorage,
    tenant_id: TenantId,
    timeline_id: TimelineId,
) -> Result<Vec<u32>> {
    let prefix = remote_layout::timeline_prefix(tenant_id, timeline_id);
    let objects = remote.list(&prefix).await?;
    let mut generations: Vec<u32> = objects
        .iter()
        .filter_map(|object| object.key.strip_prefix(prefix.as_str())?.strip_prefix('/'))
        .filter_map(remote_layout::parse_index_file_name)
        .collect();
    generations.sort_unstable();
    Ok(generations)
}

/// The index of the newest generation below `below` (`u32::MAX`: any), checked.
async fn read_index_below(
    remote: &RemoteStorage,
    tenant_id: TenantId,
    timeline_id: TimelineId,
    below: u32,
) -> Result<Option<Manifest>> {
    let generations = index_generations(remote, tenant_id, timeline_id).await?;
    let highest = match below {
        u32::MAX => generations.last().copied(),
        _ => generations.into_iter().rev().find(|g| *g < below),
    };
    let Some(highest) = highest else {
        return Ok(None);
    };
    let key = remote_layout::index_key(tenant_id, timeline_id, highest);
    let bytes = remote.get(&key, MANIFEST_BYTES_MAX).await?;
    let manifest = Manifest::decode(&bytes, tenant_id, timeline_id).map_err(|e| at_key(e, &key))?;
    if manifest.generation != highest {
        let reason = format!("names generation {}", manifest.generation);
        return Err(PageserverError::corrupt(
            format!("timeline index {key}"),
            reason,
        ));
    }
    tracing::info!(
        "timeline {timeline_id}: found generation {highest}'s index, {} layers up to LSN {}",
        manifest.layers.len(),
        manifest.remote_consistent_lsn()
    );
    Ok(Some(manifest))
}

fn parse_id<T: std::str::FromStr<Err = ids::ParseIdError>>(text: &str) -> Result<T> {
    text.parse()
        .map_err(|e: ids::ParseIdError| PageserverError::Internal(format!("index id: {e}")))
}

fn poisoned() -> PageserverError {
    PageserverError::Internal("timeline state lock poisoned by an earlier panic".into())
}

#[path = "timeline_columns.rs"]
pub mod columns;

#[path = "timeline_gc.rs"]
pub mod gc;

#[cfg(test)]
#[path = "timeline_tests.rs"]
pub(crate) mod tests;

#[cfg(test)]
#[path = "timeline_branch_tests.rs"]
mod branch_tests;
