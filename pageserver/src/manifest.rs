//! The index (manifest) of a timeline in the object store: which layer files are live, up
//! to which LSN the object store holds the timeline, which tables were dropped where, and the
//! timeline's ancestor if it is a branch.
//!
//! One JSON file per generation, `index-<generation:08x>.json`:
//!
//! ```json
//! { "format_version": 2, "crc32c": 1234567,
//!   "manifest": { "tenant": "<hex>", "timeline": "<hex>", "generation": 2,
//!                 "remote_consistent_lsn": 4096,
//!                 "ancestor": { "timeline": "<hex>", "lsn": 1024 },
//!                 "dropped_tables": [ { "table": 17, "lsn": 2048 } ],
//!                 "layers": [
//!                   { "kind": "delta", "start_lsn": 1024, "end_lsn": 4096,
//!                     "generation": 1, "size_bytes": 812, "tables": [1, 16] },
//!                   { "kind": "image", "table": 16, "lsn": 4096, "generation": 2,
//!                     "size_bytes": 9000, "column_bytes": 7000 } ] } }
//! ```
//!
//! `crc32c` is CRC32C over the compact JSON encoding of `manifest`, so a changed value (not
//! only a broken syntax) is caught. Validation also checks that the delta layers are
//! contiguous from the timeline's start (0, or the ancestor's LSN for a branch) to
//! `remote_consistent_lsn`, that images lie inside that range, and that every layer belongs
//! to this or an older generation. A layer is named by what it holds and the generation that
//! wrote it, so no two pageservers ever write the same layer key. Format version 1 (whole
//! transactions per delta layer, no images) is refused with a clear error. Pure encoding and
//! decoding: no I/O.

use bytes::Bytes;
use ids::{Lsn, TenantId, TimelineId};
use serde::{Deserialize, Serialize};

use crate::error::{PageserverError, Result};

pub const MANIFEST_FORMAT_VERSION: u32 = 2;

/// One live layer file (an image layer is two files: row pages and column pages).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LayerDesc {
    /// Every change with commit LSN in `(start_lsn, end_lsn]`, sorted by (key, LSN)
    /// (`delta_layer`).
    Delta {
        start_lsn: u64,
        end_lsn: u64,
        /// The generation of the pageserver that wrote it (part of its name).
        generation: u32,
        size_bytes: u64,
        /// The tables it has changes (or a drop) of, ascending.
        tables: Vec<u32>,
    },
    /// Every row of `table` as of `lsn` (`image_layer`), plus, for user tables, the same rows
    /// as Parquet column pages (`column_pages`) of `column_bytes` bytes.
    Image {
        table: u32,
        lsn: u64,
        generation: u32,
        size_bytes: u64,
        column_bytes: Option<u64>,
    },
}

impl LayerDesc {
    /// `<start:016X>-<end:016X>-<generation:08x>.delta` or
    /// `<table:08x>-<lsn:016X>-<generation:08x>.image` (its column pages: `.parquet`).
    pub fn file_name(&self) -> String {
        match self {
            LayerDesc::Delta {
                start_lsn,
                end_lsn,
                generation,
                ..
            } => format!("{start_lsn:016X}-{end_lsn:016X}-{generation:08x}.delta"),
            LayerDesc::Image {
                table,
                lsn,
                generation,
                ..
            } => format!("{table:08x}-{lsn:016X}-{generation:08x}.image"),
        }
    }

    /// The name of an image layer's column-page file, if it has one.
    pub fn column_file_name(&self) -> Option<String> {
        match self {
            LayerDesc::Image {
                table,
                lsn,
                generation,
                column_bytes: Some(_),
                ..
            } => Some(format!("{table:08x}-{lsn:016X}-{generation:08x}.parquet")),
            _ => None,
        }
    }

    pub fn generation(&self) -> u32 {
        match self {
            LayerDesc::Delta { generation, .. } | LayerDesc::Image { generation, .. } => {
                *generation
            }
        }
    }

