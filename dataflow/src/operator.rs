//! The consolidation as a differential dataflow, run by one timely worker on its own thread.
//!
//! Each epoch's new entries enter one collection, a row per entry: (merchant, day, category),
//! with the entry's effect `(credits, debits, count)` as its diff. Each state the store keeps is
//! differential operators over that collection: rows map to their key in the state (the day and
//! category of a merchant, its day, the merchant itself), and `consolidate` sums the diffs per
//! key; a coarser state maps and consolidates the output of the finer one. Each epoch is one timestamp: the input advances past it and the worker steps
//! until the output has passed it, so what `consolidate` emits for the epoch is each key's change
//! in it, and that is what the store adds.
//!
//! Every state is additive, so the dataflow holds no history: its arrangement keeps no trace
//! (nothing reads one), and a restart starts empty, whatever the store holds.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Mutex;
use std::thread::JoinHandle;

use cashflow_core::{BusinessDate, DayTotals, Lancamento, MerchantId};
use differential_dataflow::input::{Input, InputSession};
use timely::dataflow::operators::Probe;
use tokio::sync::{mpsc, oneshot};

/// An entry as the dataflow sees it: (merchant, days since 1970-01-01, category), the names as
/// numbers from a [`Dictionary`]. Copied, never allocated.
type Row = (u32, i32, u32);
/// A key of one state: (state, merchant, day, category), the fields a state does not have 0.
type Key = (u8, u32, i32, u32);
/// (credits, debits, count), in cents and entries: the diff.
type Totals = (i64, i64, i64);

/// The states, as the first field of a [`Key`].
const CATEGORY: u8 = 0;
const DAY: u8 = 1;
const MERCHANT: u8 = 2;

/// A day whose totals changed in an epoch, and by how much (new totals minus old).
///
/// The store adds these deltas, so writers of disjoint entry sets compose: each entry is counted
/// by the one transaction that inserted its id, whichever consolidator ran it.
pub type DayChange = (MerchantId, BusinessDate, DayTotals);

/// The same for one category of a day (`None`: entries without a category).
pub type CategoryChange = (MerchantId, BusinessDate, Option<String>, DayTotals);

/// A merchant's change in an epoch, of its totals of all time.
pub type MerchantChange = (MerchantId, DayTotals);

/// What an epoch changed, in every state, read from the dataflow's output.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub categories: Vec<CategoryChange>,
    pub days: Vec<DayChange>,
    pub merchants: Vec<MerchantChange>,
}

#[derive(Debug, thiserror::Error)]
pub enum DataflowError {
    #[error("the dataflow worker stopped")]
    WorkerGone,
    #[error("the dataflow produced an invalid key: {0}")]
    BadKey(String),
}

enum Command {
    Apply(Vec<(Row, Totals)>, oneshot::Sender<Vec<(Key, Totals)>>),
}

/// Numbers for merchant ids and categories, in order of first sight. Its size grows with the
/// merchants and categories, not with their days.
#[derive(Default)]
struct Dictionary {
    merchants: Names<MerchantId>,
    /// `""` (no category) is number 0.
    categories: Names<String>,
}

struct Names<T> {
    ids: HashMap<String, u32>,
    names: Vec<T>,
}

impl<T> Default for Names<T> {
    fn default() -> Self {
        Names { ids: HashMap::new(), names: Vec::new() }
    }
}

impl<T: Clone> Names<T> {
    fn id(&mut self, name: &str, value: impl FnOnce() -> T) -> u32 {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = self.names.len() as u32;
        self.ids.insert(name.to_owned(), id);
        self.names.push(value());
        id
    }

    fn name(&self, id: u32) -> Result<T, DataflowError> {
        self.names.get(id as usize).cloned().ok_or_else(|| DataflowError::BadKey(id.to_string()))
    }
}

impl Dictionary {
    fn row(&mut self, merchant: &MerchantId, day: BusinessDate, category: Option<&str>) -> Row {
        let m = self.merchants.id(merchant.as_str(), || merchant.clone());
        let c = category.unwrap_or_default();
        (m, day.days(), self.categories.id(c, || c.to_owned()))
    }

    fn day(days: i32) -> Result<BusinessDate, DataflowError> {
        BusinessDate::from_days(days).ok_or_else(|| DataflowError::BadKey(days.to_string()))
    }

    /// Sorts one output of the dataflow into the state it belongs to.
    fn record(
        &self,
        (state, m, days, c): Key,
        (credits, debits, n): Totals,
        into: &mut Changes,
    ) -> Result<(), DataflowError> {
        let totals = DayTotals { creditos_cents: credits, debitos_cents: debits, quantidade: n };
        let merchant = self.merchants.name(m)?;
        match state {
            CATEGORY => {
                let category = Some(self.categories.name(c)?).filter(|c| !c.is_empty());
                into.categories.push((merchant, Self::day(days)?, category, totals));
            }
            DAY => into.days.push((merchant, Self::day(days)?, totals)),
            MERCHANT => into.merchants.push((merchant, totals)),
            other => return Err(DataflowError::BadKey(format!("state {other}"))),
        }
        Ok(())
    }
}

