//! Test support: runs the real `cashflow` binary (which runs the real broker) against SQLite or a
//! real PostgreSQL, talks to it over HTTP only, and checks balances against an oracle.
//!
//! Services are never optional: a test that needs PostgreSQL fails, loudly, when
//! `CASHFLOW_TEST_DATABASE_URL` is not set. `scripts/test` starts a throwaway cluster and sets it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod admin;
mod browser;
mod flows;
pub mod grafana;
mod kafka;
mod oracle;
mod pipeline;
mod postgres;
mod store_copy;

pub use admin::{Group, Member, describe_group};
pub use browser::{Browser, artifacts_dir};
pub use flows::{
    MERCHANTS, PASSWORD, assert_matches_oracle, assert_matches_oracle_within, d, login_all, post_all, post_entries,
    post_until_accepted,
};
pub use kafka::Read;
pub use oracle::{Oracle, Posted, random_entries};
pub use pipeline::{Api, Metrics, Pipeline, Role, Store, UNLIMITED};
pub use postgres::{PgCluster, pg_bin};
pub use store_copy::StoreCopy;

use std::path::PathBuf;

/// A path to one of the workspace's binaries, built beside this test (same target profile).
pub fn binary(name: &str) -> PathBuf {
    let env = format!("{}_BIN", name.to_uppercase().replace('-', "_"));
    if let Some(p) = std::env::var_os(&env) {
        return PathBuf::from(p);
    }
    // Beside this executable (a binary in target/<profile>), or one level up (a test in deps/).
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("executable dir");
    let candidates = [dir.join(name), dir.parent().map(|p| p.join(name)).unwrap_or_default()];
    let found = candidates.iter().find(|p| p.exists());
    found.cloned().unwrap_or_else(|| {
        panic!(
            "{name} is missing beside {}: build the binaries first (`cargo build --release --workspace`, which scripts/test does) or set {env}",
            dir.display()
        )
    })
}

/// The children of process `pid`. A child is listed under the thread that spawned it, so every
/// thread is looked at.
pub fn child_pids(pid: u32) -> Vec<i32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten();
    let listed: Vec<String> =
        tasks.filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("children")).ok()).collect();
    listed.iter().flat_map(|l| l.split_whitespace()).filter_map(|p| p.parse().ok()).collect()
}

/// `N` distinct free TCP ports on 127.0.0.1: each is held until all are chosen, so two of one
/// pipeline never get the same port.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: [std::net::TcpListener; N] = std::array::from_fn(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    held.map(|l| l.local_addr().unwrap().port())
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Makes `command`, which ends with `cashflow-broker`'s path, serve 127.0.0.1:`port` from a
/// SQLite log in `dir`, its output discarded; returns the address clients bootstrap from.
pub fn lone_broker(command: &mut std::process::Command, dir: &std::path::Path, port: u16) -> String {
    let url = format!("tcp://127.0.0.1:{port}");
    command
        .args(["--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", "sqlite://broker.db"])
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    format!("127.0.0.1:{port}")
}

/// Waits until `address` takes connections; panics after 60 s.
pub async fn until_listening(address: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::net::TcpStream::connect(address).is_err() {
        assert!(std::time::Instant::now() < deadline, "nothing listened on {address} in 60 s");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The PostgreSQL server the suite uses. Panics when it is not configured: never a silent skip.
pub fn postgres_admin_url() -> String {
    std::env::var("CASHFLOW_TEST_DATABASE_URL").unwrap_or_else(|_| {
        panic!("CASHFLOW_TEST_DATABASE_URL is not set: PostgreSQL tests need a server. Run ./scripts/test, which starts one.")
    })
}

/// A fresh, empty database on the test server; returns its URL.
pub async fn fresh_postgres_database() -> String {
    use sqlx::Connection as _;
    let admin = postgres_admin_url();
    let name = format!("cashflow_test_{}", std::process::id()) + &format!("_{}", rand::random::<u32>());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to PostgreSQL at CASHFLOW_TEST_DATABASE_URL: {e}"));
    sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {name}").as_str()).await.unwrap();
    let (base, _) = admin.rsplit_once('/').expect("database url with a path");
    format!("{base}/{name}")
}
