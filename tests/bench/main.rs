//! `cashflow-bench`: every stage against its ceiling and against the naive design, in one run, on
//! one data set, on this machine. Prints a table (or `--json`); asserts nothing about time.
//!
//! ```text
//! cashflow-bench [--quick] [--entries N] [--merchants N] [--days N] [--seconds S] [--soak S] [--scale] [--smartmodules] [--embedded] [--json]
//! ```
//!
//! It starts its own PostgreSQL cluster (durable, configured for writes: see
//! `PgCluster::start_durable`) and the real `cashflow` binaries, and measures, in order:
//! 1. the dataflow core alone: entries per second into one timely worker, in memory; the bytes of
//!    consolidated state per key (a counting allocator: the bytes freed when the worker stops);
//! 2. the raw producer: the data set produced to the broker with rdkafka (the ingest ceiling);
//! 3. the raw consumer: the topic read back with rdkafka, no processing (a consolidation ceiling);
//! 4. consolidation: `cashflow run consolidate`, from the first commit to the last offset stored,
//!    checked against the data set (every entry counted once); then again with 1, 2 and 4 sink
//!    lanes (`services.consolidate.lanes`), each into a database of its own on the same cluster;
//!    then by 1, 2 and 3 consolidators of one group, each into a database of its own: the total
//!    and each member's throughput, the share of records each read, and the consolidators' CPU per
//!    entry (flat when no work is done twice: what predicts the speed-up on machines of their own);
//!    then what the SmartModules cost: each example module over the data set in this process,
//!    against its rule in plain Rust, and the topic consolidated with the three declared;
//! 5. the naive design: one consumer, one transaction per entry (insert it, upsert its day);
//! 6. the store's raw write rate: COPY of the same entries into a copy of the entries table;
//!    both ceilings at once: the topic consumed and COPYed into the store, no other processing;
//!    and COPY of every row consolidation writes (the entries and the totals of each shipped
//!    state: day, (day, category), month, merchant; summed before the clock starts): the
//!    store's writes alone;
//!    phases 2, 3, 4, 6 and 7 also give each process's CPU time per entry (from /proc), which
//!    says where a stage's time goes; then, untimed, `VACUUM ANALYZE`, so that autovacuum does
//!    not run into the latency phases;
//! 7. the raw producer's ack latency, one record at a time at 2k/s once it knows the topic (a single
//!    POST's floor);
//! 8. ingest through the HTTP API (`cashflow loadgen`): batches, and single POSTs at 2k/s;
//! 9. balance queries over 31 days at 5k/s;
//! 10. freshness at 1k entries/s: POST, then read the balance with `aguardar`, until visible;
//! 11. the embedded default, as `cashflow up` runs it: a broker of its own (`cashflow run broker`)
//!     and an SQLite store; the data set produced to it, read back by a raw consumer, then
//!     consolidated (`cashflow run consolidate`), checked against the data set;
//! 12. with `--soak S`: entries at 1k/s for S seconds over 50 merchants' last 31 days (a key
//!     space filled in the first minute), the RSS of the consolidator and of the gateway sampled
//!     every 10 s (first and last minute, and the trend after the first minute).
//!
//! With `--scale`, only phases 1, 2 and 4c run; with `--smartmodules`, only phases 1 to 4 and 4d;
//! with `--embedded`, only phase 11
//! (the other figures print as NaN).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::alloc::System;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use cashflow_core::{BusinessDate, EntryId, Lancamento, MerchantId, Money, Tipo};
use cashflow_observability::EpochStep;
use cashflow_tests::{PgCluster, Pipeline, Role, Store};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, Row};
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

mod copy;
mod cpu;
mod embedded;
mod http;
mod lanes;
mod scale;
mod smartmodules;
mod statements;

use copy::{raw_copy, raw_copy_written, raw_pipeline};
use cpu::CpuMeter;
use http::{freshness, http_load, queries, soak, wait_consolidated};

