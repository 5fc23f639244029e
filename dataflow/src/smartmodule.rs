//! Users' own transforms: Fluvio SmartModules (WebAssembly, built with `fluvio-smartmodule`),
//! declared as `smartmodule` operators in `pipeline.yaml` and run by `fluvio-smartengine`
//! (wasmtime) on each entry between `dedupe` and `aggregate`.
//!
//! A module sees an entry as its wire JSON (`v: 1`) and gives back entries in the same form. What
//! it gives back is checked as if it came from the topic (a valid entry, inside the date window)
//! and must stay the entry's: the same merchant, the same id for `filter`, `map` and
//! `filter-map`, and for `array-map` the source's id on each output, which the pipeline replaces
//! with ids derived from it ([`EntryId::derived`]). Anything else fails that entry alone, with
//! `smartmodule_output`; a module that traps, runs out of fuel or memory, or returns an error
//! fails it with `smartmodule_error`. The stream goes on either way.
//!
//! Modules must be pure. The store's dedupe judges a module's output: a redelivered entry runs
//! the module again, and an output other than the one counted is a conflicting duplicate, parked.

use std::path::Path;
use std::time::Instant;

use cashflow_core::config::{DateWindow, PipelineConfig, Problem, SmartModuleConfig, SmartModuleKind};
use cashflow_core::failure::Code;
use cashflow_core::{BusinessDate, EntryId, Lancamento};
use fluvio_smartengine::{
    DEFAULT_SMARTENGINE_VERSION, SmartEngine, SmartModuleChainBuilder, SmartModuleChainInstance,
    SmartModuleConfig as EngineConfig,
};
use fluvio_smartmodule::Record;
use fluvio_smartmodule::dataplane::smartmodule::SmartModuleInput;
use prometheus::{Counter, IntCounter};

/// One loaded module, ready to run entries.
pub struct SmartModule {
    pub name: String,
    pub kind: SmartModuleKind,
    chain: SmartModuleChainInstance,
    window: DateWindow,
    /// What it was made from, to make it again: after a failure (a trap can leave its allocator
    /// or stack in any state, and a module out of memory stays out of it), and before its memory
    /// fills up. Memory only grows, and each call leaves its output buffer behind (the guest
    /// forgets it and the engine never frees it: about 400 bytes an entry), so a module kept
    /// running would fail an entry every few tens of thousands.
    config: SmartModuleConfig,
    bytes: Vec<u8>,
    counters: Counters,
}

/// The module's own series, looked up once: `apply` runs for every entry.
struct Counters {
    records_in: IntCounter,
    records_out: IntCounter,
    seconds: Counter,
    fuel: IntCounter,
    restarts_failed: IntCounter,
    restarts_memory: IntCounter,
}

impl Counters {
    fn of(name: &str) -> Self {
        let m = cashflow_observability::metrics();
        Counters {
            records_in: m.smartmodule_records_in.with_label_values(&[name]),
            records_out: m.smartmodule_records_out.with_label_values(&[name]),
            seconds: m.smartmodule_seconds.with_label_values(&[name]),
            fuel: m.smartmodule_fuel.with_label_values(&[name]),
            restarts_failed: m.smartmodule_restarts.with_label_values(&[name, "failed"]),
            restarts_memory: m.smartmodule_restarts.with_label_values(&[name, "memory"]),
        }
    }
}

/// Why an entry did not come out of a module: its code and what happened.
#[derive(Debug, PartialEq, Eq)]
pub struct Failed {
    pub code: Code,
    pub detail: String,
}

impl Failed {
    fn new(code: Code, detail: impl Into<String>) -> Self {
        Failed { code, detail: detail.into() }
    }
}

/// The export each kind runs, as `fluvio-smartmodule`'s macro names it.
fn export(kind: SmartModuleKind) -> &'static str {
    match kind {
        SmartModuleKind::Filter => "filter",
        SmartModuleKind::Map => "map",
        SmartModuleKind::FilterMap => "filter_map",
        SmartModuleKind::ArrayMap => "array_map",
    }
}

