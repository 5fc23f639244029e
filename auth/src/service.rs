//! `POST /auth/token` (OAuth2 password grant, JSON or form) and `GET /.well-known/jwks.json`.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cashflow_core::config::LoginLimit;
use cashflow_sinks::Store;
use governor::clock::{Clock as _, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use serde::{Deserialize, Serialize};

use crate::{Issuer, verify_password};

pub struct AuthState {
    pub issuer: Issuer,
    pub store: Store,
    pub limits: LoginLimits,
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

pub fn router(state: Arc<AuthState>) -> Router {
    Router::new().route("/auth/token", post(token)).route("/.well-known/jwks.json", get(jwks)).with_state(state)
}

#[derive(Deserialize)]
struct TokenRequest {
    grant_type: String,
    username: Option<String>,
    password: Option<String>,
}

#[derive(Serialize)]
struct TokenResponse {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
    scope: String,
}

/// An RFC 6749 §5.2 error.
struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: &'static str,
    retry_after_secs: Option<u64>,
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.error, "error_description": self.description });
        let mut response = (self.status, [(header::CACHE_CONTROL, "no-store")], Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            response.headers_mut().insert(header::RETRY_AFTER, secs.into());
        }
        response
    }
}

fn oauth(status: StatusCode, error: &'static str, description: &'static str) -> OAuthError {
    OAuthError { status, error, description, retry_after_secs: None }
}

async fn token(
    State(state): State<Arc<AuthState>>,
    address: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let request: TokenRequest = if form {
        serde_urlencoded::from_bytes(&body)
            .map_err(|_| oauth(StatusCode::BAD_REQUEST, "invalid_request", "the body is not a valid form"))?
    } else {
        serde_json::from_slice(&body).map_err(|_| {
            oauth(StatusCode::BAD_REQUEST, "invalid_request", "the body must be JSON or a form with grant_type")
        })?
    };
    if request.grant_type != "password" {
        return Err(oauth(StatusCode::BAD_REQUEST, "unsupported_grant_type", "only the password grant is supported"));
    }
    let (Some(username), Some(password)) = (request.username, request.password) else {
        return Err(oauth(StatusCode::BAD_REQUEST, "invalid_request", "username and password are required"));
    };
    if let Err(secs) = state.limits.check(&username, address.map(|Extension(ConnectInfo(a))| a.ip())) {
        tracing::warn!("token requests over the login limit");
        let slow_down = "too many token requests; retry later";
        return Err(OAuthError {
            retry_after_secs: Some(secs),
            ..oauth(StatusCode::TOO_MANY_REQUESTS, "invalid_request", slow_down)
        });
    }
    let invalid = || oauth(StatusCode::BAD_REQUEST, "invalid_grant", "invalid username or password");
    let user = state.store.find_user(&username).await.map_err(|e| {
        tracing::error!(error = %e, "cannot read users");
        oauth(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", "try again later")
    })?;
    let stored_hash = user.as_ref().map(|u| u.password_hash.clone());
    if !verify_password(password, stored_hash).await {
        return Err(invalid());
    }
    let user = user.ok_or_else(invalid)?;
    let token = state.issuer.issue(&user.username, &user.merchant_id, &user.scopes).map_err(|e| {
        tracing::error!(error = %e, "cannot sign a token");
        oauth(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "cannot issue a token")
    })?;
    let body = TokenResponse {
        access_token: token,
        token_type: "Bearer",
        expires_in: state.issuer.ttl_secs(),
        scope: user.scopes.join(" "),
    };
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response())
}

async fn jwks(State(state): State<Arc<AuthState>>) -> Response {
    let body = serde_json::json!({ "keys": state.issuer.keys().jwks() });
    ([(header::CACHE_CONTROL, "public, max-age=300")], Json(body)).into_response()
}
