//! Wire types of the safekeeper protocol, and the pure term-history arithmetic that both
//! sides of the consensus protocol need.
//!
//! Two kinds of connection reach a safekeeper:
//!
//! - **proposer** (the primary compute): `Hello { timeline, start_lsn }`, then `RequestVote`
//!   / `Elected` / `Append` / `ReadWal`, each answered by one [`Response`]. `Hello` is the
//!   only request that creates a timeline: one the safekeeper does not have yet is created
//!   with its WAL starting at `start_lsn` (0 for a root timeline, the branch LSN for a
//!   branch). Appends may be pipelined: the safekeeper answers them in order, and may answer
//!   a run of appends with one response after one fsync (group commit).
//! - **replication** (the pageserver): `StartReplication`, after which the safekeeper sends
//!   [`Response::WalData`] frames with committed WAL for as long as the connection lives.
//!   If the WAL at the start was already offloaded and removed locally, the safekeeper
//!   answers [`Response::WalOffloaded`] and closes: the pageserver reads that WAL from the
//!   object store instead.
//! - **feedback** (the pageserver, to every safekeeper): [`Request::Feedback`] frames, never
//!   answered, whenever more of what the pageserver ingested is durable in the object store.
//! - **status probe** (the pageserver): one [`Request::TimelineStatus`], answered by one
//!   `Status`; changes nothing.
//!
//! `StartReplication`, `Feedback` and `TimelineStatus` for a timeline the safekeeper does not
//! have are answered with `Error` ("not known … a compute creates it"): the pageserver
//! retries until a compute has created the timeline with `Hello`.
//!
//! Every message is one [`wire`] frame. Decoding never panics on bad bytes.

use bytes::Bytes;
use ids::{Lsn, TimelineId};
use wire::{Decoder, Encoder, Result, WireError};

/// One entry of a term history: `term` started writing WAL at `start_lsn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TermEntry {
    pub term: u64,
    pub start_lsn: Lsn,
}

/// The terms whose proposers wrote a log, in order. The WAL in `[entry.start_lsn,
/// next_entry.start_lsn)` was written by `entry.term`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TermHistory(pub Vec<TermEntry>);

impl TermHistory {
    /// The last term in the history. A safekeeper adopts a new proposer's history before it
    /// has that proposer's WAL, so this can be a term that wrote nothing of its log: use
    /// [`TermHistory::term_at`] to compare logs.
    pub fn last_term(&self) -> u64 {
        self.0.last().map_or(0, |e| e.term)
    }

    /// The term that wrote the log up to `flush_lsn`: the last entry starting at or below it
    /// (Neon's "epoch"). This, then the flush LSN, orders logs by how advanced they are.
    pub fn term_at(&self, flush_lsn: Lsn) -> u64 {
        self.0
            .iter()
            .rev()
            .find(|e| e.start_lsn <= flush_lsn)
            .map_or(0, |e| e.term)
    }

    /// The highest LSN up to which a log with history `self` ending at `self_flush` and a
    /// log with history `other` ending at `other_flush` certainly hold the same bytes.
    ///
    /// Both logs agree on everything written by a term they both have, up to where either of
    /// them stops having that term's WAL. A term has one proposer, so its WAL is the same
    /// wherever it exists.
    pub fn agreement_point(&self, self_flush: Lsn, other: &TermHistory, other_flush: Lsn) -> Lsn {
        let end_of = |history: &TermHistory, idx: usize, flush: Lsn| -> Lsn {
            history
                .0
                .get(idx + 1)
                .map_or(flush, |next| next.start_lsn.min(flush))
        };
        // Find the last term present in both histories at the same start.
        let mut best: Option<(usize, usize)> = None;
        for (i, a) in self.0.iter().enumerate() {
            if let Some(j) = other.0.iter().position(|b| b.term == a.term) {
                if other.0[j].start_lsn == a.start_lsn {
                    best = Some((i, j));
                }
            }
        }
        match best {
            None => Lsn::ZERO,
            Some((i, j)) => end_of(self, i, self_flush).min(end_of(other, j, other_flush)),
        }
    }

    /// Where a safekeeper whose log has history `other` and ends at `other_flush` must be
    /// cut to continue the log `self` ending at `self_flush`, on a timeline whose WAL starts
    /// at `timeline_start`: the [`TermHistory::agreement_point`], but never below the
    /// timeline's start. Every log of the timeline begins there (a safekeeper creates the
    /// timeline with its WAL starting at that LSN and has no WAL below it), so two logs that
    /// share no term still agree on the empty WAL up to it.
    pub fn truncation_point(
        &self,
        self_flush: Lsn,
        other: &TermHistory,
        other_flush: Lsn,
        timeline_start: Lsn,
    ) -> Lsn {
        self.agreement_point(self_flush, other, other_flush)
            .max(timeline_start)
    }

