//! The WAL proposer: the primary compute's side of the safekeeper consensus protocol.
//!
//! ```text
//!   commits ──append──▶ WalProposer buffer ──Append──▶ safekeeper 1..N (one task each)
//!                            ▲                              │ Flushed{flush_lsn}
//!                            └──── commit_lsn = majority ◀──┘
//! ```
//!
//! Start-up is an election: ask every safekeeper for its state (`Hello`, which names where
//! the timeline's WAL starts: 0 for a root timeline, the branch LSN for a branch; a
//! safekeeper that does not have the timeline yet creates it there), propose a term above
//! every term seen, and win with a majority of votes (each safekeeper persists the term
//! before voting, so an older primary is fenced from then on). The most advanced log among
//! the voters (by last term, then flush LSN) becomes the base of the new term; each
//! safekeeper is truncated to where its log agrees with that one, never below the
//! timeline's start, and then brought up to date. On a new branch every safekeeper reports
//! its flush LSN at the start and no terms: the first term's history begins at the start.
//!
//! A commit appends one WAL record and waits until a majority has fsynced past its end.
//! Many committers share each Append and each fsync (group commit): each safekeeper task
//! sends everything buffered so far in one message.
//!
//! I/O lives in the per-safekeeper tasks; the decisions (term choice, donor choice,
//! truncation point, commit LSN) are small pure functions tested on their own.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ids::{Lsn, TimelineId};
use safekeeper_api::majority;
pub use safekeeper_api::{choose_donor, quorum_commit_lsn};
use safekeeper_api::{AcceptorStatus, Request, Response, TermEntry, TermHistory};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{info, warn};

/// Most WAL bytes sent in one Append message.
pub const APPEND_BYTES_MAX: usize = 1 << 20;
/// WAL kept in memory for safekeepers that fall behind; older WAL is re-read from a peer.
pub const BUFFER_BYTES_MAX: usize = 64 << 20;
/// How long one connection attempt to a safekeeper may take.
pub const CONNECT_TIMEOUT_MS: u64 = 1000;
/// How long a safekeeper may take to answer one request of the election or recovery.
pub const CALL_TIMEOUT_MS: u64 = 5000;
/// Pause before reconnecting to a safekeeper that failed.
pub const RECONNECT_DELAY_MS: u64 = 200;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ProposerError {
    #[error("this compute is no longer the primary: a newer primary was elected in term {0}")]
    Fenced(u64),
    #[error("could not confirm the commit on a majority of safekeepers within {0} ms; the transaction may or may not be committed")]
    CommitTimeout(u64),
    #[error("election failed: {0}")]
    Election(String),
    #[error("safekeeper {addr}: {message}")]
    Safekeeper { addr: SocketAddr, message: String },
}

#[derive(Clone)]
pub struct ProposerConfig {
    pub timeline: TimelineId,
    /// Where the timeline's WAL starts: its branch LSN, or 0 for a root timeline (the
    /// pageserver knows it). Safekeepers that do not have the timeline create it there.
    pub start_lsn: Lsn,
    pub safekeepers: Vec<SocketAddr>,
}

struct Inner {
    end_lsn: Lsn,
    /// Whole records `[buffer_start, end_lsn)`, each with its start LSN.
    records: VecDeque<(Lsn, Bytes)>,
    buffer_start: Lsn,
    buffer_bytes: usize,
    /// Per safekeeper: flush LSN acknowledged in our term, once it accepted our election.
    flush: Vec<Option<Lsn>>,
    commit_lsn: Lsn,
    fenced_by: Option<u64>,
}

struct Shared {
    config: ProposerConfig,
    term: u64,
    history: TermHistory,
    inner: Mutex<Inner>,
    end_tx: watch::Sender<Lsn>,
    commit_tx: watch::Sender<Lsn>,
}

/// Handle to the proposer; cheap to clone.
#[derive(Clone)]
pub struct WalProposer {
    shared: Arc<Shared>,
}

struct Conn {
    addr: SocketAddr,
    stream: TcpStream,
}

