//! WAL segment files and recovery, on a real temporary folder.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use safekeeper_api::{Request, Response, TermEntry, TermHistory};
use wal::{Op, Transaction};

use super::*;
use crate::acceptor::{Acceptor, ProposerSession};

/// A unique folder under the system temp folder, removed when dropped.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(name: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let unique = format!(
            "omendb-safekeeper-{name}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(unique);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn record(xid: u64, value_bytes: usize) -> Bytes {
    let txn = Transaction {
        xid,
        commit_time_us: 0,
        ops: vec![Op::Put {
            table: 3,
            key: Bytes::from(xid.to_be_bytes().to_vec()),
            value: Bytes::from(vec![xid as u8; value_bytes]),
        }],
    };
    wal::encode_record(&txn).unwrap()
}

const TIMELINE: u128 = 0xabc;

/// Opens the test timeline, creating it (WAL from 0) if the folder does not have it.
fn open(dir: &TempDir) -> WalStorage {
    open_at(dir, Lsn::ZERO)
}

/// Opens the test timeline, creating it with its WAL starting at `start_lsn` if needed.
fn open_at(dir: &TempDir, start_lsn: Lsn) -> WalStorage {
    let timeline = TimelineId::from_u128(TIMELINE);
    match WalStorage::open_existing(&dir.0, timeline).unwrap() {
        Some(storage) => storage,
        None => WalStorage::create(&dir.0, timeline, start_lsn).unwrap(),
    }
}

/// Writes `records` at the storage's end and fsyncs; returns all bytes written.
fn write_records(storage: &mut WalStorage, records: &[Bytes]) -> Vec<u8> {
    let mut written = Vec::new();
    for record in records {
        let end = storage.end;
        storage.write_wal(end, record).unwrap();
        written.extend_from_slice(record);
    }
    storage.sync_wal().unwrap();
    written
}

fn read_all(storage: &mut WalStorage, start: Lsn) -> Result<Vec<u8>> {
    let end = storage.end;
    let mut out = Vec::new();
    let mut pos = start;
    while pos < end {
        let data = storage.read_records(pos, end, 1 << 20)?;
        assert!(!data.is_empty());
        pos = pos.add(data.len() as u64);
        out.extend_from_slice(&data);
    }
    Ok(out)
}

fn segment_len(storage: &WalStorage, segno: u64) -> Option<u64> {
    std::fs::metadata(storage.dir().join(segment_name(segno)))
        .ok()
        .map(|m| m.len())
}

#[test]
fn segment_names_round_trip() {
    assert_eq!(segment_name(0x1f), "000000000000001F");
    assert_eq!(parse_segment_name("000000000000001F"), Some(0x1f));
    assert_eq!(parse_segment_name("000000000000001f"), None);
    assert_eq!(parse_segment_name("control"), None);
    assert_eq!(segment_of(Lsn(SEGMENT_BYTES + 5)), (1, 5));
}

#[test]
fn append_across_a_segment_boundary_and_reopen() {
    let dir = TempDir::new("segments");
    let mut storage = open(&dir);
    // Nine 2 MiB records: the eighth spans segments 0 and 1.
    let records: Vec<Bytes> = (0..9).map(|xid| record(xid, 2 << 20)).collect();
    let written = write_records(&mut storage, &records);
    let end = Lsn(written.len() as u64);
    assert!(end.0 > SEGMENT_BYTES);
    assert_eq!(segment_len(&storage, 0), Some(SEGMENT_BYTES));
    assert_eq!(segment_len(&storage, 1), Some(end.0 - SEGMENT_BYTES));
    assert_eq!(read_all(&mut storage, Lsn::ZERO).unwrap(), written);
    drop(storage);

    // The control file still says 0: reopening scans all records, across the boundary.
    let mut storage = open(&dir);
    assert_eq!(storage.wal_end(), end);
    assert_eq!(read_all(&mut storage, Lsn::ZERO).unwrap(), written);
}

#[test]
fn acceptor_state_survives_reopen() {
    let dir = TempDir::new("reopen");
    let mut acceptor = Acceptor::open(open(&dir)).unwrap();
    let mut session = ProposerSession::default();
    acceptor
        .handle(&mut session, Request::RequestVote { term: 3 })
        .unwrap();
    let history = TermHistory(vec![TermEntry {
        term: 3,
        start_lsn: Lsn::ZERO,
    }]);
    let elected = Request::Elected {
        term: 3,
        term_history: history.clone(),
        truncate_lsn: Lsn::ZERO,
    };
    acceptor.handle(&mut session, elected).unwrap();
    let data = record(1, 100);
    let end = Lsn(data.len() as u64);
    let append = Request::Append {
        term: 3,
        begin_lsn: Lsn::ZERO,
        commit_lsn: end,
        data,
    };
    assert_eq!(
        acceptor.handle(&mut session, append).unwrap(),
        Response::Flushed {
            term: 3,
            flush_lsn: end
        }
    );
    acceptor.checkpoint().unwrap();
    let status = acceptor.status();
    drop(acceptor);
    let acceptor = Acceptor::open(open(&dir)).unwrap();
    assert_eq!(acceptor.status(), status);
    assert_eq!(status.term_history, history);
}

