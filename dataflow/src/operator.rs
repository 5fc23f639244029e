//! The daily consolidation as a differential dataflow, run by one timely worker on its own thread.
//!
//! Each epoch's entries are summed per (merchant, day, category) and enter with those sums as
//! the diff `(credits, debits, count)`; an arrangement keeps each key's totals by differential's
//! own accumulation, compacted to one update per key as epochs complete. Each epoch is one
//! timestamp: the input advances past it and the worker steps until the arrangement has taken
//! it. Since totals add up, a key's change in an epoch (new totals minus old) is the epoch's
//! update of it. A day's change is the sum of its categories' changes ([`daily`]).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Mutex;
use std::thread::JoinHandle;

use cashflow_core::{BusinessDate, DayTotals, Lancamento, MerchantId};
use differential_dataflow::input::Input;
use differential_dataflow::operators::arrange::Arranged;
use differential_dataflow::trace::TraceReader;
use timely::dataflow::operators::Probe;
use timely::progress::frontier::AntichainRef;
use tokio::sync::{mpsc, oneshot};

/// (merchant, days since 1970-01-01, category), the names as numbers from a [`Dictionary`]: a
/// key is 12 bytes and copied, never allocated, so state and work per key stay small.
type Key = (u32, i32, u32);
/// (credits, debits, count), in cents and entries.
type Totals = (i64, i64, i64);

/// A day whose totals changed in an epoch, and by how much (new totals minus old).
///
/// The store adds these deltas, so writers of disjoint entry sets compose: each entry is counted
/// by the one transaction that inserted its id, whichever consolidator ran it.
pub type DayChange = (MerchantId, BusinessDate, DayTotals);

/// The same for one category of a day (`None`: entries without a category).
pub type CategoryChange = (MerchantId, BusinessDate, Option<String>, DayTotals);

/// Each day's change: the sum of its categories' changes.
pub fn daily(changes: &[CategoryChange]) -> Result<Vec<DayChange>, DataflowError> {
    let mut days: BTreeMap<(MerchantId, BusinessDate), DayTotals> = BTreeMap::new();
    for (m, d, _, t) in changes {
        let day = days.entry((m.clone(), *d)).or_default();
        *day = day.checked_add(t)?;
    }
    Ok(days.into_iter().filter(|(_, t)| *t != DayTotals::default()).map(|((m, d), t)| (m, d, t)).collect())
}

/// Each merchant's change: the sum of its days' changes.
pub fn by_merchant(days: &[DayChange]) -> Result<Vec<(MerchantId, DayTotals)>, DataflowError> {
    let mut merchants: BTreeMap<&MerchantId, DayTotals> = BTreeMap::new();
    for (m, _, t) in days {
        let merchant = merchants.entry(m).or_default();
        *merchant = merchant.checked_add(t)?;
    }
    Ok(merchants.into_iter().map(|(m, t)| (m.clone(), t)).collect())
}

#[derive(Debug, thiserror::Error)]
pub enum DataflowError {
    #[error("the dataflow worker stopped")]
    WorkerGone,
    #[error("the dataflow produced an invalid key: {0}")]
    BadKey(String),
    /// A sum beyond 64 bits. Consolidation parks any entry that would cause one first, so this
    /// means a broken invariant, and the epoch is not committed.
    #[error(transparent)]
    OutOfRange(#[from] cashflow_core::OutOfRange),
}

enum Command {
    Apply(Vec<(Key, Totals)>, oneshot::Sender<Vec<(Key, Totals)>>),
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
    fn key(&mut self, merchant: &MerchantId, day: BusinessDate, category: Option<&str>) -> Key {
        let m = self.merchants.id(merchant.as_str(), || merchant.clone());
        let c = category.unwrap_or_default();
        (m, day.days(), self.categories.id(c, || c.to_owned()))
    }

    fn change(&self, (m, days, c): Key, (credits, debits, n): Totals) -> Result<CategoryChange, DataflowError> {
        let day = BusinessDate::from_days(days).ok_or_else(|| DataflowError::BadKey(days.to_string()))?;
        let category = Some(self.categories.name(c)?).filter(|c| !c.is_empty());
        let totals = DayTotals { creditos_cents: credits, debitos_cents: debits, quantidade: n };
        Ok((self.merchants.name(m)?, day, category, totals))
    }
}

/// Handle to the worker thread. Dropping it stops the worker.
pub struct Consolidator {
    commands: Option<mpsc::Sender<Command>>,
    thread: Option<JoinHandle<()>>,
    dictionary: Mutex<Dictionary>,
}

impl Consolidator {
    /// Starts a worker whose state is `snapshot`: the consolidated categories of each day already
    /// in the store.
    pub fn start(snapshot: Vec<CategoryChange>) -> Result<Self, DataflowError> {
        let (tx, rx) = mpsc::channel::<Command>(4);
        let mut dictionary = Dictionary::default();
        dictionary.categories.id("", String::new);
        let seed: Vec<(Key, Totals)> = snapshot
            .into_iter()
            .map(|(m, d, c, t)| {
                (dictionary.key(&m, d, c.as_deref()), (t.creditos_cents, t.debitos_cents, t.quantidade))
            })
            .collect();
        let thread = std::thread::Builder::new()
            .name("consolidate-dataflow".into())
            .spawn(move || timely::execute_directly(move |worker| run_worker(worker, seed, rx)))
            .map_err(|_| DataflowError::WorkerGone)?;
        Ok(Consolidator { commands: Some(tx), thread: Some(thread), dictionary: Mutex::new(dictionary) })
    }

