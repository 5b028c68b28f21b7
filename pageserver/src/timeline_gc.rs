//! Garbage collection of one timeline's files: the layers no read the timeline still serves
//! needs, older generations' index files, and layer files no index names (left by failed
//! uploads or by a pageserver of an older generation).
//!
//! ```text
//!   kept reads: every LSN >= cutoff, and each retained LSN (its branches' branch points)
//!   needed:     layers a read at the cutoff or at a retained LSN opens (the read plans
//!               themselves), plus every layer above the cutoff
//!   1. cutoff raised in memory: reads below it are refused from now on
//!   2. this generation's index rewritten without the others (conditional write)
//!   3. list the timeline: a newer generation's index? stop, delete nothing
//!   4. delete older generations' index files, then the layer files of this or older
//!      generations that the index no longer names
//! ```
//!
//! Why nothing needed is ever deleted:
//! - A read at LSN X >= cutoff opens the newest image at or below X (kept: it is above the
//!   cutoff, or it is the newest at or below the cutoff) and deltas that end above that
//!   image (kept: they end above the cutoff, or a read at the cutoff opens them too).
//! - A branch reads its ancestor at its branch point, which is retained.
//! - Index files go before layer files, so no index ever names a deleted file; a crash in
//!   between leaves only garbage, which the next run deletes.
//! - A newer generation reads the older generation's index again after claiming its own
//!   (`adopt_predecessor`), and this run checks for newer generations after writing its
//!   index: either the newer one starts from the index without the garbage, or this run
//!   sees it and deletes nothing.
//! - The `uploads` lock is held throughout: no upload of this generation is under way, so a
//!   layer file of this generation that the index does not name is left from a failed one.

use std::collections::BTreeSet;

use ids::Lsn;

use super::Timeline;
use crate::error::Result;
use crate::layers::LayerSet;
use crate::manifest::{LayerDesc, Manifest};
use crate::remote_layout;

/// What one garbage collection did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcOutcome {
    /// Reads are kept from here on.
    pub cutoff: Lsn,
    /// And at these LSNs below the cutoff.
    pub retained: Vec<Lsn>,
    /// Layers the index no longer names.
    pub layers_removed: usize,
    /// Their size in bytes (row pages and column pages).
    pub bytes_removed: u64,
    /// Objects deleted: index files of older generations, layer files.
    pub objects_deleted: usize,
    /// Why nothing was deleted, if a newer generation serves the timeline.
    pub newer_generation: Option<u32>,
}

impl Timeline {
    /// Keeps reads at every LSN from `cutoff` on (capped at what the object store holds; never
    /// lowered) and at each of `retained` below it that is still kept, and deletes what no
    /// such read needs. `retained` are the branch points of this timeline's branches: every
    /// one must be passed, every time.
    pub async fn gc(&self, cutoff: Lsn, retained: &[Lsn]) -> Result<GcOutcome> {
        let mut uploads = self.uploads.lock().await;
        let old = uploads.manifest.clone();
        let cutoff = cutoff
            .min(old.remote_consistent_lsn())
            .max(Lsn(old.gc_cutoff_lsn));
        let retained: Vec<Lsn> = retained
            .iter()
            .copied()
            .filter(|lsn| *lsn < cutoff && old.is_retained(*lsn))
            .collect::<BTreeSet<Lsn>>()
            .into_iter()
            .collect();
        {
            let mut state = self.write_state()?;
            state.gc_cutoff = cutoff;
            state.gc_retained = retained.clone();
        }

        let needed = needed_layers(&old, cutoff, &retained);
        let (kept, removed): (Vec<LayerDesc>, Vec<LayerDesc>) = old
            .layers
            .iter()
            .cloned()
            .partition(|desc| needed.contains(&desc.file_name()));
        let manifest = Manifest {
            layers: kept,
            gc_cutoff_lsn: cutoff.0,
            gc_retained_lsns: retained.iter().map(|lsn| lsn.0).collect(),
            ..old.clone()
        };
        if manifest != old {
            self.write_manifest(&mut uploads, manifest.clone()).await?;
            let removed_names: Vec<String> = removed.iter().map(LayerDesc::file_name).collect();
            let mut state = self.write_state()?;
            state.layers = std::sync::Arc::new(state.layers.with(&[], &removed_names));
        }
        let mut outcome = GcOutcome {
            cutoff,
            retained,
            layers_removed: removed.len(),
            bytes_removed: removed
                .iter()
                .map(|desc| match desc {
                    LayerDesc::Image {
                        size_bytes,
                        column_bytes,
                        ..
                    } => size_bytes + column_bytes.unwrap_or(0),
                    LayerDesc::Delta { size_bytes, .. } => *size_bytes,
                })
                .sum(),
            ..GcOutcome::default()
        };

        // Delete only while no newer generation has claimed the timeline.
        let remote = &self.storage.remote;
        let (tenant, timeline) = (self.tenant_id, self.timeline_id);
        let generations = super::index_generations(remote, tenant, timeline).await?;
        if let Some(newer) = generations.iter().find(|g| **g > self.generation) {
            tracing::warn!(
                "timeline {timeline}: generation {newer} serves it now; generation {} deletes nothing",
                self.generation
            );
            outcome.newer_generation = Some(*newer);
            return Ok(outcome);
        }
        for generation in generations.iter().filter(|g| **g < self.generation) {
            remote
                .delete(&remote_layout::index_key(tenant, timeline, *generation))
                .await?;
            outcome.objects_deleted += 1;
        }
        let named: BTreeSet<String> = manifest
            .layers
            .iter()
            .flat_map(|desc| [Some(desc.file_name()), desc.column_file_name()])
            .flatten()
            .collect();
        let prefix = remote_layout::layers_prefix(tenant, timeline);
        for object in remote.list(&prefix).await? {
            let Some(name) = object.key.strip_prefix(prefix.as_str()) else {
                continue;
            };
            let garbage = remote_layout::parse_layer_file_name(name)
                .is_some_and(|generation| generation <= self.generation)
                && !named.contains(name);
            if garbage {
                remote.delete(&object.key).await?;
                outcome.objects_deleted += 1;
            }
        }
        let message = format!(
            "timeline {timeline}: GC kept LSN {cutoff} on (and {:?}), removed {} layers ({} bytes), deleted {} objects",
            outcome.retained,
            outcome.layers_removed,
            outcome.bytes_removed,
            outcome.objects_deleted
        );
        if outcome.objects_deleted > 0 || outcome.layers_removed > 0 {
            tracing::info!("{message}");
        } else {
            tracing::debug!("{message}");
        }
        Ok(outcome)
    }

