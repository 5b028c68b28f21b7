//! The control file of a timeline: its [`ControlState`] on disk.
//!
//! ```text
//! +------------+--------------+-------------+-----------------------+------------+
//! | magic (8)  | version: u32 | length: u32 | payload (length bytes) | crc32c: u32 |
//! +------------+--------------+-------------+-----------------------+------------+
//! payload = term: u64, flush_lsn: u64, commit_lsn: u64,
//!           backup_lsn: u64, remote_consistent_lsn: u64,        (version 2 on)
//!           timeline_start_lsn: u64,                             (version 3 on)
//!           n_entries: u32, n_entries x (term: u64, start_lsn: u64)
//! ```
//!
//! Version 1 files (without the two offload LSNs) are read as if both were 0; version 1 and
//! 2 files (written before branches) as timelines starting at 0. A decoded state must have
//! `timeline_start_lsn <= commit_lsn <= flush_lsn` and the offload LSNs at or above the start.
//!
//! Integers are big-endian; the CRC32C covers every byte before it. The file is replaced
//! atomically: written to `control.tmp`, fsynced, renamed over `control`, and the folder
//! fsynced, so a crash leaves either the old or the new state. A file that fails any check
//! is an error: the timeline is not served rather than served from a guess.
//!
//! Does blocking file I/O: call it from a blocking thread.

use std::io::Write;
use std::path::Path;

use safekeeper_api::{TermEntry, TermHistory};
use wire::{Decoder, Encoder};

use crate::acceptor::{validate_term_history, ControlState};
use crate::error::{io_context, Result, SafekeeperError};
use crate::limits::CONTROL_FILE_BYTES_MAX;

pub const CONTROL_FILE_NAME: &str = "control";
const CONTROL_TEMP_FILE_NAME: &str = "control.tmp";
const MAGIC: [u8; 8] = *b"OMSKCTRL";
/// Version of the control file layout written.
pub const CONTROL_FORMAT_VERSION: u32 = 3;
/// The oldest layout still read.
const CONTROL_FORMAT_VERSION_MIN: u32 = 1;
const HEADER_BYTES: usize = 16;
const CRC_BYTES: usize = 4;

pub fn encode(control: &ControlState) -> Vec<u8> {
    let mut payload = Encoder::default();
    payload
        .u64(control.term)
        .lsn(control.flush_lsn)
        .lsn(control.commit_lsn)
        .lsn(control.backup_lsn)
        .lsn(control.remote_consistent_lsn)
        .lsn(control.timeline_start_lsn);
    payload.u32(control.term_history.0.len() as u32);
    for entry in &control.term_history.0 {
        payload.u64(entry.term).lsn(entry.start_lsn);
    }
    let payload = payload.finish();
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len() + CRC_BYTES);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&CONTROL_FORMAT_VERSION.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&payload);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

