//! The retry stage: holds each failed record until its `x-not-before`, then sends it back to
//! consolidation with `x-attempt` + 1, or parks it when its retries have run out.
//!
//! Holding is a delay schedule in memory, never a sleep in the consume loop: a record due in a
//! minute does not delay the one due in a second behind it. Kafka offsets are committed only below
//! the oldest record still held, so after a crash the stage reads again, and sends again, what was
//! in flight. Consolidation claims each (origin, attempt) once, so a delivery sent twice is
//! processed once, and the dead-letter view shows each parked origin once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use cashflow_core::config::PipelineConfig;
use cashflow_kafka::{self as kafka, RebalanceWatch};
use cashflow_observability::metrics;
use cashflow_sinks::Store;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use cashflow_core::failure::Code;
use cashflow_kafka::{read_failure, send_failed};

use crate::events::{RecordParked, RecordRetried};
use crate::{Dlq, Failure, now_ms};

const STAGE: &str = "retry";
const DEPTH_EVERY: Duration = Duration::from_secs(10);
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs until `shutdown`, restarting its session with backoff after a broker error.
pub async fn run(config: Arc<PipelineConfig>, store: Store, shutdown: CancellationToken) {
    let dlq = Dlq::new(Arc::clone(&config), store);
    let session = || session(&config, &dlq, &shutdown);
    cashflow_observability::restarting(STAGE, &shutdown, session, |e: &KafkaError, wait| {
        tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "retry stage paused; resuming from committed offsets");
    })
    .await
}

/// A record read from the retry topic, and what to do with it when it is due.
struct Held {
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    failure: Failure,
    action: Action,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    /// Back to consolidation, on the topic it first failed on.
    Retry,
    /// To the dead-letter topic; `expired` when retries ran out.
    Park { expired: bool },
}

impl Held {
    fn read(m: &BorrowedMessage<'_>, config: &PipelineConfig) -> Held {
        let retry = &config.services.retry;
        let key = m.key().map(<[u8]>::to_vec);
        let payload = m.payload().map(<[u8]>::to_vec).unwrap_or_default();
        let found = m.headers().and_then(read_failure);
        let (failure, action) = match found {
            Some(f) if f.attempt >= retry.max_attempts => (f, Action::Park { expired: true }),
            Some(f) if config.services.consolidate.sources.iter().any(|t| t.id() == f.origin_topic) => {
                (f, Action::Retry)
            }
            found => {
                let now = now_ms();
                let detail = match &found {
                    Some(f) => format!("origin topic {:?} is not a consolidation source", f.origin_topic),
                    None => "the x-error-* headers are missing or unreadable".to_owned(),
                };
                let failure = Failure {
                    code: Code::InvalidHeaders,
                    stage: "retry".to_owned(),
                    detail,
                    attempt: found.as_ref().map_or(0, |f| f.attempt),
                    origin_topic: m.topic().to_owned(),
                    origin_partition: m.partition(),
                    origin_offset: m.offset(),
                    first_failed_at_ms: found.as_ref().map_or(now, |f| f.first_failed_at_ms),
                    not_before_ms: now,
                };
                (failure, Action::Park { expired: false })
            }
        };
        Held { key, payload, failure, action }
    }

    /// When to act: parking is immediate, a retry waits for its `x-not-before`.
    fn due_ms(&self) -> i64 {
        match self.action {
            Action::Retry => self.failure.not_before_ms,
            Action::Park { .. } => 0,
        }
    }

    async fn send(&self, producer: &FutureProducer, config: &PipelineConfig) -> Result<(), KafkaError> {
        let (topic, failure) = match self.action {
            Action::Retry => {
                (&self.failure.origin_topic, Failure { attempt: self.failure.attempt + 1, ..self.failure.clone() })
            }
            Action::Park { .. } => (&config.services.retry.parked.id().to_owned(), self.failure.clone()),
        };
        let parked = config.services.retry.parked.id();
        send_failed(producer, topic, parked, &failure, self.key.as_deref(), &self.payload).await?;
        match self.action {
            Action::Retry => RecordRetried { failure: &self.failure }.emit(),
            Action::Park { expired } => RecordParked { failure: &self.failure, expired }.emit(),
        }
        Ok(())
    }
}

/// What the stage holds: the schedule, and per partition the offsets held and the next to read.
#[derive(Default)]
struct Holding {
    schedule: BTreeMap<(i64, i32, i64), Held>,
    held: BTreeMap<i32, BTreeSet<i64>>,
    next: BTreeMap<i32, i64>,
}

impl Holding {
    fn hold(&mut self, partition: i32, offset: i64, h: Held) {
        self.held.entry(partition).or_default().insert(offset);
        self.next.insert(partition, offset + 1);
        self.schedule.insert((h.due_ms(), partition, offset), h);
    }

    /// Keeps only what belongs to `assigned` partitions; returns how many held records it drops.
    fn keep(&mut self, assigned: &BTreeSet<i32>) -> usize {
        let before = self.schedule.len();
        self.schedule.retain(|(_, partition, _), _| assigned.contains(partition));
        self.held.retain(|partition, _| assigned.contains(partition));
        self.next.retain(|partition, _| assigned.contains(partition));
        before - self.schedule.len()
    }

    fn next_due_ms(&self) -> Option<i64> {
        self.schedule.keys().next().map(|k| k.0)
    }

    fn take_due(&mut self, now_ms: i64) -> Vec<((i64, i32, i64), Held)> {
        let later = self.schedule.split_off(&(now_ms + 1, i32::MIN, i64::MIN));
        std::mem::replace(&mut self.schedule, later).into_iter().collect()
    }

    fn release(&mut self, partition: i32, offset: i64) {
        if let Some(set) = self.held.get_mut(&partition) {
            set.remove(&offset);
        }
    }

