//! Every state `pipeline.yaml` declares: `GET /v1/consolidado/estados/{nome}?de&ate`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::Response;
use cashflow_core::estado::{Field, Key, Measure};
use cashflow_core::{BusinessDate, Money};
use cashflow_http::{FieldError, Principal, Problem, Problems, Query, RETRY_AFTER_SECS, SCOPE_READ};
use serde::{Deserialize, Serialize};

use super::{MAX_RANGE_DAYS, QueryState, answer, check_range, date_param};

/// The longest range over a state whose periods are months, weeks or years.
pub const MAX_PERIOD_RANGE_DAYS: i64 = 3_660;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct StateQuery {
    /// First day (YYYY-MM-DD). Required when the state's key has a period (`data`, `mes`,
    /// `ano`, `semana`); each period that overlaps `[de, ate]` is answered.
    #[param(value_type = Option<BusinessDate>)]
    de: Option<String>,
    /// Last day (YYYY-MM-DD): at most 366 days after `de` when the key has `data`, 3,660
    /// otherwise.
    #[param(value_type = Option<BusinessDate>)]
    ate: Option<String>,
    /// A `posicao` from a 202: wait (bounded) until consolidation has passed it.
    aguardar: Option<String>,
}

/// One key value of a state: its fields (all but `merchant_id`, as text) and the values the
/// state keeps.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(example = json!({"mes": "2026-12", "tipo": "credito", "creditos": "150.25", "debitos": "0.00", "lancamentos": 3}))]
pub(crate) struct Linha {
    #[serde(flatten)]
    #[schema(value_type = Object)]
    chave: serde_json::Map<String, serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    creditos: Option<Money>,
    #[serde(skip_serializing_if = "Option::is_none")]
    debitos: Option<Money>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lancamentos: Option<i64>,
}

/// A declared state of the token's merchant.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Estado {
    estado: String,
    /// The key's fields, `merchant_id` first.
    #[schema(value_type = Vec<String>)]
    chave: Vec<Field>,
    /// The values each row has: `creditos`, `debitos`, `lancamentos`.
    #[schema(value_type = Vec<String>)]
    valores: Vec<Measure>,
    /// When consolidation last committed (RFC 3339), or null if it never has.
    atualizado_ate: Option<String>,
    /// Ordered by key.
    linhas: Vec<Linha>,
}

/// A state declared in `pipeline.yaml` (`services.consolidate.states`): credits, debits and
/// entries per value of its key, for the token's merchant.
#[utoipa::path(
    get,
    path = "/v1/consolidado/estados/{nome}",
    tag = "consolidado",
    params(("nome" = String, Path, description = "A state's name in pipeline.yaml"), StateQuery),
    responses(
        (status = 200, description = "The state's rows; `x-cashflow-stale: true` when `aguardar` ran out", body = Estado),
        Problems,
    ),
    security(("bearer" = ["consolidado:read"]))
)]
pub(crate) async fn declared_state(
    State(state): State<Arc<QueryState>>,
    principal: Principal,
    Path(nome): Path<String>,
    Query(q): Query<StateQuery>,
) -> Result<Response, Problem> {
    principal.require(SCOPE_READ)?;
    let Some(declared) = state.states.get(&nome) else {
        return Err(Problem::not_found(format!("no state named {nome:?} is declared in pipeline.yaml")));
    };
    let key = &declared.key;
    let bounds = bounds(key, q.de.as_deref(), q.ate.as_deref())?;
    let fresh = state.await_position(&principal.merchant_id, q.aguardar.as_deref()).await?;
    let merchant = principal.merchant_id;
    let rows =
        state.store.state_rows(declared, merchant.as_str(), &bounds, &state.consolidate_group).await?.ok_or_else(
            || Problem::unavailable(format!("the state {nome:?} is being built; retry shortly"), RETRY_AFTER_SECS),
        )?;
    let fields = &key.fields()[1..];
    let linhas = rows
        .rows
        .into_iter()
        .map(|(values, t)| {
            let chave = fields.iter().zip(values).map(|(f, v)| (f.as_str().to_owned(), v.into())).collect();
            let kept = |m: Measure| declared.values.has(m);
            Linha {
                chave,
                creditos: kept(Measure::Creditos).then(|| Money::from_cents(t.creditos_cents)),
                debitos: kept(Measure::Debitos).then(|| Money::from_cents(t.debitos_cents)),
                lancamentos: kept(Measure::Lancamentos).then_some(t.quantidade),
            }
        })
        .collect();
    let (chave, valores) = (key.fields().to_vec(), declared.values.measures().to_vec());
    let body = Estado { estado: nome, chave, valores, atualizado_ate: rows.consolidated_at, linhas };
    Ok(answer(body, fresh))
}

/// The range of each of `key`'s periods that overlaps `[de, ate]`; none for a key without one,
/// which takes no range.
fn bounds(key: &Key, de: Option<&str>, ate: Option<&str>) -> Result<Vec<(Field, String, String)>, Problem> {
    let mut errors = Vec::new();
    if !key.fields().iter().any(|f| f.is_period()) {
        for (name, given) in [("de", de), ("ate", ate)] {
            if given.is_some() {
                errors.push(FieldError::new(name, format!("does not apply: the key {key} has no period")));
            }
        }
        return if errors.is_empty() { Ok(Vec::new()) } else { Err(Problem::validation(errors)) };
    }
    let (de, ate) = (date_param("de", de, &mut errors), date_param("ate", ate, &mut errors));
    let (Some(de), Some(ate)) = (de, ate) else { return Err(Problem::validation(errors)) };
    let max = if key.has(Field::Data) { MAX_RANGE_DAYS } else { MAX_PERIOD_RANGE_DAYS };
    check_range(de, ate, max, &mut errors);
    if errors.is_empty() { Ok(key.period_bounds(de, ate)) } else { Err(Problem::validation(errors)) }
}
