//! Durability and fault tests with real processes on loopback: SIGKILL of every process,
//! safekeepers down, a pageserver on an empty disk, a restarted compute, fencing of an old
//! primary, snapshot isolation between sessions, and malformed client input.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::cluster::{files_under, Cluster, Options};
use support::pg::{connect, runtime, sqlstate};
use tokio_postgres::Client;

async fn ids(client: &Client, table: &str) -> Vec<i32> {
    let rows = client
        .query(&format!("SELECT id FROM {table} ORDER BY id"), &[])
        .await
        .expect("select ids");
    rows.iter().map(|r| r.get::<_, i32>(0)).collect()
}

#[test]
fn kill_every_process_keeps_exactly_the_acknowledged_commits() {
    let rt = runtime();
    let mut cluster = Cluster::start("kill-all");
    let mut acknowledged = Vec::new();
    rt.block_on(async {
        let client = connect(&cluster.url()).await;
        client
            .batch_execute("CREATE TABLE t (id int PRIMARY KEY, note text)")
            .await
            .unwrap();
        for id in 0..40 {
            client
                .execute("INSERT INTO t VALUES ($1, 'acked')", &[&id])
                .await
                .unwrap();
            acknowledged.push(id);
        }
        // A rolled-back transaction and a failed one must leave nothing behind.
        client
            .batch_execute("BEGIN; INSERT INTO t VALUES (1000, 'rolled back'); ROLLBACK")
            .await
            .unwrap();
        let failed = client
            .batch_execute("INSERT INTO t VALUES (2000, 'x'), (0, 'duplicate')")
            .await;
        assert_eq!(sqlstate(&failed.unwrap_err()), "23505");
    });
    cluster.kill_all();
    for name in cluster.names() {
        cluster.start_component(&name);
    }
    rt.block_on(async {
        let client = connect(&cluster.url()).await;
        assert_eq!(
            ids(&client, "t").await,
            acknowledged,
            "after SIGKILL of every process"
        );
        // And the cluster keeps working.
        client
            .execute("INSERT INTO t VALUES (41, 'after restart')", &[])
            .await
            .unwrap();
        assert_eq!(ids(&client, "t").await.len(), acknowledged.len() + 1);
    });
}

#[test]
fn commits_need_a_majority_of_safekeepers() {
    let rt = runtime();
    let mut cluster = Cluster::start_with(
        "quorum",
        Options {
            commit_timeout_ms: 2_000,
            ..Options::default()
        },
    );
    let url = cluster.url();
    rt.block_on(async {
        let client = connect(&url).await;
        client
            .batch_execute("CREATE TABLE q (id int PRIMARY KEY)")
            .await
            .unwrap();
        client
            .execute("INSERT INTO q VALUES (1)", &[])
            .await
            .unwrap();
    });
    cluster.kill("safekeeper-1");
    rt.block_on(async {
        let client = connect(&url).await;
        client
            .execute("INSERT INTO q VALUES (2)", &[])
            .await
            .expect("one safekeeper down: commits continue");
        assert_eq!(ids(&client, "q").await, vec![1, 2]);
    });
    cluster.kill("safekeeper-2");
    rt.block_on(async {
        let client = connect(&url).await;
        let started = Instant::now();
        let err = client
            .execute("INSERT INTO q VALUES (3)", &[])
            .await
            .expect_err("two safekeepers down: no commit");
        assert_eq!(sqlstate(&err), "08006", "{err:?}");
        assert!(
            err.as_db_error().unwrap().message().contains("majority"),
            "{err:?}"
        );
        assert!(
            started.elapsed() >= Duration::from_millis(1_500),
            "failed before the timeout"
        );
        // The connection still works for reads.
        assert_eq!(ids(&client, "q").await, vec![1, 2]);
    });
    cluster.start_component("safekeeper-1");
    cluster.start_component("safekeeper-2");
    rt.block_on(async {
        let client = connect(&url).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match client.execute("INSERT INTO q VALUES (4)", &[]).await {
                Ok(_) => break,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("waiting for the quorum: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("quorum did not come back: {e}"),
            }
        }
        // Row 3's commit could not be confirmed; it may or may not be there. 1, 2, 4 are.
        let rows = ids(&client, "q").await;
        assert!(
            rows == vec![1, 2, 4] || rows == vec![1, 2, 3, 4],
            "{rows:?}"
        );
    });
}

