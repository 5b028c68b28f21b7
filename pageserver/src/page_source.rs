//! Where a layer file's bytes come from. Layer readers never need a whole file, only byte
//! ranges: the footer, the metadata, then one page or block per lookup. A source may be
//! memory (tests, freshly written layers), a local file, or the object store behind the
//! block cache.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::error::{PageserverError, Result};

/// Read-only access to one immutable layer file, shared by concurrent readers.
pub trait PageSource: Send + Sync {
    /// The file's length in bytes.
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The bytes `[offset, offset + n_bytes)`; a range past the end is an error.
    fn read(&self, offset: u64, n_bytes: u64) -> impl Future<Output = Result<Bytes>> + Send;
}

/// A layer file in memory, counting its reads (for tests and benchmarks).
#[derive(Debug)]
pub struct MemorySource {
    bytes: Bytes,
    n_reads: AtomicU64,
}

impl MemorySource {
    pub fn new(bytes: Bytes) -> MemorySource {
        MemorySource {
            bytes,
            n_reads: AtomicU64::new(0),
        }
    }

    /// Reads served so far.
    pub fn n_reads(&self) -> u64 {
        self.n_reads.load(Ordering::Relaxed)
    }
}

/// The range `[offset, offset + n_bytes)` of `bytes`, or an error naming `what`.
pub fn slice_checked(bytes: &Bytes, offset: u64, n_bytes: u64, what: &str) -> Result<Bytes> {
    let end = offset
        .checked_add(n_bytes)
        .filter(|end| *end <= bytes.len() as u64)
        .ok_or_else(|| {
            PageserverError::corrupt(
                what,
                format!("read {offset}+{n_bytes} past the end ({})", bytes.len()),
            )
        })?;
    Ok(bytes.slice(offset as usize..end as usize))
}

impl PageSource for MemorySource {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    async fn read(&self, offset: u64, n_bytes: u64) -> Result<Bytes> {
        let slice = slice_checked(&self.bytes, offset, n_bytes, "layer file")?;
        self.n_reads.fetch_add(1, Ordering::Relaxed);
        Ok(slice)
    }
}
