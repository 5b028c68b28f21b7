//! The control plane's client of the pageserver's timeline management requests
//! (`CreateTimeline`, `ListTimelines`, `DeleteTimeline` of `pageserver_api`).
//!
//! One TCP connection per request: these are rare, and a fresh connection cannot carry a
//! half-read answer of an earlier request. Each answer is one [`wire`] frame. Errors say
//! whether the pageserver refused the request (it answered `Error`: nothing was done, or
//! it says what) or whether the outcome is unknown (no connection, a timeout, a lost or
//! malformed answer: the request may or may not have taken effect), because the branch
//! operations handle the two differently.

use std::net::SocketAddr;
use std::time::Duration;

use ids::{TenantId, TimelineId};
use pageserver_api::{BranchPoint, ErrorKind, Request, Response, TimelineInfo};
use tokio::net::TcpStream;

/// How long opening a connection to the pageserver may take.
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// How long the pageserver may take to answer one management request (a deletion removes
/// the timeline's files from the object store).
pub const ANSWER_TIMEOUT_MS: u64 = 120_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageserverCallError {
    /// The pageserver answered with an error.
    #[error("the pageserver refused: {message}")]
    Refused { kind: ErrorKind, message: String },
    /// No answer (or an unusable one): the request may or may not have taken effect.
    #[error("no answer from the pageserver at {addr}: {message}")]
    Unknown { addr: SocketAddr, message: String },
}

#[derive(Debug, Clone, Copy)]
pub struct PageserverAdmin {
    addr: SocketAddr,
}

impl PageserverAdmin {
    pub fn new(addr: SocketAddr) -> PageserverAdmin {
        PageserverAdmin { addr }
    }

    fn unknown(&self, message: impl ToString) -> PageserverCallError {
        PageserverCallError::Unknown {
            addr: self.addr,
            message: message.to_string(),
        }
    }

    async fn call(&self, request: &Request) -> Result<Response, PageserverCallError> {
        let mut stream = tokio::time::timeout(
            Duration::from_millis(CONNECT_TIMEOUT_MS),
            TcpStream::connect(self.addr),
        )
        .await
        .map_err(|_| self.unknown(format!("connect timed out after {CONNECT_TIMEOUT_MS} ms")))?
        .map_err(|e| self.unknown(format!("connect: {e}")))?;
        let exchange = async {
            wire::write_frame(&mut stream, &request.encode())
                .await
                .map_err(|e| self.unknown(format!("send: {e}")))?;
            wire::read_frame(&mut stream)
                .await
                .map_err(|e| self.unknown(format!("receive: {e}")))?
                .ok_or_else(|| self.unknown("the connection closed before an answer"))
        };
        let frame = tokio::time::timeout(Duration::from_millis(ANSWER_TIMEOUT_MS), exchange)
            .await
            .map_err(|_| self.unknown(format!("no answer within {ANSWER_TIMEOUT_MS} ms")))??;
        match Response::decode(&frame).map_err(|e| self.unknown(format!("bad answer: {e}")))? {
            Response::Error { kind, message } => {
                Err(PageserverCallError::Refused { kind, message })
            }
            response => Ok(response),
        }
    }

    /// Creates `timeline` as a branch of `ancestor` at `point`; the answer's `start_lsn()` is
    /// the branch LSN.
    pub async fn create_timeline(
        &self,
        tenant: TenantId,
        timeline: TimelineId,
        ancestor: Option<(TimelineId, BranchPoint)>,
    ) -> Result<TimelineInfo, PageserverCallError> {
        let request = Request::CreateTimeline {
            tenant,
            timeline,
            ancestor,
        };
        match self.call(&request).await? {
            Response::Timeline(info) if info.timeline == timeline => Ok(info),
            other => Err(self.unknown(format!(
                "CreateTimeline of {timeline} was answered with {other:?}"
            ))),
        }
    }