#[test]
fn pageserver_on_an_empty_disk_rebuilds_from_the_object_store() {
    let rt = runtime();
    let mut cluster = Cluster::start("rebuild");
    let url = cluster.url();
    rt.block_on(async {
        let client = connect(&url).await;
        client
            .batch_execute("CREATE TABLE r (id int PRIMARY KEY, v text)")
            .await
            .unwrap();
        for id in 0..50 {
            client
                .execute(
                    "INSERT INTO r VALUES ($1, $2)",
                    &[&id, &format!("value {id}")],
                )
                .await
                .unwrap();
        }
        client
            .execute("DELETE FROM r WHERE id >= 45", &[])
            .await
            .unwrap();
        // A read at the latest snapshot makes the pageserver ingest everything first.
        let n: i64 = client
            .query_one("SELECT count(*) FROM r", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 45);
    });
    assert!(
        cluster.stop("pageserver"),
        "pageserver exits cleanly on SIGTERM"
    );
    let files = files_under(&cluster.object_store_dir());
    let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    assert!(
        names
            .iter()
            .any(|n| n.contains("index-") && n.ends_with(".json")),
        "no manifest in {names:?}"
    );
    assert!(
        names.iter().any(|n| n.contains("/layers/")),
        "no layer files in {names:?}"
    );
    let _ = std::fs::remove_dir_all(cluster.component_dir("pageserver"));
    // Without the safekeepers, only the object store can answer.
    for sk in support::cluster::SAFEKEEPERS {
        cluster.kill(sk);
    }
    cluster.start_component("pageserver");
    rt.block_on(async {
        let client = connect(&url).await;
        let rows = client
            .query("SELECT id, v FROM r ORDER BY id", &[])
            .await
            .unwrap();
        assert_eq!(rows.len(), 45);
        assert_eq!(rows[44].get::<_, String>(1), "value 44");
    });
}

#[test]
fn a_fresh_compute_reads_catalog_and_data_from_the_pageserver() {
    let rt = runtime();
    let mut cluster = Cluster::start("fresh-compute");
    let url = cluster.url();
    rt.block_on(async {
        let client = connect(&url).await;
        client
            .batch_execute(
                "CREATE TABLE a (id bigint PRIMARY KEY, s varchar(10)); CREATE TABLE b (x int)",
            )
            .await
            .unwrap();
        client
            .batch_execute(
                "INSERT INTO a VALUES (1, 'one'), (2, 'two'); INSERT INTO b VALUES (7), (7)",
            )
            .await
            .unwrap();
        client.batch_execute("DROP TABLE b").await.unwrap();
    });
    cluster.kill("compute");
    cluster.start_component("compute");
    rt.block_on(async {
        let client = connect(&url).await;
        let rows = client
            .query("SELECT s FROM a ORDER BY id", &[])
            .await
            .unwrap();
        let values: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        assert_eq!(values, vec!["one", "two"]);
        let err = client.query("SELECT * FROM b", &[]).await.unwrap_err();
        assert_eq!(sqlstate(&err), "42P01");
        // A table created after the restart gets a fresh id: the dropped table's rows stay gone.
        client
            .batch_execute("CREATE TABLE b (x int); INSERT INTO b VALUES (8)")
            .await
            .unwrap();
        let rows = client.query("SELECT x FROM b", &[]).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].get::<_, i32>(0), 8);
    });
}

#[test]
fn a_new_primary_fences_the_old_one() {
    let rt = runtime();
    let cluster = Cluster::start("fencing");
    let old_url = cluster.url();
    rt.block_on(async {
        let old = connect(&old_url).await;
        old.batch_execute("CREATE TABLE f (id int PRIMARY KEY)")
            .await
            .unwrap();
        old.execute("INSERT INTO f VALUES (1)", &[]).await.unwrap();
    });
    // A second compute for the same timeline, started by hand on another port.
    let binary = env!("CARGO_BIN_EXE_omendb");
    let new_addr = support::cluster::free_addr();
    let args = cluster.compute_args(new_addr);
    let log = std::fs::File::create(cluster.dir.join("logs/compute-2.log")).unwrap();
    let mut second = std::process::Command::new(binary)
        .args(&args)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let new_url = format!("postgres://omendb@{new_addr}/omendb");
    rt.block_on(async {
        let new = connect(&new_url).await;
        new.execute("INSERT INTO f VALUES (2)", &[]).await.unwrap();
        let old = connect(&old_url).await;
        let err = old
            .execute("INSERT INTO f VALUES (3)", &[])
            .await
            .expect_err("the old primary is fenced");
        assert_eq!(sqlstate(&err), "57P01", "{err:?}");
        assert_eq!(ids(&new, "f").await, vec![1, 2]);
    });
    let _ = second.kill();
    let _ = second.wait();
}

