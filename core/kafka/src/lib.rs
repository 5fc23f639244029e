//! Kafka client settings and topic creation, from `pipeline.yaml`, and the error topics' records.

mod failed;

pub use failed::{failure_headers, header, read_failure, send_failed};

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::BorrowedMessage;
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use cashflow_core::config::PipelineConfig;

/// (partition, log start, log end) of every partition of `topic`.
pub fn watermarks(consumer: &BaseConsumer, topic: &str, timeout: Duration) -> Result<Vec<(i32, i64, i64)>, KafkaError> {
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let partitions = metadata.topics().iter().filter(|t| t.name() == topic).flat_map(|t| t.partitions());
    let ids: Vec<i32> = partitions.map(|p| p.id()).collect();
    ids.into_iter()
        .map(|p| {
            let (low, high) = consumer.fetch_watermarks(topic, p, timeout)?;
            Ok((p, low, high))
        })
        .collect()
}

/// How long a waiting [`recv`] trusts the queue's wakeup before it polls again.
const POLL_AGAIN: Duration = Duration::from_millis(250);

/// How long a consumer whose partitions were all revoked waits for the group to assign it again
/// (however few) before [`recv`] gives it up.
const REJOIN_LIMIT: Duration = Duration::from_secs(15);

/// The next record (or error) of `consumer`, by `StreamConsumer::recv`, polled again every
/// 250 ms while it waits; an error once the consumer has waited [`REJOIN_LIMIT`] for the group to
/// assign it anything after a revocation, so that its stage starts again with a new consumer.
///
/// rdkafka wakes a waiting `recv` only on its queue's empty-to-non-empty edge, and an edge can be
/// lost (fede1024/rust-rdkafka#665); its own fallback wake comes every `max.poll.interval.ms / 2`
/// (150 s). Polling again bounds that. The rejoin limit is a safety net: a consolidator was once
/// seen silent for 34 s after a broker restart, owning nothing, which was then read as a consumer
/// that never rejoined its group; the same silence was later caught in a debugger as a consumer
/// stuck in its own drop (its rebalance callback asked librdkafka for the assignment).
///
/// Dropping a waiting `recv` loses nothing.
pub async fn recv(consumer: &StreamConsumer<RebalanceWatch>) -> KafkaResult<BorrowedMessage<'_>> {
    loop {
        if let Some(since) = consumer.context().unassigned_since()
            && since.elapsed() > REJOIN_LIMIT
        {
            let waited = format!("no partitions assigned in the {} s since all were revoked", REJOIN_LIMIT.as_secs());
            return Err(KafkaError::Subscription(waited));
        }
        if let Ok(next) = tokio::time::timeout(POLL_AGAIN, consumer.recv()).await {
            return next;
        }
    }
}

/// A client config with the bootstrap list and the passthrough properties.
pub fn client_config(config: &PipelineConfig) -> ClientConfig {
    with_properties(config, |_| {})
}

/// Our defaults for one kind of client, then the passthrough properties, which win.
pub fn with_properties(config: &PipelineConfig, defaults: impl FnOnce(&mut ClientConfig)) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", config.kafka.bootstrap());
    // Brokers that advertise 127.0.0.1 must not be reached through IPv6 first.
    c.set("broker.address.family", "v4");
    // What brokers log, and set quotas by: the pipeline and its version.
    c.set("client.id", format!("{}/{}", config.meta.name, config.meta.version));
    defaults(&mut c);
    for (k, v) in &config.kafka.properties {
        c.set(k, v.expose());
    }
    c
}

/// Producer settings: acknowledged by all in-sync replicas, and idempotent on a real cluster.
///
/// The embedded broker (Tansu 0.6.0 on SQLite) keeps idempotent-producer state that a crash can
/// leave inconsistent; its storage task then panics on every produce from that producer, so the
/// broker never recovers. Entries are counted once by their id in the store, not by the broker's
/// sequence numbers, so the embedded default produces without broker-side idempotence. A list of
/// brokers, a Kafka cluster or bundled brokers over PostgreSQL (whose producer state is in the
/// database, and which the failover test kills under idempotent producers), gets it. Set
/// `enable.idempotence` in `kafka.properties` to override.
pub fn producer_config(config: &PipelineConfig, delivery_timeout: Duration) -> ClientConfig {
    let idempotent = !config.kafka.is_embedded();
    with_properties(config, |c| {
        c.set("enable.idempotence", idempotent.to_string())
            .set("acks", "all")
            .set("linger.ms", "2")
            .set("message.timeout.ms", delivery_timeout.as_millis().to_string());
    })
}

