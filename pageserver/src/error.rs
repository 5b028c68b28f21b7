//! The pageserver's error type: one enum for the whole crate. `run` turns it into
//! `anyhow::Error`; the read server turns it into a `pageserver_api::ErrorKind`.

use ids::{Lsn, TimelineId};

#[derive(Debug, thiserror::Error)]
pub enum PageserverError {
    /// The WAL up to `lsn` did not arrive within the wait limit. The text is part of the
    /// protocol's contract: computes show it to users.
    #[error("timed out after {waited_ms} ms waiting for WAL up to LSN {lsn} (have {have})")]
    WaitLsnTimeout {
        waited_ms: u128,
        lsn: Lsn,
        have: Lsn,
    },

    /// A file from the object store failed validation (checksum, format, consistency).
    #[error("corrupt {what}: {reason}")]
    Corrupt { what: String, reason: String },

    /// An object-store request failed (after its retries, where it was worth retrying).
    #[error(transparent)]
    Remote(#[from] remote_storage::RemoteStorageError),

    /// Another pageserver already wrote an index under the generation this one picked.
    #[error(
        "generation {generation} of timeline {timeline} is already taken by another pageserver"
    )]
    GenerationTaken {
        generation: u32,
        timeline: TimelineId,
    },

    /// The replication stream from a safekeeper broke its protocol or ended.
    #[error("replication: {0}")]
    Replication(String),

    #[error(transparent)]
    Wal(#[from] wal::WalError),

    #[error(transparent)]
    Wire(#[from] wire::WireError),

    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),

    /// No timeline of this id is served here.
    #[error("timeline {0} is not served by this pageserver")]
    UnknownTimeline(TimelineId),

    /// The request conflicts with the timelines as they are (an id already taken, a
    /// timeline that others branch from, a branch point outside what is kept).
    #[error("{0}")]
    Conflict(String),

    /// A read or branch point below what garbage collection kept of a timeline's history.
    #[error(
        "LSN {lsn} of timeline {timeline} is no longer kept: history is kept from LSN {cutoff} on (and at the branch points of its branches)"
    )]
    NotRetained {
        timeline: TimelineId,
        lsn: Lsn,
        cutoff: Lsn,
    },

    /// A broken invariant inside the pageserver: this is a bug.
    #[error("internal error (this is a bug): {0}")]
    Internal(String),
}

pub type Result<T, E = PageserverError> = std::result::Result<T, E>;

impl PageserverError {
    pub(crate) fn corrupt(what: impl Into<String>, reason: impl Into<String>) -> PageserverError {
        PageserverError::Corrupt {
            what: what.into(),
            reason: reason.into(),
        }
    }

    /// True when an object-store write failed because the object already existed.
    pub fn is_already_exists(&self) -> bool {
        matches!(self, PageserverError::Remote(e) if e.is_already_exists())
    }
}
