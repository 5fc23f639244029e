//! The audit: the log against the store. Every record of a consolidation source below the
//! store's progress must be accounted for, as one of:
//! - the origin of a stored entry;
//! - a duplicate of a stored entry's id (a client's retry, a redelivery);
//! - a failure, found on the retry or the dead-letter topic by its origin, with its fate: parked,
//!   consolidated later (its id is stored), or still held by the retry path;
//! - an entry a SmartModule drops (a filter): the audit runs the declared modules on a record
//!   it cannot otherwise account for, and they must drop it again (modules are pure).
//!
//! The store's progress and its entries are read in one snapshot, and the failure topics after
//! it: an epoch sends its failures before it commits their offsets, so every failure below the
//! progress read is on its topic by then. A log whose start was trimmed by retention is audited
//! from where it starts, and the report says so.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cashflow_core::Incoming;
use cashflow_core::config::PipelineConfig;
use cashflow_kafka::read_failure;
use cashflow_sinks::{Snapshot, Store, StoreError};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};

/// How long a read may go without a record before the audit gives up.
const STALL: Duration = Duration::from_secs(30);
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("no record of {topic}/{partition} arrived for {secs} s at offset {offset}; is the broker up?")]
    Stalled { topic: String, partition: i32, offset: i64, secs: u64 },
    #[error("a SmartModule did not load: {0}")]
    SmartModule(String),
}

/// What the audit found.
#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    /// What it read of each source partition.
    pub partitions: Vec<Covered>,
    pub stored: u64,
    pub duplicates: u64,
    pub consolidated_later: u64,
    pub held: u64,
    pub parked: u64,
    /// Entries the SmartModules drop.
    pub filtered: u64,
    pub unaccounted: Vec<Unaccounted>,
}

impl Report {
    /// Every record accounted for, and no progress beyond the end of its log.
    pub fn is_clean(&self) -> bool {
        self.unaccounted.is_empty() && self.partitions.iter().all(|p| p.progress <= p.log_end)
    }
}

/// One source partition: `[from, to)` was audited, of a log that holds `[log_start, log_end)`.
#[derive(Debug, serde::Serialize)]
pub struct Covered {
    pub topic: String,
    pub partition: i32,
    pub from: i64,
    pub to: i64,
    pub log_start: i64,
    pub log_end: i64,
    /// The store's next offset. Beyond `log_end`, the log lost records the store counted.
    pub progress: i64,
}

/// A record below the progress that nothing accounts for.
#[derive(Debug, serde::Serialize)]
pub struct Unaccounted {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub merchant: Option<String>,
    /// The entry id, when the record decodes.
    pub id: Option<String>,
}

/// A position in the log: topic, partition, offset.
type Position = (String, i32, i64);

/// Where a failed record went, by its origin.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fate {
    Retrying,
    Parked,
}

/// A record that is not the origin of a stored entry.
struct Pending {
    unaccounted: Unaccounted,
    /// Where it first failed, if it is a retry; else where it stands.
    origin: Position,
    /// The record, when SmartModules may account for it.
    payload: Option<Vec<u8>>,
}