    pub fn size_bytes(&self) -> u64 {
        match self {
            LayerDesc::Delta { size_bytes, .. } | LayerDesc::Image { size_bytes, .. } => {
                *size_bytes
            }
        }
    }
}

/// The timeline this one branched from, and the LSN it branched at: reads at or below it
/// that this timeline's own layers do not answer go to the ancestor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ancestor {
    pub timeline: String,
    pub lsn: u64,
}

/// A `DROP TABLE`: no row of `table` is visible at or after `lsn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DroppedTable {
    pub table: u32,
    pub lsn: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub tenant: String,
    pub timeline: String,
    /// The generation whose index file this is.
    pub generation: u32,
    /// Every transaction with commit LSN at or below this is in the listed layers.
    pub remote_consistent_lsn: u64,
    pub ancestor: Option<Ancestor>,
    pub dropped_tables: Vec<DroppedTable>,
    /// Delta layers in LSN order, contiguous from the timeline's start to
    /// `remote_consistent_lsn` except for gaps that garbage collection left below
    /// `gc_cutoff_lsn`; image layers in any order.
    pub layers: Vec<LayerDesc>,
    /// Reads are exact at every LSN from here up (and at `gc_retained_lsns`); garbage
    /// collection removed layers only readers below it needed. 0: nothing collected.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gc_cutoff_lsn: u64,
    /// LSNs below `gc_cutoff_lsn` whose state garbage collection kept, ascending: the branch
    /// points of this timeline's branches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gc_retained_lsns: Vec<u64>,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestFile {
    format_version: u32,
    crc32c: u32,
    manifest: Manifest,
}

/// Read first, alone, so that a newer format is reported as such rather than as garbage.
#[derive(Deserialize)]
struct FormatProbe {
    format_version: u32,
}

impl Manifest {
    /// The manifest of a timeline with nothing uploaded yet.
    pub fn empty(tenant: TenantId, timeline: TimelineId, generation: u32) -> Manifest {
        Manifest {
            tenant: tenant.to_string(),
            timeline: timeline.to_string(),
            generation,
            remote_consistent_lsn: 0,
            ancestor: None,
            dropped_tables: Vec::new(),
            layers: Vec::new(),
            gc_cutoff_lsn: 0,
            gc_retained_lsns: Vec::new(),
        }
    }

    /// Whether reads at `lsn` are still exact: at or above the GC cutoff, or at a retained
    /// branch point.
    pub fn is_retained(&self, lsn: Lsn) -> bool {
        lsn.0 >= self.gc_cutoff_lsn || self.gc_retained_lsns.binary_search(&lsn.0).is_ok()
    }

    /// The LSN this timeline's own WAL starts at: 0, or the branch point.
    pub fn start_lsn(&self) -> Lsn {
        Lsn(self.ancestor.as_ref().map_or(0, |ancestor| ancestor.lsn))
    }

    pub fn remote_consistent_lsn(&self) -> Lsn {
        Lsn(self.remote_consistent_lsn)
    }

