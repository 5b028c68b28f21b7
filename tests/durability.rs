//! Durability under faults, with real processes on loopback and real clients: a bank
//! workload while safekeepers are SIGKILLed one at a time, every safekeeper SIGKILLed at the
//! same instant, the compute SIGKILLed mid-transaction and mid-COMMIT, and a network
//! partition between the compute and two safekeepers (through `support::relay`, which has a
//! test of its own here).
//!
//! Each test keeps a client-side ledger of what was attempted and what the server
//! acknowledged, and checks the final state against it: an acknowledged commit is never
//! lost, nothing that was not attempted appears, and a transaction whose outcome the client
//! could not learn (the COMMIT errored or the connection dropped) is either all there or not
//! there at all.
//!
//! Fault schedules come from a seeded generator; the seed is printed and
//! `OMENDB_FAULT_SEED=<seed>` repeats the schedule (the interleaving with the processes still
//! varies from run to run).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::cluster::{Cluster, Options, SAFEKEEPERS};
use support::pg::{connect, runtime, sqlstate, try_connect};
use support::relay::Relay;
use support::rng::{seed_from_env, Rng};
use tokio_postgres::{Client, SimpleQueryMessage};

/// Bound on one client operation (a transfer, an INSERT, a read), so a stuck server fails
/// the test instead of hanging it.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the cluster may take to accept writes again after the last fault.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The seed from `OMENDB_FAULT_SEED`, or a fresh one; printed so a failure can be repeated.
fn seeded_rng(test: &str) -> (Rng, u64) {
    let seed = seed_from_env("OMENDB_FAULT_SEED");
    eprintln!("{test}: seed {seed} (OMENDB_FAULT_SEED={seed} repeats the fault schedule)");
    (Rng(seed), seed)
}

/// The first column of the first row of a simple query, as text parsed to i64.
async fn query_i64(client: &Client, sql: &str) -> Result<Option<i64>, tokio_postgres::Error> {
    for message in client.simple_query(sql).await? {
        if let SimpleQueryMessage::Row(row) = message {
            return Ok(row.get(0).map(|v| v.parse().expect("an integer")));
        }
    }
    Ok(None)
}

