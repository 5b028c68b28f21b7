//! The timelines one pageserver serves, and their lives: loading a tenant's timelines from
//! the object store at start-up (ancestors before their branches), creating root timelines
//! and branches, deleting them, and each one's background tasks (WAL receiver, feedback to
//! the safekeepers, checkpointer with compaction).
//!
//! ```text
//!   Timelines { id → Served { Arc<Timeline>, cancel, tasks } }
//!       load_tenant: list tenants/<t>/timelines/*/index-*.json → open roots, then branches
//!       create:      root (empty) or branch (index naming ancestor + LSN; no data copied)
//!       delete:      stop tasks → delete index files → delete layer files
//! ```
//!
//! Invariants:
//! - A branch is opened only after its ancestor, and holds it (`Arc`) for as long as it is
//!   served; a timeline that any served timeline branches from cannot be deleted.
//! - Creating and deleting are serialized (one `changes` lock), so two requests for the same
//!   id cannot both succeed.
//! - Deleting removes the index files first: a crash part-way leaves layer files no index
//!   names (garbage), never an index naming deleted files.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ids::{Lsn, TenantId, TimelineId};
use pageserver_api::BranchPoint;
use remote_storage::RemoteStorage;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::block_cache::BlockCache;
use crate::error::{PageserverError, Result};
use crate::manifest::Manifest;
use crate::remote_layout;
use crate::timeline::gc::GcOutcome;
use crate::timeline::{read_index, Timeline};
use crate::walreceiver;

/// The most timelines one pageserver serves.
pub const TIMELINES_MAX: usize = 1024;

/// What every timeline's background tasks need.
#[derive(Clone)]
pub struct TaskConfig {
    pub safekeepers: Vec<SocketAddr>,
    pub checkpoint_interval: Duration,
    /// How long a branch at the latest commit waits for its parent to apply that commit.
    pub wait_lsn_timeout: Duration,
}

struct Served {
    timeline: Arc<Timeline>,
    cancel: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

pub struct Timelines {
    remote: RemoteStorage,
    cache: Arc<BlockCache>,
    tasks: TaskConfig,
    served: Mutex<HashMap<TimelineId, Served>>,
    /// Held across a whole create or delete.
    changes: tokio::sync::Mutex<()>,
    /// Hears of a background task that stopped on its own: the pageserver stops.
    failures: mpsc::UnboundedSender<String>,
}

impl Timelines {
    /// An empty registry; `failures` hears of any background task that ends before it is
    /// cancelled.
    pub fn new(
        remote: RemoteStorage,
        cache: Arc<BlockCache>,
        tasks: TaskConfig,
        failures: mpsc::UnboundedSender<String>,
    ) -> Timelines {
        Timelines {
            remote,
            cache,
            tasks,
            served: Mutex::new(HashMap::new()),
            changes: tokio::sync::Mutex::new(()),
            failures,
        }
    }

    pub fn cache(&self) -> &Arc<BlockCache> {
        &self.cache
    }

    pub fn remote(&self) -> &RemoteStorage {
        &self.remote
    }

    pub fn get(&self, timeline: TimelineId) -> Result<Arc<Timeline>> {
        self.lock()?
            .get(&timeline)
            .map(|served| served.timeline.clone())
            .ok_or(PageserverError::UnknownTimeline(timeline))
    }

    /// Every served timeline, ordered by id.
    pub fn list(&self) -> Result<Vec<Arc<Timeline>>> {
        let served = self.lock()?;
        let mut timelines: Vec<Arc<Timeline>> =
            served.values().map(|s| s.timeline.clone()).collect();
        timelines.sort_by_key(|t| t.timeline_id());
        Ok(timelines)
    }

