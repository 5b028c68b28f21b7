//! The `omendb` subcommands that manage a control plane through its HTTP API: `project`,
//! `branch`, `endpoint`, `role`, `token` and `connection-string`.
//!
//! Which control plane, as whom, and which project: `--api` / `OMENDB_API`, `--token` /
//! `OMENDB_API_TOKEN` and `--project` / `OMENDB_PROJECT`; each defaults to what the local
//! cluster running on `--data-dir` wrote (`control-plane.json`, `admin-token`). Commands
//! that make something with a connection string (`branch create`, `project create`,
//! `connection-string`) print the string alone on stdout, so that
//! `psql "$(omendb branch create pr-1)"` works, and a sentence on stderr; `--json` prints
//! the API's answer instead. A refusal exits non-zero with the API's message.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::service::{percent_encode, BranchView, EndpointView};
use crate::{ClusterEndpoints, ADMIN_TOKEN_FILE, CLUSTER_ENDPOINTS_FILE};

/// How long one API request may take, in milliseconds (a branch creation waits for the
/// pageserver).
pub const REQUEST_TIMEOUT_MS: u64 = 130_000;

/// Where the API is and who is asking.
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// Folder of the local cluster (as given to `omendb start`), for the defaults below.
    #[arg(long, default_value = "./.omendb", global = true)]
    pub data_dir: PathBuf,
    /// The control plane's API (default: the local cluster's).
    #[arg(long, env = "OMENDB_API", global = true)]
    pub api: Option<String>,
    /// API token (default: the local cluster's admin token).
    #[arg(long, env = "OMENDB_API_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Project id (default: the local cluster's project).
    #[arg(long, env = "OMENDB_PROJECT", global = true)]
    pub project: Option<String>,
    /// Print the API's JSON answer.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum ProjectCommand {
    /// Create a project (admin token): prints the connection string of its main branch;
    /// its id, token and password are on stderr (and in --json).
    Create {
        #[arg(long)]
        name: Option<String>,
    },
    /// List the projects the token reaches.
    List,
    /// Delete a project and everything it has.
    Delete { project_id: String },
}

#[derive(Subcommand, Debug)]
pub enum BranchCommand {
    /// Create branch NAME from PARENT (copying nothing) with a read-write endpoint; prints
    /// its connection string. Its compute starts on the first connection.
    Create {
        /// Lowercase letters, digits, '_' and '-', starting with a letter or digit, at most
        /// 63 characters.
        name: String,
        /// The branch it starts from (name or id).
        #[arg(long, default_value = "main")]
        parent: String,
        /// Where on the parent it starts: an LSN (0/16B3748) or an RFC 3339 time in UTC
        /// (2024-05-01T12:00:00Z). Default: the parent's latest commit.
        #[arg(long)]
        at: Option<String>,
        /// Make no endpoint (and print no connection string).
        #[arg(long)]
        no_endpoint: bool,
    },
    /// List the project's branches.
    List,
    /// Delete a branch and its endpoints (not the root branch, nor one others start from).
    Delete { branch: String },
    /// Replace the branch's data with its parent's latest (its own changes are lost).
    Reset { branch: String },
}

#[derive(Subcommand, Debug)]
pub enum EndpointCommand {
    /// Create an endpoint on a branch.
    Create {
        /// Branch name or id.
        #[arg(long, default_value = "main")]
        branch: String,
        /// A read-only endpoint.
        #[arg(long)]
        read_only: bool,
        /// Suspend its compute after this long without a connection (0: never).
        #[arg(long)]
        idle_timeout_secs: Option<u64>,
    },
    /// List the project's endpoints and whether each runs.
    List,
    /// Start the endpoint's compute now.
    Start { endpoint_id: String },
    /// Stop the endpoint's compute (the next connection starts it again).
    Suspend { endpoint_id: String },
    /// Change an endpoint's settings.
    Set {
        endpoint_id: String,
        #[arg(long)]
        idle_timeout_secs: Option<u64>,
    },
    /// Delete an endpoint (its branch stays).
    Delete { endpoint_id: String },
}

#[derive(Subcommand, Debug)]
pub enum RoleCommand {
    /// Create a role; prints its password (generated unless given).
    Create {
        name: String,
        #[arg(long)]
        password: Option<String>,
    },
    /// List the project's roles.
    List,
    /// Set a role's password (generated unless given); prints it.
    Password {
        name: String,
        #[arg(long)]
        password: Option<String>,
    },
    /// Delete a role.
    Delete { name: String },
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Make a new API token for the project; prints it (only its hash is kept).
    Create,
}

