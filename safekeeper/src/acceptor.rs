//! The acceptor: the safekeeper's side of the consensus protocol (Paxos-like, as in Neon).
//!
//! It decides how to answer `RequestVote`, `Elected`, `Append` and `ReadWal`, and in what
//! order state must reach the disk. It does no I/O of its own: everything durable goes
//! through the small [`AcceptorStorage`] trait, so a deterministic simulation can drive it
//! with [`crate::memory_storage::MemoryStorage`] and the server with
//! [`crate::wal_storage::WalStorage`].
//!
//! Invariants it keeps:
//! - `term` only grows, and is persisted before any answer that depends on it (a vote, an
//!   accepted election): a restarted acceptor never votes twice in one term.
//! - `flush_lsn` is the end of the fsynced WAL and a record boundary; `commit_lsn <=
//!   flush_lsn`; neither is acknowledged before it is durable.
//! - Appends are accepted only from the connection elected in exactly the current term, so
//!   a proposer of an older term (an old primary) is fenced as soon as a newer one is voted.
//! - The control file's `flush_lsn` is never above the durable end of WAL: recovery scans
//!   forward from it and must not resurrect a truncated tail.
//! - A timeline's WAL starts at `timeline_start_lsn` (0 for a root timeline, the branch LSN
//!   for a branch), fixed when the timeline is created: `timeline_start_lsn <= commit_lsn
//!   <= flush_lsn`, the start is a record boundary, and nothing below it is ever read (a
//!   read below it is an error: there is no WAL there, here or anywhere).
//! - After a failed write, fsync, truncation or control write the acceptor refuses all
//!   further work (the disk state is unknown); a restart recovers from disk.

use bytes::Bytes;
use ids::Lsn;
use safekeeper_api::{AcceptorStatus, Request, Response, TermHistory};

use crate::error::{Result, SafekeeperError};
use crate::limits::{
    BOUNDARY_HINTS_MAX, BOUNDARY_HINT_STRIDE_BYTES, CONTROL_CHECKPOINT_BYTES, READ_WAL_BYTES_MAX,
    SCAN_CHUNK_BYTES, SEGMENT_BYTES, TERM_HISTORY_ENTRIES_MAX,
};

/// The acceptor state that lives in the control file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ControlState {
    /// The highest term voted in or accepted.
    pub term: u64,
    pub term_history: TermHistory,
    /// A record boundary at or below the durable end of WAL: where recovery starts scanning.
    pub flush_lsn: Lsn,
    /// The highest LSN known to be on a majority (may lag the true value after a crash).
    pub commit_lsn: Lsn,
    /// The WAL below this record boundary is in the object store (whole chunks, see
    /// `wal_backup`).
    pub backup_lsn: Lsn,
    /// The pageserver's state up to this LSN is durable in the object store.
    pub remote_consistent_lsn: Lsn,
    /// Where the timeline's WAL starts (its branch LSN; 0 for a root timeline). Set when the
    /// timeline is created and never changed; no WAL below it exists.
    pub timeline_start_lsn: Lsn,
}

impl ControlState {
    /// The state of a timeline created with its WAL starting at `start_lsn`: every LSN at
    /// the start, no term yet.
    pub fn new_timeline(start_lsn: Lsn) -> ControlState {
        ControlState {
            term: 0,
            term_history: TermHistory::default(),
            flush_lsn: start_lsn,
            commit_lsn: start_lsn,
            backup_lsn: start_lsn,
            remote_consistent_lsn: start_lsn,
            timeline_start_lsn: start_lsn,
        }
    }

    /// Checks how the LSNs relate: `timeline_start_lsn <= commit_lsn <= flush_lsn`, and the
    /// backup and pageserver LSNs at or above the start.
    pub fn validate_lsns(&self) -> Result<(), String> {
        if self.commit_lsn > self.flush_lsn {
            return Err(format!(
                "commit_lsn {} above flush_lsn {}",
                self.commit_lsn, self.flush_lsn
            ));
        }
        let start = self.timeline_start_lsn;
        for (name, lsn) in [
            ("commit_lsn", self.commit_lsn),
            ("backup_lsn", self.backup_lsn),
            ("remote_consistent_lsn", self.remote_consistent_lsn),
        ] {
            if lsn < start {
                return Err(format!("{name} {lsn} below the timeline's start {start}"));
            }
        }
        Ok(())
    }