    /// Opens every timeline of `tenant` that the object store has an index for, ancestors
    /// first, and starts serving them. Already served ones are left as they are.
    pub async fn load_tenant(&self, tenant: TenantId) -> Result<()> {
        let _changes = self.changes.lock().await;
        let ids = indexed_timelines(&self.remote, tenant).await?;
        let mut pending: BTreeMap<TimelineId, Manifest> = BTreeMap::new();
        for id in ids {
            if self.lock()?.contains_key(&id) {
                continue;
            }
            if let Some(index) = read_index(&self.remote, tenant, id).await? {
                pending.insert(id, index);
            }
        }
        // Rounds: each opens the timelines whose ancestor is open (or that have none).
        while !pending.is_empty() {
            let ready: Vec<TimelineId> = pending
                .iter()
                .filter(|(_, index)| match &index.ancestor {
                    None => true,
                    Some(ancestor) => ancestor
                        .timeline
                        .parse::<TimelineId>()
                        .is_ok_and(|id| self.lock().is_ok_and(|s| s.contains_key(&id))),
                })
                .map(|(id, _)| *id)
                .collect();
            if ready.is_empty() {
                let stuck: Vec<String> = pending
                    .iter()
                    .map(|(id, index)| {
                        let ancestor = index.ancestor.as_ref().map(|a| a.timeline.as_str());
                        format!("{id} (ancestor {})", ancestor.unwrap_or("none"))
                    })
                    .collect();
                return Err(PageserverError::corrupt(
                    format!("timelines of tenant {tenant}"),
                    format!(
                        "these branch from timelines with no index: {}",
                        stuck.join(", ")
                    ),
                ));
            }
            for id in ready {
                let index = pending.remove(&id).expect("ready ids are pending");
                let ancestor = match &index.ancestor {
                    Some(a) => Some(self.get(a.timeline.parse().map_err(|e| {
                        PageserverError::corrupt(format!("index of timeline {id}"), format!("{e}"))
                    })?)?),
                    None => None,
                };
                let timeline = Timeline::open(
                    self.remote.clone(),
                    self.cache.clone(),
                    tenant,
                    id,
                    Some(index),
                    ancestor,
                )
                .await?;
                self.serve(Arc::new(timeline))?;
            }
        }
        Ok(())
    }

    /// Serves the root timeline `timeline`, creating it empty if the object store has none.
    pub async fn attach_or_create_root(
        &self,
        tenant: TenantId,
        timeline: TimelineId,
    ) -> Result<Arc<Timeline>> {
        let _changes = self.changes.lock().await;
        if let Ok(served) = self.get(timeline) {
            return Ok(served);
        }
        let loaded =
            Timeline::load(self.remote.clone(), self.cache.clone(), tenant, timeline).await?;
        self.serve(Arc::new(loaded))
    }

    /// Creates a timeline: an empty root one, or a branch of `ancestor` at `point`.
    pub async fn create(
        &self,
        tenant: TenantId,
        timeline: TimelineId,
        ancestor: Option<(TimelineId, BranchPoint)>,
    ) -> Result<Arc<Timeline>> {
        let _changes = self.changes.lock().await;
        if self.lock()?.contains_key(&timeline) {
            return Err(PageserverError::Conflict(format!(
                "timeline {timeline} already exists"
            )));
        }
        let created = match ancestor {
            None => {
                if read_index(&self.remote, tenant, timeline).await?.is_some() {
                    return Err(PageserverError::Conflict(format!(
                        "timeline {timeline} already exists"
                    )));
                }
                Timeline::open(
                    self.remote.clone(),
                    self.cache.clone(),
                    tenant,
                    timeline,
                    None,
                    None,
                )
                .await?
            }
            Some((parent_id, point)) => {
                let parent = self.get(parent_id)?;
                if parent.tenant_id() != tenant {
                    return Err(PageserverError::Conflict(format!(
                        "timeline {parent_id} belongs to tenant {}, not {tenant}",
                        parent.tenant_id()
                    )));
                }
                let lsn = match point {
                    BranchPoint::Latest => self.latest_commit(&parent).await?,
                    BranchPoint::Lsn(lsn) => lsn,
                    BranchPoint::Timestamp { unix_us } => {
                        branch_lsn_at_time(&parent, unix_us).await?
                    }
                };
                Timeline::create_branch(
                    self.remote.clone(),
                    self.cache.clone(),
                    timeline,
                    parent,
                    lsn,
                )
                .await?
            }
        };
        tracing::info!(
            "timeline {timeline} created{}",
            match created.ancestor() {
                Some(a) => format!(
                    " as a branch of {} at LSN {}",
                    a.timeline.timeline_id(),
                    a.lsn
                ),
                None => String::new(),
            }
        );
        self.serve(Arc::new(created))
    }

