//! The distributed shape: the gateway forwards to the auth, ingest and query stages named in
//! `services.gateway.upstreams`, after its own checks (rate limits, token, merchant). Each stage's
//! `/readyz` is polled; a stage that is down is answered 503 at once instead of waiting on it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};
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

/// One stage behind the gateway.
pub struct Upstream {
    name: &'static str,
    base: String,
    up: AtomicBool,
}

impl Upstream {
    fn new(name: &'static str, base: &str) -> Self {
        Upstream { name, base: base.trim_end_matches('/').to_owned(), up: AtomicBool::new(true) }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
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
                let url = format!("{}/readyz", upstream.base);
                let ready = self
                    .client
                    .get(&url)
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                let was = upstream.up.swap(ready, Ordering::Relaxed);
                if was != ready {
                    if ready {
                        tracing::info!(stage = upstream.name, url = %upstream.base, "stage is ready");
                    } else {
                        tracing::warn!(stage = upstream.name, url = %upstream.base, "stage is not ready");
                    }
                }
                cashflow_observability::metrics()
                    .gateway_upstream_up
                    .with_label_values(&[upstream.name])
                    .set(i64::from(ready));
            }
        }
    }

    /// Sends `req` to `to` and streams its answer back.
    pub async fn forward(&self, to: &Upstream, req: Request) -> Response {
        if !to.is_up() {
            return Problem::unavailable(format!("the {} stage is not ready", to.name), RETRY_AFTER_SECS)
                .into_response();
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
        let sent =
            self.client.request(parts.method, format!("{}{path}", to.base)).headers(headers).body(body).send().await;
        match sent {
            Ok(answer) => {
                let mut response = Response::builder().status(answer.status());
                if let Some(headers) = response.headers_mut() {
                    for (name, value) in answer.headers() {
                        if !HOP_BY_HOP.contains(name) && name != header::CONTENT_LENGTH {
                            headers.append(name, value.clone());
                        }
                    }
                }
                response
                    .body(Body::from_stream(answer.bytes_stream()))
                    .unwrap_or_else(|_| Problem::internal().into_response())
            }
            Err(e) => {
                let detail = format!("the {} stage did not answer; retry shortly", to.name);
                Problem::new(StatusCode::BAD_GATEWAY, "bad-gateway", "Bad gateway")
                    .detail(detail)
                    .retry_after(RETRY_AFTER_SECS)
                    .caused_by(e)
                    .into_response()
            }
        }
    }
}
