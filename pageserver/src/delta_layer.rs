//! The key-indexed delta layer: every change to a key range of the timeline's key space (see
//! `layer_map`) with commit LSN in `(start_lsn, end_lsn]`, sorted by `(key, lsn)` in blocks of
//! about `DELTA_BLOCK_BYTES_TARGET`, with a block index that names the one block a point
//! lookup has to read. The index and the metadata are read once when the layer is opened.
//!
//! ```text
//! +---------+---------+-----+-----------+-------------+----------+--------+
//! | block 0 | block 1 | ... | block n-1 | block index | metadata | footer |
//! +---------+---------+-----+-----------+-------------+----------+--------+
//! block:    n_entries u32 | n_entries x entry | crc32c u32 (over the block before it)
//! entry:    key len u32 | key | lsn u64 | kind u8 (0 deletion, 1 value) | [value len u32 | value]
//! index:    n_blocks u32 | n_blocks x (first key len u32 | first key | first lsn u64 |
//!           offset u64) | end offset u64 (where the last block ends: the index's own offset)
//! metadata: start_lsn u64 | end_lsn u64 | n_entries u64 | has_keys u8 (0 for an empty layer) |
//!           [smallest key len u32 | smallest key | largest key len u32 | largest key] |
//!           n_dropped u32 | n_dropped x (table u32 | lsn u64)
//! footer (FOOTER_BYTES): version u32 | index offset u64 | index len u64 | metadata offset u64 |
//!           metadata len u64 | crc32c u32 (over the index, the metadata and the footer
//!           fields before it) | magic "OMENDLT1"
//! ```
//!
//! Integers are big-endian. The kind byte tells a deletion from an empty value. The dropped
//! tables are the DROP TABLE records of the layer's LSN range, in the order the writer gave.
//!
//! Invariants, checked by [`encode`] before writing (an `Internal` error) and by the reader
//! after reading (a `Corrupt` error, never a panic and never a wrong row):
//! - `start_lsn < end_lsn`; every entry's LSN and every dropped table's LSN is in
//!   `(start_lsn, end_lsn]`.
//! - Entries are strictly increasing in `(key, lsn)` across the whole file: one version per
//!   key and LSN.
//! - Every block holds at least one entry; its first entry is the `(first key, first lsn)` of
//!   its index entry and every entry is below the next block's `(first key, first lsn)`. The
//!   last entry of the last block has the largest key; the first block starts with the smallest.
//! - Block offsets start at 0, strictly increase and end where the index starts; a block is at
//!   most `DELTA_BLOCK_BYTES_MAX` bytes, the index plus metadata at most
//!   `DELTA_METADATA_BYTES_MAX`.
//!
//! **Versions of one key may span blocks.** The writer packs entries greedily and cuts a
//! block wherever it fills, even between two versions of one key, so a key with more
//! versions than a block holds needs no special case. The index therefore names each
//! block's first `(key, lsn)`, not only its first key: the newest version of `key` at or
//! below `lsn` is the greatest entry `<= (key, lsn)`, and it lies in the last block whose first
//! entry is `<= (key, lsn)`. A point lookup reads exactly that one block, whatever the number
//! of versions, and none when the key is outside the layer's key range or `lsn` is at or below
//! `start_lsn`.
//!
//! Pure encoding and decoding over a [`PageSource`] (a file, an object-store range reader, or
//! memory in tests); no I/O of its own.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};
use ids::Lsn;

use crate::error::{PageserverError, Result};
use crate::page_source::PageSource;

pub const DELTA_MAGIC: [u8; 8] = *b"OMENDLT1";
pub const DELTA_FORMAT_VERSION: u32 = 1;
/// The writer closes a block once the next entry would take it past this many bytes; an
/// entry bigger than this gets a block of its own.
pub const DELTA_BLOCK_BYTES_TARGET: usize = 32 << 10;
/// The largest block accepted on read: a block is under the target plus one entry, and an
/// entry (key and value of one row) is bounded by the WAL record limit. A bigger block is a
/// damaged offset table.
pub const DELTA_BLOCK_BYTES_MAX: u64 = 64 << 20;
/// The largest block index plus metadata accepted on open (and written by `encode`).
pub const DELTA_METADATA_BYTES_MAX: u64 = 64 << 20;
/// Version, index offset and length, metadata offset and length, checksum, magic.
const FOOTER_BYTES: u64 = 4 + 8 + 8 + 8 + 8 + 4 + 8;
/// The footer fields the checksum covers: all before the checksum itself.
const FOOTER_CHECKED_BYTES: usize = 4 + 8 + 8 + 8 + 8;
/// A block's own bytes: the entry count and the checksum.
const BLOCK_OVERHEAD_BYTES: usize = 4 + 4;
/// The smallest entry: an empty key, its LSN and a deletion.
const ENTRY_BYTES_MIN: usize = 4 + 8 + 1;
/// The smallest block index entry: an empty first key, its LSN and the block offset.
const INDEX_ENTRY_BYTES_MIN: usize = 4 + 8 + 8;
/// A dropped table: table id and LSN.
const DROPPED_BYTES: usize = 4 + 8;
const KIND_DELETE: u8 = 0;
const KIND_VALUE: u8 = 1;

