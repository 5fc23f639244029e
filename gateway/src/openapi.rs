//! The OpenAPI 3.1 description of the whole API, built from the handlers' own annotations (each
//! crate's router and its description come from the same `routes!`), served at `/openapi.json`
//! with Swagger UI at `/docs`.

use axum::Router;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::header::CONTENT_SECURITY_POLICY;
use axum::response::{IntoResponse, Response};
use cashflow_core::estado::Key;
use cashflow_http::{Json, Problem, RETRY_AFTER_SECS};
use tower_http::set_header::SetResponseHeaderLayer;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{OpenApi, RefOr};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::SwaggerUi;

use crate::Apis;

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "cashflow",
        description = "Merchant cash-flow entries (lançamentos) in, daily consolidated balances out. \
            Amounts are decimal strings with two places; dates are YYYY-MM-DD; errors are RFC 9457 \
            problem+json. The merchant always comes from the token."
    ),
    tags(
        (name = "auth", description = "Tokens (OAuth2) and the signing keys"),
        (name = "lancamentos", description = "Entries and reversals"),
        (name = "consolidado", description = "Daily consolidated balances"),
        (name = "admin", description = "Operators: the dead-letter topic"),
        (name = "ops", description = "Health, readiness, metrics"),
    )
)]
struct Base;

/// The description of every route, whichever of them this process serves itself.
pub fn openapi() -> OpenApi {
    let mut api = <Base as utoipa::OpenApi>::openapi();
    api.merge(cashflow_auth::api().into_openapi());
    api.merge(cashflow_ingest::api().into_openapi());
    api.merge(crate::query::api().into_openapi());
    api.merge(crate::query::extrato::api().into_openapi());
    api.merge(crate::admin::api().into_openapi());
    api.merge(ops().into_openapi());
    let bearer = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build();
    api.components.get_or_insert_with(Default::default).add_security_scheme("bearer", SecurityScheme::Http(bearer));
    api
}

/// The description with the declared states (name and key) as the values of
/// `/v1/consolidado/estados/{nome}`.
pub fn openapi_with_states(states: &[(String, Key)]) -> OpenApi {
    let mut api = openapi();
    let operation = api.paths.paths.get_mut(STATES_PATH).and_then(|p| p.get.as_mut());
    let mut parameters = operation.and_then(|o| o.parameters.as_mut()).into_iter().flatten();
    let nome = parameters.find_map(|p| match p {
        RefOr::T(p) if p.name == "nome" => Some(p),
        _ => None,
    });
    if let Some(nome) = nome
        && !states.is_empty()
    {
        let names: Vec<&str> = states.iter().map(|(n, _)| n.as_str()).collect();
        let keys: Vec<String> = states.iter().map(|(n, k)| format!("`{n}`: {k}")).collect();
        nome.description = Some(format!("A state declared in pipeline.yaml, with its key: {}", keys.join("; ")));
        nome.schema = Some(ObjectBuilder::new().schema_type(Type::String).enum_values(Some(names)).into());
    }
    api
}

const STATES_PATH: &str = "/v1/consolidado/estados/{nome}";

/// `/openapi.json` and Swagger UI at `/docs`. Swagger UI needs scripts and styles from its own
/// origin, so its pages get their own content security policy.
pub fn docs(states: &[(String, Key)]) -> Router {
    let csp = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; \
               script-src 'self' 'unsafe-inline'; frame-ancestors 'none'";
    Router::from(SwaggerUi::new("/docs").url("/openapi.json", openapi_with_states(states)))
        .layer(SetResponseHeaderLayer::overriding(CONTENT_SECURITY_POLICY, HeaderValue::from_static(csp)))
}

/// Health, readiness and metrics: never rate-limited, never authenticated.
pub fn ops() -> OpenApiRouter<Apis> {
    OpenApiRouter::new().routes(routes!(healthz)).routes(routes!(ready)).routes(routes!(metrics))
}

#[derive(serde::Serialize, utoipa::ToSchema)]
struct Status {
    #[schema(example = "ok")]
    status: &'static str,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, description = "Alive", body = Status)))]
async fn healthz() -> Json<Status> {
    Json(Status { status: "ok" })
}

/// Prometheus text exposition.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "ops",
    responses((status = 200, description = "Every metric", body = String, content_type = "text/plain"))
)]
async fn metrics() -> Response {
    cashflow_observability::metrics_handler().await
}

/// Readiness: the store this stage uses and, in the distributed gateway, every stage behind it.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "ops",
    responses(
        (status = 200, description = "Ready", body = Status),
        (status = 503, description = "Not ready", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn ready(State(apis): State<Apis>) -> Response {
    let store = apis.query.as_ref().map(|q| &q.store).or(apis.ingest.as_ref().map(|i| &i.store));
    if let Some(store) = store
        && let Err(e) = store.ping().await
    {
        return Problem::unavailable("the store is unreachable", RETRY_AFTER_SECS).caused_by(e).into_response();
    }
    if let Some(upstreams) = &apis.upstreams {
        let down: Vec<_> = upstreams.all().iter().filter(|u| !u.is_up()).map(|u| u.name()).collect();
        if !down.is_empty() {
            let detail = format!("stages not ready: {}", down.join(", "));
            return Problem::unavailable(detail, RETRY_AFTER_SECS).into_response();
        }
    }
    Json(Status { status: "ready" }).into_response()
}
