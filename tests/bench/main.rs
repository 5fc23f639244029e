//! `cashflow-bench`: every stage against its ceiling and against the naive design, in one run, on
//! one data set, on this machine. Prints a table (or `--json`); asserts nothing about time.
//!
//! ```text
//! cashflow-bench [--quick] [--entries N] [--merchants N] [--days N] [--seconds S] [--soak S] [--json]
//! ```
//!
//! It starts its own PostgreSQL cluster (durable, configured for writes: see
//! `PgCluster::start_durable`) and the real `cashflow` binaries, and measures, in order:
//! 1. the dataflow core alone: entries per second into one timely worker, in memory; the bytes of
//!    consolidated state per key (a counting allocator: the bytes freed when the worker stops);
//! 2. the raw producer: the data set produced to the broker with rdkafka (the ingest ceiling);
//! 3. the raw consumer: the topic read back with rdkafka, no processing (a consolidation ceiling);
//! 4. consolidation: `cashflow run consolidate`, from the first commit to the last offset stored,
//!    checked against the data set (every entry counted once);
//! 5. the naive design: one consumer, one transaction per entry (insert it, upsert its day);
//! 6. the store's raw write rate: COPY of the same entries into a copy of the entries table;
//!    both ceilings at once: the topic consumed and COPYed into the store, no other processing;
//!    and COPY of every row consolidation writes (the entries, their days' and their (day,
//!    category) totals, summed before the clock starts): the store's writes alone;
//!    phases 2, 3, 4, 6 and 7 also give each process's CPU time per entry (from /proc), which
//!    says where a stage's time goes; then, untimed, `VACUUM ANALYZE`, so that autovacuum does
//!    not run into the latency phases;
//! 7. the raw producer's ack latency, one record at a time at 2k/s once it knows the topic (a single
//!    POST's floor);
//! 8. ingest through the HTTP API (`cashflow loadgen`): batches, and single POSTs at 2k/s;
//! 9. balance queries over 31 days at 5k/s;
//! 10. freshness at 1k entries/s: POST, then read the balance with `aguardar`, until visible;
//! 11. with `--soak S`: entries at 1k/s for S seconds over 50 merchants' last 31 days (a key
//!     space filled in the first minute), the RSS of the consolidator and of the gateway sampled
//!     every 10 s (first and last minute, and the trend after the first minute).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::alloc::System;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use cashflow_core::{BusinessDate, EntryId, Lancamento, MerchantId, Money, Tipo};
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
}

const USAGE: &str =
    "usage: cashflow-bench [--quick] [--entries N] [--merchants N] [--days N] [--seconds S] [--soak S] [--json]";

