//! A seeded simulation of the consensus protocol: three real [`Acceptor`]s over
//! [`MemoryStorage`], and proposers that follow the compute's rules (`choose_donor`,
//! `TermHistory::agreement_point`, a majority of all safekeepers for votes and commits).
//! Each step is an election by a new proposer that reaches a random subset of safekeepers
//! (and may die part-way through recovery, even between `Elected` and the WAL after it), a
//! client commit to whichever safekeepers the
//! leader reaches, a crash that loses unsynced writes, or a catch-up of a lagging safekeeper.
//!
//! Copies of sent messages are delivered again at random later steps (duplicated, delayed,
//! reordered); lost messages are the steps where a safekeeper is unreachable. Odd seeds run
//! a branch: a timeline whose WAL starts inside a segment, far above 0
//! (`TermHistory::truncation_point` keeps cuts at or above it).
//!
//! Invariants checked after every step:
//! - one leader per term: no two proposers win an election in the same term;
//! - every acknowledged commit is in the log a newly elected proposer continues from;
//! - every acknowledged commit is still on a majority of safekeepers, byte for byte;
//! - committed WAL is never truncated: a safekeeper that holds an acknowledged commit keeps it;
//! - all safekeepers agree on the WAL up to their commit LSNs: any two logs are equal below
//!   the lower of the two safekeepers' commit LSNs.
//!
//! `OMENDB_SIM_SEEDS=N cargo test -p safekeeper simulation` runs N seeds (default 2,000).

use bytes::Bytes;
use ids::Lsn;
use safekeeper_api::{
    choose_donor, majority, AcceptorStatus, Request, Response, TermEntry, TermHistory,
};
use wal::{Op, Transaction};

use crate::acceptor::{Acceptor, ProposerSession};
use crate::memory_storage::MemoryStorage;

const NODES: usize = 3;
const STEPS: usize = 60;
/// Where the timeline's WAL starts on odd seeds (a branch); even seeds start at 0.
const BRANCH_START_LSN: Lsn = Lsn(3 * crate::limits::SEGMENT_BYTES + 4_321);

/// xorshift64*: small, seeded, and the same on every platform.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

struct Leader {
    term: u64,
    history: TermHistory,
    /// The leader's whole log, from the timeline's start: byte `lsn` is `log[lsn - start]`.
    log: Vec<u8>,
    /// Per safekeeper: the session it was elected on, and its flush LSN in this term.
    synced: Vec<Option<(ProposerSession, Lsn)>>,
    /// The end of the last commit acknowledged in this term (what appends carry).
    commit_lsn: Lsn,
}

struct Sim {
    rng: Rng,
    /// Where the timeline's WAL starts.
    start: Lsn,
    /// How many safekeepers a vote or a commit needs: `majority(3)` is right; tests also run
    /// a broken value to show the simulation catches it.
    quorum: usize,
    nodes: Vec<Option<Acceptor<MemoryStorage>>>,
    leader: Option<Leader>,
    /// Acknowledged commits: start LSN and record bytes.
    acked: Vec<(Lsn, Bytes)>,
    events: Vec<String>,
    next_xid: u64,
    /// Copies of messages already sent, with the connection they were sent on, that the
    /// network may deliver again later: duplicated, delayed past newer messages, reordered.
    in_flight: Vec<(usize, ProposerSession, Request)>,
    /// Every term that elected a leader.
    terms_led: std::collections::BTreeSet<u64>,
    /// Per safekeeper: which acknowledged commits (indexes into `acked`) its log held at the
    /// last check.
    held: Vec<std::collections::BTreeSet<usize>>,
}

fn call(
    node: &mut Acceptor<MemoryStorage>,
    session: &mut ProposerSession,
    request: Request,
) -> Response {
    node.handle(session, request)
        .unwrap_or_else(|e| Response::Error {
            message: e.to_string(),
        })
}

impl Sim {
    fn new(seed: u64, quorum: usize) -> Sim {
        let start = if seed % 2 == 1 {
            BRANCH_START_LSN
        } else {
            Lsn::ZERO
        };
        let nodes = (0..NODES)
            .map(|_| Some(Acceptor::open(MemoryStorage::new_at(start)).expect("open")))
            .collect();
        Sim {
            rng: Rng::new(seed),
            start,
            quorum,
            nodes,
            leader: None,
            acked: Vec::new(),
            events: Vec::new(),
            next_xid: 1,
            in_flight: Vec::new(),
            terms_led: std::collections::BTreeSet::new(),
            held: vec![std::collections::BTreeSet::new(); NODES],
        }
    }

