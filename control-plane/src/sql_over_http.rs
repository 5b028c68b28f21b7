//! SQL over HTTP, shaped like Neon's serverless driver: what a request says, how it runs on a
//! PostgreSQL connection, and what the answer looks like. The proxy serves it at
//! `POST /sql` ([`crate::proxy::http`]); the `omendb-sql-lambda` crate runs the same
//! handler as an AWS Lambda function.
//!
//! Request: header `Neon-Connection-String: postgres://role:password@host/db?options=…`
//! (the endpoint is found in it as for a wire connection: the host's first label, the
//! options, or the password), and a JSON body, one statement or a batch run in one
//! transaction:
//!
//! ```text
//! {"query": "SELECT * FROM t WHERE id = $1", "params": [7]}
//! {"queries": [{"query": "...", "params": [...]}, ...]}
//! ```
//!
//! Answer (200): `{"command", "rowCount", "rows", "fields", "rowAsArray"}` per statement
//! (`{"results": [...]}` for a batch). Rows are objects by column name, or arrays with
//! `Neon-Array-Mode: true`; values are the columns' text, except booleans, 2- and 4-byte
//! integers, finite floats and JSON, which become JSON values (`Neon-Raw-Text-Output: true`
//! keeps every value text). Failure (400, or 503 when the compute cannot be reached):
//! the PostgreSQL error fields, `{"message", "code", "detail", "hint", "position", ...}`.

use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::pgclient::{ClientError, Connection, PgError, QueryResult};

/// The largest request body, in bytes.
pub const SQL_REQUEST_BYTES_MAX: usize = 10 << 20;
/// The most row text one request may return, in bytes (all statements together).
pub const SQL_RESPONSE_BYTES_MAX: usize = 10 << 20;
/// The most statements in one batch.
pub const SQL_BATCH_STATEMENTS_MAX: usize = 1_000;
/// How long one request may run on the compute, in milliseconds.
pub const SQL_REQUEST_TIMEOUT_MS: u64 = 60_000;

/// The header carrying the connection string.
pub const CONNECTION_STRING_HEADER: &str = "neon-connection-string";
pub const ARRAY_MODE_HEADER: &str = "neon-array-mode";
pub const RAW_TEXT_HEADER: &str = "neon-raw-text-output";

/// An answer: the HTTP status and the JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct SqlAnswer {
    pub status: u16,
    pub body: Value,
}

impl SqlAnswer {
    /// A failure with PostgreSQL's fields: `code` is a SQLSTATE.
    pub fn error(status: u16, code: &str, message: impl Into<String>) -> SqlAnswer {
        SqlAnswer {
            status,
            body: json!({ "message": message.into(), "code": code, "severity": "ERROR" }),
        }
    }

    fn from_pg(error: &PgError) -> SqlAnswer {
        let names: [(u8, &str); 17] = [
            (b'S', "severity"),
            (b'C', "code"),
            (b'M', "message"),
            (b'D', "detail"),
            (b'H', "hint"),
            (b'P', "position"),
            (b'p', "internalPosition"),
            (b'q', "internalQuery"),
            (b'W', "where"),
            (b's', "schema"),
            (b't', "table"),
            (b'c', "column"),
            (b'd', "dataType"),
            (b'n', "constraint"),
            (b'F', "file"),
            (b'L', "line"),
            (b'R', "routine"),
        ];
        let mut body = Map::new();
        for (code, name) in names {
            if let Some(value) = error.field(code) {
                body.insert(name.into(), Value::String(value.into()));
            }
        }
        SqlAnswer {
            status: 400,
            body: Value::Object(body),
        }
    }

    /// A failed connection or query: the server's error fields, or 503 when the connection
    /// itself failed.
    pub fn from_client(error: ClientError) -> SqlAnswer {
        match error {
            ClientError::Server(e) => SqlAnswer::from_pg(&e),
            ClientError::TooLarge { max_bytes } => SqlAnswer::error(
                400,
                "54000",
                format!(
                    "the result is larger than {max_bytes} bytes, the most one request returns"
                ),
            ),
            other => SqlAnswer::error(
                503,
                "08006",
                format!("the connection to the compute failed: {other}"),
            ),
        }
    }
}

