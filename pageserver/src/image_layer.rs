//! The row-page part of an image layer: every row of a key range as of one LSN, sorted by key
//! (the timeline's key space, see `layer_map`) in pages of `ROWS_PER_PAGE` rows, with a
//! learned index that names the one page a key can be on. A point lookup reads exactly one
//! page; the index and the page offsets are read once when the layer is opened.
//!
//! ```text
//! +--------+--------+-----+-----------+-------------------+---------------+---------+
//! | page 0 | page 1 | ... | page n-1  | learned index     | page offsets  | footer  |
//! +--------+--------+-----+-----------+-------------------+---------------+---------+
//! page:   n_rows u32 | n_rows x (key len u32 | key | value len u32 | value) | crc32c u32
//! offsets: (n_pages + 1) x u64, the byte where each page starts, then the end of the last
//! footer (FOOTER_BYTES): lsn u64 | n_rows u64 | n_pages u32 | index offset u64 |
//!         index len u64 | offsets offset u64 | crc32c u32 (over the index, the offsets and the
//!         footer fields) | magic (8)
//! ```
//!
//! Integers are big-endian. Every page carries its own CRC32C, checked on every read, so a
//! damaged page is an error, never a wrong row; the metadata is checked once on open. Pure
//! encoding and decoding over a [`PageSource`] (a file, an object-store range reader, or
//! memory in tests); no I/O of its own.

use bytes::{BufMut, Bytes, BytesMut};
use ids::Lsn;
use learned_index::{LearnedIndex, PageId};

use crate::error::{PageserverError, Result};
use crate::page_source::PageSource;

pub const IMAGE_MAGIC: [u8; 8] = *b"OMENIMG1";
/// Rows per page: 256 keeps the learned index near 0.04 bytes per row.
pub const ROWS_PER_PAGE: u32 = learned_index::ROWS_PER_PAGE_DEFAULT;
/// The largest page accepted on read (a page of 256 rows of the largest rows is bounded by
/// the WAL record limit per row, but a page this big is a damaged offset table).
pub const PAGE_BYTES_MAX: u64 = 256 << 20;
/// The largest index plus offset table accepted on open.
pub const METADATA_BYTES_MAX: u64 = 256 << 20;
const FOOTER_BYTES: u64 = 8 + 8 + 4 + 8 + 8 + 8 + 4 + 8;

fn corrupt(reason: impl Into<String>) -> PageserverError {
    PageserverError::corrupt("image layer", reason)
}

/// Writes an image layer of `rows` (sorted by key, keys unique) as of `lsn`.
pub fn encode(lsn: Lsn, rows: &[(Bytes, Bytes)]) -> Result<Bytes> {
    if let Some(i) = rows.windows(2).position(|w| w[0].0 >= w[1].0) {
        return Err(PageserverError::Internal(format!(
            "image layer rows are not sorted and unique at row {}",
            i + 1
        )));
    }
    let keys: Vec<&[u8]> = rows.iter().map(|(k, _)| &k[..]).collect();
    let index = LearnedIndex::build(&keys, ROWS_PER_PAGE)
        .map_err(|e| PageserverError::Internal(format!("building the learned index: {e}")))?;
    let mut out = BytesMut::new();
    let mut offsets: Vec<u64> = Vec::with_capacity(index.n_pages() + 1);
    for page in rows.chunks(ROWS_PER_PAGE as usize) {
        offsets.push(out.len() as u64);
        let start = out.len();
        out.put_u32(page.len() as u32);
        for (key, value) in page {
            out.put_u32(key.len() as u32);
            out.put_slice(key);
            out.put_u32(value.len() as u32);
            out.put_slice(value);
        }
        let crc = crc32c::crc32c(&out[start..]);
        out.put_u32(crc);
    }
    offsets.push(out.len() as u64);
    let index_offset = out.len() as u64;
    let index_bytes = index.encode();
    out.put_slice(&index_bytes);
    let offsets_offset = out.len() as u64;
    for offset in &offsets {
        out.put_u64(*offset);
    }
    let metadata_start = index_offset as usize;
    let mut footer = BytesMut::new();
    footer.put_u64(lsn.0);
    footer.put_u64(rows.len() as u64);
    footer.put_u32(index.n_pages() as u32);
    footer.put_u64(index_offset);
    footer.put_u64(index_bytes.len() as u64);
    footer.put_u64(offsets_offset);
    let mut crc_input = out[metadata_start..].to_vec();
    crc_input.extend_from_slice(&footer);
    footer.put_u32(crc32c::crc32c(&crc_input));
    footer.put_slice(&IMAGE_MAGIC);
    out.put_slice(&footer);
    Ok(out.freeze())
}

