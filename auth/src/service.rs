//! `POST /auth/token` (OAuth2 password grant, JSON or form) and `GET /.well-known/jwks.json`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cashflow_sinks::Store;
use serde::{Deserialize, Serialize};

use crate::{Issuer, verify_password};

#[derive(Clone)]
pub struct AuthState {
    pub issuer: Issuer,
    pub store: Store,
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
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.error, "error_description": self.description });
        (self.status, [(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
    }
}

fn oauth(status: StatusCode, error: &'static str, description: &'static str) -> OAuthError {
    OAuthError { status, error, description }
}

async fn token(State(state): State<Arc<AuthState>>, headers: HeaderMap, body: Bytes) -> Result<Response, OAuthError> {
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
