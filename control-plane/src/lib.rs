//! The local cluster launcher behind `omendb start`: the control plane, the proxy and the
//! processes they run.
//!
//! Starts 3 safekeepers and 1 pageserver as separate OS processes (the same `omendb` binary
//! with other subcommands) on 127.0.0.1, then serves, in this process, the control-plane API
//! (`api`), the proxy for PostgreSQL clients (`proxy`) and SQL over HTTP (`proxy::http`).
//! Computes are started per endpoint when a connection needs one and stopped when idle. All
//! state is under one data folder:
//!
//! ```text
//! <data-dir>/cluster.json          tenant and root timeline ids (made on first start)
//! <data-dir>/control-plane.db      projects, branches, endpoints, roles, tokens (SQLite)
//! <data-dir>/control-plane.json    API URL, proxy address, SQL-over-HTTP URL, local project
//! <data-dir>/admin-token           the API's admin token (0600)
//! <data-dir>/proxy/                the self-signed TLS pair, unless --tls-cert/--tls-key
//! <data-dir>/omendb.lock           held while a cluster runs on this folder
//! <data-dir>/safekeeper-<n>/       each safekeeper's WAL
//! <data-dir>/pageserver/           the pageserver's local cache
//! <data-dir>/object-store/         the object store, unless `--object-store` names another
//! <data-dir>/logs/<name>.log       each process's log (`compute-<endpoint>.log` per endpoint)
//! ```
//!
//! On start it makes the `local` project around the root timeline (importing an older
//! `branches.json`), deletes timelines a crash left doomed, and prints the local project's
//! connection string once everything accepts connections; it stays in the foreground. API
//! requests and the proxy's questions (authenticate, wake) run one at a time in its loop;
//! every `SWEEP_INTERVAL_MS` it restarts dead safekeepers or pageserver, suspends idle
//! endpoints and deletes doomed timelines. SIGINT or SIGTERM stops the computes, then the
//! pageserver (which uploads what it has), then the safekeepers.

pub mod api;
pub mod client;
pub mod pageserver_admin;
pub mod pgclient;
pub mod proxy;
pub mod registry;
pub mod scram;
pub mod service;
pub mod sql_over_http;
pub mod store;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use ids::{TenantId, TimelineId};
use pageserver_api::{BranchPoint, TimelineInfo};
use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tracing::{info, warn};

use pageserver_admin::{PageserverAdmin, PageserverCallError};
use registry::write_atomically;
use service::{Backend, ComputeSpec};

/// Number of safekeepers in a local cluster.
pub const SAFEKEEPERS: usize = 3;
/// How long each component may take to start accepting connections.
pub const READY_TIMEOUT_MS: u64 = 60_000;
/// How long a component may take to stop after SIGTERM before it is killed.
pub const STOP_TIMEOUT_MS: u64 = 15_000;
/// How often a starting component is tried for a connection, in milliseconds (a woken
/// compute's first connection waits for this).
pub const READY_POLL_MS: u64 = 2;
/// Pause before restarting a child that died.
pub const RESTART_DELAY_MS: u64 = 1_000;
/// Ports tried beyond those needed when looking for free ones outside the recorded ones.
pub const FREE_PORT_TRIES_MAX: usize = 100;
const CLUSTER_FILE_VERSION: u32 = 1;

pub struct StartConfig {
    pub data_dir: PathBuf,
    /// Port of the proxy for PostgreSQL clients.
    pub port: u16,
    /// Port of the control-plane API (0: any free port; `control-plane.json` names it).
    pub api_port: u16,
    /// Port of SQL over HTTP (0: any free port; `control-plane.json` names it).
    pub http_port: u16,
    /// The proxy's TLS certificate chain and key (PEM); without them a self-signed pair
    /// kept in `<data-dir>/proxy/` is used.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Endpoints are reached by TLS SNI as `<endpoint>.<domain>`.
    pub domain: String,
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
            tokio::time::sleep(Duration::from_millis(READY_POLL_MS)).await;
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
    // Bound first, so that a port in use fails the start before anything else runs.
    let proxy_listener = tokio::net::TcpListener::bind(("127.0.0.1", config.port))
        .await
        .with_context(|| {
            format!(
                "listening on 127.0.0.1:{} for PostgreSQL clients",
                config.port
            )
        })?;
    let api_listener = tokio::net::TcpListener::bind(("127.0.0.1", config.api_port))
        .await
        .with_context(|| format!("listening on 127.0.0.1:{} for the API", config.api_port))?;
    let http_listener = tokio::net::TcpListener::bind(("127.0.0.1", config.http_port))
        .await
        .with_context(|| {
            format!(
                "listening on 127.0.0.1:{} for SQL over HTTP",
                config.http_port
            )
        })?;
    let tls = proxy::tls::server_config(
        config.tls_cert.as_deref(),
        config.tls_key.as_deref(),
        &data_dir.join("proxy"),
        &config.domain,
    )?;