    /// The index of WAL byte `lsn` in a log that starts at the timeline's start.
    fn offset(&self, lsn: Lsn) -> usize {
        (lsn.0 - self.start.0) as usize
    }

    fn node(&mut self, i: usize) -> &mut Acceptor<MemoryStorage> {
        self.nodes[i].as_mut().expect("nodes are always reopened")
    }

    fn status(&mut self, i: usize) -> AcceptorStatus {
        let start_lsn = self.start;
        match call(
            self.node(i),
            &mut ProposerSession::default(),
            Request::Hello {
                timeline: ids::TimelineId::from_u128(1),
                start_lsn,
            },
        ) {
            Response::Status(status) => status,
            other => panic!("Hello answered {other:?}"),
        }
    }

    /// The WAL `[start, end)` of safekeeper `i`.
    fn read_log(&mut self, i: usize, end: Lsn) -> Vec<u8> {
        let mut log = Vec::new();
        while self.start.0 + (log.len() as u64) < end.0 {
            let request = Request::ReadWal {
                start_lsn: self.start.add(log.len() as u64),
                end_lsn: end,
                max_bytes: 1 << 20,
            };
            match call(self.node(i), &mut ProposerSession::default(), request) {
                Response::Wal { data, .. } if !data.is_empty() => log.extend_from_slice(&data),
                other => panic!("ReadWal answered {other:?}"),
            }
        }
        log
    }

    fn elect(&mut self) -> Result<(), String> {
        let reachable: Vec<usize> = (0..NODES).filter(|_| self.rng.chance(75)).collect();
        let statuses: Vec<AcceptorStatus> = reachable.iter().map(|&i| self.status(i)).collect();
        let term = statuses.iter().map(|s| s.term).max().unwrap_or(0) + 1;
        let mut voters = Vec::new();
        for &i in &reachable {
            if let Response::Vote {
                granted: true,
                status,
            } = call(
                self.node(i),
                &mut ProposerSession::default(),
                Request::RequestVote { term },
            ) {
                voters.push((i, status));
            }
        }
        if voters.len() < self.quorum {
            self.events
                .push(format!("term {term}: {} votes, no leader", voters.len()));
            return Ok(());
        }
        if !self.terms_led.insert(term) {
            return Err(format!("a second leader was elected in term {term}"));
        }
        let statuses: Vec<AcceptorStatus> = voters.iter().map(|(_, s)| s.clone()).collect();
        let donor_pos = choose_donor(&statuses).expect("voters");
        let (donor_idx, donor) = voters[donor_pos].clone();
        let log = self.read_log(donor_idx, donor.flush_lsn);
        for (start, record) in &self.acked {
            let range = self.offset(*start)..self.offset(*start) + record.len();
            if log.get(range) != Some(&record[..]) {
                return Err(format!("term {term} continues safekeeper {donor_idx}'s log, which lacks the commit at {start}"));
            }
        }
        let mut history = donor.term_history.truncated(donor.flush_lsn);
        history.0.push(TermEntry {
            term,
            start_lsn: donor.flush_lsn,
        });
        self.events.push(format!(
            "term {term}: elected by {:?}, donor {donor_idx} at {}",
            voters.iter().map(|v| v.0).collect::<Vec<_>>(),
            donor.flush_lsn
        ));
        self.leader = Some(Leader {
            term,
            history,
            log,
            synced: vec![None; NODES],
            commit_lsn: Lsn::ZERO,
        });
        for (i, _) in voters {
            if self.rng.chance(10) {
                self.events
                    .push(format!("term {term}: proposer stalls during recovery"));
                break;
            }
            self.sync(i);
        }
        Ok(())
    }

    /// Brings safekeeper `i` into the leader's term: truncate to the agreement point, then
    /// send what it lacks.
    fn sync(&mut self, i: usize) {
        let Some(leader) = self.leader.as_ref() else {
            return;
        };
        let (term, history, end) = (
            leader.term,
            leader.history.clone(),
            self.start.add(leader.log.len() as u64),
        );
        let status = self.status(i);
        let truncate_lsn =
            history.truncation_point(end, &status.term_history, status.flush_lsn, self.start);
        let mut session = ProposerSession::default();
        let elected = Request::Elected {
            term,
            term_history: history,
            truncate_lsn,
        };
        self.maybe_keep(i, session, &elected);
        match call(self.node(i), &mut session, elected) {
            Response::Flushed { flush_lsn, .. } => {
                assert_eq!(flush_lsn, truncate_lsn);
                let leader = self.leader.as_mut().expect("leader");
                leader.synced[i] = Some((session, flush_lsn));
                self.events.push(format!(
                    "term {term}: safekeeper {i} truncated to {truncate_lsn}"
                ));
                // The proposer may die between Elected and the WAL that follows it: the
                // safekeeper then has the new term's history but not its log.
                if self.rng.chance(15) {
                    self.events.push(format!(
                        "term {term}: proposer dies before catching safekeeper {i} up"
                    ));
                    self.leader = None;
                    return;
                }
                self.push(i);
            }
            Response::Rejected { term: newer } => {
                self.events
                    .push(format!("term {term}: fenced by term {newer}"));
                self.leader = None;
            }
            other => self.events.push(format!(
                "term {term}: safekeeper {i} refused Elected: {other:?}"
            )),
        }
    }

