//! `cashflow loadgen`: load on a running gateway (loopback only), as clients make it. It creates
//! a login per merchant, takes tokens with the password grant, then sends a mix of single entries,
//! batches and 31-day balance queries, open-loop at a rate or closed-loop over N connections,
//! bounded by a count and a duration. It reports throughput, latency percentiles per operation
//! and errors by status.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cashflow_core::Money;
use cashflow_core::config::PipelineConfig;
use cashflow_http::{SCOPE_READ, SCOPE_WRITE};
use chrono::{Days, NaiveDate};
use clap::Args;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::Common;
use crate::app::connect_store;

const LONGEST_RUN_SECS: f64 = 3_600.0;
const CATEGORIES: [&str; 4] = ["vendas", "insumos", "aluguel", "servicos"];

#[derive(Debug, Args)]
pub struct LoadgenArgs {
    /// The gateway's base URL, on this machine only (default: services.gateway.listen).
    #[arg(long)]
    target: Option<String>,
    /// Open loop: start this many requests per second, on schedule, however slow the answers.
    #[arg(long)]
    rate: Option<u32>,
    /// Closed loop: this many connections, each sending its next request when its last is
    /// answered (the default, with 16). With --rate: the most requests in flight (default 512,
    /// or a third of the target's `http.max_connections_per_address` if less); beyond it,
    /// requests wait, and their wait counts in their latency.
    #[arg(long)]
    connections: Option<u32>,
    /// Stop after this many seconds (at most 3600).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Stop after this many requests.
    #[arg(long, default_value_t = 1_000_000)]
    requests: u64,
    /// Weights of the operations: single entries, batches, balance queries.
    #[arg(long, default_value = "ingest=70,batch=5,query=25")]
    mix: Mix,
    /// Entries per batch (1 to 1000).
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// Merchants to spread the load over; a login `loadgen-<n>` is created for each.
    #[arg(long, default_value_t = 50)]
    merchants: u32,
    /// Business dates are drawn from this many days up to today.
    #[arg(long, default_value_t = 365)]
    days: u32,
    /// Print the summary as JSON on standard output.
    #[arg(long)]
    json: bool,
}

/// Weights of the three operations.
#[derive(Clone, Copy, Debug)]
pub struct Mix {
    ingest: u32,
    batch: u32,
    query: u32,
}

impl FromStr for Mix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut mix = Mix { ingest: 0, batch: 0, query: 0 };
        for part in s.split(',') {
            let (name, weight) = part.split_once('=').ok_or_else(|| format!("{part:?} is not name=weight"))?;
            let weight: u32 = weight.trim().parse().map_err(|_| format!("{weight:?} is not a whole number"))?;
            match name.trim() {
                "ingest" => mix.ingest = weight,
                "batch" => mix.batch = weight,
                "query" => mix.query = weight,
                other => return Err(format!("unknown operation {other:?}; use ingest, batch, query")),
            }
        }
        if mix.ingest + mix.batch + mix.query == 0 { Err("every weight is 0".into()) } else { Ok(mix) }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Ingest,
    Batch,
    Query,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Ingest => "ingest",
            Op::Batch => "batch",
            Op::Query => "query",
        }
    }
}

impl Mix {
    fn pick(&self, rng: &mut impl Rng) -> Op {
        let n = rng.gen_range(0..self.ingest + self.batch + self.query);
        if n < self.ingest {
            Op::Ingest
        } else if n < self.ingest + self.batch {
            Op::Batch
        } else {
            Op::Query
        }
    }
}

/// One operation's results.
struct OpStats {
    latency_us: Histogram<u64>,
    statuses: BTreeMap<String, u64>,
}

#[derive(Default)]
struct Stats {
    ops: BTreeMap<Op, OpStats>,
    entries_accepted: u64,
}

impl Stats {
    fn record(&mut self, op: Op, latency: Duration, status: &str, accepted: u64) {
        let s = self.ops.entry(op).or_insert_with(|| OpStats {
            latency_us: Histogram::new_with_bounds(1, 120_000_000, 3)
                .expect("1 µs to 120 s at 3 digits are valid bounds"),
            statuses: BTreeMap::new(),
        });
        s.latency_us.saturating_record(latency.as_micros() as u64);
        *s.statuses.entry(status.to_owned()).or_default() += 1;
        self.entries_accepted += accepted;
    }
}

/// What every request needs.
struct Load {
    http: reqwest::Client,
    base: String,
    tokens: Vec<String>,
    mix: Mix,
    batch_size: usize,
    days: u32,
    today: NaiveDate,
}

