//! The dead-letter topic. Operators (a token of no merchant, scope `admin`): `GET /v1/admin/dlq`
//! lists every parked record; `POST /v1/admin/dlq/replay` replays `{"offsets": ["0:12"]}`,
//! `{"error_code": "…"}` or `{"all": true}` to consolidation, like `cashflow dlq replay`. A
//! merchant's token cannot use either, whatever its scopes. Merchants (scope `consolidado:read`):
//! `GET /v1/lancamentos/retidos` lists their own parked entries and why each was held.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use cashflow_core::{EntryId, Money};
use cashflow_http::{FieldError, Json, Operator, Principal, Problem, Problems, SCOPE_ADMIN, SCOPE_READ};
use cashflow_retry::{Dlq, DlqError, Parked, Selection};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub(crate) fn api() -> OpenApiRouter<Dlq> {
    OpenApiRouter::new().routes(routes!(list)).routes(routes!(replay)).routes(routes!(retidos))
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
async fn list(State(dlq): State<Dlq>, operator: Operator) -> Result<Response, Problem> {
    operator.require(SCOPE_ADMIN)?;
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
    operator: Operator,
    Json(body): Json<ReplayRequest>,
) -> Result<Response, Problem> {
    operator.require(SCOPE_ADMIN)?;
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

/// The merchant's entries held in the dead-letter topic.
#[derive(Serialize, utoipa::ToSchema)]
struct Retidos {
    comerciante: String,
    retidos: Vec<Retido>,
}

/// One held entry: why, and the entry as it was sent.
#[derive(Serialize, utoipa::ToSchema)]
struct Retido {
    /// The failure's code (`invalid_field`, `already_reversed`, …); `unknown` when unreadable.
    codigo: String,
    detalhe: Option<String>,
    /// Deliveries that failed.
    tentativas: Option<u32>,
    /// When it first failed (RFC 3339).
    primeira_falha_em: Option<String>,
    /// The entry or reversal as recorded (`null` when the record is not readable as one).
    lancamento: Option<LancamentoRetido>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct LancamentoRetido {
    id: Option<EntryId>,
    tipo: Option<String>,
    valor: Option<Money>,
    data: Option<String>,
    descricao: Option<String>,
    categoria: Option<String>,
    estorno_de: Option<EntryId>,
}

impl LancamentoRetido {
    /// Whatever of an entry the record holds, read leniently: it was held because something in
    /// it is wrong.
    fn read(payload: &str) -> Option<Self> {
        let v: serde_json::Value = serde_json::from_str(payload).ok()?;
        let text = |k: &str| v.get(k).and_then(serde_json::Value::as_str).map(str::to_owned);
        let id = |k: &str| text(k).and_then(|s| s.parse().ok());
        Some(LancamentoRetido {
            id: id("id"),
            tipo: text("tipo"),
            valor: v.get("valor_cents").and_then(serde_json::Value::as_i64).map(Money::from_cents),
            data: text("data"),
            descricao: text("descricao"),
            categoria: text("categoria"),
            estorno_de: id("estorno_de"),
        })
    }
}

/// Lists the merchant's own entries held in the dead-letter topic, and why each was held.
#[utoipa::path(
    get,
    path = "/v1/lancamentos/retidos",
    tag = "lancamentos",
    responses((status = 200, description = "The merchant's held entries, oldest first", body = Retidos), Problems),
    security(("bearer" = ["consolidado:read"]))
)]
async fn retidos(State(dlq): State<Dlq>, principal: Principal) -> Result<Response, Problem> {
    principal.require(SCOPE_READ)?;
    let listing = dlq.list().await.map_err(problem)?;
    let own = listing.records.into_iter().filter(|p| p.merchant.as_deref() == Some(principal.merchant_id.as_str()));
    let retidos = own
        .map(|p| Retido {
            codigo: p.code().to_owned(),
            detalhe: p.failure.as_ref().map(|f| f.detail.clone()),
            tentativas: p.failure.as_ref().map(|f| f.attempt + 1),
            primeira_falha_em: p.failure.as_ref().and_then(|f| {
                chrono::DateTime::from_timestamp_millis(f.first_failed_at_ms)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            }),
            lancamento: LancamentoRetido::read(&p.payload),
        })
        .collect();
    Ok(Json(Retidos { comerciante: principal.merchant_id.to_string(), retidos }).into_response())
}

fn problem(e: DlqError) -> Problem {
    match e {
        DlqError::NotFound(_) => Problem::not_found(e.to_string()),
        e => e.into(),
    }
}
