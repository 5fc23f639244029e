//! The consolidation as a differential dataflow, run by one timely worker on its own thread.
//!
//! Each epoch's new entries enter one collection, a row per entry: (merchant, day, category,
//! tipo), with the entry's effect `(credits, debits, count)` as its diff. Each state that
//! `pipeline.yaml` declares is differential operators over that collection: rows map to the
//! state's key (the fields it lacks dropped, its periods as one day), and `consolidate` sums the
//! diffs per key; a state that follows from a finer one maps and consolidates that one's output.
//! Each epoch is one timestamp: the input advances past it and the worker steps until the output
//! has passed it, so what `consolidate` emits for the epoch is each key's change in it, and that
//! is what the store adds.
//!
//! Every state is additive, so the dataflow holds no history: nothing keeps a trace, and a
//! restart starts empty, whatever the store holds.

use std::cell::RefCell;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use cashflow_core::estado::{Field, Key, Rows};
use cashflow_core::{BusinessDate, DayTotals, Lancamento, Tipo};
use chrono::NaiveDate;
use differential_dataflow::input::{Input, InputSession};
use differential_dataflow::trace::implementations::{KeyBatcher, KeySpine};
use timely::dataflow::operators::Probe;
use tokio::sync::{mpsc, oneshot};

/// A value of one state's key, or an entry: (tag, merchant, days since 1970-01-01, category), the
/// names as numbers from a [`Dictionary`], the tag the state (its place in
/// [`Consolidator::start`]'s list, or [`ENTRIES`]) and the tipo (its lowest bit). A state's value
/// has the fields its key lacks zeroed and its periods as one day (see
/// [`cashflow_core::estado`]). Sixteen bytes, copied, never allocated.
type Keyed = (u8, u32, i32, u32);
/// (credits, debits, count), in cents and entries: the diff.
type Totals = (i64, i64, i64);

/// The state of the entries themselves, as they enter.
const ENTRIES: u8 = 127;
/// The most states one dataflow keeps.
pub const MAX_STATES: usize = ENTRIES as usize;

fn tag(state: u8, tipo: u8) -> u8 {
    (state << 1) | tipo
}

/// An entry's facts that states are keyed and summed by.
#[derive(Clone, Copy, Debug)]
pub struct Fact<'a> {
    pub merchant_id: &'a str,
    pub data: BusinessDate,
    /// `""` for an entry without a category.
    pub categoria: &'a str,
    pub tipo: Tipo,
    pub valor_cents: i64,
}

impl<'a> From<&'a Lancamento> for Fact<'a> {
    fn from(e: &'a Lancamento) -> Self {
        Fact {
            merchant_id: e.merchant_id.as_str(),
            data: e.data,
            categoria: e.categoria.as_deref().unwrap_or_default(),
            tipo: e.tipo,
            valor_cents: e.valor.cents(),
        }
    }
}

/// What an epoch changed, per state in the order the states were given, read from the
/// dataflow's output: each key value that changed, and the change of its totals (new minus old).
/// The values are numbers in the dataflow's dictionary; [`Changes::rows`] gives their text.
///
/// The store adds these deltas, so writers of disjoint entry sets compose: each entry is counted
/// by the one transaction that inserted its id, whichever consolidator ran it.
#[derive(Clone, Debug)]
pub struct Changes {
    texts: Texts,
    states: Vec<Rows<u32>>,
}

