//! `POST /v1/lancamentos` and `POST /v1/lancamentos/{id}/estorno`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use cashflow_core::config::{DateWindow, PipelineConfig};
use cashflow_core::seal::Sealer;
use cashflow_core::{BusinessDate, EntryId, Lancamento, Reversal};
use cashflow_http::{FieldError, Json, Principal, Problem, Problems, RETRY_AFTER_SECS, SCOPE_WRITE, Unacknowledged};
use cashflow_sinks::Store;
use rdkafka::error::KafkaError;
use serde::Serialize;
use serde_json::Value;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::{IngestError, NovoEstorno, NovoLancamento, PendingReversals, Publisher, parse_estorno, parse_novo};

const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// What ingest needs: the producer, the store (to refuse a reversal it knows is wrong) and the
/// accepted dates.
#[derive(Clone)]
pub struct IngestState {
    pub publisher: Arc<Publisher>,
    pub store: Store,
    pub date_window: DateWindow,
    /// Body limit of `POST /v1/lancamentos/lote`.
    pub max_batch_body_bytes: usize,
    /// Seals each `posicao` for its merchant.
    pub sealer: Sealer,
    /// The reversals accepted here that consolidation may still be retrying.
    pub pending: PendingReversals,
}

impl IngestState {
    /// The ingest API `config` declares: its producer, the store that checks reversals, and the
    /// key `posicao` is sealed with.
    pub fn build(config: &PipelineConfig, store: Store, sealer: Sealer) -> Result<Self, KafkaError> {
        Ok(IngestState {
            publisher: Arc::new(Publisher::new(config)?),
            store,
            date_window: config.services.consolidate.date_window(),
            max_batch_body_bytes: config.services.gateway.max_batch_body_bytes,
            sealer,
            pending: PendingReversals::new(config.services.retry.longest_hold()),
        })
    }
}

/// The routes and their OpenAPI description, from the same handlers.
pub fn api() -> OpenApiRouter<IngestState> {
    single().merge(batch())
}

fn single() -> OpenApiRouter<IngestState> {
    OpenApiRouter::new().routes(routes!(create)).routes(routes!(reverse))
}

fn batch() -> OpenApiRouter<IngestState> {
    OpenApiRouter::new().routes(routes!(crate::lote::create_lote))
}

/// A batch may be larger than a single entry's body limit.
pub fn router(state: IngestState) -> Router {
    let limit = DefaultBodyLimit::max(state.max_batch_body_bytes);
    Router::from(single().with_state(state.clone())).merge(Router::from(batch().with_state(state)).layer(limit))
}

/// An entry accepted: the broker has it durably.
#[derive(Serialize, utoipa::ToSchema)]
struct Aceito {
    id: EntryId,
    /// The key that makes a repeat of this request the same entry: the `Idempotency-Key` sent,
    /// or one ingest chose. Not sent for a reversal, whose id comes from the entry it reverses.
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<String>,
    /// Always `aceito`.
    #[schema(value_type = String, example = "aceito")]
    status: &'static str,
    /// Where the entry is in the log: `aguardar` on a balance read waits for it.
    posicao: String,
    /// For a reversal: the entry it reverses.
    #[serde(skip_serializing_if = "Option::is_none")]
    estorno_de: Option<EntryId>,
}

fn check_window(window: &DateWindow, data: BusinessDate) -> Result<(), Problem> {
    match window.reject(data, BusinessDate::today()) {
        None => Ok(()),
        Some(why) => Err(Problem::validation(vec![FieldError::new("data", why)])),
    }
}

/// A new entry from a request body, and its idempotency key: the merchant from the token, the
/// id from the key, every field checked. Without a key, ingest chooses one (a random UUID), so
/// that every answer, a 202 or a 503 the broker left uncertain, names a key that makes a retry
/// the same entry.
pub(crate) fn prepare(
    state: &IngestState,
    principal: &Principal,
    body: &Value,
    idempotency_key: Option<String>,
) -> Result<(Lancamento, String), Problem> {
    principal.refuse_foreign(body)?;
    let novo = parse_novo(body).map_err(Problem::validation)?;
    check_window(&state.date_window, novo.data)?;
    let merchant = principal.merchant_id.clone();
    let key = idempotency_key.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let entry = Lancamento {
        id: EntryId::from_idempotency_key(&merchant, &key),
        merchant_id: merchant,
        tipo: novo.tipo,
        valor: novo.valor,
        data: novo.data,
        descricao: novo.descricao,
        categoria: novo.categoria,
        criado_em: chrono::Utc::now(),
        estorno_de: None,
    };
    Ok((entry, key))
}

/// 503 for an entry the broker did not acknowledge, naming the id and the key (when there is
/// one) with which a retry is the same entry: a timed-out entry may be in the log, and a retry
/// without its key would count it twice.
pub(crate) fn not_acknowledged(e: IngestError, id: EntryId, key: Option<&str>) -> Problem {
    let retry = match key {
        Some(k) => format!("retry with the header Idempotency-Key: {k} (it is entry {id} either way)"),
        None => format!("retry the same request: it is entry {id} either way"),
    };
    let detail = match e {
        IngestError::NotSent(_) => format!("the entry was not recorded; {retry}"),
        IngestError::Unconfirmed(_) => {
            format!("the broker did not confirm the entry: it may or may not be recorded; {retry}, and it counts once")
        }
    };
    let mut problem = Problem::unavailable(detail, RETRY_AFTER_SECS).caused_by(e);
    problem.entry = Some(Box::new(Unacknowledged { id: id.to_string(), idempotency_key: key.map(str::to_owned) }));
    problem
}

