//! `omendb start` as a user runs it, the `omendb branch` commands against it, and psql.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// How long `omendb start` may take to print its connection string.
const START_TIMEOUT: Duration = Duration::from_secs(180);
/// How long `omendb start` may take to stop on SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long psql may take to connect, in seconds: the proxy starts a suspended endpoint's
/// compute before it answers.
pub const PSQL_CONNECT_TIMEOUT_SECS: u32 = 60;
/// Environment variables that would point the `omendb` client commands elsewhere than the
/// data folder they are given.
const CLIENT_ENV: [&str; 3] = ["OMENDB_API", "OMENDB_API_TOKEN", "OMENDB_PROJECT"];

/// A running `omendb start`; killed (with its children) if dropped without `stop`.
pub struct Launcher {
    child: Option<Child>,
    pub data_dir: PathBuf,
    /// The connection string it printed: main's, through the proxy on `port`.
    pub url: String,
}

impl Launcher {
    /// Starts `omendb start` and waits for the connection string it prints.
    pub fn start(data_dir: &Path, port: u16) -> Launcher {
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
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut launcher = Launcher {
            child: Some(child),
            data_dir: data_dir.to_path_buf(),
            url: String::new(),
        };
        let line = rx
            .recv_timeout(START_TIMEOUT)
            .expect("omendb start printed its connection string");
        launcher.url = line.trim().to_string();
        assert!(
            launcher.url.starts_with("postgres://omendb:")
                && launcher
                    .url
                    .contains(&format!("@127.0.0.1:{port}/omendb?options=endpoint%3Dep-")),
            "omendb start printed {line:?}"
        );
        launcher
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn stop(mut self) {
        let mut child = self.child.take().expect("running");
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("wait for omendb start") {
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
}

impl Drop for Launcher {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Its children get SIGKILL when it dies (parent-death signal).
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What a command printed and whether it succeeded.
#[derive(Debug)]
pub struct Output {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `omendb <args>`, with the control plane found from `--data-dir` alone.
pub fn omendb(args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_omendb"));
    command
        .args(args)
        .env("RUST_LOG", "warn")
        .env("RUST_BACKTRACE", "0");
    for name in CLIENT_ENV {
        command.env_remove(name);
    }
    let output = command.output().expect("run omendb");
    Output {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs one statement with psql; its unaligned, tuples-only output, or psql's error.
pub fn try_psql(url: &str, sql: &str) -> Result<String, String> {
    let output = Command::new("psql")
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql, url])
        .env("PGCONNECT_TIMEOUT", PSQL_CONNECT_TIMEOUT_SECS.to_string())
        .output()
        .expect("run psql");
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// Runs one statement with psql; panics if it fails.
pub fn psql(url: &str, sql: &str) -> String {
    try_psql(url, sql).unwrap_or_else(|e| panic!("psql {url} {sql:?}: {e}"))
}

/// The endpoint id a connection string names (`ep-...`, from `options=endpoint%3D...`).
pub fn endpoint_of(url: &str) -> &str {
    let (_, rest) = url
        .split_once("options=endpoint%3D")
        .unwrap_or_else(|| panic!("{url:?} names no endpoint"));
    rest.split('&').next().unwrap_or(rest)
}

/// The password in a connection string the control plane printed (role `omendb`).
pub fn password_of(url: &str) -> &str {
    let rest = url
        .strip_prefix("postgres://omendb:")
        .unwrap_or_else(|| panic!("{url:?} is not a string for role omendb"));
    rest.split('@').next().unwrap_or(rest)
}

/// `time` in RFC 3339, UTC, with microseconds: `2024-05-01T12:00:00.123456Z`.
pub fn rfc3339_utc(time: SystemTime) -> String {
    let since_epoch = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970");
    let secs = since_epoch.as_secs();
    let (days, secs_of_day) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        secs_of_day / 3600,
        secs_of_day / 60 % 60,
        secs_of_day % 60,
        since_epoch.subsec_micros()
    )
}

/// Live processes (not zombies) whose command line mentions `needle`, as "pid: cmdline".
pub fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains(needle) && !text.contains("cargo") {
            let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
            if !status
                .lines()
                .any(|l| l.starts_with("State:") && l.contains('Z'))
            {
                found.push(format!("{}: {text}", entry.file_name().to_string_lossy()));
            }
        }
    }
    found
}

/// `omendb <args> --data-dir DIR --json`, parsed; panics if it fails.
pub fn cli_json(dir: &Path, args: &[&str]) -> serde_json::Value {
    let dir = dir.display().to_string();
    let mut all = args.to_vec();
    all.extend(["--data-dir", &dir, "--json"]);
    let output = omendb(&all);
    assert!(output.success, "omendb {args:?}: {output:?}");
    serde_json::from_str(&output.stdout).expect("--json prints JSON")
}

/// An empty folder `<tmp>/omendb-<suite>-<name>-<pid>` for one test.
pub fn fresh_dir(suite: &str, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("omendb-{suite}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create test dir");
    dir
}
