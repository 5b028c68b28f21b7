//! [`WalStorage`]: a timeline's WAL and control file in a local folder.
//!
//! ```text
//! <data_dir>/timelines/<timeline hex>/
//!     control                 the ControlState (see control_file)
//!     0000000000000000        WAL [0, 16 MiB)
//!     0000000000000001        WAL [16 MiB, 32 MiB)
//!     ...                     segment `n` holds WAL [n * SEGMENT_BYTES, (n + 1) * SEGMENT_BYTES)
//! ```
//!
//! A segment file is only as long as the WAL written into it; records may span segments.
//! A timeline is created ([`WalStorage::create`]) with its WAL starting at
//! `timeline_start_lsn` (a branch's LSN on its parent, 0 for a root timeline): the segment
//! holding that LSN is then written from the start's offset on, leaving a hole before it
//! that is never read (reads, scans and boundary walks all begin at or above the start).
//! Segments wholly below what is offloaded to the object store and durable at the pageserver
//! are removed ([`AcceptorStorage::remove_wal_below`]); the first segment left (or the
//! timeline's start, if higher) marks where the local WAL starts.
//!
//! Only a control file makes a folder a timeline: creation writes it (temporary file, fsync,
//! rename, folder fsync) before anyone is told the timeline exists, so a crash in between
//! leaves a folder without one that [`WalStorage::open_existing`] treats as never created.
//! A write is durable after [`AcceptorStorage::sync_wal`], which fsyncs every segment written
//! since the last sync and, if one of them was created, the folder.
//!
//! Opening finds the real end of WAL: it scans records from the control file's `flush_lsn`
//! (a record boundary that was durable when the control file was written) forward across
//! segments, and cuts everything after the last whole valid record: the torn tail of a
//! write that a crash interrupted. Reads check every record's CRC32C and return an error
//! rather than bad bytes.
//!
//! All of it is blocking file I/O: call it from a blocking thread.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use ids::{Lsn, TimelineId};
use tracing::{info, warn};

use crate::acceptor::{AcceptorStorage, ControlState};
use crate::control_file;
use crate::error::{io_context, Result, SafekeeperError};
use crate::limits::{SCAN_CHUNK_BYTES, SEGMENT_BYTES};

/// The segment holding WAL byte `lsn`, and the byte's offset in it.
fn segment_of(lsn: Lsn) -> (u64, u64) {
    (lsn.0 / SEGMENT_BYTES, lsn.0 % SEGMENT_BYTES)
}

fn segment_name(segno: u64) -> String {
    format!("{segno:016X}")
}

/// The segment number a file name stands for, if it is a segment's name.
fn parse_segment_name(name: &str) -> Option<u64> {
    if name.len() != 16
        || !name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
    {
        return None;
    }
    u64::from_str_radix(name, 16).ok()
}

/// The folder of `timeline` under `data_dir`.
pub fn timeline_dir(data_dir: &Path, timeline: TimelineId) -> PathBuf {
    data_dir.join("timelines").join(timeline.to_string())
}

pub struct WalStorage {
    dir: PathBuf,
    control: ControlState,
    wal_end_at_open: Lsn,
    /// The first WAL byte kept: the start of the first segment file (or the end of WAL when
    /// every segment below it was removed).
    wal_start: Lsn,
    /// End of the written WAL, durable or not.
    end: Lsn,
    /// Segments written since the last sync, plus the one holding `end`.
    open_segments: BTreeMap<u64, File>,
    /// Whether a segment was created since the last folder fsync.
    dir_needs_sync: bool,
    n_syncs: u64,
}

impl WalStorage {
    /// Opens the timeline's folder under `data_dir`; `None` if this safekeeper does not have
    /// the timeline (no folder, or one whose creation a crash interrupted before its control
    /// file was written). Creates nothing. Fails on a bad control file: the timeline must not
    /// be served then.
    pub fn open_existing(data_dir: &Path, timeline: TimelineId) -> Result<Option<WalStorage>> {
        let dir = timeline_dir(data_dir, timeline);
        if !dir.exists() {
            return Ok(None);
        }
        match control_file::read(&dir)? {
            Some(control) => WalStorage::open_with(&dir, control).map(Some),
            None => {
                check_no_wal_without_control(&dir)?;
                Ok(None)
            }
        }
    }

