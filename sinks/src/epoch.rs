//! One epoch's writes, in one transaction.

use std::collections::{BTreeMap, HashMap, HashSet};

use cashflow_core::estado::Rows;
use cashflow_core::{DayTotals, EntryId, Lancamento, LancamentoRecord, MerchantId, WIRE_VERSION};
use chrono::{SecondsFormat, Utc};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use crate::store::{Backend, PgArray, parts};
use crate::{DeclaredState, Store, StoreError};

/// Where a record was read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// One delivery of a retried record: where it first failed, and which retry this is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Delivery {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub attempt: u32,
}

/// An entry and the log position it came from.
#[derive(Clone, Debug)]
pub struct StoredEntry {
    pub entry: Lancamento,
    pub origin: Origin,
}

const ENTRY_COLUMNS: usize = 13;
/// Rows per statement on SQLite (within its 32,766 parameters); PostgreSQL takes an epoch's
/// rows in one.
const ENTRY_CHUNK: usize = 2_000;
/// Bind parameters per statement when upserting totals on SQLite.
const TOTALS_PARAMS: usize = 30_000;
const PROGRESS_COLUMNS: usize = 5;

/// An epoch's entries on PostgreSQL: one array per column, one statement (see [`PgArray`]).
const PG_INSERT_ENTRIES: &str = "INSERT INTO lancamentos (id, merchant_id, tipo, valor_cents, data, descricao, \
     categoria, criado_em, estorno_de, origin_topic, origin_partition, origin_offset, consolidado_em) \
     SELECT u.*, $13 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[], \
     $7::text[], $8::text[], $9::text[], $10::text[], $11::integer[], $12::bigint[]) AS u \
     ON CONFLICT (id) DO NOTHING RETURNING id";

/// The transaction of one epoch. Dropped without [`EpochTx::commit`], it rolls back.
pub struct EpochTx {
    tx: Transaction<'static, Any>,
    now: String,
    backend: Backend,
}

impl Store {
    /// Opens an epoch's transaction. On SQLite it takes the write lock at once (`BEGIN
    /// IMMEDIATE`): a deferred transaction that reads before it writes fails with
    /// `SQLITE_BUSY_SNAPSHOT` when another writer committed in between, which two consolidators
    /// on one file did on every overlap.
    pub async fn begin_epoch(&self) -> Result<EpochTx, StoreError> {
        Ok(EpochTx { tx: self.begin_write().await?, now: now_text(), backend: self.backend })
    }

    /// A transaction that will write: on SQLite it takes the write lock at once.
    pub(crate) async fn begin_write(&self) -> Result<Transaction<'static, Any>, StoreError> {
        Ok(match self.backend {
            Backend::Sqlite => self.writer.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.writer.begin().await?,
        })
    }
}

fn entry_id(row: &AnyRow, i: usize) -> Result<EntryId, StoreError> {
    let id: String = row.try_get(i)?;
    id.parse().map_err(|_| StoreError::Corrupt(format!("entry id {id:?}")))
}

/// The columns of [`ENTRY_SELECT`], as the wire record.
pub(crate) fn record_from_row(row: &AnyRow) -> Result<LancamentoRecord, StoreError> {
    let corrupt = |what: &str, v: &str| StoreError::Corrupt(format!("{what} {v:?}"));
    let tipo: String = row.try_get(2)?;
    let estorno_de: Option<String> = row.try_get(8)?;
    Ok(LancamentoRecord {
        v: WIRE_VERSION,
        id: entry_id(row, 0)?,
        merchant_id: row.try_get(1)?,
        tipo: tipo.parse().map_err(|_| corrupt("tipo", &tipo))?,
        valor_cents: row.try_get(3)?,
        data: row.try_get(4)?,
        descricao: row.try_get(5)?,
        categoria: row.try_get(6)?,
        criado_em: row.try_get(7)?,
        estorno_de: estorno_de.map(|e| e.parse().map_err(|_| corrupt("estorno_de", &e))).transpose()?,
    })
}

/// The columns [`record_from_row`] reads.
pub(crate) const ENTRY_SELECT: &str =
    "SELECT id, merchant_id, tipo, valor_cents, data, descricao, categoria, criado_em, estorno_de FROM lancamentos";

