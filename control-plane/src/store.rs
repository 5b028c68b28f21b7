//! The control plane's metadata: projects, branches, endpoints, roles and API tokens, in an
//! embedded SQLite database (`<data-dir>/control-plane.db`).
//!
//! ```text
//! projects ─┬─ branches (a tree per project: the root `main`, then branches of branches)
//!           ├─ endpoints (each on one branch; at most one read-write per branch)
//!           ├─ roles     (SCRAM-SHA-256 secret, and the password for connection strings)
//!           └─ tokens    (SHA-256 of each API token; a token without project is an admin's)
//! doomed_timelines        timelines to delete from the pageserver (see below)
//! ```
//!
//! Every change is one SQLite transaction (`synchronous = FULL` in WAL mode: it is on disk
//! when the call returns), so a crash leaves the metadata as it was before or after a call.
//! What lives outside the database (timelines on the pageserver) is made consistent through
//! `doomed_timelines`: a timeline is entered there *before* the pageserver is asked to create
//! it and leaves it in the same transaction that records the branch owning it; a branch's
//! deletion removes the branch and enters its timeline in one transaction. At start-up and
//! after each operation, every doomed timeline no branch names is deleted from the pageserver
//! (`crate::service`), so a crash at any step leaves no timeline without an owner and no
//! branch without its timeline.
//!
//! The schema version is SQLite's `user_version`; a database written by a newer build is
//! refused. All I/O of the control plane's metadata goes through this module.

use std::path::Path;

use anyhow::{bail, Context};
use ids::{Lsn, TimelineId};
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::{Deserialize, Serialize};

/// The database's file name inside the data folder.
pub const DB_FILE: &str = "control-plane.db";
/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: i64 = 1;
/// How long a statement waits for a lock held by another connection, in milliseconds.
pub const BUSY_TIMEOUT_MS: u64 = 5_000;