    /// Deletes `timeline`. A pageserver that does not know it answers `UnknownTimeline`,
    /// which callers finishing an earlier deletion treat as done.
    pub async fn delete_timeline(&self, timeline: TimelineId) -> Result<(), PageserverCallError> {
        match self.call(&Request::DeleteTimeline { timeline }).await? {
            Response::Deleted => Ok(()),
            other => Err(self.unknown(format!(
                "DeleteTimeline of {timeline} was answered with {other:?}"
            ))),
        }
    }

    /// Every timeline the pageserver serves.
    pub async fn list_timelines(&self) -> Result<Vec<TimelineInfo>, PageserverCallError> {
        match self.call(&Request::ListTimelines).await? {
            Response::Timelines(infos) => Ok(infos),
            other => Err(self.unknown(format!("ListTimelines was answered with {other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ids::Lsn;
    use tokio::net::TcpListener;

    /// A pageserver that answers each connection's one request with `answer(request)`;
    /// `None` closes the connection without an answer.
    async fn fake_pageserver(
        answer: impl Fn(Request) -> Option<Response> + Send + Sync + 'static,
    ) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answer = std::sync::Arc::new(answer);
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let answer = answer.clone();
                tokio::spawn(async move {
                    let frame = wire::read_frame(&mut stream).await.unwrap().unwrap();
                    let request = Request::decode(&frame).unwrap();
                    if let Some(response) = answer(request) {
                        wire::write_frame(&mut stream, &response.encode())
                            .await
                            .unwrap();
                    }
                });
            }
        });
        addr
    }

    const TENANT: TenantId = TenantId([1; 16]);
    const PARENT: TimelineId = TimelineId([2; 16]);
    const CHILD: TimelineId = TimelineId([3; 16]);

    #[tokio::test]
    async fn create_sends_the_branch_point_and_returns_the_branch_lsn() {
        let addr = fake_pageserver(|request| match request {
            Request::CreateTimeline {
                tenant,
                timeline,
                ancestor: Some((ancestor, BranchPoint::Timestamp { unix_us: 42 })),
            } => Some(Response::Timeline(TimelineInfo {
                tenant,
                timeline,
                ancestor: Some((ancestor, Lsn(0x16B3748))),
                last_record_lsn: Lsn(0x16B3748),
                remote_consistent_lsn: Lsn(0),
            })),
            Request::CreateTimeline { .. } => Some(Response::Error {
                kind: ErrorKind::Conflict,
                message: "the point is older than what is kept".into(),
            }),
            Request::DeleteTimeline { .. } => None,
            _ => Some(Response::Deleted),
        })
        .await;
        let admin = PageserverAdmin::new(addr);
        let info = admin
            .create_timeline(
                TENANT,
                CHILD,
                Some((PARENT, BranchPoint::Timestamp { unix_us: 42 })),
            )
            .await
            .unwrap();
        assert_eq!(info.start_lsn(), Lsn(0x16B3748));
        assert_eq!(
            admin
                .create_timeline(TENANT, CHILD, Some((PARENT, BranchPoint::Latest)))
                .await,
            Err(PageserverCallError::Refused {
                kind: ErrorKind::Conflict,
                message: "the point is older than what is kept".into()
            })
        );
        // A lost answer and an answer of the wrong kind are both "unknown".
        let lost = admin.delete_timeline(CHILD).await.unwrap_err();
        assert!(
            matches!(&lost, PageserverCallError::Unknown { message, .. } if message.contains("closed")),
            "{lost:?}"
        );
        let wrong = admin.list_timelines().await.unwrap_err();
        assert!(
            matches!(&wrong, PageserverCallError::Unknown { message, .. } if message.contains("Deleted")),
            "{wrong:?}"
        );
    }

    #[tokio::test]
    async fn no_pageserver_is_an_unknown_outcome() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let error = PageserverAdmin::new(addr)
            .delete_timeline(CHILD)
            .await
            .unwrap_err();
        assert!(
            matches!(error, PageserverCallError::Unknown { .. }),
            "{error:?}"
        );
    }
}
