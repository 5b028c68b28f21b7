//! The control plane's vocabulary: errors, token scopes, what the operations need from the
//! running cluster ([`Backend`]), and the requests and views of the API (the JSON shapes
//! `openapi.json` documents). Plain data; no I/O.

use std::net::SocketAddr;

use ids::{TenantId, TimelineId};
use pageserver_api::{BranchPoint, TimelineInfo};
use serde::{Deserialize, Serialize};

use crate::pageserver_admin::PageserverCallError;
use crate::scram::ScramSecret;
use crate::store::EndpointKind;

/// What went wrong, coarsely, for the caller to act on (an HTTP status); the detail is in
/// the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    BadRequest,
    /// No token, or one the control plane does not know.
    Unauthorized,
    /// A token for another project.
    Forbidden,
    NotFound,
    Conflict,
    /// The pageserver or a compute did not do its part; trying again may help.
    Unavailable,
    /// A local failure (the store could not be written) or a bug.
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

pub fn api_error(kind: ErrorKind, message: impl Into<String>) -> ApiError {
    ApiError {
        kind,
        message: message.into(),
    }
}

/// What a compute is started with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComputeSpec {
    pub endpoint: String,
    pub timeline: TimelineId,
    pub read_only: bool,
}

/// What the operations need from the running cluster.
#[allow(async_fn_in_trait)] // Called from the control plane's own task only.
pub trait Backend {
    /// The pageserver's `CreateTimeline`: a root timeline, or a branch of an ancestor.
    async fn create_timeline(
        &mut self,
        tenant: TenantId,
        timeline: TimelineId,
        ancestor: Option<(TimelineId, BranchPoint)>,
    ) -> std::result::Result<TimelineInfo, PageserverCallError>;
    /// The pageserver's `DeleteTimeline`.
    async fn delete_timeline(
        &mut self,
        timeline: TimelineId,
    ) -> std::result::Result<(), PageserverCallError>;
    /// Starts a compute for `spec` (supervised from then on) and waits until it accepts
    /// connections; returns its address.
    async fn start_compute(&mut self, spec: &ComputeSpec) -> anyhow::Result<SocketAddr>;
    /// Stops the compute of `endpoint`, if one runs, and waits until it has exited.
    async fn stop_compute(&mut self, endpoint: &str);
    /// The address of the running compute of `endpoint`.
    fn compute_addr(&self, endpoint: &str) -> Option<SocketAddr>;
    fn new_timeline_id(&mut self) -> TimelineId;
}

/// Who a request speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Admin,
    Project(String),
}

impl Scope {
    pub fn check(&self, project_id: &str) -> Result<(), ApiError> {
        match self {
            Scope::Admin => Ok(()),
            Scope::Project(own) if own == project_id => Ok(()),
            Scope::Project(own) => Err(api_error(
                ErrorKind::Forbidden,
                format!(
                    "this token is for project {own}; it gives no access to project {project_id}"
                ),
            )),
        }
    }
}

/// Where clients connect: the proxy's address as connection strings show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyAddress {
    /// Host name or address in connection strings (`127.0.0.1` locally).
    pub host: String,
    pub port: u16,
    /// Endpoints are `<endpoint>.<domain>` by TLS SNI.
    pub domain: String,
}

// --- views: what the API returns ---

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectView {
    pub id: String,
    pub name: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BranchView {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub parent_id: Option<String>,
    /// The parent's name.
    pub parent: Option<String>,
    /// The parent's LSN it starts at (PostgreSQL's spelling); `None` for a root branch.
    pub lsn: Option<String>,
    pub timeline: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointState {
    Running,
    Suspended,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointView {
    pub id: String,
    pub project_id: String,
    pub branch_id: String,
    pub branch: String,
    #[serde(rename = "type")]
    pub kind: EndpointKind,
    pub idle_timeout_secs: u64,
    pub state: EndpointState,
    /// `<endpoint>.<domain>`: the TLS server name that routes to it.
    pub host: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleView {
    pub name: String,
    pub created_at: i64,
}

/// A role with its password, returned when one is made or set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleWithPassword {
    pub name: String,
    pub password: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenView {
    pub id: String,
    pub project_id: Option<String>,
    /// The token itself: shown once, only its hash is kept.
    pub token: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedProject {
    pub project: ProjectView,
    pub branch: BranchView,
    pub endpoint: EndpointView,
    pub role: RoleWithPassword,
    pub token: TokenView,
    pub connection_uri: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedBranch {
    pub branch: BranchView,
    /// The read-write endpoint made with it, unless the request asked for none.
    pub endpoint: Option<EndpointView>,
    /// Through that endpoint, as the project's owner role, if its password is known.
    pub connection_uri: Option<String>,
}

/// What the proxy needs to authenticate a connection to an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointAuth {
    pub project_id: String,
    /// The role's SCRAM secret; `None` if the project has no such role.
    pub secret: Option<ScramSecret>,
}

// --- requests ---

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateProject {
    pub name: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBranch {
    pub name: String,
    /// Parent branch id or name; default `main`.
    pub parent: Option<String>,
    /// An LSN (`0/16B3748`) or an RFC 3339 time in UTC; default the parent's head.
    pub at: Option<String>,
    /// Make a read-write endpoint for it (default true).
    pub endpoint: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateEndpoint {
    /// Branch id or name.
    pub branch: String,
    #[serde(rename = "type")]
    pub kind: Option<EndpointKind>,
    pub idle_timeout_secs: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateEndpoint {
    pub idle_timeout_secs: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRole {
    pub name: String,
    /// Generated when absent.
    pub password: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetPassword {
    /// Generated when absent.
    pub password: Option<String>,
}
