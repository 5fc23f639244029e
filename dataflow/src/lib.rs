//! Consolidation: Kafka → timely + differential dataflow → store, in epochs.
//!
//! timely and differential types stay inside this crate, and so do the SmartModule engine's.

mod audit;
mod build;
mod epoch;
mod events;
mod lag;
mod operator;
mod reconcile;
pub mod smartmodule;
mod stage;

pub use audit::{AuditError, Covered, Report, Unaccounted, audit};
pub use build::{build, declared, declared_named, rebuild};
pub use operator::{Changes, Consolidator, DataflowError, Fact};
pub use reconcile::Reconciliation;
pub use stage::{ConsolidateError, run};