pub(crate) fn now_text() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl EpochTx {
    /// Inserts the entries whose id is not stored yet and returns those ids. An id that is
    /// already stored is left untouched, so a redelivered entry is counted once.
    pub async fn insert_entries(&mut self, entries: &[StoredEntry]) -> Result<HashSet<EntryId>, StoreError> {
        let inserted = match self.backend {
            Backend::Postgres => {
                let q = pg_entry_columns(entries).into_iter().fold(sqlx::query(PG_INSERT_ENTRIES), |q, c| q.bind(c));
                let rows = q.bind(self.now.clone()).fetch_all(&mut *self.tx).await?;
                rows.iter().map(|row| entry_id(row, 0)).collect::<Result<HashSet<_>, _>>()?
            }
            Backend::Sqlite => self.insert_sqlite(entries).await?,
        };
        // An id the insert made no row for is stored already, or a rule of the store skipped its
        // row (a trigger that returns NULL or answers `RAISE(IGNORE)`, or a constraint under
        // SQLite's `OR IGNORE`). Only redeliveries and such rules make these ids, so the lookup
        // seldom runs.
        let missing: Vec<EntryId> = entries.iter().map(|e| e.entry.id).filter(|id| !inserted.contains(id)).collect();
        if !missing.is_empty() {
            let stored = self.stored_ids(&missing).await?;
            let skipped: HashSet<&EntryId> = missing.iter().filter(|id| !stored.contains(id)).collect();
            if !skipped.is_empty() {
                return Err(StoreError::Refused { table: "lancamentos", refused: skipped.len() as u64 });
            }
        }
        Ok(inserted)
    }

    /// SQLite's insert, which answers exactly the ids whose rows it made, as PostgreSQL's
    /// `RETURNING` does. `OR IGNORE` cannot abort, so SQLite opens no statement journal for it (a
    /// quarter of the insert's CPU, BENCHMARKS.md). Which ids are new needs no lookup when every
    /// row was made, the usual case; otherwise the rows above the largest rowid before the insert
    /// are its own, as SQLite gives a new row the rowid after the largest and the epoch holds the
    /// write lock from its start (`BEGIN IMMEDIATE`). Past the largest integer SQLite picks rowids
    /// at random: when the insert may reach it, the new ids are those stored after it and not
    /// before.
    async fn insert_sqlite(&mut self, entries: &[StoredEntry]) -> Result<HashSet<EntryId>, StoreError> {
        let ids: Vec<EntryId> = entries.iter().map(|e| e.entry.id).collect();
        let last: Option<i64> =
            sqlx::query_scalar("SELECT MAX(rowid) FROM lancamentos").fetch_one(&mut *self.tx).await?;
        let room = i64::MAX.saturating_sub(i64::try_from(ids.len()).unwrap_or(i64::MAX));
        let stored_before = if last.is_some_and(|l| l > room) { Some(self.stored_ids(&ids).await?) } else { None };
        let mut kept = 0;
        for chunk in parts(entries, ENTRY_CHUNK) {
            let sql = format!(
                "INSERT OR IGNORE INTO lancamentos (id, merchant_id, tipo, valor_cents, data, descricao, \
                 categoria, criado_em, estorno_de, origin_topic, origin_partition, origin_offset, consolidado_em) \
                 VALUES {}",
                self.backend.values(chunk.len(), ENTRY_COLUMNS)
            );
            let mut q = sqlx::query(&sql);
            for StoredEntry { entry: e, origin: o } in chunk {
                let r = e.to_record();
                q = q
                    .bind(r.id.to_string())
                    .bind(r.merchant_id)
                    .bind(r.tipo.as_str())
                    .bind(r.valor_cents)
                    .bind(r.data)
                    .bind(r.descricao)
                    .bind(r.categoria)
                    .bind(r.criado_em)
                    .bind(r.estorno_de.map(|id| id.to_string()))
                    .bind(o.topic.clone())
                    .bind(o.partition)
                    .bind(o.offset)
                    .bind(self.now.clone());
            }
            kept += q.execute(&mut *self.tx).await?.rows_affected();
        }
        let inserted: HashSet<EntryId> = match stored_before {
            Some(before) => {
                let fresh: Vec<EntryId> = ids.into_iter().filter(|id| !before.contains(id)).collect();
                self.stored_ids(&fresh).await?
            }
            None if kept == ids.len() as u64 => ids.into_iter().collect(),
            None => {
                let rows = sqlx::query("SELECT id FROM lancamentos WHERE rowid > ?")
                    .bind(last.unwrap_or(0))
                    .fetch_all(&mut *self.tx)
                    .await?;
                rows.iter().map(|row| entry_id(row, 0)).collect::<Result<_, _>>()?
            }
        };
        // A row a rule of the store skipped is not among `inserted`: the caller's lookup finds
        // it. More new rows than the insert made are rows a rule of the store wrote itself.
        match (inserted.len() as u64).checked_sub(kept) {
            Some(0) => Ok(inserted),
            Some(refused) => Err(StoreError::Refused { table: "lancamentos", refused }),
            None => Err(StoreError::Corrupt(format!("{kept} rows stored for {} new ids", inserted.len()))),
        }
    }

    /// Which of `ids` the store holds.
    async fn stored_ids(&mut self, ids: &[EntryId]) -> Result<HashSet<EntryId>, StoreError> {
        let rows = self.rows_where("SELECT id FROM lancamentos WHERE id", ids).await?;
        rows.iter().map(|row| entry_id(row, 0)).collect()
    }

    /// The rows of `statement` (one ending in `WHERE <column>`) whose column is one of
    /// `values`: on PostgreSQL one statement, `= ANY` of an array; on SQLite an `IN` list per
    /// part of [`parts`].
    async fn rows_where(&mut self, statement: &str, values: &[impl ToString]) -> Result<Vec<AnyRow>, StoreError> {
        let mut rows = Vec::new();
        for part in parts(values, self.backend.list_chunk()) {
            let (list, values) = self.backend.in_list(part.iter().map(ToString::to_string));
            let sql = format!("{statement} {list}");
            let q = values.into_iter().fold(sqlx::query(&sql), |q, v| q.bind(v));
            rows.extend(q.fetch_all(&mut *self.tx).await?);
        }
        Ok(rows)
    }

    /// The stored records of these ids (`criado_em` as stored), to tell a redelivery from a
    /// conflicting reuse of an id.
    pub async fn stored_records(&mut self, ids: &[EntryId]) -> Result<HashMap<EntryId, LancamentoRecord>, StoreError> {
        let rows = self.rows_where(&format!("{ENTRY_SELECT} WHERE id"), ids).await?;
        rows.iter().map(|row| record_from_row(row).map(|r| (r.id, r))).collect()
    }

    /// For each of `originals` that is already reversed, the id of its reversal.
    pub async fn reversals_of(&mut self, originals: &[EntryId]) -> Result<HashMap<EntryId, EntryId>, StoreError> {
        let rows = self.rows_where("SELECT estorno_de, id FROM lancamentos WHERE estorno_de", originals).await?;
        rows.iter().map(|row| Ok((entry_id(row, 0)?, entry_id(row, 1)?))).collect()
    }

    /// Claims retried deliveries, each (origin topic, partition, offset, attempt); returns those
    /// not claimed before. A delivery seen again (its claim committed earlier) is skipped.
    pub async fn claim_deliveries(&mut self, deliveries: &[Delivery]) -> Result<HashSet<Delivery>, StoreError> {
        let mut claimed = HashSet::with_capacity(deliveries.len());
        for chunk in parts(deliveries, ENTRY_CHUNK) {
            let sql = format!(
                "INSERT INTO redeliveries (origin_topic, origin_partition, origin_offset, attempt, claimed_at) \
                 VALUES {} ON CONFLICT DO NOTHING RETURNING origin_topic, origin_partition, origin_offset, attempt",
                self.backend.values(chunk.len(), 5)
            );
            let mut q = sqlx::query(&sql);
            for d in chunk {
                q = q
                    .bind(d.topic.clone())
                    .bind(d.partition)
                    .bind(d.offset)
                    .bind(d.attempt as i32)
                    .bind(self.now.clone());
            }
            for row in q.fetch_all(&mut *self.tx).await? {
                let attempt: i32 = row.try_get(3)?;
                claimed.insert(Delivery {
                    topic: row.try_get(0)?,
                    partition: row.try_get(1)?,
                    offset: row.try_get(2)?,
                    attempt: attempt as u32,
                });
            }
        }
        Ok(claimed)
    }

    /// Adds each change of one state to its stored values. Adding (rather than overwriting) lets
    /// consolidators of disjoint entries write side by side: each entry is counted once, by the
    /// transaction whose insert of its id succeeded.
    pub async fn add_state<K: AsRef<str>>(
        &mut self,
        state: &DeclaredState,
        changes: &Rows<K>,
    ) -> Result<(), StoreError> {
        add_totals(&mut self.tx, self.backend, &self.now, state, changes).await
    }

    /// The states the store keeps, by table.
    pub async fn kept_states(&mut self) -> Result<BTreeMap<String, DeclaredState>, StoreError> {
        crate::states::kept(&mut self.tx).await
    }

    /// The consolidated totals of all time of each of `merchants` that has any.
    pub async fn merchant_totals(
        &mut self,
        merchants: &[&MerchantId],
    ) -> Result<HashMap<MerchantId, DayTotals>, StoreError> {
        let select = "SELECT merchant_id, creditos_cents, debitos_cents, quantidade FROM consolidado_comerciante \
                      WHERE merchant_id";
        let rows = self.rows_where(select, merchants).await?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get(0)?;
                let merchant =
                    MerchantId::parse(&id).map_err(|e| StoreError::Corrupt(format!("merchant {id:?}: {e}")))?;
                Ok((merchant, crate::read::totals(row, 1)?))
            })
            .collect()
    }

    /// Removes entries this transaction inserted and will not count.
    pub async fn delete_entries(&mut self, ids: &[EntryId]) -> Result<(), StoreError> {
        self.rows_where("DELETE FROM lancamentos WHERE id", ids).await.map(drop)
    }

    /// Records where `group` resumes: the next offset per (topic, partition), and the time, taken
    /// now (the transaction's last write, just before its commit). A partition's offset only
    /// moves forward, so a consolidator that briefly overlapped another on a partition cannot
    /// rewind it; its time moves only with its offset, and never back, so the consolidation mark
    /// (and `atualizado_ate`) changes exactly when a commit moved an offset.
    pub async fn save_progress(&mut self, group: &str, next: &[(String, i32, i64)]) -> Result<(), StoreError> {
        if next.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "INSERT INTO consumer_progress (consumer_group, topic, partition, next_offset, updated_at) \
             VALUES {} ON CONFLICT (consumer_group, topic, partition) DO UPDATE SET \
             next_offset = CASE WHEN excluded.next_offset > consumer_progress.next_offset \
             THEN excluded.next_offset ELSE consumer_progress.next_offset END, \
             updated_at = CASE WHEN excluded.next_offset > consumer_progress.next_offset \
             AND excluded.updated_at > consumer_progress.updated_at \
             THEN excluded.updated_at ELSE consumer_progress.updated_at END",
            self.backend.values(next.len(), PROGRESS_COLUMNS)
        );
        let now = now_text();
        let mut q = sqlx::query(&sql);
        for (topic, partition, offset) in next {
            q = q.bind(group.to_owned()).bind(topic.clone()).bind(*partition).bind(*offset).bind(now.clone());
        }
        q.execute(&mut *self.tx).await?;
        Ok(())
    }

    pub async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await?;
        Ok(())
    }
}