    /// Up to where local WAL may have been removed: WAL below this is offloaded, durable at
    /// the pageserver and committed (see [`Acceptor::offloaded`]).
    pub fn removal_horizon(&self) -> Lsn {
        self.backup_lsn
            .min(self.remote_consistent_lsn)
            .min(self.commit_lsn)
    }
}

/// Durable storage of one timeline's acceptor: a control state and a WAL byte stream.
pub trait AcceptorStorage: Send + 'static {
    /// The control state as last persisted (or as found when the storage was opened).
    fn control(&self) -> &ControlState;
    /// The end of the WAL found when the storage was opened: the end of the last whole,
    /// valid record (a torn tail has already been cut).
    fn wal_end(&self) -> Lsn;
    /// Replaces the control state durably (atomically: old or new after a crash).
    fn persist_control(&mut self, control: &ControlState) -> Result<()>;
    /// Writes WAL bytes at `lsn`, which must be the current end of the written WAL. Not
    /// durable until [`AcceptorStorage::sync_wal`].
    fn write_wal(&mut self, lsn: Lsn, data: &[u8]) -> Result<()>;
    /// Makes every written WAL byte durable.
    fn sync_wal(&mut self) -> Result<()>;
    /// Removes all WAL at and after `lsn`, durably.
    fn truncate_wal(&mut self, lsn: Lsn) -> Result<()>;
    /// The raw WAL bytes `[start, end)`; `wal_start() <= start` and `end` is at most the end
    /// of the written WAL.
    fn read_wal_raw(&mut self, start: Lsn, end: Lsn) -> Result<Vec<u8>>;
    /// The first WAL byte kept locally: WAL below it was offloaded and removed, or (below
    /// the timeline's start) never existed. Never below the timeline's start.
    fn wal_start(&self) -> Lsn;
    /// Removes, durably, whole stretches of WAL below `lsn` (whole segment files); returns
    /// the new [`AcceptorStorage::wal_start`], which stays at or below `lsn`.
    fn remove_wal_below(&mut self, lsn: Lsn) -> Result<Lsn>;

    /// Whole, checksum-verified records starting at `start` (a record boundary) and ending
    /// at or below `end`: as many as fit in `max_bytes`, but at least the first one if it
    /// ends at or below `end`. Empty when `start >= end` or when the record at `start`
    /// crosses `end`. A corrupt record is an error, never returned.
    fn read_records(&mut self, start: Lsn, end: Lsn, max_bytes: usize) -> Result<Bytes> {
        let available = end.0.saturating_sub(start.0);
        if available < wal::RECORD_HEADER_BYTES as u64 {
            return Ok(Bytes::new());
        }
        if start < self.wal_start() {
            return Err(SafekeeperError::WalOffloaded {
                lsn: start,
                wal_start: self.wal_start(),
            });
        }
        let corrupt = |lsn: Lsn, reason: String| SafekeeperError::CorruptRecord { lsn, reason };
        // Missing bytes count as a bad record; an I/O error (which may pass) does not.
        let read = |storage: &mut Self, n_bytes: u64| {
            storage
                .read_wal_raw(start, start.add(n_bytes))
                .map_err(|e| match e {
                    SafekeeperError::Corrupt(reason) => corrupt(start, reason),
                    other => other,
                })
        };
        let header = read(self, wal::RECORD_HEADER_BYTES as u64)?;
        let body_len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if body_len == 0 || body_len > wal::RECORD_BYTES_MAX {
            return Err(corrupt(
                start,
                format!("bad record length {body_len} (or {start} is not a record boundary)"),
            ));
        }
        let first_bytes = (wal::RECORD_HEADER_BYTES + body_len) as u64;
        if first_bytes > available {
            return Ok(Bytes::new());
        }
        let want_bytes = first_bytes.max(available.min(max_bytes as u64));
        let mut raw = read(self, want_bytes)?;
        let mut pos = 0;
        while pos < raw.len() {
            let lsn = start.add(pos as u64);
            match wal::next_record_len(&raw[pos..], lsn) {
                Ok(Some(len)) => pos += len,
                Ok(None) => break,
                Err(e) => return Err(corrupt(lsn, e.to_string())),
            }
        }
        assert!(pos as u64 >= first_bytes, "the first record was read whole");
        raw.truncate(pos);
        Ok(Bytes::from(raw))
    }
}

