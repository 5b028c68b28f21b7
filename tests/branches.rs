//! Branches from the command line: `omendb branch create|list|delete|reset` against a
//! running `omendb start`, each branch checked with psql on its own connection string
//! (through the proxy, which starts the branch's compute on the first connection). A branch
//! starts as its parent's data at a point (the latest commit, an LSN, or a time), its writes
//! and its parent's never meet, a reset gives it its parent's latest data, deleting refuses
//! `main` and parents, and a restarted cluster has the same branches, data and connection
//! strings.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use support::launcher::{
    endpoint_of, omendb, processes_mentioning, psql, rfc3339_utc, try_psql, Launcher, Output,
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

/// The part of a connection string before the endpoint: role, password, host, port and
/// database.
fn before_endpoint(url: &str) -> &str {
    url.split_once("?options=endpoint%3Dep-")
        .unwrap_or_else(|| panic!("{url:?} names no endpoint"))
        .0
}

/// Creates a branch and returns the connection string it printed: the proxy's address and
/// the owner role's password, as main's, with an endpoint of its own.
fn create(dir: &Path, name: &str, parent: &str, at: Option<&str>) -> String {
    let mut args = vec!["create", name, "--parent", parent];
    if let Some(at) = at {
        args.extend_from_slice(&["--at", at]);
    }
    let output = branch(dir, &args);
    assert!(output.success, "branch create {name}: {output:?}");
    let url = output.stdout.trim().to_string();
    assert!(
        url.starts_with("postgres://omendb:") && !url.contains('\n'),
        "branch create {name} printed {:?}",
        output.stdout
    );
    assert_eq!(
        before_endpoint(&url),
        before_endpoint(&connection_string(dir, "main")),
        "a branch is reached as main is, through another endpoint"
    );
    assert_ne!(
        endpoint_of(&url),
        endpoint_of(&connection_string(dir, "main"))
    );
    assert!(
        output
            .stderr
            .contains(&format!("created branch {name} from {parent} at ")),
        "{output:?}"
    );
    url
}

/// `omendb connection-string --branch <name>`.
fn connection_string(dir: &Path, name: &str) -> String {
    let dir = dir.display().to_string();
    let output = omendb(&["connection-string", "--branch", name, "--data-dir", &dir]);
    assert!(
        output.success,
        "connection-string --branch {name}: {output:?}"
    );
    output.stdout.trim().to_string()
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
    id: String,
    timeline: String,
}

/// `omendb branch list`, parsed.
fn list(dir: &Path) -> Vec<Listed> {
    let output = branch(dir, &["list"]);
    assert!(output.success, "branch list: {output:?}");
    let mut lines = output.stdout.lines();
    let header: Vec<&str> = lines.next().expect("a header").split_whitespace().collect();
    assert_eq!(header, ["NAME", "PARENT", "LSN", "ID", "TIMELINE"]);
    lines
        .map(|line| {
            let cells: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(cells.len(), 5, "a branch has 5 cells: {line:?}");
            Listed {
                name: cells[0].into(),
                parent: cells[1].into(),
                lsn: cells[2].into(),
                id: cells[3].into(),
                timeline: cells[4].into(),
            }
        })
        .collect()
}

/// `omendb endpoint list`, as (id, branch, type, idle timeout) rows; the state is left out
/// (a compute may be suspended or woken at any time).
fn endpoints(dir: &Path) -> Vec<(String, String, String, String)> {
    let dir = dir.display().to_string();
    let output = omendb(&["endpoint", "list", "--data-dir", &dir]);
    assert!(output.success, "endpoint list: {output:?}");
    let mut lines = output.stdout.lines();
    let header: Vec<&str> = lines.next().expect("a header").split_whitespace().collect();
    assert_eq!(
        header,
        ["ID", "BRANCH", "TYPE", "STATE", "IDLE_TIMEOUT_SECS"]
    );
    lines
        .map(|line| {
            let cells: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(cells.len(), 5, "an endpoint has 5 cells: {line:?}");
            assert!(
                ["running", "suspended"].contains(&cells[3]),
                "state {:?}",
                cells[3]
            );
            (
                cells[0].into(),
                cells[1].into(),
                cells[2].into(),
                cells[4].into(),
            )
        })
        .collect()
}

/// An LSN as PostgreSQL spells it (`0/16B3748`), as a number.
fn lsn_value(lsn: &str) -> u64 {
    let (hi, lo) = lsn
        .split_once('/')
        .unwrap_or_else(|| panic!("{lsn:?} is not an LSN"));
    let hi = u64::from_str_radix(hi, 16).expect("hex");
    let lo = u64::from_str_radix(lo, 16).expect("hex");
    (hi << 32) | lo
}

