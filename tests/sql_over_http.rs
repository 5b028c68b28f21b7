//! SQL over HTTP (`POST /sql` on the proxy's HTTP port) as a serverless-driver client uses
//! it, through curl: plain HTTP on loopback and HTTPS with the cluster's certificate.

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};
use support::cluster::free_addr;
use support::launcher::{endpoint_of, fresh_dir, omendb, password_of, psql, Launcher};

/// The `sql_over_http` URL the cluster wrote into control-plane.json.
fn sql_url(dir: &Path) -> String {
    let file = std::fs::read_to_string(dir.join("control-plane.json")).expect("control-plane.json");
    let cluster: Value = serde_json::from_str(&file).expect("JSON");
    cluster["sql_over_http"]
        .as_str()
        .expect("sql_over_http")
        .to_string()
}

/// POSTs `body` with curl; `extra` are more curl arguments. Returns (status, JSON body).
fn post(url: &str, connection: Option<&str>, body: &Value, extra: &[&str]) -> (u16, Value) {
    let mut command = Command::new("curl");
    command.args([
        "-sS",
        "-X",
        "POST",
        "-w",
        "\n%{http_code}",
        "--data-binary",
        "@-",
    ]);
    command.args(["-H", "Content-Type: application/json"]);
    if let Some(connection) = connection {
        command.args(["-H", &format!("Neon-Connection-String: {connection}")]);
    }
    command.args(extra).arg(url);
    command.stdin(std::process::Stdio::piped());
    command.stdout(std::process::Stdio::piped());
    let mut child = command.spawn().expect("run curl");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.to_string().as_bytes())
        .expect("write body");
    let output = child.wait_with_output().expect("curl finished");
    assert!(output.status.success(), "curl failed: {output:?}");
    let text = String::from_utf8(output.stdout).expect("UTF-8");
    let (body, status) = text.rsplit_once('\n').expect("status line");
    let value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    (status.parse().expect("status"), value)
}

