//! Daily balances from memory, under the consolidation [`Mark`] they were read at.
//!
//! The rule, in one place: an answer from memory was read from the store after the progress
//! poller showed the mark it is held under, and it is used only while the poller still shows that
//! mark. Every commit of consolidation moves the mark, so memory never answers with less than the
//! store had when the poller last looked (at most [`TRUSTED_FOR`](super::progress) ago), and
//! `aguardar`, which waits on the same poller, reads its writes.
//!
//! Histories are keyed by (merchant, mark), so one is never updated, only read or loaded. A
//! merchant read once under a mark costs one read of its range, as without memory; read again
//! under the same mark, its whole history is loaded once (moka's `try_get_with`: the reads that
//! arrive meanwhile wait for that one load) and answered from memory. Memory holds one mark per
//! merchant: its first read under a new mark drops the history of the mark before, and the LRU
//! bound evicts the histories of merchants nobody reads.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cashflow_core::{BusinessDate, DayHistory, MerchantId};
use cashflow_observability::metrics;
use cashflow_sinks::{DailyRows, Mark, Store, StoreError};
use moka::future::Cache;
use moka::policy::EvictionPolicy;
use prometheus::IntCounter;

use super::progress::ProgressWatch;

/// A merchant's history, under the mark the poller showed before it was read.
type AtMark = (MerchantId, Mark);

/// Every consolidated day of a merchant, and when consolidation last committed as of that read.
struct Days {
    history: DayHistory,
    consolidated_at: Option<String>,
}

/// The balance reads of one process.
#[derive(Clone)]
pub(crate) struct Balances {
    store: Store,
    /// The consumer group whose commits the balances reflect.
    group: String,
    progress: ProgressWatch,
    /// None when the config holds no days in memory.
    memory: Option<Memory>,
    /// Reads answered from memory, and from the store.
    hits: IntCounter,
    misses: IntCounter,
}

#[derive(Clone)]
struct Memory {
    /// The mark each merchant was last read under.
    seen: Cache<MerchantId, Mark>,
    /// Merchants' histories, weighed in day rows.
    days: Cache<AtMark, Arc<Days>>,
}

impl Balances {
    pub(crate) fn new(store: Store, group: String, progress: ProgressWatch, cache_days: u64) -> Self {
        let memory = (cache_days > 0).then(|| Memory {
            seen: Cache::builder().max_capacity(cache_days).eviction_policy(EvictionPolicy::lru()).build(),
            days: Cache::builder()
                .max_capacity(cache_days)
                .weigher(|_, days: &Arc<Days>| u32::try_from(days.history.len() + 1).unwrap_or(u32::MAX))
                .eviction_policy(EvictionPolicy::lru())
                .build(),
        });
        let lookups = &metrics().query_cache_lookups;
        let (hits, misses) = (lookups.with_label_values(&["hit"]), lookups.with_label_values(&["miss"]));
        Balances { store, group, progress, memory, hits, misses }
    }

    /// The merchant's days in `[de, ate]`, the balance carried into `de`, and when consolidation
    /// last committed, all of one snapshot of the store.
    pub(crate) async fn daily(
        &self,
        merchant: &MerchantId,
        de: BusinessDate,
        ate: BusinessDate,
    ) -> Result<DailyRows, StoreError> {
        let Some(memory) = &self.memory else { return self.store.daily(merchant, de, ate, &self.group).await };
        let Some(mark) = self.progress.current_mark().await else {
            self.misses.inc();
            return self.store.daily(merchant, de, ate, &self.group).await;
        };
        let key = (merchant.clone(), mark);
        if let Some(days) = memory.days.get(&key).await {
            self.hits.inc();
            return Ok(rows(&days, de, ate));
        }
        let before = memory.seen.get(merchant).await;
        if before.as_ref() != Some(&key.1) {
            // The first read under this mark: its range only, and the mark before is done with.
            memory.seen.insert(merchant.clone(), key.1.clone()).await;
            if let Some(before) = before {
                memory.days.invalidate(&(merchant.clone(), before)).await;
            }
            self.misses.inc();
            return self.store.daily(merchant, de, ate, &self.group).await;
        }
        // Read again before consolidation committed: worth holding whole, loaded once.
        let loaded = AtomicBool::new(false);
        let load = async {
            loaded.store(true, Ordering::Relaxed);
            let all = self.store.daily(merchant, BusinessDate::FIRST, BusinessDate::LAST, &self.group).await?;
            let history = DayHistory::new(all.days).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            Ok::<_, StoreError>(Arc::new(Days { history, consolidated_at: all.consolidated_at }))
        };
        let days = memory.days.try_get_with(key, load).await;
        if loaded.into_inner() {
            self.misses.inc();
            metrics().query_cache_days.set(i64::try_from(memory.days.weighted_size()).unwrap_or(i64::MAX));
        } else {
            self.hits.inc();
        }
        let days = days.map_err(shared)?;
        Ok(rows(&days, de, ate))
    }
}

