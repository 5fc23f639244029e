//! The embedded broker: a `cashflow-broker` child process with durable SQLite storage under
//! `--data-dir`, started, awaited, restarted if it dies, and stopped with the parent.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdin, Command};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const BINARY: &str = "cashflow-broker";
const READY_TIMEOUT: Duration = Duration::from_secs(60);

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
    /// Starts the broker on `listen` (ip:port) with storage in `data_dir/broker`, and waits until
    /// it accepts connections.
    pub async fn start(listen: std::net::SocketAddr, data_dir: &Path) -> Result<Supervisor> {
        let listen = listen.to_string();
        let listen = listen.as_str();
        let binary = binary()?;
        let dir = data_dir.join("broker");
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        if TcpStream::connect(listen).await.is_ok() {
            bail!("{listen} is already in use; is another cashflow or broker running? (kafka.embedded.listen)");
        }
        let mut broker = spawn(&binary, listen, &dir)?;
        wait_ready(&mut broker.child, listen).await?;
        tracing::info!(listen, storage = %dir.display(), "embedded broker ready");
        let stop = CancellationToken::new();
        let task = tokio::spawn(supervise(broker, binary, listen.to_owned(), dir, stop.clone()));
        Ok(Supervisor { stop, task })
    }

    /// Stops the broker: SIGINT (Tansu stops at once; every acknowledged write is already
    /// durable in SQLite), then SIGKILL if it lingers.
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

fn spawn(binary: &Path, listen: &str, dir: &Path) -> Result<Broker> {
    let url = format!("tcp://{listen}");
    let mut child = Command::new(binary)
        .args(["--listener-url", &url, "--advertised-listener-url", &url])
        .args(["--storage-engine", "sqlite://broker.db", "--exit-with-parent"])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let lifeline = child.stdin.take();
    Ok(Broker { child, _lifeline: lifeline })
}

async fn wait_ready(child: &mut Child, listen: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("the embedded broker exited at start ({status}); see its messages above");
        }
        if TcpStream::connect(listen).await.is_ok() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the embedded broker did not listen on {listen} within {READY_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn supervise(mut broker: Broker, binary: PathBuf, listen: String, dir: PathBuf, stop: CancellationToken) {
    loop {
        tokio::select! {
            status = broker.child.wait() => {
                tracing::error!(status = ?status.ok(), "embedded broker died; restarting");
                tokio::time::sleep(Duration::from_secs(1)).await;
                match spawn(&binary, &listen, &dir) {
                    Ok(mut b) => {
                        if let Err(e) = wait_ready(&mut b.child, &listen).await {
                            tracing::error!(error = %e, "embedded broker restart failed");
                        }
                        broker = b;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot restart the embedded broker");
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