/// What one proposer connection has established: the term it was elected in, if any.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProposerSession {
    elected_term: Option<u64>,
}

/// One `Append` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Append {
    pub term: u64,
    pub begin_lsn: Lsn,
    pub commit_lsn: Lsn,
    pub data: Bytes,
}

/// The acceptor of one timeline over storage `S`.
pub struct Acceptor<S: AcceptorStorage> {
    storage: S,
    term: u64,
    term_history: TermHistory,
    flush_lsn: Lsn,
    commit_lsn: Lsn,
    /// The control state as last persisted.
    persisted: ControlState,
    /// See [`ControlState::timeline_start_lsn`]; never changes.
    timeline_start_lsn: Lsn,
    /// See [`ControlState::backup_lsn`]; persisted with the next control write.
    backup_lsn: Lsn,
    /// See [`ControlState::remote_consistent_lsn`]; persisted with the next control write.
    remote_consistent_lsn: Lsn,
    /// Known record boundaries at or below `flush_lsn` (and at or above the local WAL's
    /// start), ascending, sparse.
    boundary_hints: Vec<Lsn>,
    /// Set after a failed storage mutation: why the acceptor refuses work.
    broken: Option<String>,
}

fn error_response(message: String) -> Response {
    Response::Error { message }
}

/// Checks a term history's shape: terms strictly increase, start LSNs never decrease, no
/// term above `term_max`, bounded length.
pub fn validate_term_history(history: &TermHistory, term_max: u64) -> Result<(), String> {
    if history.0.len() > TERM_HISTORY_ENTRIES_MAX {
        return Err(format!(
            "term history of {} entries exceeds the limit of {TERM_HISTORY_ENTRIES_MAX}",
            history.0.len()
        ));
    }
    for pair in history.0.windows(2) {
        if pair[1].term <= pair[0].term || pair[1].start_lsn < pair[0].start_lsn {
            return Err(format!(
                "term history is out of order at {:?} then {:?}",
                pair[0], pair[1]
            ));
        }
    }
    if history.last_term() > term_max {
        return Err(format!(
            "term history names term {} above term {term_max}",
            history.last_term()
        ));
    }
    Ok(())
}

impl<S: AcceptorStorage> Acceptor<S> {
    /// Starts from what `storage` holds. Fails if the control state and the WAL disagree.
    pub fn open(storage: S) -> Result<Acceptor<S>> {
        let control = storage.control().clone();
        let wal_end = storage.wal_end();
        if control.flush_lsn > wal_end || control.commit_lsn > wal_end {
            return Err(SafekeeperError::Corrupt(format!(
                "control file says flush {} and commit {}, but the WAL ends at {wal_end}",
                control.flush_lsn, control.commit_lsn
            )));
        }
        validate_term_history(&control.term_history, control.term)
            .map_err(SafekeeperError::Corrupt)?;
        control.validate_lsns().map_err(SafekeeperError::Corrupt)?;
        let wal_start = storage.wal_start();
        if wal_start < control.timeline_start_lsn || wal_start > wal_end {
            return Err(SafekeeperError::Internal(format!(
                "the local WAL starts at {wal_start}, outside the timeline's WAL [{}, {wal_end}]",
                control.timeline_start_lsn
            )));
        }
        let mut boundary_hints: Vec<Lsn> = vec![
            control.timeline_start_lsn,
            control.flush_lsn,
            wal_end,
            control.backup_lsn.min(wal_end),
        ];
        boundary_hints.extend(
            control
                .term_history
                .0
                .iter()
                .map(|e| e.start_lsn)
                .filter(|l| *l <= wal_end),
        );
        // Below the local WAL's start no walk can begin (the backup LSN is a boundary at or
        // above it once anything was removed; the timeline's start is one until then).
        boundary_hints.retain(|hint| *hint >= wal_start);
        boundary_hints.sort_unstable();
        boundary_hints.dedup();
        Ok(Acceptor {
            storage,
            term: control.term,
            term_history: control.term_history.clone(),
            flush_lsn: wal_end,
            commit_lsn: control.commit_lsn,
            backup_lsn: control.backup_lsn,
            remote_consistent_lsn: control.remote_consistent_lsn,
            timeline_start_lsn: control.timeline_start_lsn,
            persisted: control,
            boundary_hints,
            broken: None,
        })
    }