/// Creates every declared topic that is missing. Existing topics are left as they are.
pub async fn ensure_topics(config: &PipelineConfig) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = client_config(config).create()?;
    let topics: Vec<NewTopic<'_>> = config
        .topics
        .iter()
        .map(|(name, t)| NewTopic::new(name, t.partitions, TopicReplication::Fixed(i32::from(t.replication_factor))))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&topics, &options).await? {
        match result {
            Ok(name) => tracing::info!(topic = %name, "topic created"),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::debug!(topic = %name, "topic exists")
            }
            Err((name, code)) => {
                tracing::error!(topic = %name, error = %code, "cannot create topic");
                return Err(KafkaError::AdminOp(code));
            }
        }
    }
    Ok(())
}

/// Where each partition resumes: the next offset per (topic, partition), as the store holds it.
pub type Positions = HashMap<(String, i32), i64>;

/// A consumer context that notes every assignment or revocation, so a loop that keeps state per
/// partition knows to drop it and start again from the positions it trusts.
///
/// With [`RebalanceWatch::positioned`], it also positions every partition it is assigned at the
/// position it was given for that partition (or at the log's start when it has none), never at
/// the group's committed offset: those commits are hints for lag tools, and a store restored
/// from an older copy, or a fresh store behind a reused group, is behind them.
#[derive(Default)]
pub struct RebalanceWatch {
    changed: AtomicBool,
    positions: Option<Mutex<Positions>>,
    /// Told how many partitions the consumer owns after each change.
    owned: Option<Box<dyn Fn(usize) + Send + Sync>>,
    /// When the consumer was left owning nothing by a revocation, until the next assignment.
    unassigned: Mutex<Option<Instant>>,
    /// The partitions the consumer owns, as the rebalances said. Never asked of librdkafka inside
    /// the callback: `rd_kafka_assignment` waits for the group's thread, and a consumer dropped
    /// after a broker restart, whose close revoked its partitions, waited there for good.
    owns: Mutex<HashSet<(String, i32)>>,
}

impl RebalanceWatch {
    /// A watch that positions each assigned partition at `positions` (see the type's docs).
    pub fn positioned(positions: Positions) -> Self {
        RebalanceWatch { positions: Some(Mutex::new(positions)), ..RebalanceWatch::default() }
    }

    /// Calls `owned` with the number of partitions the consumer owns after each change.
    pub fn reporting(self, owned: impl Fn(usize) + Send + Sync + 'static) -> Self {
        RebalanceWatch { owned: Some(Box::new(owned)), ..self }
    }

