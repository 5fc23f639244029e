//! `POST /auth/token` (OAuth2 `password` and `client_credentials` grants, JSON or form) and
//! `GET /.well-known/jwks.json`.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use cashflow_core::config::{AuthConfig, LoginLimit};
use cashflow_core::failure::Transient;
use cashflow_http::Cause;
use cashflow_observability::LogLimit;
use cashflow_sinks::Store;
use governor::clock::{Clock as _, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::keys::Jwk;
use crate::{Issuer, KeyStore, verify_password};

pub struct AuthState {
    pub issuer: Issuer,
    pub store: Store,
    pub limits: LoginLimits,
    /// Peers (a gateway) trusted to name the client in `X-Forwarded-For`.
    pub trusted_proxies: Vec<IpAddr>,
}

impl AuthState {
    /// The token API `services.auth` declares, signing with `keys`.
    pub fn build(config: &AuthConfig, keys: Arc<KeyStore>, store: Store) -> Self {
        AuthState {
            issuer: Issuer::new(keys, &config.issuer, &config.audience, config.token_ttl),
            store,
            limits: LoginLimits::new(config.login_limit_per_username, config.login_limit_per_address),
            trusted_proxies: config.trusted_proxies.clone(),
        }
    }

    /// The client's address: the peer's, or the one a trusted proxy forwarded.
    fn client_address(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let forwarded = || {
            let list = headers.get("x-forwarded-for")?.to_str().ok()?;
            list.rsplit(',').next()?.trim().parse().ok()
        };
        match peer {
            Some(ip) if self.trusted_proxies.contains(&ip) => forwarded().or(peer),
            _ => peer,
        }
    }
}

type Limiter<K> = RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock>;

/// Token requests allowed per username and per client address. Every request counts, whether
/// the user exists or not, so the limit says nothing about which usernames are real.
pub struct LoginLimits {
    per_username: Limiter<String>,
    per_address: Limiter<IpAddr>,
}

impl LoginLimits {
    pub fn new(per_username: LoginLimit, per_address: LoginLimit) -> Self {
        LoginLimits {
            per_username: RateLimiter::keyed(quota(per_username)),
            per_address: RateLimiter::keyed(quota(per_address)),
        }
    }

    /// `Err(seconds to wait)` when either limit is spent.
    fn check(&self, username: &str, address: Option<IpAddr>) -> Result<(), u64> {
        let wait =
            |not_until: governor::NotUntil<_>| not_until.wait_time_from(DefaultClock::default().now()).as_secs().max(1);
        if let Some(ip) = address {
            self.per_address.check_key(&ip).map_err(wait)?;
        }
        self.per_username.check_key(&username.to_lowercase()).map_err(wait)
    }
}

fn quota(limit: LoginLimit) -> Quota {
    let per_minute = NonZeroU32::new(limit.per_minute).unwrap_or(NonZeroU32::MIN);
    Quota::per_minute(per_minute).allow_burst(NonZeroU32::new(limit.burst).unwrap_or(NonZeroU32::MIN))
}

/// The routes and their OpenAPI description, from the same handlers.
pub fn api() -> OpenApiRouter<Arc<AuthState>> {
    OpenApiRouter::new().routes(routes!(token)).routes(routes!(jwks))
}

pub fn router(state: Arc<AuthState>) -> Router {
    Router::from(api().with_state(state))
}

/// A token request (RFC 6749): `password` with `username` and `password`, or
/// `client_credentials` with `client_id` and `client_secret` (or HTTP Basic).
#[derive(Deserialize, utoipa::ToSchema)]
struct TokenRequest {
    #[schema(example = "password")]
    grant_type: String,
    username: Option<String>,
    password: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    /// Space-separated; narrows the granted scopes.
    scope: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct TokenResponse {
    /// An EdDSA-signed JWT.
    access_token: String,
    #[schema(value_type = String, example = "Bearer")]
    token_type: &'static str,
    expires_in: u64,
    scope: String,
}

/// An RFC 6749 §5.2 error body.
#[derive(Serialize, utoipa::ToSchema)]
struct OAuthErrorBody {
    #[schema(example = "invalid_grant")]
    error: String,
    error_description: String,
}

/// An RFC 6749 §5.2 error: the token endpoint's own format, not problem+json. A server-side
/// failure's [`Cause`] rides on the response like a problem's, for the same log line.
struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: &'static str,
    retry_after_secs: Option<u64>,
    cause: Option<Cause>,
}

/// The store unreachable is `temporarily_unavailable` (503); anything else a `server_error` (500).
impl<E: Transient> From<E> for OAuthError {
    fn from(error: E) -> Self {
        let (status, code) = if error.is_transient() {
            (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable")
        } else {
            (StatusCode::INTERNAL_SERVER_ERROR, "server_error")
        };
        OAuthError { cause: Some(Cause::new(error, status)), ..oauth(status, code, "try again later") }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let reason = if self.status == StatusCode::TOO_MANY_REQUESTS { "rate_limited" } else { self.error };
        cashflow_observability::metrics().auth_token_requests_rejected.with_label_values(&[reason]).inc();
        let body = OAuthErrorBody { error: self.error.to_owned(), error_description: self.description.to_owned() };
        let mut response = (self.status, [(header::CACHE_CONTROL, "no-store")], Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            response.headers_mut().insert(header::RETRY_AFTER, secs.into());
        }
        if let Some(cause) = self.cause {
            response.extensions_mut().insert(cause);
        }
        if self.error == "invalid_client" {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"cashflow\""));
        }
        response
    }
}

