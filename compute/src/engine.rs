//! The shared state of a compute: WAL proposer (a read-write compute's), pageserver client,
//! committed catalog, and the commit path with snapshot isolation.
//!
//! A read-only compute has no proposer: it follows the pageserver, reading at the newest LSN
//! the pageserver has applied (polled every [`REPLICA_POLL_MS`]), with the catalog loaded at
//! that LSN, and refuses writes with SQLSTATE 25006.
//!
//! A transaction reads at its snapshot LSN (the commit LSN when it started) plus its own
//! buffered writes. At COMMIT its writes become one WAL record. Under the commit lock the
//! engine checks for write-write conflicts (a key this transaction wrote was committed by
//! another transaction after the snapshot → SQLSTATE 40001), appends the record, and records
//! the new LSN of each key; then, outside the lock, it waits for a safekeeper majority, so
//! concurrent commits share Appends and fsyncs.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use ids::Lsn;
use wal::{Op, Transaction};

use crate::catalog::{
    Catalog, TableDef, CATALOG_TABLE_ID, FIRST_USER_TABLE_ID, META_TABLE_ID, NEXT_TABLE_ID_KEY,
};
use crate::error::{sqlstate, SqlError};
use crate::pageserver_client::{PageserverClient, PageserverError};
use crate::walproposer::{ProposerError, WalProposer};

/// Keys remembered for conflict checks before old entries are pruned.
pub const CONFLICT_KEYS_MAX: usize = 1_000_000;

/// How often a read-only compute asks the pageserver how far it has applied the WAL.
pub const REPLICA_POLL_MS: u64 = 20;

pub struct Engine {
    /// `None` on a read-only compute.
    proposer: Option<WalProposer>,
    /// A read-only compute's snapshot for new transactions: the newest LSN the pageserver had
    /// applied when last asked. Changed only under the catalog's write lock, together with
    /// the catalog loaded at it.
    replica_lsn: AtomicU64,
    pub pageserver: PageserverClient,
    catalog: RwLock<Arc<Catalog>>,
    commit_state: tokio::sync::Mutex<CommitState>,
    /// Snapshots of open transactions, for pruning the conflict map.
    active_snapshots: std::sync::Mutex<BTreeMap<Lsn, usize>>,
    counter: AtomicU64,
    pub commit_timeout: Duration,
}

#[derive(Default)]
struct CommitState {
    /// The commit LSN of the last write of each recently written key.
    last_write: HashMap<(u32, Bytes), Lsn>,
}

/// A transaction's private state: its snapshot and its buffered writes.
pub struct Txn {
    pub snapshot: Lsn,
    /// `None` = deleted. Keys are in storage order within each table.
    pub writes: BTreeMap<(u32, Bytes), Option<Bytes>>,
    pub dropped_tables: Vec<u32>,
    /// The catalog as this transaction sees it.
    pub catalog: Arc<Catalog>,
    /// The committed catalog this transaction started from.
    base_catalog: Arc<Catalog>,
    engine: Arc<Engine>,
}

impl Drop for Txn {
    fn drop(&mut self) {
        self.engine.release_snapshot(self.snapshot);
    }
}

impl Txn {
    pub fn catalog_changed(&self) -> bool {
        !Arc::ptr_eq(&self.catalog, &self.base_catalog)
    }

    /// This transaction's writes to `table`, in key order.
    pub fn overlay(&self, table: u32) -> Vec<(Bytes, Option<Bytes>)> {
        self.writes
            .range((table, Bytes::new())..)
            .take_while(|((t, _), _)| *t == table)
            .map(|((_, key), value)| (key.clone(), value.clone()))
            .collect()
    }

    pub fn catalog_mut(&mut self) -> &mut Catalog {
        Arc::make_mut(&mut self.catalog)
    }

