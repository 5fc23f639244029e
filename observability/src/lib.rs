//! Telemetry: every Prometheus metric is declared here, once, and named
//! `cashflow_<component>_<what>_<unit>[_total]`. Labels have few values; never a merchant id.
//! And a stage's life: [`restarting`] runs its sessions, down while it waits to start again.

mod epoch_step;
mod log_limit;
mod restart;

pub use epoch_step::EpochStep;
pub use log_limit::LogLimit;
pub use restart::{Backoff, restarting};

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder, exponential_buckets,
};

/// Every metric of every component.
pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub http_connections_open: IntGauge,
    pub http_connections_refused: IntCounterVec,
    pub http_connections_timed_out: IntCounterVec,
    pub ingest_produced: IntCounterVec,
    pub ingest_produce_duration: HistogramVec,
    pub consolidate_consumed: IntCounter,
    pub consolidate_committed: IntCounter,
    pub consolidate_duplicates: IntCounter,
    pub consolidate_failed: IntCounterVec,
    pub consolidate_epochs: IntCounter,
    pub consolidate_epoch_duration: Histogram,
    pub consolidate_epoch_steps: prometheus::CounterVec,
    pub consolidate_store_errors: IntCounter,
    pub retry_retried: IntCounterVec,
    pub retry_parked: IntCounterVec,
    pub retry_expired: IntCounterVec,
    pub retry_replayed: IntCounterVec,
    pub retry_held: IntGauge,
    pub retry_dlq_depth: IntGauge,
    pub gateway_upstream_up: IntGaugeVec,
    pub gateway_upstream_replicas_ready: IntGaugeVec,
    pub gateway_tokens_rejected: IntCounterVec,
    pub auth_tokens_issued: IntCounterVec,
    pub auth_token_requests_rejected: IntCounterVec,
    pub consolidate_freshness: Histogram,
    pub consolidate_lag: IntGaugeVec,
    pub sink_batch_rows: HistogramVec,
    pub sink_batch_duration: Histogram,
    pub ingest_broker_errors: IntCounter,
    pub pipeline_stage_up: IntGaugeVec,
    pub pipeline_info: IntGaugeVec,
    pub pipeline_partitions_owned: IntGaugeVec,
    pub query_cache_lookups: IntCounterVec,
    pub query_cache_days: IntGauge,
    pub reconcile_mismatches: IntGauge,
    pub reconcile_merchants: IntGauge,
    pub reconcile_last_run: IntGauge,
    pub reconcile_runs: IntCounterVec,
    pub smartmodule_records_in: IntCounterVec,
    pub smartmodule_records_out: IntCounterVec,
    pub smartmodule_records_failed: IntCounterVec,
    pub smartmodule_fuel: IntCounterVec,
    pub smartmodule_seconds: prometheus::CounterVec,
    pub smartmodule_restarts: IntCounterVec,
    names: Vec<String>,
}

/// Every metric is declared once, with a constant name, help and labels, when [`metrics`] is
/// first called; the tests declare them all.
const DECLARED: &str = "a metric's constant name, help and labels are valid, and declared once";
const BUCKETS: &str = "constant buckets: a positive start, a factor above 1, at least one";

/// Registers metrics and remembers their names, so dashboards and rules can be checked against
/// what the app exports.
struct Declare {
    registry: Registry,
    names: Vec<String>,
}