// Whatever one row the WAL can carry fits in one block the reader accepts.
const _: () = assert!(
    DELTA_BLOCK_BYTES_MAX as usize
        >= DELTA_BLOCK_BYTES_TARGET + wal::RECORD_BYTES_MAX + BLOCK_OVERHEAD_BYTES + 4 + 8 + 1 + 4
);

fn corrupt(reason: impl Into<String>) -> PageserverError {
    PageserverError::corrupt("delta layer", reason)
}

fn internal(reason: impl std::fmt::Display) -> PageserverError {
    PageserverError::Internal(format!("delta layer: {reason}"))
}

/// One version of one key: the value it got at `lsn`, or its deletion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaEntry {
    /// The key in the timeline's key space (`layer_map::timeline_key`).
    pub key: Bytes,
    /// The commit LSN of the change.
    pub lsn: Lsn,
    /// The new value; `None` is a deletion (distinct from an empty value).
    pub value: Option<Bytes>,
}

impl DeltaEntry {
    /// The order of entries in a layer.
    fn position(&self) -> (&[u8], Lsn) {
        (&self.key[..], self.lsn)
    }

    fn encoded_bytes(&self) -> usize {
        4 + self.key.len() + 8 + 1 + self.value.as_ref().map_or(0, |value| 4 + value.len())
    }
}

fn put_bytes(out: &mut BytesMut, bytes: &[u8]) -> Result<()> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| internal(format!("a field of {} bytes", bytes.len())))?;
    out.put_u32(len);
    out.put_slice(bytes);
    Ok(())
}

/// Cuts `entries` into blocks: each block takes entries while it stays within
/// `DELTA_BLOCK_BYTES_TARGET`, and always at least one.
fn block_ranges(entries: &[DeltaEntry]) -> Vec<Range<usize>> {
    let mut blocks = Vec::new();
    let mut first = 0;
    let mut block_bytes = BLOCK_OVERHEAD_BYTES;
    for (i, entry) in entries.iter().enumerate() {
        let entry_bytes = entry.encoded_bytes();
        if i > first && block_bytes + entry_bytes > DELTA_BLOCK_BYTES_TARGET {
            blocks.push(first..i);
            first = i;
            block_bytes = BLOCK_OVERHEAD_BYTES;
        }
        block_bytes += entry_bytes;
    }
    if first < entries.len() {
        blocks.push(first..entries.len());
    }
    blocks
}

/// Writes a delta layer of `entries` (strictly increasing in `(key, lsn)`, every LSN in
/// `(start_lsn, end_lsn]`) and of the tables `dropped` at their LSNs (also in the range).
/// Breaking those rules is an `Internal` error: the caller has a bug.
pub fn encode(
    start_lsn: Lsn,
    end_lsn: Lsn,
    entries: &[DeltaEntry],
    dropped: &[(u32, Lsn)],
) -> Result<Bytes> {
    if start_lsn >= end_lsn {
        return Err(internal(format!(
            "empty LSN range ({start_lsn}, {end_lsn}]"
        )));
    }
    let in_range = |lsn: Lsn| start_lsn < lsn && lsn <= end_lsn;
    for (i, entry) in entries.iter().enumerate() {
        if !in_range(entry.lsn) {
            return Err(internal(format!(
                "entry {i} has LSN {} outside ({start_lsn}, {end_lsn}]",
                entry.lsn
            )));
        }
        if i > 0 && entries[i - 1].position() >= entry.position() {
            return Err(internal(format!(
                "entries are not sorted and unique by (key, lsn) at entry {i}"
            )));
        }
    }
    if let Some((table, lsn)) = dropped.iter().find(|(_, lsn)| !in_range(*lsn)) {
        return Err(internal(format!(
            "table {table} dropped at LSN {lsn}, outside ({start_lsn}, {end_lsn}]"
        )));
    }

    let blocks = block_ranges(entries);
    let mut out = BytesMut::new();
    let mut offsets: Vec<u64> = Vec::with_capacity(blocks.len() + 1);
    for range in &blocks {
        let block_start = out.len();
        offsets.push(block_start as u64);
        out.put_u32(u32::try_from(range.len()).map_err(|_| internal("block entry count"))?);
        for entry in &entries[range.clone()] {
            put_bytes(&mut out, &entry.key)?;
            out.put_u64(entry.lsn.0);
            match &entry.value {
                None => out.put_u8(KIND_DELETE),
                Some(value) => {
                    out.put_u8(KIND_VALUE);
                    put_bytes(&mut out, value)?;
                }
            }
        }
        let crc = crc32c::crc32c(&out[block_start..]);
        out.put_u32(crc);
        let block_bytes = (out.len() - block_start) as u64;
        if block_bytes > DELTA_BLOCK_BYTES_MAX {
            return Err(internal(format!(
                "a block of {block_bytes} bytes exceeds {DELTA_BLOCK_BYTES_MAX}"
            )));
        }
    }
    let index_offset = out.len() as u64;
    offsets.push(index_offset);

    out.put_u32(u32::try_from(blocks.len()).map_err(|_| internal("block count"))?);
    for (range, offset) in blocks.iter().zip(&offsets) {
        let first = &entries[range.start];
        put_bytes(&mut out, &first.key)?;
        out.put_u64(first.lsn.0);
        out.put_u64(*offset);
    }
    out.put_u64(index_offset);

    let metadata_offset = out.len() as u64;
    out.put_u64(start_lsn.0);
    out.put_u64(end_lsn.0);
    out.put_u64(entries.len() as u64);
    match (entries.first(), entries.last()) {
        (Some(smallest), Some(largest)) => {
            out.put_u8(1);
            put_bytes(&mut out, &smallest.key)?;
            put_bytes(&mut out, &largest.key)?;
        }
        _ => out.put_u8(0),
    }
    out.put_u32(u32::try_from(dropped.len()).map_err(|_| internal("dropped table count"))?);
    for (table, lsn) in dropped {
        out.put_u32(*table);
        out.put_u64(lsn.0);
    }
    let metadata_end = out.len() as u64;
    if metadata_end - index_offset > DELTA_METADATA_BYTES_MAX {
        return Err(internal(format!(
            "an index and metadata of {} bytes exceed {DELTA_METADATA_BYTES_MAX}",
            metadata_end - index_offset
        )));
    }

    out.put_u32(DELTA_FORMAT_VERSION);
    out.put_u64(index_offset);
    out.put_u64(metadata_offset - index_offset);
    out.put_u64(metadata_offset);
    out.put_u64(metadata_end - metadata_offset);
    let crc = crc32c::crc32c(&out[index_offset as usize..]);
    out.put_u32(crc);
    out.put_slice(&DELTA_MAGIC);
    Ok(out.freeze())
}

