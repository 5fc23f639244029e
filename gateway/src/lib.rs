//! The HTTP gateway: validates bearer tokens (EdDSA pinned, `iss`, `aud`, `exp`, `nbf`), puts the
//! caller's [`Principal`](cashflow_http::Principal) on the request, limits request rates, and
//! routes to auth, ingest, the balance queries and the dead-letter admin routes: in process (the
//! embedded shape) or by proxy to the stages (the distributed shape). It serves the merchant's
//! page at `/`, which calls those routes. Every error is problem+json.

mod admin;
mod openapi;
mod page;
mod proxy;
mod query;
mod service;

pub use openapi::openapi;
pub use proxy::{Upstream, Upstreams};
pub use query::{ProgressWatch, QueryState, STALE_HEADER};
pub use service::{Apis, GatewayState, router};
