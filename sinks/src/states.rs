//! The declared states' tables: which the store keeps (the `estados` registry), building a new
//! one from the stored entries exactly once, and reading one for the API.

use std::collections::BTreeMap;

use cashflow_core::estado::{Field, Key, Rows, Values};
use cashflow_core::{BusinessDate, DayTotals, Tipo};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use crate::epoch::{add_totals, now_text};
use crate::store::Backend;
use crate::{Store, StoreError};

/// A state as `pipeline.yaml` declares it: its table, its key and its values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeclaredState {
    pub table: String,
    pub key: Key,
    pub values: Values,
}

/// A stored entry's facts that states are keyed and summed by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryFacts {
    pub merchant_id: String,
    pub data: BusinessDate,
    /// `""` for an entry without a category.
    pub categoria: String,
    pub tipo: Tipo,
    pub valor_cents: i64,
}

/// One state's rows of a merchant, and when consolidation last committed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateRows {
    /// The key's values after `merchant_id`, and the totals (0 where the state keeps no such
    /// value), ordered by key.
    pub rows: Vec<(Vec<String>, DayTotals)>,
    pub consolidated_at: Option<String>,
}

/// The states the store keeps, by table.
pub(crate) async fn kept(tx: &mut Transaction<'static, Any>) -> Result<BTreeMap<String, DeclaredState>, StoreError> {
    let rows = sqlx::query("SELECT tabela, chave, valores FROM estados WHERE pronto = 1").fetch_all(&mut **tx).await?;
    let mut out = BTreeMap::new();
    for r in &rows {
        let (table, key, values): (String, String, String) = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
        let corrupt = |e: String| StoreError::Corrupt(format!("state {table}: {e}"));
        let key = Key::from_text(&key).map_err(corrupt)?;
        let values = Values::from_text(&values).map_err(corrupt)?;
        out.insert(table.clone(), DeclaredState { table, key, values });
    }
    Ok(out)
}

impl Store {
    /// Lines the registry up with `declared`: a kept state that is no longer declared is no longer
    /// kept (its table stays, and is rebuilt if declared again); returns the declared states the
    /// store does not keep with that key, which [`Store::begin_build`] builds.
    pub async fn states_to_build(&self, declared: &[DeclaredState]) -> Result<Vec<DeclaredState>, StoreError> {
        let mut tx = self.begin_write().await?;
        let kept = kept(&mut tx).await?;
        for table in kept.keys().filter(|t| !declared.iter().any(|d| d.table == **t)) {
            tracing::warn!(table = %table, "a state is no longer declared: its table is no longer kept");
            sqlx::query("UPDATE estados SET pronto = 0, atualizado_em = $1 WHERE tabela = $2")
                .bind(now_text())
                .bind(table.as_str())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(declared.iter().filter(|d| kept.get(&d.table) != Some(*d)).cloned().collect())
    }

    /// A write transaction no epoch runs beside: SQLite's write lock, or on PostgreSQL a lock on
    /// `lancamentos` that conflicts with every insert and with another such transaction, so it
    /// waits for the epochs in flight and holds back the next ones.
    async fn begin_alone(&self) -> Result<Transaction<'static, Any>, StoreError> {
        let mut tx = self.begin_write().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("LOCK TABLE lancamentos IN SHARE ROW EXCLUSIVE MODE").execute(&mut *tx).await?;
        }
        Ok(tx)
    }

    /// Starts building `state`'s table from the stored entries, in one transaction that no epoch
    /// runs beside: SQLite's write lock, or on PostgreSQL a lock on `lancamentos` that waits for
    /// epochs in flight and holds back the next ones. Every entry stored before it is counted by
    /// the build, every later one by the epoch that stores it, which sees the state kept. `None`
    /// when another consolidator built it while this one waited for the lock.
    pub async fn begin_build(&self, state: &DeclaredState) -> Result<Option<Build>, StoreError> {
        let mut tx = self.begin_alone().await?;
        if kept(&mut tx).await?.get(&state.table) == Some(state) {
            return Ok(None);
        }
        let table = &state.table;
        sqlx::query(&format!("DROP TABLE IF EXISTS {table}")).execute(&mut *tx).await?;
        sqlx::query(&create_table(self.backend, state)).execute(&mut *tx).await?;
        if has_day(self.backend, state) {
            // unnamed: PostgreSQL picks a name no other relation has, whatever the table's
            sqlx::query(&format!("CREATE INDEX ON {table} (dia)")).execute(&mut *tx).await?;
        }
        Ok(Some(Build {
            tx,
            backend: self.backend,
            state: state.clone(),
            now: now_text(),
            after: None,
            merchant: None,
        }))
    }

    /// Starts replacing `state`'s rows (`merchant`'s alone, if given) with the ones the stored
    /// entries give, in one transaction that no epoch runs beside, as [`Store::begin_build`]:
    /// epochs wait for it, then go on. Readers see the old rows until it commits, then the new
    /// ones, never a part; dropped without [`Build::finish`], it changes nothing.
    pub async fn begin_rebuild(&self, state: &DeclaredState, merchant: Option<&str>) -> Result<Build, StoreError> {
        let mut tx = self.begin_alone().await?;
        if kept(&mut tx).await?.get(&state.table) != Some(state) {
            return Err(StoreError::NotKept(state.table.clone()));
        }
        let table = &state.table;
        match merchant {
            None => sqlx::query(&format!("DELETE FROM {table}")).execute(&mut *tx).await?,
            Some(m) => {
                sqlx::query(&format!("DELETE FROM {table} WHERE merchant_id = $1")).bind(m).execute(&mut *tx).await?
            }
        };
        let merchant = merchant.map(str::to_owned);
        Ok(Build { tx, backend: self.backend, state: state.clone(), now: now_text(), after: None, merchant })
    }

    /// `merchant`'s rows of `state`, when the store keeps it: those whose periods overlap
    /// `bounds` (each period field with its first and last value), ordered by key.
    pub async fn state_rows(
        &self,
        state: &DeclaredState,
        merchant: &str,
        bounds: &[(Field, String, String)],
        group: &str,
    ) -> Result<Option<StateRows>, StoreError> {
        let mut tx = self.pool.begin().await?;
        if kept(&mut tx).await?.get(&state.table) != Some(state) {
            return Ok(None);
        }
        let rows = rows_of(&mut tx, state, merchant, bounds).await?;
        let consolidated_at =
            sqlx::query_scalar("SELECT MAX(updated_at) FROM consumer_progress WHERE consumer_group = $1")
                .bind(group)
                .fetch_one(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(Some(StateRows { rows, consolidated_at }))
    }
}