/// An opened delta layer: its block index and metadata in memory, its blocks read on demand.
pub struct DeltaLayer<S: PageSource> {
    source: S,
    start_lsn: Lsn,
    end_lsn: Lsn,
    n_entries: u64,
    /// Smallest and largest key; `None` for an empty layer.
    key_range: Option<(Bytes, Bytes)>,
    dropped: Vec<(u32, Lsn)>,
    /// The first `(key, lsn)` of each block.
    firsts: Vec<(Bytes, Lsn)>,
    /// Where each block starts, then where the last one ends (`n_blocks + 1` offsets).
    offsets: Vec<u64>,
}

impl<S: PageSource> DeltaLayer<S> {
    /// Reads and checks the footer, then the block index and the metadata (two reads).
    pub async fn open(source: S) -> Result<DeltaLayer<S>> {
        let len = source.len();
        if len < FOOTER_BYTES {
            return Err(corrupt(format!("{len} bytes is shorter than a footer")));
        }
        let footer = source.read(len - FOOTER_BYTES, FOOTER_BYTES).await?;
        if footer.len() as u64 != FOOTER_BYTES {
            return Err(corrupt("short footer read"));
        }
        if footer[FOOTER_BYTES as usize - 8..] != DELTA_MAGIC {
            return Err(corrupt("bad magic (not a key-indexed delta layer)"));
        }
        let wire_error = |e: wire::WireError| corrupt(e.to_string());
        let mut decoder = wire::Decoder::new(&footer, "delta layer footer");
        let version = decoder.u32().map_err(wire_error)?;
        let index_offset = decoder.u64().map_err(wire_error)?;
        let index_len = decoder.u64().map_err(wire_error)?;
        let metadata_offset = decoder.u64().map_err(wire_error)?;
        let metadata_len = decoder.u64().map_err(wire_error)?;
        let stored_crc = decoder.u32().map_err(wire_error)?;
        if version != DELTA_FORMAT_VERSION {
            return Err(corrupt(format!(
                "format version {version}, this build reads {DELTA_FORMAT_VERSION}"
            )));
        }
        let metadata_end = len - FOOTER_BYTES;
        if index_offset.checked_add(index_len) != Some(metadata_offset)
            || metadata_offset.checked_add(metadata_len) != Some(metadata_end)
            || metadata_end - index_offset > DELTA_METADATA_BYTES_MAX
        {
            return Err(corrupt("footer offsets do not fit the file"));
        }
        let tail = source
            .read(index_offset, metadata_end - index_offset)
            .await?;
        if tail.len() as u64 != metadata_end - index_offset {
            return Err(corrupt("short index read"));
        }
        let mut crc_input = tail.to_vec();
        crc_input.extend_from_slice(&footer[..FOOTER_CHECKED_BYTES]);
        if crc32c::crc32c(&crc_input) != stored_crc {
            return Err(corrupt("index and metadata checksum mismatch"));
        }
        let (index_bytes, metadata_bytes) = tail.split_at(index_len as usize);

        let mut decoder = wire::Decoder::new(index_bytes, "delta layer block index");
        let n_blocks = decoder.count(INDEX_ENTRY_BYTES_MIN).map_err(wire_error)?;
        let mut firsts = Vec::with_capacity(n_blocks);
        let mut offsets = Vec::with_capacity(n_blocks + 1);
        for _ in 0..n_blocks {
            let key = tail.slice_ref(decoder.bytes().map_err(wire_error)?);
            firsts.push((key, decoder.lsn().map_err(wire_error)?));
            offsets.push(decoder.u64().map_err(wire_error)?);
        }
        offsets.push(decoder.u64().map_err(wire_error)?);
        decoder.finish().map_err(wire_error)?;

        let mut decoder = wire::Decoder::new(metadata_bytes, "delta layer metadata");
        let start_lsn = decoder.lsn().map_err(wire_error)?;
        let end_lsn = decoder.lsn().map_err(wire_error)?;
        let n_entries = decoder.u64().map_err(wire_error)?;
        let key_range = if decoder.bool().map_err(wire_error)? {
            let smallest = tail.slice_ref(decoder.bytes().map_err(wire_error)?);
            let largest = tail.slice_ref(decoder.bytes().map_err(wire_error)?);
            Some((smallest, largest))
        } else {
            None
        };
        let n_dropped = decoder.count(DROPPED_BYTES).map_err(wire_error)?;
        let mut dropped = Vec::with_capacity(n_dropped);
        for _ in 0..n_dropped {
            let table = decoder.u32().map_err(wire_error)?;
            dropped.push((table, decoder.lsn().map_err(wire_error)?));
        }
        decoder.finish().map_err(wire_error)?;

        if start_lsn >= end_lsn {
            return Err(corrupt(format!("empty LSN range ({start_lsn}, {end_lsn}]")));
        }
        let in_range = |lsn: Lsn| start_lsn < lsn && lsn <= end_lsn;
        if dropped.iter().any(|(_, lsn)| !in_range(*lsn)) {
            return Err(corrupt(
                "a dropped table's LSN is outside the layer's range",
            ));
        }
        let block_bytes_min = (BLOCK_OVERHEAD_BYTES + ENTRY_BYTES_MIN) as u64;
        let offsets_consistent = offsets[0] == 0
            && offsets.last() == Some(&index_offset)
            && offsets.windows(2).all(|w| {
                w[0] < w[1] && (block_bytes_min..=DELTA_BLOCK_BYTES_MAX).contains(&(w[1] - w[0]))
            });
        if !offsets_consistent {
            return Err(corrupt("block offsets are not increasing within the file"));
        }
        let firsts_consistent = firsts.iter().all(|(_, lsn)| in_range(*lsn))
            && firsts
                .windows(2)
                .all(|w| (&w[0].0[..], w[0].1) < (&w[1].0[..], w[1].1));
        if !firsts_consistent {
            return Err(corrupt(
                "block index entries are not increasing or out of the LSN range",
            ));
        }
        let counts_consistent = match (&key_range, firsts.first(), firsts.last()) {
            (None, None, None) => n_entries == 0,
            (Some((smallest, largest)), Some((first_key, _)), Some((last_first_key, _))) => {
                n_entries >= n_blocks as u64
                    && n_entries <= index_offset / ENTRY_BYTES_MIN as u64
                    && smallest == first_key
                    && last_first_key <= largest
            }
            _ => false,
        };
        if !counts_consistent {
            return Err(corrupt("entry count, key range and block index disagree"));
        }
        Ok(DeltaLayer {
            source,
            start_lsn,
            end_lsn,
            n_entries,
            key_range,
            dropped,
            firsts,
            offsets,
        })
    }