    /// The LSN at or above every commit acknowledged on `timeline` so far (the end of the
    /// WAL a majority of safekeepers flushed; without safekeepers, what was applied), once
    /// the timeline has applied it.
    async fn latest_commit(&self, timeline: &Timeline) -> Result<Lsn> {
        let safekeepers = &self.tasks.safekeepers;
        let mut lsn = timeline.last_record_lsn();
        if !safekeepers.is_empty() {
            let flushed = walreceiver::majority_flush_lsn(timeline, safekeepers)
                .await
                .ok_or_else(|| {
                    PageserverError::Conflict(format!(
                        "cannot learn the latest commit of timeline {}: fewer than a majority of its safekeepers answer",
                        timeline.timeline_id()
                    ))
                })?;
            lsn = lsn.max(flushed);
        }
        timeline.wait_lsn(lsn, self.tasks.wait_lsn_timeout).await?;
        Ok(lsn)
    }

    /// Stops serving `timeline` and deletes its files. Refused while a branch of it exists
    /// (served, or only indexed in the object store). A timeline that is not served but has
    /// files (a create whose outcome was unknown, a delete that failed part-way) is deleted
    /// too.
    pub async fn delete(&self, timeline: TimelineId) -> Result<()> {
        let _changes = self.changes.lock().await;
        let timelines = self.list()?;
        let mut children: Vec<String> = timelines
            .iter()
            .filter(|t| {
                t.ancestor()
                    .is_some_and(|a| a.timeline.timeline_id() == timeline)
            })
            .map(|t| t.timeline_id().to_string())
            .collect();
        children.extend(
            self.unserved_branches(&timelines)
                .await?
                .into_iter()
                .filter(|branch| branch.parent.timeline_id() == timeline)
                .map(|branch| branch.id.to_string()),
        );
        if !children.is_empty() {
            return Err(PageserverError::Conflict(format!(
                "timeline {timeline} has branches ({}); delete them first",
                children.join(", ")
            )));
        }
        let served = self.lock()?.remove(&timeline);
        let tenant = match served {
            Some(served) => {
                let tenant = served.timeline.tenant_id();
                stop(served).await;
                tenant
            }
            None => {
                let tenants: BTreeSet<TenantId> = timelines.iter().map(|t| t.tenant_id()).collect();
                let mut found = None;
                for tenant in tenants {
                    let prefix = remote_layout::timeline_prefix(tenant, timeline);
                    if !self.remote.list(&prefix).await?.is_empty() {
                        found = Some(tenant);
                    }
                }
                found.ok_or(PageserverError::UnknownTimeline(timeline))?
            }
        };
        let prefix = remote_layout::timeline_prefix(tenant, timeline);
        let objects = self.remote.list(&prefix).await?;
        let (indexes, others): (Vec<_>, Vec<_>) = objects.into_iter().partition(|object| {
            object
                .key
                .rsplit('/')
                .next()
                .and_then(remote_layout::parse_index_file_name)
                .is_some()
        });
        for object in indexes.iter().chain(others.iter()) {
            self.remote.delete(&object.key).await?;
        }
        tracing::info!(
            "timeline {timeline} deleted ({} objects)",
            indexes.len() + others.len()
        );
        Ok(())
    }

    /// Garbage-collects every timeline, keeping the history of the last `pitr_window` (reads
    /// at the LSN of the last commit at or before now − window, and above) and the branch
    /// points its branches read it at. Serialized with creating and deleting, so no branch
    /// appears at a point being collected. A timeline's failure is logged and reported in
    /// its entry; the others are still collected.
    pub async fn gc(&self, pitr_window: Duration) -> Result<Vec<(TimelineId, Result<GcOutcome>)>> {
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_micros() as u64);
        self.gc_at(now_us.saturating_sub(pitr_window.as_micros() as u64))
            .await
    }

