//! A real OmenDB cluster for tests: 3 safekeepers, a pageserver and a compute, each a
//! separate `omendb` process on 127.0.0.1, under one temporary folder. Each component can
//! be killed (SIGKILL), stopped (SIGTERM) and started again with the same addresses and
//! folders, which is what the fault tests need.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long a component may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
static COUNTER: AtomicU32 = AtomicU32::new(0);

pub const SAFEKEEPERS: [&str; 3] = ["safekeeper-1", "safekeeper-2", "safekeeper-3"];

pub struct Options {
    /// How long COMMIT waits for a safekeeper majority.
    pub commit_timeout_ms: u64,
    /// How often the pageserver uploads to the object store.
    pub checkpoint_interval_ms: u64,
    /// The pageserver's and safekeepers' `--object-store`; `None`: the folder
    /// `<cluster dir>/object-store`.
    pub object_store: Option<String>,
    /// Environment variables for every component (`AWS_*` settings for an S3 store).
    pub env: Vec<(String, String)>,
    /// More arguments for the pageserver.
    pub pageserver_args: Vec<String>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            commit_timeout_ms: 10_000,
            checkpoint_interval_ms: 200,
            object_store: None,
            env: Vec::new(),
            pageserver_args: Vec::new(),
        }
    }
}

struct Component {
    args: Vec<String>,
    addr: SocketAddr,
    child: Option<Child>,
}

pub struct Cluster {
    pub dir: PathBuf,
    binary: PathBuf,
    components: BTreeMap<String, Component>,
    env: Vec<(String, String)>,
}

/// First port handed out to test processes; below Linux's ephemeral range (32768 and up),
/// so no `bind(0)` anywhere picks one of them.
const TEST_PORT_FIRST: u16 = 20_000;
/// How many ports the test range holds.
const TEST_PORTS: u16 = 12_000;
static NEXT_PORT: AtomicU32 = AtomicU32::new(0);

/// A free loopback address for a test component. Ports come from a process-wide counter, so
/// two clusters of tests running at once never get the same one (a `bind(0)`-and-close
/// port could be taken by a parallel test before its component binds it).
pub fn free_addr() -> SocketAddr {
    let offset = (std::process::id() % 600) * 20;
    loop {
        let n = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
        let port = TEST_PORT_FIRST + ((offset + n) % TEST_PORTS as u32) as u16;
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            return listener.local_addr().expect("local addr");
        }
    }
}

impl Cluster {
    pub fn start(name: &str) -> Cluster {
        Cluster::start_with(name, Options::default())
    }

    pub fn start_with(name: &str, options: Options) -> Cluster {
        let mut cluster = Cluster::create(name, options);
        for name in cluster.names() {
            cluster.start_component(&name);
        }
        cluster
    }

