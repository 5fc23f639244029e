//! The producer side: one idempotent producer per process, `acks=all`.

use std::time::{Duration, Instant};

use cashflow_core::config::PipelineConfig;
use cashflow_core::{Lancamento, Posicao, kafka};
use cashflow_observability::metrics;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Not acknowledged in time, or the broker refused: the entry is not durable.
    #[error("the broker did not acknowledge the entry: {0}")]
    Unavailable(KafkaError),
}

/// Publishes entries and waits for their delivery reports.
pub struct Publisher {
    producer: FutureProducer,
    topic: String,
    ack_timeout: Duration,
}

impl Publisher {
    pub fn new(config: &PipelineConfig) -> Result<Self, KafkaError> {
        let ack_timeout = Duration::from_millis(config.services.ingest.ack_timeout_ms);
        let producer = kafka::producer_config(config, ack_timeout).create()?;
        Ok(Publisher {
            producer,
            topic: config.ingest_topic().to_owned(),
            ack_timeout,
        })
    }

    pub fn ack_timeout(&self) -> Duration {
        self.ack_timeout
    }

    /// Sends the entry and resolves once the broker acknowledged it, with its log position.
    pub async fn publish(&self, entry: &Lancamento) -> Result<Posicao, IngestError> {
        let payload = entry.encode();
        let key = entry.merchant_id.as_str();
        let record = FutureRecord::to(&self.topic).key(key).payload(&payload);
        let started = Instant::now();
        let result = self
            .producer
            .send(record, Timeout::After(self.ack_timeout))
            .await;
        let m = metrics();
        let outcome = if result.is_ok() { "acked" } else { "failed" };
        m.ingest_produced.with_label_values(&[outcome]).inc();
        m.ingest_produce_duration
            .with_label_values(&[outcome])
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(delivery) => Ok(Posicao {
                partition: delivery.partition,
                offset: delivery.offset,
            }),
            Err((e, _)) => Err(IngestError::Unavailable(e)),
        }
    }

    /// Waits for in-flight deliveries, for a clean shutdown.
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(Timeout::After(timeout)) {
            tracing::warn!(error = %e, "producer not flushed at shutdown");
        }
    }
}