/// Handle to the worker thread. Dropping it stops the worker.
pub struct Consolidator {
    commands: Option<mpsc::Sender<Command>>,
    thread: Option<JoinHandle<()>>,
    dictionary: Mutex<Dictionary>,
}

impl Consolidator {
    /// Starts a worker. It holds no history: every state it computes is additive, and the store
    /// adds what each epoch changed.
    pub fn start() -> Result<Self, DataflowError> {
        let (tx, rx) = mpsc::channel::<Command>(4);
        let mut dictionary = Dictionary::default();
        dictionary.categories.id("", String::new);
        let thread = std::thread::Builder::new()
            .name("consolidate-dataflow".into())
            .spawn(move || timely::execute_directly(move |worker| run_worker(worker, rx)))
            .map_err(|_| DataflowError::WorkerGone)?;
        Ok(Consolidator { commands: Some(tx), thread: Some(thread), dictionary: Mutex::new(dictionary) })
    }

    /// Adds one epoch of new entries and returns how each state changed. What it returns depends
    /// on these entries alone: the dataflow holds no history, so an epoch whose changes were not
    /// committed leaves nothing behind, and its entries may simply come again.
    pub async fn apply(&self, entries: &[&Lancamento]) -> Result<Changes, DataflowError> {
        let rows: Vec<(Row, Totals)> = {
            let mut dictionary = self.dictionary.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            entries
                .iter()
                .map(|e| {
                    let t = e.totals();
                    (
                        dictionary.row(&e.merchant_id, e.data, e.categoria.as_deref()),
                        (t.creditos_cents, t.debitos_cents, t.quantidade),
                    )
                })
                .collect()
        };
        let (reply, answer) = oneshot::channel();
        let commands = self.commands.as_ref().ok_or(DataflowError::WorkerGone)?;
        commands.send(Command::Apply(rows, reply)).await.map_err(|_| DataflowError::WorkerGone)?;
        let output = answer.await.map_err(|_| DataflowError::WorkerGone)?;
        let dictionary = self.dictionary.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut changes = Changes::default();
        for (key, totals) in output {
            dictionary.record(key, totals, &mut changes)?;
        }
        Ok(changes)
    }
}

impl Drop for Consolidator {
    fn drop(&mut self) {
        // Closing the channel ends the worker loop.
        self.commands.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Builds the dataflow (the one place that does) and serves commands until the channel closes.
fn run_worker(worker: &mut timely::worker::Worker, mut rx: mpsc::Receiver<Command>) {
    // What the dataflow emitted for the epoch being stepped: each key's change.
    let output: Rc<RefCell<Vec<(Key, Totals)>>> = Rc::default();
    let sink = Rc::clone(&output);
    let (mut rows, probe) = worker.dataflow::<u64, _, _>(|scope| {
        let (rows_in, rows) = scope.new_collection::<Row, Totals>();
        // Each state from the one below it: a day's change is the sum of its categories'
        // changes, a merchant's the sum of its days', so each `consolidate` sorts the keys the
        // state below emitted, not every entry again.
        let categories = rows.map(|(merchant, day, category)| (CATEGORY, merchant, day, category)).consolidate();
        let days = categories.clone().map(|(_, merchant, day, _)| (DAY, merchant, day, 0)).consolidate();
        let merchants = days.clone().map(|(_, merchant, _, _)| (MERCHANT, merchant, 0, 0)).consolidate();
        let changes = categories
            .concat(days)
            .concat(merchants)
            .inspect(move |(key, _time, totals)| sink.borrow_mut().push((*key, *totals)));
        let (probe, _) = changes.inner.probe();
        (rows_in, probe)
    });
    let mut epoch: u64 = 0;
    let mut advance = |rows: &mut InputSession<u64, Row, Totals>| {
        epoch += 1;
        rows.advance_to(epoch);
        rows.flush();
        worker.step_while(|| probe.less_than(&epoch));
    };
    while let Some(Command::Apply(batch, reply)) = rx.blocking_recv() {
        for (row, totals) in batch {
            rows.update(row, totals);
        }
        advance(&mut rows);
        let changes: Vec<(Key, Totals)> = std::mem::take(&mut *output.borrow_mut());
        let _ = reply.send(changes.into_iter().filter(|(_, t)| *t != (0, 0, 0)).collect());
    }
}

#[cfg(test)]
mod tests;
