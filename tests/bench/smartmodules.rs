//! Phase 4d: what the SmartModules cost. First each example module alone, in this process, over
//! the whole data set, against the same rule written in plain Rust: time per entry, the module's
//! own cost (no broker, no store). Then the topic consolidated again with the three modules
//! declared, into a database of its own, against phase 4 without them.
//!
//! The data set's entries are given what each rule works on: no category for `categorias` (its
//! rule assigns one from `descricao`), the category `cartao` on credits for `taxa-cartao` (each
//! card sale gets a fee). In the pipeline the data set goes as it is (descricao `bench`, its own
//! categories, no card sales), so every entry crosses the three modules and the balances stay
//! the data set's: checked as phase 4 checks them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use cashflow_core::config::{DateWindow, SmartModuleConfig, SmartModuleKind};
use cashflow_dataflow::smartmodule::SmartModule;

use super::*;

/// The three examples: (name, kind, params).
const EXAMPLES: [(&str, SmartModuleKind, &str, &str); 3] = [
    ("sem-teste", SmartModuleKind::Filter, "", ""),
    ("categorias", SmartModuleKind::Map, "regra", "bench=bancada, aluguel=moradia"),
    ("taxa-cartao", SmartModuleKind::ArrayMap, "taxa_bps", "250"),
];

fn wasm(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../smartmodules/{name}/{name}.wasm"))
}

fn config((name, kind, key, value): (&str, SmartModuleKind, &str, &str)) -> SmartModuleConfig {
    let params = if key.is_empty() { BTreeMap::new() } else { BTreeMap::from([(key.to_owned(), value.to_owned())]) };
    SmartModuleConfig {
        name: name.to_owned(),
        path: wasm(name),
        kind,
        params,
        fuel: 10_000_000,
        max_memory_bytes: 16 << 20,
    }
}

/// The pipeline run's name.
pub(crate) const PIPELINE: &str = "consolidation with the three SmartModules";

/// The same rule in plain Rust, its output encoded as the module's is: how many entries come out.
fn plain(name: &str, e: &Lancamento) -> usize {
    match name {
        "sem-teste" => {
            let kept = !e.descricao.to_lowercase().starts_with("teste");
            if kept {
                std::hint::black_box(e.encode());
            }
            usize::from(kept)
        }
        "categorias" => {
            let mut e = e.clone();
            if e.categoria.is_none() && e.descricao.to_lowercase().contains("bench") {
                e.categoria = Some("bancada".into());
            }
            std::hint::black_box(e.encode());
            1
        }
        _ => {
            let fee = (i128::from(e.valor.cents()) * 250 + 5_000) / 10_000;
            let split = e.tipo == Tipo::Credito && e.categoria.as_deref() == Some("cartao") && fee > 0;
            let mut out = vec![e.encode()];
            if split {
                let debit = Lancamento { tipo: Tipo::Debito, valor: Money::from_cents(fee as i64), ..e.clone() };
                out.push(debit.encode());
            }
            std::hint::black_box(out).len()
        }
    }
}

/// The data set as each rule gets it (see the header).
fn input(name: &str, entries: &[Lancamento]) -> Vec<Lancamento> {
    let mut input = entries.to_vec();
    for e in &mut input {
        match name {
            "categorias" => e.categoria = None,
            "taxa-cartao" if e.tipo == Tipo::Credito => e.categoria = Some("cartao".into()),
            _ => {}
        }
    }
    input
}

pub(crate) async fn phase(
    p: &mut Pipeline,
    db: &mut PgConnection,
    shipped: &str,
    entries: &[Lancamento],
    [broker, postgres]: [u32; 2],
    report: &mut Report,
) {
    for example in EXAMPLES {
        let name = example.0;
        eprintln!("4d. SmartModule {name}, in process, over {} entries", entries.len());
        let input = input(name, entries);
        let c = config(example);
        let mut module = SmartModule::load(&c, &c.path, DateWindow::default()).unwrap();
        let started = Instant::now();
        let out: usize = input.iter().map(|e| module.apply(e).unwrap().len()).sum();
        let module_us = started.elapsed().as_secs_f64() * 1e6 / input.len() as f64;
        let started = Instant::now();
        let plain_out: usize = input.iter().map(|e| plain(name, e)).sum();
        let plain_us = started.elapsed().as_secs_f64() * 1e6 / input.len() as f64;
        assert_eq!(out, plain_out, "{name}: the module and the plain rule disagree");
        report.add(&format!("SmartModule {name}: time per entry"), module_us, "µs");
        report.add(&format!("SmartModule {name}: the same rule in plain Rust, per entry"), plain_us, "µs");
        report.add(
            &format!("SmartModule {name}: entries out per entry in"),
            out as f64 / input.len() as f64,
            "entries",
        );
    }

    eprintln!("4d. consolidation with the three SmartModules, into a database of its own");
    let mut own = lanes::OwnDatabase::create(p, db, shipped, "bench_smartmodules").await;
    let modules: String = EXAMPLES
        .iter()
        .map(|&example| {
            let c = config(example);
            let params = c.params.iter().map(|(k, v)| format!("{k}: \"{v}\"")).collect::<Vec<_>>().join(", ");
            format!(
                "      - operator: smartmodule\n        name: {}\n        path: {}\n        kind: {}\n        params: {{ {params} }}\n",
                c.name,
                c.path.display(),
                c.kind.as_str()
            )
        })
        .collect();
    let (plain_line, with_modules) = ("      - operator: aggregate ", format!("{modules}      - operator: aggregate "));
    p.edit_config(plain_line, &with_modules);
    let cpu = CpuMeter::start(&[("broker", broker), ("PostgreSQL", postgres)]);
    consolidation(p, &mut own.db, entries, cpu, PIPELINE, report).await;
    p.edit_config(&with_modules, plain_line);
    own.drop_it(p, db).await;
}
