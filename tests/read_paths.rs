//! The compute's read paths give the same answers: point lookups by primary key through
//! GetRow (row pages), scans and aggregates through ColumnScan (column pages at the
//! pageserver, merged with newer changes), and the row Scan. The same queries run with
//! `SET omendb.read_path` = `rows`, `columns` and `auto` against one OmenDB, after its
//! pageserver has compacted the tables into column pages and more changes came on top, and
//! inside a transaction with uncommitted writes; every answer must equal the others and
//! PostgreSQL 15's. EXPLAIN (ANALYZE) shows that `auto` really sends primary-key lookups to
//! GetRow and scans to ColumnScan.
//!
//! Needs `initdb`, `pg_ctl` and `postgres` (PostgreSQL 15) on PATH.

mod support;

use std::time::{Duration, Instant};

use support::cluster::{files_under, Cluster};
use support::pg::{connect, runtime};
use support::postgres::Postgres;
use tokio_postgres::{Client, SimpleQueryMessage};

/// Rounds of writes, each committed before a checkpoint: the pageserver compacts a table
/// once `COMPACTION_DELTA_LAYERS_MIN` (10) delta layers with changes to it pile up.
const ROUNDS: i32 = 12;
const ROWS_PER_ROUND: i32 = 40;
/// A little more than the test cluster's checkpoint interval (200 ms), so that every round
/// is its own delta layer.
const ROUND_PAUSE: Duration = Duration::from_millis(300);
/// How long compaction may take to produce column pages after the last round.
const COMPACTION_TIMEOUT: Duration = Duration::from_secs(60);
/// Items is the first table created: the first user table id, 16 (`00000010` in names).
const ITEMS_COLUMN_PAGES_PREFIX: &str = "00000010-";

const SCHEMA: &str = "
    CREATE TABLE items (id int PRIMARY KEY, cat text, qty int, price numeric(10,2),
                        ok boolean, d date);
    CREATE TABLE cats (name text PRIMARY KEY, label text);
    CREATE TABLE pairs (a int, b text, v bigint, PRIMARY KEY (a, b));
    CREATE TABLE notes (n int, body text);
";

/// Every query runs on every path; rows are compared as sets (sorted here).
const QUERIES: &[&str] = &[
    "SELECT * FROM items WHERE id = 42",
    "SELECT id, qty FROM items WHERE id = 7",
    "SELECT id, qty FROM items WHERE id IN (3, 17, 99, 1000, 401)",
    "SELECT id, cat FROM items WHERE id = 42 OR id = 43",
    "SELECT * FROM items WHERE 250 = id",
    "SELECT * FROM pairs WHERE a = 5 AND b = 'x5'",
    "SELECT v FROM pairs WHERE a = 6 AND b IN ('x6', 'y6', 'x7')",
    "SELECT * FROM cats WHERE name = 'c3'",
    "SELECT * FROM items",
    "SELECT id, cat FROM items WHERE qty >= 10 AND qty < 20",
    "SELECT id FROM items WHERE id > 400",
    "SELECT id FROM items WHERE id BETWEEN 100 AND 130",
    "SELECT id, price FROM items WHERE price > 50.5",
    "SELECT id FROM items WHERE cat = 'c3' AND ok",
    "SELECT count(*) FROM items WHERE d >= DATE '2024-02-01'",
    "SELECT count(*), sum(qty), min(price), max(price) FROM items",
    "SELECT count(*) FROM items",
    "SELECT cat, count(*), sum(qty), max(d) FROM items GROUP BY cat",
    "SELECT i.id, c.label FROM items i JOIN cats c ON i.cat = c.name WHERE i.id < 60",
    "SELECT c.label, count(*) FROM items i JOIN cats c ON i.cat = c.name GROUP BY c.label",
    "SELECT p.a, p.b, i.qty FROM pairs p JOIN items i ON p.a = i.id WHERE p.v > 10",
    "SELECT * FROM notes WHERE n > 5",
    "SELECT count(*), sum(n) FROM notes",
    "SELECT id FROM items WHERE id = 42 AND qty > 1000",
];

