//! Telemetry: every Prometheus metric is declared here, once, and named
//! `cashflow_<component>_<what>_<unit>[_total]`. Labels have few values; never a merchant id.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder, exponential_buckets,
};

/// Every metric of every component.
pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub ingest_produced: IntCounterVec,
    pub ingest_produce_duration: HistogramVec,
    pub consolidate_consumed: IntCounter,
    pub consolidate_committed: IntCounter,
    pub consolidate_duplicates: IntCounter,
    pub consolidate_failed: IntCounterVec,
    pub consolidate_epochs: IntCounter,
    pub consolidate_epoch_duration: Histogram,
    pub consolidate_store_errors: IntCounter,
    pub retry_retried: IntCounterVec,
    pub retry_parked: IntCounterVec,
    pub retry_expired: IntCounterVec,
    pub retry_replayed: IntCounterVec,
    pub retry_held: IntGauge,
    pub retry_dlq_depth: IntGauge,
    pub gateway_upstream_up: IntGaugeVec,
    pub gateway_tokens_rejected: IntCounterVec,
    pub auth_tokens_issued: IntCounterVec,
    pub auth_token_requests_rejected: IntCounterVec,
    pub consolidate_freshness: Histogram,
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).unwrap_or_else(|e| unreachable!("metric {name}: {e}"));
    r.register(Box::new(c.clone())).unwrap_or_else(|e| unreachable!("metric {name}: {e}"));
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| unreachable!("metric {name}: {e}"));
    r.register(Box::new(c.clone())).unwrap_or_else(|e| unreachable!("metric {name}: {e}"));
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).unwrap_or_else(|e| unreachable!("metric {name}: {e}"));
    r.register(Box::new(g.clone())).unwrap_or_else(|e| unreachable!("metric {name}: {e}"));
    g
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| unreachable!("metric {name}: {e}"));
    r.register(Box::new(g.clone())).unwrap_or_else(|e| unreachable!("metric {name}: {e}"));
    g
}

fn histogram(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    // 0.5 ms to ~16 s.
    let buckets = exponential_buckets(0.0005, 2.0, 16).unwrap_or_default();
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .unwrap_or_else(|e| unreachable!("metric {name}: {e}"));
    r.register(Box::new(h.clone())).unwrap_or_else(|e| unreachable!("metric {name}: {e}"));
    h
}

impl Metrics {
    fn new() -> Self {
        let r = Registry::new();
        Metrics {
            http_requests: counter_vec(
                &r,
                "cashflow_http_requests_total",
                "HTTP requests by route, method and status.",
                &["route", "method", "status"],
            ),
            http_duration: histogram(
                &r,
                "cashflow_http_request_duration_seconds",
                "HTTP request duration.",
                &["route", "method"],
            ),
            ingest_produced: counter_vec(
                &r,
                "cashflow_ingest_records_produced_total",
                "Entries sent to the broker, by outcome (acked or failed).",
                &["outcome"],
            ),
            ingest_produce_duration: histogram(
                &r,
                "cashflow_ingest_produce_duration_seconds",
                "Time from send to the broker's delivery report.",
                &["outcome"],
            ),
            consolidate_consumed: counter(
                &r,
                "cashflow_consolidate_records_consumed_total",
                "Records read from the source topics.",
            ),
            consolidate_committed: counter(
                &r,
                "cashflow_consolidate_records_committed_total",
                "New entries committed to the store with their offsets.",
            ),
            consolidate_duplicates: counter(
                &r,
                "cashflow_consolidate_records_duplicate_total",
                "Records whose entry id was already counted.",
            ),
            consolidate_failed: counter_vec(
                &r,
                "cashflow_consolidate_records_failed_total",
                "Records sent to the error topic, by error code.",
                &["code"],
            ),
            consolidate_epochs: counter(&r, "cashflow_consolidate_epochs_total", "Epochs committed."),
            consolidate_epoch_duration: histogram(
                &r,
                "cashflow_consolidate_epoch_duration_seconds",
                "Time to process and commit one epoch.",
                &[],
            )
            .with_label_values::<&str>(&[]),
            consolidate_store_errors: counter(
                &r,
                "cashflow_consolidate_store_errors_total",
                "Transient store failures, retried in place.",
            ),
            retry_retried: counter_vec(
                &r,
                "cashflow_retry_records_retried_total",
                "Failed records sent back to consolidation after their backoff, by error code.",
                &["code"],
            ),
            retry_parked: counter_vec(
                &r,
                "cashflow_retry_records_parked_total",
                "Records parked in the dead-letter topic, by error code.",
                &["code"],
            ),
            retry_expired: counter_vec(
                &r,
                "cashflow_retry_records_expired_total",
                "Records parked because their retries ran out, by error code.",
                &["code"],
            ),
            retry_replayed: counter_vec(
                &r,
                "cashflow_retry_records_replayed_total",
                "Parked records replayed to consolidation by an operator, by error code.",
                &["code"],
            ),
            retry_held: gauge(&r, "cashflow_retry_records_held", "Failed records waiting for their retry time."),
            retry_dlq_depth: gauge(
                &r,
                "cashflow_retry_dlq_depth",
                "Records in the dead-letter topic, not purged and not replayed.",
            ),
            gateway_upstream_up: gauge_vec(
                &r,
                "cashflow_gateway_upstream_up",
                "1 when the stage behind the gateway answered its last readiness check, else 0.",
                &["stage"],
            ),
            gateway_tokens_rejected: counter_vec(
                &r,
                "cashflow_gateway_tokens_rejected_total",
                "Bearer tokens refused (401), by reason.",
                &["reason"],
            ),
            auth_tokens_issued: counter_vec(
                &r,
                "cashflow_auth_tokens_issued_total",
                "Access tokens issued, by grant.",
                &["grant"],
            ),
            auth_token_requests_rejected: counter_vec(
                &r,
                "cashflow_auth_token_requests_rejected_total",
                "Token requests refused, by OAuth error (invalid_grant, invalid_client, rate_limited, ...).",
                &["reason"],
            ),
            consolidate_freshness: histogram(
                &r,
                "cashflow_consolidate_freshness_seconds",
                "Time from an entry's acceptance (criado_em) to the commit that counts it.",
                &[],
            )
            .with_label_values::<&str>(&[]),
            registry: {
                // RSS, CPU seconds, open file descriptors and the like, as process_* (Linux).
                #[cfg(target_os = "linux")]
                if let Err(e) = r.register(Box::new(prometheus::process_collector::ProcessCollector::for_self())) {
                    tracing::warn!(error = %e, "process metrics unavailable");
                }
                r
            },
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
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
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
