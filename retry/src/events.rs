//! What the retry stage and the dead-letter operations report. Each event emits its log line and
//! its metrics together, from one place, as Vector's `src/internal_events/` do.

use cashflow_core::failure::Failure;
use cashflow_observability::metrics;

/// A held record went back to consolidation.
pub(crate) struct RecordRetried<'a> {
    pub failure: &'a Failure,
}

impl RecordRetried<'_> {
    pub fn emit(self) {
        metrics().retry_retried.with_label_values(&[self.failure.code.as_str()]).inc();
        let f = self.failure;
        tracing::debug!(code = %f.code, attempt = f.attempt + 1, origin_topic = %f.origin_topic, origin_partition = f.origin_partition, origin_offset = f.origin_offset, "record retried");
    }
}

/// A record was parked on the dead-letter topic: its retries ran out (`expired`), or it could not
/// be routed.
pub(crate) struct RecordParked<'a> {
    pub failure: &'a Failure,
    pub expired: bool,
}

impl RecordParked<'_> {
    pub fn emit(self) {
        let (m, f) = (metrics(), self.failure);
        let code = [f.code.as_str()];
        m.retry_parked.with_label_values(&code).inc();
        if self.expired {
            m.retry_expired.with_label_values(&code).inc();
        }
        tracing::warn!(code = %f.code, attempts = f.attempt, origin_topic = %f.origin_topic, origin_partition = f.origin_partition, origin_offset = f.origin_offset, "record parked");
    }
}

/// A parked record was sent back to consolidation by an operator.
pub(crate) struct ParkedReplayed<'a> {
    pub position: &'a str,
    pub code: &'a str,
}

impl ParkedReplayed<'_> {
    pub fn emit(self) {
        metrics().retry_replayed.with_label_values(&[self.code]).inc();
        tracing::info!(position = %self.position, code = self.code, "parked record replayed");
    }
}
