//! The local cluster launcher behind `omendb start`.
//!
//! Starts 3 safekeepers, 1 pageserver and the compute for branch `main` as separate OS
//! processes (the same `omendb` binary with other subcommands) on 127.0.0.1, all state under
//! one data folder:
//!
//! ```text
//! <data-dir>/cluster.json        tenant and timeline ids (made on first start)
//! <data-dir>/omendb.lock         held while a cluster runs on this folder
//! <data-dir>/safekeeper-<n>/     each safekeeper's WAL
//! <data-dir>/pageserver/         the pageserver's local cache
//! <data-dir>/object-store/       the object store, unless `--object-store` names another
//! <data-dir>/logs/<name>.log     each process's log
//! ```
//!
//! Prints one `postgres://` line once the compute accepts connections and stays in the
//! foreground. A child that dies is started again. SIGINT or SIGTERM stops the compute, then
//! the pageserver (which uploads what it has), then the safekeepers, and returns.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use ids::{TenantId, TimelineId};
use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};
use tracing::{info, warn};

/// Number of safekeepers in a local cluster.
pub const SAFEKEEPERS: usize = 3;
/// How long each component may take to start accepting connections.
pub const READY_TIMEOUT_MS: u64 = 60_000;
/// How long a component may take to stop after SIGTERM before it is killed.
pub const STOP_TIMEOUT_MS: u64 = 15_000;
/// Pause before restarting a child that died.
pub const RESTART_DELAY_MS: u64 = 1_000;
const CLUSTER_FILE_VERSION: u32 = 1;

pub struct StartConfig {
    pub data_dir: PathBuf,
    /// Port for PostgreSQL clients.
    pub port: u16,
    /// The object store, passed to each component as given: a local folder, `file://` URL or
    /// `s3://bucket/prefix` (default: the folder `<data-dir>/object-store`).
    pub object_store: Option<String>,
    pub commit_timeout_ms: u64,
    /// The `omendb` binary to start the components with.
    pub binary: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct ClusterFile {
    version: u32,
    tenant: String,
    timeline: String,
}

fn random_u128() -> u128 {
    let mut value = 0u128;
    for _ in 0..2 {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        );
        hasher.write_u32(std::process::id());
        value = (value << 64) | hasher.finish() as u128;
    }
    value
}

/// Picks `n` distinct free loopback ports. The probe listeners are all held until every
/// port is chosen, so the kernel cannot hand the same port out twice.
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<Vec<_>, _>>()?)
}

/// Reads the cluster's ids, making them on first start.
fn load_or_init(data_dir: &Path) -> anyhow::Result<(TenantId, TimelineId)> {
    let path = data_dir.join("cluster.json");
    if path.exists() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let file: ClusterFile = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a valid cluster file", path.display()))?;
        if file.version != CLUSTER_FILE_VERSION {
            bail!(
                "{} has version {}, this build reads version {CLUSTER_FILE_VERSION}",
                path.display(),
                file.version
            );
        }
        return Ok((file.tenant.parse()?, file.timeline.parse()?));
    }
    let tenant = TenantId::from_u128(random_u128());
    let timeline = TimelineId::from_u128(random_u128());
    let file = ClusterFile {
        version: CLUSTER_FILE_VERSION,
        tenant: tenant.to_string(),
        timeline: timeline.to_string(),
    };
    let tmp = data_dir.join("cluster.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&file)?)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(data_dir)?.sync_all()?;
    Ok((tenant, timeline))
}

/// Holds an exclusive lock on the data folder for the cluster's lifetime.
fn lock_data_dir(data_dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = data_dir.join("omendb.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    // SAFETY: flock on a file descriptor we own; no memory is shared.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        bail!(
            "the data folder {} is in use by another omendb start",
            data_dir.display()
        );
    }
    Ok(file)
}

struct Component {
    name: String,
    args: Vec<String>,
    addr: SocketAddr,
    log: PathBuf,
    child: Option<Child>,
}

