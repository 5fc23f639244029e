//! The ingest API: `POST /v1/lancamentos` validates an entry, publishes it to Kafka keyed by
//! merchant with an idempotent producer, and answers 202 only after the broker acknowledged it.

mod publisher;
mod service;
mod validate;

pub use publisher::{IngestError, Publisher};
pub use service::router;
pub use validate::{NovoLancamento, parse_novo};
