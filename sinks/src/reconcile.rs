//! Reconciliation: every kept state recomputed plainly from the stored entries (no dataflow, a
//! sum per key), merchant by merchant, and compared row by row with the stored view. All of it
//! reads one snapshot of the store, and an epoch commits its entries and its states' changes
//! together, so an epoch in flight never shows as a difference.

use std::collections::{BTreeMap, HashSet};

use cashflow_core::estado::Field;
use cashflow_core::{BusinessDate, DayTotals, Tipo};
use serde::Serialize;
use sqlx::{Any, Row, Transaction};

use crate::states::{DeclaredState, EntryFacts, FACTS, facts, kept, rows_of};
use crate::store::{Backend, parts};
use crate::{Progress, Store, StoreError};

/// A read-only view of one committed state of the store, for as long as it lives.
pub struct Snapshot {
    tx: Transaction<'static, Any>,
    backend: Backend,
}

/// A row of a state whose stored totals are not its entries' (`None`: there is no such row).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Difference {
    pub table: String,
    pub merchant: String,
    /// The key's values after `merchant_id`, in the key's order.
    pub key: Vec<String>,
    pub stored: Option<DayTotals>,
    pub recomputed: Option<DayTotals>,
}

/// Business dates, both included.
pub type DateRange = (BusinessDate, BusinessDate);

impl Store {
    /// A snapshot: on PostgreSQL a `REPEATABLE READ` transaction, which sees the commits before
    /// its first statement and no later one; on SQLite (WAL) a read transaction, which sees the
    /// database as of its first read.
    pub async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let begin = match self.backend {
            Backend::Postgres => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
            Backend::Sqlite => "BEGIN DEFERRED",
        };
        Ok(Snapshot { tx: self.pool.begin_with(begin).await?, backend: self.backend })
    }
}

impl Snapshot {
    /// The states the store keeps, by table.
    pub async fn kept(&mut self) -> Result<BTreeMap<String, DeclaredState>, StoreError> {
        kept(&mut self.tx).await
    }

    /// Every merchant with a stored entry or a row of one of `states`, in order.
    pub async fn merchants(&mut self, states: &[DeclaredState]) -> Result<Vec<String>, StoreError> {
        let mut sql = String::from("SELECT merchant_id FROM lancamentos");
        for s in states {
            sql.push_str(&format!(" UNION SELECT merchant_id FROM {}", s.table));
        }
        sql.push_str(" ORDER BY 1");
        Ok(sqlx::query_scalar(&sql).fetch_all(&mut *self.tx).await?)
    }

    /// `merchant`'s rows of each of `states` that differ from a plain recomputation from its
    /// stored entries, ordered by state and key. With `range`, only the rows whose periods
    /// overlap it are compared, each from all the entries of its periods; a state whose key has
    /// no period is then not compared (see [`comparable`]).
    pub async fn reconcile(
        &mut self,
        states: &[DeclaredState],
        merchant: &str,
        range: Option<DateRange>,
    ) -> Result<Vec<Difference>, StoreError> {
        let states: Vec<&DeclaredState> = comparable(states, range).collect();
        let span = match range {
            None => None,
            Some((de, ate)) => {
                states.iter().filter_map(|s| s.key.span(de, ate)).reduce(|a, b| (a.0.min(b.0), a.1.max(b.1)))
            }
        };
        let (first, last) = span.map_or(("0000-01-01".to_owned(), "9999-12-31".to_owned()), |(a, b)| {
            (a.format("%Y-%m-%d").to_string(), b.format("%Y-%m-%d").to_string())
        });
        let sql = format!("{FACTS} WHERE merchant_id = $1 AND data >= $2 AND data <= $3");
        let rows = sqlx::query(&sql).bind(merchant).bind(first).bind(last).fetch_all(&mut *self.tx).await?;
        let entries = rows.iter().map(facts).collect::<Result<Vec<_>, _>>()?;

        let mut out = Vec::new();
        for state in states {
            let bounds = range.map(|(de, ate)| state.key.period_bounds(de, ate)).unwrap_or_default();
            let mut recomputed = recompute(state, &entries);
            recomputed.retain(|key, _| within(state, &bounds, key));
            let stored: BTreeMap<Vec<String>, DayTotals> =
                rows_of(&mut self.tx, state, merchant, &bounds).await?.into_iter().collect();
            out.extend(differences(state, merchant, stored, recomputed));
        }
        Ok(out)
    }

