//! Read-your-writes: how far consolidation has committed, per partition of the source topic, as
//! the store records it (`consumer_progress`, written in the same transaction as the balances).
//! One poller per process reads it while someone waits, so a thousand waiting requests cost one
//! small query every [`POLL`], not a thousand.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cashflow_core::Posicao;
use cashflow_sinks::Store;
use tokio::sync::watch;

/// How often the store is read while anyone waits.
const POLL: Duration = Duration::from_millis(10);
/// How often when nobody waits: just enough to notice the first waiter.
const IDLE: Duration = Duration::from_millis(100);

/// Next offset to consolidate, per partition.
type Progress = HashMap<i32, i64>;

#[derive(Clone)]
pub struct ProgressWatch {
    progress: watch::Receiver<Progress>,
    /// Requests waiting now; the poller reads the store only while there are some.
    waiting: Arc<AtomicUsize>,
    /// The poller stops when the last clone is dropped.
    _sender: Arc<watch::Sender<Progress>>,
}

impl ProgressWatch {
    /// Starts the poller for `group`'s progress on `topic`.
    pub fn start(store: Store, group: String, topic: String) -> Self {
        let (sender, _) = watch::channel(Progress::new());
        let sender = Arc::new(sender);
        let poller = Arc::downgrade(&sender);
        let waiting = Arc::new(AtomicUsize::new(0));
        let waiters = Arc::clone(&waiting);
        tokio::spawn(async move {
            // Ends when every ProgressWatch is gone.
            while let Some(sender) = poller.upgrade() {
                let waiting = waiters.load(Ordering::Relaxed) > 0;
                if waiting {
                    match store.load_progress(&group).await {
                        Ok(all) => {
                            let mine: Progress =
                                all.into_iter().filter(|((t, _), _)| *t == topic).map(|((_, p), o)| (p, o)).collect();
                            sender.send_if_modified(|current| {
                                let changed = *current != mine;
                                *current = mine;
                                changed
                            });
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot read consolidation progress"),
                    }
                }
                drop(sender);
                tokio::time::sleep(if waiting { POLL } else { IDLE }).await;
            }
        });
        ProgressWatch { progress: sender.subscribe(), waiting, _sender: sender }
    }

    /// Waits until consolidation has committed past `posicao`, at most `timeout`. True if it has.
    pub async fn wait_past(&self, posicao: Posicao, timeout: Duration) -> bool {
        let mut rx = self.progress.clone();
        let passed = |p: &Progress| p.get(&posicao.partition).is_some_and(|next| *next > posicao.offset);
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let waited = tokio::time::timeout(timeout, rx.wait_for(passed)).await;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        waited.is_ok_and(|r| r.is_ok())
    }
}