impl Conn {
    /// Connects and says `Hello`. A safekeeper that disagrees on where the timeline starts
    /// answers with an error, which this returns.
    async fn open(
        addr: SocketAddr,
        timeline: TimelineId,
        start_lsn: Lsn,
    ) -> Result<(Conn, AcceptorStatus), ProposerError> {
        let err = |message: String| ProposerError::Safekeeper { addr, message };
        let stream = tokio::time::timeout(
            Duration::from_millis(CONNECT_TIMEOUT_MS),
            TcpStream::connect(addr),
        )
        .await
        .map_err(|_| err("connect timed out".into()))?
        .map_err(|e| err(format!("connect: {e}")))?;
        stream.set_nodelay(true).ok();
        let mut conn = Conn { addr, stream };
        let hello = Request::Hello {
            timeline,
            start_lsn,
        };
        match conn.call(&hello).await? {
            Response::Status(status) => Ok((conn, status)),
            other => Err(err(format!("unexpected answer to Hello: {other:?}"))),
        }
    }

    async fn send(&mut self, request: &Request) -> Result<(), ProposerError> {
        wire::write_frame(&mut self.stream, &request.encode())
            .await
            .map_err(|e| ProposerError::Safekeeper {
                addr: self.addr,
                message: e.to_string(),
            })
    }

    async fn recv(&mut self) -> Result<Response, ProposerError> {
        let addr = self.addr;
        let err = |message: String| ProposerError::Safekeeper { addr, message };
        let frame = wire::read_frame(&mut self.stream)
            .await
            .map_err(|e| err(e.to_string()))?
            .ok_or_else(|| err("connection closed".into()))?;
        let response = Response::decode(&frame).map_err(|e| err(e.to_string()))?;
        if let Response::Error { message } = response {
            return Err(err(message));
        }
        Ok(response)
    }

    /// One request and its answer, bounded by [`CALL_TIMEOUT_MS`]: a safekeeper that
    /// accepts connections but does not answer (stopped, stuck in fsync) must not stall an
    /// election that a majority can win without it.
    async fn call(&mut self, request: &Request) -> Result<Response, ProposerError> {
        let addr = self.addr;
        let exchange = async {
            self.send(request).await?;
            self.recv().await
        };
        tokio::time::timeout(Duration::from_millis(CALL_TIMEOUT_MS), exchange)
            .await
            .unwrap_or_else(|_| {
                Err(ProposerError::Safekeeper {
                    addr,
                    message: format!("no answer within {CALL_TIMEOUT_MS} ms"),
                })
            })
    }
}

/// Reads WAL `[start, end)` as whole records from the safekeeper at `addr`.
/// Stops once `limit_bytes` have been read (at least one chunk is always read), so a
/// laggard's catch-up holds one Append's worth of WAL in memory, not the whole gap.
async fn read_wal(
    addr: SocketAddr,
    timeline: TimelineId,
    timeline_start: Lsn,
    start: Lsn,
    end: Lsn,
    limit_bytes: usize,
) -> Result<Vec<(Lsn, Bytes)>, ProposerError> {
    let (mut conn, _) = Conn::open(addr, timeline, timeline_start).await?;
    let mut records = Vec::new();
    let mut pos = start;
    while pos < end && ((pos.0 - start.0) as usize) < limit_bytes {
        let request = Request::ReadWal {
            start_lsn: pos,
            end_lsn: end,
            max_bytes: APPEND_BYTES_MAX as u32,
        };
        let data = match conn.call(&request).await? {
            Response::Wal { start_lsn, data } if start_lsn == pos => data,
            other => {
                return Err(ProposerError::Safekeeper {
                    addr,
                    message: format!("unexpected answer to ReadWal: {other:?}"),
                })
            }
        };
        if data.is_empty() {
            return Err(ProposerError::Safekeeper {
                addr,
                message: format!("has no WAL at {pos} (needed up to {end})"),
            });
        }
        let mut offset = 0;
        while offset < data.len() {
            let lsn = pos.add(offset as u64);
            let len = wal::next_record_len(&data[offset..], lsn)
                .map_err(|e| ProposerError::Safekeeper {
                    addr,
                    message: e.to_string(),
                })?
                .ok_or_else(|| ProposerError::Safekeeper {
                    addr,
                    message: format!("partial record at {lsn}"),
                })?;
            records.push((lsn, data.slice(offset..offset + len)));
            offset += len;
        }
        pos = pos.add(data.len() as u64);
    }
    Ok(records)
}