    pub fn status(&self) -> AcceptorStatus {
        AcceptorStatus {
            term: self.term,
            term_history: self.term_history.clone(),
            flush_lsn: self.flush_lsn,
            commit_lsn: self.commit_lsn,
        }
    }

    pub fn term(&self) -> u64 {
        self.term
    }
    pub fn flush_lsn(&self) -> Lsn {
        self.flush_lsn
    }
    pub fn commit_lsn(&self) -> Lsn {
        self.commit_lsn
    }
    pub fn timeline_start_lsn(&self) -> Lsn {
        self.timeline_start_lsn
    }
    pub fn storage(&self) -> &S {
        &self.storage
    }
    /// Gives the storage back (a simulation "crashes" it and opens a new acceptor on it).
    pub fn into_storage(self) -> S {
        self.storage
    }

    fn check_usable(&self) -> Result<()> {
        match &self.broken {
            Some(why) => Err(SafekeeperError::Broken(why.clone())),
            None => Ok(()),
        }
    }

    /// Marks the acceptor broken if a storage mutation failed.
    fn poison_on_error<T>(&mut self, result: Result<T>) -> Result<T> {
        if let Err(e) = &result {
            self.broken = Some(e.to_string());
        }
        result
    }

    /// Answers one proposer request. `Ok` carries the answer, a refusal included; `Err`
    /// means storage failed and the acceptor is now broken.
    pub fn handle(&mut self, session: &mut ProposerSession, request: Request) -> Result<Response> {
        self.check_usable()?;
        match request {
            Request::Hello { start_lsn, .. } => Ok(match self.check_hello(start_lsn) {
                Ok(()) => Response::Status(self.status()),
                Err(message) => error_response(message),
            }),
            Request::RequestVote { term } => {
                let result = self.request_vote(term);
                self.poison_on_error(result)
            }
            Request::Elected {
                term,
                term_history,
                truncate_lsn,
            } => {
                let result = self.elected(session, term, term_history, truncate_lsn);
                self.poison_on_error(result)
            }
            Request::Append {
                term,
                begin_lsn,
                commit_lsn,
                data,
            } => {
                let append = Append {
                    term,
                    begin_lsn,
                    commit_lsn,
                    data,
                };
                let mut responses = self.handle_appends(session, vec![append])?;
                responses
                    .pop()
                    .ok_or_else(|| SafekeeperError::Internal("no answer to an append".into()))
            }
            Request::ReadWal {
                start_lsn,
                end_lsn,
                max_bytes,
            } => Ok(match self.read_wal(start_lsn, end_lsn, max_bytes) {
                Ok(data) => Response::Wal { start_lsn, data },
                Err(e) => error_response(format!("cannot read WAL at {start_lsn}: {e}")),
            }),
            Request::StartReplication { .. }
            | Request::Feedback { .. }
            | Request::TimelineStatus { .. } => Ok(error_response(
                "StartReplication, Feedback and TimelineStatus open connections of their own"
                    .into(),
            )),
        }
    }

    /// Whether a proposer that believes the timeline's WAL starts at `start_lsn` may work on
    /// this timeline. `Err` says why not. Refused: a start above the end of this
    /// safekeeper's WAL (it would lack WAL the proposer takes for granted), and a start that
    /// differs from the recorded one while the timeline holds no WAL of its own (two
    /// creators disagree on where the timeline starts, and nothing here settles it).
    pub fn check_hello(&self, start_lsn: Lsn) -> Result<(), String> {
        if start_lsn > self.flush_lsn {
            return Err(format!(
                "Hello with start_lsn {start_lsn}: this safekeeper's WAL of the timeline ends at {} (it starts at {}), below the start the proposer expects",
                self.flush_lsn, self.timeline_start_lsn
            ));
        }
        if start_lsn != self.timeline_start_lsn && self.flush_lsn == self.timeline_start_lsn {
            return Err(format!(
                "Hello with start_lsn {start_lsn}: this safekeeper created the timeline with its WAL starting at {} and holds no WAL of it yet; the timeline's start is not {start_lsn}",
                self.timeline_start_lsn
            ));
        }
        Ok(())
    }