#[test]
fn a_torn_tail_is_cut_on_reopen() {
    let dir = TempDir::new("torn");
    let mut storage = open(&dir);
    let written = write_records(&mut storage, &[record(1, 100), record(2, 100)]);
    let end = written.len() as u64;
    let segment_path = storage.dir().join(segment_name(0));
    drop(storage);

    let half_record = record(3, 100);
    let tails: Vec<Vec<u8>> = vec![
        half_record[..half_record.len() / 2].to_vec(),
        half_record[..3].to_vec(),
        vec![0u8; 4096],
        b"garbage that is not a record at all".to_vec(),
    ];
    for tail in tails {
        let mut file = OpenOptions::new().append(true).open(&segment_path).unwrap();
        file.write_all(&tail).unwrap();
        drop(file);
        let mut storage = open(&dir);
        assert_eq!(storage.wal_end(), Lsn(end));
        assert_eq!(
            std::fs::metadata(&segment_path).unwrap().len(),
            end,
            "the tail was cut from the file"
        );
        assert_eq!(read_all(&mut storage, Lsn::ZERO).unwrap(), written);
    }
}

#[test]
fn a_torn_record_spanning_into_a_new_segment_is_cut() {
    let dir = TempDir::new("torn-span");
    let mut storage = open(&dir);
    let records: Vec<Bytes> = (0..7).map(|xid| record(xid, 2 << 20)).collect();
    let written = write_records(&mut storage, &records);
    let end = Lsn(written.len() as u64);
    assert!(end.0 < SEGMENT_BYTES);
    // Half of a record that would cross into segment 1 reaches the disk, then a crash.
    let spanning = record(8, 4 << 20);
    let half = &spanning[..(SEGMENT_BYTES - end.0) as usize + 1000];
    storage.write_wal(end, half).unwrap();
    storage.sync_wal().unwrap();
    assert_eq!(segment_len(&storage, 1), Some(1000));
    drop(storage);

    let mut storage = open(&dir);
    assert_eq!(storage.wal_end(), end);
    assert_eq!(
        segment_len(&storage, 1),
        None,
        "the later segment was removed"
    );
    assert_eq!(segment_len(&storage, 0), Some(end.0));
    assert_eq!(read_all(&mut storage, Lsn::ZERO).unwrap(), written);
}

#[test]
fn a_flipped_bit_makes_reads_fail() {
    let dir = TempDir::new("bitflip");
    let mut storage = open(&dir);
    let records: Vec<Bytes> = (0..3).map(|xid| record(xid, 200)).collect();
    let written = write_records(&mut storage, &records);
    let record_bytes = records[0].len() as u64;
    // Flip one bit in the middle record's body, behind the storage's back.
    let segment_path = storage.dir().join(segment_name(0));
    let mut bytes = std::fs::read(&segment_path).unwrap();
    bytes[(record_bytes + 50) as usize] ^= 0x01;
    std::fs::write(&segment_path, &bytes).unwrap();

    let end = Lsn(written.len() as u64);
    let error = storage.read_records(Lsn::ZERO, end, 1 << 20).unwrap_err();
    assert!(
        matches!(error, SafekeeperError::CorruptRecord { lsn, ref reason }
            if lsn == Lsn(record_bytes) && reason.contains("checksum")),
        "{error}"
    );
    assert!(storage.read_records(Lsn(record_bytes), end, 0).is_err());
    // The record before it is still readable on its own.
    assert_eq!(storage.read_records(Lsn::ZERO, end, 1).unwrap(), records[0]);
}

#[test]
fn truncate_then_append() {
    let dir = TempDir::new("truncate");
    let mut storage = open(&dir);
    let records: Vec<Bytes> = (0..9).map(|xid| record(xid, 2 << 20)).collect();
    let written = write_records(&mut storage, &records);
    assert!(segment_len(&storage, 1).is_some());
    let cut = Lsn(3 * records[0].len() as u64);
    storage.truncate_wal(cut).unwrap();
    assert_eq!(segment_len(&storage, 1), None);
    assert_eq!(segment_len(&storage, 0), Some(cut.0));

    let new_records = [record(100, 10), record(101, 20)];
    let mut expected = BytesMut::from(&written[..cut.0 as usize]);
    expected.extend_from_slice(&write_records(&mut storage, &new_records));
    assert_eq!(read_all(&mut storage, Lsn::ZERO).unwrap(), expected);
    drop(storage);

    let mut storage = open(&dir);
    assert_eq!(storage.wal_end(), Lsn(expected.len() as u64));
    assert_eq!(read_all(&mut storage, Lsn::ZERO).unwrap(), expected);
}