    /// Creates the timeline under `data_dir` with its WAL starting at `start_lsn` (flush,
    /// commit, backup and pageserver LSNs all there), durably, and opens it. Fails if the
    /// timeline exists (has a control file).
    pub fn create(data_dir: &Path, timeline: TimelineId, start_lsn: Lsn) -> Result<WalStorage> {
        let dir = timeline_dir(data_dir, timeline);
        let timelines_dir = data_dir.join("timelines");
        std::fs::create_dir_all(&dir).map_err(io_context(format!("creating {}", dir.display())))?;
        control_file::sync_dir(&timelines_dir)?;
        control_file::sync_dir(data_dir)?;
        if control_file::read(&dir)?.is_some() {
            return Err(SafekeeperError::Internal(format!(
                "creating timeline {timeline}, which already exists in {}",
                dir.display()
            )));
        }
        check_no_wal_without_control(&dir)?;
        let control = ControlState::new_timeline(start_lsn);
        control_file::write(&dir, &control)?;
        info!(dir = %dir.display(), "created the timeline with its WAL starting at {start_lsn}");
        WalStorage::open_with(&dir, control)
    }

    /// Opens a timeline folder, which must have a control file.
    pub fn open(dir: &Path) -> Result<WalStorage> {
        match control_file::read(dir)? {
            Some(control) => WalStorage::open_with(dir, control),
            None => Err(SafekeeperError::Corrupt(format!(
                "{} has no control file",
                dir.display()
            ))),
        }
    }

