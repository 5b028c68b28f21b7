//! `omendb start`: the local cluster as a user runs it. It prints one connection string (the
//! local project's main branch, through the proxy, with the owner role's password) that psql
//! accepts, stops every child on SIGTERM, and finds its data and prints the same string
//! again on the next start.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Starts `omendb start` and returns it with the line it printed.
fn start(data_dir: &std::path::Path, port: u16) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_omendb"))
        .args([
            "start",
            "--data-dir",
            &data_dir.display().to_string(),
            "--port",
            &port.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn omendb start");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("omendb start printed its connection string");
    (child, line.trim().to_string())
}

fn psql(url: &str, sql: &str) -> String {
    let output = Command::new("psql")
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql, url])
        .env(
            "PGCONNECT_TIMEOUT",
            support::launcher::PSQL_CONNECT_TIMEOUT_SECS.to_string(),
        )
        .output()
        .expect("run psql");
    assert!(
        output.status.success(),
        "psql {sql:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

fn stop(mut child: Child) {
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "omendb start exited with {status}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "omendb start did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn start_prints_a_url_stops_cleanly_and_finds_its_data_again() {
    let data_dir = std::env::temp_dir().join(format!("omendb-launcher-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    let port = support::cluster::free_addr().port();

    let (child, url) = start(&data_dir, port);
    // postgres://omendb:<password>@127.0.0.1:<port>/omendb?options=endpoint%3Dep-<id>
    let rest = url
        .strip_prefix("postgres://omendb:")
        .unwrap_or_else(|| panic!("omendb start printed {url:?}"));
    let (password, rest) = rest
        .split_once(&format!("@127.0.0.1:{port}/omendb?options=endpoint%3Dep-"))
        .unwrap_or_else(|| panic!("omendb start printed {url:?}"));
    assert!(
        password.len() == 24 && password.bytes().all(|b| b.is_ascii_alphanumeric()),
        "a 24-character password: {url:?}"
    );
    assert!(
        rest.len() == 16
            && rest
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
        "an endpoint id: {url:?}"
    );
    let endpoints: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(data_dir.join("control-plane.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(endpoints["postgres"], format!("127.0.0.1:{port}"));
    assert!(
        endpoints["api"]
            .as_str()
            .is_some_and(|api| api.starts_with("http://127.0.0.1:")),
        "{endpoints}"
    );
    assert!(
        endpoints["project"].as_str().is_some_and(|p| !p.is_empty()),
        "{endpoints}"
    );
    // The password is checked (SCRAM-SHA-256 at the proxy).
    let wrong = url.replacen(password, &"x".repeat(24), 1);
    let refused = Command::new("psql")
        .args(["-X", "-w", "-A", "-t", "-c", "SELECT 1", &wrong])
        .env(
            "PGCONNECT_TIMEOUT",
            support::launcher::PSQL_CONNECT_TIMEOUT_SECS.to_string(),
        )
        .output()
        .expect("run psql");
    assert!(!refused.status.success(), "a wrong password is refused");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("password authentication failed"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    psql(&url, "CREATE TABLE kept (id int PRIMARY KEY, name text)");
    psql(&url, "INSERT INTO kept VALUES (1, 'first'), (2, 'second')");
    assert_eq!(
        psql(&url, "SELECT name FROM kept ORDER BY id"),
        "first\nsecond"
    );
    stop(child);
    let left = support::launcher::processes_mentioning(&data_dir.display().to_string());
    assert!(left.is_empty(), "children left running: {left:?}");
    for name in [
        "safekeeper-1",
        "safekeeper-2",
        "safekeeper-3",
        "pageserver",
        "object-store",
        "logs",
        "control-plane.db",
        "control-plane.json",
        "admin-token",
    ] {
        assert!(
            data_dir.join(name).exists(),
            "{name} is under the data folder"
        );
    }

    let (child, url_again) = start(&data_dir, port);
    assert_eq!(url_again, url);
    assert_eq!(
        psql(&url, "SELECT name FROM kept ORDER BY id"),
        "first\nsecond"
    );
    stop(child);
    let _ = std::fs::remove_dir_all(&data_dir);
}

#[test]
fn start_help_documents_every_flag() {
    let output = Command::new(env!("CARGO_BIN_EXE_omendb"))
        .args(["start", "--help"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--data-dir",
        "--port",
        "--api-port",
        "--tls-cert",
        "--tls-key",
        "--domain",
        "--object-store",
        "--commit-timeout-ms",
        "--help",
    ] {
        assert!(
            help.contains(flag),
            "--help does not mention {flag}:\n{help}"
        );
    }
}