    /// Lays out the cluster without starting anything.
    pub fn create(name: &str, options: Options) -> Cluster {
        let dir = std::env::temp_dir().join(format!(
            "omendb-test-{name}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("logs")).expect("create the test folder");
        let binary = PathBuf::from(env!("CARGO_BIN_EXE_omendb"));
        let timeline = format!(
            "{:032x}",
            0x0e0d_0000_0000_0000_0000_0000_0000_0001u128 + COUNTER.load(Ordering::Relaxed) as u128
        );
        let tenant = format!("{:032x}", 0x7e_0000_0000_0000_0000_0000_0000_0001u128);
        let object_store = options
            .object_store
            .clone()
            .unwrap_or_else(|| dir.join("object-store").display().to_string());
        let mut components = BTreeMap::new();
        let mut sk_addrs = Vec::new();
        for (i, sk) in SAFEKEEPERS.iter().enumerate() {
            let addr = free_addr();
            sk_addrs.push(addr.to_string());
            let args = vec![
                "safekeeper".into(),
                "--id".into(),
                (i + 1).to_string(),
                "--listen".into(),
                addr.to_string(),
                "--data-dir".into(),
                dir.join(sk).display().to_string(),
                "--object-store".into(),
                object_store.clone(),
            ];
            components.insert(
                sk.to_string(),
                Component {
                    args,
                    addr,
                    child: None,
                },
            );
        }
        let ps_addr = free_addr();
        let mut ps_args: Vec<String> = vec![
            "pageserver".into(),
            "--listen".into(),
            ps_addr.to_string(),
            "--data-dir".into(),
            dir.join("pageserver").display().to_string(),
            "--object-store".into(),
            object_store,
            "--safekeepers".into(),
            sk_addrs.join(","),
            "--tenant".into(),
            tenant,
            "--timeline".into(),
            timeline.clone(),
            "--checkpoint-interval-ms".into(),
            options.checkpoint_interval_ms.to_string(),
        ];
        ps_args.extend(options.pageserver_args.iter().cloned());
        components.insert(
            "pageserver".into(),
            Component {
                args: ps_args,
                addr: ps_addr,
                child: None,
            },
        );
        let pg_addr = free_addr();
        let compute_args = vec![
            "compute".into(),
            "--listen".into(),
            pg_addr.to_string(),
            "--safekeepers".into(),
            sk_addrs.join(","),
            "--pageserver".into(),
            ps_addr.to_string(),
            "--timeline".into(),
            timeline,
            "--commit-timeout-ms".into(),
            options.commit_timeout_ms.to_string(),
        ];
        components.insert(
            "compute".into(),
            Component {
                args: compute_args,
                addr: pg_addr,
                child: None,
            },
        );
        std::fs::create_dir_all(dir.join("object-store")).expect("create the object store folder");
        Cluster {
            dir,
            binary,
            components,
            env: options.env,
        }
    }

    /// Component names in start order.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = SAFEKEEPERS.iter().map(|s| s.to_string()).collect();
        names.push("pageserver".into());
        names.push("compute".into());
        names
    }

    pub fn url(&self) -> String {
        format!(
            "postgres://omendb@{}/omendb",
            self.components["compute"].addr
        )
    }

    /// The command-line arguments of the compute, listening on `listen` instead: a second
    /// compute for the same timeline.
    pub fn compute_args(&self, listen: SocketAddr) -> Vec<String> {
        let mut args = self.components["compute"].args.clone();
        let at = args
            .iter()
            .position(|a| a == "--listen")
            .expect("compute has --listen")
            + 1;
        args[at] = listen.to_string();
        args
    }

    /// Points the compute's `--safekeepers` at `addrs` (relays, say) instead of the
    /// safekeepers themselves, from its next start on. The pageserver still connects directly.
    pub fn set_compute_safekeepers(&mut self, addrs: &[SocketAddr]) {
        let list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
        let args = &mut self.components.get_mut("compute").expect("compute").args;
        let at = args
            .iter()
            .position(|a| a == "--safekeepers")
            .expect("compute has --safekeepers")
            + 1;
        args[at] = list.join(",");
    }

    /// Registers one more pageserver, `name`, for the same timeline and object store but its
    /// own tenant (so its own layers: it starts from LSN 0) and folder; start it with
    /// [`Cluster::start_component`].
    pub fn add_pageserver(&mut self, name: &str, tenant_hex: &str) -> SocketAddr {
        let addr = free_addr();
        let mut args = self.components["pageserver"].args.clone();
        let mut set = |flag: &str, value: String| {
            let at = args
                .iter()
                .position(|a| a == flag)
                .expect("pageserver flag")
                + 1;
            args[at] = value;
        };
        set("--listen", addr.to_string());
        set("--data-dir", self.dir.join(name).display().to_string());
        set("--tenant", tenant_hex.to_string());
        self.components.insert(
            name.to_string(),
            Component {
                args,
                addr,
                child: None,
            },
        );
        addr
    }

    /// The timeline id (hex) the cluster serves.
    pub fn timeline(&self) -> String {
        let args = &self.components["pageserver"].args;
        let at = args
            .iter()
            .position(|a| a == "--timeline")
            .expect("timeline")
            + 1;
        args[at].clone()
    }

    pub fn addr(&self, name: &str) -> SocketAddr {
        self.components[name].addr
    }

    pub fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{name}.log"))
    }

    /// The last lines of a component's log, for failure messages.
    pub fn log_tail(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.log_path(name)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Starts a component (again) and waits until it accepts connections.
    pub fn start_component(&mut self, name: &str) {
        let log_path = self.log_path(name);
        let binary = self.binary.clone();
        let component = self
            .components
            .get_mut(name)
            .unwrap_or_else(|| panic!("no component {name}"));
        assert!(component.child.is_none(), "{name} is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("open log");
        let child = Command::new(&binary)
            .args(&component.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        component.child = Some(child);
        let addr = component.addr;
        let deadline = Instant::now() + READY_TIMEOUT;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            let component = self.components.get_mut(name).expect("component");
            if let Some(status) = component
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "{name} exited with {status} while starting:\n{}",
                    self.log_tail(name)
                );
            }
            if Instant::now() > deadline {
                panic!("{name} did not start in time:\n{}", self.log_tail(name));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn pid(&self, name: &str) -> Option<u32> {
        self.components[name].child.as_ref().map(|c| c.id())
    }

    /// SIGKILLs a component and reaps it.
    pub fn kill(&mut self, name: &str) {
        if let Some(mut child) = self.components.get_mut(name).and_then(|c| c.child.take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGKILLs the named components at the same instant (every signal is sent before any
    /// is reaped), then reaps them.
    pub fn kill_many(&mut self, names: &[&str]) {
        let mut children: Vec<Child> = names
            .iter()
            .filter_map(|name| self.components.get_mut(*name).and_then(|c| c.child.take()))
            .collect();
        for child in &children {
            // SAFETY: signalling our own child processes.
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        }
        for child in &mut children {
            let _ = child.wait();
        }
    }

    /// SIGKILLs every process at once, then reaps them.
    pub fn kill_all(&mut self) {
        let mut children: Vec<Child> = self
            .components
            .values_mut()
            .filter_map(|c| c.child.take())
            .collect();
        for child in &children {
            // SAFETY: signalling our own child processes.
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        }
        for child in &mut children {
            let _ = child.wait();
        }
    }

    /// SIGTERMs a component and waits for it to exit; returns whether it exited cleanly.
    pub fn stop(&mut self, name: &str) -> bool {
        let Some(mut child) = self.components.get_mut(name).and_then(|c| c.child.take()) else {
            return true;
        };
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn component_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn object_store_dir(&self) -> PathBuf {
        self.dir.join("object-store")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_all();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("cluster folder kept for inspection: {}", self.dir.display());
        }
    }
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}
