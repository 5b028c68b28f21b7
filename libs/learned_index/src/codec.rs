//! The stored form of an index, and its decoding with full validation. Pure; no I/O.
//!
//! ```text
//!  magic "OMLIDX\0\x01" (8) │ version u32 │ rows_per_page u32 │ epsilon u32 │ n_keys u64
//!  prefix_bytes u32 │ prefix │ first_x u64 │ last_x u64
//!  n_levels u32 │ per level: n_segments u64 │ first_x u64 × n │ slope f32 × n │ intercept i32 × n
//!  n_pages u64 │ fence u64 × n_pages
//!  n_ties u64 │ page u32 × n_ties │ end u32 × n_ties │ n_tie_bytes u64 │ tie bytes
//!  n_runs u64 │ run start u32 × n_runs │ run end u32 × n_runs │ n_run_bytes u64 │ run bytes
//!  crc32c u32 of every byte before it
//! ```
//!
//! All integers little-endian; floats as their IEEE-754 bits. Decoding checks the magic, the
//! version and the checksum, bounds-checks every count against the bytes left before it
//! allocates, and then validates every structural invariant that lookups rely on, so no
//! input makes it panic or allocate more than the input's size, and a decoded index never
//! panics on lookup.

use crate::ties::Ties;
use crate::{
    Error, LearnedIndex, Level, Line, KEYS_MAX, KEY_BYTES_MAX, LEVELS_MAX, ROWS_PER_PAGE_MAX,
    ROWS_PER_PAGE_MIN,
};

const MAGIC: [u8; 8] = *b"OMLIDX\0\x01";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
const HEADER_BYTES: usize = MAGIC.len() + 4;
const CRC_BYTES: usize = 4;

