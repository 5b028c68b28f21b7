//! Tests of [`Timeline`]: checkpoints and compactions into a temp-folder object store, fresh
//! instances (with empty caches) that load from it alone, and a model check of reads at
//! every LSN against a naive replay.

use super::*;
use crate::block_cache::{BlockCache, BlockCacheConfig};
use crate::test_util::{model_range, random_history, replay, temp_dir, Rng};

const UNLIMITED: ScanLimits = ScanLimits {
    rows_max: usize::MAX,
    bytes_max: usize::MAX,
    keys_examined_max: usize::MAX,
};
const KEYS: [&str; 8] = ["", "a", "b", "c", "aa", "ab", "ba", "cc"];

fn ids() -> (TenantId, TimelineId) {
    (TenantId::from_u128(0xabc), TimelineId::from_u128(0xdef))
}

/// A block cache on a new, empty folder, as a pageserver started on an empty disk has.
async fn empty_cache() -> Arc<BlockCache> {
    let config = BlockCacheConfig {
        memory_bytes: 1 << 20,
        disk_dir: temp_dir("timeline-cache"),
        disk_bytes: crate::block_cache::BLOCK_CACHE_DISK_BYTES_MIN,
    };
    Arc::new(BlockCache::open(config).await.unwrap())
}

async fn load(root: &std::path::Path) -> Result<Timeline> {
    let (tenant, timeline) = ids();
    // A new RemoteStorage and cache each time, as a restarted process would have.
    Timeline::load(
        RemoteStorage::local(root)?,
        empty_cache().await,
        tenant,
        timeline,
    )
    .await
}

/// Every row of `table` at `lsn`, through scan steps within `limits`.
async fn scan_all(
    timeline: &Timeline,
    table: u32,
    range: (Option<&[u8]>, Option<&[u8]>),
    lsn: Lsn,
    limits: ScanLimits,
) -> Result<Vec<(Bytes, Bytes)>> {
    let mut rows = Vec::new();
    let mut after: Option<Bytes> = None;
    for _ in 0..10_000 {
        let page = timeline
            .scan(table, range, lsn, after.as_deref(), limits)
            .await?;
        assert!(page.rows.len() <= limits.rows_max.max(1));
        if let (Some(last), Some(first)) = (rows.last(), page.rows.first()) {
            let (last, first): (&(Bytes, Bytes), &(Bytes, Bytes)) = (last, first);
            assert!(last.0 < first.0, "scan steps overlap");
        }
        rows.extend(page.rows);
        match page.resume_after {
            Some(key) => {
                assert!(
                    after.as_ref().is_none_or(|after| key > after),
                    "no progress"
                );
                after = Some(key);
            }
            None => return Ok(rows),
        }
    }
    panic!("scan did not finish");
}