const SCHEMA: &str = "
CREATE TABLE projects (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE TABLE branches (
    id          TEXT PRIMARY KEY,
    project_id  TEXT NOT NULL REFERENCES projects(id),
    name        TEXT NOT NULL,
    parent_id   TEXT REFERENCES branches(id),
    timeline    TEXT NOT NULL UNIQUE,
    lsn         TEXT,
    created_at  INTEGER NOT NULL,
    UNIQUE (project_id, name)
);
CREATE TABLE endpoints (
    id                 TEXT PRIMARY KEY,
    project_id         TEXT NOT NULL REFERENCES projects(id),
    branch_id          TEXT NOT NULL REFERENCES branches(id),
    kind               TEXT NOT NULL CHECK (kind IN ('read_write', 'read_only')),
    idle_timeout_secs  INTEGER NOT NULL CHECK (idle_timeout_secs >= 0),
    created_at         INTEGER NOT NULL
);
CREATE UNIQUE INDEX one_read_write_endpoint_per_branch ON endpoints (branch_id)
    WHERE kind = 'read_write';
CREATE TABLE roles (
    project_id  TEXT NOT NULL REFERENCES projects(id),
    name        TEXT NOT NULL,
    secret      TEXT NOT NULL,
    password    TEXT,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (project_id, name)
);
CREATE TABLE tokens (
    id          TEXT PRIMARY KEY,
    project_id  TEXT REFERENCES projects(id),
    hash        TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
);
CREATE TABLE doomed_timelines (
    timeline    TEXT PRIMARY KEY,
    since       INTEGER NOT NULL
);
CREATE TABLE settings (
    key         TEXT PRIMARY KEY,
    value       TEXT NOT NULL
);
";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectRow {
    pub id: String,
    pub name: String,
    /// Seconds since the Unix epoch.
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchRow {
    pub id: String,
    pub project_id: String,
    pub name: String,
    /// `None` for a project's root branch.
    pub parent_id: Option<String>,
    pub timeline: TimelineId,
    /// Where on the parent's timeline it starts; `None` for a root branch.
    pub lsn: Option<Lsn>,
    pub created_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointKind {
    ReadWrite,
    ReadOnly,
}

impl EndpointKind {
    fn as_str(self) -> &'static str {
        match self {
            EndpointKind::ReadWrite => "read_write",
            EndpointKind::ReadOnly => "read_only",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointRow {
    pub id: String,
    pub project_id: String,
    pub branch_id: String,
    pub kind: EndpointKind,
    /// Suspended after this long without a connection; 0 = never.
    pub idle_timeout_secs: u64,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleRow {
    pub project_id: String,
    pub name: String,
    /// PostgreSQL's text form of a SCRAM-SHA-256 secret.
    pub secret: String,
    /// Kept (like a hosted service's "reveal password") so that connection strings can be
    /// printed; `None` once a user set a password the control plane was not shown.
    pub password: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    pub id: String,
    /// `None`: an admin token (every project, and creating projects).
    pub project_id: Option<String>,
    pub created_at: i64,
}

/// The metadata database. One connection, used by one task at a time.
pub struct Store {
    conn: Connection,
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn parse_timeline(text: String) -> rusqlite::Result<TimelineId> {
    text.parse().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn parse_lsn(text: Option<String>) -> rusqlite::Result<Option<Lsn>> {
    text.map(|text| {
        text.parse::<Lsn>().map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
        })
    })
    .transpose()
}

fn branch_row(row: &Row) -> rusqlite::Result<BranchRow> {
    Ok(BranchRow {
        id: row.get(0)?,
        project_id: row.get(1)?,
        name: row.get(2)?,
        parent_id: row.get(3)?,
        timeline: parse_timeline(row.get(4)?)?,
        lsn: parse_lsn(row.get(5)?)?,
        created_at: row.get(6)?,
    })
}

const BRANCH_COLUMNS: &str = "id, project_id, name, parent_id, timeline, lsn, created_at";

fn endpoint_row(row: &Row) -> rusqlite::Result<EndpointRow> {
    let kind: String = row.get(3)?;
    Ok(EndpointRow {
        id: row.get(0)?,
        project_id: row.get(1)?,
        branch_id: row.get(2)?,
        kind: if kind == "read_only" {
            EndpointKind::ReadOnly
        } else {
            EndpointKind::ReadWrite
        },
        idle_timeout_secs: row.get::<_, i64>(4)?.max(0) as u64,
        created_at: row.get(5)?,
    })
}

const ENDPOINT_COLUMNS: &str = "id, project_id, branch_id, kind, idle_timeout_secs, created_at";

fn role_row(row: &Row) -> rusqlite::Result<RoleRow> {
    Ok(RoleRow {
        project_id: row.get(0)?,
        name: row.get(1)?,
        secret: row.get(2)?,
        password: row.get(3)?,
        created_at: row.get(4)?,
    })
}

/// A whole project as it is made in one step: its root branch, first endpoint, owner role
/// and first token.
pub struct NewProject<'a> {
    pub project: &'a ProjectRow,
    pub branch: &'a BranchRow,
    pub endpoint: &'a EndpointRow,
    pub role: &'a RoleRow,
    pub token: &'a TokenRow,
    pub token_hash: &'a str,
}

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> anyhow::Result<Store> {
        let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
        let store = Store { conn };
        store.init().with_context(|| {
            format!("{} is not a usable control-plane database", path.display())
        })?;
        Ok(store)
    }

    fn init(&self) -> anyhow::Result<()> {
        self.conn
            .busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))?;
        self.conn
            .pragma_update(None, "journal_mode", "WAL")
            .context("setting WAL mode")?;
        self.conn.pragma_update(None, "synchronous", "FULL")?;
        self.conn.pragma_update(None, "foreign_keys", "ON")?;
        let version: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |row| row.get(0))?;
        match version {
            0 => {
                let tx = self.conn.unchecked_transaction()?;
                tx.execute_batch(SCHEMA)?;
                tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
                tx.commit()?;
            }
            SCHEMA_VERSION => {}
            other => {
                bail!("it has schema version {other}; this build reads version {SCHEMA_VERSION}")
            }
        }
        Ok(())
    }

    // --- settings ---

    pub fn setting(&self, key: &str) -> anyhow::Result<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT value FROM settings WHERE key = ?1", [key], |row| {
                row.get(0)
            })
            .optional()?)
    }

    pub fn set_setting(&self, key: &str, value: &str) -> anyhow::Result<()> {
        self.conn.execute(
            "INSERT INTO settings (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [key, value],
        )?;
        Ok(())
    }

    // --- projects ---

    /// Records a whole new project and removes its root timeline from the doomed ones, in
    /// one transaction.
    pub fn insert_project(&mut self, new: NewProject) -> anyhow::Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO projects (id, name, created_at) VALUES (?1, ?2, ?3)",
            params![new.project.id, new.project.name, new.project.created_at],
        )?;
        insert_branch(&tx, new.branch)?;
        insert_endpoint(&tx, new.endpoint)?;
        insert_role(&tx, new.role)?;
        insert_token(&tx, new.token, new.token_hash)?;
        tx.execute(
            "DELETE FROM doomed_timelines WHERE timeline = ?1",
            [new.branch.timeline.to_string()],
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn project(&self, id: &str) -> anyhow::Result<Option<ProjectRow>> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, name, created_at FROM projects WHERE id = ?1",
                [id],
                |row| {
                    Ok(ProjectRow {
                        id: row.get(0)?,
                        name: row.get(1)?,
                        created_at: row.get(2)?,
                    })
                },
            )
            .optional()?)
    }

    pub fn projects(&self) -> anyhow::Result<Vec<ProjectRow>> {
        let mut statement = self
            .conn
            .prepare("SELECT id, name, created_at FROM projects ORDER BY created_at, id")?;
        let rows = statement.query_map([], |row| {
            Ok(ProjectRow {
                id: row.get(0)?,
                name: row.get(1)?,
                created_at: row.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes a project and everything it has, entering its timelines as doomed.
    pub fn delete_project(&mut self, id: &str) -> anyhow::Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT OR IGNORE INTO doomed_timelines (timeline, since)
             SELECT timeline, ?2 FROM branches WHERE project_id = ?1",
            params![id, now_secs()],
        )?;
        for table in ["tokens", "roles", "endpoints"] {
            tx.execute(&format!("DELETE FROM {table} WHERE project_id = ?1"), [id])?;
        }
        // Children before parents, for the foreign key.
        loop {
            let deleted = tx.execute(
                "DELETE FROM branches WHERE project_id = ?1 AND id NOT IN
                 (SELECT parent_id FROM branches WHERE parent_id IS NOT NULL)",
                [id],
            )?;
            if deleted == 0 {
                break;
            }
        }
        tx.execute("DELETE FROM projects WHERE id = ?1", [id])?;
        tx.commit()?;
        Ok(())
    }

    // --- branches ---

    pub fn branches(&self, project_id: &str) -> anyhow::Result<Vec<BranchRow>> {
        let mut statement = self.conn.prepare(&format!(
            "SELECT {BRANCH_COLUMNS} FROM branches WHERE project_id = ?1
             ORDER BY created_at, rowid"
        ))?;
        let rows = statement.query_map([project_id], branch_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every branch of every project (start-up checks).
    pub fn all_branches(&self) -> anyhow::Result<Vec<BranchRow>> {
        let mut statement = self.conn.prepare(&format!(
            "SELECT {BRANCH_COLUMNS} FROM branches ORDER BY created_at, rowid"
        ))?;
        let rows = statement.query_map([], branch_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn branch(&self, id: &str) -> anyhow::Result<Option<BranchRow>> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {BRANCH_COLUMNS} FROM branches WHERE id = ?1"),
                [id],
                branch_row,
            )
            .optional()?)
    }

    /// A branch of `project_id` by id or by name.
    pub fn find_branch(
        &self,
        project_id: &str,
        id_or_name: &str,
    ) -> anyhow::Result<Option<BranchRow>> {
        Ok(self
            .conn
            .query_row(
                &format!(
                    "SELECT {BRANCH_COLUMNS} FROM branches
                     WHERE project_id = ?1 AND (id = ?2 OR name = ?2)"
                ),
                [project_id, id_or_name],
                branch_row,
            )
            .optional()?)
    }

    /// Records a new branch (and, when `endpoint` is given, its endpoint) and removes its
    /// timeline from the doomed ones, in one transaction.
    pub fn insert_branch(
        &mut self,
        branch: &BranchRow,
        endpoint: Option<&EndpointRow>,
    ) -> anyhow::Result<()> {
        let tx = self.conn.transaction()?;
        insert_branch(&tx, branch)?;
        if let Some(endpoint) = endpoint {
            insert_endpoint(&tx, endpoint)?;
        }
        tx.execute(
            "DELETE FROM doomed_timelines WHERE timeline = ?1",
            [branch.timeline.to_string()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Deletes a branch and its endpoints, entering its timeline as doomed.
    pub fn delete_branch(&mut self, branch: &BranchRow) -> anyhow::Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT OR IGNORE INTO doomed_timelines (timeline, since) VALUES (?1, ?2)",
            params![branch.timeline.to_string(), now_secs()],
        )?;
        tx.execute("DELETE FROM endpoints WHERE branch_id = ?1", [&branch.id])?;
        tx.execute("DELETE FROM branches WHERE id = ?1", [&branch.id])?;
        tx.commit()?;
        Ok(())
    }

    /// Points `branch` at a new timeline starting at `lsn` of its parent (a reset): the new
    /// timeline leaves the doomed ones and the old one enters them, in one transaction.
    pub fn replace_timeline(
        &mut self,
        branch_id: &str,
        timeline: TimelineId,
        lsn: Lsn,
    ) -> anyhow::Result<TimelineId> {
        let tx = self.conn.transaction()?;
        let old: String = tx.query_row(
            "SELECT timeline FROM branches WHERE id = ?1",
            [branch_id],
            |row| row.get(0),
        )?;
        tx.execute(
            "INSERT OR IGNORE INTO doomed_timelines (timeline, since) VALUES (?1, ?2)",
            params![old, now_secs()],
        )?;
        tx.execute(
            "UPDATE branches SET timeline = ?2, lsn = ?3 WHERE id = ?1",
            params![branch_id, timeline.to_string(), lsn.to_string()],
        )?;
        tx.execute(
            "DELETE FROM doomed_timelines WHERE timeline = ?1",
            [timeline.to_string()],
        )?;
        tx.commit()?;
        parse_timeline(old).context("the branch's old timeline id")
    }

    pub fn has_children(&self, branch_id: &str) -> anyhow::Result<Vec<String>> {
        let mut statement = self
            .conn
            .prepare("SELECT name FROM branches WHERE parent_id = ?1 ORDER BY name")?;
        let rows = statement.query_map([branch_id], |row| row.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    // --- doomed timelines ---

    /// Enters a timeline that is about to be created: it stays doomed until a branch names it.
    pub fn doom_timeline(&self, timeline: TimelineId) -> anyhow::Result<()> {
        self.conn.execute(
            "INSERT OR IGNORE INTO doomed_timelines (timeline, since) VALUES (?1, ?2)",
            params![timeline.to_string(), now_secs()],
        )?;
        Ok(())
    }

    pub fn doomed_timelines(&self) -> anyhow::Result<Vec<TimelineId>> {
        let mut statement = self
            .conn
            .prepare("SELECT timeline FROM doomed_timelines ORDER BY since, timeline")?;
        let rows = statement.query_map([], |row| parse_timeline(row.get(0)?))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The timeline is gone from the pageserver (or was never there).
    pub fn forget_doomed(&self, timeline: TimelineId) -> anyhow::Result<()> {
        self.conn.execute(
            "DELETE FROM doomed_timelines WHERE timeline = ?1",
            [timeline.to_string()],
        )?;
        Ok(())
    }

    // --- endpoints ---

    pub fn endpoints(&self, project_id: &str) -> anyhow::Result<Vec<EndpointRow>> {
        let mut statement = self.conn.prepare(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM endpoints WHERE project_id = ?1
             ORDER BY created_at, rowid"
        ))?;
        let rows = statement.query_map([project_id], endpoint_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn endpoints_of_branch(&self, branch_id: &str) -> anyhow::Result<Vec<EndpointRow>> {
        let mut statement = self.conn.prepare(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM endpoints WHERE branch_id = ?1
             ORDER BY created_at, rowid"
        ))?;
        let rows = statement.query_map([branch_id], endpoint_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn endpoint(&self, id: &str) -> anyhow::Result<Option<EndpointRow>> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {ENDPOINT_COLUMNS} FROM endpoints WHERE id = ?1"),
                [id],
                endpoint_row,
            )
            .optional()?)
    }

    pub fn insert_endpoint(&self, endpoint: &EndpointRow) -> anyhow::Result<()> {
        insert_endpoint(&self.conn, endpoint)
    }

    pub fn set_idle_timeout(&self, id: &str, idle_timeout_secs: u64) -> anyhow::Result<()> {
        self.conn.execute(
            "UPDATE endpoints SET idle_timeout_secs = ?2 WHERE id = ?1",
            params![id, idle_timeout_secs as i64],
        )?;
        Ok(())
    }

    pub fn delete_endpoint(&self, id: &str) -> anyhow::Result<()> {
        self.conn
            .execute("DELETE FROM endpoints WHERE id = ?1", [id])?;
        Ok(())
    }

    // --- roles ---

    pub fn roles(&self, project_id: &str) -> anyhow::Result<Vec<RoleRow>> {
        let mut statement = self.conn.prepare(
            "SELECT project_id, name, secret, password, created_at FROM roles
             WHERE project_id = ?1 ORDER BY created_at, name",
        )?;
        let rows = statement.query_map([project_id], role_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn role(&self, project_id: &str, name: &str) -> anyhow::Result<Option<RoleRow>> {
        Ok(self
            .conn
            .query_row(
                "SELECT project_id, name, secret, password, created_at FROM roles
                 WHERE project_id = ?1 AND name = ?2",
                [project_id, name],
                role_row,
            )
            .optional()?)
    }

    pub fn insert_role(&self, role: &RoleRow) -> anyhow::Result<()> {
        insert_role(&self.conn, role)
    }

    pub fn set_role_secret(
        &self,
        project_id: &str,
        name: &str,
        secret: &str,
        password: Option<&str>,
    ) -> anyhow::Result<()> {
        self.conn.execute(
            "UPDATE roles SET secret = ?3, password = ?4 WHERE project_id = ?1 AND name = ?2",
            params![project_id, name, secret, password],
        )?;
        Ok(())
    }

    pub fn delete_role(&self, project_id: &str, name: &str) -> anyhow::Result<()> {
        self.conn.execute(
            "DELETE FROM roles WHERE project_id = ?1 AND name = ?2",
            [project_id, name],
        )?;
        Ok(())
    }

    // --- tokens ---

    pub fn insert_token(&self, token: &TokenRow, hash: &str) -> anyhow::Result<()> {
        insert_token(&self.conn, token, hash)
    }

    /// The token whose SHA-256 is `hash`.
    pub fn token_by_hash(&self, hash: &str) -> anyhow::Result<Option<TokenRow>> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, project_id, created_at FROM tokens WHERE hash = ?1",
                [hash],
                |row| {
                    Ok(TokenRow {
                        id: row.get(0)?,
                        project_id: row.get(1)?,
                        created_at: row.get(2)?,
                    })
                },
            )
            .optional()?)
    }
}

fn insert_branch(conn: &Connection, branch: &BranchRow) -> anyhow::Result<()> {
    conn.execute(
        &format!("INSERT INTO branches ({BRANCH_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"),
        params![
            branch.id,
            branch.project_id,
            branch.name,
            branch.parent_id,
            branch.timeline.to_string(),
            branch.lsn.map(|lsn| lsn.to_string()),
            branch.created_at
        ],
    )?;
    Ok(())
}

fn insert_endpoint(conn: &Connection, endpoint: &EndpointRow) -> anyhow::Result<()> {
    conn.execute(
        &format!("INSERT INTO endpoints ({ENDPOINT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
        params![
            endpoint.id,
            endpoint.project_id,
            endpoint.branch_id,
            endpoint.kind.as_str(),
            endpoint.idle_timeout_secs as i64,
            endpoint.created_at
        ],
    )?;
    Ok(())
}

fn insert_role(conn: &Connection, role: &RoleRow) -> anyhow::Result<()> {
    conn.execute(
        "INSERT INTO roles (project_id, name, secret, password, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            role.project_id,
            role.name,
            role.secret,
            role.password,
            role.created_at
        ],
    )?;
    Ok(())
}

fn insert_token(conn: &Connection, token: &TokenRow, hash: &str) -> anyhow::Result<()> {
    conn.execute(
        "INSERT INTO tokens (id, project_id, hash, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![token.id, token.project_id, hash, token.created_at],
    )?;
    Ok(())
}

/// Seconds since the Unix epoch, for `created_at` columns.
pub fn unix_now() -> i64 {
    now_secs()
}

/// Whether `e` is SQLite refusing a row for a UNIQUE or PRIMARY KEY constraint.
pub fn is_unique_violation(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<rusqlite::Error>(),
        Some(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error {
                code: rusqlite::ErrorCode::ConstraintViolation,
                extended_code: rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                    | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY,
            },
            _
        ))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_dir;

    fn project(store: &mut Store, id: &str, timeline: u128) -> BranchRow {
        let project = ProjectRow {
            id: id.into(),
            name: format!("{id} name"),
            created_at: 1,
        };
        let branch = BranchRow {
            id: format!("br-{id}"),
            project_id: id.into(),
            name: "main".into(),
            parent_id: None,
            timeline: TimelineId::from_u128(timeline),
            lsn: None,
            created_at: 1,
        };
        let endpoint = EndpointRow {
            id: format!("ep-{id}"),
            project_id: id.into(),
            branch_id: branch.id.clone(),
            kind: EndpointKind::ReadWrite,
            idle_timeout_secs: 300,
            created_at: 1,
        };
        let role = RoleRow {
            project_id: id.into(),
            name: "owner".into(),
            secret: "s".into(),
            password: Some("p".into()),
            created_at: 1,
        };
        let token = TokenRow {
            id: format!("tok-{id}"),
            project_id: Some(id.into()),
            created_at: 1,
        };
        store.doom_timeline(branch.timeline).unwrap();
        store
            .insert_project(NewProject {
                project: &project,
                branch: &branch,
                endpoint: &endpoint,
                role: &role,
                token: &token,
                token_hash: &format!("hash-{id}"),
            })
            .unwrap();
        branch
    }

    #[test]
    fn metadata_survives_reopening_and_doomed_timelines_track_ownership() {
        let dir = test_dir("store");
        let path = dir.join(DB_FILE);
        let main = {
            let mut store = Store::open(&path).unwrap();
            let main = project(&mut store, "prj-a", 1);
            // Creating the project took its timeline off the doomed list.
            assert!(store.doomed_timelines().unwrap().is_empty());
            let child_timeline = TimelineId::from_u128(2);
            store.doom_timeline(child_timeline).unwrap();
            assert_eq!(store.doomed_timelines().unwrap(), vec![child_timeline]);
            let child = BranchRow {
                id: "br-child".into(),
                project_id: "prj-a".into(),
                name: "dev".into(),
                parent_id: Some(main.id.clone()),
                timeline: child_timeline,
                lsn: Some(Lsn(0x16B3748)),
                created_at: 2,
            };
            store.insert_branch(&child, None).unwrap();
            assert!(store.doomed_timelines().unwrap().is_empty());
            // The name is unique within the project.
            let again = BranchRow {
                id: "br-other".into(),
                timeline: TimelineId::from_u128(3),
                ..child.clone()
            };
            let e = store.insert_branch(&again, None).unwrap_err();
            assert!(is_unique_violation(&e), "{e:#}");
            assert_eq!(
                store.has_children(&main.id).unwrap(),
                vec!["dev".to_string()]
            );
            main
        };
        let mut store = Store::open(&path).unwrap();
        assert_eq!(store.projects().unwrap().len(), 1);
        let branches = store.branches("prj-a").unwrap();
        assert_eq!(branches.len(), 2);
        assert_eq!(branches[0], main);
        assert_eq!(branches[1].lsn, Some(Lsn(0x16B3748)));
        assert_eq!(
            store.find_branch("prj-a", "dev").unwrap().unwrap().id,
            "br-child"
        );
        assert!(store.find_branch("prj-b", "dev").unwrap().is_none());
        assert_eq!(
            store
                .token_by_hash("hash-prj-a")
                .unwrap()
                .unwrap()
                .project_id
                .as_deref(),
            Some("prj-a")
        );

        // A reset swaps the timeline; the old one is doomed.
        let old = store
            .replace_timeline("br-child", TimelineId::from_u128(9), Lsn(0x2000))
            .unwrap();
        assert_eq!(old, TimelineId::from_u128(2));
        assert_eq!(store.doomed_timelines().unwrap(), vec![old]);
        store.forget_doomed(old).unwrap();

        // Deleting the project dooms every timeline it had and leaves nothing behind.
        store.delete_project("prj-a").unwrap();
        let mut doomed = store.doomed_timelines().unwrap();
        doomed.sort();
        assert_eq!(
            doomed,
            vec![TimelineId::from_u128(1), TimelineId::from_u128(9)]
        );
        assert!(store.projects().unwrap().is_empty());
        assert!(store.all_branches().unwrap().is_empty());
        assert!(store.token_by_hash("hash-prj-a").unwrap().is_none());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn one_read_write_endpoint_per_branch() {
        let dir = test_dir("store-endpoints");
        let mut store = Store::open(&dir.join(DB_FILE)).unwrap();
        let main = project(&mut store, "prj-a", 1);
        let second = EndpointRow {
            id: "ep-second".into(),
            project_id: "prj-a".into(),
            branch_id: main.id.clone(),
            kind: EndpointKind::ReadWrite,
            idle_timeout_secs: 0,
            created_at: 2,
        };
        assert!(store.insert_endpoint(&second).is_err());
        let read_only = EndpointRow {
            kind: EndpointKind::ReadOnly,
            ..second
        };
        store.insert_endpoint(&read_only).unwrap();
        assert_eq!(store.endpoints_of_branch(&main.id).unwrap().len(), 2);
        store.set_idle_timeout("ep-second", 7).unwrap();
        assert_eq!(
            store
                .endpoint("ep-second")
                .unwrap()
                .unwrap()
                .idle_timeout_secs,
            7
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = test_dir("store-version");
        let path = dir.join(DB_FILE);
        drop(Store::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        let e = Store::open(&path).err().expect("refused");
        assert!(format!("{e:#}").contains("schema version 2"), "{e:#}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