    /// Changes in this layer have commit LSNs above this one.
    pub fn start_lsn(&self) -> Lsn {
        self.start_lsn
    }

    /// Changes in this layer have commit LSNs at or below this one.
    pub fn end_lsn(&self) -> Lsn {
        self.end_lsn
    }

    /// Versions in the layer (over all keys).
    pub fn n_entries(&self) -> u64 {
        self.n_entries
    }

    /// The smallest and the largest key with a version in the layer; `None` when empty.
    pub fn key_range(&self) -> Option<(Bytes, Bytes)> {
        self.key_range.clone()
    }

    /// The tables dropped in the layer's LSN range, with the LSN of each drop.
    pub fn dropped(&self) -> &[(u32, Lsn)] {
        &self.dropped
    }

    pub fn n_blocks(&self) -> usize {
        self.firsts.len()
    }

    pub fn source(&self) -> &S {
        &self.source
    }

    /// The entries of block `block`, checked against its CRC32C and the layer's invariants
    /// (one read).
    pub async fn read_block(&self, block: usize) -> Result<Vec<DeltaEntry>> {
        if block >= self.n_blocks() {
            return Err(internal(format!(
                "block {block} of a layer of {} blocks",
                self.n_blocks()
            )));
        }
        let (start, end) = (self.offsets[block], self.offsets[block + 1]);
        let bytes = self.source.read(start, end - start).await?;
        let (body, crc) = bytes.split_at(bytes.len().saturating_sub(4));
        if crc.len() != 4 || crc32c::crc32c(body) != u32::from_be_bytes(crc.try_into().expect("4"))
        {
            return Err(corrupt(format!("block {block}: checksum mismatch")));
        }
        let wire_error = |e: wire::WireError| corrupt(format!("block {block}: {e}"));
        let mut decoder = wire::Decoder::new(body, "delta layer block");
        let n_entries = decoder.count(ENTRY_BYTES_MIN).map_err(wire_error)?;
        let mut entries: Vec<DeltaEntry> = Vec::with_capacity(n_entries);
        for _ in 0..n_entries {
            let key = bytes.slice_ref(decoder.bytes().map_err(wire_error)?);
            let lsn = decoder.lsn().map_err(wire_error)?;
            let value = match decoder.u8().map_err(wire_error)? {
                KIND_DELETE => None,
                KIND_VALUE => Some(bytes.slice_ref(decoder.bytes().map_err(wire_error)?)),
                kind => return Err(corrupt(format!("block {block}: bad entry kind {kind}"))),
            };
            let entry = DeltaEntry { key, lsn, value };
            if !(self.start_lsn < lsn && lsn <= self.end_lsn) {
                return Err(corrupt(format!(
                    "block {block}: LSN {lsn} outside ({}, {}]",
                    self.start_lsn, self.end_lsn
                )));
            }
            if entries
                .last()
                .is_some_and(|previous| previous.position() >= entry.position())
            {
                return Err(corrupt(format!(
                    "block {block}: entries not sorted by (key, lsn)"
                )));
            }
            entries.push(entry);
        }
        decoder.finish().map_err(wire_error)?;
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Err(corrupt(format!("block {block} is empty")));
        };
        let (first_key, first_lsn) = &self.firsts[block];
        let starts_at_index = first.position() == (&first_key[..], *first_lsn);
        let ends_before_next = match self.firsts.get(block + 1) {
            Some((next_key, next_lsn)) => last.position() < (&next_key[..], *next_lsn),
            // The last entry of the file has the largest key.
            None => self
                .key_range
                .as_ref()
                .is_some_and(|(_, largest)| last.key == largest),
        };
        if !starts_at_index || !ends_before_next {
            return Err(corrupt(format!(
                "block {block}: keys outside the block index's bounds"
            )));
        }
        Ok(entries)
    }

    /// The newest version of `key` with lsn <= `lsn`: `Some((lsn, value))`, where the value is
    /// `None` for a deletion, or `None` when this layer has no version of `key` at or below
    /// `lsn`. Reads exactly one block, the last one whose first entry is at or below
    /// `(key, lsn)`; none when the key is outside the layer's key range or `lsn` is at or below
    /// the layer's start.
    pub async fn newest_at(&self, key: &[u8], lsn: Lsn) -> Result<Option<(Lsn, Option<Bytes>)>> {
        let Some((smallest, largest)) = &self.key_range else {
            return Ok(None);
        };
        if key < &smallest[..] || key > &largest[..] || lsn <= self.start_lsn {
            return Ok(None);
        }
        let after = self
            .firsts
            .partition_point(|(first_key, first_lsn)| (&first_key[..], *first_lsn) <= (key, lsn));
        let Some(block) = after.checked_sub(1) else {
            // Every entry of the layer is after (key, lsn).
            return Ok(None);
        };
        let entries = self.read_block(block).await?;
        let at_or_below = entries.partition_point(|entry| entry.position() <= (key, lsn));
        // `read_block` checked that the block starts at its index entry, which is at or
        // below (key, lsn), so the greatest entry at or below it is in this block.
        Ok(at_or_below
            .checked_sub(1)
            .map(|slot| &entries[slot])
            .filter(|entry| entry.key[..] == *key)
            .map(|entry| (entry.lsn, entry.value.clone())))
    }

    /// The block where entries with key >= `start` begin (for range scans): `n_blocks()` when
    /// there are none.
    pub fn first_block_for(&self, start: &[u8]) -> usize {
        match &self.key_range {
            Some((_, largest)) if start <= &largest[..] => self
                .firsts
                .partition_point(|(first_key, _)| first_key[..] < *start)
                .saturating_sub(1),
            _ => self.n_blocks(),
        }
    }
}

