//! The branch-per-PR workflow of `docs/examples/branch-per-pr.yml`, run step by step by a
//! local stand-in for the Actions runner (`tests/support/run_workflow.py`) against a real
//! cluster, with the repository secrets pointing at its API: a pull request opens (branch
//! created, migrations and tests run on it), is pushed to again (branch reset, the same
//! again), fails its tests once, and closes (branch deleted).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::cluster::free_addr;
use support::launcher::{cli_json, omendb, psql, try_psql, Launcher};

const WORKFLOW: &str = "docs/examples/branch-per-pr.yml";
const PR: &str = "42";

/// Runs the workflow for a `pull_request` event with `action`; true if every step passed.
fn run_workflow(repo: &Path, action: &str, secrets: &[(&str, String)]) -> bool {
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_omendb"));
    let path = format!(
        "{}:{}",
        binary.parent().expect("bin dir").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut command = Command::new("python3");
    command
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/run_workflow.py"))
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join(WORKFLOW))
        .args(["--workdir", &repo.display().to_string()])
        .args(["--set", &format!("github.event.pull_request.number={PR}")])
        .args(["--set", &format!("github.event.action={action}")])
        // The runner image has them; here they are on the machine already.
        .args(["--skip", "Install the omendb CLI and psql"])
        .args(["--skip", "Install the omendb CLI"])
        .env("PATH", path)
        .env_remove("OMENDB_API")
        .env_remove("OMENDB_API_TOKEN")
        .env_remove("OMENDB_PROJECT");
    for (name, value) in secrets {
        command.args(["--set", &format!("secrets.{name}={value}")]);
    }
    let status = command.status().expect("run python3");
    status.success()
}

fn branch_names(dir: &Path) -> Vec<String> {
    cli_json(dir, &["branch", "list"])["branches"]
        .as_array()
        .expect("branches")
        .iter()
        .map(|b| b["name"].as_str().expect("name").to_string())
        .collect()
}

#[test]
fn the_branch_per_pr_workflow_creates_migrates_tests_resets_and_deletes() {
    let dir = std::env::temp_dir().join(format!("omendb-branch-per-pr-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let repo = dir.join("repo");
    std::fs::create_dir_all(repo.join("migrations")).expect("repo");
    std::fs::create_dir_all(repo.join("tests/db")).expect("repo");
    let cluster_dir = dir.join("cluster");
    let port = free_addr().port();
    let cluster = Launcher::start(&cluster_dir, port);
    psql(
        &cluster.url,
        "CREATE TABLE customers (id int PRIMARY KEY, name text)",
    );
    psql(
        &cluster.url,
        "INSERT INTO customers VALUES (1, 'ada'), (2, 'grace')",
    );

    // The repository: two migrations and a test that needs both and main's data.
    std::fs::write(
        repo.join("migrations/001_orders.sql"),
        "CREATE TABLE orders (id int PRIMARY KEY, customer int NOT NULL, total int);\n",
    )
    .expect("write");
    std::fs::write(
        repo.join("migrations/002_seed.sql"),
        "INSERT INTO orders VALUES (10, 1, 5), (11, 2, 7);\n",
    )
    .expect("write");
    let smoke = "SELECT CASE WHEN sum(o.total) = 12 THEN 1 ELSE 1 / 0 END \
                 FROM orders o JOIN customers c ON c.id = o.customer;\n";
    std::fs::write(repo.join("tests/db/smoke.sql"), smoke).expect("write");

    // The secrets: the API's URL, a project token, the project.
    let endpoints: Value = serde_json::from_str(
        &std::fs::read_to_string(cluster_dir.join("control-plane.json")).expect("read"),
    )
    .expect("JSON");
    let project = cli_json(&cluster_dir, &["project", "list"])["projects"][0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let token = cli_json(&cluster_dir, &["token", "create"])["token"]["token"]
        .as_str()
        .expect("token")
        .to_string();
    let secrets = [
        (
            "OMENDB_API",
            endpoints["api"].as_str().expect("api").to_string(),
        ),
        ("OMENDB_API_TOKEN", token),
        ("OMENDB_PROJECT", project),
    ];

    // Opened: the branch is made from main, migrated and tested; main is untouched.
    assert!(
        run_workflow(&repo, "opened", &secrets),
        "the workflow failed on opened"
    );
    assert!(branch_names(&cluster_dir).contains(&format!("pr-{PR}")));
    let printed = omendb(&[
        "connection-string",
        "--branch",
        &format!("pr-{PR}"),
        "--data-dir",
        &cluster_dir.display().to_string(),
    ]);
    assert!(printed.success, "{printed:?}");
    let pr_url = printed.stdout.trim().to_string();
    assert_eq!(psql(&pr_url, "SELECT count(*) FROM orders"), "2");
    assert_eq!(psql(&pr_url, "SELECT count(*) FROM customers"), "2");
    let on_main = try_psql(&cluster.url, "SELECT count(*) FROM orders");
    assert!(on_main.is_err(), "main has no orders table: {on_main:?}");

    // A new push: the branch is reset to main's latest, so the migrations apply again.
    psql(&cluster.url, "INSERT INTO customers VALUES (3, 'edsger')");
    psql(&pr_url, "INSERT INTO orders VALUES (12, 3, 100)");
    assert!(
        run_workflow(&repo, "synchronize", &secrets),
        "the workflow failed on synchronize"
    );
    assert_eq!(psql(&pr_url, "SELECT count(*) FROM orders"), "2");
    assert_eq!(psql(&pr_url, "SELECT count(*) FROM customers"), "3");

    // A push whose tests fail fails the workflow.
    std::fs::write(
        repo.join("migrations/003_more.sql"),
        "INSERT INTO orders VALUES (13, 3, 1);\n",
    )
    .expect("write");
    assert!(
        !run_workflow(&repo, "synchronize", &secrets),
        "the workflow passed although its test fails"
    );

    // Closed: the branch is deleted; main keeps its data.
    assert!(
        run_workflow(&repo, "closed", &secrets),
        "the workflow failed on closed"
    );
    assert!(!branch_names(&cluster_dir).contains(&format!("pr-{PR}")));
    assert_eq!(psql(&cluster.url, "SELECT count(*) FROM customers"), "3");
    // Closing again (the branch already gone) is fine too.
    assert!(
        run_workflow(&repo, "closed", &secrets),
        "the workflow failed on a second close"
    );
    cluster.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