fn ids(url: &str) -> Vec<i64> {
    let out = psql(url, "SELECT id FROM t ORDER BY id");
    out.lines().map(|l| l.parse().expect("an id")).collect()
}

/// The local cluster's tenant and project ids.
fn tenant_and_project(dir: &Path) -> (String, String) {
    let read = |name: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join(name)).unwrap()).unwrap()
    };
    let cluster = read("cluster.json");
    let control_plane = read("control-plane.json");
    (
        cluster["tenant"].as_str().unwrap().to_string(),
        control_plane["project"].as_str().unwrap().to_string(),
    )
}

/// The files of a timeline in the cluster's object store.
fn timeline_files(dir: &Path, tenant: &str, timeline: &str) -> Vec<PathBuf> {
    files_under(
        &dir.join("object-store/tenants")
            .join(tenant)
            .join("timelines")
            .join(timeline),
    )
}

#[test]
fn branches_start_from_their_parent_diverge_and_survive_a_restart() {
    let dir = fresh_dir("branches");
    let port = support::cluster::free_addr().port();
    let cluster = Launcher::start(&dir, port);
    let main = cluster.url.clone();
    let (tenant, _) = tenant_and_project(&dir);

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
    assert_eq!(connection_string(&dir, "main"), main);

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
    let urls: Vec<String> = listed
        .iter()
        .map(|b| connection_string(&dir, &b.name))
        .collect();
    assert_eq!(
        urls,
        [
            main.as_str(),
            b1.as_str(),
            b2.as_str(),
            at_lsn.as_str(),
            at_time.as_str()
        ]
    );
    assert_eq!(listed[3].lsn, b1_lsn);
    let mut timelines: Vec<&str> = listed.iter().map(|b| b.timeline.as_str()).collect();
    assert!(timelines
        .iter()
        .all(|t| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit())));
    timelines.sort();
    timelines.dedup();
    assert_eq!(timelines.len(), 5, "every branch has its own timeline");
    let mut branch_ids: Vec<&str> = listed.iter().map(|b| b.id.as_str()).collect();
    assert!(
        branch_ids.iter().all(|id| id.starts_with("br-")),
        "{listed:?}"
    );
    branch_ids.sort();
    branch_ids.dedup();
    assert_eq!(branch_ids.len(), 5, "every branch has its own id");
    // Each branch has one read-write endpoint, the one its connection string names.
    let expected: Vec<(String, String, String, String)> = listed
        .iter()
        .zip(&urls)
        .map(|(b, url)| {
            (
                endpoint_of(url).to_string(),
                b.name.clone(),
                "read_write".to_string(),
                "300".to_string(),
            )
        })
        .collect();
    let mut found = endpoints(&dir);
    found.sort();
    let mut expected_sorted = expected.clone();
    expected_sorted.sort();
    assert_eq!(found, expected_sorted);

    // Delete and reset: not main, not a parent; a leaf goes, compute, endpoint, timeline
    // and all.
    assert_fails(
        branch(&dir, &["delete", "main"]),
        "branch main is the project's root branch and cannot be deleted",
    );
    assert_fails(
        branch(&dir, &["delete", "b1"]),
        "branch b1 has branches of its own (b2)",
    );
    assert_fails(
        branch(&dir, &["reset", "b1"]),
        "branch b1 has branches of its own (b2)",
    );
    assert_fails(
        branch(&dir, &["reset", "main"]),
        "has no parent to reset to",
    );
    assert_fails(branch(&dir, &["delete", "nope"]), "has no branch \"nope\"");
    assert_eq!(ids(&b1), [1, 2, 10], "a refused reset changes nothing");
    let b2_timeline = listed[2].timeline.clone();
    assert!(
        !timeline_files(&dir, &tenant, &b2_timeline).is_empty(),
        "b2's timeline is in the object store"
    );
    let deleted = branch(&dir, &["delete", "b2"]);
    assert!(deleted.success, "{deleted:?}");
    assert!(
        deleted
            .stdout
            .contains(&format!("deleted branch b2 (timeline {b2_timeline})")),
        "{deleted:?}"
    );
    let gone = try_psql(&b2, "SELECT 1").expect_err("b2 cannot be reached any more");
    assert!(
        gone.contains(&format!("endpoint {} does not exist", endpoint_of(&b2))),
        "{gone}"
    );
    assert!(list(&dir).iter().all(|b| b.name != "b2"));
    assert!(endpoints(&dir).iter().all(|e| e.1 != "b2"));
    let left = timeline_files(&dir, &tenant, &b2_timeline);
    assert!(left.is_empty(), "b2's timeline was deleted: {left:?}");

    // Bad input changes nothing.
    assert_fails(
        branch(&dir, &["create", "x", "--parent", "nope"]),
        "has no branch \"nope\"",
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
            .iter()
            .filter(|b| b.name != "b2")
            .cloned()
            .collect::<Vec<_>>()
    );

    // A reset gives a branch its parent's latest data and drops its own changes; its
    // connection string stays.
    let r = create(&dir, "r", "main", None);
    psql(&r, "INSERT INTO t VALUES (60, 'r')");
    psql(&r, "CREATE TABLE only_r (id int PRIMARY KEY)");
    psql(&main, "INSERT INTO t VALUES (70, 'main after r')");
    assert_eq!(ids(&r), [1, 2, 20, 40, 50, 60]);
    let r_before = list(&dir).into_iter().find(|b| b.name == "r").unwrap();
    let reset = branch(&dir, &["reset", "r"]);
    assert!(reset.success, "{reset:?}");
    assert!(
        reset.stdout.contains("reset branch r to main at "),
        "{reset:?}"
    );
    let r_after = list(&dir).into_iter().find(|b| b.name == "r").unwrap();
    assert_eq!(
        (r_after.id.as_str(), r_after.parent.as_str()),
        (r_before.id.as_str(), "main")
    );
    assert_ne!(r_after.timeline, r_before.timeline, "a new timeline");
    assert!(
        lsn_value(&r_after.lsn) > lsn_value(&r_before.lsn),
        "{r_before:?} then {r_after:?}"
    );
    assert_eq!(connection_string(&dir, "r"), r);
    assert_eq!(ids(&r), [1, 2, 20, 40, 50, 70]);
    assert!(try_psql(&r, "SELECT * FROM only_r").is_err());
    assert_eq!(ids(&main), [1, 2, 20, 40, 50, 70], "main is untouched");
    let left = timeline_files(&dir, &tenant, &r_before.timeline);
    assert!(left.is_empty(), "r's old timeline was deleted: {left:?}");
    psql(&r, "INSERT INTO t VALUES (61, 'r after the reset')");
    assert_eq!(ids(&r), [1, 2, 20, 40, 50, 61, 70]);
    assert_eq!(ids(&main), [1, 2, 20, 40, 50, 70]);

    // A restart finds every branch, its data and its connection string again.
    let before = list(&dir);
    cluster.stop();
    let left = processes_mentioning(&dir.display().to_string());
    assert!(left.is_empty(), "children left running: {left:?}");
    let cluster = Launcher::start(&dir, port);
    assert_eq!(cluster.url, main);
    assert_eq!(list(&dir), before);
    for (b, url) in before.iter().zip([&main, &b1, &at_lsn, &at_time, &r]) {
        assert_eq!(&connection_string(&dir, &b.name), url, "{}", b.name);
    }
    assert_eq!(ids(&main), [1, 2, 20, 40, 50, 70]);
    assert_eq!(ids(&b1), [1, 2, 10]);
    assert_eq!(ids(&at_lsn), [1, 2]);
    assert_eq!(ids(&at_time), [1, 2, 20, 40]);
    assert_eq!(ids(&r), [1, 2, 20, 40, 50, 61, 70]);
    psql(&b1, "INSERT INTO t VALUES (11, 'after the restart')");
    assert_eq!(ids(&b1), [1, 2, 10, 11]);
    assert_eq!(ids(&main), [1, 2, 20, 40, 50, 70]);
    // b1 has no children any more.
    assert!(branch(&dir, &["delete", "b1"]).success);
    assert!(list(&dir).iter().all(|b| b.name != "b1"));
    cluster.stop();

    // The commands find the stopped cluster's API no more; names are still checked first.
    assert_fails(branch(&dir, &["list"]), "is the control plane running?");
    assert_fails(branch(&dir, &["create", "Bad!"]), "must start with");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn branch_commands_without_a_cluster_say_so() {
    let dir = fresh_dir("branches-none");
    std::fs::create_dir_all(&dir).unwrap();
    let expected = format!(
        "no control plane given: pass --api (or OMENDB_API), or run `omendb start` with \
         --data-dir {}",
        dir.display()
    );
    assert_fails(branch(&dir, &["list"]), &expected);
    assert_fails(
        branch(&dir, &["create", "b1", "--parent", "main"]),
        &expected,
    );
    assert_fails(branch(&dir, &["delete", "b1"]), &expected);
    assert_fails(branch(&dir, &["reset", "b1"]), &expected);
    // What a cluster that was stopped (or killed) leaves: the file naming its API, and its
    // token; nothing listens there any more.
    let api = support::cluster::free_addr();
    std::fs::write(
        dir.join("control-plane.json"),
        serde_json::to_vec_pretty(&serde_json::json!({
            "version": 1, "api": format!("http://{api}"), "postgres": "127.0.0.1:1",
            "project": "prj-0123456789abcdef"
        }))
        .unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join("admin-token"), "omendb_token\n").unwrap();
    assert_fails(branch(&dir, &["list"]), "is the control plane running?");
    assert_fails(
        branch(&dir, &["create", "b1", "--parent", "main"]),
        "is the control plane running?",
    );
    assert_fails(
        branch(&dir, &["delete", "b1"]),
        "is the control plane running?",
    );
    // Names and points are checked before anything is asked.
    assert_fails(branch(&dir, &["create", "_x"]), "must start with");
    assert_fails(
        branch(&dir, &["create", "x", "--at", "noon"]),
        "neither an LSN",
    );
    assert_fails(branch(&dir, &["create", "x", "--at", "0/zz"]), "not an LSN");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn branch_help_documents_every_command_and_flag() {
    let help = omendb(&["branch", "--help"]);
    assert!(help.success, "{help:?}");
    for command in ["create", "list", "delete", "reset"] {
        assert!(help.stdout.contains(command), "{command}: {}", help.stdout);
    }
    let help = omendb(&["branch", "create", "--help"]);
    assert!(help.success, "{help:?}");
    for flag in [
        "--parent",
        "--at",
        "--no-endpoint",
        "--data-dir",
        "--json",
        "<NAME>",
    ] {
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

/// What a crash in the middle of a branch operation leaves behind: a timeline recorded as
/// doomed that no branch owns, whether the pageserver made it (a crash after a creation's
/// `CreateTimeline`, or after a deletion's first transaction) or not (a crash before
/// `CreateTimeline`). The state is made with the control plane's own store operations while
/// the cluster is stopped; the next start deletes the one and forgets the other.
#[test]
fn timelines_a_crash_left_doomed_are_deleted_at_the_next_start() {
    let dir = fresh_dir("branches-crash");
    let port = support::cluster::free_addr().port();
    let cluster = Launcher::start(&dir, port);
    psql(&cluster.url, "CREATE TABLE t (id int PRIMARY KEY)");
    psql(&cluster.url, "INSERT INTO t VALUES (1)");
    let b1 = create(&dir, "b1", "main", None);
    psql(&b1, "INSERT INTO t VALUES (2)");
    assert_eq!(ids(&b1), [1, 2]);
    let listed = list(&dir);
    let b1_timeline = listed[1].timeline.clone();
    cluster.stop();

    let (tenant, project) = tenant_and_project(&dir);
    assert!(
        !timeline_files(&dir, &tenant, &b1_timeline).is_empty(),
        "b1's timeline is in the object store"
    );
    let never_made = ids::TimelineId::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
    {
        let db = dir.join(control_plane::store::DB_FILE);
        let mut store = control_plane::store::Store::open(&db).unwrap();
        let row = store
            .find_branch(&project, "b1")
            .unwrap()
            .expect("b1's row");
        assert_eq!(row.timeline.to_string(), b1_timeline);
        store.delete_branch(&row).unwrap();
        store.doom_timeline(never_made).unwrap();
        let mut doomed: Vec<String> = store
            .doomed_timelines()
            .unwrap()
            .iter()
            .map(|t| t.to_string())
            .collect();
        doomed.sort();
        let mut expected = vec![b1_timeline.clone(), never_made.to_string()];
        expected.sort();
        assert_eq!(doomed, expected);
    }

    let cluster = Launcher::start(&dir, port);
    let names: Vec<String> = list(&dir).into_iter().map(|b| b.name).collect();
    assert_eq!(names, ["main"]);
    let gone = try_psql(&b1, "SELECT 1").expect_err("b1 has no endpoint");
    assert!(
        gone.contains(&format!("endpoint {} does not exist", endpoint_of(&b1))),
        "{gone}"
    );
    let left = timeline_files(&dir, &tenant, &b1_timeline);
    assert!(left.is_empty(), "b1's timeline was deleted: {left:?}");
    // The name is free again, and main's data is untouched.
    let again = create(&dir, "b1", "main", None);
    assert_ne!(endpoint_of(&again), endpoint_of(&b1));
    assert_eq!(ids(&again), [1]);
    assert_eq!(ids(&cluster.url), [1]);
    cluster.stop();

    let store =
        control_plane::store::Store::open(&dir.join(control_plane::store::DB_FILE)).unwrap();
    let doomed = store.doomed_timelines().unwrap();
    assert!(
        doomed.is_empty(),
        "every doomed timeline was deleted or forgotten: {doomed:?}"
    );
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}
