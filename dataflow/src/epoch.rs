//! One epoch: validate, dedupe, aggregate, and commit entries, every state's changes and offsets
//! in one store transaction. Records that will never count go to the error topics first.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{SystemTime, UNIX_EPOCH};

use cashflow_core::config::{DateWindow, PipelineConfig};
use cashflow_core::failure::{Code, Disposition, Failure, retry_delay_ms};
use cashflow_core::kafka::{read_failure, send_failed};
use cashflow_core::{BusinessDate, EntryId, Incoming, Lancamento, LancamentoRecord, MerchantId, Money, Tipo};
use cashflow_observability::metrics;
use cashflow_sinks::{DeclaredState, Delivery, EpochTx, Origin, Store, StoredEntry};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};

use crate::ConsolidateError;
use crate::operator::{Consolidator, Fact};

pub(crate) const STAGE: &str = "consolidate";

/// A record read from a source topic, owned.
#[derive(Clone)]
pub(crate) struct Record {
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    /// Set when this is a retry: where the record first failed, and how often.
    failure: Option<Failure>,
}

impl Record {
    pub(crate) fn position(&self) -> (&str, i32, i64) {
        (&self.topic, self.partition, self.offset)
    }

    pub(crate) fn from_message(m: &BorrowedMessage<'_>) -> Record {
        Record {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            failure: m.headers().and_then(read_failure),
        }
    }

    /// The retried delivery this record is, if it is one.
    fn delivery(&self) -> Option<Delivery> {
        self.failure.as_ref().map(|f| Delivery {
            topic: f.origin_topic.clone(),
            partition: f.origin_partition,
            offset: f.origin_offset,
            attempt: f.attempt,
        })
    }

    fn origin(&self) -> Origin {
        Origin { topic: self.topic.clone(), partition: self.partition, offset: self.offset }
    }
}

/// A record that will not be counted, and why: its code decides whether it is retried or parked.
struct Rejected<'r> {
    record: &'r Record,
    code: Code,
    detail: String,
}

impl<'r> Rejected<'r> {
    fn new(record: &'r Record, code: Code, detail: String) -> Self {
        Rejected { record, code, detail }
    }

    fn conflict(record: &'r Record, id: EntryId) -> Self {
        Rejected::new(record, Code::ConflictingDuplicate, format!("entry id {id} was already used for different facts"))
    }
}

/// What one epoch needs.
pub(crate) struct Epoch<'a> {
    pub config: &'a PipelineConfig,
    /// What `aggregate` keeps, in the dataflow's order.
    pub states: &'a [DeclaredState],
    pub store: &'a Store,
    pub dataflow: &'a Consolidator,
    pub producer: &'a FutureProducer,
}