#[test]
fn sql_over_http_runs_statements_with_the_wire_protocols_authentication() {
    let dir = fresh_dir("sqlhttp", "basic");
    let port = free_addr().port();
    let cluster = Launcher::start(&dir, port);
    let url = sql_url(&dir);
    let conn = cluster.url.clone();
    let (password, endpoint) = (password_of(&conn), endpoint_of(&conn));

    // A command, then parameterized writes and reads, in Neon's answer shape.
    let (status, body) = post(
        &url,
        Some(&conn),
        &json!({"query": "CREATE TABLE items (id int PRIMARY KEY, name text, price double precision, ok boolean)"}),
        &[],
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["command"], "CREATE");
    let (status, body) = post(
        &url,
        Some(&conn),
        &json!({"query": "INSERT INTO items VALUES ($1, $2, $3, $4), ($5, $6, $7, $8)",
                "params": [1, "apple", 1.5, true, 2, null, 2.25, false]}),
        &[],
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["command"], "INSERT");
    assert_eq!(body["rowCount"], 2);
    let (status, body) = post(
        &url,
        Some(&conn),
        &json!({"query": "SELECT id, name, price, ok FROM items WHERE id >= $1 ORDER BY id", "params": ["1"]}),
        &[],
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["command"], "SELECT");
    assert_eq!(body["rowCount"], 2);
    assert_eq!(body["rowAsArray"], false);
    assert_eq!(
        body["rows"],
        json!([
            {"id": 1, "name": "apple", "price": 1.5, "ok": true},
            {"id": 2, "name": null, "price": 2.25, "ok": false}
        ])
    );
    let names: Vec<&str> = body["fields"]
        .as_array()
        .expect("fields")
        .iter()
        .map(|f| f["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["id", "name", "price", "ok"]);
    assert_eq!(body["fields"][0]["dataTypeID"], 23);
    assert_eq!(body["fields"][1]["dataTypeID"], 25);
    // The wire protocol sees the same rows.
    assert_eq!(psql(&conn, "SELECT name FROM items WHERE id = 1"), "apple");

    // Array mode and raw text.
    let (status, body) = post(
        &url,
        Some(&conn),
        &json!({"query": "SELECT id, ok FROM items ORDER BY id"}),
        &[
            "-H",
            "Neon-Array-Mode: true",
            "-H",
            "Neon-Raw-Text-Output: true",
        ],
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rowAsArray"], true);
    assert_eq!(body["rows"], json!([["1", "t"], ["2", "f"]]));

    // A batch is one transaction: all of it, or none of it.
    let (status, body) = post(
        &url,
        Some(&conn),
        &json!({"queries": [
            {"query": "INSERT INTO items (id, name) VALUES ($1, $2)", "params": [3, "pear"]},
            {"query": "SELECT count(*) AS n FROM items"}
        ]}),
        &[],
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][1]["rows"][0]["n"], "3");
    let (status, body) = post(
        &url,
        Some(&conn),
        &json!({"queries": [
            {"query": "INSERT INTO items (id, name) VALUES (4, 'plum')"},
            {"query": "INSERT INTO items (id, name) VALUES (1, 'duplicate')"}
        ]}),
        &[],
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "23505", "{body}");
    assert_eq!(psql(&conn, "SELECT count(*) FROM items"), "3");

    // PostgreSQL's error fields.
    let (status, body) = post(
        &url,
        Some(&conn),
        &json!({"query": "SELECT * FROM nowhere"}),
        &[],
    );
    assert_eq!(status, 400);
    assert_eq!(body["code"], "42P01", "{body}");
    assert_eq!(body["severity"], "ERROR");
    assert!(
        body["message"]
            .as_str()
            .expect("message")
            .contains("nowhere"),
        "{body}"
    );

    // Authentication and routing as on the wire.
    let wrong = conn.replace(&password, "not-the-password");
    let (status, body) = post(&url, Some(&wrong), &json!({"query": "SELECT 1"}), &[]);
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("28P01")),
        "{body}"
    );
    let unknown = conn.replace(&endpoint, "ep-doesnotexist00");
    let (status, body) = post(&url, Some(&unknown), &json!({"query": "SELECT 1"}), &[]);
    assert_eq!(body["code"], "3D000", "{status} {body}");
    let unnamed = conn.split('?').next().expect("base").to_string();
    let (_, body) = post(&url, Some(&unnamed), &json!({"query": "SELECT 1"}), &[]);
    assert_eq!(body["code"], "08004", "{body}");
    let by_password = unnamed.replace(
        &format!(":{password}@"),
        &format!(":endpoint={endpoint}%3B{password}@"),
    );
    let (status, body) = post(
        &url,
        Some(&by_password),
        &json!({"query": "SELECT id FROM items WHERE id = 1"}),
        &[],
    );
    assert_eq!(
        (status, &body["rows"]),
        (200, &json!([{"id": 1}])),
        "{body}"
    );
    let (status, body) = post(&url, None, &json!({"query": "SELECT 1"}), &[]);
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("08P01")),
        "{body}"
    );
    let (status, body) = post(&url, Some(&conn), &json!({"nothing": 1}), &[]);
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("08P01")),
        "{body}"
    );

    // The endpoint named by the connection string's host.
    let host = format!("{endpoint}.localhost");
    let by_host = format!("postgres://omendb:{password}@{host}/omendb");
    let (status, body) = post(
        &url,
        Some(&by_host),
        &json!({"query": "SELECT count(*) AS n FROM items"}),
        &[],
    );
    assert_eq!(
        (status, &body["rows"]),
        (200, &json!([{"n": "3"}])),
        "{body}"
    );
    let (_, body) = post(
        &url,
        Some(&format!("{by_host}?options=endpoint%3Dep-other0000")),
        &json!({"query": "SELECT 1"}),
        &[],
    );
    assert_eq!(body["code"], "08004", "{body}");

    // HTTPS on the same port, the certificate verified (curl refuses the wildcard
    // `*.localhost`, so the request goes to `localhost` and the options name the endpoint).
    let https_url = url.replace("http://127.0.0.1:", "https://localhost:");
    let cert = dir.join("proxy").join("tls.crt");
    let tls_args = ["--cacert", &cert.display().to_string()];
    let (status, body) = post(
        &https_url,
        Some(&conn),
        &json!({"query": "SELECT count(*) AS n FROM items"}),
        &tls_args,
    );
    assert_eq!(
        (status, &body["rows"]),
        (200, &json!([{"n": "3"}])),
        "{body}"
    );

    // A suspended endpoint is woken by a request.
    let dir_arg = dir.display().to_string();
    let suspended = omendb(&["endpoint", "suspend", &endpoint, "--data-dir", &dir_arg]);
    assert!(suspended.success, "{suspended:?}");
    let (status, body) = post(
        &url,
        Some(&conn),
        &json!({"query": "SELECT max(id) AS m FROM items"}),
        &[],
    );
    assert_eq!((status, &body["rows"]), (200, &json!([{"m": 3}])), "{body}");

    cluster.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A function URL event (payload format 2.0) as AWS Lambda delivers it.