pub fn decode(bytes: &[u8]) -> Result<ControlState> {
    let corrupt = |reason: String| SafekeeperError::Corrupt(format!("control file: {reason}"));
    if bytes.len() < HEADER_BYTES + CRC_BYTES {
        return Err(corrupt(format!("only {} bytes long", bytes.len())));
    }
    if bytes[..8] != MAGIC {
        return Err(corrupt("bad magic (not a safekeeper control file)".into()));
    }
    let (body, crc) = bytes.split_at(bytes.len() - CRC_BYTES);
    let stored = u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let computed = crc32c::crc32c(body);
    if stored != computed {
        return Err(corrupt(format!(
            "checksum mismatch (stored {stored:08x}, computed {computed:08x})"
        )));
    }
    let version = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if !(CONTROL_FORMAT_VERSION_MIN..=CONTROL_FORMAT_VERSION).contains(&version) {
        return Err(corrupt(format!(
            "unsupported version {version} (this build reads {CONTROL_FORMAT_VERSION_MIN} to {CONTROL_FORMAT_VERSION})"
        )));
    }
    let length = u32::from_be_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) as usize;
    if length != body.len() - HEADER_BYTES {
        return Err(corrupt(format!(
            "payload length {length} does not match the file"
        )));
    }
    let wire_error = |e: wire::WireError| corrupt(e.to_string());
    let mut decoder = Decoder::new(&body[HEADER_BYTES..], "control file");
    let term = decoder.u64().map_err(wire_error)?;
    let flush_lsn = decoder.lsn().map_err(wire_error)?;
    let commit_lsn = decoder.lsn().map_err(wire_error)?;
    let (backup_lsn, remote_consistent_lsn) = if version >= 2 {
        (
            decoder.lsn().map_err(wire_error)?,
            decoder.lsn().map_err(wire_error)?,
        )
    } else {
        (ids::Lsn::ZERO, ids::Lsn::ZERO)
    };
    let timeline_start_lsn = if version >= 3 {
        decoder.lsn().map_err(wire_error)?
    } else {
        ids::Lsn::ZERO
    };
    let n_entries = decoder.count(16).map_err(wire_error)?;
    let mut entries = Vec::with_capacity(n_entries);
    for _ in 0..n_entries {
        entries.push(TermEntry {
            term: decoder.u64().map_err(wire_error)?,
            start_lsn: decoder.lsn().map_err(wire_error)?,
        });
    }
    decoder.finish().map_err(wire_error)?;
    let control = ControlState {
        term,
        term_history: TermHistory(entries),
        flush_lsn,
        commit_lsn,
        backup_lsn,
        remote_consistent_lsn,
        timeline_start_lsn,
    };
    validate_term_history(&control.term_history, control.term).map_err(corrupt)?;
    control.validate_lsns().map_err(corrupt)?;
    Ok(control)
}

/// Reads the control file of the timeline folder `dir`; `None` if there is none.
pub fn read(dir: &Path) -> Result<Option<ControlState>> {
    let path = dir.join(CONTROL_FILE_NAME);
    let file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_context(format!("opening {}", path.display()))(e)),
    };
    let len = file
        .metadata()
        .map_err(io_context(format!("reading {}", path.display())))?
        .len();
    if len > CONTROL_FILE_BYTES_MAX as u64 {
        return Err(SafekeeperError::Corrupt(format!(
            "control file {} is {len} bytes, above the limit of {CONTROL_FILE_BYTES_MAX}",
            path.display()
        )));
    }
    let bytes = std::fs::read(&path).map_err(io_context(format!("reading {}", path.display())))?;
    decode(&bytes).map(Some).map_err(|e| match e {
        SafekeeperError::Corrupt(reason) => {
            SafekeeperError::Corrupt(format!("{}: {reason}", path.display()))
        }
        other => other,
    })
}

/// Replaces the control file of `dir` durably and atomically.
pub fn write(dir: &Path, control: &ControlState) -> Result<()> {
    let bytes = encode(control);
    assert!(
        bytes.len() <= CONTROL_FILE_BYTES_MAX,
        "term history length is bounded on input"
    );
    let temp_path = dir.join(CONTROL_TEMP_FILE_NAME);
    let path = dir.join(CONTROL_FILE_NAME);
    let mut file = std::fs::File::create(&temp_path)
        .map_err(io_context(format!("creating {}", temp_path.display())))?;
    file.write_all(&bytes)
        .map_err(io_context(format!("writing {}", temp_path.display())))?;
    file.sync_all()
        .map_err(io_context(format!("fsyncing {}", temp_path.display())))?;
    drop(file);
    std::fs::rename(&temp_path, &path)
        .map_err(io_context(format!("renaming {}", temp_path.display())))?;
    sync_dir(dir)
}