/// Counts allocations, to weigh in-memory state.
#[global_allocator]
static ALLOCATOR: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes allocated and not yet freed. (`bytes_reallocated` is not added: a realloc's growth or
/// shrinkage is already counted in `bytes_allocated` or `bytes_deallocated`.)
fn live_bytes() -> i64 {
    let s = ALLOCATOR.stats();
    s.bytes_allocated as i64 - s.bytes_deallocated as i64
}

const TOPIC: &str = "lancamentos";
const CATEGORIES: [&str; 4] = ["vendas", "insumos", "aluguel", "servicos"];

struct Args {
    entries: u64,
    merchants: u64,
    days: u64,
    seconds: f64,
    soak: f64,
    json: bool,
    /// Only what phase 4c needs: the topic filled (phase 2), then consolidation by 1, 2 and 3
    /// consolidators.
    scale: bool,
    /// Only what phase 4d needs: the topic filled (phase 2), consolidated without and with the
    /// SmartModules (phases 4 and 4d).
    smartmodules: bool,
    /// Only phase 11, the embedded default (no PostgreSQL).
    embedded: bool,
}

const USAGE: &str = "usage: cashflow-bench [--quick] [--entries N] [--merchants N] [--days N] [--seconds S] [--soak S] [--scale] [--smartmodules] [--embedded] [--json]";

impl Args {
    /// The flags, or what is wrong with them.
    fn parse(mut flags: impl Iterator<Item = String>) -> Result<Args, String> {
        let mut a = Args {
            entries: 1_000_000,
            merchants: 10_000,
            days: 365,
            seconds: 20.0,
            soak: 0.0,
            json: false,
            scale: false,
            smartmodules: false,
            embedded: false,
        };
        while let Some(flag) = flags.next() {
            let mut value = || flags.next().ok_or_else(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--quick" => (a.entries, a.merchants, a.days, a.seconds) = (20_000, 200, 60, 2.0),
                "--entries" => a.entries = number(&flag, value()?)?,
                "--merchants" => a.merchants = number(&flag, value()?)?,
                "--days" => a.days = number(&flag, value()?)?,
                "--seconds" => a.seconds = number(&flag, value()?)?,
                "--soak" => a.soak = number(&flag, value()?)?,
                "--json" => a.json = true,
                "--scale" => a.scale = true,
                "--smartmodules" => a.smartmodules = true,
                "--embedded" => a.embedded = true,
                "-h" | "--help" => return Err(String::new()),
                other => return Err(format!("unknown flag {other}")),
            }
        }
        if a.merchants < 50 {
            return Err("--merchants: at least 50 (the load generator's merchants)".into());
        }
        let positive = |x: f64| x.is_finite() && x > 0.0;
        if a.entries == 0 || a.days == 0 || !positive(a.seconds) || !(a.soak == 0.0 || positive(a.soak)) {
            return Err("--entries, --days and --seconds must be positive, --soak not negative".into());
        }
        Ok(a)
    }
}

fn number<T: std::str::FromStr>(flag: &str, value: String) -> Result<T, String> {
    value.parse().map_err(|_| format!("{flag}: not a number: {value:?}"))
}

/// Entry `i` of the data set: spread over merchants `loadgen-1..`, days up to today, categories.
fn entry(i: u64, args: &Args, today: BusinessDate) -> Lancamento {
    let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i >> 7);
    Lancamento {
        id: EntryId(uuid::Uuid::from_u64_pair(h, i)),
        merchant_id: MerchantId::parse(&format!("loadgen-{}", 1 + h % args.merchants)).unwrap(),
        tipo: if (h >> 8) % 5 < 2 { Tipo::Debito } else { Tipo::Credito },
        valor: Money::from_cents(1 + ((h >> 16) % 100_000) as i64),
        data: BusinessDate::from_days(today.days() - ((h >> 32) % args.days) as i32).unwrap(),
        descricao: "bench".into(),
        categoria: Some(CATEGORIES[((h >> 40) % 4) as usize].to_owned()),
        criado_em: chrono::Utc::now(),
        estorno_de: None,
    }
}

/// The figures, in order.
#[derive(Default)]
struct Report {
    rows: Vec<(String, f64, &'static str)>,
}

impl Report {
    fn add(&mut self, name: &str, value: f64, unit: &'static str) {
        if !self.rows.iter().any(|(n, _, _)| n == name) {
            eprintln!("  {name}: {} {unit}", fmt(value));
        }
        self.rows.push((name.to_owned(), value, unit));
    }

