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
pub mod copy;
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
use ids::{Lsn, TimelineId};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::engine::Engine;
use crate::pageserver_client::{PageserverClient, PageserverError};
use crate::walproposer::{ProposerConfig, WalProposer};

pub struct Config {
    /// Address for PostgreSQL clients.
    pub listen: SocketAddr,
    pub safekeepers: Vec<SocketAddr>,
    pub pageserver: SocketAddr,
    pub timeline: TimelineId,
    /// How long COMMIT waits for a safekeeper majority before failing.
    pub commit_timeout: Duration,
    /// How long start-up may spend learning where the timeline starts (from the
    /// pageserver) and winning the election, together.
    pub election_timeout: Duration,
    /// Serve reads only, at the pageserver's newest applied LSN, without a WAL proposer
    /// (no election: any number of read-only computes run beside the primary).
    pub read_only: bool,
}

/// Pause between attempts to learn the timeline's start from a pageserver that is not
/// reachable or does not serve the timeline yet.
pub const TIMELINE_LOOKUP_RETRY_MS: u64 = 200;

/// Where the timeline's WAL starts (its branch LSN; 0 for a root timeline), asked of the
/// pageserver until `deadline`: an unreachable pageserver, or one that does not serve the
/// timeline yet (being created, still loading), is asked again. Any other answer fails.
async fn timeline_start(
    pageserver: &PageserverClient,
    timeline: TimelineId,
    deadline: tokio::time::Instant,
) -> anyhow::Result<Lsn> {
    let mut last_warned: Option<String> = None;
    loop {
        let error = match pageserver.timeline_info().await {
            Ok(info) => {
                info!(%timeline, start_lsn = %info.start_lsn(), "the pageserver serves the timeline");
                return Ok(info.start_lsn());
            }
            Err(
                e @ (PageserverError::Unavailable { .. }
                | PageserverError::Remote {
                    kind: pageserver_api::ErrorKind::UnknownTimeline,
                    ..
                }),
            ) => e,
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("asking the pageserver where timeline {timeline} starts")
                })
            }
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(error).with_context(|| {
                format!(
                    "the pageserver did not tell where timeline {timeline} starts before the election timeout"
                )
            });
        }
        // Warn once per distinct reason, not every retry.
        let reason = error.to_string();
        if last_warned.as_deref() != Some(reason.as_str()) {
            warn!("cannot learn where timeline {timeline} starts yet: {reason}; retrying");
            last_warned = Some(reason);
        }
        tokio::time::sleep(Duration::from_millis(TIMELINE_LOOKUP_RETRY_MS)).await;
    }
}

/// Becomes the primary for the timeline (or, read-only, follows the pageserver), then serves
/// PostgreSQL clients until `shutdown`.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + config.election_timeout;
    let pageserver = PageserverClient::new(config.pageserver, config.timeline);
    let start_lsn = timeline_start(&pageserver, config.timeline, deadline).await?;
    let engine = if config.read_only {
        let lsn = pageserver
            .timeline_info()
            .await
            .context("asking the pageserver how far it has applied the WAL")?
            .last_record_lsn;
        Engine::open_read_only(pageserver, lsn.max(start_lsn)).await
    } else {
        let proposer = WalProposer::elect(
            ProposerConfig {
                timeline: config.timeline,
                start_lsn,
                safekeepers: config.safekeepers.clone(),
            },
            deadline.saturating_duration_since(tokio::time::Instant::now()),
        )
        .await
        .context("becoming the primary")?;
        Engine::open(proposer, pageserver, config.commit_timeout).await
    }
    .map_err(|e| anyhow::anyhow!("loading the catalog: {e}"))?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    if engine.is_read_only() {
        info!(
            "read-only compute listening on {} (at {})",
            listener.local_addr()?,
            engine.snapshot_lsn()
        );
    } else {
        info!(
            "compute listening on {} (term {})",
            listener.local_addr()?,
            engine.term()
        );
    }
    let follower = tokio::spawn(engine.clone().follow());
    let _abort_follower = AbortOnDrop(follower);
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

/// Aborts a background task when the scope that owns it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ids::TenantId;
    use pageserver_api::{ErrorKind, Request, Response, TimelineInfo};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    const TIMELINE: TimelineId = TimelineId([4; 16]);

    /// A stand-in for a pageserver that is still creating or loading the timeline: it
    /// answers `Status` with `UnknownTimeline` `n_unknown` times, then with a branch of
    /// another timeline at `branch_lsn`.
    async fn pageserver_serving_after(n_unknown: usize, branch_lsn: Lsn) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let n_asked = Arc::new(AtomicUsize::new(0));
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let n_asked = n_asked.clone();
                tokio::spawn(async move {
                    while let Ok(Some(frame)) = wire::read_frame(&mut stream).await {
                        let response = match Request::decode(&frame).unwrap() {
                            Request::Status { timeline } => {
                                if n_asked.fetch_add(1, Ordering::SeqCst) < n_unknown {
                                    Response::Error {
                                        kind: ErrorKind::UnknownTimeline,
                                        message: format!("timeline {timeline} is being created"),
                                    }
                                } else {
                                    Response::Timeline(TimelineInfo {
                                        tenant: TenantId::from_u128(1),
                                        timeline,
                                        ancestor: Some((TimelineId::from_u128(2), branch_lsn)),
                                        last_record_lsn: branch_lsn,
                                        remote_consistent_lsn: branch_lsn,
                                    })
                                }
                            }
                            other => panic!("unexpected request {other:?}"),
                        };
                        wire::write_frame(&mut stream, &response.encode())
                            .await
                            .unwrap();
                    }
                });
            }
        });
        addr
    }

    fn deadline_in(ms: u64) -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_millis(ms)
    }

    #[tokio::test]
    async fn the_timeline_start_is_asked_until_the_pageserver_serves_the_timeline() {
        let branch_lsn = Lsn(77_000_123);
        let addr = pageserver_serving_after(3, branch_lsn).await;
        let pageserver = PageserverClient::new(addr, TIMELINE);
        let start = timeline_start(&pageserver, TIMELINE, deadline_in(10_000))
            .await
            .unwrap();
        assert_eq!(start, branch_lsn);
    }

    #[tokio::test]
    async fn start_up_fails_clearly_when_the_pageserver_never_answers() {
        // Unknown timeline until the deadline.
        let addr = pageserver_serving_after(usize::MAX, Lsn(1)).await;
        let pageserver = PageserverClient::new(addr, TIMELINE);
        let err = timeline_start(&pageserver, TIMELINE, deadline_in(500))
            .await
            .unwrap_err();
        let message = format!("{err:#}");
        assert!(message.contains("before the election timeout"), "{message}");
        assert!(message.contains("is being created"), "{message}");

        // Nobody listening.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let pageserver = PageserverClient::new(addr, TIMELINE);
        let err = timeline_start(&pageserver, TIMELINE, deadline_in(500))
            .await
            .unwrap_err();
        let message = format!("{err:#}");
        assert!(message.contains("before the election timeout"), "{message}");
        assert!(message.contains("unreachable"), "{message}");
    }
}
