//! A throwaway PostgreSQL 15 server for tests that compare OmenDB with the real thing.
//!
//! `Postgres::start()` runs `initdb` into a fresh folder, starts the server on a free
//! port of 127.0.0.1 with `pg_ctl -w`, and `Drop` stops it (`pg_ctl stop -m immediate`)
//! and removes the folder. PostgreSQL refuses to run as root, so when the tests run as
//! root the folder is created under /tmp, handed to the `postgres` user, and the tools
//! run through `runuser -u postgres --`.
//!
//! Standard library only (plus `libc` for `geteuid`/`getpwnam`/`chown`).

#![allow(dead_code)]

use std::ffi::CString;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The OS user that owns the cluster when the tests run as root.
const PG_OS_USER: &str = "postgres";
/// The database superuser created by initdb (`-U`).
const PG_SUPERUSER: &str = "postgres";
/// Seconds pg_ctl waits for start/stop (`-t`).
const PG_CTL_WAIT_SECS: u64 = 60;
/// Upper bound for any one tool invocation (initdb, pg_ctl), enforced by us.
const TOOL_TIMEOUT: Duration = Duration::from_secs(120);
/// How many times to retry the start when the chosen port was taken in between.
const START_ATTEMPTS: usize = 3;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A running throwaway PostgreSQL server. Stopped and deleted on drop.
pub struct Postgres {
    /// Top folder: holds `data/`, the server log and the Unix socket.
    dir: PathBuf,
    /// The data directory (`-D`).
    data: PathBuf,
    port: u16,
    /// True when the tools run as the `postgres` OS user through runuser.
    as_pg_user: bool,
}

impl Postgres {
    /// Initializes and starts a fresh PostgreSQL server. Errors carry the tools' output.
    pub fn start() -> Result<Postgres, String> {
        let as_pg_user = unsafe { libc::geteuid() } == 0;
        let dir = unique_dir(as_pg_user);
        fs::create_dir_all(&dir)
            .map_err(|e| format!("postgres: cannot create {}: {e}", dir.display()))?;
        if as_pg_user {
            if let Err(e) = chown_to(&dir, PG_OS_USER) {
                let _ = fs::remove_dir_all(&dir);
                return Err(e);
            }
        }
        let mut pg = Postgres {
            data: dir.join("data"),
            dir,
            port: 0,
            as_pg_user,
        };
        // On error `pg` is dropped, which stops anything started and removes the folder.
        pg.initdb()?;
        let mut errors = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port()?;
            match pg.pg_ctl_start(port) {
                Ok(()) => {
                    pg.port = port;
                    return Ok(pg);
                }
                Err(e) => errors.push(e),
            }
        }
        Err(format!(
            "postgres: could not start the server after {START_ATTEMPTS} attempts:\n{}",
            errors.join("\n---\n")
        ))
    }

    /// The TCP port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A libpq / tokio-postgres connection URL for the `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://{PG_SUPERUSER}@127.0.0.1:{}/postgres", self.port)
    }

    /// Connection flags for `psql` (host, port, user, database).
    pub fn psql_args(&self) -> Vec<String> {
        vec![
            "-h".to_string(),
            "127.0.0.1".to_string(),
            "-p".to_string(),
            self.port.to_string(),
            "-U".to_string(),
            PG_SUPERUSER.to_string(),
            "-d".to_string(),
            "postgres".to_string(),
        ]
    }

    /// The folder holding the data directory, the server log and the socket.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server's log file (written by `pg_ctl -l`).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    fn initdb(&self) -> Result<(), String> {
        let data = path_str(&self.data)?;
        let args = [
            "-D",
            data.as_str(),
            "-E",
            "UTF8",
            "--locale=C",
            "-A",
            "trust",
            "-U",
            PG_SUPERUSER,
            "--no-sync",
        ];
        self.run_tool("initdb", &args)?;
        Ok(())
    }

    fn pg_ctl_start(&self, port: u16) -> Result<(), String> {
        let data = path_str(&self.data)?;
        let dir = path_str(&self.dir)?;
        let log = path_str(&self.log_path())?;
        let options = format!(
            "-c fsync=on -c synchronous_commit=on -c timezone=UTC \
             -c listen_addresses=127.0.0.1 -p {port} -k {dir}"
        );
        let wait = PG_CTL_WAIT_SECS.to_string();
        let args = [
            "start",
            "-w",
            "-t",
            wait.as_str(),
            "-D",
            data.as_str(),
            "-l",
            log.as_str(),
            "-o",
            options.as_str(),
        ];
        match self.run_tool("pg_ctl", &args) {
            Ok(_) => Ok(()),
            Err(e) => {
                // pg_ctl may have left a half-started server behind (e.g. timed out).
                self.stop();
                let log = fs::read_to_string(self.log_path()).unwrap_or_default();
                let _ = fs::remove_file(self.log_path());
                Err(format!("{e}\nserver log:\n{log}"))
            }
        }
    }

    /// Stops the server if it runs; best effort, never panics.
    fn stop(&self) {
        if !self.data.join("postmaster.pid").exists() {
            return;
        }
        let wait = PG_CTL_WAIT_SECS.to_string();
        let data = match path_str(&self.data) {
            Ok(d) => d,
            Err(_) => return,
        };
        let args = [
            "stop",
            "-m",
            "immediate",
            "-w",
            "-t",
            wait.as_str(),
            "-D",
            data.as_str(),
        ];
        if self.run_tool("pg_ctl", &args).is_ok() {
            return;
        }
        // Last resort: kill the postmaster named in postmaster.pid.
        if let Ok(pidfile) = fs::read_to_string(self.data.join("postmaster.pid")) {
            if let Some(pid) = pidfile
                .lines()
                .next()
                .and_then(|l| l.trim().parse::<i32>().ok())
            {
                if pid > 0 {
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
            }
        }
    }

    /// Runs one PostgreSQL tool (as the `postgres` user when we are root), bounded by
    /// `TOOL_TIMEOUT`. Returns its combined output, or an error with that output.
    fn run_tool(&self, tool: &str, args: &[&str]) -> Result<String, String> {
        let mut cmd = if self.as_pg_user {
            let mut c = Command::new("runuser");
            c.args(["-u", PG_OS_USER, "--", tool]);
            c
        } else {
            Command::new(tool)
        };
        cmd.args(args);
        // The postgres user may not be able to enter the caller's working directory.
        cmd.current_dir(&self.dir);
        // Keep the caller's PG* settings (PGDATA, PGPORT, PGOPTIONS, ...) out of it.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PG") {
                cmd.env_remove(&key);
            }
        }
        cmd.env("LC_ALL", "C");
        let shown = format!("{tool} {}", args.join(" "));
        run_bounded(cmd, &self.dir, &shown)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Runs `cmd` with stdin closed and stdout/stderr sent to one file in `dir` (a pipe could
/// be held open by the server that pg_ctl starts), killing it after `TOOL_TIMEOUT`.
fn run_bounded(mut cmd: Command, dir: &Path, shown: &str) -> Result<String, String> {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let out_path = dir.join(format!("tool-{n}.out"));
    let out = fs::File::create(&out_path)
        .map_err(|e| format!("postgres: cannot create {}: {e}", out_path.display()))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("postgres: cannot clone file handle: {e}"))?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("postgres: cannot run `{shown}`: {e} (is it on PATH?)"))?;
    let deadline = Instant::now() + TOOL_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!("timed out after {}s", TOOL_TIMEOUT.as_secs()));
            }
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(e) => break Err(format!("wait failed: {e}")),
        }
    };
    let output = fs::read_to_string(&out_path).unwrap_or_default();
    let _ = fs::remove_file(&out_path);
    match status {
        Ok(s) if s.success() => Ok(output),
        Ok(s) => Err(format!("postgres: `{shown}` failed ({s}):\n{output}")),
        Err(e) => Err(format!("postgres: `{shown}` {e}:\n{output}")),
    }
}

