//! 1,000 randomized connection attempts through the proxy, none of which may reach another
//! project's compute.
//!
//! Three projects (one with a second branch, one with a second role), each with a `marker`
//! table naming its project. Every attempt picks an endpoint (or an unknown id), a way to
//! name it (TLS server name, options, both, the password, none, or two that disagree),
//! credentials (right, another project's role and password, or a wrong password) and a
//! source address of its own on 127/8 (so the failed-login limit, tested elsewhere, does not
//! mask what routing does). The proxy must refuse exactly the attempts it should, with the
//! SQLSTATE it should, and every session it lets through must read its own project's
//! marker. The seed is printed; `OMENDB_TEST_SEED=<n>` replays a run.

mod support;

use std::net::{Ipv4Addr, SocketAddr};

use control_plane::sql_over_http::Target;
use futures::StreamExt;
use support::cluster::free_addr;
use support::launcher::{cli_json, endpoint_of, password_of, psql, Launcher};
use support::rng::{seed_from_env, Rng};

const ATTEMPTS: usize = 1_000;
/// Attempts in flight at once.
const CONCURRENCY: usize = 8;

#[derive(Clone, Debug)]
struct Endpoint {
    id: String,
    project: String,
}

#[derive(Clone, Debug)]
struct Role {
    project: String,
    name: String,
    password: String,
}

/// How an attempt names its endpoint.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Naming {
    Sni,
    Options,
    SniAndOptions,
    /// `endpoint=<id>;<password>` as the password (the proxy asks for it in cleartext over TLS).
    Password,
    Nothing,
    /// The server name names one endpoint, the options another.
    Disagreeing,
}

#[derive(Debug)]
struct Attempt {
    n: usize,
    endpoint: String,
    /// The project of `endpoint`; `None` for an unknown endpoint id.
    project: Option<String>,
    naming: Naming,
    other_endpoint: String,
    role: Role,
    password: String,
}

impl Attempt {
    /// The SQLSTATE the proxy must refuse with, or `None` if the session must open.
    fn expected_refusal(&self) -> Option<&'static str> {
        match (self.naming, &self.project) {
            (Naming::Nothing | Naming::Disagreeing, _) => Some("08004"),
            (_, None) => Some("3D000"),
            (_, Some(project)) => {
                let right = &self.role.project == project && self.role.password == self.password;
                (!right).then_some("28P01")
            }
        }
    }

    fn target(&self, port: u16) -> Target {
        let sni_host = |endpoint: &str| format!("{endpoint}.localhost");
        let (host, options, password) = match self.naming {
            Naming::Sni => (sni_host(&self.endpoint), None, self.password.clone()),
            Naming::Options => (
                "127.0.0.1".to_string(),
                Some(format!("endpoint={}", self.endpoint)),
                self.password.clone(),
            ),
            Naming::SniAndOptions => (
                sni_host(&self.endpoint),
                Some(format!("endpoint={}", self.endpoint)),
                self.password.clone(),
            ),
            Naming::Password => (
                "127.0.0.1".to_string(),
                None,
                format!("endpoint={};{}", self.endpoint, self.password),
            ),
            Naming::Nothing => ("127.0.0.1".to_string(), None, self.password.clone()),
            Naming::Disagreeing => (
                sni_host(&self.endpoint),
                Some(format!("endpoint={}", self.other_endpoint)),
                self.password.clone(),
            ),
        };
        Target {
            user: self.role.name.clone(),
            password,
            host,
            port: Some(port),
            database: "omendb".into(),
            options,
            params: vec![("sslmode".into(), "require".into())],
        }
    }

    /// A loopback source address of this attempt's own.
    fn source(&self) -> Ipv4Addr {
        let n = self.n as u32 + 1;
        Ipv4Addr::new(127, 1, (n >> 8) as u8, (n & 0xff) as u8)
    }
}

/// What one attempt found: the project its session read, or the SQLSTATE it was refused with.
async fn run(attempt: &Attempt, proxy: SocketAddr) -> Result<String, String> {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from((attempt.source(), 0)))
        .expect("bind a loopback source address");
    let tcp = socket.connect(proxy).await.expect("connect to the proxy");
    let target = attempt.target(proxy.port());
    let mut connection = match omendb_sql_lambda::connect_over(tcp, &target).await {
        Ok(connection) => connection,
        Err(answer) => {
            return Err(answer.body["code"]
                .as_str()
                .unwrap_or("no code")
                .to_string())
        }
    };
    let result = connection
        .query("SELECT project FROM marker", &[], 1 << 20)
        .await
        .unwrap_or_else(|e| panic!("attempt {}: the marker query failed: {e}", attempt.n));
    connection.close().await;
    Ok(result.rows[0][0].clone().expect("a marker"))
}