/// Runs `sql` (a write that may be applied more than once: no unique key) until it succeeds,
/// for at most [`SETTLE_TIMEOUT`]. Once a later
/// commit is acknowledged, every earlier WAL record of this compute is on a majority too (the
/// commit LSN only grows), so the outcome of every ambiguous transaction is then final.
async fn settle(url: &str, sql: &str) -> Client {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let attempt = async {
            let client = try_connect(url).await?;
            client.batch_execute(sql).await?;
            Ok::<Client, tokio_postgres::Error>(client)
        };
        match tokio::time::timeout(OPERATION_TIMEOUT, attempt).await {
            Ok(Ok(client)) => return client,
            Ok(Err(e)) if Instant::now() < deadline => eprintln!("settling: {e}; retrying"),
            Err(_) if Instant::now() < deadline => eprintln!("settling: timed out; retrying"),
            other => panic!("the cluster did not accept writes again: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The open connection in `slot`; when there is none (or it closed), one connection attempt
/// (with a short pause if it fails) and `None`, so the caller checks whether to stop first.
async fn open_connection<'a>(slot: &'a mut Option<Client>, url: &str) -> Option<&'a Client> {
    if slot.as_ref().is_some_and(|c| !c.is_closed()) {
        return slot.as_ref();
    }
    *slot = try_connect(url).await.ok();
    if slot.is_none() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// What the client learned about one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// COMMIT was acknowledged: it must be there.
    Committed,
    /// It failed before COMMIT was sent, or COMMIT failed with a serialization failure
    /// (checked before anything is written): it must not be there.
    Aborted,
    /// COMMIT was sent and no answer, or an error other than 40001, came back: it may be
    /// there, but only as a whole.
    Ambiguous,
}

// ---------------------------------------------------------------------------------------
// 1. Bank
// ---------------------------------------------------------------------------------------

const BANK_ACCOUNTS: i32 = 100;
const BANK_INITIAL_BALANCE: i64 = 1_000;
const BANK_TOTAL: i64 = BANK_ACCOUNTS as i64 * BANK_INITIAL_BALANCE;
const BANK_CLIENTS: usize = 10;
const BANK_READERS: usize = 2;
/// COMMIT's wait for a majority in the bank test.
const BANK_COMMIT_TIMEOUT_MS: u64 = 1_000;
/// One kill cycle in this many takes two safekeepers down at once (losing the majority).
const BANK_QUORUM_LOSS_ONE_IN: u64 = 5;
/// Kill cycles when `OMENDB_BANK_CYCLES` is not set.
const BANK_CYCLES_DEFAULT: u64 = 30;
/// A writer checks the total after every this many transfers.
const BANK_SUM_CHECK_EVERY: u64 = 5;
/// Transfer ids of client `c` are `c * BANK_ID_STRIDE + sequence`.
const BANK_ID_STRIDE: i64 = 1_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Transfer {
    id: i64,
    src: i32,
    dst: i32,
    amount: i64,
}

#[derive(Default)]
struct BankLedger {
    attempted: BTreeMap<i64, (Transfer, Option<Outcome>)>,
    /// Totals that differed from `BANK_TOTAL`, each with the reader that saw it.
    wrong_sums: Vec<String>,
}

#[derive(Default)]
struct BankCounters {
    acknowledged: AtomicU64,
    ambiguous: AtomicU64,
    retried: AtomicU64,
    aborted_other: AtomicU64,
    sums_checked: AtomicU64,
}

/// One transfer as a transaction of four statements and a COMMIT; with the outcome, whether
/// it failed with a serialization failure (the client then moves on to a fresh transfer).
async fn run_transfer(client: &Client, t: &Transfer) -> (Outcome, bool) {
    let statements = [
        "BEGIN".to_string(),
        format!(
            "UPDATE accounts SET balance = balance - {} WHERE id = {}",
            t.amount, t.src
        ),
        format!(
            "UPDATE accounts SET balance = balance + {} WHERE id = {}",
            t.amount, t.dst
        ),
        format!(
            "INSERT INTO transfers VALUES ({}, {}, {}, {})",
            t.id, t.src, t.dst, t.amount
        ),
    ];
    let serialization_failure = |e: &tokio_postgres::Error| sqlstate(e) == "40001";
    for sql in &statements {
        if let Err(e) = client.batch_execute(sql).await {
            // COMMIT was never sent: the transaction cannot commit.
            let _ = client.batch_execute("ROLLBACK").await;
            return (Outcome::Aborted, serialization_failure(&e));
        }
    }
    match client.batch_execute("COMMIT").await {
        Ok(()) => (Outcome::Committed, false),
        Err(e) if serialization_failure(&e) => (Outcome::Aborted, true),
        Err(_) => (Outcome::Ambiguous, false),
    }
}

/// Checks the total once; a wrong total is recorded, an error ignored (the cluster is being
/// faulted).
async fn check_sum(
    client: &Client,
    who: &str,
    ledger: &Mutex<BankLedger>,
    counters: &BankCounters,
) {
    let read = tokio::time::timeout(
        OPERATION_TIMEOUT,
        query_i64(client, "SELECT sum(balance) FROM accounts"),
    )
    .await;
    if let Ok(Ok(sum)) = read {
        counters.sums_checked.fetch_add(1, Ordering::Relaxed);
        if sum != Some(BANK_TOTAL) {
            ledger
                .lock()
                .expect("ledger lock")
                .wrong_sums
                .push(format!("{who} read sum {sum:?}"));
        }
    }
}

async fn bank_client(
    url: String,
    client_idx: usize,
    mut rng: Rng,
    stop: Arc<AtomicBool>,
    ledger: Arc<Mutex<BankLedger>>,
    counters: Arc<BankCounters>,
) {
    let who = format!("client {client_idx}");
    let mut client: Option<Client> = None;
    let mut sequence = 0i64;
    while !stop.load(Ordering::Relaxed) {
        let Some(current) = open_connection(&mut client, &url).await else {
            continue;
        };
        sequence += 1;
        let src = rng.below(BANK_ACCOUNTS as u64) as i32;
        let dst = (src + 1 + rng.below(BANK_ACCOUNTS as u64 - 1) as i32) % BANK_ACCOUNTS;
        let transfer = Transfer {
            id: client_idx as i64 * BANK_ID_STRIDE + sequence,
            src,
            dst,
            amount: 1 + rng.below(50) as i64,
        };
        ledger
            .lock()
            .expect("ledger lock")
            .attempted
            .insert(transfer.id, (transfer, None));
        let (outcome, serialization_failure) =
            tokio::time::timeout(OPERATION_TIMEOUT, run_transfer(current, &transfer))
                .await
                // The COMMIT may have been sent: the outcome is unknown, and the connection is
                // dropped so the server ends the session.
                .unwrap_or((Outcome::Ambiguous, false));
        match outcome {
            Outcome::Committed => &counters.acknowledged,
            Outcome::Ambiguous => &counters.ambiguous,
            Outcome::Aborted if serialization_failure => &counters.retried,
            Outcome::Aborted => &counters.aborted_other,
        }
        .fetch_add(1, Ordering::Relaxed);
        ledger
            .lock()
            .expect("ledger lock")
            .attempted
            .get_mut(&transfer.id)
            .expect("attempted")
            .1 = Some(outcome);
        if outcome == Outcome::Ambiguous || (outcome == Outcome::Aborted && !serialization_failure)
        {
            // A fresh session: the old one may be broken or stuck in a failed transaction.
            client = None;
            continue;
        }
        if (sequence as u64).is_multiple_of(BANK_SUM_CHECK_EVERY) {
            check_sum(current, &who, &ledger, &counters).await;
        }
    }
}

async fn bank_reader(
    url: String,
    reader_idx: usize,
    stop: Arc<AtomicBool>,
    ledger: Arc<Mutex<BankLedger>>,
    counters: Arc<BankCounters>,
) {
    let who = format!("reader {reader_idx}");
    let mut client: Option<Client> = None;
    while !stop.load(Ordering::Relaxed) {
        match client.as_ref().filter(|c| !c.is_closed()) {
            Some(current) => check_sum(current, &who, &ledger, &counters).await,
            None => client = try_connect(&url).await.ok(),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Money is neither created nor destroyed while safekeepers are SIGKILLed and restarted (one
/// at a time, and in one cycle of five two at once, so the majority is lost for a while) under
/// 10 concurrent transfer clients: every total read is 100,000; every
/// acknowledged transfer is in the log; no transfer that was never attempted, or that
/// certainly aborted, is; and each balance equals the initial balance plus the net of the
/// log, so an ambiguous transfer is either entirely applied or entirely absent.
/// `OMENDB_BANK_CYCLES` sets the number of kill cycles (default 30).
#[test]
fn bank_transfers_survive_safekeeper_kills() {
    let cycles: u64 = std::env::var("OMENDB_BANK_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(BANK_CYCLES_DEFAULT);
    let (mut rng, seed) = seeded_rng("bank");
    let rt = runtime();
    let mut cluster = Cluster::start_with(
        "bank",
        Options {
            commit_timeout_ms: BANK_COMMIT_TIMEOUT_MS,
            ..Options::default()
        },
    );
    let url = cluster.url();
    rt.block_on(async {
        let client = connect(&url).await;
        client
            .batch_execute(
                "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint);
                 CREATE TABLE transfers (id bigint PRIMARY KEY, src int, dst int, amount bigint);
                 CREATE TABLE bank_settle (id int)",
            )
            .await
            .expect("create tables");
        let values: Vec<String> = (0..BANK_ACCOUNTS)
            .map(|id| format!("({id}, {BANK_INITIAL_BALANCE})"))
            .collect();
        client
            .batch_execute(&format!(
                "INSERT INTO accounts VALUES {}",
                values.join(", ")
            ))
            .await
            .expect("open the accounts");
    });

    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let ledger = Arc::new(Mutex::new(BankLedger::default()));
    let counters = Arc::new(BankCounters::default());
    let mut tasks = Vec::new();
    for client_idx in 0..BANK_CLIENTS {
        tasks.push(rt.spawn(bank_client(
            url.clone(),
            client_idx,
            rng.fork(),
            stop.clone(),
            ledger.clone(),
            counters.clone(),
        )));
    }
    for reader_idx in 0..BANK_READERS {
        tasks.push(rt.spawn(bank_reader(
            url.clone(),
            reader_idx,
            stop.clone(),
            ledger.clone(),
            counters.clone(),
        )));
    }
    // The fault schedule runs on this thread while the clients run on the runtime.
    let mut cycles_done = 0;
    for _ in 0..cycles {
        if !ledger.lock().expect("ledger lock").wrong_sums.is_empty() {
            break;
        }
        cycles_done += 1;
        let first = rng.below(SAFEKEEPERS.len() as u64) as usize;
        if rng.below(BANK_QUORUM_LOSS_ONE_IN) == 0 {
            // Two at once: the majority is gone for longer than the commit timeout now and
            // then, so some COMMITs fail with their outcome unknown (ambiguous transfers).
            let second = (first + 1 + rng.below(2) as usize) % SAFEKEEPERS.len();
            cluster.kill_many(&[SAFEKEEPERS[first], SAFEKEEPERS[second]]);
            std::thread::sleep(rng.millis(0, 2 * BANK_COMMIT_TIMEOUT_MS));
            cluster.start_component(SAFEKEEPERS[first]);
            cluster.start_component(SAFEKEEPERS[second]);
        } else {
            cluster.kill(SAFEKEEPERS[first]);
            std::thread::sleep(rng.millis(0, 300));
            cluster.start_component(SAFEKEEPERS[first]);
        }
        std::thread::sleep(rng.millis(50, 500));
    }
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for task in tasks {
            task.await.expect("a bank task panicked");
        }
    });

    let (transfers, balances) = rt.block_on(async {
        let client = settle(&url, "INSERT INTO bank_settle VALUES (1)").await;
        // One transaction, so the log and the balances are read at the same snapshot.
        client.batch_execute("BEGIN").await.expect("begin");
        let transfers: Vec<Transfer> = client
            .query("SELECT id, src, dst, amount FROM transfers", &[])
            .await
            .expect("read transfers")
            .iter()
            .map(|r| Transfer {
                id: r.get(0),
                src: r.get(1),
                dst: r.get(2),
                amount: r.get(3),
            })
            .collect();
        let balances: BTreeMap<i32, i64> = client
            .query("SELECT id, balance FROM accounts", &[])
            .await
            .expect("read balances")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        client.batch_execute("COMMIT").await.expect("commit");
        (transfers, balances)
    });
    let elapsed = started.elapsed();

    let ledger = ledger.lock().expect("ledger lock");
    let logged: BTreeMap<i64, Transfer> = transfers.iter().map(|t| (t.id, *t)).collect();
    let acknowledged = counters.acknowledged.load(Ordering::Relaxed);
    let ambiguous_applied = ledger
        .attempted
        .iter()
        .filter(|(id, (_, o))| *o == Some(Outcome::Ambiguous) && logged.contains_key(id))
        .count();
    // Printed before the checks, so a failed run reports its figures too (bench/bank.sh).
    eprintln!(
        "bank summary: cycles={cycles_done} acknowledged={acknowledged} ambiguous={} \
         ambiguous_applied={ambiguous_applied} retried={} aborted_other={} sums_checked={} \
         elapsed_s={:.1} seed={seed}",
        counters.ambiguous.load(Ordering::Relaxed),
        counters.retried.load(Ordering::Relaxed),
        counters.aborted_other.load(Ordering::Relaxed),
        counters.sums_checked.load(Ordering::Relaxed),
        elapsed.as_secs_f64()
    );

    let context = format!("seed {seed}; cluster folder {}", cluster.dir.display());
    assert!(
        ledger.wrong_sums.is_empty(),
        "wrong totals: {:?}; {context}",
        ledger.wrong_sums
    );
    assert_eq!(
        logged.len(),
        transfers.len(),
        "duplicate transfer ids; {context}"
    );
    for (id, (attempt, outcome)) in ledger.attempted.iter() {
        match outcome.expect("every attempt has an outcome") {
            Outcome::Committed => assert_eq!(
                logged.get(id),
                Some(attempt),
                "acknowledged transfer {id} lost; {context}"
            ),
            Outcome::Aborted => assert!(
                !logged.contains_key(id),
                "aborted transfer {id} is in the log; {context}"
            ),
            Outcome::Ambiguous => {}
        }
    }
    for (id, t) in &logged {
        let attempt = ledger.attempted.get(id).map(|(t, _)| t);
        assert_eq!(
            attempt,
            Some(t),
            "transfer {id} in the log was never attempted as {t:?}; {context}"
        );
    }
    let mut expected: BTreeMap<i32, i64> = (0..BANK_ACCOUNTS)
        .map(|id| (id, BANK_INITIAL_BALANCE))
        .collect();
    for t in &transfers {
        *expected.get_mut(&t.src).expect("account") -= t.amount;
        *expected.get_mut(&t.dst).expect("account") += t.amount;
    }
    assert_eq!(
        balances, expected,
        "balances differ from the initial balances plus the transfer log; {context}"
    );
    assert_eq!(balances.values().sum::<i64>(), BANK_TOTAL, "{context}");
    assert_eq!(
        cycles_done, cycles,
        "the fault schedule stopped early; {context}"
    );
    assert!(acknowledged > 0, "no transfer was acknowledged; {context}");
}

// ---------------------------------------------------------------------------------------
// Shared by the insert-based tests
// ---------------------------------------------------------------------------------------

/// Per transaction id: its outcome once the client learned it (`None` while in flight).
type Ledger = Arc<Mutex<BTreeMap<i64, Option<Outcome>>>>;

/// Checks `present` (transaction id → rows found) against the ledger: acknowledged
/// transactions have all `rows` rows, aborted ones none, ambiguous ones all or none, and
/// nothing that was never attempted is there.
fn check_all_or_nothing(
    present: &BTreeMap<i64, i64>,
    ledger: &BTreeMap<i64, Option<Outcome>>,
    rows: i64,
    context: &str,
) {
    for (txn, outcome) in ledger {
        let found = present.get(txn).copied().unwrap_or(0);
        match outcome {
            Some(Outcome::Committed) => assert_eq!(
                found, rows,
                "acknowledged transaction {txn}: {found} of {rows} rows; {context}"
            ),
            Some(Outcome::Aborted) => assert_eq!(
                found, 0,
                "aborted transaction {txn}: {found} rows; {context}"
            ),
            Some(Outcome::Ambiguous) | None => assert!(
                found == 0 || found == rows,
                "transaction {txn} of unknown outcome is partly there: {found} of {rows} rows; \
                 {context}"
            ),
        }
    }
    for txn in present.keys() {
        assert!(
            ledger.contains_key(txn),
            "transaction {txn} was never attempted; {context}"
        );
    }
}

/// Blocks until `counter` passes `above`, at most [`SETTLE_TIMEOUT`].
fn wait_for_progress(counter: &AtomicU64, above: u64, what: &str) {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while counter.load(Ordering::Relaxed) <= above {
        assert!(Instant::now() < deadline, "no progress: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------
// 2. Every safekeeper at once
// ---------------------------------------------------------------------------------------

const INSERT_WRITERS: usize = 3;
const ALL_SAFEKEEPER_KILLS: usize = 5;
/// Commit timeout of that test; the safekeepers stay down for up to 1.5 times as long, so
/// some INSERTs wait out the outage and are acknowledged and some time out (ambiguous).
const ALL_SAFEKEEPERS_COMMIT_TIMEOUT_MS: u64 = 1_000;
/// Row ids of writer `w` are `w * INSERT_ID_STRIDE + sequence`.
const INSERT_ID_STRIDE: i64 = 1_000_000_000;

/// Autocommit INSERTs of one row each until `stop`; any error leaves the outcome ambiguous.
async fn insert_writer(
    url: String,
    writer_idx: usize,
    stop: Arc<AtomicBool>,
    ledger: Ledger,
    acknowledged: Arc<AtomicU64>,
) {
    let mut client: Option<Client> = None;
    let mut sequence = 0i64;
    while !stop.load(Ordering::Relaxed) {
        let Some(current) = open_connection(&mut client, &url).await else {
            continue;
        };
        sequence += 1;
        let id = writer_idx as i64 * INSERT_ID_STRIDE + sequence;
        ledger.lock().expect("ledger lock").insert(id, None);
        let sql = format!("INSERT INTO w VALUES ({id}, {writer_idx})");
        let result = tokio::time::timeout(OPERATION_TIMEOUT, current.batch_execute(&sql)).await;
        let outcome = match result {
            Ok(Ok(())) => {
                acknowledged.fetch_add(1, Ordering::Relaxed);
                Outcome::Committed
            }
            Ok(Err(_)) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Outcome::Ambiguous
            }
            Err(_) => {
                client = None;
                Outcome::Ambiguous
            }
        };
        ledger
            .lock()
            .expect("ledger lock")
            .insert(id, Some(outcome));
    }
}

/// How many rows of `table` have each id.
async fn rows_by_id(client: &Client, table: &str) -> BTreeMap<i64, i64> {
    let mut present = BTreeMap::new();
    for row in client
        .query(&format!("SELECT id FROM {table}"), &[])
        .await
        .expect("read the rows")
    {
        *present.entry(row.get::<_, i64>(0)).or_insert(0) += 1;
    }
    present
}

/// SIGKILL of all three safekeepers at the same instant, five times during autocommit
/// writes, loses no acknowledged INSERT: the safekeepers acknowledge only what they fsynced.
/// After the cluster settles, the rows are read through the compute from the pageserver, and
/// again after SIGKILL of the pageserver and the compute.
#[test]
fn all_safekeepers_killed_at_once_keep_acknowledged_inserts() {
    let (mut rng, seed) = seeded_rng("all-safekeepers");
    let rt = runtime();
    let mut cluster = Cluster::start_with(
        "all-safekeepers",
        Options {
            commit_timeout_ms: ALL_SAFEKEEPERS_COMMIT_TIMEOUT_MS,
            ..Options::default()
        },
    );
    let url = cluster.url();
    rt.block_on(async {
        connect(&url)
            .await
            .batch_execute(
                "CREATE TABLE w (id bigint PRIMARY KEY, writer int); CREATE TABLE w_settle (id int)",
            )
            .await
            .expect("create table");
    });
    let stop = Arc::new(AtomicBool::new(false));
    let ledger: Ledger = Arc::default();
    let acknowledged = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..INSERT_WRITERS)
        .map(|writer_idx| {
            rt.spawn(insert_writer(
                url.clone(),
                writer_idx,
                stop.clone(),
                ledger.clone(),
                acknowledged.clone(),
            ))
        })
        .collect();
    for kill in 0..ALL_SAFEKEEPER_KILLS {
        // Each kill lands on a cluster that commits again after the previous one.
        let before = acknowledged.load(Ordering::Relaxed);
        wait_for_progress(
            &acknowledged,
            before,
            "writes after the safekeepers restarted",
        );
        std::thread::sleep(rng.millis(0, 300));
        eprintln!("kill {kill}: SIGKILL of every safekeeper");
        cluster.kill_many(&SAFEKEEPERS);
        std::thread::sleep(rng.millis(0, ALL_SAFEKEEPERS_COMMIT_TIMEOUT_MS * 3 / 2));
        for sk in SAFEKEEPERS {
            cluster.start_component(sk);
        }
    }
    let before = acknowledged.load(Ordering::Relaxed);
    wait_for_progress(&acknowledged, before, "writes after the last restart");
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for writer in writers {
            writer.await.expect("a writer panicked");
        }
    });

    let ledger = ledger.lock().expect("ledger lock").clone();
    let context = format!("seed {seed}; cluster folder {}", cluster.dir.display());
    let present = rt.block_on(async {
        let client = settle(&url, "INSERT INTO w_settle VALUES (1)").await;
        rows_by_id(&client, "w").await
    });
    check_all_or_nothing(&present, &ledger, 1, &context);

    cluster.kill_many(&["pageserver", "compute"]);
    cluster.start_component("pageserver");
    cluster.start_component("compute");
    let after_restart = rt.block_on(async { rows_by_id(&connect(&url).await, "w").await });
    assert_eq!(
        after_restart, present,
        "rows changed across a pageserver and compute restart; {context}"
    );
    let ambiguous = ledger
        .values()
        .filter(|o| **o == Some(Outcome::Ambiguous))
        .count();
    eprintln!(
        "all-safekeepers: kills={ALL_SAFEKEEPER_KILLS} acknowledged={} ambiguous={ambiguous} \
         rows={}",
        acknowledged.load(Ordering::Relaxed),
        present.len()
    );
}

// ---------------------------------------------------------------------------------------
// 3. Compute killed mid-transaction
// ---------------------------------------------------------------------------------------

const TXN_ROWS: i64 = 5;
const TXN_WRITERS: usize = 3;
const COMPUTE_KILL_ROUNDS: usize = 12;
/// The compute is killed at most this long after an in-flight COMMIT is sent: a commit takes
/// about a millisecond on loopback, so kills land before, during and after it.
const COMMIT_KILL_DELAY_US_MAX: u64 = 1_500;
/// Row ids of transaction `txn` are `txn * TXN_ID_STRIDE + n`.
const TXN_ID_STRIDE: i64 = 100;

/// BEGIN, [`TXN_ROWS`] INSERTs with short pauses between them, COMMIT.
async fn run_txn(client: &Client, txn: i64, rng: &mut Rng) -> Outcome {
    if client.batch_execute("BEGIN").await.is_err() {
        return Outcome::Aborted;
    }
    for n in 0..TXN_ROWS {
        let sql = format!("INSERT INTO c VALUES ({}, {txn})", txn * TXN_ID_STRIDE + n);
        if client.batch_execute(&sql).await.is_err() {
            return Outcome::Aborted;
        }
        tokio::time::sleep(rng.millis(0, 5)).await;
    }
    match client.batch_execute("COMMIT").await {
        Ok(()) => Outcome::Committed,
        Err(_) => Outcome::Ambiguous,
    }
}

/// Transactions one after the other until one does not commit (the compute was killed).
async fn txn_writer(
    url: String,
    txn_first: i64,
    mut rng: Rng,
    stop: Arc<AtomicBool>,
    ledger: Ledger,
) {
    let Ok(client) = try_connect(&url).await else {
        return;
    };
    let mut txn = txn_first;
    while !stop.load(Ordering::Relaxed) && !client.is_closed() {
        ledger.lock().expect("ledger lock").insert(txn, None);
        let outcome = tokio::time::timeout(OPERATION_TIMEOUT, run_txn(&client, txn, &mut rng))
            .await
            .unwrap_or(Outcome::Ambiguous);
        ledger
            .lock()
            .expect("ledger lock")
            .insert(txn, Some(outcome));
        if outcome != Outcome::Committed {
            // The compute died (or the transaction failed): this writer is done.
            return;
        }
        txn += 1;
    }
}

/// A transaction whose COMMIT is sent without waiting for the answer: signals `sent` once the
/// COMMIT is on its way, then records what came back (if anything).
async fn commit_in_flight(
    url: String,
    txn: i64,
    ledger: Ledger,
    sent: std::sync::mpsc::Sender<()>,
) {
    let client = connect(&url).await;
    ledger.lock().expect("ledger lock").insert(txn, None);
    client.batch_execute("BEGIN").await.expect("begin");
    for n in 0..TXN_ROWS {
        let sql = format!("INSERT INTO c VALUES ({}, {txn})", txn * TXN_ID_STRIDE + n);
        client.batch_execute(&sql).await.expect("insert");
    }
    let commit = tokio::spawn(async move { client.batch_execute("COMMIT").await });
    // Let the COMMIT reach the connection task before the compute is killed.
    tokio::task::yield_now().await;
    sent.send(()).expect("the test waits for the COMMIT");
    let outcome = match tokio::time::timeout(OPERATION_TIMEOUT, commit).await {
        Ok(Ok(Ok(()))) => Outcome::Committed,
        _ => Outcome::Ambiguous,
    };
    ledger
        .lock()
        .expect("ledger lock")
        .insert(txn, Some(outcome));
}

/// Rows of `c` per transaction id, checking that each row id belongs to its transaction.
async fn rows_by_txn(client: &Client) -> BTreeMap<i64, i64> {
    let mut present = BTreeMap::new();
    for row in client
        .query("SELECT id, txn FROM c", &[])
        .await
        .expect("read the rows")
    {
        let (id, txn): (i64, i64) = (row.get(0), row.get(1));
        assert_eq!(
            id / TXN_ID_STRIDE,
            txn,
            "row {id} is not one of transaction {txn}'s"
        );
        assert!(id % TXN_ID_STRIDE < TXN_ROWS, "row {id} was never inserted");
        *present.entry(txn).or_insert(0) += 1;
    }
    present
}

/// SIGKILL of the compute while transactions are open, and right after a COMMIT was sent but
/// before its answer: after a restart every transaction has all its rows or none,
/// acknowledged ones have all, and a transaction's fate, once seen, never changes in later
/// rounds.
#[test]
fn compute_killed_mid_transaction_commits_all_or_nothing() {
    let (mut rng, seed) = seeded_rng("compute-kill");
    let rt = runtime();
    let mut cluster = Cluster::start("compute-kill");
    let url = cluster.url();
    rt.block_on(async {
        connect(&url)
            .await
            .batch_execute("CREATE TABLE c (id bigint PRIMARY KEY, txn bigint)")
            .await
            .expect("create table");
    });
    let ledger: Ledger = Arc::default();
    // Rows per transaction as first seen after a restart: later rounds must agree.
    let mut decided: BTreeMap<i64, i64> = BTreeMap::new();
    let mut in_flight = Vec::new();
    for round in 0..COMPUTE_KILL_ROUNDS {
        let round_base = (round as i64 + 1) * 1_000_000;
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks: Vec<_> = (0..TXN_WRITERS)
            .map(|writer| {
                rt.spawn(txn_writer(
                    url.clone(),
                    round_base + writer as i64 * 10_000,
                    rng.fork(),
                    stop.clone(),
                    ledger.clone(),
                ))
            })
            .collect();
        if round % 2 == 0 {
            // Mid-transaction: some writers are between statements, some in COMMIT.
            std::thread::sleep(rng.millis(100, 800));
        } else {
            let txn = round_base + 900_000;
            in_flight.push(txn);
            let (sent_tx, sent_rx) = std::sync::mpsc::channel();
            tasks.push(rt.spawn(commit_in_flight(url.clone(), txn, ledger.clone(), sent_tx)));
            sent_rx
                .recv_timeout(OPERATION_TIMEOUT)
                .expect("the in-flight transaction sent its COMMIT");
            std::thread::sleep(Duration::from_micros(rng.below(COMMIT_KILL_DELAY_US_MAX)));
        }
        eprintln!("round {round}: SIGKILL of the compute");
        cluster.kill("compute");
        stop.store(true, Ordering::Relaxed);
        rt.block_on(async {
            for task in tasks {
                tokio::time::timeout(OPERATION_TIMEOUT * 2, task)
                    .await
                    .expect("a writer hung after the compute died")
                    .expect("a writer panicked");
            }
        });
        cluster.start_component("compute");

        let context = format!(
            "round {round}; seed {seed}; cluster folder {}",
            cluster.dir.display()
        );
        let present = rt.block_on(async { rows_by_txn(&connect(&url).await).await });
        let ledger = ledger.lock().expect("ledger lock").clone();
        check_all_or_nothing(&present, &ledger, TXN_ROWS, &context);
        for txn in ledger.keys() {
            let found = present.get(txn).copied().unwrap_or(0);
            let first_seen = *decided.entry(*txn).or_insert(found);
            assert_eq!(
                found, first_seen,
                "transaction {txn} had {first_seen} rows after an earlier restart, now {found}; \
                 {context}"
            );
        }
    }
    let ledger = ledger.lock().expect("ledger lock").clone();
    let count = |wanted: Outcome| ledger.values().filter(|o| **o == Some(wanted)).count();
    assert!(count(Outcome::Committed) > 0, "no transaction committed");
    let ambiguous_kept = ledger
        .iter()
        .filter(|(t, o)| **o == Some(Outcome::Ambiguous) && decided[*t] == TXN_ROWS)
        .count();
    // How the in-flight COMMITs ended: acknowledged, unacknowledged but kept, or lost.
    let in_flight_acknowledged = in_flight
        .iter()
        .filter(|t| ledger[*t] == Some(Outcome::Committed))
        .count();
    let in_flight_kept = in_flight.iter().filter(|t| decided[*t] == TXN_ROWS).count();
    eprintln!(
        "compute-kill: rounds={COMPUTE_KILL_ROUNDS} committed={} aborted={} ambiguous={} \
         ambiguous_kept={ambiguous_kept} commits_in_flight={} in_flight_acknowledged=\
         {in_flight_acknowledged} in_flight_kept={in_flight_kept}",
        count(Outcome::Committed),
        count(Outcome::Aborted),
        count(Outcome::Ambiguous),
        in_flight.len(),
    );
}

// ---------------------------------------------------------------------------------------
// 4. Partition between the compute and two safekeepers
// ---------------------------------------------------------------------------------------

/// How long COMMIT waits for a majority in the partition test.
const PARTITION_COMMIT_TIMEOUT_MS: u64 = 1_500;
/// Bound on an INSERT during the partition: well above the commit timeout.
const PARTITION_INSERT_TIMEOUT: Duration = Duration::from_secs(10);
/// How soon after heal() writes must succeed again.
const HEAL_TIMEOUT: Duration = Duration::from_secs(30);

/// The compute reaches the safekeepers through relays. With one safekeeper partitioned away,
/// commits continue; with two, an autocommit INSERT is never acknowledged (it fails with
/// 08006 after the commit timeout) while reads keep working; after heal(), writes succeed
/// again within a bounded time, every acknowledged row is there once, and an INSERT whose
/// COMMIT failed during the partition is there at most once.
#[test]
fn partition_from_two_safekeepers_stops_acknowledgements_until_healed() {
    let rt = runtime();
    let mut cluster = Cluster::create(
        "partition",
        Options {
            commit_timeout_ms: PARTITION_COMMIT_TIMEOUT_MS,
            ..Options::default()
        },
    );
    let relays: Vec<Relay> = SAFEKEEPERS
        .iter()
        .map(|sk| Relay::start(cluster.addr(sk)))
        .collect();
    let relay_addrs: Vec<_> = relays.iter().map(Relay::addr).collect();
    cluster.set_compute_safekeepers(&relay_addrs);
    for name in cluster.names() {
        cluster.start_component(&name);
    }
    let url = cluster.url();
    let context = format!("cluster folder {}", cluster.dir.display());
    rt.block_on(async {
        let mut client = connect(&url).await;
        // No primary key: an INSERT applied twice would show as two rows.
        client
            .batch_execute("CREATE TABLE p (id bigint, note text)")
            .await
            .expect("create table");
        let insert = |id: i64| format!("INSERT INTO p VALUES ({id}, 'row {id}')");
        let mut acknowledged = BTreeSet::new();
        let mut failed = BTreeSet::new();
        for id in 0..5 {
            client.batch_execute(&insert(id)).await.expect("insert");
            acknowledged.insert(id);
        }

        relays[1].partition();
        for id in 5..10 {
            tokio::time::timeout(OPERATION_TIMEOUT, client.batch_execute(&insert(id)))
                .await
                .expect("an INSERT with a majority reachable timed out")
                .expect("one safekeeper partitioned away: commits continue");
            acknowledged.insert(id);
        }

        relays[2].partition();
        for id in 100..103 {
            let started = Instant::now();
            match tokio::time::timeout(PARTITION_INSERT_TIMEOUT, client.batch_execute(&insert(id)))
                .await
            {
                Ok(Ok(())) => panic!(
                    "INSERT {id} acknowledged with two of three safekeepers partitioned \
                     away; {context}"
                ),
                Ok(Err(e)) => {
                    assert_eq!(sqlstate(&e), "08006", "{e:?}");
                    assert!(
                        started.elapsed() >= Duration::from_millis(PARTITION_COMMIT_TIMEOUT_MS / 2),
                        "failed before the commit timeout: {e:?}"
                    );
                }
                Err(_) => {
                    // Still pending: not acknowledged either. Its outcome is decided later.
                    client = connect(&url).await;
                }
            }
            failed.insert(id);
        }
        // Reads go to the pageserver, which reaches the safekeepers directly: they work (or
        // fail with a SQLSTATE), on an old connection and on a new one, and see exactly the
        // acknowledged rows.
        let reader = connect(&url).await;
        for c in [&client, &reader] {
            match c.query("SELECT id FROM p ORDER BY id", &[]).await {
                Ok(rows) => {
                    let ids: BTreeSet<i64> = rows.iter().map(|r| r.get(0)).collect();
                    assert_eq!(ids, acknowledged, "read during the partition");
                }
                Err(e) => assert!(e.code().is_some(), "read failed uncleanly: {e:?}"),
            }
        }

        relays[1].heal();
        relays[2].heal();
        let healed = Instant::now();
        let mut id = 200;
        loop {
            match tokio::time::timeout(OPERATION_TIMEOUT, client.batch_execute(&insert(id))).await {
                Ok(Ok(())) => {
                    acknowledged.insert(id);
                    break;
                }
                Ok(Err(e)) => eprintln!("INSERT {id} after heal: {e}"),
                Err(_) => client = connect(&url).await,
            }
            failed.insert(id);
            assert!(
                healed.elapsed() < HEAL_TIMEOUT,
                "writes did not resume within {HEAL_TIMEOUT:?} of heal(); {context}"
            );
            id += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "partition: writes resumed {:?} after heal()",
            healed.elapsed()
        );

        let present = rows_by_id(&client, "p").await;
        for id in &acknowledged {
            assert_eq!(
                present.get(id),
                Some(&1),
                "acknowledged row {id} is not there exactly once; {context}"
            );
        }
        for id in &failed {
            let n = present.get(id).copied().unwrap_or(0);
            assert!(n <= 1, "row {id} applied {n} times; {context}");
        }
        for id in present.keys() {
            assert!(
                acknowledged.contains(id) || failed.contains(id),
                "row {id} was never inserted; {context}"
            );
        }
        eprintln!(
            "partition: acknowledged={} failed={} failed_then_applied={}",
            acknowledged.len(),
            failed.len(),
            failed.iter().filter(|id| present.contains_key(id)).count()
        );
    });
}

/// The relay behind the partition test does what a partition does: bytes flow until
/// `partition()`; then nothing moves on an existing connection and a new connection is held
/// open, neither closed nor reset; `heal()` delivers what was held, in order.
#[test]
fn relay_partition_holds_bytes_and_connections_until_heal() {
    let echo = TcpListener::bind(support::cluster::free_addr()).expect("bind the echo server");
    let echo_addr = echo.local_addr().expect("echo address");
    std::thread::spawn(move || {
        for stream in echo.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = stream.try_clone().expect("clone");
                let mut writer = stream;
                let _ = std::io::copy(&mut reader, &mut writer);
            });
        }
    });
    let relay = Relay::start(echo_addr);
    let silence = Duration::from_millis(300);
    let expect_silence = |stream: &mut TcpStream, what: &str| {
        stream.set_read_timeout(Some(silence)).expect("timeout");
        let mut byte = [0u8; 1];
        match stream.read(&mut byte) {
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            other => panic!("{what}: expected silence during the partition, got {other:?}"),
        }
    };
    let read_back = |stream: &mut TcpStream, expected: &[u8]| {
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = vec![0u8; expected.len()];
        stream.read_exact(&mut buf).expect("read back");
        assert_eq!(buf, expected);
    };

    let mut old = TcpStream::connect(relay.addr()).expect("connect");
    old.write_all(b"before").expect("write");
    read_back(&mut old, b"before");

    relay.partition();
    old.write_all(b"during").expect("write into the partition");
    expect_silence(&mut old, "an existing connection");
    let mut new = TcpStream::connect(relay.addr()).expect("a new connection is not refused");
    new.write_all(b"new").expect("write into the partition");
    expect_silence(&mut new, "a new connection");

    relay.heal();
    read_back(&mut old, b"during");
    read_back(&mut new, b"new");
}