    /// Adds one epoch of new entries and returns how each touched (day, category)'s totals changed.
    pub async fn apply(&self, entries: &[&Lancamento]) -> Result<Vec<CategoryChange>, DataflowError> {
        self.update(entries, false).await
    }

    /// Takes back what [`Consolidator::apply`] added for `entries`, when their epoch was not
    /// committed; returns the changes (the negation of those `apply` returned).
    pub async fn revert(&self, entries: &[&Lancamento]) -> Result<Vec<CategoryChange>, DataflowError> {
        self.update(entries, true).await
    }

    async fn update(&self, entries: &[&Lancamento], negate: bool) -> Result<Vec<CategoryChange>, DataflowError> {
        // One update per key and epoch: entries of one (merchant, day, category) add up here.
        let mut sums: HashMap<Key, Totals> = HashMap::with_capacity(entries.len());
        {
            let mut dictionary = self.dictionary.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for e in entries {
                let key = dictionary.key(&e.merchant_id, e.data, e.categoria.as_deref());
                let t = sums.entry(key).or_insert((0, 0, 0));
                let sum =
                    DayTotals { creditos_cents: t.0, debitos_cents: t.1, quantidade: t.2 }.checked_add(&e.totals())?;
                *t = (sum.creditos_cents, sum.debitos_cents, sum.quantidade);
            }
        }
        if negate {
            for t in sums.values_mut() {
                *t = (-t.0, -t.1, -t.2);
            }
        }
        let (reply, answer) = oneshot::channel();
        let commands = self.commands.as_ref().ok_or(DataflowError::WorkerGone)?;
        commands
            .send(Command::Apply(sums.into_iter().collect(), reply))
            .await
            .map_err(|_| DataflowError::WorkerGone)?;
        let changed = answer.await.map_err(|_| DataflowError::WorkerGone)?;
        let dictionary = self.dictionary.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        changed.into_iter().map(|(key, delta)| dictionary.change(key, delta)).collect()
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
fn run_worker(worker: &mut timely::worker::Worker, seed: Vec<(Key, Totals)>, mut rx: mpsc::Receiver<Command>) {
    // Per key, this epoch's change of its totals: the epoch's update itself, since totals add up.
    let changes: Rc<RefCell<BTreeMap<Key, Totals>>> = Rc::default();
    let sink = Rc::clone(&changes);
    let (mut totals, probe, mut trace) = worker.dataflow::<u64, _, _>(|scope| {
        // Each key with its totals as the diff: the arrangement's accumulation is the sum, kept
        // compacted to one update per key.
        let (totals_in, totals) = scope.new_collection::<Key, Totals>();
        let Arranged { stream, trace } = totals
            .inspect(move |(key, _time, delta)| {
                let mut changes = sink.borrow_mut();
                let d = changes.entry(*key).or_insert((0, 0, 0));
                *d = (d.0 + delta.0, d.1 + delta.1, d.2 + delta.2);
            })
            .arrange_by_self();
        let (probe, _) = stream.probe();
        (totals_in, probe, trace)
    });

    for (key, t) in seed {
        totals.update(key, t);
    }
    let mut epoch: u64 = 0;
    let mut advance = |totals: &mut differential_dataflow::input::InputSession<u64, Key, Totals>| {
        epoch += 1;
        totals.advance_to(epoch);
        totals.flush();
        worker.step_while(|| probe.less_than(&epoch));
        // Nobody reads past times: every key's updates may merge into one.
        trace.set_logical_compaction(AntichainRef::new(&[epoch]));
        trace.set_physical_compaction(AntichainRef::new(&[epoch]));
    };
    advance(&mut totals);
    changes.borrow_mut().clear();

    while let Some(Command::Apply(sums, reply)) = rx.blocking_recv() {
        for (key, t) in sums {
            totals.update(key, t);
        }
        advance(&mut totals);
        let out =
            std::mem::take(&mut *changes.borrow_mut()).into_iter().filter(|(_, delta)| *delta != (0, 0, 0)).collect();
        let _ = reply.send(out);
    }
}

#[cfg(test)]
mod tests;
