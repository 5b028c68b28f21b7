//! The safekeeper's error type.
//!
//! Request-level mistakes of a peer (a stale term, an append at the wrong LSN) are not
//! errors here: they are answered with `Response::Rejected` or `Response::Error` and change
//! nothing. A [`SafekeeperError`] is what ends a connection or makes a timeline unusable.

/// Everything that can go wrong in the safekeeper. The message says what and where; the
/// variant says what the caller can do about it.
#[derive(Debug, thiserror::Error)]
pub enum SafekeeperError {
    /// A file operation failed; after a failed write, fsync or truncation the timeline is
    /// marked broken (see [`SafekeeperError::Broken`]).
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    /// Data on disk is not what this safekeeper wrote (bad checksum, torn control file,
    /// missing WAL). The timeline must not be served until someone looks at it.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// A WAL record failed its checks (checksum, length, missing bytes). `lsn` is where the
    /// bad record starts if the read started at a record boundary (the acceptor checks that
    /// before it acts on it).
    #[error("corrupt WAL record at {lsn}: {reason}")]
    CorruptRecord { lsn: ids::Lsn, reason: String },
    /// The WAL at `lsn` was offloaded to the object store and removed here: this
    /// safekeeper keeps WAL from `wal_start` on.
    #[error("WAL at {lsn} was offloaded and removed from this safekeeper, which keeps WAL from {wal_start} on")]
    WalOffloaded { lsn: ids::Lsn, wal_start: ids::Lsn },
    /// A read below the timeline's start: there is no WAL there, on this safekeeper or in
    /// the object store (a branch's state below its start is its parent's).
    #[error("there is no WAL at {lsn}: the timeline's WAL starts at {timeline_start}")]
    BelowTimelineStart {
        lsn: ids::Lsn,
        timeline_start: ids::Lsn,
    },
    /// A request other than `Hello` named a timeline that this safekeeper does not have.
    /// Only a compute's `Hello` creates a timeline; the caller retries later.
    #[error("timeline {timeline} is not known to safekeeper {safekeeper}; a compute creates it")]
    UnknownTimeline {
        timeline: ids::TimelineId,
        safekeeper: u32,
    },
    /// An object-store request failed.
    #[error(transparent)]
    Remote(#[from] remote_storage::RemoteStorageError),
    /// A peer broke the protocol (malformed message, wrong first request).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// An earlier storage failure left the timeline's state unknown (for example a failed
    /// fsync); it refuses all work until the safekeeper restarts and recovers from disk.
    #[error("timeline is unusable after an earlier storage failure ({0}); restart the safekeeper")]
    Broken(String),
    /// A frame could not be read or written.
    #[error(transparent)]
    Wire(#[from] wire::WireError),
    /// This is a bug.
    #[error("internal error (this is a bug): {0}")]
    Internal(String),
}

pub type Result<T, E = SafekeeperError> = std::result::Result<T, E>;

/// Wraps an `io::Error` with what was being done, for `map_err`.
pub(crate) fn io_context(
    context: impl Into<String>,
) -> impl FnOnce(std::io::Error) -> SafekeeperError {
    let context = context.into();
    move |source| SafekeeperError::Io { context, source }
}
