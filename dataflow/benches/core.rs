//! The dataflow core alone: one epoch of entries into the timely worker and the states' changes
//! back as text, in memory, for the states the shipped pipeline.yaml declares. The spread is
//! `cashflow-bench`'s: merchants over 60 days, four categories, two in five entries debits.
//!
//! `cargo bench -p cashflow-dataflow --bench core`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cashflow_core::config::PipelineConfig;
use cashflow_core::{BusinessDate, Tipo};
use cashflow_dataflow::{Consolidator, Fact};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const EPOCH: usize = 5_000;
const DAYS: u64 = 60;
const CATEGORIES: [&str; 4] = ["vendas", "insumos", "aluguel", "servicos"];

struct Entry {
    merchant_id: String,
    data: BusinessDate,
    categoria: &'static str,
    tipo: Tipo,
    valor_cents: i64,
}

fn entries(n: usize, merchants: u64) -> Vec<Entry> {
    let today = "2026-12-05".parse::<BusinessDate>().unwrap();
    (0..n as u64)
        .map(|i| {
            let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i >> 7);
            Entry {
                merchant_id: format!("loadgen-{}", 1 + h % merchants),
                data: BusinessDate::from_days(today.days() - ((h >> 32) % DAYS) as i32).unwrap(),
                categoria: CATEGORIES[((h >> 40) % 4) as usize],
                tipo: if (h >> 8) % 5 < 2 { Tipo::Debito } else { Tipo::Credito },
                valor_cents: 1 + ((h >> 16) % 100_000) as i64,
            }
        })
        .collect()
}

fn fact(e: &Entry) -> Fact<'_> {
    Fact { merchant_id: &e.merchant_id, data: e.data, categoria: e.categoria, tipo: e.tipo, valor_cents: e.valor_cents }
}

fn core(c: &mut Criterion) {
    let text = include_str!("../../pipeline.yaml");
    let config = PipelineConfig::parse("pipeline.yaml", text, |_| None).unwrap();
    let keys: Vec<_> = cashflow_dataflow::declared(&config).into_iter().map(|s| s.key).collect();
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let mut group = c.benchmark_group("dataflow core");
    group.throughput(Throughput::Elements(EPOCH as u64));
    for merchants in [200, 10_000] {
        let entries = entries(EPOCH * 16, merchants);
        let dataflow = Consolidator::start(keys.clone()).unwrap();
        let mut epochs = entries.chunks(EPOCH).cycle();
        group.bench_function(BenchmarkId::new("epoch of 5000, merchants", merchants), |b| {
            b.iter(|| {
                let epoch = epochs.next().unwrap();
                let changes = runtime.block_on(dataflow.apply(epoch.iter().map(fact))).unwrap();
                // the text the store binds
                changes.rows().unwrap().iter().map(|rows| rows.len()).sum::<usize>()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, core);
criterion_main!(benches);
