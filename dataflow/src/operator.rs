//! The daily consolidation as a differential dataflow, run by one timely worker on its own thread.
//!
//! Entries enter as facts with diff `1`; `explode` moves each amount into the diff
//! `(credits, debits, count)`, so the per-(merchant, day, category) sum is kept by differential's
//! own accumulation rather than by a hand-written reduce. Each epoch is one timestamp: the input
//! advances past it, the worker steps until the probe passes it, and each changed (merchant, day,
//! category) comes out as the difference between its new and old totals. A day's change is the
//! sum of its categories' changes ([`daily`]).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::thread::JoinHandle;

use cashflow_core::{BusinessDate, DayTotals, Lancamento, MerchantId};
use differential_dataflow::input::Input;
use tokio::sync::{mpsc, oneshot};

/// (merchant, days since 1970-01-01, category or "" for none).
type Key = (String, i32, String);
/// (credits, debits, count), in cents and entries.
type Totals = (i64, i64, i64);
/// One entry: key, credit cents, debit cents.
type Fact = (Key, i64, i64);

/// A day whose totals changed in an epoch, and by how much (new totals minus old).
///
/// The store adds these deltas, so writers of disjoint entry sets compose: each entry is counted
/// by the one transaction that inserted its id, whichever consolidator ran it.
pub type DayChange = (MerchantId, BusinessDate, DayTotals);

/// The same for one category of a day (`None`: entries without a category).
pub type CategoryChange = (MerchantId, BusinessDate, Option<String>, DayTotals);

/// Each day's change: the sum of its categories' changes.
pub fn daily(changes: &[CategoryChange]) -> Vec<DayChange> {
    let mut days: BTreeMap<(MerchantId, BusinessDate), DayTotals> = BTreeMap::new();
    for (m, d, _, t) in changes {
        let day = days.entry((m.clone(), *d)).or_default();
        day.creditos_cents += t.creditos_cents;
        day.debitos_cents += t.debitos_cents;
        day.quantidade += t.quantidade;
    }
    days.into_iter().filter(|(_, t)| *t != DayTotals::default()).map(|((m, d), t)| (m, d, t)).collect()
}

#[derive(Debug, thiserror::Error)]
pub enum DataflowError {
    #[error("the dataflow worker stopped")]
    WorkerGone,
    #[error("the dataflow produced an invalid key: {0}")]
    BadKey(String),
}

enum Command {
    Apply(Vec<Fact>, oneshot::Sender<Vec<(Key, Totals)>>),
}

/// Handle to the worker thread. Dropping it stops the worker.
pub struct Consolidator {
    commands: Option<mpsc::Sender<Command>>,
    thread: Option<JoinHandle<()>>,
}

impl Consolidator {
    /// Starts a worker whose state is `snapshot`: the consolidated categories of each day already
    /// in the store.
    pub fn start(snapshot: Vec<CategoryChange>) -> Result<Self, DataflowError> {
        let (tx, rx) = mpsc::channel::<Command>(4);
        let seed: Vec<(Key, Totals)> = snapshot
            .into_iter()
            .map(|(m, d, c, t)| {
                ((m.to_string(), d.days(), c.unwrap_or_default()), (t.creditos_cents, t.debitos_cents, t.quantidade))
            })
            .collect();
        let thread = std::thread::Builder::new()
            .name("consolidate-dataflow".into())
            .spawn(move || timely::execute_directly(move |worker| run_worker(worker, seed, rx)))
            .map_err(|_| DataflowError::WorkerGone)?;
        Ok(Consolidator { commands: Some(tx), thread: Some(thread) })
    }

    /// Adds one epoch of new entries and returns how each touched (day, category)'s totals changed.
    pub async fn apply(&self, entries: &[&Lancamento]) -> Result<Vec<CategoryChange>, DataflowError> {
        let facts = entries
            .iter()
            .map(|e| {
                let key = (e.merchant_id.to_string(), e.data.days(), e.categoria.clone().unwrap_or_default());
                let cents = e.signed_cents();
                (key, cents.max(0), (-cents).max(0))
            })
            .collect();
        let (reply, answer) = oneshot::channel();
        let commands = self.commands.as_ref().ok_or(DataflowError::WorkerGone)?;
        commands.send(Command::Apply(facts, reply)).await.map_err(|_| DataflowError::WorkerGone)?;
        let changed = answer.await.map_err(|_| DataflowError::WorkerGone)?;
        changed
            .into_iter()
            .map(|((merchant, days, category), (c, d, n))| {
                let m = MerchantId::parse(&merchant).map_err(|_| DataflowError::BadKey(merchant.clone()))?;
                let day = BusinessDate::from_days(days).ok_or_else(|| DataflowError::BadKey(days.to_string()))?;
                let category = Some(category).filter(|c| !c.is_empty());
                Ok((m, day, category, DayTotals { creditos_cents: c, debitos_cents: d, quantidade: n }))
            })
            .collect()
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
    // Per key, the new totals minus the old: differential's own output diffs, weighted.
    let changes: Rc<RefCell<BTreeMap<Key, Totals>>> = Rc::default();
    let sink = Rc::clone(&changes);
    let (mut entries, mut snapshot, probe) = worker.dataflow::<u64, _, _>(|scope| {
        let (entries_in, entries) = scope.new_collection::<Fact, i64>();
        let (snapshot_in, snapshot) = scope.new_collection::<Key, Totals>();
        let (probe, _) = entries
            .explode(|(key, credit, debit)| Some((key, (credit, debit, 1i64))))
            .concat(snapshot)
            .count()
            .inspect(move |((key, totals), _time, diff)| {
                let mut changes = sink.borrow_mut();
                let d = changes.entry(key.clone()).or_insert((0, 0, 0));
                let w = *diff as i64;
                *d = (d.0 + totals.0 * w, d.1 + totals.1 * w, d.2 + totals.2 * w);
            })
            .probe();
        (entries_in, snapshot_in, probe)
    });

    for (key, totals) in seed {
        snapshot.update(key, totals);
    }
    let mut epoch: u64 = 0;
    let mut advance =
        |entries: &mut differential_dataflow::input::InputSession<u64, Fact, i64>,
         snapshot: &mut differential_dataflow::input::InputSession<u64, Key, Totals>| {
            epoch += 1;
            entries.advance_to(epoch);
            snapshot.advance_to(epoch);
            entries.flush();
            snapshot.flush();
            worker.step_while(|| probe.less_than(&epoch));
        };
    advance(&mut entries, &mut snapshot);
    changes.borrow_mut().clear();

    while let Some(Command::Apply(facts, reply)) = rx.blocking_recv() {
        for fact in facts {
            entries.update(fact, 1);
        }
        advance(&mut entries, &mut snapshot);
        let out =
            std::mem::take(&mut *changes.borrow_mut()).into_iter().filter(|(_, delta)| *delta != (0, 0, 0)).collect();
        let _ = reply.send(out);
    }
}

#[cfg(test)]
mod tests;
