//! Bookkeeping for the dead-letter topic, which the broker cannot truncate: a purge mark per
//! partition (records below it are gone from view) and the records already replayed.

use std::collections::{HashMap, HashSet};

use sqlx::Row;

use crate::epoch::now_text;
use crate::{Store, StoreError};

impl Store {
    /// Per partition of `topic`, the first offset not purged.
    pub async fn dlq_marks(&self, topic: &str) -> Result<HashMap<i32, i64>, StoreError> {
        let rows = sqlx::query("SELECT partition, purged_until FROM dlq_marks WHERE topic = $1")
            .bind(topic.to_owned())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    /// Purges everything below each (partition, offset). Marks only move forward.
    pub async fn purge_dlq(&self, topic: &str, until: &[(i32, i64)]) -> Result<(), StoreError> {
        if until.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "INSERT INTO dlq_marks (topic, partition, purged_until, updated_at) VALUES {} \
             ON CONFLICT (topic, partition) DO UPDATE SET \
             purged_until = CASE WHEN excluded.purged_until > dlq_marks.purged_until \
             THEN excluded.purged_until ELSE dlq_marks.purged_until END, updated_at = excluded.updated_at",
            self.backend.values(until.len(), 4)
        );
        let now = now_text();
        let mut q = sqlx::query(&sql);
        for (partition, offset) in until {
            q = q.bind(topic.to_owned()).bind(*partition).bind(*offset).bind(now.clone());
        }
        q.execute(&self.pool).await?;
        Ok(())
    }

    /// The (partition, offset) of every replayed record of `topic`.
    pub async fn dlq_replays(&self, topic: &str) -> Result<HashSet<(i32, i64)>, StoreError> {
        let rows = sqlx::query("SELECT partition, \"offset\" FROM dlq_replays WHERE topic = $1")
            .bind(topic.to_owned())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    /// Notes records as replayed, once they are durable on their way back.
    pub async fn mark_replayed(&self, topic: &str, records: &[(i32, i64)]) -> Result<(), StoreError> {
        let now = now_text();
        for chunk in records.chunks(1000) {
            let sql = format!(
                "INSERT INTO dlq_replays (topic, partition, \"offset\", replayed_at) VALUES {} ON CONFLICT DO NOTHING",
                self.backend.values(chunk.len(), 4)
            );
            let mut q = sqlx::query(&sql);
            for (partition, offset) in chunk {
                q = q.bind(topic.to_owned()).bind(*partition).bind(*offset).bind(now.clone());
            }
            q.execute(&self.pool).await?;
        }
        Ok(())
    }
}