/// 2024-01-01 plus `days` (below 91) as a date literal.
fn date(days: i32) -> String {
    let (month, day) = match days {
        0..=30 => (1, days + 1),
        31..=59 => (2, days - 30),
        _ => (3, days - 59),
    };
    format!("DATE '2024-{month:02}-{day:02}'")
}

/// The writes of round `round`: new items, pairs and notes, and changes to older items.
fn round_sql(round: i32) -> String {
    let mut sql = String::new();
    for i in 0..ROWS_PER_ROUND {
        let id = round * ROWS_PER_ROUND + i;
        sql.push_str(&format!(
            "INSERT INTO items VALUES ({id}, 'c{}', {}, {}.{:02}, {}, {});\n",
            id % 7,
            (id * 37) % 50,
            (id * 13) % 100,
            id % 100,
            id % 3 == 0,
            date(id % 90),
        ));
    }
    sql.push_str(&format!(
        "INSERT INTO pairs VALUES ({round}, 'x{round}', {}), ({round}, 'y{round}', {});\n",
        round * 3,
        round * 5 + 1
    ));
    sql.push_str(&format!(
        "INSERT INTO notes VALUES ({round}, 'note {round}');\n"
    ));
    if round > 0 {
        let old = (round - 1) * ROWS_PER_ROUND;
        sql.push_str(&format!(
            "UPDATE items SET qty = qty + 100, cat = 'c9' WHERE id = {};\n",
            old + 3
        ));
        sql.push_str(&format!("DELETE FROM items WHERE id = {};\n", old + 5));
    }
    sql
}

/// Changes after compaction: they live in delta layers and in memory, above the images.
const LATER: &str = "
    UPDATE items SET qty = 15, price = 99.99 WHERE id = 42;
    UPDATE items SET ok = true WHERE id BETWEEN 100 AND 110;
    DELETE FROM items WHERE id IN (7, 250, 402);
    INSERT INTO items VALUES (1000, 'c3', 12, 51.00, true, DATE '2024-03-01');
    INSERT INTO cats VALUES ('c9', 'nine');
    UPDATE pairs SET v = 77 WHERE a = 6 AND b = 'y6';
    DELETE FROM notes WHERE n = 3;
";

/// Uncommitted writes of the transaction the queries also run in.
const IN_TRANSACTION: &str = "
    INSERT INTO items VALUES (2000, 'c3', 11, 60.00, true, DATE '2024-02-15');
    UPDATE items SET qty = 12, cat = 'c3' WHERE id = 43;
    UPDATE items SET price = 1.00 WHERE qty >= 45;
    DELETE FROM items WHERE id = 3;
    DELETE FROM items WHERE id > 470;
    INSERT INTO pairs VALUES (5, 'x5-new', 1);
    UPDATE pairs SET v = 500 WHERE a = 5 AND b = 'x5';
    INSERT INTO notes VALUES (6, 'uncommitted');
";

type Rows = Vec<Vec<Option<String>>>;

/// The rows of `sql` as text, sorted; an error as its SQLSTATE.
async fn rows(client: &Client, sql: &str) -> Result<Rows, String> {
    let messages = client.simple_query(sql).await.map_err(|e| {
        format!(
            "{sql}: {}",
            e.code().map_or(e.to_string(), |c| c.code().into())
        )
    })?;
    let mut rows: Rows = messages
        .iter()
        .filter_map(|message| match message {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_string))
                    .collect(),
            ),
            _ => None,
        })
        .collect();
    rows.sort();
    Ok(rows)
}

async fn exec(client: &Client, sql: &str) {
    client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
}

/// EXPLAIN's (or EXPLAIN ANALYZE's) text.
async fn explain(client: &Client, sql: &str) -> String {
    let rows = rows(client, &format!("EXPLAIN {sql}")).await.unwrap();
    rows.into_iter()
        .flatten()
        .flatten()
        .collect::<Vec<String>>()
        .join("\n")
}

/// Every query on every read path equals PostgreSQL's answer.
async fn compare_paths(omendb: &Client, postgres: &Client, context: &str, n_rows_min: usize) {
    let mut n_rows = 0;
    for sql in QUERIES {
        let expected = rows(postgres, sql).await;
        for path in ["rows", "columns", "auto"] {
            exec(omendb, &format!("SET omendb.read_path = '{path}'")).await;
            let actual = rows(omendb, sql).await;
            assert_eq!(
                actual, expected,
                "{context}: {sql} with omendb.read_path = {path} (left OmenDB, right PostgreSQL)"
            );
        }
        n_rows += expected.map_or(0, |rows| rows.len());
    }
    assert!(
        n_rows >= n_rows_min,
        "{context}: the queries saw only {n_rows} rows"
    );
}

