//! The launcher's control socket, `<data-dir>/control.sock`: how `omendb branch ...` asks
//! the running `omendb start` to do something.
//!
//! A Unix stream socket (mode 0600) carrying line-delimited JSON: the client writes one
//! request line, the server answers with one response line; a connection may carry more
//! requests, one at a time. Every line carries `"version": 1`; a line of another version
//! is answered with an error.
//!
//! ```text
//! → {"version":1,"op":"create_branch","name":"b1","parent":"main","at":"0/16B3748"}
//! ← {"version":1,"result":"created","branch":{"name":"b1","parent":"main","lsn":"0/16B3748",
//!     "timeline":"…","connection":"postgres://omendb@127.0.0.1:40001/omendb","state":"ready"}}
//! → {"version":1,"op":"list_branches"}
//! ← {"version":1,"result":"branches","branches":[{"name":"main","parent":null,…},…]}
//! → {"version":1,"op":"delete_branch","name":"b1"}
//! ← {"version":1,"result":"deleted","branch":{…}}
//! ← {"version":1,"result":"error","kind":"conflict","message":"branch b1 already exists"}
//! ```
//!
//! `at` is optional (absent: the parent's latest commit); error kinds are those of
//! [`BranchErrorKind`]. The server side ([`serve`]) only decodes and encodes: it hands each
//! request to the launcher's loop through a bounded channel, which runs the operations one
//! at a time. The client side is [`call`]. Lines are at most [`LINE_BYTES_MAX`] bytes.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::branches::{BranchError, BranchErrorKind, BranchView};

/// The socket's file name inside the data folder.
pub const CONTROL_SOCKET: &str = "control.sock";
/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// The longest request or response line, in bytes (without the newline).
pub const LINE_BYTES_MAX: usize = 1 << 20;
/// How long the server waits for the next request line on an open connection.
pub const REQUEST_IDLE_TIMEOUT_MS: u64 = 60_000;
/// How long the client waits for an answer: creating a branch waits for the pageserver and
/// for the branch's compute to start.
pub const ANSWER_TIMEOUT_MS: u64 = 300_000;
/// Requests waiting for the launcher's loop.
pub const REQUESTS_QUEUED_MAX: usize = 16;
/// The longest socket path `bind`/`connect` take, in bytes (`sun_path` less its NUL).
pub const SOCKET_PATH_BYTES_MAX: usize = 107;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlRequest {
    CreateBranch {
        name: String,
        parent: String,
        #[serde(default)]
        at: Option<String>,
    },
    ListBranches,
    DeleteBranch {
        name: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ControlResponse {
    Created {
        branch: BranchView,
    },
    Branches {
        branches: Vec<BranchView>,
    },
    Deleted {
        branch: BranchView,
    },
    Error {
        kind: BranchErrorKind,
        message: String,
    },
}

impl From<BranchError> for ControlResponse {
    fn from(e: BranchError) -> ControlResponse {
        ControlResponse::Error {
            kind: e.kind,
            message: e.message,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Line<T> {
    version: u32,
    #[serde(flatten)]
    body: T,
}

/// A request with the way back to the connection that sent it.
pub type Call = (ControlRequest, oneshot::Sender<ControlResponse>);

/// The socket path of the cluster on `data_dir`.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(CONTROL_SOCKET)
}

fn check_path_length(path: &Path) -> anyhow::Result<()> {
    let len = path.as_os_str().len();
    if len > SOCKET_PATH_BYTES_MAX {
        bail!(
            "the control socket path {} is {len} bytes long; Unix sockets allow \
             {SOCKET_PATH_BYTES_MAX} (use a shorter --data-dir)",
            path.display()
        );
    }
    Ok(())
}

/// Binds `<data_dir>/control.sock`, replacing a stale socket file: the caller holds the
/// data folder's lock, so no other launcher can be serving on it.
pub fn bind(data_dir: &Path) -> anyhow::Result<UnixListener> {
    let path = socket_path(data_dir);
    check_path_length(&path)?;
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
    }
    let listener =
        UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 600 {}", path.display()))?;
    Ok(listener)
}

/// Accepts connections until dropped (each connection's task ends with it) and sends their
/// requests to `calls`.
pub async fn serve(listener: UnixListener, calls: mpsc::Sender<Call>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, calls.clone()));
                }
                Err(e) => {
                    warn!("control socket: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next() => {}
        }
    }
}

