//! The proxy and the control-plane API of `omendb start`, as users reach them: psql through
//! the proxy (SCRAM over TLS, endpoints by options, TLS server name or password), the API
//! with project-scoped tokens, and scale to zero.

mod support;

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::cluster::free_addr;
use support::launcher::{
    cli_json, endpoint_of, fresh_dir, omendb, password_of, processes_mentioning, psql, try_psql,
    Launcher,
};

/// One HTTP/1.1 request to the API: (status, JSON body).
fn http(dir: &Path, method: &str, path: &str, token: Option<&str>) -> (u16, Value) {
    let file = std::fs::read_to_string(dir.join("control-plane.json")).expect("control-plane.json");
    let cluster: Value = serde_json::from_str(&file).expect("JSON");
    let api = cluster["api"].as_str().expect("api url");
    let addr = api.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the API");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let status: u16 = response[9..12].parse().expect("status code");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or("");
    (status, serde_json::from_str(body).expect("JSON body"))
}

/// A libpq connection string naming the endpoint by TLS server name only.
fn sni_url(port: u16, endpoint: &str, password: &str) -> String {
    format!(
        "host={endpoint}.localhost hostaddr=127.0.0.1 port={port} sslmode=require \
         user=omendb password={password} dbname=omendb"
    )
}

