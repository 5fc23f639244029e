//! The HTTP edge every service shares: RFC 9457 problem+json errors, the authenticated
//! principal, and a JSON extractor whose rejections are problems too.
//!
//! Handlers return `Result<_, Problem>` and use `?` on the stages' errors: an error that is
//! [`Transient`] becomes a 503 with `Retry-After`, any other a 500. The error itself never reaches
//! the client; it rides on the response as a [`Cause`], and [`log_failures`] logs it once.

mod negotiate;
pub mod serve;
mod strict;

pub use negotiate::negotiate;
pub use strict::duplicate_key;

use axum::extract::rejection::JsonRejection;
use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cashflow_core::failure::Transient;
use serde::Serialize;
use serde::de::DeserializeOwned;

use cashflow_core::MerchantId;

pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// Scope to post entries.
pub const SCOPE_WRITE: &str = "lancamentos:write";
/// Scope to read balances.
pub const SCOPE_READ: &str = "consolidado:read";
/// Operators: the dead-letter topic.
pub const SCOPE_ADMIN: &str = "admin";

/// One field's problem in a validation error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError { field: field.into(), message: message.into() }
    }
}

/// An entry the broker did not acknowledge in time: it may be in the log or not.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Unacknowledged {
    /// The entry's id, whether or not it was recorded.
    #[schema(required = false)]
    pub id: String,
    /// Retried with this `Idempotency-Key`, the entry is recorded exactly once, whether or not
    /// the first attempt was. Absent for a reversal, whose id comes from the entry it reverses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// An RFC 9457 problem (`application/problem+json`). What went wrong inside is its [`Cause`]:
/// logged, never shown.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI reference naming the kind of problem, e.g. `/problems/validation`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: &'static str,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// For validation problems: each invalid field.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// For an entry the broker did not acknowledge: its id, and the key that makes a retry the
    /// same entry.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Unacknowledged)]
    pub entry: Option<Box<Unacknowledged>>,
    #[serde(skip)]
    #[schema(ignore)]
    pub retry_after_secs: Option<u32>,
    #[serde(skip)]
    #[schema(ignore)]
    pub www_authenticate: bool,
    #[serde(skip)]
    #[schema(ignore)]
    cause: Option<Cause>,
}

/// How long a client waits before retrying a 503 whose cause is transient.
pub const RETRY_AFTER_SECS: u64 = 5;

/// The error behind a 5xx answer. It travels in the response's extensions, never in its body,
/// and [`log_failures`] logs it. One pointer wide, so a `Result<_, Problem>` stays small.
#[derive(Clone)]
pub struct Cause(Arc<Failed>);

struct Failed {
    error: Box<dyn std::error::Error + Send + Sync>,
    /// The answer was a 502, 503 or 504: retried, it may succeed. Logged as a warning.
    passing: bool,
}

impl std::fmt::Debug for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0.error, f)
    }
}

impl Cause {
    /// `error`, behind an answer with `status`.
    pub fn new(error: impl std::error::Error + Send + Sync + 'static, status: StatusCode) -> Self {
        Cause(Arc::new(Failed { error: Box::new(error), passing: matches!(status.as_u16(), 502..=504) }))
    }

    /// This cause as the first of `count` in one answer (the items of a batch).
    pub fn of_many(&self, count: usize) -> Self {
        if count == 1 {
            return self.clone();
        }
        let error = format!("{count} items failed; the first: {}", self.0.error);
        Cause(Arc::new(Failed { error: error.into(), passing: self.0.passing }))
    }
}

/// 503 for what time fixes, 500 for the rest; the error is the answer's [`Cause`].
impl<E: Transient> From<E> for Problem {
    fn from(error: E) -> Self {
        let problem = if error.is_transient() {
            Problem::unavailable("a service this answer needs is unreachable; retry shortly", RETRY_AFTER_SECS)
        } else {
            Problem::internal()
        };
        problem.caused_by(error)
    }
}

/// Middleware: logs the [`Cause`] of each failed answer once, with the route, the status and the
/// request id: a warning for a 502, 503 or 504, an error for anything else.
pub async fn log_failures(req: Request, next: Next) -> Response {
    // Cheap clones (shared bytes), kept for the rare answer that failed; nothing is formatted
    // for the others.
    let (route, uri, method) =
        (req.extensions().get::<MatchedPath>().cloned(), req.uri().clone(), req.method().clone());
    let request_id = req.headers().get("x-request-id").cloned();
    let response = next.run(req).await;
    if let Some(Cause(failed)) = response.extensions().get::<Cause>() {
        let route = route.as_ref().map_or(uri.path(), MatchedPath::as_str);
        let request_id = request_id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or_default();
        let (status, error) = (response.status().as_u16(), &failed.error);
        if failed.passing {
            tracing::warn!(%method, %route, status, request_id, error = %error, "request failed");
        } else {
            tracing::error!(%method, %route, status, request_id, error = %error, "request failed");
        }
    }
    response
}

