//! The one error path: a handler's `?` on a store error answers 503 with `Retry-After` when time
//! can fix it and 500 when it cannot, never shows the cause, and the cause is logged exactly once,
//! by the middleware, with the route and the status.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::Value;
use tower::ServiceExt as _;

mod support;

use support::*;

/// Everything logged while it is the thread's subscriber.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    fn lines(&self) -> Vec<String> {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap().lines().map(str::to_owned).collect()
    }
}

/// A read of the balances, with a valid token; the answer's status, headers and body.
async fn read_balances(g: &Gateway) -> (StatusCode, axum::http::HeaderMap, Value) {
    let kid = g.keys.current().signing().0.to_owned();
    let token = g.signed(&g.claims(), &kid);
    let req = Request::get(BALANCES).header("authorization", format!("Bearer {token}")).body(Body::empty()).unwrap();
    let res = g.app.clone().oneshot(req).await.unwrap();
    let (status, headers) = (res.status(), res.headers().clone());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, headers, serde_json::from_slice(&body).unwrap())
}

fn capture() -> (Log, tracing::subscriber::DefaultGuard) {
    let log = Log::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
    (log, tracing::subscriber::set_default(subscriber))
}

#[tokio::test]
async fn a_store_error_time_cannot_fix_is_500_logged_once_and_never_shown() {
    let g = gateway().await;
    let url = format!("sqlite://{}", g.dir.path().join("store.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query("DROP TABLE consolidado_diario").execute(&pool).await.unwrap();
    let (log, _guard) = capture();

    let (status, headers, body) = read_balances(&g).await;

    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(headers["content-type"], "application/problem+json");
    assert!(headers.get("retry-after").is_none(), "a 500 does not invite a retry");
    assert_eq!(body["type"], "/problems/internal");
    assert!(!body.to_string().contains("consolidado_diario"), "the cause is not shown: {body}");
    let failed: Vec<_> = log.lines().into_iter().filter(|l| l.contains("request failed")).collect();
    assert_eq!(failed.len(), 1, "logged once: {:?}", log.lines());
    assert!(failed[0].contains("ERROR"), "{}", failed[0]);
    assert!(failed[0].contains("route=/v1/consolidado/diario") && failed[0].contains("status=500"), "{}", failed[0]);
    assert!(failed[0].contains("no such table"), "the cause is in the log: {}", failed[0]);
}

#[tokio::test]
async fn a_store_out_of_reach_is_503_with_retry_after_logged_once_as_a_warning() {
    let g = gateway().await;
    g.store.close().await;
    let (log, _guard) = capture();

    let (status, headers, body) = read_balances(&g).await;

    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(headers["content-type"], "application/problem+json");
    assert_eq!(headers["retry-after"], "5");
    assert_eq!(body["type"], "/problems/unavailable");
    let failed: Vec<_> = log.lines().into_iter().filter(|l| l.contains("request failed")).collect();
    assert_eq!(failed.len(), 1, "logged once: {:?}", log.lines());
    assert!(failed[0].contains("WARN") && failed[0].contains("status=503"), "{}", failed[0]);
}

/// An answer that takes longer than the gateway's request timeout (here: an entry the broker,
/// out of reach, cannot acknowledge within the 200 ms allowed) is a 503 problem with
/// `Retry-After`, like every other answer that time can fix, and it is logged and counted.
#[tokio::test]
async fn an_answer_later_than_the_request_timeout_is_a_503_problem_logged_once() {
    let g = gateway().await.with(|s| s.request_timeout = std::time::Duration::from_millis(200));
    let (log, _guard) = capture();
    let token = g.issuer.issue("ana", Some("loja-1"), &["lancamentos:write".into()]).unwrap();
    let entry = serde_json::json!({"tipo": "credito", "valor": "10.00", "data": "2026-01-10", "descricao": "x"});
    let req = Request::post("/v1/lancamentos")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Body::from(entry.to_string()))
        .unwrap();

    let started = std::time::Instant::now();
    let res = g.app.clone().oneshot(req).await.unwrap();
    let (status, headers) = (res.status(), res.headers().clone());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);

    assert!(started.elapsed() < std::time::Duration::from_secs(3), "answered at the timeout, not the broker's");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(headers.get("content-type").map(|v| v.to_str().unwrap()), Some("application/problem+json"));
    assert_eq!(headers.get("retry-after").map(|v| v.to_str().unwrap()), Some("5"));
    assert_eq!((&body["type"], &body["status"]), (&Value::from("/problems/unavailable"), &Value::from(503)), "{body}");
    let failed: Vec<_> = log.lines().into_iter().filter(|l| l.contains("request failed")).collect();
    assert_eq!(failed.len(), 1, "logged once: {:?}", log.lines());
    assert!(failed[0].contains("route=/v1/lancamentos") && failed[0].contains("status=503"), "{}", failed[0]);
}
