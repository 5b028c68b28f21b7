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
pub(crate) async fn empty_cache() -> Arc<BlockCache> {
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
pub(crate) async fn check_reads(
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
    let timeline = load(&root).await.unwrap();
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

// ---------------------------------------------------------------------------------------
// Column scans (`timeline_columns.rs`)
// ---------------------------------------------------------------------------------------

mod column_scans {
    use std::collections::HashMap;

    use arrow::array::{Array, BinaryArray, RecordBatch};
    use arrow::util::display::{ArrayFormatter, FormatOptions};
    use rowcodec::{BatchBuilder, ColumnDef, ColumnType, Value};

    use super::*;
    use crate::column_pages::{ColumnPredicate, CompareOp, Literal};
    use crate::timeline::columns::{ColumnScanPath, ColumnScanRequest, ColumnScanStats};

    /// A row of the test tables, as the test generated it.
    #[derive(Debug, Clone)]
    struct ModelRow {
        id: i32,
        n: Option<i64>,
        v: Option<String>,
        f: f64,
        /// numeric(10,2), unscaled.
        amount: i128,
        flag: Option<bool>,
    }

    const N_COLUMNS: usize = 6;

    fn def(id: u32, name: &str) -> TableDef {
        let column = |name: &str, column_type: ColumnType, not_null: bool| ColumnDef {
            name: name.into(),
            column_type,
            not_null,
        };
        TableDef {
            id,
            name: name.into(),
            columns: vec![
                column("id", ColumnType::Int, true),
                column("n", ColumnType::BigInt, false),
                column("v", ColumnType::Text, false),
                column("f", ColumnType::Double, true),
                column(
                    "amount",
                    ColumnType::Numeric {
                        precision: 10,
                        scale: 2,
                    },
                    true,
                ),
                column("flag", ColumnType::Bool, false),
            ],
            primary_key: vec![0],
        }
    }

    fn key(id: i32) -> Bytes {
        Bytes::copy_from_slice(&((id as u32) ^ 0x8000_0000).to_be_bytes())
    }

    fn encode(row: &ModelRow) -> Bytes {
        let values = [
            Value::Int32(row.id),
            row.n.map_or(Value::Null, Value::Int64),
            row.v.as_deref().map_or(Value::Null, Value::Text),
            Value::Float64(row.f),
            Value::Decimal(row.amount, 2),
            row.flag.map_or(Value::Null, Value::Bool),
        ];
        let mut out = Vec::new();
        rowcodec::encode_values(&values, &mut out).unwrap();
        Bytes::from(out)
    }

    fn random_row(rng: &mut Rng, id: i32, xid: u64) -> ModelRow {
        ModelRow {
            id,
            n: (rng.below(5) > 0).then(|| rng.below(100) as i64 - 50),
            // The transaction id keeps every value's bytes unique, so that the bytes name
            // the row in the model.
            v: (rng.below(5) > 0).then(|| format!("v{:02}-{xid}", rng.below(30))),
            f: (rng.below(20) as f64 - 10.0) / 4.0,
            amount: rng.below(20_000) as i128 - 10_000,
            flag: match rng.below(3) {
                0 => None,
                1 => Some(false),
                _ => Some(true),
            },
        }
    }

    fn catalog_put(def: &TableDef) -> Op {
        Op::Put {
            table: CATALOG_TABLE_ID,
            key: Bytes::from(def.name.clone().into_bytes()),
            value: def.encode(),
        }
    }

    /// Tables 16 and 17 created with 150 rows each, then random puts and deletes; table 17
    /// is dropped once (its catalog row deleted with it, as a compute does) and table 18
    /// created late. Returns the history and the row behind every value written.
    fn history(rng: &mut Rng, n: usize) -> (Vec<(Lsn, Transaction)>, HashMap<Bytes, ModelRow>) {
        let mut rows = HashMap::new();
        let put = |rows: &mut HashMap<Bytes, ModelRow>, rng: &mut Rng, table, id, xid| {
            let row = random_row(rng, id, xid);
            let value = encode(&row);
            rows.insert(value.clone(), row);
            Op::Put {
                table,
                key: key(id),
                value,
            }
        };
        let mut history = Vec::with_capacity(n);
        let mut lsn = Lsn(0);
        let drop_at = n / 2 + rng.below(n as u64 / 4) as usize;
        let create_at = n * 3 / 4;
        for xid in 0..n as u64 {
            let mut ops = Vec::new();
            if xid == 0 {
                ops.push(catalog_put(&def(16, "t16")));
                ops.push(catalog_put(&def(17, "t17")));
                for id in 0..150 {
                    ops.push(put(&mut rows, rng, 16, id, xid));
                    ops.push(put(&mut rows, rng, 17, id, xid));
                }
            } else if xid as usize == drop_at {
                ops.push(Op::Delete {
                    table: CATALOG_TABLE_ID,
                    key: Bytes::from_static(b"t17"),
                });
                ops.push(Op::DropTable { table: 17 });
            } else if xid as usize == create_at {
                ops.push(catalog_put(&def(18, "t18")));
                for id in 0..20 {
                    ops.push(put(&mut rows, rng, 18, id, xid));
                }
            } else {
                // Only tables that exist: a compute writes nothing else.
                let mut tables = vec![16];
                if (xid as usize) < drop_at {
                    tables.push(17);
                }
                if (xid as usize) > create_at {
                    tables.push(18);
                }
                for _ in 0..1 + rng.below(8) {
                    let table = tables[rng.below(tables.len() as u64) as usize];
                    let id = rng.below(200) as i32;
                    ops.push(match rng.below(4) {
                        0 => Op::Delete {
                            table,
                            key: key(id),
                        },
                        _ => put(&mut rows, rng, table, id, xid),
                    });
                }
            }
            lsn = lsn.add(1 + rng.below(50));
            history.push((
                lsn,
                Transaction {
                    xid,
                    commit_time_us: 0,
                    ops,
                },
            ));
        }
        (history, rows)
    }

    fn random_literal(rng: &mut Rng, column: usize) -> Literal {
        match column {
            0 => Literal::Int(rng.below(220) as i64 - 10),
            1 => Literal::Int(rng.below(120) as i64 - 60),
            2 => Literal::Text(format!("v{:02}", rng.below(32))),
            3 => Literal::Float((rng.below(24) as f64 - 12.0) / 4.0),
            4 => match rng.below(2) {
                0 => Literal::Decimal {
                    value: rng.below(22_000) as i128 - 11_000,
                    scale: 2,
                },
                _ => Literal::Int(rng.below(220) as i64 - 110),
            },
            _ => Literal::Bool(rng.below(2) == 1),
        }
    }

    fn random_predicates(rng: &mut Rng) -> Vec<ColumnPredicate> {
        let ops = [
            CompareOp::Eq,
            CompareOp::Lt,
            CompareOp::LtEq,
            CompareOp::Gt,
            CompareOp::GtEq,
        ];
        (0..rng.below(4))
            .map(|_| {
                let column = rng.below(N_COLUMNS as u64) as usize;
                // An order comparison on a float column cannot be decided (NaN): the test
                // keeps to what the pageserver decides exactly.
                let op = match column {
                    3 => CompareOp::Eq,
                    _ => ops[rng.below(5) as usize],
                };
                ColumnPredicate {
                    column,
                    op,
                    literal: random_literal(rng, column),
                }
            })
            .collect()
    }

    /// `value op literal`, NULL satisfying nothing: the model of a predicate.
    fn satisfies(row: &ModelRow, predicate: &ColumnPredicate) -> bool {
        use std::cmp::Ordering;
        let ordering: Option<Ordering> = match (predicate.column, &predicate.literal) {
            (0, Literal::Int(i)) => Some(i64::from(row.id).cmp(i)),
            (1, Literal::Int(i)) => row.n.map(|n| n.cmp(i)),
            // Text compares byte-wise; the literal is a prefix of values ("v07" < "v07-3").
            (2, Literal::Text(t)) => row.v.as_ref().map(|v| v.as_bytes().cmp(t.as_bytes())),
            (3, Literal::Float(f)) => row.f.partial_cmp(f),
            (4, Literal::Decimal { value, scale: 2 }) => Some(row.amount.cmp(value)),
            (4, Literal::Int(i)) => Some(row.amount.cmp(&(i128::from(*i) * 100))),
            (5, Literal::Bool(b)) => row.flag.map(|flag| flag.cmp(b)),
            other => panic!("no model for {other:?}"),
        };
        let Some(ordering) = ordering else {
            return false;
        };
        match predicate.op {
            CompareOp::Eq => ordering == Ordering::Equal,
            CompareOp::Lt => ordering == Ordering::Less,
            CompareOp::LtEq => ordering != Ordering::Greater,
            CompareOp::Gt => ordering == Ordering::Greater,
            CompareOp::GtEq => ordering != Ordering::Less,
        }
    }

    /// Every row of `batches` as (key, the other columns as text), sorted by key.
    fn rows_as_text(batches: &[RecordBatch]) -> Vec<(Bytes, Vec<String>)> {
        let mut out = Vec::new();
        for batch in batches {
            let n = batch.num_columns();
            let keys = batch
                .column(n - 1)
                .as_any()
                .downcast_ref::<BinaryArray>()
                .expect("the key column is last and binary");
            let options = FormatOptions::default().with_null("NULL");
            let formatters: Vec<ArrayFormatter> = batch.columns()[..n - 1]
                .iter()
                .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap())
                .collect();
            for row in 0..batch.num_rows() {
                out.push((
                    Bytes::copy_from_slice(keys.value(row)),
                    formatters
                        .iter()
                        .map(|f| f.value(row).to_string())
                        .collect(),
                ));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// A column scan of `table` at `lsn` with `columns` and `predicates` equals the row scan
    /// at the same LSN, projected and filtered by the model. Returns the scan's stats.
    async fn check_column_scan(
        timeline: &Timeline,
        model: &HashMap<Bytes, ModelRow>,
        table: u32,
        lsn: Lsn,
        request: ColumnScanRequest,
        context: &str,
    ) -> ColumnScanStats {
        let stored = scan_all(timeline, table, (None, None), lsn, UNLIMITED)
            .await
            .unwrap();
        let Some(def) = timeline.table_def_at(table, lsn).await.unwrap() else {
            assert!(
                stored.is_empty(),
                "{context}: rows of a table without a definition"
            );
            return ColumnScanStats {
                path: ColumnScanPath::NoTable,
                pages: Default::default(),
                column_bytes: 0,
                n_changed_keys: 0,
                rows_returned: 0,
            };
        };
        let mut batches = Vec::new();
        let stats = timeline
            .column_scan(&def, &request, &mut batches)
            .await
            .unwrap_or_else(|e| panic!("{context}: {e}"));
        let mut columns = request.columns.clone();
        columns.sort_unstable();
        columns.dedup();
        for batch in &batches {
            assert_eq!(batch.num_columns(), columns.len() + 1, "{context}");
            assert!(batch.num_rows() > 0, "{context}: an empty batch");
            assert!(batch.num_rows() <= request.batch_rows, "{context}");
        }
        assert_eq!(
            stats.rows_returned,
            batches.iter().map(|b| b.num_rows() as u64).sum::<u64>()
        );
        let actual = rows_as_text(&batches);

        let matching: Vec<&(Bytes, Bytes)> = stored
            .iter()
            .filter(|(_, value)| {
                let row = &model[value];
                request.predicates.iter().all(|p| satisfies(row, p))
            })
            .collect();
        let mut builder = BatchBuilder::new(&def.types(), def.arrow_schema(false));
        for (_, value) in &matching {
            builder.append_row(value).unwrap();
        }
        let full = builder.finish().unwrap();
        let mut projected: Vec<arrow::array::ArrayRef> =
            columns.iter().map(|c| full.column(*c).clone()).collect();
        projected.push(std::sync::Arc::new(BinaryArray::from_iter_values(
            matching.iter().map(|(key, _)| key.as_ref()),
        )));
        let mut fields: Vec<arrow::datatypes::Field> = columns
            .iter()
            .map(|c| full.schema().field(*c).clone())
            .collect();
        fields.push(arrow::datatypes::Field::new(
            rowcodec::KEY_COLUMN,
            arrow::datatypes::DataType::Binary,
            false,
        ));
        let expected = RecordBatch::try_new_with_options(
            std::sync::Arc::new(arrow::datatypes::Schema::new(fields)),
            projected,
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(matching.len())),
        )
        .unwrap();
        let expected = rows_as_text(&[expected]);
        assert_eq!(
            actual, expected,
            "{context}: table {table} at {lsn}, {request:?}, {stats:?}"
        );
        stats
    }

    fn random_request(rng: &mut Rng, table: u32, lsn: Lsn) -> ColumnScanRequest {
        ColumnScanRequest {
            table,
            lsn,
            columns: (0..rng.below(N_COLUMNS as u64 + 2))
                .map(|_| rng.below(N_COLUMNS as u64) as usize)
                .collect(),
            predicates: random_predicates(rng),
            batch_rows: 1 + rng.below(80) as usize,
        }
    }

    /// Random histories with checkpoints and compactions (column pages) at random moments,
    /// then more writes, deletes, a drop and a new table in delta layers and in memory:
    /// column scans at every LSN, with random projections and predicates, equal the row scan
    /// at the same LSN filtered by the model, live and after a reload from the object store.
    #[tokio::test]
    async fn column_scans_equal_row_scans_at_every_lsn() {
        let mut n_row_scans = 0;
        for seed in 0..6u64 {
            let root = temp_dir("timeline-column-scans");
            let mut rng = Rng::new(100 + seed);
            let (history, model) = history(&mut rng, 80);
            let mut timeline = load(&root).await.unwrap();
            timeline.set_delta_layer_bytes_target([2_000, 20_000, 1 << 20][seed as usize % 3]);
            timeline.set_compaction_delta_layers_min(1 + seed as usize % 2);
            let mut paths = Vec::new();
            for (i, (lsn, txn)) in history.iter().enumerate() {
                timeline.ingest(*lsn, txn.clone()).unwrap();
                match rng.below(8) {
                    0 => {
                        timeline.checkpoint().await.unwrap();
                    }
                    1 | 2 => {
                        timeline.checkpoint().await.unwrap();
                        timeline.compact().await.unwrap();
                    }
                    _ => {}
                }
                for _ in 0..2 {
                    let table = 16 + rng.below(3) as u32;
                    let read_lsn = history[rng.below(i as u64 + 1) as usize].0;
                    let read_lsn = Lsn(read_lsn.0 - rng.below(2));
                    let request = random_request(&mut rng, table, read_lsn);
                    let context = format!("seed {seed} live after {i}");
                    let stats =
                        check_column_scan(&timeline, &model, table, read_lsn, request, &context)
                            .await;
                    paths.push(stats.path);
                }
            }
            timeline.checkpoint().await.unwrap();
            timeline.compact().await.unwrap();
            let n_page_scans = paths
                .iter()
                .filter(|p| matches!(p, ColumnScanPath::ColumnPages { .. }))
                .count();
            assert!(n_page_scans > 10, "seed {seed}: {paths:?}");
            n_row_scans += paths
                .iter()
                .filter(|p| **p == ColumnScanPath::RowScan)
                .count();
            assert!(paths.contains(&ColumnScanPath::NoTable), "seed {seed}");
            drop(timeline);

            let reloaded = load(&root).await.unwrap();
            for (lsn, _) in history.iter().step_by(3) {
                for table in 16..19 {
                    let request = random_request(&mut rng, table, *lsn);
                    let context = format!("seed {seed} reloaded");
                    check_column_scan(&reloaded, &model, table, *lsn, request, &context).await;
                }
            }
            std::fs::remove_dir_all(&root).unwrap();
        }
        assert!(n_row_scans > 0, "no scan before the first image");
    }

    /// A selective predicate reads a small part of the column pages: whole row groups and
    /// pages are skipped, and the block cache fetches far less than the full scan does.
    #[tokio::test]
    async fn a_selective_predicate_reads_a_fraction_of_the_column_pages() {
        let root = temp_dir("timeline-column-pruning");
        let mut rng = Rng::new(7);
        let timeline = load(&root).await.unwrap();
        timeline.set_compaction_delta_layers_min(1);
        let n_rows = 3 * crate::column_pages::COLUMN_ROW_GROUP_ROWS as i32;
        let mut model = HashMap::new();
        let mut ops = vec![catalog_put(&def(16, "t16"))];
        for id in 0..n_rows {
            let row = random_row(&mut rng, id, 0);
            let value = encode(&row);
            model.insert(value.clone(), row);
            ops.push(Op::Put {
                table: 16,
                key: key(id),
                value,
            });
        }
        let txn = |xid, ops| Transaction {
            xid,
            commit_time_us: 0,
            ops,
        };
        timeline.ingest(Lsn(100), txn(0, ops)).unwrap();
        timeline.checkpoint().await.unwrap();
        assert!(timeline.compact().await.unwrap().contains(&16));
        // Changes above the image, in a delta layer and in memory, inside the selected range
        // and outside it.
        let mut changes = Vec::new();
        for id in [5, n_rows - 3, n_rows + 7] {
            let row = random_row(&mut rng, id, 1);
            let value = encode(&row);
            model.insert(value.clone(), row);
            changes.push(Op::Put {
                table: 16,
                key: key(id),
                value,
            });
        }
        changes.push(Op::Delete {
            table: 16,
            key: key(n_rows - 1),
        });
        timeline.ingest(Lsn(200), txn(1, changes)).unwrap();
        timeline.checkpoint().await.unwrap();
        drop(timeline);

        // A fresh instance with an empty cache: what it fetches is what the scans read. It
        // applies one more transaction, which stays in memory.
        let timeline = load(&root).await.unwrap();
        timeline
            .ingest(
                Lsn(300),
                txn(
                    2,
                    vec![Op::Delete {
                        table: 16,
                        key: key(n_rows - 2),
                    }],
                ),
            )
            .unwrap();
        let from = i64::from(n_rows) - 100;
        let request = |lsn, predicates: Vec<ColumnPredicate>| ColumnScanRequest {
            table: 16,
            lsn,
            columns: vec![0, 2],
            predicates,
            batch_rows: 1000,
        };
        let selective = |lsn| {
            request(
                lsn,
                vec![ColumnPredicate {
                    column: 0,
                    op: CompareOp::GtEq,
                    literal: Literal::Int(from),
                }],
            )
        };
        let def = def(16, "t16");
        let fetched_by = |request: ColumnScanRequest| {
            let timeline = &timeline;
            let def = &def;
            async move {
                let before = timeline.cache().metrics().bytes_fetched;
                let mut batches = Vec::new();
                let stats = timeline
                    .column_scan(def, &request, &mut batches)
                    .await
                    .unwrap();
                (stats, timeline.cache().metrics().bytes_fetched - before)
            }
        };
        let (stats, fetched_selective) = fetched_by(selective(Lsn(300))).await;
        assert!(matches!(stats.path, ColumnScanPath::ColumnPages { .. }));
        assert_eq!(stats.pages.row_groups_skipped, 2, "{stats:?}");
        assert!(stats.pages.rows_skipped_by_pages > 0, "{stats:?}");
        assert!(
            stats.pages.bytes_read * 10 < stats.column_bytes,
            "read {} of {} bytes",
            stats.pages.bytes_read,
            stats.column_bytes
        );
        assert!(stats.n_changed_keys >= 5, "{stats:?}");
        assert!(
            fetched_selective * 4 < stats.column_bytes,
            "fetched {fetched_selective} of {} bytes",
            stats.column_bytes
        );
        let (stats, fetched_full) = fetched_by(request(Lsn(300), vec![])).await;
        assert_eq!(stats.pages.row_groups_skipped, 0);
        assert!(
            fetched_full > 2 * fetched_selective,
            "the full scan fetched {fetched_full} bytes, the selective one {fetched_selective}"
        );
        for lsn in [Lsn(300), Lsn(200), Lsn(100)] {
            check_column_scan(&timeline, &model, 16, lsn, selective(lsn), "selective").await;
            check_column_scan(&timeline, &model, 16, lsn, request(lsn, vec![]), "full").await;
        }
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// The read protocol's answer: `ColumnBatch` frames decoding to what the scan gives,
    /// then `ScanEnd`; `BadRequest` for a system table or a column the table lacks; no rows
    /// for a table that does not exist at the LSN; `WaitLsnTimeout` for WAL not yet here.
    #[tokio::test]
    async fn serve_column_scan_answers_with_one_ipc_stream() {
        use crate::timeline::columns::serve_column_scan;
        use crate::timeline::columns::tests::{decode_stream, responses};
        use pageserver_api::{ErrorKind, Request, Response};

        let root = temp_dir("timeline-column-serve");
        let mut rng = Rng::new(3);
        let (history, model) = history(&mut rng, 30);
        let timeline = load(&root).await.unwrap();
        timeline.set_compaction_delta_layers_min(1);
        for (i, (lsn, txn)) in history.iter().enumerate() {
            timeline.ingest(*lsn, txn.clone()).unwrap();
            if i == 10 {
                timeline.checkpoint().await.unwrap();
                timeline.compact().await.unwrap();
            }
        }
        let lsn = history.last().unwrap().0;
        let wire_request = |table, columns: Vec<u32>, lsn| Request::ColumnScan {
            timeline: ids().1,
            table,
            lsn,
            columns,
            predicates: vec![pageserver_api::ColumnPredicate {
                column: 0,
                op: pageserver_api::CompareOp::Lt,
                literal: pageserver_api::Literal::Int(120),
            }],
            batch_rows: 7,
        };
        let serve = |request: Request| {
            let timeline = &timeline;
            async move {
                let mut written: Vec<u8> = Vec::new();
                serve_column_scan(timeline, &request, Duration::from_millis(50), &mut written)
                    .await
                    .unwrap();
                responses(&written).await
            }
        };

        let answer = serve(wire_request(16, vec![2, 0], lsn)).await;
        assert_eq!(answer.last(), Some(&Response::ScanEnd));
        assert!(answer.len() > 2, "{} frames", answer.len());
        let served = decode_stream(&answer);
        let request = ColumnScanRequest::from_wire(&wire_request(16, vec![2, 0], lsn)).unwrap();
        check_column_scan(&timeline, &model, 16, lsn, request.clone(), "served").await;
        let mut direct = Vec::new();
        let def = timeline.table_def_at(16, lsn).await.unwrap().unwrap();
        timeline
            .column_scan(&def, &request, &mut direct)
            .await
            .unwrap();
        assert_eq!(rows_as_text(&served), rows_as_text(&direct));
        assert!(!served.is_empty());

        let error_kind = |answer: Vec<Response>| match answer.as_slice() {
            [Response::Error { kind, .. }] => *kind,
            other => panic!("{other:?}"),
        };
        let bad_column = serve(wire_request(16, vec![N_COLUMNS as u32], lsn)).await;
        assert_eq!(error_kind(bad_column), ErrorKind::BadRequest);
        let system_table = serve(wire_request(CATALOG_TABLE_ID, vec![0], lsn)).await;
        assert_eq!(error_kind(system_table), ErrorKind::BadRequest);
        let late = serve(wire_request(16, vec![0], Lsn(lsn.0 + 1))).await;
        assert_eq!(error_kind(late), ErrorKind::WaitLsnTimeout);
        let missing = serve(wire_request(99, vec![0], lsn)).await;
        assert_eq!(missing, vec![Response::ScanEnd]);
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// A branch has no image of its own until it compacts: its column scans are the row
    /// scan at the LSN, which reads the ancestor's image below the branch point.
    #[tokio::test]
    async fn a_branch_without_images_scans_rows() {
        let root = temp_dir("timeline-column-branch");
        let mut rng = Rng::new(9);
        let (history, model) = history(&mut rng, 40);
        let parent = load(&root).await.unwrap();
        parent.set_compaction_delta_layers_min(1);
        for (lsn, txn) in &history[..20] {
            parent.ingest(*lsn, txn.clone()).unwrap();
        }
        parent.checkpoint().await.unwrap();
        assert!(parent.compact().await.unwrap().contains(&16));
        let parent = Arc::new(parent);
        let branch_lsn = history[19].0;
        let branch = Timeline::create_branch(
            parent.remote().clone(),
            parent.cache().clone(),
            TimelineId::from_u128(0xb7a),
            parent.clone(),
            branch_lsn,
        )
        .await
        .unwrap();
        for (lsn, txn) in &history[20..] {
            branch.ingest(*lsn, txn.clone()).unwrap();
        }
        for (lsn, _) in &history[..20] {
            let request = random_request(&mut rng, 16, *lsn);
            let stats = check_column_scan(&parent, &model, 16, *lsn, request, "parent").await;
            // The parent's image is at the branch point: below it, the parent scans rows too.
            if *lsn == branch_lsn {
                assert_eq!(
                    stats.path,
                    ColumnScanPath::ColumnPages {
                        image_lsn: branch_lsn
                    }
                );
            }
        }
        for (lsn, _) in &history[15..] {
            let request = random_request(&mut rng, 16, *lsn);
            let stats = check_column_scan(&branch, &model, 16, *lsn, request, "branch").await;
            assert_eq!(stats.path, ColumnScanPath::RowScan);
        }
        std::fs::remove_dir_all(&root).unwrap();
    }
}
