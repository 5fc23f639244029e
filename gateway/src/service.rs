use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use std::net::{IpAddr, SocketAddr};

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use cashflow_auth::{AuthState, Validator};
use cashflow_core::config::{GatewayConfig, RateLimit};
use cashflow_http::{Bearer, MERCHANT_NAMES, Principal, Problem, RETRY_AFTER_SECS, log_failures};
use cashflow_ingest::IngestState;
use cashflow_observability::track_http;
use cashflow_retry::Dlq;
use governor::NotUntil;
use governor::clock::{Clock as _, DefaultClock, QuantaInstant};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;

use crate::proxy::{Upstream, Upstreams};
use crate::query::QueryState;

/// The APIs this process serves itself. The embedded shape serves them all; a stage of the
/// distributed shape serves its own; a distributed gateway serves none and forwards to `upstreams`.
#[derive(Clone, Default)]
pub struct Apis {
    pub auth: Option<Arc<AuthState>>,
    pub ingest: Option<IngestState>,
    pub query: Option<QueryState>,
    /// The dead-letter admin routes, served with the queries.
    pub dlq: Option<Dlq>,
    pub upstreams: Option<Arc<Upstreams>>,
}

/// What the gateway serves, and the limits it keeps.
#[derive(Clone)]
pub struct GatewayState {
    pub validator: Arc<Validator>,
    pub apis: Apis,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    /// Requests per second and burst allowed to each merchant; none means unlimited.
    pub rate_limit: Option<(u32, u32)>,
    /// Requests per second and burst allowed to each client address; none means unlimited.
    pub rate_limit_per_address: Option<(u32, u32)>,
    /// Browser origins allowed (CORS); `*` for any; empty for none.
    pub cors_allowed_origins: Vec<String>,
}

impl GatewayState {
    /// The gateway `services.gateway` declares, in front of `apis`.
    pub fn build(config: &GatewayConfig, validator: Validator, apis: Apis) -> Self {
        let limit = |r: &Option<RateLimit>| r.as_ref().map(|r| (r.per_second, r.burst));
        GatewayState {
            validator: Arc::new(validator),
            apis,
            max_body_bytes: config.max_body_bytes,
            request_timeout: config.request_timeout,
            rate_limit: limit(&config.rate_limit),
            rate_limit_per_address: limit(&config.rate_limit_per_address),
            cors_allowed_origins: config.cors_allowed_origins.clone(),
        }
    }
}

type Limiter<K> = RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock>;

fn limiter<K: std::hash::Hash + Eq + Clone>(limit: Option<(u32, u32)>) -> Option<Limiter<K>> {
    let (per_second, burst) = limit?;
    Some(RateLimiter::keyed(Quota::per_second(NonZeroU32::new(per_second)?).allow_burst(NonZeroU32::new(burst)?)))
}

/// What the authentication middleware needs.
struct Guard {
    validator: Arc<Validator>,
    per_merchant: Option<Limiter<String>>,
}

pub fn router(state: GatewayState) -> Router {
    let x_request_id = HeaderName::from_static("x-request-id");
    let apis = &state.apis;
    let mut public = Router::new();
    let mut protected = Router::new();
    if let Some(auth) = &apis.auth {
        public = public.merge(cashflow_auth::router(Arc::clone(auth)));
    }
    if let Some(ingest) = &apis.ingest {
        protected = protected.merge(cashflow_ingest::router(ingest.clone()));
    }
    if let Some(query) = &apis.query {
        // Shared, not cloned per request: a handler's state is cloned for every call.
        let query = Arc::new(query.clone());
        protected = protected.merge(Router::from(crate::query::api().with_state(Arc::clone(&query))));
        protected = protected.merge(Router::from(crate::query::extrato::api().with_state(query)));
    }
    if let Some(dlq) = &apis.dlq {
        protected = protected.merge(Router::from(crate::admin::api().with_state(dlq.clone())));
    }
    if let Some(upstreams) = &apis.upstreams {
        let (to_auth, to_stage) = (Arc::clone(upstreams), Arc::clone(upstreams));
        let to_auth = move |req: Request| async move { to_auth.forward(&to_auth.auth, req).await };
        public = public.route("/auth/token", post(to_auth.clone())).route("/.well-known/jwks.json", get(to_auth));
        let forward = move |req: Request| async move {
            let stage = stage_for(&to_stage, req.method(), req.uri().path());
            to_stage.forward(stage, req).await
        };
        // One route per API path, as the stages have: metrics and logs name the route template.
        for path in crate::openapi::openapi().paths.paths.into_keys().filter(|p| p.starts_with("/v1/")) {
            protected = protected.route(&path, any(forward.clone()));
        }
    }
    let guard = Arc::new(Guard { validator: Arc::clone(&state.validator), per_merchant: limiter(state.rate_limit) });
    let protected = protected.layer(middleware::from_fn_with_state(guard, authenticate));
    let per_address = Arc::new(limiter::<IpAddr>(state.rate_limit_per_address));
    let router = public
        .merge(protected)
        .fallback(|| async { Problem::not_found("no such route") })
        .layer(middleware::from_fn_with_state(per_address, limit_address))
        .merge(crate::openapi::docs(&apis.query.as_ref().map(QueryState::states).unwrap_or_default()))
        .merge(crate::page::router())
        .merge(Router::from(crate::openapi::ops().with_state(state.apis.clone())))
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .layer(middleware::from_fn_with_state(state.request_timeout, time_limit))
        .layer(middleware::from_fn(log_failures))
        .layer(middleware::from_fn(track_http))
        .layer(PropagateRequestIdLayer::new(x_request_id.clone()))
        .layer(SetRequestIdLayer::new(x_request_id, MakeRequestUuid));
    with_security_headers(router).layer(cors(&state.cors_allowed_origins))
}

