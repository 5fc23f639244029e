//! The dead-letter topic, for operators: list what is parked, replay it to consolidation with its
//! attempts reset, or purge it.
//!
//! The broker cannot delete records, so the store keeps the view: a purge mark per partition and
//! the records already replayed. A record parked twice for the same origin (a retry stage that
//! crashed between parking and committing) is shown, and replayed, once.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cashflow_core::config::PipelineConfig;
use cashflow_kafka as kafka;
use cashflow_sinks::{Store, StoreError};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use cashflow_core::failure::Transient;
use cashflow_core::failure::header::REPLAYED_FROM;
use cashflow_kafka::read_failure;

use crate::Failure;
use crate::events::ParkedReplayed;

/// (partition, end offset) per partition.
type Ends = Vec<(i32, i64)>;

const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// A busy broker may take a while to answer; an operator's command can wait.
const BROKER_TIMEOUT: Duration = Duration::from_secs(30);
const EXCERPT_CHARS: usize = 60;

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the dead-letter topic was not read to its end within {0:?}")]
    Timeout(Duration),
    #[error("no parked record at {}", .0.join(", "))]
    NotFound(Vec<String>),
}

impl Transient for DlqError {
    fn is_transient(&self) -> bool {
        match self {
            DlqError::Kafka(_) | DlqError::Timeout(_) => true,
            DlqError::Store(e) => e.is_transient(),
            DlqError::NotFound(_) => false,
        }
    }
}

/// A parked record.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Parked {
    /// `partition:offset`, as `--offset` takes it.
    pub position: String,
    pub partition: i32,
    pub offset: i64,
    /// The merchant, from the record's key.
    pub merchant: Option<String>,
    /// Why and where it failed; `None` when the headers are unreadable.
    pub failure: Option<Failure>,
    /// The original value, unchanged (lossy UTF-8 for display).
    pub payload: String,
    #[serde(skip)]
    #[schema(ignore)]
    key: Option<Vec<u8>>,
    #[serde(skip)]
    #[schema(ignore)]
    value: Vec<u8>,
}

impl Parked {
    pub fn code(&self) -> &str {
        self.failure.as_ref().map_or("unknown", |f| f.code.as_str())
    }

    /// The first characters of the failure's detail, on one line.
    pub fn excerpt(&self) -> String {
        let detail = self.failure.as_ref().map_or("", |f| f.detail.as_str());
        let line: String = detail.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
        if line.chars().count() > EXCERPT_CHARS {
            line.chars().take(EXCERPT_CHARS - 1).chain(['…']).collect()
        } else {
            line
        }
    }
}

/// What `list` saw, and the end of each partition when it looked: a purge removes only that.
#[derive(Clone, Debug)]
pub struct Listing {
    pub records: Vec<Parked>,
    pub ends: Vec<(i32, i64)>,
}

/// Which parked records to replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// `(partition, offset)` each.
    Offsets(Vec<(i32, i64)>),
    ErrorCode(String),
    All,
}

/// The dead-letter topic and its bookkeeping.
#[derive(Clone)]
pub struct Dlq {
    config: Arc<PipelineConfig>,
    store: Store,
}

impl Dlq {
    pub fn new(config: Arc<PipelineConfig>, store: Store) -> Dlq {
        cashflow_observability::metrics().failure_codes(&cashflow_core::failure::Code::ALL.map(|c| c.as_str()));
        Dlq { config, store }
    }

    fn topic(&self) -> &str {
        self.config.services.retry.parked.id()
    }

    /// Every record parked and neither purged nor replayed, oldest first per partition.
    pub async fn list(&self) -> Result<Listing, DlqError> {
        let marks = self.store.dlq_marks(self.topic()).await?;
        let replayed = self.store.dlq_replays(self.topic()).await?;
        let (ends, read) = self.read(marks).await?;
        let mut origins = HashSet::new();
        let records = read
            .into_iter()
            .filter(|p| !replayed.contains(&(p.partition, p.offset)))
            .filter(|p| match &p.failure {
                Some(f) => origins.insert((f.origin_topic.clone(), f.origin_partition, f.origin_offset)),
                None => true,
            })
            .collect();
        Ok(Listing { records, ends })
    }

    /// Records parked and neither purged nor replayed, from the partitions' ends (a record
    /// parked twice counts twice here; `list` shows it once).
    pub async fn depth(&self) -> Result<i64, DlqError> {
        let marks = self.store.dlq_marks(self.topic()).await?;
        let replayed = self.store.dlq_replays(self.topic()).await?;
        let consumer = self.consumer()?;
        let topic = self.topic().to_owned();
        let bounds = tokio::task::spawn_blocking(move || kafka::watermarks(&consumer, &topic, BROKER_TIMEOUT))
            .await
            .map_err(|_| KafkaError::Canceled)??;
        let mut depth = 0;
        for (partition, low, high) in bounds {
            let from = low.max(marks.get(&partition).copied().unwrap_or(0));
            let gone = replayed.iter().filter(|(p, o)| *p == partition && *o >= from && *o < high).count();
            depth += (high - from).max(0) - gone as i64;
        }
        Ok(depth)
    }

