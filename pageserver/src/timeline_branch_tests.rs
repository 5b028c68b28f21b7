//! Tests of branches: reads through ancestors against a naive replay of each branch's
//! effective history (the ancestor's commits up to the branch LSN, then its own), branch
//! points by LSN and by time, and the refusals.

use super::tests::{check_reads, empty_cache};
use super::*;
use crate::test_util::{random_history, temp_dir, Rng};

const TENANT: TenantId = TenantId([0xab; 16]);

/// A timeline under test and the history a naive replay of it must match.
struct Branch {
    timeline: Arc<Timeline>,
    /// The ancestor's effective history up to the branch LSN, then this timeline's commits.
    history: Vec<(Lsn, Transaction)>,
}

fn remote(root: &std::path::Path) -> RemoteStorage {
    RemoteStorage::local(root).unwrap()
}

fn id(n: usize) -> TimelineId {
    TimelineId::from_u128(0x1000 + n as u128)
}

/// One random transaction committed `1..=100` bytes after `after`.
fn next_commit(rng: &mut Rng, after: Lsn, xid: u64) -> (Lsn, Transaction) {
    let (_, mut txn) = random_history(rng, 1).pop().expect("one transaction");
    txn.xid = xid;
    (after.add(1 + rng.below(100)), txn)
}

/// Random commits, checkpoints, compactions and branches (of the root and of branches, at
/// random LSNs) over up to five timelines; at random moments, and again after every
/// timeline is reopened from the object store alone, every read of every timeline at a
/// random LSN equals the replay of that timeline's effective history.
#[tokio::test]
async fn branch_reads_match_a_replay_of_their_effective_history() {
    for seed in 0..8u64 {
        let root = temp_dir("branch-model");
        let mut rng = Rng::new(100 + seed);
        let cache = empty_cache().await;
        let mut root_timeline = Timeline::load(remote(&root), cache.clone(), TENANT, id(0))
            .await
            .unwrap();
        root_timeline.set_delta_layer_bytes_target([200, 1 << 20][seed as usize % 2]);
        root_timeline.set_compaction_delta_layers_min(1 + seed as usize % 2);
        let mut branches = vec![Branch {
            timeline: Arc::new(root_timeline),
            history: Vec::new(),
        }];
        let mut xid = 0;
        for step in 0..160 {
            let i = rng.below(branches.len() as u64) as usize;
            let n_branches = branches.len();
            let branch = &mut branches[i];
            match rng.below(20) {
                0..=12 => {
                    xid += 1;
                    let (lsn, txn) = next_commit(&mut rng, branch.timeline.last_record_lsn(), xid);
                    branch.timeline.ingest(lsn, txn.clone()).unwrap();
                    branch.history.push((lsn, txn));
                }
                13 => {
                    branch.timeline.checkpoint().await.unwrap();
                }
                14 => {
                    branch.timeline.checkpoint().await.unwrap();
                    branch.timeline.compact().await.unwrap();
                }
                15 | 16 if n_branches < 5 => {
                    let parent = &branches[i];
                    // Anywhere up to what the parent applied, below its own branch LSN too.
                    let last = parent.timeline.last_record_lsn().0;
                    let lsn = Lsn(rng.below(last + 1));
                    let history: Vec<(Lsn, Transaction)> = parent
                        .history
                        .iter()
                        .filter(|(commit, _)| *commit <= lsn)
                        .cloned()
                        .collect();
                    let mut created = Timeline::create_branch(
                        remote(&root),
                        cache.clone(),
                        id(branches.len()),
                        parent.timeline.clone(),
                        lsn,
                    )
                    .await
                    .unwrap();
                    created.set_delta_layer_bytes_target([300, 1 << 20][step % 2]);
                    created.set_compaction_delta_layers_min(1 + step % 3);
                    assert_eq!(created.last_record_lsn(), lsn);
                    branches.push(Branch {
                        timeline: Arc::new(created),
                        history,
                    });
                }
                _ => {
                    let read_lsn = Lsn(rng.below(branch.timeline.last_record_lsn().0 + 5));
                    let context = format!("seed {seed} step {step} timeline {i} live");
                    check_reads(
                        &branch.timeline,
                        &branch.history,
                        read_lsn,
                        &mut rng,
                        &context,
                    )
                    .await;
                }
            }
        }
        for branch in &branches {
            branch.timeline.checkpoint().await.unwrap();
        }

        // Reopen every timeline from the object store alone, ancestors first.
        let cache = empty_cache().await;
        let mut reopened: Vec<Arc<Timeline>> = Vec::new();
        for (i, branch) in branches.iter().enumerate() {
            let index = read_index(&remote(&root), TENANT, id(i))
                .await
                .unwrap()
                .expect("every timeline has an index");
            let ancestor = branch.timeline.ancestor().map(|a| {
                let n = (0..i).find(|n| id(*n) == a.timeline.timeline_id()).unwrap();
                reopened[n].clone()
            });
            let timeline = Timeline::open(
                remote(&root),
                cache.clone(),
                TENANT,
                id(i),
                Some(index),
                ancestor,
            )
            .await
            .unwrap();
            assert_eq!(
                timeline.last_record_lsn(),
                branch.timeline.last_record_lsn()
            );
            assert_eq!(timeline.start_lsn(), branch.timeline.start_lsn());
            reopened.push(Arc::new(timeline));
        }
        for (i, (timeline, branch)) in reopened.iter().zip(&branches).enumerate() {
            for _ in 0..4 {
                let read_lsn = Lsn(rng.below(timeline.last_record_lsn().0 + 5));
                let context = format!("seed {seed} timeline {i} reopened");
                check_reads(timeline, &branch.history, read_lsn, &mut rng, &context).await;
            }
        }
        assert!(branches.len() > 1, "seed {seed}: no branch was made");
        std::fs::remove_dir_all(&root).unwrap();
    }
}

