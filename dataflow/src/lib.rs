//! Consolidation: Kafka → timely + differential dataflow → store, in epochs.
//!
//! timely and differential types stay inside this crate.

mod epoch;
mod lag;
mod operator;
mod stage;

pub use operator::{CategoryChange, Changes, Consolidator, DataflowError, DayChange, MerchantChange};
pub use stage::{ConsolidateError, run};