    /// [`Timelines::gc`] keeping every moment from `horizon_us` (µs since the epoch) on.
    pub async fn gc_at(&self, horizon_us: u64) -> Result<Vec<(TimelineId, Result<GcOutcome>)>> {
        let _changes = self.changes.lock().await;
        let timelines = self.list()?;
        let mut branch_points: Vec<(Arc<Timeline>, Lsn)> = timelines
            .iter()
            .filter_map(|t| t.ancestor().map(|a| (a.timeline.clone(), a.lsn)))
            .collect();
        branch_points.extend(
            self.unserved_branches(&timelines)
                .await?
                .into_iter()
                .map(|branch| (branch.parent, branch.lsn)),
        );
        let retained = retained_lsns(branch_points);
        let mut outcomes = Vec::with_capacity(timelines.len());
        for timeline in timelines {
            let id = timeline.timeline_id();
            let outcome = async {
                // Nothing committed that long ago: everything is inside the window.
                let cutoff = timeline.lsn_at_time(horizon_us).await?.unwrap_or(Lsn::ZERO);
                let retained: Vec<Lsn> = retained
                    .get(&id)
                    .map(|lsns| lsns.iter().copied().collect())
                    .unwrap_or_default();
                timeline.gc(cutoff, &retained).await
            }
            .await;
            if let Err(err) = &outcome {
                tracing::warn!("garbage collection of timeline {id} failed (will retry): {err}");
            }
            outcomes.push((id, outcome));
        }
        Ok(outcomes)
    }

    /// Branches of served timelines that the object store has an index for but that are
    /// not served (a create whose outcome was unknown to its caller, say): their ancestors
    /// keep what they would read, and are not deleted before them.
    async fn unserved_branches(&self, served: &[Arc<Timeline>]) -> Result<Vec<UnservedBranch>> {
        let by_id: HashMap<TimelineId, &Arc<Timeline>> =
            served.iter().map(|t| (t.timeline_id(), t)).collect();
        let tenants: BTreeSet<TenantId> = served.iter().map(|t| t.tenant_id()).collect();
        let mut branches = Vec::new();
        for tenant in tenants {
            for id in indexed_timelines(&self.remote, tenant).await? {
                if by_id.contains_key(&id) {
                    continue;
                }
                let Some(index) = read_index(&self.remote, tenant, id).await? else {
                    continue;
                };
                let Some(ancestor) = index.ancestor else {
                    continue;
                };
                let parent = ancestor.timeline.parse::<TimelineId>().ok();
                if let Some(parent) = parent.and_then(|parent| by_id.get(&parent)) {
                    branches.push(UnservedBranch {
                        id,
                        parent: (*parent).clone(),
                        lsn: Lsn(ancestor.lsn),
                    });
                }
            }
        }
        Ok(branches)
    }

    /// Stops every timeline's tasks, then uploads what each one has not uploaded yet.
    pub async fn shutdown(&self) -> Result<()> {
        let all: Vec<Served> = match self.lock() {
            Ok(mut served) => served.drain().map(|(_, s)| s).collect(),
            Err(err) => return Err(err),
        };
        let mut timelines = Vec::with_capacity(all.len());
        for served in all {
            timelines.push(served.timeline.clone());
            stop(served).await;
        }
        let mut first_error = None;
        for timeline in timelines {
            match timeline.checkpoint().await {
                Ok(_) => tracing::info!(
                    "timeline {}: the object store holds LSN {}",
                    timeline.timeline_id(),
                    timeline.remote_consistent_lsn()
                ),
                Err(err) => {
                    tracing::error!(
                        "timeline {}: uploading at shutdown failed: {err}",
                        timeline.timeline_id()
                    );
                    first_error.get_or_insert(err);
                }
            }
        }
        match first_error {
            None => Ok(()),
            Some(err) => Err(err),
        }
    }

