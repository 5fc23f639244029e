//! The HTTP gateway: validates bearer tokens (EdDSA pinned, `iss`, `aud`, `exp`, `nbf`), puts the
//! caller's [`Principal`](cashflow_core::http::Principal) on the request, and routes to auth,
//! ingest, the balance queries and the dead-letter admin routes. Every error is problem+json.

mod admin;
mod query;
mod service;

pub use service::{GatewayState, router};
