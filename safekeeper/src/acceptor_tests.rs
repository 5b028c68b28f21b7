//! The acceptor's rules, on the crash-modelling in-memory storage.

use bytes::{Bytes, BytesMut};
use ids::Lsn;
use safekeeper_api::{Request, Response, TermEntry, TermHistory};
use wal::{Op, Transaction};

use super::*;
use crate::memory_storage::MemoryStorage;

fn record(xid: u64, value_bytes: usize) -> Bytes {
    let txn = Transaction {
        xid,
        commit_time_us: 0,
        ops: vec![Op::Put {
            table: 1,
            key: Bytes::from(xid.to_be_bytes().to_vec()),
            value: Bytes::from(vec![7u8; value_bytes]),
        }],
    };
    wal::encode_record(&txn).unwrap()
}

fn history(entries: &[(u64, u64)]) -> TermHistory {
    TermHistory(
        entries
            .iter()
            .map(|&(term, lsn)| TermEntry {
                term,
                start_lsn: Lsn(lsn),
            })
            .collect(),
    )
}

fn acceptor() -> Acceptor<MemoryStorage> {
    Acceptor::open(MemoryStorage::new()).unwrap()
}

/// Crashes the acceptor's storage (keeping `unsynced_bytes_kept` of its unsynced WAL) and
/// opens a new acceptor on what survived.
fn restart(
    acceptor: Acceptor<MemoryStorage>,
    unsynced_bytes_kept: usize,
) -> Acceptor<MemoryStorage> {
    Acceptor::open(acceptor.into_storage().crash(unsynced_bytes_kept).unwrap()).unwrap()
}

fn vote(acceptor: &mut Acceptor<MemoryStorage>, term: u64) -> bool {
    let mut session = ProposerSession::default();
    match acceptor
        .handle(&mut session, Request::RequestVote { term })
        .unwrap()
    {
        Response::Vote { granted, status } => {
            assert_eq!(
                status,
                acceptor.status(),
                "the vote reports the state after it"
            );
            granted
        }
        other => panic!("unexpected {other:?}"),
    }
}

fn elect(
    acceptor: &mut Acceptor<MemoryStorage>,
    term: u64,
    entries: &[(u64, u64)],
    truncate_lsn: u64,
) -> (ProposerSession, Response) {
    let mut session = ProposerSession::default();
    let request = Request::Elected {
        term,
        term_history: history(entries),
        truncate_lsn: Lsn(truncate_lsn),
    };
    let response = acceptor.handle(&mut session, request).unwrap();
    (session, response)
}

fn append(
    acceptor: &mut Acceptor<MemoryStorage>,
    session: &mut ProposerSession,
    term: u64,
    begin: u64,
    commit: u64,
    data: Bytes,
) -> Response {
    let request = Request::Append {
        term,
        begin_lsn: Lsn(begin),
        commit_lsn: Lsn(commit),
        data,
    };
    acceptor.handle(session, request).unwrap()
}

/// Elects `term` on a fresh acceptor and appends `records`; returns the session and end LSN.
fn elected_with(
    acceptor: &mut Acceptor<MemoryStorage>,
    term: u64,
    records: &[Bytes],
) -> (ProposerSession, u64) {
    assert!(vote(acceptor, term));
    let start = acceptor.flush_lsn().0;
    let (mut session, response) = elect(acceptor, term, &[(term, start)], start);
    assert_eq!(
        response,
        Response::Flushed {
            term,
            flush_lsn: Lsn(start)
        }
    );
    let mut end = start;
    for record in records {
        let response = append(acceptor, &mut session, term, end, 0, record.clone());
        end += record.len() as u64;
        assert_eq!(
            response,
            Response::Flushed {
                term,
                flush_lsn: Lsn(end)
            }
        );
    }
    (session, end)
}

#[test]
fn votes_once_per_term() {
    let mut acceptor = acceptor();
    assert!(vote(&mut acceptor, 1));
    assert!(!vote(&mut acceptor, 1), "a second vote in the same term");
    assert!(!vote(&mut acceptor, 0));
    assert!(vote(&mut acceptor, 5));
    assert!(!vote(&mut acceptor, 3));
    assert_eq!(acceptor.term(), 5);
}