fn error_response(kind: BranchErrorKind, message: impl Into<String>) -> ControlResponse {
    ControlResponse::Error {
        kind,
        message: message.into(),
    }
}

/// Reads one line of at most [`LINE_BYTES_MAX`] bytes; `Ok(None)` at the end of the stream.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
) -> anyhow::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let n = (&mut *reader)
        .take(LINE_BYTES_MAX as u64 + 1)
        .read_until(b'\n', &mut line)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if line.len() > LINE_BYTES_MAX {
        bail!("a line is longer than {LINE_BYTES_MAX} bytes");
    } else {
        bail!("the connection closed in the middle of a line");
    }
    Ok(Some(line))
}

/// The request on `line`, or what is wrong with it.
fn decode_request(line: &[u8]) -> Result<ControlRequest, String> {
    let value: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| format!("the request is not JSON: {e}"))?;
    match value.get("version").and_then(|v| v.as_u64()) {
        Some(version) if version == PROTOCOL_VERSION as u64 => {}
        other => {
            return Err(format!(
                "the request has protocol version {other:?}; this launcher speaks version \
                 {PROTOCOL_VERSION} (are `omendb start` and `omendb branch` the same build?)"
            ))
        }
    }
    serde_json::from_value::<Line<ControlRequest>>(value)
        .map(|line| line.body)
        .map_err(|e| format!("bad request: {e}"))
}

async fn serve_connection(stream: UnixStream, calls: mpsc::Sender<Call>) {
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    loop {
        let line = match tokio::time::timeout(
            Duration::from_millis(REQUEST_IDLE_TIMEOUT_MS),
            read_line(&mut reader),
        )
        .await
        {
            Err(_) | Ok(Ok(None)) => return,
            Ok(Ok(Some(line))) => Ok(line),
            Ok(Err(e)) => Err(e),
        };
        let (response, close) = match line {
            Err(e) => (
                error_response(BranchErrorKind::BadRequest, format!("{e:#}")),
                true,
            ),
            Ok(line) => match decode_request(&line) {
                Err(message) => (error_response(BranchErrorKind::BadRequest, message), false),
                Ok(request) => (dispatch(&calls, request).await, false),
            },
        };
        if write_line(&mut writer, &response).await.is_err() || close {
            return;
        }
    }
}

async fn dispatch(calls: &mpsc::Sender<Call>, request: ControlRequest) -> ControlResponse {
    let (reply, answer) = oneshot::channel();
    if calls.send((request, reply)).await.is_err() {
        return error_response(BranchErrorKind::Unavailable, "the cluster is stopping");
    }
    answer.await.unwrap_or_else(|_| {
        error_response(
            BranchErrorKind::Unavailable,
            "the cluster stopped before it answered; `omendb branch list` after the next \
             `omendb start` shows what was done",
        )
    })
}

async fn write_line<W: tokio::io::AsyncWrite + Unpin, T: Serialize>(
    writer: &mut W,
    body: &T,
) -> anyhow::Result<()> {
    let mut line = serde_json::to_vec(&Line {
        version: PROTOCOL_VERSION,
        body,
    })?;
    line.push(b'\n');
    writer.write_all(&line).await?;
    writer.flush().await?;
    Ok(())
}