impl Epoch<'_> {
    /// Commits `batch`; returns the next offsets it committed. When the store refuses the epoch
    /// for one record's data (not an outage), the batch is committed in halves, down to that
    /// record, which goes to the retry topic with its code: no record holds back the others.
    /// Any other error leaves the store as it was, and the caller restarts from the store.
    pub(crate) async fn commit(&self, batch: &[Record]) -> Result<TopicPartitionList, ConsolidateError> {
        metrics().consolidate_consumed.inc_by(batch.len() as u64);
        let mut committed: BTreeMap<(String, i32), i64> = BTreeMap::new();
        // Parts still to commit, the earliest on top: a partition's offsets only move forward.
        let mut parts = vec![batch];
        while let Some(part) = parts.pop() {
            let next = match self.commit_part(part).await {
                Err(ConsolidateError::Store(e)) if e.is_data_error() => {
                    if let [record] = part {
                        tracing::warn!(error = %e, "the store refused one record; routing it");
                        let detail = format!("the store refused the record: {e}");
                        self.commit_rejected(Rejected::new(record, Code::StoreRejected, detail)).await?
                    } else {
                        tracing::warn!(error = %e, records = part.len(), "the store refused an epoch; splitting it");
                        let (first, second) = part.split_at(part.len() / 2);
                        parts.extend([second, first]);
                        continue;
                    }
                }
                other => other?,
            };
            committed.extend(next);
        }
        let mut offsets = TopicPartitionList::new();
        for ((topic, partition), offset) in committed {
            offsets.add_partition_offset(&topic, partition, Offset::Offset(offset))?;
        }
        Ok(offsets)
    }

    /// Commits one record that will not count, alone: to its topic, and past it.
    async fn commit_rejected(&self, rejected: Rejected<'_>) -> Result<BTreeMap<(String, i32), i64>, ConsolidateError> {
        let next = next_offsets(std::slice::from_ref(rejected.record));
        let mut tx = self.store.begin_epoch().await?;
        self.send_rejected(&[rejected]).await?;
        tx.save_progress(&self.config.services.consolidate.group, &progress(&next)).await?;
        tx.commit().await?;
        metrics().consolidate_epochs.inc();
        Ok(next)
    }

    /// Commits one part of a batch in one transaction.
    async fn commit_part(&self, batch: &[Record]) -> Result<BTreeMap<(String, i32), i64>, ConsolidateError> {
        let m = metrics();
        let next = next_offsets(batch);
        let mut tx = self.store.begin_epoch().await?;
        let tx_opened = std::time::Instant::now();
        let mut duplicates = 0u64;
        let mut rejected: Vec<Rejected<'_>> = Vec::new();

        // a retried delivery counts once, however often the retry stage sent it
        let deliveries: Vec<Delivery> = batch.iter().filter_map(Record::delivery).collect();
        let claimed = if deliveries.is_empty() { HashSet::new() } else { tx.claim_deliveries(&deliveries).await? };
        let before = batch.len();
        let batch: Vec<&Record> = batch.iter().filter(|r| r.delivery().is_none_or(|d| claimed.contains(&d))).collect();
        duplicates += (before - batch.len()) as u64;

        // validate, then resolve reversals against their originals
        let window = &self.config.services.consolidate.date_window();
        let mut incoming = Vec::with_capacity(batch.len());
        for record in batch {
            match Incoming::decode(&record.payload) {
                Ok(i) => match outside_window(window, &i) {
                    None => incoming.push((i, record)),
                    Some(why) => rejected.push(Rejected::new(record, Code::InvalidField, why)),
                },
                Err(e) => rejected.push(Rejected::new(record, e.code(), e.to_string())),
            }
        }
        let entries = resolve(&mut tx, incoming, &mut rejected).await?;

        // The first record of each id is a candidate; the store's primary key decides which are
        // new. Every other record of an id is judged against what counts for it: the stored
        // record, or else the candidate.
        let mut valid: Vec<StoredEntry> = Vec::with_capacity(entries.len());
        let mut sources: Vec<&Record> = Vec::with_capacity(entries.len());
        let mut later: Vec<(Lancamento, &Record)> = Vec::new();
        let mut first: HashSet<EntryId> = HashSet::with_capacity(entries.len());
        for (entry, record) in entries {
            if first.insert(entry.id) {
                valid.push(StoredEntry { entry, origin: record.origin() });
                sources.push(record);
            } else {
                later.push((entry, record));
            }
        }
        let inserted = tx.insert_entries(&valid).await?;
        // After the insert: on PostgreSQL, a state being built holds inserts back until it is kept.
        self.check_kept(&mut tx).await?;
        let seen_before: Vec<EntryId> = valid.iter().map(|s| s.entry.id).filter(|id| !inserted.contains(id)).collect();
        let mut counted: HashMap<EntryId, LancamentoRecord> =
            if seen_before.is_empty() { HashMap::new() } else { tx.stored_records(&seen_before).await? };
        let mut repeats: Vec<(Lancamento, &Record)> = Vec::new();
        let mut fresh: Vec<(&Lancamento, &Record)> = Vec::with_capacity(inserted.len());
        for (s, record) in valid.iter().zip(sources) {
            if inserted.contains(&s.entry.id) {
                counted.insert(s.entry.id, s.entry.to_record());
                fresh.push((&s.entry, record));
            } else {
                repeats.push((s.entry.clone(), record));
            }
        }
        for (entry, record) in repeats.into_iter().chain(later) {
            match counted.get(&entry.id) {
                Some(c) if c.same_facts(&entry.to_record()) => duplicates += 1,
                _ => rejected.push(Rejected::conflict(record, entry.id)),
            }
        }
        let fresh = within_limits(&mut tx, fresh, &mut rejected).await?;

        // consolidate: the dataflow holds no history, so an epoch that does not commit leaves
        // nothing behind in it
        let changed = self.dataflow.apply(fresh.iter().map(|e| Fact::from(*e))).await?;
        let changed = changed.rows()?;
        for (state, changes) in self.states.iter().zip(&changed) {
            tx.add_state(state, changes).await?;
        }
        // rejected records are durable on their topics before their offsets are committed
        self.send_rejected(&rejected).await?;
        tx.save_progress(&self.config.services.consolidate.group, &progress(&next)).await?;
        tx.commit().await?;

        m.sink_batch_duration.observe(tx_opened.elapsed().as_secs_f64());
        m.sink_batch_rows.with_label_values(&["lancamentos"]).observe(fresh.len() as f64);
        for (state, changes) in self.states.iter().zip(&changed) {
            m.sink_batch_rows.with_label_values(&[state.table.as_str()]).observe(changes.len() as f64);
        }
        m.consolidate_committed.inc_by(fresh.len() as u64);
        let committed_at = chrono::Utc::now();
        for e in &fresh {
            let age = (committed_at - e.criado_em).num_microseconds().unwrap_or(i64::MAX).max(0);
            m.consolidate_freshness.observe(age as f64 / 1e6);
        }
        m.consolidate_duplicates.inc_by(duplicates);
        m.consolidate_epochs.inc();
        Ok(next)
    }

    /// Fails the epoch unless the store keeps exactly the states this consolidator computes: a
    /// consolidator running another `pipeline.yaml` would leave a state short.
    async fn check_kept(&self, tx: &mut EpochTx) -> Result<(), ConsolidateError> {
        let kept = tx.kept_states().await?;
        let same = kept.len() == self.states.len() && self.states.iter().all(|s| kept.get(&s.table) == Some(s));
        if same {
            return Ok(());
        }
        let kept: Vec<String> = kept.values().map(|s| format!("{} {} {}", s.table, s.key, s.values)).collect();
        Err(ConsolidateError::StatesDiffer(kept.join(", ")))
    }

    async fn send_rejected(&self, rejected: &[Rejected<'_>]) -> Result<(), ConsolidateError> {
        if rejected.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let parked = self.config.services.retry.parked.id();
        let routed: Vec<(&str, Failure, &Record)> = rejected.iter().map(|r| self.route(r, now)).collect();
        let sends = routed.iter().map(|(topic, failure, record)| {
            send_failed(self.producer, topic, parked, failure, record.key.as_deref(), &record.payload)
        });
        for sent in futures::future::join_all(sends).await {
            sent?;
        }
        Ok(())
    }

    /// Where a rejected record goes, and its failure headers. A retry keeps where and when the
    /// record first failed, and its count of retries.
    fn route<'r>(&self, r: &Rejected<'r>, now: i64) -> (&str, Failure, &'r Record) {
        let services = &self.config.services;
        let park = r.code.disposition() == Disposition::Park;
        let topic = if park { services.retry.parked.id() } else { services.consolidate.on_error.id() };
        let m = metrics();
        m.consolidate_failed.with_label_values(&[r.code.as_str()]).inc();
        if park {
            m.retry_parked.with_label_values(&[r.code.as_str()]).inc();
        }
        let (topic_in, partition, offset) = r.record.position();
        tracing::warn!(code = %r.code, topic = %topic_in, partition, offset, to = topic, "record rejected");
        let failure = match &r.record.failure {
            Some(f) => Failure { code: r.code, stage: STAGE.to_owned(), detail: r.detail.clone(), ..f.clone() },
            None => Failure {
                code: r.code,
                stage: STAGE.to_owned(),
                detail: r.detail.clone(),
                attempt: 0,
                origin_topic: topic_in.to_owned(),
                origin_partition: partition,
                origin_offset: offset,
                first_failed_at_ms: now,
                not_before_ms: 0,
            },
        };
        let delay = retry_delay_ms(&services.retry.backoff_ms, failure.attempt) as i64;
        (topic, Failure { not_before_ms: now + delay, ..failure }, r.record)
    }
}