/// `merchant`'s rows of `state` whose periods overlap `bounds` (each period field with its first
/// and last value), ordered by key: the key's values after `merchant_id`, and the totals (0 where
/// the state keeps no such value).
pub(crate) async fn rows_of(
    tx: &mut Transaction<'static, Any>,
    state: &DeclaredState,
    merchant: &str,
    bounds: &[(Field, String, String)],
) -> Result<Vec<(Vec<String>, DayTotals)>, StoreError> {
    let (table, measures) = (&state.table, state.values.measures());
    let columns: Vec<&str> = state.key.fields()[1..].iter().map(|f| f.as_str()).collect();
    let mut filter = String::from("merchant_id = $1");
    for (i, (field, _, _)) in bounds.iter().enumerate() {
        filter.push_str(&format!(" AND {field} >= ${} AND {field} <= ${}", 2 * i + 2, 2 * i + 3));
    }
    let selected: Vec<&str> = columns.iter().copied().chain(measures.iter().map(|m| m.column())).collect();
    let order = if columns.is_empty() { String::new() } else { format!(" ORDER BY {}", columns.join(", ")) };
    let sql = format!("SELECT {} FROM {table} WHERE {filter}{order}", selected.join(", "));
    let mut q = sqlx::query(&sql).bind(merchant);
    for (_, first, last) in bounds {
        q = q.bind(first.as_str()).bind(last.as_str());
    }
    let mut out = Vec::new();
    for row in q.fetch_all(&mut **tx).await? {
        let values = (0..columns.len()).map(|i| row.try_get(i)).collect::<Result<Vec<String>, _>>()?;
        let mut totals = DayTotals::default();
        for (i, m) in measures.iter().enumerate() {
            m.set(&mut totals, row.try_get(columns.len() + i)?);
        }
        out.push((values, totals));
    }
    Ok(out)
}

/// The columns [`facts`] reads, from `lancamentos`.
pub(crate) const FACTS: &str =
    "SELECT merchant_id, data, COALESCE(categoria, ''), tipo, valor_cents, id FROM lancamentos";

/// A stored entry's facts, from a row of [`FACTS`].
pub(crate) fn facts(r: &AnyRow) -> Result<EntryFacts, StoreError> {
    let corrupt = |what: &str, v: &str| StoreError::Corrupt(format!("{what} {v:?}"));
    let (data, tipo): (String, String) = (r.try_get(1)?, r.try_get(3)?);
    Ok(EntryFacts {
        merchant_id: r.try_get(0)?,
        data: data.parse().map_err(|_| corrupt("data", &data))?,
        categoria: r.try_get(2)?,
        tipo: tipo.parse().map_err(|_| corrupt("tipo", &tipo))?,
        valor_cents: r.try_get(4)?,
    })
}

