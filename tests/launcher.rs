//! `omendb start`: the local cluster as a user runs it. It prints one connection string that
//! psql accepts, stops every child on SIGTERM, and finds its data again on the next start.

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
        .env("PGCONNECT_TIMEOUT", "10")
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
    assert_eq!(url, format!("postgres://omendb@127.0.0.1:{port}/omendb"));
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
