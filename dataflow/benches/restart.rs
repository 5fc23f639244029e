//! Restart-to-ready against history size.
//!
//! Builds histories of 10k, 100k and 1M entries through the real epoch path (store insert with
//! dedupe, dataflow, the states' deltas, progress; no Kafka). Beyond 1M, where that path would
//! take most of an hour, the history is written by SQL instead: the same spread of entries, and
//! each shipped state summed from them by `GROUP BY` (what a start reads is the same: the
//! registry and the progress, never the history). Then it times what a consolidator does
//! before it can take its first record: open the store, check the declared states against the
//! store's registry, load the offsets, and start the dataflow, which holds no history (every
//! state is additive). Then times building a state added to the shipped ones (`por-tipo`, keyed
//! `[merchant_id, mes, tipo]`) from the stored entries. Prints the figures; asserts nothing about
//! time.
//!
//! `cargo bench -p cashflow-dataflow --bench restart [-- 10000 100000]`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use cashflow_core::config::PipelineConfig;
use cashflow_core::estado::{Field, Key, Values};
use cashflow_core::{BusinessDate, EntryId, Lancamento, MerchantId, Money, Tipo};
use cashflow_dataflow::{Consolidator, Fact};
use cashflow_sinks::{DeclaredState, Origin, Store, StoredEntry};

const MERCHANTS: u64 = 200;
const DAYS: u64 = 365;
const EPOCH: usize = 5_000;

fn entry(i: u64) -> StoredEntry {
    // A cheap deterministic spread over merchants, days and amounts.
    let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let first = "2026-01-01".parse::<BusinessDate>().unwrap();
    let entry = Lancamento {
        id: EntryId(uuid::Uuid::from_u64_pair(h, i)),
        merchant_id: MerchantId::parse(&format!("m{}", h % MERCHANTS)).unwrap(),
        tipo: if (h >> 8).is_multiple_of(3) { Tipo::Debito } else { Tipo::Credito },
        valor: Money::from_cents(1 + ((h >> 16) % 1_000_000) as i64),
        data: BusinessDate::from_days(first.days() + ((h >> 32) % DAYS) as i32).unwrap(),
        descricao: "venda".into(),
        categoria: None,
        criado_em: chrono::Utc::now(),
        estorno_de: None,
    };
    StoredEntry {
        entry,
        origin: Origin { topic: "lancamentos".into(), partition: (i % 6) as i32, offset: (i / 6) as i64 },
    }
}

/// The states the shipped pipeline.yaml declares.
fn shipped() -> Vec<DeclaredState> {
    let text = include_str!("../../pipeline.yaml");
    cashflow_dataflow::declared(&PipelineConfig::parse("pipeline.yaml", text, |_| None).unwrap())
}

