//! The store: PostgreSQL in production, SQLite embedded, one schema and one code path (sqlx
//! `Any`, `$N` placeholders, ISO-8601 text dates). Migrations run at connect.
//!
//! The consolidator writes each epoch in one [`EpochTx`]: new entries, the changes of every
//! declared state and the consumer progress that covers them, committed together or not at all.

mod epoch;
mod extrato;
mod parked;
mod read;
mod reconcile;
mod states;
mod store;
mod users;

pub use epoch::{Delivery, EpochTx, Origin, StoredEntry};
pub use extrato::{ExtratoKey, ExtratoLine, ExtratoQuery};
pub use read::{DailyRows, Mark, MonthlyRows, Progress};
pub use reconcile::{DateRange, Difference, Snapshot, comparable, recompute};
pub use states::{Build, DeclaredState, EntryFacts, StateRows};
pub use store::{Store, StoreError};
pub use users::{Client, User};