/// Where and as whom a request connects, from its connection string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    pub user: String,
    pub password: String,
    pub host: String,
    pub port: Option<u16>,
    pub database: String,
    /// The `options` query parameter, decoded.
    pub options: Option<String>,
    /// Other query parameters (`sslmode`, `sslrootcert`, ...), decoded.
    pub params: Vec<(String, String)>,
}

impl Target {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses `postgres[ql]://user:password@host[:port][/database][?name=value&...]`.
pub fn parse_connection_string(url: &str) -> Result<Target, String> {
    let rest = url
        .strip_prefix("postgresql://")
        .or_else(|| url.strip_prefix("postgres://"))
        .ok_or("the connection string must start with postgres:// or postgresql://")?;
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, database) = rest.split_once('/').unwrap_or((rest, ""));
    let (credentials, host_port) = authority
        .rsplit_once('@')
        .ok_or("the connection string names no user (user:password@host)")?;
    let (user, password) = credentials
        .split_once(':')
        .ok_or("the connection string has no password (user:password@host)")?;
    // `[v6 address]:port`, `[v6 address]`, `host:port` or `host`.
    let (host, port) = match host_port.strip_prefix('[') {
        Some(bracketed) => {
            let (host, rest) = bracketed
                .split_once(']')
                .ok_or("an IPv6 host in the connection string lacks its ']'")?;
            match rest {
                "" => (host, None),
                _ => (host, Some(rest.strip_prefix(':').unwrap_or(rest))),
            }
        }
        None => match host_port.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        },
    };
    let port = port
        .map(|port| {
            port.parse::<u16>()
                .map_err(|_| format!("invalid port {port:?} in the connection string"))
        })
        .transpose()?;
    if host.is_empty() {
        return Err("the connection string names no host".into());
    }
    let mut target = Target {
        user: percent_decode(user)?,
        password: percent_decode(password)?,
        host: host.into(),
        port,
        database: percent_decode(database)?,
        options: None,
        params: Vec::new(),
    };
    if target.user.is_empty() {
        return Err("the connection string names no user".into());
    }
    if target.database.is_empty() {
        target.database = target.user.clone();
    }
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let (name, value) = (percent_decode(name)?, percent_decode(value)?);
        if name == "options" {
            target.options = Some(value);
        } else {
            target.params.push((name, value));
        }
    }
    Ok(target)
}

/// Decodes `%XX` escapes (and `+` as itself, as libpq does).
fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("invalid percent-encoding in {text:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{text:?} does not decode to UTF-8"))
}

/// One statement of a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    pub query: String,
    pub params: Vec<Option<String>>,
}

/// A parsed request: its statements (more than one or `batch`: one transaction) and how
/// rows are shaped.
#[derive(Debug, Clone, PartialEq)]
pub struct SqlRequest {
    pub statements: Vec<Statement>,
    pub batch: bool,
    pub array_mode: bool,
    pub raw_text: bool,
}

/// Parses the body and the shaping headers (`header` looks one up, case-insensitively).
pub fn parse_request(
    header: impl Fn(&str) -> Option<String>,
    body: &[u8],
) -> Result<SqlRequest, SqlAnswer> {
    let flag = |name: &str| header(name).is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    let bad = |message: String| SqlAnswer::error(400, "08P01", message);
    if body.len() > SQL_REQUEST_BYTES_MAX {
        return Err(bad(format!(
            "the request body is larger than {SQL_REQUEST_BYTES_MAX} bytes"
        )));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| bad(format!("the request body is not JSON: {e}")))?;
    let statement = |value: &Value| -> Result<Statement, SqlAnswer> {
        let query = value
            .get("query")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("a statement needs \"query\": a string".into()))?;
        let params = match value.get("params") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(params)) => params.iter().map(param_text).collect(),
            Some(_) => return Err(bad("\"params\" must be an array".into())),
        };
        Ok(Statement {
            query: query.into(),
            params,
        })
    };
    let (statements, batch) = match value.get("queries") {
        Some(Value::Array(queries)) => {
            if queries.len() > SQL_BATCH_STATEMENTS_MAX {
                return Err(bad(format!(
                    "a batch holds at most {SQL_BATCH_STATEMENTS_MAX} statements"
                )));
            }
            (
                queries.iter().map(statement).collect::<Result<_, _>>()?,
                true,
            )
        }
        Some(_) => return Err(bad("\"queries\" must be an array".into())),
        None => (vec![statement(&value)?], false),
    };
    Ok(SqlRequest {
        statements,
        batch,
        array_mode: flag(ARRAY_MODE_HEADER),
        raw_text: flag(RAW_TEXT_HEADER),
    })
}

