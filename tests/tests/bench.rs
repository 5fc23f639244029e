//! The benchmark's quick mode, so it keeps running: every figure is produced and the run's own
//! correctness check (the consolidated balances equal the data set) passes. No timing is asserted.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use cashflow_tests::binary;
use serde_json::Value;

#[test]
fn the_benchmark_runs_in_quick_mode_and_reports_every_figure() {
    let out = std::process::Command::new(binary("cashflow-bench")).args(["--quick", "--json"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cashflow-bench --quick failed:\n{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    println!("{report:#}");
    let figures = report["figures"].as_object().unwrap();
    for name in [
        "dataflow core entries/s (1 worker)",
        "state bytes per (merchant, day)",
        "raw producer records/s",
        "raw consume records/s",
        "consolidation entries/s",
        "naive per-entry consumer entries/s",
        "raw COPY rows/s",
        "raw consume + COPY at once rows/s",
        "raw COPY of every row consolidation writes entries/s",
        "batch ingest entries/s",
        "single POST at 2k/s p99",
        "31-day balance query at 5k/s p99",
        "31-day balance query at 5k/s: answered from memory",
        "31-day balance query at 5k/s, store only p99",
        "freshness at 1k/s p99 (POST to visible)",
        "consolidation: consolidator RSS after the load",
        "consolidation: CPU per item, PostgreSQL",
        "consolidation, lanes: 1 entries/s",
        "consolidation, lanes: 2 entries/s",
        "consolidation, lanes: 4 entries/s",
        "consolidation, 1 consolidators entries/s",
        "consolidation, 2 consolidators entries/s",
        "consolidation, 3 consolidators entries/s",
        "consolidation, 3 consolidators: CPU per entry, every consolidator",
        "embedded: raw consume records/s",
        "embedded: consolidation entries/s",
        "embedded: consolidation: CPU per item, consolidator",
        "consolidation: epoch step dedupe, time per entry",
        "consolidation: epoch step states, time per entry",
        "consolidation: epoch step commit, time per entry",
        "embedded: epoch step dedupe, time per entry",
        "embedded: epoch step states, time per entry",
        "embedded: epoch step commit, time per entry",
        "raw producer at 2k/s p99 (ack latency)",
        "consolidation: CPU per item, broker",
        "consolidation: CPU per item, consolidator",
        "raw producer at 2k/s: CPU per item, broker",
        "SmartModule sem-teste: time per entry",
        "SmartModule categorias: time per entry",
        "SmartModule taxa-cartao: time per entry",
        "SmartModule taxa-cartao: the same rule in plain Rust, per entry",
        "consolidation with the three SmartModules entries/s",
    ] {
        let v = figures.get(name).unwrap_or_else(|| panic!("{name} missing: {report}"))["value"].as_f64().unwrap();
        assert!(v.is_finite() && v > 0.0, "{name} = {v}");
    }
    for name in [
        "batch ingest errors",
        "single POST at 2k/s errors",
        "31-day balance query at 5k/s errors",
        "31-day balance query at 5k/s, store only errors",
        "freshness failures (non-202, stale or error)",
    ] {
        let why: Vec<&str> =
            stderr.lines().filter(|l| l.contains("errors by status") || l.contains("refused")).collect();
        assert_eq!(figures[name]["value"].as_f64(), Some(0.0), "{name}: {why:?}\n{report}");
    }
    // A member may read nothing (in quick mode the first can finish before the third joins), but
    // the members' shares add up to every record read, and none is read twice by more than a
    // rebalance's handover.
    let value = |name: String| {
        figures.get(&name).unwrap_or_else(|| panic!("{name} missing: {report}"))["value"].as_f64().unwrap()
    };
    for n in 1..=3 {
        let shares: f64 = (1..=n)
            .map(|i| value(format!("consolidation, {n} consolidators: member {i} share of the records read")))
            .sum();
        assert!((shares - 100.0).abs() < 0.01, "{n} consolidators: shares add up to {shares} %");
        let beyond = value(format!("consolidation, {n} consolidators: records read beyond the entries"));
        assert!(beyond >= 0.0, "{n} consolidators: {beyond} records read beyond the entries");
    }
    // Every credit a card sale: the split gives more entries than it takes (and the module and
    // the plain rule agree, or the run fails).
    let split = figures["SmartModule taxa-cartao: entries out per entry in"]["value"].as_f64().unwrap();
    assert!(split > 1.0 && split < 2.0, "taxa-cartao: {split} entries out per entry in");
    assert_eq!(report["ratios"].as_object().unwrap().len(), 13);
}