impl SmartModule {
    /// Reads, compiles and instantiates the module `config` declares (its `init` runs with its
    /// `params`), `path` resolved. The error says what is wrong, for the operator's YAML path.
    pub fn load(config: &SmartModuleConfig, path: &Path, window: DateWindow) -> Result<Self, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let wanted = export(config.kind);
        let module = wasmtime::Module::new(&wasmtime::Engine::default(), &bytes)
            .map_err(|e| format!("{} is not a WebAssembly module: {e}", path.display()))?;
        let exports: Vec<&str> = module.exports().map(|e| e.name()).collect();
        if !exports.contains(&wanted) {
            return Err(format!(
                "{} has no `{wanted}` export, so it is not a {} SmartModule (it exports: {})",
                path.display(),
                config.kind.as_str(),
                exports.join(", ")
            ));
        }
        let chain = instantiate(config, &bytes).map_err(|e| format!("{} did not start: {e}", path.display()))?;
        Ok(SmartModule {
            name: config.name.clone(),
            kind: config.kind,
            chain,
            window,
            config: config.clone(),
            bytes,
            counters: Counters::of(&config.name),
        })
    }

    /// Runs `entry` through the module: what comes out (none for a dropped entry), checked.
    pub fn apply(&mut self, entry: &Lancamento) -> Result<Vec<Lancamento>, Failed> {
        self.counters.records_in.inc();
        let started = Instant::now();
        let out = self.run(entry);
        self.counters.seconds.inc_by(started.elapsed().as_secs_f64());
        match &out {
            Ok(entries) => self.counters.records_out.inc_by(entries.len() as u64),
            Err(f) => {
                let failed = &cashflow_observability::metrics().smartmodule_records_failed;
                failed.with_label_values(&[self.name.as_str(), f.code.as_str()]).inc();
            }
        }
        out
    }

    /// Adds the fuel spent since the last call to the module's metric (the engine keeps the sum,
    /// and its export allocates: called once per epoch, not per entry).
    pub fn export_fuel(&mut self) {
        let used: u64 = self.chain.metrics_export().values().map(|m| m.fuel_used()).sum();
        self.counters.fuel.inc_by(used);
    }

    fn run(&mut self, entry: &Lancamento) -> Result<Vec<Lancamento>, Failed> {
        let record = Record::new_key_value(entry.merchant_id.as_str().as_bytes().to_vec(), entry.encode());
        let input = SmartModuleInput::try_from_records(vec![record], DEFAULT_SMARTENGINE_VERSION)
            .map_err(|e| Failed::new(Code::SmartmoduleError, format!("cannot encode the entry for the module: {e}")))?;
        let output = match self.chain.process(input) {
            Ok(output) => output,
            Err(e) => {
                let why = match e.downcast_ref::<wasmtime::Trap>() {
                    Some(wasmtime::Trap::OutOfFuel) => "ran out of fuel".to_owned(),
                    Some(trap) => format!("trapped: {trap}"),
                    None => format!("failed: {e:#}"),
                };
                self.counters.restarts_failed.inc();
                self.restart();
                return Err(Failed::new(Code::SmartmoduleError, format!("smartmodule {} {why}", self.name)));
            }
        };
        // A quarter of its memory kept free for the next call's own needs.
        if self.chain.memory_bytes() > self.config.max_memory_bytes / 4 * 3 {
            self.counters.restarts_memory.inc();
            self.restart();
        }
        if let Some(error) = output.error {
            let detail = format!("smartmodule {} returned an error: {}", self.name, error.hint);
            return Err(Failed::new(Code::SmartmoduleError, detail));
        }
        let produced = output.successes.len();
        let allowed = match self.kind {
            SmartModuleKind::Filter | SmartModuleKind::FilterMap => produced <= 1,
            SmartModuleKind::Map => produced == 1,
            SmartModuleKind::ArrayMap => true,
        };
        if !allowed {
            let kind = self.kind.as_str();
            return Err(self.bad_output(format!("a {kind} gave {produced} entries for one")));
        }
        let mut out = Vec::with_capacity(produced);
        for (n, record) in output.successes.iter().enumerate() {
            let mut made = Lancamento::decode(record.value.as_ref())
                .map_err(|e| self.bad_output(format!("output {n} is not a valid entry: {e}")))?;
            if made.merchant_id != entry.merchant_id {
                let detail = format!("output {n} moves the entry to merchant {}", made.merchant_id);
                return Err(self.bad_output(detail));
            }
            if made.id != entry.id {
                return Err(self.bad_output(format!("output {n} has id {}, not the entry's {}", made.id, entry.id)));
            }
            if let Ok(accepted) = BusinessDate::new(made.criado_em.date_naive())
                && let Some(why) = self.window.reject(made.data, accepted)
            {
                return Err(self.bad_output(format!("output {n} has data {}: {why}", made.data)));
            }
            if n > 0 {
                made.id = EntryId::derived(entry.id, n);
            }
            out.push(made);
        }
        Ok(out)
    }

    /// A fresh instance in place of this one. It started once with this configuration and these
    /// bytes, so it starts again; if it somehow does not, the old one stays, and fails or not on
    /// its own.
    fn restart(&mut self) {
        match instantiate(&self.config, &self.bytes) {
            Ok(chain) => self.chain = chain,
            Err(e) => tracing::error!(smartmodule = %self.name, error = %e, "cannot start the module again"),
        }
    }

    fn bad_output(&self, why: String) -> Failed {
        Failed::new(Code::SmartmoduleOutput, format!("smartmodule {}: {why}", self.name))
    }
}

/// A fresh instance of the module: compiled, with its limits, its `init` run with its params.
fn instantiate(config: &SmartModuleConfig, bytes: &[u8]) -> Result<SmartModuleChainInstance, String> {
    let mut engine_config = EngineConfig::builder();
    engine_config.smartmodule_names(vec![config.name.clone()]);
    for (key, value) in &config.params {
        engine_config.param(key.clone(), value.clone());
    }
    let engine_config = engine_config.build().map_err(|e| format!("SmartModule configuration: {e}"))?;
    let mut chain = SmartModuleChainBuilder::default();
    chain.set_store_memory_limit(config.max_memory_bytes);
    chain.set_fuel_limit(config.fuel);
    chain.add_smart_module(engine_config, bytes.to_vec());
    chain.initialize(&SmartEngine::new()).map_err(|e| format!("{e:#}"))
}

/// Every module `config` declares, loaded in order; or each one's problem at its YAML path.
pub fn load_all(config: &PipelineConfig) -> Result<Vec<SmartModule>, Vec<Problem>> {
    let window = config.services.consolidate.date_window();
    let (mut modules, mut problems) = (Vec::new(), Vec::new());
    for (at, m) in config.smartmodules() {
        match SmartModule::load(m, &config.resolve(&m.path), window) {
            Ok(module) => modules.push(module),
            Err(message) => problems.push(Problem { path: format!("{at}.path"), message }),
        }
    }
    if problems.is_empty() { Ok(modules) } else { Err(problems) }
}

/// `entry` through every module in turn: what the last one gives.
pub fn apply_all(modules: &mut [SmartModule], entry: Lancamento) -> Result<Vec<Lancamento>, Failed> {
    let mut entries = vec![entry];
    for module in modules {
        let mut next = Vec::with_capacity(entries.len());
        for e in &entries {
            next.extend(module.apply(e)?);
        }
        entries = next;
    }
    Ok(entries)
}

#[cfg(test)]
mod tests;
