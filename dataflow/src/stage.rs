//! The consolidate stage: read an epoch of records, validate, dedupe against the store, update
//! the dataflow, and commit entries, every declared state's changes and offsets in one
//! transaction. A session first builds any declared state the store does not keep yet. The next
//! epoch's records are gathered and decoded while one commits, so reading from the broker and
//! writing to the store overlap.
//!
//! Progress lives only in the store. The consumer joins the group; every partition it is assigned
//! (on start, after any failure, after every rebalance) is positioned at the store's progress as
//! this session last saw it (during a commit, before that epoch), or at the log's start when the
//! store has none, never at Kafka's committed offset: those commits are hints for lag tools, and a
//! store restored from an older copy is behind them. After a rebalance the session re-reads the
//! store's progress and skips whatever it already holds (a rebalance served while an epoch
//! commits can make another consolidator commit the same offsets: the store counts each entry
//! once, and a partition's progress only moves forward). The
//! dataflow holds no history (every state is additive: the store adds each epoch's changes), so a
//! session starts it empty, in the same time however long the history, and an epoch that does not
//! commit leaves nothing behind in it. Consolidators of one group split the partitions between them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cashflow_core::config::PipelineConfig;
use cashflow_kafka::{self as kafka, RebalanceWatch};
use cashflow_observability::metrics;
use cashflow_sinks::{Store, StoreError};
use futures::FutureExt;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::epoch::{Epoch, Record, STAGE, split_lanes};
use crate::events::SessionFailed;
use crate::operator::{Consolidator, DataflowError};

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
    #[error(
        "the store keeps other states than pipeline.yaml declares ({0}): is a consolidator with another pipeline.yaml running?"
    )]
    StatesDiffer(String),
    #[error("a SmartModule did not load: {0}")]
    SmartModule(String),
}

/// Runs until `shutdown`. Failures restart the session with backoff; they never lose or
/// double-count an entry, because a session only trusts what the store committed.
pub async fn run(config: Arc<PipelineConfig>, store: Store, shutdown: CancellationToken) {
    metrics().failure_codes(&cashflow_core::failure::Code::ALL.map(|c| c.as_str()));
    let lag_stop = shutdown.child_token();
    let lag = tokio::spawn(crate::lag::report(Arc::clone(&config), store.clone(), lag_stop.clone()));
    let reconcile = tokio::spawn(crate::reconcile::schedule(Arc::clone(&config), store.clone(), lag_stop.clone()));
    sessions(&config, &store, &shutdown).await;
    lag_stop.cancel();
    let _ = futures::future::join(lag, reconcile).await;
}

async fn sessions(config: &PipelineConfig, store: &Store, shutdown: &CancellationToken) {
    let session = || session(config, store, shutdown);
    let failed = |error: &ConsolidateError, wait| SessionFailed { error, wait }.emit();
    cashflow_observability::restarting(STAGE, shutdown, session, failed).await
}

