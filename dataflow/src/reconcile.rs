//! Reconciliation: the declared states the store keeps, recomputed plainly from the stored
//! entries merchant by merchant and compared with the stored rows, in one snapshot of the store
//! ([`cashflow_sinks::Snapshot`]). `cashflow reconcile` runs it on demand; the consolidate stage
//! runs it on a sample of merchants every `services.consolidate.reconcile.every_secs`.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use cashflow_core::config::{PipelineConfig, Sample};
use cashflow_observability::metrics;
use cashflow_sinks::{DateRange, DeclaredState, Difference, Snapshot, Store, StoreError};
use rand::seq::SliceRandom as _;
use tokio_util::sync::CancellationToken;

/// One reconciliation under way: what it compares, in one snapshot.
pub struct Reconciliation {
    snapshot: Snapshot,
    /// The declared states it compares: those the store keeps.
    pub states: Vec<DeclaredState>,
    /// Declared states the store does not keep yet (a consolidator builds them at its start).
    pub not_kept: Vec<String>,
    /// The merchants it compares, in order.
    pub merchants: Vec<String>,
}

impl Reconciliation {
    /// Opens the snapshot and lists what it will compare: `merchant` alone, or the merchants
    /// `sample` picks among those with entries or state rows.
    pub async fn start(
        store: &Store,
        config: &PipelineConfig,
        merchant: Option<&str>,
        sample: Sample,
    ) -> Result<Reconciliation, StoreError> {
        let mut snapshot = store.snapshot().await?;
        let kept = snapshot.kept().await?;
        let (states, not_kept): (Vec<_>, Vec<_>) =
            crate::build::declared(config).into_iter().partition(|s| kept.get(&s.table) == Some(s));
        let not_kept = not_kept.into_iter().map(|s| s.table).collect();
        let merchants = match merchant {
            Some(m) => vec![m.to_owned()],
            None => snapshot.merchants(&states).await?,
        };
        let merchants = match sample {
            Sample::Some(n) if n < merchants.len() => {
                let mut picked: Vec<String> = merchants.choose_multiple(&mut rand::thread_rng(), n).cloned().collect();
                picked.sort();
                picked
            }
            _ => merchants,
        };
        Ok(Reconciliation { snapshot, states, not_kept, merchants })
    }

    /// `merchant`'s differences (see [`Snapshot::reconcile`]).
    pub async fn merchant(&mut self, merchant: &str, range: Option<DateRange>) -> Result<Vec<Difference>, StoreError> {
        self.snapshot.reconcile(&self.states, merchant, range).await
    }

    pub async fn finish(self) -> Result<(), StoreError> {
        self.snapshot.close().await
    }
}

/// Reconciles a sample of merchants every `services.consolidate.reconcile.every_secs` until
/// `stop`, first one interval after the start, and exports what it found.
pub async fn schedule(config: Arc<PipelineConfig>, store: Store, stop: CancellationToken) {
    let settings = config.services.consolidate.reconcile.clone();
    let mut tick = tokio::time::interval(settings.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let started = Instant::now();
        let outcome = match scheduled(&store, &config, settings.merchants).await {
            Ok((merchants, found)) => {
                for d in &found {
                    tracing::error!(
                        table = %d.table, merchant = %d.merchant, key = ?d.key, stored = ?d.stored,
                        recomputed = ?d.recomputed, "a stored state differs from its entries; `cashflow rebuild` repairs it"
                    );
                }
                let m = metrics();
                m.reconcile_mismatches.set(i64::try_from(found.len()).unwrap_or(i64::MAX));
                m.reconcile_merchants.set(i64::try_from(merchants).unwrap_or(i64::MAX));
                let took_ms = started.elapsed().as_millis() as u64;
                tracing::info!(merchants, differences = found.len(), took_ms, "scheduled reconciliation");
                if found.is_empty() { "clean" } else { "mismatch" }
            }
            Err(e) => {
                tracing::warn!(error = %e, "scheduled reconciliation did not finish");
                "error"
            }
        };
        metrics().reconcile_runs.with_label_values(&[outcome]).inc();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        metrics().reconcile_last_run.set(i64::try_from(now).unwrap_or(i64::MAX));
    }
}

/// One scheduled run: the merchants compared and the differences found.
async fn scheduled(
    store: &Store,
    config: &PipelineConfig,
    sample: Sample,
) -> Result<(usize, Vec<Difference>), StoreError> {
    let mut run = Reconciliation::start(store, config, None, sample).await?;
    let merchants = std::mem::take(&mut run.merchants);
    let mut found = Vec::new();
    for m in &merchants {
        found.extend(run.merchant(m, None).await?);
    }
    run.finish().await?;
    Ok((merchants.len(), found))
}
