//! `cashflow`: the whole pipeline in one process (`up`), or one stage (`run <stage>`).

mod access;
mod app;
mod broker;
mod dlq;
mod loadgen;
mod ops;
mod smartmodule;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use cashflow_core::config::PipelineConfig;
use clap::{Args, Parser, Subcommand, ValueEnum};

/// jemalloc returns freed memory to the system, where glibc's arenas hold on to it.
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Merchant cash-flow entries in, daily consolidated balances out.
#[derive(Debug, Parser)]
#[command(name = "cashflow", version)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Args)]
pub struct Common {
    /// The pipeline file.
    #[arg(long, global = true, env = "CASHFLOW_CONFIG", default_value = "pipeline.yaml")]
    pub config: PathBuf,
    /// Where the embedded broker, the SQLite store and the signing keys live.
    #[arg(long, global = true, env = "CASHFLOW_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// This process's address, overriding its stage's `listen` (`kafka.embedded.listen` for `run broker`).
    #[arg(long, global = true, env = "CASHFLOW_LISTEN")]
    pub listen: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole pipeline in one process: broker (if embedded), gateway, ingest, consolidation,
    /// retries.
    Up,
    /// Run one stage against the configured broker and store.
    Run {
        #[arg(value_enum)]
        stage: Stage,
    },
    /// Check a pipeline file and print every problem with its YAML path.
    Validate {
        /// The file to check (default: --config).
        file: Option<PathBuf>,
    },
    /// Merchant users (password grant).
    Users {
        #[command(subcommand)]
        command: access::UsersCommand,
    },
    /// Service clients (client_credentials grant).
    Clients {
        #[command(subcommand)]
        command: access::ClientsCommand,
    },
    /// Token signing keys: rotate, list.
    Keys {
        #[command(subcommand)]
        command: access::KeysCommand,
    },
    /// Load a running gateway on this machine like clients do, and report throughput and latency.
    Loadgen(loadgen::LoadgenArgs),
    /// Records parked in the dead-letter topic: list, replay, purge.
    Dlq {
        #[command(subcommand)]
        command: dlq::DlqCommand,
    },
    /// Recompute every kept state from the stored entries and print each row that differs;
    /// exits 1 when one does. Reads one snapshot of the store: safe while consolidation runs.
    Reconcile(ops::ReconcileArgs),
    /// Account for every record of the consolidation sources below the store's progress
    /// (stored, duplicate, retried, parked); exits 1 naming each offset that is not.
    Audit(ops::AuditArgs),
    /// Rebuild states from the stored entries, each in one transaction: readers see the old rows
    /// until it commits. Consolidation waits while it runs; ingest goes on.
    Rebuild(ops::RebuildArgs),
    /// SmartModules, for their authors: run one over entries.
    Smartmodule {
        #[command(subcommand)]
        command: smartmodule::SmartmoduleCommand,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Stage {
    /// The embedded Kafka-protocol broker alone.
    Broker,
    /// The HTTP API. With services.gateway.upstreams it checks tokens and limits and forwards to
    /// the auth, ingest and query stages; without, it serves every API itself.
    Gateway,
    /// The auth API alone: tokens and the JWKS (distributed shape).
    Auth,
    /// The ingest API alone: entries to the broker (distributed shape).
    Ingest,
    /// The balance queries and operators' routes alone (distributed shape).
    Query,
    /// The consolidator: Kafka → differential dataflow → store.
    Consolidate,
    /// The retry stage: failed records back to consolidation after their backoff, or parked.
    Retry,
}

impl Stage {
    /// The stage's name, as on the command line and in metrics.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Broker => "broker",
            Stage::Gateway => "gateway",
            Stage::Auth => "auth",
            Stage::Ingest => "ingest",
            Stage::Query => "query",
            Stage::Consolidate => "consolidate",
            Stage::Retry => "retry",
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cashflow_observability::init_tracing();
    cashflow_http::serve::raise_open_file_limit();
    let cli = match cli.command {
        Command::Validate { file } => return validate(file.as_ref().unwrap_or(&cli.common.config)),
        Command::Smartmodule { command } => return smartmodule::run(command),
        command => Cli { command, ..cli },
    };
    // The load generator runs on one thread: at thousands of requests a second, waking tasks
    // across worker threads cost it more CPU (kernel task switches) than the requests, on the
    // cores it shares with the system it measures.
    let mut builder = match cli.command {
        Command::Loadgen(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        private_files(&cli.common.data_dir);
        let config = load(&cli.common)?;
        match cli.command {
            Command::Up => app::up(config, &cli.common).await,
            Command::Run { stage } => app::run(stage, config, &cli.common).await,
            Command::Users { command } => access::users(command, config, &cli.common).await,
            Command::Clients { command } => access::clients(command, config, &cli.common).await,
            Command::Keys { command } => access::keys(command, &config, &cli.common),
            Command::Dlq { command } => dlq::run(command, config, &cli.common).await,
            Command::Loadgen(args) => loadgen::run(args, config, &cli.common).await,
            Command::Reconcile(args) => ops::reconcile(args, config, &cli.common).await,
            Command::Audit(args) => ops::audit(args, config, &cli.common).await,
            Command::Rebuild(args) => ops::rebuild(args, config, &cli.common).await,
            Command::Validate { .. } | Command::Smartmodule { .. } => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Everything this process creates is its user's alone (umask 077: directories 0700, files 0600,
/// the embedded broker's too, which inherits it): the store holds every entry and the password
/// hashes. What is already in the data dir and open to others is named in a warning.
fn private_files(data_dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt as _;
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let mut open_to_others = Vec::new();
    let mut dirs = vec![data_dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.permissions().mode() & 0o077 != 0 {
                open_to_others.push(format!("{} ({:o})", entry.path().display(), meta.permissions().mode() & 0o777));
            }
            if meta.is_dir() {
                dirs.push(entry.path());
            }
        }
    }
    if let Ok(meta) = std::fs::metadata(data_dir)
        && meta.permissions().mode() & 0o077 != 0
    {
        open_to_others.insert(0, format!("{} ({:o})", data_dir.display(), meta.permissions().mode() & 0o777));
    }
    if !open_to_others.is_empty() {
        tracing::warn!(
            files = %open_to_others.join(", "),
            "files in the data dir are open to other users (chmod -R go-rwx the data dir): the store holds every entry and the password hashes"
        );
    }
}

fn load(common: &Common) -> Result<PipelineConfig> {
    PipelineConfig::load(&common.config).map_err(|e| anyhow::anyhow!("{e}"))
}

fn validate(file: &std::path::Path) -> ExitCode {
    // Every SmartModule is read, compiled and started too.
    let loaded = PipelineConfig::load(file).and_then(|c| match cashflow_dataflow::smartmodule::load_all(&c) {
        Ok(_) => Ok(c),
        Err(problems) => Err(cashflow_core::config::ConfigError { file: file.display().to_string(), problems }),
    });
    match loaded {
        Ok(c) => {
            println!(
                "{}: ok ({} topics, {} smartmodule(s), broker {}, store {})",
                file.display(),
                c.topics.len(),
                c.smartmodules().len(),
                c.kafka.brokers,
                c.store.url.scheme()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            for p in &e.problems {
                eprintln!("{}: {p}", e.file);
            }
            eprintln!("{} problem(s) found", e.problems.len());
            ExitCode::FAILURE
        }
    }
}
