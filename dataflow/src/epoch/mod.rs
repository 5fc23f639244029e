//! One epoch: validate, dedupe, aggregate, and commit entries, every state's changes and offsets
//! in one store transaction. Records that will never count go to the error topics first.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use cashflow_core::config::PipelineConfig;
use cashflow_core::failure::{Code, Disposition, Failure, retry_delay};
use cashflow_core::{DecodeError, Incoming, Lancamento};
use cashflow_kafka::{read_failure, send_failed};
use cashflow_observability::{EpochStep, metrics};
use cashflow_sinks::{DeclaredState, Delivery, EpochTx, Origin, Store};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};

use crate::ConsolidateError;
use crate::events::{EpochCommitted, RecordRejected};
use crate::operator::{Consolidator, Fact};
use crate::smartmodule::SmartModule;

mod steps;

use steps::Rejected;
pub(crate) use steps::split_lanes;

pub(crate) const STAGE: &str = "consolidate";

/// A record read from a source topic, owned.
#[derive(Clone, Debug)]
pub(crate) struct Record {
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    /// Set when this is a retry: where the record first failed, and how often.
    failure: Option<Failure>,
    /// The payload decoded as it was read, while the epoch before this one committed.
    decoded: Result<Incoming, DecodeError>,
}

impl Record {
    pub(crate) fn position(&self) -> (&str, i32, i64) {
        (&self.topic, self.partition, self.offset)
    }