    let log_dir = data_dir.join("logs");
    let log = |name: &str| log_dir.join(format!("{name}.log"));
    let mut safekeepers = Vec::new();
    let mut safekeeper_addrs = Vec::new();
    let ports = free_ports(SAFEKEEPERS + 1, &[])?;
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
    let mut processes = Processes {
        binary: config.binary.clone(),
        log_dir: log_dir.clone(),
        safekeepers,
        pageserver,
        computes: std::collections::HashMap::new(),
        compute_settings: ComputeSettings {
            safekeepers: safekeepers_arg,
            pageserver: pageserver_addr,
            commit_timeout_ms: config.commit_timeout_ms,
        },
        pageserver_admin: PageserverAdmin::new(pageserver_addr),
    };

    let store = store::Store::open(&data_dir.join(store::DB_FILE))?;
    let activity = Arc::new(service::Activity::default());
    let proxy_address = service::ProxyAddress {
        host: "127.0.0.1".into(),
        port: proxy_listener.local_addr()?.port(),
        domain: config.domain.clone(),
    };
    let mut control_plane =
        service::ControlPlane::new(store, tenant, proxy_address, activity.clone());
    let listeners = Listeners {
        proxy: proxy_listener,
        api: api_listener,
        http: http_listener,
        tls,
        domain: config.domain.clone(),
    };
    let result = run(
        &data_dir,
        timeline,
        &mut processes,
        &mut control_plane,
        listeners,
        activity,
    )
    .await;
    processes.stop_all().await;
    result
}

/// What the cluster serves on: bound before anything starts.
struct Listeners {
    proxy: tokio::net::TcpListener,
    api: tokio::net::TcpListener,
    http: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    domain: String,
}

/// How computes are started: what every compute's command line shares.
struct ComputeSettings {
    safekeepers: String,
    pageserver: SocketAddr,
    commit_timeout_ms: u64,
}

impl ComputeSettings {
    fn component(&self, spec: &ComputeSpec, port: u16, log: PathBuf) -> anyhow::Result<Component> {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let mut args = vec![
            "compute".into(),
            "--listen".into(),
            addr.to_string(),
            "--safekeepers".into(),
            self.safekeepers.clone(),
            "--pageserver".into(),
            self.pageserver.to_string(),
            "--timeline".into(),
            spec.timeline.to_string(),
            "--commit-timeout-ms".into(),
            self.commit_timeout_ms.to_string(),
        ];
        if spec.read_only {
            args.push("--read-only".into());
        }
        Ok(Component {
            name: format!("compute-{}", spec.endpoint),
            args,
            addr,
            log,
            child: None,
        })
    }
}

/// The cluster's child processes. Safekeepers and the pageserver are restarted when they
/// die; a compute that dies is forgotten (its endpoint is suspended, and the next
/// connection starts it again). At shutdown the computes stop first, then the pageserver
/// (which uploads what it has), then the safekeepers.
struct Processes {
    binary: PathBuf,
    log_dir: PathBuf,
    safekeepers: Vec<Component>,
    pageserver: Component,
    /// The running computes, by endpoint id.
    computes: std::collections::HashMap<String, Component>,
    compute_settings: ComputeSettings,
    pageserver_admin: PageserverAdmin,
}

impl Processes {
    fn storage_mut(&mut self) -> impl Iterator<Item = &mut Component> {
        self.safekeepers
            .iter_mut()
            .chain(std::iter::once(&mut self.pageserver))
    }