    /// `group`'s next offset per (topic, partition).
    pub async fn progress(&mut self, group: &str) -> Result<Progress, StoreError> {
        let sql = "SELECT topic, partition, next_offset FROM consumer_progress WHERE consumer_group = $1";
        let rows = sqlx::query(sql).bind(group).fetch_all(&mut *self.tx).await?;
        rows.iter().map(|r| Ok(((r.try_get(0)?, r.try_get(1)?), r.try_get(2)?))).collect()
    }

    /// The offsets of `topic`'s `partition` that stored entries came from, in order.
    pub async fn origins(&mut self, topic: &str, partition: i32) -> Result<Vec<i64>, StoreError> {
        let sql = "SELECT origin_offset FROM lancamentos WHERE origin_topic = $1 AND origin_partition = $2 \
                   ORDER BY origin_offset";
        Ok(sqlx::query_scalar(sql).bind(topic).bind(partition).fetch_all(&mut *self.tx).await?)
    }

    /// Which of `ids` are stored entries' ids.
    pub async fn stored_ids(&mut self, ids: &[String]) -> Result<HashSet<String>, StoreError> {
        let mut out = HashSet::new();
        for part in parts(ids, self.backend.list_chunk()) {
            let (list, values) = self.backend.in_list(part.iter().cloned());
            let sql = format!("SELECT id FROM lancamentos WHERE id {list}");
            let q = values.into_iter().fold(sqlx::query_scalar(&sql), |q, v| q.bind(v));
            out.extend(q.fetch_all(&mut *self.tx).await?);
        }
        Ok(out)
    }

    /// Ends the snapshot.
    pub async fn close(self) -> Result<(), StoreError> {
        Ok(self.tx.rollback().await?)
    }
}

/// The states a reconciliation over `range` compares: all of them without a range, and those
/// whose key has a period with one (a key without one sums entries of every date).
pub fn comparable(states: &[DeclaredState], range: Option<DateRange>) -> impl Iterator<Item = &DeclaredState> {
    states.iter().filter(move |s| range.is_none() || s.key.fields().iter().any(|f| f.is_period()))
}

/// `state`'s rows from `entries`, summed one by one: the oracle the stored view is held to.
/// Sums saturate: a stored entry beyond what consolidation admits shows as a difference.
pub fn recompute(state: &DeclaredState, entries: &[EntryFacts]) -> BTreeMap<Vec<String>, DayTotals> {
    let mut rows: BTreeMap<Vec<String>, DayTotals> = BTreeMap::new();
    for e in entries {
        let key = state.key.fields().iter().filter_map(|f| f.value_of(e.data, &e.categoria, e.tipo)).collect();
        let t = rows.entry(key).or_default();
        match e.tipo {
            Tipo::Credito => t.creditos_cents = t.creditos_cents.saturating_add(e.valor_cents),
            Tipo::Debito => t.debitos_cents = t.debitos_cents.saturating_add(e.valor_cents),
        }
        t.quantidade = t.quantidade.saturating_add(1);
    }
    // what the state does not keep reads as 0, as from its table
    for t in rows.values_mut() {
        let mut kept = DayTotals::default();
        for m in state.values.measures() {
            m.set(&mut kept, m.of(t));
        }
        *t = kept;
    }
    rows
}

/// Whether each period of `key` (a row of `state`) is within its bounds.
fn within(state: &DeclaredState, bounds: &[(Field, String, String)], key: &[String]) -> bool {
    bounds.iter().all(|(field, first, last)| {
        let at = state.key.fields()[1..].iter().position(|f| f == field);
        at.is_some_and(|i| key[i] >= *first && key[i] <= *last)
    })
}

