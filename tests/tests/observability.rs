//! Observability against a real Prometheus: the shipped `prometheus.yml`, rules and their unit
//! tests pass `promtool`; with `cashflow up` under traffic (a poison record included) and the
//! shipped configuration scraping it, every dashboard panel and every rule returns data, the
//! dashboards and rules name only metrics the app exports, and the dead-letter alert goes off.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cashflow_tests::{Pipeline, Store, free_port};
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery staple";

/// The checkout's `observability/`, found at run time: a test binary reused from another
/// checkout's build must still read this one's files.
fn observability() -> PathBuf {
    Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo")).join("../observability")
}

/// A Prometheus tool (`prometheus`, `promtool`), from `$CASHFLOW_<NAME>` or the PATH; never skipped.
fn tool(name: &str) -> Command {
    let env = format!("CASHFLOW_{}", name.to_uppercase());
    let path = std::env::var(&env).unwrap_or_else(|_| name.to_owned());
    let probe = Command::new(&path).arg("--version").output();
    assert!(
        probe.is_ok_and(|o| o.status.success()),
        "{name} not found at {path:?}: install it (apt-get install prometheus; .ci/run does) or set {env}"
    );
    Command::new(path)
}

fn promtool(args: &[&str]) -> String {
    let out = tool("promtool").args(args).current_dir(observability().join("prometheus")).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn promtool_accepts_the_config_and_the_rules_and_the_alert_unit_tests_pass() {
    let shipped = std::fs::read_to_string(observability().join("prometheus/rules/cashflow.rules.yml")).unwrap();
    let declared = shipped
        .lines()
        .filter(|l| l.trim_start().starts_with("- record:") || l.trim_start().starts_with("- alert:"))
        .count();
    let found = format!("{declared} rules found");
    let config = promtool(&["check", "config", "prometheus.yml"]);
    assert!(config.contains("SUCCESS") && config.contains(&found), "{config}");
    let rules = promtool(&["check", "rules", "rules/cashflow.rules.yml"]);
    assert!(rules.contains(&format!("SUCCESS: {found}")), "{rules}");
    let tests = promtool(&["test", "rules", "tests/cashflow.test.yml"]);
    assert!(tests.contains("SUCCESS"), "{tests}");
}

/// A Prometheus with the shipped configuration and rules, scraping `target` every second (the
/// only change: 15 s intervals become 1 s), in a temp dir. Killed on drop.
struct Prometheus {
    child: Child,
    base: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let shipped = observability().join("prometheus");
        let config = std::fs::read_to_string(shipped.join("prometheus.yml")).unwrap();
        for interval in ["scrape_interval: 15s", "evaluation_interval: 15s"] {
            assert!(config.contains(interval), "prometheus.yml lacks {interval:?}");
        }
        let config = config.replace("interval: 15s", "interval: 1s");
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        std::fs::create_dir_all(dir.path().join("rules")).unwrap();
        std::fs::copy(shipped.join("rules/cashflow.rules.yml"), dir.path().join("rules/cashflow.rules.yml")).unwrap();
        std::fs::create_dir_all(dir.path().join("targets")).unwrap();
        let up = format!("- targets: [\"{target}\"]\n  labels: {{ service: up }}\n");
        std::fs::write(dir.path().join("targets/up.yml"), up).unwrap();
        std::fs::write(dir.path().join("targets/stages.yml"), "[]\n").unwrap();

        let listen = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = tool("prometheus")
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={listen}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let p = Prometheus { child, base: format!("http://{listen}"), http: reqwest::Client::new(), _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !p.http.get(format!("{}/-/ready", p.base)).send().await.is_ok_and(|r| r.status().is_success()) {
            assert!(Instant::now() < deadline, "prometheus not ready in 30 s:\n{}", p.log());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let r = self.http.get(format!("{}{path}", self.base)).query(query).send().await.unwrap();
        r.json().await.unwrap()
    }

    /// Evaluates `expr` now: Err when it does not parse or fails, else the result vector.
    async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let answer = self.get("/api/v1/query", &[("query", expr)]).await;
        if answer["status"] != "success" {
            return Err(format!("{}: {}", answer["errorType"], answer["error"]));
        }
        Ok(answer["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// Why `expr` shows nothing, if it does: an error, no series, or no finite value.
    async fn shows_nothing(&self, expr: &str) -> Option<String> {
        match self.query(expr).await {
            Err(e) => Some(format!("{expr}\n    error: {e}")),
            Ok(series) if series.is_empty() => Some(format!("{expr}\n    no data")),
            Ok(series) => {
                let finite = series
                    .iter()
                    .any(|s| s["value"][1].as_str().is_some_and(|v| v.parse::<f64>().is_ok_and(f64::is_finite)));
                (!finite).then(|| format!("{expr}\n    no finite value: {series:?}"))
            }
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every Prometheus panel's title and query expressions, with Grafana's `$__rate_interval` as
/// 1m and `$__range` as 5m. (The reports' SQL panels are tests/tests/relatorios.rs's.)
fn dashboard_queries() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for file in std::fs::read_dir(observability().join("grafana/dashboards")).unwrap() {
        let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(file.unwrap().path()).unwrap()).unwrap();
        for panel in dashboard["panels"].as_array().unwrap().iter().filter(|p| p["type"] != "row") {
            let prometheus =
                panel["targets"].as_array().unwrap().iter().filter(|t| t["datasource"]["type"] == "prometheus");
            for target in prometheus {
                let expr = target["expr"].as_str().unwrap().replace("$__rate_interval", "1m").replace("$__range", "5m");
                out.push((panel["title"].as_str().unwrap().to_owned(), expr));
            }
        }
    }
    out
}

/// The quantities an alert compares: `<quantity> <op> <number>`, joined by `and`.
fn quantities(alert: &str) -> Vec<String> {
    alert
        .split(" and ")
        .map(|atom| {
            let cut = atom.rfind(['>', '<', '=']).unwrap_or_else(|| panic!("no comparison in {atom:?}"));
            let lhs = atom[..cut].trim_end_matches(['>', '<', '=', '!']).trim();
            assert!(atom[cut + 1..].trim().parse::<f64>().is_ok(), "{atom:?} does not compare to a number");
            lhs.to_owned()
        })
        .collect()
}

/// Metric names in PromQL: our own and the process collector's (histogram suffixes dropped).
fn metric_names(expr: &str) -> BTreeSet<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.starts_with("cashflow_") || w.starts_with("process_"))
        .map(|w| {
            let w = ["_bucket", "_sum", "_count"].iter().fold(w, |w, s| w.strip_suffix(s).unwrap_or(w));
            w.to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_and_rule_returns_data_from_a_real_prometheus_and_the_dead_letter_alert_goes_off() {
    // One retry, 200 ms apart, so a poison record is parked within seconds.
    let edits = [("backoff_ms: [1000, 10000, 60000]", "backoff_ms: [200]"), ("max_attempts: 5", "max_attempts: 1")];
    let p = Pipeline::start_with(Store::Sqlite, &edits).await;
    let prometheus = Prometheus::start(p.api.base.trim_start_matches("http://")).await;

    let args = [
        "users",
        "add",
        "--merchant",
        "loja-obs",
        "--username",
        "obs",
        "--scopes",
        "lancamentos:write consolidado:read",
    ];
    assert!(p.cli(&args, &format!("{PASSWORD}\n")).status.success());
    let token = p.api.token("obs", PASSWORD).await;
    let http = &p.api.client;
    let today = chrono::Utc::now().date_naive();

    // Once Prometheus has a first scrape (so that the failures below count as increases), a poison
    // record on the source topic: retried once, then parked.
    let deadline = Instant::now() + Duration::from_secs(30);
    while prometheus.shows_nothing("up{job=\"cashflow-up\"} == 1").await.is_some() {
        assert!(Instant::now() < deadline, "prometheus did not scrape cashflow up in 30 s:\n{}", prometheus.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    p.produce("lancamentos", &[(None, "loja-obs", br#"{"v":1,"id":"not-a-uuid""#.to_vec())]).await;

    // Traffic, twice: once now, once just before the panels are read, so every rate has data.
    let traffic = || async {
        for i in 0..100 {
            let body = json!({"tipo": if i % 3 == 0 { "debito" } else { "credito" }, "valor": "12.34",
                              "data": today.to_string(), "descricao": "venda", "categoria": "vendas"});
            assert_eq!(p.api.post_entry(&token, &body, None).await.status(), 202);
        }
        let lote: Vec<Value> = (0..50)
            .map(|_| json!({"tipo": "credito", "valor": "1.00", "data": today.to_string(), "descricao": "lote"}))
            .collect();
        let r = http
            .post(format!("{}/v1/lancamentos/lote", p.api.base))
            .bearer_auth(&token)
            .json(&json!({ "lancamentos": lote }))
            .send()
            .await;
        assert_eq!(r.unwrap().status(), 200);
        let de = today - chrono::Days::new(30);
        for path in [
            format!("/v1/consolidado/diario?de={de}&ate={today}"),
            format!("/v1/consolidado/diario/{today}"),
            format!("/v1/consolidado/mensal?ano={}", today.format("%Y")),
            format!("/v1/consolidado/categorias?de={de}&ate={today}"),
        ] {
            for _ in 0..20 {
                let r = http.get(format!("{}{path}", p.api.base)).bearer_auth(&token).send().await.unwrap();
                assert_eq!(r.status(), 200, "{path}");
            }
        }
        // Rejected: a bad date, no token, a wrong password.
        let r = http.get(format!("{}/v1/consolidado/diario/2026-02-30", p.api.base)).bearer_auth(&token).send().await;
        assert_eq!(r.unwrap().status(), 422);
        assert_eq!(
            http.get(format!("{}/v1/consolidado/diario/{today}", p.api.base)).send().await.unwrap().status(),
            401
        );
        let wrong = json!({"grant_type": "password", "username": "obs", "password": "wrong password!"});
        assert_eq!(http.post(format!("{}/auth/token", p.api.base)).json(&wrong).send().await.unwrap().status(), 400);
    };
    traffic().await;

    // The dead-letter alert goes pending (then firing) once the poison record is parked.
    let deadline = Instant::now() + Duration::from_secs(90);
    let state = loop {
        let alerts = prometheus.get("/api/v1/alerts", &[]).await;
        let dlq = alerts["data"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["labels"]["alertname"] == "CashflowDeadLetters")
            .cloned();
        if let Some(alert) = dlq {
            break alert["state"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "CashflowDeadLetters not pending after 90 s: {alerts}\n{}", p.log_tail());
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert!(state == "pending" || state == "firing", "{state}");
    assert_eq!(p.dlq_list().len(), 1, "the poison record is parked");

    traffic().await;
    tokio::time::sleep(Duration::from_secs(4)).await; // a few scrapes and rule evaluations

    // Every panel shows data.
    let panels = dashboard_queries();
    assert!(panels.len() >= 20, "{} panel queries", panels.len());
    let mut nothing = Vec::new();
    for (title, expr) in &panels {
        if let Some(why) = prometheus.shows_nothing(expr).await {
            nothing.push(format!("panel {title:?}: {why}"));
        }
    }

    // Every rule loaded and evaluates without error; every recorded series and every alert's
    // quantities have data.
    let rules = prometheus.get("/api/v1/rules", &[]).await;
    let loaded: Vec<Value> = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .collect();
    let shipped = std::fs::read_to_string(observability().join("prometheus/rules/cashflow.rules.yml")).unwrap();
    let declared = shipped
        .lines()
        .filter(|l| l.trim_start().starts_with("- record:") || l.trim_start().starts_with("- alert:"))
        .count();
    assert_eq!(loaded.len(), declared, "rules loaded: {rules}");
    for rule in &loaded {
        let (name, expr) = (rule["name"].as_str().unwrap(), rule["query"].as_str().unwrap());
        assert_eq!(rule["health"], "ok", "rule {name}: {rule}");
        if rule["type"] == "recording" {
            if let Some(why) = prometheus.shows_nothing(name).await {
                nothing.push(format!("recording rule {name}: {why}"));
            }
        } else {
            prometheus.query(expr).await.unwrap_or_else(|e| panic!("alert {name}: {e}"));
            for quantity in quantities(expr) {
                if let Some(why) = prometheus.shows_nothing(&quantity).await {
                    nothing.push(format!("alert {name}: {why}"));
                }
            }
        }
    }
    assert!(nothing.is_empty(), "{} queries show nothing:\n{}", nothing.len(), nothing.join("\n"));

    // Dashboards and rules name only metrics the app exports.
    let exported = p.api.metrics(&p.api.base).await;
    let families: BTreeSet<&str> =
        exported.0.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
    let used: BTreeSet<String> =
        panels.iter().flat_map(|(_, e)| metric_names(e)).chain(metric_names(&shipped)).collect();
    let unknown: Vec<&String> = used.iter().filter(|n| !families.contains(n.as_str())).collect();
    assert!(unknown.is_empty(), "used but not exported: {unknown:?}");

    // The throughput panels show the traffic (printed for the record), and a sample of what the
    // app exports.
    for (title, expr) in panels.iter().filter(|(t, _)| t.ends_with("/s")) {
        let series = prometheus.query(expr).await.unwrap();
        let values: Vec<String> = series.iter().map(|s| format!("{} {}", s["metric"], s["value"][1])).collect();
        println!("{title}: {expr}\n    {}", values.join("; "));
    }
    for expr in [
        "sum(rate(cashflow_ingest_records_produced_total{outcome=\"acked\"}[1m]))",
        "sum(rate(cashflow_consolidate_records_committed_total[1m]))",
        "sum(rate(cashflow_retry_records_retried_total[1m]))",
        "sum(rate(cashflow_retry_records_parked_total[1m]))",
    ] {
        assert!(panels.iter().any(|(_, e)| e == expr), "no panel shows {expr}");
        let rate: f64 = prometheus.query(expr).await.unwrap()[0]["value"][1].as_str().unwrap().parse().unwrap();
        assert!(rate > 0.0, "{expr} = {rate} after the traffic");
    }
    for line in exported.0.lines().filter(|l| !l.starts_with('#') && !l.contains("_bucket")) {
        println!("{line}");
    }
}