fn lambda_event(connection: &str, body: &Value) -> Value {
    json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": "/sql",
        "rawQueryString": "",
        "headers": {
            "content-type": "application/json",
            "neon-connection-string": connection,
            "host": "abcdefgh.lambda-url.eu-west-1.on.aws",
        },
        "requestContext": {
            "http": {"method": "POST", "path": "/sql", "protocol": "HTTP/1.1", "sourceIp": "203.0.113.7"},
            "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
            "timeEpoch": 1_795_000_000_000u64,
        },
        "body": body.to_string(),
        "isBase64Encoded": false,
    })
}

/// Invokes the Lambda handler as the runtime would, and reads its HTTP-shaped answer.
fn invoke(runtime: &tokio::runtime::Runtime, event: Value) -> (u16, Value) {
    let event = lambda_runtime::LambdaEvent::new(event, lambda_runtime::Context::default());
    let response = runtime
        .block_on(omendb_sql_lambda::handler(event))
        .expect("the handler answers");
    assert_eq!(response["headers"]["content-type"], "application/json");
    let body = serde_json::from_str(response["body"].as_str().expect("body")).expect("JSON body");
    (
        response["statusCode"].as_u64().expect("status") as u16,
        body,
    )
}

#[test]
fn the_lambda_handler_answers_function_url_events_through_the_proxy() {
    let dir = fresh_dir("sqlhttp", "lambda");
    let port = free_addr().port();
    let cluster = Launcher::start(&dir, port);
    let conn = cluster.url.clone();
    let password = password_of(&conn);
    psql(&conn, "CREATE TABLE notes (id int PRIMARY KEY, body text)");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");

    // Through the proxy's wire port: TLS (certificate checked against the cluster's), SCRAM.
    let cert = dir.join("proxy").join("tls.crt");
    let verified = format!("{conn}&sslmode=verify-full&sslrootcert={}", cert.display());
    let (status, body) = invoke(
        &runtime,
        lambda_event(
            &verified,
            &json!({"query": "INSERT INTO notes VALUES ($1, $2)", "params": [1, "from lambda"]}),
        ),
    );
    assert_eq!(
        (status, &body["command"]),
        (200, &json!("INSERT")),
        "{body}"
    );
    assert_eq!(psql(&conn, "SELECT body FROM notes"), "from lambda");

    // sslmode=require (the default): encrypted, certificate not checked; a batch.
    let (status, body) = invoke(
        &runtime,
        lambda_event(
            &conn,
            &json!({"queries": [
                {"query": "INSERT INTO notes VALUES (2, 'two')"},
                {"query": "SELECT id, body FROM notes ORDER BY id"}
            ]}),
        ),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["results"][1]["rows"],
        json!([{"id": 1, "body": "from lambda"}, {"id": 2, "body": "two"}])
    );

    // Errors carry PostgreSQL's fields: a wrong password, then bad SQL.
    let wrong = conn.replace(&password, "wrong-password");
    let (status, body) = invoke(
        &runtime,
        lambda_event(&wrong, &json!({"query": "SELECT 1"})),
    );
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("28P01")),
        "{body}"
    );
    let (status, body) = invoke(&runtime, lambda_event(&conn, &json!({"query": "SELEC 1"})));
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("42601")),
        "{body}"
    );
    // verify-full refuses a certificate it cannot check (the system bundle does not hold
    // the cluster's self-signed one).
    let unverifiable = format!("{conn}&sslmode=verify-full&sslrootcert=/nonexistent.pem");
    let (status, body) = invoke(
        &runtime,
        lambda_event(&unverifiable, &json!({"query": "SELECT 1"})),
    );
    assert_eq!(status, 400, "{body}");

    drop(runtime);
    cluster.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
