//! Garbage collection through the timeline registry over an object store that fails, times
//! out and loses responses, for the whole life of a tenant: commits, checkpoints,
//! compactions, branches (some whose creation ends in an error), deletions, collections at
//! random horizons, and a second pageserver taking over while the first one goes on
//! (checkpointing, compacting and collecting as a stale generation).
//!
//! Checked after every step: no index in the object store names a missing layer file or
//! ancestor. Checked along the way: reads at every LSN the timelines still serve equal a
//! replay of their history, reads below what is kept are refused, and no collection cut
//! inside the window it was asked to keep. At the end: no object was overwritten (a layer
//! key never got two different contents, an index was only ever written by its own
//! generation), and a third pageserver on an empty cache reads everything still kept and
//! leaves no garbage after one more collection.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ids::{Lsn, TenantId, TimelineId};
use pageserver_api::BranchPoint;
use remote_storage::faults::{FaultRates, FaultyStore};
use remote_storage::RemoteStorage;
use wal::{Op, Transaction};

use super::tests::registry_on as registry;
use super::Timelines;
use crate::error::PageserverError;
use crate::manifest::Manifest;
use crate::remote_layout;
use crate::test_util::{random_history, Rng};
use crate::timeline::gc::GcOutcome;
use crate::timeline::tests::check_reads;
use crate::timeline::Timeline;
use rowcodec::COMMIT_TIMES_TABLE_ID;

const TENANT: TenantId = TenantId([0x5c; 16]);
const ROOT: TimelineId = TimelineId([1; 16]);

const FAULTS: FaultRates = FaultRates {
    fail_percent: 8,
    slow_percent: 2,
    lost_response_percent: 8,
    slow_ms: 120,
};

/// What the WAL of each timeline holds, and each timeline's effective history.
#[derive(Default)]
struct Model {
    /// Each timeline's own commits, as its compute wrote them.
    own: BTreeMap<TimelineId, Vec<(Lsn, Transaction)>>,
    /// The ancestor's effective history up to the branch point, then the own commits as
    /// the pageserver applies them (with their commit-time entry).
    history: BTreeMap<TimelineId, Vec<(Lsn, Transaction)>>,
    /// Each timeline's parent and branch point.
    parent: BTreeMap<TimelineId, (TimelineId, Lsn)>,
}

impl Model {
    fn branch(&mut self, id: TimelineId, parent: TimelineId, lsn: Lsn) {
        let history = self.history[&parent]
            .iter()
            .filter(|(commit, _)| *commit <= lsn)
            .cloned()
            .collect();
        self.history.insert(id, history);
        self.own.insert(id, Vec::new());
        self.parent.insert(id, (parent, lsn));
    }

    fn forget(&mut self, id: TimelineId) {
        self.own.remove(&id);
        self.history.remove(&id);
        self.parent.remove(&id);
    }

    fn has_children(&self, id: TimelineId) -> bool {
        self.parent.values().any(|(parent, _)| *parent == id)
    }

    /// The LSN of the last commit at or before `unix_us` in `id`'s effective history.
    fn lsn_at_time(&self, id: TimelineId, unix_us: u64) -> Lsn {
        self.history[&id]
            .iter()
            .filter(|(_, txn)| commit_time(txn).is_some_and(|time| time <= unix_us))
            .map(|(lsn, _)| *lsn)
            .max()
            .unwrap_or(Lsn::ZERO)
    }
}

fn commit_time(txn: &Transaction) -> Option<u64> {
    (txn.commit_time_us > 0).then_some(txn.commit_time_us)
}

/// A random commit at `time_us`, touching tables 0, 1, 2 and 4 (3 holds commit times).
fn random_commit(rng: &mut Rng, time_us: u64) -> Transaction {
    let (_, mut txn) = random_history(rng, 1).pop().expect("one transaction");
    for op in &mut txn.ops {
        let (Op::Put { table, .. } | Op::Delete { table, .. } | Op::DropTable { table }) = op;
        if *table == COMMIT_TIMES_TABLE_ID {
            *table = 4;
        }
    }
    txn.xid = time_us;
    txn.commit_time_us = time_us;
    txn
}

