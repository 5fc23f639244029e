//! The statement (*extrato*): a merchant's entries in a date range, in a stable order
//! (`data`, `criado_em`, `id`), read page by page with a keyset cursor so that entries inserted
//! meanwhile never shift a page: nothing that existed when paging began is repeated or skipped.

use cashflow_core::{BusinessDate, EntryId, LancamentoRecord, MerchantId, Tipo};
use sqlx::Row;

use crate::epoch::record_from_row;
use crate::{Store, StoreError};

/// Where a page ends: the order key of its last entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtratoKey {
    pub data: String,
    pub criado_em: String,
    pub id: String,
}

/// What to list.
#[derive(Clone, Debug)]
pub struct ExtratoQuery {
    pub merchant: MerchantId,
    pub de: BusinessDate,
    pub ate: BusinessDate,
    pub categoria: Option<String>,
    pub tipo: Option<Tipo>,
    /// Entries strictly after this key.
    pub after: Option<ExtratoKey>,
    pub limit: u32,
}

/// An entry and, if it was reversed, the id of its reversal.
#[derive(Clone, Debug)]
pub struct ExtratoLine {
    pub entry: LancamentoRecord,
    pub estornado_por: Option<EntryId>,
}

impl ExtratoLine {
    pub fn key(&self) -> ExtratoKey {
        ExtratoKey {
            data: self.entry.data.clone(),
            criado_em: self.entry.criado_em.clone(),
            id: self.entry.id.to_string(),
        }
    }
}

impl Store {
    /// One page of the statement, in order.
    pub async fn extrato(&self, q: &ExtratoQuery) -> Result<Vec<ExtratoLine>, StoreError> {
        let mut sql = String::from(
            "SELECT l.id, l.merchant_id, l.tipo, l.valor_cents, l.data, l.descricao, l.categoria, l.criado_em, \
             l.estorno_de, r.id FROM lancamentos l LEFT JOIN lancamentos r ON r.estorno_de = l.id \
             WHERE l.merchant_id = $1 AND l.data >= $2 AND l.data <= $3",
        );
        let mut n = 3;
        let mut param = || {
            n += 1;
            format!("${n}")
        };
        if q.categoria.is_some() {
            sql += &format!(" AND l.categoria = {}", param());
        }
        if q.tipo.is_some() {
            sql += &format!(" AND l.tipo = {}", param());
        }
        if q.after.is_some() {
            let (d, c, i) = (param(), param(), param());
            sql += &format!(
                " AND (l.data > {d} OR (l.data = {d} AND (l.criado_em > {c} OR (l.criado_em = {c} AND l.id > {i}))))"
            );
        }
        sql += &format!(" ORDER BY l.data, l.criado_em, l.id LIMIT {}", param());

        let mut query = sqlx::query(&sql).bind(q.merchant.to_string()).bind(q.de.to_string()).bind(q.ate.to_string());
        if let Some(c) = &q.categoria {
            query = query.bind(c.clone());
        }
        if let Some(t) = q.tipo {
            query = query.bind(t.as_str().to_owned());
        }
        if let Some(k) = &q.after {
            query = query.bind(k.data.clone()).bind(k.criado_em.clone()).bind(k.id.clone());
        }
        let rows = query.bind(i64::from(q.limit)).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                let reversal: Option<String> = row.try_get(9)?;
                let estornado_por = reversal
                    .map(|r| r.parse().map_err(|_| StoreError::Corrupt(format!("entry id {r:?}"))))
                    .transpose()?;
                Ok(ExtratoLine { entry: record_from_row(row)?, estornado_por })
            })
            .collect()
    }
}