/// A forward cursor over the entries with key >= start, loading one block at a time. After
/// an error, drop it: its position is unspecified.
pub struct DeltaCursor<'a, S: PageSource> {
    layer: &'a DeltaLayer<S>,
    start: Bytes,
    /// The next block to load.
    next_block: usize,
    /// The loaded block, and the next entry in it to look at.
    entries: Vec<DeltaEntry>,
    position: usize,
}

impl<'a, S: PageSource> DeltaCursor<'a, S> {
    /// A cursor before the first key >= `start`; reads nothing yet.
    pub fn new(layer: &'a DeltaLayer<S>, start: &[u8]) -> Self {
        DeltaCursor {
            layer,
            start: Bytes::copy_from_slice(start),
            next_block: layer.first_block_for(start),
            entries: Vec::new(),
            position: 0,
        }
    }

    /// Loads blocks until an entry is at hand: false at the end of the layer.
    async fn fill(&mut self) -> Result<bool> {
        while self.position == self.entries.len() {
            if self.next_block >= self.layer.n_blocks() {
                return Ok(false);
            }
            self.entries = self.layer.read_block(self.next_block).await?;
            self.next_block += 1;
            // Only the first block loaded can hold keys below the start.
            self.position = self
                .entries
                .partition_point(|entry| entry.key[..] < self.start[..]);
        }
        Ok(true)
    }