    pub(crate) fn from_message(m: &BorrowedMessage<'_>) -> Record {
        let payload = m.payload().map(<[u8]>::to_vec).unwrap_or_default();
        Record {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            decoded: Incoming::decode(&payload),
            payload,
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

/// What one epoch needs.
pub(crate) struct Epoch<'a> {
    pub config: &'a PipelineConfig,
    /// What `aggregate` keeps, in the dataflow's order.
    pub states: &'a [DeclaredState],
    pub store: &'a Store,
    pub dataflow: &'a Consolidator,
    pub producer: &'a FutureProducer,
    /// The `smartmodule` operators, in order; the lanes take turns.
    pub modules: &'a Mutex<Vec<SmartModule>>,
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
        let mut laps = Laps::start();
        let next = steps::next_offsets(std::slice::from_ref(rejected.record));
        let mut tx = self.store.begin_epoch().await?;
        self.send_rejected(&[rejected]).await?;
        laps.end(EpochStep::Route);
        tx.save_progress(&self.config.services.consolidate.group, &steps::progress(&next)).await?;
        tx.commit().await?;
        laps.end(EpochStep::Commit);
        metrics().consolidate_epochs.inc();
        Ok(next)
    }

    /// Commits one part of a batch in one transaction: each step of [`steps`] in turn, with what
    /// the store says in between.
    async fn commit_part(&self, batch: &[Record]) -> Result<BTreeMap<(String, i32), i64>, ConsolidateError> {
        let mut laps = Laps::start();
        let next = steps::next_offsets(batch);
        let mut tx = self.store.begin_epoch().await?;
        let tx_opened = Instant::now();

        // a retried delivery counts once, however often the retry stage sent it
        let deliveries: Vec<Delivery> = batch.iter().filter_map(Record::delivery).collect();
        let claimed = if deliveries.is_empty() { HashSet::new() } else { tx.claim_deliveries(&deliveries).await? };
        let (admitted, mut duplicates) = steps::admit(batch, &claimed);

        // validate, then resolve reversals against their originals
        let (incoming, mut rejected) = steps::decode(admitted, &self.config.services.consolidate.date_window());
        let targets = steps::reversal_targets(&incoming);
        let originals = if targets.is_empty() {
            steps::Originals::default()
        } else {
            steps::Originals {
                stored: tx.stored_records(&targets).await?,
                reversed_by: tx.reversals_of(&targets).await?,
            }
        };
        let (entries, unresolved) = steps::resolve(incoming, originals);
        rejected.extend(unresolved);
        laps.end(EpochStep::Validate);

        // the users' SmartModules, on new entries (a reversal's facts are its original's)
        let (entries, failed) = self.transform(entries);
        rejected.extend(failed);
        laps.end(EpochStep::SmartModule);

        // dedupe: the store's primary key decides which ids are new
        let candidates = steps::candidates(entries);
        let inserted = tx.insert_entries(&candidates.first).await?;
        // After the insert: on PostgreSQL, a state being built holds inserts back until it is kept.
        self.check_kept(&mut tx).await?;
        let seen_before = candidates.seen_before(&inserted);
        let stored = if seen_before.is_empty() { HashMap::new() } else { tx.stored_records(&seen_before).await? };
        let judged = steps::judge(&candidates, &inserted, stored);
        duplicates += judged.duplicates;
        rejected.extend(judged.rejected);
        laps.end(EpochStep::Dedupe);

        // the amount limit, against each merchant's totals of all time
        let merchants = steps::merchants(&judged.fresh);
        let totals = if merchants.is_empty() { HashMap::new() } else { tx.merchant_totals(&merchants).await? };
        let limited = steps::limit(judged.fresh, totals);
        if !limited.refused.is_empty() {
            tx.delete_entries(&limited.refused).await?;
        }
        rejected.extend(limited.rejected);
        let fresh = limited.kept;
        laps.end(EpochStep::Limit);

        // aggregate: the dataflow holds no history, so an epoch that does not commit leaves
        // nothing behind in it
        let changed = self.dataflow.apply(fresh.iter().map(|e| Fact::from(*e))).await?;
        let changed = changed.rows()?;
        laps.end(EpochStep::Aggregate);
        for (state, changes) in self.states.iter().zip(&changed) {
            tx.add_state(state, changes).await?;
        }
        laps.end(EpochStep::States);
        // rejected records are durable on their topics before their offsets are committed
        self.send_rejected(&rejected).await?;
        laps.end(EpochStep::Route);
        tx.save_progress(&self.config.services.consolidate.group, &steps::progress(&next)).await?;
        tx.commit().await?;
        laps.end(EpochStep::Commit);

        let rows = self.states.iter().zip(&changed).map(|(s, c)| (s.table.as_str(), c.len())).collect();
        EpochCommitted { opened: tx_opened, fresh: &fresh, duplicates, rows }.emit();
        Ok(next)
    }

    /// Each new entry through the SmartModules: what they give, each with the record it came
    /// from; and the records a module failed.
    fn transform<'r>(
        &self,
        entries: Vec<(Lancamento, &'r Record)>,
    ) -> (Vec<(Lancamento, &'r Record)>, Vec<Rejected<'r>>) {
        let mut modules = self.modules.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if modules.is_empty() {
            return (entries, Vec::new());
        }
        let (mut out, mut rejected) = (Vec::with_capacity(entries.len()), Vec::new());
        for (entry, record) in entries {
            if entry.estorno_de.is_some() {
                out.push((entry, record));
                continue;
            }
            match crate::smartmodule::apply_all(&mut modules, entry) {
                Ok(made) => out.extend(made.into_iter().map(|e| (e, record))),
                Err(f) => rejected.push(Rejected::new(record, f.code, f.detail)),
            }
        }
        modules.iter_mut().for_each(SmartModule::export_fuel);
        (out, rejected)
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
        let (topic_in, partition, offset) = r.record.position();
        RecordRejected { code: r.code, parked: park, position: r.record.position(), to: topic }.emit();
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
        // `validate` keeps each delay within a week, so the due time cannot overflow
        let delay = retry_delay(&services.retry.backoff, failure.attempt).as_millis();
        let delay = i64::try_from(delay).expect("a retry delay is at most a week and a quarter");
        (topic, Failure { not_before_ms: now.saturating_add(delay), ..failure }, r.record)
    }
}

/// Adds each step of an epoch to `cashflow_consolidate_epoch_step_seconds_total`: where an
/// epoch's time goes, from any running consolidator.
struct Laps(Instant);

impl Laps {
    fn start() -> Self {
        Laps(Instant::now())
    }

    /// Ends `step`: the time since the last.
    fn end(&mut self, step: EpochStep) {
        let now = Instant::now();
        metrics().consolidate_epoch_steps.with_label_values(&[step.label()]).inc_by((now - self.0).as_secs_f64());
        self.0 = now;
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
