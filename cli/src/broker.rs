//! The bundled broker: a `cashflow-broker` child process, started, awaited, restarted if it dies,
//! and stopped with the parent. Its log is kept in SQLite under `--data-dir`, or in a PostgreSQL
//! database that several brokers share (`kafka.embedded.storage`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cashflow_core::config::{BrokerStorage, Secret};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdin, Command};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const BINARY: &str = "cashflow-broker";
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Tansu 0.6.0's PostgreSQL schema, as its repository ships it (`etc/initdb.d/010-schema.sql` at
/// tag v0.6.0; the crate does not carry it, and `scripts/check-vendor` checks it).
const POSTGRES_SCHEMA: &str = include_str!("../../broker/vendor/tansu-pg/010-schema.sql");

/// Where the broker binary is: `CASHFLOW_BROKER_BIN`, else beside this executable.
fn binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("CASHFLOW_BROKER_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("cannot locate the cashflow executable")?;
    let beside = exe.with_file_name(BINARY);
    if beside.exists() {
        return Ok(beside);
    }
    bail!(
        "the embedded broker `{BINARY}` was not found at {}; build it with `cargo build --release` \
         (it is a default workspace member) or set CASHFLOW_BROKER_BIN",
        beside.display()
    )
}

/// A running, supervised broker.
pub struct Supervisor {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Supervisor {
    /// Starts the broker on `listen`, named to clients as `advertise`, with its log in `storage`
    /// (SQLite in `data_dir/broker`), and waits until it accepts connections.
    pub async fn start(
        listen: SocketAddr,
        advertise: &str,
        storage: &BrokerStorage,
        data_dir: &Path,
    ) -> Result<Supervisor> {
        let dir = data_dir.join("broker");
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        if TcpStream::connect(listen).await.is_ok() {
            bail!(
                "{listen} is already in use; is another cashflow or broker running? (kafka.embedded.listen, --listen)"
            );
        }
        let storage_url = match storage {
            BrokerStorage::Sqlite => Secret::new("sqlite://broker.db".to_owned()),
            BrokerStorage::Postgres(url) => {
                prepare_postgres(url).await?;
                url.clone()
            }
        };
        let spec = Spec { binary: binary()?, listen, advertise: advertise.to_owned(), storage: storage_url, dir };
        let mut broker = spec.spawn()?;
        wait_ready(&mut broker.child, listen).await?;
        tracing::info!(%listen, advertise, %storage, "broker ready");
        let stop = CancellationToken::new();
        let task = tokio::spawn(supervise(broker, spec, stop.clone()));
        Ok(Supervisor { stop, task })
    }

    /// Stops the broker: SIGINT (Tansu stops at once; every acknowledged write is already
    /// durable in its storage), then SIGKILL if it lingers.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// A broker process and the write end of its stdin: the child exits when this closes, which also
/// happens when this process dies, however it dies. (`Child::wait` would close a stdin it owned.)
struct Broker {
    child: Child,
    _lifeline: Option<ChildStdin>,
}

/// How to start the broker, again after it dies.
struct Spec {
    binary: PathBuf,
    listen: SocketAddr,
    advertise: String,
    /// Passed in the environment, not the arguments, which any user can read.
    storage: Secret<String>,
    dir: PathBuf,
}

impl Spec {
    fn spawn(&self) -> Result<Broker> {
        let mut child = Command::new(&self.binary)
            .args(["--listener-url", &format!("tcp://{}", self.listen)])
            .args(["--advertised-listener-url", &format!("tcp://{}", self.advertise)])
            .arg("--exit-with-parent")
            .env("CASHFLOW_BROKER_STORAGE_ENGINE", self.storage.expose())
            .current_dir(&self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", self.binary.display()))?;
        let lifeline = child.stdin.take();
        Ok(Broker { child, _lifeline: lifeline })
    }
}

/// Tansu's PostgreSQL engine expects its schema in place (upstream applies it from the database's
/// init scripts). Each broker applies it at start, one at a time under an advisory lock; every
/// statement is `create … if not exists` or `create or replace`, so once applied it changes nothing.
async fn prepare_postgres(url: &Secret<String>) -> Result<()> {
    use sqlx::Connection as _;
    let context = "cannot prepare the broker's PostgreSQL storage (kafka.embedded.storage)";
    let mut db = sqlx::PgConnection::connect(url.expose()).await.context(context)?;
    sqlx::query("select pg_advisory_lock(hashtext('cashflow-broker-schema'))")
        .execute(&mut db)
        .await
        .context(context)?;
    let applied = sqlx::raw_sql(POSTGRES_SCHEMA).execute(&mut db).await;
    let _ = db.close().await; // the lock goes with the session
    applied.context(context)?;
    Ok(())
}

async fn wait_ready(child: &mut Child, listen: SocketAddr) -> Result<()> {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("the broker exited at start ({status}); see its messages above");
        }
        if TcpStream::connect(listen).await.is_ok() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the broker did not listen on {listen} within {READY_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn supervise(mut broker: Broker, spec: Spec, stop: CancellationToken) {
    loop {
        tokio::select! {
            status = broker.child.wait() => {
                tracing::error!(status = ?status.ok(), "broker died; restarting");
                tokio::time::sleep(Duration::from_secs(1)).await;
                match spec.spawn() {
                    Ok(mut b) => {
                        if let Err(e) = wait_ready(&mut b.child, spec.listen).await {
                            tracing::error!(error = %e, "broker restart failed");
                        }
                        broker = b;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot restart the broker");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                            _ = stop.cancelled() => return,
                        }
                    }
                }
            }
            _ = stop.cancelled() => {
                terminate(&mut broker.child).await;
                return;
            }
        }
    }
}

async fn terminate(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGINT);
        if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_ok() {
            return;
        }
    }
    let _ = child.kill().await;
}