impl WalProposer {
    /// Runs an election for the timeline and returns once this compute is the primary and
    /// a majority of safekeepers holds the recovered WAL.
    pub async fn elect(
        config: ProposerConfig,
        timeout: Duration,
    ) -> Result<WalProposer, ProposerError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let last_error = match Self::try_elect(&config).await {
                Ok(proposer) => {
                    let end = proposer.end_lsn();
                    let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
                    proposer
                        .wait_commit(end, remaining.max(Duration::from_secs(1)))
                        .await?;
                    info!(term = proposer.shared.term, end_lsn = %end, "elected primary");
                    return Ok(proposer);
                }
                Err(e) => e.to_string(),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(ProposerError::Election(last_error));
            }
            warn!("election attempt failed: {last_error}; retrying");
            tokio::time::sleep(Duration::from_millis(RECONNECT_DELAY_MS)).await;
        }
    }

    async fn try_elect(config: &ProposerConfig) -> Result<WalProposer, ProposerError> {
        let n = config.safekeepers.len();
        let opened = futures::future::join_all(
            config
                .safekeepers
                .iter()
                .map(|&addr| Conn::open(addr, config.timeline, config.start_lsn)),
        )
        .await;
        let mut conns: Vec<(usize, Conn, AcceptorStatus)> = Vec::new();
        let mut errors = Vec::new();
        for (idx, result) in opened.into_iter().enumerate() {
            match result {
                Ok((conn, status)) => conns.push((idx, conn, status)),
                Err(e) => errors.push(e.to_string()),
            }
        }
        if conns.len() < majority(n) {
            return Err(ProposerError::Election(format!(
                "only {} of {n} safekeepers reachable: {}",
                conns.len(),
                errors.join("; ")
            )));
        }
        let term = conns.iter().map(|(_, _, s)| s.term).max().unwrap_or(0) + 1;
        let vote_request = Request::RequestVote { term };
        let votes = futures::future::join_all(
            conns
                .iter_mut()
                .map(|(_, conn, _)| conn.call(&vote_request)),
        )
        .await;
        let mut voters: Vec<(usize, AcceptorStatus)> = Vec::new();
        for ((idx, _, _), vote) in conns.iter().zip(votes) {
            if let Ok(Response::Vote {
                granted: true,
                status,
            }) = vote
            {
                voters.push((*idx, status));
            }
        }
        if voters.len() < majority(n) {
            return Err(ProposerError::Election(format!(
                "term {term}: {} of {n} votes",
                voters.len()
            )));
        }
        let statuses: Vec<AcceptorStatus> = voters.iter().map(|(_, s)| s.clone()).collect();
        let donor_pos = choose_donor(&statuses).expect("a majority is not empty");
        let donor = voters[donor_pos].1.clone();
        if donor.flush_lsn < config.start_lsn {
            // Hello refuses this; a safekeeper that answers otherwise is a bug.
            return Err(ProposerError::Election(format!(
                "the most advanced safekeeper's WAL ends at {}, below the timeline's start {}",
                donor.flush_lsn, config.start_lsn
            )));
        }
        let mut history = donor.term_history.truncated(donor.flush_lsn);
        history.0.push(TermEntry {
            term,
            start_lsn: donor.flush_lsn,
        });
        // The buffer starts empty at the end of the donor's log: safekeepers that lack part
        // of it read it from the donor (or any peer that has it) in bounded chunks.
        let (end_tx, _) = watch::channel(donor.flush_lsn);
        // Not the timeline's start: on a new branch (end = start) `elect` then waits until a
        // majority has accepted the election at the start before it returns.
        let (commit_tx, _) = watch::channel(Lsn::ZERO);
        let shared = Arc::new(Shared {
            config: config.clone(),
            term,
            history,
            inner: Mutex::new(Inner {
                end_lsn: donor.flush_lsn,
                records: VecDeque::new(),
                buffer_start: donor.flush_lsn,
                buffer_bytes: 0,
                flush: vec![None; n],
                commit_lsn: Lsn::ZERO,
                fenced_by: None,
            }),
            end_tx,
            commit_tx,
        });
        for idx in 0..n {
            tokio::spawn(acceptor_task(shared.clone(), idx));
        }
        Ok(WalProposer { shared })
    }

    pub fn term(&self) -> u64 {
        self.shared.term
    }

    pub fn end_lsn(&self) -> Lsn {
        self.shared.inner.lock().expect("proposer lock").end_lsn
    }

    /// The highest LSN known to be on a majority: the snapshot new transactions read at.
    pub fn commit_lsn(&self) -> Lsn {
        *self.shared.commit_tx.borrow()
    }

    /// Appends one whole WAL record; returns its end LSN (the commit LSN to wait for).
    pub fn append(&self, record: Bytes) -> Result<Lsn, ProposerError> {
        let mut inner = self.shared.inner.lock().expect("proposer lock");
        if let Some(term) = inner.fenced_by {
            return Err(ProposerError::Fenced(term));
        }
        let start = inner.end_lsn;
        inner.end_lsn = start.add(record.len() as u64);
        inner.buffer_bytes += record.len();
        inner.records.push_back((start, record));
        let end = inner.end_lsn;
        drop(inner);
        self.shared.end_tx.send_replace(end);
        Ok(end)
    }

    /// Waits until `lsn` is on a majority of safekeepers.
    pub async fn wait_commit(&self, lsn: Lsn, timeout: Duration) -> Result<(), ProposerError> {
        let mut commit_rx = self.shared.commit_tx.subscribe();
        let wait = async {
            loop {
                // A record on a majority is durable even if a newer primary fenced us since.
                if *commit_rx.borrow_and_update() >= lsn {
                    return Ok(());
                }
                if let Some(term) = self.shared.inner.lock().expect("proposer lock").fenced_by {
                    return Err(ProposerError::Fenced(term));
                }
                if commit_rx.changed().await.is_err() {
                    return Err(ProposerError::Election("proposer stopped".into()));
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or(Err(
                ProposerError::CommitTimeout(timeout.as_millis() as u64),
            ))
    }
}

impl Shared {
    fn fence(&self, term: u64) {
        let mut inner = self.inner.lock().expect("proposer lock");
        if inner.fenced_by.is_none() {
            warn!(
                our_term = self.term,
                newer_term = term,
                "fenced by a newer primary"
            );
            inner.fenced_by = Some(term);
        }
        drop(inner);
        // Wake every waiter so it sees the fence.
        self.commit_tx.send_modify(|_| {});
        self.end_tx.send_modify(|_| {});
    }

    fn is_fenced(&self) -> bool {
        self.inner
            .lock()
            .expect("proposer lock")
            .fenced_by
            .is_some()
    }

    fn record_flush(&self, idx: usize, flush_lsn: Lsn) {
        let mut inner = self.inner.lock().expect("proposer lock");
        inner.flush[idx] = Some(flush_lsn);
        if let Some(commit) = quorum_commit_lsn(&inner.flush) {
            if commit > inner.commit_lsn {
                inner.commit_lsn = commit;
                drop(inner);
                self.commit_tx.send_replace(commit);
                self.trim_buffer();
            }
        }
    }

    /// Drops buffered WAL that every safekeeper has, and WAL beyond the memory budget that a
    /// majority has (laggards then re-read it from a peer).
    fn trim_buffer(&self) {
        let mut inner = self.inner.lock().expect("proposer lock");
        let all_have = inner
            .flush
            .iter()
            .map(|f| f.unwrap_or(Lsn::ZERO))
            .min()
            .unwrap_or(Lsn::ZERO);
        let commit = inner.commit_lsn;
        while let Some((start, record)) = inner.records.front() {
            let end = start.add(record.len() as u64);
            let over_budget = inner.buffer_bytes > BUFFER_BYTES_MAX && end <= commit;
            if end <= all_have || over_budget {
                let len = record.len();
                inner.records.pop_front();
                inner.buffer_bytes -= len;
                inner.buffer_start = end;
            } else {
                break;
            }
        }
    }

    /// Whole records from `pos`, at most `APPEND_BYTES_MAX` bytes (at least one record), or
    /// `None` when `pos` is below the buffer.
    fn records_from(&self, pos: Lsn) -> Option<Bytes> {
        let inner = self.inner.lock().expect("proposer lock");
        if pos < inner.buffer_start {
            return None;
        }
        let first = inner.records.partition_point(|(start, _)| *start < pos);
        let mut out = BytesMut::new();
        for (start, record) in inner.records.iter().skip(first) {
            debug_assert_eq!(start.0, pos.0 + out.len() as u64, "records are contiguous");
            if !out.is_empty() && out.len() + record.len() > APPEND_BYTES_MAX {
                break;
            }
            out.extend_from_slice(record);
        }
        Some(out.freeze())
    }
}

/// Keeps one safekeeper in sync with the proposer for as long as the proposer lives.
async fn acceptor_task(shared: Arc<Shared>, idx: usize) {
    let addr = shared.config.safekeepers[idx];
    loop {
        if shared.is_fenced() {
            return;
        }
        if let Err(e) = sync_acceptor(&shared, idx).await {
            match e {
                ProposerError::Fenced(term) => {
                    shared.fence(term);
                    return;
                }
                e => warn!(%addr, "safekeeper connection lost: {e}"),
            }
        }
        shared.inner.lock().expect("proposer lock").flush[idx] = None;
        tokio::time::sleep(Duration::from_millis(RECONNECT_DELAY_MS)).await;
    }
}

async fn sync_acceptor(shared: &Arc<Shared>, idx: usize) -> Result<(), ProposerError> {
    let addr = shared.config.safekeepers[idx];
    let config = &shared.config;
    let (conn, status) = Conn::open(addr, config.timeline, config.start_lsn).await?;
    if status.term > shared.term {
        return Err(ProposerError::Fenced(status.term));
    }
    let end = shared.inner.lock().expect("proposer lock").end_lsn;
    let truncate_lsn = shared.history.truncation_point(
        end,
        &status.term_history,
        status.flush_lsn,
        config.start_lsn,
    );
    let Conn { stream, .. } = conn;
    let (mut reader, mut writer) = stream.into_split();
    let elected = Request::Elected {
        term: shared.term,
        term_history: shared.history.clone(),
        truncate_lsn,
    };
    wire::write_frame(&mut writer, &elected.encode())
        .await
        .map_err(|e| sk_err(addr, e))?;
    let flushed = tokio::time::timeout(
        Duration::from_millis(CALL_TIMEOUT_MS),
        read_response(&mut reader, addr),
    )
    .await
    .map_err(|_| ProposerError::Safekeeper {
        addr,
        message: "no answer to Elected".into(),
    })??;
    match flushed {
        Response::Flushed { flush_lsn, .. } if flush_lsn == truncate_lsn => {}
        Response::Rejected { term } => return Err(ProposerError::Fenced(term)),
        other => {
            return Err(ProposerError::Safekeeper {
                addr,
                message: format!("unexpected answer to Elected: {other:?}"),
            })
        }
    }
    shared.record_flush(idx, truncate_lsn);

    // Responses are read concurrently with sending, so appends are pipelined.
    let reader_task = async {
        loop {
            match read_response(&mut reader, addr).await? {
                Response::Flushed { flush_lsn, .. } => shared.record_flush(idx, flush_lsn),
                Response::Rejected { term } => return Err(ProposerError::Fenced(term)),
                other => {
                    return Err(ProposerError::Safekeeper {
                        addr,
                        message: format!("unexpected answer to Append: {other:?}"),
                    })
                }
            }
        }
    };
    let writer_task = async {
        let mut end_rx = shared.end_tx.subscribe();
        let mut commit_rx = shared.commit_tx.subscribe();
        let mut pos = truncate_lsn;
        let mut sent_commit = Lsn::ZERO;
        loop {
            if shared.is_fenced() {
                return Ok::<(), ProposerError>(());
            }
            let end = *end_rx.borrow_and_update();
            let commit = *commit_rx.borrow_and_update();
            if pos < end {
                let data = match shared.records_from(pos) {
                    Some(data) => data,
                    None => {
                        // Behind our buffer: fetch the gap from a safekeeper that has it.
                        let buffer_start = shared.inner.lock().expect("proposer lock").buffer_start;
                        let mut gap = BytesMut::new();
                        for (_, record) in
                            fetch_from_peers(shared, idx, pos, buffer_start.min(end)).await?
                        {
                            gap.extend_from_slice(&record);
                        }
                        gap.freeze()
                    }
                };
                let append = Request::Append {
                    term: shared.term,
                    begin_lsn: pos,
                    commit_lsn: commit,
                    data: data.clone(),
                };
                wire::write_frame(&mut writer, &append.encode())
                    .await
                    .map_err(|e| sk_err(addr, e))?;
                pos = pos.add(data.len() as u64);
                sent_commit = commit;
                continue;
            }
            if commit > sent_commit {
                let append = Request::Append {
                    term: shared.term,
                    begin_lsn: pos,
                    commit_lsn: commit,
                    data: Bytes::new(),
                };
                wire::write_frame(&mut writer, &append.encode())
                    .await
                    .map_err(|e| sk_err(addr, e))?;
                sent_commit = commit;
                continue;
            }
            tokio::select! {
                r = end_rx.changed() => if r.is_err() { return Ok(()) },
                r = commit_rx.changed() => if r.is_err() { return Ok(()) },
            }
        }
    };
    tokio::select! {
        r = reader_task => r,
        r = writer_task => r,
    }
}

/// WAL `[start, end)` from any other safekeeper that has acknowledged it in our term.
async fn fetch_from_peers(
    shared: &Arc<Shared>,
    idx: usize,
    start: Lsn,
    end: Lsn,
) -> Result<Vec<(Lsn, Bytes)>, ProposerError> {
    let candidates: Vec<usize> = {
        let inner = shared.inner.lock().expect("proposer lock");
        (0..inner.flush.len())
            .filter(|&j| j != idx && inner.flush[j].is_some_and(|f| f >= end))
            .collect()
    };
    let mut last_error = format!("no safekeeper has WAL {start}..{end}");
    for j in candidates {
        match read_wal(
            shared.config.safekeepers[j],
            shared.config.timeline,
            shared.config.start_lsn,
            start,
            end,
            APPEND_BYTES_MAX,
        )
        .await
        {
            Ok(records) => return Ok(records),
            Err(e) => last_error = e.to_string(),
        }
    }
    Err(ProposerError::Safekeeper {
        addr: shared.config.safekeepers[idx],
        message: last_error,
    })
}

fn sk_err(addr: SocketAddr, e: wire::WireError) -> ProposerError {
    ProposerError::Safekeeper {
        addr,
        message: e.to_string(),
    }
}

async fn read_response(
    reader: &mut tokio::net::tcp::OwnedReadHalf,
    addr: SocketAddr,
) -> Result<Response, ProposerError> {
    let frame = wire::read_frame(reader)
        .await
        .map_err(|e| sk_err(addr, e))?
        .ok_or_else(|| ProposerError::Safekeeper {
            addr,
            message: "connection closed".into(),
        })?;
    match Response::decode(&frame).map_err(|e| sk_err(addr, e))? {
        Response::Error { message } => Err(ProposerError::Safekeeper { addr, message }),
        response => Ok(response),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use tokio::sync::oneshot;
    use wal::{Op, Transaction};

    /// Three real safekeepers on loopback, each with its own data folder, until dropped.
    struct Safekeepers {
        addrs: Vec<SocketAddr>,
        stops: Vec<oneshot::Sender<()>>,
        tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
        dir: PathBuf,
    }

    impl Safekeepers {
        async fn start(name: &str) -> Safekeepers {
            let dir = std::env::temp_dir()
                .join(format!("omendb-walproposer-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let mut safekeepers = Safekeepers {
                addrs: Vec::new(),
                stops: Vec::new(),
                tasks: Vec::new(),
                dir,
            };
            for id in 1..=3 {
                let addr = std::net::TcpListener::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap();
                let (stop, stopped) = oneshot::channel::<()>();
                let config = safekeeper::Config {
                    id,
                    listen: addr,
                    data_dir: safekeepers.dir.join(format!("sk{id}")),
                    object_store: None,
                };
                let task = tokio::spawn(safekeeper::run(config, async move {
                    let _ = stopped.await;
                }));
                safekeepers.addrs.push(addr);
                safekeepers.stops.push(stop);
                safekeepers.tasks.push(task);
            }
            for addr in &safekeepers.addrs {
                let mut tries = 0;
                while TcpStream::connect(addr).await.is_err() {
                    tries += 1;
                    assert!(tries < 500, "safekeeper {addr} did not start listening");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            safekeepers
        }

        async fn stop(mut self) {
            for stop in self.stops.drain(..) {
                let _ = stop.send(());
            }
            for task in self.tasks.drain(..) {
                task.await.unwrap().unwrap();
            }
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn record(xid: u64) -> Bytes {
        wal::encode_record(&Transaction {
            xid,
            commit_time_us: 0,
            ops: vec![Op::Put {
                table: 1,
                key: Bytes::copy_from_slice(&xid.to_be_bytes()),
                value: Bytes::from(vec![xid as u8; 100]),
            }],
        })
        .unwrap()
    }

    /// Appends `records` and waits until a majority has them; returns the end LSN.
    async fn commit_all(proposer: &WalProposer, records: &[Bytes]) -> Lsn {
        let mut end = Lsn::ZERO;
        for record in records {
            end = proposer.append(record.clone()).unwrap();
        }
        proposer
            .wait_commit(end, Duration::from_secs(10))
            .await
            .unwrap();
        end
    }

    /// A branch's start: inside a segment, far above 0.
    const BRANCH_START: Lsn = Lsn((3 << 24) + 4_321);
    const ELECTION_TIMEOUT: Duration = Duration::from_secs(20);

    /// Every safekeeper reports flush LSN = the branch start and no terms: the first term's
    /// history starts there, appends go there, and the commit LSN advances from there. A
    /// compute restarted on the timeline (a new term) continues the log, and every
    /// safekeeper ends with the same WAL from the start on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn elects_and_commits_on_a_timeline_that_starts_at_a_branch_lsn() {
        let safekeepers = Safekeepers::start("branch").await;
        let config = ProposerConfig {
            timeline: TimelineId::from_u128(0xb2a9c4),
            start_lsn: BRANCH_START,
            safekeepers: safekeepers.addrs.clone(),
        };
        let first = WalProposer::elect(config.clone(), ELECTION_TIMEOUT)
            .await
            .unwrap();
        assert_eq!(first.term(), 1);
        assert_eq!(first.end_lsn(), BRANCH_START);
        assert_eq!(first.commit_lsn(), BRANCH_START);
        assert_eq!(
            first.shared.history,
            TermHistory(vec![TermEntry {
                term: 1,
                start_lsn: BRANCH_START
            }])
        );
        let records: Vec<Bytes> = (1..=5).map(record).collect();
        let end = commit_all(&first, &records).await;
        let bytes: u64 = records.iter().map(|r| r.len() as u64).sum();
        assert_eq!(end, BRANCH_START.add(bytes));
        assert!(first.commit_lsn() >= end);

        // A new compute on the same timeline (the old one is fenced by its election).
        let second = WalProposer::elect(config.clone(), ELECTION_TIMEOUT)
            .await
            .unwrap();
        assert_eq!(second.term(), 2);
        assert_eq!(second.end_lsn(), end, "the new term continues the old log");
        assert!(second.commit_lsn() >= end);
        // The old primary learns it is fenced at its next commit, which does not commit.
        let stale = first.append(record(99)).unwrap();
        assert!(matches!(
            first.wait_commit(stale, Duration::from_secs(10)).await,
            Err(ProposerError::Fenced(2))
        ));
        let more: Vec<Bytes> = (6..=8).map(record).collect();
        let new_end = commit_all(&second, &more).await;

        // Every safekeeper that is in the new term holds the whole log from the start.
        let mut expected = BytesMut::new();
        for record in records.iter().chain(&more) {
            expected.extend_from_slice(record);
        }
        let mut n_complete = 0;
        for &addr in &safekeepers.addrs {
            let log = read_wal(
                addr,
                config.timeline,
                BRANCH_START,
                BRANCH_START,
                new_end,
                usize::MAX,
            )
            .await;
            if let Ok(log) = log {
                let mut bytes = BytesMut::new();
                let mut pos = BRANCH_START;
                for (lsn, record) in log {
                    assert_eq!(lsn, pos, "records are contiguous from the start");
                    pos = pos.add(record.len() as u64);
                    bytes.extend_from_slice(&record);
                }
                if bytes == expected {
                    n_complete += 1;
                }
            }
        }
        assert!(n_complete >= majority(3), "{n_complete} complete logs");

        // A compute that believes the timeline starts elsewhere is refused by every
        // safekeeper, and its election fails with the safekeepers' reason.
        let wrong = ProposerConfig {
            start_lsn: new_end.add(1),
            ..config.clone()
        };
        let err = match WalProposer::elect(wrong, Duration::from_millis(500)).await {
            Err(e) => e.to_string(),
            Ok(_) => panic!("elected with a start above the timeline's WAL"),
        };
        assert!(err.contains("start_lsn"), "{err}");
        // ...and changed nothing: a compute with the right start continues the same log.
        let third = WalProposer::elect(config, ELECTION_TIMEOUT).await.unwrap();
        assert_eq!((third.term(), third.end_lsn()), (3, new_end));
        safekeepers.stop().await;
    }

    #[test]
    fn quorum_needs_a_majority_of_all_safekeepers() {
        assert_eq!(quorum_commit_lsn(&[None, None, None]), None);
        assert_eq!(quorum_commit_lsn(&[Some(Lsn(5)), None, None]), None);
        assert_eq!(
            quorum_commit_lsn(&[Some(Lsn(5)), Some(Lsn(3)), None]),
            Some(Lsn(3))
        );
        assert_eq!(
            quorum_commit_lsn(&[Some(Lsn(5)), Some(Lsn(3)), Some(Lsn(9))]),
            Some(Lsn(5))
        );
    }

    #[test]
    fn donor_is_the_most_advanced_log_by_term_then_lsn() {
        let status = |last_term: u64, flush: u64| AcceptorStatus {
            term: 9,
            term_history: TermHistory(vec![TermEntry {
                term: last_term,
                start_lsn: Lsn(0),
            }]),
            flush_lsn: Lsn(flush),
            commit_lsn: Lsn(0),
        };
        // A longer log of an older term loses to a shorter log of a newer term.
        assert_eq!(
            choose_donor(&[status(1, 500), status(2, 100), status(2, 50)]),
            Some(1)
        );
        assert_eq!(choose_donor(&[status(2, 10), status(2, 100)]), Some(1));
    }

    #[test]
    fn donor_ignores_a_term_adopted_before_its_wal_arrived() {
        // Term 1 committed WAL up to 200 on B (and A). Term 2's proposer truncated C to 100,
        // made C adopt [(1,0),(2,200)], and died before sending C anything. C's log is term 1's
        // up to 100 only: B, with term 1's log up to 200, must be the donor.
        let b = AcceptorStatus {
            term: 2,
            term_history: TermHistory(vec![TermEntry {
                term: 1,
                start_lsn: Lsn(0),
            }]),
            flush_lsn: Lsn(200),
            commit_lsn: Lsn(0),
        };
        let c = AcceptorStatus {
            term: 2,
            term_history: TermHistory(vec![
                TermEntry {
                    term: 1,
                    start_lsn: Lsn(0),
                },
                TermEntry {
                    term: 2,
                    start_lsn: Lsn(200),
                },
            ]),
            flush_lsn: Lsn(100),
            commit_lsn: Lsn(0),
        };
        assert_eq!(choose_donor(&[b.clone(), c.clone()]), Some(0));
        assert_eq!(choose_donor(&[c, b]), Some(1));
    }
}