/// The API as the commands reach it.
struct Api {
    url: String,
    token: String,
    project: Option<String>,
    client: reqwest::Client,
}

fn read_cluster_file(data_dir: &Path) -> Option<ClusterEndpoints> {
    let text = std::fs::read_to_string(data_dir.join(CLUSTER_ENDPOINTS_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

impl Api {
    fn new(target: &Target) -> anyhow::Result<Api> {
        let local = read_cluster_file(&target.data_dir);
        let url = match (&target.api, &local) {
            (Some(url), _) => url.trim_end_matches('/').to_string(),
            (None, Some(local)) => local.api.clone(),
            (None, None) => bail!(
                "no control plane given: pass --api (or OMENDB_API), or run `omendb start` \
                 with --data-dir {}",
                target.data_dir.display()
            ),
        };
        let token = match &target.token {
            Some(token) => token.clone(),
            None => {
                let path = target.data_dir.join(ADMIN_TOKEN_FILE);
                std::fs::read_to_string(&path)
                    .with_context(|| {
                        format!(
                            "no API token given (--token or OMENDB_API_TOKEN), and {} cannot be read",
                            path.display()
                        )
                    })?
                    .trim()
                    .to_string()
            }
        };
        let project = target
            .project
            .clone()
            .or_else(|| local.map(|local| local.project));
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_millis(REQUEST_TIMEOUT_MS))
            .build()
            .context("making the HTTP client")?;
        Ok(Api {
            url,
            token,
            project,
            client,
        })
    }

    fn project(&self) -> anyhow::Result<&str> {
        self.project
            .as_deref()
            .context("no project given: pass --project (or OMENDB_PROJECT)")
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.url);
        let mut request = self
            .client
            .request(method.clone(), &url)
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(serde_json::to_vec(&body)?);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("{method} {url}: is the control plane running?"))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .with_context(|| format!("{method} {url}"))?;
        let value: Value = serde_json::from_slice(&bytes).with_context(|| {
            format!("{method} {url} answered {status} with something that is not JSON")
        })?;
        if !status.is_success() {
            let message = value["error"]["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| value.to_string());
            bail!("{message} ({status})");
        }
        Ok(value)
    }

    fn project_path(&self, rest: &str) -> anyhow::Result<String> {
        Ok(format!("/v1/projects/{}{rest}", self.project()?))
    }
}

/// Prints the API's answer as JSON with `--json`, else as `human` prints it.
fn show(target: &Target, value: &Value, human: impl FnOnce(&Value)) {
    if target.json {
        print_json(value);
    } else {
        human(value);
    }
}

fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("JSON values print")
    );
}

