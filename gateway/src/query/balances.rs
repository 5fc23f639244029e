//! Daily balances from memory. A merchant read twice while consolidation has not committed in
//! between has all its consolidated days read from the store in one statement (the range query
//! over every business date), held under the consolidation [`Mark`] the progress poller showed
//! before that read; every later read is answered from memory while the poller's mark, read at
//! most 200 ms ago, is still that one. What was read is at least as new as the mark it is held
//! under, and any commit of consolidation moves the mark, so memory never answers with less than
//! the store had when the poller last looked, and `aguardar` (which waits on the same poller)
//! still reads its writes. A merchant read once between commits costs what it did without memory
//! (its range, not its whole history). Reads of a merchant that memory cannot answer take turns
//! on the store, and each looks in memory again first, so reads arriving together (a cold start,
//! the first reads after a commit) cost two store reads, not one each.

use std::sync::Arc;

use cashflow_core::{BusinessDate, DayHistory, MerchantId};
use cashflow_observability::metrics;
use cashflow_sinks::{DailyRows, Mark, Store, StoreError};
use moka::sync::Cache;
use prometheus::IntCounter;

use super::progress::ProgressWatch;

/// What is held of one merchant.
enum Held {
    /// Read once from the store while the poller's mark was this one.
    Seen(Mark),
    /// Every consolidated day, read after the poller showed `mark`, and when consolidation had
    /// last committed as of that read.
    Days { mark: Mark, history: DayHistory, consolidated_at: Option<String> },
}

impl Held {
    /// Day rows held, for the cache's bound.
    fn weight(&self) -> u32 {
        match self {
            Held::Seen(_) => 1,
            Held::Days { history, .. } => u32::try_from(history.len() + 1).unwrap_or(u32::MAX),
        }
    }
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
    /// Reads answered from memory, and from the store.
    hits: IntCounter,
    misses: IntCounter,
    /// One lock per stripe of merchants: a merchant that memory cannot answer is read from the
    /// store by one request at a time, and those that waited are answered from what it read,
    /// rather than all reading the store at once (at a cold start, or after each commit).
    loads: Arc<[tokio::sync::Mutex<()>]>,
}

/// Stripes of [`Balances::loads`].
const LOAD_STRIPES: usize = 1024;