impl Load {
    /// Sends one request; returns its status ("connect", "timeout" or "transport" when there is no answer) and the
    /// entries it got accepted.
    async fn send(&self, op: Op) -> (String, u64) {
        let (token, request) = {
            let mut rng = rand::thread_rng();
            let token = &self.tokens[rng.gen_range(0..self.tokens.len())];
            let request = match op {
                Op::Ingest => self.http.post(format!("{}/v1/lancamentos", self.base)).json(&self.entry(&mut rng)),
                Op::Batch => {
                    let lancamentos: Vec<Entry> = (0..self.batch_size).map(|_| self.entry(&mut rng)).collect();
                    self.http.post(format!("{}/v1/lancamentos/lote", self.base)).json(&Lote { lancamentos })
                }
                Op::Query => {
                    let de = self.date(&mut rng);
                    let ate = de.checked_add_days(Days::new(30)).unwrap_or(de);
                    self.http.get(format!("{}/v1/consolidado/diario?de={de}&ate={ate}", self.base))
                }
            };
            (token, request)
        };
        // A failure without an answer is counted by what failed: the connection ("connect":
        // refused), the wait ("timeout"), or anything else ("transport": e.g. closed before the
        // whole answer came). The whole answer is read, as a client reads it: its time counts,
        // and the connection goes back to the pool instead of being closed with a body unread.
        let answer = match request.bearer_auth(token).send().await {
            Ok(r) => {
                let status = r.status();
                r.bytes().await.map(|body| (status, body))
            }
            Err(e) => Err(e),
        };
        match answer {
            Err(e) if e.is_connect() => ("connect".to_owned(), 0),
            Err(e) if e.is_timeout() => ("timeout".to_owned(), 0),
            Err(_) => ("transport".to_owned(), 0),
            Ok((status, body)) => {
                let accepted = match op {
                    Op::Ingest => u64::from(status == reqwest::StatusCode::ACCEPTED),
                    Op::Batch if status.is_success() => {
                        serde_json::from_slice::<Aceitos>(&body).map_or(0, |a| a.aceitos)
                    }
                    Op::Batch | Op::Query => 0,
                };
                (status.as_u16().to_string(), accepted)
            }
        }
    }

    fn date(&self, rng: &mut impl Rng) -> NaiveDate {
        let back = rng.gen_range(0..self.days.max(1));
        self.today.checked_sub_days(Days::new(u64::from(back))).unwrap_or(self.today)
    }

    fn entry(&self, rng: &mut impl Rng) -> Entry {
        Entry {
            tipo: if rng.gen_bool(0.6) { "credito" } else { "debito" },
            valor: Money::from_cents(rng.gen_range(1..1_000_000)),
            data: self.date(rng),
            descricao: "loadgen",
            categoria: CATEGORIES[rng.gen_range(0..CATEGORIES.len())],
        }
    }
}

/// A generated entry, as a client posts it. Typed rather than a `Value`: the load generator
/// shares the machine it measures, so it builds 1,000-entry batches without a map per entry.
#[derive(Serialize)]
struct Entry {
    tipo: &'static str,
    valor: Money,
    data: NaiveDate,
    descricao: &'static str,
    categoria: &'static str,
}

#[derive(Serialize)]
struct Lote {
    lancamentos: Vec<Entry>,
}

/// The one figure read from a batch's answer; the per-item results are skipped, not built.
#[derive(Deserialize)]
struct Aceitos {
    aceitos: u64,
}

pub async fn run(args: LoadgenArgs, config: PipelineConfig, common: &Common) -> Result<()> {
    if !(args.duration > 0.0 && args.duration <= LONGEST_RUN_SECS) {
        bail!("--duration must be more than 0 and at most {LONGEST_RUN_SECS} seconds");
    }
    if !(1..=1000).contains(&args.batch_size) {
        bail!("--batch-size must be 1 to 1000");
    }
    if args.merchants == 0 || args.rate == Some(0) || args.connections == Some(0) {
        bail!("--merchants, --rate and --connections must be at least 1");
    }
    let base = args.target.clone().unwrap_or_else(|| format!("http://{}", config.services.gateway.listen));
    check_loopback(&base)?;
    // This one address may hold at most `http.max_connections_per_address` connections of the
    // target, and the client opens one more whenever none is idle: with requests in flight and
    // idle connections each under a third of the cap, connections still closing have the rest.
    let per_address = u32::try_from(config.http.max_connections_per_address).unwrap_or(u32::MAX);
    let capped = |connections: u32| connections.min(per_address / 3).max(1);
    let idle = capped(args.connections.unwrap_or(512));
    let http = reqwest::Client::builder().pool_max_idle_per_host(idle as usize).build()?;
    let tokens = logins(&http, &base, args.merchants, &config, common).await?;
    let load = Arc::new(Load {
        http,
        base,
        tokens,
        mix: args.mix,
        batch_size: args.batch_size,
        days: args.days,
        today: chrono::Utc::now().date_naive(),
    });

    let stats = Arc::new(Mutex::new(Stats::default()));
    let duration = Duration::from_secs_f64(args.duration);
    let progress = progress_bar(duration, args.json);
    let started = Instant::now();
    let deadline = started + duration;
    let ticker = {
        let (progress, stats) = (progress.clone(), Arc::clone(&stats));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let done: u64 = lock(&stats).ops.values().map(|s| s.latency_us.len()).sum();
                progress.set_position(started.elapsed().as_millis() as u64);
                progress.set_message(format!("{done} requests"));
            }
        })
    };
    let mode = match args.rate {
        Some(rate) => {
            let in_flight = args.connections.unwrap_or_else(|| capped(512));
            open_loop(&load, &stats, rate, in_flight, args.requests, deadline).await;
            format!("open loop, {rate} requests/s, at most {in_flight} in flight")
        }
        None => {
            let connections = args.connections.unwrap_or(16);
            closed_loop(&load, &stats, connections, args.requests, deadline).await;
            format!("closed loop, {connections} connections")
        }
    };
    let elapsed = started.elapsed().as_secs_f64();
    ticker.abort();
    progress.finish_and_clear();
    let stats = lock(&stats);
    let summary = summarize(&stats, elapsed, &mode);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_table(&summary);
    }
    Ok(())
}