/// The transaction as the pageserver applies it: plus its commit-time entry.
fn as_applied(lsn: Lsn, txn: &Transaction) -> Transaction {
    let mut applied = txn.clone();
    applied.ops.push(Op::Put {
        table: COMMIT_TIMES_TABLE_ID,
        key: Bytes::copy_from_slice(&txn.commit_time_us.to_be_bytes()),
        value: Bytes::copy_from_slice(&lsn.0.to_be_bytes()),
    });
    applied
}

/// Feeds `timeline` the own commits it has not applied yet, as its WAL receiver would.
fn catch_up(timeline: &Timeline, own: &[(Lsn, Transaction)]) {
    for (lsn, txn) in own {
        if *lsn > timeline.last_record_lsn() {
            timeline.ingest(*lsn, txn.clone()).unwrap();
        }
    }
}

/// The index files in the object store that name a missing layer file or ancestor. Files
/// are listed again after the indexes are read: background uploads may go on meanwhile, and
/// a file is uploaded before any index names it.
async fn dangling_references(store: &RemoteStorage) -> Vec<String> {
    let list = || async {
        store
            .list("tenants")
            .await
            .unwrap()
            .into_iter()
            .map(|object| object.key)
            .collect::<BTreeSet<String>>()
    };
    let mut indexes = Vec::new();
    for key in list().await {
        let parts: Vec<&str> = key.split('/').collect();
        if parts.len() != 5 || remote_layout::parse_index_file_name(parts[4]).is_none() {
            continue;
        }
        let (tenant, timeline): (TenantId, TimelineId) =
            (parts[1].parse().unwrap(), parts[3].parse().unwrap());
        match store.get(&key, u64::MAX).await {
            Ok(bytes) => indexes.push((key, tenant, timeline, bytes)),
            // Deleted since the listing (a collection or a deletion in the background).
            Err(e) if e.is_not_found() => {}
            Err(e) => panic!("reading {key}: {e}"),
        }
    }
    let keys = list().await;
    let mut dangling = Vec::new();
    for (key, tenant, timeline, bytes) in &indexes {
        let (key, tenant, timeline) = (key, *tenant, *timeline);
        if !keys.contains(key) {
            continue;
        }
        let manifest = Manifest::decode(bytes, tenant, timeline).unwrap();
        for desc in &manifest.layers {
            let files = [
                Some(remote_layout::layer_key(tenant, timeline, desc)),
                remote_layout::column_key(tenant, timeline, desc),
            ];
            for file in files.into_iter().flatten() {
                if !keys.contains(&file) {
                    dangling.push(format!("{key} names {file}"));
                }
            }
        }
        if let Some(ancestor) = &manifest.ancestor {
            let ancestor_id: TimelineId = ancestor.timeline.parse().unwrap();
            let prefix = format!(
                "{}/index-",
                remote_layout::timeline_prefix(tenant, ancestor_id)
            );
            if !keys.iter().any(|k| k.starts_with(&prefix)) {
                dangling.push(format!(
                    "{key} names ancestor {ancestor_id}, which has no index"
                ));
            }
        }
    }
    dangling
}

/// Puts that replaced an object with other contents: a layer key written with two different
/// contents, or an index written by another generation than its own.
fn overwrites(puts: &[(String, Bytes)]) -> Vec<String> {
    let mut first: BTreeMap<&str, &Bytes> = BTreeMap::new();
    let mut found = Vec::new();
    for (key, bytes) in puts {
        let name = key.rsplit('/').next().unwrap();
        if let Some(generation) = remote_layout::parse_index_file_name(name) {
            let parts: Vec<&str> = key.split('/').collect();
            let manifest =
                Manifest::decode(bytes, parts[1].parse().unwrap(), parts[3].parse().unwrap())
                    .unwrap();
            if manifest.generation != generation {
                found.push(format!(
                    "{key} written by generation {}",
                    manifest.generation
                ));
            }
        } else if let Some(previous) = first.insert(key, bytes) {
            if previous != bytes {
                found.push(format!("{key} written twice with different contents"));
            }
        }
    }
    found
}

/// What the run did, summed over seeds: each must have happened for the test to mean
/// anything.
#[derive(Debug, Default)]
struct Tally {
    layers_removed: usize,
    objects_deleted: usize,
    refused_reads: usize,
    stale_collections_that_deleted_nothing: usize,
    unserved_branches: usize,
}