    /// Sends the selected records back to the ingest topic, with no retry headers (their attempts
    /// start again) and `x-replayed-from`. Returns what was replayed.
    pub async fn replay(&self, selection: &Selection) -> Result<Vec<Parked>, DlqError> {
        let listing = self.list().await?;
        let chosen: Vec<Parked> = match selection {
            Selection::All => listing.records,
            Selection::ErrorCode(code) => listing.records.into_iter().filter(|p| p.code() == code).collect(),
            Selection::Offsets(wanted) => {
                let by_position: HashMap<(i32, i64), Parked> =
                    listing.records.into_iter().map(|p| ((p.partition, p.offset), p)).collect();
                let missing: Vec<String> =
                    wanted.iter().filter(|w| !by_position.contains_key(w)).map(|(p, o)| format!("{p}:{o}")).collect();
                if !missing.is_empty() {
                    return Err(DlqError::NotFound(missing));
                }
                wanted.iter().filter_map(|w| by_position.get(w).cloned()).collect()
            }
        };
        if chosen.is_empty() {
            return Ok(chosen);
        }
        let producer: FutureProducer = kafka::producer_config(&self.config, BROKER_TIMEOUT).create()?;
        let target = self.config.ingest_topic();
        let sends = chosen.iter().map(|p| {
            let from = format!("{}/{}/{}", self.topic(), p.partition, p.offset);
            let headers = OwnedHeaders::new().insert(Header { key: REPLAYED_FROM, value: Some(from.as_bytes()) });
            let mut record = FutureRecord::<Vec<u8>, Vec<u8>>::to(target).payload(&p.value).headers(headers);
            if let Some(key) = &p.key {
                record = record.key(key);
            }
            producer.send(record, BROKER_TIMEOUT)
        });
        let mut sent = Vec::with_capacity(chosen.len());
        let mut failed = None;
        for (p, result) in chosen.iter().zip(futures::future::join_all(sends).await) {
            match result {
                Ok(_) => sent.push(p.clone()),
                Err((e, _)) => failed = Some(e),
            }
        }
        // What reached the broker is marked even when some did not, so it is not replayed twice.
        let positions: Vec<(i32, i64)> = sent.iter().map(|p| (p.partition, p.offset)).collect();
        self.store.mark_replayed(self.topic(), &positions).await?;
        for p in &sent {
            ParkedReplayed { position: &p.position, code: p.code() }.emit();
        }
        match failed {
            Some(e) => Err(e.into()),
            None => Ok(sent),
        }
    }

    /// Purges everything a listing saw: up to the partition ends it recorded.
    pub async fn purge(&self, listing: &Listing) -> Result<(), DlqError> {
        self.store.purge_dlq(self.topic(), &listing.ends).await?;
        Ok(())
    }

    fn consumer(&self) -> Result<BaseConsumer, KafkaError> {
        kafka::with_properties(&self.config, |c| {
            c.set("group.id", "cashflow-dlq-reader").set("enable.auto.commit", "false");
        })
        .create()
    }

    /// Reads every partition from its purge mark to the end it had when reading began.
    async fn read(&self, marks: HashMap<i32, i64>) -> Result<(Ends, Vec<Parked>), DlqError> {
        let consumer = self.consumer()?;
        let topic = self.topic().to_owned();
        tokio::task::spawn_blocking(move || read_partitions(&consumer, &topic, &marks))
            .await
            .map_err(|_| KafkaError::Canceled)?
    }
}

fn read_partitions(
    consumer: &BaseConsumer,
    topic: &str,
    marks: &HashMap<i32, i64>,
) -> Result<(Ends, Vec<Parked>), DlqError> {
    let bounds = kafka::watermarks(consumer, topic, BROKER_TIMEOUT)?;
    let ends: Vec<(i32, i64)> = bounds.iter().map(|&(p, _, high)| (p, high)).collect();
    let mut remaining: HashMap<i32, i64> = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for &(partition, low, high) in &bounds {
        let from = low.max(marks.get(&partition).copied().unwrap_or(0));
        if from < high {
            tpl.add_partition_offset(topic, partition, Offset::Offset(from))?;
            remaining.insert(partition, high);
        }
    }
    let mut out = Vec::new();
    if remaining.is_empty() {
        return Ok((ends, out));
    }
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + READ_TIMEOUT;
    while !remaining.is_empty() {
        if Instant::now() > deadline {
            return Err(DlqError::Timeout(READ_TIMEOUT));
        }
        let Some(message) = consumer.poll(Duration::from_millis(200)) else { continue };
        let m = message?;
        let Some(&end) = remaining.get(&m.partition()) else { continue };
        if m.offset() < end {
            let key = m.key().map(<[u8]>::to_vec);
            let value = m.payload().map(<[u8]>::to_vec).unwrap_or_default();
            out.push(Parked {
                position: format!("{}:{}", m.partition(), m.offset()),
                partition: m.partition(),
                offset: m.offset(),
                merchant: key.as_deref().map(|k| String::from_utf8_lossy(k).into_owned()),
                failure: m.headers().and_then(read_failure),
                payload: String::from_utf8_lossy(&value).into_owned(),
                key,
                value,
            });
        }
        if m.offset() + 1 >= end {
            remaining.remove(&m.partition());
        }
    }
    out.sort_by_key(|p| (p.partition, p.offset));
    Ok((ends, out))
}
