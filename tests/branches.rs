//! Branches from the command line: `omendb branch create|list|delete` against a running
//! `omendb start`, each branch checked with psql on its own connection string. A branch
//! starts as its parent's data at a point (the latest commit, an LSN, or a time), its writes
//! and its parent's never meet, deleting refuses `main` and parents, and a restarted
//! cluster has the same branches, data and connection strings.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use support::launcher::{
    omendb, processes_mentioning, psql, rfc3339_utc, try_psql, Launcher, Output,
};

fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("omendb-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// `omendb branch <args> --data-dir <dir>`.
fn branch(dir: &Path, args: &[&str]) -> Output {
    let dir = dir.display().to_string();
    let mut all = vec!["branch"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--data-dir", &dir]);
    omendb(&all)
}

/// Creates a branch and returns the connection string it printed.
fn create(dir: &Path, name: &str, parent: &str, at: Option<&str>) -> String {
    let mut args = vec!["create", name, "--parent", parent];
    if let Some(at) = at {
        args.extend_from_slice(&["--at", at]);
    }
    let output = branch(dir, &args);
    assert!(output.success, "branch create {name}: {output:?}");
    let url = output.stdout.trim().to_string();
    assert!(
        url.starts_with("postgres://omendb@127.0.0.1:")
            && url.ends_with("/omendb")
            && !url.contains('\n'),
        "branch create {name} printed {:?}",
        output.stdout
    );
    assert!(
        output
            .stderr
            .contains(&format!("created branch {name} from {parent} at ")),
        "{output:?}"
    );
    url
}

/// The command fails and says `says`.
fn assert_fails(output: Output, says: &str) {
    assert!(
        !output.success,
        "expected a failure saying {says:?}: {output:?}"
    );
    assert!(
        output.stderr.contains(says),
        "expected {says:?} in {:?}",
        output.stderr
    );
    assert!(!output.stderr.contains("panicked"), "{:?}", output.stderr);
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Listed {
    name: String,
    parent: String,
    lsn: String,
    timeline: String,
    connection: String,
}

/// `omendb branch list`, parsed.
fn list(dir: &Path) -> Vec<Listed> {
    let output = branch(dir, &["list"]);
    assert!(output.success, "branch list: {output:?}");
    let mut lines = output.stdout.lines();
    let header: Vec<&str> = lines.next().expect("a header").split_whitespace().collect();
    assert_eq!(header, ["NAME", "PARENT", "LSN", "TIMELINE", "CONNECTION"]);
    lines
        .map(|line| {
            let cells: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(cells.len(), 5, "a ready branch has 5 cells: {line:?}");
            Listed {
                name: cells[0].into(),
                parent: cells[1].into(),
                lsn: cells[2].into(),
                timeline: cells[3].into(),
                connection: cells[4].into(),
            }
        })
        .collect()
}

fn ids(url: &str) -> Vec<i64> {
    let out = psql(url, "SELECT id FROM t ORDER BY id");
    out.lines().map(|l| l.parse().expect("an id")).collect()
}

#[test]
fn branches_start_from_their_parent_diverge_and_survive_a_restart() {
    let dir = fresh_dir("branches");
    let port = support::cluster::free_addr().port();
    let cluster = Launcher::start(&dir, port);
    let main = cluster.url.clone();

    psql(&main, "CREATE TABLE t (id int PRIMARY KEY, note text)");
    psql(&main, "INSERT INTO t VALUES (1, 'one'), (2, 'two')");
    let listed = list(&dir);
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (
            listed[0].name.as_str(),
            listed[0].parent.as_str(),
            listed[0].lsn.as_str()
        ),
        ("main", "-", "-")
    );
    assert_eq!(listed[0].connection, main);

    // A branch of main at its latest commit has main's rows.
    let b1 = create(&dir, "b1", "main", None);
    assert_ne!(b1, main);
    assert_eq!(ids(&b1), [1, 2]);

    // Writes on either side stay there, DDL included.
    psql(&b1, "INSERT INTO t VALUES (10, 'b1')");
    psql(&main, "INSERT INTO t VALUES (20, 'main')");
    psql(&b1, "CREATE TABLE only_b1 (id int PRIMARY KEY)");
    assert_eq!(ids(&b1), [1, 2, 10]);
    assert_eq!(ids(&main), [1, 2, 20]);
    assert!(try_psql(&main, "SELECT * FROM only_b1").is_err());

    // A branch of a branch.
    let b2 = create(&dir, "b2", "b1", None);
    assert_eq!(ids(&b2), [1, 2, 10]);
    psql(&b2, "INSERT INTO t VALUES (30, 'b2')");
    assert_eq!(ids(&b2), [1, 2, 10, 30]);
    assert_eq!(ids(&b1), [1, 2, 10]);

    // At an LSN: b1's branch LSN on main is before main's row 20.
    let b1_lsn = list(&dir)[1].lsn.clone();
    assert!(b1_lsn.contains('/'), "{b1_lsn}");
    let at_lsn = create(&dir, "at-lsn", "main", Some(&b1_lsn));
    assert_eq!(ids(&at_lsn), [1, 2]);

    // At a time between two commits of main.
    psql(&main, "INSERT INTO t VALUES (40, 'before')");
    std::thread::sleep(Duration::from_millis(1000));
    let between = rfc3339_utc(SystemTime::now());
    std::thread::sleep(Duration::from_millis(1000));
    psql(&main, "INSERT INTO t VALUES (50, 'after')");
    let at_time = create(&dir, "at-time", "main", Some(&between));
    assert_eq!(ids(&at_time), [1, 2, 20, 40]);
    assert_eq!(ids(&main), [1, 2, 20, 40, 50]);

    let listed = list(&dir);
    let summary: Vec<(&str, &str)> = listed
        .iter()
        .map(|b| (b.name.as_str(), b.parent.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            ("main", "-"),
            ("b1", "main"),
            ("b2", "b1"),
            ("at-lsn", "main"),
            ("at-time", "main")
        ]
    );
    let urls: Vec<&str> = listed.iter().map(|b| b.connection.as_str()).collect();
    assert_eq!(urls, [main.as_str(), &b1, &b2, &at_lsn, &at_time]);
    assert_eq!(listed[3].lsn, b1_lsn);
    let mut timelines: Vec<&str> = listed.iter().map(|b| b.timeline.as_str()).collect();
    assert!(timelines
        .iter()
        .all(|t| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit())));
    timelines.sort();
    timelines.dedup();
    assert_eq!(timelines.len(), 5, "every branch has its own timeline");

    // Delete: not main, not a parent; a leaf goes, compute and all.
    assert_fails(branch(&dir, &["delete", "main"]), "cannot be deleted");
    assert_fails(
        branch(&dir, &["delete", "b1"]),
        "branch b1 has branches of its own (b2)",
    );
    assert_fails(
        branch(&dir, &["delete", "nope"]),
        "there is no branch \"nope\"",
    );
    let deleted = branch(&dir, &["delete", "b2"]);
    assert!(deleted.success, "{deleted:?}");
    assert!(deleted.stdout.contains("deleted branch b2"), "{deleted:?}");
    assert!(try_psql(&b2, "SELECT 1").is_err(), "b2's compute stopped");
    assert!(list(&dir).iter().all(|b| b.name != "b2"));

    // Bad input changes nothing.
    assert_fails(
        branch(&dir, &["create", "x", "--parent", "nope"]),
        "there is no branch \"nope\"",
    );
    assert_fails(
        branch(&dir, &["create", "Bad!"]),
        "must start with a lowercase letter or a digit",
    );
    assert_fails(branch(&dir, &["create", "a b"]), "contains ' '");
    assert_fails(
        branch(&dir, &["create", &"x".repeat(64)]),
        "the limit is 63",
    );
    assert_fails(branch(&dir, &["create", "b1"]), "branch b1 already exists");
    assert_fails(
        branch(&dir, &["create", "main"]),
        "branch main already exists",
    );
    assert_fails(
        branch(&dir, &["create", "y", "--at", "yesterday"]),
        "neither an LSN",
    );
    assert_fails(branch(&dir, &["create", "y", "--at", "0/zz"]), "not an LSN");
    // Points the pageserver refuses: past its WAL, before the first commit.
    assert_fails(
        branch(&dir, &["create", "y", "--at", "FF/0"]),
        "cannot branch y from main: ",
    );
    assert_fails(
        branch(&dir, &["create", "y", "--at", "1971-01-01T00:00:00Z"]),
        "cannot branch y from main: ",
    );
    assert_eq!(
        list(&dir),
        listed
            .into_iter()
            .filter(|b| b.name != "b2")
            .collect::<Vec<_>>()
    );

    // A restart finds every branch, its data and its connection string again.
    let before = list(&dir);
    cluster.stop();
    let left = processes_mentioning(&dir.display().to_string());
    assert!(left.is_empty(), "children left running: {left:?}");
    let cluster = Launcher::start(&dir, port);
    assert_eq!(cluster.url, main);
    assert_eq!(list(&dir), before);
    assert_eq!(ids(&main), [1, 2, 20, 40, 50]);
    assert_eq!(ids(&b1), [1, 2, 10]);
    assert_eq!(ids(&at_lsn), [1, 2]);
    assert_eq!(ids(&at_time), [1, 2, 20, 40]);
    psql(&b1, "INSERT INTO t VALUES (11, 'after the restart')");
    assert_eq!(ids(&b1), [1, 2, 10, 11]);
    assert_eq!(ids(&main), [1, 2, 20, 40, 50]);
    // b1 has no children any more.
    assert!(branch(&dir, &["delete", "b1"]).success);
    cluster.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn branch_commands_without_a_cluster_say_so() {
    let dir = fresh_dir("branches-none");
    std::fs::create_dir_all(&dir).unwrap();
    let expected = format!(
        "no cluster is running on {}; start one with `omendb start`",
        dir.display()
    );
    assert_fails(branch(&dir, &["list"]), &expected);
    assert_fails(
        branch(&dir, &["create", "b1", "--parent", "main"]),
        &expected,
    );
    assert_fails(branch(&dir, &["delete", "b1"]), &expected);
    // A socket file left by a launcher that was killed.
    drop(std::os::unix::net::UnixListener::bind(dir.join("control.sock")).unwrap());
    assert_fails(branch(&dir, &["list"]), &expected);
    // Names and points are checked before anything is asked.
    assert_fails(branch(&dir, &["create", "_x"]), "must start with");
    assert_fails(
        branch(&dir, &["create", "x", "--at", "noon"]),
        "neither an LSN",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn branch_help_documents_every_command_and_flag() {
    let help = omendb(&["branch", "--help"]);
    assert!(help.success, "{help:?}");
    for command in ["create", "list", "delete"] {
        assert!(help.stdout.contains(command), "{command}: {}", help.stdout);
    }
    let help = omendb(&["branch", "create", "--help"]);
    for flag in ["--parent", "--at", "--data-dir", "<NAME>"] {
        assert!(help.stdout.contains(flag), "{flag}: {}", help.stdout);
    }
}

#[test]
fn rfc3339_utc_formats_known_times() {
    let at = |secs: u64, micros: u64| {
        rfc3339_utc(SystemTime::UNIX_EPOCH + Duration::from_micros(secs * 1_000_000 + micros))
    };
    assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
    assert_eq!(at(1_714_564_800, 123_456), "2024-05-01T12:00:00.123456Z");
    assert_eq!(at(951_782_400, 0), "2000-02-29T00:00:00.000000Z");
    assert_eq!(at(4_102_444_799, 999_999), "2099-12-31T23:59:59.999999Z");
}

/// Files under `dir`, recursively; none if it does not exist.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return files;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn operations_a_crash_interrupted_are_finished_at_the_next_start() {
    let dir = fresh_dir("branches-crash");
    let port = support::cluster::free_addr().port();
    let cluster = Launcher::start(&dir, port);
    psql(&cluster.url, "CREATE TABLE t (id int PRIMARY KEY)");
    psql(&cluster.url, "INSERT INTO t VALUES (1)");
    let b1 = create(&dir, "b1", "main", None);
    create(&dir, "b2", "main", None);
    let listed = list(&dir);
    let timelines = [listed[1].timeline.clone(), listed[2].timeline.clone()];
    cluster.stop();

    // What crashes leave in the registry: b1 marked "deleting" (its timeline not deleted
    // yet); b2 still "creating" although the pageserver created its timeline; b3
    // "creating" before the pageserver heard of it.
    let registry_path = dir.join("branches.json");
    let mut registry: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&registry_path).unwrap()).unwrap();
    let entries = registry["branches"].as_array_mut().unwrap();
    entries[0]["state"] = "deleting".into();
    entries[1]["state"] = "creating".into();
    entries[1]["lsn"] = serde_json::Value::Null;
    entries.push(serde_json::json!({
        "name": "b3", "timeline": "0123456789abcdef0123456789abcdef", "parent": "main",
        "lsn": null, "port": 1, "state": "creating"
    }));
    std::fs::write(
        &registry_path,
        serde_json::to_vec_pretty(&registry).unwrap(),
    )
    .unwrap();

    let cluster = Launcher::start(&dir, port);
    let names: Vec<String> = list(&dir).into_iter().map(|b| b.name).collect();
    assert_eq!(names, ["main"]);
    assert!(try_psql(&b1, "SELECT 1").is_err(), "b1 has no compute");
    let cluster_file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cluster.json")).unwrap()).unwrap();
    let tenant = cluster_file["tenant"].as_str().unwrap();
    for timeline in &timelines {
        let prefix = dir
            .join("object-store/tenants")
            .join(tenant)
            .join("timelines")
            .join(timeline);
        let left = files_under(&prefix);
        assert!(left.is_empty(), "timeline {timeline} was deleted: {left:?}");
    }
    // The names are free again.
    let again = create(&dir, "b1", "main", None);
    assert_eq!(ids(&again), [1]);
    cluster.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
