//! One timeline: its versioned state ([`Store`]), how far WAL has been applied
//! (`last_record_lsn`), how far the object store holds it (`remote_consistent_lsn`), and the
//! two ways state moves: ingest (from the WAL receiver) and checkpoint (to the object store).
//!
//! ```text
//!  safekeeper ─WAL─▶ ingest ─▶ Store (memory) ──────────────▶ reads at LSN X
//!                        └──▶ not_uploaded ─checkpoint─▶ layers + index (object store)
//!  startup: highest generation's index ─▶ its layers, in LSN order ─▶ Store
//! ```
//!
//! Invariants:
//! - `last_record_lsn` only grows, and is published only after the transaction it names is
//!   in the store, so a reader that waited for LSN X sees every commit at or below X.
//! - Transactions stay in `not_uploaded` until a layer holding them is in the object store
//!   *and* an index naming that layer is written; layers are uploaded before the index.
//! - This pageserver writes only its own generation's index (highest found at startup + 1,
//!   claimed at startup with a create-only put), so it never overwrites another pageserver's
//!   state; a stale one's later uploads are simply ignored by newer generations.
//!
//! Does I/O through [`RemoteStorage`] only; local disk is not used.

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use bytes::Bytes;
use ids::{Lsn, TenantId, TimelineId};
use remote_storage::{PutMode, RemoteStorage};
use tokio::sync::watch;
use wal::{Op, Transaction};

use crate::error::{PageserverError, Result};
use crate::layer;
use crate::limits::{DELTA_LAYER_BYTES_TARGET, LAYER_FILE_BYTES_MAX, MANIFEST_BYTES_MAX};
use crate::manifest::{LayerDesc, Manifest};
use crate::remote_layout;
use crate::store::{ScanLimits, ScanPage, Store};

pub struct Timeline {
    tenant_id: TenantId,
    timeline_id: TimelineId,
    generation: u32,
    remote: RemoteStorage,
    state: RwLock<TimelineState>,
    last_record_lsn: watch::Sender<Lsn>,
    remote_consistent_lsn: watch::Sender<Lsn>,
    /// Held for a whole checkpoint, so that checkpoints never interleave.
    uploads: tokio::sync::Mutex<UploadState>,
    delta_layer_bytes_target: usize,
}

struct TimelineState {
    store: Store,
    /// Ingested transactions not yet in the object store, in commit LSN order.
    not_uploaded: Vec<(Lsn, Transaction)>,
}

struct UploadState {
    /// The live layers, as listed in this generation's index.
    layers: Vec<LayerDesc>,
}

impl Timeline {
    /// Rebuilds the timeline from the object store alone and claims the next generation.
    pub async fn load(
        remote: RemoteStorage,
        tenant_id: TenantId,
        timeline_id: TimelineId,
    ) -> Result<Timeline> {
        let prefix = remote_layout::timeline_prefix(tenant_id, timeline_id);
        let objects = remote.list(&prefix).await?;
        let highest = objects
            .iter()
            .filter_map(|object| object.key.strip_prefix(prefix.as_str())?.strip_prefix('/'))
            .filter_map(remote_layout::parse_index_file_name)
            .max();
        let mut store = Store::new();
        let manifest = match highest {
            None => Manifest::empty(tenant_id, timeline_id, 0),
            Some(highest) => {
                let key = remote_layout::index_key(tenant_id, timeline_id, highest);
                let bytes = remote.get(&key, MANIFEST_BYTES_MAX).await?;
                let manifest = Manifest::decode(&bytes, tenant_id, timeline_id)
                    .map_err(|e| at_key(e, &key))?;
                if manifest.generation != highest {
                    let reason = format!("names generation {}", manifest.generation);
                    return Err(PageserverError::corrupt(
                        format!("timeline index {key}"),
                        reason,
                    ));
                }
                for desc in &manifest.layers {
                    load_layer(&remote, tenant_id, timeline_id, desc, &mut store).await?;
                }
                tracing::info!(
                    "timeline {timeline_id}: loaded generation {highest}'s index, {} layers up to LSN {}",
                    manifest.layers.len(),
                    manifest.remote_consistent_lsn()
                );
                manifest
            }
        };
        let remote_consistent_lsn = manifest.remote_consistent_lsn();
        assert!(store.last_lsn() <= remote_consistent_lsn);
        let generation = match highest {
            None => 1,
            Some(highest) => highest.checked_add(1).ok_or_else(|| {
                PageserverError::Internal(format!(
                    "timeline {timeline_id} has run out of generations"
                ))
            })?,
        };
        // Claim the generation now rather than at the first checkpoint: a second pageserver
        // that picked the same number fails here, before it serves anything.
        let claimed = Manifest {
            generation,
            ..manifest.clone()
        };
        let key = remote_layout::index_key(tenant_id, timeline_id, generation);
        remote
            .put(&key, claimed.encode(), PutMode::CreateNew)
            .await
            .map_err(|e| match e.is_already_exists() {
                true => PageserverError::GenerationTaken {
                    generation,
                    timeline: timeline_id,
                },
                false => e.into(),
            })?;
        Ok(Timeline {
            tenant_id,
            timeline_id,
            generation,
            remote,
            state: RwLock::new(TimelineState {
                store,
                not_uploaded: Vec::new(),
            }),
            last_record_lsn: watch::Sender::new(remote_consistent_lsn),
            remote_consistent_lsn: watch::Sender::new(remote_consistent_lsn),
            uploads: tokio::sync::Mutex::new(UploadState {
                layers: manifest.layers,
            }),
            delta_layer_bytes_target: DELTA_LAYER_BYTES_TARGET,
        })
    }

