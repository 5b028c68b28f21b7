//! The local cluster launcher behind `omendb start`, and the branch commands it serves.
//!
//! Starts 3 safekeepers, 1 pageserver, the compute for branch `main` and one compute per
//! other branch as separate OS processes (the same `omendb` binary with other subcommands)
//! on 127.0.0.1, all state under one data folder:
//!
//! ```text
//! <data-dir>/cluster.json        tenant and timeline ids (made on first start)
//! <data-dir>/branches.json       the other branches (`registry`)
//! <data-dir>/omendb.lock         held while a cluster runs on this folder
//! <data-dir>/control.sock        the running launcher's control socket (`control`)
//! <data-dir>/safekeeper-<n>/     each safekeeper's WAL
//! <data-dir>/pageserver/         the pageserver's local cache
//! <data-dir>/object-store/       the object store, unless `--object-store` names another
//! <data-dir>/logs/<name>.log     each process's log (`compute-<branch>.log` for a branch)
//! ```
//!
//! On start it finishes or rolls back a branch operation a crash interrupted
//! (`branches::Branches::recover`), starts every branch's compute on the port recorded for
//! it, opens the control socket and prints one `postgres://` line (main's) once everything
//! accepts connections; it stays in the foreground. A child that dies is started again.
//! Requests on the control socket (`omendb branch create|list|delete`, see `client`) run
//! one at a time in the launcher's loop; supervision waits while one runs. SIGINT or SIGTERM
//! stops the computes, then the pageserver (which uploads what it has), then the
//! safekeepers, removes the socket and returns.

pub mod branches;
pub mod client;
pub mod control;
pub mod pageserver_admin;
pub mod registry;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use ids::{TenantId, TimelineId};
use pageserver_api::{BranchPoint, TimelineInfo};
use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tracing::{info, warn};

use branches::{connection_string, BranchBackend, BranchErrorKind, Branches};
use control::{ControlRequest, ControlResponse};
use pageserver_admin::{PageserverAdmin, PageserverCallError};
use registry::{write_atomically, BranchEntry};

/// Number of safekeepers in a local cluster.
pub const SAFEKEEPERS: usize = 3;
/// How long each component may take to start accepting connections.
pub const READY_TIMEOUT_MS: u64 = 60_000;
/// How long a component may take to stop after SIGTERM before it is killed.
pub const STOP_TIMEOUT_MS: u64 = 15_000;
/// Pause before restarting a child that died.
pub const RESTART_DELAY_MS: u64 = 1_000;
/// Ports tried beyond those needed when looking for free ones outside the recorded ones.
pub const FREE_PORT_TRIES_MAX: usize = 100;
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