    /// Records a new or changed table definition in the catalog tables.
    pub fn put_table_def(&mut self, def: TableDef) {
        let key = Bytes::from(def.name.clone().into_bytes());
        self.writes
            .insert((CATALOG_TABLE_ID, key), Some(def.encode()));
        let catalog = self.catalog_mut();
        catalog.next_table_id = catalog.next_table_id.max(def.id + 1);
        let next = catalog.next_table_id;
        catalog.tables.insert(def.name.clone(), Arc::new(def));
        self.writes.insert(
            (META_TABLE_ID, Bytes::from_static(NEXT_TABLE_ID_KEY)),
            Some(Bytes::copy_from_slice(&next.to_be_bytes())),
        );
    }

    pub fn drop_table(&mut self, def: &TableDef) {
        let key = Bytes::from(def.name.clone().into_bytes());
        self.writes.insert((CATALOG_TABLE_ID, key), None);
        let start = (def.id, Bytes::new());
        let end = (def.id + 1, Bytes::new());
        let doomed: Vec<_> = self
            .writes
            .range(start..end)
            .map(|(k, _)| k.clone())
            .collect();
        for key in doomed {
            self.writes.remove(&key);
        }
        self.dropped_tables.push(def.id);
        self.catalog_mut().tables.remove(&def.name);
    }

    pub fn is_read_only(&self) -> bool {
        self.writes.is_empty() && self.dropped_tables.is_empty()
    }
}

pub fn pageserver_error(e: PageserverError) -> SqlError {
    SqlError::new(
        sqlstate::IO_ERROR,
        format!("could not read from storage: {e}"),
    )
}

pub fn proposer_error(e: ProposerError) -> SqlError {
    match e {
        ProposerError::Fenced(_) => SqlError::new(sqlstate::ADMIN_SHUTDOWN, e.to_string()),
        ProposerError::CommitTimeout(_) => {
            SqlError::new(sqlstate::CONNECTION_FAILURE, e.to_string())
                .with_detail("fewer than a majority of safekeepers acknowledged the commit record")
        }
        _ => SqlError::new(sqlstate::CONNECTION_FAILURE, e.to_string()),
    }
}

/// The error of a write on a read-only compute, as PostgreSQL reports one on a standby.
pub fn read_only_error(what: &str) -> SqlError {
    SqlError::new(
        sqlstate::READ_ONLY_SQL_TRANSACTION,
        format!("cannot execute {what} in a read-only transaction"),
    )
    .with_detail("this endpoint is read-only; connect to the branch's read-write endpoint to write")
}

/// The committed catalog at `lsn`.
async fn load_catalog(pageserver: &PageserverClient, lsn: Lsn) -> Result<Catalog, SqlError> {
    let mut catalog = Catalog::empty();
    for (_, value) in pageserver
        .scan_all(CATALOG_TABLE_ID, lsn)
        .await
        .map_err(pageserver_error)?
    {
        let def = TableDef::decode(&value).map_err(SqlError::internal)?;
        catalog.tables.insert(def.name.clone(), Arc::new(def));
    }
    let next = pageserver
        .get_row(META_TABLE_ID, Bytes::from_static(NEXT_TABLE_ID_KEY), lsn)
        .await
        .map_err(pageserver_error)?;
    if let Some(next) = next {
        let bytes: [u8; 4] = next
            .as_ref()
            .try_into()
            .map_err(|_| SqlError::internal("corrupt next_table_id"))?;
        catalog.next_table_id = u32::from_be_bytes(bytes).max(FIRST_USER_TABLE_ID);
    }
    let max_id = catalog
        .tables
        .values()
        .map(|t| t.id + 1)
        .max()
        .unwrap_or(FIRST_USER_TABLE_ID);
    catalog.next_table_id = catalog.next_table_id.max(max_id);
    Ok(catalog)
}

