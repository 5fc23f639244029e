//! The phases through HTTP: ingest and query load with `cashflow loadgen`, freshness, and the soak.

use super::*;

/// Requests of `op` that failed, by any status, in a loadgen summary (NaN if it has no such op).
pub(crate) fn errors(summary: &Value, op: &str) -> f64 {
    let errors = summary["operations"][op]["errors"].as_object();
    if errors.is_some_and(|e| !e.is_empty()) {
        eprintln!("loadgen {op} errors by status: {}", summary["operations"][op]["errors"]);
    }
    errors.map_or(f64::NAN, |e| e.values().filter_map(Value::as_f64).fold(0.0, |a, b| a + b))
}

/// `cashflow loadgen ... --json`.
pub(crate) fn loadgen(p: &Pipeline, args: &Args, extra: &[&str]) -> Value {
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
pub(crate) fn http_load(p: &Pipeline, args: &Args, processes: &[(&'static str, u32)], report: &mut Report) {
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
pub(crate) async fn queries(
    p: &Pipeline,
    args: &Args,
    processes: &[(&'static str, u32)],
    name: &str,
    report: &mut Report,
) {
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
    let refused = |m: &cashflow_tests::Metrics| m.series("cashflow_http_connections_refused_total").join(", ");
    if refused(&before) != refused(&after) {
        eprintln!("the gateway refused connections: {} before, {} after", refused(&before), refused(&after));
    }
    let hits = lookups(&after, "hit") - lookups(&before, "hit");
    let misses = lookups(&after, "miss") - lookups(&before, "miss");
    report.add(&format!("{name}: answered from memory"), 100.0 * hits / (hits + misses).max(1.0), "%");
}

/// Waits until the consolidator's stored progress reaches the topic's end.
pub(crate) async fn wait_consolidated(db: &mut PgConnection, kafka: impl Fn(&mut ClientConfig), timeout: Duration) {
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
pub(crate) async fn freshness(p: &Pipeline, args: &Args, report: &mut Report) {
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
pub(crate) const SOAK_DAYS: u64 = 31;

/// Entries at 1k/s for `--soak` seconds while the consolidator's and the gateway's RSS are
/// sampled every 10 s.
pub(crate) async fn soak(p: &Pipeline, args: &Args, report: &mut Report) {
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
pub(crate) fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let (mx, my) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
    let cov: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let var: f64 = points.iter().map(|(x, _)| (x - mx) * (x - mx)).sum();
    cov / var
}
