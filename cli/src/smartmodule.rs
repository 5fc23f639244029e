//! `cashflow smartmodule test`: a SmartModule over entries, as the pipeline would run it, for the
//! module's author. Needs no pipeline file, broker or store.

use std::collections::BTreeMap;
use std::io::{BufRead as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use cashflow_core::Lancamento;
use cashflow_core::config::{DateWindow, SmartModuleConfig, SmartModuleKind};
use cashflow_dataflow::smartmodule::SmartModule;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum SmartmoduleCommand {
    /// Runs a module over entries, one wire-JSON entry (`{"v":1,…}`) per line on stdin, and prints
    /// what comes out, one entry per line; a failed entry goes to stderr with its code. Exits 1
    /// when any entry failed.
    Test {
        /// The `.wasm` file.
        #[arg(long)]
        path: PathBuf,
        /// filter, map, filter-map or array-map.
        #[arg(long, value_parser = kind)]
        kind: SmartModuleKind,
        /// A parameter for the module's init, `name=value`; repeat for more.
        #[arg(long = "param", value_parser = param)]
        params: Vec<(String, String)>,
        /// Fuel each entry may spend.
        #[arg(long, default_value_t = 10_000_000)]
        fuel: u64,
        /// Most memory the module may grow to.
        #[arg(long, default_value_t = 16 << 20)]
        max_memory_bytes: usize,
    },
}

fn kind(s: &str) -> Result<SmartModuleKind, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|_| "must be filter, map, filter-map or array-map".to_owned())
}

fn param(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| "must be name=value".to_owned())
}

pub fn run(command: SmartmoduleCommand) -> ExitCode {
    let SmartmoduleCommand::Test { path, kind, params, fuel, max_memory_bytes } = command;
    let params: BTreeMap<String, String> = params.into_iter().collect();
    let config = SmartModuleConfig { name: "test".into(), path: path.clone(), kind, params, fuel, max_memory_bytes };
    let mut module = match SmartModule::load(&config, &path, DateWindow::default()) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (stdout, stderr) = (std::io::stdout(), std::io::stderr());
    let (mut out, mut err) = (stdout.lock(), stderr.lock());
    let mut failed = 0;
    for (n, line) in std::io::stdin().lock().lines().enumerate() {
        let n = n + 1;
        let line = match line {
            Ok(line) if line.trim().is_empty() => continue,
            Ok(line) => line,
            Err(e) => {
                let _ = writeln!(err, "error: cannot read stdin: {e}");
                return ExitCode::FAILURE;
            }
        };
        let result = Lancamento::decode(line.as_bytes())
            .map_err(|e| format!("not an entry: {e}"))
            .and_then(|entry| module.apply(&entry).map_err(|f| format!("{}: {}", f.code, f.detail)));
        match result {
            Ok(made) => {
                for entry in made {
                    let _ = out.write_all(&entry.encode()).and_then(|()| out.write_all(b"\n"));
                }
            }
            Err(why) => {
                failed += 1;
                let _ = writeln!(err, "line {n}: {why}");
            }
        }
    }
    if failed > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