fn lock(stats: &Mutex<Stats>) -> std::sync::MutexGuard<'_, Stats> {
    stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Only this machine may be loaded.
fn check_loopback(base: &str) -> Result<()> {
    let url = reqwest::Url::parse(base).with_context(|| format!("--target {base:?} is not a URL"))?;
    let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        bail!("--target {base:?} is not on this machine: loadgen loads loopback addresses only");
    }
    Ok(())
}

/// Creates (or resets) a login per merchant, all with one fresh password, and takes a token for
/// each with the password grant.
async fn logins(
    http: &reqwest::Client,
    base: &str,
    merchants: u32,
    config: &PipelineConfig,
    common: &Common,
) -> Result<Vec<String>> {
    use base64::Engine as _;
    let password = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 24]>());
    let hash = cashflow_auth::hash_password(password.clone())
        .await
        .map_err(|e| anyhow::anyhow!("cannot hash the password: {e}"))?;
    let store = connect_store(config, common).await?;
    let names: Vec<String> = (1..=merchants).map(|n| format!("loadgen-{n}")).collect();
    for name in &names {
        let user = cashflow_sinks::User {
            username: name.clone(),
            merchant_id: Some(name.clone()),
            password_hash: hash.clone(),
            scopes: vec![SCOPE_WRITE.to_owned(), SCOPE_READ.to_owned()],
        };
        store.upsert_user(&user).await?;
    }
    store.close().await;
    let mut tokens = Vec::with_capacity(names.len());
    for name in &names {
        tokens.push(token(http, base, name, &password).await?);
    }
    Ok(tokens)
}

/// A token by the password grant, waiting out the login rate limit when it answers 429.
async fn token(http: &reqwest::Client, base: &str, username: &str, password: &str) -> Result<String> {
    let body = json!({"grant_type": "password", "username": username, "password": password});
    for _ in 0..10 {
        let r = http
            .post(format!("{base}/auth/token"))
            .json(&body)
            .send()
            .await
            .with_context(|| format!("{base} does not answer"))?;
        if r.status() == reqwest::StatusCode::TOO_MANY_REQUESTS {
            let wait = r.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(1);
            tokio::time::sleep(Duration::from_secs(wait)).await;
            continue;
        }
        let status = r.status();
        let answer: Value = r.json().await.unwrap_or_default();
        return match answer["access_token"].as_str() {
            Some(t) if status.is_success() => Ok(t.to_owned()),
            _ => bail!("no token for {username}: {status} {answer}"),
        };
    }
    bail!("no token for {username}: still rate-limited after 10 tries")
}

