//! The consolidate stage: read an epoch of records, validate, dedupe against the store, update
//! the dataflow, and commit entries, changed days and offsets in one transaction.
//!
//! Progress lives only in the store. On start, and after any failure, a session rebuilds the
//! dataflow from the stored daily totals and re-reads every partition from its stored offset;
//! nothing in memory outlives a failed commit. Kafka offset commits are hints for lag metrics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cashflow_core::config::PipelineConfig;
use cashflow_core::kafka;
use cashflow_observability::metrics;
use cashflow_sinks::{Store, StoreError};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::epoch::{Epoch, Record};
use crate::operator::{Consolidator, DataflowError};

const MAX_BACKOFF: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ConsolidateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Dataflow(#[from] DataflowError),
    #[error("topic {0} has no partitions; is it created?")]
    NoPartitions(String),
}

/// Runs until `shutdown`. Failures restart the session with backoff; they never lose or
/// double-count an entry, because a session only trusts what the store committed.
pub async fn run(config: Arc<PipelineConfig>, store: Store, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(200);
    while !shutdown.is_cancelled() {
        match session(&config, &store, &shutdown).await {
            Ok(()) => return,
            Err(e) => {
                if matches!(e, ConsolidateError::Store(_)) {
                    metrics().consolidate_store_errors.inc();
                }
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "consolidation paused; resuming from the store");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

async fn session(config: &PipelineConfig, store: &Store, shutdown: &CancellationToken) -> Result<(), ConsolidateError> {
    let cons = &config.services.consolidate;
    let started = Instant::now();
    let snapshot = store.load_daily_totals().await?;
    let days = snapshot.len();
    let dataflow = Consolidator::start(snapshot)?;
    let progress = store.load_progress(&cons.group).await?;

    let consumer: StreamConsumer = kafka::with_properties(config, |c| {
        c.set("group.id", &cons.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000")
            .set("fetch.wait.max.ms", "50");
    })
    .create()?;
    let mut assignment = TopicPartitionList::new();
    for topic in config.consolidate_sources() {
        for partition in partitions(&consumer, &topic).await? {
            let offset = match progress.get(&(topic.clone(), partition)) {
                Some(next) => Offset::Offset(*next),
                None => Offset::Beginning,
            };
            assignment.add_partition_offset(&topic, partition, offset)?;
        }
    }
    consumer.assign(&assignment)?;
    let errors: FutureProducer = kafka::producer_config(config, Duration::from_secs(10)).create()?;
    tracing::info!(
        days,
        partitions = assignment.count(),
        ready_ms = started.elapsed().as_millis() as u64,
        "consolidation ready"
    );

    let max_wait = Duration::from_millis(cons.max_epoch_wait_ms);
    loop {
        let batch = tokio::select! {
            batch = next_epoch(&consumer, cons.max_epoch_records, max_wait) => batch?,
            _ = shutdown.cancelled() => return Ok(()),
        };
        let timer = Instant::now();
        let epoch = Epoch { config, store, dataflow: &dataflow, producer: &errors };
        let next = epoch.commit(batch).await?;
        // Kafka's committed offsets are only a hint for lag metrics; the store is the truth.
        if let Err(e) = consumer.commit(&next, CommitMode::Async) {
            tracing::debug!(error = %e, "offset hint not committed");
        }
        metrics().consolidate_epoch_duration.observe(timer.elapsed().as_secs_f64());
    }
}

async fn partitions(consumer: &StreamConsumer, topic: &str) -> Result<Vec<i32>, ConsolidateError> {
    let metadata = tokio::task::block_in_place(|| consumer.fetch_metadata(Some(topic), Duration::from_secs(10)))?;
    let found: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if found.is_empty() { Err(ConsolidateError::NoPartitions(topic.to_owned())) } else { Ok(found) }
}

/// Waits for a first record, then gathers more until `max` records or `max_wait` has passed.
async fn next_epoch(consumer: &StreamConsumer, max: usize, max_wait: Duration) -> Result<Vec<Record>, KafkaError> {
    let mut batch = vec![Record::from_message(&consumer.recv().await?)];
    let deadline = tokio::time::Instant::now() + max_wait;
    while batch.len() < max {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(message) => batch.push(Record::from_message(&message?)),
            Err(_) => break,
        }
    }
    Ok(batch)
}
