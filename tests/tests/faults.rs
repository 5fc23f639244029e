//! Faults: the consolidator killed with SIGKILL mid-load, and consolidation down while merchants
//! keep posting. Every entry is counted once, checked against the oracle.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use cashflow_tests::{
    MERCHANTS, Oracle, Pipeline, Role, Store, UNLIMITED, assert_matches_oracle, d, login_all, post_all, post_entries,
    random_entries,
};
use rand::Rng;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consolidator_killed_five_times_mid_load_loses_and_doubles_nothing() {
    let mut p = Pipeline::start_stages(Store::Sqlite, &[UNLIMITED]).await;
    let tokens = login_all(&p).await;
    let (first, de, ate) = (d("2026-07-01"), d("2026-06-30"), d("2026-07-31"));
    let load =
        tokio::spawn(post_entries(p.api.clone(), tokens.clone(), random_entries(&MERCHANTS, 20_000, first, 30), 32));

    let mut kills = 0;
    while kills < 5 {
        let pause = rand::thread_rng().gen_range(200..900);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        p.kill(Role::Consolidate);
        kills += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
        p.launch(Role::Consolidate).await;
    }
    let posted = load.await.unwrap();
    assert!(!posted.is_empty());
    let mut oracle = Oracle::default();
    for (e, status) in posted {
        assert_eq!(status, 202, "{e:?}");
        oracle.add(e);
    }
    eprintln!("killed the consolidator {kills} times during a 20000-entry load");
    assert_matches_oracle(&p, &tokens, &oracle, de, ate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_stays_up_while_consolidation_is_down() {
    let mut p = Pipeline::start_stages(Store::Sqlite, &[UNLIMITED]).await;
    let tokens = login_all(&p).await;
    p.interrupt(Role::Consolidate).await;

    let (first, de, ate) = (d("2026-08-01"), d("2026-07-31"), d("2026-08-31"));
    let posted = post_entries(p.api.clone(), tokens.clone(), random_entries(&MERCHANTS, 5_000, first, 30), 32).await;
    let mut oracle = Oracle::default();
    let accepted = posted.iter().filter(|(_, s)| *s == 202).count();
    assert_eq!(accepted, 5_000, "every entry must be accepted while consolidation is down");
    for (e, _) in posted {
        oracle.add(e);
    }

    let started = Instant::now();
    p.launch(Role::Consolidate).await;
    assert_matches_oracle(&p, &tokens, &oracle, de, ate).await;
    eprintln!("caught up with 5000 waiting entries in {:?}", started.elapsed());
}

/// `max_epoch_records` bounds what one store transaction holds: a backlog of 3,000 entries is
/// consolidated in epochs of at most 256 (a bucket bound of `cashflow_sink_batch_rows`), where
/// the store's default (100,000 on SQLite) would take it in a few.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_is_consolidated_in_epochs_of_at_most_max_epoch_records() {
    let epochs = ("max_epoch_wait_ms: 50", "max_epoch_wait_ms: 50\n    max_epoch_records: 256");
    let mut p = Pipeline::start_stages(Store::Sqlite, &[UNLIMITED, epochs]).await;
    assert_eq!(p.pipeline_config().services.consolidate.max_epoch_records, Some(256));
    let tokens = login_all(&p).await;
    p.interrupt(Role::Consolidate).await;
    let (first, de, ate) = (d("2026-10-01"), d("2026-09-30"), d("2026-10-31"));
    let mut oracle = Oracle::default();
    post_all(&p, &tokens, random_entries(&MERCHANTS, 3_000, first, 30), &mut oracle).await;

    p.launch(Role::Consolidate).await;
    assert_matches_oracle(&p, &tokens, &oracle, de, ate).await;
    let metrics = p.api.metrics(&p.stages[&Role::Consolidate]).await;
    let rows = "cashflow_sink_batch_rows";
    let epochs = metrics.must(&format!("{rows}_count{{table=\"lancamentos\"}}"));
    let within = metrics.must(&format!("{rows}_bucket{{table=\"lancamentos\",le=\"256\"}}"));
    assert_eq!(within, epochs, "every epoch wrote at most 256 entries");
    assert!(epochs >= (3_000_f64 / 256.0).ceil(), "3,000 entries in {epochs} epochs of at most 256");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_and_restarted_mid_load_loses_and_doubles_nothing() {
    let mut p = Pipeline::start_stages(Store::Sqlite, &[UNLIMITED]).await;
    let tokens = login_all(&p).await;
    let (first, de, ate) = (d("2026-09-01"), d("2026-08-31"), d("2026-09-30"));
    let entries = random_entries(&MERCHANTS, 6_000, first, 30);
    let posted = post_through_a_broker_restart(&mut p, &tokens, entries, "chaos", Duration::from_secs(3)).await;
    let retried = posted.iter().filter(|(_, a)| *a > 1).count();
    let mut oracle = Oracle::default();
    for (e, _) in posted {
        oracle.add(e);
    }
    eprintln!("broker down ~3 s mid-load: {retried} of 6000 entries needed a client retry");
    assert_matches_oracle(&p, &tokens, &oracle, de, ate).await;
}

/// The broker restarted under load, again and again: after each restart the consolidator owns
/// its partitions again and has counted every accepted entry within seconds, not at a client
/// library's next spurious wakeup (which comes every `max.poll.interval.ms / 2`, 150 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consolidator_catches_up_within_seconds_of_every_broker_restart() {
    let mut p = Pipeline::start_stages(Store::Sqlite, &[UNLIMITED]).await;
    let tokens = login_all(&p).await;
    let (first, de, ate) = (d("2026-06-01"), d("2026-05-31"), d("2026-06-30"));
    let mut oracle = Oracle::default();
    for restart in 0..8 {
        let down = Duration::from_millis(rand::thread_rng().gen_range(500..2_500));
        let entries = random_entries(&MERCHANTS, 1_500, first, 30);
        let posted = post_through_a_broker_restart(&mut p, &tokens, entries, &format!("r{restart}"), down).await;
        let accepted = Instant::now();
        for (e, _) in posted {
            oracle.add(e);
        }
        cashflow_tests::assert_matches_oracle_within(&p, &tokens, &oracle, (de, ate), Duration::from_secs(30)).await;
        eprintln!("restart {restart}: broker down {down:?}, caught up {:?} after the last accept", accepted.elapsed());
    }
}

/// rdkafka's `StreamConsumer` wakes a waiting `recv` only on its queue's empty-to-non-empty edge,
/// and an edge can be lost (fede1024/rust-rdkafka#665); its own fallback wake comes every
/// `max.poll.interval.ms / 2`, 150 s. Here every edge is lost: the queue's callback is switched
/// off. A consumer waiting through `cashflow_kafka::recv` still gets the next record in seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_consumer_gets_its_record_even_when_the_queue_wakeup_is_lost() {
    use rdkafka::Message as _;
    use rdkafka::consumer::{Consumer as _, StreamConsumer};
    let mut p = Pipeline::configure(Store::Sqlite, &[]);
    p.launch(Role::Broker).await;
    let consumer: StreamConsumer<cashflow_kafka::RebalanceWatch> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &p.kafka)
        .set("broker.address.family", "v4")
        .set("group.id", "wakeup-lost")
        .create_with_context(cashflow_kafka::RebalanceWatch::default())
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset("lancamentos", 0, rdkafka::Offset::Beginning).unwrap();
    consumer.assign(&tpl).unwrap();
    #[allow(unsafe_code)]
    // SAFETY: the client outlives this block; the queue handle taken here is released here, and
    // a null callback with a null opaque is librdkafka's documented way to switch it off.
    unsafe {
        use rdkafka::bindings as rd;
        let queue = rd::rd_kafka_queue_get_consumer(consumer.client().native_ptr());
        rd::rd_kafka_queue_cb_event_enable(queue, None, std::ptr::null_mut());
        rd::rd_kafka_queue_destroy(queue);
    }
    // The wait runs in a task of its own: nothing else wakes it.
    let consumer = std::sync::Arc::new(consumer);
    let waiting = tokio::spawn({
        let consumer = std::sync::Arc::clone(&consumer);
        async move {
            let next = async { cashflow_kafka::recv(&consumer).await.map(|m| m.payload().map(<[u8]>::to_vec)) };
            tokio::time::timeout(Duration::from_secs(10), next).await
        }
    });
    // Produced once the consumer waits on an empty queue.
    tokio::time::sleep(Duration::from_secs(1)).await;
    p.produce("lancamentos", &[(Some(0), "loja-a", b"first".to_vec())]).await;
    let produced = Instant::now();
    // (A timeout polls what it wraps once more when it fires: only the time taken tells.)
    let payload = waiting.await.unwrap().expect("no record within 10 s of a lost wakeup").unwrap();
    let waited = produced.elapsed();
    assert!(waited < Duration::from_secs(3), "the record was read {waited:?} after its ack");
    assert_eq!(payload.as_deref(), Some(&b"first"[..]));
}

