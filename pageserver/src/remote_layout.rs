//! Where the pageserver's files live in the object store (the requests themselves go through
//! the shared `remote_storage` crate).
//!
//! Object layout of a timeline (see [`timeline_prefix`]):
//!
//! ```text
//! tenants/<tenant hex>/timelines/<timeline hex>/index-<generation:08x>.json
//! tenants/<tenant hex>/timelines/<timeline hex>/layers/<start:016X>-<end:016X>-<generation:08x>.delta
//! tenants/<tenant hex>/timelines/<timeline hex>/layers/<table:08x>-<lsn:016X>-<generation:08x>.image
//! tenants/<tenant hex>/timelines/<timeline hex>/layers/<table:08x>-<lsn:016X>-<generation:08x>.parquet
//! ```
//!
//! Pure functions: no I/O.

use ids::{TenantId, TimelineId};

use crate::manifest::LayerDesc;

/// `tenants/<tenant>/timelines/<timeline>`
pub fn timeline_prefix(tenant: TenantId, timeline: TimelineId) -> String {
    format!("tenants/{tenant}/timelines/{timeline}")
}

/// The index file of one generation of a timeline.
pub fn index_key(tenant: TenantId, timeline: TimelineId, generation: u32) -> String {
    format!(
        "{}/{}",
        timeline_prefix(tenant, timeline),
        index_file_name(generation)
    )
}

fn index_file_name(generation: u32) -> String {
    format!("index-{generation:08x}.json")
}

/// The generation of an index file name, or `None` if `name` is not one.
pub fn parse_index_file_name(name: &str) -> Option<u32> {
    let hex = name.strip_prefix("index-")?.strip_suffix(".json")?;
    if hex.len() != 8 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let generation = u32::from_str_radix(hex, 16).ok()?;
    // Only the canonical spelling counts, so one generation has one key.
    (index_file_name(generation) == name).then_some(generation)
}

pub fn layer_key(tenant: TenantId, timeline: TimelineId, layer: &LayerDesc) -> String {
    layer_file_key(tenant, timeline, &layer.file_name())
}

/// The key of an image layer's column-page file, if it has one.
pub fn column_key(tenant: TenantId, timeline: TimelineId, layer: &LayerDesc) -> Option<String> {
    Some(layer_file_key(tenant, timeline, &layer.column_file_name()?))
}

fn layer_file_key(tenant: TenantId, timeline: TimelineId, file_name: &str) -> String {
    format!("{}/layers/{file_name}", timeline_prefix(tenant, timeline))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_names() {
        assert_eq!(parse_index_file_name("index-0000000a.json"), Some(10));
        assert_eq!(
            parse_index_file_name(&index_file_name(u32::MAX)),
            Some(u32::MAX)
        );
        for bad in [
            "index-0000000A.json",
            "index-a.json",
            "index-0000000a.json.tmp",
            "x-0000000a.json",
            "index-+000000a.json",
        ] {
            assert_eq!(parse_index_file_name(bad), None, "{bad}");
        }
    }
}
