//! Reads: resume positions, the consolidated state, and balances for the API.

use std::collections::HashMap;

use cashflow_core::{BusinessDate, DayTotals, EntryId, LancamentoRecord, MerchantId};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::epoch::{ENTRY_SELECT, record_from_row};
use crate::{Store, StoreError};

/// A merchant's days in a range, plus the balance carried into it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DailyRows {
    /// Sum of every `saldo_do_dia` before the range.
    pub opening_cents: i64,
    /// The days with entries, in date order.
    pub days: Vec<(BusinessDate, DayTotals)>,
    /// When the consumer group last committed, if ever (RFC 3339).
    pub consolidated_at: Option<String>,
}

/// A merchant's months of one year, plus the balance carried into it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MonthlyRows {
    /// Sum of every month's balance before the year.
    pub opening_cents: i64,
    /// The months with entries, `(1..=12, totals)`, in order.
    pub months: Vec<(u32, DayTotals)>,
    /// When the consumer group last committed, if ever (RFC 3339).
    pub consolidated_at: Option<String>,
}

/// How far a consumer group has consolidated, as one mark that two reads can compare: the sum
/// of its next offsets, which only grow and grow with every commit that adds an entry, and the
/// time of its last commit (RFC 3339), which every commit sets. Two reads with the same mark saw
/// the same consolidated state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Mark {
    pub offsets: i64,
    pub at: Option<String>,
}

/// Next offset per (topic, partition) stored for a group.
pub type Progress = HashMap<(String, i32), i64>;

pub(crate) fn totals(row: &AnyRow, from: usize) -> Result<DayTotals, StoreError> {
    Ok(DayTotals {
        creditos_cents: row.try_get(from)?,
        debitos_cents: row.try_get(from + 1)?,
        quantidade: row.try_get(from + 2)?,
    })
}

fn date(row: &AnyRow, i: usize) -> Result<BusinessDate, StoreError> {
    let s: String = row.try_get(i)?;
    s.parse().map_err(|e| StoreError::Corrupt(format!("date {s:?}: {e}")))
}

impl Store {
    /// Next offset per (topic, partition) stored for `group`.
    pub async fn load_progress(&self, group: &str) -> Result<Progress, StoreError> {
        Ok(self.progress_and_mark(group).await?.0)
    }

    /// `group`'s next offsets and its [`Mark`], read together.
    pub async fn progress_and_mark(&self, group: &str) -> Result<(Progress, Mark), StoreError> {
        let rows = sqlx::query(
            "SELECT topic, partition, next_offset, updated_at FROM consumer_progress WHERE consumer_group = $1",
        )
        .bind(group.to_owned())
        .fetch_all(&self.pool)
        .await?;
        let mut progress = Progress::with_capacity(rows.len());
        let mut mark = Mark::default();
        for r in &rows {
            let next: i64 = r.try_get(2)?;
            let at: String = r.try_get(3)?;
            progress.insert((r.try_get(0)?, r.try_get(1)?), next);
            mark.offsets += next;
            mark.at = mark.at.max(Some(at));
        }
        Ok((progress, mark))
    }

    /// The merchant's totals per category over `[de, ate]`, by category (`None` first), and when
    /// `group` last committed: one statement, so both come from one snapshot of the store.
    pub async fn categories(
        &self,
        merchant: &MerchantId,
        de: BusinessDate,
        ate: BusinessDate,
        group: &str,
    ) -> Result<(Vec<(Option<String>, DayTotals)>, Option<String>), StoreError> {
        let rows = sqlx::query(
            "SELECT CAST(0 AS BIGINT), categoria, CAST(SUM(creditos_cents) AS BIGINT), \
             CAST(SUM(debitos_cents) AS BIGINT), CAST(SUM(quantidade) AS BIGINT) FROM consolidado_categoria \
             WHERE merchant_id = $1 AND data >= $2 AND data <= $3 GROUP BY categoria \
             UNION ALL \
             SELECT CAST(1 AS BIGINT), MAX(updated_at), CAST(0 AS BIGINT), CAST(0 AS BIGINT), CAST(0 AS BIGINT) \
             FROM consumer_progress WHERE consumer_group = $4",
        )
        .bind(merchant.to_string())
        .bind(de.to_string())
        .bind(ate.to_string())
        .bind(group.to_owned())
        .fetch_all(&self.pool)
        .await?;
        let (mut categories, mut consolidated_at) = (Vec::new(), None);
        for r in &rows {
            let name: Option<String> = r.try_get(1)?;
            match r.try_get::<i64, _>(0)? {
                0 => categories.push((name.unwrap_or_default(), totals(r, 2)?)),
                _ => consolidated_at = name,
            }
        }
        categories.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let categories = categories.into_iter().map(|(c, t)| (Some(c).filter(|c| !c.is_empty()), t)).collect();
        Ok((categories, consolidated_at))
    }

