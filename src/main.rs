//! The `omendb` command: parses arguments and calls into the component crates.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ids::{TenantId, TimelineId};

#[derive(Parser)]
#[command(
    name = "omendb",
    version,
    about = "OmenDB: a serverless PostgreSQL-compatible database"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the local cluster (3 safekeepers, a pageserver, the control plane with its API,
    /// and the proxy that starts each endpoint's compute on its first connection) and print
    /// the connection string of the local project's main branch. Stops on Ctrl-C or
    /// SIGTERM; a later start finds the same data.
    Start {
        /// Folder holding all of the cluster's state.
        #[arg(long, default_value = "./.omendb")]
        data_dir: PathBuf,
        /// Port on 127.0.0.1 of the proxy, for PostgreSQL clients of every endpoint.
        #[arg(long, default_value_t = 55432)]
        port: u16,
        /// Port on 127.0.0.1 of the control-plane API (0: any free port; the CLI finds it in
        /// <data-dir>/control-plane.json).
        #[arg(long, default_value_t = 0)]
        api_port: u16,
        /// Port on 127.0.0.1 of SQL over HTTP (POST /sql, HTTP or HTTPS on the same port;
        /// 0: any free port; <data-dir>/control-plane.json names it).
        #[arg(long, default_value_t = 0)]
        http_port: u16,
        /// The proxy's TLS certificate chain (PEM). Default: a self-signed certificate made
        /// on the first start and kept in <data-dir>/proxy/.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The private key of --tls-cert (PEM).
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Endpoints are reached by TLS server name as <endpoint-id>.<domain>.
        #[arg(long, default_value = "localhost")]
        domain: String,
        /// Object store for the pageserver's layer files and offloaded WAL: a local folder,
        /// a file:// URL, or s3://bucket/prefix (with AWS_ACCESS_KEY_ID,
        /// AWS_SECRET_ACCESS_KEY, AWS_REGION and, for an S3-compatible server, AWS_ENDPOINT
        /// and AWS_ALLOW_HTTP in the environment). Default: <data-dir>/object-store.
        #[arg(long)]
        object_store: Option<String>,
        /// How long COMMIT waits for a majority of safekeepers before it fails.
        #[arg(long, default_value_t = 10_000)]
        commit_timeout_ms: u64,
    },
    /// Create, list, reset and delete branches. A branch starts as its parent's data at a
    /// point, copying nothing, and has an endpoint (and connection string) of its own;
    /// writes to it never reach its parent.
    Branch {
        #[command(subcommand)]
        command: control_plane::client::BranchCommand,
        #[command(flatten)]
        target: control_plane::client::Target,
    },
    /// Create, list and delete projects (each with its own branches, endpoints and roles).
    Project {
        #[command(subcommand)]
        command: control_plane::client::ProjectCommand,
        #[command(flatten)]
        target: control_plane::client::Target,
    },
    /// Create, start, suspend, change and delete endpoints (the computes clients reach).
    Endpoint {
        #[command(subcommand)]
        command: control_plane::client::EndpointCommand,
        #[command(flatten)]
        target: control_plane::client::Target,
    },
    /// Create roles and set their passwords.
    Role {
        #[command(subcommand)]
        command: control_plane::client::RoleCommand,
        #[command(flatten)]
        target: control_plane::client::Target,
    },
    /// Make API tokens for a project.
    Token {
        #[command(subcommand)]
        command: control_plane::client::TokenCommand,
        #[command(flatten)]
        target: control_plane::client::Target,
    },
    /// Print the connection string of a branch's endpoint (default: main's) as a role
    /// (default: the project's owner).
    ConnectionString {
        #[arg(long)]
        branch: Option<String>,
        #[arg(long)]
        endpoint: Option<String>,
        #[arg(long)]
        role: Option<String>,
        #[command(flatten)]
        target: control_plane::client::Target,
    },
    /// Run one safekeeper (WAL acceptor).
    Safekeeper {
        /// This safekeeper's number in the cluster.
        #[arg(long)]
        id: u32,
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
        /// Folder for its WAL and control files.
        #[arg(long)]
        data_dir: PathBuf,
        /// Object store to offload committed WAL to: a local folder, a file:// URL, or
        /// s3://bucket/prefix (with AWS_* environment variables, as for `omendb start`).
        /// Without one, WAL is never removed locally.
        #[arg(long)]
        object_store: Option<String>,
    },
    /// Run the pageserver.
    Pageserver {
        /// Address to listen on for computes.
        #[arg(long)]
        listen: SocketAddr,
        /// Folder for its local cache.
        #[arg(long)]
        data_dir: PathBuf,
        /// Object store: a local folder, a file:// URL, or s3://bucket/prefix (with AWS_*
        /// environment variables, as for `omendb start`).
        #[arg(long)]
        object_store: String,
        /// Safekeepers to stream WAL from, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        safekeepers: Vec<SocketAddr>,
        /// Tenant id (32 hex digits).
        #[arg(long)]
        tenant: TenantId,
        /// Timeline id (32 hex digits).
        #[arg(long)]
        timeline: TimelineId,
        /// Upload ingested WAL to the object store at least this often.
        #[arg(long, default_value_t = 1000)]
        checkpoint_interval_ms: u64,
        /// How long a read waits for the WAL it needs.
        #[arg(long, default_value_t = 10_000)]
        wait_lsn_timeout_ms: u64,
        /// Run garbage collection this often.
        #[arg(long, default_value_t = pageserver::limits::GC_INTERVAL_DEFAULT_MS)]
        gc_interval_ms: u64,
        /// Keep every timeline's history (reads and branches at any past moment) this far
        /// back, in seconds.
        #[arg(long, default_value_t = pageserver::limits::PITR_WINDOW_DEFAULT_SECS)]
        pitr_window_secs: u64,
        /// Memory for cached blocks of layer files, in bytes.
        #[arg(long, default_value_t = pageserver::block_cache::BLOCK_CACHE_MEMORY_BYTES_DEFAULT)]
        cache_memory_bytes: u64,
        /// Local disk (under the data folder) for cached blocks of layer files, in bytes.
        #[arg(long, default_value_t = pageserver::block_cache::BLOCK_CACHE_DISK_BYTES_DEFAULT)]
        cache_disk_bytes: u64,
        /// Serve Prometheus metrics at http://ADDR/metrics.
        #[arg(long)]
        metrics_listen: Option<SocketAddr>,
    },
    /// Run a compute node: become the primary for the timeline and serve PostgreSQL clients.
    Compute {
        /// Address to listen on for PostgreSQL clients.
        #[arg(long)]
        listen: SocketAddr,
        /// Safekeepers, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        safekeepers: Vec<SocketAddr>,
        /// Pageserver address.
        #[arg(long)]
        pageserver: SocketAddr,
        /// Timeline id (32 hex digits).
        #[arg(long)]
        timeline: TimelineId,
        /// How long COMMIT waits for a majority of safekeepers before it fails.
        #[arg(long, default_value_t = 10_000)]
        commit_timeout_ms: u64,
        /// How long start-up may spend winning the election.
        #[arg(long, default_value_t = 60_000)]
        election_timeout_ms: u64,
        /// Serve reads only, following the pageserver (no election, writes refused).
        #[arg(long)]
        read_only: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let shutdown = control_plane::shutdown_signal();
        match cli.command {
            Command::Start {
                data_dir,
                port,
                api_port,
                http_port,
                tls_cert,
                tls_key,
                domain,
                object_store,
                commit_timeout_ms,
            } => {
                let binary = std::env::current_exe().context("finding the omendb binary")?;
                control_plane::start(control_plane::StartConfig {
                    data_dir,
                    port,
                    api_port,
                    http_port,
                    tls_cert,
                    tls_key,
                    domain,
                    object_store,
                    commit_timeout_ms,
                    binary,
                })
                .await
            }
            Command::Branch { command, target } => {
                control_plane::client::branch(&target, command).await
            }
            Command::Project { command, target } => {
                control_plane::client::project(&target, command).await
            }
            Command::Endpoint { command, target } => {
                control_plane::client::endpoint(&target, command).await
            }
            Command::Role { command, target } => {
                control_plane::client::role(&target, command).await
            }
            Command::Token { command, target } => {
                control_plane::client::token(&target, command).await
            }
            Command::ConnectionString {
                branch,
                endpoint,
                role,
                target,
            } => {
                control_plane::client::connection_string(
                    &target,
                    branch.as_deref(),
                    endpoint.as_deref(),
                    role.as_deref(),
                )
                .await
            }
            Command::Safekeeper {
                id,
                listen,
                data_dir,
                object_store,
            } => {
                safekeeper::run(
                    safekeeper::Config {
                        id,
                        listen,
                        data_dir,
                        object_store,
                    },
                    shutdown,
                )
                .await
            }
            Command::Pageserver {
                listen,
                data_dir,
                object_store,
                safekeepers,
                tenant,
                timeline,
                checkpoint_interval_ms,
                wait_lsn_timeout_ms,
                gc_interval_ms,
                pitr_window_secs,
                cache_memory_bytes,
                cache_disk_bytes,
                metrics_listen,
            } => {
                let config = pageserver::Config {
                    listen,
                    data_dir,
                    object_store,
                    safekeepers,
                    tenant,
                    timeline,
                    checkpoint_interval: Duration::from_millis(checkpoint_interval_ms),
                    wait_lsn_timeout: Duration::from_millis(wait_lsn_timeout_ms),
                    gc_interval: Duration::from_millis(gc_interval_ms),
                    pitr_window: Duration::from_secs(pitr_window_secs),
                    cache_memory_bytes,
                    cache_disk_bytes,
                    metrics_listen,
                };
                pageserver::run(config, shutdown).await
            }
            Command::Compute {
                listen,
                safekeepers,
                pageserver,
                timeline,
                commit_timeout_ms,
                election_timeout_ms,
                read_only,
            } => {
                let config = compute::Config {
                    listen,
                    safekeepers,
                    pageserver,
                    timeline,
                    commit_timeout: Duration::from_millis(commit_timeout_ms),
                    election_timeout: Duration::from_millis(election_timeout_ms),
                    read_only,
                };
                compute::run(config, shutdown).await
            }
        }
    })
}