/// Turns each reversal into its correcting entry, using the original from the store or from this
/// batch. A reversal whose original is unknown is retried; one that cannot apply is parked.
async fn resolve<'r>(
    tx: &mut EpochTx,
    incoming: Vec<(Incoming, &'r Record)>,
    rejected: &mut Vec<Rejected<'r>>,
) -> Result<Vec<(Lancamento, &'r Record)>, ConsolidateError> {
    let mut of: Vec<EntryId> =
        incoming.iter().filter_map(|(i, _)| if let Incoming::Reversal(r) = i { Some(r.of) } else { None }).collect();
    if of.is_empty() {
        return Ok(incoming
            .into_iter()
            .filter_map(|(i, r)| if let Incoming::Entry(e) = i { Some((e, r)) } else { None })
            .collect());
    }
    of.sort_unstable();
    of.dedup();
    let stored = tx.stored_records(&of).await?;
    let mut reversed_by = tx.reversals_of(&of).await?;
    let mut in_batch: HashMap<EntryId, LancamentoRecord> = HashMap::new();
    for (i, _) in &incoming {
        if let Incoming::Entry(e) = i {
            in_batch.entry(e.id).or_insert_with(|| e.to_record());
        }
    }
    let mut out = Vec::with_capacity(incoming.len());
    for (i, record) in incoming {
        let r = match i {
            Incoming::Entry(e) => {
                out.push((e, record));
                continue;
            }
            Incoming::Reversal(r) => r,
        };
        let original =
            stored.get(&r.of).or_else(|| in_batch.get(&r.of)).filter(|o| o.merchant_id == r.merchant_id.as_str());
        let Some(original) = original else {
            let detail = format!("entry {} is not consolidated (yet) for merchant {}", r.of, r.merchant_id);
            rejected.push(Rejected::new(record, Code::OriginalNotFound, detail));
            continue;
        };
        match (r.apply_to(original), reversed_by.get(&r.of)) {
            (Err(e), _) => rejected.push(Rejected::new(record, Code::InvalidReversal, e.to_string())),
            (Ok(_), Some(&other)) if other != r.id => {
                let detail = format!("entry {} was already reversed by {other}", r.of);
                rejected.push(Rejected::new(record, Code::AlreadyReversed, detail));
            }
            (Ok(entry), _) => {
                reversed_by.insert(r.of, r.id);
                out.push((entry, record));
            }
        }
    }
    Ok(out)
}

