//! An in-memory [`AcceptorStorage`] for tests and deterministic simulation.
//!
//! It models what a crash does to a real disk, cheaply: the control state is replaced
//! atomically and durably (like the real temp-file-and-rename), a WAL truncation is durable
//! at once (the real one fsyncs), and WAL writes are lost on a crash unless
//! [`AcceptorStorage::sync_wal`] ran after them, or survive only in part (a torn write).
//! [`MemoryStorage::crash`] returns what a restarted safekeeper would find, after the same
//! recovery scan as the real storage. Failures can be injected per operation.
//!
//! No I/O.

use ids::Lsn;

use crate::acceptor::{AcceptorStorage, ControlState};
use crate::error::{Result, SafekeeperError};

/// Operations that fail (once each) when set, to test what a failed write does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InjectedFaults {
    pub persist_control: bool,
    pub write_wal: bool,
    pub sync_wal: bool,
    pub truncate_wal: bool,
}

#[derive(Debug, Clone, Default)]
pub struct MemoryStorage {
    control: ControlState,
    /// WAL from the timeline's start (`control.timeline_start_lsn`, which never changes):
    /// what reads see, durable or not. Byte `lsn` is `wal[lsn - start]`.
    wal: Vec<u8>,
    /// `wal[..synced_len]` survives a crash.
    synced_len: usize,
    /// WAL below this was "removed" or never existed (below the timeline's start): reads
    /// below it fail as they would on disk.
    wal_start: Lsn,
    n_syncs: u64,
    pub faults: InjectedFaults,
}

fn injected(what: &str) -> SafekeeperError {
    SafekeeperError::Io {
        context: format!("injected fault in {what}"),
        source: std::io::ErrorKind::Other.into(),
    }
}

impl MemoryStorage {
    /// An empty timeline whose WAL starts at 0.
    pub fn new() -> MemoryStorage {
        MemoryStorage::default()
    }

    /// An empty timeline whose WAL starts at `start_lsn` (a branch).
    pub fn new_at(start_lsn: Lsn) -> MemoryStorage {
        MemoryStorage {
            control: ControlState::new_timeline(start_lsn),
            wal_start: start_lsn,
            ..MemoryStorage::default()
        }
    }

    fn start(&self) -> Lsn {
        self.control.timeline_start_lsn
    }

    /// The end of the written WAL.
    fn end(&self) -> Lsn {
        self.start().add(self.wal.len() as u64)
    }

    /// The index in `wal` of WAL byte `lsn` (at or above the timeline's start).
    fn index(&self, lsn: Lsn) -> usize {
        (lsn.0 - self.start().0) as usize
    }

    /// What a safekeeper restarted after a crash finds: the control state, the synced WAL
    /// plus the first `unsynced_bytes_kept` of the unsynced bytes (a torn write), and the
    /// tail past the last whole valid record cut off.
    pub fn crash(mut self, unsynced_bytes_kept: usize) -> Result<MemoryStorage> {
        let kept_len = self
            .synced_len
            .saturating_add(unsynced_bytes_kept)
            .min(self.wal.len());
        self.wal.truncate(kept_len);
        if self.control.flush_lsn > self.end() || self.control.flush_lsn < self.start() {
            return Err(SafekeeperError::Corrupt(format!(
                "the control file's flush_lsn {} is outside the durable WAL [{}, {}]",
                self.control.flush_lsn,
                self.start(),
                self.end()
            )));
        }
        let start = self.index(self.control.flush_lsn);
        let end = start + wal::valid_prefix_len(&self.wal[start..]);
        self.wal.truncate(end);
        self.synced_len = end;
        self.faults = InjectedFaults::default();
        Ok(self)
    }

    /// How many times WAL was fsynced.
    pub fn sync_count(&self) -> u64 {
        self.n_syncs
    }

    /// Flips one bit of stored WAL (to test that reads catch corruption).
    pub fn corrupt_wal_byte(&mut self, lsn: Lsn) {
        if lsn < self.start() {
            return;
        }
        let idx = self.index(lsn);
        if let Some(byte) = self.wal.get_mut(idx) {
            *byte ^= 0x10;
        }
    }
}

impl AcceptorStorage for MemoryStorage {
    fn control(&self) -> &ControlState {
        &self.control
    }

    /// The end of the written WAL: right after [`MemoryStorage::crash`], the recovered end.
    /// (Opening an acceptor on a storage that did not crash models a process restart that
    /// kept the page cache.)
    fn wal_end(&self) -> Lsn {
        self.end()
    }

    fn persist_control(&mut self, control: &ControlState) -> Result<()> {
        if std::mem::take(&mut self.faults.persist_control) {
            return Err(injected("persist_control"));
        }
        if control.timeline_start_lsn != self.start() {
            return Err(SafekeeperError::Internal(format!(
                "the timeline's start cannot move from {} to {}",
                self.start(),
                control.timeline_start_lsn
            )));
        }
        self.control = control.clone();
        Ok(())
    }

    fn write_wal(&mut self, lsn: Lsn, data: &[u8]) -> Result<()> {
        if std::mem::take(&mut self.faults.write_wal) {
            return Err(injected("write_wal"));
        }
        if lsn != self.end() {
            return Err(SafekeeperError::Internal(format!(
                "WAL write at {lsn}, but the written WAL ends at {}",
                self.end()
            )));
        }
        self.wal.extend_from_slice(data);
        Ok(())
    }

    fn sync_wal(&mut self) -> Result<()> {
        if std::mem::take(&mut self.faults.sync_wal) {
            return Err(injected("sync_wal"));
        }
        self.synced_len = self.wal.len();
        self.n_syncs += 1;
        Ok(())
    }

    fn truncate_wal(&mut self, lsn: Lsn) -> Result<()> {
        if std::mem::take(&mut self.faults.truncate_wal) {
            return Err(injected("truncate_wal"));
        }
        if lsn > self.end() || lsn < self.start() {
            return Err(SafekeeperError::Internal(format!(
                "truncation at {lsn} outside the WAL [{}, {}]",
                self.start(),
                self.end()
            )));
        }
        let len = self.index(lsn);
        self.wal.truncate(len);
        self.synced_len = self.synced_len.min(self.wal.len());
        Ok(())
    }

    fn wal_start(&self) -> Lsn {
        self.wal_start
    }

    /// Keeps the bytes (this is memory) but refuses reads below the new start, which moves
    /// in steps of `SEGMENT_BYTES` like the file-backed storage's.
    fn remove_wal_below(&mut self, lsn: Lsn) -> Result<Lsn> {
        let segment = crate::limits::SEGMENT_BYTES;
        self.wal_start = self.wal_start.max(Lsn(lsn.0 / segment * segment));
        Ok(self.wal_start)
    }

    fn read_wal_raw(&mut self, start: Lsn, end: Lsn) -> Result<Vec<u8>> {
        if start < self.wal_start {
            return Err(SafekeeperError::WalOffloaded {
                lsn: start,
                wal_start: self.wal_start,
            });
        }
        if start > end || end > self.end() {
            return Err(SafekeeperError::Internal(format!(
                "WAL read {start}..{end} outside the written WAL (ends at {})",
                self.end()
            )));
        }
        Ok(self.wal[self.index(start)..self.index(end)].to_vec())
    }
}
