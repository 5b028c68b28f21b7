//! WAL offload, removal and corruption with real processes: safekeepers upload committed WAL
//! to the object store and remove their local copy only below what is offloaded and durable
//! at the pageserver; a pageserver that needs removed WAL reads it from the object store; a
//! flipped bit in a safekeeper's WAL file never reaches a reader, and that safekeeper is
//! refilled from its peers.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ids::Lsn;
use support::cluster::{files_under, Cluster, SAFEKEEPERS};
use support::pageserver::PageserverClient;
use support::pg::{connect, runtime};

/// WAL segment size of the safekeepers (`safekeeper::limits::SEGMENT_BYTES`).
const SEGMENT_BYTES: u64 = 16 << 20;
/// Tables compared between pageservers: the catalog (1, 2) and the first user tables.
const TABLES: [u32; 4] = [1, 2, 16, 17];
const WAIT: Duration = Duration::from_secs(60);

/// A tenant other than the cluster's: a pageserver with it has no layers and starts at LSN 0.
const OTHER_TENANT: &str = "7e0000000000000000000000000000ff";

fn wal_segments(dir: &Path) -> Vec<PathBuf> {
    let mut segments: Vec<PathBuf> = files_under(dir)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.len() == 16 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        })
        .collect();
    segments.sort();
    segments
}

fn offloaded_chunks(cluster: &Cluster) -> Vec<String> {
    let dir = cluster
        .object_store_dir()
        .join("wal")
        .join(cluster.timeline());
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| n.len() == 33 && n.as_bytes()[16] == b'-')
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every row of [`TABLES`] at `lsn` on two pageservers is the same.
async fn assert_same_rows(a: &mut PageserverClient, b: &mut PageserverClient, lsn: Lsn) -> usize {
    let mut n_rows = 0;
    for table in TABLES {
        let (rows_a, rows_b) = (a.scan(table, lsn).await, b.scan(table, lsn).await);
        assert_eq!(rows_a.len(), rows_b.len(), "table {table} at {lsn}");
        assert!(rows_a == rows_b, "table {table} differs at {lsn}");
        n_rows += rows_a.len();
    }
    n_rows
}