fn oauth(status: StatusCode, error: &'static str, description: &'static str) -> OAuthError {
    OAuthError { status, error, description, retry_after_secs: None, cause: None }
}

/// Who asks for a token, and the hash their secret must match.
struct Credentials {
    /// The username, or the client id.
    subject: String,
    secret: String,
}

/// What a verified subject may get.
struct Grant {
    /// `None` for an operator.
    merchant_id: Option<String>,
    scopes: Vec<String>,
}

/// Issues an access token: the `password` grant for merchant users, `client_credentials` for
/// service clients (secret in the body or HTTP Basic). A wrong secret and an unknown name get the
/// same answer in the same time. Limited per username or client and per address (429).
#[utoipa::path(
    post,
    path = "/auth/token",
    tag = "auth",
    request_body(content(
        (TokenRequest = "application/json"),
        (TokenRequest = "application/x-www-form-urlencoded"),
    )),
    responses(
        (status = 200, description = "A token", body = TokenResponse),
        (status = "4XX", description = "An OAuth2 error (400, 401 invalid_client, 429 with Retry-After)", body = OAuthErrorBody),
        (status = 500, description = "A server fault (`server_error`)", body = OAuthErrorBody),
        (status = 503, description = "The store is unreachable (`temporarily_unavailable`)", body = OAuthErrorBody),
    )
)]
async fn token(
    State(state): State<Arc<AuthState>>,
    address: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    let request = parse_request(&headers, &body)?;
    let client = request.grant_type == "client_credentials";
    let credentials = match request.grant_type.as_str() {
        "password" => match (&request.username, &request.password) {
            (Some(u), Some(p)) => Credentials { subject: u.clone(), secret: p.clone() },
            _ => return Err(oauth(StatusCode::BAD_REQUEST, "invalid_request", "username and password are required")),
        },
        "client_credentials" => client_credentials(&headers, &request)?,
        _ => {
            let supported = "the supported grants are password and client_credentials";
            return Err(oauth(StatusCode::BAD_REQUEST, "unsupported_grant_type", supported));
        }
    };
    let limit_key = if client { format!("client:{}", credentials.subject) } else { credentials.subject.clone() };
    let address = state.client_address(address.map(|Extension(ConnectInfo(a))| a.ip()), &headers);
    if let Err(secs) = state.limits.check(&limit_key, address) {
        // Anyone can send these: one line per 10 s, counting the rest.
        static OVER_LIMIT: LazyLock<LogLimit> = LazyLock::new(|| LogLimit::every(Duration::from_secs(10)));
        if let Some(held_back) = OVER_LIMIT.admit() {
            tracing::warn!(held_back, "token requests over the login limit");
        }
        let slow_down = "too many token requests; retry later";
        return Err(OAuthError {
            retry_after_secs: Some(secs),
            ..oauth(StatusCode::TOO_MANY_REQUESTS, "invalid_request", slow_down)
        });
    }
    let (hash, grant) = if client {
        let found = state.store.find_client(&credentials.subject).await?;
        found.map(|c| (c.secret_hash, Grant { merchant_id: c.merchant_id, scopes: c.scopes })).unzip()
    } else {
        let found = state.store.find_user(&credentials.subject).await?;
        found.map(|u| (u.password_hash, Grant { merchant_id: u.merchant_id, scopes: u.scopes })).unzip()
    };
    let rejected = if client {
        oauth(StatusCode::UNAUTHORIZED, "invalid_client", "invalid client id or secret")
    } else {
        oauth(StatusCode::BAD_REQUEST, "invalid_grant", "invalid username or password")
    };
    if !verify_password(credentials.secret, hash).await {
        return Err(rejected);
    }
    let grant = grant.ok_or(rejected)?;
    let scopes = narrow(grant.scopes, request.scope.as_deref())?;
    let token = state.issuer.issue(&credentials.subject, grant.merchant_id.as_deref(), &scopes).map_err(|e| {
        let status = StatusCode::INTERNAL_SERVER_ERROR;
        OAuthError { cause: Some(Cause::new(e, status)), ..oauth(status, "server_error", "cannot issue a token") }
    })?;
    cashflow_observability::metrics().auth_tokens_issued.with_label_values(&[request.grant_type.as_str()]).inc();
    let body = TokenResponse {
        access_token: token,
        token_type: "Bearer",
        expires_in: state.issuer.ttl_secs(),
        scope: scopes.join(" "),
    };
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response())
}

