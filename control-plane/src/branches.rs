//! Branch operations of a local cluster: create, list, delete, and the start-up step that
//! finishes or rolls back an operation a crash interrupted.
//!
//! A branch is a timeline that starts as its parent's state at a point (the pageserver's
//! `CreateTimeline` with an ancestor; no data is copied) and has a compute of its own on a
//! port of its own. The operations are plain async functions over [`Branches`] (the registry
//! in `branches.json`, see [`crate::registry`]) and a [`BranchBackend`] (the pageserver and
//! the computes: the running launcher, or a fake in tests), so that the control socket and
//! later an HTTP API can call them alike. The caller runs one operation at a time.
//!
//! # Order of steps, and what a crash leaves
//!
//! The registry is written before each step that changes something outside it, so that an
//! entry is never `ready` unless the pageserver has its timeline:
//!
//! ```text
//! create:  entry "creating" ─▶ CreateTimeline ─▶ start compute, wait ─▶ entry "ready"
//! delete:  entry "deleting" ─▶ stop compute ─▶ DeleteTimeline ─▶ entry removed
//! ```
//!
//! - A crash (or a failure) anywhere before `ready` leaves a `creating` entry whose
//!   timeline the pageserver may or may not have. Creation is then rolled back: the timeline
//!   is deleted (a pageserver that does not know it answers `UnknownTimeline`, which counts as
//!   done) and the entry removed. The user never got a connection string for it.
//! - A crash after `deleting` was written is finished the same way: the timeline is deleted
//!   and the entry removed.
//! - Both happen in [`Branches::recover`] when the launcher starts (before any branch compute
//!   starts), and `omendb branch delete NAME` does the same for an entry in either state. If
//!   the pageserver cannot be reached then, the entry stays as it is, without a compute, and
//!   `omendb branch list` shows its state.
//! - A pageserver that refuses a request (it answered `Error`) did nothing: a refused create
//!   removes the entry at once; a refused delete puts the entry back as it was (and starts
//!   its compute again). Only an `Internal` error or no answer leaves the outcome unknown.

use std::path::{Path, PathBuf};

use ids::{Lsn, TenantId, TimelineId};
use pageserver_api::{BranchPoint, ErrorKind, TimelineInfo};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::pageserver_admin::PageserverCallError;
use crate::registry::{
    validate_name, BranchEntry, BranchState, Registry, BRANCHES_MAX, MAIN_BRANCH,
};

/// What the operations need from the running cluster.
#[allow(async_fn_in_trait)] // Called from the launcher's own task only; no `Send` bound needed.
pub trait BranchBackend {
    /// The pageserver's `CreateTimeline` of `timeline`, a branch of `ancestor` at `point`.
    async fn create_timeline(
        &mut self,
        tenant: TenantId,
        timeline: TimelineId,
        ancestor: TimelineId,
        point: BranchPoint,
    ) -> Result<TimelineInfo, PageserverCallError>;
    /// The pageserver's `DeleteTimeline`.
    async fn delete_timeline(&mut self, timeline: TimelineId) -> Result<(), PageserverCallError>;
    /// Starts the compute of `branch` (supervised from then on) and waits until it accepts
    /// connections.
    async fn start_compute(&mut self, branch: &BranchEntry) -> anyhow::Result<()>;
    /// Stops the compute of branch `name`, if one runs.
    async fn stop_compute(&mut self, name: &str);
    /// A free port on 127.0.0.1 that is not in `taken`.
    fn free_port(&mut self, taken: &[u16]) -> anyhow::Result<u16>;
    /// A new random timeline id.
    fn new_timeline_id(&mut self) -> TimelineId;
}

/// What went wrong, coarsely, for the caller to act on; the detail is in `message`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BranchErrorKind {
    /// The request is malformed (a bad name or `--at`).
    BadRequest,
    /// No such branch.
    NotFound,
    /// The request conflicts with the branches as they are.
    Conflict,
    /// The pageserver or a compute did not do its part; trying again may help.
    Unavailable,
    /// A local failure (the registry could not be written) or a bug.
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct BranchError {
    pub kind: BranchErrorKind,
    pub message: String,
}

fn error(kind: BranchErrorKind, message: impl Into<String>) -> BranchError {
    BranchError {
        kind,
        message: message.into(),
    }
}

/// A branch as the commands show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BranchView {
    pub name: String,
    /// `None` for `main`.
    pub parent: Option<String>,
    /// The LSN of the parent it starts at (PostgreSQL's spelling); `None` for `main` and
    /// while it is being created.
    pub lsn: Option<String>,
    pub timeline: String,
    /// `postgres://omendb@127.0.0.1:PORT/omendb`.
    pub connection: String,
    pub state: BranchState,
}

