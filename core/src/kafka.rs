//! Kafka client settings and topic creation, from `pipeline.yaml`.

use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, ClientContext, TopicPartitionList};

use crate::config::PipelineConfig;

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
    defaults(&mut c);
    for (k, v) in &config.kafka.properties {
        c.set(k, v);
    }
    c
}

/// Producer settings: acknowledged by all in-sync replicas, and idempotent on a real cluster.
///
/// The embedded broker (Tansu 0.6.0) keeps idempotent-producer state that a crash can leave
/// inconsistent; its storage task then panics on every produce from that producer, so the broker
/// never recovers. Entries are counted once by their id in the store, not by the broker's
/// sequence numbers, so the embedded default produces without broker-side idempotence. Set
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

/// A consumer context that notes every assignment or revocation, so a loop that keeps state per
/// partition knows to drop it and start again from the positions it trusts.
#[derive(Default)]
pub struct RebalanceWatch {
    changed: AtomicBool,
}

impl RebalanceWatch {
    /// Whether the assignment changed since the last call.
    pub fn take_changed(&self) -> bool {
        self.changed.swap(false, Ordering::SeqCst)
    }
}

impl ClientContext for RebalanceWatch {}

impl ConsumerContext for RebalanceWatch {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let partitions = |tpl: &TopicPartitionList| {
            tpl.elements().iter().map(|e| format!("{}/{}", e.topic(), e.partition())).collect::<Vec<_>>().join(",")
        };
        match rebalance {
            Rebalance::Assign(tpl) => tracing::info!(partitions = %partitions(tpl), "partitions assigned"),
            Rebalance::Revoke(tpl) => tracing::info!(partitions = %partitions(tpl), "partitions revoked"),
            Rebalance::Error(e) => {
                tracing::warn!(error = %e, "rebalance failed");
                return;
            }
        }
        self.changed.store(true, Ordering::SeqCst);
    }
}
