//! Client-side helpers for tests that talk to OmenDB with tokio-postgres: a small runtime,
//! a connect that waits for the server, and the SQLSTATE of an error.

use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

/// How long `connect` keeps retrying a server that is (re)starting.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Connects, retrying for up to [`CONNECT_TIMEOUT`]; panics after that.
pub async fn connect(url: &str) -> Client {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        match try_connect(url).await {
            Ok(client) => return client,
            Err(e) if Instant::now() < deadline => {
                eprintln!("connect {url}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("cannot connect to {url}: {e}"),
        }
    }
}

/// One connection attempt; the connection is driven by a spawned task.
pub async fn try_connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}