/// Sends one request to the cluster running on `data_dir` and returns its answer.
pub async fn call(data_dir: &Path, request: &ControlRequest) -> anyhow::Result<ControlResponse> {
    let path = socket_path(data_dir);
    check_path_length(&path)?;
    let stream = match UnixStream::connect(&path).await {
        Ok(stream) => stream,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            bail!(
                "no cluster is running on {}; start one with `omendb start`",
                data_dir.display()
            )
        }
        Err(e) => return Err(e).with_context(|| format!("connecting to {}", path.display())),
    };
    let (reader, mut writer) = stream.into_split();
    write_line(&mut writer, request)
        .await
        .with_context(|| format!("sending a request to {}", path.display()))?;
    let mut reader = BufReader::new(reader);
    let line = tokio::time::timeout(
        Duration::from_millis(ANSWER_TIMEOUT_MS),
        read_line(&mut reader),
    )
    .await
    .with_context(|| {
        format!(
            "the cluster on {} did not answer within {ANSWER_TIMEOUT_MS} ms",
            data_dir.display()
        )
    })?
    .with_context(|| format!("reading the answer from {}", path.display()))?
    .with_context(|| {
        format!(
            "the cluster on {} closed the connection without answering (did it stop?)",
            data_dir.display()
        )
    })?;
    let value: serde_json::Value =
        serde_json::from_slice(&line).context("the cluster's answer is not JSON")?;
    let version = value.get("version").and_then(|v| v.as_u64());
    if version != Some(PROTOCOL_VERSION as u64) {
        bail!(
            "the cluster answered with protocol version {version:?}; this omendb speaks \
             version {PROTOCOL_VERSION}"
        );
    }
    let line: Line<ControlResponse> =
        serde_json::from_value(value).context("the cluster's answer is malformed")?;
    Ok(line.body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::BranchState;
    use crate::test_dir;

    fn view(name: &str) -> BranchView {
        BranchView {
            name: name.into(),
            parent: Some("main".into()),
            lsn: Some("0/16B3748".into()),
            timeline: "0123456789abcdef0123456789abcdef".into(),
            connection: "postgres://omendb@127.0.0.1:40001/omendb".into(),
            state: BranchState::Ready,
        }
    }

    /// A launcher loop that answers from the request alone.
    fn fake_loop(mut calls: mpsc::Receiver<Call>) {
        tokio::spawn(async move {
            while let Some((request, reply)) = calls.recv().await {
                let response = match request {
                    ControlRequest::CreateBranch { name, parent, at } if parent == "main" => {
                        let mut branch = view(&name);
                        branch.lsn = at;
                        ControlResponse::Created { branch }
                    }
                    ControlRequest::CreateBranch { parent, .. } => ControlResponse::Error {
                        kind: BranchErrorKind::NotFound,
                        message: format!("there is no branch {parent:?}"),
                    },
                    ControlRequest::ListBranches => ControlResponse::Branches {
                        branches: vec![view("main"), view("b1")],
                    },
                    ControlRequest::DeleteBranch { .. } => {
                        // Dropping `reply` is what a launcher that stops does.
                        continue;
                    }
                };
                let _ = reply.send(response);
            }
        });
    }

    #[tokio::test]
    async fn requests_and_answers_cross_the_socket() {
        let dir = test_dir("control");
        // A stale socket file from a launcher that crashed is replaced.
        drop(std::os::unix::net::UnixListener::bind(socket_path(&dir)).unwrap());
        let listener = bind(&dir).unwrap();
        let mode = std::fs::metadata(socket_path(&dir))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (tx, rx) = mpsc::channel(REQUESTS_QUEUED_MAX);
        let server = tokio::spawn(serve(listener, tx));
        fake_loop(rx);

        let created = call(
            &dir,
            &ControlRequest::CreateBranch {
                name: "b1".into(),
                parent: "main".into(),
                at: Some("0/5".into()),
            },
        )
        .await
        .unwrap();
        let mut expected = view("b1");
        expected.lsn = Some("0/5".into());
        assert_eq!(created, ControlResponse::Created { branch: expected });
        assert_eq!(
            call(
                &dir,
                &ControlRequest::CreateBranch {
                    name: "b1".into(),
                    parent: "nope".into(),
                    at: None
                }
            )
            .await
            .unwrap(),
            ControlResponse::Error {
                kind: BranchErrorKind::NotFound,
                message: "there is no branch \"nope\"".into()
            }
        );
        let ControlResponse::Branches { branches } =
            call(&dir, &ControlRequest::ListBranches).await.unwrap()
        else {
            panic!("not a list");
        };
        assert_eq!(branches.len(), 2);
        let ControlResponse::Error { kind, message } =
            call(&dir, &ControlRequest::DeleteBranch { name: "b1".into() })
                .await
                .unwrap()
        else {
            panic!("not an error");
        };
        assert_eq!(kind, BranchErrorKind::Unavailable);
        assert!(message.contains("stopped before it answered"), "{message}");

        // Raw lines: the exact spelling, and bad input answered without closing.
        let mut stream = UnixStream::connect(socket_path(&dir)).await.unwrap();
        let mut answers = Vec::new();
        for line in [
            r#"{"version":1,"op":"create_branch","name":"b2","parent":"main"}"#.to_string(),
            "not json".to_string(),
            r#"{"version":2,"op":"list_branches"}"#.to_string(),
            r#"{"op":"list_branches"}"#.to_string(),
            r#"{"version":1,"op":"drop_everything"}"#.to_string(),
            r#"{"version":1,"op":"create_branch","name":"b2"}"#.to_string(),
            r#"{"version":1,"op":"list_branches"}"#.to_string(),
        ] {
            stream.write_all(line.as_bytes()).await.unwrap();
            stream.write_all(b"\n").await.unwrap();
            let mut reader = BufReader::new(&mut stream);
            let answer = read_line(&mut reader).await.unwrap().unwrap();
            answers.push(String::from_utf8(answer).unwrap());
        }
        assert!(
            answers[0].starts_with(
                r#"{"version":1,"result":"created","branch":{"name":"b2","parent":"main","lsn":null,"#
            ),
            "{}",
            answers[0]
        );
        for (answer, says) in answers[1..6].iter().zip([
            "not JSON",
            "protocol version Some(2)",
            "protocol version None",
            "unknown variant `drop_everything`",
            "missing field `parent`",
        ]) {
            assert!(
                answer.starts_with(r#"{"version":1,"result":"error","kind":"bad_request""#),
                "{answer}"
            );
            assert!(answer.contains(says), "{says}: {answer}");
        }
        assert!(
            answers[6].contains(r#""result":"branches""#),
            "{}",
            answers[6]
        );

        // A line over the limit is refused and the connection closed.
        let stream = UnixStream::connect(socket_path(&dir)).await.unwrap();
        let (reader, mut writer) = stream.into_split();
        // The server stops reading at the limit and closes, so the end of this write may
        // fail.
        tokio::spawn(async move {
            let _ = writer.write_all(&vec![b' '; LINE_BYTES_MAX + 10]).await;
        });
        let mut reader = BufReader::new(reader);
        let answer = String::from_utf8(read_line(&mut reader).await.unwrap().unwrap()).unwrap();
        assert!(answer.contains("longer than"), "{answer}");
        assert!(!matches!(read_line(&mut reader).await, Ok(Some(_))));

        server.abort();
        let _ = server.await;
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn without_a_launcher_the_client_says_so() {
        let dir = test_dir("control-none");
        for stale in [false, true] {
            if stale {
                drop(std::os::unix::net::UnixListener::bind(socket_path(&dir)).unwrap());
            }
            let error = call(&dir, &ControlRequest::ListBranches).await.unwrap_err();
            assert_eq!(
                error.to_string(),
                format!(
                    "no cluster is running on {}; start one with `omendb start`",
                    dir.display()
                )
            );
        }
        let long = dir.join("x".repeat(120));
        let error = call(&long, &ControlRequest::ListBranches)
            .await
            .unwrap_err();
        assert!(error.to_string().contains("shorter --data-dir"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
