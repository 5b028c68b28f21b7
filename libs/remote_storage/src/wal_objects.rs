//! Offloaded WAL in the object store: the safekeepers write it, and anyone who needs WAL that
//! a safekeeper no longer keeps locally (a pageserver far behind, a safekeeper catching up)
//! reads it back.
//!
//! ```text
//! wal/<timeline hex>/<start:016X>-<end:016X>   whole WAL records [start, end)
//! wal/<timeline hex>/uploader/<slot:016X>      who may upload during one lease slot
//! ```
//!
//! A chunk holds the records that start inside one WAL segment window (see the safekeeper's
//! `wal_backup`), so every safekeeper cuts the same committed WAL into the same chunks and
//! an upload is create-only: a chunk, once there, never changes. Chunks are contiguous: each
//! one starts where the previous one ends. The bytes are records exactly as the WAL holds
//! them, each with its own CRC32C: readers verify them as they would WAL from a safekeeper.

use bytes::Bytes;
use ids::{Lsn, TimelineId};

use crate::{RemoteStorage, RemoteStorageError, Result};

/// `wal/<timeline>`: everything offloaded for one timeline.
pub fn wal_prefix(timeline: TimelineId) -> String {
    format!("wal/{timeline}")
}

/// The chunk of records `[start, end)`.
pub fn chunk_key(timeline: TimelineId, start: Lsn, end: Lsn) -> String {
    format!("{}/{}", wal_prefix(timeline), chunk_name(start, end))
}

fn chunk_name(start: Lsn, end: Lsn) -> String {
    format!("{:016X}-{:016X}", start.0, end.0)
}

/// The range a chunk's name stands for, if `name` is the canonical name of a non-empty chunk.
pub fn parse_chunk_name(name: &str) -> Option<(Lsn, Lsn)> {
    let (start, end) = name.split_once('-')?;
    let hex = |s: &str| {
        (s.len() == 16
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)))
        .then(|| u64::from_str_radix(s, 16).ok())
        .flatten()
    };
    let (start, end) = (Lsn(hex(start)?), Lsn(hex(end)?));
    (start < end).then_some((start, end))
}

/// The lease object of one uploader slot.
pub fn lease_key(timeline: TimelineId, slot: u64) -> String {
    format!("{}/uploader/{slot:016X}", wal_prefix(timeline))
}

/// The lease slot a lease key's last component stands for.
pub fn parse_lease_name(name: &str) -> Option<u64> {
    (name.len() == 16
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)))
    .then(|| u64::from_str_radix(name, 16).ok())
    .flatten()
}

/// An offloaded chunk as listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    pub start: Lsn,
    pub end: Lsn,
    pub size_bytes: u64,
}

/// The timeline's offloaded chunks, ascending by start. Objects with other names (leases,
/// temporary files) are skipped; a chunk whose size does not match its name is an error.
pub async fn list_chunks(remote: &RemoteStorage, timeline: TimelineId) -> Result<Vec<Chunk>> {
    let prefix = wal_prefix(timeline);
    let mut chunks = Vec::new();
    for object in remote.list(&prefix).await? {
        let Some(name) = object
            .key
            .strip_prefix(&prefix)
            .and_then(|k| k.strip_prefix('/'))
        else {
            continue;
        };
        let Some((start, end)) = parse_chunk_name(name) else {
            continue;
        };
        if object.size_bytes != end.0 - start.0 {
            return Err(RemoteStorageError::Corrupt {
                key: object.key,
                reason: format!(
                    "holds {} bytes, but its name says {}",
                    object.size_bytes,
                    end.0 - start.0
                ),
            });
        }
        chunks.push(Chunk {
            start,
            end,
            size_bytes: object.size_bytes,
        });
    }
    chunks.sort_by_key(|c| c.start);
    Ok(chunks)
}

/// The offloaded WAL from `lsn` (a record boundary) to the end of the chunk that holds it,
/// or `None` if no offloaded chunk holds `lsn`. The bytes are not verified here.
pub async fn read_from(
    remote: &RemoteStorage,
    timeline: TimelineId,
    lsn: Lsn,
    chunk_bytes_max: u64,
) -> Result<Option<Bytes>> {
    let chunks = list_chunks(remote, timeline).await?;
    let Some(chunk) = chunks.iter().find(|c| c.start <= lsn && lsn < c.end) else {
        return Ok(None);
    };
    let key = chunk_key(timeline, chunk.start, chunk.end);
    let bytes = remote.get(&key, chunk_bytes_max).await?;
    if bytes.len() as u64 != chunk.size_bytes {
        return Err(RemoteStorageError::Corrupt {
            key,
            reason: format!("read {} bytes, listed {}", bytes.len(), chunk.size_bytes),
        });
    }
    Ok(Some(bytes.slice((lsn.0 - chunk.start.0) as usize..)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_and_lease_names() {
        let key = chunk_key(TimelineId::from_u128(7), Lsn(0x10), Lsn(0x1_0000_0020));
        assert!(key.ends_with("/0000000000000010-0000000100000020"), "{key}");
        assert_eq!(
            parse_chunk_name("0000000000000010-0000000100000020"),
            Some((Lsn(0x10), Lsn(0x1_0000_0020)))
        );
        for bad in [
            "0000000000000010-0000000000000010",
            "0000000000000020-0000000000000010",
            "000000000000000a-0000000000000010",
            "0000000000000010_0000000000000020",
            "10-20",
            "uploader",
        ] {
            assert_eq!(parse_chunk_name(bad), None, "{bad}");
        }
        assert_eq!(parse_lease_name("00000000000000FF"), Some(255));
        assert_eq!(parse_lease_name("ff"), None);
    }
}