    pub fn timeline_id(&self) -> TimelineId {
        self.timeline_id
    }

    pub fn generation(&self) -> u32 {
        self.generation
    }

    pub fn remote(&self) -> &RemoteStorage {
        &self.remote
    }

    /// End of the last WAL record applied.
    pub fn last_record_lsn(&self) -> Lsn {
        *self.last_record_lsn.borrow()
    }

    /// Every commit at or below this LSN is in the object store.
    pub fn remote_consistent_lsn(&self) -> Lsn {
        *self.remote_consistent_lsn.borrow()
    }

    fn read_state(&self) -> Result<RwLockReadGuard<'_, TimelineState>> {
        self.state.read().map_err(|_| poisoned())
    }

    fn write_state(&self) -> Result<RwLockWriteGuard<'_, TimelineState>> {
        self.state.write().map_err(|_| poisoned())
    }

    /// Applies the transaction whose record ends at `lsn`, and publishes `lsn`.
    pub fn ingest(&self, lsn: Lsn, txn: Transaction) -> Result<()> {
        let mut state = self.write_state()?;
        let last_record_lsn = self.last_record_lsn();
        if lsn <= last_record_lsn {
            return Err(PageserverError::Replication(format!(
                "record ending at LSN {lsn} does not advance past LSN {last_record_lsn}"
            )));
        }
        state.store.apply(lsn, &txn);
        state.not_uploaded.push((lsn, txn));
        // Published while the state lock is held, so that LSNs are published in order.
        self.last_record_lsn.send_replace(lsn);
        Ok(())
    }

    /// Waits until WAL up to `lsn` has been applied, at most `timeout`.
    pub async fn wait_lsn(&self, lsn: Lsn, timeout: Duration) -> Result<()> {
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
    pub fn get(&self, table: u32, key: &[u8], lsn: Lsn) -> Result<Option<Bytes>> {
        Ok(self.read_state()?.store.get(table, key, lsn))
    }

    /// One step of a scan, under the read lock for just that step.
    pub fn scan(
        &self,
        table: u32,
        range: (Option<&[u8]>, Option<&[u8]>),
        lsn: Lsn,
        after_key: Option<&[u8]>,
        limits: ScanLimits,
    ) -> Result<ScanPage> {
        Ok(self
            .read_state()?
            .store
            .scan(table, range.0, range.1, lsn, after_key, limits))
    }

    /// Uploads what was ingested since the last checkpoint: delta layers first, then this
    /// generation's index naming them. Returns the new `remote_consistent_lsn`, or `None`
    /// when there was nothing to upload. On failure nothing is forgotten: the next
    /// checkpoint uploads the same transactions again (plus newer ones).
    pub async fn checkpoint(&self) -> Result<Option<Lsn>> {
        let mut uploads = self.uploads.lock().await;
        let transactions = self.read_state()?.not_uploaded.clone();
        let Some((end_lsn, _)) = transactions.last() else {
            return Ok(None);
        };
        let end_lsn = *end_lsn;
        let mut layer_start = self.remote_consistent_lsn();
        assert!(
            transactions[0].0 > layer_start,
            "not-uploaded transactions overlap uploaded ones"
        );
        let mut layers = uploads.layers.clone();
        for chunk in cut_into_layers(&transactions, self.delta_layer_bytes_target) {
            let layer_end = chunk.last().expect("chunks are not empty").0;
            let bytes = layer::encode(layer_start, layer_end, chunk);
            let desc = LayerDesc {
                start_lsn: layer_start.0,
                end_lsn: layer_end.0,
                generation: self.generation,
                size_bytes: bytes.len() as u64,
            };
            let key = remote_layout::layer_key(self.tenant_id, self.timeline_id, &desc);
            self.remote.put(&key, bytes, PutMode::Overwrite).await?;
            layers.push(desc);
            layer_start = layer_end;
        }
        let manifest = Manifest {
            tenant: self.tenant_id.to_string(),
            timeline: self.timeline_id.to_string(),
            generation: self.generation,
            remote_consistent_lsn: end_lsn.0,
            layers,
        };
        let key = remote_layout::index_key(self.tenant_id, self.timeline_id, self.generation);
        self.remote
            .put(&key, manifest.encode(), PutMode::Overwrite)
            .await?;
        uploads.layers = manifest.layers;
        {
            let mut state = self.write_state()?;
            let n_uploaded = state
                .not_uploaded
                .partition_point(|(lsn, _)| *lsn <= end_lsn);
            assert_eq!(n_uploaded, transactions.len());
            state.not_uploaded.drain(..n_uploaded);
        }
        self.remote_consistent_lsn.send_replace(end_lsn);
        tracing::debug!(
            "timeline {}: uploaded up to LSN {end_lsn}",
            self.timeline_id
        );
        Ok(Some(end_lsn))
    }

    #[cfg(test)]
    pub(crate) fn set_delta_layer_bytes_target(&mut self, bytes: usize) {
        self.delta_layer_bytes_target = bytes;
    }
}

