//! OmenDB against PostgreSQL 15: the same statements go to a throwaway PostgreSQL and to a
//! running OmenDB, and what comes back must be the same.
//!
//! * `psql_script_matches_postgres`: `psql -X -a -f tests/sql/newcomer.sql` against both;
//!   the whole transcript (echoed input, result tables, command tags, SQLSTATEs of errors
//!   and notices) must be identical.
//! * `extended_protocol_matches_postgres`: tokio-postgres (Parse/Bind/Execute) with typed
//!   parameters: rows, column names and type OIDs, parameter type OIDs, affected-row
//!   counts and error SQLSTATEs.
//! * `simple_protocol_tags_match_postgres`: `simple_query`: command-complete counts, row
//!   values, and two statements in one query string.
//!
//! Needs `psql`, `initdb`, `pg_ctl` and `postgres` (PostgreSQL 15) on PATH.

mod support;

use std::fmt::Write as _;
use std::future::Future;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::cluster::Cluster;
use support::postgres::Postgres;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls, Row, SimpleQueryMessage};

/// The script, relative to the package root (psql prints this path in its messages, so
/// both runs use the same relative path from the same working directory).
const SCRIPT: &str = "tests/sql/newcomer.sql";
/// The script must stay a real workout.
const MIN_STATEMENTS: usize = 60;
/// Every SQLSTATE the script provokes; PostgreSQL's transcript must show each.
const SCRIPT_SQLSTATES: &[&str] = &[
    "42601", // syntax_error
    "42P01", // undefined_table
    "42703", // undefined_column
    "23505", // unique_violation
    "23502", // not_null_violation
    "22012", // division_by_zero
    "25P02", // in_failed_sql_transaction
];
/// Bound on one psql run.
const PSQL_TIMEOUT: Duration = Duration::from_secs(300);
/// Bound on one client call in the protocol tests.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// Starting the two servers
// ---------------------------------------------------------------------------------------

fn start_postgres() -> Postgres {
    Postgres::start().unwrap_or_else(|e| panic!("cannot start PostgreSQL: {e}"))
}

fn start_omendb(name: &str) -> Cluster {
    Cluster::start(name).started()
}

/// Accepts `Cluster::start` returning either a `Cluster` or a `Result<Cluster, E>`.
trait Started {
    fn started(self) -> Cluster;
}

impl Started for Cluster {
    fn started(self) -> Cluster {
        self
    }
}