#[test]
fn randomized_routing_never_reaches_another_projects_compute() {
    let dir = std::env::temp_dir().join(format!("omendb-isolation-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create test dir");
    let port = free_addr().port();
    let cluster = Launcher::start(&dir, port);

    // Project L (the local one), B (with a second branch) and C (with a second role).
    let local = cli_json(&dir, &["project", "list"])["projects"][0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let mut endpoints = Vec::new();
    let mut roles = Vec::new();
    let mut urls = vec![(local.clone(), cluster.url.clone())];
    for name in ["b", "c"] {
        let created = cli_json(&dir, &["project", "create", "--name", name]);
        let project = created["project"]["id"].as_str().expect("id").to_string();
        urls.push((
            project,
            created["connection_uri"].as_str().expect("uri").to_string(),
        ));
    }
    for (project, url) in &urls {
        psql(url, "CREATE TABLE marker (project text PRIMARY KEY)");
        psql(url, &format!("INSERT INTO marker VALUES ('{project}')"));
        let (password, endpoint) = (password_of(url), endpoint_of(url));
        endpoints.push(Endpoint {
            id: endpoint.into(),
            project: project.clone(),
        });
        roles.push(Role {
            project: project.clone(),
            name: "omendb".into(),
            password: password.into(),
        });
    }
    let project_b = urls[1].0.clone();
    let project_c = urls[2].0.clone();
    let branch = cli_json(&dir, &["branch", "create", "dev", "--project", &project_b]);
    endpoints.push(Endpoint {
        id: branch["endpoint"]["id"].as_str().expect("id").into(),
        project: project_b.clone(),
    });
    let role = cli_json(&dir, &["role", "create", "app", "--project", &project_c]);
    roles.push(Role {
        project: project_c.clone(),
        name: "app".into(),
        password: role["role"]["password"].as_str().expect("password").into(),
    });

    let seed = seed_from_env("OMENDB_TEST_SEED");
    eprintln!("isolation seed: {seed} (OMENDB_TEST_SEED={seed} replays it)");
    let mut rng = Rng(seed);
    let attempts: Vec<Attempt> = (0..ATTEMPTS)
        .map(|n| {
            let unknown = rng.chance(8);
            let (endpoint, project) = if unknown {
                (format!("ep-unknown{:08x}", rng.next_u64() as u32), None)
            } else {
                let e = &endpoints[rng.below(endpoints.len() as u64) as usize];
                (e.id.clone(), Some(e.project.clone()))
            };
            let other = &endpoints[rng.below(endpoints.len() as u64) as usize];
            let mut naming = match rng.below(100) {
                0..=24 => Naming::Sni,
                25..=49 => Naming::Options,
                50..=64 => Naming::SniAndOptions,
                65..=84 => Naming::Password,
                85..=89 => Naming::Nothing,
                _ => Naming::Disagreeing,
            };
            if naming == Naming::Disagreeing && other.id == endpoint {
                naming = Naming::SniAndOptions;
            }
            // Mostly a role of the endpoint's own project; otherwise any project's.
            let own: Vec<&Role> = roles
                .iter()
                .filter(|r| Some(&r.project) == project.as_ref())
                .collect();
            let role = if !own.is_empty() && rng.chance(60) {
                own[rng.below(own.len() as u64) as usize].clone()
            } else {
                roles[rng.below(roles.len() as u64) as usize].clone()
            };
            let password = if rng.chance(15) {
                format!("wrong-{:x}", rng.next_u64())
            } else {
                role.password.clone()
            };
            Attempt {
                n,
                endpoint,
                project,
                naming,
                other_endpoint: other.id.clone(),
                role,
                password,
            }
        })
        .collect();

    let proxy = SocketAddr::from(([127, 0, 0, 1], port));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let outcomes: Vec<Result<String, String>> = runtime.block_on(
        futures::stream::iter(attempts.iter().map(|a| run(a, proxy)))
            .buffered(CONCURRENCY)
            .collect(),
    );
    let (mut opened, mut refused) = (0, 0);
    for (attempt, outcome) in attempts.iter().zip(&outcomes) {
        match (attempt.expected_refusal(), outcome) {
            (None, Ok(marker)) => {
                assert_eq!(
                    Some(marker),
                    attempt.project.as_ref(),
                    "attempt {attempt:?} reached project {marker}'s compute"
                );
                opened += 1;
            }
            (Some(code), Err(got)) => {
                assert_eq!(
                    got, code,
                    "attempt {attempt:?} was refused with the wrong SQLSTATE"
                );
                refused += 1;
            }
            (expected, got) => {
                panic!("attempt {attempt:?}: expected refusal {expected:?}, got {got:?}")
            }
        }
    }
    eprintln!("{opened} sessions opened on their own project's compute, {refused} refused");
    assert_eq!(opened + refused, ATTEMPTS);
    assert!(opened >= ATTEMPTS / 5, "too few sessions opened: {opened}");
    assert!(refused >= ATTEMPTS / 5, "too few refusals: {refused}");
    drop(runtime);
    cluster.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