#[test]
fn the_proxy_routes_authenticates_and_keeps_projects_apart() {
    let dir = fresh_dir("proxy", "isolation");
    let port = free_addr().port();
    let cluster = Launcher::start(&dir, port);
    let url_a = cluster.url.clone();
    psql(&url_a, "CREATE TABLE whoami (p text PRIMARY KEY)");
    psql(&url_a, "INSERT INTO whoami VALUES ('a')");
    let local = cli_json(&dir, &["project", "list"]);
    let project_a = local["projects"][0]["id"].as_str().expect("id").to_string();

    // A second project, with its own token, endpoint and password.
    let created = cli_json(&dir, &["project", "create", "--name", "b"]);
    let project_b = created["project"]["id"].as_str().expect("id").to_string();
    let token_b = created["token"]["token"]
        .as_str()
        .expect("token")
        .to_string();
    let url_b = created["connection_uri"].as_str().expect("uri").to_string();
    psql(&url_b, "CREATE TABLE whoami (p text PRIMARY KEY)");
    psql(&url_b, "INSERT INTO whoami VALUES ('b')");
    assert_eq!(psql(&url_a, "SELECT p FROM whoami"), "a");
    assert_eq!(psql(&url_b, "SELECT p FROM whoami"), "b");
    let token_a = cli_json(&dir, &["token", "create"])["token"]["token"]
        .as_str()
        .expect("token")
        .to_string();

    // Tokens reach their own project only.
    let (status, _) = http(
        &dir,
        "GET",
        &format!("/v1/projects/{project_b}"),
        Some(&token_b),
    );
    assert_eq!(status, 200);
    let (status, body) = http(
        &dir,
        "GET",
        &format!("/v1/projects/{project_b}"),
        Some(&token_a),
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["kind"], "forbidden");
    let (status, _) = http(
        &dir,
        "GET",
        &format!("/v1/projects/{project_b}/branches"),
        Some(&token_a),
    );
    assert_eq!(status, 403);
    let (status, _) = http(
        &dir,
        "GET",
        "/v1/projects/prj-doesnotexist00",
        Some(&token_a),
    );
    assert_eq!(
        status, 403,
        "a project token cannot probe for other projects"
    );
    let (status, _) = http(&dir, "GET", &format!("/v1/projects/{project_a}"), None);
    assert_eq!(status, 401);
    let (status, _) = http(
        &dir,
        "GET",
        &format!("/v1/projects/{project_a}"),
        Some("omendb_forged"),
    );
    assert_eq!(status, 401);
    let (status, body) = http(&dir, "GET", "/v1/projects", Some(&token_a));
    assert_eq!(status, 200);
    let listed: Vec<&str> = body["projects"]
        .as_array()
        .expect("array")
        .iter()
        .map(|p| p["id"].as_str().expect("id"))
        .collect();
    assert_eq!(listed, [project_a.as_str()]);
    let (status, _) = http(&dir, "POST", "/v1/projects", Some(&token_a));
    assert_eq!(status, 403, "only an admin token creates projects");
    let (status, document) = http(&dir, "GET", "/v1/openapi.json", None);
    assert_eq!(status, 200);
    assert_eq!(document["openapi"], "3.0.3");

    let (endpoint_a, password_a) = (endpoint_of(&url_a), password_of(&url_a));
    let (endpoint_b, password_b) = (endpoint_of(&url_b), password_of(&url_b));
    assert_ne!(password_a, password_b);

    // Wrong password; the other project's password; an unknown endpoint.
    // sslmode=require: one attempt each (with "prefer", psql tries again without TLS, and
    // each attempt counts as a failed login).
    let wrong = url_a.replace(&password_a, "wrong") + "&sslmode=require";
    let e = try_psql(&wrong, "SELECT 1").expect_err("wrong password");
    assert!(
        e.contains("password authentication failed for user \"omendb\""),
        "{e}"
    );
    let crossed = url_a.replace(&password_a, &password_b) + "&sslmode=require";
    let e = try_psql(&crossed, "SELECT 1").expect_err("project B's password on A");
    assert!(e.contains("password authentication failed"), "{e}");
    let unknown = url_a.replace(&endpoint_a, "ep-doesnotexist0000");
    let e = try_psql(&unknown, "SELECT 1").expect_err("unknown endpoint");
    assert!(
        e.contains("endpoint ep-doesnotexist0000 does not exist"),
        "{e}"
    );
    let unknown_role =
        url_a.replace("postgres://omendb:", "postgres://nobody:") + "&sslmode=require";
    let e = try_psql(&unknown_role, "SELECT 1").expect_err("unknown role");
    assert!(
        e.contains("password authentication failed for user \"nobody\""),
        "{e}"
    );
    let no_endpoint =
        format!("postgres://omendb:{password_a}@127.0.0.1:{port}/omendb?sslmode=disable");
    let e = try_psql(&no_endpoint, "SELECT 1").expect_err("no endpoint");
    assert!(e.contains("the endpoint is not specified"), "{e}");

    // The TLS server name routes; it must agree with the options.
    assert_eq!(
        psql(
            &sni_url(port, &endpoint_b, &password_b),
            "SELECT p FROM whoami"
        ),
        "b"
    );
    let mismatch = format!(
        "{} options=endpoint={endpoint_a}",
        sni_url(port, &endpoint_b, &password_b)
    );
    let e = try_psql(&mismatch, "SELECT 1").expect_err("SNI and options disagree");
    assert!(e.contains("inconsistent endpoint"), "{e}");
    assert!(e.contains(&endpoint_a) && e.contains(&endpoint_b), "{e}");

    // The password can name the endpoint (over TLS).
    let hack = format!(
        "host=127.0.0.1 port={port} sslmode=require user=omendb dbname=omendb \
         password=endpoint={endpoint_b};{password_b}"
    );
    assert_eq!(psql(&hack, "SELECT p FROM whoami"), "b");
    let hack_crossed = format!(
        "host=127.0.0.1 port={port} sslmode=require user=omendb dbname=omendb \
         password=endpoint={endpoint_b};{password_a}"
    );
    let e = try_psql(&hack_crossed, "SELECT 1").expect_err("A's password for B's endpoint");
    assert!(e.contains("password authentication failed"), "{e}");

    // Failed logins are limited per endpoint and source: after five, even the right
    // password is refused for a while; another endpoint is unaffected.
    let wrong_b = url_b.replace(&password_b, "wrong") + "&sslmode=require";
    for _ in 0..5 {
        assert!(try_psql(&wrong_b, "SELECT 1").is_err());
    }
    let e = try_psql(&url_b, "SELECT 1").expect_err("locked out");
    assert!(e.contains("too many failed login attempts"), "{e}");
    assert_eq!(psql(&url_a, "SELECT p FROM whoami"), "a");

    // A project token cannot act on the other project through the CLI either.
    let refused = omendb(&[
        "branch",
        "list",
        "--data-dir",
        &dir.display().to_string(),
        "--token",
        &token_a,
        "--project",
        &project_b,
    ]);
    assert!(!refused.success);
    assert!(refused.stderr.contains("gives no access"), "{refused:?}");
    cluster.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

fn endpoint_state(dir: &Path, endpoint: &str) -> String {
    let listed = cli_json(dir, &["endpoint", "list"]);
    listed["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .find(|e| e["id"] == endpoint)
        .map(|e| e["state"].as_str().expect("state").to_string())
        .expect("the endpoint is listed")
}

#[test]
fn an_idle_endpoint_stops_and_the_next_connection_starts_it_with_every_commit() {
    let dir = fresh_dir("proxy", "scale-to-zero");
    let port = free_addr().port();
    let cluster = Launcher::start(&dir, port);
    let url = cluster.url.clone();
    let endpoint = endpoint_of(&url).to_string();
    let timeline = cli_json(&dir, &["branch", "list"])["branches"][0]["timeline"]
        .as_str()
        .expect("timeline")
        .to_string();
    psql(&url, "CREATE TABLE kept (id int PRIMARY KEY)");
    psql(
        &url,
        "INSERT INTO kept SELECT * FROM (VALUES (1), (2), (3)) v(id)",
    );
    assert_eq!(endpoint_state(&dir, &endpoint), "running");
    let running: Vec<String> = processes_mentioning(&timeline)
        .into_iter()
        .filter(|p| p.contains(" compute "))
        .collect();
    assert_eq!(running.len(), 1, "one compute runs: {running:?}");

    cli_json(
        &dir,
        &["endpoint", "set", &endpoint, "--idle-timeout-secs", "1"],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while endpoint_state(&dir, &endpoint) != "suspended" {
        assert!(
            Instant::now() < deadline,
            "not suspended after its idle timeout"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let left: Vec<String> = processes_mentioning(&timeline)
        .into_iter()
        .filter(|p| p.contains(" compute "))
        .collect();
    assert!(left.is_empty(), "the compute process is gone: {left:?}");

    // The next connection starts it again, and every commit is there.
    assert_eq!(psql(&url, "SELECT count(*) FROM kept"), "3");
    assert_eq!(endpoint_state(&dir, &endpoint), "running");
    let again: Vec<String> = processes_mentioning(&timeline)
        .into_iter()
        .filter(|p| p.contains(" compute "))
        .collect();
    assert_eq!(again.len(), 1, "{again:?}");
    assert_ne!(again, running, "a new process");
    psql(&url, "INSERT INTO kept VALUES (4)");

    // Suspended through the API, and woken by a connection.
    cli_json(
        &dir,
        &["endpoint", "set", &endpoint, "--idle-timeout-secs", "0"],
    );
    cli_json(&dir, &["endpoint", "suspend", &endpoint]);
    assert_eq!(endpoint_state(&dir, &endpoint), "suspended");
    assert_eq!(psql(&url, "SELECT sum(id) FROM kept"), "10");
    cluster.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_read_only_endpoint_follows_its_branch_and_refuses_writes() {
    let dir = fresh_dir("proxy", "read-only");
    let port = free_addr().port();
    let cluster = Launcher::start(&dir, port);
    let url = cluster.url.clone();
    psql(&url, "CREATE TABLE seen (id int PRIMARY KEY)");
    psql(&url, "INSERT INTO seen VALUES (1), (2)");

    let created = cli_json(&dir, &["endpoint", "create", "--read-only"]);
    assert_eq!(created["endpoint"]["type"], "read_only", "{created}");
    let replica = created["endpoint"]["id"].as_str().expect("id").to_string();
    let printed = omendb(&[
        "connection-string",
        "--endpoint",
        &replica,
        "--data-dir",
        &dir.display().to_string(),
    ]);
    assert!(printed.success, "{printed:?}");
    let replica_url = printed.stdout.trim().to_string();
    assert!(replica_url.contains(&replica), "{replica_url}");

    // It reads what the primary committed before it started...
    assert_eq!(psql(&replica_url, "SELECT sum(id) FROM seen"), "3");
    // ...refuses writes as a standby does...
    for write in [
        "INSERT INTO seen VALUES (3)",
        "CREATE TABLE other (id int PRIMARY KEY)",
        "DELETE FROM seen",
    ] {
        let refused = try_psql(&replica_url, write).expect_err("a write on a read-only endpoint");
        assert!(
            refused.contains("read-only transaction"),
            "{write}: {refused}"
        );
    }
    // ...and sees what the primary commits later, schema changes included.
    psql(&url, "INSERT INTO seen VALUES (3)");
    psql(&url, "CREATE TABLE later (v text PRIMARY KEY)");
    psql(&url, "INSERT INTO later VALUES ('x')");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sum = psql(&replica_url, "SELECT sum(id) FROM seen");
        let later = try_psql(&replica_url, "SELECT v FROM later");
        if sum == "6" && later.as_deref() == Ok("x") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replica did not catch up: sum {sum}, later {later:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Both computes run at once; the primary still writes.
    assert_eq!(endpoint_state(&dir, &replica), "running");
    psql(&url, "INSERT INTO seen VALUES (4)");
    assert_eq!(psql(&url, "SELECT count(*) FROM seen"), "4");
    cluster.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