/// Records an entry. Answered only after the broker acknowledged it; repeating the call with the
/// same `Idempotency-Key` yields the same id, counted once. Every answer carries the key (the one
/// sent, or one chosen for the request): a 503 may leave the entry recorded or not, and a retry
/// with that key is the same entry either way.
#[utoipa::path(
    post,
    path = "/v1/lancamentos",
    tag = "lancamentos",
    request_body = NovoLancamento,
    params(("Idempotency-Key" = Option<String>, Header, description = "1 to 255 visible ASCII characters")),
    responses((status = 202, description = "Accepted", body = Aceito), Problems),
    security(("bearer" = ["lancamentos:write"]))
)]
async fn create(
    State(state): State<IngestState>,
    principal: Principal,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Result<Response, Problem> {
    principal.require(SCOPE_WRITE)?;
    let (entry, key) = prepare(&state, &principal, &body, idempotency_key(&headers)?)?;
    let posicao = state.publisher.publish(&entry).await.map_err(|e| not_acknowledged(e, entry.id, Some(&key)))?;
    let body = Aceito {
        id: entry.id,
        idempotency_key: Some(key),
        status: "aceito",
        posicao: posicao.seal(&state.sealer, &entry.merchant_id),
        estorno_de: None,
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// Reverses an entry. The reversal's id is derived from the original, so repeating the call is
/// safe. What the store already knows is checked here (already reversed: 409; a reversal: 422),
/// and so is a reversal of the same entry this ingest accepted with other facts (409). An
/// original not consolidated yet is accepted, and consolidation retries the reversal with backoff
/// while the original may still arrive, then parks it (replayable). Another merchant's entry is
/// answered exactly as an unknown one: nothing tells which ids exist.
#[utoipa::path(
    post,
    path = "/v1/lancamentos/{id}/estorno",
    tag = "lancamentos",
    params(("id" = EntryId, Path, description = "The entry to reverse")),
    request_body(content = Option<NovoEstorno>, description = "Optional: when and why"),
    responses((status = 202, description = "Accepted", body = Aceito), Problems),
    security(("bearer" = ["lancamentos:write"]))
)]
async fn reverse(
    State(state): State<IngestState>,
    principal: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    principal.require(SCOPE_WRITE)?;
    let of: EntryId = id.parse().map_err(|_| Problem::not_found("no entry with that id"))?;
    let body: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Default::default())
    } else {
        cashflow_http::require_json(&headers)?;
        cashflow_http::refuse_duplicate_keys(&body)?;
        serde_json::from_slice(&body).map_err(|e| Problem::bad_request(format!("the body is not valid JSON: {e}")))?
    };
    principal.refuse_foreign(&body)?;
    let novo = parse_estorno(&body).map_err(Problem::validation)?;
    let data = novo.data.unwrap_or_else(BusinessDate::today);
    check_window(&state.date_window, data)?;
    let merchant = principal.merchant_id;
    let reversal_id = EntryId::reversal_of(&merchant, of);
    let original = state.store.find_entry(of).await?.filter(|o| o.merchant_id == merchant.as_str());
    if original.as_ref().is_some_and(|o| o.estorno_de.is_some()) {
        return Err(Problem::validation(vec![FieldError::new("id", "is itself a reversal and cannot be reversed")]));
    }
    if original.is_some()
        && let Some(by) = state.store.reversal_of(of).await?
    {
        return Err(Problem::new(StatusCode::CONFLICT, "already-reversed", "Entry already reversed")
            .detail(format!("entry {of} was already reversed by {by}")));
    }
    let facts = (data, novo.descricao.unwrap_or_else(|| format!("estorno de {of}")));
    if let Some((first, _)) = state.pending.conflict(reversal_id, &facts) {
        return Err(Problem::new(StatusCode::CONFLICT, "already-reversed", "Entry already reversed").detail(format!(
            "entry {of} has a reversal {reversal_id} of {first} waiting for it: a reversal with other facts would be parked"
        )));
    }
    let reversal = Reversal {
        id: reversal_id,
        merchant_id: merchant,
        of,
        data,
        descricao: facts.1.clone(),
        criado_em: chrono::Utc::now(),
        stated: original.map(|o| (o.tipo.inverse(), o.valor_cents)),
    };
    let posicao = state.publisher.publish_reversal(&reversal).await.map_err(|e| {
        if matches!(e, IngestError::NotSent(_)) {
            state.pending.forget(reversal_id, &facts);
        }
        not_acknowledged(e, reversal_id, None)
    })?;
    let body = Aceito {
        id: reversal_id,
        idempotency_key: None,
        status: "aceito",
        posicao: posicao.seal(&state.sealer, &reversal.merchant_id),
        estorno_de: Some(of),
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// The `Idempotency-Key` header, if present.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    headers
        .get(IDEMPOTENCY_KEY)
        .map(|v| check_key("Idempotency-Key", v.to_str().unwrap_or_default()))
        .transpose()
        .map_err(|e| Problem::validation(vec![e]))
}

/// An idempotency key: 1 to 255 visible ASCII characters.
pub(crate) fn check_key(field: &str, key: &str) -> Result<String, FieldError> {
    if (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(key.to_owned())
    } else {
        Err(FieldError::new(field, "must be 1 to 255 visible ASCII characters"))
    }
}
