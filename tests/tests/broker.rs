//! The embedded broker serves fetches as a Kafka broker does: a partition's share of a response
//! is bounded by the request's `partition_max_bytes`, so a backlog on one partition does not fill
//! the response and hold back the others (or the consolidator's lanes), and a fetch that finds
//! enough data is answered at once, not after the request's `max_wait_ms`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use cashflow_tests::{binary, free_port, lone_broker, until_listening};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// `cashflow-broker` on its own SQLite log in a temporary directory; killed on drop.
struct Broker {
    child: Child,
    bootstrap: String,
    _dir: tempfile::TempDir,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Broker {
    async fn start() -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new(binary("cashflow-broker"));
        let bootstrap = lone_broker(&mut command, dir.path(), free_port());
        let child = command.spawn().unwrap();
        until_listening(&bootstrap).await;
        Broker { child, bootstrap, _dir: dir }
    }

    fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap).set("broker.address.family", "v4");
        c
    }

    /// A topic of `partitions`, each holding `per_partition` records, the `n`th of `size(n)`
    /// bytes, produced in small batches.
    async fn topic_with_backlog(
        &self,
        topic: &str,
        partitions: i32,
        per_partition: usize,
        size: impl Fn(usize) -> usize,
    ) {
        let admin: AdminClient<DefaultClientContext> = self.client().create().unwrap();
        let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        for created in admin.create_topics(&[new], &AdminOptions::new()).await.unwrap() {
            created.unwrap();
        }
        let producer: FutureProducer =
            self.client().set("acks", "all").set("linger.ms", "5").set("batch.size", "65536").create().unwrap();
        let payloads: Vec<Vec<u8>> = (0..per_partition).map(|n| vec![b'x'; size(n)]).collect();
        for partition in 0..partitions {
            let sends = payloads.iter().map(|payload| {
                producer.send(
                    FutureRecord::<(), _>::to(topic).partition(partition).payload(payload),
                    Duration::from_secs(30),
                )
            });
            for ack in futures::future::join_all(sends).await {
                ack.map_err(|(e, _)| e).unwrap();
            }
        }
    }

    /// A consumer of every partition of `topic` from offset 0, with these fetch settings.
    fn reader(&self, topic: &str, partitions: i32, settings: &[(&str, &str)]) -> BaseConsumer {
        let mut config = self.client();
        config.set("group.id", "broker-tests").set("enable.auto.commit", "false");
        for (k, v) in settings {
            config.set(*k, *v);
        }
        let consumer: BaseConsumer = config.create().unwrap();
        let mut assignment = TopicPartitionList::new();
        for partition in 0..partitions {
            assignment.add_partition_offset(topic, partition, Offset::Offset(0)).unwrap();
        }
        consumer.assign(&assignment).unwrap();
        consumer
    }
}

