//! What drivers and tools rely on: `version()`, the session functions, the settings they
//! `SHOW`, parameter limits, the implicit transaction of a multi-statement Query, and COPY
//! FROM STDIN through a driver (extended protocol, text and binary formats).

mod support;

use bytes::Bytes;
use futures::SinkExt;
use support::cluster::Cluster;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Error, NoTls};

#[test]
fn session_functions_and_settings_answer_like_postgresql() {
    let cluster = Cluster::start("clients");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(&cluster.url(), NoTls).await.unwrap();
        tokio::spawn(connection);
        let version: String = client.query_one("SELECT version()", &[]).await.unwrap().get(0);
        assert!(version.starts_with("PostgreSQL 15."), "{version}");
        let row = client.query_one("SELECT current_database(), current_schema()", &[]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), "omendb");
        assert_eq!(row.get::<_, String>(1), "public");
        for (setting, expected) in [
            ("server_version", "15.0"),
            ("server_encoding", "UTF8"),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO, MDY"),
            ("TimeZone", "UTC"),
            ("integer_datetimes", "on"),
            ("standard_conforming_strings", "on"),
        ] {
            let rows = client.simple_query(&format!("SHOW {setting}")).await.unwrap();
            let value = rows.iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
                _ => None,
            });
            assert_eq!(value.as_deref(), Some(expected), "SHOW {setting}");
        }
        let err = client.simple_query("SHOW no_such_setting").await.unwrap_err();
        assert_eq!(err.code().unwrap().code(), "42704");
        // A parameter number past PostgreSQL's limit is an error, not an allocation.
        let err = client.prepare("SELECT $10000000000").await.unwrap_err();
        assert!(err.code().is_some(), "{err:?}");
        let err = client.prepare("SELECT $70000").await.unwrap_err();
        assert!(err.code().is_some(), "{err:?}");
        // Several statements in one simple Query are one implicit transaction.
        client.batch_execute("CREATE TABLE blk (id int PRIMARY KEY)").await.unwrap();
        let err = client
            .batch_execute("INSERT INTO blk VALUES (1); INSERT INTO blk VALUES (2); INSERT INTO blk VALUES (1)")
            .await
            .unwrap_err();
        assert_eq!(err.code().unwrap().code(), "23505");
        let count = |rows: Vec<tokio_postgres::Row>| rows[0].get::<_, i64>(0);
        assert_eq!(count(client.query("SELECT count(*) FROM blk", &[]).await.unwrap()), 0);
        client.batch_execute("INSERT INTO blk VALUES (1); INSERT INTO blk VALUES (2)").await.unwrap();
        assert_eq!(count(client.query("SELECT count(*) FROM blk", &[]).await.unwrap()), 2);
        // A BEGIN inside the string turns the block into an explicit transaction.
        client.batch_execute("INSERT INTO blk VALUES (3); BEGIN; INSERT INTO blk VALUES (4)").await.unwrap();
        client.batch_execute("ROLLBACK").await.unwrap();
        assert_eq!(count(client.query("SELECT count(*) FROM blk", &[]).await.unwrap()), 2);
        // A prepared statement whose result shape changed under it fails as in PostgreSQL.
        client.batch_execute("CREATE TABLE shape (a int)").await.unwrap();
        let prepared = client.prepare("SELECT * FROM shape").await.unwrap();
        client.batch_execute("DROP TABLE shape; CREATE TABLE shape (a text, b text)").await.unwrap();
        let err = client.query(&prepared, &[]).await.unwrap_err();
        assert_eq!(err.code().unwrap().code(), "0A000", "{err:?}");
        // SET is accepted and SHOW reads it back.
        client.simple_query("SET application_name = 'omendb-test'").await.unwrap();
        let rows = client.simple_query("SHOW application_name").await.unwrap();
        assert!(rows.iter().any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("omendb-test"))));
    });
}

/// Sends `pieces` as the data of `sql` (a COPY FROM STDIN) and ends it: the rows copied.
async fn copy_pieces(client: &Client, sql: &str, pieces: &[&[u8]]) -> Result<u64, Error> {
    let sink = client.copy_in::<_, Bytes>(sql).await?;
    futures::pin_mut!(sink);
    for piece in pieces {
        sink.send(Bytes::copy_from_slice(piece)).await?;
    }
    sink.finish().await
}

async fn count_items(client: &Client) -> i64 {
    let row = client.query_one("SELECT count(*) FROM items", &[]).await;
    row.unwrap().get(0)
}