#[test]
fn every_read_path_gives_postgresql_answers() {
    let cluster = Cluster::start("read-paths");
    let pg = Postgres::start().unwrap_or_else(|e| panic!("cannot start PostgreSQL: {e}"));
    runtime().block_on(async {
        let omendb = connect(&cluster.url()).await;
        let postgres = connect(&pg.url()).await;
        for client in [&omendb, &postgres] {
            exec(client, SCHEMA).await;
            exec(
                client,
                "INSERT INTO cats VALUES ('c0', 'zero'), ('c1', 'one'), ('c2', 'two'), \
                 ('c3', 'three'), ('c4', 'four'), ('c5', 'five');",
            )
            .await;
        }
        let has_column_pages = || {
            files_under(&cluster.object_store_dir()).iter().any(|path| {
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                name.starts_with(ITEMS_COLUMN_PAGES_PREFIX) && name.ends_with(".parquet")
            })
        };
        for round in 0..ROUNDS {
            let sql = round_sql(round);
            exec(&omendb, &sql).await;
            exec(&postgres, &sql).await;
            tokio::time::sleep(ROUND_PAUSE).await;
            if round == 2 {
                // Too few delta layers for compaction: column scans fall back to rows.
                assert!(!has_column_pages());
                compare_paths(&omendb, &postgres, "before compaction", 100).await;
            }
        }

        let deadline = Instant::now() + COMPACTION_TIMEOUT;
        loop {
            if has_column_pages() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no column pages of table items after {COMPACTION_TIMEOUT:?}:\n{}",
                cluster.log_tail("pageserver")
            );
            // Commits keep checkpoints (and so compactions) coming.
            exec(
                &omendb,
                "INSERT INTO notes VALUES (-1, 'tick'); DELETE FROM notes WHERE n = -1",
            )
            .await;
            exec(
                &postgres,
                "INSERT INTO notes VALUES (-1, 'tick'); DELETE FROM notes WHERE n = -1",
            )
            .await;
            tokio::time::sleep(ROUND_PAUSE).await;
        }
        compare_paths(&omendb, &postgres, "right after compaction", 500).await;

        for client in [&omendb, &postgres] {
            exec(client, LATER).await;
        }
        compare_paths(&omendb, &postgres, "with changes above the images", 500).await;

        // The transaction's own writes are merged on every path.
        for client in [&omendb, &postgres] {
            exec(client, "BEGIN").await;
            exec(client, IN_TRANSACTION).await;
        }
        compare_paths(&omendb, &postgres, "inside a transaction", 500).await;
        // UPDATE and DELETE find their rows (with the key column) on every path.
        for (i, path) in ["rows", "columns", "auto"].iter().enumerate() {
            exec(&omendb, &format!("SET omendb.read_path = '{path}'")).await;
            let sql = format!(
                "UPDATE items SET qty = qty + 1 WHERE id = 44; \
                 UPDATE items SET qty = qty + 1 WHERE cat = 'c2' AND id < 100; \
                 DELETE FROM items WHERE id = {}; \
                 DELETE FROM items WHERE qty = {} AND id > 200",
                45 + i,
                20 + i
            );
            exec(&omendb, &sql).await;
            exec(&postgres, &sql).await;
        }
        compare_paths(&omendb, &postgres, "after updates on every path", 500).await;
        for client in [&omendb, &postgres] {
            exec(client, "ROLLBACK").await;
        }
        compare_paths(&omendb, &postgres, "after the rollback", 500).await;

        // Which path auto takes, and that it really sends those requests.
        exec(&omendb, "SET omendb.read_path = 'auto'").await;
        let lookup = explain(&omendb, "SELECT * FROM items WHERE id = 42").await;
        assert!(lookup.contains("read=get_row, keys=1"), "{lookup}");
        let lookups = explain(
            &omendb,
            "SELECT * FROM pairs WHERE a = 6 AND b IN ('x6', 'y6')",
        )
        .await;
        assert!(lookups.contains("read=get_row, keys=2"), "{lookups}");
        let scan = explain(&omendb, "SELECT count(*) FROM items WHERE qty > 3").await;
        assert!(scan.contains("read=column_scan"), "{scan}");
        assert!(scan.contains("predicates=[qty Gt Int(3)]"), "{scan}");
        let range = explain(&omendb, "SELECT * FROM items WHERE id > 3").await;
        assert!(range.contains("read=column_scan"), "{range}");
        let analyzed = explain(&omendb, "ANALYZE SELECT * FROM items WHERE id = 42").await;
        assert!(analyzed.contains("get_row_requests=1"), "{analyzed}");
        let analyzed = explain(&omendb, "ANALYZE SELECT sum(qty) FROM items WHERE ok").await;
        assert!(analyzed.contains("column_scan_requests=1"), "{analyzed}");
        exec(&omendb, "SET omendb.read_path = 'rows'").await;
        let rows_scan = explain(&omendb, "SELECT count(*) FROM items WHERE qty > 3").await;
        assert!(rows_scan.contains("read=row_scan"), "{rows_scan}");
        exec(&omendb, "SET omendb.read_path = 'columns'").await;
        let forced = explain(&omendb, "SELECT * FROM items WHERE id = 42").await;
        assert!(forced.contains("read=column_scan"), "{forced}");
        let shown = rows(&omendb, "SHOW omendb.read_path").await.unwrap();
        assert_eq!(shown, vec![vec![Some("columns".to_string())]]);
        let err = omendb
            .batch_execute("SET omendb.read_path = 'fastest'")
            .await
            .unwrap_err();
        assert_eq!(err.code().map(|c| c.code()), Some("22023"), "{err:?}");
    });
}