/// A JSON parameter as PostgreSQL text: strings as they are, numbers and booleans as
/// written, arrays as array literals, objects as JSON; `null` is NULL.
fn param_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Object(_) => Some(value.to_string()),
        Value::Array(items) => {
            let mut out = String::from("{");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                match item {
                    Value::Null => out.push_str("NULL"),
                    Value::Array(_) => out.push_str(&param_text(item).unwrap_or_default()),
                    other => {
                        let text = param_text(other).unwrap_or_default();
                        out.push('"');
                        for c in text.chars() {
                            if c == '"' || c == '\\' {
                                out.push('\\');
                            }
                            out.push(c);
                        }
                        out.push('"');
                    }
                }
            }
            out.push('}');
            Some(out)
        }
    }
}

/// A column's text as a JSON value, by its type (see the module docs).
fn cell(text: Option<&String>, type_oid: u32, raw_text: bool) -> Value {
    let Some(text) = text else {
        return Value::Null;
    };
    if raw_text {
        return Value::String(text.clone());
    }
    const BOOL: u32 = 16;
    const INT2: u32 = 21;
    const INT4: u32 = 23;
    const FLOAT4: u32 = 700;
    const FLOAT8: u32 = 701;
    const JSON: u32 = 114;
    const JSONB: u32 = 3802;
    let converted = match type_oid {
        BOOL => match text.as_str() {
            "t" | "true" => Some(Value::Bool(true)),
            "f" | "false" => Some(Value::Bool(false)),
            _ => None,
        },
        INT2 | INT4 => text.parse::<i64>().ok().map(Value::from),
        FLOAT4 | FLOAT8 => text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number),
        JSON | JSONB => serde_json::from_str(text).ok(),
        _ => None,
    };
    converted.unwrap_or_else(|| Value::String(text.clone()))
}

/// One statement's answer object.
fn result_json(result: &QueryResult, request: &SqlRequest) -> Value {
    let fields: Vec<Value> = result
        .fields
        .iter()
        .map(|f| {
            json!({
                "name": f.name,
                "tableID": f.table_oid,
                "columnID": f.column_id,
                "dataTypeID": f.type_oid,
                "dataTypeSize": f.type_size,
                "dataTypeModifier": f.type_modifier,
                "format": "text",
            })
        })
        .collect();
    let rows: Vec<Value> = result
        .rows
        .iter()
        .map(|row| {
            let cells = row
                .iter()
                .zip(&result.fields)
                .map(|(text, field)| cell(text.as_ref(), field.type_oid, request.raw_text));
            if request.array_mode {
                Value::Array(cells.collect())
            } else {
                let mut object = Map::new();
                for (value, field) in cells.zip(&result.fields) {
                    object.insert(field.name.clone(), value);
                }
                Value::Object(object)
            }
        })
        .collect();
    let row_count = result
        .row_count()
        .map(Value::from)
        .unwrap_or_else(|| Value::from(result.rows.len()));
    json!({
        "command": result.command(),
        "rowCount": row_count,
        "rows": rows,
        "fields": fields,
        "rowAsArray": request.array_mode,
    })
}