impl Problem {
    pub fn new(status: StatusCode, slug: &str, title: &'static str) -> Self {
        Problem {
            kind: format!("/problems/{slug}"),
            title,
            status: status.as_u16(),
            detail: None,
            errors: Vec::new(),
            entry: None,
            retry_after_secs: None,
            www_authenticate: false,
            cause: None,
        }
    }

    /// A problem named after `status` alone (`405 Method Not Allowed`: `/problems/method-not-allowed`),
    /// for answers the HTTP layer chose.
    pub fn of_status(status: StatusCode) -> Self {
        let title = status.canonical_reason().unwrap_or("Error");
        Problem::new(status, &title.to_ascii_lowercase().replace(' ', "-"), title)
    }

    /// `error` is why this answer is a failure: logged once by [`log_failures`].
    pub fn caused_by(mut self, error: impl std::error::Error + Send + Sync + 'static) -> Self {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        self.cause = Some(Cause::new(error, status));
        self
    }

    /// Why this answer is a failure, if the server is at fault.
    pub fn cause(&self) -> Option<&Cause> {
        self.cause.as_ref()
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(u32::try_from(secs).unwrap_or(u32::MAX));
        self
    }

    pub fn validation(errors: Vec<FieldError>) -> Self {
        let mut p = Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "validation", "Invalid request")
            .detail("one or more fields are invalid; see errors");
        p.errors = errors;
        p
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::BAD_REQUEST, "bad-request", "Bad request").detail(detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        let mut p = Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized").detail(detail);
        p.www_authenticate = true;
        p
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden").detail(detail)
    }

    /// A request that names, or touches the data of, a merchant other than the token's.
    pub fn foreign_merchant() -> Self {
        Problem::forbidden("the token's merchant is the only one this request may read or write")
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found").detail(detail)
    }

    pub fn unavailable(detail: impl Into<String>, retry_after_secs: u64) -> Self {
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Service unavailable")
            .detail(detail)
            .retry_after(retry_after_secs)
    }

    pub fn internal() -> Self {
        Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error")
            .detail("the error was logged; try again later")
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).expect("a problem of strings and numbers serializes");
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_CONTENT_TYPE));
        if let Some(secs) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.www_authenticate {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(cause) = self.cause {
            response.extensions_mut().insert(cause);
        }
        response
    }
}

/// The problems every API route may answer, for the OpenAPI spec.
#[derive(utoipa::IntoResponses)]
pub enum Problems {
    /// Bad input (400, 413, 415, 422), no or bad token (401), missing scope or another merchant's
    /// data (403), unknown (404), no representation `Accept` takes (406), conflict (409), or over
    /// a rate limit (429, with `Retry-After`).
    #[response(status = "4XX", content_type = "application/problem+json")]
    Client(Problem),
    /// A fault of the server that retrying will not fix; logged, never detailed here.
    #[response(status = 500, content_type = "application/problem+json")]
    Internal(Problem),
    /// A dependency (broker, store, a stage) is unreachable; retry after `Retry-After` seconds.
    #[response(status = 503, content_type = "application/problem+json")]
    Unavailable(Problem),
}

/// Whom a validated token speaks for: a merchant, or an operator (a login or client of no
/// merchant, for the admin routes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bearer {
    Merchant(Principal),
    Operator(Operator),
}

/// A merchant's caller, from a validated token. The merchant always comes from here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    pub merchant_id: MerchantId,
    pub scopes: Vec<String>,
}

/// An operator, from a validated token that names no merchant: the admin routes take this, and
/// no merchant's route does. A merchant's token never becomes one, whatever its scopes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operator {
    pub subject: String,
    pub scopes: Vec<String>,
}

/// 403 unless `scopes` hold `scope`.
fn require(scopes: &[String], scope: &str) -> Result<(), Problem> {
    if scopes.iter().any(|s| s == scope) {
        Ok(())
    } else {
        Err(Problem::forbidden(format!("the token lacks the scope {scope}")))
    }
}

impl Principal {
    /// 403 unless the token carries `scope`.
    pub fn require(&self, scope: &str) -> Result<(), Problem> {
        require(&self.scopes, scope)
    }
}