    /// Checks the internal consistency of the manifest; returns what is wrong.
    fn check(&self, tenant: TenantId, timeline: TimelineId) -> std::result::Result<(), String> {
        if self.tenant != tenant.to_string() || self.timeline != timeline.to_string() {
            return Err(format!(
                "belongs to tenant {} timeline {}, not {tenant} {timeline}",
                self.tenant, self.timeline
            ));
        }
        if let Some(ancestor) = &self.ancestor {
            if ancestor.timeline == self.timeline {
                return Err("is its own ancestor".into());
            }
        }
        let start = self.start_lsn().0;
        let mut expected_start = start;
        for layer in &self.layers {
            if layer.generation() > self.generation {
                return Err(format!(
                    "layer {} is from a later generation",
                    layer.file_name()
                ));
            }
            match layer {
                LayerDesc::Delta {
                    start_lsn,
                    end_lsn,
                    tables,
                    ..
                } => {
                    if tables.windows(2).any(|pair| pair[0] >= pair[1]) {
                        return Err(format!("layer {}: tables not ascending", layer.file_name()));
                    }
                    // Garbage collection may leave gaps, but only below its cutoff.
                    let gap_allowed =
                        *start_lsn > expected_start && *start_lsn <= self.gc_cutoff_lsn;
                    if (*start_lsn != expected_start && !gap_allowed) || end_lsn <= start_lsn {
                        return Err(format!(
                            "layer {} does not continue at LSN {}",
                            layer.file_name(),
                            Lsn(expected_start)
                        ));
                    }
                    expected_start = *end_lsn;
                }
                LayerDesc::Image { lsn, .. } => {
                    if *lsn < start || *lsn > self.remote_consistent_lsn {
                        return Err(format!(
                            "image layer {} lies outside LSN {}..={}",
                            layer.file_name(),
                            Lsn(start),
                            Lsn(self.remote_consistent_lsn)
                        ));
                    }
                }
            }
        }
        let collected_to_end = self.remote_consistent_lsn <= self.gc_cutoff_lsn;
        if expected_start != self.remote_consistent_lsn
            && !(expected_start < self.remote_consistent_lsn && collected_to_end)
        {
            return Err(format!(
                "layers end at LSN {} but remote_consistent_lsn is {}",
                Lsn(expected_start),
                Lsn(self.remote_consistent_lsn)
            ));
        }
        if self.gc_cutoff_lsn > self.remote_consistent_lsn {
            return Err(format!(
                "GC cutoff {} lies above remote_consistent_lsn {}",
                Lsn(self.gc_cutoff_lsn),
                Lsn(self.remote_consistent_lsn)
            ));
        }
        let retained = &self.gc_retained_lsns;
        if retained.windows(2).any(|pair| pair[0] >= pair[1])
            || retained
                .last()
                .is_some_and(|last| *last >= self.gc_cutoff_lsn)
        {
            return Err("GC-retained LSNs are not ascending below the GC cutoff".into());
        }
        let mut names: Vec<String> = self.layers.iter().map(LayerDesc::file_name).collect();
        names.sort();
        if names.windows(2).any(|pair| pair[0] == pair[1]) {
            return Err("names a layer twice".into());
        }
        // A branch inherits its ancestor's drops at or below the branch LSN.
        if let Some(dropped) = self
            .dropped_tables
            .iter()
            .find(|d| d.lsn == 0 || d.lsn > self.remote_consistent_lsn)
        {
            return Err(format!(
                "table {} dropped at LSN {}, outside the timeline",
                dropped.table,
                Lsn(dropped.lsn)
            ));
        }
        Ok(())
    }

    /// Pretty JSON, for people who open the object store.
    pub fn encode(&self) -> Bytes {
        let content = serde_json::to_vec(self).expect("a manifest always serializes");
        let file = ManifestFile {
            format_version: MANIFEST_FORMAT_VERSION,
            crc32c: crc32c::crc32c(&content),
            manifest: self.clone(),
        };
        Bytes::from(serde_json::to_vec_pretty(&file).expect("a manifest always serializes"))
    }

