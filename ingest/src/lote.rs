//! `POST /v1/lancamentos/lote`: up to [`MAX_LOTE`] entries in one call, each judged on its own.
//! The valid ones are produced together (librdkafka batches them), not one round trip after
//! another; each item's result says accepted (with id and position) or why not.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use cashflow_core::EntryId;
use cashflow_http::{Cause, FieldError, Json, Principal, Problem, Problems, SCOPE_WRITE};
use futures::future::join_all;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{PartialSchema, ToSchema};

use crate::NovoLancamento;
use crate::service::{IngestState, check_key, not_acknowledged, prepare};

/// The most entries one batch may carry.
pub const MAX_LOTE: usize = 1000;
/// An item's own idempotency key, like the `Idempotency-Key` header of a single entry.
const ITEM_KEY: &str = "idempotency_key";

/// A batch of entries.
#[derive(Deserialize, ToSchema)]
pub(crate) struct Lote {
    #[schema(value_type = Vec<ItemLote>, min_items = 1, max_items = 1000)]
    lancamentos: Vec<Value>,
}

/// One entry of a batch: a new entry plus, optionally, its own `idempotency_key`.
pub(crate) struct ItemLote;

impl PartialSchema for ItemLote {
    fn schema() -> RefOr<Schema> {
        let mut schema = NovoLancamento::schema();
        if let RefOr::T(Schema::Object(object)) = &mut schema {
            let key = ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(255))
                .description(Some("1 to 255 visible ASCII characters; the same key yields the same entry id"));
            object.properties.insert(ITEM_KEY.into(), key.into());
        }
        schema
    }
}
impl ToSchema for ItemLote {}

/// Every item's fate, in the order sent.
#[derive(Serialize, ToSchema)]
struct ResultadoLote {
    aceitos: usize,
    rejeitados: usize,
    resultados: Vec<ResultadoItem>,
}

/// One item: 202 with its id and position, or its own problem (403, 422, 503).
#[derive(Serialize, ToSchema)]
struct ResultadoItem {
    indice: usize,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<EntryId>,
    /// The item's `idempotency_key`, or one chosen for it: sent again with it, the item is the
    /// same entry.
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    posicao: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    problema: Option<Problem>,
}

/// Records up to 1,000 entries. One bad item does not reject the others: each has its result.
/// An item is accepted (202) only after the broker acknowledged it.
#[utoipa::path(
    post,
    path = "/v1/lancamentos/lote",
    tag = "lancamentos",
    request_body = Lote,
    responses((status = 200, description = "Each item's result", body = ResultadoLote), Problems),
    security(("bearer" = ["lancamentos:write"]))
)]
pub(crate) async fn create_lote(
    State(state): State<IngestState>,
    principal: Principal,
    Json(body): Json<Value>,
) -> Result<Response, Problem> {
    principal.require(SCOPE_WRITE)?;
    // The batch may not name another merchant either, at its top level as in its items.
    principal.refuse_foreign(&body)?;
    let lote: Lote = serde_json::from_value(body)
        .map_err(|e| Problem::validation(vec![FieldError::new("lancamentos", e.to_string())]))?;
    if lote.lancamentos.is_empty() || lote.lancamentos.len() > MAX_LOTE {
        let why = format!("must hold 1 to {MAX_LOTE} entries; found {}", lote.lancamentos.len());
        return Err(Problem::validation(vec![FieldError::new("lancamentos", why)]));
    }
    // Each item checked, then every valid one sent at once; the answers keep the items' order.
    let outcomes = join_all(lote.lancamentos.into_iter().map(|item| async {
        let (entry, key) = prepare_item(&state, &principal, item)?;
        match state.publisher.publish(&entry).await {
            Ok(posicao) => Ok((entry.id, key, posicao)),
            Err(e) => Err(not_acknowledged(e, entry.id, Some(&key))),
        }
    }))
    .await;
    let resultados: Vec<ResultadoItem> = outcomes
        .into_iter()
        .enumerate()
        .map(|(indice, outcome)| match outcome {
            Ok((id, key, posicao)) => ResultadoItem {
                indice,
                status: 202,
                id: Some(id),
                idempotency_key: Some(key),
                posicao: Some(posicao.seal(&state.sealer, &principal.merchant_id)),
                problema: None,
            },
            Err(problem) => ResultadoItem {
                indice,
                status: problem.status,
                id: None,
                idempotency_key: None,
                posicao: None,
                problema: Some(problem),
            },
        })
        .collect();
    let aceitos = resultados.iter().filter(|r| r.status == 202).count();
    // One line in the log for the items the server failed: how many, and the first one's cause.
    let causes: Vec<&Cause> = resultados.iter().filter_map(|r| r.problema.as_ref()?.cause()).collect();
    let cause = causes.first().map(|first| first.of_many(causes.len()));
    let body = ResultadoLote { aceitos, rejeitados: resultados.len() - aceitos, resultados };
    let mut response = Json(body).into_response();
    if let Some(cause) = cause {
        response.extensions_mut().insert(cause);
    }
    Ok(response)
}

fn prepare_item(
    state: &IngestState,
    principal: &Principal,
    mut item: Value,
) -> Result<(cashflow_core::Lancamento, String), Problem> {
    let key = match item.as_object_mut().and_then(|o| o.remove(ITEM_KEY)) {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) => Some(check_key(ITEM_KEY, &k).map_err(|e| Problem::validation(vec![e]))?),
        Some(_) => return Err(Problem::validation(vec![FieldError::new(ITEM_KEY, "must be a string")])),
    };
    prepare(state, principal, &item, key)
}
