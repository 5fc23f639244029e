//! How far consolidation has committed, as the store records it (`consumer_progress`, written in
//! the same transaction as the balances): per partition of the source topic, for read-your-writes,
//! and as a [`Mark`], which tells the balances held in memory whether they are still current.
//! One poller per process reads it while someone waits or reads balances, so a thousand such
//! requests cost one small query every [`POLL`], not a thousand.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use cashflow_core::Posicao;
use cashflow_sinks::{Mark, Store};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// How often the store is read while anyone waits or reads balances.
const POLL: Duration = Duration::from_millis(10);
/// How often when nobody does (the first one also wakes the poller).
const IDLE: Duration = Duration::from_millis(100);
/// Balances read from memory are current only if the poller read the store this recently.
pub(crate) const TRUSTED_FOR: Duration = Duration::from_millis(200);
/// After a read of balances, the poller keeps polling this long.
pub(crate) const KEEP_POLLING: Duration = Duration::from_secs(2);

/// What the poller last read, and when.
#[derive(Clone, Debug, Default)]
struct Observed {
    /// Next offset to consolidate, per partition of the source topic.
    next: HashMap<i32, i64>,
    mark: Mark,
    /// When the read began, in [`Shared::now_ms`] (0: none yet): what it saw is at least this new.
    read_ms: u64,
}

#[derive(Clone)]
pub struct ProgressWatch {
    observed: watch::Receiver<Observed>,
    shared: Arc<Shared>,
    /// The poller stops when the last clone is dropped.
    _sender: Arc<watch::Sender<Observed>>,
}

/// What the requests and the poller tell each other.
struct Shared {
    /// Requests waiting now; the poller reads the store while there are some.
    waiting: AtomicUsize,
    /// When balances were last read from memory, in [`Shared::now_ms`] (0: never).
    used_ms: AtomicU64,
    epoch: Instant,
    /// Cuts the poller's idle sleep short when someone starts waiting or reading.
    wake: Notify,
}

impl Shared {
    /// Milliseconds since the watch started, from 1.
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Someone waits, or read balances lately.
    fn busy(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) > 0
            || within(self.used_ms.load(Ordering::Relaxed), self.now_ms(), KEEP_POLLING)
    }
}

/// One request waiting, for as long as it is held.
struct Waiting<'a>(&'a Shared);

impl<'a> Waiting<'a> {
    fn new(shared: &'a Shared) -> Self {
        shared.waiting.fetch_add(1, Ordering::Relaxed);
        shared.wake.notify_one();
        Waiting(shared)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `then` (0 for never) is at most `span` before `now`.
fn within(then: u64, now: u64, span: Duration) -> bool {
    then > 0 && now.saturating_sub(then) <= span.as_millis() as u64
}

impl ProgressWatch {
    /// Starts the poller for `group`'s progress on `topic`. It reads through a connection of its
    /// own, so that however many requests queue for the store's pool, its reads do not.
    pub fn start(store: Store, group: String, topic: String) -> Self {
        let store = store.own_pool(1);
        let (sender, observed) = watch::channel(Observed::default());
        let sender = Arc::new(sender);
        let shared = Arc::new(Shared {
            waiting: AtomicUsize::new(0),
            used_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            wake: Notify::new(),
        });
        let poller = Arc::downgrade(&sender);
        let view = Arc::clone(&shared);
        tokio::spawn(async move {
            // Ends when every ProgressWatch is gone.
            while let Some(sender) = poller.upgrade() {
                let busy = view.busy();
                if busy {
                    let started = view.now_ms();
                    match store.progress_and_mark(&group).await {
                        Ok((all, mark)) => {
                            let next = all.into_iter().filter(|((t, _), _)| *t == topic).map(|((_, p), o)| (p, o));
                            sender.send_replace(Observed { next: next.collect(), mark, read_ms: started });
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot read consolidation progress"),
                    }
                }
                drop(sender);
                if busy {
                    tokio::time::sleep(POLL).await;
                } else {
                    tokio::select! {
                        () = tokio::time::sleep(IDLE) => {}
                        () = view.wake.notified() => {}
                    }
                }
            }
        });
        ProgressWatch { observed, shared, _sender: sender }
    }

    /// Waits until consolidation has committed past `posicao`, at most `timeout`. True if it has.
    pub async fn wait_past(&self, posicao: Posicao, timeout: Duration) -> bool {
        let mut rx = self.observed.clone();
        let passed = |o: &Observed| o.next.get(&posicao.partition).is_some_and(|next| *next > posicao.offset);
        // Counted while this future lives: a client that disconnects drops it mid-wait.
        let _waiting = Waiting::new(&self.shared);
        let waited = tokio::time::timeout(timeout, rx.wait_for(passed)).await;
        waited.is_ok_and(|r| r.is_ok())
    }

    /// The store's current mark, as the poller read it at most [`TRUSTED_FOR`] before; also
    /// keeps the poller reading for [`KEEP_POLLING`]. When its last read is older (it was idle, or
    /// the machine or the store is slow), waits up to [`TRUSTED_FOR`] for its next one: readers
    /// wait for one small query rather than each reading the store, which under load would only
    /// slow the poller further. None if no read came in time.
    pub async fn current_mark(&self) -> Option<Mark> {
        let asked = self.shared.now_ms();
        self.shared.used_ms.store(asked, Ordering::Relaxed);
        let recent = |o: &Observed| within(o.read_ms, asked, TRUSTED_FOR);
        let mut observed = self.observed.clone();
        if !recent(&observed.borrow()) {
            self.shared.wake.notify_one();
        }
        // The mark comes with the time of the read that saw it (at once if that read is recent).
        match tokio::time::timeout(TRUSTED_FOR, observed.wait_for(recent)).await {
            Ok(Ok(o)) => Some(o.mark.clone()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A client that disconnects while it waits (its handler's future is dropped) no longer
    /// counts as waiting: the poller goes back to idle instead of reading the store every 10 ms.
    #[tokio::test]
    async fn a_waiter_that_disconnects_leaves_the_poller_idle() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&format!("sqlite://{}/s.db", dir.path().display()), 2).await.unwrap();
        let watch = ProgressWatch::start(store, "g".into(), "lancamentos".into());
        let waiter = watch.clone();
        let request = tokio::spawn(async move {
            waiter.wait_past(Posicao { partition: 0, offset: 1_000_000 }, Duration::from_secs(60)).await
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(watch.shared.busy(), "a request is waiting");
        request.abort();
        assert!(request.await.unwrap_err().is_cancelled());
        assert!(!watch.shared.busy(), "the dropped waiter still keeps the poller busy");
    }
}