    fn get(&self, name: &str) -> f64 {
        self.rows.iter().find(|(n, _, _)| n == name).map(|r| r.1).unwrap_or(f64::NAN)
    }
}

fn fmt(v: f64) -> String {
    if v.abs() >= 100.0 { format!("{v:.0}") } else { format!("{v:.3}") }
}

fn main() {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(problem) => {
            if !problem.is_empty() {
                eprintln!("cashflow-bench: {problem}");
            }
            eprintln!("{USAGE}\n(the header of tests/bench/main.rs says what each phase measures)");
            std::process::exit(if problem.is_empty() { 0 } else { 2 });
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let report = runtime.block_on(run(&args));
    let per = |a: &str, b: &str| report.get(a) / report.get(b);
    let consolidation = "consolidation entries/s";
    let ceiling = report.get("raw consume records/s").min(report.get("raw COPY rows/s"));
    let ratios = [
        ("consolidation / naive per-entry consumer", per(consolidation, "naive per-entry consumer entries/s"), "≥ 10"),
        ("consolidation / min(raw consume, raw COPY)", report.get(consolidation) / ceiling, "≥ 0.8"),
        (
            "consolidation / raw consume + COPY at once",
            per(consolidation, "raw consume + COPY at once rows/s"),
            "(both ceilings sharing the machine)",
        ),
        (
            "consolidation / raw COPY of every row it writes",
            per(consolidation, "raw COPY of every row consolidation writes entries/s"),
            "≥ 0.9 (the store's writes alone)",
        ),
        ("consolidation, lanes: 2 / lanes: 1", per(&lanes::rate(2), &lanes::rate(1)), "(grows with the store's cores)"),
        ("consolidation, lanes: 4 / lanes: 1", per(&lanes::rate(4), &lanes::rate(1)), "(grows with the store's cores)"),
        ("consolidation, 2 / 1 consolidators", per(&scale::rate(2), &scale::rate(1)), "(members share these cores)"),
        ("consolidation, 3 / 1 consolidators", per(&scale::rate(3), &scale::rate(1)), "(members share these cores)"),
        (
            "consolidation with the three SmartModules / without",
            per(&format!("{} entries/s", smartmodules::PIPELINE), consolidation),
            "(each entry through three modules)",
        ),
        ("consolidators' CPU per entry, 2 / 1 members", per(&scale::cpu(2), &scale::cpu(1)), "≈ 1 (no work twice)"),
        ("consolidators' CPU per entry, 3 / 1 members", per(&scale::cpu(3), &scale::cpu(1)), "≈ 1 (no work twice)"),
        (
            "embedded: consolidation / raw consume",
            per("embedded: consolidation entries/s", "embedded: raw consume records/s"),
            "≥ 0.5",
        ),
        ("batch ingest / raw producer", per("batch ingest entries/s", "raw producer records/s"), "≥ 0.8"),
    ];
    if args.json {
        let figures: serde_json::Map<String, Value> =
            report.rows.iter().map(|(n, v, u)| (n.clone(), json!({"value": v, "unit": u}))).collect();
        let ratios: serde_json::Map<String, Value> =
            ratios.iter().map(|(n, v, t)| ((*n).to_owned(), json!({"value": v, "target": t}))).collect();
        let out = json!({"entries": args.entries, "merchants": args.merchants, "days": args.days,
                         "seconds": args.seconds, "figures": figures, "ratios": ratios});
        println!("{}", serde_json::to_string_pretty(&out).unwrap());
    } else {
        println!(
            "data set: {} entries, {} merchants, {} days; load phases of {} s",
            args.entries, args.merchants, args.days, args.seconds
        );
        println!("{:<64} {:>14}  unit", "measure", "value");
        for (name, value, unit) in &report.rows {
            println!("{name:<64} {:>14}  {unit}", fmt(*value));
        }
        println!("\n{:<64} {:>14}  target", "ratio (same run)", "value");
        for (name, value, target) in ratios {
            println!("{name:<64} {:>14.2}  {target}", value);
        }
    }
}

async fn run(args: &Args) -> Report {
    let mut report = Report::default();
    let today = BusinessDate::today();
    eprintln!("generating {} entries", args.entries);
    let entries: Vec<Lancamento> = (0..args.entries).map(|i| entry(i, args, today)).collect();
    if args.embedded {
        eprintln!("11. the embedded default: its own broker and an SQLite store");
        embedded::embedded(&entries, &mut report).await;
        return report;
    }

    eprintln!("1. the dataflow core, in memory");
    dataflow_core(&entries, &mut report).await;

    eprintln!("starting PostgreSQL (durable) and the broker");
    let pg = PgCluster::start_durable();
    let mut p = with_topics(Store::Postgres(pg.url())).await;
    let brokers = p.kafka.clone();
    let kafka = |c: &mut ClientConfig| {
        c.set("bootstrap.servers", &brokers).set("broker.address.family", "v4");
    };

    let (bench, broker, postgres) = (std::process::id(), p.pid(Role::Broker), pg.pid());
    let entries_n = args.entries as f64;

    eprintln!("2. raw producer");
    let cpu = CpuMeter::start(&[("broker", broker), ("client", bench)]);
    let encoded: Vec<(String, Vec<u8>)> = entries.iter().map(|e| (e.merchant_id.to_string(), e.encode())).collect();
    raw_produce(kafka, &encoded, &mut report).await;
    drop(encoded);
    cpu.report("raw producer", entries_n, &mut report);

    if args.scale {
        let mut db = PgConnection::connect(&pg.url()).await.unwrap();
        scale::phase(&mut p, &mut db, &pg.url(), &entries, [broker, postgres], &mut report).await;
        p.stop().await;
        return report;
    }

    eprintln!("3. raw consumer");
    let cpu = CpuMeter::start(&[("broker", broker), ("client", bench)]);
    raw_consume(kafka, args.entries, &mut report);
    cpu.report("raw consume", entries_n, &mut report);

    eprintln!("4. consolidation (cashflow run consolidate)");
    let mut db = PgConnection::connect(&pg.url()).await.unwrap();
    let cpu = CpuMeter::start(&[("broker", broker), ("PostgreSQL", postgres)]);
    consolidation(&mut p, &mut db, &entries, cpu, "consolidation", &mut report).await;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    report.add("cores (PostgreSQL, the broker and the consolidator share them)", cores as f64, "cores");
    if args.smartmodules {
        smartmodules::phase(&mut p, &mut db, &pg.url(), &entries, [broker, postgres], &mut report).await;
        p.stop().await;
        return report;
    }
    lanes::phase(&mut p, &mut db, &pg.url(), &entries, [broker, postgres], &mut report).await;
    smartmodules::phase(&mut p, &mut db, &pg.url(), &entries, [broker, postgres], &mut report).await;
    scale::phase(&mut p, &mut db, &pg.url(), &entries, [broker, postgres], &mut report).await;

    eprintln!("5. the naive design: a transaction per entry");
    naive(kafka, &mut db, args, &mut report).await;

    eprintln!("6. raw COPY into the store");
    let cpu = CpuMeter::start(&[("PostgreSQL", postgres), ("client", bench)]);
    raw_copy(&mut db, &entries, &mut report).await;
    cpu.report("raw COPY", entries_n, &mut report);
    let cpu = CpuMeter::start(&[("broker", broker), ("PostgreSQL", postgres), ("client", bench)]);
    raw_pipeline(kafka, &mut db, args.entries, &mut report).await;
    cpu.report("raw consume + COPY at once", entries_n, &mut report);
    statements::reset(&mut db).await;
    let cpu = CpuMeter::start(&[("PostgreSQL", postgres), ("client", bench)]);
    raw_copy_written(&mut db, &entries, &mut report).await;
    let phase = "raw COPY of every row consolidation writes";
    cpu.report(phase, entries_n, &mut report);
    statements::report(&mut db, phase, entries_n, &mut report).await;

    // Untimed: what phases 4 to 6 wrote is vacuumed and analyzed now, so that PostgreSQL's
    // autovacuum does not take the cores during the latency phases that follow.
    eprintln!("settling: VACUUM ANALYZE");
    sqlx::query("VACUUM ANALYZE").execute(&mut db).await.unwrap();

    eprintln!("7. raw producer latency at 2k/s");
    let cpu = CpuMeter::start(&[("broker", broker), ("PostgreSQL", postgres), ("client", bench)]);
    let sent = raw_produce_latency(&p, &entries, args.seconds, &mut report).await;
    cpu.report("raw producer at 2k/s", sent as f64, &mut report);
    let entries_for_embedded = entries;

    eprintln!("8-9. ingest and balance queries through the HTTP API");
    p.launch(Role::Gateway).await;
    let processes =
        [("gateway", p.pid(Role::Gateway)), ("broker", broker), ("PostgreSQL", postgres), ("loadgen", bench)];
    http_load(&p, args, &processes, &mut report);
    queries(&p, args, &processes, "31-day balance query at 5k/s", &mut report).await;

    eprintln!("9b. the same queries with no balances held in memory (services.query.cache_days: 0)");
    let cache_on = "cache_days: 1000000";
    p.interrupt(Role::Gateway).await;
    p.edit_config(cache_on, "cache_days: 0");
    p.launch(Role::Gateway).await;
    let processes =
        [("gateway", p.pid(Role::Gateway)), ("broker", broker), ("PostgreSQL", postgres), ("loadgen", bench)];
    queries(&p, args, &processes, "31-day balance query at 5k/s, store only", &mut report).await;
    p.interrupt(Role::Gateway).await;
    p.edit_config("cache_days: 0", cache_on);
    p.launch(Role::Gateway).await;

    eprintln!("10. freshness at 1k entries/s");
    // A port chosen at the start may have served as a client port since: take a fresh one.
    p.stages.insert(Role::Consolidate, format!("http://127.0.0.1:{}", cashflow_tests::free_port()));
    p.launch(Role::Consolidate).await;
    wait_consolidated(&mut db, kafka, Duration::from_secs(600)).await;
    let rss = p.api.metrics(&p.stages[&Role::Consolidate]).await.must("process_resident_memory_bytes");
    report.add("consolidator RSS after a restart on the loaded store", rss / 1e6, "MB");
    freshness(&p, args, &mut report).await;
    eprintln!("11. the embedded default: its own broker and an SQLite store");
    embedded::embedded(&entries_for_embedded, &mut report).await;
    if args.soak > 0.0 {
        eprintln!("12. soak: 1k entries/s for {} s", args.soak);
        soak(&p, args, &mut report).await;
    }
    p.stop().await;
    report
}

/// A pipeline on `store` with its broker running and its topics created by the consolidator (as
/// `cashflow up` creates them: a producer must not create them with other partition counts).
async fn with_topics(store: Store) -> Pipeline {
    // The loadgen stands in for many clients from one address: the per-address connection cap
    // is the edge tests' business, not the benchmark's.
    let mut p =
        Pipeline::configure(store, &[("max_connections_per_address: 512", "max_connections_per_address: 8192")]);
    p.launch(Role::Broker).await;
    p.launch(Role::Consolidate).await;
    p.interrupt(Role::Consolidate).await;
    p
}

async fn dataflow_core(entries: &[Lancamento], report: &mut Report) {
    // the states the shipped pipeline.yaml declares
    let shipped = include_str!("../../pipeline.yaml");
    let config = cashflow_core::config::PipelineConfig::parse("pipeline.yaml", shipped, |_| None).unwrap();
    let keys = cashflow_dataflow::declared(&config).into_iter().map(|s| s.key).collect();
    let dataflow = cashflow_dataflow::Consolidator::start(keys).unwrap();
    let started = Instant::now();
    for chunk in entries.chunks(5_000) {
        let changes = dataflow.apply(chunk.iter().map(cashflow_dataflow::Fact::from)).await.unwrap();
        // the text the store binds
        std::hint::black_box(changes.rows().unwrap());
    }
    let rate = entries.len() as f64 / started.elapsed().as_secs_f64();
    report.add("dataflow core entries/s (1 worker)", rate, "entries/s");
    // The state is what stopping the worker frees.
    let held = live_bytes();
    drop(dataflow);
    let bytes = (held - live_bytes()) as f64;
    let category_keys: HashSet<(&str, i32, &str)> = entries
        .iter()
        .map(|e| (e.merchant_id.as_str(), e.data.days(), e.categoria.as_deref().unwrap_or_default()))
        .collect();
    let days: HashSet<(&str, i32)> = entries.iter().map(|e| (e.merchant_id.as_str(), e.data.days())).collect();
    report.add("state bytes per (merchant, day, category)", bytes / category_keys.len() as f64, "bytes");
    report.add("state bytes per (merchant, day)", bytes / days.len() as f64, "bytes");
    report.add("(merchant, day) keys", days.len() as f64, "keys");
}

async fn raw_produce(kafka: impl Fn(&mut ClientConfig), records: &[(String, Vec<u8>)], report: &mut Report) {
    let mut c = ClientConfig::new();
    kafka(&mut c);
    let producer: FutureProducer =
        c.set("acks", "all").set("linger.ms", "5").set("enable.idempotence", "false").create().unwrap();
    let started = Instant::now();
    for chunk in records.chunks(20_000) {
        let sends = chunk.iter().map(|(key, payload)| {
            producer.send(FutureRecord::to(TOPIC).key(key).payload(payload), Duration::from_secs(60))
        });
        for r in futures::future::join_all(sends).await {
            r.map_err(|(e, _)| e).unwrap();
        }
    }
    report.add("raw producer records/s", records.len() as f64 / started.elapsed().as_secs_f64(), "records/s");
}

/// Records one at a time at 2k/s, with ingest's producer (the pipeline's own settings), to a topic
/// of their own, each timed from its scheduled send to its ack: what the broker gives a single
/// POST at best. Returns how many records it timed.
async fn raw_produce_latency(p: &Pipeline, entries: &[Lancamento], seconds: f64, report: &mut Report) -> usize {
    const LATENCY_TOPIC: &str = "bench.latency";
    let config = p.pipeline_config();
    let admin: AdminClient<DefaultClientContext> = cashflow_kafka::client_config(&config).create().unwrap();
    let topic = NewTopic::new(LATENCY_TOPIC, 6, TopicReplication::Fixed(1));
    for r in admin.create_topics(&[topic], &AdminOptions::new()).await.unwrap() {
        r.unwrap();
    }
    let ack_timeout = config.services.ingest.ack_timeout;
    let producer: FutureProducer = cashflow_kafka::producer_config(&config, ack_timeout).create().unwrap();
    // Warm, as ingest's producer is: the first send to a new topic waits for its metadata, which
    // is not what a POST waits for.
    let (key, payload) = (entries[0].merchant_id.to_string(), entries[0].encode());
    producer.send(FutureRecord::to(LATENCY_TOPIC).key(&key).payload(&payload), Duration::from_secs(10)).await.unwrap();
    let hist = Arc::new(std::sync::Mutex::new(hdrhistogram::Histogram::<u64>::new(3).unwrap()));
    let n = ((seconds * 2000.0) as usize).min(entries.len());
    let started = tokio::time::Instant::now();
    let mut sends = tokio::task::JoinSet::new();
    for (i, e) in entries[..n].iter().enumerate() {
        let at = started + Duration::from_micros(i as u64 * 500);
        tokio::time::sleep_until(at).await;
        let (producer, hist, key, payload) =
            (producer.clone(), Arc::clone(&hist), e.merchant_id.to_string(), e.encode());
        sends.spawn(async move {
            let record = FutureRecord::to(LATENCY_TOPIC).key(&key).payload(&payload);
            producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
            hist.lock().unwrap().record(at.elapsed().as_micros() as u64).unwrap();
        });
    }
    sends.join_all().await;
    let hist = hist.lock().unwrap();
    report.add("raw producer at 2k/s p50 (ack latency)", hist.value_at_quantile(0.5) as f64 / 1e3, "ms");
    report.add("raw producer at 2k/s p99 (ack latency)", hist.value_at_quantile(0.99) as f64 / 1e3, "ms");
    n
}

/// A consumer of the topic from its start, in its own group.
fn subscribed(kafka: impl Fn(&mut ClientConfig), group: &str) -> BaseConsumer {
    let mut c = ClientConfig::new();
    kafka(&mut c);
    let consumer: BaseConsumer = c
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "50")
        .create()
        .unwrap();
    consumer.subscribe(&[TOPIC]).unwrap();
    consumer
}

fn raw_consume(kafka: impl Fn(&mut ClientConfig), want: u64, report: &mut Report) {
    let consumer = subscribed(kafka, "bench-raw");
    let mut read = 0u64;
    let started = drain(&consumer, want, |_| read += 1);
    assert_eq!(read, want, "raw consumer read {read} of {want}");
    report.add("raw consume records/s", want as f64 / started.unwrap().elapsed().as_secs_f64(), "records/s");
}

/// Polls until `want` records (or 15 minutes), handing each payload to `each`; returns when the
/// first one arrived.
fn drain(consumer: &BaseConsumer, want: u64, mut each: impl FnMut(&[u8])) -> Option<Instant> {
    let (mut read, mut started) = (0u64, None);
    let deadline = Instant::now() + Duration::from_secs(900);
    while read < want && Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            started.get_or_insert_with(Instant::now);
            each(m.payload().unwrap_or_default());
            read += 1;
        }
    }
    started
}