    /// This history cut so that it covers only WAL below `lsn`.
    pub fn truncated(&self, lsn: Lsn) -> TermHistory {
        TermHistory(
            self.0
                .iter()
                .copied()
                .filter(|e| e.start_lsn <= lsn)
                .collect(),
        )
    }

    fn encode(&self, encoder: &mut Encoder) {
        encoder.u32(self.0.len() as u32);
        for entry in &self.0 {
            encoder.u64(entry.term).lsn(entry.start_lsn);
        }
    }

    fn decode(decoder: &mut Decoder) -> Result<TermHistory> {
        let n = decoder.count(16)?;
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            entries.push(TermEntry {
                term: decoder.u64()?,
                start_lsn: decoder.lsn()?,
            });
        }
        Ok(TermHistory(entries))
    }
}

/// The size of a majority of `n` safekeepers.
pub fn majority(n: usize) -> usize {
    n / 2 + 1
}

/// The commit LSN given each safekeeper's acknowledged flush LSN: the highest LSN that a
/// majority of all configured safekeepers has flushed.
pub fn quorum_commit_lsn(flush: &[Option<Lsn>]) -> Option<Lsn> {
    let mut acked: Vec<Lsn> = flush.iter().flatten().copied().collect();
    let needed = majority(flush.len());
    if acked.len() < needed {
        return None;
    }
    acked.sort_unstable_by(|a, b| b.cmp(a));
    Some(acked[needed - 1])
}

/// The voter whose log the new term continues: the highest (term that wrote its last
/// flushed WAL, flush LSN). Not the last term of its history: a safekeeper adopts a new
/// proposer's history at `Elected`, before it has received that proposer's WAL.
pub fn choose_donor(voters: &[AcceptorStatus]) -> Option<usize> {
    (0..voters.len()).max_by_key(|&i| {
        (
            voters[i].term_history.term_at(voters[i].flush_lsn),
            voters[i].flush_lsn,
        )
    })
}

/// A safekeeper's persistent acceptor state, as reported to a proposer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AcceptorStatus {
    /// The highest term this acceptor has voted in (or been told of); persisted.
    pub term: u64,
    pub term_history: TermHistory,
    /// End of the WAL that is on this acceptor's disk, fsynced.
    pub flush_lsn: Lsn,
    /// The highest LSN it has learnt is on a majority.
    pub commit_lsn: Lsn,
}

