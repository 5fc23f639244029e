//! The query stage: balances and statements read from the store, each optionally `aguardar`-ing a
//! position (read-your-writes, bounded).
//!
//! This module holds the daily balances (`GET /v1/consolidado/diario?de&ate`, `…/diario/{data}`)
//! and the monthly summary; [`extrato`] the statement, [`estados`] the states `pipeline.yaml`
//! declares, [`balances`] the cache of current days and [`progress`] consolidation's progress.

mod balances;
mod estados;
pub(crate) mod extrato;
mod progress;

pub use progress::ProgressWatch;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use cashflow_core::config::PipelineConfig;
use cashflow_core::estado::Key;
use cashflow_core::seal::Sealer;
use cashflow_core::{
    BusinessDate, DailyBalance, MerchantId, Money, MonthlyBalance, Posicao, daily_series, monthly_series,
};
use cashflow_http::{FieldError, Json, Principal, Problem, Problems, Query, SCOPE_READ};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use cashflow_sinks::{DeclaredState, Store};

use balances::Balances;

/// What the balance queries need.
#[derive(Clone)]
pub struct QueryState {
    pub store: Store,
    /// Consumer group whose commits mark how fresh balances are.
    pub consolidate_group: String,
    /// Consolidation's progress, for `aguardar`.
    pub progress: ProgressWatch,
    /// The longest an `aguardar` read waits before answering with the data as it stands.
    pub aguardar_timeout: Duration,
    /// Opens `aguardar` positions and seals and opens statement cursors.
    pub sealer: Sealer,
    /// Daily balances, from memory while they are current.
    balances: Balances,
    /// The states `pipeline.yaml` declares, by name.
    pub(crate) states: Arc<BTreeMap<String, DeclaredState>>,
}

impl QueryState {
    /// The balance queries `config` declares over `store`, with the declared states by name.
    pub fn build(
        config: &PipelineConfig,
        store: Store,
        sealer: Sealer,
        states: impl IntoIterator<Item = (String, DeclaredState)>,
    ) -> Self {
        let s = &config.services;
        let topic = config.ingest_topic();
        QueryState::new(store, sealer, &s.consolidate.group, topic, s.query.aguardar_timeout, s.query.cache_days)
            .with_states(states)
    }

    /// Starts watching `group`'s progress on `topic` (the ingest topic); up to `cache_days` day
    /// rows of balances are held in memory (0: none).
    pub fn new(
        store: Store,
        sealer: Sealer,
        group: &str,
        topic: &str,
        aguardar_timeout: Duration,
        cache_days: u64,
    ) -> Self {
        let progress = ProgressWatch::start(store.clone(), group.to_owned(), topic.to_owned());
        let balances = Balances::new(store.clone(), group.to_owned(), progress.clone(), cache_days);
        let states = Arc::default();
        QueryState { store, consolidate_group: group.to_owned(), progress, aguardar_timeout, sealer, balances, states }
    }

    /// Serves these declared states, by name, at `/v1/consolidado/estados/{nome}`.
    pub fn with_states(mut self, states: impl IntoIterator<Item = (String, DeclaredState)>) -> Self {
        self.states = Arc::new(states.into_iter().collect());
        self
    }

    /// The declared states' names and keys.
    pub fn states(&self) -> Vec<(String, Key)> {
        self.states.iter().map(|(name, s)| (name.clone(), s.key.clone())).collect()
    }

    /// With `aguardar` (a `posicao` given to `merchant`), waits (bounded) for consolidation to
    /// pass it: `Ok(false)` on timeout.
    pub(crate) async fn await_position(&self, merchant: &MerchantId, aguardar: Option<&str>) -> Result<bool, Problem> {
        let Some(token) = aguardar else { return Ok(true) };
        let posicao = Posicao::open(&self.sealer, merchant, token)
            .map_err(|e| Problem::validation(vec![FieldError::new("aguardar", e)]))?;
        Ok(self.progress.wait_past(posicao, self.aguardar_timeout).await)
    }
}

/// Set on a balance answered before consolidation reached the `aguardar` position.
pub const STALE_HEADER: &str = "x-cashflow-stale";

/// The answer, marked stale when the wait ran out.
pub(crate) fn answer<T: Serialize>(body: T, fresh: bool) -> Response {
    let mut response = Json(body).into_response();
    if !fresh {
        response.headers_mut().insert(STALE_HEADER, HeaderValue::from_static("true"));
    }
    response
}

/// Longest range one request may ask for.
pub const MAX_RANGE_DAYS: i64 = 366;