fn differences(
    state: &DeclaredState,
    merchant: &str,
    mut stored: BTreeMap<Vec<String>, DayTotals>,
    recomputed: BTreeMap<Vec<String>, DayTotals>,
) -> Vec<Difference> {
    let difference = |key: Vec<String>, stored, recomputed| Difference {
        table: state.table.clone(),
        merchant: merchant.to_owned(),
        key,
        stored,
        recomputed,
    };
    let mut out = Vec::new();
    for (key, want) in recomputed {
        match stored.remove(&key) {
            Some(got) if got == want => {}
            got => out.push(difference(key, got, Some(want))),
        }
    }
    out.extend(stored.into_iter().map(|(key, got)| difference(key, Some(got), None)));
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

#[cfg(test)]
mod tests {
    use cashflow_core::estado::{Key, Measure, Values};

    use super::*;

    fn state(fields: &[Field], values: &[Measure]) -> DeclaredState {
        DeclaredState {
            table: "t".into(),
            key: Key::new(fields.to_vec()).unwrap(),
            values: Values::try_from(values.to_vec()).unwrap(),
        }
    }

    fn entry(data: &str, categoria: &str, tipo: Tipo, valor_cents: i64) -> EntryFacts {
        EntryFacts {
            merchant_id: "m".into(),
            data: data.parse().unwrap(),
            categoria: categoria.into(),
            tipo,
            valor_cents,
        }
    }

    fn totals(c: i64, d: i64, n: i64) -> DayTotals {
        DayTotals { creditos_cents: c, debitos_cents: d, quantidade: n }
    }

    #[test]
    fn the_recomputation_sums_each_key_and_keeps_only_the_states_values() {
        use Field::{Categoria, MerchantId, Mes};
        let entries = [
            entry("2026-01-31", "aluguel", Tipo::Debito, 500),
            entry("2026-01-31", "", Tipo::Credito, 700),
            entry("2026-02-01", "", Tipo::Credito, 5),
            entry("2026-02-01", "", Tipo::Credito, i64::MAX),
        ];
        let monthly = recompute(&state(&[MerchantId, Mes], &Measure::ALL), &entries);
        let monthly: Vec<_> = monthly.into_iter().collect();
        assert_eq!(
            monthly,
            [(vec!["2026-01".to_owned()], totals(700, 500, 2)), (vec!["2026-02".to_owned()], totals(i64::MAX, 0, 2))]
        );
        let by_category = recompute(&state(&[MerchantId, Categoria, Field::Tipo], &[Measure::Lancamentos]), &entries);
        let by_category: Vec<_> = by_category.into_iter().collect();
        let key = |c: &str, t: &str| vec![c.to_owned(), t.to_owned()];
        assert_eq!(by_category, [(key("", "credito"), totals(0, 0, 3)), (key("aluguel", "debito"), totals(0, 0, 1))]);
    }

    #[test]
    fn differences_name_each_changed_missing_and_extra_row() {
        let s = state(&[Field::MerchantId, Field::Data], &Measure::ALL);
        let k = |d: &str| vec![d.to_owned()];
        let stored =
            BTreeMap::from([(k("01"), totals(1, 0, 1)), (k("02"), totals(2, 0, 1)), (k("04"), totals(4, 0, 1))]);
        let recomputed =
            BTreeMap::from([(k("01"), totals(1, 0, 1)), (k("02"), totals(3, 0, 1)), (k("03"), totals(3, 0, 1))]);
        let found: Vec<_> = differences(&s, "m", stored, recomputed)
            .into_iter()
            .map(|d| (d.key[0].clone(), d.stored.map(|t| t.creditos_cents), d.recomputed.map(|t| t.creditos_cents)))
            .collect();
        let want = [("02", Some(2), Some(3)), ("03", None, Some(3)), ("04", Some(4), None)];
        assert_eq!(found, want.map(|(k, s, r)| (k.to_owned(), s, r)));
    }

    #[test]
    fn a_range_compares_whole_periods_and_leaves_out_states_without_one() {
        use Field::*;
        let states = [state(&[MerchantId, Mes], &Measure::ALL), state(&[MerchantId, Categoria], &Measure::ALL)];
        let (de, ate) = ("2026-01-15".parse().unwrap(), "2026-01-20".parse().unwrap());
        let compared: Vec<_> = comparable(&states, Some((de, ate))).map(|s| s.key.to_text()).collect();
        assert_eq!(compared, ["merchant_id,mes"]);
        assert_eq!(comparable(&states, None).count(), 2);
        let bounds = states[0].key.period_bounds(de, ate);
        assert!(within(&states[0], &bounds, &["2026-01".to_owned()]));
        assert!(!within(&states[0], &bounds, &["2026-02".to_owned()]));
    }
}