/// The connection string of a compute on `port`.
pub fn connection_string(port: u16) -> String {
    format!("postgres://omendb@127.0.0.1:{port}/omendb")
}

/// Parses `--at`: absent is the parent's latest commit; `HI/LO` in hex (`0/16B3748`) an LSN;
/// otherwise an RFC 3339 time in UTC (`2024-05-01T12:00:00Z`, fractions of a second
/// allowed, the `Z` optional).
pub fn parse_branch_point(at: Option<&str>) -> Result<BranchPoint, String> {
    let Some(at) = at else {
        return Ok(BranchPoint::Latest);
    };
    if at.contains('/') {
        return at
            .parse::<Lsn>()
            .map(BranchPoint::Lsn)
            .map_err(|e| format!("--at {at:?} is not an LSN: {e}"));
    }
    let time = check_rfc3339_tail(at)
        .and_then(|()| humantime::parse_rfc3339_weak(at))
        .map_err(|e| {
            format!(
                "--at {at:?} is neither an LSN (like 0/16B3748) nor an RFC 3339 time in UTC \
             (like 2024-05-01T12:00:00Z): {e}"
            )
        })?;
    let since_epoch = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| format!("--at {at:?} is before 1970"))?;
    let unix_us = u64::try_from(since_epoch.as_micros())
        .map_err(|_| format!("--at {at:?} is too far in the future"))?;
    Ok(BranchPoint::Timestamp { unix_us })
}

/// What `humantime::parse_rfc3339_weak` lets through after the seconds unchecked (it
/// ignores anything after a `Z`): the rest must be `[.digits][Z|+00:00]`.
fn check_rfc3339_tail(at: &str) -> Result<(), humantime::TimestampError> {
    let Some(mut tail) = at.get(19..) else {
        return Ok(()); // Too short, or not ASCII: the parser refuses it.
    };
    if let Some(fraction) = tail.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        tail = &fraction[digits..];
    }
    match tail {
        "" | "Z" | "+00:00" => Ok(()),
        _ => Err(humantime::TimestampError::InvalidFormat),
    }
}

/// The branches of one cluster: `main` and the registry.
pub struct Branches {
    data_dir: PathBuf,
    tenant: TenantId,
    main_timeline: TimelineId,
    main_port: u16,
    registry: Registry,
}