#[test]
fn copy_from_stdin_through_a_driver_stores_every_row_or_none() {
    let cluster = Cluster::start("clients-copy");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(&cluster.url(), NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
            .batch_execute(
                "CREATE TABLE items (id int PRIMARY KEY, name text, score float8, ok bool)",
            )
            .await
            .unwrap();

        // Text format in CopyData messages that split records (and an escape) anywhere.
        let data: Vec<u8> = (0..3000)
            .flat_map(|i| format!("{i}\tname\\t{i}\t{}.5\t{}\n", i * 2, i % 2 == 0).into_bytes())
            .collect();
        let pieces: Vec<&[u8]> = data.chunks(777).collect();
        let copied = copy_pieces(&client, "COPY items FROM STDIN", &pieces).await;
        assert_eq!(copied.unwrap(), 3000);
        let row = client
            .query_one("SELECT name, score, ok FROM items WHERE id = 2999", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "name\t2999");
        assert_eq!(row.get::<_, f64>(1), 5998.5);
        assert!(!row.get::<_, bool>(2));

        // Binary format, as drivers' bulk loaders send it.
        let sink = client
            .copy_in("COPY items (id, name, score, ok) FROM STDIN (FORMAT binary)")
            .await
            .unwrap();
        let writer =
            BinaryCopyInWriter::new(sink, &[Type::INT4, Type::TEXT, Type::FLOAT8, Type::BOOL]);
        futures::pin_mut!(writer);
        for i in 5000..5100i32 {
            let name = (i % 3 != 0).then(|| format!("bin {i}"));
            writer
                .as_mut()
                .write(&[&i, &name, &(f64::from(i) / 4.0), &true])
                .await
                .unwrap();
        }
        assert_eq!(writer.finish().await.unwrap(), 100);
        let rows = client
            .query(
                "SELECT id, name, score FROM items WHERE id IN (5001, 5003) ORDER BY id",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(rows[0].get::<_, Option<String>>(1), None);
        assert_eq!(
            rows[1].get::<_, Option<String>>(1).as_deref(),
            Some("bin 5003")
        );
        assert_eq!(rows[1].get::<_, f64>(2), 1250.75);
        assert_eq!(count_items(&client).await, 3100);

        // A bad row fails the whole COPY: none of its rows stay, the session goes on.
        let dup: &[u8] = b"7000\tnew\t1\tt\n1\tdup\t1\tt\n";
        let err = copy_pieces(&client, "COPY items FROM STDIN", &[dup])
            .await
            .unwrap_err();
        assert_eq!(err.code().unwrap().code(), "23505", "{err:?}");
        assert_eq!(count_items(&client).await, 3100);
        let bad: &[u8] = b"7001\tx\tnot a number\tt\n";
        let err = copy_pieces(&client, "COPY items FROM STDIN", &[bad])
            .await
            .unwrap_err();
        assert_eq!(err.code().unwrap().code(), "22P02", "{err:?}");
        assert_eq!(
            err.as_db_error().unwrap().where_(),
            Some("COPY items, line 1, column score: \"not a number\"")
        );

        // A COPY the client abandons (CopyFail) stores nothing.
        {
            let sink = client
                .copy_in::<_, Bytes>("COPY items FROM STDIN")
                .await
                .unwrap();
            futures::pin_mut!(sink);
            sink.send(Bytes::from_static(b"7002\tx\t1\tt\n"))
                .await
                .unwrap();
        }
        assert_eq!(count_items(&client).await, 3100);

        // Inside a transaction block, the COPY's rows go with the block.
        client.batch_execute("BEGIN").await.unwrap();
        let copied = copy_pieces(&client, "COPY items (id) FROM STDIN", &[b"8000\n8001\n"]).await;
        assert_eq!(copied.unwrap(), 2);
        assert_eq!(count_items(&client).await, 3102);
        client.batch_execute("ROLLBACK").await.unwrap();
        assert_eq!(count_items(&client).await, 3100);

        // More rows than one transaction may hold: refused while streaming, with a hint.
        let sink = client
            .copy_in::<_, Bytes>("COPY items (id, name) FROM STDIN")
            .await
            .unwrap();
        futures::pin_mut!(sink);
        let filler = "x".repeat(4000);
        let mut refused = None;
        for i in 10_000..20_000 {
            let line = Bytes::from(format!("{i}\t{filler}\n"));
            if let Err(e) = sink.send(line).await {
                refused = Some(e);
                break;
            }
        }
        let err = match refused {
            Some(e) => e,
            None => sink.finish().await.unwrap_err(),
        };
        let db_err = err.as_db_error().expect("a server error");
        assert_eq!(db_err.code().code(), "54000", "{db_err:?}");
        assert!(
            db_err.hint().unwrap().contains("several COPY commands"),
            "{db_err:?}"
        );
        assert_eq!(count_items(&client).await, 3100);
    });
}