    /// Sends safekeeper `i` the leader's log past its flush LSN.
    fn push(&mut self, i: usize) {
        let base = self.start;
        let Some(leader) = self.leader.as_mut() else {
            return;
        };
        let Some((mut session, flush)) = leader.synced[i] else {
            return;
        };
        let flush_offset = (flush.0 - base.0) as usize;
        if flush_offset >= leader.log.len() {
            return;
        }
        let data = Bytes::copy_from_slice(&leader.log[flush_offset..]);
        let request = Request::Append {
            term: leader.term,
            begin_lsn: flush,
            commit_lsn: leader.commit_lsn,
            data,
        };
        let term = leader.term;
        self.maybe_keep(i, session, &request);
        let node = self.nodes[i].as_mut().expect("node");
        let leader = self.leader.as_mut().expect("leader");
        match call(node, &mut session, request) {
            Response::Flushed { flush_lsn, .. } => leader.synced[i] = Some((session, flush_lsn)),
            Response::Rejected { term: newer } => {
                self.events
                    .push(format!("term {term}: fenced by term {newer}"));
                self.leader = None;
            }
            other => {
                self.events.push(format!(
                    "term {term}: safekeeper {i} refused Append: {other:?}"
                ));
                leader.synced[i] = None;
            }
        }
    }

    fn commit(&mut self) {
        let Some(leader) = self.leader.as_mut() else {
            return;
        };
        let xid = self.next_xid;
        self.next_xid += 1;
        let op = Op::Put {
            table: 1,
            key: Bytes::copy_from_slice(&xid.to_be_bytes()),
            value: Bytes::from_static(b"v"),
        };
        let record = wal::encode_record(&Transaction {
            xid,
            commit_time_us: 0,
            ops: vec![op],
        })
        .expect("record");
        let start = self.start.add(leader.log.len() as u64);
        leader.log.extend_from_slice(&record);
        let end = self.start.add(leader.log.len() as u64);
        let term = leader.term;
        for i in 0..NODES {
            if self.rng.chance(80) {
                self.push(i);
            }
        }
        let Some(leader) = self.leader.as_ref() else {
            return;
        };
        let acks = leader
            .synced
            .iter()
            .filter(|s| s.is_some_and(|(_, flush)| flush >= end))
            .count();
        if acks >= self.quorum {
            self.leader.as_mut().expect("leader").commit_lsn = end;
            self.acked.push((start, record));
            self.events.push(format!(
                "term {term}: xid {xid} acknowledged at {start} ({acks} acks)"
            ));
        } else {
            self.events.push(format!(
                "term {term}: xid {xid} at {start} not acknowledged ({acks} acks)"
            ));
        }
    }

    /// Keeps a copy of a message for a later, stale delivery (one in five messages).
    fn maybe_keep(&mut self, i: usize, session: ProposerSession, request: &Request) {
        if self.rng.chance(20) && self.in_flight.len() < 32 {
            self.in_flight.push((i, session, request.clone()));
        }
    }

    /// Delivers a copy of an old message: a duplicate, arriving after newer ones. Whatever the
    /// safekeeper answers, the invariants must still hold afterwards.
    fn deliver_stale(&mut self) {
        if self.in_flight.is_empty() {
            return;
        }
        let pick = self.rng.below(self.in_flight.len());
        let (i, mut session, request) = self.in_flight.swap_remove(pick);
        let what = match &request {
            Request::Elected {
                term, truncate_lsn, ..
            } => format!("Elected(term {term}, truncate {truncate_lsn})"),
            Request::Append {
                term,
                begin_lsn,
                data,
                ..
            } => format!("Append(term {term}, {begin_lsn}+{})", data.len()),
            other => format!("{other:?}"),
        };
        let answer = match call(self.node(i), &mut session, request) {
            Response::Flushed { flush_lsn, .. } => format!("flushed to {flush_lsn}"),
            Response::Rejected { term } => format!("rejected (term {term})"),
            Response::Error { .. } => "refused".to_string(),
            other => format!("{other:?}"),
        };
        self.events
            .push(format!("stale {what} to safekeeper {i}: {answer}"));
        // A stale message may have moved the safekeeper: the leader's view of it is gone.
        if let Some(leader) = self.leader.as_mut() {
            leader.synced[i] = None;
        }
    }

