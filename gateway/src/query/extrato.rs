//! The statement (*extrato*): `GET /v1/lancamentos?de&ate&categoria&tipo&cursor&limite`, one
//! page of JSON at a time with an opaque keyset cursor, or (`Accept: text/csv`) the whole range as
//! CSV, streamed page by page so memory stays bounded whatever the range holds.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use cashflow_core::seal::{Purpose, Sealer};
use cashflow_core::{BusinessDate, EntryId, MerchantId, Money, Tipo};
use cashflow_http::{FieldError, Json, Principal, Problem, Problems, Query, SCOPE_READ};
use cashflow_sinks::{ExtratoKey, ExtratoLine, ExtratoQuery, Store};
use futures::StreamExt as _;
use mediatype::MediaType;
use mediatype::names::{APPLICATION, CHARSET, CSV as CSV_NAME, JSON as JSON_NAME, TEXT};
use mediatype::values::UTF_8;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{QueryState, date_range};

/// Entries per page by default, and at most.
const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;
/// Rows per store read while streaming CSV.
const CSV_PAGE: u32 = 1000;
/// The statement's two media types; JSON unless `Accept` prefers CSV.
const JSON: MediaType<'static> = MediaType::new(APPLICATION, JSON_NAME);
const CSV: MediaType<'static> = MediaType::from_parts(TEXT, CSV_NAME, None, &[(CHARSET, UTF_8)]);

pub(crate) fn api() -> OpenApiRouter<Arc<QueryState>> {
    OpenApiRouter::new().routes(routes!(extrato))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ExtratoParams {
    /// First day (YYYY-MM-DD).
    #[param(required = true, value_type = BusinessDate)]
    de: Option<String>,
    /// Last day (YYYY-MM-DD), at most 366 days after `de`.
    #[param(required = true, value_type = BusinessDate)]
    ate: Option<String>,
    /// Only this category.
    categoria: Option<String>,
    /// Only credits or only debits.
    #[param(value_type = Option<Tipo>)]
    tipo: Option<String>,
    /// `proximo_cursor` of the previous page.
    cursor: Option<String>,
    /// Entries per page: 1 to 1000 (default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limite: Option<String>,
}

/// One entry of the statement.
#[derive(Serialize, utoipa::ToSchema)]
struct Movimento {
    id: EntryId,
    data: String,
    tipo: Tipo,
    valor: Money,
    descricao: String,
    categoria: Option<String>,
    /// When the entry was accepted (RFC 3339).
    criado_em: String,
    /// For a reversal: the entry it reverses.
    estorno_de: Option<EntryId>,
    /// For a reversed entry: its reversal.
    estornado_por: Option<EntryId>,
}

impl From<&ExtratoLine> for Movimento {
    fn from(line: &ExtratoLine) -> Self {
        let e = &line.entry;
        Movimento {
            id: e.id,
            data: e.data.clone(),
            tipo: e.tipo,
            valor: Money::from_cents(e.valor_cents),
            descricao: e.descricao.clone(),
            categoria: e.categoria.clone(),
            criado_em: e.criado_em.clone(),
            estorno_de: e.estorno_de,
            estornado_por: line.estornado_por,
        }
    }
}

/// One page of the statement.
#[derive(Serialize, utoipa::ToSchema)]
struct Extrato {
    comerciante: MerchantId,
    de: BusinessDate,
    ate: BusinessDate,
    lancamentos: Vec<Movimento>,
    /// Pass as `cursor` for the next page; null on the last page.
    proximo_cursor: Option<String>,
}

/// The merchant's entries in a date range, ordered by (`data`, `criado_em`, `id`); reversals
/// point at their originals (`estorno_de`) and back (`estornado_por`). When `Accept` prefers
/// `text/csv` (RFC 9110: quality values, any case) the whole range comes as one CSV file
/// (`cursor` and `limite` are ignored); 406 when it accepts neither.
#[utoipa::path(
    get,
    path = "/v1/lancamentos",
    tag = "lancamentos",
    params(ExtratoParams),
    responses(
        (status = 200, description = "A page of entries", content(
            (Extrato = "application/json"),
            (String = "text/csv"),
        )),
        Problems,
    ),
    security(("bearer" = ["consolidado:read"]))
)]
async fn extrato(
    State(state): State<Arc<QueryState>>,
    principal: Principal,
    headers: HeaderMap,
    Query(params): Query<ExtratoParams>,
) -> Result<Response, Problem> {
    principal.require(SCOPE_READ)?;
    let mut query = parse(params, principal.merchant_id, &state.sealer)?;
    if *cashflow_http::negotiate(&headers, &[JSON, CSV])? == CSV {
        query.after = None;
        query.limit = CSV_PAGE;
        return Ok(csv(state.store.clone(), query));
    }
    // One more than asked tells whether another page follows.
    let limit = query.limit;
    query.limit += 1;
    let mut lines = state.store.extrato(&query).await?;
    let more = lines.len() > limit as usize;
    lines.truncate(limit as usize);
    let proximo_cursor = lines.last().filter(|_| more).map(|l| seal_cursor(&state.sealer, &query.merchant, &l.key()));
    let body = Extrato {
        comerciante: query.merchant,
        de: query.de,
        ate: query.ate,
        lancamentos: lines.iter().map(Movimento::from).collect(),
        proximo_cursor,
    };
    Ok(Json(body).into_response())
}