    fn persist(&mut self, control: ControlState) -> Result<()> {
        assert!(
            control.flush_lsn <= self.flush_lsn,
            "the control file never points past the durable WAL"
        );
        assert_eq!(
            control.timeline_start_lsn, self.timeline_start_lsn,
            "the timeline's start never changes"
        );
        assert!(
            control.validate_lsns().is_ok(),
            "the control state is consistent: {:?}",
            control.validate_lsns()
        );
        assert!(
            control.commit_lsn <= control.flush_lsn,
            "commit_lsn is never above flush_lsn"
        );
        assert!(
            control.term >= self.persisted.term,
            "the persisted term never goes back"
        );
        self.storage.persist_control(&control)?;
        self.term = control.term;
        self.term_history = control.term_history.clone();
        self.persisted = control;
        Ok(())
    }

    fn control_now(&self) -> ControlState {
        ControlState {
            term: self.term,
            term_history: self.term_history.clone(),
            flush_lsn: self.flush_lsn,
            commit_lsn: self.commit_lsn,
            backup_lsn: self.backup_lsn,
            remote_consistent_lsn: self.remote_consistent_lsn,
            timeline_start_lsn: self.timeline_start_lsn,
        }
    }

    fn request_vote(&mut self, term: u64) -> Result<Response> {
        let granted = term > self.term;
        if granted {
            // The term reaches the disk before the vote leaves: a restart cannot vote again.
            self.persist(ControlState {
                term,
                ..self.control_now()
            })?;
        }
        Ok(Response::Vote {
            granted,
            status: self.status(),
        })
    }

    fn elected(
        &mut self,
        session: &mut ProposerSession,
        term: u64,
        term_history: TermHistory,
        truncate_lsn: Lsn,
    ) -> Result<Response> {
        if term < self.term {
            return Ok(Response::Rejected { term: self.term });
        }
        // Validate everything before changing anything: bad input changes nothing.
        if let Err(message) = validate_term_history(&term_history, term) {
            return Ok(error_response(format!("Elected in term {term}: {message}")));
        }
        if term == self.term && self.term_history.last_term() == term {
            // This term's history is already adopted, so every byte written since came from
            // this term's one proposer and agrees with its log: nothing to truncate. A repeated
            // Elected is a reconnect, or a stale duplicate delayed behind later appends, whose
            // truncation point would cut WAL that may be committed.
            if term_history != self.term_history {
                return Ok(error_response(format!(
                    "Elected in term {term} with a history that differs from the one adopted for it"
                )));
            }
            session.elected_term = Some(term);
            return Ok(Response::Flushed {
                term,
                flush_lsn: self.flush_lsn,
            });
        }
        if truncate_lsn > self.flush_lsn {
            return Ok(error_response(format!(
                "Elected in term {term}: truncate_lsn {truncate_lsn} is above this safekeeper's flush_lsn {}",
                self.flush_lsn
            )));
        }
        if truncate_lsn < self.commit_lsn {
            return Ok(error_response(format!(
                "Elected in term {term}: refusing to truncate committed WAL (truncate_lsn {truncate_lsn} is below commit_lsn {})",
                self.commit_lsn
            )));
        }
        if truncate_lsn < self.flush_lsn {
            match self.is_record_boundary(truncate_lsn) {
                Ok(true) => {}
                Ok(false) => {
                    return Ok(error_response(format!(
                        "Elected in term {term}: truncate_lsn {truncate_lsn} is inside a WAL record"
                    )))
                }
                Err(e) => {
                    return Ok(error_response(format!(
                        "Elected in term {term}: cannot check truncate_lsn {truncate_lsn}: {e}"
                    )))
                }
            }
            // Cut first, then adopt the new history: a crash between any two steps leaves a
            // consistent pair.
            self.cut_wal(truncate_lsn, term.max(self.term))?;
        }
        self.persist(ControlState {
            term: term.max(self.term),
            term_history,
            ..self.control_now()
        })?;
        session.elected_term = Some(term);
        Ok(Response::Flushed {
            term,
            flush_lsn: self.flush_lsn,
        })
    }

