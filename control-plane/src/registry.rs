//! The branch registry: `<data-dir>/branches.json`, the branches a local cluster has besides
//! `main`, and the rules a branch name follows.
//!
//! ```json
//! {
//!   "version": 1,
//!   "branches": [
//!     { "name": "b1", "timeline": "<32 hex digits>", "parent": "main",
//!       "lsn": "0/16B3748", "port": 40001, "state": "ready" }
//!   ]
//! }
//! ```
//!
//! `main` is the cluster's root timeline (from `cluster.json`) and is never stored here. Each
//! entry names its parent (`main` or an earlier entry), its own timeline, the LSN of the
//! parent it starts at (`null` until the pageserver has said, i.e. while `creating`), the
//! port of its compute, and its state: `creating` (the pageserver may or may not have the
//! timeline yet), `ready`, or `deleting` (its compute is stopped; the pageserver may still
//! have the timeline). What happens to the last two on start-up is in [`crate::branches`].
//!
//! Every write replaces the whole file atomically: a temporary file, fsync, rename, fsync of
//! the folder, so a crash leaves either the old or the new registry. A load checks the
//! version and every invariant ([`Registry::check`]) and fails with the file's name rather
//! than guessing. File I/O only in [`Registry::load`] and [`Registry::save`].

use std::collections::HashSet;
use std::path::Path;

use anyhow::{bail, Context};
use ids::{Lsn, TimelineId};
use serde::{Deserialize, Serialize};

/// The registry's file name inside the data folder.
pub const REGISTRY_FILE: &str = "branches.json";
/// The format version this build reads and writes.
pub const REGISTRY_FILE_VERSION: u32 = 1;
/// The name of the root branch, whose timeline is the one in `cluster.json`.
pub const MAIN_BRANCH: &str = "main";
/// The longest branch name, in bytes (ASCII characters).
pub const BRANCH_NAME_BYTES_MAX: usize = 63;
/// The most branches a cluster keeps besides `main`.
pub const BRANCHES_MAX: usize = 1000;
/// The largest registry file this build reads, in bytes.
pub const REGISTRY_FILE_BYTES_MAX: u64 = 16 << 20;

/// Where a branch is in its life; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BranchState {
    Creating,
    Ready,
    Deleting,
}

impl std::fmt::Display for BranchState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BranchState::Creating => "creating",
            BranchState::Ready => "ready",
            BranchState::Deleting => "deleting",
        })
    }
}

/// One branch other than `main`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchEntry {
    pub name: String,
    pub timeline: TimelineId,
    pub parent: String,
    /// Where on the parent's timeline it starts; `None` while `creating`.
    pub lsn: Option<Lsn>,
    /// Port of its compute on 127.0.0.1.
    pub port: u16,
    pub state: BranchState,
}

/// The branches besides `main`, in creation order (a parent always before its children).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registry {
    pub branches: Vec<BranchEntry>,
}

#[derive(Serialize, Deserialize)]
struct RegistryFile {
    version: u32,
    branches: Vec<EntryFile>,
}

#[derive(Serialize, Deserialize)]
struct EntryFile {
    name: String,
    timeline: String,
    parent: String,
    lsn: Option<String>,
    port: u16,
    state: BranchState,
}