impl Declare {
    fn register<C: prometheus::core::Collector + Clone + 'static>(&mut self, name: &str, c: C) -> C {
        self.registry.register(Box::new(c.clone())).expect(DECLARED);
        self.names.push(name.to_owned());
        c
    }

    fn counter(&mut self, name: &str, help: &str) -> IntCounter {
        let c = IntCounter::new(name, help).expect(DECLARED);
        self.register(name, c)
    }

    /// A counter per label set; `known` label sets start at zero, so they are exported before the
    /// first event.
    fn counter_vec(&mut self, name: &str, help: &str, labels: &[&str], known: &[&[&str]]) -> IntCounterVec {
        let c = IntCounterVec::new(Opts::new(name, help), labels).expect(DECLARED);
        for values in known {
            c.with_label_values(values);
        }
        self.register(name, c)
    }

    /// Seconds per label set, as [`Declare::counter_vec`] counts.
    fn seconds_vec(&mut self, name: &str, help: &str, labels: &[&str], known: &[&[&str]]) -> prometheus::CounterVec {
        let c = prometheus::CounterVec::new(Opts::new(name, help), labels).expect(DECLARED);
        for values in known {
            c.with_label_values(values);
        }
        self.register(name, c)
    }

    fn gauge(&mut self, name: &str, help: &str) -> IntGauge {
        let g = IntGauge::new(name, help).expect(DECLARED);
        self.register(name, g)
    }

    fn gauge_vec(&mut self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        let g = IntGaugeVec::new(Opts::new(name, help), labels).expect(DECLARED);
        self.register(name, g)
    }

    fn histogram_with(&mut self, name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
        let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels).expect(DECLARED);
        self.register(name, h)
    }

    /// Seconds, 0.5 ms to ~16 s.
    fn histogram(&mut self, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
        self.histogram_with(name, help, labels, exponential_buckets(0.0005, 2.0, 16).expect(BUCKETS))
    }
}