/// fsyncs a folder, so that files created, renamed or removed in it stay so after a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_context(format!("fsyncing folder {}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ids::Lsn;

    #[test]
    fn control_round_trip_and_every_flipped_bit_is_caught() {
        let control = ControlState {
            term: 7,
            term_history: TermHistory(vec![
                TermEntry {
                    term: 2,
                    start_lsn: Lsn(0),
                },
                TermEntry {
                    term: 7,
                    start_lsn: Lsn(4096),
                },
            ]),
            flush_lsn: Lsn(5000),
            commit_lsn: Lsn(4500),
            backup_lsn: Lsn(4000),
            remote_consistent_lsn: Lsn(4200),
            timeline_start_lsn: Lsn(0),
        };
        let branch = ControlState {
            term: 2,
            term_history: TermHistory(vec![TermEntry {
                term: 2,
                start_lsn: Lsn(70_000_123),
            }]),
            flush_lsn: Lsn(70_000_500),
            commit_lsn: Lsn(70_000_400),
            backup_lsn: Lsn(70_000_123),
            remote_consistent_lsn: Lsn(70_000_200),
            timeline_start_lsn: Lsn(70_000_123),
        };
        assert_eq!(decode(&encode(&branch)).unwrap(), branch);
        let new = ControlState::new_timeline(Lsn(70_000_123));
        assert_eq!(decode(&encode(&new)).unwrap(), new);
        let bytes = encode(&control);
        assert_eq!(decode(&bytes).unwrap(), control);
        for idx in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[idx] ^= 0x04;
            assert!(decode(&bad).is_err(), "flip at byte {idx} not caught");
        }
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut} not caught");
        }
    }

    /// A control file of layout `version` with `payload`, as an older build wrote it.
    fn file_of_version(version: u32, payload: &[u8]) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&version.to_be_bytes());
        bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        bytes.extend_from_slice(payload);
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_be_bytes());
        bytes
    }

    #[test]
    fn version_2_files_read_as_timelines_starting_at_zero() {
        let mut payload = Encoder::default();
        payload
            .u64(3)
            .lsn(Lsn(900))
            .lsn(Lsn(800))
            .lsn(Lsn(700))
            .lsn(Lsn(600))
            .u32(1)
            .u64(3)
            .lsn(Lsn(0));
        let control = decode(&file_of_version(2, &payload.finish())).unwrap();
        assert_eq!(
            control,
            ControlState {
                term: 3,
                term_history: TermHistory(vec![TermEntry {
                    term: 3,
                    start_lsn: Lsn(0)
                }]),
                flush_lsn: Lsn(900),
                commit_lsn: Lsn(800),
                backup_lsn: Lsn(700),
                remote_consistent_lsn: Lsn(600),
                timeline_start_lsn: Lsn::ZERO,
            }
        );
    }

    #[test]
    fn lsns_below_the_timeline_start_are_refused() {
        let start = Lsn(10_000);
        let bad_states = [
            ControlState {
                commit_lsn: Lsn(9_999),
                ..ControlState::new_timeline(start)
            },
            ControlState {
                backup_lsn: Lsn(9_999),
                ..ControlState::new_timeline(start)
            },
            ControlState {
                remote_consistent_lsn: Lsn(0),
                ..ControlState::new_timeline(start)
            },
            ControlState {
                flush_lsn: Lsn(9_999),
                commit_lsn: Lsn(9_999),
                ..ControlState::new_timeline(start)
            },
        ];
        for control in bad_states {
            let err = decode(&encode(&control)).unwrap_err().to_string();
            assert!(err.contains("below the timeline's start"), "{err}");
        }
    }

    #[test]
    fn version_1_files_read_with_zero_offload_lsns() {
        let mut payload = Encoder::default();
        payload
            .u64(3)
            .lsn(Lsn(900))
            .lsn(Lsn(800))
            .u32(1)
            .u64(3)
            .lsn(Lsn(0));
        let control = decode(&file_of_version(1, &payload.finish())).unwrap();
        assert_eq!(
            (control.flush_lsn, control.commit_lsn),
            (Lsn(900), Lsn(800))
        );
        assert_eq!(
            (
                control.backup_lsn,
                control.remote_consistent_lsn,
                control.timeline_start_lsn
            ),
            (Lsn::ZERO, Lsn::ZERO, Lsn::ZERO)
        );
    }
}
