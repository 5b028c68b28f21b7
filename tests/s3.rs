//! The cluster on an S3 object store, with real processes: a moto server started by the
//! test stands in for S3, and the pageserver and safekeepers reach it through
//! `--object-store s3://bucket/prefix` and the `AWS_*` environment. The safekeepers offload
//! WAL there, the pageserver uploads its layers and manifest there, and a pageserver on an
//! empty disk, with every safekeeper down, rebuilds from it alone.

mod support;

use std::time::{Duration, Instant};

use remote_storage::moto::MotoServer;
use support::cluster::{Cluster, Options, SAFEKEEPERS};
use support::pg::{connect, runtime};

const BUCKET: &str = "omendb-e2e";
const PREFIX: &str = "cluster/one";
const WAIT: Duration = Duration::from_secs(60);

fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn cluster_on_s3_offloads_wal_and_rebuilds_a_pageserver_from_it() {
    let moto = MotoServer::start("e2e");
    moto.create_bucket(BUCKET);
    let rt = runtime();
    let mut cluster = Cluster::start_with(
        "s3",
        Options {
            object_store: Some(format!("s3://{BUCKET}/{PREFIX}")),
            env: moto.aws_env(),
            ..Options::default()
        },
    );
    let url = cluster.url();
    let timeline = cluster.timeline();
    // A little over one 16 MiB WAL window: the safekeepers offload its chunk.
    let body = "x".repeat(1 << 20);
    rt.block_on(async {
        let client = connect(&url).await;
        client
            .batch_execute("CREATE TABLE blobs (id int PRIMARY KEY, body text)")
            .await
            .unwrap();
        for id in 0..18 {
            client
                .execute("INSERT INTO blobs VALUES ($1, $2)", &[&id, &body])
                .await
                .unwrap();
        }
        client
            .execute("INSERT INTO blobs VALUES (100, 'small')", &[])
            .await
            .unwrap();
        // A read at the latest snapshot makes the pageserver ingest everything first.
        let n: i64 = client
            .query_one("SELECT count(*) FROM blobs", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 19);
    });
    let wal_prefix = format!("{PREFIX}/wal/{timeline}/");
    wait_until("a WAL chunk is offloaded to S3", || {
        moto.list_keys(BUCKET, &wal_prefix)
            .iter()
            .any(|key| key.starts_with(&format!("{wal_prefix}0000000000000000-")))
    });
    assert!(
        cluster.stop("pageserver"),
        "pageserver exits cleanly on SIGTERM:\n{}",
        cluster.log_tail("pageserver")
    );
    let keys = moto.list_keys(BUCKET, PREFIX);
    assert!(
        keys.iter()
            .any(|k| k.starts_with(&format!("{PREFIX}/tenants/")) && k.contains("/index-")),
        "no manifest in {keys:?}"
    );
    assert!(
        keys.iter().any(|k| k.contains("/layers/")),
        "no layer files in {keys:?}"
    );
    assert!(
        keys.iter().all(|k| k.starts_with(&format!("{PREFIX}/"))),
        "keys outside the prefix: {keys:?}"
    );
    assert!(
        !cluster.dir.join("object-store").join("tenants").exists(),
        "nothing goes to the local object store folder"
    );

    // A pageserver on an empty disk, without the safekeepers: only S3 can answer.
    let _ = std::fs::remove_dir_all(cluster.component_dir("pageserver"));
    for sk in SAFEKEEPERS {
        cluster.kill(sk);
    }
    cluster.start_component("pageserver");
    rt.block_on(async {
        let client = connect(&url).await;
        let rows = client
            .query("SELECT id, body FROM blobs ORDER BY id", &[])
            .await
            .unwrap();
        let ids: Vec<i32> = rows.iter().map(|row| row.get(0)).collect();
        assert_eq!(ids, (0..18).chain([100]).collect::<Vec<i32>>());
        for row in &rows {
            let (id, stored): (i32, String) = (row.get(0), row.get(1));
            assert!(
                stored == if id == 100 { "small" } else { body.as_str() },
                "row {id} has {} bytes",
                stored.len()
            );
        }
    });
    // The restarted pageserver loaded the first one's manifest and claimed the next generation.
    let log = std::fs::read_to_string(cluster.log_path("pageserver")).unwrap();
    assert!(
        log.contains(": generation 2, starting at LSN"),
        "{}",
        cluster.log_tail("pageserver")
    );
}

/// Garbage collection on S3 with real processes: a pageserver that keeps no past history
/// (`--pitr-window-secs 0`) and collects often deletes delta layers once image layers cover
/// them, every row stays readable, and a pageserver on an empty disk rebuilds from what is
/// left.
#[test]
fn gc_on_s3_deletes_covered_layers_and_keeps_every_row() {
    let moto = MotoServer::start("e2e-gc");
    moto.create_bucket(BUCKET);
    let rt = runtime();
    let mut cluster = Cluster::start_with(
        "s3-gc",
        Options {
            object_store: Some(format!("s3://{BUCKET}/{PREFIX}")),
            env: moto.aws_env(),
            pageserver_args: ["--gc-interval-ms", "300", "--pitr-window-secs", "0"]
                .map(String::from)
                .to_vec(),
            ..Options::default()
        },
    );
    let url = cluster.url();
    let layers_prefix = format!("{PREFIX}/tenants/");
    let delta_keys = || -> std::collections::BTreeSet<String> {
        moto.list_keys(BUCKET, &layers_prefix)
            .into_iter()
            .filter(|key| key.ends_with(".delta"))
            .collect()
    };
    let mut seen = std::collections::BTreeSet::new();
    const ROUNDS: i32 = 14;
    rt.block_on(async {
        let client = connect(&url).await;
        client
            .batch_execute("CREATE TABLE counters (id int PRIMARY KEY, n int)")
            .await
            .unwrap();
        // One delta layer per round (each outlives a checkpoint interval): enough for
        // compaction to write image layers.
        for round in 0..ROUNDS {
            client
                .execute("INSERT INTO counters VALUES ($1, 0)", &[&round])
                .await
                .unwrap();
            client
                .execute("UPDATE counters SET n = n + 1", &[])
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            seen.extend(delta_keys());
        }
    });
    wait_until(
        "an image layer is written and a covered delta layer deleted",
        || {
            let keys = moto.list_keys(BUCKET, &layers_prefix);
            let now = delta_keys();
            keys.iter().any(|key| key.ends_with(".image"))
                && seen.iter().any(|key| !now.contains(key))
        },
    );
    let expected: Vec<(i32, i32)> = (0..ROUNDS).map(|id| (id, ROUNDS - id)).collect();
    let read_all = |url: String| async move {
        let client = connect(&url).await;
        client
            .query("SELECT id, n FROM counters ORDER BY id", &[])
            .await
            .unwrap()
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect::<Vec<(i32, i32)>>()
    };
    assert_eq!(rt.block_on(read_all(url.clone())), expected);
    let log = std::fs::read_to_string(cluster.log_path("pageserver")).unwrap();
    assert!(
        log.contains("GC kept LSN"),
        "{}",
        cluster.log_tail("pageserver")
    );

    // A pageserver on an empty disk finds only what GC kept, and that is enough.
    assert!(
        cluster.stop("pageserver"),
        "{}",
        cluster.log_tail("pageserver")
    );
    let _ = std::fs::remove_dir_all(cluster.component_dir("pageserver"));
    cluster.start_component("pageserver");
    assert_eq!(rt.block_on(read_all(url)), expected);
}