impl Operator {
    /// 403 unless the token carries `scope`.
    pub fn require(&self, scope: &str) -> Result<(), Problem> {
        require(&self.scopes, scope)
    }
}

/// Names under which a request might try to choose its merchant: query parameters, headers and
/// body fields. None overrides the token; naming another merchant is refused.
pub const MERCHANT_NAMES: [&str; 5] = ["merchant_id", "merchant", "comerciante", "merchantId", "x-merchant-id"];

impl Principal {
    /// 403 when `value` names a merchant other than the token's.
    pub fn check_named(&self, value: &str) -> Result<(), Problem> {
        if value.trim() == self.merchant_id.as_str() { Ok(()) } else { Err(Problem::foreign_merchant()) }
    }

    /// 403 when a JSON body names another merchant in any of [`MERCHANT_NAMES`].
    pub fn refuse_foreign(&self, body: &serde_json::Value) -> Result<(), Problem> {
        for name in MERCHANT_NAMES {
            match body.get(name) {
                None => {}
                Some(serde_json::Value::String(v)) => self.check_named(v)?,
                Some(_) => return Err(Problem::foreign_merchant()),
            }
        }
        Ok(())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<Bearer>() {
            Some(Bearer::Merchant(principal)) => Ok(principal.clone()),
            Some(Bearer::Operator(_)) => Err(Problem::forbidden("an operator's token acts for no merchant")),
            None => Err(Problem::unauthorized("a bearer token is required")),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Operator {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<Bearer>() {
            Some(Bearer::Operator(operator)) => Ok(operator.clone()),
            Some(Bearer::Merchant(_)) => Err(Problem::forbidden(
                "the admin routes are for operators: a merchant's token cannot use them, whatever its scopes",
            )),
            None => Err(Problem::unauthorized("a bearer token is required")),
        }
    }
}

/// `axum::extract::Query`, with a rejection answered as problem+json.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(rejection) => Err(Problem::bad_request(rejection.body_text())),
        }
    }
}

/// `axum::Json`, with every rejection answered as problem+json.
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        require_json(req.headers())?;
        let bytes =
            axum::body::Bytes::from_request(req, state).await.map_err(|rejection| match rejection.status() {
                StatusCode::PAYLOAD_TOO_LARGE => {
                    Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large", "Payload too large")
                        .detail("the body is larger than the limit")
                }
                _ => Problem::bad_request(rejection.body_text()),
            })?;
        refuse_duplicate_keys(&bytes)?;
        axum::Json::<T>::from_bytes(&bytes).map(|axum::Json(v)| Json(v)).map_err(json_problem)
    }
}

/// 422 naming the first key the JSON body names twice in one object.
pub fn refuse_duplicate_keys(body: &[u8]) -> Result<(), Problem> {
    match duplicate_key(body) {
        Some(path) => Err(Problem::validation(vec![FieldError::new(path, "is given twice")])),
        None => Ok(()),
    }
}

/// 415 unless the request says its body is JSON.
pub fn require_json(headers: &axum::http::HeaderMap) -> Result<(), Problem> {
    if is_json(headers) {
        Ok(())
    } else {
        let detail = "the body must be JSON (Content-Type: application/json)";
        Err(Problem::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type", "Unsupported media type")
            .detail(detail))
    }
}

/// A JSON media type: `application/json`, or `application/<anything>+json`, any case.
pub fn is_json(headers: &axum::http::HeaderMap) -> bool {
    let Some(essence) = content_type(headers) else { return false };
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The body's media type, `type/subtype` in lower case without its parameters (names are
/// case-insensitive: RFC 9110 §8.3.1); `None` without a readable `Content-Type`.
pub fn content_type(headers: &axum::http::HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
}

fn json_problem(rejection: JsonRejection) -> Problem {
    let status = rejection.status();
    let (slug, title) = match status {
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("unsupported-media-type", "Unsupported media type"),
        StatusCode::PAYLOAD_TOO_LARGE => ("payload-too-large", "Payload too large"),
        StatusCode::UNPROCESSABLE_ENTITY => ("validation", "Invalid request"),
        _ => ("bad-request", "Bad request"),
    };
    let detail = match status {
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "the body must be JSON (Content-Type: application/json)".to_owned(),
        StatusCode::PAYLOAD_TOO_LARGE => "the body is larger than the limit".to_owned(),
        _ => rejection.body_text(),
    };
    Problem::new(status, slug, title).detail(detail)
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}
