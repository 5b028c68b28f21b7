//! The crate's one error type. Build errors mean the caller's keys or settings break a rule
//! (fix the input); decode errors mean the stored bytes are not an index this build can use
//! (rebuild the index from the page keys); `Internal` is a bug.

/// Errors of building, checking and decoding a learned index.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("rows_per_page {rows_per_page} is outside {min}..={max}")]
    RowsPerPage {
        rows_per_page: u32,
        min: u32,
        max: u32,
    },

    #[error("key {position} is {key_bytes} bytes long, more than KEY_BYTES_MAX ({max})")]
    KeyTooLong {
        position: u64,
        key_bytes: usize,
        max: usize,
    },

    #[error(
        "key {position} is not greater than the key before it: keys must be strictly increasing"
    )]
    NotSorted { position: u64 },

    #[error("key {position} does not start with the index's common prefix ({prefix_bytes} bytes)")]
    KeyOutsidePrefix { position: u64, prefix_bytes: usize },

    #[error("more than KEYS_MAX ({max}) keys")]
    TooManyKeys { max: u64 },

    #[error("the page-boundary separators need more than {max} bytes")]
    SeparatorBytes { max: u64 },

    #[error("the index does not match the keys it is checked against: {what}")]
    Mismatch { what: String },

    #[error("learned index bytes are truncated: {bytes} bytes, at least {needed} needed")]
    Truncated { bytes: usize, needed: usize },

    #[error("not a learned index: magic {found:02x?}")]
    BadMagic { found: Vec<u8> },

    #[error(
        "learned index format version {found} is not supported (this build reads {supported})"
    )]
    UnsupportedVersion { found: u32, supported: u32 },

    #[error("learned index checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },

    #[error("learned index bytes are corrupt at byte {offset}: {what}")]
    Corrupt { offset: usize, what: String },

    #[error("internal error (a bug in learned_index): {0}")]
    Internal(String),
}