impl Metrics {
    fn new() -> Self {
        let mut d = Declare { registry: Registry::new(), names: Vec::new() };
        let no_labels: &[&str] = &[];
        let steps = EpochStep::ALL.map(|step| [step.label()]);
        let steps: Vec<&[&str]> = steps.iter().map(|step| step.as_slice()).collect();
        let mut metrics = Metrics {
            http_requests: d.counter_vec(
                "cashflow_http_requests_total",
                "HTTP requests by route, method and status.",
                &["route", "method", "status"],
                &[],
            ),
            http_connections_open: d.gauge(
                "cashflow_http_connections_open",
                "HTTP connections open on this process's listeners.",
            ),
            http_connections_refused: d.counter_vec(
                "cashflow_http_connections_refused_total",
                "HTTP connections closed at accept: over the process's cap (total) or the client address's (address).",
                &["cap"],
                &[&["total"], &["address"]],
            ),
            http_connections_timed_out: d.counter_vec(
                "cashflow_http_connections_timed_out_total",
                "HTTP connections closed by the server: idle (no request), header (headers too slow), body (a body too slow).",
                &["phase"],
                &[&["idle"], &["header"], &["body"]],
            ),
            http_duration: d.histogram(
                "cashflow_http_request_duration_seconds",
                "HTTP request duration.",
                &["route", "method"],
            ),
            ingest_produced: d.counter_vec(
                "cashflow_ingest_records_produced_total",
                "Entries sent to the broker, by outcome (acked or failed).",
                &["outcome"],
                &[&["acked"], &["failed"]],
            ),
            ingest_produce_duration: d.histogram(
                "cashflow_ingest_produce_duration_seconds",
                "Time from send to the broker's delivery report.",
                &["outcome"],
            ),
            ingest_broker_errors: d.counter(
                "cashflow_ingest_broker_errors_total",
                "Errors librdkafka reported on the producer's broker connections (transport, all brokers down, ...).",
            ),
            consolidate_consumed: d
                .counter("cashflow_consolidate_records_consumed_total", "Records read from the source topics."),
            consolidate_committed: d.counter(
                "cashflow_consolidate_records_committed_total",
                "New entries committed to the store with their offsets.",
            ),
            consolidate_duplicates: d
                .counter("cashflow_consolidate_records_duplicate_total", "Records whose entry id was already counted."),
            consolidate_failed: d.counter_vec(
                "cashflow_consolidate_records_failed_total",
                "Records sent to the error topic, by error code.",
                &["code"],
                &[],
            ),
            consolidate_epochs: d.counter("cashflow_consolidate_epochs_total", "Epochs committed."),
            consolidate_epoch_duration: d
                .histogram("cashflow_consolidate_epoch_duration_seconds", "Time to process and commit one epoch.", &[])
                .with_label_values(no_labels),
            consolidate_epoch_steps: d.seconds_vec(
                "cashflow_consolidate_epoch_step_seconds_total",
                "Wall time epochs spent in each step, in order, summed over lanes: validate (from the \
                 transaction's begin: retried deliveries' claims, the date window, reversals' originals), \
                 smartmodule, dedupe (the entries' insert), limit (the amount limit), aggregate (the \
                 dataflow), states (their upserts), route (rejected records to their topics), commit \
                 (progress and the commit).",
                &["step"],
                &steps,
            ),
            consolidate_store_errors: d
                .counter("cashflow_consolidate_store_errors_total", "Transient store failures, retried in place."),
            consolidate_freshness: d
                .histogram(
                    "cashflow_consolidate_freshness_seconds",
                    "Time from an entry's acceptance (criado_em) to the commit that counts it.",
                    &[],
                )
                .with_label_values(no_labels),
            consolidate_lag: d.gauge_vec(
                "cashflow_consolidate_lag_records",
                "Records on a source partition not yet consolidated: the broker's high watermark minus the \
                 position committed in the store.",
                &["topic", "partition"],
            ),
            sink_batch_rows: d.histogram_with(
                "cashflow_sink_batch_rows",
                "Rows one epoch's transaction wrote, by table.",
                &["table"],
                exponential_buckets(1.0, 4.0, 9).expect(BUCKETS),
            ),
            sink_batch_duration: d
                .histogram(
                    "cashflow_sink_batch_duration_seconds",
                    "Time one epoch's store transaction was open, from begin to commit.",
                    &[],
                )
                .with_label_values(no_labels),
            retry_retried: d.counter_vec(
                "cashflow_retry_records_retried_total",
                "Failed records sent back to consolidation after their backoff, by error code.",
                &["code"],
                &[],
            ),
            retry_parked: d.counter_vec(
                "cashflow_retry_records_parked_total",
                "Records parked in the dead-letter topic, by error code.",
                &["code"],
                &[],
            ),
            retry_expired: d.counter_vec(
                "cashflow_retry_records_expired_total",
                "Records parked because their retries ran out, by error code.",
                &["code"],
                &[],
            ),
            retry_replayed: d.counter_vec(
                "cashflow_retry_records_replayed_total",
                "Parked records replayed to consolidation by an operator, by error code.",
                &["code"],
                &[],
            ),
            retry_held: d.gauge("cashflow_retry_records_held", "Failed records waiting for their retry time."),
            retry_dlq_depth: d
                .gauge("cashflow_retry_dlq_depth", "Records in the dead-letter topic, not purged and not replayed."),
            pipeline_stage_up: d.gauge_vec(
                "cashflow_pipeline_stage_up",
                "1 while a stage of this process works, 0 while it is paused by a failure and retrying.",
                &["stage"],
            ),
            pipeline_partitions_owned: d.gauge_vec(
                "cashflow_pipeline_partitions_owned",
                "Partitions of its consumer group this process owns now, by stage (its share of the work).",
                &["stage"],
            ),
            pipeline_info: d.gauge_vec(
                "cashflow_pipeline_info",
                "1, labelled with the running pipeline.yaml's meta.name and meta.version.",
                &["name", "version"],
            ),
            query_cache_lookups: d.counter_vec(
                "cashflow_query_balance_cache_lookups_total",
                "Balance reads by where their days came from: memory (hit) or the store (miss: not held, or \
                 consolidation committed since).",
                &["outcome"],
                &[&["hit"], &["miss"]],
            ),
            query_cache_days: d.gauge(
                "cashflow_query_balance_cache_days",
                "Day rows of balances held in memory, as of the last read from the store.",
            ),
            reconcile_mismatches: d.gauge(
                "cashflow_reconcile_mismatches",
                "State rows whose stored totals differed from their entries' in the last scheduled reconciliation.",
            ),
            reconcile_merchants: d.gauge(
                "cashflow_reconcile_merchants_checked",
                "Merchants whose states the last scheduled reconciliation recomputed.",
            ),
            reconcile_last_run: d.gauge(
                "cashflow_reconcile_last_run_timestamp_seconds",
                "When the last scheduled reconciliation finished (Unix time), whatever it found.",
            ),
            reconcile_runs: d.counter_vec(
                "cashflow_reconcile_runs_total",
                "Scheduled reconciliations, by outcome: clean, mismatch (a difference found) or error (not run to the end).",
                &["outcome"],
                &[&["clean"], &["mismatch"], &["error"]],
            ),
            smartmodule_records_in: d.counter_vec(
                "cashflow_smartmodule_records_in_total",
                "Entries given to a SmartModule, by module.",
                &["smartmodule"],
                &[],
            ),
            smartmodule_records_out: d.counter_vec(
                "cashflow_smartmodule_records_out_total",
                "Entries a SmartModule gave back (none for a dropped entry, several for an array-map), by module.",
                &["smartmodule"],
                &[],
            ),
            smartmodule_records_failed: d.counter_vec(
                "cashflow_smartmodule_records_failed_total",
                "Entries a SmartModule failed (smartmodule_error, smartmodule_output), by module and code.",
                &["smartmodule", "code"],
                &[],
            ),
            smartmodule_fuel: d.counter_vec(
                "cashflow_smartmodule_fuel_used_total",
                "Fuel (wasmtime's unit of work) SmartModules spent, by module.",
                &["smartmodule"],
                &[],
            ),
            smartmodule_seconds: d.seconds_vec(
                "cashflow_smartmodule_duration_seconds_total",
                "Time spent in SmartModules, by module.",
                &["smartmodule"],
                &[],
            ),
            smartmodule_restarts: d.counter_vec(
                "cashflow_smartmodule_restarts_total",
                "SmartModules started again, by module and reason: failed (after a trap, no fuel or no memory) or memory (its memory near max_memory_bytes).",
                &["smartmodule", "reason"],
                &[],
            ),
            gateway_upstream_replicas_ready: d.gauge_vec(
                "cashflow_gateway_upstream_replicas_ready",
                "Distributed gateway: replicas of a stage whose /readyz answered at the last check.",
                &["stage"],
            ),
            gateway_upstream_up: d.gauge_vec(
                "cashflow_gateway_upstream_up",
                "1 when the stage behind the gateway answered its last readiness check, else 0.",
                &["stage"],
            ),
            gateway_tokens_rejected: d.counter_vec(
                "cashflow_gateway_tokens_rejected_total",
                "Bearer tokens refused (401), by reason.",
                &["reason"],
                &[&["missing"], &["malformed"], &["algorithm"], &["unknown_key"], &["invalid"]],
            ),
            auth_tokens_issued: d.counter_vec(
                "cashflow_auth_tokens_issued_total",
                "Access tokens issued, by grant.",
                &["grant"],
                &[&["password"], &["client_credentials"]],
            ),
            auth_token_requests_rejected: d.counter_vec(
                "cashflow_auth_token_requests_rejected_total",
                "Token requests refused, by OAuth error (invalid_grant, invalid_client, rate_limited, ...).",
                &["reason"],
                &[
                    &["invalid_request"],
                    &["invalid_grant"],
                    &["invalid_client"],
                    &["invalid_scope"],
                    &["unsupported_grant_type"],
                    &["rate_limited"],
                ],
            ),
            registry: d.registry.clone(),
            names: Vec::new(),
        };
        // RSS, CPU seconds, open file descriptors and the like, as process_* (Linux).
        #[cfg(target_os = "linux")]
        {
            let process = prometheus::process_collector::ProcessCollector::for_self();
            let names: Vec<String> = process.desc().iter().map(|desc| desc.fq_name.clone()).collect();
            match d.registry.register(Box::new(process)) {
                Ok(()) => d.names.extend(names),
                Err(e) => tracing::warn!(error = %e, "process metrics unavailable"),
            }
        }
        metrics.names = d.names;
        metrics
    }