/// Sum of the stored next offsets of a group.
/// The bench's own poll of a consolidation's progress (left out of the phase's profile).
const PROGRESS: &str = "SELECT COALESCE(SUM(next_offset), 0)::BIGINT FROM consumer_progress WHERE consumer_group = $1";

async fn progress(db: &mut PgConnection, group: &str) -> i64 {
    sqlx::query(PROGRESS).bind(group).fetch_one(&mut *db).await.unwrap().get(0)
}

/// What the consolidator's `/metrics` say after a load: its RSS, and where its epochs spent
/// their time, per entry (each step of `cashflow_consolidate_epoch_step_seconds_total`).
async fn after_the_load(p: &Pipeline, label: &str, entries: f64, report: &mut Report) {
    let metrics = p.api.metrics(&p.stages[&Role::Consolidate]).await;
    let rss = metrics.must("process_resident_memory_bytes");
    report.add(&format!("{label}: consolidator RSS after the load"), rss / 1e6, "MB");
    for step in EpochStep::ALL.map(EpochStep::label) {
        // every step is exported, from zero
        let seconds = metrics.must(&format!("cashflow_consolidate_epoch_step_seconds_total{{step=\"{step}\"}}"));
        report.add(&format!("{label}: epoch step {step}, time per entry"), seconds / entries * 1e6, "µs");
    }
}

