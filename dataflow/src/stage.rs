//! The consolidate stage: read an epoch of records, validate, dedupe against the store, update
//! the dataflow, and commit entries, changed days and offsets in one transaction.
//!
//! Progress lives only in the store. On start, and after any failure, a session rebuilds the
//! dataflow from the stored daily totals and re-reads every partition from its stored offset;
//! nothing in memory outlives a failed commit. Kafka offset commits are hints for lag metrics.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cashflow_core::config::PipelineConfig;
use cashflow_core::{DecodeError, Lancamento, kafka};
use cashflow_observability::metrics;
use cashflow_retry::{ATTEMPT, Failure};
use cashflow_sinks::{Origin, Store, StoreError, StoredEntry};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::operator::{Consolidator, DataflowError};

const STAGE: &str = "consolidate";
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

/// A record read from a source topic, owned.
struct Record {
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    attempt: u32,
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

async fn session(
    config: &PipelineConfig,
    store: &Store,
    shutdown: &CancellationToken,
) -> Result<(), ConsolidateError> {
    let cons = &config.services.consolidate;
    let started = Instant::now();
    // Fence first: from here on, any older session of this group can no longer commit.
    let holder = format!("pid-{}", std::process::id());
    let generation = store.acquire_fence(&cons.group, &holder).await?;
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
    let errors: FutureProducer =
        kafka::producer_config(config, Duration::from_secs(10)).create()?;
    tracing::info!(
        generation,
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
        commit_epoch(
            config, store, generation, &dataflow, &errors, batch, &consumer,
        )
        .await?;
        metrics()
            .consolidate_epoch_duration
            .observe(timer.elapsed().as_secs_f64());
    }
}

async fn partitions(consumer: &StreamConsumer, topic: &str) -> Result<Vec<i32>, ConsolidateError> {
    let metadata = tokio::task::block_in_place(|| {
        consumer.fetch_metadata(Some(topic), Duration::from_secs(10))
    })?;
    let found: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if found.is_empty() {
        Err(ConsolidateError::NoPartitions(topic.to_owned()))
    } else {
        Ok(found)
    }
}

/// Waits for a first record, then gathers more until `max` records or `max_wait` has passed.
async fn next_epoch(
    consumer: &StreamConsumer,
    max: usize,
    max_wait: Duration,
) -> Result<Vec<Record>, KafkaError> {
    let mut batch = vec![owned(&consumer.recv().await?)];
    let deadline = tokio::time::Instant::now() + max_wait;
    while batch.len() < max {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(message) => batch.push(owned(&message?)),
            Err(_) => break,
        }
    }
    Ok(batch)
}

fn owned(m: &rdkafka::message::BorrowedMessage<'_>) -> Record {
    let attempt = m
        .headers()
        .and_then(|h| h.iter().find(|h| h.key == ATTEMPT).and_then(|h| h.value))
        .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
        .unwrap_or(0);
    Record {
        topic: m.topic().to_owned(),
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(<[u8]>::to_vec),
        payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        attempt,
    }
}

/// Validate, dedupe, consolidate and commit one epoch. Any error leaves the store untouched.
async fn commit_epoch(
    config: &PipelineConfig,
    store: &Store,
    generation: i64,
    dataflow: &Consolidator,
    errors: &FutureProducer,
    batch: Vec<Record>,
    consumer: &StreamConsumer,
) -> Result<(), ConsolidateError> {
    let m = metrics();
    m.consolidate_consumed.inc_by(batch.len() as u64);
    let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
    let mut valid: Vec<StoredEntry> = Vec::with_capacity(batch.len());
    let mut failed: Vec<(Record, DecodeError)> = Vec::new();
    let mut seen = HashSet::with_capacity(batch.len());
    let mut duplicates = 0u64;
    for record in batch {
        next.insert((record.topic.clone(), record.partition), record.offset + 1);
        match Lancamento::decode(&record.payload) {
            Ok(entry) if seen.insert(entry.id) => {
                let origin = Origin {
                    topic: record.topic.clone(),
                    partition: record.partition,
                    offset: record.offset,
                };
                valid.push(StoredEntry { entry, origin });
            }
            Ok(_) => duplicates += 1,
            Err(e) => failed.push((record, e)),
        }
    }

    let group = &config.services.consolidate.group;
    let mut tx = store.begin_epoch().await?;
    tx.check_fence(group, generation).await?;
    let inserted = tx.insert_entries(&valid).await?;
    let fresh: Vec<&Lancamento> = valid
        .iter()
        .map(|s| &s.entry)
        .filter(|e| inserted.contains(&e.id))
        .collect();
    duplicates += (valid.len() - fresh.len()) as u64;
    let changed = dataflow.apply(&fresh).await?;
    tx.upsert_daily(&changed).await?;
    // Failed records are durable on the error topic before their offsets are committed.
    send_failures(config, errors, &failed).await?;
    let next: Vec<(String, i32, i64)> = next.into_iter().map(|((t, p), o)| (t, p, o)).collect();
    tx.save_progress(group, &next).await?;
    tx.commit().await?;

    m.consolidate_committed.inc_by(fresh.len() as u64);
    m.consolidate_duplicates.inc_by(duplicates);
    m.consolidate_epochs.inc();
    let mut hint = TopicPartitionList::new();
    for (topic, partition, offset) in &next {
        hint.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
    }
    if let Err(e) = consumer.commit(&hint, CommitMode::Async) {
        tracing::debug!(error = %e, "offset hint not committed");
    }
    Ok(())
}

async fn send_failures(
    config: &PipelineConfig,
    producer: &FutureProducer,
    failed: &[(Record, DecodeError)],
) -> Result<(), ConsolidateError> {
    if failed.is_empty() {
        return Ok(());
    }
    let topic = config.services.consolidate.on_error.id();
    let now = chrono_ms();
    let backoff = &config.services.retry.backoff_ms;
    let sends = failed.iter().map(|(r, e)| {
        let attempt = r.attempt + 1;
        metrics().consolidate_failed.with_label_values(&[e.code()]).inc();
        tracing::warn!(code = e.code(), topic = %r.topic, partition = r.partition, offset = r.offset, "record failed validation");
        let failure = Failure {
            code: e.code().to_owned(),
            stage: STAGE.to_owned(),
            detail: e.to_string(),
            attempt,
            origin_topic: r.topic.clone(),
            origin_partition: r.partition,
            origin_offset: r.offset,
            first_failed_at_ms: now,
            not_before_ms: now + cashflow_retry::backoff_ms(backoff, attempt) as i64,
        };
        let headers: OwnedHeaders = failure.to_headers();
        let mut record = FutureRecord::<Vec<u8>, Vec<u8>>::to(topic).payload(&r.payload).headers(headers);
        if let Some(key) = &r.key {
            record = record.key(key);
        }
        producer.send(record, Duration::from_secs(10))
    });
    for result in futures::future::join_all(sends).await {
        result.map_err(|(e, _)| e)?;
    }
    Ok(())
}

fn chrono_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