    /// Starts `timeline`'s background tasks and adds it to the served set.
    fn serve(&self, timeline: Arc<Timeline>) -> Result<Arc<Timeline>> {
        let mut served = self.lock()?;
        if served.len() >= TIMELINES_MAX {
            return Err(PageserverError::Conflict(format!(
                "this pageserver already serves {TIMELINES_MAX} timelines"
            )));
        }
        let (cancel_sender, cancel) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let id = timeline.timeline_id();
        let safekeepers = self.tasks.safekeepers.clone();
        let failures = self.failures.clone();
        let watched =
            |name: &'static str,
             task: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>| {
                let failures = failures.clone();
                let cancel = cancel.clone();
                async move {
                    task.await;
                    if !*cancel.borrow() {
                        let _ = failures.send(format!("{name} of timeline {id} stopped"));
                    }
                }
            };
        tasks.spawn(watched(
            "the WAL receiver",
            Box::pin(walreceiver::run(
                timeline.clone(),
                safekeepers.clone(),
                cancel.clone(),
            )),
        ));
        tasks.spawn(watched(
            "the safekeeper feedback",
            Box::pin(walreceiver::send_feedback(
                timeline.clone(),
                safekeepers,
                cancel.clone(),
            )),
        ));
        tasks.spawn(watched(
            "the checkpointer",
            Box::pin(checkpointer(
                timeline.clone(),
                self.tasks.checkpoint_interval,
                cancel.clone(),
            )),
        ));
        served.insert(
            id,
            Served {
                timeline: timeline.clone(),
                cancel: cancel_sender,
                tasks,
            },
        );
        Ok(timeline)
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, HashMap<TimelineId, Served>>> {
        self.served.lock().map_err(|_| {
            PageserverError::Internal("timeline registry lock poisoned by a panic".into())
        })
    }

    /// Reports background tasks that panicked (a panic skips the report a task makes when
    /// it ends early; its join handle still says so). Called periodically.
    pub fn reap_panics(&self) -> Result<()> {
        let mut served = self.lock()?;
        for (id, s) in served.iter_mut() {
            while let Some(joined) = s.tasks.try_join_next() {
                if let Err(err) = joined {
                    let _ = self
                        .failures
                        .send(format!("a task of timeline {id} failed: {err}"));
                }
            }
        }
        Ok(())
    }
}

/// For each timeline, the LSNs its branches (and their branches) read it at, from each
/// branch's (ancestor, branch point): a branch reads its ancestor at its branch point, and a
/// point below the ancestor's own branch point is read further up, so each ancestor on the
/// way is read at the lowest point on the path.
fn retained_lsns(branch_points: Vec<(Arc<Timeline>, Lsn)>) -> HashMap<TimelineId, BTreeSet<Lsn>> {
    let mut retained: HashMap<TimelineId, BTreeSet<Lsn>> = HashMap::new();
    for (ancestor, lsn) in branch_points {
        retained
            .entry(ancestor.timeline_id())
            .or_default()
            .insert(lsn);
        let mut read_at = lsn;
        let mut next = ancestor.ancestor();
        while let Some(up) = next {
            read_at = read_at.min(up.lsn);
            retained
                .entry(up.timeline.timeline_id())
                .or_default()
                .insert(read_at);
            next = up.timeline.ancestor();
        }
    }
    retained
}

/// Runs [`Timelines::gc`] every `interval` until cancelled.
pub async fn gc_loop(
    timelines: Arc<Timelines>,
    interval: Duration,
    pitr_window: Duration,
    mut cancel: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate: collect one interval after start, not at start.
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = cancel.wait_for(|cancelled| *cancelled) => return,
            _ = ticker.tick() => {}
        }
        if let Err(err) = timelines.gc(pitr_window).await {
            tracing::warn!("garbage collection failed (will retry): {err}");
        }
    }
}

/// A branch with an index in the object store that this pageserver does not serve.
struct UnservedBranch {
    id: TimelineId,
    parent: Arc<Timeline>,
    lsn: Lsn,
}

/// The timelines of `tenant` that have an index file, ascending.
async fn indexed_timelines(remote: &RemoteStorage, tenant: TenantId) -> Result<Vec<TimelineId>> {
    let prefix = format!("tenants/{tenant}/timelines/");
    let mut ids: Vec<TimelineId> = remote
        .list(&prefix)
        .await?
        .iter()
        .filter_map(|object| {
            let rest = object.key.strip_prefix(prefix.as_str())?;
            let (id, file) = rest.split_once('/')?;
            remote_layout::parse_index_file_name(file)?;
            id.parse().ok()
        })
        .collect();
    ids.sort();
    ids.dedup();
    Ok(ids)
}