impl<E: std::fmt::Debug> Started for Result<Cluster, E> {
    fn started(self) -> Cluster {
        self.unwrap_or_else(|e| panic!("cannot start OmenDB: {e:?}"))
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn package_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Where transcripts are written for inspection.
fn output_dir() -> PathBuf {
    let base = option_env!("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join("pg_compare");
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

fn write_output(name: &str, text: &str) -> PathBuf {
    let path = output_dir().join(format!("{}-{name}", std::process::id()));
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    path
}

// ---------------------------------------------------------------------------------------
// psql
// ---------------------------------------------------------------------------------------

/// Runs the script through psql against `url`; returns (exit status, stdout+stderr merged
/// in the order psql wrote them).
fn run_psql(url: &str) -> (String, String) {
    let mut cmd = Command::new("sh");
    // `exec` so that killing the child on timeout kills psql itself.
    cmd.arg("-c")
        .arg("exec psql -X -a -f \"$1\" \"$2\" 2>&1")
        .arg("sh")
        .arg(SCRIPT)
        .arg(url)
        .current_dir(package_root());
    // Only the settings below may shape the session (no PGOPTIONS, PGDATESTYLE, ...).
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(&key);
        }
    }
    cmd.env("PGCONNECT_TIMEOUT", "10")
        .env("PGTZ", "UTC")
        .env("PGGSSENCMODE", "disable")
        .env("LC_ALL", "C")
        .env("LANG", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("cannot run psql (is it on PATH?)");
    let mut stdout = child.stdout.take().expect("psql stdout");
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + PSQL_TIMEOUT;
    let status = loop {
        match child.try_wait().expect("waiting for psql") {
            Some(status) => break status.to_string(),
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break format!("killed after {}s", PSQL_TIMEOUT.as_secs());
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let output = reader.join().expect("psql reader thread");
    (status, String::from_utf8_lossy(&output).into_owned())
}

/// What may legitimately differ between the two transcripts. Only line endings: the
/// `psql:tests/sql/newcomer.sql:LINE:` prefix of error and notice lines is the same for
/// both runs (same script path, same working directory), and result content is compared
/// as is.
fn normalize(text: &str) -> String {
    text.replace("\r\n", "\n")
}

/// Counts SQL statements: semicolons outside string literals and `--` comments, on lines
/// that are not psql meta-commands.
fn count_statements(script: &str) -> usize {
    let mut count = 0;
    let mut in_string = false;
    for line in script.lines() {
        if !in_string && line.trim_start().starts_with('\\') {
            continue;
        }
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\'' => in_string = !in_string,
                '-' if !in_string && chars.peek() == Some(&'-') => break,
                ';' if !in_string => count += 1,
                _ => {}
            }
        }
    }
    count
}

#[test]
fn psql_script_matches_postgres() {
    let script = std::fs::read_to_string(package_root().join(SCRIPT))
        .unwrap_or_else(|e| panic!("cannot read {SCRIPT}: {e}"));
    let statements = count_statements(&script);
    assert!(
        statements >= MIN_STATEMENTS,
        "{SCRIPT} has {statements} statements, expected at least {MIN_STATEMENTS}"
    );

    let pg = start_postgres();
    let omen = start_omendb("pg_compare");

    let (pg_status, pg_out) = run_psql(&pg.url());
    let (omen_status, omen_out) = run_psql(&omen.url());
    let pg_out = normalize(&pg_out);
    let omen_out = normalize(&omen_out);
    let pg_path = write_output("newcomer.postgres.out", &pg_out);
    let omen_path = write_output("newcomer.omendb.out", &omen_out);

    // The reference run must itself be sound, or the comparison means nothing.
    assert!(
        pg_status == "exit status: 0",
        "psql against PostgreSQL ended with {pg_status}; transcript: {}",
        pg_path.display()
    );
    for code in SCRIPT_SQLSTATES {
        assert!(
            pg_out.contains(&format!("ERROR:  {code}")),
            "PostgreSQL's transcript lacks SQLSTATE {code} ({}): the script no longer \
             provokes that error",
            pg_path.display()
        );
    }

    if pg_out != omen_out {
        panic!(
            "psql transcripts differ (- PostgreSQL, + OmenDB)\n  PostgreSQL: {}\n  OmenDB:     {}\n\
             psql against OmenDB ended with {omen_status}\n\n{}",
            pg_path.display(),
            omen_path.display(),
            unified_diff(&pg_out, &omen_out, "postgres", "omendb")
        );
    }
    assert_eq!(
        pg_status, omen_status,
        "psql exit status differs (PostgreSQL vs OmenDB)"
    );
}

// ---------------------------------------------------------------------------------------
// Protocol transcripts
// ---------------------------------------------------------------------------------------

async fn connect(url: &str) -> Client {
    let (client, connection) =
        tokio::time::timeout(STEP_TIMEOUT, tokio_postgres::connect(url, NoTls))
            .await
            .unwrap_or_else(|_| panic!("connecting to {url} timed out"))
            .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// A line-per-observation record of what a server answered.
#[derive(Default)]
struct Transcript {
    lines: Vec<String>,
    /// Set once a call timed out: the rest of the scenario is skipped.
    stalled: bool,
}

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

impl Transcript {
    fn push(&mut self, line: impl Into<String>) {
        self.lines.push(line.into());
    }

    async fn bounded<T>(&mut self, what: &str, fut: impl Future<Output = T>) -> Option<T> {
        if self.stalled {
            return None;
        }
        match tokio::time::timeout(STEP_TIMEOUT, fut).await {
            Ok(v) => Some(v),
            Err(_) => {
                self.stalled = true;
                self.push(format!(
                    "{what} -> TIMED OUT after {}s (rest skipped)",
                    STEP_TIMEOUT.as_secs()
                ));
                None
            }
        }
    }

    /// `client.execute`: the affected-row count or the SQLSTATE.
    async fn execute(&mut self, client: &Client, sql: &str, params: Params<'_>) -> Option<u64> {
        let res = self.bounded(sql, client.execute(sql, params)).await?;
        match res {
            Ok(n) => {
                self.push(format!("execute {sql} -> Ok({n})"));
                Some(n)
            }
            Err(e) => {
                self.push(format!("execute {sql} -> {}", error_line(&e)));
                None
            }
        }
    }

    /// `client.query`: column names and type OIDs, then every row decoded to text.
    async fn query(&mut self, client: &Client, sql: &str, params: Params<'_>) {
        let Some(res) = self.bounded(sql, client.query(sql, params)).await else {
            return;
        };
        match res {
            Ok(rows) => self.push_rows(&format!("query {sql}"), &rows),
            Err(e) => self.push(format!("query {sql} -> {}", error_line(&e))),
        }
    }

    fn push_rows(&mut self, what: &str, rows: &[Row]) {
        self.push(format!("{what} -> {} row(s)", rows.len()));
        if let Some(first) = rows.first() {
            let columns: Vec<String> = first
                .columns()
                .iter()
                .map(|c| format!("{} {}", c.name(), type_label(c.type_())))
                .collect();
            self.push(format!("  columns: {}", columns.join(", ")));
        }
        for (i, row) in rows.iter().enumerate() {
            let cells: Vec<String> = (0..row.len())
                .map(|c| match cell_text(row, c) {
                    Ok(Some(s)) => format!("{s:?}"),
                    Ok(None) => "NULL".to_string(),
                    Err(e) => format!("<{e}>"),
                })
                .collect();
            self.push(format!("  row {i}: [{}]", cells.join(", ")));
        }
    }

    /// `client.prepare`: parameter and result column types as the server described them.
    async fn prepare(&mut self, client: &Client, sql: &str) {
        let Some(res) = self.bounded(sql, client.prepare(sql)).await else {
            return;
        };
        match res {
            Ok(stmt) => {
                let params: Vec<String> = stmt.params().iter().map(type_label).collect();
                let columns: Vec<String> = stmt
                    .columns()
                    .iter()
                    .map(|c| format!("{} {}", c.name(), type_label(c.type_())))
                    .collect();
                self.push(format!(
                    "prepare {sql} -> params [{}], columns [{}]",
                    params.join(", "),
                    columns.join(", ")
                ));
            }
            Err(e) => self.push(format!("prepare {sql} -> {}", error_line(&e))),
        }
    }

    /// `client.simple_query`: every message, in order.
    async fn simple(&mut self, client: &Client, sql: &str) -> Option<Vec<SimpleQueryMessage>> {
        let res = self.bounded(sql, client.simple_query(sql)).await?;
        match res {
            Ok(messages) => {
                self.push(format!("simple {sql} -> {} message(s)", messages.len()));
                for m in &messages {
                    let line = match m {
                        SimpleQueryMessage::CommandComplete(n) => format!("  CommandComplete({n})"),
                        SimpleQueryMessage::Row(row) => {
                            let names: Vec<&str> = row.columns().iter().map(|c| c.name()).collect();
                            let cells: Vec<String> = (0..row.len())
                                .map(|i| match row.try_get(i) {
                                    Ok(Some(s)) => format!("{s:?}"),
                                    Ok(None) => "NULL".to_string(),
                                    Err(e) => format!("<{e}>"),
                                })
                                .collect();
                            format!("  Row({}) [{}]", names.join(", "), cells.join(", "))
                        }
                        SimpleQueryMessage::RowDescription(cols) => {
                            let names: Vec<&str> = cols.iter().map(|c| c.name()).collect();
                            format!("  RowDescription({})", names.join(", "))
                        }
                        other => format!("  {other:?}"),
                    };
                    self.push(line);
                }
                Some(messages)
            }
            Err(e) => {
                self.push(format!("simple {sql} -> {}", error_line(&e)));
                None
            }
        }
    }

    /// After an error: the connection must still answer, with the right count.
    async fn alive(&mut self, client: &Client, table: &str) {
        let sql = format!("SELECT count(*) AS n FROM {table}");
        self.query(client, &sql, &[]).await;
        if client.is_closed() {
            self.push("connection closed");
        }
    }
}

fn error_line(e: &tokio_postgres::Error) -> String {
    match e.code() {
        Some(code) => format!("Err({})", code.code()),
        None => format!("Err(no SQLSTATE: {e})"),
    }
}

fn type_label(t: &Type) -> String {
    format!("{}({})", t.name(), t.oid())
}

/// One cell as text, decoded by the column's type OID. Types without a decoder in plain
/// tokio-postgres (date, timestamp, numeric, ...) are selected with `::text` casts.
fn cell_text(row: &Row, i: usize) -> Result<Option<String>, String> {
    fn get<'a, T: tokio_postgres::types::FromSql<'a>>(
        row: &'a Row,
        i: usize,
    ) -> Result<Option<T>, String> {
        row.try_get::<_, Option<T>>(i).map_err(|e| e.to_string())
    }
    let oid = row.columns()[i].type_().oid();
    Ok(match oid {
        16 => get::<bool>(row, i)?.map(|v| v.to_string()),
        17 => get::<Vec<u8>>(row, i)?.map(|v| {
            let mut s = String::from("\\x");
            for b in v {
                let _ = write!(s, "{b:02x}");
            }
            s
        }),
        20 => get::<i64>(row, i)?.map(|v| v.to_string()),
        21 => get::<i16>(row, i)?.map(|v| v.to_string()),
        23 => get::<i32>(row, i)?.map(|v| v.to_string()),
        700 => get::<f32>(row, i)?.map(|v| format!("{v:?}")),
        701 => get::<f64>(row, i)?.map(|v| format!("{v:?}")),
        18 | 19 | 25 | 1042 | 1043 => get::<String>(row, i)?,
        other => return Err(format!("no decoder for type oid {other}")),
    })
}

/// Both servers' transcripts must be identical.
fn assert_same_transcript(name: &str, pg: &Transcript, omen: &Transcript) {
    let pg_text = pg.lines.join("\n") + "\n";
    let omen_text = omen.lines.join("\n") + "\n";
    let pg_path = write_output(&format!("{name}.postgres.out"), &pg_text);
    let omen_path = write_output(&format!("{name}.omendb.out"), &omen_text);
    assert!(
        !pg.stalled,
        "PostgreSQL itself timed out in the {name} scenario: {}",
        pg_path.display()
    );
    if pg_text != omen_text {
        panic!(
            "{name} transcripts differ (- PostgreSQL, + OmenDB)\n  PostgreSQL: {}\n  OmenDB:     {}\n\n{}",
            pg_path.display(),
            omen_path.display(),
            unified_diff(&pg_text, &omen_text, "postgres", "omendb")
        );
    }
}

/// The scenario must really provoke these outcomes on PostgreSQL.
fn assert_contains_all(name: &str, t: &Transcript, needles: &[&str]) {
    let text = t.lines.join("\n");
    for needle in needles {
        assert!(
            text.contains(needle),
            "PostgreSQL's {name} transcript lacks `{needle}`:\n{text}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Extended protocol
// ---------------------------------------------------------------------------------------

const EXT_TABLE: &str = "ext_types";

async fn extended_scenario(client: &Client) -> Transcript {
    let mut t = Transcript::default();
    let none_i16: Option<i16> = None;
    let none_i64: Option<i64> = None;
    let none_text: Option<String> = None;
    let none_bool: Option<bool> = None;
    let none_f64: Option<f64> = None;
    let none_bytes: Option<Vec<u8>> = None;

    t.execute(client, "DROP TABLE IF EXISTS ext_types", &[])
        .await;
    t.execute(
        client,
        "CREATE TABLE ext_types (id int PRIMARY KEY, big bigint NOT NULL, small smallint, \
         label text, code varchar(10), flag boolean, ratio double precision, \
         price numeric(10,2), day date, at timestamp, at_tz timestamptz, raw bytea)",
        &[],
    )
    .await;

    // Parameter types as the server infers them from the target columns.
    t.prepare(
        client,
        "INSERT INTO ext_types (id, big, small, label, code, flag, ratio, raw) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .await;
    t.prepare(client, "SELECT label, ratio FROM ext_types WHERE id = $1")
        .await;

    // Typed parameters; date, timestamp and numeric values as literals in the SQL text.
    let insert = "INSERT INTO ext_types (id, big, small, label, code, flag, ratio, price, day, at, at_tz, raw) \
                  VALUES ($1, $2, $3, $4, $5, $6, $7, 12.50, '2024-01-15', '2024-01-15 10:30:00', \
                  '2024-01-15 10:30:00+00', $8)";
    t.execute(
        client,
        insert,
        &[
            &1i32,
            &9_000_000_000i64,
            &7i16,
            &"alpha".to_string(),
            &"A1".to_string(),
            &true,
            &1.5f64,
            &vec![0xdeu8, 0xad, 0xbe, 0xef],
        ],
    )
    .await;
    t.execute(
        client,
        "INSERT INTO ext_types (id, big, small, label, code, flag, ratio, price, day, at, at_tz, raw) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 0.99, '2024-02-29', '2024-02-29 23:59:59.5', \
         '2024-02-29 23:59:59.123+00', $8)",
        &[
            &2i32,
            &-5i64,
            &-3i16,
            &"beta",
            &"B2",
            &false,
            &2.25f64,
            &Vec::<u8>::new(),
        ],
    )
    .await;
    t.execute(
        client,
        "INSERT INTO ext_types (id, big, small, label, code, flag, ratio, price, day, at, at_tz, raw) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, NULL, NULL, NULL, $8)",
        &[
            &3i32,
            &0i64,
            &none_i16,
            &none_text,
            &none_text,
            &none_bool,
            &none_f64,
            &none_bytes,
        ],
    )
    .await;
    t.execute(
        client,
        "INSERT INTO ext_types (id, big, label) VALUES ($1, $2, $3), ($4, $5, $6)",
        &[&4i32, &40i64, &"delta", &5i32, &50i64, &"epsilon"],
    )
    .await;

    let select_all = "SELECT id, big, small, label, code, flag, ratio, price::text AS price, \
                      day::text AS day, at::text AS at, at_tz::text AS at_tz, raw \
                      FROM ext_types WHERE id > $1 ORDER BY id";
    t.query(client, select_all, &[&0i32]).await;
    t.query(
        client,
        "SELECT id, label FROM ext_types WHERE label = $1 ORDER BY id",
        &[&"beta"],
    )
    .await;
    t.query(
        client,
        "SELECT id, big FROM ext_types WHERE flag = $1 AND big > $2 ORDER BY id",
        &[&true, &0i64],
    )
    .await;
    t.query(
        client,
        "SELECT id FROM ext_types WHERE small IS NULL ORDER BY id LIMIT $1",
        &[&2i64],
    )
    .await;
    t.query(
        client,
        "SELECT count(*) AS n, sum(small) AS small_sum, sum(id) AS id_sum, min(big) AS min_big, \
         max(ratio) AS max_ratio, min(label) AS first_label FROM ext_types",
        &[],
    )
    .await;
    t.query(
        client,
        "SELECT upper(label) AS up, length(label) AS len, label || $1 AS tagged \
         FROM ext_types WHERE id BETWEEN $2 AND $3 ORDER BY id",
        &[&"!", &1i32, &2i32],
    )
    .await;

    // Affected-row counts: one row, no row, all rows.
    t.execute(
        client,
        "UPDATE ext_types SET label = $1, ratio = $2 WHERE id = $3",
        &[&"gamma", &3.75f64, &3i32],
    )
    .await;
    t.execute(
        client,
        "UPDATE ext_types SET flag = $1 WHERE id = $2",
        &[&false, &999i32],
    )
    .await;
    t.execute(client, "UPDATE ext_types SET big = big + $1", &[&1i64])
        .await;
    t.execute(client, "DELETE FROM ext_types WHERE id = $1", &[&5i32])
        .await;
    t.execute(client, "DELETE FROM ext_types WHERE id = $1", &[&5i32])
        .await;
    t.query(client, select_all, &[&0i32]).await;

    // Errors through the extended protocol; the connection keeps working after each.
    t.execute(
        client,
        "INSERT INTO ext_types (id, big) VALUES ($1, $2)",
        &[&1i32, &1i64],
    )
    .await;
    t.alive(client, EXT_TABLE).await;
    t.execute(
        client,
        "INSERT INTO ext_types (id, big) VALUES ($1, $2)",
        &[&6i32, &none_i64],
    )
    .await;
    t.alive(client, EXT_TABLE).await;
    t.query(
        client,
        "SELECT * FROM no_such_table WHERE id = $1",
        &[&1i32],
    )
    .await;
    t.alive(client, EXT_TABLE).await;
    t.query(
        client,
        "SELECT no_such_column FROM ext_types WHERE id = $1",
        &[&1i32],
    )
    .await;
    t.alive(client, EXT_TABLE).await;
    t.query(client, "SELEC id FROM ext_types WHERE id = $1", &[&1i32])
        .await;
    t.alive(client, EXT_TABLE).await;
    t.query(client, "SELECT 1/0", &[]).await;
    t.alive(client, EXT_TABLE).await;
    t.query(
        client,
        "SELECT big / $1 AS q FROM ext_types WHERE id = $2",
        &[&0i64, &1i32],
    )
    .await;
    t.alive(client, EXT_TABLE).await;

    // Transactions over the extended protocol.
    t.execute(client, "BEGIN", &[]).await;
    t.execute(
        client,
        "INSERT INTO ext_types (id, big) VALUES ($1, $2)",
        &[&10i32, &100i64],
    )
    .await;
    t.execute(client, "ROLLBACK", &[]).await;
    t.alive(client, EXT_TABLE).await;
    t.execute(client, "BEGIN", &[]).await;
    t.execute(
        client,
        "INSERT INTO ext_types (id, big) VALUES ($1, $2)",
        &[&11i32, &110i64],
    )
    .await;
    t.execute(client, "COMMIT", &[]).await;
    t.alive(client, EXT_TABLE).await;
    t.execute(client, "BEGIN", &[]).await;
    t.execute(
        client,
        "INSERT INTO ext_types (id, big) VALUES ($1, $2)",
        &[&12i32, &120i64],
    )
    .await;
    t.execute(
        client,
        "INSERT INTO ext_types (id, big) VALUES ($1, $2)",
        &[&1i32, &1i64],
    )
    .await;
    t.query(client, "SELECT count(*) AS n FROM ext_types", &[])
        .await;
    t.execute(client, "ROLLBACK", &[]).await;
    t.alive(client, EXT_TABLE).await;
    t.query(
        client,
        "SELECT id FROM ext_types WHERE id > $1 ORDER BY id",
        &[&0i32],
    )
    .await;

    t.execute(client, "DROP TABLE ext_types", &[]).await;
    t
}

#[test]
fn extended_protocol_matches_postgres() {
    let pg = start_postgres();
    let omen = start_omendb("pg_compare_extended");
    let rt = runtime();
    let (pg_t, omen_t) = rt.block_on(async {
        let pg_client = connect(&pg.url()).await;
        let pg_t = extended_scenario(&pg_client).await;
        let omen_client = connect(&omen.url()).await;
        let omen_t = extended_scenario(&omen_client).await;
        (pg_t, omen_t)
    });
    drop(rt);
    assert_contains_all(
        "extended",
        &pg_t,
        &[
            "Err(23505)",
            "Err(23502)",
            "Err(42P01)",
            "Err(42703)",
            "Err(42601)",
            "Err(22012)",
            "Err(25P02)",
            "-> Ok(2)",
            "-> Ok(0)",
        ],
    );
    assert_same_transcript("extended", &pg_t, &omen_t);
}

// ---------------------------------------------------------------------------------------
// Simple protocol
// ---------------------------------------------------------------------------------------

fn command_completes(messages: &[SimpleQueryMessage]) -> Vec<u64> {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::CommandComplete(n) => Some(*n),
            _ => None,
        })
        .collect()
}

/// Returns the transcript and, for the two-statement query strings, the CommandComplete
/// counts each produced.
async fn simple_scenario(client: &Client) -> (Transcript, Vec<Vec<u64>>) {
    let mut t = Transcript::default();
    let mut multi = Vec::new();
    t.simple(client, "DROP TABLE IF EXISTS simple_t").await;
    t.simple(
        client,
        "CREATE TABLE simple_t (id int PRIMARY KEY, name text NOT NULL, score double precision, \
         born date, seen timestamp, paid numeric(10,2), ok boolean)",
    )
    .await;
    t.simple(
        client,
        "INSERT INTO simple_t VALUES \
         (1, 'ann', 1.5, '2024-01-15', '2024-01-15 10:30:00', 12.50, true), \
         (2, 'ben', NULL, NULL, '2024-02-29 23:59:59.25', NULL, false), \
         (3, 'cy', 2.25, '2023-12-31', NULL, 0.99, NULL)",
    )
    .await;
    t.simple(client, "SELECT * FROM simple_t ORDER BY id").await;
    t.simple(client, "SELECT * FROM simple_t WHERE id = 42")
        .await;
    t.simple(
        client,
        "SELECT count(*), sum(paid), max(score) FROM simple_t",
    )
    .await;
    t.simple(client, "UPDATE simple_t SET score = 3.5 WHERE id = 2")
        .await;
    t.simple(client, "UPDATE simple_t SET score = 0.5 WHERE id = 99")
        .await;
    t.simple(
        client,
        "INSERT INTO simple_t (id, name) SELECT id + 10, upper(name) FROM simple_t",
    )
    .await;
    t.simple(client, "SELECT id, name, score FROM simple_t ORDER BY id")
        .await;

    // Two statements in one query string: both results come back.
    if let Some(m) = t
        .simple(
            client,
            "INSERT INTO simple_t (id, name) VALUES (20, 'dee'); SELECT id, name FROM simple_t WHERE id >= 13 ORDER BY id",
        )
        .await
    {
        multi.push(command_completes(&m));
    }
    if let Some(m) = t
        .simple(
            client,
            "UPDATE simple_t SET ok = true WHERE id > 10; DELETE FROM simple_t WHERE id = 20",
        )
        .await
    {
        multi.push(command_completes(&m));
    }

    // Errors keep the connection usable.
    t.simple(client, "SELECT * FROM no_such_table").await;
    t.simple(client, "INSERT INTO simple_t (id, name) VALUES (1, 'dup')")
        .await;
    t.simple(client, "SELECT count(*) FROM simple_t").await;

    t.simple(client, "DELETE FROM simple_t").await;
    t.simple(client, "DROP TABLE simple_t").await;
    (t, multi)
}

#[test]
fn simple_protocol_tags_match_postgres() {
    let pg = start_postgres();
    let omen = start_omendb("pg_compare_simple");
    let rt = runtime();
    let ((pg_t, pg_multi), (omen_t, omen_multi)) = rt.block_on(async {
        let pg_client = connect(&pg.url()).await;
        let pg_res = simple_scenario(&pg_client).await;
        let omen_client = connect(&omen.url()).await;
        let omen_res = simple_scenario(&omen_client).await;
        (pg_res, omen_res)
    });
    drop(rt);
    // Each two-statement string yields two CommandCompletes: INSERT 1 then 2 rows
    // selected; UPDATE 4 then DELETE 1.
    let expected: Vec<Vec<u64>> = vec![vec![1, 2], vec![4, 1]];
    assert_eq!(
        pg_multi, expected,
        "PostgreSQL's two-statement results: {:#?}",
        pg_t.lines
    );
    assert_contains_all(
        "simple",
        &pg_t,
        &[
            "CommandComplete(3)",
            "CommandComplete(0)",
            "Err(42P01)",
            "Err(23505)",
        ],
    );
    assert_same_transcript("simple", &pg_t, &omen_t);
    assert_eq!(
        omen_multi, expected,
        "OmenDB's two-statement query strings did not return both results"
    );
}

// ---------------------------------------------------------------------------------------
// A small line diff for failure messages
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Op {
    Same,
    Del,
    Add,
}

/// A unified-diff-like listing (3 lines of context), cut after `MAX_DIFF_LINES` lines.
fn unified_diff(a: &str, b: &str, a_name: &str, b_name: &str) -> String {
    const CONTEXT: usize = 3;
    const MAX_DIFF_LINES: usize = 200;
    let a: Vec<&str> = a.lines().collect();
    let b: Vec<&str> = b.lines().collect();

    // Trim the common prefix and suffix, then LCS on the middle (or give up on it).
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..]
        .iter()
        .rev()
        .zip(b[prefix..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let am = &a[prefix..a.len() - suffix];
    let bm = &b[prefix..b.len() - suffix];
    let mut ops: Vec<Op> = vec![Op::Same; prefix];
    if (am.len() + 1) * (bm.len() + 1) <= 16_000_000 {
        let (n, m) = (am.len(), bm.len());
        let mut lcs = vec![0u32; (n + 1) * (m + 1)];
        let at = |i: usize, j: usize| i * (m + 1) + j;
        for i in (0..n).rev() {
            for j in (0..m).rev() {
                lcs[at(i, j)] = if am[i] == bm[j] {
                    lcs[at(i + 1, j + 1)] + 1
                } else {
                    lcs[at(i + 1, j)].max(lcs[at(i, j + 1)])
                };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < n || j < m {
            if i < n && j < m && am[i] == bm[j] {
                ops.push(Op::Same);
                i += 1;
                j += 1;
            } else if j == m || (i < n && lcs[at(i + 1, j)] >= lcs[at(i, j + 1)]) {
                ops.push(Op::Del);
                i += 1;
            } else {
                ops.push(Op::Add);
                j += 1;
            }
        }
    } else {
        ops.extend(std::iter::repeat(Op::Del).take(am.len()));
        ops.extend(std::iter::repeat(Op::Add).take(bm.len()));
    }
    ops.extend(std::iter::repeat(Op::Same).take(suffix));

    // Positions in a and b before each op.
    let mut pos = Vec::with_capacity(ops.len() + 1);
    let (mut i, mut j) = (0usize, 0usize);
    for op in &ops {
        pos.push((i, j));
        match op {
            Op::Same => {
                i += 1;
                j += 1;
            }
            Op::Del => i += 1,
            Op::Add => j += 1,
        }
    }
    pos.push((i, j));

    let mut out = format!("--- {a_name}\n+++ {b_name}\n");
    let mut printed = 0;
    let mut k = 0;
    while k < ops.len() {
        if ops[k] == Op::Same {
            k += 1;
            continue;
        }
        // A hunk: from CONTEXT before this change to CONTEXT after the last change that
        // is within 2*CONTEXT of the previous one.
        let start = k.saturating_sub(CONTEXT);
        let mut end = k;
        let mut last_change = k;
        while end < ops.len() {
            if ops[end] != Op::Same {
                last_change = end;
            } else if end - last_change > 2 * CONTEXT {
                break;
            }
            end += 1;
        }
        let end = (last_change + 1 + CONTEXT).min(ops.len());
        let (a0, b0) = pos[start];
        let (a1, b1) = pos[end];
        let _ = writeln!(out, "@@ -{},{} +{},{} @@", a0 + 1, a1 - a0, b0 + 1, b1 - b0);
        for idx in start..end {
            let (ai, bj) = pos[idx];
            let line = match ops[idx] {
                Op::Same => format!(" {}", a[ai]),
                Op::Del => format!("-{}", a[ai]),
                Op::Add => format!("+{}", b[bj]),
            };
            out.push_str(&line);
            out.push('\n');
            printed += 1;
            if printed >= MAX_DIFF_LINES {
                out.push_str("... (diff cut short; compare the files above)\n");
                return out;
            }
        }
        k = end;
    }
    out
}