#[test]
fn removed_wal_is_read_back_from_the_object_store() {
    let rt = runtime();
    let mut cluster = Cluster::start("offload");
    rt.block_on(async {
        let client = connect(&cluster.url()).await;
        client
            .batch_execute("CREATE TABLE blobs (id int PRIMARY KEY, body text)")
            .await
            .unwrap();
        // About 2.5 segments of WAL: two whole windows to offload.
        let body = "x".repeat(1 << 20);
        for id in 0..40 {
            client
                .execute("INSERT INTO blobs VALUES ($1, $2)", &[&id, &body])
                .await
                .unwrap();
        }
        wait_until("two WAL chunks are offloaded", || {
            offloaded_chunks(&cluster).len() >= 2
        })
        .await;
        // Each safekeeper removes the segments below what is offloaded and durable at the
        // pageserver, and keeps the rest.
        for sk in SAFEKEEPERS {
            let dir = cluster.component_dir(sk);
            wait_until(&format!("{sk} removes its first two segments"), || {
                let segments = wal_segments(&dir);
                !segments.is_empty()
                    && segments.iter().all(|p| {
                        !p.ends_with("0000000000000000") && !p.ends_with("0000000000000001")
                    })
            })
            .await;
        }
        let mut first =
            PageserverClient::connect(cluster.addr("pageserver"), &cluster.timeline()).await;
        let (end, _) = first.status().await;
        assert!(end.0 > 2 * SEGMENT_BYTES, "{end}");

        // A pageserver that starts from LSN 0 finds the safekeepers without that WAL and
        // reads it from the object store, then streams the rest from them.
        cluster.add_pageserver("pageserver-2", OTHER_TENANT);
        cluster.start_component("pageserver-2");
        let mut second =
            PageserverClient::connect(cluster.addr("pageserver-2"), &cluster.timeline()).await;
        let n_rows = assert_same_rows(&mut first, &mut second, end).await;
        assert!(n_rows >= 40, "{n_rows} rows");
        let log = std::fs::read_to_string(cluster.log_path("pageserver-2")).unwrap();
        assert!(
            log.contains("of offloaded WAL from 0/0"),
            "{}",
            cluster.log_tail("pageserver-2")
        );

        // Data written after the removal is still served by both, and survives a restart of
        // every safekeeper (which must not look for the removed WAL).
        for id in 40..45 {
            client
                .execute("INSERT INTO blobs VALUES ($1, 'small')", &[&id])
                .await
                .unwrap();
        }
        for sk in SAFEKEEPERS {
            cluster.kill(sk);
            cluster.start_component(sk);
        }
        client
            .execute("INSERT INTO blobs VALUES (45, 'after restart')", &[])
            .await
            .unwrap();
        let count: i64 = client
            .query_one("SELECT count(*) FROM blobs", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(count, 46);
        let (end, _) = first.status().await;
        assert_same_rows(&mut first, &mut second, end).await;
    });
}

#[test]
fn a_flipped_bit_in_safekeeper_wal_never_reaches_a_reader_and_is_repaired() {
    let rt = runtime();
    let mut cluster = Cluster::start("corrupt-wal");
    rt.block_on(async {
        let client = connect(&cluster.url()).await;
        client
            .batch_execute("CREATE TABLE t (id int PRIMARY KEY, note text)")
            .await
            .unwrap();
        for id in 0..200 {
            client
                .execute(
                    "INSERT INTO t VALUES ($1, 'some text to fill the log')",
                    &[&id],
                )
                .await
                .unwrap();
        }
        let mut first =
            PageserverClient::connect(cluster.addr("pageserver"), &cluster.timeline()).await;
        let (end, _) = first.status().await;

        // Flip one bit in the middle of safekeeper-1's committed WAL, behind its back.
        let segment = wal_segments(&cluster.component_dir("safekeeper-1"))
            .into_iter()
            .next()
            .expect("a WAL segment");
        let at = end.0 / 2;
        {
            use std::os::unix::fs::FileExt;
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&segment)
                .unwrap();
            let mut byte = [0u8];
            file.read_exact_at(&mut byte, at).unwrap();
            file.write_all_at(&[byte[0] ^ 0x08], at).unwrap();
        }

        // A pageserver that reads the whole log, safekeeper-1 first, gets the right data:
        // safekeeper-1 refuses the bad record and the pageserver moves to the next one.
        cluster.add_pageserver("pageserver-2", OTHER_TENANT);
        cluster.start_component("pageserver-2");
        let mut second =
            PageserverClient::connect(cluster.addr("pageserver-2"), &cluster.timeline()).await;
        let n_rows = assert_same_rows(&mut first, &mut second, end).await;
        assert!(n_rows >= 200, "{n_rows} rows");
        let log = std::fs::read_to_string(cluster.log_path("safekeeper-1")).unwrap();
        assert!(
            log.contains("is corrupt: removing the local WAL"),
            "{}",
            cluster.log_tail("safekeeper-1")
        );

        // The next commit makes the proposer notice that safekeeper-1 lags and refill it from
        // its peers: its WAL becomes byte-for-byte the others' again.
        client
            .execute("INSERT INTO t VALUES (1000, 'after the repair')", &[])
            .await
            .unwrap();
        let peer = wal_segments(&cluster.component_dir("safekeeper-2"))
            .into_iter()
            .next()
            .expect("a WAL segment");
        wait_until("safekeeper-1's WAL equals safekeeper-2's", || {
            let (a, b) = (
                std::fs::read(&segment).unwrap(),
                std::fs::read(&peer).unwrap(),
            );
            a.len() as u64 > at && a == b
        })
        .await;
        let count: i64 = client
            .query_one("SELECT count(*) FROM t", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(count, 201);
    });
}