/// 503 with `Retry-After` when no answer is ready within `limit` (`request_timeout_secs`): a
/// problem like every answer that time can fix, inside the layers that log and count answers.
async fn time_limit(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(answer) => answer,
        Err(elapsed) => {
            let detail = format!(
                "no answer within {} ms; retry shortly (an entry with the same Idempotency-Key counts once)",
                limit.as_millis()
            );
            Problem::unavailable(detail, RETRY_AFTER_SECS).caused_by(elapsed).into_response()
        }
    }
}

/// Entries are written by ingest (`POST`); everything else under `/v1` (balances, the statement,
/// operators' routes) is read by the query stage.
fn stage_for<'a>(upstreams: &'a Upstreams, method: &Method, path: &str) -> &'a Upstream {
    if method == Method::POST && path.starts_with("/v1/lancamentos") { &upstreams.ingest } else { &upstreams.query }
}

/// Headers every answer carries: nothing is framed or sniffed, and an answer without a policy of
/// its own (every API answer; the page and the docs set theirs) may load nothing.
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

/// 429 with `Retry-After` once a client address is over its limit, before any other work.
async fn limit_address(State(limiter): State<Arc<Option<Limiter<IpAddr>>>>, req: Request, next: Next) -> Response {
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(a)| a.ip());
    if let (Some(limiter), Some(ip)) = (limiter.as_ref(), peer)
        && let Err(not_until) = limiter.check_key(&ip)
    {
        return too_many(not_until, "the client address's request rate is over its limit");
    }
    next.run(req).await
}

fn too_many(not_until: NotUntil<QuantaInstant>, detail: &str) -> Response {
    let wait = not_until.wait_time_from(DefaultClock::default().now());
    Problem::new(StatusCode::TOO_MANY_REQUESTS, "rate-limited", "Too many requests")
        .detail(detail)
        .retry_after(wait.as_secs().max(1))
        .into_response()
}

/// Validates the bearer token and attaches the principal (401 otherwise), refuses a request
/// that names another merchant in its query or headers (403), then applies the merchant's rate
/// limit (429 with `Retry-After`).
async fn authenticate(State(guard): State<Arc<Guard>>, mut req: Request, next: Next) -> Response {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
    let Some(token) = token else {
        cashflow_observability::metrics().gateway_tokens_rejected.with_label_values(&["missing"]).inc();
        return Problem::unauthorized("a bearer token is required").into_response();
    };
    let bearer = match guard.validator.validate(token.trim()).await {
        Ok(bearer) => bearer,
        Err(e) => {
            tracing::debug!(error = %e, "token rejected");
            cashflow_observability::metrics().gateway_tokens_rejected.with_label_values(&[e.reason()]).inc();
            return Problem::unauthorized("the token is invalid or expired").into_response();
        }
    };
    // An operator is limited as a merchant is, under its own name (no merchant id has a space).
    let limited = match &bearer {
        Bearer::Merchant(principal) => {
            if let Err(problem) = refuse_named_merchant(&req, principal) {
                return problem.into_response();
            }
            principal.merchant_id.to_string()
        }
        Bearer::Operator(operator) => format!("operator {}", operator.subject),
    };
    if let Some(limiter) = &guard.per_merchant
        && let Err(not_until) = limiter.check_key(&limited)
    {
        return too_many(not_until, "the merchant's request rate is over its limit");
    }
    req.extensions_mut().insert(bearer);
    next.run(req).await
}

/// The merchant comes from the token: a query parameter or header naming another is refused.
fn refuse_named_merchant(req: &Request, principal: &Principal) -> Result<(), Problem> {
    let query: Vec<(String, String)> =
        req.uri().query().and_then(|q| serde_urlencoded::from_str(q).ok()).unwrap_or_default();
    for (name, value) in &query {
        if MERCHANT_NAMES.contains(&name.as_str()) {
            principal.check_named(value)?;
        }
    }
    for name in MERCHANT_NAMES {
        for value in req.headers().get_all(name) {
            principal.check_named(value.to_str().unwrap_or_default())?;
        }
    }
    Ok(())
}