    /// Decodes and validates the index of `tenant`/`timeline`.
    pub fn decode(bytes: &[u8], tenant: TenantId, timeline: TimelineId) -> Result<Manifest> {
        let corrupt = |reason: String| PageserverError::corrupt("timeline index", reason);
        let probe: FormatProbe = serde_json::from_slice(bytes)
            .map_err(|e| corrupt(format!("not an index file: {e}")))?;
        if probe.format_version != MANIFEST_FORMAT_VERSION {
            return Err(corrupt(format!(
                "unsupported format version {} (this build reads {MANIFEST_FORMAT_VERSION})",
                probe.format_version
            )));
        }
        let file: ManifestFile =
            serde_json::from_slice(bytes).map_err(|e| corrupt(format!("bad content: {e}")))?;
        let content = serde_json::to_vec(&file.manifest).expect("a manifest always serializes");
        let actual = crc32c::crc32c(&content);
        if actual != file.crc32c {
            return Err(corrupt(format!(
                "checksum mismatch (stored {:08x}, computed {actual:08x})",
                file.crc32c
            )));
        }
        file.manifest.check(tenant, timeline).map_err(corrupt)?;
        Ok(file.manifest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            tenant: TenantId::from_u128(1).to_string(),
            timeline: TimelineId::from_u128(2).to_string(),
            generation: 3,
            remote_consistent_lsn: 900,
            ancestor: Some(Ancestor {
                timeline: TimelineId::from_u128(9).to_string(),
                lsn: 40,
            }),
            dropped_tables: vec![DroppedTable {
                table: 17,
                lsn: 300,
            }],
            layers: vec![
                LayerDesc::Delta {
                    start_lsn: 40,
                    end_lsn: 120,
                    generation: 1,
                    size_bytes: 77,
                    tables: vec![1, 16],
                },
                LayerDesc::Image {
                    table: 16,
                    lsn: 120,
                    generation: 2,
                    size_bytes: 500,
                    column_bytes: Some(300),
                },
                LayerDesc::Delta {
                    start_lsn: 120,
                    end_lsn: 900,
                    generation: 3,
                    size_bytes: 1234,
                    tables: vec![],
                },
            ],
            gc_cutoff_lsn: 0,
            gc_retained_lsns: Vec::new(),
        }
    }

    #[test]
    fn round_trip_and_layer_names() {
        let manifest = sample();
        let bytes = manifest.encode();
        let decoded =
            Manifest::decode(&bytes, TenantId::from_u128(1), TimelineId::from_u128(2)).unwrap();
        assert_eq!(decoded, manifest);
        assert_eq!(
            manifest.layers[2].file_name(),
            "0000000000000078-0000000000000384-00000003.delta"
        );
        assert_eq!(
            manifest.layers[1].file_name(),
            "00000010-0000000000000078-00000002.image"
        );
        assert_eq!(
            manifest.layers[1].column_file_name().unwrap(),
            "00000010-0000000000000078-00000002.parquet"
        );
        assert_eq!(manifest.layers[0].column_file_name(), None);
        let wrong = Manifest::decode(&bytes, TenantId::from_u128(1), TimelineId::from_u128(5));
        assert!(wrong.unwrap_err().to_string().contains("belongs to"));
    }

    #[test]
    fn corruption_at_every_byte_is_detected() {
        let bytes = sample().encode();
        let (tenant, timeline) = (TenantId::from_u128(1), TimelineId::from_u128(2));
        for idx in 0..bytes.len() {
            let mut bad = bytes.to_vec();
            bad[idx] ^= 0x01;
            let result = Manifest::decode(&bad, tenant, timeline);
            assert!(
                result.is_err(),
                "flip at byte {idx} ({:?}) not caught",
                bytes[idx] as char
            );
        }
        for cut in 0..bytes.len() {
            assert!(Manifest::decode(&bytes[..cut], tenant, timeline).is_err());
        }
    }