pub(crate) fn random_u128() -> u128 {
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

/// Picks `n` distinct free loopback ports, none of them in `taken` (ports recorded for
/// computes that are not listening yet). The probe listeners are all held until every port
/// is chosen, so the kernel cannot hand the same port out twice.
fn free_ports(n: usize, taken: &[u16]) -> anyhow::Result<Vec<u16>> {
    let mut held = Vec::new();
    let mut chosen = Vec::new();
    for _ in 0..n + FREE_PORT_TRIES_MAX {
        if chosen.len() == n {
            break;
        }
        let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
        let port = listener.local_addr()?.port();
        if !taken.contains(&port) {
            chosen.push(port);
        }
        held.push(listener);
    }
    if chosen.len() < n {
        bail!("no {n} free ports outside those already recorded in {FREE_PORT_TRIES_MAX} tries");
    }
    Ok(chosen)
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
    write_atomically(&path, &serde_json::to_vec_pretty(&file)?)
        .with_context(|| format!("writing {}", path.display()))?;
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
    let mut branches = Branches::open(&data_dir, tenant, timeline, config.port)?;
    for entry in &branches.registry().branches {
        if entry.port == config.port {
            warn!(
                branch = %entry.name,
                "branch {} has port {}, which --port gives main now; its compute cannot start",
                entry.name,
                entry.port
            );
        }
    }
    let object_store = match &config.object_store {
        Some(spec) => spec.clone(),
        None => {
            let dir = data_dir.join("object-store");
            std::fs::create_dir_all(&dir)?;
            dir.display().to_string()
        }
    };

    let log_dir = data_dir.join("logs");
    let log = |name: &str| log_dir.join(format!("{name}.log"));
    let mut safekeepers = Vec::new();
    let mut safekeeper_addrs = Vec::new();
    let mut recorded_ports: Vec<u16> = branches
        .registry()
        .branches
        .iter()
        .map(|b| b.port)
        .collect();
    recorded_ports.push(config.port);
    let ports = free_ports(SAFEKEEPERS + 1, &recorded_ports)?;
    for n in 1..=SAFEKEEPERS {
        let addr: SocketAddr = format!("127.0.0.1:{}", ports[n - 1]).parse()?;
        safekeeper_addrs.push(addr.to_string());
        safekeepers.push(Component {
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
    let safekeepers_arg = safekeeper_addrs.join(",");
    let pageserver_addr: SocketAddr = format!("127.0.0.1:{}", ports[SAFEKEEPERS]).parse()?;
    let pageserver = Component {
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
            safekeepers_arg.clone(),
            "--tenant".into(),
            tenant.to_string(),
            "--timeline".into(),
            timeline.to_string(),
        ],
        addr: pageserver_addr,
        log: log("pageserver"),
        child: None,
    };
    let computes = ComputeSettings {
        safekeepers: safekeepers_arg,
        pageserver: pageserver_addr,
        commit_timeout_ms: config.commit_timeout_ms,
    };
    let main_compute =
        computes.component("compute".into(), timeline, config.port, log("compute"))?;
    let mut processes = Processes {
        binary: config.binary.clone(),
        log_dir: log_dir.clone(),
        safekeepers,
        pageserver,
        main_compute,
        branch_computes: Vec::new(),
        computes,
        pageserver_admin: PageserverAdmin::new(pageserver_addr),
    };

    let mut socket_bound = false;
    let result = run(&data_dir, &mut processes, &mut branches, &mut socket_bound).await;
    processes.stop_all().await;
    if socket_bound {
        let _ = std::fs::remove_file(control::socket_path(&data_dir));
    }
    result
}

/// How computes are started: what every compute's command line shares.
struct ComputeSettings {
    safekeepers: String,
    pageserver: SocketAddr,
    commit_timeout_ms: u64,
}

impl ComputeSettings {
    fn component(
        &self,
        name: String,
        timeline: TimelineId,
        port: u16,
        log: PathBuf,
    ) -> anyhow::Result<Component> {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        Ok(Component {
            name,
            args: vec![
                "compute".into(),
                "--listen".into(),
                addr.to_string(),
                "--safekeepers".into(),
                self.safekeepers.clone(),
                "--pageserver".into(),
                self.pageserver.to_string(),
                "--timeline".into(),
                timeline.to_string(),
                "--commit-timeout-ms".into(),
                self.commit_timeout_ms.to_string(),
            ],
            addr,
            log,
            child: None,
        })
    }
}

/// The cluster's child processes. Each is restarted when it dies; at shutdown the computes
/// (branches', then main's) stop first, then the pageserver (which uploads what it has), then
/// the safekeepers.
struct Processes {
    binary: PathBuf,
    log_dir: PathBuf,
    safekeepers: Vec<Component>,
    pageserver: Component,
    main_compute: Component,
    /// Named `compute-<branch>`, in the order they started.
    branch_computes: Vec<Component>,
    computes: ComputeSettings,
    pageserver_admin: PageserverAdmin,
}

fn branch_compute_name(branch: &str) -> String {
    format!("compute-{branch}")
}

impl Processes {
    fn all_mut(&mut self) -> impl Iterator<Item = &mut Component> {
        self.safekeepers
            .iter_mut()
            .chain(std::iter::once(&mut self.pageserver))
            .chain(std::iter::once(&mut self.main_compute))
            .chain(self.branch_computes.iter_mut())
    }

    /// Starts every child that has died since the last look.
    fn restart_exited(&mut self) -> anyhow::Result<()> {
        let binary = self.binary.clone();
        for component in self.all_mut() {
            let exited = match component.child.as_mut() {
                Some(child) => child.try_wait()?,
                None => None,
            };
            if let Some(status) = exited {
                warn!(name = %component.name, %status, "exited; starting it again");
                component.spawn(&binary)?;
            }
        }
        Ok(())
    }

    async fn stop_all(&mut self) {
        for component in self.branch_computes.iter_mut().rev() {
            component.stop().await;
        }
        self.main_compute.stop().await;
        self.pageserver.stop().await;
        for component in self.safekeepers.iter_mut().rev() {
            component.stop().await;
        }
    }
}

impl BranchBackend for Processes {
    async fn create_timeline(
        &mut self,
        tenant: TenantId,
        timeline: TimelineId,
        ancestor: TimelineId,
        point: BranchPoint,
    ) -> Result<TimelineInfo, PageserverCallError> {
        self.pageserver_admin
            .create_timeline(tenant, timeline, ancestor, point)
            .await
    }

    async fn delete_timeline(&mut self, timeline: TimelineId) -> Result<(), PageserverCallError> {
        self.pageserver_admin.delete_timeline(timeline).await
    }

    async fn start_compute(&mut self, branch: &BranchEntry) -> anyhow::Result<()> {
        let name = branch_compute_name(&branch.name);
        self.stop_compute(&branch.name).await;
        let log = self.log_dir.join(format!("{name}.log"));
        let mut component = self
            .computes
            .component(name, branch.timeline, branch.port, log)?;
        component.spawn(&self.binary)?;
        // Supervised from here on, also if it does not become ready: the caller decides
        // whether to stop it.
        self.branch_computes.push(component);
        let component = self.branch_computes.last_mut().expect("pushed above");
        component.wait_ready().await
    }

    async fn stop_compute(&mut self, branch: &str) {
        let name = branch_compute_name(branch);
        if let Some(index) = self.branch_computes.iter().position(|c| c.name == name) {
            let mut component = self.branch_computes.remove(index);
            component.stop().await;
        }
    }

    fn free_port(&mut self, taken: &[u16]) -> anyhow::Result<u16> {
        let mut taken = taken.to_vec();
        taken.extend(self.all_mut().map(|component| component.addr.port()));
        Ok(free_ports(1, &taken)?[0])
    }

    fn new_timeline_id(&mut self) -> TimelineId {
        TimelineId::from_u128(random_u128())
    }
}

async fn run(
    data_dir: &Path,
    processes: &mut Processes,
    branches: &mut Branches,
    socket_bound: &mut bool,
) -> anyhow::Result<()> {
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let binary = processes.binary.clone();
    for component in processes.all_mut() {
        component.spawn(&binary)?;
        tokio::select! {
            ready = component.wait_ready() => ready?,
            _ = &mut shutdown => return Ok(()),
        }
    }
    tokio::select! {
        _ = branches.recover(processes) => {}
        _ = &mut shutdown => return Ok(()),
    }
    let ready: Vec<BranchEntry> = branches.ready().cloned().collect();
    for entry in &ready {
        tokio::select! {
            started = processes.start_compute(entry) => if let Err(e) = started {
                warn!(
                    branch = %entry.name,
                    "the compute of branch {} did not start: {e:#}; it is restarted until it does",
                    entry.name
                );
            },
            _ = &mut shutdown => return Ok(()),
        }
    }

    let listener = control::bind(data_dir)?;
    *socket_bound = true;
    let (calls_tx, mut calls) = mpsc::channel(control::REQUESTS_QUEUED_MAX);
    let server = tokio::spawn(control::serve(listener, calls_tx));
    // Aborted when `run` returns, however it returns.
    struct AbortOnDrop(tokio::task::JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _server = AbortOnDrop(server);

    println!("{}", connection_string(processes.main_compute.addr.port()));
    let mut supervise = tokio::time::interval(Duration::from_millis(RESTART_DELAY_MS));
    supervise.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = supervise.tick() => processes.restart_exited()?,
            Some((request, reply)) = calls.recv() => {
                // One operation at a time; a shutdown abandons it where it is, which leaves
                // what a crash there would (see `branches`).
                let response = tokio::select! {
                    response = handle(branches, processes, request) => response,
                    _ = &mut shutdown => return Ok(()),
                };
                let _ = reply.send(response);
            }
        }
    }
}

/// Runs one control request.
async fn handle(
    branches: &mut Branches,
    processes: &mut Processes,
    request: ControlRequest,
) -> ControlResponse {
    let result = match request {
        ControlRequest::CreateBranch { name, parent, at } => branches
            .create(processes, &name, &parent, at.as_deref())
            .await
            .map(|branch| ControlResponse::Created { branch }),
        ControlRequest::ListBranches => Ok(ControlResponse::Branches {
            branches: branches.list(),
        }),
        ControlRequest::DeleteBranch { name } => branches
            .delete(processes, &name)
            .await
            .map(|branch| ControlResponse::Deleted { branch }),
    };
    result.unwrap_or_else(|e| {
        match e.kind {
            BranchErrorKind::Unavailable | BranchErrorKind::Internal => {
                warn!("control request failed: {e}")
            }
            _ => info!("control request refused: {e}"),
        }
        e.into()
    })
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

/// A new empty folder for a test.
#[cfg(test)]
pub(crate) fn test_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "omendb-cp-{name}-{}-{:08x}",
        std::process::id(),
        random_u128() as u32
    ));
    std::fs::create_dir_all(&dir).expect("creating a test folder");
    dir
}
