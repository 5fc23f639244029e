//! Consolidation: Kafka → timely + differential dataflow → store, in epochs.
//!
//! timely and differential types stay inside this crate.

mod build;
mod epoch;
mod events;
mod lag;
mod operator;
mod stage;

pub use build::{build, declared};
pub use operator::{Changes, Consolidator, DataflowError, Fact};
pub use stage::{ConsolidateError, run};