/// Runs the request's statements on `connection` (a batch in one transaction, rolled back
/// on the first error) and shapes the answer. The connection is closed afterwards.
pub async fn execute<S: AsyncRead + AsyncWrite + Unpin>(
    mut connection: Connection<S>,
    request: &SqlRequest,
) -> SqlAnswer {
    let run = async {
        let mut budget = SQL_RESPONSE_BYTES_MAX;
        let mut results = Vec::with_capacity(request.statements.len());
        if request.batch {
            connection.simple("BEGIN").await?;
        }
        for statement in &request.statements {
            let result = match connection
                .query(&statement.query, &statement.params, budget)
                .await
            {
                Ok(result) => result,
                Err(e) => {
                    if request.batch {
                        let _ = connection.simple("ROLLBACK").await;
                    }
                    return Err(e);
                }
            };
            let used: usize = result
                .rows
                .iter()
                .flatten()
                .map(|v| v.as_ref().map_or(0, String::len))
                .sum();
            budget = budget.saturating_sub(used);
            results.push(result_json(&result, request));
        }
        if request.batch {
            connection.simple("COMMIT").await?;
        }
        Ok::<_, ClientError>(results)
    };
    let answer = match tokio::time::timeout(Duration::from_millis(SQL_REQUEST_TIMEOUT_MS), run)
        .await
    {
        Ok(Ok(mut results)) => SqlAnswer {
            status: 200,
            body: if request.batch {
                json!({ "results": results })
            } else {
                results.pop().unwrap_or(Value::Null)
            },
        },
        Ok(Err(e)) => SqlAnswer::from_client(e),
        Err(_) => {
            return SqlAnswer::error(
                400,
                "57014",
                format!("the request ran longer than {SQL_REQUEST_TIMEOUT_MS} ms and was stopped"),
            )
        }
    };
    connection.close().await;
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_strings() {
        let t = parse_connection_string(
            "postgres://omendb:p%40ss@ep-a1.localhost:55432/omendb?options=endpoint%3Dep-a1&sslmode=require",
        )
        .unwrap();
        assert_eq!(t.user, "omendb");
        assert_eq!(t.password, "p@ss");
        assert_eq!(t.host, "ep-a1.localhost");
        assert_eq!(t.port, Some(55432));
        assert_eq!(t.database, "omendb");
        assert_eq!(t.options.as_deref(), Some("endpoint=ep-a1"));
        assert_eq!(t.param("sslmode"), Some("require"));
        let t = parse_connection_string("postgresql://u:p@[::1]:5/d").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", Some(5)));
        let t = parse_connection_string("postgresql://u:p@[::1]/d").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", None));
        let t = parse_connection_string("postgres://u:p@h").unwrap();
        assert_eq!((t.port, t.database.as_str()), (None, "u"));
        for bad in [
            "mysql://u:p@h/d",
            "postgres://h/d",
            "postgres://u@h/d",
            "postgres://u:p@h:x/d",
            "postgres://u:p@/d",
            "postgres://u:p%zz@h/d",
            "postgres://:p@h/d",
            "postgres://u:p@[::1/d",
            "postgres://u:p@[::1]x/d",
        ] {
            assert!(parse_connection_string(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn requests_and_parameters() {
        let none = |_: &str| None;
        let request = parse_request(
            none,
            br#"{"query": "SELECT $1, $2, $3, $4, $5, $6", "params": [1, "x", null, true, [1, "a\"b", null], {"k": 2}]}"#,
        )
        .unwrap();
        assert!(!request.batch);
        assert_eq!(
            request.statements[0].params,
            vec![
                Some("1".into()),
                Some("x".into()),
                None,
                Some("true".into()),
                Some(r#"{"1","a\"b",NULL}"#.into()),
                Some(r#"{"k":2}"#.into()),
            ]
        );
        let headers = |name: &str| (name == ARRAY_MODE_HEADER).then(|| "true".to_string());
        let batch = parse_request(
            headers,
            br#"{"queries": [{"query": "SELECT 1"}, {"query": "SELECT 2", "params": []}]}"#,
        )
        .unwrap();
        assert!(batch.batch && batch.array_mode && !batch.raw_text);
        assert_eq!(batch.statements.len(), 2);
        for bad in [
            &b"not json"[..],
            br#"{"params": []}"#,
            br#"{"query": 5}"#,
            br#"{"query": "x", "params": 3}"#,
            br#"{"queries": {}}"#,
            br#"{"queries": [{"nope": 1}]}"#,
        ] {
            let answer = parse_request(none, bad).unwrap_err();
            assert_eq!(answer.status, 400);
            assert_eq!(answer.body["code"], "08P01");
        }
    }

    #[test]
    fn cells_by_type() {
        let s = |t: &str| Some(t.to_string());
        assert_eq!(cell(s("t").as_ref(), 16, false), json!(true));
        assert_eq!(cell(s("42").as_ref(), 23, false), json!(42));
        assert_eq!(cell(s("42").as_ref(), 20, false), json!("42"));
        assert_eq!(cell(s("1.5").as_ref(), 701, false), json!(1.5));
        assert_eq!(cell(s("NaN").as_ref(), 701, false), json!("NaN"));
        assert_eq!(cell(s("{\"a\":1}").as_ref(), 3802, false), json!({"a": 1}));
        assert_eq!(cell(s("42").as_ref(), 23, true), json!("42"));
        assert_eq!(cell(None, 23, false), Value::Null);
    }
}
