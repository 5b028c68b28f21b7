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

/// The generation that wrote a layer file (`.delta`, `.image` or `.parquet`), from its name;
/// `None` if `name` is not a layer file's.
pub fn parse_layer_file_name(name: &str) -> Option<u32> {
    let stem = [".delta", ".image", ".parquet"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))?;
    let mut parts = stem.split('-');
    let (first, second, generation) = (parts.next()?, parts.next()?, parts.next()?);
    let hex_of =
        |part: &str, len: usize| part.len() == len && part.bytes().all(|b| b.is_ascii_hexdigit());
    let first_len = if name.ends_with(".delta") { 16 } else { 8 };
    if parts.next().is_some()
        || !hex_of(first, first_len)
        || !hex_of(second, 16)
        || !hex_of(generation, 8)
    {
        return None;
    }
    u32::from_str_radix(generation, 16).ok()
}

/// The `layers/` folder of a timeline, with its trailing slash.
pub fn layers_prefix(tenant: TenantId, timeline: TimelineId) -> String {
    format!("{}/layers/", timeline_prefix(tenant, timeline))
}

pub fn layer_key(tenant: TenantId, timeline: TimelineId, layer: &LayerDesc) -> String {
    layer_file_key(tenant, timeline, &layer.file_name())
}

/// The key of an image layer's column-page file, if it has one.
pub fn column_key(tenant: TenantId, timeline: TimelineId, layer: &LayerDesc) -> Option<String> {
    Some(layer_file_key(tenant, timeline, &layer.column_file_name()?))
}

fn layer_file_key(tenant: TenantId, timeline: TimelineId, file_name: &str) -> String {
    format!("{}{file_name}", layers_prefix(tenant, timeline))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_names() {
        use crate::manifest::LayerDesc;
        let delta = LayerDesc::Delta {
            start_lsn: 7,
            end_lsn: 90,
            generation: 0x1b,
            size_bytes: 1,
            tables: vec![],
        };
        let image = LayerDesc::Image {
            table: 16,
            lsn: 90,
            generation: 3,
            size_bytes: 1,
            column_bytes: Some(1),
        };
        assert_eq!(parse_layer_file_name(&delta.file_name()), Some(0x1b));
        assert_eq!(parse_layer_file_name(&image.file_name()), Some(3));
        let columns = image.column_file_name().unwrap();
        assert_eq!(parse_layer_file_name(&columns), Some(3));
        for bad in [
            "index-0000000a.json",
            "0000000000000007-000000000000005A-0000001b.image",
            "00000010-000000000000005A-00000003.delta",
            "00000010-000000000000005A-00000003-1.image",
            "00000010-000000000000005A-0003.image",
            "00000010-000000000000005A-00000003.image.tmp",
        ] {
            assert_eq!(parse_layer_file_name(bad), None, "{bad}");
        }
    }

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
