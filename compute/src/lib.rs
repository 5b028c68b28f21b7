//! OmenDB compute node: PostgreSQL wire protocol, SQL through DataFusion, transactions and the
//! WAL proposer that makes every commit durable on a safekeeper majority.
//!
//! ```text
//!  client ──pgwire──▶ pgwire::server ──▶ session (DDL/DML/txn) ──▶ engine::commit ──▶ walproposer ──▶ safekeepers
//!                                          │ SELECT via DataFusion
//!                                          └──▶ provider::OmenTable ──▶ pageserver_client ──▶ pageserver
//! ```
//!
//! The compute keeps no state of its own: the catalog and the data are read from the
//! pageserver at the transaction's snapshot LSN, and every write goes through the WAL.

pub mod catalog;
pub mod engine;
pub mod error;
pub mod pageserver_client;
pub mod pgcompat;
pub mod pgtypes;
pub mod pgwire;
pub mod provider;
pub mod rowcodec;
pub mod session;
pub mod walproposer;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use ids::TimelineId;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::engine::Engine;
use crate::pageserver_client::PageserverClient;
use crate::walproposer::{ProposerConfig, WalProposer};

pub struct Config {
    /// Address for PostgreSQL clients.
    pub listen: SocketAddr,
    pub safekeepers: Vec<SocketAddr>,
    pub pageserver: SocketAddr,
    pub timeline: TimelineId,
    /// How long COMMIT waits for a safekeeper majority before failing.
    pub commit_timeout: Duration,
    /// How long start-up may spend winning the election.
    pub election_timeout: Duration,
}

/// Becomes the primary for the timeline, then serves PostgreSQL clients until `shutdown`.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let proposer = WalProposer::elect(
        ProposerConfig {
            timeline: config.timeline,
            safekeepers: config.safekeepers.clone(),
        },
        config.election_timeout,
    )
    .await
    .context("becoming the primary")?;
    let pageserver = PageserverClient::new(config.pageserver, config.timeline);
    let engine = Engine::open(proposer, pageserver, config.commit_timeout)
        .await
        .map_err(|e| anyhow::anyhow!("loading the catalog: {e}"))?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    info!(
        "compute listening on {} (term {})",
        listener.local_addr()?,
        engine.proposer.term()
    );
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let engine = engine.clone();
                    tokio::spawn(pgwire::server::serve_connection(stream, engine));
                }
                Err(e) => {
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    info!("compute stopped");
    Ok(())
}