    /// The name of every metric family this process can export (histograms without their
    /// `_bucket`, `_sum` and `_count` suffixes).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Starts the failure counters of every code at zero, so a first failure shows as an increase.
    pub fn failure_codes(&self, codes: &[&str]) {
        for code in codes {
            for counter in [
                &self.consolidate_failed,
                &self.retry_retried,
                &self.retry_parked,
                &self.retry_expired,
                &self.retry_replayed,
            ] {
                counter.with_label_values(&[code]);
            }
        }
    }

    /// Marks a stage of this process as working (`true`) or paused by a failure.
    pub fn stage_up(&self, stage: &str, up: bool) {
        self.pipeline_stage_up.with_label_values(&[stage]).set(i64::from(up));
    }

    /// The stages of this process that are paused by a failure.
    pub fn paused_stages(&self) -> Vec<String> {
        let mut paused = Vec::new();
        for family in self.pipeline_stage_up.collect() {
            for m in family.get_metric() {
                if m.get_gauge().get_value() < 1.0 {
                    paused.extend(m.get_label().iter().map(|l| l.value().to_owned()));
                }
            }
        }
        paused
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).expect("the text exposition is UTF-8")
    }
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// `GET /metrics`.
pub async fn metrics_handler() -> Response {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics().render()).into_response()
}

