//! One epoch's writes, in one transaction.

use std::collections::HashSet;

use cashflow_core::{BusinessDate, DayTotals, EntryId, Lancamento, MerchantId};
use chrono::{SecondsFormat, Utc};
use sqlx::{Any, Row, Transaction};

use crate::store::values_placeholders;
use crate::{Store, StoreError};

/// Where a record was read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// An entry and the log position it came from.
#[derive(Clone, Debug)]
pub struct StoredEntry {
    pub entry: Lancamento,
    pub origin: Origin,
}

const ENTRY_COLUMNS: usize = 13;
const ENTRY_CHUNK: usize = 400;
const DAILY_COLUMNS: usize = 6;
const DAILY_CHUNK: usize = 1000;
const PROGRESS_COLUMNS: usize = 5;

/// The transaction of one epoch. Dropped without [`EpochTx::commit`], it rolls back.
pub struct EpochTx {
    tx: Transaction<'static, Any>,
    now: String,
}

impl Store {
    pub async fn begin_epoch(&self) -> Result<EpochTx, StoreError> {
        Ok(EpochTx {
            tx: self.pool.begin().await?,
            now: now_text(),
        })
    }

    /// Takes the next generation of `group`'s fence. Any older session's next epoch will fail.
    pub async fn acquire_fence(&self, group: &str, holder: &str) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "INSERT INTO consumer_fence (consumer_group, generation, holder, acquired_at) VALUES ($1, 1, $2, $3) \
             ON CONFLICT (consumer_group) DO UPDATE SET generation = consumer_fence.generation + 1, \
             holder = excluded.holder, acquired_at = excluded.acquired_at RETURNING generation",
        )
        .bind(group.to_owned())
        .bind(holder.to_owned())
        .bind(now_text())
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get(0)?)
    }
}

pub(crate) fn now_text() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl EpochTx {
    /// Inserts the entries whose id is not stored yet and returns those ids. An id that is
    /// already stored is left untouched, so a redelivered entry is counted once.
    pub async fn insert_entries(
        &mut self,
        entries: &[StoredEntry],
    ) -> Result<HashSet<EntryId>, StoreError> {
        let mut inserted = HashSet::with_capacity(entries.len());
        for chunk in entries.chunks(ENTRY_CHUNK) {
            let sql = format!(
                "INSERT INTO lancamentos (id, merchant_id, tipo, valor_cents, data, descricao, categoria, \
                 criado_em, estorno_de, origin_topic, origin_partition, origin_offset, consolidado_em) \
                 VALUES {} ON CONFLICT (id) DO NOTHING RETURNING id",
                values_placeholders(chunk.len(), ENTRY_COLUMNS)
            );
            let mut q = sqlx::query(&sql);
            for StoredEntry {
                entry: e,
                origin: o,
            } in chunk
            {
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
            for row in q.fetch_all(&mut *self.tx).await? {
                let id: String = row.try_get(0)?;
                let id = id
                    .parse()
                    .map_err(|_| StoreError::Corrupt(format!("entry id {id:?}")))?;
                inserted.insert(id);
            }
        }
        Ok(inserted)
    }

    /// Writes the new absolute totals of the days that changed.
    pub async fn upsert_daily(
        &mut self,
        days: &[(MerchantId, BusinessDate, DayTotals)],
    ) -> Result<(), StoreError> {
        for chunk in days.chunks(DAILY_CHUNK) {
            let sql = format!(
                "INSERT INTO consolidado_diario (merchant_id, data, creditos_cents, debitos_cents, quantidade, atualizado_em) \
                 VALUES {} ON CONFLICT (merchant_id, data) DO UPDATE SET \
                 creditos_cents = excluded.creditos_cents, debitos_cents = excluded.debitos_cents, \
                 quantidade = excluded.quantidade, atualizado_em = excluded.atualizado_em",
                values_placeholders(chunk.len(), DAILY_COLUMNS)
            );
            let mut q = sqlx::query(&sql);
            for (merchant, day, t) in chunk {
                q = q
                    .bind(merchant.to_string())
                    .bind(day.to_string())
                    .bind(t.creditos_cents)
                    .bind(t.debitos_cents)
                    .bind(t.quantidade)
                    .bind(self.now.clone());
            }
            q.execute(&mut *self.tx).await?;
        }
        Ok(())
    }

    /// Records where `group` resumes: the next offset per (topic, partition).
    pub async fn save_progress(
        &mut self,
        group: &str,
        next: &[(String, i32, i64)],
    ) -> Result<(), StoreError> {
        if next.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "INSERT INTO consumer_progress (consumer_group, topic, partition, next_offset, updated_at) \
             VALUES {} ON CONFLICT (consumer_group, topic, partition) DO UPDATE SET \
             next_offset = excluded.next_offset, updated_at = excluded.updated_at",
            values_placeholders(next.len(), PROGRESS_COLUMNS)
        );
        let mut q = sqlx::query(&sql);
        for (topic, partition, offset) in next {
            q = q
                .bind(group.to_owned())
                .bind(topic.clone())
                .bind(*partition)
                .bind(*offset)
                .bind(self.now.clone());
        }
        q.execute(&mut *self.tx).await?;
        Ok(())
    }

    /// Fails with [`StoreError::Fenced`] unless `generation` is still the group's current one.
    /// Call it first: on PostgreSQL it also locks the row until commit, serializing writers.
    pub async fn check_fence(&mut self, group: &str, generation: i64) -> Result<(), StoreError> {
        let done = sqlx::query("UPDATE consumer_fence SET generation = generation WHERE consumer_group = $1 AND generation = $2")
            .bind(group.to_owned())
            .bind(generation)
            .execute(&mut *self.tx)
            .await?;
        if done.rows_affected() == 1 {
            Ok(())
        } else {
            Err(StoreError::Fenced {
                group: group.to_owned(),
                generation,
            })
        }
    }

    pub async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await?;
        Ok(())
    }
}
