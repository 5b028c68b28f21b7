//! Tests of [`Timeline`]: checkpoints into a temp-folder object store, and fresh instances
//! that load from it alone.

use super::*;
use crate::test_util::{random_history, temp_dir, Rng};

const UNLIMITED: ScanLimits = ScanLimits {
    rows_max: usize::MAX,
    bytes_max: usize::MAX,
    keys_examined_max: usize::MAX,
};
const KEYS: [&str; 8] = ["", "a", "b", "c", "aa", "ab", "ba", "cc"];

fn ids() -> (TenantId, TimelineId) {
    (TenantId::from_u128(0xabc), TimelineId::from_u128(0xdef))
}

async fn load(root: &std::path::Path) -> Result<Timeline> {
    let (tenant, timeline) = ids();
    // A new RemoteStorage each time, as a restarted process would have.
    Timeline::load(RemoteStorage::local(root)?, tenant, timeline).await
}

/// Everything readable at `lsn`: every test key of every table, and every table's scan.
fn reads_at(timeline: &Timeline, lsn: Lsn) -> Vec<String> {
    let mut out = Vec::new();
    for table in 0..5u32 {
        for key in KEYS {
            out.push(format!(
                "{table}/{key}={:?}",
                timeline.get(table, key.as_bytes(), lsn).unwrap()
            ));
        }
        let page = timeline
            .scan(table, (None, None), lsn, None, UNLIMITED)
            .unwrap();
        assert!(page.resume_after.is_none());
        out.push(format!("{table}: {:?}", page.rows));
    }
    out
}

fn lsns_to_check(history: &[(Lsn, Transaction)], up_to: Lsn) -> Vec<Lsn> {
    let mut lsns = vec![Lsn(0)];
    for (lsn, _) in history.iter().filter(|(lsn, _)| *lsn <= up_to) {
        lsns.extend([Lsn(lsn.0 - 1), *lsn]);
    }
    lsns
}

fn index_generations(root: &std::path::Path) -> Vec<u32> {
    let (tenant, timeline) = ids();
    let folder = root.join(remote_layout::timeline_prefix(tenant, timeline));
    let mut generations: Vec<u32> = std::fs::read_dir(folder)
        .unwrap()
        .filter_map(|entry| {
            remote_layout::parse_index_file_name(entry.unwrap().file_name().to_str()?)
        })
        .collect();
    generations.sort();
    generations
}