    /// Removes the WAL from `lsn` (a record boundary, at or above `commit_lsn`) on, durably,
    /// persisting `term` with it. The control file's scan start moves below the cut first
    /// (keeping the old history, which still describes the old tail), so a crash between the
    /// two steps scans from `lsn` and never resurrects the cut tail.
    fn cut_wal(&mut self, lsn: Lsn, term: u64) -> Result<()> {
        self.persist(ControlState {
            term,
            flush_lsn: lsn,
            ..self.control_now()
        })?;
        self.storage.truncate_wal(lsn)?;
        self.flush_lsn = lsn;
        self.boundary_hints.retain(|hint| *hint <= lsn);
        self.boundary_hints.push(lsn);
        self.boundary_hints.dedup();
        Ok(())
    }

    /// Whether `lsn` (at most `flush_lsn`) is a record boundary, by walking records from the
    /// nearest known boundary below it. The timeline's start is one; nothing below it is.
    fn is_record_boundary(&mut self, lsn: Lsn) -> Result<bool> {
        if lsn < self.timeline_start_lsn {
            return Ok(false);
        }
        let idx = self.boundary_hints.partition_point(|hint| *hint <= lsn);
        let mut pos = if idx == 0 {
            self.timeline_start_lsn
        } else {
            self.boundary_hints[idx - 1]
        };
        while pos < lsn {
            let data = self.read_verified(pos, lsn, SCAN_CHUNK_BYTES)?;
            if data.is_empty() {
                return Ok(false);
            }
            pos = pos.add(data.len() as u64);
        }
        Ok(pos == lsn)
    }

    fn add_boundary_hint(&mut self, lsn: Lsn) {
        let last = self
            .boundary_hints
            .last()
            .copied()
            .unwrap_or(self.timeline_start_lsn);
        if lsn.0 >= last.0 + BOUNDARY_HINT_STRIDE_BYTES {
            self.boundary_hints.push(lsn);
        }
        if self.boundary_hints.len() > BOUNDARY_HINTS_MAX {
            let mut idx = 0;
            self.boundary_hints.retain(|_| {
                idx += 1;
                idx % 2 == 1
            });
        }
    }

    /// Checks one append against the current state and `written_lsn` (the end of the WAL
    /// written so far in this batch). `Err` carries the refusal to send.
    fn check_append(
        &self,
        session: &ProposerSession,
        append: &Append,
        written_lsn: Lsn,
    ) -> Result<(), Response> {
        if append.term < self.term {
            return Err(Response::Rejected { term: self.term });
        }
        if append.term != self.term || session.elected_term != Some(append.term) {
            return Err(error_response(format!(
                "Append in term {}: this connection is not the elected proposer of term {} (safekeeper term {})",
                append.term, append.term, self.term
            )));
        }
        if append.data.is_empty() {
            // Only carries a commit LSN, which is capped by flush_lsn: its begin_lsn is not
            // needed for safety, and a proposer may send it while catching us up.
            return Ok(());
        }
        if append.begin_lsn != written_lsn {
            return Err(error_response(format!(
                "Append in term {}: begin_lsn {} is not this safekeeper's flush_lsn {written_lsn}",
                append.term, append.begin_lsn
            )));
        }
        if let Err(e) = wal::check_whole_records(&append.data, append.begin_lsn) {
            return Err(error_response(format!(
                "Append in term {}: {e}",
                append.term
            )));
        }
        Ok(())
    }

    /// Answers a run of appends with one fsync (group commit): writes all that are valid,
    /// fsyncs once, then answers each in order. An invalid append is answered with its
    /// refusal and writes nothing; the ones after it see the WAL without it.
    pub fn handle_appends(
        &mut self,
        session: &mut ProposerSession,
        appends: Vec<Append>,
    ) -> Result<Vec<Response>> {
        self.check_usable()?;
        let result = self.handle_appends_inner(session, appends);
        self.poison_on_error(result)
    }