/// Audits the consolidation sources against the store. Reads every record below the progress
/// once, and the failure topics whole.
pub async fn audit(config: &PipelineConfig, store: &Store) -> Result<Report, AuditError> {
    let mut modules = crate::smartmodule::load_all(config).map_err(|problems| {
        AuditError::SmartModule(problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
    })?;
    let mut snapshot = store.snapshot().await?;
    let progress = snapshot.progress(&config.services.consolidate.group).await?;
    let consumer: BaseConsumer = cashflow_kafka::with_properties(config, |c| {
        c.set("group.id", "cashflow-audit").set("enable.auto.commit", "false");
    })
    .create()?;

    let mut fates: HashMap<Position, Fate> = HashMap::new();
    let failure_topics = [
        (config.services.consolidate.on_error.id(), Fate::Retrying),
        (config.services.retry.parked.id(), Fate::Parked),
    ];
    for (topic, fate) in failure_topics {
        for (partition, start, end) in
            tokio::task::block_in_place(|| cashflow_kafka::watermarks(&consumer, topic, METADATA_TIMEOUT))?
        {
            tokio::task::block_in_place(|| {
                read(&consumer, topic, partition, start, end, |m| {
                    if let Some(f) = m.headers().and_then(read_failure) {
                        let origin = (f.origin_topic, f.origin_partition, f.origin_offset);
                        // parked is where a record ends; a retry may precede it
                        let known = fates.entry(origin).or_insert(fate);
                        if fate == Fate::Parked {
                            *known = fate;
                        }
                    }
                })
            })?;
        }
    }

    let mut report = Report::default();
    let mut pending = Vec::new();
    for topic in config.consolidate_sources() {
        for (partition, log_start, log_end) in
            tokio::task::block_in_place(|| cashflow_kafka::watermarks(&consumer, &topic, METADATA_TIMEOUT))?
        {
            let next = progress.get(&(topic.clone(), partition)).copied().unwrap_or(0);
            let (from, to) = (log_start, next.min(log_end));
            report.partitions.push(Covered {
                topic: topic.clone(),
                partition,
                from,
                to,
                log_start,
                log_end,
                progress: next,
            });
            let keep_payloads = !modules.is_empty();
            report.stored +=
                audit_partition(&mut snapshot, &consumer, (&topic, partition), (from, to), keep_payloads, &mut pending)
                    .await?;
        }
    }
    let ids: Vec<String> = pending.iter().filter_map(|p: &Pending| p.unaccounted.id.clone()).collect();
    let stored_ids = snapshot.stored_ids(&ids).await?;
    snapshot.close().await?;

    for p in pending {
        let stored = p.unaccounted.id.as_ref().is_some_and(|id| stored_ids.contains(id));
        match (fates.get(&p.origin), stored) {
            (Some(Fate::Parked), _) => report.parked += 1,
            (Some(Fate::Retrying), true) => report.consolidated_later += 1,
            (Some(Fate::Retrying), false) => report.held += 1,
            (None, true) => report.duplicates += 1,
            (None, false) if dropped_by(&mut modules, p.payload.as_deref()) => report.filtered += 1,
            (None, false) => report.unaccounted.push(p.unaccounted),
        }
    }
    Ok(report)
}

/// Whether the SmartModules drop this entry (a filter), as they did when it was consolidated.
fn dropped_by(modules: &mut [crate::smartmodule::SmartModule], payload: Option<&[u8]>) -> bool {
    let entry = payload.and_then(|p| cashflow_core::Lancamento::decode(p).ok());
    entry.is_some_and(|e| crate::smartmodule::apply_all(modules, e).is_ok_and(|made| made.is_empty()))
}

/// Reads `[from, to)` of one partition: counts the records stored entries came from, and adds
/// the others to `pending` (with their payload if `keep_payloads`).
async fn audit_partition(
    snapshot: &mut Snapshot,
    consumer: &BaseConsumer,
    (topic, partition): (&str, i32),
    (from, to): (i64, i64),
    keep_payloads: bool,
    pending: &mut Vec<Pending>,
) -> Result<u64, AuditError> {
    if from >= to {
        return Ok(0);
    }
    let origins = snapshot.origins(topic, partition).await?;
    let mut stored = 0;
    tokio::task::block_in_place(|| {
        read(consumer, topic, partition, from, to, |m| {
            if origins.binary_search(&m.offset()).is_ok() {
                stored += 1;
                return;
            }
            let origin = match m.headers().and_then(read_failure) {
                Some(f) => (f.origin_topic, f.origin_partition, f.origin_offset),
                None => (topic.to_owned(), partition, m.offset()),
            };
            let payload = m.payload().unwrap_or_default();
            let unaccounted = Unaccounted {
                topic: topic.to_owned(),
                partition,
                offset: m.offset(),
                merchant: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                id: Incoming::decode(payload).ok().map(|e| e.id().to_string()),
            };
            pending.push(Pending { unaccounted, origin, payload: keep_payloads.then(|| payload.to_vec()) });
        })
    })?;
    Ok(stored)
}

/// Calls `each` with every record of `[from, to)` of one partition, in order.
fn read(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    from: i64,
    to: i64,
    mut each: impl FnMut(&BorrowedMessage<'_>),
) -> Result<(), AuditError> {
    if from >= to {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(from))?;
    consumer.assign(&tpl)?;
    let mut last = Instant::now();
    let mut next = from;
    while next < to {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            if last.elapsed() > STALL {
                let secs = STALL.as_secs();
                return Err(AuditError::Stalled { topic: topic.to_owned(), partition, offset: next, secs });
            }
            continue;
        };
        let m = message?;
        last = Instant::now();
        if m.topic() != topic || m.partition() != partition || m.offset() >= to {
            continue;
        }
        next = m.offset() + 1;
        each(&m);
    }
    Ok(())
}