#[tokio::test]
async fn checkpoints_reload_into_fresh_instances_with_increasing_generations() {
    let root = temp_dir("timeline-reload");
    let history = random_history(&mut Rng::new(11), 40);
    let lsn_at = |idx: usize| history[idx].0;

    let mut first = load(&root).await.unwrap();
    assert_eq!((first.generation(), first.last_record_lsn()), (1, Lsn(0)));
    assert_eq!(
        first.checkpoint().await.unwrap(),
        None,
        "nothing to upload yet"
    );
    for (lsn, txn) in &history[..15] {
        first.ingest(*lsn, txn.clone()).unwrap();
    }
    assert_eq!(first.checkpoint().await.unwrap(), Some(lsn_at(14)));
    assert_eq!(first.checkpoint().await.unwrap(), None, "nothing new");
    // Tiny layers: the second checkpoint must cut its transactions into several files.
    first.set_delta_layer_bytes_target(100);
    for (lsn, txn) in &history[15..30] {
        first.ingest(*lsn, txn.clone()).unwrap();
    }
    assert_eq!(first.checkpoint().await.unwrap(), Some(lsn_at(29)));
    assert_eq!(first.remote_consistent_lsn(), lsn_at(29));
    let n_layers = first.uploads.lock().await.layers.len();
    assert!(n_layers > 3, "only {n_layers} layers");
    for (lsn, txn) in &history[30..] {
        first.ingest(*lsn, txn.clone()).unwrap();
    }
    assert!(
        first.ingest(lsn_at(39), history[39].1.clone()).is_err(),
        "a repeated LSN is refused"
    );

    // A fresh instance sees what was uploaded, and nothing more.
    let second = load(&root).await.unwrap();
    assert_eq!(second.generation(), 2);
    assert_eq!(
        (second.last_record_lsn(), second.remote_consistent_lsn()),
        (lsn_at(29), lsn_at(29))
    );
    for lsn in lsns_to_check(&history, lsn_at(29)) {
        assert_eq!(reads_at(&second, lsn), reads_at(&first, lsn), "at {lsn}");
    }
    let err = second
        .wait_lsn(lsn_at(30), Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(matches!(err, PageserverError::WaitLsnTimeout { .. }));

    // The first (now stale) pageserver still uploads, but only under its own generation,
    // which newer generations ignore.
    assert_eq!(first.checkpoint().await.unwrap(), Some(lsn_at(39)));
    let third = load(&root).await.unwrap();
    assert_eq!(
        (third.generation(), third.last_record_lsn()),
        (3, lsn_at(29))
    );

    // The current one catches up from the WAL and uploads; the next one sees it all.
    for (lsn, txn) in &history[30..] {
        third.ingest(*lsn, txn.clone()).unwrap();
    }
    assert_eq!(third.checkpoint().await.unwrap(), Some(lsn_at(39)));
    let fourth = load(&root).await.unwrap();
    assert_eq!(
        (fourth.generation(), fourth.last_record_lsn()),
        (4, lsn_at(39))
    );
    for lsn in lsns_to_check(&history, lsn_at(39)) {
        assert_eq!(reads_at(&fourth, lsn), reads_at(&first, lsn), "at {lsn}");
    }
    assert_eq!(index_generations(&root), vec![1, 2, 3, 4]);
    assert!(fourth.remote().stats().bytes_downloaded > 0);
    std::fs::remove_dir_all(&root).unwrap();
}

#[tokio::test]
async fn corrupt_index_or_layer_is_a_clear_error() {
    let root = temp_dir("timeline-corrupt");
    let (tenant, timeline_id) = ids();
    let timeline = load(&root).await.unwrap();
    for (lsn, txn) in random_history(&mut Rng::new(5), 10) {
        timeline.ingest(lsn, txn).unwrap();
    }
    timeline.checkpoint().await.unwrap().unwrap();
    let layer = timeline.uploads.lock().await.layers[0].clone();
    drop(timeline);

    let layer_path = root.join(remote_layout::layer_key(tenant, timeline_id, &layer));
    let good_layer = std::fs::read(&layer_path).unwrap();
    let mut bad_layer = good_layer.clone();
    let middle = bad_layer.len() / 2;
    bad_layer[middle] ^= 0x10;
    std::fs::write(&layer_path, &bad_layer).unwrap();
    let err = load(&root)
        .await
        .err()
        .expect("a corrupt layer must fail the load");
    assert!(matches!(err, PageserverError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains(&layer.file_name()), "{err}");
    std::fs::write(&layer_path, &good_layer).unwrap();

    // The failed load claimed no generation; this one claims 2 and writes index 2.
    let reloaded = load(&root).await.unwrap();
    assert_eq!(reloaded.generation(), 2);
    let index_path = root.join(remote_layout::index_key(tenant, timeline_id, 2));
    let mut index = std::fs::read(&index_path).unwrap();
    let digit = index.iter().position(|b| b.is_ascii_digit()).unwrap();
    index[digit] = if index[digit] == b'9' {
        b'8'
    } else {
        index[digit] + 1
    };
    std::fs::write(&index_path, &index).unwrap();
    let err = load(&root)
        .await
        .err()
        .expect("a corrupt index must fail the load");
    assert!(err.to_string().contains("corrupt timeline index"), "{err}");
    assert!(err.to_string().contains("index-00000002.json"), "{err}");
    std::fs::remove_dir_all(&root).unwrap();
}

/// Pageservers that start at once may pick the same generation; the create-only claim
/// lets exactly one of them have it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_loads_never_share_a_generation() {
    let root = temp_dir("timeline-claim");
    load(&root).await.unwrap();
    let loads: Vec<_> = (0..8)
        .map(|_| {
            let root = root.clone();
            tokio::spawn(async move { load(&root).await.map(|timeline| timeline.generation()) })
        })
        .collect();
    let mut generations = Vec::new();
    for handle in loads {
        match handle.await.unwrap() {
            Ok(generation) => generations.push(generation),
            Err(err) => assert!(
                matches!(err, PageserverError::GenerationTaken { .. }),
                "{err}"
            ),
        }
    }
    let n_started = generations.len();
    generations.sort();
    generations.dedup();
    assert_eq!(
        generations.len(),
        n_started,
        "two pageservers share a generation"
    );
    assert!(generations.iter().all(|generation| *generation >= 2));
    std::fs::remove_dir_all(&root).unwrap();
}

#[tokio::test]
async fn wait_lsn_waits_for_ingest_or_times_out() {
    let root = temp_dir("timeline-wait");
    let timeline = std::sync::Arc::new(load(&root).await.unwrap());
    let history = random_history(&mut Rng::new(3), 3);
    timeline.ingest(history[0].0, history[0].1.clone()).unwrap();
    timeline
        .wait_lsn(history[0].0, Duration::from_millis(1))
        .await
        .unwrap();
    timeline.wait_lsn(Lsn(1), Duration::ZERO).await.unwrap();

    let ingester = {
        let timeline = timeline.clone();
        let history = history.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            for (lsn, txn) in history[1..].iter().cloned() {
                timeline.ingest(lsn, txn).unwrap();
            }
        })
    };
    timeline
        .wait_lsn(history[2].0, Duration::from_secs(10))
        .await
        .unwrap();
    ingester.await.unwrap();

    let far = Lsn(0x1_0000_0010);
    let err = timeline
        .wait_lsn(far, Duration::from_millis(30))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "timed out after 30 ms waiting for WAL up to LSN 1/10 (have {})",
            history[2].0
        )
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn layers_are_cut_by_size() {
    let history = random_history(&mut Rng::new(9), 50);
    for target in [1, 50, 300, usize::MAX] {
        let chunks = cut_into_layers(&history, target);
        assert!(chunks.iter().all(|chunk| !chunk.is_empty()));
        assert_eq!(chunks.concat(), history);
        if target == 1 {
            assert_eq!(chunks.len(), history.len());
        }
        if target == usize::MAX {
            assert_eq!(chunks.len(), 1);
        }
    }
    assert!(cut_into_layers(&[], 10).is_empty());
}