    /// Next (key, newest version at or below `lsn` of that key): groups all versions of one
    /// key, returns the key with its newest version <= lsn (the value `None` for a deletion),
    /// skipping keys with no version <= lsn. `None` at the end. To see where a key's versions
    /// end, it may load the block after them.
    pub async fn next_key(&mut self, lsn: Lsn) -> Result<Option<(Bytes, Lsn, Option<Bytes>)>> {
        if lsn <= self.layer.start_lsn() {
            // No version in the layer is visible at `lsn`: skip reading the blocks at all.
            return Ok(None);
        }
        loop {
            if !self.fill().await? {
                return Ok(None);
            }
            let key = self.entries[self.position].key.clone();
            let mut newest = None;
            while self.fill().await? && self.entries[self.position].key == key {
                let entry = &self.entries[self.position];
                if entry.lsn <= lsn {
                    newest = Some((entry.lsn, entry.value.clone()));
                }
                self.position += 1;
            }
            if let Some((version_lsn, value)) = newest {
                return Ok(Some((key, version_lsn, value)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer_map::timeline_key;
    use crate::page_source::MemorySource;
    use crate::test_util::{block_on, Rng};

    type Version = (Lsn, Option<Bytes>);

    fn entry(key: &Bytes, lsn: u64, value: Option<Bytes>) -> DeltaEntry {
        DeltaEntry {
            key: key.clone(),
            lsn: Lsn(lsn),
            value,
        }
    }

    /// Row keys of up to three letters from `a..=b`: few enough that keys repeat at many LSNs.
    fn row_keys() -> Vec<Vec<u8>> {
        let mut keys = vec![Vec::new()];
        for len in 1..=3u32 {
            for bits in 0..1u32 << len {
                keys.push((0..len).map(|i| b'a' + (bits >> i & 1) as u8).collect());
            }
        }
        keys
    }

    /// Random versions of keys of tables 7..10, with deletions, empty values and some values
    /// big enough to fill several blocks, sorted and unique by (key, lsn).
    fn random_entries(rng: &mut Rng, n: usize, start_lsn: Lsn, end_lsn: Lsn) -> Vec<DeltaEntry> {
        let row_keys = row_keys();
        let mut entries: Vec<DeltaEntry> = (0..n)
            .map(|_| {
                let table = 7 + rng.below(3) as u32;
                let row_key = &row_keys[rng.below(row_keys.len() as u64) as usize];
                let lsn = start_lsn.0 + 1 + rng.below(end_lsn.0 - start_lsn.0);
                let value = match rng.below(10) {
                    0 | 1 => None,
                    2 => Some(Bytes::new()),
                    3 => Some(Bytes::from(vec![b'x'; rng.below(4000) as usize])),
                    _ => Some(Bytes::from(format!("value at {lsn}"))),
                };
                entry(&timeline_key(table, row_key), lsn, value)
            })
            .collect();
        entries.sort_by(|a, b| a.position().cmp(&b.position()));
        entries.dedup_by(|a, b| a.position() == b.position());
        entries
    }

    /// Every key a test probes: those of tables 6..11 (tables 6 and 10 are outside every
    /// layer), the empty key and one above every table.
    fn probe_keys() -> Vec<Bytes> {
        let mut keys: Vec<Bytes> = (6..11u32)
            .flat_map(|table| row_keys().into_iter().map(move |k| timeline_key(table, &k)))
            .collect();
        keys.push(Bytes::new());
        keys.push(Bytes::from_static(&[0xff; 5]));
        keys
    }

    fn model_newest(entries: &[DeltaEntry], key: &[u8], lsn: Lsn) -> Option<Version> {
        entries
            .iter()
            .filter(|e| e.key[..] == *key && e.lsn <= lsn)
            .max_by_key(|e| e.lsn)
            .map(|e| (e.lsn, e.value.clone()))
    }

    fn model_scan(
        entries: &[DeltaEntry],
        start: &[u8],
        lsn: Lsn,
    ) -> Vec<(Bytes, Lsn, Option<Bytes>)> {
        let mut scan: Vec<(Bytes, Lsn, Option<Bytes>)> = Vec::new();
        for e in entries
            .iter()
            .filter(|e| e.key[..] >= *start && e.lsn <= lsn)
        {
            let version = (e.key.clone(), e.lsn, e.value.clone());
            match scan.last_mut() {
                Some(last) if last.0 == e.key => *last = version,
                _ => scan.push(version),
            }
        }
        scan
    }

    async fn scan<S: PageSource>(
        layer: &DeltaLayer<S>,
        start: &[u8],
        lsn: Lsn,
    ) -> Result<Vec<(Bytes, Lsn, Option<Bytes>)>> {
        let mut cursor = DeltaCursor::new(layer, start);
        let mut scan = Vec::new();
        while let Some(version) = cursor.next_key(lsn).await? {
            scan.push(version);
        }
        Ok(scan)
    }

    /// An LSN in and around the layer's range.
    fn probe_lsn(rng: &mut Rng, start_lsn: Lsn, end_lsn: Lsn) -> Lsn {
        Lsn(start_lsn.0 - 2 + rng.below(end_lsn.0 - start_lsn.0 + 5))
    }

    /// Random histories (empty ones included) read back through `newest_at`, `read_block` and
    /// `DeltaCursor` agree with a model computed from the entry list; open takes two reads and
    /// a lookup at most one, none outside the key range.
    #[test]
    fn random_histories_round_trip() {
        for seed in 0..24u64 {
            let mut rng = Rng::new(seed);
            let n = [0, 1, 2, 40, 700, 3000][seed as usize % 6];
            let start_lsn = Lsn(1000);
            let end_lsn = Lsn(1000 + [1, 60, 5000][seed as usize / 6 % 3]);
            let entries = random_entries(&mut rng, n, start_lsn, end_lsn);
            let dropped: Vec<(u32, Lsn)> = (0..rng.below(3))
                .map(|_| {
                    (
                        rng.below(12) as u32,
                        probe_lsn(&mut rng, start_lsn, end_lsn),
                    )
                })
                .map(|(table, lsn)| (table, lsn.max(start_lsn.add(1)).min(end_lsn)))
                .collect();
            let bytes = encode(start_lsn, end_lsn, &entries, &dropped).unwrap();
            block_on(async {
                let layer = DeltaLayer::open(MemorySource::new(bytes.clone()))
                    .await
                    .unwrap();
                assert_eq!(
                    layer.source().n_reads(),
                    2,
                    "footer, then index and metadata"
                );
                assert_eq!((layer.start_lsn(), layer.end_lsn()), (start_lsn, end_lsn));
                assert_eq!(layer.n_entries(), entries.len() as u64);
                assert_eq!(layer.dropped(), &dropped[..]);
                let key_range = layer.key_range();
                assert_eq!(
                    key_range,
                    entries
                        .first()
                        .zip(entries.last())
                        .map(|(f, l)| (f.key.clone(), l.key.clone()))
                );
                let mut all_blocks = Vec::new();
                for block in 0..layer.n_blocks() {
                    all_blocks.extend(layer.read_block(block).await.unwrap());
                }
                assert_eq!(all_blocks, entries, "seed {seed}: blocks hold the entries");
                let entry_bytes: usize = entries.iter().map(DeltaEntry::encoded_bytes).sum();
                assert!(
                    layer.n_blocks() >= entry_bytes / DELTA_BLOCK_BYTES_TARGET,
                    "seed {seed}: {} blocks for {entry_bytes} bytes",
                    layer.n_blocks()
                );

                for key in probe_keys() {
                    let in_range = key_range
                        .as_ref()
                        .is_some_and(|(smallest, largest)| *smallest <= key && key <= *largest);
                    for _ in 0..25 {
                        let lsn = probe_lsn(&mut rng, start_lsn, end_lsn);
                        let reads = layer.source().n_reads();
                        let expected = model_newest(&entries, &key, lsn);
                        let found = layer.newest_at(&key, lsn).await.unwrap();
                        assert_eq!(found, expected, "seed {seed}: {key:?} at {lsn}");
                        let n_reads = layer.source().n_reads() - reads;
                        if !in_range || lsn <= start_lsn {
                            assert_eq!(n_reads, 0, "no read outside the key range");
                        } else if expected.is_some() {
                            assert_eq!(n_reads, 1, "one block read per lookup");
                        } else {
                            assert!(n_reads <= 1, "at most one block read per lookup");
                        }
                    }
                }

                let mut starts = probe_keys();
                starts.extend(entries.iter().step_by(97).map(|e| e.key.clone()));
                for start in starts {
                    let lsn = probe_lsn(&mut rng, start_lsn, end_lsn);
                    assert_eq!(
                        scan(&layer, &start, lsn).await.unwrap(),
                        model_scan(&entries, &start, lsn),
                        "seed {seed}: scan from {start:?} at {lsn}"
                    );
                }
            });
        }
    }

    /// Every bit flipped in the index, metadata or footer fails the open; any flipped byte
    /// or cut anywhere gives an error or the right answer, never a wrong version.
    #[test]
    fn damage_is_an_error_never_a_wrong_row() {
        for seed in 0..6u64 {
            let mut rng = Rng::new(100 + seed);
            let (start_lsn, end_lsn) = (Lsn(500), Lsn(900));
            let entries =
                random_entries(&mut rng, [0, 3, 400][seed as usize % 3], start_lsn, end_lsn);
            let bytes = encode(start_lsn, end_lsn, &entries, &[(9, Lsn(700))]).unwrap();
            block_on(async {
                let layer = DeltaLayer::open(MemorySource::new(bytes.clone()))
                    .await
                    .unwrap();
                let index_offset = *layer.offsets.last().unwrap() as usize;
                for at in index_offset..bytes.len() {
                    for bit in 0..8 {
                        let mut damaged = bytes.to_vec();
                        damaged[at] ^= 1 << bit;
                        let opened =
                            DeltaLayer::open(MemorySource::new(Bytes::from(damaged))).await;
                        assert!(
                            opened.is_err(),
                            "seed {seed}: flip at {at} bit {bit} not caught"
                        );
                    }
                }

                for _ in 0..60 {
                    let mut damaged = bytes.to_vec();
                    if rng.below(4) == 0 {
                        damaged.truncate(rng.below(damaged.len() as u64) as usize);
                    } else {
                        let at = rng.below(damaged.len() as u64) as usize;
                        damaged[at] ^= 1 << rng.below(8);
                    }
                    let Ok(layer) = DeltaLayer::open(MemorySource::new(Bytes::from(damaged))).await
                    else {
                        continue;
                    };
                    for key in probe_keys().iter().step_by(3) {
                        let lsn = probe_lsn(&mut rng, start_lsn, end_lsn);
                        if let Ok(found) = layer.newest_at(key, lsn).await {
                            assert_eq!(
                                found,
                                model_newest(&entries, key, lsn),
                                "seed {seed}: a wrong row"
                            );
                        }
                        if let Ok(found) = scan(&layer, key, lsn).await {
                            assert_eq!(
                                found,
                                model_scan(&entries, key, lsn),
                                "seed {seed}: a wrong scan"
                            );
                        }
                    }
                }
            });
        }
    }

    #[test]
    fn encode_refuses_broken_invariants() {
        let (a, b) = (timeline_key(1, b"a"), timeline_key(1, b"b"));
        let value = || Some(Bytes::from_static(b"v"));
        let ok = [
            entry(&a, 5, value()),
            entry(&a, 6, None),
            entry(&b, 5, value()),
        ];
        assert!(encode(Lsn(4), Lsn(6), &ok, &[(1, Lsn(5))]).is_ok());
        let refused =
            |start_lsn: u64, end_lsn: u64, entries: &[DeltaEntry], dropped: &[(u32, Lsn)]| {
                let result = encode(Lsn(start_lsn), Lsn(end_lsn), entries, dropped);
                matches!(result, Err(PageserverError::Internal(_)))
            };
        let unsorted_keys = [entry(&b, 5, value()), entry(&a, 5, value())];
        assert!(refused(4, 6, &unsorted_keys, &[]), "unsorted keys");
        let unsorted_lsns = [entry(&a, 6, value()), entry(&a, 5, value())];
        assert!(refused(4, 6, &unsorted_lsns, &[]), "unsorted LSNs");
        let duplicate = [entry(&a, 5, value()), entry(&a, 5, None)];
        assert!(refused(4, 6, &duplicate, &[]), "duplicate (key, lsn)");
        assert!(
            refused(5, 6, &[entry(&a, 5, value())], &[]),
            "LSN at the start"
        );
        assert!(
            refused(4, 6, &[entry(&a, 7, value())], &[]),
            "LSN after the end"
        );
        assert!(refused(4, 6, &[], &[(1, Lsn(4))]), "dropped at the start");
        assert!(refused(4, 6, &[], &[(1, Lsn(7))]), "dropped after the end");
        assert!(refused(6, 6, &[], &[]), "empty LSN range");
    }

    /// An entry bigger than the block target gets a block of its own, and a key with more
    /// versions than a block holds spans blocks: every lookup still reads one block and finds
    /// the right version, and scans group the versions across block boundaries.
    #[test]
    fn big_entries_and_versions_spanning_blocks() {
        let (small, many, big) = (
            timeline_key(3, b"a"),
            timeline_key(3, b"m"),
            timeline_key(3, b"z"),
        );
        let big_value = Bytes::from(vec![7u8; 3 * DELTA_BLOCK_BYTES_TARGET]);
        let mut entries = vec![entry(&small, 2, Some(Bytes::from_static(b"s")))];
        for lsn in 1..=3000u64 {
            let value = (lsn % 50 != 0).then(|| Bytes::from(format!("{lsn:0>100}")));
            entries.push(entry(&many, 2 * lsn, value));
        }
        entries.push(entry(&big, 10, Some(big_value.clone())));
        entries.push(entry(&big, 20, None));
        entries.push(entry(&big, 30, Some(big_value)));
        let (start_lsn, end_lsn) = (Lsn(1), Lsn(7000));
        let bytes = encode(start_lsn, end_lsn, &entries, &[]).unwrap();
        block_on(async {
            let layer = DeltaLayer::open(MemorySource::new(bytes)).await.unwrap();
            let spanned = layer.firsts.iter().filter(|(key, _)| *key == many).count();
            assert!(spanned >= 5, "versions of one key span {spanned} blocks");
            for block in 0..layer.n_blocks() {
                let block_bytes = (layer.offsets[block + 1] - layer.offsets[block]) as usize;
                let block_entries = layer.read_block(block).await.unwrap();
                if block_bytes > DELTA_BLOCK_BYTES_TARGET {
                    assert_eq!(
                        block_entries.len(),
                        1,
                        "only a lone big entry exceeds the target"
                    );
                }
                if block_entries
                    .iter()
                    .any(|e| e.value.as_ref().is_some_and(|v| v.len() > 1000))
                {
                    assert_eq!(block_entries.len(), 1, "a big entry gets its own block");
                }
            }
            for lsn in (0..7002u64).step_by(3) {
                for key in [&small, &many, &big] {
                    let reads = layer.source().n_reads();
                    let found = layer.newest_at(key, Lsn(lsn)).await.unwrap();
                    assert_eq!(
                        found,
                        model_newest(&entries, key, Lsn(lsn)),
                        "{key:?} at {lsn}"
                    );
                    assert!(
                        layer.source().n_reads() - reads <= 1,
                        "one block per lookup"
                    );
                }
            }
            for lsn in [0, 1, 2, 3, 9, 10, 25, 2999, 3000, 5999, 6000, 7000] {
                for start in [&Bytes::new(), &small, &many, &big] {
                    assert_eq!(
                        scan(&layer, start, Lsn(lsn)).await.unwrap(),
                        model_scan(&entries, start, Lsn(lsn)),
                        "scan from {start:?} at {lsn}"
                    );
                }
            }
        });
    }
}
