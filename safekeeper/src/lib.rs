//! OmenDB's safekeeper: the WAL acceptor.
//!
//! A quorum of safekeepers makes the WAL durable: the primary compute (the proposer) wins
//! an election in a term, then appends whole WAL records; a safekeeper acknowledges an
//! append only once it is fsynced, and refuses appends from any older term (fencing). The
//! pageserver subscribes to a timeline and receives the committed WAL. Only a proposer's
//! `Hello` creates a timeline, with its WAL starting at the LSN it names (0 for a root
//! timeline, the branch LSN for a branch); nothing below that start is WAL.
//!
//! ```text
//!  compute (proposer) ──Hello/RequestVote/Elected/Append/ReadWal──▶ server ──▶ Acceptor
//!                                                                               │
//!  pageserver ◀── WalData (committed WAL) ── server ◀── commit_lsn watch        ▼
//!                                                         WalStorage: <data_dir>/timelines/<id>/
//!                                                           control + 16 MiB WAL segments
//! ```
//!
//! Modules: [`acceptor`] (the consensus rules, no I/O), [`wal_storage`] (segment files and
//! recovery), [`control_file`] (the persisted acceptor state), [`memory_storage`] (a
//! crash-modelling storage for tests and simulation), `server` (TCP), [`limits`].

pub mod acceptor;
pub mod control_file;
mod error;
pub mod limits;
pub mod memory_storage;
mod server;
pub mod wal_backup;
pub mod wal_storage;

#[cfg(test)]
mod server_tests;
#[cfg(test)]
mod simulation_tests;

use anyhow::Context;

pub use error::SafekeeperError;

/// How to run one safekeeper.
#[derive(Debug, Clone)]
pub struct Config {
    /// This safekeeper's id, for logs.
    pub id: u32,
    pub listen: std::net::SocketAddr,
    /// Where timelines live (`<data_dir>/timelines/<timeline hex>/`).
    pub data_dir: std::path::PathBuf,
    /// The object store that committed WAL is offloaded to: a local folder,
    /// `file:///abs/path` or `s3://bucket/prefix` (see
    /// `remote_storage::RemoteStorage::from_spec`); without one, WAL is kept locally for ever.
    pub object_store: Option<String>,
}

/// Binds, logs "safekeeper {id} listening on {addr}", serves until `shutdown` resolves,
/// then returns (after persisting every timeline's commit LSN).
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    tokio::fs::create_dir_all(&config.data_dir)
        .await
        .with_context(|| format!("creating data folder {}", config.data_dir.display()))?;
    // Opened before binding, so that a bad object store spec stops the safekeeper before
    // anyone can connect to it.
    let remote = match &config.object_store {
        Some(spec) => Some(
            remote_storage::RemoteStorage::from_spec(spec)
                .with_context(|| format!("opening the object store {spec}"))?,
        ),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    tracing::info!("safekeeper {} listening on {addr}", config.id);
    server::Server::new(config.id, config.data_dir, remote)
        .serve(listener, shutdown)
        .await;
    Ok(())
}