impl Component {
    fn spawn(&mut self, binary: &Path) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut command = Command::new(binary);
        command
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: prctl in the forked child before exec; it touches no shared state. The
        // child gets SIGKILL if the launcher dies, so no orphan outlives the cluster.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", self.name))?;
        info!(name = %self.name, pid = child.id(), "started");
        self.child = Some(child);
        Ok(())
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(READY_TIMEOUT_MS);
        loop {
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "{} exited with {status} while starting; see {}",
                        self.name,
                        self.log.display()
                    );
                }
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "{} did not start within {READY_TIMEOUT_MS} ms; see {}",
                    self.name,
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            // SAFETY: sending a signal to our own child process.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        match tokio::time::timeout(Duration::from_millis(STOP_TIMEOUT_MS), child.wait()).await {
            Ok(_) => info!(name = %self.name, "stopped"),
            Err(_) => {
                warn!(name = %self.name, "did not stop in time; killing it");
                let _ = child.kill().await;
            }
        }
    }
}

/// Runs the local cluster until SIGINT or SIGTERM.
pub async fn start(config: StartConfig) -> anyhow::Result<()> {
    let data_dir = &config.data_dir;
    std::fs::create_dir_all(data_dir.join("logs"))
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let data_dir = data_dir.canonicalize()?;
    let _lock = lock_data_dir(&data_dir)?;
    let (tenant, timeline) = load_or_init(&data_dir)?;
    let object_store = match &config.object_store {
        Some(spec) => spec.clone(),
        None => {
            let dir = data_dir.join("object-store");
            std::fs::create_dir_all(&dir)?;
            dir.display().to_string()
        }
    };

    let log = |name: &str| data_dir.join("logs").join(format!("{name}.log"));
    let mut components = Vec::new();
    let mut safekeeper_addrs = Vec::new();
    let ports = free_ports(SAFEKEEPERS + 1)?;
    for n in 1..=SAFEKEEPERS {
        let addr: SocketAddr = format!("127.0.0.1:{}", ports[n - 1]).parse()?;
        safekeeper_addrs.push(addr.to_string());
        components.push(Component {
            name: format!("safekeeper-{n}"),
            args: vec![
                "safekeeper".into(),
                "--id".into(),
                n.to_string(),
                "--listen".into(),
                addr.to_string(),
                "--data-dir".into(),
                data_dir
                    .join(format!("safekeeper-{n}"))
                    .display()
                    .to_string(),
                "--object-store".into(),
                object_store.clone(),
            ],
            addr,
            log: log(&format!("safekeeper-{n}")),
            child: None,
        });
    }
    let safekeepers = safekeeper_addrs.join(",");
    let pageserver_addr: SocketAddr = format!("127.0.0.1:{}", ports[SAFEKEEPERS]).parse()?;
    components.push(Component {
        name: "pageserver".into(),
        args: vec![
            "pageserver".into(),
            "--listen".into(),
            pageserver_addr.to_string(),
            "--data-dir".into(),
            data_dir.join("pageserver").display().to_string(),
            "--object-store".into(),
            object_store.clone(),
            "--safekeepers".into(),
            safekeepers.clone(),
            "--tenant".into(),
            tenant.to_string(),
            "--timeline".into(),
            timeline.to_string(),
        ],
        addr: pageserver_addr,
        log: log("pageserver"),
        child: None,
    });
    let compute_addr: SocketAddr = format!("127.0.0.1:{}", config.port).parse()?;
    components.push(Component {
        name: "compute".into(),
        args: vec![
            "compute".into(),
            "--listen".into(),
            compute_addr.to_string(),
            "--safekeepers".into(),
            safekeepers,
            "--pageserver".into(),
            pageserver_addr.to_string(),
            "--timeline".into(),
            timeline.to_string(),
            "--commit-timeout-ms".into(),
            config.commit_timeout_ms.to_string(),
        ],
        addr: compute_addr,
        log: log("compute"),
        child: None,
    });

    let result = run_components(&config, &mut components, compute_addr).await;
    for component in components.iter_mut().rev() {
        component.stop().await;
    }
    result
}

async fn run_components(
    config: &StartConfig,
    components: &mut [Component],
    compute_addr: SocketAddr,
) -> anyhow::Result<()> {
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    for component in components.iter_mut() {
        component.spawn(&config.binary)?;
        tokio::select! {
            ready = component.wait_ready() => ready?,
            _ = &mut shutdown => return Ok(()),
        }
    }
    println!("postgres://omendb@{compute_addr}/omendb");
    loop {
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(RESTART_DELAY_MS)) => {}
        }
        for component in components.iter_mut() {
            let exited = match component.child.as_mut() {
                Some(child) => child.try_wait()?,
                None => None,
            };
            if let Some(status) = exited {
                warn!(name = %component.name, %status, "exited; starting it again");
                component.spawn(&config.binary)?;
            }
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