    fn handle_appends_inner(
        &mut self,
        session: &ProposerSession,
        appends: Vec<Append>,
    ) -> Result<Vec<Response>> {
        // Per append: its refusal, or (end of its data, its commit LSN).
        let mut outcomes: Vec<Result<(Lsn, Lsn), Response>> = Vec::with_capacity(appends.len());
        let mut written_lsn = self.flush_lsn;
        for append in &appends {
            match self.check_append(session, append, written_lsn) {
                Err(refusal) => outcomes.push(Err(refusal)),
                Ok(()) => {
                    if !append.data.is_empty() {
                        self.storage.write_wal(written_lsn, &append.data)?;
                        written_lsn = written_lsn.add(append.data.len() as u64);
                    }
                    outcomes.push(Ok((written_lsn, append.commit_lsn)));
                }
            }
        }
        let old_flush_lsn = self.flush_lsn;
        if written_lsn != old_flush_lsn {
            self.storage.sync_wal()?;
            self.flush_lsn = written_lsn;
            self.add_boundary_hint(written_lsn);
        }
        let mut responses = Vec::with_capacity(outcomes.len());
        for outcome in outcomes {
            match outcome {
                Err(refusal) => responses.push(refusal),
                Ok((end_lsn, commit_lsn)) => {
                    self.commit_lsn = self.commit_lsn.max(commit_lsn.min(self.flush_lsn));
                    responses.push(Response::Flushed {
                        term: self.term,
                        flush_lsn: end_lsn,
                    });
                }
            }
        }
        assert!(self.commit_lsn <= self.flush_lsn);
        // Checkpoint the control file once per completed segment: it bounds recovery's scan
        // and persists the commit LSN now and then.
        if old_flush_lsn.0 / CONTROL_CHECKPOINT_BYTES != self.flush_lsn.0 / CONTROL_CHECKPOINT_BYTES
        {
            self.persist(self.control_now())?;
        }
        Ok(responses)
    }

    /// Committed WAL from `start_lsn`: whole records up to `min(commit_lsn, flush_lsn)`, at
    /// most `max_bytes` (but at least one record), and the commit LSN it was read at. A
    /// read failure does not break the acceptor.
    pub fn read_committed(&mut self, start_lsn: Lsn, max_bytes: usize) -> Result<(Bytes, Lsn)> {
        self.check_usable()?;
        let end = self.commit_lsn.min(self.flush_lsn);
        Ok((self.read_verified(start_lsn, end, max_bytes)?, end))
    }

    /// Flushed WAL `[start_lsn, min(end_lsn, flush_lsn))`: whole records, at most
    /// `max_bytes` (capped by `READ_WAL_BYTES_MAX`) but at least one record (recovery reads).
    pub fn read_wal(&mut self, start_lsn: Lsn, end_lsn: Lsn, max_bytes: u32) -> Result<Bytes> {
        self.check_usable()?;
        let end = end_lsn.min(self.flush_lsn);
        let max_bytes = (max_bytes as usize).min(READ_WAL_BYTES_MAX);
        self.read_verified(start_lsn, end, max_bytes)
    }

    /// Reads records; when one fails its checks, cuts the local WAL before it (see
    /// [`Acceptor::cut_at_corruption`]) and returns the error: no reader gets bad bytes. A
    /// read below the timeline's start is refused before the storage is touched: the bytes
    /// there (a hole in the first segment) are not WAL.
    fn read_verified(&mut self, start: Lsn, end: Lsn, max_bytes: usize) -> Result<Bytes> {
        if start < self.timeline_start_lsn {
            return Err(SafekeeperError::BelowTimelineStart {
                lsn: start,
                timeline_start: self.timeline_start_lsn,
            });
        }
        match self.storage.read_records(start, end, max_bytes) {
            Err(SafekeeperError::CorruptRecord { lsn, reason }) => {
                let cut = self.cut_at_corruption(lsn);
                self.poison_on_error(cut)?;
                Err(SafekeeperError::CorruptRecord { lsn, reason })
            }
            other => other,
        }
    }