/// A consolidation timed by its stored progress: from the first commit seen to the last offset.
/// When that first commit holds every entry (a data set within one epoch, as `--quick`'s 20,000
/// can be), from its start instead: there is no second commit to time.
struct Consolidating {
    want: i64,
    started: Instant,
    first: Option<(Instant, i64)>,
    deadline: Instant,
}

impl Consolidating {
    /// Timing a consolidator started just now.
    fn new(want: i64) -> Self {
        let started = Instant::now();
        Consolidating { want, started, first: None, deadline: started + Duration::from_secs(1800) }
    }

    /// Takes the offsets stored so far; true once they reach every entry.
    fn saw(&mut self, done: i64) -> bool {
        if done > 0 && self.first.is_none() {
            self.first = Some((Instant::now(), done));
        }
        assert!(done >= self.want || Instant::now() < self.deadline, "consolidated {done} of {} in 30 min", self.want);
        done >= self.want
    }

    /// Entries per second since the first commit seen (or the start, see the type).
    fn rate(&self) -> f64 {
        let (t0, at_first) = self.first.expect("a commit was seen");
        if at_first >= self.want {
            return self.want as f64 / t0.duration_since(self.started).as_secs_f64();
        }
        (self.want - at_first) as f64 / t0.elapsed().as_secs_f64()
    }
}