impl Args {
    /// The flags, or what is wrong with them.
    fn parse(mut flags: impl Iterator<Item = String>) -> Result<Args, String> {
        let mut a = Args { entries: 1_000_000, merchants: 10_000, days: 365, seconds: 20.0, soak: 0.0, json: false };
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
    let ratios = [
        (
            "consolidation / naive per-entry consumer",
            report.get("consolidation entries/s") / report.get("naive per-entry consumer entries/s"),
            "≥ 10",
        ),
        (
            "consolidation / min(raw consume, raw COPY)",
            report.get("consolidation entries/s")
                / report.get("raw consume records/s").min(report.get("raw COPY rows/s")),
            "≥ 0.8",
        ),
        (
            "consolidation / raw consume + COPY at once",
            report.get("consolidation entries/s") / report.get("raw consume + COPY at once rows/s"),
            "(both ceilings sharing the machine)",
        ),
        (
            "consolidation / raw COPY of every row it writes",
            report.get("consolidation entries/s") / report.get("raw COPY of every row consolidation writes entries/s"),
            "(the store's writes alone)",
        ),
        (
            "batch ingest / raw producer",
            report.get("batch ingest entries/s") / report.get("raw producer records/s"),
            "≥ 0.8",
        ),
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

    eprintln!("1. the dataflow core, in memory");
    dataflow_core(&entries, &mut report).await;

    eprintln!("starting PostgreSQL (durable) and the broker");
    let pg = PgCluster::start_durable();
    let mut p = Pipeline::configure(Store::Postgres(pg.url()), &[]);
    p.launch(Role::Broker).await;
    let brokers = p.kafka.clone();
    let kafka = |c: &mut ClientConfig| {
        c.set("bootstrap.servers", &brokers).set("broker.address.family", "v4");
    };
    // The consolidator creates the topics; the producer must not create them with other counts.
    p.launch(Role::Consolidate).await;
    p.interrupt(Role::Consolidate).await;

    let (bench, broker, postgres) = (std::process::id(), p.pid(Role::Broker), pg.pid());
    let entries_n = args.entries as f64;

    eprintln!("2. raw producer");
    let cpu = CpuMeter::start(&[("broker", broker), ("client", bench)]);
    let encoded: Vec<(String, Vec<u8>)> = entries.iter().map(|e| (e.merchant_id.to_string(), e.encode())).collect();
    raw_produce(kafka, &encoded, &mut report).await;
    drop(encoded);
    cpu.report("raw producer", entries_n, &mut report);

    eprintln!("3. raw consumer");
    let cpu = CpuMeter::start(&[("broker", broker), ("client", bench)]);
    raw_consume(kafka, args.entries, &mut report);
    cpu.report("raw consume", entries_n, &mut report);

    eprintln!("4. consolidation (cashflow run consolidate)");
    let mut db = PgConnection::connect(&pg.url()).await.unwrap();
    let cpu = CpuMeter::start(&[("broker", broker), ("PostgreSQL", postgres)]);
    consolidation(&mut p, &mut db, &entries, cpu, &mut report).await;

    eprintln!("5. the naive design: a transaction per entry");
    naive(kafka, &mut db, args, &mut report).await;

    eprintln!("6. raw COPY into the store");
    let cpu = CpuMeter::start(&[("PostgreSQL", postgres), ("client", bench)]);
    raw_copy(&mut db, &entries, &mut report).await;
    cpu.report("raw COPY", entries_n, &mut report);
    let cpu = CpuMeter::start(&[("broker", broker), ("PostgreSQL", postgres), ("client", bench)]);
    raw_pipeline(kafka, &mut db, args.entries, &mut report).await;
    cpu.report("raw consume + COPY at once", entries_n, &mut report);
    let cpu = CpuMeter::start(&[("PostgreSQL", postgres), ("client", bench)]);
    raw_copy_written(&mut db, &entries, &mut report).await;
    cpu.report("raw COPY of every row consolidation writes", entries_n, &mut report);

    // Untimed: what phases 4 to 6 wrote is vacuumed and analyzed now, so that PostgreSQL's
    // autovacuum does not take the cores during the latency phases that follow.
    eprintln!("settling: VACUUM ANALYZE");
    sqlx::query("VACUUM ANALYZE").execute(&mut db).await.unwrap();

    eprintln!("7. raw producer latency at 2k/s");
    let cpu = CpuMeter::start(&[("broker", broker), ("PostgreSQL", postgres), ("client", bench)]);
    let sent = raw_produce_latency(&p, &entries, args.seconds, &mut report).await;
    cpu.report("raw producer at 2k/s", sent as f64, &mut report);
    drop(entries);

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
    if args.soak > 0.0 {
        eprintln!("11. soak: 1k entries/s for {} s", args.soak);
        soak(&p, args, &mut report).await;
    }
    p.stop().await;
    report
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
    let admin: AdminClient<DefaultClientContext> = cashflow_core::kafka::client_config(&config).create().unwrap();
    let topic = NewTopic::new(LATENCY_TOPIC, 6, TopicReplication::Fixed(1));
    for r in admin.create_topics(&[topic], &AdminOptions::new()).await.unwrap() {
        r.unwrap();
    }
    let ack_timeout = Duration::from_millis(config.services.ingest.ack_timeout_ms);
    let producer: FutureProducer = cashflow_core::kafka::producer_config(&config, ack_timeout).create().unwrap();
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

/// CPU time per item of processes over one phase, from /proc: where a stage's time goes.
struct CpuMeter {
    processes: Vec<(&'static str, u32, f64)>,
}

impl CpuMeter {
    fn start(processes: &[(&'static str, u32)]) -> CpuMeter {
        let mut meter = CpuMeter { processes: Vec::new() };
        for &(name, pid) in processes {
            meter.add(name, pid);
        }
        meter
    }

    fn add(&mut self, name: &'static str, pid: u32) {
        self.processes.push((name, pid, cpu_seconds(pid)));
    }

    /// Reports the CPU time per item (entry or request) of each process since the start.
    fn report(self, phase: &str, items: f64, report: &mut Report) {
        for (name, pid, start) in self.processes {
            let micros = (cpu_seconds(pid) - start) / items * 1e6;
            report.add(&format!("{phase}: CPU per item, {name}"), micros, "µs");
        }
    }
}

/// CPU seconds (user and system) of a process, the children it reaped and its live descendants,
/// except those of this process: the stages it launched are measured as themselves, and this
/// process as the client (with `cashflow loadgen`, a child it reaps).
fn cpu_seconds(root: u32) -> f64 {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
    // (pid, parent, ticks): fields 4 and 14-17 of /proc/<pid>/stat, counted after the `(comm)`.
    let procs: Vec<(u32, u32, u64)> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let ticks = [11, 12, 13, 14].iter().filter_map(|&i| fields.get(i)?.parse::<u64>().ok()).sum();
            Some((pid, fields.get(1)?.parse().ok()?, ticks))
        })
        .collect();
    let (mut todo, mut total) = (vec![root], 0);
    while let Some(pid) = todo.pop() {
        for &(p, parent, ticks) in &procs {
            if p == pid {
                total += ticks;
            } else if parent == pid && pid != std::process::id() {
                todo.push(p);
            }
        }
    }
    total as f64 / ticks
}

/// Sum of the stored next offsets of a group.
async fn progress(db: &mut PgConnection, group: &str) -> i64 {
    sqlx::query("SELECT COALESCE(SUM(next_offset), 0)::BIGINT FROM consumer_progress WHERE consumer_group = $1")
        .bind(group)
        .fetch_one(&mut *db)
        .await
        .unwrap()
        .get(0)
}

async fn consolidation(
    p: &mut Pipeline,
    db: &mut PgConnection,
    entries: &[Lancamento],
    mut cpu: CpuMeter,
    report: &mut Report,
) {
    let want = entries.len() as i64;
    let group = "cashflow-consolidate";
    p.launch(Role::Consolidate).await;
    cpu.add("consolidator", p.pid(Role::Consolidate));
    let deadline = Instant::now() + Duration::from_secs(1800);
    let mut first: Option<(Instant, i64)> = None;
    loop {
        let done = progress(db, group).await;
        if done > 0 && first.is_none() {
            first = Some((Instant::now(), done));
        }
        if done >= want {
            break;
        }
        assert!(Instant::now() < deadline, "consolidated {done} of {want} in 30 min");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (t0, at_first) = first.unwrap();
    let rate = (want - at_first) as f64 / t0.elapsed().as_secs_f64();
    report.add("consolidation entries/s", rate, "entries/s");
    cpu.report("consolidation", want as f64, report);
    let rss = p.api.metrics(&p.stages[&Role::Consolidate]).await.must("process_resident_memory_bytes");
    report.add("consolidator RSS after the load", rss / 1e6, "MB");
    p.interrupt(Role::Consolidate).await;

    // Every entry counted once, with its amount.
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
        (want, cents(Tipo::Credito), cents(Tipo::Debito)),
        "balances differ from the data set"
    );
    let index: i64 =
        sqlx::query("SELECT pg_relation_size('lancamentos_pkey')::BIGINT").fetch_one(&mut *db).await.unwrap().get(0);
    report.add("dedup: store index bytes per entry (none in memory)", index as f64 / want as f64, "bytes");
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

async fn raw_copy(db: &mut PgConnection, entries: &[Lancamento], report: &mut Report) {
    let started = Instant::now();
    copy_entries(db, "copy_lancamentos", entries).await;
    report.add("raw COPY rows/s", entries.len() as f64 / started.elapsed().as_secs_f64(), "rows/s");
}

/// `entries` COPY'd into a new table `table` shaped like the entries table.
async fn copy_entries(db: &mut PgConnection, table: &str, entries: &[Lancamento]) {
    let mut copy = copy_into(db, table).await;
    for (n, chunk) in entries.chunks(10_000).enumerate() {
        let mut buf = String::with_capacity(chunk.len() * 200);
        for (i, e) in chunk.iter().enumerate() {
            copy_row(&mut buf, e, n * 10_000 + i);
        }
        copy.send(buf.as_bytes()).await.unwrap();
    }
    assert_eq!(copy.finish().await.unwrap(), entries.len() as u64);
}

/// The store's raw write rate for every row consolidation writes, per entry: the entries, their
/// days' totals and their (day, category) totals, each `COPY`'d into a new table shaped like ours.
/// The totals are summed and formatted before the clock starts: this times the writes alone.
async fn raw_copy_written(db: &mut PgConnection, entries: &[Lancamento], report: &mut Report) {
    use std::fmt::Write as _;
    let now = chrono::Utc::now().to_rfc3339();
    let mut categories: HashMap<(&str, BusinessDate, &str), [i64; 3]> = HashMap::new();
    for e in entries {
        let cents = e.signed_cents();
        let key = (e.merchant_id.as_str(), e.data, e.categoria.as_deref().unwrap_or_default());
        let t = categories.entry(key).or_default();
        *t = [t[0] + cents.max(0), t[1] + (-cents).max(0), t[2] + 1];
    }
    // A day's totals are the sum of its categories'.
    let mut days: HashMap<(&str, BusinessDate), [i64; 3]> = HashMap::new();
    for ((m, d, _), [c, b, n]) in &categories {
        let t = days.entry((*m, *d)).or_default();
        *t = [t[0] + c, t[1] + b, t[2] + n];
    }
    let (mut day_rows, mut category_rows) = (String::new(), String::new());
    for ((m, d), [c, b, n]) in &days {
        let _ = writeln!(day_rows, "{m}\t{d}\t{c}\t{b}\t{n}\t{now}");
    }
    for ((m, d, k), [c, b, n]) in &categories {
        let _ = writeln!(category_rows, "{m}\t{d}\t{k}\t{c}\t{b}\t{n}\t{now}");
    }
    for (table, like) in [("written_diario", "consolidado_diario"), ("written_categoria", "consolidado_categoria")] {
        let sql = format!("CREATE TABLE {table} (LIKE {like} INCLUDING ALL)");
        sqlx::query(&sql).execute(&mut *db).await.unwrap();
    }

    let started = Instant::now();
    copy_entries(db, "written_lancamentos", entries).await;
    for (table, columns, rows, want) in [
        ("written_diario", "merchant_id, data", &day_rows, days.len()),
        ("written_categoria", "merchant_id, data, categoria", &category_rows, categories.len()),
    ] {
        let sql =
            format!("COPY {table} ({columns}, creditos_cents, debitos_cents, quantidade, atualizado_em) FROM STDIN");
        let mut copy = db.copy_in_raw(&sql).await.unwrap();
        for chunk in rows.as_bytes().chunks(1 << 20) {
            copy.send(chunk).await.unwrap();
        }
        assert_eq!(copy.finish().await.unwrap(), want as u64);
    }
    let rate = entries.len() as f64 / started.elapsed().as_secs_f64();
    report.add("raw COPY of every row consolidation writes entries/s", rate, "entries/s");
}

/// The two ceilings at once, on the same two cores: the topic read with rdkafka (one thread) and
/// its records decoded and COPYed into the store (another), with no other processing.
async fn raw_pipeline(kafka: impl Fn(&mut ClientConfig), db: &mut PgConnection, want: u64, report: &mut Report) {
    let consumer = subscribed(kafka, "bench-raw-pipeline");
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Vec<u8>>>(8);
    let reader = std::thread::spawn(move || {
        let mut chunk = Vec::with_capacity(10_000);
        let started = drain(&consumer, want, |payload| {
            chunk.push(payload.to_vec());
            if chunk.len() == 10_000 {
                tx.blocking_send(std::mem::take(&mut chunk)).unwrap();
            }
        });
        if !chunk.is_empty() {
            tx.blocking_send(chunk).unwrap();
        }
        started
    });
    let mut copy = copy_into(db, "pipeline_lancamentos").await;
    let mut written = 0;
    while let Some(chunk) = rx.recv().await {
        let mut buf = String::with_capacity(chunk.len() * 200);
        for payload in &chunk {
            copy_row(&mut buf, &Lancamento::decode(payload).unwrap(), written);
            written += 1;
        }
        copy.send(buf.as_bytes()).await.unwrap();
    }
    let rows = copy.finish().await.unwrap();
    let started = reader.join().unwrap();
    assert_eq!(rows, want, "raw pipeline wrote {rows} of {want}");
    let elapsed = started.unwrap().elapsed().as_secs_f64();
    report.add("raw consume + COPY at once rows/s", rows as f64 / elapsed, "rows/s");
}

/// A COPY into a new table shaped like the entries table, indexes included.
async fn copy_into<'c>(db: &'c mut PgConnection, table: &str) -> sqlx::postgres::PgCopyIn<&'c mut PgConnection> {
    sqlx::query(&format!("CREATE TABLE {table} (LIKE lancamentos INCLUDING ALL)")).execute(&mut *db).await.unwrap();
    db.copy_in_raw(&format!(
        "COPY {table} (id, merchant_id, tipo, valor_cents, data, descricao, categoria, criado_em, \
         origin_topic, origin_partition, origin_offset, consolidado_em) FROM STDIN"
    ))
    .await
    .unwrap()
}

/// One entry as a line of COPY's text format.
fn copy_row(buf: &mut String, e: &Lancamento, offset: usize) {
    use std::fmt::Write as _;
    let r = e.to_record();
    let _ = writeln!(
        buf,
        "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{TOPIC}\t{}\t{offset}\t{}",
        r.id,
        r.merchant_id,
        r.tipo.as_str(),
        r.valor_cents,
        r.data,
        r.descricao,
        r.categoria.as_deref().unwrap_or("\\N"),
        r.criado_em,
        offset % 6,
        r.criado_em,
    );
}

/// Requests of `op` that failed, by any status, in a loadgen summary (NaN if it has no such op).
fn errors(summary: &Value, op: &str) -> f64 {
    let errors = summary["operations"][op]["errors"].as_object();
    errors.map_or(f64::NAN, |e| e.values().filter_map(Value::as_f64).fold(0.0, |a, b| a + b))
}

/// `cashflow loadgen ... --json`.
fn loadgen(p: &Pipeline, args: &Args, extra: &[&str]) -> Value {
    let out = p
        .cashflow()
        .args(["loadgen", "--target", &p.api.base, "--duration", &args.seconds.to_string(), "--json"])
        .args(["--merchants", "50", "--days", &args.days.to_string()])
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "loadgen {extra:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Batches, single POSTs at 2k/s and queries at 5k/s through `cashflow loadgen`, each with the CPU
/// time per request of `processes` (the loadgen, a child of this process, counts once reaped; the
/// gateway's includes the loadgen's 50 password logins, an argon2 hash each).
fn http_load(p: &Pipeline, args: &Args, processes: &[(&'static str, u32)], report: &mut Report) {
    let op = |v: &Value, name: &str, field: &str| v["operations"][name][field].as_f64().unwrap_or(f64::NAN);
    let batch = loadgen(p, args, &["--connections", "8", "--mix", "batch=1", "--batch-size", "1000"]);
    report.add("batch ingest entries/s", batch["entries_per_second"].as_f64().unwrap(), "entries/s");
    report.add("batch ingest p99 (1,000 entries)", op(&batch, "batch", "p99_ms"), "ms");
    report.add("batch ingest errors", errors(&batch, "batch"), "requests");

    let cpu = CpuMeter::start(processes);
    let single = loadgen(p, args, &["--rate", "2000", "--mix", "ingest=1"]);
    cpu.report("single POST at 2k/s", op(&single, "ingest", "requests"), report);
    report.add("single POST at 2k/s: achieved", op(&single, "ingest", "per_second"), "requests/s");
    for (q, name) in [("p50_ms", "single POST at 2k/s p50"), ("p99_ms", "single POST at 2k/s p99")] {
        report.add(name, op(&single, "ingest", q), "ms");
    }
    report.add("single POST at 2k/s errors", errors(&single, "ingest"), "requests");
}

/// Balance queries over 31 days at 5k/s through `cashflow loadgen` as phase `name`, with the CPU
/// time per request of `processes`, and how many of them the gateway answered from memory.
async fn queries(p: &Pipeline, args: &Args, processes: &[(&'static str, u32)], name: &str, report: &mut Report) {
    let op = |v: &Value, field: &str| v["operations"]["query"][field].as_f64().unwrap_or(f64::NAN);
    let lookups = |m: &cashflow_tests::Metrics, outcome: &str| {
        m.must(&format!("cashflow_query_balance_cache_lookups_total{{outcome=\"{outcome}\"}}"))
    };
    let before = p.api.metrics(&p.api.base).await;
    let cpu = CpuMeter::start(processes);
    let query = loadgen(p, args, &["--rate", "5000", "--mix", "query=1"]);
    cpu.report(name, op(&query, "requests"), report);
    let after = p.api.metrics(&p.api.base).await;
    report.add(&format!("{name}: achieved"), op(&query, "per_second"), "requests/s");
    report.add(&format!("{name} p50"), op(&query, "p50_ms"), "ms");
    report.add(&format!("{name} p99"), op(&query, "p99_ms"), "ms");
    report.add(&format!("{name} errors"), errors(&query, "query"), "requests");
    let hits = lookups(&after, "hit") - lookups(&before, "hit");
    let misses = lookups(&after, "miss") - lookups(&before, "miss");
    report.add(&format!("{name}: answered from memory"), 100.0 * hits / (hits + misses).max(1.0), "%");
}

/// Waits until the consolidator's stored progress reaches the topic's end.
async fn wait_consolidated(db: &mut PgConnection, kafka: impl Fn(&mut ClientConfig), timeout: Duration) {
    let mut c = ClientConfig::new();
    kafka(&mut c);
    let consumer: BaseConsumer = c.create().unwrap();
    let meta = consumer.fetch_metadata(Some(TOPIC), Duration::from_secs(10)).unwrap();
    let end: i64 = meta.topics()[0]
        .partitions()
        .iter()
        .map(|p| consumer.fetch_watermarks(TOPIC, p.id(), Duration::from_secs(10)).unwrap().1)
        .sum();
    let deadline = Instant::now() + timeout;
    while progress(db, "cashflow-consolidate").await < end {
        assert!(Instant::now() < deadline, "the consolidator did not catch up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// POSTs 1,000 entries per second; every 10th is followed by a balance read with `aguardar`
/// (read-your-writes), timed from the POST's start to the answer that shows it.
async fn freshness(p: &Pipeline, args: &Args, report: &mut Report) {
    let password = "bench password 1234";
    let mut tokens = Vec::new();
    for n in 1..=10 {
        p.add_user(&format!("loadgen-{n}"), &format!("fresh-{n}"), password);
        tokens.push(p.api.token(&format!("fresh-{n}"), password).await);
    }
    let tokens = Arc::new(tokens);
    let hist = Arc::new(std::sync::Mutex::new(hdrhistogram::Histogram::<u64>::new(3).unwrap()));
    let failures = Arc::new(AtomicI64::new(0));
    let today = chrono::Utc::now().date_naive().to_string();
    let n = (args.seconds * 1000.0) as u64;
    let started = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        tokio::time::sleep_until(started + Duration::from_micros(i * 1000)).await;
        let (api, tokens, hist, failures, today) =
            (p.api.clone(), Arc::clone(&tokens), Arc::clone(&hist), Arc::clone(&failures), today.clone());
        tasks.spawn(async move {
            let token = &tokens[(i % 10) as usize];
            let at = Instant::now();
            let body = json!({"tipo": "credito", "valor": "1.00", "data": today, "descricao": "freshness"});
            let r = api.post_entry(token, &body, None).await;
            if r.status() != 202 {
                failures.fetch_add(1, Ordering::Relaxed);
                return;
            }
            if i % 10 != 0 {
                return;
            }
            let posicao = r.json::<Value>().await.unwrap()["posicao"].as_str().unwrap().to_owned();
            let url = format!("{}/v1/consolidado/diario?de={today}&ate={today}&aguardar={posicao}", api.base);
            let r = api.client.get(url).bearer_auth(token).send().await.unwrap();
            if r.status() != 200 || r.headers().contains_key("x-cashflow-stale") {
                failures.fetch_add(1, Ordering::Relaxed);
                return;
            }
            hist.lock().unwrap().record(at.elapsed().as_micros() as u64).unwrap();
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let h = hist.lock().unwrap();
    report.add("freshness at 1k/s p50 (POST to visible)", h.value_at_quantile(0.5) as f64 / 1000.0, "ms");
    report.add("freshness at 1k/s p99 (POST to visible)", h.value_at_quantile(0.99) as f64 / 1000.0, "ms");
    report.add("freshness probes", h.len() as f64, "probes");
    report.add("freshness failures (non-202, stale or error)", failures.load(Ordering::Relaxed) as f64, "requests");
}

/// Days of the soak's entries: with 50 merchants and 4 categories, 6,200 (merchant, day,
/// category) keys, all seen within the soak's first minute, so that what the RSS trend measures
/// after it is the cost of running, not the state that new keys add (a key's state is measured
/// in phase 1).
const SOAK_DAYS: u64 = 31;

/// Entries at 1k/s for `--soak` seconds while the consolidator's and the gateway's RSS are
/// sampled every 10 s.
async fn soak(p: &Pipeline, args: &Args, report: &mut Report) {
    let days = SOAK_DAYS.min(args.days).to_string();
    let mut load = p
        .cashflow()
        .args(["loadgen", "--target", &p.api.base, "--duration", &args.soak.to_string(), "--json"])
        .args(["--merchants", "50", "--days", &days, "--rate", "1000", "--mix", "ingest=1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let targets = [("consolidator", p.stages[&Role::Consolidate].clone()), ("gateway", p.api.base.clone())];
    let mut samples: Vec<Vec<(f64, f64)>> = vec![Vec::new(); targets.len()];
    let started = Instant::now();
    while load.try_wait().unwrap().is_none() {
        for (i, (_, base)) in targets.iter().enumerate() {
            let rss = p.api.metrics(base).await.must("process_resident_memory_bytes") / 1e6;
            samples[i].push((started.elapsed().as_secs_f64() / 60.0, rss));
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    let out = load.wait_with_output().unwrap();
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    report.add("soak: entries accepted", summary["entries_accepted"].as_f64().unwrap_or(f64::NAN), "entries");
    report.add("soak: errors", errors(&summary, "ingest"), "requests");
    for ((name, _), points) in targets.iter().zip(&samples) {
        let minute = |from: f64, to: f64| {
            let v: Vec<f64> = points.iter().filter(|(t, _)| (from..to).contains(t)).map(|p| p.1).collect();
            v.iter().sum::<f64>() / v.len() as f64
        };
        let end = points.last().map_or(0.0, |p| p.0);
        report.add(&format!("soak: {name} RSS, first minute"), minute(0.0, 1.0), "MB");
        report.add(&format!("soak: {name} RSS, last minute"), minute(end - 1.0, end + 1.0), "MB");
        let warm: Vec<(f64, f64)> = points.iter().copied().filter(|(t, _)| *t >= 1.0).collect();
        report.add(&format!("soak: {name} RSS trend after the first minute"), slope(&warm), "MB/min");
    }
}

/// The least-squares slope of `points`.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let (mx, my) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
    let cov: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let var: f64 = points.iter().map(|(x, _)| (x - mx) * (x - mx)).sum();
    cov / var
}
