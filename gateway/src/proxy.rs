//! The distributed shape: the gateway forwards to the auth, ingest and query stages named in
//! `services.gateway.upstreams`, after its own checks (rate limits, token, merchant). A stage's
//! replicas are taken in turn among those whose `/readyz` answers; a stage with none ready is
//! answered 503 at once instead of waiting on it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cashflow_core::config::Replicas;
use cashflow_http::{Problem, RETRY_AFTER_SECS};
use tokio_util::sync::CancellationToken;

/// Headers that belong to one hop, never forwarded (RFC 9110 §7.6.1), plus those the proxy sets.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// One stage behind the gateway: its replicas, taken in turn among those ready.
pub struct Upstream {
    name: &'static str,
    replicas: Vec<Replica>,
    next: AtomicUsize,
}

/// One replica of a stage, and whether its `/readyz` last answered (or, since, a request to it
/// could not connect).
struct Replica {
    base: String,
    up: AtomicBool,
}

impl Upstream {
    fn new(name: &'static str, replicas: &Replicas) -> Self {
        let replicas = replicas
            .urls()
            .iter()
            .map(|url| Replica { base: url.trim_end_matches('/').to_owned(), up: AtomicBool::new(true) })
            .collect();
        Upstream { name, replicas, next: AtomicUsize::new(0) }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Whether a replica is ready.
    pub fn is_up(&self) -> bool {
        self.ready() > 0
    }

    fn ready(&self) -> usize {
        self.replicas.iter().filter(|r| r.up.load(Ordering::Relaxed)).count()
    }

    /// The ready replicas, starting with the next in turn: a request tries them in this order.
    fn in_turn(&self) -> impl Iterator<Item = &Replica> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.replicas.len();
        (0..n).map(move |i| &self.replicas[(start + i) % n]).filter(|r| r.up.load(Ordering::Relaxed))
    }
}

/// The stages the gateway forwards to.
pub struct Upstreams {
    pub auth: Upstream,
    pub ingest: Upstream,
    pub query: Upstream,
    client: reqwest::Client,
    max_body_bytes: usize,
}

impl Upstreams {
    pub fn new(
        config: &cashflow_core::config::Upstreams,
        max_body_bytes: usize,
        timeout: Duration,
    ) -> Result<Arc<Self>, String> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Arc::new(Upstreams {
            auth: Upstream::new("auth", &config.auth),
            ingest: Upstream::new("ingest", &config.ingest),
            query: Upstream::new("query", &config.query),
            client,
            max_body_bytes,
        }))
    }

    pub fn all(&self) -> [&Upstream; 3] {
        [&self.auth, &self.ingest, &self.query]
    }

    /// Polls every stage's `/readyz` until `shutdown`.
    pub async fn check_health(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            for upstream in self.all() {
                for replica in &upstream.replicas {
                    let url = format!("{}/readyz", replica.base);
                    let answer = self.client.get(&url).timeout(Duration::from_secs(2)).send().await;
                    let ready = answer.is_ok_and(|r| r.status().is_success());
                    if replica.up.swap(ready, Ordering::Relaxed) != ready {
                        if ready {
                            tracing::info!(stage = upstream.name, url = %replica.base, "replica is ready");
                        } else {
                            tracing::warn!(stage = upstream.name, url = %replica.base, "replica is not ready");
                        }
                    }
                }
                let m = cashflow_observability::metrics();
                m.gateway_upstream_up.with_label_values(&[upstream.name]).set(i64::from(upstream.is_up()));
                let ready = i64::try_from(upstream.ready()).unwrap_or(i64::MAX);
                m.gateway_upstream_replicas_ready.with_label_values(&[upstream.name]).set(ready);
            }
        }
    }

    /// Sends `req` to a ready replica of `to` and streams its answer back. A replica that
    /// cannot be connected to is marked down (until its `/readyz` answers again) and the next is
    /// tried: the request never reached it. Any other failure is a 503 with `Retry-After`, never
    /// a wait beyond the request timeout: the request may have reached the replica, and only the
    /// client knows whether to send it again (with its `Idempotency-Key`).
    pub async fn forward(&self, to: &Upstream, req: Request) -> Response {
        let unavailable = |detail: String| Problem::unavailable(detail, RETRY_AFTER_SECS).into_response();
        if !to.is_up() {
            return unavailable(format!("the {} stage is not ready", to.name));
        }
        let (parts, body) = req.into_parts();
        let Ok(body) = axum::body::to_bytes(body, self.max_body_bytes).await else {
            return Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large", "Payload too large")
                .detail("the body is larger than the limit")
                .into_response();
        };
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut headers = parts.headers;
        for name in HOP_BY_HOP.iter().chain([&header::HOST, &header::CONTENT_LENGTH]) {
            headers.remove(name);
        }
        // The client as the gateway saw it; whatever the client claimed is dropped.
        headers.remove("x-forwarded-for");
        if let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>()
            && let Ok(value) = peer.ip().to_string().parse()
        {
            headers.insert("x-forwarded-for", value);
        }
        for replica in to.in_turn() {
            let request = self.client.request(parts.method.clone(), format!("{}{path}", replica.base));
            match request.headers(headers.clone()).body(body.clone()).send().await {
                Ok(answer) => return streamed(answer),
                Err(e) if e.is_connect() => {
                    if replica.up.swap(false, Ordering::Relaxed) {
                        tracing::warn!(stage = to.name, url = %replica.base, error = %e, "replica refused a connection; taken out");
                    }
                }
                Err(e) => {
                    tracing::warn!(stage = to.name, url = %replica.base, error = %e, "replica failed a request");
                    return Problem::unavailable(
                        format!("the {} stage did not answer; retry shortly", to.name),
                        RETRY_AFTER_SECS,
                    )
                    .caused_by(e)
                    .into_response();
                }
            }
        }
        unavailable(format!("no replica of the {} stage could be reached", to.name))
    }
}