impl Branches {
    /// Reads `<data_dir>/branches.json` (absent: no branches besides `main`).
    pub fn open(
        data_dir: &Path,
        tenant: TenantId,
        main_timeline: TimelineId,
        main_port: u16,
    ) -> anyhow::Result<Branches> {
        Ok(Branches {
            data_dir: data_dir.to_path_buf(),
            tenant,
            main_timeline,
            main_port,
            registry: Registry::load(data_dir, main_timeline)?,
        })
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    fn save(&self) -> anyhow::Result<()> {
        self.registry.save(&self.data_dir, self.main_timeline)
    }

    fn view(&self, entry: &BranchEntry) -> BranchView {
        BranchView {
            name: entry.name.clone(),
            parent: Some(entry.parent.clone()),
            lsn: entry.lsn.map(|lsn| lsn.to_string()),
            timeline: entry.timeline.to_string(),
            connection: connection_string(entry.port),
            state: entry.state,
        }
    }

    /// `main` first, then every branch in creation order.
    pub fn list(&self) -> Vec<BranchView> {
        let main = BranchView {
            name: MAIN_BRANCH.into(),
            parent: None,
            lsn: None,
            timeline: self.main_timeline.to_string(),
            connection: connection_string(self.main_port),
            state: BranchState::Ready,
        };
        std::iter::once(main)
            .chain(self.registry.branches.iter().map(|entry| self.view(entry)))
            .collect()
    }

    /// Creates branch `name` from `parent` at `at` (see [`parse_branch_point`]) and starts its
    /// compute; see the module docs for the order of steps.
    pub async fn create(
        &mut self,
        backend: &mut impl BranchBackend,
        name: &str,
        parent: &str,
        at: Option<&str>,
    ) -> Result<BranchView, BranchError> {
        use BranchErrorKind::*;
        validate_name(name).map_err(|message| error(BadRequest, message))?;
        if name == MAIN_BRANCH {
            return Err(error(
                Conflict,
                "branch main already exists: it is the cluster's root branch",
            ));
        }
        if let Some(existing) = self.registry.get(name) {
            let hint = match existing.state {
                BranchState::Ready => String::new(),
                state => format!(
                    " (it is left {state}; `omendb branch delete {name}` or the next \
                     `omendb start` removes it)"
                ),
            };
            return Err(error(
                Conflict,
                format!("branch {name} already exists{hint}"),
            ));
        }
        let point = parse_branch_point(at).map_err(|message| error(BadRequest, message))?;
        let parent_timeline = if parent == MAIN_BRANCH {
            self.main_timeline
        } else {
            match self.registry.get(parent) {
                None => {
                    return Err(error(
                        NotFound,
                        format!("there is no branch {parent:?}; `omendb branch list` shows them"),
                    ))
                }
                Some(entry) if entry.state != BranchState::Ready => {
                    return Err(error(
                        Conflict,
                        format!(
                            "branch {parent} is {}; it cannot be branched from",
                            entry.state
                        ),
                    ))
                }
                Some(entry) => entry.timeline,
            }
        };
        if self.registry.branches.len() >= BRANCHES_MAX {
            return Err(error(
                Conflict,
                format!("this cluster has {BRANCHES_MAX} branches, the most it keeps"),
            ));
        }
        // Random 128-bit ids do not collide in practice; the check keeps a bad source of
        // randomness from reusing one.
        let timeline = backend.new_timeline_id();
        if timeline == self.main_timeline
            || self
                .registry
                .branches
                .iter()
                .any(|b| b.timeline == timeline)
        {
            return Err(error(
                Internal,
                format!("the new timeline id {timeline} is taken (this is a bug)"),
            ));
        }
        let mut taken: Vec<u16> = self.registry.branches.iter().map(|b| b.port).collect();
        taken.push(self.main_port);
        let port = backend.free_port(&taken).map_err(|e| {
            error(
                Unavailable,
                format!("no free port for branch {name}: {e:#}"),
            )
        })?;

        self.registry.branches.push(BranchEntry {
            name: name.into(),
            timeline,
            parent: parent.into(),
            lsn: None,
            port,
            state: BranchState::Creating,
        });
        if let Err(e) = self.save() {
            self.registry.remove(name);
            return Err(error(Internal, format!("{e:#}")));
        }

        let info = match backend
            .create_timeline(self.tenant, timeline, parent_timeline, point)
            .await
        {
            Ok(info) => info,
            Err(PageserverCallError::Refused { kind, message }) if kind != ErrorKind::Internal => {
                self.registry.remove(name);
                let kind = match kind {
                    ErrorKind::BadRequest => BadRequest,
                    ErrorKind::UnknownTimeline => NotFound,
                    ErrorKind::WaitLsnTimeout => Unavailable,
                    _ => Conflict,
                };
                let mut message = format!("cannot branch {name} from {parent}: {message}");
                if let Err(e) = self.save() {
                    message.push_str(&format!(
                        "; and removing its entry failed: {e:#} (the next `omendb start` \
                         removes it)"
                    ));
                }
                return Err(error(kind, message));
            }
            Err(e) => {
                let cause = format!("creating its timeline failed: {e}");
                return Err(self.roll_back_creation(backend, name, &cause).await);
            }
        };
        let lsn = info.start_lsn();
        let entry = {
            let entry = self.registry.get_mut(name).expect("added above");
            entry.lsn = Some(lsn);
            entry.clone()
        };
        if let Err(e) = backend.start_compute(&entry).await {
            let cause = format!("its compute did not start: {e:#}");
            return Err(self.roll_back_creation(backend, name, &cause).await);
        }
        self.registry.get_mut(name).expect("added above").state = BranchState::Ready;
        if let Err(e) = self.save() {
            let cause = format!("recording it failed: {e:#}");
            return Err(self.roll_back_creation(backend, name, &cause).await);
        }
        info!(branch = name, %parent, %lsn, %timeline, port, "branch created");
        Ok(self.view(self.registry.get(name).expect("added above")))
    }

    /// Undoes a creation that failed after its `creating` entry was written.
    async fn roll_back_creation(
        &mut self,
        backend: &mut impl BranchBackend,
        name: &str,
        cause: &str,
    ) -> BranchError {
        match self.discard(backend, name).await {
            Ok(()) => error(
                BranchErrorKind::Unavailable,
                format!("cannot create branch {name}: {cause}; nothing was kept"),
            ),
            Err(e) => error(
                BranchErrorKind::Unavailable,
                format!(
                    "cannot create branch {name}: {cause}; rolling it back failed too ({e}); \
                     it is left \"creating\" until `omendb branch delete {name}` or the next \
                     `omendb start` removes it"
                ),
            ),
        }
    }

    /// Stops the compute of entry `name`, deletes its timeline and removes the entry. On an
    /// error the entry stays (in the state it has).
    async fn discard(
        &mut self,
        backend: &mut impl BranchBackend,
        name: &str,
    ) -> Result<(), String> {
        let Some(entry) = self.registry.get(name) else {
            return Ok(());
        };
        let timeline = entry.timeline;
        backend.stop_compute(name).await;
        match backend.delete_timeline(timeline).await {
            Ok(())
            | Err(PageserverCallError::Refused {
                kind: ErrorKind::UnknownTimeline,
                ..
            }) => {}
            Err(e) => return Err(e.to_string()),
        }
        let removed = self.registry.remove(name).expect("looked up above");
        if let Err(e) = self.save() {
            self.registry.branches.push(removed);
            return Err(format!("{e:#}"));
        }
        Ok(())
    }

    /// Deletes branch `name`: refused for `main` and for a branch that others branch from.
    pub async fn delete(
        &mut self,
        backend: &mut impl BranchBackend,
        name: &str,
    ) -> Result<BranchView, BranchError> {
        use BranchErrorKind::*;
        if name == MAIN_BRANCH {
            return Err(error(
                BadRequest,
                "branch main is the cluster's root branch and cannot be deleted",
            ));
        }
        let Some(entry) = self.registry.get(name) else {
            return Err(error(
                NotFound,
                format!("there is no branch {name:?}; `omendb branch list` shows them"),
            ));
        };
        let children = self.registry.children(name);
        if !children.is_empty() {
            return Err(error(
                Conflict,
                format!(
                    "branch {name} has branches of its own ({}); delete them first",
                    children.join(", ")
                ),
            ));
        }
        let previous = entry.state;
        let view = self.view(entry);
        let entry = entry.clone();
        self.registry.get_mut(name).expect("looked up above").state = BranchState::Deleting;
        if let Err(e) = self.save() {
            self.registry.get_mut(name).expect("looked up above").state = previous;
            return Err(error(Internal, format!("{e:#}")));
        }
        backend.stop_compute(name).await;
        match backend.delete_timeline(entry.timeline).await {
            Ok(())
            | Err(PageserverCallError::Refused {
                kind: ErrorKind::UnknownTimeline,
                ..
            }) => {}
            Err(PageserverCallError::Refused { kind, message }) if kind != ErrorKind::Internal => {
                // The pageserver did nothing: the branch is put back as it was.
                let mut message =
                    format!("the pageserver refused to delete branch {name}: {message}");
                self.registry.get_mut(name).expect("looked up above").state = previous;
                if let Err(e) = self.save() {
                    self.registry.get_mut(name).expect("looked up above").state =
                        BranchState::Deleting;
                    message.push_str(&format!(
                        "; and recording that failed: {e:#}; it is left \"deleting\""
                    ));
                } else if previous == BranchState::Ready {
                    if let Err(e) = backend.start_compute(&entry).await {
                        message.push_str(&format!("; its compute did not start again: {e:#}"));
                    }
                }
                let kind = match kind {
                    ErrorKind::BadRequest => BadRequest,
                    ErrorKind::WaitLsnTimeout => Unavailable,
                    _ => Conflict,
                };
                return Err(error(kind, message));
            }
            Err(e) => {
                return Err(error(
                    Unavailable,
                    format!(
                        "cannot delete the timeline of branch {name}: {e}; it is left \
                         \"deleting\" (its compute stopped) until `omendb branch delete {name}` \
                         or the next `omendb start` finishes it"
                    ),
                ))
            }
        }
        let removed = self.registry.remove(name).expect("looked up above");
        if let Err(e) = self.save() {
            self.registry.branches.push(removed);
            return Err(error(
                Internal,
                format!(
                    "the timeline of branch {name} was deleted but recording that failed: \
                     {e:#}; the next `omendb start` finishes it"
                ),
            ));
        }
        info!(branch = name, timeline = %entry.timeline, "branch deleted");
        Ok(view)
    }

    /// Finishes or rolls back what a crash interrupted: deletes the timeline of every
    /// `creating` or `deleting` entry and removes the entry (see the module docs). An entry
    /// whose timeline cannot be deleted now stays, with a warning. Run before any branch
    /// compute starts.
    pub async fn recover(&mut self, backend: &mut impl BranchBackend) {
        let unfinished: Vec<(String, BranchState)> = self
            .registry
            .branches
            .iter()
            .filter(|entry| entry.state != BranchState::Ready)
            .map(|entry| (entry.name.clone(), entry.state))
            .collect();
        for (name, state) in unfinished {
            let done = match state {
                BranchState::Creating => "rolled back the interrupted creation of branch",
                _ => "finished deleting branch",
            };
            match self.discard(backend, &name).await {
                Ok(()) => info!(branch = %name, "{done} {name}"),
                Err(e) => warn!(
                    branch = %name,
                    "branch {name} is left {state}: {e}; `omendb branch delete {name}` or the \
                     next start tries again"
                ),
            }
        }
    }

    /// The branches whose compute should run.
    pub fn ready(&self) -> impl Iterator<Item = &BranchEntry> {
        self.registry
            .branches
            .iter()
            .filter(|entry| entry.state == BranchState::Ready)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::test_dir;

    const TENANT: TenantId = TenantId([1; 16]);
    const MAIN: TimelineId = TimelineId([0xaa; 16]);
    const MAIN_PORT: u16 = 55432;

    /// A pageserver and computes in memory. Every call is logged together with the state
    /// the registry file on disk gives the branch at that moment, which is what a crash at
    /// that point would leave.
    struct FakeBackend {
        data_dir: PathBuf,
        /// timeline → (ancestor, branch LSN)
        timelines: BTreeMap<TimelineId, (TimelineId, Lsn)>,
        computes: BTreeSet<String>,
        log: Vec<String>,
        next_id: u128,
        next_port: u16,
        /// The next create (delete) fails with this instead; `Unknown` ones after doing it.
        create_fails: Option<PageserverCallError>,
        delete_fails: Option<PageserverCallError>,
        compute_fails: bool,
        /// Every delete gets no answer.
        pageserver_down: bool,
    }

    impl FakeBackend {
        fn new(data_dir: &Path) -> FakeBackend {
            FakeBackend {
                data_dir: data_dir.to_path_buf(),
                timelines: BTreeMap::new(),
                computes: BTreeSet::new(),
                log: Vec::new(),
                next_id: 1,
                next_port: 40_000,
                create_fails: None,
                delete_fails: None,
                compute_fails: false,
                pageserver_down: false,
            }
        }

        fn on_disk(&self, timeline: TimelineId) -> String {
            let registry = Registry::load(&self.data_dir, MAIN).unwrap();
            match registry.branches.iter().find(|b| b.timeline == timeline) {
                Some(entry) => entry.state.to_string(),
                None => "absent".into(),
            }
        }

        fn name_of(&self, timeline: TimelineId) -> String {
            format!("tl{}", timeline.as_u128())
        }
    }

    fn unknown() -> PageserverCallError {
        PageserverCallError::Unknown {
            addr: "127.0.0.1:1".parse().unwrap(),
            message: "connection reset".into(),
        }
    }

    fn refused(kind: ErrorKind, message: &str) -> PageserverCallError {
        PageserverCallError::Refused {
            kind,
            message: message.into(),
        }
    }

    impl BranchBackend for FakeBackend {
        async fn create_timeline(
            &mut self,
            tenant: TenantId,
            timeline: TimelineId,
            ancestor: TimelineId,
            point: BranchPoint,
        ) -> Result<TimelineInfo, PageserverCallError> {
            assert_eq!(tenant, TENANT);
            let disk = self.on_disk(timeline);
            self.log.push(format!(
                "create {} ({disk} on disk)",
                self.name_of(timeline)
            ));
            let lsn = match point {
                BranchPoint::Latest => Lsn(0x100),
                BranchPoint::Lsn(lsn) => lsn,
                BranchPoint::Timestamp { unix_us } => Lsn(unix_us),
            };
            match self.create_fails.take() {
                Some(PageserverCallError::Refused { kind, message }) => {
                    return Err(PageserverCallError::Refused { kind, message })
                }
                Some(e) => {
                    self.timelines.insert(timeline, (ancestor, lsn));
                    return Err(e);
                }
                None => {}
            }
            self.timelines.insert(timeline, (ancestor, lsn));
            Ok(TimelineInfo {
                tenant,
                timeline,
                ancestor: Some((ancestor, lsn)),
                last_record_lsn: lsn,
                remote_consistent_lsn: Lsn(0),
            })
        }

        async fn delete_timeline(
            &mut self,
            timeline: TimelineId,
        ) -> Result<(), PageserverCallError> {
            let disk = self.on_disk(timeline);
            self.log.push(format!(
                "delete {} ({disk} on disk)",
                self.name_of(timeline)
            ));
            if let Some(e) = self.delete_fails.take() {
                return Err(e);
            }
            if self.pageserver_down {
                return Err(unknown());
            }
            match self.timelines.remove(&timeline) {
                Some(_) => Ok(()),
                None => Err(refused(ErrorKind::UnknownTimeline, "no such timeline")),
            }
        }

        async fn start_compute(&mut self, branch: &BranchEntry) -> anyhow::Result<()> {
            assert!(self.timelines.contains_key(&branch.timeline));
            let disk = self.on_disk(branch.timeline);
            self.log
                .push(format!("start compute {} ({disk} on disk)", branch.name));
            if self.compute_fails {
                anyhow::bail!("compute exited with exit status: 1");
            }
            self.computes.insert(branch.name.clone());
            Ok(())
        }

        async fn stop_compute(&mut self, name: &str) {
            if self.computes.remove(name) {
                self.log.push(format!("stop compute {name}"));
            }
        }

        fn free_port(&mut self, taken: &[u16]) -> anyhow::Result<u16> {
            while taken.contains(&self.next_port) {
                self.next_port += 1;
            }
            self.next_port += 1;
            Ok(self.next_port - 1)
        }

        fn new_timeline_id(&mut self) -> TimelineId {
            self.next_id += 1;
            TimelineId::from_u128(self.next_id - 1)
        }
    }

    fn open(dir: &Path) -> Branches {
        Branches::open(dir, TENANT, MAIN, MAIN_PORT).unwrap()
    }

    #[test]
    fn branch_points_parse_from_lsns_and_rfc3339_times() {
        assert_eq!(parse_branch_point(None), Ok(BranchPoint::Latest));
        assert_eq!(
            parse_branch_point(Some("0/16B3748")),
            Ok(BranchPoint::Lsn(Lsn(0x16B3748)))
        );
        assert_eq!(
            parse_branch_point(Some("1/0")),
            Ok(BranchPoint::Lsn(Lsn(1 << 32)))
        );
        let expected = BranchPoint::Timestamp {
            unix_us: 1_714_564_800_000_000,
        };
        for time in [
            "2024-05-01T12:00:00Z",
            "2024-05-01T12:00:00",
            "2024-05-01 12:00:00",
            "2024-05-01T12:00:00+00:00",
        ] {
            assert_eq!(parse_branch_point(Some(time)), Ok(expected), "{time}");
        }
        assert_eq!(
            parse_branch_point(Some("2024-05-01T12:00:00.123456Z")),
            Ok(BranchPoint::Timestamp {
                unix_us: 1_714_564_800_123_456
            })
        );
        for (bad, says) in [
            ("0/xyz", "not an LSN"),
            ("/", "not an LSN"),
            ("yesterday", "neither an LSN"),
            ("2024-05-01T12:00:00+02:00", "neither an LSN"),
            ("2024-13-01T12:00:00Z", "neither an LSN"),
            ("1969-12-31T23:59:59Z", "neither an LSN"),
            ("2024-05-01T12:00:00Zé", "neither an LSN"),
            ("2024-05-01T12:00:00Z tomorrow", "neither an LSN"),
            ("2024-05-01T12:00:00.5+00:00x", "neither an LSN"),
            ("2024-05-01T12:00:0é", "neither an LSN"),
            ("", "neither an LSN"),
        ] {
            let message = parse_branch_point(Some(bad)).unwrap_err();
            assert!(message.contains(says), "{bad:?}: {message}");
        }
    }

    #[tokio::test]
    async fn create_writes_creating_first_and_ready_last() {
        let dir = test_dir("branches-create");
        let mut backend = FakeBackend::new(&dir);
        let mut branches = open(&dir);
        let b1 = branches
            .create(&mut backend, "b1", "main", None)
            .await
            .unwrap();
        assert_eq!(
            backend.log,
            [
                "create tl1 (creating on disk)",
                "start compute b1 (creating on disk)"
            ]
        );
        assert_eq!(
            b1,
            BranchView {
                name: "b1".into(),
                parent: Some("main".into()),
                lsn: Some("0/100".into()),
                timeline: TimelineId::from_u128(1).to_string(),
                connection: "postgres://omendb@127.0.0.1:40000/omendb".into(),
                state: BranchState::Ready,
            }
        );
        let b2 = branches
            .create(&mut backend, "b2", "b1", Some("0/16B3748"))
            .await
            .unwrap();
        assert_eq!(b2.lsn.as_deref(), Some("0/16B3748"));
        assert_eq!(
            backend.timelines[&TimelineId::from_u128(2)].0,
            TimelineId::from_u128(1)
        );

        // The registry on disk has both, ready; a fresh open lists the same.
        let list = open(&dir).list();
        assert_eq!(list, branches.list());
        let names: Vec<_> = list.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["main", "b1", "b2"]);
        assert_eq!(
            list[0].connection,
            "postgres://omendb@127.0.0.1:55432/omendb"
        );
        assert_eq!(list[0].parent, None);
        assert_eq!(list[0].timeline, MAIN.to_string());
        assert!(list.iter().all(|b| b.state == BranchState::Ready));
        assert_eq!(open(&dir).ready().count(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn bad_requests_change_nothing() {
        let dir = test_dir("branches-bad");
        let mut backend = FakeBackend::new(&dir);
        let mut branches = open(&dir);
        branches
            .create(&mut backend, "b1", "main", None)
            .await
            .unwrap();
        backend.log.clear();
        for (name, parent, at, kind, says) in [
            (
                "B1",
                "main",
                None,
                BranchErrorKind::BadRequest,
                "must start with",
            ),
            (
                "b 2",
                "main",
                None,
                BranchErrorKind::BadRequest,
                "contains ' '",
            ),
            (
                "main",
                "main",
                None,
                BranchErrorKind::Conflict,
                "main already exists",
            ),
            (
                "b1",
                "main",
                None,
                BranchErrorKind::Conflict,
                "b1 already exists",
            ),
            (
                "b2",
                "nope",
                None,
                BranchErrorKind::NotFound,
                "no branch \"nope\"",
            ),
            (
                "b2",
                "main",
                Some("noon"),
                BranchErrorKind::BadRequest,
                "neither an LSN",
            ),
        ] {
            let e = branches
                .create(&mut backend, name, parent, at)
                .await
                .unwrap_err();
            assert_eq!(e.kind, kind, "{name} {parent} {at:?}: {e}");
            assert!(e.message.contains(says), "{name} {parent} {at:?}: {e}");
        }
        for (name, kind, says) in [
            ("main", BranchErrorKind::BadRequest, "cannot be deleted"),
            ("nope", BranchErrorKind::NotFound, "no branch \"nope\""),
        ] {
            let e = branches.delete(&mut backend, name).await.unwrap_err();
            assert_eq!(e.kind, kind, "{name}: {e}");
            assert!(e.message.contains(says), "{name}: {e}");
        }
        assert!(backend.log.is_empty(), "{:?}", backend.log);
        assert_eq!(open(&dir).list(), branches.list());
        assert_eq!(branches.list().len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_refused_create_leaves_nothing_and_passes_the_message_on() {
        let dir = test_dir("branches-refused");
        let mut backend = FakeBackend::new(&dir);
        let mut branches = open(&dir);
        backend.create_fails = Some(refused(
            ErrorKind::Conflict,
            "LSN 0/5 is below what the timeline keeps (0/16B3748)",
        ));
        let e = branches
            .create(&mut backend, "old", "main", Some("0/5"))
            .await
            .unwrap_err();
        assert_eq!(e.kind, BranchErrorKind::Conflict);
        assert_eq!(
            e.message,
            "cannot branch old from main: LSN 0/5 is below what the timeline keeps (0/16B3748)"
        );
        assert_eq!(backend.log, ["create tl1 (creating on disk)"]);
        assert!(open(&dir).registry().branches.is_empty());
        assert!(branches.registry().branches.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_failed_create_is_rolled_back() {
        let dir = test_dir("branches-rollback");
        let mut backend = FakeBackend::new(&dir);
        let mut branches = open(&dir);

        // No answer to CreateTimeline (the pageserver did create it): deleted again.
        backend.create_fails = Some(unknown());
        let e = branches
            .create(&mut backend, "b1", "main", None)
            .await
            .unwrap_err();
        assert_eq!(e.kind, BranchErrorKind::Unavailable);
        assert!(e.message.contains("connection reset"), "{e}");
        assert!(e.message.contains("nothing was kept"), "{e}");
        assert_eq!(
            backend.log,
            [
                "create tl1 (creating on disk)",
                "delete tl1 (creating on disk)"
            ]
        );
        assert!(backend.timelines.is_empty());
        assert!(open(&dir).registry().branches.is_empty());

        // The compute does not start: stopped, deleted.
        backend.log.clear();
        backend.compute_fails = true;
        let e = branches
            .create(&mut backend, "b1", "main", None)
            .await
            .unwrap_err();
        assert!(e.message.contains("its compute did not start"), "{e}");
        assert_eq!(
            backend.log,
            [
                "create tl2 (creating on disk)",
                "start compute b1 (creating on disk)",
                "delete tl2 (creating on disk)"
            ]
        );
        assert!(backend.timelines.is_empty());
        assert!(open(&dir).registry().branches.is_empty());

        // The roll-back cannot reach the pageserver either: left "creating", which a later
        // delete (or start-up) finishes.
        backend.log.clear();
        backend.compute_fails = false;
        backend.create_fails = Some(unknown());
        backend.delete_fails = Some(unknown());
        let e = branches
            .create(&mut backend, "b1", "main", None)
            .await
            .unwrap_err();
        assert!(e.message.contains("left \"creating\""), "{e}");
        assert_eq!(
            open(&dir).registry().branches[0].state,
            BranchState::Creating
        );
        let e = branches
            .create(&mut backend, "b1", "main", None)
            .await
            .unwrap_err();
        assert!(e.message.contains("branch delete b1"), "{e}");
        assert_eq!(branches.list()[1].state, BranchState::Creating);
        branches.delete(&mut backend, "b1").await.unwrap();
        assert!(backend.timelines.is_empty());
        assert!(open(&dir).registry().branches.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn delete_refuses_parents_then_stops_deletes_and_forgets() {
        let dir = test_dir("branches-delete");
        let mut backend = FakeBackend::new(&dir);
        let mut branches = open(&dir);
        branches
            .create(&mut backend, "b1", "main", None)
            .await
            .unwrap();
        branches
            .create(&mut backend, "b2", "b1", None)
            .await
            .unwrap();
        branches
            .create(&mut backend, "b3", "b1", None)
            .await
            .unwrap();
        backend.log.clear();
        let e = branches.delete(&mut backend, "b1").await.unwrap_err();
        assert_eq!(e.kind, BranchErrorKind::Conflict);
        assert_eq!(
            e.message,
            "branch b1 has branches of its own (b2, b3); delete them first"
        );
        assert!(backend.log.is_empty());

        let deleted = branches.delete(&mut backend, "b2").await.unwrap();
        assert_eq!(deleted.name, "b2");
        assert_eq!(
            backend.log,
            ["stop compute b2", "delete tl2 (deleting on disk)"]
        );
        assert!(!backend.computes.contains("b2"));
        let names: Vec<_> = open(&dir).list().into_iter().map(|b| b.name).collect();
        assert_eq!(names, ["main", "b1", "b3"]);

        // A definite refusal puts the branch back, compute and all.
        backend.log.clear();
        backend.delete_fails = Some(refused(ErrorKind::Conflict, "timeline has children"));
        let e = branches.delete(&mut backend, "b3").await.unwrap_err();
        assert_eq!(e.kind, BranchErrorKind::Conflict);
        assert!(e.message.contains("timeline has children"), "{e}");
        assert_eq!(
            backend.log,
            [
                "stop compute b3",
                "delete tl3 (deleting on disk)",
                "start compute b3 (ready on disk)"
            ]
        );
        assert_eq!(
            open(&dir).registry().get("b3").unwrap().state,
            BranchState::Ready
        );

        // No answer: left "deleting" without a compute; deleting again finishes it.
        backend.log.clear();
        backend.delete_fails = Some(unknown());
        let e = branches.delete(&mut backend, "b3").await.unwrap_err();
        assert_eq!(e.kind, BranchErrorKind::Unavailable);
        assert!(e.message.contains("left \"deleting\""), "{e}");
        assert!(!backend.computes.contains("b3"));
        assert_eq!(
            open(&dir).registry().get("b3").unwrap().state,
            BranchState::Deleting
        );
        branches.delete(&mut backend, "b3").await.unwrap();
        assert!(open(&dir).registry().get("b3").is_none());
        // The pageserver no longer knowing a timeline counts as deleted.
        backend.timelines.clear();
        branches.delete(&mut backend, "b1").await.unwrap();
        assert!(open(&dir).registry().branches.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn start_up_recovery_finishes_or_rolls_back_what_a_crash_interrupted() {
        let dir = test_dir("branches-recover");
        let mut backend = FakeBackend::new(&dir);
        let mut branches = open(&dir);
        branches
            .create(&mut backend, "b1", "main", None)
            .await
            .unwrap();
        branches
            .create(&mut backend, "b2", "main", None)
            .await
            .unwrap();
        // What crashes leave: b2 half deleted, b3 created on the pageserver but not recorded
        // as ready, b4 recorded as creating before the pageserver heard of it.
        let mut registry = Registry::load(&dir, MAIN).unwrap();
        registry.get_mut("b2").unwrap().state = BranchState::Deleting;
        for (name, n) in [("b3", 3), ("b4", 4)] {
            registry.branches.push(BranchEntry {
                name: name.into(),
                timeline: TimelineId::from_u128(n),
                parent: "b1".into(),
                lsn: None,
                port: 41_000 + n as u16,
                state: BranchState::Creating,
            });
        }
        registry.save(&dir, MAIN).unwrap();
        backend
            .timelines
            .insert(TimelineId::from_u128(3), (TimelineId::from_u128(1), Lsn(7)));
        backend.computes.clear();
        backend.log.clear();

        // The pageserver is down at first: nothing is lost, nothing starts.
        let mut branches = open(&dir);
        backend.pageserver_down = true;
        branches.recover(&mut backend).await;
        assert_eq!(branches.registry().branches.len(), 4);
        assert_eq!(open(&dir).registry(), branches.registry());
        assert_eq!(branches.ready().count(), 1);
        backend.pageserver_down = false;
        // Then it answers.
        let mut branches = open(&dir);
        branches.recover(&mut backend).await;
        let names: Vec<_> = branches.ready().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["b1"]);
        assert_eq!(open(&dir).registry(), branches.registry());
        assert_eq!(
            backend.timelines.keys().copied().collect::<Vec<_>>(),
            [TimelineId::from_u128(1)]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