pub(crate) fn api() -> OpenApiRouter<Arc<QueryState>> {
    OpenApiRouter::new()
        .routes(routes!(range))
        .routes(routes!(one_day))
        .routes(routes!(monthly))
        .routes(routes!(by_category))
        .routes(routes!(estados::declared_state))
}

/// One category's totals over a range.
#[derive(Serialize, utoipa::ToSchema)]
struct TotalCategoria {
    /// Null for entries without a category.
    categoria: Option<String>,
    creditos: Money,
    debitos: Money,
    /// Credits minus debits.
    saldo: Money,
    lancamentos: i64,
}

/// Totals per category of the token's merchant over a range of days.
#[derive(Serialize, utoipa::ToSchema)]
struct Categorias {
    comerciante: MerchantId,
    de: BusinessDate,
    ate: BusinessDate,
    /// When consolidation last committed (RFC 3339), or null if it never has.
    atualizado_ate: Option<String>,
    categorias: Vec<TotalCategoria>,
}

/// Totals per category over a range of days (at most 366), from the consolidated
/// (merchant, day, category) state; a reversal counts in its original's category.
#[utoipa::path(
    get,
    path = "/v1/consolidado/categorias",
    tag = "consolidado",
    params(RangeQuery),
    responses(
        (status = 200, description = "Each category with entries in the range; `x-cashflow-stale: true` when `aguardar` ran out", body = Categorias),
        Problems,
    ),
    security(("bearer" = ["consolidado:read"]))
)]
async fn by_category(
    State(state): State<Arc<QueryState>>,
    principal: Principal,
    Query(q): Query<RangeQuery>,
) -> Result<Response, Problem> {
    principal.require(SCOPE_READ)?;
    let (de, ate) = range_params(&q)?;
    let fresh = state.await_position(&principal.merchant_id, q.aguardar.as_deref()).await?;
    let (rows, atualizado_ate) =
        state.store.categories(&principal.merchant_id, de, ate, &state.consolidate_group).await?;
    let categorias = rows
        .into_iter()
        .map(|(categoria, t)| {
            Ok(TotalCategoria {
                categoria,
                creditos: Money::from_cents(t.creditos_cents),
                debitos: Money::from_cents(t.debitos_cents),
                saldo: Money::from_cents(t.saldo_cents()?),
                lancamentos: t.quantidade,
            })
        })
        .collect::<Result<_, Problem>>()?;
    Ok(answer(Categorias { comerciante: principal.merchant_id, de, ate, atualizado_ate, categorias }, fresh))
}

/// `de` and `ate` of a range query, as a problem when they are not a valid range.
fn range_params(q: &RangeQuery) -> Result<(BusinessDate, BusinessDate), Problem> {
    let mut errors = Vec::new();
    match date_range(q.de.as_deref(), q.ate.as_deref(), &mut errors) {
        Some(range) if errors.is_empty() => Ok(range),
        _ => Err(Problem::validation(errors)),
    }
}

