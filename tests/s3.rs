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