#[test]
fn term_is_persisted_before_the_vote_is_answered() {
    // A granted vote survives a crash right after the answer.
    let mut acceptor = acceptor();
    assert!(vote(&mut acceptor, 4));
    let mut acceptor = restart(acceptor, 0);
    assert_eq!(acceptor.term(), 4);
    assert!(
        !vote(&mut acceptor, 4),
        "a restarted acceptor must not vote twice in a term"
    );

    // If the term cannot be persisted, no vote is given and the acceptor stops.
    let mut storage = MemoryStorage::new();
    storage.faults.persist_control = true;
    let mut acceptor = Acceptor::open(storage).unwrap();
    let mut session = ProposerSession::default();
    assert!(acceptor
        .handle(&mut session, Request::RequestVote { term: 1 })
        .is_err());
    assert!(matches!(
        acceptor.handle(&mut session, Request::RequestVote { term: 2 }),
        Err(SafekeeperError::Broken(_))
    ));
    let acceptor = restart(acceptor, 0);
    assert_eq!(acceptor.term(), 0);
}

#[test]
fn appends_need_the_current_elected_term_and_fence_older_proposers() {
    let mut acceptor = acceptor();
    let records = [record(1, 10), record(2, 20)];
    let (mut old_session, end) = elected_with(&mut acceptor, 1, &records);

    // A connection that was never elected cannot append, even in the current term.
    let mut stranger = ProposerSession::default();
    let response = append(&mut acceptor, &mut stranger, 1, end, 0, record(3, 5));
    assert!(matches!(response, Response::Error { .. }), "{response:?}");

    // A newer proposer is voted and elected: the old one is fenced.
    assert!(vote(&mut acceptor, 2));
    let response = append(&mut acceptor, &mut old_session, 1, end, end, record(3, 5));
    assert_eq!(response, Response::Rejected { term: 2 });
    let (mut new_session, response) = elect(&mut acceptor, 2, &[(1, 0), (2, end)], end);
    assert_eq!(
        response,
        Response::Flushed {
            term: 2,
            flush_lsn: Lsn(end)
        }
    );
    let response = append(&mut acceptor, &mut old_session, 1, end, end, record(3, 5));
    assert_eq!(response, Response::Rejected { term: 2 });
    let (_, response) = elect(&mut acceptor, 1, &[(1, 0)], 0);
    assert_eq!(response, Response::Rejected { term: 2 });
    assert_eq!(
        acceptor.flush_lsn(),
        Lsn(end),
        "the fenced proposer changed nothing"
    );
    assert_eq!(acceptor.commit_lsn(), Lsn::ZERO);

    // An append naming a term above the acceptor's is an error, not an implicit election.
    let response = append(&mut acceptor, &mut new_session, 3, end, 0, record(3, 5));
    assert!(matches!(response, Response::Error { .. }), "{response:?}");
    let next = record(3, 5);
    let response = append(&mut acceptor, &mut new_session, 2, end, 0, next.clone());
    assert_eq!(
        response,
        Response::Flushed {
            term: 2,
            flush_lsn: Lsn(end + next.len() as u64)
        }
    );
}

