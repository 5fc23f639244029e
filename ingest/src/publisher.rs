//! The producer side: one idempotent producer per process, `acks=all`.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use cashflow_core::config::PipelineConfig;
use cashflow_core::{Lancamento, MerchantId, Posicao, Reversal};
use cashflow_kafka as kafka;
use cashflow_observability::metrics;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, ClientContext};

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Refused before it reached the broker: the entry is not recorded.
    #[error("the entry was not sent to the broker: {0}")]
    NotSent(KafkaError),
    /// Not acknowledged: the broker may have it (librdkafka reports a message that timed out
    /// in flight as possibly persisted), or not.
    #[error("the broker did not acknowledge the entry: {0}")]
    Unconfirmed(KafkaError),
}

impl IngestError {
    fn of(e: KafkaError) -> IngestError {
        use rdkafka::types::RDKafkaErrorCode::{InvalidArgument, MessageSizeTooLarge, QueueFull, UnknownTopic};
        match e.rdkafka_error_code() {
            Some(QueueFull | MessageSizeTooLarge | InvalidArgument | UnknownTopic) => IngestError::NotSent(e),
            _ => IngestError::Unconfirmed(e),
        }
    }
}

/// Counts the errors librdkafka reports on the producer's broker connections.
struct BrokerErrors;

impl ClientContext for BrokerErrors {
    fn error(&self, error: KafkaError, reason: &str) {
        metrics().ingest_broker_errors.inc();
        tracing::warn!(error = %error, reason, "broker connection error");
    }
}

type IngestProducer = FutureProducer<BrokerErrors>;

/// Publishes entries and waits for their delivery reports.
pub struct Publisher {
    /// Replaced when librdkafka reports a fatal error, which leaves an idempotent producer
    /// unusable: ingest recovers without a restart.
    producer: RwLock<Arc<IngestProducer>>,
    client: ClientConfig,
    topic: String,
    ack_timeout: Duration,
}

impl Publisher {
    pub fn new(config: &PipelineConfig) -> Result<Self, KafkaError> {
        let ack_timeout = config.services.ingest.ack_timeout;
        let client = kafka::producer_config(config, ack_timeout);
        let producer = RwLock::new(Arc::new(client.create_with_context(BrokerErrors)?));
        let topic = config.ingest_topic().to_owned();
        Ok(Publisher { producer, client, topic, ack_timeout })
    }

    /// Sends the entry and resolves once the broker acknowledged it, with its log position.
    pub async fn publish(&self, entry: &Lancamento) -> Result<Posicao, IngestError> {
        self.send(&entry.merchant_id, &entry.encode()).await
    }

    /// Sends a reversal, like [`Publisher::publish`].
    pub async fn publish_reversal(&self, reversal: &Reversal) -> Result<Posicao, IngestError> {
        self.send(&reversal.merchant_id, &reversal.encode()).await
    }

    async fn send(&self, merchant: &MerchantId, payload: &[u8]) -> Result<Posicao, IngestError> {
        let record = FutureRecord::to(&self.topic).key(merchant.as_str()).payload(payload);
        let started = Instant::now();
        let producer = self.current();
        let result = producer.send(record, Timeout::After(self.ack_timeout)).await;
        let m = metrics();
        let outcome = if result.is_ok() { "acked" } else { "failed" };
        m.ingest_produced.with_label_values(&[outcome]).inc();
        m.ingest_produce_duration.with_label_values(&[outcome]).observe(started.elapsed().as_secs_f64());
        match result {
            Ok(delivery) => Ok(Posicao { partition: delivery.partition, offset: delivery.offset }),
            Err((e, _)) => {
                self.replace_if_fatal(&producer);
                Err(IngestError::of(e))
            }
        }
    }

    fn current(&self) -> Arc<IngestProducer> {
        match self.producer.read() {
            Ok(p) => Arc::clone(&p),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Swaps in a new producer when `failed` hit a fatal error (once, however many callers saw it).
    fn replace_if_fatal(&self, failed: &Arc<IngestProducer>) {
        let Some((code, reason)) = failed.client().fatal_error() else { return };
        let mut slot = match self.producer.write() {
            Ok(slot) => slot,
            Err(poisoned) => poisoned.into_inner(),
        };
        if !Arc::ptr_eq(&slot, failed) {
            return;
        }
        match self.client.create_with_context(BrokerErrors) {
            Ok(fresh) => {
                tracing::error!(error = ?code, %reason, "producer hit a fatal error; replaced it");
                *slot = Arc::new(fresh);
            }
            Err(e) => tracing::error!(error = %e, "producer hit a fatal error and cannot be replaced yet"),
        }
    }

    /// Waits for in-flight deliveries, for a clean shutdown.
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.current().flush(Timeout::After(timeout)) {
            tracing::warn!(error = %e, "producer not flushed at shutdown");
        }
    }
}