/// The (partition, offset, payload length) of each of the first `want` records `consumer`
/// delivers, in order.
fn first_records(consumer: &BaseConsumer, want: usize) -> Vec<(i32, i64, usize)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    while seen.len() < want {
        assert!(Instant::now() < deadline, "only {} of {want} records in 60 s", seen.len());
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let m = message.unwrap();
            seen.push((m.partition(), m.offset(), m.payload().map_or(0, <[u8]>::len)));
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_on_one_partition_leaves_the_others_their_share_of_each_fetch() {
    let broker = Broker::start().await;
    // 3 MB on each of 3 partitions: more than a 64 KiB share, less than a whole response (5 MB).
    broker.topic_with_backlog("fair", 3, 3_000, |_| 1_000).await;
    let consumer = broker.reader("fair", 3, &[("max.partition.fetch.bytes", "65536")]);
    // Each response holds at most 64 KiB (about 60 records) of each partition, so the first 1,000
    // records come from every partition. A broker that fills a response from its first partition
    // hands over 3,000 records of that one first.
    let mut counts = [0usize; 3];
    for (partition, _, _) in first_records(&consumer, 1_000) {
        counts[usize::try_from(partition).unwrap()] += 1;
    }
    assert!(counts.iter().all(|&n| n > 0), "records per partition among the first 1,000: {counts:?}");
    assert!(counts.iter().all(|&n| n <= 500), "one partition took most of the first 1,000: {counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_that_finds_records_is_answered_without_waiting_out_max_wait() {
    let broker = Broker::start().await;
    // 500 KB on one partition, read 64 KiB a response: at least 8 fetches, each finding data.
    broker.topic_with_backlog("prompt", 1, 500, |_| 1_000).await;
    let settings = [
        ("fetch.max.bytes", "65536"),
        ("message.max.bytes", "65536"),
        ("max.partition.fetch.bytes", "65536"),
        ("fetch.wait.max.ms", "10000"),
    ];
    let consumer = broker.reader("prompt", 1, &settings);
    let started = Instant::now();
    first_records(&consumer, 500);
    // A broker that waits out max_wait (here 10 s, or half of it) before each answer takes
    // 8 × 5 s at least; one that answers a fetch as soon as it has data takes well under a
    // second. The bound sits far from both.
    let took = started.elapsed();
    assert!(took < Duration::from_secs(15), "500 records of a backlog took {took:?} with fetch.wait.max.ms 10000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_every_size_are_delivered_whole_and_in_order() {
    let broker = Broker::start().await;
    // Empty records, small ones and ones of a quarter share, mixed: a fetch reads a bounded run of a
    // backlog at a time, and must neither skip nor reorder a record at the bounds (librdkafka
    // drops a repeat below its position, so repeats are not seen here).
    let sizes = [0, 1, 100, 3_000, 60_000, 0, 0, 20];
    let size = |n: usize| sizes[n % sizes.len()];
    broker.topic_with_backlog("sizes", 1, 4_000, size).await;
    let consumer = broker.reader("sizes", 1, &[("max.partition.fetch.bytes", "262144")]);
    let read = first_records(&consumer, 4_000);
    let expected: Vec<(i32, i64, usize)> = (0..4_000).map(|n| (0, i64::try_from(n).unwrap(), size(n))).collect();
    assert!(read == expected, "the first wrong record: {:?}", read.iter().zip(&expected).find(|(r, e)| r != e));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_larger_than_a_partitions_share_is_still_delivered() {
    let broker = Broker::start().await;
    // As in Kafka, a share bounds what follows a partition's first record, never that record:
    // one larger than the share must not hold its partition back for ever.
    let sizes = [200_000, 10, 300_000, 10];
    broker.topic_with_backlog("large", 1, sizes.len(), |n| sizes[n]).await;
    let consumer = broker.reader("large", 1, &[("max.partition.fetch.bytes", "65536")]);
    let read = first_records(&consumer, sizes.len());
    let expected: Vec<(i32, i64, usize)> = (0..sizes.len()).map(|n| (0, i64::try_from(n).unwrap(), sizes[n])).collect();
    assert_eq!(read, expected);
}

/// Keeps the latest statistics librdkafka reports.
#[derive(Default)]
struct Stats(std::sync::Mutex<Option<serde_json::Value>>);

impl rdkafka::ClientContext for Stats {
    fn stats_raw(&self, statistics: &[u8]) {
        *self.0.lock().unwrap() = serde_json::from_slice(statistics).ok();
    }
}
impl rdkafka::consumer::ConsumerContext for Stats {}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_that_finds_nothing_waits_out_max_wait() {
    let broker = Broker::start().await;
    broker.topic_with_backlog("idle", 2, 0, |_| 0).await;
    let mut config = broker.client();
    config
        .set("group.id", "broker-tests")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "1000")
        .set("statistics.interval.ms", "500");
    let consumer: BaseConsumer<Stats> = config.create_with_context(Stats::default()).unwrap();
    let mut assignment = TopicPartitionList::new();
    for partition in 0..2 {
        assignment.add_partition_offset("idle", partition, Offset::Offset(0)).unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        assert!(consumer.poll(Duration::from_millis(100)).is_none(), "the topic is empty");
    }
    let stats = consumer.context().0.lock().unwrap().clone().expect("librdkafka reported statistics");
    let fetches: i64 = stats["brokers"].as_object().unwrap().values().filter_map(|b| b["req"]["Fetch"].as_i64()).sum();
    // A long poll of 1 s answers an empty partition after about 1 s: a handful of fetches in 4 s.
    // A broker that answers at once with nothing is asked again at once, hundreds of times.
    assert!((1..=20).contains(&fetches), "{fetches} fetches of an empty topic in 4 s with fetch.wait.max.ms 1000");
}