#[test]
fn a_bad_control_file_is_refused() {
    let dir = TempDir::new("control");
    let mut storage = open(&dir);
    let control = ControlState {
        term: 9,
        ..ControlState::default()
    };
    storage.persist_control(&control).unwrap();
    let control_path = storage.dir().join(control_file::CONTROL_FILE_NAME);
    drop(storage);
    assert_eq!(open(&dir).control().term, 9);

    let mut bytes = std::fs::read(&control_path).unwrap();
    bytes[17] ^= 0x80;
    std::fs::write(&control_path, &bytes).unwrap();
    match WalStorage::open_existing(&dir.0, TimelineId::from_u128(TIMELINE)) {
        Err(SafekeeperError::Corrupt(message)) => {
            assert!(message.contains("checksum"), "{message}")
        }
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("a corrupt control file was accepted"),
    }
}

#[test]
fn a_control_file_pointing_past_the_wal_is_refused() {
    let dir = TempDir::new("control-past");
    let mut storage = open(&dir);
    write_records(&mut storage, &[record(1, 10)]);
    let control = ControlState {
        term: 1,
        flush_lsn: Lsn(10_000),
        ..ControlState::default()
    };
    storage.persist_control(&control).unwrap();
    drop(storage);
    assert!(matches!(
        WalStorage::open_existing(&dir.0, TimelineId::from_u128(TIMELINE)),
        Err(SafekeeperError::Corrupt(_))
    ));
}

/// A zeroed block and a truncated tail in the segment file of a running acceptor: reads fail
/// rather than return the bad bytes, and the acceptor cuts its WAL before the first damaged
/// record (durably: a restart finds the same end), keeping everything before it.
#[test]
fn zeroed_block_and_truncated_tail_are_cut_not_served() {
    for damage in ["zeroed block", "truncated tail"] {
        let dir = TempDir::new("damage");
        let records: Vec<Bytes> = (0..40).map(|xid| record(xid, 300)).collect();
        let record_bytes = records[0].len() as u64;
        let mut storage = open(&dir);
        let written = write_records(&mut storage, &records);
        let mut control = storage.control().clone();
        control.flush_lsn = Lsn(written.len() as u64);
        control.commit_lsn = control.flush_lsn;
        storage.persist_control(&control).unwrap();
        let segment_path = storage.dir().join(segment_name(0));
        let mut acceptor = Acceptor::open(WalStorage::open(storage.dir()).unwrap()).unwrap();
        assert_eq!(acceptor.flush_lsn(), Lsn(written.len() as u64));

        // Damage starting inside record 10.
        let first_bad = 10;
        let at = first_bad * record_bytes + 17;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&segment_path)
            .unwrap();
        match damage {
            "zeroed block" => file.write_all_at(&[0u8; 4096], at).unwrap(),
            _ => file.set_len(at).unwrap(),
        }
        drop(file);

        let read = acceptor.read_committed(Lsn::ZERO, usize::MAX);
        assert!(
            matches!(read, Err(SafekeeperError::CorruptRecord { .. })),
            "{damage}: {read:?}"
        );
        let cut = Lsn(first_bad * record_bytes);
        assert_eq!(acceptor.flush_lsn(), cut, "{damage}");
        assert_eq!(acceptor.commit_lsn(), cut, "{damage}");
        let (kept, _) = acceptor.read_committed(Lsn::ZERO, usize::MAX).unwrap();
        assert_eq!(&kept[..], &written[..cut.0 as usize], "{damage}");
        // A restart finds the same end: the cut was durable.
        drop(acceptor);
        let acceptor = Acceptor::open(
            WalStorage::open(&segment_path.parent().unwrap().to_path_buf()).unwrap(),
        )
        .unwrap();
        assert_eq!(acceptor.flush_lsn(), cut, "{damage} after restart");
    }
}

/// A branch's start: inside segment 3.
const BRANCH_START: Lsn = Lsn(3 * SEGMENT_BYTES + 4_321);

