//! One epoch: validate, dedupe, consolidate, and commit entries, changed days and offsets in one
//! store transaction. Records that will never count go to the error topics first.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cashflow_core::config::PipelineConfig;
use cashflow_core::{EntryId, Lancamento};
use cashflow_observability::metrics;
use cashflow_retry::{ATTEMPT, Failure};
use cashflow_sinks::{Origin, Store, StoredEntry};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use crate::ConsolidateError;
use crate::operator::Consolidator;

const STAGE: &str = "consolidate";
/// The id was used before for different facts: parked at once, retrying cannot fix it.
const CONFLICT: &str = "conflicting_duplicate";

/// A record read from a source topic, owned.
#[derive(Clone)]
pub(crate) struct Record {
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    /// Attempts so far, from `x-attempt` when the record was replayed.
    attempt: u32,
}

impl Record {
    pub(crate) fn position(&self) -> (&str, i32, i64) {
        (&self.topic, self.partition, self.offset)
    }

    pub(crate) fn from_message(m: &BorrowedMessage<'_>) -> Record {
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
}

/// A record that will not be counted, and why.
struct Rejected {
    record: Record,
    code: &'static str,
    detail: String,
    /// Straight to the parked topic: no retry can fix it.
    park: bool,
}

impl Rejected {
    fn conflict(record: Record, id: EntryId) -> Rejected {
        Rejected {
            record,
            code: CONFLICT,
            detail: format!("entry id {id} was already used for different facts"),
            park: true,
        }
    }
}

/// What one epoch needs.
pub(crate) struct Epoch<'a> {
    pub config: &'a PipelineConfig,
    pub store: &'a Store,
    pub dataflow: &'a Consolidator,
    pub producer: &'a FutureProducer,
}

impl Epoch<'_> {
    /// Commits one batch; returns the next offsets it committed. Any error leaves the store as it
    /// was, and the caller restarts from the store.
    pub(crate) async fn commit(&self, batch: Vec<Record>) -> Result<TopicPartitionList, ConsolidateError> {
        let m = metrics();
        m.consolidate_consumed.inc_by(batch.len() as u64);
        let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
        let mut valid: Vec<StoredEntry> = Vec::with_capacity(batch.len());
        let mut sources: Vec<Record> = Vec::with_capacity(batch.len());
        let mut first: HashMap<EntryId, usize> = HashMap::with_capacity(batch.len());
        let mut rejected: Vec<Rejected> = Vec::new();
        let mut duplicates = 0u64;

        // validate, and dedupe within the batch
        for record in batch {
            next.insert((record.topic.clone(), record.partition), record.offset + 1);
            match Lancamento::decode(&record.payload) {
                Ok(entry) => match first.get(&entry.id) {
                    None => {
                        first.insert(entry.id, valid.len());
                        let origin =
                            Origin { topic: record.topic.clone(), partition: record.partition, offset: record.offset };
                        valid.push(StoredEntry { entry, origin });
                        sources.push(record);
                    }
                    Some(&i) if valid[i].entry.to_record().same_facts(&entry.to_record()) => duplicates += 1,
                    Some(_) => rejected.push(Rejected::conflict(record, entry.id)),
                },
                Err(e) => rejected.push(Rejected { code: e.code(), detail: e.to_string(), park: false, record }),
            }
        }

        // dedupe against the store: the primary key decides what is new
        let mut tx = self.store.begin_epoch().await?;
        let inserted = tx.insert_entries(&valid).await?;
        let seen_before: Vec<EntryId> = valid.iter().map(|s| s.entry.id).filter(|id| !inserted.contains(id)).collect();
        if !seen_before.is_empty() {
            let stored = tx.stored_records(&seen_before).await?;
            for (s, record) in valid.iter().zip(&sources).filter(|(s, _)| !inserted.contains(&s.entry.id)) {
                match stored.get(&s.entry.id) {
                    Some(old) if old.same_facts(&s.entry.to_record()) => duplicates += 1,
                    _ => rejected.push(Rejected::conflict(record.clone(), s.entry.id)),
                }
            }
        }
        let fresh: Vec<&Lancamento> = valid.iter().map(|s| &s.entry).filter(|e| inserted.contains(&e.id)).collect();

        // consolidate
        let changed = self.dataflow.apply(&fresh).await?;
        tx.add_daily(&changed).await?;

        // rejected records are durable on their topics before their offsets are committed
        self.send_rejected(&rejected).await?;
        let group = &self.config.services.consolidate.group;
        let next: Vec<(String, i32, i64)> = next.into_iter().map(|((t, p), o)| (t, p, o)).collect();
        tx.save_progress(group, &next).await?;
        tx.commit().await?;

        m.consolidate_committed.inc_by(fresh.len() as u64);
        m.consolidate_duplicates.inc_by(duplicates);
        m.consolidate_epochs.inc();
        let mut offsets = TopicPartitionList::new();
        for (topic, partition, offset) in &next {
            offsets.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
        }
        Ok(offsets)
    }

    async fn send_rejected(&self, rejected: &[Rejected]) -> Result<(), ConsolidateError> {
        if rejected.is_empty() {
            return Ok(());
        }
        let services = &self.config.services;
        let now = now_ms();
        let sends = rejected.iter().map(|r| {
            let attempt = r.record.attempt + 1;
            let topic = if r.park { services.retry.parked.id() } else { services.consolidate.on_error.id() };
            metrics().consolidate_failed.with_label_values(&[r.code]).inc();
            tracing::warn!(code = r.code, topic = %r.record.topic, partition = r.record.partition, offset = r.record.offset, to = topic, "record rejected");
            let failure = Failure {
                code: r.code.to_owned(),
                stage: STAGE.to_owned(),
                detail: r.detail.clone(),
                attempt,
                origin_topic: r.record.topic.clone(),
                origin_partition: r.record.partition,
                origin_offset: r.record.offset,
                first_failed_at_ms: now,
                not_before_ms: now + cashflow_retry::backoff_ms(&services.retry.backoff_ms, attempt) as i64,
            };
            let mut out = FutureRecord::<Vec<u8>, Vec<u8>>::to(topic).payload(&r.record.payload).headers(failure.to_headers());
            if let Some(key) = &r.record.key {
                out = out.key(key);
            }
            self.producer.send(out, Duration::from_secs(10))
        });
        for result in futures::future::join_all(sends).await {
            result.map_err(|(e, _)| e)?;
        }
        Ok(())
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