/// Checks a new branch name: `[a-z0-9][a-z0-9_-]{0,62}`. The error says what is wrong.
pub fn validate_name(name: &str) -> Result<(), String> {
    let bytes = name.as_bytes();
    let Some(first) = bytes.first() else {
        return Err("a branch name cannot be empty".into());
    };
    if bytes.len() > BRANCH_NAME_BYTES_MAX {
        return Err(format!(
            "branch name {name:?} is {} bytes long; the limit is {BRANCH_NAME_BYTES_MAX}",
            bytes.len()
        ));
    }
    let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !allowed(*first) {
        return Err(format!(
            "branch name {name:?} must start with a lowercase letter or a digit"
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|&c| !(c.is_ascii() && (allowed(c as u8) || c == '_' || c == '-')))
    {
        return Err(format!(
            "branch name {name:?} contains {bad:?}; use lowercase letters, digits, '_' and '-'"
        ));
    }
    Ok(())
}

impl Registry {
    /// Reads the registry; an absent file is an empty registry.
    pub fn load(data_dir: &Path, main: TimelineId) -> anyhow::Result<Registry> {
        let path = data_dir.join(REGISTRY_FILE);
        let text = match std::fs::metadata(&path) {
            Ok(meta) if meta.len() > REGISTRY_FILE_BYTES_MAX => bail!(
                "{} is {} bytes; the limit is {REGISTRY_FILE_BYTES_MAX} bytes",
                path.display(),
                meta.len()
            ),
            Ok(_) => std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Registry::default()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Registry::decode(&text, main)
            .with_context(|| format!("{} is not a valid branch registry", path.display()))
    }

    /// Writes the registry atomically (see the module docs).
    pub fn save(&self, data_dir: &Path, main: TimelineId) -> anyhow::Result<()> {
        self.check(main)
            .context("refusing to write an inconsistent branch registry (this is a bug)")?;
        let path = data_dir.join(REGISTRY_FILE);
        write_atomically(&path, self.encode().as_bytes())
            .with_context(|| format!("writing {}", path.display()))
    }

    fn encode(&self) -> String {
        let file = RegistryFile {
            version: REGISTRY_FILE_VERSION,
            branches: self
                .branches
                .iter()
                .map(|entry| EntryFile {
                    name: entry.name.clone(),
                    timeline: entry.timeline.to_string(),
                    parent: entry.parent.clone(),
                    lsn: entry.lsn.map(|lsn| lsn.to_string()),
                    port: entry.port,
                    state: entry.state,
                })
                .collect(),
        };
        let mut text = serde_json::to_string_pretty(&file).expect("plain data serializes");
        text.push('\n');
        text
    }

    fn decode(text: &str, main: TimelineId) -> anyhow::Result<Registry> {
        // The version is read on its own first, so that a newer format with other fields
        // is reported as a version mismatch rather than as a parse error.
        #[derive(Deserialize)]
        struct Version {
            version: u32,
        }
        let version: Version = serde_json::from_str(text)?;
        if version.version != REGISTRY_FILE_VERSION {
            bail!(
                "it has version {}, this build reads version {REGISTRY_FILE_VERSION}",
                version.version
            );
        }
        let file: RegistryFile = serde_json::from_str(text)?;
        let mut branches = Vec::with_capacity(file.branches.len());
        for entry in file.branches {
            branches.push(BranchEntry {
                timeline: entry
                    .timeline
                    .parse()
                    .with_context(|| format!("branch {:?}", entry.name))?,
                lsn: match &entry.lsn {
                    Some(lsn) => Some(
                        lsn.parse()
                            .with_context(|| format!("branch {:?}", entry.name))?,
                    ),
                    None => None,
                },
                name: entry.name,
                parent: entry.parent,
                port: entry.port,
                state: entry.state,
            });
        }
        let registry = Registry { branches };
        registry.check(main)?;
        Ok(registry)
    }

    /// The invariants of a registry: valid, unique names other than `main`; each parent is
    /// `main` or an earlier entry; unique timelines other than `main`'s; unique non-zero
    /// ports; a ready branch knows its LSN; at most [`BRANCHES_MAX`] entries.
    pub fn check(&self, main: TimelineId) -> anyhow::Result<()> {
        if self.branches.len() > BRANCHES_MAX {
            bail!(
                "{} branches; the limit is {BRANCHES_MAX}",
                self.branches.len()
            );
        }
        let mut names = HashSet::from([MAIN_BRANCH]);
        let mut timelines = HashSet::from([main]);
        let mut ports = HashSet::new();
        for entry in &self.branches {
            validate_name(&entry.name).map_err(anyhow::Error::msg)?;
            if !names.contains(entry.parent.as_str()) {
                bail!(
                    "branch {:?} names parent {:?}, which is not main or an earlier branch",
                    entry.name,
                    entry.parent
                );
            }
            if !names.insert(&entry.name) {
                bail!("branch {:?} appears twice (or is named main)", entry.name);
            }
            if !timelines.insert(entry.timeline) {
                bail!(
                    "branch {:?} has timeline {}, which another branch has",
                    entry.name,
                    entry.timeline
                );
            }
            if entry.port == 0 || !ports.insert(entry.port) {
                bail!(
                    "branch {:?} has port {}, which is zero or another branch's",
                    entry.name,
                    entry.port
                );
            }
            if entry.state == BranchState::Ready && entry.lsn.is_none() {
                bail!("branch {:?} is ready but has no LSN", entry.name);
            }
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&BranchEntry> {
        self.branches.iter().find(|entry| entry.name == name)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut BranchEntry> {
        self.branches.iter_mut().find(|entry| entry.name == name)
    }

    pub fn remove(&mut self, name: &str) -> Option<BranchEntry> {
        let index = self.branches.iter().position(|entry| entry.name == name)?;
        Some(self.branches.remove(index))
    }

    /// Names of the branches whose parent is `name`.
    pub fn children(&self, name: &str) -> Vec<&str> {
        self.branches
            .iter()
            .filter(|entry| entry.parent == name)
            .map(|entry| entry.name.as_str())
            .collect()
    }
}

/// Replaces `path` with `bytes` so that a crash leaves the old or the new contents: writes
/// `<path>.tmp`, fsyncs it, renames it over `path` and fsyncs the folder.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent folder", path.display()))?;
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp_name);
    let mut file =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("writing {}", tmp.display()))?;
    file.sync_all()
        .with_context(|| format!("fsync of {}", tmp.display()))?;
    drop(file);
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    std::fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .with_context(|| format!("fsync of {}", dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_dir as temp_dir;

    fn entry(name: &str, parent: &str, n: u128, state: BranchState) -> BranchEntry {
        BranchEntry {
            name: name.into(),
            timeline: TimelineId::from_u128(n),
            parent: parent.into(),
            lsn: (state != BranchState::Creating).then_some(Lsn(0x16B3748 + n as u64)),
            port: 40_000 + n as u16,
            state,
        }
    }

    const MAIN: TimelineId = TimelineId([0xaa; 16]);

    #[test]
    fn names_follow_the_pattern() {
        for good in ["a", "0", "b1", "feature_x-2", &"a".repeat(63)] {
            assert_eq!(validate_name(good), Ok(()), "{good:?}");
        }
        for (bad, says) in [
            ("", "empty"),
            ("-a", "start with"),
            ("_a", "start with"),
            ("B1", "start with"),
            ("a B", "contains ' '"),
            ("aB", "contains 'B'"),
            ("a/b", "contains '/'"),
            ("é", "start with"),
            ("aé", "contains 'é'"),
            (&"a".repeat(64), "the limit is 63"),
        ] {
            let error = validate_name(bad).unwrap_err();
            assert!(error.contains(says), "{bad:?}: {error}");
        }
    }

    #[test]
    fn registry_round_trips_through_its_file() {
        let dir = temp_dir("registry");
        assert_eq!(Registry::load(&dir, MAIN).unwrap(), Registry::default());
        let registry = Registry {
            branches: vec![
                entry("b1", "main", 1, BranchState::Ready),
                entry("b2", "b1", 2, BranchState::Creating),
                entry("b3", "main", 3, BranchState::Deleting),
            ],
        };
        registry.save(&dir, MAIN).unwrap();
        assert_eq!(Registry::load(&dir, MAIN).unwrap(), registry);
        assert!(!dir.join("branches.json.tmp").exists());
        let text = std::fs::read_to_string(dir.join(REGISTRY_FILE)).unwrap();
        assert!(text.contains("\"version\": 1"), "{text}");
        assert!(text.contains("\"lsn\": \"0/16B3749\""), "{text}");
        assert!(text.contains("\"state\": \"creating\""), "{text}");

        // A save replaces the whole file; a leftover temporary file is not read.
        std::fs::write(dir.join("branches.json.tmp"), "garbage").unwrap();
        let smaller = Registry {
            branches: vec![entry("b1", "main", 1, BranchState::Ready)],
        };
        smaller.save(&dir, MAIN).unwrap();
        assert_eq!(Registry::load(&dir, MAIN).unwrap(), smaller);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn load_refuses_other_versions_and_broken_files() {
        let dir = temp_dir("registry-bad");
        let path = dir.join(REGISTRY_FILE);
        let b1 = r#"{"name":"b1","timeline":"00000000000000000000000000000001","parent":"main","lsn":"0/10","port":40001,"state":"ready"}"#;
        let cases = [
            (
                r#"{"version": 2, "branches": [], "new": true}"#.to_string(),
                "version 2",
            ),
            ("{".to_string(), "EOF"),
            (r#"{"branches": []}"#.to_string(), "missing field `version`"),
            (
                format!(r#"{{"version":1,"branches":[{b1},{b1}]}}"#),
                "appears twice",
            ),
            (
                format!(
                    r#"{{"version":1,"branches":[{}]}}"#,
                    b1.replace("main", "b0")
                ),
                "not main or an earlier branch",
            ),
            (
                format!(
                    r#"{{"version":1,"branches":[{}]}}"#,
                    b1.replace("0/10", "x")
                ),
                "invalid LSN",
            ),
            (
                format!(
                    r#"{{"version":1,"branches":[{}]}}"#,
                    b1.replace("\"b1\"", "\"main\"")
                ),
                "named main",
            ),
            (
                format!(
                    r#"{{"version":1,"branches":[{}]}}"#,
                    b1.replace("\"0/10\"", "null")
                ),
                "ready but has no LSN",
            ),
            (
                format!(
                    r#"{{"version":1,"branches":[{}]}}"#,
                    b1.replace("ready", "gone")
                ),
                "unknown variant",
            ),
        ];
        for (text, says) in cases {
            std::fs::write(&path, &text).unwrap();
            let error = format!("{:#}", Registry::load(&dir, MAIN).unwrap_err());
            assert!(error.contains("branches.json"), "{text}: {error}");
            assert!(error.contains(says), "{text}: {error}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn save_refuses_an_inconsistent_registry() {
        let dir = temp_dir("registry-inconsistent");
        let mut main_timeline = entry("b1", "main", 1, BranchState::Ready);
        main_timeline.timeline = MAIN;
        let same_port = Registry {
            branches: vec![
                entry("b1", "main", 1, BranchState::Ready),
                BranchEntry {
                    port: 40_001,
                    ..entry("b2", "main", 2, BranchState::Ready)
                },
            ],
        };
        for registry in [
            Registry {
                branches: vec![main_timeline],
            },
            same_port,
        ] {
            assert!(registry.save(&dir, MAIN).is_err());
            assert!(!dir.join(REGISTRY_FILE).exists());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