    /// Starts every safekeeper or pageserver that has died since the last look, and forgets
    /// every compute that has.
    fn look_after(&mut self) -> anyhow::Result<()> {
        let binary = self.binary.clone();
        for component in self.storage_mut() {
            let exited = match component.child.as_mut() {
                Some(child) => child.try_wait()?,
                None => None,
            };
            if let Some(status) = exited {
                warn!(name = %component.name, %status, "exited; starting it again");
                component.spawn(&binary)?;
            }
        }
        let mut dead = Vec::new();
        for (endpoint, component) in self.computes.iter_mut() {
            if let Some(child) = component.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    warn!(
                        name = %component.name,
                        %status,
                        "exited; its endpoint starts it again at the next connection"
                    );
                    dead.push(endpoint.clone());
                }
            }
        }
        for endpoint in dead {
            self.computes.remove(&endpoint);
        }
        Ok(())
    }

    async fn stop_all(&mut self) {
        for (_, mut component) in self.computes.drain() {
            component.stop().await;
        }
        self.pageserver.stop().await;
        for component in self.safekeepers.iter_mut().rev() {
            component.stop().await;
        }
    }
}

impl Backend for Processes {
    async fn create_timeline(
        &mut self,
        tenant: TenantId,
        timeline: TimelineId,
        ancestor: Option<(TimelineId, BranchPoint)>,
    ) -> Result<TimelineInfo, PageserverCallError> {
        self.pageserver_admin
            .create_timeline(tenant, timeline, ancestor)
            .await
    }

    async fn delete_timeline(&mut self, timeline: TimelineId) -> Result<(), PageserverCallError> {
        self.pageserver_admin.delete_timeline(timeline).await
    }

    async fn start_compute(&mut self, spec: &ComputeSpec) -> anyhow::Result<SocketAddr> {
        self.stop_compute(&spec.endpoint).await;
        let mut taken: Vec<u16> = self.storage_mut().map(|c| c.addr.port()).collect();
        taken.extend(self.computes.values().map(|c| c.addr.port()));
        let port = free_ports(1, &taken)?[0];
        let log = self.log_dir.join(format!("compute-{}.log", spec.endpoint));
        let mut component = self.compute_settings.component(spec, port, log)?;
        component.spawn(&self.binary)?;
        if let Err(e) = component.wait_ready().await {
            component.stop().await;
            return Err(e);
        }
        let addr = component.addr;
        self.computes.insert(spec.endpoint.clone(), component);
        Ok(addr)
    }

    async fn stop_compute(&mut self, endpoint: &str) {
        if let Some(mut component) = self.computes.remove(endpoint) {
            component.stop().await;
        }
    }

    fn compute_addr(&self, endpoint: &str) -> Option<SocketAddr> {
        self.computes.get(endpoint).map(|c| c.addr)
    }

    fn new_timeline_id(&mut self) -> TimelineId {
        TimelineId::from_u128(random_u128())
    }
}

/// What the launcher's task is asked to do, by the API and the proxy.
enum Call {
    Api(api::ApiCall),
    Proxy(proxy::ControlCall),
}

/// The local cluster's first project (made on the first start, around the root timeline of
/// `cluster.json`), the admin token file, and the branches an older build kept in
/// `branches.json`.
async fn bootstrap(
    data_dir: &Path,
    root: TimelineId,
    control_plane: &mut service::ControlPlane,
    processes: &mut Processes,
) -> anyhow::Result<String> {
    let project = match control_plane.store().setting(LOCAL_PROJECT_SETTING)? {
        Some(project) => project,
        None => {
            let created = control_plane
                .create_project(
                    processes,
                    &service::Scope::Admin,
                    service::CreateProject {
                        name: Some("local".into()),
                    },
                    Some(root),
                )
                .await
                .map_err(|e| anyhow::anyhow!("making the local project: {e}"))?;
            let project = created.project.id;
            import_legacy_branches(data_dir, control_plane, &project, &created.branch.id)?;
            control_plane
                .store()
                .set_setting(LOCAL_PROJECT_SETTING, &project)?;
            info!(%project, "made the local project");
            project
        }
    };
    let token_path = data_dir.join(ADMIN_TOKEN_FILE);
    if !token_path.exists() {
        let token = control_plane
            .create_admin_token()
            .map_err(|e| anyhow::anyhow!("making the admin token: {e}"))?;
        write_private(&token_path, format!("{}\n", token.token).as_bytes())?;
    }
    Ok(project)
}

