//! Every limit of the safekeeper in one place, each named with its unit last.
//!
//! Pure constants: no I/O.

/// Size of one WAL segment file. WAL byte `lsn` lives at offset `lsn % SEGMENT_BYTES` of
/// segment `lsn / SEGMENT_BYTES`.
pub const SEGMENT_BYTES: u64 = 16 << 20;

/// The control file is rewritten (with the flush and commit LSNs) whenever the WAL crosses
/// a multiple of this many bytes, which bounds the WAL that recovery has to scan.
pub const CONTROL_CHECKPOINT_BYTES: u64 = SEGMENT_BYTES;

/// The largest control file accepted when reading one back.
pub const CONTROL_FILE_BYTES_MAX: usize = 1 << 20;

/// The longest term history accepted from a proposer or a control file (16 bytes each).
pub const TERM_HISTORY_ENTRIES_MAX: usize = 10_000;

/// The most WAL bytes in one `WalData` frame of a replication stream (a single record
/// larger than this is still sent whole).
pub const REPLICATION_CHUNK_BYTES_MAX: usize = 1 << 20;

/// The most WAL bytes one `ReadWal` answer carries, whatever `max_bytes` asks (a single
/// record larger than this is still sent whole).
pub const READ_WAL_BYTES_MAX: usize = 16 << 20;

/// An idle replication stream sends an empty `WalData` this often, so a dead peer is noticed.
pub const KEEPALIVE_INTERVAL_MS: u64 = 1_000;

/// The most `Append` requests written with one fsync (group commit).
pub const GROUP_COMMIT_APPENDS_MAX: usize = 256;

/// The most WAL bytes written with one fsync (group commit).
pub const GROUP_COMMIT_BYTES_MAX: usize = 16 << 20;

/// Read buffer of a connection; pipelined frames that are already in it form a group commit.
pub const READ_BUFFER_BYTES: usize = 256 << 10;

/// How long writing one batch of responses to a peer may take before the connection is
/// dropped (a peer that stopped reading).
pub const RESPONSE_WRITE_TIMEOUT_MS: u64 = 30_000;

/// The most connections served at once; further ones are closed at accept.
pub const CONNECTIONS_MAX: usize = 1024;

/// The most timelines one safekeeper serves.
pub const TIMELINES_MAX: usize = 10_000;

/// Bytes read per step when scanning WAL for record boundaries.
pub const SCAN_CHUNK_BYTES: usize = 1 << 20;

/// The acceptor remembers a known record boundary at least every this many bytes of WAL
/// written since it opened (to check a truncation point without scanning from far back)...
pub const BOUNDARY_HINT_STRIDE_BYTES: u64 = 1 << 20;

/// ...and at most this many of them (it thins them out beyond that).
pub const BOUNDARY_HINTS_MAX: usize = 4096;

/// Pause after a failed `accept` (for example, out of file descriptors).
pub const ACCEPT_RETRY_DELAY_MS: u64 = 100;

/// How often each timeline checks for WAL to offload and WAL to remove.
pub const BACKUP_INTERVAL_MS: u64 = 1_000;

/// Length of one uploader lease slot: in each, one safekeeper per timeline uploads WAL.
pub const LEASE_SLOT_MS: u64 = 10_000;

/// Lease objects older than this many slots are deleted by the current holder.
pub const LEASE_SLOTS_KEPT: u64 = 6;