    /// Safe commit points: below the oldest record still held, or past the last one read.
    fn commit_points(&self, topic: &str) -> Result<TopicPartitionList, KafkaError> {
        let mut tpl = TopicPartitionList::new();
        for (&partition, &next) in &self.next {
            let first_held = self.held.get(&partition).and_then(|s| s.first().copied());
            tpl.add_partition_offset(topic, partition, Offset::Offset(first_held.unwrap_or(next)))?;
        }
        Ok(tpl)
    }
}

async fn session(config: &PipelineConfig, dlq: &Dlq, shutdown: &CancellationToken) -> Result<(), KafkaError> {
    let retry = &config.services.retry;
    let source = config.services.consolidate.on_error.id();
    let consumer: StreamConsumer<RebalanceWatch> = kafka::with_properties(config, |c| {
        c.set("group.id", &retry.group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000");
    })
    .create_with_context(RebalanceWatch::default().reporting(|owned| {
        metrics().pipeline_partitions_owned.with_label_values(&[STAGE]).set(i64::try_from(owned).unwrap_or(i64::MAX));
    }))?;
    consumer.subscribe(&[source])?;
    let producer: FutureProducer = kafka::producer_config(config, SEND_TIMEOUT).create()?;
    let mut holding = Holding::default();
    let mut depth = tokio::time::interval(DEPTH_EVERY);
    metrics().stage_up(STAGE, true);
    tracing::info!(topic = source, max_attempts = retry.max_attempts, backoff = ?retry.backoff, "retry stage ready");

    loop {
        let wake = holding.next_due_ms().map(|due| {
            let wait = u64::try_from(due - now_ms()).unwrap_or(0);
            tokio::time::Instant::now() + Duration::from_millis(wait)
        });
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            message = kafka::recv(&consumer), if holding.schedule.len() < retry.max_held => {
                let message = message?;
                // Partitions moved: what is held of a partition this member lost now belongs to
                // another, which reads it again from the committed offsets. What it keeps stays
                // held: a cooperative rebalance does not assign a kept partition again, so
                // nothing would read it again (an eager one does, and holding is idempotent).
                if consumer.context().take_changed() {
                    let assigned: BTreeSet<i32> = consumer
                        .assignment()?
                        .elements()
                        .iter()
                        .filter(|e| e.topic() == source)
                        .map(|e| e.partition())
                        .collect();
                    let dropped = holding.keep(&assigned);
                    tracing::info!(dropped, kept = holding.schedule.len(), "partitions reassigned");
                }
                let held = Held::read(&message, config);
                holding.hold(message.partition(), message.offset(), held);
            }
            _ = sleep_until(wake) => {
                let due = holding.take_due(now_ms());
                let sends = due.iter().map(|(_, h)| h.send(&producer, config));
                for result in futures::future::join_all(sends).await {
                    result?;
                }
                for ((_, partition, offset), _) in &due {
                    holding.release(*partition, *offset);
                }
                if let Err(e) = consumer.commit(&holding.commit_points(source)?, CommitMode::Async) {
                    tracing::debug!(error = %e, "retry offsets not committed yet");
                }
            }
            _ = depth.tick() => match dlq.depth().await {
                Ok(n) => metrics().retry_dlq_depth.set(n),
                Err(e) => tracing::debug!(error = %e, "dead-letter depth unknown"),
            },
        }
        metrics().retry_held.set(holding.schedule.len() as i64);
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(due_ms: i64) -> Held {
        let failure = Failure {
            code: Code::Malformed,
            stage: "consolidate".into(),
            detail: String::new(),
            attempt: 0,
            origin_topic: "lancamentos".into(),
            origin_partition: 0,
            origin_offset: 0,
            first_failed_at_ms: 0,
            not_before_ms: due_ms,
        };
        Held { key: None, payload: Vec::new(), failure, action: Action::Retry }
    }

    fn commit_offsets(h: &Holding) -> Vec<(i32, Offset)> {
        h.commit_points("t").unwrap().elements().iter().map(|e| (e.partition(), e.offset())).collect()
    }

    #[test]
    fn a_late_record_does_not_hold_back_an_early_one_but_holds_the_commit() {
        let mut h = Holding::default();
        h.hold(0, 10, held(60_000));
        h.hold(0, 11, held(1_000));
        h.hold(1, 5, held(2_000));
        assert_eq!(h.next_due_ms(), Some(1_000));
        let due: Vec<(i32, i64)> = h.take_due(2_000).into_iter().map(|((_, p, o), _)| (p, o)).collect();
        assert_eq!(due, [(0, 11), (1, 5)], "due in time order, the record behind the late one first");
        for (p, o) in due {
            h.release(p, o);
        }
        // Partition 0 still holds offset 10: a restart must read it again.
        assert_eq!(commit_offsets(&h), [(0, Offset::Offset(10)), (1, Offset::Offset(6))]);
        assert_eq!(h.next_due_ms(), Some(60_000));
    }

    /// A rebalance that takes partition 1 away keeps partition 0's held records: under a
    /// cooperative protocol partition 0 is not assigned again, so nothing would read them again.
    #[test]
    fn a_rebalance_drops_only_the_partitions_lost() {
        let mut h = Holding::default();
        h.hold(0, 10, held(5_000));
        h.hold(1, 3, held(1_000));
        assert_eq!(h.keep(&BTreeSet::from([0, 2])), 1);
        assert_eq!(h.next_due_ms(), Some(5_000), "partition 0's record is still held");
        assert_eq!(commit_offsets(&h), [(0, Offset::Offset(10))]);
        let due: Vec<(i32, i64)> = h.take_due(10_000).into_iter().map(|((_, p, o), _)| (p, o)).collect();
        assert_eq!(due, [(0, 10)]);
    }
}