#[test]
fn a_timeline_created_at_a_start_lsn_has_its_wal_from_there() {
    let dir = TempDir::new("branch");
    let timeline = TimelineId::from_u128(TIMELINE);
    let storage = WalStorage::create(&dir.0, timeline, BRANCH_START).unwrap();
    assert_eq!(storage.control(), &ControlState::new_timeline(BRANCH_START));
    assert_eq!(
        (storage.wal_start(), storage.wal_end()),
        (BRANCH_START, BRANCH_START)
    );
    assert_eq!(segment_len(&storage, 3), None, "no WAL file before WAL");
    // Creating it again is refused and changes nothing.
    assert!(WalStorage::create(&dir.0, timeline, Lsn::ZERO).is_err());
    drop(storage);
    let mut storage = open(&dir);
    assert_eq!(storage.control(), &ControlState::new_timeline(BRANCH_START));
    assert_eq!(storage.wal_end(), BRANCH_START);

    // The first segment is written from the start's offset: a hole before it.
    let records: Vec<Bytes> = (0..3).map(|xid| record(xid, 100)).collect();
    let written = write_records(&mut storage, &records);
    let end = BRANCH_START.add(written.len() as u64);
    assert_eq!(
        segment_len(&storage, 3),
        Some(end.0 - 3 * SEGMENT_BYTES),
        "only segment 3"
    );
    assert_eq!(read_all(&mut storage, BRANCH_START).unwrap(), written);
    assert!(matches!(
        storage.read_records(Lsn(3 * SEGMENT_BYTES), end, 1 << 20),
        Err(SafekeeperError::WalOffloaded { wal_start, .. }) if wal_start == BRANCH_START
    ));
    let segment_path = storage.dir().join(segment_name(3));
    drop(storage);

    // Garbage in the hole is never read: reopening scans from the start (the control
    // file's flush LSN), and reads below it are refused.
    let file = OpenOptions::new().write(true).open(&segment_path).unwrap();
    file.write_all_at(&[0xA5; 4_321], 0).unwrap();
    drop(file);
    let mut storage = open(&dir);
    assert_eq!(
        (storage.wal_start(), storage.wal_end()),
        (BRANCH_START, end)
    );
    assert_eq!(read_all(&mut storage, BRANCH_START).unwrap(), written);

    // Truncation back to the start keeps the hole only; the start survives a reopen.
    storage.truncate_wal(BRANCH_START).unwrap();
    drop(storage);
    let storage = open(&dir);
    assert_eq!(
        (storage.wal_start(), storage.wal_end()),
        (BRANCH_START, BRANCH_START)
    );
    assert_eq!(storage.control().timeline_start_lsn, BRANCH_START);
}

#[test]
fn only_a_control_file_makes_a_folder_a_timeline() {
    let dir = TempDir::new("existing");
    let timeline = TimelineId::from_u128(TIMELINE);
    let folder = timeline_dir(&dir.0, timeline);
    // Nothing there: none, and nothing is created.
    assert!(WalStorage::open_existing(&dir.0, timeline)
        .unwrap()
        .is_none());
    assert!(!folder.exists());
    // A folder left by a creation that a crash interrupted: not a timeline, and creation
    // can finish later.
    std::fs::create_dir_all(&folder).unwrap();
    assert!(WalStorage::open_existing(&dir.0, timeline)
        .unwrap()
        .is_none());
    WalStorage::create(&dir.0, timeline, BRANCH_START).unwrap();
    assert_eq!(
        WalStorage::open_existing(&dir.0, timeline)
            .unwrap()
            .unwrap()
            .control()
            .timeline_start_lsn,
        BRANCH_START
    );
    // WAL without a control file is not something to start afresh over.
    std::fs::remove_file(folder.join(control_file::CONTROL_FILE_NAME)).unwrap();
    std::fs::write(folder.join(segment_name(3)), b"wal").unwrap();
    assert!(matches!(
        WalStorage::open_existing(&dir.0, timeline),
        Err(SafekeeperError::Corrupt(_))
    ));
    assert!(WalStorage::create(&dir.0, timeline, BRANCH_START).is_err());
}

/// Everything removed up to a flush LSN that ends exactly at a segment boundary (the
/// segment holding the byte before it is gone and the next one was never written): the
/// timeline still opens, with its local WAL starting at its end.
#[test]
fn wal_removed_up_to_a_segment_boundary_reopens() {
    let dir = TempDir::new("removed-boundary");
    let data = record(1, 100);
    let start = Lsn(SEGMENT_BYTES - data.len() as u64);
    let mut storage = open_at(&dir, start);
    write_records(&mut storage, &[data]);
    let end = Lsn(SEGMENT_BYTES);
    storage
        .persist_control(&ControlState {
            flush_lsn: end,
            commit_lsn: end,
            backup_lsn: end,
            remote_consistent_lsn: end,
            ..ControlState::new_timeline(start)
        })
        .unwrap();
    assert_eq!(storage.remove_wal_below(end).unwrap(), end);
    assert_eq!(segment_len(&storage, 0), None);
    drop(storage);
    let storage = open(&dir);
    assert_eq!((storage.wal_start(), storage.wal_end()), (end, end));
}