/// `de` and `ate`: present, valid, in order and at most [`MAX_RANGE_DAYS`] apart; each problem
/// goes to `errors`.
pub(crate) fn date_range(
    de: Option<&str>,
    ate: Option<&str>,
    errors: &mut Vec<FieldError>,
) -> Option<(BusinessDate, BusinessDate)> {
    let de = date_param("de", de, errors);
    let ate = date_param("ate", ate, errors);
    let (de, ate) = (de?, ate?);
    let before = errors.len();
    check_range(de, ate, MAX_RANGE_DAYS, errors);
    (errors.len() == before).then_some((de, ate))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct MonthlyQuery {
    /// The year, 1900 to 9999.
    #[param(required = true, value_type = i32, minimum = 1900, maximum = 9999)]
    ano: Option<String>,
    /// A `posicao` from a 202: wait (bounded) until consolidation has passed it.
    aguardar: Option<String>,
}

/// A year of monthly balances of the token's merchant.
#[derive(Serialize, utoipa::ToSchema)]
struct Mensal {
    comerciante: MerchantId,
    ano: i32,
    /// When consolidation last committed (RFC 3339), or null if it never has.
    atualizado_ate: Option<String>,
    meses: Vec<MonthlyBalance>,
}

/// Monthly totals and each month's closing balance for a year, from the consolidated months
/// (the state in `consolidado_mensal`).
#[utoipa::path(
    get,
    path = "/v1/consolidado/mensal",
    tag = "consolidado",
    params(MonthlyQuery),
    responses(
        (status = 200, description = "Twelve months; `x-cashflow-stale: true` when `aguardar` ran out", body = Mensal),
        Problems,
    ),
    security(("bearer" = ["consolidado:read"]))
)]
async fn monthly(
    State(state): State<Arc<QueryState>>,
    principal: Principal,
    Query(q): Query<MonthlyQuery>,
) -> Result<Response, Problem> {
    principal.require(SCOPE_READ)?;
    let year = q.ano.as_deref().and_then(|a| a.parse::<i32>().ok()).filter(|a| (1900..=9999).contains(a));
    let Some(year) = year else {
        return Err(Problem::validation(vec![FieldError::new("ano", "is required: a year from 1900 to 9999")]));
    };
    let fresh = state.await_position(&principal.merchant_id, q.aguardar.as_deref()).await?;
    let rows = state.store.monthly(&principal.merchant_id, year, &state.consolidate_group).await?;
    let meses = monthly_series(year, rows.opening_cents, &rows.months)?;
    Ok(answer(
        Mensal { comerciante: principal.merchant_id, ano: year, atualizado_ate: rows.consolidated_at, meses },
        fresh,
    ))
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
    /// A `posicao` from a 202: wait (bounded) until consolidation has passed it.
    aguardar: Option<String>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct AguardarQuery {
    /// A `posicao` from a 202: wait (bounded) until consolidation has passed it.
    aguardar: Option<String>,
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
    responses(
        (status = 200, description = "The balances; `x-cashflow-stale: true` when `aguardar` ran out", body = Consolidado),
        Problems,
    ),
    security(("bearer" = ["consolidado:read"]))
)]
async fn range(
    State(state): State<Arc<QueryState>>,
    principal: Principal,
    Query(q): Query<RangeQuery>,
) -> Result<Response, Problem> {
    principal.require(SCOPE_READ)?;
    let (de, ate) = range_params(&q)?;
    let fresh = state.await_position(&principal.merchant_id, q.aguardar.as_deref()).await?;
    let body = consolidado(&state, principal.merchant_id, de, ate).await?;
    Ok(answer(body, fresh))
}

/// One day's consolidated balance.
#[utoipa::path(
    get,
    path = "/v1/consolidado/diario/{data}",
    tag = "consolidado",
    params(("data" = BusinessDate, Path, description = "The day"), AguardarQuery),
    responses(
        (status = 200, description = "The day's balance; `x-cashflow-stale: true` when `aguardar` ran out", body = UmDia),
        Problems,
    ),
    security(("bearer" = ["consolidado:read"]))
)]
async fn one_day(
    State(state): State<Arc<QueryState>>,
    principal: Principal,
    Path(data): Path<String>,
    Query(q): Query<AguardarQuery>,
) -> Result<Response, Problem> {
    principal.require(SCOPE_READ)?;
    let day: BusinessDate = data.parse().map_err(|e: String| Problem::validation(vec![FieldError::new("data", e)]))?;
    let fresh = state.await_position(&principal.merchant_id, q.aguardar.as_deref()).await?;
    let body = consolidado(&state, principal.merchant_id, day, day).await?;
    let dia = body.dias.into_iter().next().ok_or_else(Problem::internal)?;
    Ok(answer(UmDia { comerciante: body.comerciante, atualizado_ate: body.atualizado_ate, dia }, fresh))
}

/// One day of the token's merchant.
#[derive(Serialize, utoipa::ToSchema)]
struct UmDia {
    comerciante: MerchantId,
    /// When consolidation last committed (RFC 3339), or null if it never has.
    atualizado_ate: Option<String>,
    dia: DailyBalance,
}

/// `ate` not before `de`, and at most `max_days` days in all.
pub(crate) fn check_range(de: BusinessDate, ate: BusinessDate, max_days: i64, errors: &mut Vec<FieldError>) {
    let days = (ate.date() - de.date()).num_days() + 1;
    if ate < de {
        errors.push(FieldError::new("ate", "must not be before de"));
    } else if days > max_days {
        errors.push(FieldError::new("ate", format!("the range is {days} days; at most {max_days} are allowed")));
    }
}

async fn consolidado(
    state: &QueryState,
    merchant: MerchantId,
    de: BusinessDate,
    ate: BusinessDate,
) -> Result<Consolidado, Problem> {
    let rows = state.balances.daily(&merchant, de, ate).await?;
    let atualizado_ate = rows.consolidated_at;
    let consolidated_on = atualizado_ate.as_deref().and_then(|t| t.get(..10)).and_then(|d| d.parse().ok());
    Ok(Consolidado {
        comerciante: merchant,
        de,
        ate,
        dias: daily_series(de, ate, rows.opening_cents, &rows.days, consolidated_on)?,
        atualizado_ate,
    })
}