pub async fn project(target: &Target, command: ProjectCommand) -> anyhow::Result<()> {
    let api = Api::new(target)?;
    use reqwest::Method;
    match command {
        ProjectCommand::Create { name } => {
            let value = api
                .call(Method::POST, "/v1/projects", Some(json!({ "name": name })))
                .await?;
            show(target, &value, |value| {
                eprintln!(
                    "created project {} ({}); its API token: {}",
                    value["project"]["id"].as_str().unwrap_or("?"),
                    value["project"]["name"].as_str().unwrap_or("?"),
                    value["token"]["token"].as_str().unwrap_or("?"),
                );
                println!("{}", value["connection_uri"].as_str().unwrap_or(""));
            });
        }
        ProjectCommand::List => {
            let value = api.call(Method::GET, "/v1/projects", None).await?;
            show(target, &value, |value| {
                let rows: Vec<Vec<String>> = value["projects"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| vec![text(&p["id"]), text(&p["name"])])
                    .collect();
                print!("{}", format_table(&["ID", "NAME"], &rows));
            });
        }
        ProjectCommand::Delete { project_id } => {
            let value = api
                .call(
                    Method::DELETE,
                    &format!("/v1/projects/{}", percent_encode(&project_id)),
                    None,
                )
                .await?;
            show(target, &value, |_| {
                println!("deleted project {project_id}");
            });
        }
    }
    Ok(())
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

pub async fn branch(target: &Target, command: BranchCommand) -> anyhow::Result<()> {
    if let BranchCommand::Create { name, at, .. } = &command {
        // Checked here as well as by the control plane, so that a typo is reported even
        // when none runs.
        crate::registry::validate_name(name).map_err(anyhow::Error::msg)?;
        crate::service::parse_branch_point(at.as_deref()).map_err(anyhow::Error::msg)?;
    }
    let api = Api::new(target)?;
    use reqwest::Method;
    match command {
        BranchCommand::Create {
            name,
            parent,
            at,
            no_endpoint,
        } => {
            let value = api
                .call(
                    Method::POST,
                    &api.project_path("/branches")?,
                    Some(json!({ "name": name, "parent": parent, "at": at, "endpoint": !no_endpoint })),
                )
                .await?;
            if target.json {
                print_json(&value);
                return Ok(());
            }
            let branch: BranchView = serde_json::from_value(value["branch"].clone())?;
            eprintln!(
                "created branch {} from {} at {} (timeline {})",
                branch.name,
                branch.parent.as_deref().unwrap_or("-"),
                branch.lsn.as_deref().unwrap_or("-"),
                branch.timeline
            );
            if let Some(uri) = value["connection_uri"].as_str() {
                println!("{uri}");
            }
        }
        BranchCommand::List => {
            let value = api
                .call(Method::GET, &api.project_path("/branches")?, None)
                .await?;
            if target.json {
                print_json(&value);
                return Ok(());
            }
            let branches: Vec<BranchView> = serde_json::from_value(value["branches"].clone())?;
            let rows: Vec<Vec<String>> = branches
                .into_iter()
                .map(|b| {
                    vec![
                        b.name,
                        b.parent.unwrap_or_else(|| "-".into()),
                        b.lsn.unwrap_or_else(|| "-".into()),
                        b.id,
                        b.timeline,
                    ]
                })
                .collect();
            print!(
                "{}",
                format_table(&["NAME", "PARENT", "LSN", "ID", "TIMELINE"], &rows)
            );
        }
        BranchCommand::Delete { branch } => {
            let value = api
                .call(
                    Method::DELETE,
                    &api.project_path(&format!("/branches/{}", percent_encode(&branch)))?,
                    None,
                )
                .await?;
            show(target, &value, |value| {
                println!(
                    "deleted branch {} (timeline {})",
                    text(&value["branch"]["name"]),
                    text(&value["branch"]["timeline"])
                );
            });
        }
        BranchCommand::Reset { branch } => {
            let value = api
                .call(
                    Method::POST,
                    &api.project_path(&format!("/branches/{}/reset", percent_encode(&branch)))?,
                    None,
                )
                .await?;
            show(target, &value, |value| {
                println!(
                    "reset branch {} to {} at {}",
                    text(&value["branch"]["name"]),
                    text(&value["branch"]["parent"]),
                    text(&value["branch"]["lsn"])
                );
            });
        }
    }
    Ok(())
}

fn endpoint_rows(endpoints: &[EndpointView]) -> Vec<Vec<String>> {
    endpoints
        .iter()
        .map(|e| {
            let value = serde_json::to_value(e).expect("views serialize");
            vec![
                e.id.clone(),
                e.branch.clone(),
                text(&value["type"]),
                text(&value["state"]),
                e.idle_timeout_secs.to_string(),
            ]
        })
        .collect()
}

const ENDPOINT_HEADER: [&str; 5] = ["ID", "BRANCH", "TYPE", "STATE", "IDLE_TIMEOUT_SECS"];

pub async fn endpoint(target: &Target, command: EndpointCommand) -> anyhow::Result<()> {
    let api = Api::new(target)?;
    use reqwest::Method;
    let value = match command {
        EndpointCommand::Create {
            branch,
            read_only,
            idle_timeout_secs,
        } => {
            let kind = if read_only { "read_only" } else { "read_write" };
            api.call(
                Method::POST,
                &api.project_path("/endpoints")?,
                Some(json!({ "branch": branch, "type": kind, "idle_timeout_secs": idle_timeout_secs })),
            )
            .await?
        }
        EndpointCommand::List => {
            api.call(Method::GET, &api.project_path("/endpoints")?, None)
                .await?
        }
        EndpointCommand::Start { endpoint_id } => {
            api.call(
                Method::POST,
                &api.project_path(&format!(
                    "/endpoints/{}/start",
                    percent_encode(&endpoint_id)
                ))?,
                None,
            )
            .await?
        }
        EndpointCommand::Suspend { endpoint_id } => {
            api.call(
                Method::POST,
                &api.project_path(&format!(
                    "/endpoints/{}/suspend",
                    percent_encode(&endpoint_id)
                ))?,
                None,
            )
            .await?
        }
        EndpointCommand::Set {
            endpoint_id,
            idle_timeout_secs,
        } => {
            api.call(
                Method::PATCH,
                &api.project_path(&format!("/endpoints/{}", percent_encode(&endpoint_id)))?,
                Some(json!({ "idle_timeout_secs": idle_timeout_secs })),
            )
            .await?
        }
        EndpointCommand::Delete { endpoint_id } => {
            api.call(
                Method::DELETE,
                &api.project_path(&format!("/endpoints/{}", percent_encode(&endpoint_id)))?,
                None,
            )
            .await?
        }
    };
    if target.json {
        print_json(&value);
        return Ok(());
    }
    let endpoints: Vec<EndpointView> = if value["endpoints"].is_array() {
        serde_json::from_value(value["endpoints"].clone())?
    } else {
        vec![serde_json::from_value(value["endpoint"].clone())?]
    };
    print!(
        "{}",
        format_table(&ENDPOINT_HEADER, &endpoint_rows(&endpoints))
    );
    Ok(())
}

pub async fn role(target: &Target, command: RoleCommand) -> anyhow::Result<()> {
    let api = Api::new(target)?;
    use reqwest::Method;
    match command {
        RoleCommand::Create { name, password } => {
            let value = api
                .call(
                    Method::POST,
                    &api.project_path("/roles")?,
                    Some(json!({ "name": name, "password": password })),
                )
                .await?;
            show(target, &value, |value| {
                println!("{}", text(&value["role"]["password"]));
            });
        }
        RoleCommand::List => {
            let value = api
                .call(Method::GET, &api.project_path("/roles")?, None)
                .await?;
            show(target, &value, |value| {
                let rows: Vec<Vec<String>> = value["roles"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| vec![text(&r["name"])])
                    .collect();
                print!("{}", format_table(&["NAME"], &rows));
            });
        }
        RoleCommand::Password { name, password } => {
            let value = api
                .call(
                    Method::POST,
                    &api.project_path(&format!("/roles/{}/password", percent_encode(&name)))?,
                    Some(json!({ "password": password })),
                )
                .await?;
            show(target, &value, |value| {
                println!("{}", text(&value["role"]["password"]));
            });
        }
        RoleCommand::Delete { name } => {
            let value = api
                .call(
                    Method::DELETE,
                    &api.project_path(&format!("/roles/{}", percent_encode(&name)))?,
                    None,
                )
                .await?;
            show(target, &value, |_| {
                println!("deleted role {name}");
            });
        }
    }
    Ok(())
}

pub async fn token(target: &Target, command: TokenCommand) -> anyhow::Result<()> {
    let api = Api::new(target)?;
    match command {
        TokenCommand::Create => {
            let value = api
                .call(reqwest::Method::POST, &api.project_path("/tokens")?, None)
                .await?;
            show(target, &value, |value| {
                println!("{}", text(&value["token"]["token"]));
            });
        }
    }
    Ok(())
}

/// `omendb connection-string [--branch B] [--endpoint E] [--role R]`.
pub async fn connection_string(
    target: &Target,
    branch: Option<&str>,
    endpoint: Option<&str>,
    role: Option<&str>,
) -> anyhow::Result<()> {
    let api = Api::new(target)?;
    let mut query = Vec::new();
    for (name, value) in [("branch", branch), ("endpoint", endpoint), ("role", role)] {
        if let Some(value) = value {
            query.push(format!("{name}={}", percent_encode(value)));
        }
    }
    let path = api.project_path(&format!("/connection_uri?{}", query.join("&")))?;
    let value = api.call(reqwest::Method::GET, &path, None).await?;
    show(target, &value, |value| {
        println!("{}", text(&value["uri"]));
    });
    Ok(())
}

/// Rows under a header, columns aligned by two spaces; the last column is not padded.
pub fn format_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
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
        let rows = vec![
            vec!["main".to_string(), "-".to_string(), "x".to_string()],
            vec![
                "feature-1".to_string(),
                "main".to_string(),
                "0/16B3748".to_string(),
            ],
        ];
        assert_eq!(
            format_table(&["NAME", "PARENT", "LSN"], &rows),
            "NAME       PARENT  LSN\n\
             main       -       x\n\
             feature-1  main    0/16B3748\n"
        );
    }

    #[test]
    fn path_segments_are_escaped() {
        assert_eq!(percent_encode("pr-1_a.b~"), "pr-1_a.b~");
        assert_eq!(percent_encode("a/b c"), "a%2Fb%20c");
    }
}