impl Balances {
    pub(crate) fn new(store: Store, group: String, progress: ProgressWatch, cache_days: u64) -> Self {
        let held = (cache_days > 0)
            .then(|| Cache::builder().max_capacity(cache_days).weigher(|_, held: &Arc<Held>| held.weight()).build());
        let lookups = &metrics().query_cache_lookups;
        let (hits, misses) = (lookups.with_label_values(&["hit"]), lookups.with_label_values(&["miss"]));
        let loads = (0..LOAD_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect();
        Balances { store, group, progress, held, hits, misses, loads }
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
        let Some(current) = self.progress.current_mark().await else {
            self.misses.inc();
            return self.store.daily(merchant, de, ate, &self.group).await;
        };
        if let Some(answer) = self.held_range(cache, merchant, &current, de, ate) {
            return Ok(answer);
        }
        let _one_at_a_time = self.loads[stripe(merchant)].lock().await;
        // A request ahead of this one may have read what this one needs.
        if let Some(answer) = self.held_range(cache, merchant, &current, de, ate) {
            return Ok(answer);
        }
        self.misses.inc();
        match cache.get(merchant).as_deref() {
            // Read again before consolidation committed: worth holding whole.
            Some(Held::Seen(mark)) if *mark == current => {
                let all = self.store.daily(merchant, BusinessDate::FIRST, BusinessDate::LAST, &self.group).await?;
                let history = DayHistory::new(all.days).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                let consolidated_at = all.consolidated_at;
                let answer = rows(&history, &consolidated_at, de, ate);
                cache.insert(merchant.clone(), Arc::new(Held::Days { mark: current, history, consolidated_at }));
                metrics().query_cache_days.set(i64::try_from(cache.weighted_size()).unwrap_or(i64::MAX));
                Ok(answer)
            }
            _ => {
                let answer = self.store.daily(merchant, de, ate, &self.group).await?;
                cache.insert(merchant.clone(), Arc::new(Held::Seen(current)));
                Ok(answer)
            }
        }
    }

    /// The range from the merchant's days held under `current`, if they are.
    fn held_range(
        &self,
        cache: &Cache<MerchantId, Arc<Held>>,
        merchant: &MerchantId,
        current: &Mark,
        de: BusinessDate,
        ate: BusinessDate,
    ) -> Option<DailyRows> {
        let held = cache.get(merchant)?;
        let Held::Days { mark, history, consolidated_at } = held.as_ref() else { return None };
        (mark == current).then(|| {
            self.hits.inc();
            rows(history, consolidated_at, de, ate)
        })
    }
}

/// The stripe of [`Balances::loads`] a merchant's reads of the store take turns on.
fn stripe(merchant: &MerchantId) -> usize {
    use std::hash::{BuildHasher as _, BuildHasherDefault};
    let hash = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(merchant);
    (hash % LOAD_STRIPES as u64) as usize
}

/// The range `[de, ate]` of a merchant's history, as the store answers it.
fn rows(history: &DayHistory, consolidated_at: &Option<String>, de: BusinessDate, ate: BusinessDate) -> DailyRows {
    let (opening_cents, days) = history.range(de, ate);
    DailyRows { opening_cents, days: days.to_vec(), consolidated_at: consolidated_at.clone() }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use cashflow_core::estado::{Field, Key, Rows, Values};
    use cashflow_core::{DayTotals, Posicao};
    use sqlx::Connection as _;

    use super::*;
    use crate::query::progress::{KEEP_POLLING, TRUSTED_FOR};
    use cashflow_sinks::DeclaredState;

    const GROUP: &str = "cashflow-consolidate";

    fn day(s: &str) -> BusinessDate {
        s.parse().unwrap()
    }

    /// What a consolidation epoch writes: a day's change and the next offset of partition 0.
    async fn commit(store: &Store, on: &str, credit: i64, next_offset: i64) {
        let merchant = MerchantId::parse("loja-1").unwrap();
        let totals = DayTotals { creditos_cents: credit, debitos_cents: 0, quantidade: 1 };
        let mut tx = store.begin_epoch().await.unwrap();
        let key = Key::new(vec![Field::MerchantId, Field::Data]).unwrap();
        let daily = DeclaredState { table: "consolidado_diario".into(), key, values: Values::default() };
        let row = Rows::single(vec![merchant.to_string(), day(on).to_string()], totals);
        tx.add_state(&daily, &row).await.unwrap();
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
        store_with(dir, 2).await
    }

    async fn store_with(dir: &tempfile::TempDir, connections: u32) -> Store {
        let url = format!("sqlite://{}", dir.path().join("store.db").display());
        let store = Store::connect(&url, connections).await.unwrap();
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

        // Once the poller has read the store's mark, a merchant read twice is held...
        polled(&progress).await;
        let first = january(&balances).await;
        assert_eq!(first, (700, vec![("2026-01-05".into(), 100)]));
        assert_eq!(january(&balances).await, first);
        // ...and answered from memory: a change made behind consolidation's back is not seen...
        tamper(&dir, "UPDATE consolidado_diario SET creditos_cents = 999 WHERE data = '2026-01-05'").await;
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

    /// Until the poller has read the store's mark.
    async fn polled(progress: &ProgressWatch) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while progress.current_mark().await.is_none() {
            assert!(tokio::time::Instant::now() < deadline, "the poller never read the store");
        }
    }

    /// A merchant read twice (so held), once the poller has read the store.
    async fn held(store: &Store) -> (ProgressWatch, Balances, (i64, Vec<(String, i64)>)) {
        let progress = ProgressWatch::start(store.clone(), GROUP.into(), "lancamentos".into());
        let balances = Balances::new(store.clone(), GROUP.into(), progress.clone(), 1_000);
        polled(&progress).await;
        let first = january(&balances).await;
        assert_eq!(january(&balances).await, first);
        (progress, balances, first)
    }

    #[tokio::test]
    async fn reads_of_a_merchant_at_once_read_the_store_twice_not_each() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(&dir).await;
        let progress = ProgressWatch::start(store.clone(), GROUP.into(), "lancamentos".into());
        let balances = Balances::new(store.clone(), GROUP.into(), progress.clone(), 1_000);
        polled(&progress).await;
        let (misses, hits) = (balances.misses.get(), balances.hits.get());
        let answers = futures::future::join_all((0..50).map(|_| january(&balances))).await;
        assert!(answers.iter().all(|a| *a == (0, vec![("2026-01-05".into(), 100)])), "{answers:?}");
        // The first read of the range, then (read again) the whole history; the rest from memory.
        assert_eq!((balances.misses.get() - misses, balances.hits.get() - hits), (2, 48));
    }

    #[tokio::test]
    async fn after_the_poller_idled_a_read_waits_for_its_next_look_not_for_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(&dir).await;
        let (_progress, balances, first) = held(&store).await;
        // Nobody reads: the poller stops, and what it last saw is no longer trusted...
        tokio::time::sleep(KEEP_POLLING + TRUSTED_FOR * 2).await;
        tamper(&dir, "UPDATE consolidado_diario SET creditos_cents = 999").await;
        // ...but the next read needs only its next look at the mark, not its balances.
        assert_eq!(january(&balances).await, first, "answered from memory once the poller looked again");
    }

    #[tokio::test]
    async fn held_balances_are_answered_while_every_pooled_connection_is_busy() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with(&dir, 1).await;
        let (_progress, balances, first) = held(&store).await;
        // The pool's one connection is taken (as by requests queued for the store), for longer
        // than the poller's last look is trusted: it looks through its own connection.
        let _busy = store.begin_epoch().await.unwrap();
        tokio::time::sleep(TRUSTED_FOR * 2).await;
        assert_eq!(january(&balances).await, first);
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