/// Branches of `branches.json` (written by builds before the control-plane database)
/// become branches of the local project, each with a read-write endpoint; entries an
/// interrupted operation left have their timelines doomed. The file is then renamed.
fn import_legacy_branches(
    data_dir: &Path,
    control_plane: &mut service::ControlPlane,
    project: &str,
    main_branch: &str,
) -> anyhow::Result<()> {
    let path = data_dir.join(registry::REGISTRY_FILE);
    if !path.exists() {
        return Ok(());
    }
    let root = load_or_init(data_dir)?.1;
    let legacy = registry::Registry::load(data_dir, root)?;
    let mut ids: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    ids.insert(registry::MAIN_BRANCH.into(), main_branch.into());
    for entry in legacy.branches {
        let parent = ids.get(&entry.parent).cloned();
        match (entry.state, parent, entry.lsn) {
            (registry::BranchState::Ready, Some(parent), Some(lsn)) => {
                let now = store::unix_now();
                let branch = store::BranchRow {
                    id: service::new_id("br"),
                    project_id: project.into(),
                    name: entry.name.clone(),
                    parent_id: Some(parent),
                    timeline: entry.timeline,
                    lsn: Some(lsn),
                    created_at: now,
                };
                let endpoint = store::EndpointRow {
                    id: service::new_id("ep"),
                    project_id: project.into(),
                    branch_id: branch.id.clone(),
                    kind: store::EndpointKind::ReadWrite,
                    idle_timeout_secs: service::IDLE_TIMEOUT_SECS_DEFAULT,
                    created_at: now,
                };
                control_plane
                    .store_mut()
                    .insert_branch(&branch, Some(&endpoint))?;
                ids.insert(entry.name.clone(), branch.id);
            }
            _ => control_plane.store().doom_timeline(entry.timeline)?,
        }
    }
    std::fs::rename(
        &path,
        data_dir.join(format!("{}.imported", registry::REGISTRY_FILE)),
    )
    .with_context(|| format!("renaming {}", path.display()))?;
    info!("imported the branches of {}", path.display());
    Ok(())
}