impl Engine {
    /// A read-write compute's engine: loads the committed catalog from the pageserver at the
    /// proposer's commit LSN.
    pub async fn open(
        proposer: WalProposer,
        pageserver: PageserverClient,
        commit_timeout: Duration,
    ) -> Result<Arc<Engine>, SqlError> {
        let lsn = proposer.commit_lsn();
        let catalog = load_catalog(&pageserver, lsn).await?;
        Ok(Engine::new(
            Some(proposer),
            lsn,
            catalog,
            pageserver,
            commit_timeout,
        ))
    }

    /// A read-only compute's engine, reading at `lsn` (the pageserver's newest applied LSN)
    /// until [`Engine::follow`] moves it on.
    pub async fn open_read_only(
        pageserver: PageserverClient,
        lsn: Lsn,
    ) -> Result<Arc<Engine>, SqlError> {
        let catalog = load_catalog(&pageserver, lsn).await?;
        Ok(Engine::new(None, lsn, catalog, pageserver, Duration::ZERO))
    }

    fn new(
        proposer: Option<WalProposer>,
        lsn: Lsn,
        catalog: Catalog,
        pageserver: PageserverClient,
        commit_timeout: Duration,
    ) -> Arc<Engine> {
        Arc::new(Engine {
            proposer,
            replica_lsn: AtomicU64::new(lsn.0),
            pageserver,
            catalog: RwLock::new(Arc::new(catalog)),
            commit_state: tokio::sync::Mutex::new(CommitState::default()),
            active_snapshots: std::sync::Mutex::new(BTreeMap::new()),
            counter: AtomicU64::new(1),
            commit_timeout,
        })
    }

    /// Whether this compute refuses writes (it has no WAL proposer).
    pub fn is_read_only(&self) -> bool {
        self.proposer.is_none()
    }

    /// The LSN new transactions read at: the commit LSN of a read-write compute, the
    /// pageserver's applied LSN (as last polled) on a read-only one.
    pub fn snapshot_lsn(&self) -> Lsn {
        match &self.proposer {
            Some(proposer) => proposer.commit_lsn(),
            None => Lsn(self.replica_lsn.load(Ordering::Acquire)),
        }
    }

    /// The proposer's term; 0 on a read-only compute.
    pub fn term(&self) -> u64 {
        self.proposer.as_ref().map_or(0, |p| p.term())
    }