async fn consolidation(
    p: &mut Pipeline,
    db: &mut PgConnection,
    entries: &[Lancamento],
    mut cpu: CpuMeter,
    label: &str,
    report: &mut Report,
) {
    let want = entries.len() as i64;
    let group = "cashflow-consolidate";
    statements::reset(db).await;
    p.launch(Role::Consolidate).await;
    cpu.add("consolidator", p.pid(Role::Consolidate));
    let mut timer = Consolidating::new(want);
    while !timer.saw(progress(db, group).await) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    report.add(&format!("{label} entries/s"), timer.rate(), "entries/s");
    cpu.report(label, want as f64, report);
    after_the_load(p, label, want as f64, report).await;
    p.interrupt(Role::Consolidate).await;
    statements::report(db, label, want as f64, report).await;
    counted_once(db, entries).await;
    let index: i64 =
        sqlx::query("SELECT pg_relation_size('lancamentos_pkey')::BIGINT").fetch_one(&mut *db).await.unwrap().get(0);
    report.add("dedup: store index bytes per entry (none in memory)", index as f64 / want as f64, "bytes");
}

/// Every entry of the data set counted once in the store, with its amount.
async fn counted_once(db: &mut PgConnection, entries: &[Lancamento]) {
    let row = sqlx::query(
        "SELECT SUM(quantidade)::BIGINT, SUM(creditos_cents)::BIGINT, SUM(debitos_cents)::BIGINT FROM consolidado_diario",
    )
    .fetch_one(&mut *db)
    .await
    .unwrap();
    let (count, credits, debits): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    let cents = |t: Tipo| entries.iter().filter(|e| e.tipo == t).map(|e| e.valor.cents()).sum::<i64>();
    assert_eq!(
        (count, credits, debits),
        (entries.len() as i64, cents(Tipo::Credito), cents(Tipo::Debito)),
        "balances differ from the data set"
    );
}