/// An upstream's answer, streamed back without its hop-by-hop headers.
fn streamed(answer: reqwest::Response) -> Response {
    let mut response = Response::builder().status(answer.status());
    if let Some(headers) = response.headers_mut() {
        for (name, value) in answer.headers() {
            if !HOP_BY_HOP.contains(name) && name != header::CONTENT_LENGTH {
                headers.append(name, value.clone());
            }
        }
    }
    response.body(Body::from_stream(answer.bytes_stream())).unwrap_or_else(|_| Problem::internal().into_response())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use axum::routing::get;

    use super::*;

    /// A replica that answers `/readyz` and, elsewhere, its own name.
    async fn replica(name: &'static str) -> (String, tokio::task::JoinHandle<()>) {
        let app = axum::Router::new().route("/readyz", get(|| async { "ok" })).fallback(move || async move { name });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        (url, tokio::spawn(async move { axum::serve(listener, app).await.unwrap() }))
    }

    /// An address nothing listens on.
    async fn refused() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    }

    fn upstreams(ingest: Vec<String>) -> Arc<Upstreams> {
        let one = |url: &str| Replicas::from_urls(vec![url.to_owned()]);
        let config = cashflow_core::config::Upstreams {
            auth: one("http://127.0.0.1:9"),
            ingest: Replicas::from_urls(ingest),
            query: one("http://127.0.0.1:9"),
            health_check: Duration::from_secs(1),
        };
        Upstreams::new(&config, 1 << 16, Duration::from_secs(5)).unwrap()
    }

    async fn send(up: &Upstreams) -> (StatusCode, String) {
        let req = Request::builder().method("POST").uri("/v1/lancamentos").body(Body::from("{}")).unwrap();
        let answer = up.forward(&up.ingest, req).await;
        let status = answer.status();
        let body = axum::body::to_bytes(answer.into_body(), 1 << 16).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn requests_take_the_ready_replicas_in_turn() {
        let ((a, _sa), (b, _sb)) = (replica("a").await, replica("b").await);
        let up = upstreams(vec![a, b]);
        let mut answered = Vec::new();
        for _ in 0..4 {
            let (status, by) = send(&up).await;
            assert_eq!(status, StatusCode::OK);
            answered.push(by);
        }
        answered.sort();
        assert_eq!(answered, ["a", "a", "b", "b"]);
    }

    #[tokio::test]
    async fn a_replica_that_refuses_is_taken_out_and_its_requests_go_to_another_then_it_comes_back() {
        let (a, _sa) = replica("a").await;
        let dead = refused().await;
        let up = upstreams(vec![dead.clone(), a]);
        for _ in 0..4 {
            assert_eq!(send(&up).await, (StatusCode::OK, "a".to_owned()));
        }
        assert_eq!(up.ingest.ready(), 1, "the replica that refused is out");

        // It comes back on the same address: the next health check puts it back.
        let listener = tokio::net::TcpListener::bind(dead.trim_start_matches("http://")).await.unwrap();
        let back = axum::Router::new().route("/readyz", get(|| async { "ok" })).fallback(|| async { "back" });
        let _served = tokio::spawn(async move { axum::serve(listener, back).await.unwrap() });
        let stop = CancellationToken::new();
        let checks = tokio::spawn(Arc::clone(&up).check_health(Duration::from_millis(100), stop.clone()));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while up.ingest.ready() < 2 {
            assert!(std::time::Instant::now() < deadline, "the replica was not put back");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.cancel();
        checks.await.unwrap();
        let mut answered = vec![send(&up).await.1, send(&up).await.1];
        answered.sort();
        assert_eq!(answered, ["a", "back"]);
    }

    #[tokio::test]
    async fn with_no_replica_to_reach_the_answer_is_a_503_problem_with_retry_after() {
        let up = upstreams(vec![refused().await, refused().await]);
        let (status, body) = send(&up).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("no replica of the ingest stage could be reached"), "{body}");
        // both are out now: answered at once, without trying
        let req = Request::builder().uri("/v1/lancamentos").body(Body::empty()).unwrap();
        let answer = up.forward(&up.ingest, req).await;
        assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(answer.headers().contains_key(header::RETRY_AFTER));
    }

    #[tokio::test]
    async fn a_replica_that_dies_mid_request_is_a_503_not_a_hang() {
        // accepts, reads the request, and closes without an answer
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = tokio::io::AsyncReadExt::read(&mut socket, &mut buf).await;
                drop(socket);
            }
        });
        let up = upstreams(vec![url]);
        let started = std::time::Instant::now();
        let (status, body) = send(&up).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body.contains("did not answer"), "{body}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