    /// The LSN from which reads are kept, and the kept LSNs below it.
    pub fn gc_cutoff(&self) -> Result<(Lsn, Vec<Lsn>)> {
        let state = self.read_state()?;
        Ok((state.gc_cutoff, state.gc_retained.clone()))
    }
}

/// The file names of the layers of `manifest` that reads at `cutoff` and above, and at each
/// of `retained`, may open.
pub fn needed_layers(manifest: &Manifest, cutoff: Lsn, retained: &[Lsn]) -> BTreeSet<String> {
    let layers = LayerSet::new(&manifest.layers);
    let mut needed: BTreeSet<String> = manifest
        .layers
        .iter()
        .filter(|desc| match desc {
            LayerDesc::Delta { end_lsn, .. } => Lsn(*end_lsn) > cutoff,
            LayerDesc::Image { lsn, .. } => Lsn(*lsn) > cutoff,
        })
        .map(LayerDesc::file_name)
        .collect();
    for lsn in retained.iter().copied().chain([cutoff]) {
        // A table dropped at or below the read LSN is read without opening any layer.
        let dropped: BTreeSet<u32> = manifest
            .dropped_tables
            .iter()
            .filter(|d| Lsn(d.lsn) <= lsn)
            .map(|d| d.table)
            .collect();
        needed.extend(layers.needed_at(lsn, &dropped));
    }
    needed
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use ids::{Lsn, TenantId, TimelineId};
    use remote_storage::RemoteStorage;
    use wal::{Op, Transaction};

    use crate::remote_layout;
    use crate::test_util::temp_dir;
    use crate::timeline::tests::empty_cache;
    use crate::timeline::{read_index, Timeline};

    const TENANT: TenantId = TenantId([3; 16]);
    const TIMELINE: TimelineId = TimelineId([4; 16]);

    fn put(value: &str) -> Transaction {
        Transaction {
            xid: 1,
            commit_time_us: 0,
            ops: vec![Op::Put {
                table: 16,
                key: Bytes::from_static(b"k"),
                value: Bytes::copy_from_slice(value.as_bytes()),
            }],
        }
    }

    /// A pageserver that read the index before an older generation collected, and claimed
    /// its generation after that one checked for newer ones, starts from the collected
    /// index, not from the one it first read: it never names a deleted file.
    #[tokio::test]
    async fn a_new_generation_starts_from_the_index_an_older_one_collected() {
        let root = temp_dir("gc-adopt");
        let remote = RemoteStorage::local(&root).unwrap();
        let old = Timeline::load(remote.clone(), empty_cache().await, TENANT, TIMELINE)
            .await
            .unwrap();
        old.set_compaction_delta_layers_min(1);
        for (i, lsn) in [10, 20, 30].into_iter().enumerate() {
            old.ingest(Lsn(lsn), put(&format!("v{i}"))).unwrap();
            old.checkpoint().await.unwrap();
            old.compact().await.unwrap();
        }
        // The new pageserver reads the index first...
        let read_before = read_index(&remote, TENANT, TIMELINE)
            .await
            .unwrap()
            .unwrap();
        // ...the old one collects everything below LSN 30 meanwhile...
        let outcome = old.gc(Lsn(30), &[]).await.unwrap();
        assert!(
            outcome.layers_removed > 0 && outcome.objects_deleted > 0,
            "{outcome:?}"
        );
        assert_eq!(outcome.newer_generation, None);
        // ...and the new one claims its generation afterwards.
        let new = Timeline::open(
            remote.clone(),
            empty_cache().await,
            TENANT,
            TIMELINE,
            Some(read_before.clone()),
            None,
        )
        .await
        .unwrap();
        let adopted = new.manifest().await;
        assert_eq!(adopted.layers, old.manifest().await.layers);
        assert_eq!(adopted.gc_cutoff_lsn, 30);
        assert!(adopted.layers.len() < read_before.layers.len());
        for desc in &adopted.layers {
            let key = remote_layout::layer_key(TENANT, TIMELINE, desc);
            assert!(root.join(&key).exists(), "{key} is gone");
        }
        assert_eq!(
            new.get(16, b"k", Lsn(30)).await.unwrap().as_deref(),
            Some(&b"v2"[..])
        );
        let err = new.get(16, b"k", Lsn(20)).await.unwrap_err();
        assert!(err.to_string().contains("no longer kept"), "{err}");
        // The old generation, now stale, deletes nothing more.
        old.ingest(Lsn(40), put("v3")).unwrap();
        old.checkpoint().await.unwrap();
        let stale = old.gc(Lsn(40), &[]).await.unwrap();
        assert_eq!(stale.newer_generation, Some(2));
        assert_eq!(stale.objects_deleted, 0);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