/// Why an entry's date is outside the window, judged on the day ingest accepted it
/// (`criado_em`), not today: an entry accepted at 23:59 with the oldest date allowed is still
/// valid when consolidated after midnight, or after an outage of days.
fn outside_window(window: &DateWindow, i: &Incoming) -> Option<String> {
    match BusinessDate::new(i.criado_em().date_naive()) {
        Ok(accepted) => window.reject(i.data(), accepted).map(|why| format!("invalid field data: {why}")),
        Err(why) => Some(format!("invalid field criado_em: {why}")),
    }
}

/// Keeps the new entries whose amounts keep their merchant's credits and debits of all time
/// within 64-bit cents, in the order read; parks the others and takes them out of the store
/// again. Every day, category, month and running balance is a part of those two totals, so none
/// of them can overflow either.
async fn within_limits<'e, 'r>(
    tx: &mut EpochTx,
    fresh: Vec<(&'e Lancamento, &'r Record)>,
    rejected: &mut Vec<Rejected<'r>>,
) -> Result<Vec<&'e Lancamento>, ConsolidateError> {
    let mut merchants: Vec<&MerchantId> = fresh.iter().map(|(e, _)| &e.merchant_id).collect();
    merchants.sort_unstable();
    merchants.dedup();
    let mut totals = if merchants.is_empty() { HashMap::new() } else { tx.merchant_totals(&merchants).await? };
    let mut kept = Vec::with_capacity(fresh.len());
    let mut refused = Vec::new();
    for (entry, record) in fresh {
        let total = totals.entry(entry.merchant_id.clone()).or_default();
        match total.checked_add(&entry.totals()) {
            Ok(sum) => {
                *total = sum;
                kept.push(entry);
            }
            Err(_) => {
                let detail = format!(
                    "entry {} of {} would take the merchant's {} beyond {} in all",
                    entry.id,
                    Money::from_cents(entry.valor.cents()),
                    if entry.tipo == Tipo::Credito { "credits" } else { "debits" },
                    Money::from_cents(i64::MAX)
                );
                refused.push(entry.id);
                rejected.push(Rejected::new(record, Code::AmountOverflow, detail));
            }
        }
    }
    if !refused.is_empty() {
        tx.delete_entries(&refused).await?;
    }
    Ok(kept)
}

/// The next offset of each (topic, partition) in `batch`. A batch holds a few partitions and many
/// records: each record is matched against the few, and a topic's name is copied once.
fn next_offsets(batch: &[Record]) -> BTreeMap<(String, i32), i64> {
    let mut next: Vec<(&str, i32, i64)> = Vec::new();
    for r in batch {
        match next.iter_mut().find(|(topic, partition, _)| *topic == r.topic && *partition == r.partition) {
            Some(at) => at.2 = at.2.max(r.offset + 1),
            None => next.push((&r.topic, r.partition, r.offset + 1)),
        }
    }
    next.into_iter().map(|(topic, partition, offset)| ((topic.to_owned(), partition), offset)).collect()
}

fn progress(next: &BTreeMap<(String, i32), i64>) -> Vec<(String, i32, i64)> {
    next.iter().map(|((t, p), o)| (t.clone(), *p, *o)).collect()
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