#[test]
fn vacuum_builds_row_and_column_pages_at_once() {
    let cluster = Cluster::start("read-paths-vacuum");
    runtime().block_on(async {
        let omendb = connect(&cluster.url()).await;
        exec(&omendb, SCHEMA).await;
        exec(&omendb, &round_sql(0)).await;
        let column_pages = |prefix: &str| {
            files_under(&cluster.object_store_dir())
                .iter()
                .filter(|path| {
                    let name = path.file_name().unwrap_or_default().to_string_lossy();
                    name.starts_with(prefix) && name.ends_with(".parquet")
                })
                .count()
        };
        let sql = "SELECT count(*), sum(qty), min(d) FROM items WHERE qty > 1";
        let before = rows(&omendb, sql).await.unwrap();
        assert_eq!(column_pages(ITEMS_COLUMN_PAGES_PREFIX), 0);

        // One table: its image (row and column pages) exists when VACUUM answers.
        exec(&omendb, "VACUUM items").await;
        assert_eq!(column_pages(ITEMS_COLUMN_PAGES_PREFIX), 1);
        assert_eq!(rows(&omendb, sql).await.unwrap(), before);
        // Nothing changed since: no new image.
        exec(&omendb, "VACUUM FULL items").await;
        assert_eq!(column_pages(ITEMS_COLUMN_PAGES_PREFIX), 1);
        // Every table changed since its image, and only those.
        exec(&omendb, &round_sql(1)).await;
        exec(&omendb, "VACUUM").await;
        assert_eq!(column_pages(ITEMS_COLUMN_PAGES_PREFIX), 2);
        assert_eq!(column_pages("00000012-"), 1, "pairs got its first image");
        assert_eq!(column_pages("00000011-"), 0, "cats never changed");
        let after = rows(&omendb, sql).await.unwrap();
        exec(&omendb, "SET omendb.read_path = 'rows'").await;
        assert_eq!(rows(&omendb, sql).await.unwrap(), after);

        for (sql, code) in [
            ("BEGIN; VACUUM items", "25001"),
            ("VACUUM no_such_table", "42P01"),
            ("VACUUM items; SELECT 1", "25001"),
        ] {
            let err = omendb.batch_execute(sql).await.unwrap_err();
            assert_eq!(err.code().map(|c| c.code()), Some(code), "{sql}: {err:?}");
            omendb.batch_execute("ROLLBACK").await.unwrap();
        }
    });
}