/// Upserts `(key values, totals)` rows into the state's table, adding its values to any stored
/// ones. The table and its columns are checked names, never input.
pub(crate) async fn add_totals<K: AsRef<str>>(
    tx: &mut Transaction<'static, Any>,
    backend: Backend,
    now: &str,
    state: &DeclaredState,
    rows: &Rows<K>,
) -> Result<(), StoreError> {
    let (table, measures) = (&state.table, state.values.measures());
    let width = state.key.fields().len();
    if rows.width() != width && !rows.is_empty() {
        return Err(StoreError::RowWidth { table: table.clone(), expected: width, got: rows.width() });
    }
    if rows.is_empty() {
        return Ok(());
    }
    let columns = width + measures.len() + 1;
    let keys = state.key.to_text().replace(',', ", ");
    let values: Vec<&str> = measures.iter().map(|m| m.column()).collect();
    let added: Vec<String> = values.iter().map(|c| format!("{c} = {table}.{c} + excluded.{c}")).collect();
    let upsert = |rows: &str| {
        format!(
            "INSERT INTO {table} ({keys}, {values}) {rows} ON CONFLICT ({keys}) DO UPDATE SET {added}, \
             atualizado_em = excluded.atualizado_em",
            values = values.join(", ") + ", atualizado_em",
            added = added.join(", "),
        )
    };
    if backend == Backend::Postgres {
        // one array per column: the statement's text is the same every epoch
        let arrays = (1..=width).map(|i| format!("${i}::text[]"));
        let arrays: Vec<String> = arrays.chain((width + 1..columns).map(|i| format!("${i}::bigint[]"))).collect();
        let sql = upsert(&format!("SELECT u.*, ${columns} FROM UNNEST({}) AS u", arrays.join(", ")));
        let (mut keys, mut sums): (Vec<PgArray>, Vec<PgArray>) =
            ((0..width).map(|_| PgArray::default()).collect(), measures.iter().map(|_| PgArray::default()).collect());
        // in key order, as every lane writes: two lanes wait for each other's rows in one order
        let mut sorted: Vec<_> = rows.iter().collect();
        sorted.sort_unstable_by(|a, b| a.0.iter().map(AsRef::as_ref).cmp(b.0.iter().map(AsRef::as_ref)));
        for (key, t) in sorted {
            key.iter().zip(&mut keys).for_each(|(v, a)| a.push(Some(v.as_ref())));
            measures.iter().zip(&mut sums).for_each(|(m, a)| a.push_number(m.of(t)));
        }
        let q = keys.into_iter().chain(sums).fold(sqlx::query(&sql), |q, a| q.bind(a.finish()));
        q.bind(now).execute(&mut **tx).await?;
        return Ok(());
    }
    let rows: Vec<_> = rows.iter().collect();
    for chunk in parts(&rows, TOTALS_PARAMS / columns) {
        let sql = upsert(&format!("VALUES {}", backend.values(chunk.len(), columns)));
        let mut q = sqlx::query(&sql);
        for (key, t) in chunk {
            for v in *key {
                q = q.bind(v.as_ref());
            }
            for m in measures {
                q = q.bind(m.of(t));
            }
            q = q.bind(now);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// `entries`' columns but the last (`consolidado_em`, one value), as [`PG_INSERT_ENTRIES`] binds
/// them, in the order of their ids: lanes that insert the same id wait for each other in one order.
fn pg_entry_columns(entries: &[StoredEntry]) -> [String; ENTRY_COLUMNS - 1] {
    let mut entries: Vec<&StoredEntry> = entries.iter().collect();
    entries.sort_unstable_by_key(|e| e.entry.id);
    let mut columns: [PgArray; ENTRY_COLUMNS - 1] = Default::default();
    let [id, merchant, tipo, valor, data, descricao, categoria, criado_em, estorno_de, topic, partition, offset] =
        &mut columns;
    for StoredEntry { entry, origin } in entries {
        let r = entry.to_record();
        id.push(Some(&r.id.to_string()));
        merchant.push(Some(&r.merchant_id));
        tipo.push(Some(r.tipo.as_str()));
        valor.push_number(r.valor_cents);
        data.push(Some(&r.data));
        descricao.push(Some(&r.descricao));
        categoria.push(r.categoria.as_deref());
        criado_em.push(Some(&r.criado_em));
        estorno_de.push(r.estorno_de.map(|e| e.to_string()).as_deref());
        topic.push(Some(&origin.topic));
        partition.push_number(origin.partition.into());
        offset.push_number(origin.offset);
    }
    columns.map(PgArray::finish)
}

#[cfg(test)]
mod tests;
