//! The control plane's operations: projects, branches, endpoints, roles and API tokens, as
//! plain async methods of [`ControlPlane`] over the metadata [`Store`] and a [`Backend`]
//! (the pageserver's timelines and the endpoints' computes: the running cluster, or a fake
//! in tests). The HTTP API, the proxy and the launcher's timers all call them; the caller
//! runs one at a time.
//!
//! # Consistency with the pageserver
//!
//! A timeline is entered in the store's `doomed_timelines` before the pageserver is asked to
//! create it, and leaves it in the transaction that records the branch owning it. Deleting a
//! branch (or a project, or resetting a branch) records the change and dooms the old
//! timeline in one transaction, then stops the computes, then deletes the timeline. At
//! start-up and after every operation [`ControlPlane::sweep_doomed`] deletes each doomed
//! timeline from the pageserver (an `UnknownTimeline` answer counts as done) and forgets it.
//! So a crash or a failure at any step leaves neither a branch without its timeline nor a
//! timeline without a branch for longer than until the next sweep:
//!
//! ```text
//! create branch:  doom T ─▶ CreateTimeline T ─▶ {insert branch, endpoint; undoom T}
//! delete branch:  {delete branch, endpoints; doom T} ─▶ stop computes ─▶ DeleteTimeline T
//! reset branch:   doom T2 ─▶ CreateTimeline T2 at parent's head ─▶ stop computes
//!                 ─▶ {branch → T2; undoom T2; doom T1} ─▶ DeleteTimeline T1
//! ```
//!
//! # Authorization
//!
//! Every API request carries a bearer token; the store keeps only its SHA-256. A project's
//! token reaches that project only (any other project is `Forbidden`, whether it exists or
//! not, so a token cannot probe for others); an admin token (no project) reaches all, and is
//! the only one that creates projects.

mod activity;
mod model;
mod rules;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ids::{TenantId, TimelineId};
use pageserver_api::{BranchPoint, ErrorKind as PageserverErrorKind, TimelineInfo};
use tracing::{info, warn};

pub use activity::Activity;
pub use model::*;
pub use rules::{
    new_id, new_password, new_token, parse_branch_point, percent_encode, token_hash,
    validate_role_name,
};
use rules::{validate_idle_timeout, validate_password};

use crate::pageserver_admin::PageserverCallError;
use crate::registry::{validate_name, MAIN_BRANCH};
use crate::scram::ScramSecret;
use crate::store::{
    self, BranchRow, EndpointKind, EndpointRow, NewProject, ProjectRow, RoleRow, Store, TokenRow,
};

/// The most projects a control plane keeps.
pub const PROJECTS_MAX: usize = 1_000;
/// The most branches a project keeps, its root included.
pub const BRANCHES_PER_PROJECT_MAX: usize = 1_000;
/// The most endpoints a project keeps.
pub const ENDPOINTS_PER_PROJECT_MAX: usize = 1_000;
/// The most roles a project keeps.
pub const ROLES_PER_PROJECT_MAX: usize = 1_000;
/// The longest project name, in bytes.
pub const PROJECT_NAME_BYTES_MAX: usize = 256;
/// The longest role name, in bytes (PostgreSQL's NAMEDATALEN − 1).
pub const ROLE_NAME_BYTES_MAX: usize = 63;
/// The longest password accepted, in bytes.
pub const PASSWORD_BYTES_MAX: usize = 1_024;
/// Idle timeout of a new endpoint unless the request names one, in seconds.
pub const IDLE_TIMEOUT_SECS_DEFAULT: u64 = 300;
/// The longest idle timeout, in seconds (a week); 0 means never suspended.
pub const IDLE_TIMEOUT_SECS_MAX: u64 = 7 * 24 * 3600;
/// Length of generated passwords, in characters.
pub const PASSWORD_CHARS: usize = 24;
/// Length of the random part of ids, in characters of `[a-z0-9]` (about 5.2 bits each).
pub const ID_RANDOM_CHARS: usize = 16;
/// Length of the random part of API tokens, in characters of `[A-Za-z0-9]`.
pub const TOKEN_RANDOM_CHARS: usize = 40;
/// The role every new project gets.
pub const OWNER_ROLE: &str = "omendb";
/// The database name connection strings name (a compute serves one database).
pub const DATABASE: &str = "omendb";

fn internal(e: anyhow::Error) -> ApiError {
    api_error(ErrorKind::Internal, format!("{e:#}"))
}

type Result<T> = std::result::Result<T, ApiError>;

/// The control plane's state and operations.
pub struct ControlPlane {
    store: Store,
    tenant: TenantId,
    proxy: ProxyAddress,
    activity: std::sync::Arc<Activity>,
}