async fn naive(kafka: impl Fn(&mut ClientConfig), db: &mut PgConnection, args: &Args, report: &mut Report) {
    for table in ["lancamentos", "consolidado_diario"] {
        sqlx::query(&format!("CREATE TABLE naive_{table} (LIKE {table} INCLUDING ALL)"))
            .execute(&mut *db)
            .await
            .unwrap();
    }
    let consumer = subscribed(kafka, "bench-naive");
    let (mut done, mut started) = (0u64, None::<Instant>);
    let limit = Duration::from_secs_f64(args.seconds * 3.0);
    while done < args.entries && started.is_none_or(|s| s.elapsed() < limit) {
        let Some(m) = tokio::task::block_in_place(|| consumer.poll(Duration::from_millis(100))) else { continue };
        let m = m.unwrap();
        started.get_or_insert_with(Instant::now);
        let e = Lancamento::decode(m.payload().unwrap()).unwrap();
        let r = e.to_record();
        let now = chrono::Utc::now().to_rfc3339();
        let mut tx = db.begin().await.unwrap();
        let inserted = sqlx::query(
            "INSERT INTO naive_lancamentos (id, merchant_id, tipo, valor_cents, data, descricao, categoria, criado_em, \
             origin_topic, origin_partition, origin_offset, consolidado_em) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT (id) DO NOTHING",
        )
        .bind(r.id.to_string())
        .bind(&r.merchant_id)
        .bind(r.tipo.as_str())
        .bind(r.valor_cents)
        .bind(&r.data)
        .bind(&r.descricao)
        .bind(&r.categoria)
        .bind(&r.criado_em)
        .bind(TOPIC)
        .bind(m.partition())
        .bind(m.offset())
        .bind(&now)
        .execute(&mut *tx)
        .await
        .unwrap()
        .rows_affected();
        if inserted == 1 {
            let (credit, debit) = if e.tipo == Tipo::Credito { (r.valor_cents, 0) } else { (0, r.valor_cents) };
            sqlx::query(
                "INSERT INTO naive_consolidado_diario (merchant_id, data, creditos_cents, debitos_cents, quantidade, \
                 atualizado_em) VALUES ($1, $2, $3, $4, 1, $5) ON CONFLICT (merchant_id, data) DO UPDATE SET \
                 creditos_cents = naive_consolidado_diario.creditos_cents + excluded.creditos_cents, \
                 debitos_cents = naive_consolidado_diario.debitos_cents + excluded.debitos_cents, \
                 quantidade = naive_consolidado_diario.quantidade + 1, atualizado_em = excluded.atualizado_em",
            )
            .bind(&r.merchant_id)
            .bind(&r.data)
            .bind(credit)
            .bind(debit)
            .bind(&now)
            .execute(&mut *tx)
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();
        done += 1;
    }
    let rate = done as f64 / started.unwrap().elapsed().as_secs_f64();
    report.add("naive per-entry consumer entries/s", rate, "entries/s");
    report.add("naive entries processed (bounded by time)", done as f64, "entries");
}