fn poisoned() -> PageserverError {
    PageserverError::Internal("timeline state lock poisoned by an earlier panic".into())
}

/// Names the object a corruption was found in.
fn at_key(error: PageserverError, key: &str) -> PageserverError {
    match error {
        PageserverError::Corrupt { what, reason } => {
            PageserverError::corrupt(format!("{what} {key}"), reason)
        }
        other => other,
    }
}

/// Downloads, verifies and applies one layer of the index.
async fn load_layer(
    remote: &RemoteStorage,
    tenant_id: TenantId,
    timeline_id: TimelineId,
    desc: &LayerDesc,
    store: &mut Store,
) -> Result<()> {
    let key = remote_layout::layer_key(tenant_id, timeline_id, desc);
    let bytes = remote.get(&key, LAYER_FILE_BYTES_MAX).await?;
    if bytes.len() as u64 != desc.size_bytes {
        let reason = format!("{} bytes, the index says {}", bytes.len(), desc.size_bytes);
        return Err(PageserverError::corrupt(
            format!("delta layer {key}"),
            reason,
        ));
    }
    let layer = layer::decode(&bytes).map_err(|e| at_key(e, &key))?;
    if (layer.start_lsn.0, layer.end_lsn.0) != (desc.start_lsn, desc.end_lsn) {
        let reason = format!(
            "holds {}..{}, not what its name says",
            layer.start_lsn, layer.end_lsn
        );
        return Err(PageserverError::corrupt(
            format!("delta layer {key}"),
            reason,
        ));
    }
    // The index checked that layers are contiguous and the layer that its LSNs lie in its
    // range, so they are above everything applied so far.
    for (lsn, txn) in &layer.transactions {
        store.apply(*lsn, txn);
    }
    Ok(())
}

/// An estimate of a transaction's size in a layer file.
fn transaction_bytes(txn: &Transaction) -> usize {
    20 + txn
        .ops
        .iter()
        .map(|op| match op {
            Op::Put { key, value, .. } => 13 + key.len() + value.len(),
            Op::Delete { key, .. } => 9 + key.len(),
            Op::DropTable { .. } => 5,
        })
        .sum::<usize>()
}

/// Consecutive runs of transactions of about `bytes_target` each (never empty).
fn cut_into_layers(
    transactions: &[(Lsn, Transaction)],
    bytes_target: usize,
) -> Vec<&[(Lsn, Transaction)]> {
    let mut chunks = Vec::new();
    let mut chunk_start = 0;
    let mut n_bytes = 0;
    for (idx, (_, txn)) in transactions.iter().enumerate() {
        n_bytes += transaction_bytes(txn);
        if n_bytes >= bytes_target {
            chunks.push(&transactions[chunk_start..=idx]);
            chunk_start = idx + 1;
            n_bytes = 0;
        }
    }
    if chunk_start < transactions.len() {
        chunks.push(&transactions[chunk_start..]);
    }
    chunks
}

#[cfg(test)]
#[path = "timeline_tests.rs"]
mod tests;
