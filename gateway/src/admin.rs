//! Operators (scope `admin`): the dead-letter topic. `GET /v1/admin/dlq` lists parked records;
//! `POST /v1/admin/dlq/replay` replays `{"offsets": ["0:12"]}`, `{"error_code": "…"}` or
//! `{"all": true}` to consolidation, like `cashflow dlq replay`.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use cashflow_http::{FieldError, Json, Principal, Problem, Problems, SCOPE_ADMIN};
use cashflow_retry::{Dlq, DlqError, Parked, Selection};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub(crate) fn api() -> OpenApiRouter<Dlq> {
    OpenApiRouter::new().routes(routes!(list)).routes(routes!(replay))
}

/// The parked records, oldest first; each origin once.
#[derive(Serialize, utoipa::ToSchema)]
struct Listed {
    parked: Vec<Parked>,
}

/// Lists the records parked in the dead-letter topic.
#[utoipa::path(
    get,
    path = "/v1/admin/dlq",
    tag = "admin",
    responses((status = 200, description = "The parked records", body = Listed), Problems),
    security(("bearer" = ["admin"]))
)]
async fn list(State(dlq): State<Dlq>, principal: Principal) -> Result<Response, Problem> {
    principal.require(SCOPE_ADMIN)?;
    let listing = dlq.list().await.map_err(problem)?;
    Ok(Json(Listed { parked: listing.records }).into_response())
}

/// Exactly one of `offsets`, `error_code` or `all: true`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ReplayRequest {
    /// Positions as `partition:offset`, e.g. `0:12`.
    #[serde(default)]
    offsets: Vec<String>,
    error_code: Option<String>,
    #[serde(default)]
    all: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Replayed {
    replayed: usize,
    records: Vec<Parked>,
}

/// Sends parked records back to consolidation, attempts reset.
#[utoipa::path(
    post,
    path = "/v1/admin/dlq/replay",
    tag = "admin",
    request_body = ReplayRequest,
    responses((status = 200, description = "The records replayed", body = Replayed), Problems),
    security(("bearer" = ["admin"]))
)]
async fn replay(
    State(dlq): State<Dlq>,
    principal: Principal,
    Json(body): Json<ReplayRequest>,
) -> Result<Response, Problem> {
    principal.require(SCOPE_ADMIN)?;
    let selection = selection(body).map_err(|e| Problem::validation(vec![e]))?;
    let records = dlq.replay(&selection).await.map_err(problem)?;
    Ok(Json(Replayed { replayed: records.len(), records }).into_response())
}

fn selection(body: ReplayRequest) -> Result<Selection, FieldError> {
    match (body.offsets.is_empty(), body.error_code, body.all) {
        (false, None, false) => body
            .offsets
            .iter()
            .map(|o| cashflow_retry::parse_position(o))
            .collect::<Result<_, _>>()
            .map(Selection::Offsets)
            .map_err(|e| FieldError::new("offsets", e)),
        (true, Some(code), false) => Ok(Selection::ErrorCode(code)),
        (true, None, true) => Ok(Selection::All),
        _ => Err(FieldError::new("", "give exactly one of offsets, error_code or all: true")),
    }
}

fn problem(e: DlqError) -> Problem {
    match e {
        DlqError::NotFound(_) => Problem::not_found(e.to_string()),
        e => e.into(),
    }
}
