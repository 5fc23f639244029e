//! Daily balances: `GET /v1/consolidado/diario?de&ate` and `GET /v1/consolidado/diario/{data}`.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use cashflow_core::http::{FieldError, Json, Principal, Problem, Problems, Query, SCOPE_READ};
use cashflow_core::{BusinessDate, DailyBalance, MerchantId, daily_series};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use cashflow_sinks::Store;

/// What the balance queries need.
#[derive(Clone)]
pub struct QueryState {
    pub store: Store,
    /// Consumer group whose commits mark how fresh balances are.
    pub consolidate_group: String,
}

/// Longest range one request may ask for.
pub const MAX_RANGE_DAYS: i64 = 366;

pub(crate) fn api() -> OpenApiRouter<QueryState> {
    OpenApiRouter::new().routes(routes!(range)).routes(routes!(one_day))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct RangeQuery {
    /// First day (YYYY-MM-DD).
    #[param(required = true, value_type = BusinessDate)]
    de: Option<String>,
    /// Last day (YYYY-MM-DD), at most 366 days after `de`.
    #[param(required = true, value_type = BusinessDate)]
    ate: Option<String>,
}

/// Daily balances of the token's merchant, one per day of the range, with no gaps.
#[derive(Serialize, utoipa::ToSchema)]
struct Consolidado {
    comerciante: MerchantId,
    de: BusinessDate,
    ate: BusinessDate,
    /// When consolidation last committed (RFC 3339), or null if it never has.
    atualizado_ate: Option<String>,
    dias: Vec<DailyBalance>,
}

pub(crate) fn date_param(name: &str, value: Option<&str>, errors: &mut Vec<FieldError>) -> Option<BusinessDate> {
    match value {
        None => {
            errors.push(FieldError::new(name, "is required (YYYY-MM-DD)"));
            None
        }
        Some(v) => v.parse().map_err(|e: String| errors.push(FieldError::new(name, e))).ok(),
    }
}

/// Daily consolidated balances for a range of days.
#[utoipa::path(
    get,
    path = "/v1/consolidado/diario",
    tag = "consolidado",
    params(RangeQuery),
    responses((status = 200, description = "The balances", body = Consolidado), Problems),
    security(("bearer" = ["consolidado:read"]))
)]
async fn range(
    State(state): State<QueryState>,
    principal: Principal,
    Query(q): Query<RangeQuery>,
) -> Result<Response, Problem> {
    principal.require(SCOPE_READ)?;
    let mut errors = Vec::new();
    let de = date_param("de", q.de.as_deref(), &mut errors);
    let ate = date_param("ate", q.ate.as_deref(), &mut errors);
    let (Some(de), Some(ate)) = (de, ate) else {
        return Err(Problem::validation(errors));
    };
    check_range(de, ate, &mut errors);
    if !errors.is_empty() {
        return Err(Problem::validation(errors));
    }
    let body = consolidado(&state, principal.merchant_id, de, ate).await?;
    Ok(Json(body).into_response())
}

/// One day's consolidated balance.
#[utoipa::path(
    get,
    path = "/v1/consolidado/diario/{data}",
    tag = "consolidado",
    params(("data" = BusinessDate, Path, description = "The day")),
    responses((status = 200, description = "The day's balance", body = UmDia), Problems),
    security(("bearer" = ["consolidado:read"]))
)]
async fn one_day(
    State(state): State<QueryState>,
    principal: Principal,
    Path(data): Path<String>,
) -> Result<Response, Problem> {
    principal.require(SCOPE_READ)?;
    let day: BusinessDate = data.parse().map_err(|e: String| Problem::validation(vec![FieldError::new("data", e)]))?;
    let body = consolidado(&state, principal.merchant_id, day, day).await?;
    let dia = body.dias.into_iter().next().ok_or_else(Problem::internal)?;
    Ok(Json(UmDia { comerciante: body.comerciante, atualizado_ate: body.atualizado_ate, dia }).into_response())
}

/// One day of the token's merchant.
#[derive(Serialize, utoipa::ToSchema)]
struct UmDia {
    comerciante: MerchantId,
    /// When consolidation last committed (RFC 3339), or null if it never has.
    atualizado_ate: Option<String>,
    dia: DailyBalance,
}

/// `ate` not before `de`, and at most [`MAX_RANGE_DAYS`] days in all.
pub(crate) fn check_range(de: BusinessDate, ate: BusinessDate, errors: &mut Vec<FieldError>) {
    let days = (ate.date() - de.date()).num_days() + 1;
    if ate < de {
        errors.push(FieldError::new("ate", "must not be before de"));
    } else if days > MAX_RANGE_DAYS {
        errors.push(FieldError::new("ate", format!("the range is {days} days; at most {MAX_RANGE_DAYS} are allowed")));
    }
}

pub(crate) fn store_unavailable(e: cashflow_sinks::StoreError) -> Problem {
    tracing::error!(error = %e, "cannot read the store");
    Problem::unavailable("the store is unreachable; retry shortly", 5)
}

async fn consolidado(
    state: &QueryState,
    merchant: MerchantId,
    de: BusinessDate,
    ate: BusinessDate,
) -> Result<Consolidado, Problem> {
    let rows = state.store.daily(&merchant, de, ate).await.map_err(store_unavailable)?;
    let atualizado_ate = state.store.consolidated_at(&state.consolidate_group).await.map_err(store_unavailable)?;
    Ok(Consolidado {
        comerciante: merchant,
        de,
        ate,
        atualizado_ate,
        dias: daily_series(de, ate, rows.opening_cents, &rows.days),
    })
}
