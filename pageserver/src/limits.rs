//! Every limit, timeout and default of the pageserver, in one place, each named with its unit
//! last so that they can be read and compared together.
//!
//! Limits that belong to a protocol (frame size, scan batch size) live in that protocol's crate
//! (`wire`, `pageserver_api`) and are only referred to here.

/// Default of `Config::checkpoint_interval`: upload what was ingested at least this often.
pub const CHECKPOINT_INTERVAL_DEFAULT_MS: u64 = 1_000;
/// Default of `Config::gc_interval`: garbage collection runs this often.
pub const GC_INTERVAL_DEFAULT_MS: u64 = 600_000;
/// Default of `Config::pitr_window`: reads, and branches, are kept for any moment this far
/// back (seven days).
pub const PITR_WINDOW_DEFAULT_SECS: u64 = 7 * 24 * 3600;
/// Default of `Config::wait_lsn_timeout`: a read waits at most this long for its WAL.
pub const WAIT_LSN_TIMEOUT_DEFAULT_MS: u64 = 10_000;

/// A replication connection that brings no frame for this long is dead (safekeepers send a
/// keepalive every second).
pub const WAL_RECEIVER_IDLE_TIMEOUT_MS: u64 = 5_000;
/// A safekeeper that has sent no WAL for this long is checked against the others: if one of
/// them has committed WAL beyond what we have, we switch to it.
pub const LAGGING_SAFEKEEPER_CHECK_MS: u64 = 5_000;
/// How long connecting to one safekeeper may take before the next one is tried.
pub const SAFEKEEPER_CONNECT_TIMEOUT_MS: u64 = 2_000;
/// First pause before reconnecting to a safekeeper; doubled after each failed attempt.
pub const RECONNECT_BACKOFF_MIN_MS: u64 = 100;
/// Longest pause between two reconnection attempts.
pub const RECONNECT_BACKOFF_MAX_MS: u64 = 2_000;
/// How often the safekeepers are told the durable LSN (when it advanced).
pub const FEEDBACK_INTERVAL_MS: u64 = 1_000;

/// The open in-memory layer is frozen (and flushed as a delta layer at the next checkpoint)
/// once it holds about this many bytes; it may exceed it by one transaction, itself at most
/// `wal::RECORD_BYTES_MAX`.
pub const DELTA_LAYER_BYTES_TARGET: usize = 64 << 20;
/// Compaction writes a table's image layer once this many delta layers with changes to the
/// table lie above its newest image.
pub const COMPACTION_DELTA_LAYERS_MIN: usize = 10;
/// The largest layer file a download accepts.
pub const LAYER_FILE_BYTES_MAX: u64 = 256 << 20;
/// The largest index (manifest) file a download accepts.
pub const MANIFEST_BYTES_MAX: u64 = 64 << 20;

/// Keys one scan step examines under the read lock, so that a scan over many deleted rows
/// does not hold ingest back.
pub const SCAN_KEYS_EXAMINED_MAX: usize = 65_536;
/// Client connections served at once; further ones wait in the accept queue.
pub const CONNECTIONS_MAX: usize = 1_024;
/// Pause after a failed `accept` (for example when out of file descriptors).
pub const ACCEPT_ERROR_BACKOFF_MS: u64 = 100;