/// Starts request i at `started + i / rate`; latency counts from that time, so a slow answer
/// cannot hide the requests that should have been sent meanwhile (nor can the cap on requests in
/// flight, which only delays them).
async fn open_loop(
    load: &Arc<Load>,
    stats: &Arc<Mutex<Stats>>,
    rate: u32,
    in_flight: u32,
    requests: u64,
    deadline: Instant,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(in_flight as usize));
    let mut schedule = pace(Duration::from_secs_f64(1.0 / f64::from(rate)), requests, deadline);
    let mut tasks = tokio::task::JoinSet::new();
    while let Some(due) = schedule.recv().await {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else { break };
        let (load, stats) = (Arc::clone(load), Arc::clone(stats));
        tasks.spawn(async move {
            let _slot = slot;
            let op = load.mix.pick(&mut rand::thread_rng());
            let (status, accepted) = load.send(op).await;
            lock(&stats).record(op, due.elapsed(), &status, accepted);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

/// The due time of each request, `interval` apart from now until `deadline`, each sent when it
/// comes. A thread of its own sleeps to each one: the OS wakes it within tens of microseconds,
/// where the runtime's timer ticks by the millisecond (which would send requests in bursts, up
/// to a millisecond late, and count that against the gateway).
fn pace(interval: Duration, requests: u64, deadline: Instant) -> tokio::sync::mpsc::UnboundedReceiver<Instant> {
    let (schedule, due_times) = tokio::sync::mpsc::unbounded_channel();
    let (started, deadline) = (std::time::Instant::now(), deadline.into_std());
    std::thread::spawn(move || {
        for i in 0..requests {
            let due = started + interval.mul_f64(i as f64);
            if due >= deadline {
                break;
            }
            std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
            if schedule.send(Instant::from_std(due)).is_err() {
                break;
            }
        }
    });
    due_times
}

async fn closed_loop(load: &Arc<Load>, stats: &Arc<Mutex<Stats>>, connections: u32, requests: u64, deadline: Instant) {
    let sent = Arc::new(AtomicU64::new(0));
    let workers = (0..connections).map(|_| {
        let (load, stats, sent) = (Arc::clone(load), Arc::clone(stats), Arc::clone(&sent));
        tokio::spawn(async move {
            while Instant::now() < deadline && sent.fetch_add(1, Ordering::Relaxed) < requests {
                let op = load.mix.pick(&mut rand::thread_rng());
                let at = Instant::now();
                let (status, accepted) = load.send(op).await;
                lock(&stats).record(op, at.elapsed(), &status, accepted);
            }
        })
    });
    futures::future::join_all(workers).await;
}

fn progress_bar(duration: Duration, hidden: bool) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(duration.as_millis() as u64);
    let style = ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {percent}% {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

fn summarize(stats: &Stats, elapsed: f64, mode: &str) -> Value {
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let ops: serde_json::Map<String, Value> = stats
        .ops
        .iter()
        .map(|(op, s)| {
            let h = &s.latency_us;
            let ok: u64 = s.statuses.iter().filter(|(k, _)| k.starts_with('2')).map(|(_, n)| n).sum();
            let errors: BTreeMap<&String, &u64> = s.statuses.iter().filter(|(k, _)| !k.starts_with('2')).collect();
            let summary = json!({
                "requests": h.len(),
                "ok": ok,
                "per_second": h.len() as f64 / elapsed,
                "p50_ms": ms(h, 0.5), "p90_ms": ms(h, 0.9), "p99_ms": ms(h, 0.99), "p999_ms": ms(h, 0.999),
                "max_ms": h.max() as f64 / 1000.0,
                "errors": errors,
            });
            (op.name().to_owned(), summary)
        })
        .collect();
    json!({
        "mode": mode,
        "seconds": elapsed,
        "entries_accepted": stats.entries_accepted,
        "entries_per_second": stats.entries_accepted as f64 / elapsed,
        "operations": ops,
    })
}

fn print_table(summary: &Value) {
    println!(
        "{} for {:.1} s: {} entries accepted ({:.0}/s)",
        summary["mode"].as_str().unwrap_or_default(),
        summary["seconds"].as_f64().unwrap_or_default(),
        summary["entries_accepted"],
        summary["entries_per_second"].as_f64().unwrap_or_default()
    );
    println!(
        "{:<8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}  errors",
        "op", "requests", "per s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
    );
    let Some(ops) = summary["operations"].as_object() else { return };
    for (name, s) in ops {
        let f = |k: &str| s[k].as_f64().unwrap_or_default();
        println!(
            "{name:<8} {:>9} {:>9.1} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}  {}",
            s["requests"].as_u64().unwrap_or_default(),
            f("per_second"),
            f("p50_ms"),
            f("p90_ms"),
            f("p99_ms"),
            f("p999_ms"),
            f("max_ms"),
            s["errors"]
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn mixes_parse_and_refuse_nonsense() {
        let mix: Mix = "ingest=1,query=3".parse().unwrap();
        assert_eq!((mix.ingest, mix.batch, mix.query), (1, 0, 3));
        assert!("ingest=0".parse::<Mix>().is_err());
        assert!("delete=1".parse::<Mix>().is_err());
        assert!("ingest".parse::<Mix>().is_err());
    }

    #[test]
    fn only_loopback_targets() {
        for ok in ["http://127.0.0.1:8080", "http://localhost:8080", "http://[::1]:8080"] {
            assert!(check_loopback(ok).is_ok(), "{ok}");
        }
        for refused in ["http://10.0.0.1:8080", "http://example.com", "not a url"] {
            assert!(check_loopback(refused).is_err(), "{refused}");
        }
    }
}
