//! What drivers and tools rely on: `version()`, the session functions, the settings they
//! `SHOW`, parameter limits, and the implicit transaction of a multi-statement Query.

mod support;

use support::cluster::Cluster;
use tokio_postgres::NoTls;

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