#[test]
fn snapshot_isolation_between_sessions() {
    let rt = runtime();
    let cluster = Cluster::start("isolation");
    rt.block_on(async {
        let a = connect(&cluster.url()).await;
        let b = connect(&cluster.url()).await;
        a.batch_execute("CREATE TABLE s (id int PRIMARY KEY, v int)")
            .await
            .unwrap();
        a.batch_execute("INSERT INTO s VALUES (1, 10)")
            .await
            .unwrap();

        a.batch_execute("BEGIN; INSERT INTO s VALUES (2, 20); UPDATE s SET v = 11 WHERE id = 1")
            .await
            .unwrap();
        // A sees its own writes; B does not see them before COMMIT.
        assert_eq!(ids(&a, "s").await, vec![1, 2]);
        assert_eq!(ids(&b, "s").await, vec![1]);
        let v: i32 = b
            .query_one("SELECT v FROM s WHERE id = 1", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(v, 10);

        // B's snapshot, taken inside its transaction, does not move when A commits.
        b.batch_execute("BEGIN").await.unwrap();
        assert_eq!(ids(&b, "s").await, vec![1]);
        a.batch_execute("COMMIT").await.unwrap();
        assert_eq!(ids(&b, "s").await, vec![1]);
        // Write-write conflict with A's committed update: B must not overwrite it.
        b.execute("UPDATE s SET v = 99 WHERE id = 1", &[])
            .await
            .unwrap();
        let err = b
            .batch_execute("COMMIT")
            .await
            .expect_err("write-write conflict");
        assert_eq!(sqlstate(&err), "40001");
        assert_eq!(ids(&b, "s").await, vec![1, 2]);
        let v: i32 = b
            .query_one("SELECT v FROM s WHERE id = 1", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(v, 11);

        // A statement prepared (Parse/Describe) while idle runs at a fresh snapshot later.
        let prepared = b.prepare("SELECT v FROM s WHERE id = $1").await.unwrap();
        a.execute("UPDATE s SET v = 12 WHERE id = 1", &[])
            .await
            .unwrap();
        let v: i32 = b.query_one(&prepared, &[&1i32]).await.unwrap().get(0);
        assert_eq!(
            v, 12,
            "a prepared statement must not keep the snapshot of its Describe"
        );
    });
}

#[test]
fn malformed_input_closes_only_that_connection() {
    let rt = runtime();
    let cluster = Cluster::start("malformed");
    let addr = cluster.addr("compute");
    // A startup packet with a nonsense length, then garbage.
    let mut raw = TcpStream::connect(addr).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    raw.write_all(&[0, 0, 0, 3, 1, 2, 3, 4]).unwrap();
    let mut reply = Vec::new();
    let _ = raw.read_to_end(&mut reply);
    // A valid startup followed by a message with a bad length.
    let mut raw = TcpStream::connect(addr).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut startup = Vec::new();
    let body = b"\0\x03\0\0user\0omendb\0\0";
    startup.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    startup.extend_from_slice(body);
    raw.write_all(&startup).unwrap();
    raw.write_all(&[b'Q', 0xff, 0xff, 0xff, 0xff]).unwrap();
    let mut reply = Vec::new();
    let _ = raw.read_to_end(&mut reply);
    assert!(
        reply.windows(5).any(|w| w == b"08P01"),
        "a protocol error is reported"
    );
    rt.block_on(async {
        let client = connect(&cluster.url()).await;
        let err = client.batch_execute("SELEC 1").await.unwrap_err();
        assert_eq!(sqlstate(&err), "42601");
        let row = client
            .query_one("SELECT 'still ' || 'alive'", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "still alive");
    });
}