impl Tally {
    fn add(&mut self, outcomes: &[(TimelineId, crate::error::Result<GcOutcome>)]) {
        for outcome in outcomes
            .iter()
            .filter_map(|(_, outcome)| outcome.as_ref().ok())
        {
            self.layers_removed += outcome.layers_removed;
            self.objects_deleted += outcome.objects_deleted;
            if outcome.newer_generation.is_some() {
                self.stale_collections_that_deleted_nothing += 1;
                assert_eq!(outcome.objects_deleted, 0);
            }
        }
    }
}

/// Checks reads of every timeline `current` serves at random LSNs: equal to the model
/// where still served, refused where not, and no collection cut inside what it was asked
/// to keep.
async fn check_served_reads(
    current: &Timelines,
    model: &Model,
    horizon_us: u64,
    rng: &mut Rng,
    context: &str,
    tally: &mut Tally,
) {
    for timeline in current.list().unwrap() {
        let id = timeline.timeline_id();
        let (cutoff, _) = timeline.gc_cutoff().unwrap();
        let kept_from = model.lsn_at_time(id, horizon_us);
        assert!(
            cutoff <= kept_from,
            "{context}: {id} cut at {cutoff}, inside the window from {kept_from}"
        );
        let history = &model.history[&id];
        let mut lsns = vec![timeline.last_record_lsn(), timeline.start_lsn(), cutoff];
        for _ in 0..3 {
            lsns.push(Lsn(rng.below(timeline.last_record_lsn().0 + 5)));
        }
        for lsn in lsns {
            let context = format!("{context}: {id} at {lsn}");
            if timeline.check_readable(lsn).is_ok() {
                check_reads(&timeline, history, lsn, rng, &context).await;
            } else {
                tally.refused_reads += 1;
                let err = timeline.get(0, b"a", lsn).await.unwrap_err();
                assert!(
                    matches!(err, PageserverError::NotRetained { .. }),
                    "{context}: {err}"
                );
                let err = timeline
                    .scan(
                        0,
                        (None, None),
                        lsn,
                        None,
                        super::super::timeline::UNLIMITED_SCAN,
                    )
                    .await
                    .unwrap_err();
                assert!(
                    matches!(err, PageserverError::NotRetained { .. }),
                    "{context}: {err}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_through_faults_and_a_takeover_never_loses_what_is_kept() {
    let mut totals = (0usize, 0usize, 0usize);
    let mut tally = Tally::default();
    for seed in 0..4u64 {
        let inner: Arc<dyn object_store::ObjectStore> =
            Arc::new(object_store::memory::InMemory::new());
        let faulty = Arc::new(FaultyStore::new(inner.clone(), FaultRates::default(), seed));
        let remote = RemoteStorage::from_object_store(faulty.clone())
            .with_request_timeout(Duration::from_millis(60));
        let direct = RemoteStorage::from_object_store(inner.clone());
        let mut rng = Rng::new(0x9c + seed);
        let mut model = Model::default();
        let mut current = registry(remote.clone()).await;
        current.create(TENANT, ROOT, None).await.unwrap();
        model.history.insert(ROOT, Vec::new());
        model.own.insert(ROOT, Vec::new());
        let mut stale: Option<Timelines> = None;
        let mut time_us = 1_000u64;
        let mut horizon_us = 0u64;
        let mut next_id = 2u128;
        let takeover_step = 30 + rng.below(60);
        faulty.set_rates(FAULTS);
        for step in 0..140u64 {
            let context = format!("seed {seed} step {step}");
            let served = current.list().unwrap();
            let timeline = served[rng.below(served.len() as u64) as usize].clone();
            let id = timeline.timeline_id();
            match rng.below(20) {
                0..=8 => {
                    time_us += 1_000;
                    let lsn = timeline.last_record_lsn().add(1 + rng.below(60));
                    let txn = random_commit(&mut rng, time_us);
                    timeline.ingest(lsn, txn.clone()).unwrap();
                    if let Some(old) = stale.as_ref().and_then(|s| s.get(id).ok()) {
                        catch_up(&old, &model.own[&id]);
                        old.ingest(lsn, txn.clone()).unwrap();
                    }
                    model.own.get_mut(&id).unwrap().push((lsn, txn.clone()));
                    model
                        .history
                        .get_mut(&id)
                        .unwrap()
                        .push((lsn, as_applied(lsn, &txn)));
                }
                9 | 10 => {
                    timeline.set_compaction_delta_layers_min(1 + rng.below(3) as usize);
                    let _ = timeline.checkpoint().await;
                    if rng.below(2) == 0 {
                        let _ = timeline.compact().await;
                    }
                }
                11 => {
                    let (cutoff, _) = timeline.gc_cutoff().unwrap();
                    let last = timeline.last_record_lsn().0;
                    let lsn = Lsn(cutoff.0 + rng.below(last - cutoff.0 + 1));
                    let child = TimelineId::from_u128(next_id);
                    next_id += 1;
                    let created = if rng.below(3) == 0 {
                        // The index lands but the registry never learns of it, as when the
                        // answer to the create is lost.
                        let landed = Timeline::create_branch(
                            remote.clone(),
                            current.cache().clone(),
                            child,
                            timeline.clone(),
                            lsn,
                        )
                        .await;
                        Err(landed.map_or_else(|e| e, |_| PageserverError::Internal("lost".into())))
                    } else {
                        current
                            .create(TENANT, child, Some((id, BranchPoint::Lsn(lsn))))
                            .await
                    };
                    match created {
                        Ok(_) => model.branch(child, id, lsn),
                        Err(_) => {
                            // The create's outcome is unknown: an index may be there. Keep
                            // it (an unserved branch its parent must keep) or delete it.
                            let index = crate::timeline::read_index(&direct, TENANT, child)
                                .await
                                .unwrap();
                            if index.is_some() {
                                tally.unserved_branches += 1;
                                model.branch(child, id, lsn);
                                if rng.below(2) == 0 && current.delete(child).await.is_ok() {
                                    model.forget(child);
                                }
                            }
                        }
                    }
                }
                12 | 13 => {
                    horizon_us = horizon_us.max(rng.below(time_us + 1));
                    if let Ok(outcomes) = current.gc_at(horizon_us).await {
                        tally.add(&outcomes);
                    }
                }
                14 => {
                    if let Some(old) = &stale {
                        if let Ok(outcomes) = old.gc_at(time_us).await {
                            tally.add(&outcomes);
                        }
                        for timeline in old.list().unwrap() {
                            let _ = timeline.checkpoint().await;
                            let _ = timeline.compact().await;
                        }
                    }
                }
                15 => {
                    // Delete a branch nobody branches from (its files may outlive a failed
                    // attempt; a later attempt deletes them).
                    let leaves: Vec<TimelineId> = model
                        .parent
                        .keys()
                        .copied()
                        .filter(|id| !model.has_children(*id))
                        .collect();
                    if let Some(leaf) = leaves.get(rng.below(leaves.len() as u64 + 1) as usize) {
                        if current.delete(*leaf).await.is_ok() {
                            model.forget(*leaf);
                        } else if crate::timeline::read_index(&direct, TENANT, *leaf)
                            .await
                            .unwrap()
                            .is_none()
                        {
                            // Its index is gone: no pageserver will serve it again.
                            model.forget(*leaf);
                        }
                    }
                }
                _ if step >= takeover_step && stale.is_none() => {
                    // A second pageserver takes over while the first collects (and the
                    // first collects again after: as a stale generation, it must delete
                    // nothing the second one's index names).
                    let next = registry(remote.clone()).await;
                    horizon_us = horizon_us.max(rng.below(time_us + 1));
                    let old_gc = async {
                        if let Ok(outcomes) = current.gc_at(horizon_us).await {
                            tally.add(&outcomes);
                        }
                    };
                    let load = async { while next.load_tenant(TENANT).await.is_err() {} };
                    let _ = tokio::join!(old_gc, load);
                    assert!(
                        dangling_references(&direct).await.is_empty(),
                        "{context}: after the takeover"
                    );
                    for timeline in next.list().unwrap() {
                        catch_up(&timeline, &model.own[&timeline.timeline_id()]);
                    }
                    for timeline in current.list().unwrap() {
                        let _ = timeline.checkpoint().await;
                        let _ = timeline.compact().await;
                    }
                    if let Ok(outcomes) = current.gc_at(horizon_us).await {
                        tally.add(&outcomes);
                    }
                    stale = Some(std::mem::replace(&mut current, next));
                }
                _ => {
                    faulty.set_rates(FaultRates::default());
                    check_served_reads(
                        &current, &model, horizon_us, &mut rng, &context, &mut tally,
                    )
                    .await;
                    faulty.set_rates(FAULTS);
                }
            }
            let dangling = dangling_references(&direct).await;
            assert!(dangling.is_empty(), "{context}: {dangling:?}");
        }
        faulty.set_rates(FaultRates::default());
        assert!(stale.is_some(), "seed {seed}: no takeover");

        // Everything uploaded, one last collection by the current pageserver.
        for timeline in current.list().unwrap() {
            timeline.checkpoint().await.unwrap();
        }
        for (id, outcome) in current.gc_at(horizon_us).await.unwrap() {
            outcome.unwrap_or_else(|e| panic!("seed {seed}: final gc of {id}: {e}"));
        }
        check_served_reads(&current, &model, horizon_us, &mut rng, "final", &mut tally).await;

        // A third pageserver on an empty cache: everything kept reads the same, and one
        // more collection leaves exactly one index per timeline and no unnamed file.
        let third = registry(RemoteStorage::from_object_store(inner.clone())).await;
        third.load_tenant(TENANT).await.unwrap();
        for timeline in third.list().unwrap() {
            catch_up(&timeline, &model.own[&timeline.timeline_id()]);
        }
        let served: BTreeSet<TimelineId> = third
            .list()
            .unwrap()
            .iter()
            .map(|t| t.timeline_id())
            .collect();
        let modelled: BTreeSet<TimelineId> = model.history.keys().copied().collect();
        assert_eq!(served, modelled, "seed {seed}: timelines after a restart");
        for (id, outcome) in third.gc_at(horizon_us).await.unwrap() {
            let outcome = outcome.unwrap_or_else(|e| panic!("seed {seed}: gc of {id}: {e}"));
            assert_eq!(outcome.newer_generation, None);
        }
        check_served_reads(&third, &model, horizon_us, &mut rng, "third", &mut tally).await;
        for timeline in third.list().unwrap() {
            let prefix = remote_layout::timeline_prefix(TENANT, timeline.timeline_id());
            let manifest = crate::timeline::read_index(&direct, TENANT, timeline.timeline_id())
                .await
                .unwrap()
                .unwrap();
            let mut named: BTreeSet<String> = manifest
                .layers
                .iter()
                .flat_map(|desc| {
                    [
                        Some(remote_layout::layer_key(
                            TENANT,
                            timeline.timeline_id(),
                            desc,
                        )),
                        remote_layout::column_key(TENANT, timeline.timeline_id(), desc),
                    ]
                })
                .flatten()
                .collect();
            named.insert(remote_layout::index_key(
                TENANT,
                timeline.timeline_id(),
                timeline.generation(),
            ));
            let stored: BTreeSet<String> = direct
                .list(&prefix)
                .await
                .unwrap()
                .into_iter()
                .map(|object| object.key)
                .collect();
            assert_eq!(
                stored,
                named,
                "seed {seed}: files of {}",
                timeline.timeline_id()
            );
        }

        let dangling = dangling_references(&direct).await;
        assert!(dangling.is_empty(), "seed {seed} at the end: {dangling:?}");
        let overwritten = overwrites(&faulty.recorded_puts());
        assert!(overwritten.is_empty(), "seed {seed}: {overwritten:?}");
        totals.0 += faulty.counts.failed.load(Ordering::Relaxed) as usize;
        totals.1 += faulty.counts.lost_responses.load(Ordering::Relaxed) as usize;
        totals.2 += faulty.counts.slowed.load(Ordering::Relaxed) as usize;
        third.shutdown().await.unwrap();
        // The older pageservers' indexes are gone: their last uploads are refused.
        let _ = current.shutdown().await;
        if let Some(old) = stale {
            let _ = old.shutdown().await;
        }
    }
    assert!(
        totals.0 > 0 && totals.1 > 0 && totals.2 > 0,
        "faults injected (failed, lost, slowed): {totals:?}"
    );
    eprintln!("faults (failed, lost, slowed) {totals:?}; {tally:?}");
    assert!(
        tally.layers_removed > 0
            && tally.objects_deleted > 0
            && tally.refused_reads > 0
            && tally.stale_collections_that_deleted_nothing > 0
            && tally.unserved_branches > 0,
        "{tally:?}"
    );
}
