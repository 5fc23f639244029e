//! The ingest API: `POST /v1/lancamentos` validates an entry, publishes it to Kafka keyed by
//! merchant with an idempotent producer, and answers 202 only after the broker acknowledged it.
//! `POST /v1/lancamentos/lote` takes up to 1,000 at once; `POST /v1/lancamentos/{id}/estorno`
//! publishes a reversal the same way.

mod lote;
mod pending;
mod publisher;
mod service;
mod validate;

pub use lote::MAX_LOTE;
pub use pending::PendingReversals;
pub use publisher::{IngestError, Publisher};
pub use service::{IngestState, api, router};
pub use validate::{NovoEstorno, NovoLancamento, parse_estorno, parse_novo};