/// `CREATE TABLE` for a state: its key's fields as text, then its values, never negative and
/// (on SQLite, whose `+` turns an overflowing sum into a float) always integers.
fn create_table(backend: Backend, state: &DeclaredState) -> String {
    let keys: String = state.key.fields().iter().map(|f| format!("{f} TEXT NOT NULL, ")).collect();
    let values: String = state
        .values
        .measures()
        .iter()
        .map(|m| match (backend, m.column()) {
            (Backend::Sqlite, c) => format!("{c} INTEGER NOT NULL CHECK (typeof({c}) = 'integer' AND {c} >= 0), "),
            (Backend::Postgres, c) => format!("{c} BIGINT NOT NULL CHECK ({c} >= 0), "),
        })
        .collect();
    let primary = state.key.to_text().replace(',', ", ");
    // as the migrations make the fixed states' tables: on PostgreSQL, room on each page for
    // updates in place (HOT); on SQLite, the rows clustered on the key (one b-tree, not two)
    let with = match backend {
        Backend::Postgres => " WITH (fillfactor = 80)",
        Backend::Sqlite => " WITHOUT ROWID",
    };
    let dia = if has_day(backend, state) { DIA } else { "" };
    format!(
        "CREATE TABLE {} ({keys}{values}atualizado_em TEXT NOT NULL, {dia}PRIMARY KEY ({primary})){with}",
        state.table
    )
}

/// On PostgreSQL, a state keyed by `data` also keeps it as a date, `dia`, indexed, for the
/// reports (observability/grafana/dashboards/cashflow-relatorios.json): Grafana's time filter and
/// grouping need a date column, and a range of days of every merchant an index that leads with
/// it. Migration 0010 added the same to the states the migrations made.
fn has_day(backend: Backend, state: &DeclaredState) -> bool {
    backend == Backend::Postgres && state.key.has(Field::Data)
}

const DIA: &str = "dia DATE GENERATED ALWAYS AS \
                   (make_date(substr(data, 1, 4)::int, substr(data, 6, 2)::int, substr(data, 9, 2)::int)) STORED, ";

/// A state's table being built; dropped without [`Build::finish`], it rolls back.
pub struct Build {
    tx: Transaction<'static, Any>,
    backend: Backend,
    state: DeclaredState,
    now: String,
    /// The last entry id read.
    after: Option<String>,
    /// Set when only this merchant's rows are (re)built.
    merchant: Option<String>,
}

impl Build {
    /// The next stored entries, up to `limit`, in id order; empty when all were read.
    pub async fn next_entries(&mut self, limit: usize) -> Result<Vec<EntryFacts>, StoreError> {
        let after = self.after.clone().unwrap_or_default();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = match &self.merchant {
            None => {
                let sql = format!("{FACTS} WHERE id > $1 ORDER BY id LIMIT $2");
                sqlx::query(&sql).bind(after).bind(limit).fetch_all(&mut *self.tx).await?
            }
            Some(m) => {
                let sql = format!("{FACTS} WHERE merchant_id = $1 AND id > $2 ORDER BY id LIMIT $3");
                sqlx::query(&sql).bind(m.as_str()).bind(after).bind(limit).fetch_all(&mut *self.tx).await?
            }
        };
        if let Some(last) = rows.last() {
            self.after = Some(last.try_get(5)?);
        }
        rows.iter().map(facts).collect()
    }

    /// Adds changes of the state, as an epoch does.
    pub async fn add<K: AsRef<str>>(&mut self, changes: &Rows<K>) -> Result<(), StoreError> {
        add_totals(&mut self.tx, self.backend, &self.now, &self.state, changes).await
    }

    /// Records the state as kept, and commits.
    pub async fn finish(mut self) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO estados (tabela, chave, valores, pronto, atualizado_em) VALUES ($1, $2, $3, 1, $4) \
             ON CONFLICT (tabela) DO UPDATE SET chave = excluded.chave, valores = excluded.valores, pronto = 1, \
             atualizado_em = excluded.atualizado_em",
        )
        .bind(self.state.table.as_str())
        .bind(self.state.key.to_text())
        .bind(self.state.values.to_text())
        .bind(now_text())
        .execute(&mut *self.tx)
        .await?;
        // Readers that hold balances in memory keep them while the progress they were read at
        // stands: move it, so they read the rows this wrote.
        sqlx::query("UPDATE consumer_progress SET updated_at = $1").bind(now_text()).execute(&mut *self.tx).await?;
        self.tx.commit().await?;
        Ok(())
    }
}