/// Cancels a timeline's tasks and waits for them.
async fn stop(mut served: Served) {
    served.cancel.send_replace(true);
    while let Some(joined) = served.tasks.join_next().await {
        if let Err(err) = joined {
            tracing::error!(
                "a task of timeline {} failed while stopping: {err}",
                served.timeline.timeline_id()
            );
        }
    }
}

/// The branch point for "as of `unix_us`" on `parent`.
async fn branch_lsn_at_time(parent: &Timeline, unix_us: u64) -> Result<Lsn> {
    match parent.lsn_at_time(unix_us).await? {
        Some(lsn) => Ok(lsn),
        None => Err(PageserverError::Conflict(format!(
            "timeline {} has no commit at or before {} µs since the epoch",
            parent.timeline_id(),
            unix_us
        ))),
    }
}

/// Checkpoints, then compacts where enough delta layers piled up, every `interval` until
/// cancelled (a checkpoint with nothing new is free).
async fn checkpointer(
    timeline: Arc<Timeline>,
    interval: Duration,
    mut cancel: watch::Receiver<bool>,
) {
    // `tokio::time::interval` panics on a zero period.
    let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.wait_for(|cancelled| *cancelled) => return,
            _ = ticker.tick() => {}
        }
        // Not raced against cancellation: a checkpoint abandoned halfway could leave an
        // index write in flight that lands after the final checkpoint's newer one.
        if let Err(err) = timeline.checkpoint().await {
            tracing::warn!(
                "checkpoint of timeline {} failed (will retry): {err}",
                timeline.timeline_id()
            );
            continue;
        }
        if let Err(err) = timeline.compact().await {
            tracing::warn!(
                "compaction of timeline {} failed (will retry): {err}",
                timeline.timeline_id()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block_cache::BlockCacheConfig;
    use crate::test_util::temp_dir;
    use bytes::Bytes;
    use wal::{Op, Transaction};

    const TENANT: TenantId = TenantId([7; 16]);

    async fn registry(root: &std::path::Path) -> Timelines {
        registry_on(RemoteStorage::local(root).unwrap()).await
    }

    /// A registry over `remote` with an empty cache and no safekeepers, whose checkpointer
    /// runs once at the start and then not for an hour.
    pub(super) async fn registry_on(remote: RemoteStorage) -> Timelines {
        let cache = BlockCache::open(BlockCacheConfig {
            memory_bytes: 1 << 20,
            disk_dir: temp_dir("timelines-cache"),
            disk_bytes: crate::block_cache::BLOCK_CACHE_DISK_BYTES_MIN,
        })
        .await
        .unwrap();
        let tasks = TaskConfig {
            safekeepers: Vec::new(),
            checkpoint_interval: Duration::from_secs(3600),
            wait_lsn_timeout: Duration::from_secs(1),
        };
        let (failures, _) = mpsc::unbounded_channel();
        Timelines::new(remote, Arc::new(cache), tasks, failures)
    }

    fn put(value: &str) -> Transaction {
        Transaction {
            xid: 1,
            commit_time_us: 0,
            ops: vec![Op::Put {
                table: 16,
                key: Bytes::from_static(b"k"),
                value: Bytes::copy_from_slice(value.as_bytes()),
            }],
        }
    }

    fn objects_of(root: &std::path::Path, timeline: TimelineId) -> usize {
        let folder = root.join(remote_layout::timeline_prefix(TENANT, timeline));
        walk(&folder)
    }

    fn walk(folder: &std::path::Path) -> usize {
        let Ok(entries) = std::fs::read_dir(folder) else {
            return 0;
        };
        entries
            .map(|entry| {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path)
                } else {
                    1
                }
            })
            .sum()
    }

    /// Create, list, delete and reload: branches come back after a restart, ancestors
    /// first; every refusal names its reason and changes nothing.
    #[tokio::test]
    async fn timelines_are_created_listed_deleted_and_reloaded() {
        let root = temp_dir("timelines");
        let (main, child, grandchild) = (
            TimelineId::from_u128(1),
            TimelineId::from_u128(2),
            TimelineId::from_u128(3),
        );
        let timelines = registry(&root).await;
        let created = timelines.create(TENANT, main, None).await.unwrap();
        created.ingest(Lsn(10), put("main 1")).unwrap();
        created.ingest(Lsn(20), put("main 2")).unwrap();
        let err = timelines.create(TENANT, main, None).await.err().unwrap();
        assert!(matches!(err, PageserverError::Conflict(_)), "{err}");
        let err = timelines
            .create(
                TENANT,
                child,
                Some((TimelineId::from_u128(99), BranchPoint::Latest)),
            )
            .await
            .err()
            .unwrap();
        assert!(matches!(err, PageserverError::UnknownTimeline(_)), "{err}");
        let err = timelines
            .create(TENANT, child, Some((main, BranchPoint::Lsn(Lsn(21)))))
            .await
            .err()
            .unwrap();
        assert!(matches!(err, PageserverError::Conflict(_)), "{err}");
        let err = timelines
            .create(
                TENANT,
                child,
                Some((main, BranchPoint::Timestamp { unix_us: 5 })),
            )
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("no commit at or before"), "{err}");
        assert_eq!(objects_of(&root, child), 0, "refusals leave nothing behind");

        let branch = timelines
            .create(TENANT, child, Some((main, BranchPoint::Lsn(Lsn(10)))))
            .await
            .unwrap();
        assert_eq!(branch.info().ancestor, Some((main, Lsn(10))));
        assert_eq!(branch.info().start_lsn(), Lsn(10));
        branch.ingest(Lsn(15), put("child")).unwrap();
        let leaf = timelines
            .create(TENANT, grandchild, Some((child, BranchPoint::Latest)))
            .await
            .unwrap();
        assert_eq!(leaf.start_lsn(), Lsn(15));
        let ids: Vec<TimelineId> = timelines
            .list()
            .unwrap()
            .iter()
            .map(|t| t.timeline_id())
            .collect();
        assert_eq!(ids, vec![main, child, grandchild]);
        let read = |t: Arc<Timeline>, lsn: u64| async move {
            t.get(16, b"k", Lsn(lsn))
                .await
                .unwrap()
                .map(|v| String::from_utf8(v.to_vec()).unwrap())
        };
        assert_eq!(read(leaf.clone(), 15).await.as_deref(), Some("child"));
        assert_eq!(read(branch.clone(), 12).await.as_deref(), Some("main 1"));
        assert_eq!(read(created.clone(), 20).await.as_deref(), Some("main 2"));

        let err = timelines.delete(child).await.err().unwrap();
        assert!(err.to_string().contains("has branches"), "{err}");
        timelines.shutdown().await.unwrap();
        assert!(timelines.list().unwrap().is_empty());

        // A restarted pageserver finds all three, branches after their ancestors.
        let restarted = registry(&root).await;
        restarted.load_tenant(TENANT).await.unwrap();
        let ids: Vec<TimelineId> = restarted
            .list()
            .unwrap()
            .iter()
            .map(|t| t.timeline_id())
            .collect();
        assert_eq!(ids, vec![main, child, grandchild]);
        let leaf = restarted.get(grandchild).unwrap();
        assert_eq!(leaf.info().ancestor, Some((child, Lsn(15))));
        assert_eq!(read(leaf, 15).await.as_deref(), Some("child"));

        assert!(objects_of(&root, grandchild) > 0);
        restarted.delete(grandchild).await.unwrap();
        assert_eq!(objects_of(&root, grandchild), 0);
        assert!(matches!(
            restarted.get(grandchild).err().unwrap(),
            PageserverError::UnknownTimeline(_)
        ));
        assert!(matches!(
            restarted.delete(grandchild).await.err().unwrap(),
            PageserverError::UnknownTimeline(_)
        ));
        restarted.delete(child).await.unwrap();
        assert_eq!(restarted.get(main).unwrap().last_record_lsn(), Lsn(20));
        restarted.shutdown().await.unwrap();
        let again = registry(&root).await;
        again.load_tenant(TENANT).await.unwrap();
        let ids: Vec<TimelineId> = again
            .list()
            .unwrap()
            .iter()
            .map(|t| t.timeline_id())
            .collect();
        assert_eq!(ids, vec![main]);
        again.shutdown().await.unwrap();
        std::fs::remove_dir_all(&root).unwrap();
    }
}

#[cfg(test)]
#[path = "timelines_gc_tests.rs"]
mod gc_tests;