async fn session(config: &PipelineConfig, store: &Store, shutdown: &CancellationToken) -> Result<(), ConsolidateError> {
    let cons = &config.services.consolidate;
    let started = Instant::now();
    let states = crate::build::declared(config);
    crate::build::build(store, &states).await?;
    let dataflow = Consolidator::start(states.iter().map(|s| s.key.clone()).collect())?;
    let modules = crate::smartmodule::load_all(config).map_err(|problems| {
        ConsolidateError::SmartModule(problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
    })?;
    let modules = std::sync::Mutex::new(modules);
    let mut resume = store.load_progress(&cons.group).await?;
    let lanes = cons.lanes(&config.store.url);
    let max_epoch_records = cons.max_epoch_records(&config.store.url);

    let consumer: GroupConsumer = kafka::with_properties(config, |c| {
        c.set("group.id", &cons.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000")
            .set("fetch.wait.max.ms", "50")
            .set("max.partition.fetch.bytes", partition_share(max_epoch_records, lanes).to_string());
    })
    .create_with_context(RebalanceWatch::positioned(resume.clone()).reporting(owned))?;
    let sources = config.consolidate_sources();
    for topic in &sources {
        partitions(&consumer, topic).await?;
    }
    let topics: Vec<&str> = sources.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    let errors: FutureProducer = kafka::producer_config(config, Duration::from_secs(10)).create()?;
    tracing::info!(ready_ms = started.elapsed().as_millis() as u64, "consolidation ready");
    metrics().stage_up(STAGE, true);

    let max_wait = cons.max_epoch_wait;
    tracing::info!(lanes, max_epoch_records, "epochs split into sink lanes");
    // The next epoch's records are gathered while this one commits; `None` is the shutdown.
    let gather = || async {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => Ok(None),
            batch = next_epoch(&consumer, max_epoch_records, max_wait) => batch.map(Some),
        }
    };
    let mut gathered = gather().await?;
    while let Some(mut batch) = gathered {
        // Partitions are positioned at the progress this session knew; another consolidator may
        // have moved a partition on since: re-read the store's, and skip what it already holds.
        if consumer.context().take_changed() {
            resume = store.load_progress(&cons.group).await?;
            consumer.context().advance(resume.iter().map(|(k, v)| (k.clone(), *v)));
            tracing::info!(
                partitions = consumer.assignment().map(|a| a.count()).unwrap_or(0),
                "partitions reassigned; resuming from the store"
            );
        }
        batch.retain(|r| {
            let (topic, partition, offset) = r.position();
            offset >= resume.get(&(topic.to_owned(), partition)).copied().unwrap_or(0)
        });
        if batch.is_empty() {
            gathered = gather().await?;
            continue;
        }
        let timer = Instant::now();
        let epoch = Epoch { config, states: &states, store, dataflow: &dataflow, producer: &errors, modules: &modules };
        // Each lane commits its partitions and their progress in its own transaction: a lane
        // that fails leaves the others' commits standing, and the session restarts from the store.
        let commit = async {
            let parts = split_lanes(batch, lanes);
            let commits = futures::future::join_all(parts.iter().map(|lane| epoch.commit(lane))).await;
            let mut next = TopicPartitionList::new();
            for committed in commits {
                for e in committed?.elements() {
                    if let Offset::Offset(o) = e.offset() {
                        resume.insert((e.topic().to_owned(), e.partition()), o);
                        next.add_partition_offset(e.topic(), e.partition(), e.offset())?;
                    }
                }
            }
            consumer.context().advance(resume.iter().map(|(k, v)| (k.clone(), *v)));
            // Kafka's committed offsets are only a hint for lag metrics; the store is the truth.
            if let Err(e) = consumer.commit(&next, CommitMode::Async) {
                tracing::debug!(error = %e, "offset hint not committed");
            }
            metrics().consolidate_epoch_duration.observe(timer.elapsed().as_secs_f64());
            Ok::<_, ConsolidateError>(())
        };
        // A failed commit stops the gathering (dropping it loses nothing) and the session
        // restarts from the store; a failed gathering lets the commit finish first.
        let (_, next) = tokio::try_join!(commit, async { Ok(gather().await) })?;
        gathered = next?;
    }
    Ok(())
}

type GroupConsumer = StreamConsumer<RebalanceWatch>;

/// How much of one partition a fetch answer may hold: about an epoch's bytes over its lanes, so
/// an epoch holds runs of about one partition per lane. Each transaction then writes the rows of
/// one partition's merchants rather than of every merchant (epochs that mixed all partitions
/// cost the embedded store a fifth of its rate on 10,000 merchants, and PostgreSQL a sixth more
/// CPU per entry: BENCHMARKS.md), and every lane still gets records. `kafka.properties` may set
/// it.
fn partition_share(max_epoch_records: usize, lanes: usize) -> usize {
    /// About the size of an entry on the topic.
    const ENTRY_BYTES: usize = 256;
    (max_epoch_records.saturating_mul(ENTRY_BYTES) / lanes.max(1)).clamp(64 << 10, 64 << 20)
}

/// Exports how many partitions this consolidator owns.
fn owned(partitions: usize) {
    metrics().pipeline_partitions_owned.with_label_values(&[STAGE]).set(i64::try_from(partitions).unwrap_or(i64::MAX));
}

async fn partitions(consumer: &GroupConsumer, topic: &str) -> Result<Vec<i32>, ConsolidateError> {
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
/// Records already fetched are taken without a timer each, yielding now and then to the commit
/// that runs beside this in the same task.
async fn next_epoch(consumer: &GroupConsumer, max: usize, max_wait: Duration) -> Result<Vec<Record>, KafkaError> {
    let mut batch = vec![Record::from_message(&kafka::recv(consumer).await?)];
    let deadline = tokio::time::Instant::now() + max_wait;
    while batch.len() < max {
        tokio::task::consume_budget().await;
        let message = match consumer.recv().now_or_never() {
            Some(ready) => ready,
            None => match tokio::time::timeout_at(deadline, kafka::recv(consumer)).await {
                Ok(message) => message,
                Err(_) => break,
            },
        };
        batch.push(Record::from_message(&message?));
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::partition_share;

    #[test]
    fn a_partition_share_is_an_epoch_over_its_lanes_within_bounds() {
        assert_eq!(partition_share(20_000, 1), 5_120_000);
        assert_eq!(partition_share(20_000, 2), 2_560_000);
        assert_eq!(partition_share(1, 4), 64 << 10);
        assert_eq!(partition_share(usize::MAX, 1), 64 << 20);
        assert_eq!(partition_share(20_000, 0), 5_120_000);
    }
}