fn parse(p: ExtratoParams, merchant: MerchantId, sealer: &Sealer) -> Result<ExtratoQuery, Problem> {
    let mut errors = Vec::new();
    let range = date_range(p.de.as_deref(), p.ate.as_deref(), &mut errors);
    let tipo =
        p.tipo.as_deref().and_then(|t| t.parse::<Tipo>().map_err(|e| errors.push(FieldError::new("tipo", e))).ok());
    let after = p.cursor.as_deref().and_then(|c| {
        open_cursor(sealer, &merchant, c)
            .ok_or(())
            .map_err(|()| errors.push(FieldError::new("cursor", "is not a cursor returned by this API")))
            .ok()
    });
    let limit = match p.limite.as_deref().map(str::parse::<u32>) {
        None => DEFAULT_LIMIT,
        Some(Ok(n)) if (1..=MAX_LIMIT).contains(&n) => n,
        Some(_) => {
            errors.push(FieldError::new("limite", format!("must be 1 to {MAX_LIMIT}")));
            DEFAULT_LIMIT
        }
    };
    match range {
        Some((de, ate)) if errors.is_empty() => {
            Ok(ExtratoQuery { merchant, de, ate, categoria: p.categoria, tipo, after, limit })
        }
        _ => Err(Problem::validation(errors)),
    }
}

/// The next page's cursor, sealed for `merchant`: it says nothing of the entry it points after.
fn seal_cursor(sealer: &Sealer, merchant: &MerchantId, k: &ExtratoKey) -> String {
    sealer.seal(Purpose::Cursor, merchant, format!("{}|{}|{}", k.data, k.criado_em, k.id).as_bytes())
}

fn open_cursor(sealer: &Sealer, merchant: &MerchantId, c: &str) -> Option<ExtratoKey> {
    let raw = String::from_utf8(sealer.open(Purpose::Cursor, merchant, c)?).ok()?;
    let mut parts = raw.splitn(3, '|');
    let (data, criado_em, id) = (parts.next()?, parts.next()?, parts.next()?);
    data.parse::<BusinessDate>().ok()?;
    id.parse::<EntryId>().ok()?;
    Some(ExtratoKey { data: data.into(), criado_em: criado_em.into(), id: id.into() })
}

const CSV_HEADER: [&str; 9] =
    ["data", "criado_em", "id", "tipo", "valor", "descricao", "categoria", "estorno_de", "estornado_por"];

/// The whole range as CSV, read from the store one page at a time as the client takes it.
fn csv(store: Store, query: ExtratoQuery) -> Response {
    let filename = format!("extrato-{}-{}-{}.csv", query.merchant, query.de, query.ate);
    let first = csv_rows(&[CSV_HEADER.map(String::from).to_vec()]);
    let pages = futures::stream::unfold(Some(query), move |state| {
        let store = store.clone();
        async move {
            let mut query = state?;
            match store.extrato(&query).await {
                Ok(lines) => {
                    let next = (lines.len() == query.limit as usize).then(|| {
                        query.after = lines.last().map(ExtratoLine::key);
                        query
                    });
                    let rows: Vec<Vec<String>> = lines.iter().map(csv_row).collect();
                    Some((Ok::<Bytes, std::io::Error>(csv_rows(&rows)), next))
                }
                Err(e) => {
                    tracing::error!(error = %e, "statement export cut short: store unavailable");
                    Some((Err(std::io::Error::other("store unavailable")), None))
                }
            }
        }
    });
    let body = futures::stream::once(async move { Ok(first) }).chain(pages);
    let mut response = Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    response
}

fn csv_row(line: &ExtratoLine) -> Vec<String> {
    let e = &line.entry;
    let id = |i: Option<EntryId>| i.map(|i| i.to_string()).unwrap_or_default();
    vec![
        e.data.clone(),
        e.criado_em.clone(),
        e.id.to_string(),
        e.tipo.as_str().to_owned(),
        Money::from_cents(e.valor_cents).to_string(),
        spreadsheet_safe(&e.descricao),
        spreadsheet_safe(e.categoria.as_deref().unwrap_or_default()),
        id(e.estorno_de),
        id(line.estornado_por),
    ]
}

/// A cell a spreadsheet would run as a formula (`=`, `+`, `-`, `@`, or a leading tab or carriage
/// return) gets a leading apostrophe, which spreadsheets show as text (OWASP's advice).
fn spreadsheet_safe(cell: &str) -> String {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{cell}") } else { cell.to_owned() }
}

fn csv_rows(rows: &[Vec<String>]) -> Bytes {
    let mut writer = csv::Writer::from_writer(Vec::new());
    for row in rows {
        writer.write_record(row).expect("writing to a Vec does not fail");
    }
    Bytes::from(writer.into_inner().expect("flushing into a Vec does not fail"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formulas_are_neutralised_and_plain_text_is_kept() {
        for (cell, safe) in [
            ("=HYPERLINK(\"http://x\")", "'=HYPERLINK(\"http://x\")"),
            ("+1+1", "'+1+1"),
            ("-2", "'-2"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\tx", "'\tx"),
            ("venda à vista", "venda à vista"),
            ("a=b", "a=b"),
        ] {
            assert_eq!(spreadsheet_safe(cell), safe);
        }
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let k = ExtratoKey {
            data: "2026-01-02".into(),
            criado_em: "2026-01-02T10:00:00.123Z".into(),
            id: "0b7e5a4e-8f7b-4c55-9a55-2d7f0c1f4d3e".into(),
        };
        let sealer = Sealer::new(&Sealer::generate_key());
        let (a, b) = (MerchantId::parse("loja-1").unwrap(), MerchantId::parse("loja-2").unwrap());
        assert_eq!(open_cursor(&sealer, &a, &seal_cursor(&sealer, &a, &k)), Some(k.clone()));
        assert_eq!(open_cursor(&sealer, &b, &seal_cursor(&sealer, &a, &k)), None);
        assert_eq!(open_cursor(&sealer, &a, "bm90IGEgY3Vyc29y"), None);
        assert_eq!(open_cursor(&sealer, &a, "***"), None);
    }
}