/// Everything readable at `lsn`: every test key of every table, and every table's scan.
async fn reads_at(timeline: &Timeline, lsn: Lsn) -> Vec<String> {
    let mut out = Vec::new();
    for table in 0..5u32 {
        for key in KEYS {
            out.push(format!(
                "{table}/{key}={:?}",
                timeline.get(table, key.as_bytes(), lsn).await.unwrap()
            ));
        }
        let rows = scan_all(timeline, table, (None, None), lsn, UNLIMITED)
            .await
            .unwrap();
        out.push(format!("{table}: {rows:?}"));
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
    // Tiny in-memory layers: the second checkpoint must upload several delta layers.
    first.set_delta_layer_bytes_target(100);
    for (lsn, txn) in &history[15..30] {
        first.ingest(*lsn, txn.clone()).unwrap();
    }
    assert_eq!(first.checkpoint().await.unwrap(), Some(lsn_at(29)));
    assert_eq!(first.remote_consistent_lsn(), lsn_at(29));
    let n_layers = first.manifest().await.layers.len();
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
        assert_eq!(
            reads_at(&second, lsn).await,
            reads_at(&first, lsn).await,
            "at {lsn}"
        );
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
        assert_eq!(
            reads_at(&fourth, lsn).await,
            reads_at(&first, lsn).await,
            "at {lsn}"
        );
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
    let history = random_history(&mut Rng::new(5), 10);
    for (lsn, txn) in history.iter().cloned() {
        timeline.ingest(lsn, txn).unwrap();
    }
    timeline.checkpoint().await.unwrap().unwrap();
    let layer = timeline.manifest().await.layers[0].clone();
    drop(timeline);

    // Layer files are read on demand: the load succeeds, reads fail with an error naming
    // the file, and nothing wrong is ever returned.
    let layer_path = root.join(remote_layout::layer_key(tenant, timeline_id, &layer));
    let good_layer = std::fs::read(&layer_path).unwrap();
    let mut bad_layer = good_layer.clone();
    let footer = bad_layer.len() - 20;
    bad_layer[footer] ^= 0x10;
    std::fs::write(&layer_path, &bad_layer).unwrap();
    let damaged = load(&root).await.unwrap();
    let lsn = damaged.last_record_lsn();
    let mut n_errors = 0;
    for table in 0..4 {
        for key in KEYS {
            match damaged.get(table, key.as_bytes(), lsn).await {
                Ok(_) => {}
                Err(err) => {
                    assert!(matches!(err, PageserverError::Corrupt { .. }), "{err}");
                    assert!(err.to_string().contains(&layer.file_name()), "{err}");
                    n_errors += 1;
                }
            }
        }
    }
    assert!(n_errors > 0, "a damaged footer went unnoticed");
    std::fs::write(&layer_path, &good_layer).unwrap();

    // This one claims generation 3 and writes index 3.
    let reloaded = load(&root).await.unwrap();
    assert_eq!(reloaded.generation(), 3);
    let index_path = root.join(remote_layout::index_key(tenant, timeline_id, 3));
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
    assert!(err.to_string().contains("index-00000003.json"), "{err}");
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

/// Checks gets and scans (random ranges, random limits) at `lsn` against the model.
async fn check_reads(
    timeline: &Timeline,
    history: &[(Lsn, Transaction)],
    lsn: Lsn,
    rng: &mut Rng,
    context: &str,
) {
    let expected = replay(history, lsn);
    for table in 0..5u32 {
        for key in KEYS {
            let actual = timeline.get(table, key.as_bytes(), lsn).await.unwrap();
            let want = expected.get(&(table, Bytes::from_static(key.as_bytes())));
            assert_eq!(
                actual.as_ref(),
                want,
                "{context}: get {table}/{key:?} at {lsn}"
            );
        }
        let random_bound = |rng: &mut Rng| {
            (rng.below(3) > 0)
                .then(|| Bytes::from_static(KEYS[rng.below(KEYS.len() as u64) as usize].as_bytes()))
        };
        let (start, end) = (random_bound(rng), random_bound(rng));
        let want = model_range(&expected, table, start.as_ref(), end.as_ref());
        let limits = ScanLimits {
            rows_max: rng.below(4) as usize,
            bytes_max: rng.below(30) as usize,
            keys_examined_max: rng.below(4) as usize,
        };
        for limits in [UNLIMITED, limits] {
            let actual = scan_all(
                timeline,
                table,
                (start.as_deref(), end.as_deref()),
                lsn,
                limits,
            )
            .await
            .unwrap();
            assert_eq!(
                actual, want,
                "{context}: scan {table} {start:?}..{end:?} at {lsn} {limits:?}"
            );
        }
    }
}

/// Random histories ingested with checkpoints, freezes and compactions at random moments;
/// reads at random LSNs (from memory, delta layers and images together) always equal the
/// naive replay, before and after a reload from the object store alone.
#[tokio::test]
async fn reads_at_every_lsn_match_a_naive_replay() {
    for seed in 0..12u64 {
        let root = temp_dir("timeline-model");
        let mut rng = Rng::new(seed);
        let history = random_history(&mut rng, 120);
        let mut timeline = load(&root).await.unwrap();
        timeline.set_delta_layer_bytes_target([100, 400, 1 << 20][seed as usize % 3]);
        timeline.set_compaction_delta_layers_min(1 + seed as usize % 3);
        let mut n_images = 0;
        for (i, (lsn, txn)) in history.iter().enumerate() {
            timeline.ingest(*lsn, txn.clone()).unwrap();
            match rng.below(10) {
                0 | 1 => {
                    timeline.checkpoint().await.unwrap();
                }
                2 => {
                    timeline.checkpoint().await.unwrap();
                    n_images += timeline.compact().await.unwrap().len();
                }
                _ => {}
            }
            if rng.below(8) == 0 {
                let read_lsn = Lsn(rng.below(lsn.0 + 5));
                check_reads(
                    &timeline,
                    &history[..=i],
                    read_lsn,
                    &mut rng,
                    &format!("seed {seed} live"),
                )
                .await;
            }
        }
        timeline.checkpoint().await.unwrap();
        n_images += timeline.compact().await.unwrap().len();
        assert!(
            n_images > 0 || seed % 3 == 2,
            "seed {seed}: compaction never ran"
        );
        let manifest = timeline.manifest().await;
        assert!(
            manifest
                .layers
                .iter()
                .any(|l| matches!(l, LayerDesc::Image { .. }))
                || n_images == 0
        );
        drop(timeline);

        let reloaded = load(&root).await.unwrap();
        let end = history.last().unwrap().0;
        assert_eq!(reloaded.last_record_lsn(), end);
        for (lsn, _) in history.iter().step_by(7) {
            for read_lsn in [Lsn(lsn.0 - 1), *lsn] {
                check_reads(
                    &reloaded,
                    &history,
                    read_lsn,
                    &mut rng,
                    &format!("seed {seed} reloaded"),
                )
                .await;
            }
        }
        check_reads(
            &reloaded,
            &history,
            end,
            &mut rng,
            &format!("seed {seed} reloaded"),
        )
        .await;
        assert!(
            reloaded.cache().metrics().misses > 0,
            "an empty cache fetched nothing"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}

/// Compaction gives user tables column pages next to their row pages, from the table's
/// definition in the catalog at the image's LSN; both copies hold the same rows.
#[tokio::test]
async fn compaction_writes_column_pages_for_user_tables() {
    use arrow::array::Array;
    use rowcodec::{BatchBuilder, ColumnDef, ColumnType, Value};
    let root = temp_dir("timeline-columns");
    let (tenant, timeline_id) = ids();
    let mut timeline = load(&root).await.unwrap();
    timeline.set_compaction_delta_layers_min(2);
    let def = TableDef {
        id: 16,
        name: "t".into(),
        columns: vec![
            ColumnDef {
                name: "id".into(),
                column_type: ColumnType::Int,
                not_null: true,
            },
            ColumnDef {
                name: "v".into(),
                column_type: ColumnType::Text,
                not_null: false,
            },
        ],
        primary_key: vec![0],
    };
    let row = |id: i32, text: &str| {
        let mut out = Vec::new();
        rowcodec::encode_values(&[Value::Int32(id), Value::Text(text)], &mut out).unwrap();
        Bytes::from(out)
    };
    let key = |id: i32| Bytes::copy_from_slice(&((id as u32) ^ 0x8000_0000).to_be_bytes());
    let mut ops = vec![Op::Put {
        table: CATALOG_TABLE_ID,
        key: Bytes::from_static(b"t"),
        value: def.encode(),
    }];
    ops.extend((0..500).map(|id| Op::Put {
        table: 16,
        key: key(id),
        value: row(id, &format!("first {id}")),
    }));
    timeline
        .ingest(
            Lsn(100),
            Transaction {
                xid: 1,
                commit_time_us: 0,
                ops,
            },
        )
        .unwrap();
    timeline.checkpoint().await.unwrap();
    let mut ops: Vec<Op> = (0..500)
        .step_by(3)
        .map(|id| Op::Put {
            table: 16,
            key: key(id),
            value: row(id, &format!("second {id}")),
        })
        .collect();
    ops.extend((1..500).step_by(7).map(|id| Op::Delete {
        table: 16,
        key: key(id),
    }));
    timeline
        .ingest(
            Lsn(200),
            Transaction {
                xid: 2,
                commit_time_us: 0,
                ops,
            },
        )
        .unwrap();
    timeline.checkpoint().await.unwrap();
    assert_eq!(timeline.compact().await.unwrap(), vec![16]);

    let manifest = timeline.manifest().await;
    let image = manifest
        .layers
        .iter()
        .find(|layer| matches!(layer, LayerDesc::Image { table: 16, .. }))
        .expect("an image of table 16");
    let column_key = remote_layout::column_key(tenant, timeline_id, image).expect("column pages");
    let parquet = Bytes::from(std::fs::read(root.join(&column_key)).unwrap());
    assert_eq!(
        Some(parquet.len() as u64),
        match image {
            LayerDesc::Image { column_bytes, .. } => *column_bytes,
            _ => None,
        }
    );
    let scanned = column_pages::scan(
        &crate::page_source::MemorySource::new(parquet),
        None,
        &[],
        1024,
    )
    .await
    .unwrap();
    let rows = scan_all(&timeline, 16, (None, None), Lsn(200), UNLIMITED)
        .await
        .unwrap();
    assert_eq!(rows.len(), 500 - (1..500).step_by(7).count());
    let mut builder = BatchBuilder::new(&def.types(), def.arrow_schema(false));
    for (_, value) in &rows {
        builder.append_row(value).unwrap();
    }
    let expected = builder.finish().unwrap();
    let batches = scanned.batches;
    let n_columns = def.columns.len();
    let keys: Vec<Bytes> = batches
        .iter()
        .flat_map(|batch| {
            let keys = batch
                .column(n_columns)
                .as_any()
                .downcast_ref::<arrow::array::BinaryArray>()
                .unwrap()
                .clone();
            (0..keys.len()).map(move |i| Bytes::copy_from_slice(keys.value(i)))
        })
        .collect();
    assert_eq!(
        keys,
        rows.iter().map(|(key, _)| key.clone()).collect::<Vec<_>>()
    );
    let columns: Vec<arrow::record_batch::RecordBatch> = batches
        .iter()
        .map(|batch| batch.project(&(0..n_columns).collect::<Vec<_>>()).unwrap())
        .collect();
    let combined = arrow::compute::concat_batches(&expected.schema(), &columns).unwrap();
    assert_eq!(combined, expected);
    std::fs::remove_dir_all(&root).unwrap();
}

/// The index is replaced only by a compare-and-swap on the version this pageserver wrote
/// last: one changed behind its back is never overwritten, and the checkpoint fails.
#[tokio::test]
async fn an_index_changed_behind_our_back_is_never_overwritten() {
    let root = temp_dir("timeline-cas");
    let (tenant, timeline_id) = ids();
    let timeline = load(&root).await.unwrap();
    let history = random_history(&mut Rng::new(21), 10);
    for (lsn, txn) in history[..5].iter().cloned() {
        timeline.ingest(lsn, txn).unwrap();
    }
    assert_eq!(timeline.checkpoint().await.unwrap(), Some(history[4].0));
    let index_path = root.join(remote_layout::index_key(tenant, timeline_id, 1));
    let mut other = std::fs::read(&index_path).unwrap();
    other.push(b'\n');
    std::fs::write(&index_path, &other).unwrap();

    for (lsn, txn) in history[5..].iter().cloned() {
        timeline.ingest(lsn, txn).unwrap();
    }
    let err = timeline.checkpoint().await.unwrap_err();
    assert!(
        matches!(&err, PageserverError::Remote(e) if e.is_precondition_failed()),
        "{err}"
    );
    assert_eq!(std::fs::read(&index_path).unwrap(), other, "overwritten");
    assert_eq!(timeline.remote_consistent_lsn(), history[4].0);
    // Nothing ingested is lost: reads still see it (the frozen layers stay in memory).
    let mut rng = Rng::new(22);
    for (lsn, _) in &history {
        check_reads(
            &timeline,
            &history,
            *lsn,
            &mut rng,
            "after a refused checkpoint",
        )
        .await;
    }
    std::fs::remove_dir_all(&root).unwrap();
}