/// Writes `bytes` to a new file only its owner can read, atomically.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&temporary)
        .with_context(|| format!("writing {}", temporary.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Where the CLI finds the running cluster: `<data-dir>/control-plane.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterEndpoints {
    pub version: u32,
    /// `http://127.0.0.1:PORT`: the control-plane API.
    pub api: String,
    /// The proxy's PostgreSQL address.
    pub postgres: String,
    /// `http://127.0.0.1:PORT/sql`: SQL over HTTP (HTTPS on the same port).
    #[serde(default)]
    pub sql_over_http: String,
    /// The local project, which commands act on by default.
    pub project: String,
}

/// The file's name inside the data folder.
pub const CLUSTER_ENDPOINTS_FILE: &str = "control-plane.json";
/// The file holding the local cluster's admin API token (mode 0600).
pub const ADMIN_TOKEN_FILE: &str = "admin-token";
const LOCAL_PROJECT_SETTING: &str = "local_project";
/// How often idle endpoints are looked for and doomed timelines deleted.
pub const SWEEP_INTERVAL_MS: u64 = 1_000;

async fn run(
    data_dir: &Path,
    root: TimelineId,
    processes: &mut Processes,
    control_plane: &mut service::ControlPlane,
    listeners: Listeners,
    activity: Arc<service::Activity>,
) -> anyhow::Result<()> {
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let binary = processes.binary.clone();
    for component in processes.storage_mut() {
        component.spawn(&binary)?;
        tokio::select! {
            ready = component.wait_ready() => ready?,
            _ = &mut shutdown => return Ok(()),
        }
    }
    let project = bootstrap(data_dir, root, control_plane, processes).await?;
    tokio::select! {
        _ = control_plane.sweep_doomed(processes) => {}
        _ = &mut shutdown => return Ok(()),
    }

    let (calls_tx, mut calls) = mpsc::channel::<Call>(CALLS_QUEUED_MAX);
    let (api_tx, mut api_calls) = mpsc::channel::<api::ApiCall>(CALLS_QUEUED_MAX);
    let (proxy_tx, mut proxy_calls) = mpsc::channel::<proxy::ControlCall>(CALLS_QUEUED_MAX);
    let api_addr = listeners.api.local_addr()?;
    let proxy_addr = listeners.proxy.local_addr()?;
    let http_addr = listeners.http.local_addr()?;
    let proxy_config = Arc::new(proxy::ProxyConfig {
        tls: Some(listeners.tls),
        domain: listeners.domain,
        allow_cleartext_without_tls: false,
    });
    let proxy_state = Arc::new(proxy::ProxyState::new(activity));
    let proxy_control = proxy::ControlHandle::new(proxy_tx);
    let tasks = [
        tokio::spawn(api::serve(listeners.api, api_tx)),
        tokio::spawn(proxy::serve(
            listeners.proxy,
            proxy_config.clone(),
            proxy_control.clone(),
            proxy_state.clone(),
        )),
        tokio::spawn(proxy::http::serve(
            listeners.http,
            proxy_config,
            proxy_control,
            proxy_state,
        )),
        // Both queues feed one, so that the operations run one at a time in this task.
        tokio::spawn({
            let calls_tx = calls_tx.clone();
            async move {
                while let Some(call) = api_calls.recv().await {
                    if calls_tx.send(Call::Api(call)).await.is_err() {
                        break;
                    }
                }
            }
        }),
        tokio::spawn(async move {
            while let Some(call) = proxy_calls.recv().await {
                if calls_tx.send(Call::Proxy(call)).await.is_err() {
                    break;
                }
            }
        }),
    ];
    // Aborted when `run` returns, however it returns.
    struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            for task in &self.0 {
                task.abort();
            }
        }
    }
    let _tasks = AbortOnDrop(tasks.into_iter().collect());

    let endpoints = ClusterEndpoints {
        version: 1,
        api: format!("http://{api_addr}"),
        postgres: proxy_addr.to_string(),
        sql_over_http: format!("http://{http_addr}/sql"),
        project: project.clone(),
    };
    write_private(
        &data_dir.join(CLUSTER_ENDPOINTS_FILE),
        &serde_json::to_vec_pretty(&endpoints)?,
    )?;
    let uri = control_plane
        .connection_uri_for(&service::Scope::Admin, &project, None, None, None)
        .map_err(|e| anyhow::anyhow!("the local project's connection string: {e}"))?;
    println!("{uri}");
    info!(api = %endpoints.api, postgres = %endpoints.postgres, sql_over_http = %endpoints.sql_over_http, "the cluster is up");

    let mut sweep = tokio::time::interval(Duration::from_millis(SWEEP_INTERVAL_MS));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = sweep.tick() => {
                processes.look_after()?;
                let idle = tokio::select! {
                    idle = control_plane.suspend_idle(processes, std::time::Instant::now()) => idle,
                    _ = &mut shutdown => return Ok(()),
                };
                drop(idle);
                tokio::select! {
                    _ = control_plane.sweep_doomed(processes) => {}
                    _ = &mut shutdown => return Ok(()),
                }
            }
            Some(call) = calls.recv() => {
                // One operation at a time; a shutdown abandons it where it is, which leaves
                // what a crash there would (see `service`).
                tokio::select! {
                    _ = handle(control_plane, processes, call) => {}
                    _ = &mut shutdown => return Ok(()),
                }
            }
        }
    }
}

/// The most requests waiting for the launcher's task.
pub const CALLS_QUEUED_MAX: usize = 256;

async fn handle(control_plane: &mut service::ControlPlane, processes: &mut Processes, call: Call) {
    match call {
        Call::Api((request, reply)) => {
            let _ = reply.send(api::dispatch(control_plane, processes, request).await);
        }
        Call::Proxy(call) => proxy::answer(control_plane, processes, call).await,
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