    #[test]
    fn inconsistent_manifests_are_rejected() {
        let (tenant, timeline) = (TenantId::from_u128(1), TimelineId::from_u128(2));
        let mut gap = sample();
        gap.layers[2] = LayerDesc::Delta {
            start_lsn: 130,
            end_lsn: 900,
            generation: 3,
            size_bytes: 1,
            tables: vec![],
        };
        let mut short = sample();
        short.remote_consistent_lsn = 1000;
        let mut future = sample();
        future.layers[0] = LayerDesc::Delta {
            start_lsn: 40,
            end_lsn: 120,
            generation: 4,
            size_bytes: 77,
            tables: vec![],
        };
        let mut unsorted_tables = sample();
        unsorted_tables.layers[0] = LayerDesc::Delta {
            start_lsn: 40,
            end_lsn: 120,
            generation: 1,
            size_bytes: 77,
            tables: vec![16, 1],
        };
        let mut before_branch = sample();
        before_branch.ancestor.as_mut().unwrap().lsn = 0;
        let mut late_image = sample();
        late_image.layers.push(LayerDesc::Image {
            table: 16,
            lsn: 901,
            generation: 3,
            size_bytes: 1,
            column_bytes: None,
        });
        let mut twice = sample();
        twice.layers.push(twice.layers[1].clone());
        let mut late_drop = sample();
        late_drop.dropped_tables[0].lsn = 901;
        let mut own_ancestor = sample();
        own_ancestor.ancestor.as_mut().unwrap().timeline = own_ancestor.timeline.clone();
        // Gaps that garbage collection leaves are allowed below its cutoff only.
        let mut gap_above_cutoff = gap.clone();
        gap_above_cutoff.gc_cutoff_lsn = 129;
        let mut cutoff_above_end = sample();
        cutoff_above_end.gc_cutoff_lsn = 901;
        let mut retained_above_cutoff = sample();
        retained_above_cutoff.gc_cutoff_lsn = 100;
        retained_above_cutoff.gc_retained_lsns = vec![50, 100];
        let mut retained_unsorted = sample();
        retained_unsorted.gc_cutoff_lsn = 100;
        retained_unsorted.gc_retained_lsns = vec![60, 50];
        for manifest in [
            gap,
            short,
            future,
            before_branch,
            late_image,
            twice,
            late_drop,
            own_ancestor,
            unsorted_tables,
            gap_above_cutoff,
            cutoff_above_end,
            retained_above_cutoff,
            retained_unsorted,
        ] {
            let err = Manifest::decode(&manifest.encode(), tenant, timeline).unwrap_err();
            assert!(matches!(err, PageserverError::Corrupt { .. }), "{err}");
        }
        let mut newer = serde_json::to_value(ManifestFile {
            format_version: MANIFEST_FORMAT_VERSION,
            crc32c: 0,
            manifest: sample(),
        })
        .unwrap();
        for version in [1, 3] {
            newer["format_version"] = version.into();
            let err = Manifest::decode(&serde_json::to_vec(&newer).unwrap(), tenant, timeline)
                .unwrap_err();
            assert!(
                err.to_string()
                    .contains(&format!("unsupported format version {version}")),
                "{err}"
            );
        }
    }

    #[test]
    fn collected_manifests_keep_their_cutoff_and_old_ones_still_decode() {
        let (tenant, timeline) = (TenantId::from_u128(1), TimelineId::from_u128(2));
        // Nothing collected: the file is what versions without garbage collection wrote
        // (same fields, so the same checksum).
        let plain = sample().encode();
        assert!(!String::from_utf8_lossy(&plain).contains("gc_"));
        // The first delta and the image collected: a gap from the start up to the cutoff.
        let mut collected = sample();
        collected.layers.drain(..2);
        collected.gc_cutoff_lsn = 120;
        collected.gc_retained_lsns = vec![60];
        let decoded = Manifest::decode(&collected.encode(), tenant, timeline).unwrap();
        assert_eq!(decoded, collected);
        assert!(decoded.is_retained(Lsn(120)) && decoded.is_retained(Lsn(900)));
        assert!(decoded.is_retained(Lsn(60)));
        assert!(!decoded.is_retained(Lsn(59)) && !decoded.is_retained(Lsn(119)));
        // Every delta collected: allowed only when the cutoff reaches the end.
        let mut empty = sample();
        empty.layers.clear();
        empty.gc_cutoff_lsn = 900;
        Manifest::decode(&empty.encode(), tenant, timeline).unwrap();
        empty.gc_cutoff_lsn = 899;
        Manifest::decode(&empty.encode(), tenant, timeline).unwrap_err();
    }
}