    fn crash(&mut self, i: usize) {
        let kept = self.rng.below(64);
        let storage = self.nodes[i].take().expect("node").into_storage();
        let storage = storage.crash(kept).expect("crash recovery");
        self.nodes[i] = Some(Acceptor::open(storage).expect("reopen after crash"));
        if let Some(leader) = self.leader.as_mut() {
            leader.synced[i] = None;
        }
        self.events.push(format!(
            "safekeeper {i} crashed, {kept} unsynced bytes kept"
        ));
    }

    /// Every acknowledged commit is still on a majority of all safekeepers; no safekeeper
    /// lost one it held; any two safekeepers agree below the lower of their commit LSNs.
    fn check_invariants(&mut self) -> Result<(), String> {
        let acked = self.acked.clone();
        let logs: Vec<Vec<u8>> = (0..NODES)
            .map(|i| {
                let flush = self.node(i).flush_lsn();
                self.read_log(i, flush)
            })
            .collect();
        let base = self.start;
        let holds = |log: &Vec<u8>, (start, record): &(Lsn, Bytes)| {
            let offset = (start.0 - base.0) as usize;
            log.get(offset..offset + record.len()) == Some(&record[..])
        };
        for commit in &acked {
            let holders = logs.iter().filter(|log| holds(log, commit)).count();
            if holders < majority(NODES) {
                return Err(format!(
                    "the commit at {} is on only {holders} safekeepers",
                    commit.0
                ));
            }
        }
        for (i, log) in logs.iter().enumerate() {
            let now: std::collections::BTreeSet<usize> = (0..acked.len())
                .filter(|&k| holds(log, &acked[k]))
                .collect();
            if let Some(lost) = self.held[i].difference(&now).next() {
                return Err(format!(
                    "safekeeper {i} truncated the committed record at {}",
                    acked[*lost].0
                ));
            }
            self.held[i] = now;
        }
        let commits: Vec<Lsn> = (0..NODES).map(|i| self.node(i).commit_lsn()).collect();
        for i in 0..NODES {
            for j in i + 1..NODES {
                let upto = self.offset(commits[i].min(commits[j]));
                if logs[i][..upto] != logs[j][..upto] {
                    return Err(format!(
                        "safekeepers {i} and {j} disagree below their commit LSNs ({} and {})",
                        commits[i], commits[j]
                    ));
                }
            }
        }
        Ok(())
    }

    fn step(&mut self) -> Result<(), String> {
        match self.rng.below(100) {
            0..=11 => self.elect()?,
            12..=69 => self.commit(),
            70..=79 => {
                let i = self.rng.below(NODES);
                self.crash(i);
            }
            80..=87 => self.deliver_stale(),
            _ => {
                let i = self.rng.below(NODES);
                if self.leader.as_ref().is_some_and(|l| l.synced[i].is_none()) {
                    self.sync(i);
                }
            }
        }
        self.check_invariants()
    }
}

/// Runs one seed; the event log, or the violated invariant with the log up to it.
fn run(seed: u64, quorum: usize) -> Result<Vec<String>, String> {
    let mut sim = Sim::new(seed, quorum);
    for _ in 0..STEPS {
        if let Err(violation) = sim.step() {
            return Err(format!(
                "seed {seed}: {violation}\n  {}",
                sim.events.join("\n  ")
            ));
        }
    }
    Ok(sim.events)
}

fn seeds() -> u64 {
    std::env::var("OMENDB_SIM_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

#[test]
fn simulation_keeps_every_acknowledged_commit() {
    let mut n_acked = 0;
    for seed in 0..seeds() {
        let events = run(seed, majority(NODES)).unwrap_or_else(|violation| panic!("{violation}"));
        n_acked += events
            .iter()
            .filter(|e| e.contains("acknowledged at"))
            .count();
    }
    // The simulation must actually commit and elect, or it proves nothing.
    assert!(
        n_acked > seeds() as usize * 5,
        "only {n_acked} commits acknowledged"
    );
}

#[test]
fn simulation_is_deterministic() {
    for seed in [1, 42, 1_000_003] {
        assert_eq!(run(seed, majority(NODES)), run(seed, majority(NODES)));
    }
}

#[test]
fn a_quorum_of_one_is_caught() {
    let caught = (0..seeds()).find(|&seed| run(seed, 1).is_err());
    assert!(
        caught.is_some(),
        "a quorum of one safekeeper lost no commit in {} seeds",
        seeds()
    );
}
