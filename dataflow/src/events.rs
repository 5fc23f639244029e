//! What the consolidate stage reports. Each event emits its log line and its metrics together,
//! from one place, as Vector's `src/internal_events/` do: a count and its log cannot drift apart.

use std::time::{Duration, Instant};

use cashflow_core::Lancamento;
use cashflow_core::failure::{Code, Transient as _};
use cashflow_observability::metrics;

use crate::ConsolidateError;

/// A record that will not be counted went to an error topic.
pub(crate) struct RecordRejected<'a> {
    pub code: Code,
    /// Straight to the dead-letter topic (else to the retry topic).
    pub parked: bool,
    pub position: (&'a str, i32, i64),
    pub to: &'a str,
}

impl RecordRejected<'_> {
    pub fn emit(self) {
        let m = metrics();
        let code = [self.code.as_str()];
        m.consolidate_failed.with_label_values(&code).inc();
        if self.parked {
            m.retry_parked.with_label_values(&code).inc();
        }
        // One line per record, where its fate is decided: parked here, or by the retry stage when
        // its retries run out (a record retried until its original arrives writes none).
        let (topic, partition, offset) = self.position;
        if self.parked {
            tracing::warn!(code = %self.code, topic, partition, offset, to = self.to, "record parked");
        } else {
            tracing::debug!(code = %self.code, topic, partition, offset, to = self.to, "record to be retried");
        }
    }
}

/// An epoch's transaction committed.
pub(crate) struct EpochCommitted<'a> {
    /// When its transaction opened.
    pub opened: Instant,
    /// The entries it counted.
    pub fresh: &'a [&'a Lancamento],
    pub duplicates: u64,
    /// Rows written per state's table.
    pub rows: Vec<(&'a str, usize)>,
}

impl EpochCommitted<'_> {
    pub fn emit(self) {
        let m = metrics();
        m.sink_batch_duration.observe(self.opened.elapsed().as_secs_f64());
        m.sink_batch_rows.with_label_values(&["lancamentos"]).observe(self.fresh.len() as f64);
        for (table, rows) in &self.rows {
            m.sink_batch_rows.with_label_values(&[table]).observe(*rows as f64);
        }
        m.consolidate_committed.inc_by(self.fresh.len() as u64);
        let committed_at = chrono::Utc::now();
        for e in self.fresh {
            let age = (committed_at - e.criado_em).num_microseconds().unwrap_or(i64::MAX).max(0);
            m.consolidate_freshness.observe(age as f64 / 1e6);
        }
        m.consolidate_duplicates.inc_by(self.duplicates);
        m.consolidate_epochs.inc();
        tracing::debug!(entries = self.fresh.len(), duplicates = self.duplicates, "epoch committed");
    }
}

/// A session failed; the next starts after `wait`.
pub(crate) struct SessionFailed<'a> {
    pub error: &'a ConsolidateError,
    pub wait: Duration,
}

impl SessionFailed<'_> {
    pub fn emit(self) {
        let (e, retry_in_ms) = (self.error, self.wait.as_millis() as u64);
        match e {
            ConsolidateError::Store(s) if !s.is_transient() => {
                metrics().consolidate_store_errors.inc();
                tracing::error!(error = %e, retry_in_ms, "store rejected an epoch; retrying from the store");
            }
            ConsolidateError::Store(_) => {
                metrics().consolidate_store_errors.inc();
                tracing::warn!(error = %e, retry_in_ms, "store unavailable; consolidation paused");
            }
            _ => tracing::warn!(error = %e, retry_in_ms, "consolidation paused; resuming from the store"),
        }
    }
}