impl ControlPlane {
    pub fn new(
        store: Store,
        tenant: TenantId,
        proxy: ProxyAddress,
        activity: std::sync::Arc<Activity>,
    ) -> ControlPlane {
        ControlPlane {
            store,
            tenant,
            proxy,
            activity,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn store_mut(&mut self) -> &mut Store {
        &mut self.store
    }

    pub fn proxy(&self) -> &ProxyAddress {
        &self.proxy
    }

    // --- tokens ---

    /// The scope of a bearer token.
    pub fn authorize(&self, token: Option<&str>) -> Result<Scope> {
        let Some(token) = token else {
            return Err(api_error(
                ErrorKind::Unauthorized,
                "this request needs an API token: Authorization: Bearer <token>",
            ));
        };
        match self
            .store
            .token_by_hash(&token_hash(token))
            .map_err(internal)?
        {
            Some(TokenRow {
                project_id: None, ..
            }) => Ok(Scope::Admin),
            Some(TokenRow {
                project_id: Some(project),
                ..
            }) => Ok(Scope::Project(project)),
            None => Err(api_error(
                ErrorKind::Unauthorized,
                "the API token is not valid",
            )),
        }
    }

    /// Makes an admin token (the local cluster's, kept in its data folder).
    pub fn create_admin_token(&self) -> Result<TokenView> {
        self.create_token_row(None)
    }

    fn create_token_row(&self, project_id: Option<&str>) -> Result<TokenView> {
        let token = new_token();
        let row = TokenRow {
            id: new_id("tok"),
            project_id: project_id.map(str::to_string),
            created_at: store::unix_now(),
        };
        self.store
            .insert_token(&row, &token_hash(&token))
            .map_err(internal)?;
        Ok(TokenView {
            id: row.id,
            project_id: row.project_id,
            token,
        })
    }

    pub fn create_token(&self, scope: &Scope, project_id: &str) -> Result<TokenView> {
        self.project_row(scope, project_id)?;
        self.create_token_row(Some(project_id))
    }

    // --- projects ---

    fn project_row(&self, scope: &Scope, project_id: &str) -> Result<ProjectRow> {
        scope.check(project_id)?;
        self.store
            .project(project_id)
            .map_err(internal)?
            .ok_or_else(|| {
                api_error(
                    ErrorKind::NotFound,
                    format!("there is no project {project_id}"),
                )
            })
    }

    pub fn get_project(&self, scope: &Scope, project_id: &str) -> Result<ProjectView> {
        let row = self.project_row(scope, project_id)?;
        Ok(ProjectView {
            id: row.id,
            name: row.name,
            created_at: row.created_at,
        })
    }

    pub fn list_projects(&self, scope: &Scope) -> Result<Vec<ProjectView>> {
        Ok(self
            .store
            .projects()
            .map_err(internal)?
            .into_iter()
            .filter(|row| scope.check(&row.id).is_ok())
            .map(|row| ProjectView {
                id: row.id,
                name: row.name,
                created_at: row.created_at,
            })
            .collect())
    }

    /// Creates a project: a root timeline with branch `main`, a read-write endpoint on it,
    /// the owner role `omendb` with a generated password, and a token for the project.
    /// `root` names an existing timeline to adopt (the local cluster's first project)
    /// instead of creating one.
    pub async fn create_project(
        &mut self,
        backend: &mut impl Backend,
        scope: &Scope,
        request: CreateProject,
        root: Option<TimelineId>,
    ) -> Result<CreatedProject> {
        if *scope != Scope::Admin {
            return Err(api_error(
                ErrorKind::Forbidden,
                "only an admin token creates projects; a project's token reaches its project only",
            ));
        }
        let name = request.name.unwrap_or_else(|| "project".into());
        if name.is_empty()
            || name.len() > PROJECT_NAME_BYTES_MAX
            || name.chars().any(char::is_control)
        {
            return Err(api_error(
                ErrorKind::BadRequest,
                format!("a project name is 1 to {PROJECT_NAME_BYTES_MAX} bytes without control characters"),
            ));
        }
        if self.store.projects().map_err(internal)?.len() >= PROJECTS_MAX {
            return Err(api_error(
                ErrorKind::Conflict,
                format!("this control plane has {PROJECTS_MAX} projects, the most it keeps"),
            ));
        }
        let timeline = match root {
            Some(timeline) => timeline,
            None => {
                self.create_doomed_timeline(backend, None, "cannot create the project's timeline")
                    .await?
                    .0
            }
        };
        let now = store::unix_now();
        let project = ProjectRow {
            id: new_id("prj"),
            name,
            created_at: now,
        };
        let branch = BranchRow {
            id: new_id("br"),
            project_id: project.id.clone(),
            name: MAIN_BRANCH.into(),
            parent_id: None,
            timeline,
            lsn: None,
            created_at: now,
        };
        let endpoint = EndpointRow {
            id: new_id("ep"),
            project_id: project.id.clone(),
            branch_id: branch.id.clone(),
            kind: EndpointKind::ReadWrite,
            idle_timeout_secs: IDLE_TIMEOUT_SECS_DEFAULT,
            created_at: now,
        };
        let password = new_password();
        let role = RoleRow {
            project_id: project.id.clone(),
            name: OWNER_ROLE.into(),
            secret: ScramSecret::from_password(&password).to_string(),
            password: Some(password.clone()),
            created_at: now,
        };
        let token = new_token();
        let token_row = TokenRow {
            id: new_id("tok"),
            project_id: Some(project.id.clone()),
            created_at: now,
        };
        let stored = self.store.insert_project(NewProject {
            project: &project,
            branch: &branch,
            endpoint: &endpoint,
            role: &role,
            token: &token_row,
            token_hash: &token_hash(&token),
        });
        if let Err(e) = stored {
            self.sweep_doomed(backend).await;
            return Err(internal(e));
        }
        info!(project = %project.id, %timeline, "project created");
        let connection_uri = self.connection_uri(&endpoint.id, OWNER_ROLE, &password);
        Ok(CreatedProject {
            project: ProjectView {
                id: project.id.clone(),
                name: project.name.clone(),
                created_at: now,
            },
            branch: self.branch_view(&branch)?,
            endpoint: self.endpoint_view(backend, &endpoint)?,
            role: RoleWithPassword {
                name: OWNER_ROLE.into(),
                password,
            },
            token: TokenView {
                id: token_row.id,
                project_id: token_row.project_id,
                token,
            },
            connection_uri,
        })
    }

    /// Deletes a project with all its branches, endpoints, roles and tokens.
    pub async fn delete_project(
        &mut self,
        backend: &mut impl Backend,
        scope: &Scope,
        project_id: &str,
    ) -> Result<ProjectView> {
        let view = self.get_project(scope, project_id)?;
        let endpoints = self.store.endpoints(project_id).map_err(internal)?;
        self.store.delete_project(project_id).map_err(internal)?;
        for endpoint in endpoints {
            backend.stop_compute(&endpoint.id).await;
            self.activity.forget(&endpoint.id);
        }
        self.sweep_doomed(backend).await;
        info!(project = project_id, "project deleted");
        Ok(view)
    }

    // --- branches ---

    fn branch_view(&self, row: &BranchRow) -> Result<BranchView> {
        let parent = match &row.parent_id {
            Some(id) => self.store.branch(id).map_err(internal)?.map(|p| p.name),
            None => None,
        };
        Ok(BranchView {
            id: row.id.clone(),
            project_id: row.project_id.clone(),
            name: row.name.clone(),
            parent_id: row.parent_id.clone(),
            parent,
            lsn: row.lsn.map(|lsn| lsn.to_string()),
            timeline: row.timeline.to_string(),
            created_at: row.created_at,
        })
    }

    fn branch_row(&self, scope: &Scope, project_id: &str, branch: &str) -> Result<BranchRow> {
        self.project_row(scope, project_id)?;
        self.store
            .find_branch(project_id, branch)
            .map_err(internal)?
            .ok_or_else(|| {
                api_error(
                    ErrorKind::NotFound,
                    format!("project {project_id} has no branch {branch:?}"),
                )
            })
    }

    pub fn list_branches(&self, scope: &Scope, project_id: &str) -> Result<Vec<BranchView>> {
        self.project_row(scope, project_id)?;
        self.store
            .branches(project_id)
            .map_err(internal)?
            .iter()
            .map(|row| self.branch_view(row))
            .collect()
    }

    pub fn get_branch(&self, scope: &Scope, project_id: &str, branch: &str) -> Result<BranchView> {
        let row = self.branch_row(scope, project_id, branch)?;
        self.branch_view(&row)
    }

    /// Creates a branch of `parent` at `at`, with a read-write endpoint unless asked not to.
    /// Its compute starts on the first connection.
    pub async fn create_branch(
        &mut self,
        backend: &mut impl Backend,
        scope: &Scope,
        project_id: &str,
        request: CreateBranch,
    ) -> Result<CreatedBranch> {
        self.project_row(scope, project_id)?;
        let name = request.name;
        validate_name(&name).map_err(|m| api_error(ErrorKind::BadRequest, m))?;
        let point = parse_branch_point(request.at.as_deref())
            .map_err(|m| api_error(ErrorKind::BadRequest, m))?;
        if self
            .store
            .find_branch(project_id, &name)
            .map_err(internal)?
            .is_some()
        {
            return Err(api_error(
                ErrorKind::Conflict,
                format!("branch {name} already exists"),
            ));
        }
        let parent_name = request.parent.unwrap_or_else(|| MAIN_BRANCH.into());
        let parent = self.branch_row(scope, project_id, &parent_name)?;
        if self.store.branches(project_id).map_err(internal)?.len() >= BRANCHES_PER_PROJECT_MAX {
            return Err(api_error(
                ErrorKind::Conflict,
                format!("project {project_id} has {BRANCHES_PER_PROJECT_MAX} branches, the most it keeps"),
            ));
        }
        let (timeline, info) = self
            .create_doomed_timeline(
                backend,
                Some((parent.timeline, point)),
                &format!("cannot branch {name} from {}", parent.name),
            )
            .await?;
        let now = store::unix_now();
        let branch = BranchRow {
            id: new_id("br"),
            project_id: project_id.into(),
            name: name.clone(),
            parent_id: Some(parent.id.clone()),
            timeline,
            lsn: Some(info.start_lsn()),
            created_at: now,
        };
        let endpoint = (request.endpoint != Some(false)).then(|| EndpointRow {
            id: new_id("ep"),
            project_id: project_id.into(),
            branch_id: branch.id.clone(),
            kind: EndpointKind::ReadWrite,
            idle_timeout_secs: IDLE_TIMEOUT_SECS_DEFAULT,
            created_at: now,
        });
        if let Err(e) = self.store.insert_branch(&branch, endpoint.as_ref()) {
            self.sweep_doomed(backend).await;
            return Err(internal(e));
        }
        info!(project = project_id, branch = %name, parent = %parent.name, lsn = %info.start_lsn(), %timeline, "branch created");
        let connection_uri = match &endpoint {
            Some(endpoint) => self.owner_connection_uri(project_id, &endpoint.id)?,
            None => None,
        };
        Ok(CreatedBranch {
            branch: self.branch_view(&branch)?,
            endpoint: endpoint
                .as_ref()
                .map(|e| self.endpoint_view(backend, e))
                .transpose()?,
            connection_uri,
        })
    }

    /// Refuses (409) an operation on a branch that other branches start from.
    fn refuse_if_branched_from(&self, row: &BranchRow, consequence: &str) -> Result<()> {
        let children = self.store.has_children(&row.id).map_err(internal)?;
        if children.is_empty() {
            return Ok(());
        }
        Err(api_error(
            ErrorKind::Conflict,
            format!(
                "branch {} has branches of its own ({}); {consequence}",
                row.name,
                children.join(", ")
            ),
        ))
    }

    /// Deletes a branch and its endpoints; refused for a project's root branch and for a
    /// branch others branch from.
    pub async fn delete_branch(
        &mut self,
        backend: &mut impl Backend,
        scope: &Scope,
        project_id: &str,
        branch: &str,
    ) -> Result<BranchView> {
        let row = self.branch_row(scope, project_id, branch)?;
        if row.parent_id.is_none() {
            return Err(api_error(
                ErrorKind::BadRequest,
                format!(
                    "branch {} is the project's root branch and cannot be deleted",
                    row.name
                ),
            ));
        }
        self.refuse_if_branched_from(&row, "delete them first")?;
        let view = self.branch_view(&row)?;
        let endpoints = self.store.endpoints_of_branch(&row.id).map_err(internal)?;
        self.store.delete_branch(&row).map_err(internal)?;
        for endpoint in endpoints {
            backend.stop_compute(&endpoint.id).await;
            self.activity.forget(&endpoint.id);
        }
        self.sweep_doomed(backend).await;
        info!(project = project_id, branch = %row.name, timeline = %row.timeline, "branch deleted");
        Ok(view)
    }

    /// Resets a branch to its parent's latest state: a new timeline branched from the parent
    /// now replaces its own (its changes are discarded); its endpoints keep their ids and
    /// connection strings, and their computes restart on the new timeline at the next
    /// connection.
    pub async fn reset_branch(
        &mut self,
        backend: &mut impl Backend,
        scope: &Scope,
        project_id: &str,
        branch: &str,
    ) -> Result<BranchView> {
        let row = self.branch_row(scope, project_id, branch)?;
        let Some(parent_id) = row.parent_id.clone() else {
            return Err(api_error(
                ErrorKind::BadRequest,
                format!(
                    "branch {} is the project's root branch; it has no parent to reset to",
                    row.name
                ),
            ));
        };
        self.refuse_if_branched_from(
            &row,
            "they start from its current state, so it cannot be reset",
        )?;
        let parent = self
            .store
            .branch(&parent_id)
            .map_err(internal)?
            .ok_or_else(|| internal(anyhow::anyhow!("branch {} has no parent row", row.id)))?;
        let (timeline, info) = self
            .create_doomed_timeline(
                backend,
                Some((parent.timeline, BranchPoint::Latest)),
                &format!("cannot reset {} to {}", row.name, parent.name),
            )
            .await?;
        let endpoints = self.store.endpoints_of_branch(&row.id).map_err(internal)?;
        for endpoint in &endpoints {
            backend.stop_compute(&endpoint.id).await;
        }
        if let Err(e) = self
            .store
            .replace_timeline(&row.id, timeline, info.start_lsn())
        {
            self.sweep_doomed(backend).await;
            return Err(internal(e));
        }
        self.sweep_doomed(backend).await;
        info!(project = project_id, branch = %row.name, lsn = %info.start_lsn(), %timeline, "branch reset to its parent");
        let row = self
            .store
            .branch(&row.id)
            .map_err(internal)?
            .ok_or_else(|| internal(anyhow::anyhow!("branch {} vanished", row.id)))?;
        self.branch_view(&row)
    }

    /// Deletes every doomed timeline no branch names from the pageserver. One that cannot be
    /// deleted now (the pageserver is down, or a child timeline still exists) stays for the
    /// next sweep.
    pub async fn sweep_doomed(&mut self, backend: &mut impl Backend) {
        let Ok(doomed) = self.store.doomed_timelines() else {
            return;
        };
        if doomed.is_empty() {
            return;
        }
        let owned: std::collections::HashSet<TimelineId> = match self.store.all_branches() {
            Ok(branches) => branches.into_iter().map(|b| b.timeline).collect(),
            Err(_) => return,
        };
        let mut pending: Vec<TimelineId> = Vec::new();
        for timeline in doomed {
            if owned.contains(&timeline) {
                // Only a bug could doom a timeline a branch names; never delete it.
                warn!(%timeline, "a doomed timeline is owned by a branch; keeping it");
                let _ = self.store.forget_doomed(timeline);
            } else {
                pending.push(timeline);
            }
        }
        // Children before parents: a timeline with branches is refused, so go round while
        // each pass deletes something.
        loop {
            let mut left = Vec::new();
            let before = pending.len();
            for timeline in pending {
                match backend.delete_timeline(timeline).await {
                    Ok(())
                    | Err(PageserverCallError::Refused {
                        kind: PageserverErrorKind::UnknownTimeline,
                        ..
                    }) => {
                        if let Err(e) = self.store.forget_doomed(timeline) {
                            warn!(%timeline, "deleted, but forgetting it failed: {e:#}");
                        }
                    }
                    Err(e) => {
                        info!(%timeline, "cannot delete a doomed timeline yet: {e}");
                        left.push(timeline);
                    }
                }
            }
            if left.is_empty() || left.len() == before {
                break;
            }
            pending = left;
        }
    }

    // --- endpoints ---

    fn endpoint_view(&self, backend: &impl Backend, row: &EndpointRow) -> Result<EndpointView> {
        let branch = self
            .store
            .branch(&row.branch_id)
            .map_err(internal)?
            .map(|b| b.name)
            .unwrap_or_default();
        Ok(EndpointView {
            id: row.id.clone(),
            project_id: row.project_id.clone(),
            branch_id: row.branch_id.clone(),
            branch,
            kind: row.kind,
            idle_timeout_secs: row.idle_timeout_secs,
            state: if backend.compute_addr(&row.id).is_some() {
                EndpointState::Running
            } else {
                EndpointState::Suspended
            },
            host: format!("{}.{}", row.id, self.proxy.domain),
            created_at: row.created_at,
        })
    }

    fn endpoint_row(&self, scope: &Scope, project_id: &str, endpoint: &str) -> Result<EndpointRow> {
        self.project_row(scope, project_id)?;
        match self.store.endpoint(endpoint).map_err(internal)? {
            Some(row) if row.project_id == project_id => Ok(row),
            _ => Err(api_error(
                ErrorKind::NotFound,
                format!("project {project_id} has no endpoint {endpoint:?}"),
            )),
        }
    }

    pub fn list_endpoints(
        &self,
        backend: &impl Backend,
        scope: &Scope,
        project_id: &str,
    ) -> Result<Vec<EndpointView>> {
        self.project_row(scope, project_id)?;
        self.store
            .endpoints(project_id)
            .map_err(internal)?
            .iter()
            .map(|row| self.endpoint_view(backend, row))
            .collect()
    }

    pub fn get_endpoint(
        &self,
        backend: &impl Backend,
        scope: &Scope,
        project_id: &str,
        endpoint: &str,
    ) -> Result<EndpointView> {
        let row = self.endpoint_row(scope, project_id, endpoint)?;
        self.endpoint_view(backend, &row)
    }

    pub fn create_endpoint(
        &mut self,
        backend: &impl Backend,
        scope: &Scope,
        project_id: &str,
        request: CreateEndpoint,
    ) -> Result<EndpointView> {
        let branch = self.branch_row(scope, project_id, &request.branch)?;
        let kind = request.kind.unwrap_or(EndpointKind::ReadWrite);
        let idle_timeout_secs = validate_idle_timeout(
            request
                .idle_timeout_secs
                .unwrap_or(IDLE_TIMEOUT_SECS_DEFAULT),
        )?;
        if self.store.endpoints(project_id).map_err(internal)?.len() >= ENDPOINTS_PER_PROJECT_MAX {
            return Err(api_error(
                ErrorKind::Conflict,
                format!("project {project_id} has {ENDPOINTS_PER_PROJECT_MAX} endpoints, the most it keeps"),
            ));
        }
        let row = EndpointRow {
            id: new_id("ep"),
            project_id: project_id.into(),
            branch_id: branch.id.clone(),
            kind,
            idle_timeout_secs,
            created_at: store::unix_now(),
        };
        if let Err(e) = self.store.insert_endpoint(&row) {
            if store::is_unique_violation(&e) {
                return Err(api_error(
                    ErrorKind::Conflict,
                    format!(
                        "branch {} already has a read-write endpoint; a branch has at most one \
                         (add read-only ones as you like)",
                        branch.name
                    ),
                ));
            }
            return Err(internal(e));
        }
        self.endpoint_view(backend, &row)
    }

    pub fn update_endpoint(
        &mut self,
        backend: &impl Backend,
        scope: &Scope,
        project_id: &str,
        endpoint: &str,
        request: UpdateEndpoint,
    ) -> Result<EndpointView> {
        let row = self.endpoint_row(scope, project_id, endpoint)?;
        if let Some(secs) = request.idle_timeout_secs {
            self.store
                .set_idle_timeout(&row.id, validate_idle_timeout(secs)?)
                .map_err(internal)?;
        }
        let row = self.endpoint_row(scope, project_id, endpoint)?;
        self.endpoint_view(backend, &row)
    }

    pub async fn delete_endpoint(
        &mut self,
        backend: &mut impl Backend,
        scope: &Scope,
        project_id: &str,
        endpoint: &str,
    ) -> Result<EndpointView> {
        let row = self.endpoint_row(scope, project_id, endpoint)?;
        let view = self.endpoint_view(backend, &row)?;
        self.store.delete_endpoint(&row.id).map_err(internal)?;
        backend.stop_compute(&row.id).await;
        self.activity.forget(&row.id);
        Ok(view)
    }

    /// Starts the endpoint's compute now (it would start at the next connection anyway).
    pub async fn start_endpoint(
        &mut self,
        backend: &mut impl Backend,
        scope: &Scope,
        project_id: &str,
        endpoint: &str,
    ) -> Result<EndpointView> {
        let row = self.endpoint_row(scope, project_id, endpoint)?;
        self.activity.touch(&row.id);
        self.wake_row(backend, &row).await?;
        self.endpoint_view(backend, &row)
    }

    /// Stops the endpoint's compute; the next connection starts it again.
    pub async fn suspend_endpoint(
        &mut self,
        backend: &mut impl Backend,
        scope: &Scope,
        project_id: &str,
        endpoint: &str,
    ) -> Result<EndpointView> {
        let row = self.endpoint_row(scope, project_id, endpoint)?;
        backend.stop_compute(&row.id).await;
        info!(endpoint = %row.id, "endpoint suspended");
        self.endpoint_view(backend, &row)
    }

    async fn wake_row(
        &mut self,
        backend: &mut impl Backend,
        row: &EndpointRow,
    ) -> Result<SocketAddr> {
        if let Some(addr) = backend.compute_addr(&row.id) {
            return Ok(addr);
        }
        let branch = self
            .store
            .branch(&row.branch_id)
            .map_err(internal)?
            .ok_or_else(|| internal(anyhow::anyhow!("endpoint {} has no branch row", row.id)))?;
        let spec = ComputeSpec {
            endpoint: row.id.clone(),
            timeline: branch.timeline,
            read_only: row.kind == EndpointKind::ReadOnly,
        };
        let addr = backend.start_compute(&spec).await.map_err(|e| {
            api_error(
                ErrorKind::Unavailable,
                format!("the compute of endpoint {} did not start: {e:#}", row.id),
            )
        })?;
        info!(endpoint = %row.id, %addr, "endpoint started");
        Ok(addr)
    }

    /// A new pageserver timeline (a root, or a branch of `ancestor`), doomed before it is
    /// created so that a crash before its owner is recorded leaves nothing behind; the caller
    /// undooms it in the transaction that records it. On failure the sweep deletes whatever
    /// the pageserver made, and the error says what was `doing`.
    async fn create_doomed_timeline(
        &mut self,
        backend: &mut impl Backend,
        ancestor: Option<(TimelineId, BranchPoint)>,
        doing: &str,
    ) -> Result<(TimelineId, TimelineInfo)> {
        let timeline = backend.new_timeline_id();
        self.store.doom_timeline(timeline).map_err(internal)?;
        match backend
            .create_timeline(self.tenant, timeline, ancestor)
            .await
        {
            Ok(info) => Ok((timeline, info)),
            Err(e) => {
                self.sweep_doomed(backend).await;
                Err(pageserver_error(&e, doing))
            }
        }
    }

    /// An endpoint by id, in any project (the proxy's lookups; 404 if there is none).
    fn endpoint_by_id(&self, endpoint: &str) -> Result<EndpointRow> {
        self.store
            .endpoint(endpoint)
            .map_err(internal)?
            .ok_or_else(|| {
                api_error(
                    ErrorKind::NotFound,
                    format!("endpoint {endpoint} does not exist"),
                )
            })
    }

    /// The proxy's wake-up call: the address of the endpoint's compute, started if needed.
    pub async fn wake(&mut self, backend: &mut impl Backend, endpoint: &str) -> Result<SocketAddr> {
        let row = self.endpoint_by_id(endpoint)?;
        self.wake_row(backend, &row).await
    }

    /// The proxy's authentication lookup: the endpoint's project and the role's secret.
    pub fn endpoint_auth(&self, endpoint: &str, role: &str) -> Result<EndpointAuth> {
        let row = self.endpoint_by_id(endpoint)?;
        let secret = match self.store.role(&row.project_id, role).map_err(internal)? {
            Some(role) => Some(ScramSecret::parse(&role.secret).map_err(|e| {
                internal(anyhow::anyhow!(
                    "the stored secret of role {}: {e}",
                    role.name
                ))
            })?),
            None => None,
        };
        Ok(EndpointAuth {
            project_id: row.project_id,
            secret,
        })
    }

    /// Suspends every running endpoint idle for longer than its timeout. Returns the ids
    /// suspended.
    pub async fn suspend_idle(&mut self, backend: &mut impl Backend, now: Instant) -> Vec<String> {
        let Ok(projects) = self.store.projects() else {
            return Vec::new();
        };
        let mut suspended = Vec::new();
        for project in projects {
            let Ok(endpoints) = self.store.endpoints(&project.id) else {
                continue;
            };
            for endpoint in endpoints {
                if endpoint.idle_timeout_secs == 0 || backend.compute_addr(&endpoint.id).is_none() {
                    continue;
                }
                let timeout = Duration::from_secs(endpoint.idle_timeout_secs);
                if matches!(self.activity.idle_for(&endpoint.id, now), Some(idle) if idle >= timeout)
                {
                    backend.stop_compute(&endpoint.id).await;
                    info!(endpoint = %endpoint.id, idle_timeout_secs = endpoint.idle_timeout_secs, "endpoint suspended after its idle timeout");
                    suspended.push(endpoint.id);
                }
            }
        }
        suspended
    }

    // --- roles ---

    fn role_row(&self, project_id: &str, role: &str) -> Result<RoleRow> {
        self.store
            .role(project_id, role)
            .map_err(internal)?
            .ok_or_else(|| {
                api_error(
                    ErrorKind::NotFound,
                    format!("project {project_id} has no role {role:?}"),
                )
            })
    }

    pub fn list_roles(&self, scope: &Scope, project_id: &str) -> Result<Vec<RoleView>> {
        self.project_row(scope, project_id)?;
        Ok(self
            .store
            .roles(project_id)
            .map_err(internal)?
            .into_iter()
            .map(|row| RoleView {
                name: row.name,
                created_at: row.created_at,
            })
            .collect())
    }

    pub fn create_role(
        &mut self,
        scope: &Scope,
        project_id: &str,
        request: CreateRole,
    ) -> Result<RoleWithPassword> {
        self.project_row(scope, project_id)?;
        validate_role_name(&request.name).map_err(|m| api_error(ErrorKind::BadRequest, m))?;
        if self.store.roles(project_id).map_err(internal)?.len() >= ROLES_PER_PROJECT_MAX {
            return Err(api_error(
                ErrorKind::Conflict,
                format!(
                    "project {project_id} has {ROLES_PER_PROJECT_MAX} roles, the most it keeps"
                ),
            ));
        }
        let password = chosen_password(request.password)?;
        let row = RoleRow {
            project_id: project_id.into(),
            name: request.name.clone(),
            secret: ScramSecret::from_password(&password).to_string(),
            password: Some(password.clone()),
            created_at: store::unix_now(),
        };
        if let Err(e) = self.store.insert_role(&row) {
            if store::is_unique_violation(&e) {
                return Err(api_error(
                    ErrorKind::Conflict,
                    format!("role {} already exists", request.name),
                ));
            }
            return Err(internal(e));
        }
        Ok(RoleWithPassword {
            name: request.name,
            password,
        })
    }

    pub fn set_password(
        &mut self,
        scope: &Scope,
        project_id: &str,
        role: &str,
        request: SetPassword,
    ) -> Result<RoleWithPassword> {
        self.project_row(scope, project_id)?;
        self.role_row(project_id, role)?;
        let password = chosen_password(request.password)?;
        self.store
            .set_role_secret(
                project_id,
                role,
                &ScramSecret::from_password(&password).to_string(),
                Some(&password),
            )
            .map_err(internal)?;
        Ok(RoleWithPassword {
            name: role.into(),
            password,
        })
    }

    pub fn delete_role(&mut self, scope: &Scope, project_id: &str, role: &str) -> Result<RoleView> {
        self.project_row(scope, project_id)?;
        let row = self.role_row(project_id, role)?;
        self.store.delete_role(project_id, role).map_err(internal)?;
        Ok(RoleView {
            name: row.name,
            created_at: row.created_at,
        })
    }

    // --- connection strings ---

    /// `postgres://role:password@host:port/omendb?options=endpoint%3D<id>`: the endpoint in
    /// `options`, which works whether or not the host name can carry it by SNI.
    pub fn connection_uri(&self, endpoint: &str, role: &str, password: &str) -> String {
        format!(
            "postgres://{}:{}@{}:{}/{DATABASE}?options=endpoint%3D{endpoint}",
            percent_encode(role),
            percent_encode(password),
            self.proxy.host,
            self.proxy.port
        )
    }

    fn owner_connection_uri(&self, project_id: &str, endpoint: &str) -> Result<Option<String>> {
        Ok(self
            .store
            .role(project_id, OWNER_ROLE)
            .map_err(internal)?
            .and_then(|role| role.password)
            .map(|password| self.connection_uri(endpoint, OWNER_ROLE, &password)))
    }

    /// The connection string of a branch's (or a given endpoint's) read-write endpoint as
    /// `role` (default the owner).
    pub fn connection_uri_for(
        &self,
        scope: &Scope,
        project_id: &str,
        branch: Option<&str>,
        endpoint: Option<&str>,
        role: Option<&str>,
    ) -> Result<String> {
        self.project_row(scope, project_id)?;
        let endpoint = match (endpoint, branch) {
            (Some(endpoint), _) => self.endpoint_row(scope, project_id, endpoint)?,
            (None, branch) => {
                let branch = self.branch_row(scope, project_id, branch.unwrap_or(MAIN_BRANCH))?;
                let endpoints = self
                    .store
                    .endpoints_of_branch(&branch.id)
                    .map_err(internal)?;
                endpoints
                    .iter()
                    .find(|e| e.kind == EndpointKind::ReadWrite)
                    .or(endpoints.first())
                    .cloned()
                    .ok_or_else(|| {
                        api_error(
                            ErrorKind::NotFound,
                            format!("branch {} has no endpoint; create one first", branch.name),
                        )
                    })?
            }
        };
        let role_name = role.unwrap_or(OWNER_ROLE);
        let role = self.role_row(project_id, role_name)?;
        let password = role.password.ok_or_else(|| {
            api_error(
                ErrorKind::Conflict,
                format!("the password of role {role_name} is not kept; set a new one"),
            )
        })?;
        Ok(self.connection_uri(&endpoint.id, role_name, &password))
    }
}

/// The password a request gives (checked), or a generated one.
fn chosen_password(given: Option<String>) -> Result<String> {
    match given {
        Some(password) => {
            validate_password(&password)?;
            Ok(password)
        }
        None => Ok(new_password()),
    }
}

fn pageserver_error(e: &PageserverCallError, doing: &str) -> ApiError {
    match e {
        PageserverCallError::Refused { kind, message } => {
            let kind = match kind {
                PageserverErrorKind::BadRequest => ErrorKind::BadRequest,
                PageserverErrorKind::UnknownTimeline => ErrorKind::NotFound,
                PageserverErrorKind::WaitLsnTimeout => ErrorKind::Unavailable,
                PageserverErrorKind::Internal => ErrorKind::Internal,
                _ => ErrorKind::Conflict,
            };
            api_error(kind, format!("{doing}: {message}"))
        }
        PageserverCallError::Unknown { .. } => api_error(
            ErrorKind::Unavailable,
            format!("{doing}: {e}; nothing was kept"),
        ),
    }
}