/// An opened image layer: its index and page offsets in memory, its pages read on demand.
pub struct ImageLayer<S: PageSource> {
    source: S,
    lsn: Lsn,
    n_rows: u64,
    index: LearnedIndex,
    offsets: Vec<u64>,
}

impl<S: PageSource> ImageLayer<S> {
    /// Reads and checks the footer, the learned index and the page offsets (two reads).
    pub async fn open(source: S) -> Result<ImageLayer<S>> {
        let len = source.len();
        if len < FOOTER_BYTES {
            return Err(corrupt(format!("{len} bytes is shorter than a footer")));
        }
        let footer = source.read(len - FOOTER_BYTES, FOOTER_BYTES).await?;
        let be64 = |at: usize| u64::from_be_bytes(footer[at..at + 8].try_into().expect("8 bytes"));
        if footer[FOOTER_BYTES as usize - 8..] != IMAGE_MAGIC {
            return Err(corrupt("bad magic (not an image layer)"));
        }
        let lsn = Lsn(be64(0));
        let n_rows = be64(8);
        let n_pages = u32::from_be_bytes(footer[16..20].try_into().expect("4 bytes")) as u64;
        let (index_offset, index_len, offsets_offset) = (be64(20), be64(28), be64(36));
        let stored_crc = u32::from_be_bytes(footer[44..48].try_into().expect("4 bytes"));
        let offsets_len = (n_pages + 1) * 8;
        let metadata_end = len - FOOTER_BYTES;
        if index_offset.checked_add(index_len) != Some(offsets_offset)
            || offsets_offset.checked_add(offsets_len) != Some(metadata_end)
            || metadata_end - index_offset > METADATA_BYTES_MAX
        {
            return Err(corrupt("footer offsets do not fit the file"));
        }
        let metadata = source
            .read(index_offset, metadata_end - index_offset)
            .await?;
        let mut crc_input = metadata.to_vec();
        crc_input.extend_from_slice(&footer[..44]);
        if crc32c::crc32c(&crc_input) != stored_crc {
            return Err(corrupt("metadata checksum mismatch"));
        }
        let index = LearnedIndex::decode(&metadata[..index_len as usize])
            .map_err(|e| corrupt(format!("learned index: {e}")))?;
        let offsets: Vec<u64> = metadata[index_len as usize..]
            .chunks_exact(8)
            .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
            .collect();
        let consistent = index.len() as u64 == n_rows
            && index.n_pages() as u64 == n_pages
            && offsets.first() == Some(&0)
            && offsets.last() == Some(&index_offset)
            && offsets
                .windows(2)
                .all(|w| w[0] < w[1] && w[1] - w[0] <= PAGE_BYTES_MAX);
        if !consistent {
            return Err(corrupt("index, row count and page offsets disagree"));
        }
        Ok(ImageLayer {
            source,
            lsn,
            n_rows,
            index,
            offsets,
        })
    }

    pub fn lsn(&self) -> Lsn {
        self.lsn
    }

    pub fn n_rows(&self) -> u64 {
        self.n_rows
    }

    pub fn n_pages(&self) -> usize {
        self.offsets.len() - 1
    }

    pub fn source(&self) -> &S {
        &self.source
    }

    /// The rows of page `page`, checked against its CRC32C (one read).
    pub async fn read_page(&self, page: usize) -> Result<Vec<(Bytes, Bytes)>> {
        let (start, end) = (self.offsets[page], self.offsets[page + 1]);
        let bytes = self.source.read(start, end - start).await?;
        let (body, crc) = bytes.split_at(bytes.len().saturating_sub(4));
        if crc.len() != 4 || crc32c::crc32c(body) != u32::from_be_bytes(crc.try_into().expect("4"))
        {
            return Err(corrupt(format!("page {page}: checksum mismatch")));
        }
        let mut decoder = wire::Decoder::new(body, "image layer page");
        let wire_error = |e: wire::WireError| corrupt(format!("page {page}: {e}"));
        let n_rows = decoder.count(8).map_err(wire_error)?;
        let expected = self.index.page_rows(PageId(page as u32)).len();
        if n_rows != expected {
            return Err(corrupt(format!(
                "page {page} holds {n_rows} rows, the index says {expected}"
            )));
        }
        let mut rows = Vec::with_capacity(n_rows);
        for _ in 0..n_rows {
            let key = bytes.slice_ref(decoder.bytes().map_err(wire_error)?);
            let value = bytes.slice_ref(decoder.bytes().map_err(wire_error)?);
            rows.push((key, value));
        }
        decoder.finish().map_err(wire_error)?;
        Ok(rows)
    }