    /// The merchant's daily totals in `[de, ate]`, the balance before `de`, and when `group`
    /// last committed: one round trip, rows in any order (a row per day, the opening row and the
    /// commit time, told apart by the first column).
    pub async fn daily(
        &self,
        merchant: &MerchantId,
        de: BusinessDate,
        ate: BusinessDate,
        group: &str,
    ) -> Result<DailyRows, StoreError> {
        let rows = sqlx::query(
            "SELECT CAST(0 AS BIGINT), data, creditos_cents, debitos_cents, quantidade FROM consolidado_diario \
             WHERE merchant_id = $1 AND data >= $2 AND data <= $3 \
             UNION ALL \
             SELECT CAST(1 AS BIGINT), NULL, CAST(COALESCE(SUM(creditos_cents - debitos_cents), 0) AS BIGINT), \
             CAST(0 AS BIGINT), CAST(0 AS BIGINT) FROM consolidado_diario WHERE merchant_id = $1 AND data < $2 \
             UNION ALL \
             SELECT CAST(2 AS BIGINT), MAX(updated_at), CAST(0 AS BIGINT), CAST(0 AS BIGINT), CAST(0 AS BIGINT) \
             FROM consumer_progress WHERE consumer_group = $4",
        )
        .bind(merchant.to_string())
        .bind(de.to_string())
        .bind(ate.to_string())
        .bind(group.to_owned())
        .fetch_all(&self.pool)
        .await?;
        let mut out = DailyRows::default();
        for r in &rows {
            match r.try_get::<i64, _>(0)? {
                0 => out.days.push((date(r, 1)?, totals(r, 2)?)),
                1 => out.opening_cents = r.try_get(2)?,
                _ => out.consolidated_at = r.try_get(1)?,
            }
        }
        out.days.sort_unstable_by_key(|(d, _)| *d);
        Ok(out)
    }

    /// The merchant's months of `year` (at most 12 rows, `(month 1..=12, totals)`), the balance
    /// before the year, and when `group` last committed: one statement.
    pub async fn monthly(&self, merchant: &MerchantId, year: i32, group: &str) -> Result<MonthlyRows, StoreError> {
        let rows = sqlx::query(
            "SELECT CAST(0 AS BIGINT), mes, creditos_cents, debitos_cents, quantidade FROM consolidado_mensal \
             WHERE merchant_id = $1 AND mes >= $2 AND mes <= $3 \
             UNION ALL \
             SELECT CAST(1 AS BIGINT), NULL, CAST(COALESCE(SUM(creditos_cents - debitos_cents), 0) AS BIGINT), \
             CAST(0 AS BIGINT), CAST(0 AS BIGINT) FROM consolidado_mensal WHERE merchant_id = $1 AND mes < $2 \
             UNION ALL \
             SELECT CAST(2 AS BIGINT), MAX(updated_at), CAST(0 AS BIGINT), CAST(0 AS BIGINT), CAST(0 AS BIGINT) \
             FROM consumer_progress WHERE consumer_group = $4",
        )
        .bind(merchant.to_string())
        .bind(format!("{year:04}-01"))
        .bind(format!("{year:04}-12"))
        .bind(group.to_owned())
        .fetch_all(&self.pool)
        .await?;
        let mut out = MonthlyRows::default();
        for r in &rows {
            match r.try_get::<i64, _>(0)? {
                0 => {
                    let mes: String = r.try_get(1)?;
                    let month = mes.get(5..).and_then(|m| m.parse().ok()).filter(|m| (1..=12).contains(m));
                    let month = month.ok_or_else(|| StoreError::Corrupt(format!("month {mes:?}")))?;
                    out.months.push((month, totals(r, 2)?));
                }
                1 => out.opening_cents = r.try_get(2)?,
                _ => out.consolidated_at = r.try_get(1)?,
            }
        }
        out.months.sort_unstable_by_key(|(m, _)| *m);
        Ok(out)
    }

    /// How many entries are stored; for tests and operators.
    pub async fn count_entries(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) FROM lancamentos").fetch_one(&self.pool).await?;
        Ok(row.try_get(0)?)
    }
}

impl Store {
    /// A merchant's consolidated entry, as stored.
    /// The consolidated entry with this id, whichever merchant it belongs to (callers check).
    pub async fn find_entry(&self, id: EntryId) -> Result<Option<LancamentoRecord>, StoreError> {
        let sql = format!("{ENTRY_SELECT} WHERE id = $1");
        let row = sqlx::query(&sql).bind(id.to_string()).fetch_optional(&self.pool).await?;
        row.as_ref().map(record_from_row).transpose()
    }

    /// The consolidated reversal of `original`, if any.
    pub async fn reversal_of(&self, original: EntryId) -> Result<Option<EntryId>, StoreError> {
        let row = sqlx::query("SELECT id FROM lancamentos WHERE estorno_de = $1")
            .bind(original.to_string())
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let id: String = row.try_get(0)?;
        id.parse().map(Some).map_err(|_| StoreError::Corrupt(format!("entry id {id:?}")))
    }
}