#[test]
fn bad_appends_change_nothing() {
    let mut acceptor = acceptor();
    let (mut session, end) = elected_with(&mut acceptor, 1, &[record(1, 10)]);
    let before = acceptor.status();
    let next = record(2, 10);
    let cases: Vec<(u64, Bytes, &str)> = vec![
        (end + 1, next.clone(), "not this safekeeper's flush_lsn"),
        (end - 1, next.clone(), "not this safekeeper's flush_lsn"),
        (end, next.slice(..next.len() - 1), "partial record"),
        (
            end,
            Bytes::from_static(&[0, 0, 0, 1, 0, 0, 0, 0, 1]),
            "checksum",
        ),
        (end, Bytes::from_static(&[0xff; 16]), "bad record length"),
    ];
    for (begin, data, expected) in cases {
        match append(&mut acceptor, &mut session, 1, begin, end, data) {
            Response::Error { message } => assert!(message.contains(expected), "{message}"),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(acceptor.status(), before);
    }
    // The error for a wrong LSN names both LSNs.
    match append(&mut acceptor, &mut session, 1, 999, 0, next) {
        Response::Error { message } => {
            assert!(
                message.contains(&Lsn(999).to_string()) && message.contains(&Lsn(end).to_string()),
                "{message}"
            )
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn commit_lsn_is_capped_by_flush_and_never_goes_back() {
    let mut acceptor = acceptor();
    let (mut session, end) = elected_with(&mut acceptor, 1, &[record(1, 10)]);
    // A commit LSN beyond what this acceptor has is capped at its flush LSN.
    let response = append(&mut acceptor, &mut session, 1, end, 10_000, Bytes::new());
    assert_eq!(
        response,
        Response::Flushed {
            term: 1,
            flush_lsn: Lsn(end)
        }
    );
    assert_eq!(acceptor.commit_lsn(), Lsn(end));
    // A lower one does not move it back.
    append(&mut acceptor, &mut session, 1, end, 3, Bytes::new());
    assert_eq!(acceptor.commit_lsn(), Lsn(end));
    // An append's own data counts as flushed for its commit LSN.
    let second = record(2, 10);
    let new_end = end + second.len() as u64;
    append(&mut acceptor, &mut session, 1, end, new_end, second);
    assert_eq!(acceptor.commit_lsn(), Lsn(new_end));
    // The commit LSN is persisted by a checkpoint (clean shutdown).
    acceptor.checkpoint().unwrap();
    let acceptor = restart(acceptor, 0);
    assert_eq!(acceptor.commit_lsn(), Lsn(new_end));
    assert_eq!(acceptor.flush_lsn(), Lsn(new_end));
}

#[test]
fn election_truncates_a_divergent_tail() {
    let mut acceptor = acceptor();
    let records = [record(1, 10), record(2, 10), record(3, 10)];
    let (mut old_session, end) = elected_with(&mut acceptor, 1, &records);
    append(
        &mut acceptor,
        &mut old_session,
        1,
        end,
        records[0].len() as u64,
        Bytes::new(),
    );
    let agreed = records[0].len() as u64;
    let before = acceptor.status();

    assert!(vote(&mut acceptor, 2));
    // Refused without a change: above flush, below commit, or inside a record.
    for (truncate_lsn, expected) in [
        (end + 1, "above"),
        (agreed - 1, "committed"),
        (agreed + 1, "inside"),
    ] {
        let (_, response) = elect(&mut acceptor, 2, &[(1, 0), (2, agreed)], truncate_lsn);
        match response {
            Response::Error { message } => assert!(message.contains(expected), "{message}"),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(acceptor.flush_lsn(), before.flush_lsn);
        assert_eq!(acceptor.status().term_history, before.term_history);
    }
    // A history out of order is refused.
    let (_, response) = elect(&mut acceptor, 2, &[(2, 0), (1, 5)], agreed);
    assert!(matches!(response, Response::Error { .. }));

    let (mut session, response) = elect(&mut acceptor, 2, &[(1, 0), (2, agreed)], agreed);
    assert_eq!(
        response,
        Response::Flushed {
            term: 2,
            flush_lsn: Lsn(agreed)
        }
    );
    assert_eq!(
        acceptor.status().term_history,
        history(&[(1, 0), (2, agreed)])
    );
    let mut read_session = ProposerSession::default();
    let read = Request::ReadWal {
        start_lsn: Lsn(0),
        end_lsn: Lsn(end),
        max_bytes: 1 << 20,
    };
    assert_eq!(
        acceptor.handle(&mut read_session, read.clone()).unwrap(),
        Response::Wal {
            start_lsn: Lsn(0),
            data: records[0].clone()
        }
    );
    // The new term writes where the cut was, and it all survives a restart.
    let new_record = record(9, 30);
    let new_end = agreed + new_record.len() as u64;
    let response = append(
        &mut acceptor,
        &mut session,
        2,
        agreed,
        new_end,
        new_record.clone(),
    );
    assert_eq!(
        response,
        Response::Flushed {
            term: 2,
            flush_lsn: Lsn(new_end)
        }
    );
    let mut acceptor = restart(acceptor, 0);
    assert_eq!(acceptor.flush_lsn(), Lsn(new_end));
    assert_eq!(acceptor.term(), 2);
    let mut expected = BytesMut::from(&records[0][..]);
    expected.extend_from_slice(&new_record);
    assert_eq!(
        acceptor.handle(&mut read_session, read).unwrap(),
        Response::Wal {
            start_lsn: Lsn(0),
            data: expected.freeze()
        }
    );
}

#[test]
fn a_crash_during_an_election_leaves_a_consistent_state() {
    let mut acceptor = acceptor();
    let records = [record(1, 10), record(2, 10)];
    let (_, end) = elected_with(&mut acceptor, 1, &records);
    let agreed = records[0].len() as u64;
    assert!(vote(&mut acceptor, 2));
    let mut storage = acceptor.into_storage();
    storage.faults.truncate_wal = true;
    let mut acceptor = Acceptor::open(storage).unwrap();
    let mut session = ProposerSession::default();
    let request = Request::Elected {
        term: 2,
        term_history: history(&[(1, 0), (2, agreed)]),
        truncate_lsn: Lsn(agreed),
    };
    assert!(acceptor.handle(&mut session, request).is_err());
    // The old tail is still there, and still described by the old history.
    let acceptor = restart(acceptor, 0);
    assert_eq!(acceptor.flush_lsn(), Lsn(end));
    assert_eq!(acceptor.status().term_history, history(&[(1, 0)]));
    assert_eq!(acceptor.term(), 2);
}

#[test]
fn group_commit_fsyncs_once_and_answers_each() {
    let mut acceptor = acceptor();
    let (mut session, start) = elected_with(&mut acceptor, 1, &[]);
    let syncs_before = acceptor.storage().sync_count();
    let mut appends = Vec::new();
    let mut ends = Vec::new();
    let mut pos = start;
    for xid in 0..5 {
        let data = record(xid, 100);
        appends.push(Append {
            term: 1,
            begin_lsn: Lsn(pos),
            commit_lsn: Lsn(pos),
            data: data.clone(),
        });
        pos += data.len() as u64;
        ends.push(pos);
    }
    // One bad append in the middle is refused alone.
    appends.insert(
        2,
        Append {
            term: 1,
            begin_lsn: Lsn(1),
            commit_lsn: Lsn(0),
            data: record(99, 1),
        },
    );
    let responses = acceptor.handle_appends(&mut session, appends).unwrap();
    assert_eq!(acceptor.storage().sync_count(), syncs_before + 1);
    assert_eq!(responses.len(), 6);
    assert!(matches!(responses[2], Response::Error { .. }));
    let flushed: Vec<u64> = responses
        .iter()
        .filter_map(|r| match r {
            Response::Flushed { flush_lsn, .. } => Some(flush_lsn.0),
            _ => None,
        })
        .collect();
    assert_eq!(flushed, ends);
    assert_eq!(acceptor.flush_lsn(), Lsn(pos));
    assert_eq!(acceptor.commit_lsn(), Lsn(ends[3]));
}

#[test]
fn unsynced_writes_are_lost_and_torn_tails_cut() {
    let mut acceptor = acceptor();
    let first = record(1, 10);
    let (mut session, end) = elected_with(&mut acceptor, 1, &[first]);
    // The fsync fails: nothing is acknowledged and the acceptor refuses further work.
    let mut storage = acceptor.into_storage();
    storage.faults.sync_wal = true;
    let mut acceptor = Acceptor::open(storage).unwrap();
    let lost = record(2, 50);
    let request = Request::Append {
        term: 1,
        begin_lsn: Lsn(end),
        commit_lsn: Lsn(0),
        data: lost.clone(),
    };
    assert!(acceptor.handle(&mut session, request).is_err());
    assert!(acceptor.checkpoint().is_err());
    // After a crash that kept half of the unsynced record, that half is cut.
    let acceptor = restart(acceptor, lost.len() / 2);
    assert_eq!(acceptor.flush_lsn(), Lsn(end));
    // After a crash that kept all of it, the whole record is found again (never acknowledged,
    // but valid: a new election decides its fate).
    let mut storage = acceptor.into_storage();
    storage.faults.sync_wal = true;
    let mut acceptor = Acceptor::open(storage).unwrap();
    let (mut session, _) = elect(&mut acceptor, 1, &[(1, 0)], end);
    let request = Request::Append {
        term: 1,
        begin_lsn: Lsn(end),
        commit_lsn: Lsn(0),
        data: lost.clone(),
    };
    assert!(acceptor.handle(&mut session, request).is_err());
    let acceptor = restart(acceptor, usize::MAX);
    assert_eq!(acceptor.flush_lsn(), Lsn(end + lost.len() as u64));
}

#[test]
fn reads_return_whole_records_and_fail_on_corruption() {
    let mut acceptor = acceptor();
    let records: Vec<Bytes> = (0..4).map(|xid| record(xid, 40)).collect();
    let (_, end) = elected_with(&mut acceptor, 1, &records);
    let record_bytes = records[0].len() as u64;
    let mut session = ProposerSession::default();
    let mut read =
        |acceptor: &mut Acceptor<MemoryStorage>, start: u64, end: u64, max_bytes: u32| {
            match acceptor.handle(
                &mut session,
                Request::ReadWal {
                    start_lsn: Lsn(start),
                    end_lsn: Lsn(end),
                    max_bytes,
                },
            ) {
                Ok(Response::Wal { data, .. }) => Ok(data.len() as u64),
                Ok(Response::Error { message }) => Err(message),
                other => panic!("unexpected {other:?}"),
            }
        };
    // Cut at the last boundary within max_bytes, but at least one record.
    assert_eq!(
        read(&mut acceptor, 0, end, (2 * record_bytes + 5) as u32),
        Ok(2 * record_bytes)
    );
    assert_eq!(read(&mut acceptor, 0, end, 1), Ok(record_bytes));
    assert_eq!(
        read(&mut acceptor, record_bytes, end + 1000, u32::MAX),
        Ok(3 * record_bytes)
    );
    // Only records that end at or below end_lsn; nothing at or past the flush LSN.
    assert_eq!(
        read(&mut acceptor, 0, 2 * record_bytes - 1, u32::MAX),
        Ok(record_bytes)
    );
    assert_eq!(read(&mut acceptor, end, end + 100, u32::MAX), Ok(0));
    assert_eq!(read(&mut acceptor, end + 100, end + 200, u32::MAX), Ok(0));
    // A start inside a record is an error, not garbage, and cuts nothing: the acceptor only
    // repairs a bad record that a walk from a known boundary confirms.
    assert!(read(&mut acceptor, 3, end, u32::MAX).is_err());
    assert_eq!(acceptor.flush_lsn(), Lsn(end));

    let mut storage = acceptor.into_storage();
    storage.corrupt_wal_byte(Lsn(2 * record_bytes + 20));
    let mut acceptor = Acceptor::open(storage).unwrap();
    assert_eq!(
        read(&mut acceptor, 0, end, (2 * record_bytes) as u32),
        Ok(2 * record_bytes)
    );
    assert_eq!(acceptor.flush_lsn(), Lsn(end), "no bad record read yet");
    let message = read(&mut acceptor, 0, end, u32::MAX).unwrap_err();
    assert!(message.contains("checksum"), "{message}");
    // The bad record and everything after it are gone, durably: the safekeeper now lags
    // like any other, and the proposer refills it from its peers.
    let cut = Lsn(2 * record_bytes);
    assert_eq!(acceptor.flush_lsn(), cut);
    assert!(acceptor.commit_lsn() <= cut);
    assert_eq!(acceptor.storage().control().flush_lsn, cut);
    assert_eq!(read(&mut acceptor, 2 * record_bytes, end, 1), Ok(0));
    assert_eq!(read(&mut acceptor, 0, end, u32::MAX), Ok(2 * record_bytes));
    let acceptor = restart(acceptor, usize::MAX);
    assert_eq!(acceptor.flush_lsn(), cut);
}

#[test]
fn segment_completion_checkpoints_the_control_state() {
    let mut acceptor = acceptor();
    let (mut session, mut end) = elected_with(&mut acceptor, 1, &[]);
    // Append 1 MiB records until one crosses the first segment boundary.
    let mut xid = 0;
    while end <= crate::limits::CONTROL_CHECKPOINT_BYTES {
        let data = record(xid, 1 << 20);
        let new_end = end + data.len() as u64;
        append(&mut acceptor, &mut session, 1, end, new_end, data);
        assert_eq!(
            acceptor.storage().control().flush_lsn == Lsn(new_end),
            new_end > crate::limits::CONTROL_CHECKPOINT_BYTES
        );
        end = new_end;
        xid += 1;
    }
    assert_eq!(acceptor.storage().control().commit_lsn, Lsn(end));
    assert_eq!(acceptor.storage().control().flush_lsn, Lsn(end));
}

/// A branch's start: inside a segment, far from LSN 0.
const BRANCH_START: u64 = 3 * crate::limits::SEGMENT_BYTES + 4_321;

fn hello(acceptor: &mut Acceptor<MemoryStorage>, start_lsn: u64) -> Response {
    let request = Request::Hello {
        timeline: ids::TimelineId::from_u128(1),
        start_lsn: Lsn(start_lsn),
    };
    acceptor
        .handle(&mut ProposerSession::default(), request)
        .unwrap()
}

fn read_wal(acceptor: &mut Acceptor<MemoryStorage>, start: u64, end: u64) -> Response {
    let request = Request::ReadWal {
        start_lsn: Lsn(start),
        end_lsn: Lsn(end),
        max_bytes: u32::MAX,
    };
    acceptor
        .handle(&mut ProposerSession::default(), request)
        .unwrap()
}

#[test]
fn a_timeline_created_at_a_start_lsn_serves_wal_from_there_only() {
    let start = BRANCH_START;
    let mut acceptor = Acceptor::open(MemoryStorage::new_at(Lsn(start))).unwrap();
    let status = acceptor.status();
    assert_eq!(
        (status.term, status.flush_lsn, status.commit_lsn),
        (0, Lsn(start), Lsn(start))
    );
    assert!(status.term_history.0.is_empty());
    assert_eq!(
        (acceptor.backup_lsn(), acceptor.remote_consistent_lsn()),
        (Lsn(start), Lsn(start))
    );
    assert_eq!(acceptor.wal_start(), Lsn(start));
    assert_eq!(hello(&mut acceptor, start), Response::Status(status));

    // The first term's history starts at the timeline's start; appends go there.
    let records: Vec<Bytes> = (0..3).map(|xid| record(xid, 30)).collect();
    let (mut session, end) = elected_with(&mut acceptor, 1, &records);
    assert_eq!(acceptor.status().term_history, history(&[(1, start)]));
    let commit = start + records[0].len() as u64;
    append(&mut acceptor, &mut session, 1, end, commit, Bytes::new());
    assert_eq!(acceptor.commit_lsn(), Lsn(commit));

    // Reads from the start return the records; nothing below it is WAL.
    let all: Vec<u8> = records.iter().flat_map(|r| r.to_vec()).collect();
    assert_eq!(
        read_wal(&mut acceptor, start, end),
        Response::Wal {
            start_lsn: Lsn(start),
            data: Bytes::from(all.clone())
        }
    );
    for below in [0, start - 1, start - 100] {
        match read_wal(&mut acceptor, below, end) {
            Response::Error { message } => {
                assert!(
                    message.contains("the timeline's WAL starts at"),
                    "{message}"
                )
            }
            other => panic!("a read at {below} below the start answered {other:?}"),
        }
        assert!(matches!(
            acceptor.read_committed(Lsn(below), 1 << 20),
            Err(SafekeeperError::BelowTimelineStart { .. })
        ));
    }
    assert_eq!(acceptor.flush_lsn(), Lsn(end), "a bad read cuts nothing");

    // A newer term cannot cut below the start (it is below the commit LSN).
    assert!(vote(&mut acceptor, 2));
    let (_, refused) = elect(&mut acceptor, 2, &[(1, start), (2, end)], start - 1);
    assert!(matches!(refused, Response::Error { .. }), "{refused:?}");
    assert_eq!(acceptor.flush_lsn(), Lsn(end));

    // A restart keeps the start and the WAL.
    let mut acceptor = restart(acceptor, 0);
    assert_eq!(acceptor.timeline_start_lsn(), Lsn(start));
    assert_eq!(acceptor.flush_lsn(), Lsn(end));
    assert_eq!(
        read_wal(&mut acceptor, start, end),
        Response::Wal {
            start_lsn: Lsn(start),
            data: Bytes::from(all)
        }
    );
}

#[test]
fn hello_with_another_start_is_refused_and_changes_nothing() {
    let start = BRANCH_START;
    let mut acceptor = Acceptor::open(MemoryStorage::new_at(Lsn(start))).unwrap();
    let before = acceptor.storage().control().clone();
    // No WAL of its own yet: any other start is a disagreement about the timeline.
    for other in [0, start - 1, start + 1, start + 1_000_000] {
        match hello(&mut acceptor, other) {
            Response::Error { message } => {
                assert!(message.contains(&format!("{}", Lsn(other))), "{message}")
            }
            answer => panic!("Hello at {other} answered {answer:?}"),
        }
    }
    assert_eq!(acceptor.storage().control(), &before);
    assert_eq!(acceptor.flush_lsn(), Lsn(start));

    // With WAL of its own: a start above its flush LSN is refused, one at or below it is
    // not (the terms then decide what the logs share).
    let (_, end) = elected_with(&mut acceptor, 1, &[record(1, 10)]);
    let before = acceptor.storage().control().clone();
    assert!(matches!(
        hello(&mut acceptor, end + 1),
        Response::Error { .. }
    ));
    assert!(matches!(hello(&mut acceptor, start), Response::Status(_)));
    assert!(matches!(hello(&mut acceptor, end), Response::Status(_)));
    assert_eq!(acceptor.storage().control(), &before);
    assert_eq!(acceptor.flush_lsn(), Lsn(end));

    // A root timeline refuses a branch's start.
    let mut root = Acceptor::open(MemoryStorage::new()).unwrap();
    assert!(matches!(hello(&mut root, 4096), Response::Error { .. }));
    assert!(matches!(hello(&mut root, 0), Response::Status(_)));
}

#[test]
fn an_uncommitted_tail_is_cut_back_to_the_timeline_start() {
    let start = BRANCH_START;
    let mut acceptor = Acceptor::open(MemoryStorage::new_at(Lsn(start))).unwrap();
    let records: Vec<Bytes> = (0..2).map(|xid| record(xid, 20)).collect();
    elected_with(&mut acceptor, 1, &records);
    assert_eq!(acceptor.commit_lsn(), Lsn(start));
    // Term 2 continues another safekeeper's log that has none of term 1's WAL: the start is
    // the agreement point, and a record boundary.
    assert!(vote(&mut acceptor, 2));
    let (_, response) = elect(&mut acceptor, 2, &[(2, start)], start);
    assert_eq!(
        response,
        Response::Flushed {
            term: 2,
            flush_lsn: Lsn(start)
        }
    );
    let mut acceptor = restart(acceptor, usize::MAX);
    assert_eq!(acceptor.flush_lsn(), Lsn(start));
    assert_eq!(acceptor.status().term_history, history(&[(2, start)]));
    assert_eq!(
        read_wal(&mut acceptor, start, start + 1000),
        Response::Wal {
            start_lsn: Lsn(start),
            data: Bytes::new()
        }
    );
}

/// WAL offload and removal on a timeline that starts inside a segment: the local WAL's start
/// never goes below the timeline's start, and removal of whole segments below the horizon
/// never touches the start's segment before the horizon passes it.
#[test]
fn removal_on_a_timeline_that_starts_inside_a_segment() {
    let start = BRANCH_START;
    let mut acceptor = Acceptor::open(MemoryStorage::new_at(Lsn(start))).unwrap();
    let records: Vec<Bytes> = (0..4).map(|xid| record(xid, 50)).collect();
    let (mut session, end) = elected_with(&mut acceptor, 1, &records);
    append(&mut acceptor, &mut session, 1, end, end, Bytes::new());
    acceptor.note_remote_consistent_lsn(Lsn(end));
    let first_end = start + records[0].len() as u64;
    assert_eq!(acceptor.offloaded(Lsn(first_end)).unwrap(), Lsn(start));
    assert_eq!(acceptor.storage().control().backup_lsn, Lsn(first_end));
    assert!(matches!(
        read_wal(&mut acceptor, start, end),
        Response::Wal { .. }
    ));
}