async fn build_history(store: &Store, states: &[DeclaredState], n: u64) -> f64 {
    let dataflow = Consolidator::start(states.iter().map(|s| s.key.clone()).collect()).unwrap();
    let started = Instant::now();
    let mut i = 0;
    while i < n {
        let batch: Vec<StoredEntry> = (i..(i + EPOCH as u64).min(n)).map(entry).collect();
        i += batch.len() as u64;
        let mut tx = store.begin_epoch().await.unwrap();
        let inserted = tx.insert_entries(&batch).await.unwrap();
        let fresh: Vec<&Lancamento> = batch.iter().map(|s| &s.entry).filter(|e| inserted.contains(&e.id)).collect();
        let changed = dataflow.apply(fresh.iter().map(|e| Fact::from(*e))).await.unwrap();
        for (state, changes) in states.iter().zip(&changed.rows().unwrap()) {
            tx.add_state(state, changes).await.unwrap();
        }
        let next: Vec<(String, i32, i64)> = (0..6).map(|p| ("lancamentos".to_owned(), p, (i / 6) as i64)).collect();
        tx.save_progress("bench", &next).await.unwrap();
        tx.commit().await.unwrap();
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// Entries beyond which the history is written by SQL.
const BY_EPOCHS_UP_TO: u64 = 1_000_000;

/// The history of `n` entries written by SQL, as [`entry`] spreads them; 0 entries/s (not the
/// epoch path).
async fn write_history(url: &str, n: u64) -> f64 {
    use sqlx::Connection as _;
    let mut db = sqlx::SqliteConnection::connect(url).await.unwrap();
    let now = "'2026-01-01T00:00:00.000Z'";
    let sum = |c: &str| format!("SUM(CASE WHEN tipo = '{c}' THEN valor_cents ELSE 0 END)");
    let (credits, debits) = (sum("credito"), sum("debito"));
    let statements = [
        format!(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {last}) \
             INSERT INTO lancamentos SELECT printf('%08x-0000-4000-8000-%012x', i / 4294967296, i), \
             'm' || (i * 7919 % {MERCHANTS}), CASE WHEN i % 3 = 0 THEN 'debito' ELSE 'credito' END, \
             1 + (i * 104729 % 1000000), date('2026-01-01', '+' || (i * 31 % {DAYS}) || ' days'), 'venda', NULL, \
             {now}, NULL, 'lancamentos', i % 6, i / 6, {now} FROM n",
            last = n - 1
        ),
        format!(
            "INSERT INTO consolidado_categoria SELECT merchant_id, data, '', {credits}, {debits}, COUNT(*), {now} \
             FROM lancamentos GROUP BY merchant_id, data"
        ),
        format!(
            "INSERT INTO consolidado_diario SELECT merchant_id, data, creditos_cents, debitos_cents, quantidade, {now} \
             FROM consolidado_categoria"
        ),
        format!(
            "INSERT INTO consolidado_mensal SELECT merchant_id, substr(data, 1, 7), SUM(creditos_cents), \
             SUM(debitos_cents), SUM(quantidade), {now} FROM consolidado_diario GROUP BY merchant_id, substr(data, 1, 7)"
        ),
        format!(
            "INSERT INTO consolidado_comerciante SELECT merchant_id, SUM(creditos_cents), SUM(debitos_cents), \
             SUM(quantidade), {now} FROM consolidado_mensal GROUP BY merchant_id"
        ),
        format!(
            "INSERT INTO consumer_progress (consumer_group, topic, partition, next_offset, updated_at) \
             SELECT 'bench', 'lancamentos', origin_partition, MAX(origin_offset) + 1, {now} FROM lancamentos \
             GROUP BY origin_partition"
        ),
    ];
    for sql in statements {
        sqlx::query(&sql).execute(&mut db).await.unwrap();
    }
    0.0
}

#[tokio::main]
async fn main() {
    let sizes: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![10_000, 100_000, 1_000_000] } else { sizes };
    let states = shipped();
    let por_tipo = DeclaredState {
        table: "consolidado_por_tipo".into(),
        key: Key::new(vec![Field::MerchantId, Field::Mes, Field::Tipo]).unwrap(),
        values: Values::default(),
    };
    println!(
        "{:>10} {:>14} {:>12} {:>12} {:>14} {:>16}",
        "entries", "epochs: e/s", "restart ms", "db MiB", "bytes/entry", "new state ms"
    );
    for n in sizes {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bench.db");
        let url = format!("sqlite://{}", path.display());
        let store = Store::connect(&url, 4).await.unwrap();
        let rate =
            if n <= BY_EPOCHS_UP_TO { build_history(&store, &states, n).await } else { write_history(&url, n).await };
        store.close().await;

        let started = Instant::now();
        let store = Store::connect(&url, 4).await.unwrap();
        cashflow_dataflow::build(&store, &states).await.unwrap();
        let _progress = store.load_progress("bench").await.unwrap();
        let dataflow = Consolidator::start(states.iter().map(|s| s.key.clone()).collect()).unwrap();
        dataflow.apply([]).await.unwrap();
        let restart_ms = started.elapsed().as_secs_f64() * 1000.0;
        assert_eq!(store.count_entries().await.unwrap() as u64, n);

        let started = Instant::now();
        let with_new: Vec<DeclaredState> = states.iter().cloned().chain([por_tipo.clone()]).collect();
        cashflow_dataflow::build(&store, &with_new).await.unwrap();
        let build_ms = started.elapsed().as_secs_f64() * 1000.0;
        store.close().await;

        let bytes: u64 =
            std::fs::read_dir(dir.path()).unwrap().filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum();
        println!(
            "{n:>10} {rate:>14.0} {restart_ms:>12.1} {:>12.1} {:>14.0} {build_ms:>16.0}",
            bytes as f64 / (1024.0 * 1024.0),
            bytes as f64 / n as f64
        );
    }
}
