//! The `omendb branch` commands: thin clients of the running launcher's control socket
//! ([`crate::control`]) that print its answers.
//!
//! `create` prints the new branch's connection string alone on stdout (so that
//! `psql "$(omendb branch create b1 --parent main)"` works) and a sentence about it on
//! stderr; `list` prints a table; `delete` prints what it deleted. A refusal is returned as
//! an error carrying the launcher's message.

use std::path::Path;

use anyhow::bail;

use crate::branches::{parse_branch_point, BranchView};
use crate::control::{call, ControlRequest, ControlResponse};
use crate::registry::{validate_name, BranchState};

fn refused(response: ControlResponse) -> anyhow::Error {
    match response {
        ControlResponse::Error { message, .. } => anyhow::Error::msg(message),
        other => anyhow::anyhow!("the cluster gave an unexpected answer: {other:?}"),
    }
}

/// `omendb branch create NAME --parent PARENT [--at AT]`.
pub async fn create(
    data_dir: &Path,
    name: &str,
    parent: &str,
    at: Option<&str>,
) -> anyhow::Result<()> {
    // Checked here as well as by the launcher, so that a typo is reported even when no
    // cluster runs.
    validate_name(name).map_err(anyhow::Error::msg)?;
    parse_branch_point(at).map_err(anyhow::Error::msg)?;
    let request = ControlRequest::CreateBranch {
        name: name.into(),
        parent: parent.into(),
        at: at.map(str::to_string),
    };
    match call(data_dir, &request).await? {
        ControlResponse::Created { branch } => {
            eprintln!(
                "created branch {} from {} at {} (timeline {})",
                branch.name,
                branch.parent.as_deref().unwrap_or("-"),
                branch.lsn.as_deref().unwrap_or("-"),
                branch.timeline
            );
            println!("{}", branch.connection);
            Ok(())
        }
        other => Err(refused(other)),
    }
}

/// `omendb branch list`.
pub async fn list(data_dir: &Path) -> anyhow::Result<()> {
    match call(data_dir, &ControlRequest::ListBranches).await? {
        ControlResponse::Branches { branches } => {
            print!("{}", format_table(&branches));
            Ok(())
        }
        other => Err(refused(other)),
    }
}

/// `omendb branch delete NAME`.
pub async fn delete(data_dir: &Path, name: &str) -> anyhow::Result<()> {
    if name.is_empty() {
        bail!("a branch name cannot be empty");
    }
    let request = ControlRequest::DeleteBranch { name: name.into() };
    match call(data_dir, &request).await? {
        ControlResponse::Deleted { branch } => {
            println!(
                "deleted branch {} (timeline {}, was {})",
                branch.name, branch.timeline, branch.connection
            );
            Ok(())
        }
        other => Err(refused(other)),
    }
}

/// One line per branch under a header, columns aligned; a branch that is not ready says so
/// after its connection string.
pub fn format_table(branches: &[BranchView]) -> String {
    let header = ["NAME", "PARENT", "LSN", "TIMELINE", "CONNECTION"];
    let rows: Vec<[String; 5]> = branches
        .iter()
        .map(|branch| {
            let mut connection = branch.connection.clone();
            if branch.state != BranchState::Ready {
                connection.push_str(&format!(" ({})", branch.state));
            }
            [
                branch.name.clone(),
                branch.parent.clone().unwrap_or_else(|| "-".into()),
                branch.lsn.clone().unwrap_or_else(|| "-".into()),
                branch.timeline.clone(),
                connection,
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut out = String::new();
    let header = header.map(str::to_string);
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_aligns_its_columns() {
        let main = BranchView {
            name: "main".into(),
            parent: None,
            lsn: None,
            timeline: "a".repeat(32),
            connection: "postgres://omendb@127.0.0.1:55432/omendb".into(),
            state: BranchState::Ready,
        };
        let b1 = BranchView {
            name: "feature-1".into(),
            parent: Some("main".into()),
            lsn: Some("0/16B3748".into()),
            timeline: "b".repeat(32),
            connection: "postgres://omendb@127.0.0.1:40001/omendb".into(),
            state: BranchState::Deleting,
        };
        let table = format_table(&[main, b1]);
        let expected = format!(
            "NAME       PARENT  LSN        TIMELINE{0}  CONNECTION\n\
             main       -       -          {1}  postgres://omendb@127.0.0.1:55432/omendb\n\
             feature-1  main    0/16B3748  {2}  postgres://omendb@127.0.0.1:40001/omendb (deleting)\n",
            " ".repeat(24),
            "a".repeat(32),
            "b".repeat(32)
        );
        assert_eq!(table, expected);
    }
}
