//! `cashflow reconcile|audit|rebuild`: proof, for operators, that the balances equal the entries
//! and that the log and the store agree, and the repair when they do not.

use std::io::IsTerminal as _;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use cashflow_core::BusinessDate;
use cashflow_core::config::{PipelineConfig, Sample};
use cashflow_dataflow::{Reconciliation, Report};
use cashflow_sinks::{DeclaredState, Difference};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::{Common, app};

#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// Only this merchant.
    #[arg(long)]
    merchant: Option<String>,
    /// The first business date (YYYY-MM-DD): only rows whose periods overlap [de, ate].
    #[arg(long, requires = "ate")]
    de: Option<BusinessDate>,
    /// The last business date, included.
    #[arg(long, requires = "de")]
    ate: Option<BusinessDate>,
    /// One JSON document on stdout, for scripts.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// One JSON document on stdout, for scripts.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// The state to rebuild, by its name in pipeline.yaml (default: every declared state).
    #[arg(long)]
    state: Option<String>,
    /// Only this merchant's rows.
    #[arg(long)]
    merchant: Option<String>,
}

/// Recomputes every kept state from the stored entries and prints each difference; fails when
/// there is one.
pub async fn reconcile(args: ReconcileArgs, config: PipelineConfig, common: &Common) -> Result<()> {
    let range = match (args.de, args.ate) {
        (Some(de), Some(ate)) if de > ate => bail!("--de {de} is after --ate {ate}"),
        (Some(de), Some(ate)) => Some((de, ate)),
        _ => None,
    };
    let store = app::connect_store(&config, common).await?;
    let started = Instant::now();
    let mut run = Reconciliation::start(&store, &config, args.merchant.as_deref(), Sample::All).await?;
    let merchants = std::mem::take(&mut run.merchants);
    let kept = run.states.clone();
    let compared: Vec<&DeclaredState> = cashflow_sinks::comparable(&kept, range).collect();
    let bar = progress_bar(merchants.len() as u64, args.json);
    let mut found = Vec::new();
    for m in &merchants {
        bar.set_message(m.clone());
        let differences = run.merchant(m, range).await?;
        for d in &differences {
            bar.suspend(|| {
                if !args.json {
                    println!("{}", describe(&compared, d))
                }
            });
        }
        found.extend(differences);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let (states, not_kept) = (names(&config, compared.iter().copied()), run.not_kept.clone());
    run.finish().await?;
    let took_ms = started.elapsed().as_millis() as u64;
    if args.json {
        let differences: Vec<Value> = found.iter().map(|d| difference_json(&compared, d)).collect();
        let range = range.map(|(de, ate)| json!({ "de": de, "ate": ate }));
        let doc = json!({ "merchants": merchants.len(), "states": states, "not_kept": not_kept, "range": range,
                          "differences": differences, "took_ms": took_ms });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        for table in &not_kept {
            println!("not compared: {table} is declared but not built yet (a consolidator builds it at its start)");
        }
        println!(
            "reconciled {} merchant(s) over {} state(s) [{}] in {took_ms} ms: {} difference(s)",
            merchants.len(),
            states.len(),
            states.join(", "),
            found.len()
        );
    }
    if !found.is_empty() {
        bail!("{} state row(s) differ from their entries; `cashflow rebuild` repairs them", found.len());
    }
    Ok(())
}

/// Accounts for every record of the consolidation sources below the store's progress; fails
/// when one is unaccounted for.
pub async fn audit(args: AuditArgs, config: PipelineConfig, common: &Common) -> Result<()> {
    let store = app::connect_store(&config, common).await?;
    let started = Instant::now();
    let bar = progress_bar(0, args.json);
    bar.set_message("reading the log and the store");
    let report = cashflow_dataflow::audit(&config, &store).await.with_context(|| match config.kafka.is_embedded() {
        true => "cannot audit: the embedded broker runs with `cashflow up` (or `cashflow run broker`); start it first"
            .to_owned(),
        false => format!("cannot audit against the brokers {}", config.kafka.bootstrap()),
    })?;
    bar.finish_and_clear();
    let took_ms = started.elapsed().as_millis() as u64;
    if args.json {
        let doc = json!({ "report": &report, "clean": report.is_clean(), "took_ms": took_ms });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print_report(&report, took_ms);
    }
    if !report.is_clean() {
        bail!("the log and the store disagree: {} record(s) unaccounted for", report.unaccounted.len());
    }
    Ok(())
}

/// Rebuilds the chosen states from the stored entries, each in one transaction.
pub async fn rebuild(args: RebuildArgs, config: PipelineConfig, common: &Common) -> Result<()> {
    let declared = cashflow_dataflow::declared_named(&config);
    let chosen: Vec<&(&str, DeclaredState)> =
        declared.iter().filter(|(name, _)| args.state.as_deref().is_none_or(|s| s == *name)).collect();
    if let (Some(s), true) = (&args.state, chosen.is_empty()) {
        let known: Vec<&str> = declared.iter().map(|(n, _)| *n).collect();
        bail!("no state {s:?} is aggregated in pipeline.yaml (states: {})", known.join(", "));
    }
    let store = app::connect_store(&config, common).await?;
    for (name, state) in chosen {
        let started = Instant::now();
        let bar = progress_bar(0, false);
        bar.set_message(format!("rebuilding {name} ({})", state.table));
        let entries = cashflow_dataflow::rebuild(&store, state, args.merchant.as_deref()).await?;
        bar.finish_and_clear();
        let whose = args.merchant.as_deref().map(|m| format!(" of merchant {m}")).unwrap_or_default();
        let took_ms = started.elapsed().as_millis();
        println!("rebuilt {name} ({}){whose} from {entries} stored entries in {took_ms} ms", state.table);
    }
    Ok(())
}

/// A bar on a terminal's stderr: merchants done of `len`, or a spinner when `len` is 0.
fn progress_bar(len: u64, hidden: bool) -> ProgressBar {
    if hidden || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let (bar, template) = match len {
        0 => (ProgressBar::new_spinner(), "{spinner} [{elapsed_precise}] {msg}"),
        n => (ProgressBar::new(n), "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} merchants {msg}"),
    };
    bar.set_style(ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()));
    bar.enable_steady_tick(std::time::Duration::from_millis(100));
    bar
}