impl Changes {
    /// Each state's changes, its values as text, in the key's order.
    pub fn rows(&self) -> Result<Vec<Rows<&str>>, DataflowError> {
        let text = |n: &u32| {
            self.texts.get(*n as usize).map(|t| &**t).ok_or_else(|| DataflowError::BadKey(format!("text {n}")))
        };
        self.states.iter().map(|rows| rows.try_map(text)).collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DataflowError {
    #[error("the dataflow worker stopped")]
    WorkerGone,
    #[error("the dataflow produced an invalid key: {0}")]
    BadKey(String),
    #[error("a dataflow keeps at most {MAX_STATES} states")]
    TooManyStates,
    #[error("the dataflow's dictionary is full ({} texts)", u32::MAX)]
    DictionaryFull,
}

enum Command {
    Apply(Vec<(Keyed, Totals)>, oneshot::Sender<Vec<(Keyed, Totals)>>),
}

/// Every text of a key value, by number, in order of first sight: appended by the dictionary,
/// read by each epoch's [`Changes`] without a lock or a copy.
type Texts = Arc<boxcar::Vec<Arc<str>>>;

/// Numbers for merchant ids, categories, tipos and the text of each period a state's key
/// showed. Its size grows with the merchants, categories and periods, not with their entries.
struct Dictionary {
    texts: Texts,
    merchants: Map<Arc<str>, u32>,
    categories: Map<Arc<str>, u32>,
    /// (field, period day) → the period's text, e.g. (`mes`, 2026-12-01) → `2026-12`.
    periods: Map<(Field, i32), u32>,
    tipos: [u32; 2],
}

/// The dictionary's maps: looked up for every entry and every output, with a fast hash (the keys
/// are the pipeline's own names and days).
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Appends `text`, and gives its number.
fn append(texts: &Texts, text: Arc<str>) -> Result<u32, DataflowError> {
    u32::try_from(texts.push(text)).map_err(|_| DataflowError::DictionaryFull)
}

/// The number of `name` in `names`, given one the first time.
fn number(texts: &Texts, names: &mut Map<Arc<str>, u32>, name: &str) -> Result<u32, DataflowError> {
    if let Some(n) = names.get(name) {
        return Ok(*n);
    }
    let name: Arc<str> = name.into();
    let n = append(texts, Arc::clone(&name))?;
    names.insert(name, n);
    Ok(n)
}

impl Dictionary {
    fn new() -> Result<Self, DataflowError> {
        let texts = Texts::default();
        let tipos = [append(&texts, Tipo::Credito.as_str().into())?, append(&texts, Tipo::Debito.as_str().into())?];
        Ok(Dictionary { texts, merchants: Map::default(), categories: Map::default(), periods: Map::default(), tipos })
    }

    fn entry(&mut self, f: &Fact<'_>) -> Result<Keyed, DataflowError> {
        let tipo = match f.tipo {
            Tipo::Credito => 0,
            Tipo::Debito => 1,
        };
        let merchant = number(&self.texts, &mut self.merchants, f.merchant_id)?;
        let category = number(&self.texts, &mut self.categories, f.categoria)?;
        Ok((tag(ENTRIES, tipo), merchant, f.data.days(), category))
    }

    /// Sorts one output of the dataflow into the state it belongs to, as the numbers of that
    /// state's values.
    fn record(
        &mut self,
        keys: &[Key],
        (tag, m, days, c): Keyed,
        (credits, debits, n): Totals,
        into: &mut [Rows<u32>],
    ) -> Result<(), DataflowError> {
        let (state, tipo) = (usize::from(tag >> 1), usize::from(tag & 1));
        let bad = || DataflowError::BadKey(format!("state {state}, day {days}"));
        let key = keys.get(state).ok_or_else(bad)?;
        // a key names each field at most once
        let mut values = [0u32; Field::ALL.len()];
        for (value, field) in values.iter_mut().zip(key.fields()) {
            *value = match field {
                Field::MerchantId => m,
                Field::Categoria => c,
                Field::Tipo => self.tipos[tipo],
                period => match self.periods.entry((*period, days)) {
                    Entry::Occupied(n) => *n.get(),
                    Entry::Vacant(slot) => {
                        let text = period.period(day(days).ok_or_else(bad)?);
                        *slot.insert(append(&self.texts, text.into())?)
                    }
                },
            };
        }
        let totals = DayTotals { creditos_cents: credits, debitos_cents: debits, quantidade: n };
        let rows = into.get_mut(state).ok_or_else(bad)?;
        rows.push(values.into_iter().take(key.fields().len()), totals).map_err(|e| DataflowError::BadKey(e.to_string()))
    }
}

fn day(days: i32) -> Option<NaiveDate> {
    NaiveDate::default().checked_add_signed(chrono::TimeDelta::days(i64::from(days)))
}

/// How the values of one state are made from an entry or a finer state's value.
#[derive(Clone)]
struct Projection {
    state: u8,
    key: Key,
    /// How its period day is found: the day itself (it has `data`), 1970-01-01 (it has no
    /// period), or from the day's date.
    period: Period,
    categoria: bool,
    tipo: bool,
}

#[derive(Clone, Copy)]
enum Period {
    Day,
    None,
    Of,
}

impl Projection {
    fn new(state: u8, key: Key) -> Self {
        let period = match (key.has(Field::Data), key.fields().iter().any(|f| f.is_period())) {
            (true, _) => Period::Day,
            (false, false) => Period::None,
            (false, true) => Period::Of,
        };
        let (categoria, tipo) = (key.has(Field::Categoria), key.has(Field::Tipo));
        Projection { state, key, period, categoria, tipo }
    }

    /// `(tag, m, days, c)` as a value of this state: the fields its key lacks zeroed, its periods
    /// as one day.
    fn apply(&self, (tag, m, days, c): Keyed) -> Keyed {
        let period = match self.period {
            Period::Day => days,
            Period::None => 0,
            Period::Of => {
                day(days).map(|d| (self.key.period_day(d) - NaiveDate::default()).num_days() as i32).unwrap_or(0)
            }
        };
        let tipo = if self.tipo { tag & 1 } else { 0 };
        (self::tag(self.state, tipo), m, period, if self.categoria { c } else { 0 })
    }
}

/// Where each state is computed from: the state it follows from with the fewest fields (and,
/// among those, one without `data`), which emits fewer updates than the entries, or else the
/// entries. The list is in an order where each
/// state comes after the one it is computed from.
fn plan(keys: &[Key]) -> Vec<(usize, Option<usize>)> {
    let mut order: Vec<usize> = (0..keys.len()).collect();
    // finer first: a key can only follow from one with `data`, or with more fields
    order.sort_by_key(|&i| std::cmp::Reverse((keys[i].has(Field::Data), keys[i].fields().len())));
    let mut out: Vec<(usize, Option<usize>)> = Vec::with_capacity(keys.len());
    for i in order {
        let from = out
            .iter()
            .map(|(j, _)| *j)
            .filter(|&j| keys[i].follows_from(&keys[j]))
            .min_by_key(|&j| (keys[j].fields().len(), keys[j].has(Field::Data)));
        out.push((i, from));
    }
    out
}

/// Handle to the worker thread. Dropping it stops the worker.
pub struct Consolidator {
    commands: Option<mpsc::Sender<Command>>,
    thread: Option<JoinHandle<()>>,
    dictionary: Mutex<Dictionary>,
    keys: Vec<Key>,
}

impl Consolidator {
    /// Starts a worker that keeps states of these keys. It holds no history: every state is
    /// additive, and the store adds what each epoch changed.
    pub fn start(keys: Vec<Key>) -> Result<Self, DataflowError> {
        if keys.len() > MAX_STATES {
            return Err(DataflowError::TooManyStates);
        }
        let (tx, rx) = mpsc::channel::<Command>(4);
        let dictionary = Dictionary::new()?;
        let worker_keys = keys.clone();
        let thread = std::thread::Builder::new()
            .name("consolidate-dataflow".into())
            .spawn(move || timely::execute_directly(move |worker| run_worker(worker, &worker_keys, rx)))
            .map_err(|_| DataflowError::WorkerGone)?;
        Ok(Consolidator { commands: Some(tx), thread: Some(thread), dictionary: Mutex::new(dictionary), keys })
    }

    /// Adds one epoch of new entries and returns how each state changed. What it returns depends
    /// on these entries alone: the dataflow holds no history, so an epoch whose changes were not
    /// committed leaves nothing behind, and its entries may simply come again.
    pub async fn apply<'a>(&self, entries: impl IntoIterator<Item = Fact<'a>>) -> Result<Changes, DataflowError> {
        let rows = {
            let mut dictionary = self.dictionary.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            entries
                .into_iter()
                .map(|f| {
                    let totals = match f.tipo {
                        Tipo::Credito => (f.valor_cents, 0, 1),
                        Tipo::Debito => (0, f.valor_cents, 1),
                    };
                    Ok((dictionary.entry(&f)?, totals))
                })
                .collect::<Result<Vec<(Keyed, Totals)>, DataflowError>>()?
        };
        let (reply, answer) = oneshot::channel();
        let commands = self.commands.as_ref().ok_or(DataflowError::WorkerGone)?;
        commands.send(Command::Apply(rows, reply)).await.map_err(|_| DataflowError::WorkerGone)?;
        let output = answer.await.map_err(|_| DataflowError::WorkerGone)?;
        let mut dictionary = self.dictionary.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut states: Vec<Rows<u32>> = self.keys.iter().map(|k| Rows::new(k.fields().len())).collect();
        for (key, totals) in output {
            dictionary.record(&self.keys, key, totals, &mut states)?;
        }
        Ok(Changes { texts: Arc::clone(&dictionary.texts), states })
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
fn run_worker(worker: &mut timely::worker::Worker, keys: &[Key], mut rx: mpsc::Receiver<Command>) {
    // What the dataflow emitted for the epoch being stepped: each key's change.
    let output: Rc<RefCell<Vec<(Keyed, Totals)>>> = Rc::default();
    let sink = Rc::clone(&output);
    let (mut entries, probe) = worker.dataflow::<u64, _, _>(|scope| {
        let (entries_in, entries) = scope.new_collection::<Keyed, Totals>();
        // Each state maps the rows of its source to its key and sums them: `consolidate`, with
        // the key's `()` value added by the state's own map rather than by a second one. Its
        // source is the coarsest state it follows from (a day from its categories, a month from
        // its days), so each state sorts what that state emitted, not every entry.
        let mut states = vec![None; keys.len()];
        for (i, from) in plan(keys) {
            let source = from.and_then(|j| states[j].clone()).unwrap_or_else(|| entries.clone());
            let projection = Projection::new(i as u8, keys[i].clone());
            let summed = source
                .map(move |keyed| (projection.apply(keyed), ()))
                .arrange_named::<KeyBatcher<_, _, _>, KeySpine<_, _, _>>("Consolidate", KeyBatcher::new)
                .as_collection(|key: &Keyed, &()| *key);
            states[i] = Some(summed);
        }
        let changes = states
            .into_iter()
            .flatten()
            .reduce(|all, state| all.concat(state))
            .unwrap_or_else(|| entries.filter(|_| false))
            .inspect(move |(key, _time, totals)| sink.borrow_mut().push((*key, *totals)));
        let (probe, _) = changes.inner.probe();
        (entries_in, probe)
    });
    let mut epoch: u64 = 0;
    let mut advance = |entries: &mut InputSession<u64, Keyed, Totals>| {
        epoch += 1;
        entries.advance_to(epoch);
        entries.flush();
        worker.step_while(|| probe.less_than(&epoch));
    };
    while let Some(Command::Apply(batch, reply)) = rx.blocking_recv() {
        for (row, totals) in batch {
            entries.update(row, totals);
        }
        advance(&mut entries);
        let changes: Vec<(Keyed, Totals)> = std::mem::take(&mut *output.borrow_mut());
        let _ = reply.send(changes.into_iter().filter(|(_, t)| *t != (0, 0, 0)).collect());
    }
}

#[cfg(test)]
mod tests;