    /// Since when a revocation has left the consumer owning nothing, with no assignment since
    /// (an empty one counts: the group has answered).
    pub fn unassigned_since(&self) -> Option<Instant> {
        *self.unassigned.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the assignment changed since the last call.
    pub fn take_changed(&self) -> bool {
        self.changed.swap(false, Ordering::SeqCst)
    }

    /// Moves the positions forward, as a commit to the store did; a position never moves back.
    pub fn advance(&self, next: impl IntoIterator<Item = ((String, i32), i64)>) {
        let Some(positions) = &self.positions else { return };
        let mut positions = positions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (partition, offset) in next {
            let at = positions.entry(partition).or_insert(offset);
            *at = (*at).max(offset);
        }
    }

    /// Sets each partition's offset in `tpl` to its position.
    fn position(&self, tpl: &mut TopicPartitionList) {
        let Some(positions) = &self.positions else { return };
        let positions = positions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let assigned: Vec<(String, i32)> =
            tpl.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect();
        for (topic, partition) in assigned {
            let offset = match positions.get(&(topic.clone(), partition)) {
                Some(&next) => Offset::Offset(next),
                None => Offset::Beginning,
            };
            if let Err(e) = tpl.set_partition_offset(&topic, partition, offset) {
                tracing::warn!(error = %e, topic, partition, "cannot position a partition");
            }
        }
    }
}

impl ClientContext for RebalanceWatch {}

impl ConsumerContext for RebalanceWatch {
    /// As rdkafka's own, but each partition assigned starts at its position (when positioned).
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.position(tpl);
                tracing::info!(partitions = %describe(tpl), "partitions assigned");
                if cooperative { consumer.incremental_assign(tpl) } else { consumer.assign(tpl) }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                tracing::info!(partitions = %describe(tpl), "partitions revoked");
                if cooperative { consumer.incremental_unassign(tpl) } else { consumer.unassign() }
            }
            other => {
                tracing::warn!(error = %RDKafkaErrorCode::from(other), "rebalance failed");
                return;
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "assignment not applied");
        }
        let assigned = err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS;
        let owns = {
            let mut owns = self.owns.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let elements = tpl.elements();
            let changed = elements.iter().map(|e| (e.topic().to_owned(), e.partition()));
            match (assigned, cooperative) {
                (true, true) => owns.extend(changed),
                (true, false) => *owns = changed.collect(),
                (false, true) => {
                    let revoked: HashSet<_> = changed.collect();
                    owns.retain(|p| !revoked.contains(p));
                }
                (false, false) => owns.clear(),
            }
            owns.len()
        };
        let mut unassigned = self.unassigned.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *unassigned = match (assigned, owns) {
            (false, 0) => Some(unassigned.unwrap_or_else(Instant::now)),
            _ => None,
        };
        drop(unassigned);
        if let Some(owned) = &self.owned {
            owned(owns);
        }
        self.changed.store(true, Ordering::SeqCst);
    }
}

fn describe(tpl: &TopicPartitionList) -> String {
    let described: Vec<String> = tpl
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => format!("{}/{}@{o}", e.topic(), e.partition()),
            _ => format!("{}/{}", e.topic(), e.partition()),
        })
        .collect();
    described.join(",")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn every_client_is_named_after_the_pipeline_and_its_version() {
        let text = include_str!("../../../pipeline.yaml").replace("version: 0.1.0", "version: 2.3.4");
        let config = PipelineConfig::parse("pipeline.yaml", &text, |_| None).unwrap();
        assert_eq!(with_properties(&config, |_| {}).get("client.id"), Some("cashflow/2.3.4"));
        assert_eq!(producer_config(&config, Duration::from_secs(1)).get("client.id"), Some("cashflow/2.3.4"));
    }

    #[test]
    fn the_watch_counts_what_the_rebalances_assign_and_revoke() {
        use std::sync::Arc;
        use std::sync::atomic::AtomicUsize;
        let reported = Arc::new(AtomicUsize::new(usize::MAX));
        let seen = Arc::clone(&reported);
        let watch = RebalanceWatch::default().reporting(move |n| seen.store(n, Ordering::SeqCst));
        // No broker: assigning and revoking are local to the client.
        let consumer: BaseConsumer<RebalanceWatch> = ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("group.id", "watch")
            .create_with_context(watch)
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for partition in 0..3 {
            tpl.add_partition("lancamentos", partition);
        }
        let watch = consumer.context();
        watch.rebalance(&consumer, RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS, &mut tpl.clone());
        assert_eq!((reported.load(Ordering::SeqCst), watch.unassigned_since()), (3, None));
        assert!(watch.take_changed());
        watch.rebalance(&consumer, RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS, &mut tpl.clone());
        assert_eq!(reported.load(Ordering::SeqCst), 0);
        assert!(watch.unassigned_since().is_some(), "a revocation that leaves nothing is timed");
        watch.rebalance(
            &consumer,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS,
            &mut TopicPartitionList::new(),
        );
        assert_eq!(
            (reported.load(Ordering::SeqCst), watch.unassigned_since()),
            (0, None),
            "an empty assignment answers"
        );
    }
}