    /// The page where rows with keys at or above `key` start (the page `key` would be on):
    /// a range scan from `key` reads from here on. `None` when the layer is empty.
    pub fn page_for(&self, key: &[u8]) -> Option<usize> {
        self.index.page_for(key).map(|page| page.index())
    }

    /// The value of `key` as of the layer's LSN, or `None` if the layer has no such row.
    /// Reads exactly one page (none if the layer is empty).
    pub async fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        let Some(page) = self.index.page_for(key) else {
            return Ok(None);
        };
        let rows = self.read_page(page.index()).await?;
        Ok(rows
            .binary_search_by(|(k, _)| k[..].cmp(key))
            .ok()
            .map(|slot| rows[slot].1.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page_source::MemorySource;
    use crate::test_util::{block_on, Rng};

    fn random_rows(rng: &mut Rng, n: usize) -> Vec<(Bytes, Bytes)> {
        let mut keys: Vec<Vec<u8>> = (0..n)
            .map(|_| {
                let table = 16 + rng.below(3) as u32;
                let mut key = table.to_be_bytes().to_vec();
                let len = 1 + rng.below(12) as usize;
                key.extend((0..len).map(|_| rng.below(4) as u8 * 60));
                key
            })
            .collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .map(|k| {
                let value = Bytes::from(format!("value of {k:?}"));
                (Bytes::from(k), value)
            })
            .collect()
    }

    /// Every present key is found with its value and every absent one is not, each with
    /// exactly one page read; whatever damage is done to the file, a read is an error or the
    /// right answer, never a wrong row.
    #[test]
    fn one_page_per_lookup_and_no_wrong_rows() {
        for seed in 0..30u64 {
            let mut rng = Rng::new(seed);
            let n = [0, 1, 2, 255, 256, 257, 3000][seed as usize % 7];
            let rows = random_rows(&mut rng, n);
            let bytes = encode(Lsn(77), &rows).unwrap();
            let layer = block_on(ImageLayer::open(MemorySource::new(bytes.clone()))).unwrap();
            assert_eq!((layer.lsn(), layer.n_rows()), (Lsn(77), rows.len() as u64));
            let after_open = layer.source().n_reads();
            assert_eq!(after_open, 2, "footer, then index and offsets");
            for (i, (key, value)) in rows.iter().enumerate() {
                let reads = layer.source().n_reads();
                assert_eq!(
                    block_on(layer.get(key)).unwrap().as_ref(),
                    Some(value),
                    "seed {seed} row {i}"
                );
                assert_eq!(
                    layer.source().n_reads(),
                    reads + 1,
                    "one page read per lookup"
                );
            }
            for _ in 0..200 {
                let mut absent = rows
                    .get(rng.below(rows.len().max(1) as u64) as usize)
                    .map(|(k, _)| k.to_vec())
                    .unwrap_or_default();
                absent.push(rng.below(7) as u8 * 31 + 1);
                if rows.iter().any(|(k, _)| k[..] == absent[..]) {
                    continue;
                }
                let reads = layer.source().n_reads();
                assert_eq!(
                    block_on(layer.get(&absent)).unwrap(),
                    None,
                    "seed {seed}: {absent:?}"
                );
                assert!(layer.source().n_reads() <= reads + 1);
            }
            // Damage: any flipped byte or cut gives an error or the right rows.
            for _ in 0..40 {
                let mut damaged = bytes.to_vec();
                if damaged.is_empty() {
                    break;
                }
                if rng.below(4) == 0 {
                    damaged.truncate(rng.below(damaged.len() as u64) as usize);
                } else {
                    let at = rng.below(damaged.len() as u64) as usize;
                    damaged[at] ^= 1 << rng.below(8);
                }
                let Ok(layer) = block_on(ImageLayer::open(MemorySource::new(Bytes::from(damaged))))
                else {
                    continue;
                };
                for (key, value) in rows.iter().step_by(7) {
                    if let Ok(found) = block_on(layer.get(key)) {
                        assert_eq!(found.as_ref(), Some(value), "seed {seed}: a wrong row");
                    }
                }
            }
        }
    }

    #[test]
    fn unsorted_rows_are_refused() {
        let rows = vec![
            (Bytes::from_static(b"b"), Bytes::new()),
            (Bytes::from_static(b"a"), Bytes::new()),
        ];
        assert!(encode(Lsn(1), &rows).is_err());
        let duplicate = vec![
            (Bytes::from_static(b"a"), Bytes::new()),
            (Bytes::from_static(b"a"), Bytes::new()),
        ];
        assert!(encode(Lsn(1), &duplicate).is_err());
    }
}