    /// Repairs a corrupt record reported at `reported`: walking whole records from the
    /// nearest known boundary at or below it (so a reader's made-up start cannot make us cut
    /// anything), it looks for the first record that fails its checks; a read of many
    /// records that fails is narrowed down one record at a time, since missing bytes are
    /// reported at the read's start. If one is found, the WAL from that record on is removed,
    /// durably, and `flush_lsn` and `commit_lsn` go back to it. The safekeeper then lacks that
    /// WAL like any lagging one, and the proposer refills it from its peers (its next append
    /// here fails, it reconnects, and recovery streams from the new flush LSN). Returns where
    /// it cut, if it did.
    fn cut_at_corruption(&mut self, reported: Lsn) -> Result<Option<Lsn>> {
        let idx = self
            .boundary_hints
            .partition_point(|hint| *hint <= reported);
        if idx == 0 {
            return Ok(None);
        }
        let mut pos = self.boundary_hints[idx - 1];
        // The failing read covered at most this much past `reported`.
        let search_end = reported
            .add((READ_WAL_BYTES_MAX + wal::RECORD_BYTES_MAX) as u64)
            .min(self.flush_lsn);
        let bad = loop {
            if pos >= search_end {
                return Ok(None);
            }
            let read = match self
                .storage
                .read_records(pos, self.flush_lsn, SCAN_CHUNK_BYTES)
            {
                Err(SafekeeperError::CorruptRecord { .. }) => {
                    self.storage.read_records(pos, self.flush_lsn, 1)
                }
                other => other,
            };
            match read {
                Ok(data) if data.is_empty() => return Ok(None),
                Ok(data) => pos = pos.add(data.len() as u64),
                // A one-record read names the record itself.
                Err(SafekeeperError::CorruptRecord { lsn, .. }) if lsn == pos => break pos,
                Err(_) => return Ok(None),
            }
        };
        if bad >= self.flush_lsn {
            return Ok(None);
        }
        tracing::error!(
            "WAL record at {bad} is corrupt: removing the local WAL from {bad} to {} (commit_lsn {}); the proposer refills it from peers",
            self.flush_lsn,
            self.commit_lsn
        );
        self.commit_lsn = self.commit_lsn.min(bad);
        self.cut_wal(bad, self.term)?;
        Ok(Some(bad))
    }

    pub fn backup_lsn(&self) -> Lsn {
        self.backup_lsn
    }
    pub fn remote_consistent_lsn(&self) -> Lsn {
        self.remote_consistent_lsn
    }
    pub fn wal_start(&self) -> Lsn {
        self.storage.wal_start()
    }

    /// Notes the pageserver's durable LSN (persisted with the next control write).
    pub fn note_remote_consistent_lsn(&mut self, lsn: Lsn) {
        self.remote_consistent_lsn = self.remote_consistent_lsn.max(lsn.min(self.commit_lsn));
    }

    /// Records that the object store holds the WAL below `backup_lsn` (a record boundary at
    /// or below `commit_lsn`), then removes local WAL below the horizon: what is both
    /// offloaded and durable at the pageserver. The control file is written first, so after
    /// a crash the safekeeper never looks for removed WAL. Returns the new local WAL start.
    pub fn offloaded(&mut self, backup_lsn: Lsn) -> Result<Lsn> {
        self.check_usable()?;
        let advanced = backup_lsn > self.backup_lsn;
        if advanced && backup_lsn > self.commit_lsn {
            return Err(SafekeeperError::Internal(format!(
                "backup LSN {backup_lsn} above commit_lsn {}",
                self.commit_lsn
            )));
        }
        self.backup_lsn = self.backup_lsn.max(backup_lsn);
        let horizon = self
            .backup_lsn
            .min(self.remote_consistent_lsn)
            .min(self.commit_lsn);
        let wal_start = self.storage.wal_start();
        let removable = horizon.0 / SEGMENT_BYTES > wal_start.0 / SEGMENT_BYTES;
        if !advanced && !removable {
            return Ok(wal_start);
        }
        let result = self.remove_below(horizon);
        self.poison_on_error(result)
    }

    fn remove_below(&mut self, horizon: Lsn) -> Result<Lsn> {
        if self.control_now() != self.persisted {
            self.persist(self.control_now())?;
        }
        let wal_start = self.storage.remove_wal_below(horizon)?;
        if wal_start > Lsn::ZERO {
            // `horizon` is a record boundary (backup, pageserver and commit LSNs all are).
            self.boundary_hints.retain(|hint| *hint >= wal_start);
            let idx = self.boundary_hints.partition_point(|hint| *hint < horizon);
            if self.boundary_hints.get(idx) != Some(&horizon) {
                self.boundary_hints.insert(idx, horizon);
            }
        }
        Ok(wal_start)
    }

    /// Persists the flush and commit LSNs if they moved since the last control write (on
    /// clean shutdown).
    pub fn checkpoint(&mut self) -> Result<()> {
        self.check_usable()?;
        if self.control_now() != self.persisted {
            let result = self.persist(self.control_now());
            return self.poison_on_error(result);
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "acceptor_tests.rs"]
mod tests;