/// The names `pipeline.yaml` gives `states`.
fn names<'a>(config: &PipelineConfig, states: impl Iterator<Item = &'a DeclaredState>) -> Vec<String> {
    let declared = cashflow_dataflow::declared_named(config);
    let name =
        |s: &DeclaredState| declared.iter().find(|(_, d)| d == s).map_or(s.table.clone(), |(n, _)| (*n).to_owned());
    states.map(name).collect()
}

/// The key of `d` as `field=value` pairs, after the merchant.
fn key_pairs(states: &[&DeclaredState], d: &Difference) -> Vec<(String, String)> {
    let state = states.iter().find(|s| s.table == d.table);
    let fields = state.map(|s| s.key.fields()[1..].iter().map(|f| f.as_str().to_owned()).collect::<Vec<_>>());
    let fields = fields.unwrap_or_default();
    fields.into_iter().zip(d.key.iter().cloned()).collect()
}

fn describe(states: &[&DeclaredState], d: &Difference) -> String {
    let key: String = key_pairs(states, d).into_iter().map(|(f, v)| format!(" {f}={v}")).collect();
    let totals = |t: &Option<cashflow_core::DayTotals>| match t {
        None => "no row".to_owned(),
        Some(t) => format!("creditos={} debitos={} lancamentos={}", t.creditos_cents, t.debitos_cents, t.quantidade),
    };
    format!(
        "{} merchant_id={}{key}: stored {} | recomputed {}",
        d.table,
        d.merchant,
        totals(&d.stored),
        totals(&d.recomputed)
    )
}

fn difference_json(states: &[&DeclaredState], d: &Difference) -> Value {
    let key: serde_json::Map<String, Value> = key_pairs(states, d).into_iter().map(|(f, v)| (f, v.into())).collect();
    json!({ "table": d.table, "merchant_id": d.merchant, "key": key, "stored": d.stored, "recomputed": d.recomputed })
}

fn print_report(r: &Report, took_ms: u64) {
    for p in &r.partitions {
        let mut line = format!(
            "{}/{}: offsets {}..{} audited (the log holds {}..{}, the store's progress is {})",
            p.topic, p.partition, p.from, p.to, p.log_start, p.log_end, p.progress
        );
        if p.log_start > 0 {
            line.push_str(&format!("; the log starts at {}: records before it are gone and not audited", p.log_start));
        }
        if p.progress > p.log_end {
            line.push_str(&format!(
                "; the store counted {} record(s) beyond the end of the log",
                p.progress - p.log_end
            ));
        }
        println!("{line}");
    }
    println!(
        "{} stored, {} duplicate(s) of a stored id, {} retried then consolidated, {} held for retry, {} parked",
        r.stored, r.duplicates, r.consolidated_later, r.held, r.parked
    );
    if r.filtered > 0 {
        println!("{} dropped by the SmartModules (run again, they drop them again)", r.filtered);
    }
    for u in &r.unaccounted {
        println!(
            "unaccounted: {}/{}@{} merchant {} id {}",
            u.topic,
            u.partition,
            u.offset,
            u.merchant.as_deref().unwrap_or("-"),
            u.id.as_deref().unwrap_or("-")
        );
    }
    println!("audited in {took_ms} ms: {} record(s) unaccounted for", r.unaccounted.len());
}