    fn open_with(dir: &Path, control: ControlState) -> Result<WalStorage> {
        // WAL up to the removal horizon may have been offloaded and removed; above it, the
        // WAL below flush_lsn must be on disk.
        if control.flush_lsn > control.removal_horizon() {
            check_wal_reaches(dir, control.flush_lsn)?;
        }
        let end = scan_wal_end(dir, control.flush_lsn)?;
        truncate_files(dir, end)?;
        // The first segment may begin below the timeline's start (a hole that is not WAL).
        let wal_start = match list_segments(dir)?.first() {
            Some(segno) => Lsn(segno * SEGMENT_BYTES)
                .max(control.timeline_start_lsn)
                .min(end),
            None => end,
        };
        if end > control.flush_lsn {
            info!(dir = %dir.display(), "recovered WAL from {} to {end}", control.flush_lsn);
        }
        Ok(WalStorage {
            dir: dir.to_path_buf(),
            control,
            wal_end_at_open: end,
            wal_start,
            end,
            open_segments: BTreeMap::new(),
            dir_needs_sync: false,
            n_syncs: 0,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How many times WAL was fsynced since open (group commit makes it fewer than appends).
    pub fn sync_count(&self) -> u64 {
        self.n_syncs
    }

    /// The segment file `segno`, opened for writing; created if missing.
    fn segment_for_write(&mut self, segno: u64) -> Result<&File> {
        if !self.open_segments.contains_key(&segno) {
            let path = self.dir.join(segment_name(segno));
            let file = match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(file) => {
                    self.dir_needs_sync = true;
                    file
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(io_context(format!("opening {}", path.display())))?,
                Err(e) => return Err(io_context(format!("creating {}", path.display()))(e)),
            };
            self.open_segments.insert(segno, file);
        }
        Ok(&self.open_segments[&segno])
    }
}

/// Segment numbers present in `dir`, ascending.
fn list_segments(dir: &Path) -> Result<Vec<u64>> {
    let mut segments = Vec::new();
    let entries =
        std::fs::read_dir(dir).map_err(io_context(format!("listing {}", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(io_context(format!("listing {}", dir.display())))?;
        if let Some(segno) = entry.file_name().to_str().and_then(parse_segment_name) {
            segments.push(segno);
        }
    }
    segments.sort_unstable();
    Ok(segments)
}

/// A folder without a control file is a creation that a crash interrupted: nothing was ever
/// acknowledged from it, unless it holds WAL, which only a created timeline can have.
fn check_no_wal_without_control(dir: &Path) -> Result<()> {
    match list_segments(dir)?.first() {
        Some(segno) => Err(SafekeeperError::Corrupt(format!(
            "{} has WAL segment {} but no control file",
            dir.display(),
            segment_name(*segno)
        ))),
        None => Ok(()),
    }
}

/// Fails unless the WAL below `lsn` is on disk (the byte before it exists).
fn check_wal_reaches(dir: &Path, lsn: Lsn) -> Result<()> {
    if lsn == Lsn::ZERO {
        return Ok(());
    }
    let (segno, offset) = segment_of(Lsn(lsn.0 - 1));
    let path = dir.join(segment_name(segno));
    let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    if len <= offset {
        return Err(SafekeeperError::Corrupt(format!(
            "{}: WAL ends before the control file's flush_lsn {lsn} (segment {} has {len} bytes)",
            dir.display(),
            segment_name(segno)
        )));
    }
    Ok(())
}

/// Up to `max_bytes` of the WAL bytes on disk from `lsn` on, within one segment; empty at
/// the end of what is there.
fn read_available(dir: &Path, lsn: Lsn, max_bytes: usize) -> Result<Vec<u8>> {
    let (segno, offset) = segment_of(lsn);
    let path = dir.join(segment_name(segno));
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_context(format!("opening {}", path.display()))(e)),
    };
    let len = file
        .metadata()
        .map_err(io_context(format!("reading {}", path.display())))?
        .len();
    let n_bytes = len
        .min(SEGMENT_BYTES)
        .saturating_sub(offset)
        .min(max_bytes as u64) as usize;
    let mut buf = vec![0u8; n_bytes];
    file.read_exact_at(&mut buf, offset)
        .map_err(io_context(format!("reading {}", path.display())))?;
    Ok(buf)
}

/// The end of the last whole valid record, scanning from `start` (a record boundary).
fn scan_wal_end(dir: &Path, start: Lsn) -> Result<Lsn> {
    let mut pos = start;
    // WAL bytes from `pos` on; `buf[consumed..]` are not yet parsed.
    let mut buf: Vec<u8> = Vec::new();
    let mut consumed = 0;
    loop {
        match wal::next_record_len(&buf[consumed..], pos) {
            Ok(Some(len)) => {
                consumed += len;
                pos = pos.add(len as u64);
            }
            Ok(None) => {
                buf.drain(..consumed);
                consumed = 0;
                let chunk = read_available(dir, pos.add(buf.len() as u64), SCAN_CHUNK_BYTES)?;
                if chunk.is_empty() {
                    if !buf.is_empty() {
                        warn!(dir = %dir.display(), "cutting a torn WAL tail of {} bytes at {pos}", buf.len());
                    }
                    return Ok(pos);
                }
                buf.extend_from_slice(&chunk);
            }
            Err(e) => {
                warn!(dir = %dir.display(), "WAL ends at {pos}: {e}");
                return Ok(pos);
            }
        }
    }
}

/// Removes all WAL files' bytes at and after `lsn`, durably.
fn truncate_files(dir: &Path, lsn: Lsn) -> Result<()> {
    let (last_segno, offset) = segment_of(lsn);
    let mut removed_any = false;
    for segno in list_segments(dir)? {
        let path = dir.join(segment_name(segno));
        if segno > last_segno {
            std::fs::remove_file(&path)
                .map_err(io_context(format!("removing {}", path.display())))?;
            removed_any = true;
        } else if segno == last_segno {
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io_context(format!("opening {}", path.display())))?;
            let len = file
                .metadata()
                .map_err(io_context(format!("reading {}", path.display())))?
                .len();
            if len > offset {
                file.set_len(offset)
                    .map_err(io_context(format!("truncating {}", path.display())))?;
                file.sync_all()
                    .map_err(io_context(format!("fsyncing {}", path.display())))?;
            }
        }
    }
    if removed_any {
        control_file::sync_dir(dir)?;
    }
    Ok(())
}

impl AcceptorStorage for WalStorage {
    fn control(&self) -> &ControlState {
        &self.control
    }

    fn wal_end(&self) -> Lsn {
        self.wal_end_at_open
    }

    fn persist_control(&mut self, control: &ControlState) -> Result<()> {
        control_file::write(&self.dir, control)?;
        self.control = control.clone();
        Ok(())
    }

    fn write_wal(&mut self, lsn: Lsn, data: &[u8]) -> Result<()> {
        if lsn != self.end {
            return Err(SafekeeperError::Internal(format!(
                "WAL write at {lsn}, but the written WAL ends at {}",
                self.end
            )));
        }
        let mut pos = lsn;
        let mut rest = data;
        while !rest.is_empty() {
            let (segno, offset) = segment_of(pos);
            let n_bytes = rest.len().min((SEGMENT_BYTES - offset) as usize);
            let file = self.segment_for_write(segno)?;
            file.write_all_at(&rest[..n_bytes], offset)
                .map_err(io_context(format!(
                    "writing WAL segment {} at {pos}",
                    segment_name(segno)
                )))?;
            rest = &rest[n_bytes..];
            pos = pos.add(n_bytes as u64);
        }
        self.end = pos;
        Ok(())
    }

    fn sync_wal(&mut self) -> Result<()> {
        for (segno, file) in &self.open_segments {
            file.sync_data().map_err(io_context(format!(
                "fsyncing WAL segment {}",
                segment_name(*segno)
            )))?;
        }
        if self.dir_needs_sync {
            control_file::sync_dir(&self.dir)?;
            self.dir_needs_sync = false;
        }
        // Keep only the segment that the next write goes to.
        let (current, _) = segment_of(self.end);
        self.open_segments.retain(|segno, _| *segno == current);
        self.n_syncs += 1;
        Ok(())
    }

    fn truncate_wal(&mut self, lsn: Lsn) -> Result<()> {
        if lsn > self.end {
            return Err(SafekeeperError::Internal(format!(
                "truncation at {lsn} past the end of WAL {}",
                self.end
            )));
        }
        // Anything unsynced below the cut must not be lost to a crash after it.
        self.sync_wal()?;
        self.open_segments.clear();
        truncate_files(&self.dir, lsn)?;
        self.end = lsn;
        Ok(())
    }

    fn wal_start(&self) -> Lsn {
        self.wal_start
    }

    fn remove_wal_below(&mut self, lsn: Lsn) -> Result<Lsn> {
        let lsn = lsn.min(self.end);
        let (first_kept, _) = segment_of(lsn);
        let mut removed_any = false;
        for segno in list_segments(&self.dir)? {
            if segno >= first_kept {
                break;
            }
            let path = self.dir.join(segment_name(segno));
            std::fs::remove_file(&path)
                .map_err(io_context(format!("removing {}", path.display())))?;
            self.open_segments.remove(&segno);
            removed_any = true;
        }
        if removed_any {
            control_file::sync_dir(&self.dir)?;
            info!(dir = %self.dir.display(), "removed offloaded WAL below {}", Lsn(first_kept * SEGMENT_BYTES));
        }
        self.wal_start = self.wal_start.max(Lsn(first_kept * SEGMENT_BYTES));
        Ok(self.wal_start)
    }

    fn read_wal_raw(&mut self, start: Lsn, end: Lsn) -> Result<Vec<u8>> {
        if start < self.wal_start {
            return Err(SafekeeperError::WalOffloaded {
                lsn: start,
                wal_start: self.wal_start,
            });
        }
        if start > end || end > self.end {
            return Err(SafekeeperError::Internal(format!(
                "WAL read {start}..{end} outside the written WAL (ends at {})",
                self.end
            )));
        }
        let mut out = vec![0u8; (end.0 - start.0) as usize];
        let mut done = 0;
        while done < out.len() {
            let pos = start.add(done as u64);
            let (segno, offset) = segment_of(pos);
            let n_bytes = (out.len() - done).min((SEGMENT_BYTES - offset) as usize);
            let path = self.dir.join(segment_name(segno));
            let read = |file: &File, buf: &mut [u8]| file.read_exact_at(buf, offset);
            let result = match self.open_segments.get(&segno) {
                Some(file) => read(file, &mut out[done..done + n_bytes]),
                None => {
                    File::open(&path).and_then(|file| read(&file, &mut out[done..done + n_bytes]))
                }
            };
            result.map_err(|e| match e.kind() {
                // Bytes below the written end that are not there: lost, as if corrupt.
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::NotFound => {
                    SafekeeperError::Corrupt(format!(
                        "WAL at {pos} is missing from {}: {e}",
                        path.display()
                    ))
                }
                _ => io_context(format!("reading WAL at {pos} from {}", path.display()))(e),
            })?;
            done += n_bytes;
        }
        Ok(out)
    }
}

#[cfg(test)]
#[path = "wal_storage_tests.rs"]
pub(crate) mod tests;
