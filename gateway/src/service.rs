use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use cashflow_auth::{AuthState, Validator};
use cashflow_core::config::DateWindow;
use cashflow_core::http::Problem;
use cashflow_ingest::{IngestState, Publisher};
use cashflow_observability::{metrics_handler, track_http};
use cashflow_retry::Dlq;
use cashflow_sinks::Store;
use governor::clock::{Clock as _, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;

/// What the gateway serves.
#[derive(Clone)]
pub struct GatewayState {
    pub validator: Arc<Validator>,
    pub auth: Arc<AuthState>,
    pub publisher: Arc<Publisher>,
    pub store: Store,
    /// The dead-letter topic, for the admin routes.
    pub dlq: Dlq,
    /// Business dates ingest accepts.
    pub date_window: DateWindow,
    /// Consumer group whose commits mark how fresh balances are.
    pub consolidate_group: String,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    /// Requests per second and burst allowed to each merchant; none means unlimited.
    pub rate_limit: Option<(u32, u32)>,
    /// Browser origins allowed (CORS); `*` for any; empty for none.
    pub cors_allowed_origins: Vec<String>,
}

type MerchantLimiter = RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock>;

/// What the authentication middleware needs.
struct Guard {
    validator: Arc<Validator>,
    limiter: Option<MerchantLimiter>,
}

pub fn router(state: GatewayState) -> Router {
    let x_request_id = HeaderName::from_static("x-request-id");
    let ingest = IngestState {
        publisher: Arc::clone(&state.publisher),
        store: state.store.clone(),
        date_window: state.date_window,
    };
    let protected = crate::query::router(state.clone())
        .merge(cashflow_ingest::router(ingest))
        .merge(crate::admin::router(state.dlq.clone()));
    let limiter = state.rate_limit.and_then(|(per_second, burst)| {
        let quota = Quota::per_second(NonZeroU32::new(per_second)?).allow_burst(NonZeroU32::new(burst)?);
        Some(RateLimiter::keyed(quota))
    });
    let guard = Arc::new(Guard { validator: Arc::clone(&state.validator), limiter });
    let protected = protected.layer(middleware::from_fn_with_state(guard, authenticate));
    let router = Router::new()
        .merge(cashflow_auth::router(Arc::clone(&state.auth)))
        .merge(protected)
        .route("/healthz", get(|| async { Json(serde_json::json!({ "status": "ok" })) }))
        .route("/readyz", get(ready).with_state(state.clone()))
        .route("/metrics", get(metrics_handler))
        .fallback(|| async { Problem::not_found("no such route") })
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .layer(middleware::from_fn(track_http))
        .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, state.request_timeout))
        .layer(PropagateRequestIdLayer::new(x_request_id.clone()))
        .layer(SetRequestIdLayer::new(x_request_id, MakeRequestUuid));
    with_security_headers(router).layer(cors(&state.cors_allowed_origins))
}

/// Headers every answer carries: an API serves no pages, frames nothing and sniffs nothing.
fn with_security_headers(router: Router) -> Router {
    let headers = [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("content-security-policy", "default-src 'none'; frame-ancestors 'none'"),
        ("strict-transport-security", "max-age=31536000"),
    ];
    headers.into_iter().fold(router, |r, (name, value)| {
        r.layer(SetResponseHeaderLayer::if_not_present(HeaderName::from_static(name), HeaderValue::from_static(value)))
    })
}

/// Cross-origin access for the configured browser origins only; preflights are answered here,
/// before authentication.
fn cors(origins: &[String]) -> CorsLayer {
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    let name = HeaderName::from_static;
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, name("idempotency-key"), name("x-request-id")])
        .expose_headers([name("x-request-id"), header::RETRY_AFTER])
        .max_age(Duration::from_secs(600))
}

/// Validates the bearer token and attaches the principal (401 otherwise), then applies the
/// merchant's rate limit (429 with `Retry-After`).
async fn authenticate(State(guard): State<Arc<Guard>>, mut req: Request, next: Next) -> Response {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
    let Some(token) = token else {
        return Problem::unauthorized("a bearer token is required").into_response();
    };
    match guard.validator.validate(token.trim()).await {
        Ok(principal) => {
            if let Some(limiter) = &guard.limiter
                && let Err(not_until) = limiter.check_key(&principal.merchant_id.to_string())
            {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                return Problem::new(StatusCode::TOO_MANY_REQUESTS, "rate-limited", "Too many requests")
                    .detail("the merchant's request rate is over its limit")
                    .retry_after(wait.as_secs().max(1))
                    .into_response();
            }
            req.extensions_mut().insert(principal);
            next.run(req).await
        }
        Err(e) => {
            tracing::debug!(error = %e, "token rejected");
            Problem::unauthorized("the token is invalid or expired").into_response()
        }
    }
}

async fn ready(State(state): State<GatewayState>) -> Response {
    match state.store.ping().await {
        Ok(()) => Json(serde_json::json!({ "status": "ready" })).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "not ready: store unreachable");
            Problem::unavailable("the store is unreachable", 5).into_response()
        }
    }
}