/// A load's error, as each read that waited for it gets it.
fn shared(e: Arc<StoreError>) -> StoreError {
    Arc::try_unwrap(e).unwrap_or_else(StoreError::Shared)
}

/// The range `[de, ate]` of a merchant's history, as the store answers it.
fn rows(days: &Days, de: BusinessDate, ate: BusinessDate) -> DailyRows {
    let (opening_cents, range) = days.history.range(de, ate);
    DailyRows { opening_cents, days: range.to_vec(), consolidated_at: days.consolidated_at.clone() }
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

    #[tokio::test]
    async fn memory_holds_one_mark_per_merchant() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(&dir).await;
        let (progress, balances, _) = held(&store).await;
        let memory = balances.memory.as_ref().unwrap();
        // Consolidation commits: the first read under the new mark drops the history of the old.
        commit(&store, "2026-01-20", 50, 2).await;
        assert!(progress.wait_past(Posicao { partition: 0, offset: 1 }, Duration::from_secs(5)).await);
        january(&balances).await;
        memory.days.run_pending_tasks().await;
        memory.seen.run_pending_tasks().await;
        assert_eq!((memory.days.entry_count(), memory.seen.entry_count()), (0, 1), "one mark per merchant");
        // Read again under it: its history is held, and nothing else.
        january(&balances).await;
        memory.days.run_pending_tasks().await;
        assert_eq!(memory.days.entry_count(), 1);
    }

    /// One step of a property run.
    #[derive(Clone, Debug)]
    enum Step {
        /// Consolidation commits a change to one day of January.
        Commit { day: u32, cents: i64 },
        /// Some readers read a range of January at once, without waiting.
        Read { from: u32, days: u32, readers: usize },
        /// A reader waits for the last commit (`aguardar`), then reads all of January.
        Aguardar,
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            (1..=31u32, 1..1_000i64).prop_map(|(day, cents)| Step::Commit { day, cents }),
            (1..=31u32, 1..=31u32, 1..=4usize).prop_map(|(from, days, readers)| Step::Read { from, days, readers }),
            Just(Step::Aguardar),
        ]
    }

    /// Days of January as the store holds them after each commit: what a read may answer.
    type Snapshot = std::collections::BTreeMap<u32, i64>;

    fn range_of(snapshot: &Snapshot, from: u32, to: u32) -> (i64, Vec<(String, i64)>) {
        let opening = snapshot.range(..from).map(|(_, c)| c).sum();
        let days = snapshot.range(from..=to).map(|(d, c)| (format!("2026-01-{d:02}"), *c)).collect();
        (opening, days)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 24, ..Default::default() })]

        /// Whatever the order of commits and reads, every answer is a state the store held, never
        /// one older than the poller had seen when the read began; and a read after `aguardar`
        /// is exactly the store's state (reads its writes).
        #[test]
        fn memory_never_answers_older_than_the_poller_saw(steps in proptest::collection::vec(step(), 1..24)) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}", dir.path().join("store.db").display());
                let store = Store::connect(&url, 2).await.unwrap();
                let progress = ProgressWatch::start(store.clone(), GROUP.into(), "lancamentos".into());
                let balances = Balances::new(store.clone(), GROUP.into(), progress.clone(), 1_000);
                let merchant = MerchantId::parse("loja-1").unwrap();
                // Every state the store held, in order; `seen` is the first a read may answer.
                let (mut states, mut seen, mut offset) = (vec![Snapshot::new()], 0, 0i64);
                for step in steps {
                    match step {
                        Step::Commit { day, cents } => {
                            offset += 1;
                            commit(&store, &format!("2026-01-{day:02}"), cents, offset).await;
                            let mut next = states.last().unwrap().clone();
                            *next.entry(day).or_default() += cents;
                            states.push(next);
                        }
                        Step::Read { from, days, readers } => {
                            let to = (from + days - 1).min(31);
                            let (de, ate) = (day(&format!("2026-01-{from:02}")), day(&format!("2026-01-{to:02}")));
                            let reads = (0..readers).map(|_| balances.daily(&merchant, de, ate));
                            for read in futures::future::join_all(reads).await {
                                let read = read.unwrap();
                                let answer = (read.opening_cents, read.days.iter().map(|(d, t)| (d.to_string(), t.creditos_cents)).collect::<Vec<_>>());
                                assert!(
                                    states[seen..].iter().any(|s| range_of(s, from, to) == answer),
                                    "{answer:?} is no state from the {seen}th on: {states:?}"
                                );
                            }
                        }
                        Step::Aguardar => {
                            if offset > 0 {
                                let last = Posicao { partition: 0, offset: offset - 1 };
                                assert!(progress.wait_past(last, Duration::from_secs(5)).await);
                            }
                            seen = states.len() - 1;
                            let answer = january(&balances).await;
                            assert_eq!(answer, range_of(&states[seen], 1, 31), "read after aguardar");
                        }
                    }
                }
            });
        }
    }
}
