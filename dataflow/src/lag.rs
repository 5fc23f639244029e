//! Consumer lag per source partition: the broker's high watermark minus the position the store
//! committed. Measured beside the consolidation sessions, from the store and the broker only, so
//! it keeps growing (and keeps being reported) while consolidation is paused.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cashflow_core::config::PipelineConfig;
use cashflow_kafka as kafka;
use cashflow_observability::metrics;
use cashflow_sinks::Store;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use tokio_util::sync::CancellationToken;

const EVERY: Duration = Duration::from_secs(5);
const BROKER_TIMEOUT: Duration = Duration::from_secs(5);

/// One partition's offsets.
struct Watermarks {
    topic: String,
    partition: i32,
    low: i64,
    high: i64,
}

/// Sets `cashflow_consolidate_lag_records` every few seconds until `shutdown`.
pub async fn report(config: Arc<PipelineConfig>, store: Store, shutdown: CancellationToken) {
    let consumer: Arc<BaseConsumer> = match kafka::client_config(&config).create() {
        Ok(c) => Arc::new(c),
        Err(e) => {
            tracing::warn!(error = %e, "consumer lag is not reported");
            return;
        }
    };
    let group = &config.services.consolidate.group;
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let progress = match store.load_progress(group).await {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "consumer lag not measured: store unavailable");
                continue;
            }
        };
        let (consumer, sources) = (Arc::clone(&consumer), config.consolidate_sources());
        match tokio::task::spawn_blocking(move || watermarks(&consumer, &sources)).await {
            Ok(Ok(marks)) => publish(&marks, &progress),
            Ok(Err(e)) => tracing::debug!(error = %e, "consumer lag not measured: broker unavailable"),
            Err(e) => tracing::warn!(error = %e, "consumer lag task failed"),
        }
    }
}

fn publish(marks: &[Watermarks], progress: &HashMap<(String, i32), i64>) {
    for w in marks {
        let committed = progress.get(&(w.topic.clone(), w.partition)).copied().unwrap_or(0);
        let lag = (w.high - committed.max(w.low)).max(0);
        metrics().consolidate_lag.with_label_values(&[&w.topic, &w.partition.to_string()]).set(lag);
    }
}

/// Every partition of `topics`, with its low and high watermarks (blocking).
fn watermarks(consumer: &BaseConsumer, topics: &[String]) -> Result<Vec<Watermarks>, KafkaError> {
    let mut out = Vec::new();
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), BROKER_TIMEOUT)?;
        for t in metadata.topics().iter().filter(|t| t.name() == topic && t.error().is_none()) {
            for p in t.partitions() {
                let (low, high) = consumer.fetch_watermarks(topic, p.id(), BROKER_TIMEOUT)?;
                out.push(Watermarks { topic: topic.clone(), partition: p.id(), low, high });
            }
        }
    }
    Ok(out)
}