fn put(table: u32, key: &str, value: &str) -> Op {
    Op::Put {
        table,
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
    }
}

fn commit_at(time_us: u64, ops: Vec<Op>) -> Transaction {
    Transaction {
        xid: time_us,
        commit_time_us: time_us,
        ops,
    }
}

/// "The last commit at or before T", on a root timeline, after a reload, and on a branch
/// (whose older commit times are its ancestor's).
#[tokio::test]
async fn commit_times_find_the_last_commit_at_or_before_a_time() {
    let root = temp_dir("branch-time");
    let cache = empty_cache().await;
    let parent = Timeline::load(remote(&root), cache.clone(), TENANT, id(0))
        .await
        .unwrap();
    assert_eq!(parent.lsn_at_time(5_000_000).await.unwrap(), None);
    parent
        .ingest(Lsn(10), commit_at(1_000_000, vec![put(16, "a", "1")]))
        .unwrap();
    parent
        .ingest(Lsn(20), commit_at(2_000_000, vec![put(16, "a", "2")]))
        .unwrap();
    parent
        .ingest(Lsn(30), commit_at(3_000_000, vec![put(16, "a", "3")]))
        .unwrap();
    // Hours later: the look-back window has to grow to find the older commits.
    parent
        .ingest(Lsn(40), commit_at(9_000_000_000, vec![put(16, "a", "4")]))
        .unwrap();
    let cases = [
        (999_999, None),
        (1_000_000, Some(Lsn(10))),
        (2_500_000, Some(Lsn(20))),
        (3_000_000, Some(Lsn(30))),
        (8_999_999_999, Some(Lsn(30))),
        (u64::MAX, Some(Lsn(40))),
    ];
    for (time, want) in cases {
        assert_eq!(parent.lsn_at_time(time).await.unwrap(), want, "at {time}");
    }
    parent.checkpoint().await.unwrap();
    let reloaded = Arc::new(
        Timeline::load(remote(&root), empty_cache().await, TENANT, id(0))
            .await
            .unwrap(),
    );
    for (time, want) in cases {
        assert_eq!(
            reloaded.lsn_at_time(time).await.unwrap(),
            want,
            "reloaded, at {time}"
        );
    }
    let branch = Timeline::create_branch(remote(&root), cache, id(1), reloaded.clone(), Lsn(20))
        .await
        .unwrap();
    // The branch's compute has a clock behind the parent's: its commit is still the last
    // one at or before its own time.
    branch
        .ingest(Lsn(25), commit_at(1_500_000, vec![put(16, "a", "b")]))
        .unwrap();
    assert_eq!(branch.lsn_at_time(1_499_999).await.unwrap(), Some(Lsn(10)));
    assert_eq!(branch.lsn_at_time(1_500_000).await.unwrap(), Some(Lsn(25)));
    assert_eq!(branch.lsn_at_time(2_000_000).await.unwrap(), Some(Lsn(25)));
    assert_eq!(branch.lsn_at_time(u64::MAX).await.unwrap(), Some(Lsn(25)));
    assert_eq!(
        branch.get(16, b"a", Lsn(25)).await.unwrap().as_deref(),
        Some(&b"b"[..])
    );
    assert_eq!(
        branch.get(16, b"a", Lsn(24)).await.unwrap().as_deref(),
        Some(&b"2"[..])
    );
    std::fs::remove_dir_all(&root).unwrap();
}

/// A branch above what the parent applied, or onto an id that exists, is refused, and
/// refusing changes nothing; a branch below where its parent starts reads further up.
#[tokio::test]
async fn bad_branch_points_are_refused() {
    let root = temp_dir("branch-refused");
    let cache = empty_cache().await;
    let parent = Arc::new(
        Timeline::load(remote(&root), cache.clone(), TENANT, id(0))
            .await
            .unwrap(),
    );
    parent
        .ingest(Lsn(10), commit_at(1, vec![put(16, "a", "1")]))
        .unwrap();
    let err = Timeline::create_branch(remote(&root), cache.clone(), id(1), parent.clone(), Lsn(11))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, PageserverError::Conflict(_)), "{err}");
    assert!(read_index(&remote(&root), TENANT, id(1))
        .await
        .unwrap()
        .is_none());

    let child = Arc::new(
        Timeline::create_branch(remote(&root), cache.clone(), id(1), parent.clone(), Lsn(10))
            .await
            .unwrap(),
    );
    child
        .ingest(Lsn(15), commit_at(2, vec![put(16, "a", "2")]))
        .unwrap();
    let below = Timeline::create_branch(remote(&root), cache.clone(), id(2), child.clone(), Lsn(9))
        .await
        .unwrap();
    below
        .ingest(Lsn(12), commit_at(3, vec![put(16, "a", "3")]))
        .unwrap();
    assert_eq!(below.get(16, b"a", Lsn(11)).await.unwrap(), None);
    assert_eq!(
        below.get(16, b"a", Lsn(12)).await.unwrap().as_deref(),
        Some(&b"3"[..])
    );
    let err = Timeline::create_branch(remote(&root), cache.clone(), id(1), parent.clone(), Lsn(5))
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("already exists"), "{err}");
    // The child still reads its own write over its parent's row.
    assert_eq!(
        child.get(16, b"a", Lsn(15)).await.unwrap().as_deref(),
        Some(&b"2"[..])
    );
    assert_eq!(
        parent.get(16, b"a", Lsn(15)).await.unwrap().as_deref(),
        Some(&b"1"[..])
    );
    std::fs::remove_dir_all(&root).unwrap();
}