fn parse_request(headers: &HeaderMap, body: &[u8]) -> Result<TokenRequest, OAuthError> {
    let form = cashflow_http::content_type(headers).is_some_and(|t| t == "application/x-www-form-urlencoded");
    if form {
        serde_urlencoded::from_bytes(body)
            .map_err(|_| oauth(StatusCode::BAD_REQUEST, "invalid_request", "the body is not a valid form"))
    } else if cashflow_http::is_json(headers) {
        if cashflow_http::duplicate_key(body).is_some() {
            return Err(oauth(StatusCode::BAD_REQUEST, "invalid_request", "the body gives a key twice"));
        }
        serde_json::from_slice(body).map_err(|_| {
            oauth(StatusCode::BAD_REQUEST, "invalid_request", "the body must be JSON or a form with grant_type")
        })
    } else {
        let why = "the body must be a form (application/x-www-form-urlencoded) or JSON (application/json)";
        Err(oauth(StatusCode::UNSUPPORTED_MEDIA_TYPE, "invalid_request", why))
    }
}

/// The client's id and secret, from HTTP Basic (RFC 6749 §2.3.1) or the body, not both.
fn client_credentials(headers: &HeaderMap, request: &TokenRequest) -> Result<Credentials, OAuthError> {
    let basic = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Basic "));
    let bad = || oauth(StatusCode::UNAUTHORIZED, "invalid_client", "invalid client id or secret");
    match (basic, &request.client_id, &request.client_secret) {
        (Some(encoded), None, None) => {
            let decoded = STANDARD.decode(encoded.trim()).map_err(|_| bad())?;
            let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
            let (id, secret) = decoded.split_once(':').ok_or_else(bad)?;
            let unescape = |s: &str| form_urlencoded_decode(s).ok_or_else(bad);
            Ok(Credentials { subject: unescape(id)?, secret: unescape(secret)? })
        }
        (None, Some(id), Some(secret)) => Ok(Credentials { subject: id.clone(), secret: secret.clone() }),
        _ => Err(oauth(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "client_id and client_secret are required, in the body or by HTTP Basic (not both)",
        )),
    }
}

/// RFC 6749 §2.3.1 form-encodes the id and secret before Basic encoding.
fn form_urlencoded_decode(s: &str) -> Option<String> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(&format!("v={s}")).ok()?.pop().map(|(_, v)| v)
}

/// The granted scopes, narrowed to those requested; asking for one not granted is `invalid_scope`.
fn narrow(granted: Vec<String>, requested: Option<&str>) -> Result<Vec<String>, OAuthError> {
    let Some(requested) = requested.filter(|r| !r.trim().is_empty()) else {
        return Ok(granted);
    };
    let requested: Vec<String> = requested.split_whitespace().map(str::to_owned).collect();
    if requested.iter().all(|r| granted.contains(r)) {
        Ok(requested)
    } else {
        Err(oauth(StatusCode::BAD_REQUEST, "invalid_scope", "a requested scope is not granted to these credentials"))
    }
}

/// The public signing keys (RFC 7517), each with its `kid`: the signing key and any key still
/// in its rotation overlap.
#[utoipa::path(
    get,
    path = "/.well-known/jwks.json",
    tag = "auth",
    responses((status = 200, description = "The key set", body = Jwks))
)]
async fn jwks(State(state): State<Arc<AuthState>>) -> Response {
    let body = Jwks { keys: state.issuer.keys().jwks().to_vec() };
    ([(header::CACHE_CONTROL, "public, max-age=300")], Json(body)).into_response()
}

#[derive(Serialize, utoipa::ToSchema)]
struct Jwks {
    keys: Vec<Jwk>,
}
