//! Daily balances from memory. A merchant's consolidated days are read from the store in one
//! statement, with the consolidation [`Mark`] of the snapshot they came from, and every later read
//! is answered from memory while the store's mark, as the progress poller last read it (at most
//! 200 ms ago), is still that one. Any commit of consolidation moves the mark, so the next read of
//! each merchant goes to the store again: memory never answers with less than the store had when
//! the poller last looked, and `aguardar` (which waits on the same poller) still reads its writes.

use std::sync::Arc;

use cashflow_core::{BusinessDate, DayHistory, MerchantId};
use cashflow_observability::metrics;
use cashflow_sinks::{DailyRows, Mark, Store, StoreError};
use moka::sync::Cache;

use crate::progress::ProgressWatch;

/// One merchant's days, as of `mark`.
struct Held {
    mark: Mark,
    history: DayHistory,
}

/// The balance reads of one process.
#[derive(Clone)]
pub(crate) struct Balances {
    store: Store,
    /// The consumer group whose commits the balances reflect.
    group: String,
    progress: ProgressWatch,
    /// Weighed in day rows; none when the config holds no days in memory.
    held: Option<Cache<MerchantId, Arc<Held>>>,
}

impl Balances {
    pub(crate) fn new(store: Store, group: String, progress: ProgressWatch, cache_days: u64) -> Self {
        let held = (cache_days > 0).then(|| {
            Cache::builder()
                .max_capacity(cache_days)
                .weigher(|_, held: &Arc<Held>| u32::try_from(held.history.len() + 1).unwrap_or(u32::MAX))
                .build()
        });
        Balances { store, group, progress, held }
    }

    /// The merchant's days in `[de, ate]`, the balance carried into `de`, and when consolidation
    /// last committed, all of one snapshot of the store.
    pub(crate) async fn daily(
        &self,
        merchant: &MerchantId,
        de: BusinessDate,
        ate: BusinessDate,
    ) -> Result<DailyRows, StoreError> {
        let Some(cache) = &self.held else { return self.store.daily(merchant, de, ate, &self.group).await };
        let lookups = &metrics().query_cache_lookups;
        let current = self.progress.current_mark();
        let held = match cache.get(merchant).filter(|held| current.as_ref() == Some(&held.mark)) {
            Some(held) => {
                lookups.with_label_values(&["hit"]).inc();
                held
            }
            None => {
                lookups.with_label_values(&["miss"]).inc();
                let (history, mark) = self.store.history(merchant, &self.group).await?;
                let held = Arc::new(Held { mark, history });
                cache.insert(merchant.clone(), Arc::clone(&held));
                metrics().query_cache_days.set(i64::try_from(cache.weighted_size()).unwrap_or(i64::MAX));
                held
            }
        };
        let (opening_cents, days) = held.history.range(de, ate);
        Ok(DailyRows { opening_cents, days: days.to_vec(), consolidated_at: held.mark.at.clone() })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use cashflow_core::{DayTotals, Posicao};
    use sqlx::Connection as _;

    use super::*;

    const GROUP: &str = "cashflow-consolidate";

    fn day(s: &str) -> BusinessDate {
        s.parse().unwrap()
    }

    /// What a consolidation epoch writes: a day's change and the next offset of partition 0.
    async fn commit(store: &Store, on: &str, credit: i64, next_offset: i64) {
        let merchant = MerchantId::parse("loja-1").unwrap();
        let totals = DayTotals { creditos_cents: credit, debitos_cents: 0, quantidade: 1 };
        let mut tx = store.begin_epoch().await.unwrap();
        tx.add_daily(&[(merchant, day(on), totals)]).await.unwrap();
        tx.save_progress(GROUP, &[("lancamentos".into(), 0, next_offset)]).await.unwrap();
        tx.commit().await.unwrap();
    }

    /// (opening, [(day, credits)]) of loja-1 over January 2026.
    async fn january(balances: &Balances) -> (i64, Vec<(String, i64)>) {
        let merchant = MerchantId::parse("loja-1").unwrap();
        let rows = balances.daily(&merchant, day("2026-01-01"), day("2026-01-31")).await.unwrap();
        (rows.opening_cents, rows.days.iter().map(|(d, t)| (d.to_string(), t.creditos_cents)).collect())
    }

    /// A new SQLite store in `dir`, holding one consolidated day (2026-01-05, 1.00 credited).
    async fn store_in(dir: &tempfile::TempDir) -> Store {
        let url = format!("sqlite://{}", dir.path().join("store.db").display());
        let store = Store::connect(&url, 2).await.unwrap();
        commit(&store, "2026-01-05", 100, 1).await;
        store
    }

    /// A change made behind consolidation's back: no commit of its progress.
    async fn tamper(dir: &tempfile::TempDir, sql: &str) {
        let url = format!("sqlite://{}", dir.path().join("store.db").display());
        let mut raw = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query(sql).execute(&mut raw).await.unwrap();
    }

    #[tokio::test]
    async fn memory_answers_until_consolidation_commits_and_aguardar_still_reads_its_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(&dir).await;
        commit(&store, "2025-12-31", 700, 2).await;
        let progress = ProgressWatch::start(store.clone(), GROUP.into(), "lancamentos".into());
        let balances = Balances::new(store.clone(), GROUP.into(), progress.clone(), 1_000);

        let first = january(&balances).await;
        assert_eq!(first, (700, vec![("2026-01-05".into(), 100)]));
        // While the poller's view of the store is current, the days come from memory: a change
        // made behind consolidation's back is not seen...
        tamper(&dir, "UPDATE consolidado_diario SET creditos_cents = 999 WHERE data = '2026-01-05'").await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while progress.current_mark().is_none() {
            assert!(tokio::time::Instant::now() < deadline, "the poller never read the store");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(january(&balances).await, first, "answered from memory");

        // ...until consolidation commits: then the next read after `aguardar` sees the commit and
        // everything before it, with no retry.
        commit(&store, "2026-01-20", 50, 3).await;
        assert!(progress.wait_past(Posicao { partition: 0, offset: 2 }, Duration::from_secs(5)).await);
        assert_eq!(january(&balances).await, (700, vec![("2026-01-05".into(), 999), ("2026-01-20".into(), 50)]));
        // A backdated day moves the opening balance of every later range.
        commit(&store, "2025-06-01", 5, 4).await;
        assert!(progress.wait_past(Posicao { partition: 0, offset: 3 }, Duration::from_secs(5)).await);
        assert_eq!(january(&balances).await.0, 705);
    }

    #[tokio::test]
    async fn with_no_days_held_every_read_goes_to_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(&dir).await;
        let progress = ProgressWatch::start(store.clone(), GROUP.into(), "lancamentos".into());
        let balances = Balances::new(store.clone(), GROUP.into(), progress, 0);
        assert_eq!(january(&balances).await, (0, vec![("2026-01-05".into(), 100)]));
        tamper(&dir, "UPDATE consolidado_diario SET creditos_cents = 999").await;
        assert_eq!(january(&balances).await, (0, vec![("2026-01-05".into(), 999)]));
    }
}