/// Posts `entries` 32 at a time, as a well-behaved client (503s retried with the same key), while
/// the broker is killed once and started again after `down`; returns each entry with its attempts.
async fn post_through_a_broker_restart(
    p: &mut Pipeline,
    tokens: &std::collections::HashMap<&'static str, String>,
    entries: Vec<cashflow_tests::Posted>,
    keys: &str,
    down: Duration,
) -> Vec<(cashflow_tests::Posted, u32)> {
    use futures::StreamExt as _;
    let (api, toks, keys) = (p.api.clone(), tokens.clone(), keys.to_owned());
    let load = tokio::spawn(async move {
        futures::stream::iter(entries.into_iter().enumerate())
            .map(|(i, e)| {
                let (api, token, key) = (api.clone(), toks[e.merchant.as_str()].clone(), format!("{keys}-{i}"));
                async move {
                    let attempts = cashflow_tests::post_until_accepted(&api, &token, &e, &key).await;
                    (e, attempts)
                }
            })
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    p.kill(Role::Broker);
    tokio::time::sleep(down).await;
    p.launch(Role::Broker).await;
    load.await.unwrap()
}

/// PostgreSQL stopped for ~10 s mid-load: consolidation pauses and resumes by itself, nothing is
/// lost or doubled, and nothing is sent to the error topics (an outage is not a bad record).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_outage_mid_load_pauses_and_resumes_without_loss() {
    let pg = cashflow_tests::PgCluster::start();
    let mut p = Pipeline::start_stages(Store::Postgres(pg.url()), &[UNLIMITED]).await;
    let tokens = login_all(&p).await;
    let (first, de, ate) = (d("2026-10-01"), d("2026-09-30"), d("2026-10-31"));
    let load =
        tokio::spawn(post_entries(p.api.clone(), tokens.clone(), random_entries(&MERCHANTS, 8_000, first, 30), 16));

    tokio::time::sleep(Duration::from_millis(700)).await;
    pg.stop_server();
    tokio::time::sleep(Duration::from_secs(10)).await;
    pg.start_server();

    let posted = load.await.unwrap();
    let mut oracle = Oracle::default();
    for (e, status) in posted {
        // Ingest does not need the store: it answers from the broker's ack alone.
        assert_eq!(status, 202, "{e:?}");
        oracle.add(e);
    }
    assert_matches_oracle(&p, &tokens, &oracle, de, ate).await;
    assert_eq!(p.records_in("lancamentos.retry"), 0, "an outage must not send records to the error path");
    assert_eq!(p.records_in("lancamentos.dlq"), 0, "an outage must not park records");
    p.stop().await;
}

/// Two consolidators in one consumer group; the one consuming is killed mid-load and the other
/// takes its partitions over, from the store's positions. Every entry counts once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_consolidator_in_the_group_takes_over_after_a_kill() {
    let mut p = Pipeline::start_stages(Store::Sqlite, &[UNLIMITED]).await;
    p.launch(Role::SecondConsolidator).await;
    let tokens = login_all(&p).await;
    let (first, de, ate) = (d("2026-11-01"), d("2026-10-31"), d("2026-11-30"));
    let load =
        tokio::spawn(post_entries(p.api.clone(), tokens.clone(), random_entries(&MERCHANTS, 10_000, first, 30), 32));
    // Kill once the group is consolidating (a member has logged its assignment).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while p.log_matching("partitions reassigned").is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    p.kill(Role::Consolidate);

    let mut oracle = Oracle::default();
    for (e, status) in load.await.unwrap() {
        assert_eq!(status, 202, "{e:?}");
        oracle.add(e);
    }
    assert_matches_oracle(&p, &tokens, &oracle, de, ate).await;
    let assignments = p.log_matching("partitions reassigned");
    eprintln!("{}", assignments.join("\n"));
    assert!(assignments.len() >= 2, "partitions were not taken over after the kill: {assignments:?}");
}