    /// A read-only compute's follower loop: every [`REPLICA_POLL_MS`] asks the pageserver
    /// how far it has applied the WAL and, when that moved, loads the catalog there and
    /// makes both the snapshot of new transactions. Returns at once on a read-write
    /// compute. Runs until the engine is dropped elsewhere (the caller aborts the task).
    pub async fn follow(self: Arc<Engine>) {
        if !self.is_read_only() {
            return;
        }
        let mut last_error: Option<String> = None;
        loop {
            tokio::time::sleep(Duration::from_millis(REPLICA_POLL_MS)).await;
            let result = async {
                let info = self
                    .pageserver
                    .timeline_info()
                    .await
                    .map_err(|e| e.to_string())?;
                let lsn = info.last_record_lsn;
                if lsn.0 <= self.replica_lsn.load(Ordering::Acquire) {
                    return Ok(());
                }
                let catalog = load_catalog(&self.pageserver, lsn)
                    .await
                    .map_err(|e| e.message)?;
                let mut current = self.catalog.write().expect("catalog lock");
                *current = Arc::new(catalog);
                self.replica_lsn.store(lsn.0, Ordering::Release);
                Ok::<(), String>(())
            }
            .await;
            match result {
                Ok(()) => last_error = None,
                Err(reason) => {
                    if last_error.as_deref() != Some(reason.as_str()) {
                        tracing::warn!("read-only compute cannot follow the pageserver: {reason}");
                        last_error = Some(reason);
                    }
                }
            }
        }
    }

    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.read().expect("catalog lock").clone()
    }

    pub fn begin(self: &Arc<Engine>) -> Txn {
        // The catalog's read lock is held while the snapshot is read, so a read-only compute's
        // follower cannot pair this snapshot with another LSN's catalog.
        let catalog_guard = self.catalog.read().expect("catalog lock");
        let catalog = catalog_guard.clone();
        // Read the snapshot under the lock that pruning reads the oldest snapshot under, so a
        // concurrent commit cannot prune conflict entries this transaction still needs.
        let mut snapshots = self.active_snapshots.lock().expect("snapshots lock");
        let snapshot = self.snapshot_lsn();
        drop(catalog_guard);
        *snapshots.entry(snapshot).or_default() += 1;
        drop(snapshots);
        Txn {
            snapshot,
            writes: BTreeMap::new(),
            dropped_tables: Vec::new(),
            catalog: catalog.clone(),
            base_catalog: catalog,
            engine: self.clone(),
        }
    }

    fn release_snapshot(&self, snapshot: Lsn) {
        let mut snapshots = self.active_snapshots.lock().expect("snapshots lock");
        if let Some(n) = snapshots.get_mut(&snapshot) {
            *n -= 1;
            if *n == 0 {
                snapshots.remove(&snapshot);
            }
        }
    }

    /// A unique id: the proposer's term in the high 24 bits, a counter below. Terms only
    /// grow, so ids never repeat across restarts or primaries.
    pub fn unique_id(&self) -> u64 {
        (self.term() << 40) | self.counter.fetch_add(1, Ordering::Relaxed)
    }

    /// Makes the transaction durable, or fails with a SQLSTATE the client can act on.
    pub async fn commit(&self, txn: Txn) -> Result<(), SqlError> {
        if txn.is_read_only() {
            return Ok(());
        }
        let Some(proposer) = &self.proposer else {
            return Err(read_only_error("COMMIT"));
        };
        let mut state = self.commit_state.lock().await;
        for key in txn.writes.keys() {
            if state
                .last_write
                .get(key)
                .is_some_and(|&lsn| lsn > txn.snapshot)
            {
                return Err(SqlError::new(
                    sqlstate::SERIALIZATION_FAILURE,
                    "could not serialize access due to concurrent update",
                ));
            }
        }
        if txn.catalog_changed() && !Arc::ptr_eq(&self.catalog(), &txn.base_catalog) {
            return Err(SqlError::new(
                sqlstate::SERIALIZATION_FAILURE,
                "could not serialize access due to a concurrent schema change",
            ));
        }
        let mut ops = Vec::with_capacity(txn.writes.len() + txn.dropped_tables.len());
        for ((table, key), value) in &txn.writes {
            ops.push(match value {
                Some(value) => Op::Put {
                    table: *table,
                    key: key.clone(),
                    value: value.clone(),
                },
                None => Op::Delete {
                    table: *table,
                    key: key.clone(),
                },
            });
        }
        ops.extend(
            txn.dropped_tables
                .iter()
                .map(|&table| Op::DropTable { table }),
        );
        let commit_time_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|since| since.as_micros() as u64)
            .unwrap_or(0);
        let record = wal::encode_record(&Transaction {
            xid: self.unique_id(),
            commit_time_us,
            ops,
        })
        .map_err(|e| {
            SqlError::new(
                sqlstate::PROGRAM_LIMIT_EXCEEDED,
                format!("transaction too large: {e}"),
            )
        })?;
        let lsn = proposer.append(record).map_err(proposer_error)?;
        for key in txn.writes.keys() {
            state.last_write.insert(key.clone(), lsn);
        }
        if txn.catalog_changed() {
            *self.catalog.write().expect("catalog lock") = txn.catalog.clone();
        }
        if state.last_write.len() > CONFLICT_KEYS_MAX {
            let oldest = self
                .active_snapshots
                .lock()
                .expect("snapshots lock")
                .keys()
                .next()
                .copied();
            let horizon = oldest.unwrap_or(lsn);
            state.last_write.retain(|_, &mut written| written > horizon);
        }
        drop(state);
        drop(txn);
        proposer
            .wait_commit(lsn, self.commit_timeout)
            .await
            .map_err(proposer_error)
    }
}
