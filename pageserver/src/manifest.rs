//! The index (manifest) of a timeline in the object store: which layer files are live and up
//! to which LSN the object store holds the timeline.
//!
//! One JSON file per generation, `index-<generation:08x>.json`:
//!
//! ```json
//! { "format_version": 1, "crc32c": 1234567,
//!   "manifest": { "tenant": "<hex>", "timeline": "<hex>", "generation": 2,
//!                 "remote_consistent_lsn": 4096,
//!                 "layers": [ { "start_lsn": 0, "end_lsn": 4096, "generation": 1,
//!                               "size_bytes": 812 } ] } }
//! ```
//!
//! `crc32c` is CRC32C over the compact JSON encoding of `manifest`, so a changed value (not
//! only a broken syntax) is caught. Validation also checks that the layers are contiguous
//! from LSN 0 to `remote_consistent_lsn` and belong to this or an older generation. A layer
//! is named by its range and the generation that wrote it, so no two pageservers ever write
//! the same layer key. Pure encoding and decoding: no I/O.

use bytes::Bytes;
use ids::{Lsn, TenantId, TimelineId};
use serde::{Deserialize, Serialize};

use crate::error::{PageserverError, Result};

pub const MANIFEST_FORMAT_VERSION: u32 = 1;

/// One live layer file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerDesc {
    pub start_lsn: u64,
    pub end_lsn: u64,
    /// The generation of the pageserver that wrote it (part of its name).
    pub generation: u32,
    pub size_bytes: u64,
}

impl LayerDesc {
    /// `<start:016X>-<end:016X>-<generation:08x>.delta`
    pub fn file_name(&self) -> String {
        format!(
            "{:016X}-{:016X}-{:08x}.delta",
            self.start_lsn, self.end_lsn, self.generation
        )
    }
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
    /// In LSN order, contiguous from 0 to `remote_consistent_lsn`.
    pub layers: Vec<LayerDesc>,
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
            layers: Vec::new(),
        }
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
        let mut expected_start = 0u64;
        for layer in &self.layers {
            if layer.start_lsn != expected_start || layer.end_lsn <= layer.start_lsn {
                return Err(format!(
                    "layer {} does not continue at LSN {}",
                    layer.file_name(),
                    Lsn(expected_start)
                ));
            }
            if layer.generation > self.generation {
                return Err(format!(
                    "layer {} is from a later generation",
                    layer.file_name()
                ));
            }
            expected_start = layer.end_lsn;
        }
        if expected_start != self.remote_consistent_lsn {
            return Err(format!(
                "layers end at LSN {} but remote_consistent_lsn is {}",
                Lsn(expected_start),
                Lsn(self.remote_consistent_lsn)
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
            layers: vec![
                LayerDesc {
                    start_lsn: 0,
                    end_lsn: 120,
                    generation: 1,
                    size_bytes: 77,
                },
                LayerDesc {
                    start_lsn: 120,
                    end_lsn: 900,
                    generation: 3,
                    size_bytes: 1234,
                },
            ],
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
            manifest.layers[1].file_name(),
            "0000000000000078-0000000000000384-00000003.delta"
        );
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
        gap.layers[1].start_lsn = 130;
        let mut short = sample();
        short.remote_consistent_lsn = 1000;
        let mut future = sample();
        future.layers[0].generation = 4;
        for manifest in [gap, short, future] {
            let err = Manifest::decode(&manifest.encode(), tenant, timeline).unwrap_err();
            assert!(matches!(err, PageserverError::Corrupt { .. }), "{err}");
        }
        let mut newer = serde_json::to_value(ManifestFile {
            format_version: 1,
            crc32c: 0,
            manifest: sample(),
        })
        .unwrap();
        newer["format_version"] = 2.into();
        let err =
            Manifest::decode(&serde_json::to_vec(&newer).unwrap(), tenant, timeline).unwrap_err();
        assert!(
            err.to_string().contains("unsupported format version 2"),
            "{err}"
        );
    }
}
