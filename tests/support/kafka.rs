//! Straight to and from the topics, bypassing the HTTP edge: redelivery, duplicates on other
//! partitions, poison records, and reading the error topics.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::Pipeline;

/// A record read back from a topic.
#[derive(Clone, Debug)]
pub struct Read {
    pub partition: i32,
    pub offset: i64,
    /// The producer's timestamp, in ms since the epoch.
    pub timestamp_ms: i64,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl Read {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

impl Pipeline {
    fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.kafka).set("broker.address.family", "v4");
        c
    }

    /// Produces every `(partition, key, payload)` to `topic` (by key where no partition is
    /// given) through one producer, in order, and waits for every ack; returns each record's
    /// (partition, offset).
    pub async fn produce(&self, topic: &str, records: &[(Option<i32>, &str, Vec<u8>)]) -> Vec<(i32, i64)> {
        let producer: FutureProducer = self.client().set("acks", "all").set("max.in.flight", "1").create().unwrap();
        let sends = records.iter().map(|(partition, key, payload)| {
            let mut record = FutureRecord::to(topic).key(*key).payload(payload);
            if let Some(p) = partition {
                record = record.partition(*p);
            }
            producer.send(record, Duration::from_secs(10))
        });
        let acks = futures::future::join_all(sends).await;
        acks.into_iter().map(|r| r.map(|d| (d.partition, d.offset)).map_err(|(e, _)| e).unwrap()).collect()
    }

    /// Reads `topic` from the beginning until `want` records arrived or `timeout` passed.
    pub fn read_topic(&self, topic: &str, want: usize, timeout: Duration) -> Vec<Read> {
        let consumer: BaseConsumer =
            self.client().set("group.id", "cashflow-tests-reader").set("enable.auto.commit", "false").create().unwrap();
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in md.topics()[0].partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning).unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < want && Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (h.key.to_owned(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Read {
                    partition: m.partition(),
                    offset: m.offset(),
                    timestamp_ms: m.timestamp().to_millis().unwrap_or(0),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    headers,
                });
            }
        }
        out
    }
}