/// A new folder name: under /tmp when running as root (so the postgres user can reach
/// it), else under the system temp dir. Unique by pid, counter and time.
fn unique_dir(as_pg_user: bool) -> PathBuf {
    let base = if as_pg_user {
        PathBuf::from("/tmp")
    } else {
        std::env::temp_dir()
    };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    base.join(format!("omendb-pg-{}-{}-{}", std::process::id(), n, nanos))
}

/// Gives `path` to the OS user `user` (and that user's primary group).
fn chown_to(path: &Path, user: &str) -> Result<(), String> {
    let cuser = CString::new(user).map_err(|e| format!("postgres: bad user name: {e}"))?;
    let pw = unsafe { libc::getpwnam(cuser.as_ptr()) };
    if pw.is_null() {
        return Err(format!(
            "postgres: running as root but there is no `{user}` OS user to run PostgreSQL as"
        ));
    }
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    let cpath = CString::new(path_str(path)?)
        .map_err(|e| format!("postgres: bad path {}: {e}", path.display()))?;
    if unsafe { libc::chown(cpath.as_ptr(), uid, gid) } != 0 {
        return Err(format!(
            "postgres: chown {} to {user}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| format!("postgres: cannot bind 127.0.0.1:0 to find a free port: {e}"))?;
    let port = listener
        .local_addr()
        .map_err(|e| format!("postgres: local_addr: {e}"))?
        .port();
    drop(listener);
    Ok(port)
}

fn path_str(path: &Path) -> Result<String, String> {
    path.to_str()
        .map(str::to_string)
        .ok_or_else(|| format!("postgres: path is not UTF-8: {}", path.display()))
}