/// The listener of a stage without an HTTP API (`cashflow run consolidate|retry`): `/metrics`,
/// `/healthz`, and `/readyz`, which answers 503 while a stage of this process is paused.
pub fn ops_router() -> axum::Router {
    axum::Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
}

async fn readyz() -> Response {
    let paused = metrics().paused_stages();
    if paused.is_empty() {
        (StatusCode::OK, "ok").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("paused: {}", paused.join(", "))).into_response()
    }
}

/// Middleware: counts and times every request by its route template (never the raw path).
pub async fn track_http(req: Request, next: Next) -> Response {
    let route =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(req).await;
    let m = metrics();
    m.http_requests.with_label_values(&[&route, &method, response.status().as_str()]).inc();
    m.http_duration.with_label_values(&[&route, &method]).observe(started.elapsed().as_secs_f64());
    response
}

/// Logs to stderr; `CASHFLOW_LOG` sets the filter (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CASHFLOW_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours on a terminal only: a log file or a collector gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).try_init();
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::path::Path;

    use super::*;

    /// A file of this checkout, found at run time: a test binary reused from another
    /// checkout's build must still read this one's files.
    fn shipped(path: &str) -> String {
        let dir = std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo");
        std::fs::read_to_string(Path::new(&dir).join(path)).unwrap()
    }

    /// Our metric names in a PromQL text, without histogram suffixes.
    fn used_names(text: &str) -> Vec<String> {
        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .filter(|w| w.starts_with("cashflow_") || w.starts_with("process_"))
            .map(|w| ["_bucket", "_sum", "_count"].iter().fold(w, |w, s| w.strip_suffix(s).unwrap_or(w)).to_owned())
            .collect()
    }

    #[test]
    fn the_dashboard_is_valid_every_panel_has_a_datasource_and_a_title_and_uses_declared_metrics() {
        let dashboard: serde_json::Value = serde_json::from_str(&shipped("grafana/dashboards/cashflow.json")).unwrap();
        let datasource = serde_json::json!({"type": "prometheus", "uid": "cashflow-prometheus"});
        let provisioned = shipped("grafana/provisioning/datasources/cashflow.yml");
        assert!(provisioned.contains("uid: cashflow-prometheus"), "the dashboards' datasource is provisioned");
        let declared = metrics().names();
        let panels: Vec<&serde_json::Value> =
            dashboard["panels"].as_array().unwrap().iter().filter(|p| p["type"] != "row").collect();
        assert!(panels.len() >= 20);
        for panel in panels {
            let title = panel["title"].as_str().unwrap_or_default();
            assert!(!title.is_empty(), "a panel without a title: {panel}");
            assert_eq!(panel["datasource"], datasource, "{title}");
            let targets = panel["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{title} has no query");
            for target in targets {
                assert_eq!(target["datasource"], datasource, "{title}");
                let expr = target["expr"].as_str().unwrap();
                let names = used_names(expr);
                assert!(!names.is_empty() || expr.contains("up{"), "{title}: {expr} names no metric");
                for name in names {
                    assert!(declared.contains(&name), "{title}: {name} is not a declared metric");
                }
            }
        }
    }

    #[test]
    fn the_rules_use_declared_metrics_only() {
        let declared = metrics().names();
        let rules = shipped("prometheus/rules/cashflow.rules.yml");
        let names = used_names(&rules);
        assert!(names.len() >= 5);
        for name in names {
            assert!(declared.contains(&name), "{name} is not a declared metric");
        }
    }

    #[test]
    fn a_paused_stage_shows_in_readiness() {
        let m = Metrics::new();
        m.stage_up("consolidate", true);
        m.stage_up("retry", false);
        assert_eq!(m.paused_stages(), ["retry"]);
        assert!(m.names().iter().any(|n| n == "process_resident_memory_bytes"));
    }
}
