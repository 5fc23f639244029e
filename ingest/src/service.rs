//! `POST /v1/lancamentos`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use cashflow_core::http::{FieldError, Json, Principal, Problem, SCOPE_WRITE};
use cashflow_core::{EntryId, Lancamento};
use serde::Serialize;
use serde_json::Value;

use crate::{Publisher, parse_novo};

const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Seconds a client should wait before retrying when the broker is unreachable.
const RETRY_AFTER_SECS: u64 = 5;

pub fn router(publisher: Arc<Publisher>) -> Router {
    Router::new().route("/v1/lancamentos", post(create)).with_state(publisher)
}

#[derive(Serialize)]
struct Aceito {
    id: EntryId,
    status: &'static str,
    posicao: String,
}

async fn create(
    State(publisher): State<Arc<Publisher>>,
    principal: Principal,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Result<Response, Problem> {
    principal.require(SCOPE_WRITE)?;
    let key = idempotency_key(&headers)?;
    let novo = parse_novo(&body).map_err(Problem::validation)?;
    let merchant = principal.merchant_id;
    let id = match &key {
        Some(k) => EntryId::from_idempotency_key(&merchant, k),
        None => EntryId::random(),
    };
    let entry = Lancamento {
        id,
        merchant_id: merchant,
        tipo: novo.tipo,
        valor: novo.valor,
        data: novo.data,
        descricao: novo.descricao,
        categoria: novo.categoria,
        criado_em: chrono::Utc::now(),
        estorno_de: None,
    };
    match publisher.publish(&entry).await {
        Ok(posicao) => {
            let body = Aceito { id, status: "aceito", posicao: posicao.to_string() };
            Ok((StatusCode::ACCEPTED, Json(body)).into_response())
        }
        Err(e) => {
            tracing::warn!(error = %e, "entry not accepted: broker unavailable");
            Err(Problem::unavailable(
                "the entry was not recorded; retry with the same Idempotency-Key",
                RETRY_AFTER_SECS,
            ))
        }
    }
}

/// 1 to 255 visible ASCII characters, if present.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(k) if (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()) => Ok(Some(k.to_owned())),
        _ => Err(Problem::validation(vec![FieldError::new(
            "Idempotency-Key",
            "must be 1 to 255 visible ASCII characters",
        )])),
    }
}