impl AcceptorStatus {
    fn encode(&self, encoder: &mut Encoder) {
        encoder.u64(self.term);
        self.term_history.encode(encoder);
        encoder.lsn(self.flush_lsn).lsn(self.commit_lsn);
    }
    fn decode(decoder: &mut Decoder) -> Result<AcceptorStatus> {
        Ok(AcceptorStatus {
            term: decoder.u64()?,
            term_history: TermHistory::decode(decoder)?,
            flush_lsn: decoder.lsn()?,
            commit_lsn: decoder.lsn()?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Opens a proposer connection for a timeline. If the safekeeper does not have the
    /// timeline yet, it creates it with its WAL starting at `start_lsn` (flush, commit and
    /// backup LSNs all at `start_lsn`; no WAL below it, ever). For a timeline it has, a
    /// `start_lsn` above its flush LSN, or one that differs from the recorded start while the
    /// timeline holds no WAL of its own, is answered with `Error` and changes nothing.
    Hello {
        timeline: TimelineId,
        start_lsn: Lsn,
    },
    /// Asks for a vote in `term`. Granted only if `term` is above every term the acceptor
    /// has seen; the acceptor persists `term` before answering.
    RequestVote { term: u64 },
    /// The proposer of `term` won: truncate the WAL to `truncate_lsn` (the point where this
    /// acceptor's log agrees with the proposer's) and adopt `term_history`.
    Elected {
        term: u64,
        term_history: TermHistory,
        truncate_lsn: Lsn,
    },
    /// WAL bytes (whole records) to write at `begin_lsn`, which must equal the acceptor's
    /// flush LSN; `data` may be empty to only carry a new `commit_lsn`.
    Append {
        term: u64,
        begin_lsn: Lsn,
        commit_lsn: Lsn,
        data: Bytes,
    },
    /// Reads flushed WAL `[start_lsn, end_lsn)`, at most `max_bytes` of it (recovery).
    ReadWal {
        start_lsn: Lsn,
        end_lsn: Lsn,
        max_bytes: u32,
    },
    /// Opens a replication connection: stream committed WAL from `start_lsn`. Never creates
    /// the timeline.
    StartReplication {
        timeline: TimelineId,
        start_lsn: Lsn,
    },
    /// The pageserver's state of `timeline` up to `remote_consistent_lsn` is durable in the
    /// object store, so safekeepers need not keep WAL below it. Opens (and continues) a
    /// feedback connection; never answered (except by `Error` for an unknown timeline).
    /// Never creates the timeline.
    Feedback {
        timeline: TimelineId,
        remote_consistent_lsn: Lsn,
    },
    /// Asks how far a timeline is flushed and committed: answered by one `Status` (or
    /// `Error` for an unknown timeline), after which the safekeeper closes the connection.
    /// Changes nothing and never creates the timeline (unlike `Hello`).
    TimelineStatus { timeline: TimelineId },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Status(AcceptorStatus),
    Vote {
        granted: bool,
        status: AcceptorStatus,
    },
    /// Elected or Append accepted; WAL is fsynced up to `flush_lsn`.
    Flushed {
        term: u64,
        flush_lsn: Lsn,
    },
    /// The request came from a term below the acceptor's: that proposer is fenced.
    Rejected {
        term: u64,
    },
    Wal {
        start_lsn: Lsn,
        data: Bytes,
    },
    /// Committed WAL on a replication connection; `data` may be empty (commit LSN news).
    WalData {
        start_lsn: Lsn,
        commit_lsn: Lsn,
        data: Bytes,
    },
    Error {
        message: String,
    },
    /// The replication start is below `wal_start`, the first WAL byte this safekeeper still
    /// keeps: the WAL below it is in the object store.
    WalOffloaded {
        wal_start: Lsn,
    },
}

mod tag {
    pub const HELLO: u8 = 1;
    pub const REQUEST_VOTE: u8 = 2;
    pub const ELECTED: u8 = 3;
    pub const APPEND: u8 = 4;
    pub const READ_WAL: u8 = 5;
    pub const START_REPLICATION: u8 = 6;
    pub const FEEDBACK: u8 = 7;
    pub const TIMELINE_STATUS: u8 = 8;

    pub const STATUS: u8 = 101;
    pub const VOTE: u8 = 102;
    pub const FLUSHED: u8 = 103;
    pub const REJECTED: u8 = 104;
    pub const WAL: u8 = 105;
    pub const WAL_DATA: u8 = 106;
    pub const ERROR: u8 = 107;
    pub const WAL_OFFLOADED: u8 = 108;
}

impl Request {
    pub fn encode(&self) -> Bytes {
        let mut e;
        match self {
            Request::Hello {
                timeline,
                start_lsn,
            } => {
                e = Encoder::new(tag::HELLO);
                e.timeline(*timeline).lsn(*start_lsn);
            }
            Request::RequestVote { term } => {
                e = Encoder::new(tag::REQUEST_VOTE);
                e.u64(*term);
            }
            Request::Elected {
                term,
                term_history,
                truncate_lsn,
            } => {
                e = Encoder::new(tag::ELECTED);
                e.u64(*term);
                term_history.encode(&mut e);
                e.lsn(*truncate_lsn);
            }
            Request::Append {
                term,
                begin_lsn,
                commit_lsn,
                data,
            } => {
                e = Encoder::new(tag::APPEND);
                e.u64(*term).lsn(*begin_lsn).lsn(*commit_lsn).bytes(data);
            }
            Request::ReadWal {
                start_lsn,
                end_lsn,
                max_bytes,
            } => {
                e = Encoder::new(tag::READ_WAL);
                e.lsn(*start_lsn).lsn(*end_lsn).u32(*max_bytes);
            }
            Request::StartReplication {
                timeline,
                start_lsn,
            } => {
                e = Encoder::new(tag::START_REPLICATION);
                e.timeline(*timeline).lsn(*start_lsn);
            }
            Request::Feedback {
                timeline,
                remote_consistent_lsn,
            } => {
                e = Encoder::new(tag::FEEDBACK);
                e.timeline(*timeline).lsn(*remote_consistent_lsn);
            }
            Request::TimelineStatus { timeline } => {
                e = Encoder::new(tag::TIMELINE_STATUS);
                e.timeline(*timeline);
            }
        }
        e.finish()
    }

    pub fn decode(payload: &Bytes) -> Result<Request> {
        let mut d = Decoder::new(payload, "safekeeper request");
        let request = match d.u8()? {
            tag::HELLO => Request::Hello {
                timeline: d.timeline()?,
                start_lsn: d.lsn()?,
            },
            tag::REQUEST_VOTE => Request::RequestVote { term: d.u64()? },
            tag::ELECTED => Request::Elected {
                term: d.u64()?,
                term_history: TermHistory::decode(&mut d)?,
                truncate_lsn: d.lsn()?,
            },
            tag::APPEND => {
                let term = d.u64()?;
                let begin_lsn = d.lsn()?;
                let commit_lsn = d.lsn()?;
                let data = d.bytes()?;
                Request::Append {
                    term,
                    begin_lsn,
                    commit_lsn,
                    data: payload.slice_ref(data),
                }
            }
            tag::READ_WAL => Request::ReadWal {
                start_lsn: d.lsn()?,
                end_lsn: d.lsn()?,
                max_bytes: d.u32()?,
            },
            tag::FEEDBACK => Request::Feedback {
                timeline: d.timeline()?,
                remote_consistent_lsn: d.lsn()?,
            },
            tag::START_REPLICATION => Request::StartReplication {
                timeline: d.timeline()?,
                start_lsn: d.lsn()?,
            },
            tag::TIMELINE_STATUS => Request::TimelineStatus {
                timeline: d.timeline()?,
            },
            other => return Err(WireError::Malformed(format!("unknown request tag {other}"))),
        };
        d.finish()?;
        Ok(request)
    }
}

impl Response {
    pub fn encode(&self) -> Bytes {
        let mut e;
        match self {
            Response::Status(status) => {
                e = Encoder::new(tag::STATUS);
                status.encode(&mut e);
            }
            Response::Vote { granted, status } => {
                e = Encoder::new(tag::VOTE);
                e.bool(*granted);
                status.encode(&mut e);
            }
            Response::Flushed { term, flush_lsn } => {
                e = Encoder::new(tag::FLUSHED);
                e.u64(*term).lsn(*flush_lsn);
            }
            Response::Rejected { term } => {
                e = Encoder::new(tag::REJECTED);
                e.u64(*term);
            }
            Response::Wal { start_lsn, data } => {
                e = Encoder::new(tag::WAL);
                e.lsn(*start_lsn).bytes(data);
            }
            Response::WalData {
                start_lsn,
                commit_lsn,
                data,
            } => {
                e = Encoder::new(tag::WAL_DATA);
                e.lsn(*start_lsn).lsn(*commit_lsn).bytes(data);
            }
            Response::Error { message } => {
                e = Encoder::new(tag::ERROR);
                e.str(message);
            }
            Response::WalOffloaded { wal_start } => {
                e = Encoder::new(tag::WAL_OFFLOADED);
                e.lsn(*wal_start);
            }
        }
        e.finish()
    }

    pub fn decode(payload: &Bytes) -> Result<Response> {
        let mut d = Decoder::new(payload, "safekeeper response");
        let response = match d.u8()? {
            tag::STATUS => Response::Status(AcceptorStatus::decode(&mut d)?),
            tag::VOTE => Response::Vote {
                granted: d.bool()?,
                status: AcceptorStatus::decode(&mut d)?,
            },
            tag::FLUSHED => Response::Flushed {
                term: d.u64()?,
                flush_lsn: d.lsn()?,
            },
            tag::REJECTED => Response::Rejected { term: d.u64()? },
            tag::WAL => {
                let start_lsn = d.lsn()?;
                let data = d.bytes()?;
                Response::Wal {
                    start_lsn,
                    data: payload.slice_ref(data),
                }
            }
            tag::WAL_DATA => {
                let start_lsn = d.lsn()?;
                let commit_lsn = d.lsn()?;
                let data = d.bytes()?;
                Response::WalData {
                    start_lsn,
                    commit_lsn,
                    data: payload.slice_ref(data),
                }
            }
            tag::ERROR => Response::Error {
                message: d.str()?.to_string(),
            },
            tag::WAL_OFFLOADED => Response::WalOffloaded {
                wal_start: d.lsn()?,
            },
            other => {
                return Err(WireError::Malformed(format!(
                    "unknown response tag {other}"
                )))
            }
        };
        d.finish()?;
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn agreement_point_cases() {
        let a = history(&[(1, 0), (3, 100)]);
        let b = history(&[(1, 0), (2, 80)]);
        // Both have term 1; a has its WAL to 100, b to 80: they agree below 80.
        assert_eq!(a.agreement_point(Lsn(150), &b, Lsn(120)), Lsn(80));
        // Same history, different lengths: the shorter one's end.
        assert_eq!(a.agreement_point(Lsn(150), &a, Lsn(120)), Lsn(120));
        // Nothing in common.
        assert_eq!(
            a.agreement_point(Lsn(150), &history(&[(5, 0)]), Lsn(10)),
            Lsn::ZERO
        );
        assert_eq!(
            TermHistory::default().agreement_point(Lsn(0), &a, Lsn(5)),
            Lsn::ZERO
        );
        assert_eq!(a.truncated(Lsn(99)), history(&[(1, 0)]));
    }

    #[test]
    fn truncation_point_never_goes_below_the_timeline_start() {
        let start = Lsn(5000);
        // A new timeline: the proposer's first term starts at the timeline start and a
        // safekeeper with an empty history is cut at the start, where its log ends.
        let proposer = history(&[(1, 5000)]);
        assert_eq!(
            proposer.truncation_point(start, &TermHistory::default(), start, start),
            start
        );
        // Shared terms decide as before.
        let a = history(&[(1, 5000), (3, 5100)]);
        let b = history(&[(1, 5000), (2, 5080)]);
        assert_eq!(
            a.truncation_point(Lsn(5150), &b, Lsn(5120), start),
            Lsn(5080)
        );
        // No shared term: the start, not 0.
        assert_eq!(
            a.truncation_point(Lsn(5150), &history(&[(2, 5000)]), Lsn(5050), start),
            start
        );
        // A root timeline is unchanged.
        assert_eq!(
            a.truncation_point(Lsn(5150), &history(&[(2, 5000)]), Lsn(5050), Lsn::ZERO),
            Lsn::ZERO
        );
    }

    #[test]
    fn messages_round_trip_and_reject_garbage() {
        let requests = vec![
            Request::Hello {
                timeline: TimelineId::from_u128(9),
                start_lsn: Lsn::ZERO,
            },
            Request::Hello {
                timeline: TimelineId::from_u128(9),
                start_lsn: Lsn((3 << 24) + 4321),
            },
            Request::TimelineStatus {
                timeline: TimelineId::from_u128(10),
            },
            Request::RequestVote { term: 4 },
            Request::Elected {
                term: 4,
                term_history: history(&[(1, 0), (4, 64)]),
                truncate_lsn: Lsn(64),
            },
            Request::Append {
                term: 4,
                begin_lsn: Lsn(64),
                commit_lsn: Lsn(10),
                data: Bytes::from_static(b"wal"),
            },
            Request::ReadWal {
                start_lsn: Lsn(1),
                end_lsn: Lsn(9),
                max_bytes: 100,
            },
            Request::StartReplication {
                timeline: TimelineId::from_u128(1),
                start_lsn: Lsn(3),
            },
            Request::Feedback {
                timeline: TimelineId::from_u128(2),
                remote_consistent_lsn: Lsn(11),
            },
        ];
        for request in requests {
            let bytes = request.encode();
            assert_eq!(Request::decode(&bytes).unwrap(), request);
            for cut in 0..bytes.len() {
                assert!(Request::decode(&bytes.slice(..cut)).is_err());
            }
        }
        let status = AcceptorStatus {
            term: 3,
            term_history: history(&[(3, 0)]),
            flush_lsn: Lsn(5),
            commit_lsn: Lsn(4),
        };
        let responses = vec![
            Response::Status(status.clone()),
            Response::Vote {
                granted: true,
                status,
            },
            Response::Flushed {
                term: 3,
                flush_lsn: Lsn(7),
            },
            Response::Rejected { term: 9 },
            Response::Wal {
                start_lsn: Lsn(1),
                data: Bytes::from_static(b"x"),
            },
            Response::WalData {
                start_lsn: Lsn(1),
                commit_lsn: Lsn(2),
                data: Bytes::new(),
            },
            Response::Error {
                message: "no".into(),
            },
            Response::WalOffloaded {
                wal_start: Lsn(1 << 24),
            },
        ];
        for response in responses {
            let bytes = response.encode();
            assert_eq!(Response::decode(&bytes).unwrap(), response);
        }
        assert!(Request::decode(&Bytes::from_static(&[200])).is_err());
    }
}
