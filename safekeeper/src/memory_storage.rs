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
    /// WAL from LSN 0: what reads see, durable or not.
    wal: Vec<u8>,
    /// `wal[..synced_len]` survives a crash.
    synced_len: usize,
    /// WAL below this was "removed" (reads below it fail as they would on disk).
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
    /// An empty timeline.
    pub fn new() -> MemoryStorage {
        MemoryStorage::default()
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
        let start = self.control.flush_lsn.0 as usize;
        if start > self.wal.len() {
            return Err(SafekeeperError::Corrupt(format!(
                "the control file's flush_lsn {} is past the durable WAL end {}",
                self.control.flush_lsn,
                self.wal.len()
            )));
        }
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
        if let Some(byte) = self.wal.get_mut(lsn.0 as usize) {
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
        Lsn(self.wal.len() as u64)
    }

    fn persist_control(&mut self, control: &ControlState) -> Result<()> {
        if std::mem::take(&mut self.faults.persist_control) {
            return Err(injected("persist_control"));
        }
        self.control = control.clone();
        Ok(())
    }

    fn write_wal(&mut self, lsn: Lsn, data: &[u8]) -> Result<()> {
        if std::mem::take(&mut self.faults.write_wal) {
            return Err(injected("write_wal"));
        }
        if lsn.0 != self.wal.len() as u64 {
            return Err(SafekeeperError::Internal(format!(
                "WAL write at {lsn}, but the written WAL ends at {}",
                Lsn(self.wal.len() as u64)
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
        if lsn.0 > self.wal.len() as u64 {
            return Err(SafekeeperError::Internal(format!(
                "truncation at {lsn} past the end of WAL"
            )));
        }
        self.wal.truncate(lsn.0 as usize);
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
        if start > end || end.0 > self.wal.len() as u64 {
            return Err(SafekeeperError::Internal(format!(
                "WAL read {start}..{end} outside the written WAL (ends at {})",
                Lsn(self.wal.len() as u64)
            )));
        }
        Ok(self.wal[start.0 as usize..end.0 as usize].to_vec())
    }
}