impl LearnedIndex {
    /// The index as bytes, for storing beside its pages.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.size_bytes() + 64);
        out.extend_from_slice(&MAGIC);
        put_u32(&mut out, FORMAT_VERSION);
        put_u32(&mut out, self.rows_per_page);
        put_u32(&mut out, self.epsilon);
        put_u64(&mut out, self.n_keys);
        put_u32(&mut out, self.prefix.len() as u32);
        out.extend_from_slice(&self.prefix);
        put_u64(&mut out, self.first_x);
        put_u64(&mut out, self.last_x);
        put_u32(&mut out, self.levels.len() as u32);
        for level in &self.levels {
            put_u64(&mut out, level.len() as u64);
            level.first_x.iter().for_each(|&x| put_u64(&mut out, x));
            level
                .lines
                .iter()
                .for_each(|line| put_u32(&mut out, line.slope.to_bits()));
            level
                .lines
                .iter()
                .for_each(|line| put_u32(&mut out, line.intercept as u32));
        }
        put_u64(&mut out, self.fences.len() as u64);
        self.fences
            .iter()
            .for_each(|&fence| put_u64(&mut out, fence));
        put_u64(&mut out, self.ties.len() as u64);
        self.ties
            .pages
            .iter()
            .for_each(|&page| put_u32(&mut out, page));
        self.ties
            .ends
            .iter()
            .for_each(|&end| put_u32(&mut out, end));
        put_u64(&mut out, self.ties.bytes.len() as u64);
        out.extend_from_slice(&self.ties.bytes);
        put_u64(&mut out, self.ties.run_starts.len() as u64);
        self.ties
            .run_starts
            .iter()
            .for_each(|&start| put_u32(&mut out, start));
        self.ties
            .run_ends
            .iter()
            .for_each(|&end| put_u32(&mut out, end));
        put_u64(&mut out, self.ties.run_bytes.len() as u64);
        out.extend_from_slice(&self.ties.run_bytes);
        let crc = crc32c::crc32c(&out);
        put_u32(&mut out, crc);
        out
    }

    /// Reads an index written by [`LearnedIndex::encode`]. Never panics: bytes that are not a
    /// whole, consistent index of this format version are an error.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let needed = HEADER_BYTES + CRC_BYTES;
        if bytes.len() < needed {
            return Err(Error::Truncated {
                bytes: bytes.len(),
                needed,
            });
        }
        if bytes[..MAGIC.len()] != MAGIC {
            return Err(Error::BadMagic {
                found: bytes[..MAGIC.len()].to_vec(),
            });
        }
        let mut version = [0u8; 4];
        version.copy_from_slice(&bytes[MAGIC.len()..HEADER_BYTES]);
        let version = u32::from_le_bytes(version);
        if version != FORMAT_VERSION {
            return Err(Error::UnsupportedVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let (body, crc) = bytes.split_at(bytes.len() - CRC_BYTES);
        let mut stored = [0u8; 4];
        stored.copy_from_slice(crc);
        let stored = u32::from_le_bytes(stored);
        let computed = crc32c::crc32c(body);
        if stored != computed {
            return Err(Error::Checksum { stored, computed });
        }

        let mut reader = Reader {
            bytes: body,
            offset: HEADER_BYTES,
        };
        let rows_per_page = reader.u32("rows_per_page")?;
        let epsilon = reader.u32("epsilon")?;
        let n_keys = reader.u64("n_keys")?;
        let prefix_bytes = reader.u32("prefix length")? as usize;
        if prefix_bytes > KEY_BYTES_MAX {
            return reader.corrupt(format!("prefix of {prefix_bytes} bytes > KEY_BYTES_MAX"));
        }
        let prefix = reader.bytes(prefix_bytes, "prefix")?.to_vec();
        let first_x = reader.u64("first_x")?;
        let last_x = reader.u64("last_x")?;
        let n_levels = reader.u32("level count")? as usize;
        if n_levels > LEVELS_MAX {
            return reader.corrupt(format!("{n_levels} levels > LEVELS_MAX"));
        }
        let mut levels = Vec::with_capacity(n_levels);
        for _ in 0..n_levels {
            let n_segments = reader.count(16, "segment count")?;
            let first_x = reader.u64s(n_segments, "segment keys")?;
            let slopes = reader.u32s(n_segments, "segment slopes")?;
            let intercepts = reader.u32s(n_segments, "segment intercepts")?;
            levels.push(Level {
                first_x,
                lines: slopes
                    .into_iter()
                    .zip(intercepts)
                    .map(|(slope, intercept)| Line {
                        slope: f32::from_bits(slope),
                        intercept: intercept as i32,
                    })
                    .collect(),
            });
        }
        let n_pages = reader.count(8, "page count")?;
        let fences = reader.u64s(n_pages, "fences")?;
        let n_ties = reader.count(8, "tie count")?;
        let pages = reader.u32s(n_ties, "tie pages")?;
        let ends = reader.u32s(n_ties, "tie ends")?;
        let n_tie_bytes = reader.count(1, "tie byte count")?;
        let tie_bytes = reader.bytes(n_tie_bytes, "tie bytes")?.to_vec();
        let n_runs = reader.count(8, "tie run count")?;
        let run_starts = reader.u32s(n_runs, "tie run starts")?;
        let run_ends = reader.u32s(n_runs, "tie run ends")?;
        let n_run_bytes = reader.count(1, "tie run byte count")?;
        let run_bytes = reader.bytes(n_run_bytes, "tie run bytes")?.to_vec();
        if reader.offset != body.len() {
            return reader.corrupt(format!(
                "{} bytes after the index",
                body.len() - reader.offset
            ));
        }

        let index = LearnedIndex {
            n_keys,
            rows_per_page,
            epsilon,
            prefix,
            first_x,
            last_x,
            levels,
            fences,
            ties: Ties {
                pages,
                ends,
                bytes: tie_bytes,
                run_starts,
                run_ends,
                run_bytes,
            },
        };
        index.validate()?;
        Ok(index)
    }

    /// Checks every invariant that lookups and `size_bytes` rely on.
    fn validate(&self) -> Result<(), Error> {
        let invalid = |what: String| Err(Error::Corrupt { offset: 0, what });
        if !(ROWS_PER_PAGE_MIN..=ROWS_PER_PAGE_MAX).contains(&self.rows_per_page) {
            return invalid(format!("rows_per_page {} out of range", self.rows_per_page));
        }
        if self.epsilon == 0 || self.epsilon > self.rows_per_page / 2 {
            return invalid(format!(
                "epsilon {} outside 1..=rows_per_page / 2",
                self.epsilon
            ));
        }
        if self.n_keys > KEYS_MAX {
            return invalid(format!("{} keys > KEYS_MAX", self.n_keys));
        }
        let n_pages = self.n_keys.div_ceil(u64::from(self.rows_per_page));
        if self.fences.len() as u64 != n_pages {
            return invalid(format!("{} fences for {n_pages} pages", self.fences.len()));
        }
        if self.n_keys == 0 {
            if !self.levels.is_empty()
                || self.ties.len() != 0
                || self.first_x != 0
                || self.last_x != 0
            {
                return invalid("an empty index with contents".to_owned());
            }
            return Ok(());
        }
        if self.first_x > self.last_x {
            return invalid("first_x > last_x".to_owned());
        }
        if self.fences.first() != Some(&self.first_x) {
            return invalid("the first fence is not first_x".to_owned());
        }
        if self.fences.windows(2).any(|w| w[0] > w[1]) || self.fences.last() > Some(&self.last_x) {
            return invalid("fences are not sorted within first_x..=last_x".to_owned());
        }

        if self.levels.is_empty() || self.levels.last().map(Level::len) != Some(1) {
            return invalid("the top level must have exactly one segment".to_owned());
        }
        for (l, level) in self.levels.iter().enumerate() {
            if level.len() == 0 || level.lines.len() != level.len() {
                return invalid(format!("level {l} has uneven or empty arrays"));
            }
            if level.first_x.first() != Some(&self.first_x)
                || level.first_x.last() > Some(&self.last_x)
                || level.first_x.windows(2).any(|w| w[0] >= w[1])
            {
                return invalid(format!("level {l} keys are not increasing from first_x"));
            }
            if level.lines.iter().any(|line| !line.slope.is_finite()) {
                return invalid(format!("level {l} has a non-finite slope"));
            }
            let points = if l == 0 {
                self.n_keys as usize
            } else {
                self.levels[l - 1].len()
            };
            if level.len() > points {
                return invalid(format!("level {l} has more segments than points"));
            }
        }

        self.ties.validate(&self.fences).or_else(invalid)?;
        Ok(())
    }
}

fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

/// A bounds-checked cursor over the body; every error names its offset and field.
struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    fn corrupt<T>(&self, what: String) -> Result<T, Error> {
        Err(Error::Corrupt {
            offset: self.offset,
            what,
        })
    }

    fn bytes(&mut self, n: usize, field: &str) -> Result<&'a [u8], Error> {
        let end = self
            .offset
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len());
        match end {
            Some(end) => {
                let slice = &self.bytes[self.offset..end];
                self.offset = end;
                Ok(slice)
            }
            None => self.corrupt(format!(
                "{field}: {n} bytes wanted, {} left",
                self.bytes.len() - self.offset
            )),
        }
    }

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N], Error> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N, field)?);
        Ok(out)
    }

    fn u32(&mut self, field: &str) -> Result<u32, Error> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &str) -> Result<u64, Error> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    /// A count of items of `item_bytes` each that must still fit in the bytes left.
    fn count(&mut self, item_bytes: usize, field: &str) -> Result<usize, Error> {
        let count = self.u64(field)?;
        let left = (self.bytes.len() - self.offset) as u64;
        if count > left / item_bytes as u64 {
            return self.corrupt(format!(
                "{field} {count} does not fit in the {left} bytes left"
            ));
        }
        Ok(count as usize)
    }

    fn u64s(&mut self, n: usize, field: &str) -> Result<Vec<u64>, Error> {
        let bytes = self.bytes(n.saturating_mul(8), field)?;
        Ok(bytes
            .chunks_exact(8)
            .map(|chunk| {
                let mut word = [0u8; 8];
                word.copy_from_slice(chunk);
                u64::from_le_bytes(word)
            })
            .collect())
    }

    fn u32s(&mut self, n: usize, field: &str) -> Result<Vec<u32>, Error> {
        let bytes = self.bytes(n.saturating_mul(4), field)?;
        Ok(bytes
            .chunks_exact(4)
            .map(|chunk| {
                let mut word = [0u8; 4];
                word.copy_from_slice(chunk);
                u32::from_le_bytes(word)
            })
            .collect())
    }
}
