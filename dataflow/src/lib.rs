//! Consolidation: Kafka → timely + differential dataflow → store, in epochs.
//!
//! timely and differential types stay inside this crate.

mod epoch;
mod operator;
mod stage;

pub use operator::{Consolidator, DataflowError, DayChange};
pub use stage::{ConsolidateError, run};
