//! Scaling out: consolidators of one group split the partitions, as the Kafka admin API
//! (`DescribeGroups`, what `kafka-consumer-groups --describe` calls) and each member's metrics
//! show, through a kill and a join under load; the gateway spreads over replicas of the HTTP
//! stages; brokers over shared storage carry on when one dies. Every balance equals the oracle.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cashflow_tests::{
    Group, MERCHANTS, Oracle, Pipeline, Posted, Role, Store, UNLIMITED, assert_matches_oracle, d, describe_group,
    fresh_postgres_database, login_all, post_entries, random_entries,
};

const GROUP: &str = "cashflow-consolidate";

/// Waits until the group has `members` members owning the 6 partitions as evenly as they can
/// (⌊6/N⌋ or ⌈6/N⌉ each), each partition once; returns what the admin API showed.
async fn settled(p: &Pipeline, members: usize, want: &[usize]) -> Group {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let described = tokio::task::block_in_place(|| describe_group(&p.kafka, GROUP));
        if let Ok(g) = &described
            && g.state == "Stable"
            && g.members.len() == members
            && g.counts() == want
        {
            let mut owned: Vec<(String, i32)> = g.members.iter().flat_map(|m| m.partitions.clone()).collect();
            owned.sort();
            let all: Vec<(String, i32)> = (0..6).map(|i| ("lancamentos".to_owned(), i)).collect();
            assert_eq!(owned, all, "every partition owned once: {g:#?}");
            return described.unwrap();
        }
        assert!(Instant::now() < deadline, "the group did not settle as {want:?} in 90 s; last seen: {described:#?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits until the running consolidators' metrics say they own `want` partitions (fewest
/// first): a member learns its assignment just after the coordinator settles.
async fn owned_by_metrics(p: &Pipeline, roles: &[Role], want: &[usize]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut owned = Vec::new();
        for role in roles {
            let metrics = p.api.metrics(&p.stages[role]).await;
            owned.push(
                metrics.value("cashflow_pipeline_partitions_owned{stage=\"consolidate\"}").unwrap_or(0.0) as usize
            );
        }
        owned.sort_unstable();
        if owned == want {
            return;
        }
        assert!(Instant::now() < deadline, "the members' metrics say {owned:?}, not {want:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consolidators_split_the_partitions_through_a_kill_and_a_join_under_load() {
    let store = Store::Postgres(fresh_postgres_database().await);
    let mut p = Pipeline::configure(store, &[UNLIMITED]);
    let members = [Role::Consolidate, Role::SecondConsolidator, Role::ExtraConsolidator(3)];
    for role in [Role::Broker, Role::Gateway].into_iter().chain(members) {
        p.launch(role).await;
    }
    let tokens = login_all(&p).await;
    // The load: entries posted, 200 at a time, until the group has been through it all.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let posting = tokio::spawn({
        let (api, tokens, stop) = (p.api.clone(), tokens.clone(), stop.clone());
        async move {
            let mut posted = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let load = random_entries(&MERCHANTS, 200, d("2026-01-01"), 200);
                posted.extend(post_entries(api.clone(), tokens.clone(), load, 4).await);
            }
            posted
        }
    });

    let split = settled(&p, 3, &[2, 2, 2]).await;
    println!("3 members: {split:#?}");
    owned_by_metrics(&p, &members, &[2, 2, 2]).await;

    p.kill(Role::SecondConsolidator);
    let after_kill = settled(&p, 2, &[3, 3]).await;
    println!("after kill -9 of one: {after_kill:#?}");

    p.launch(Role::ExtraConsolidator(4)).await;
    let after_join = settled(&p, 3, &[2, 2, 2]).await;
    println!("after a fourth joined: {after_join:#?}");
    let running = [Role::Consolidate, Role::ExtraConsolidator(3), Role::ExtraConsolidator(4)];
    owned_by_metrics(&p, &running, &[2, 2, 2]).await;

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let posted = posting.await.unwrap();
    assert!(posted.len() >= 1_000, "only {} entries were posted during the changes", posted.len());
    let mut oracle = Oracle::default();
    for (e, status) in posted {
        assert_eq!(status, 202, "{e:?}");
        oracle.add(e);
    }
    assert_matches_oracle(&p, &tokens, &oracle, d("2026-01-01"), d("2026-12-31")).await;
}

/// Clients of every merchant posting entries (each retried on a 503 with its Idempotency-Key, as
/// the README says) and reading that day's balance, until stopped; every status, the slowest
/// answer and the time of each 202 are kept.
struct Load {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    clients: Vec<tokio::task::JoinHandle<Vec<Posted>>>,
}

#[derive(Debug, Default)]
struct Seen {
    statuses: BTreeMap<u16, usize>,
    slowest: Duration,
    accepted_at: Vec<Instant>,
    /// The last answers' statuses (post, read), newest last.
    last: std::collections::VecDeque<[u16; 2]>,
}

impl Load {
    fn start(p: &Pipeline, tokens: &HashMap<&'static str, String>, day: &'static str) -> Load {
        let (stop, seen) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Seen::default())));
        let mut clients = Vec::new();
        for (c, merchant) in MERCHANTS.iter().enumerate() {
            let (api, token, stop, seen) = (p.api.clone(), tokens[merchant].clone(), stop.clone(), seen.clone());
            let merchant = merchant.to_string();
            clients.push(tokio::spawn(async move {
                let mut accepted = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let e = Posted { merchant: merchant.clone(), credit: i % 3 != 0, cents: 100 + i, date: d(day) };
                    let key = format!("load-{c}-{i}");
                    loop {
                        let started = Instant::now();
                        let status = api.try_post_entry(&token, &e.body("venda"), Some(&key)).await.unwrap_or(0);
                        let query = format!("/v1/consolidado/diario?de={day}&ate={day}");
                        let read = api.get(&token, &query).await.status().as_u16();
                        seen.lock().unwrap().note(started.elapsed(), [status, read]);
                        if status == 202 {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    accepted.push(e);
                }
                accepted
            }));
        }
        Load { stop, seen, clients }
    }

    /// Stops the clients; what they saw, and the oracle of every entry accepted. A client stops
    /// once its entry in hand is accepted: if that takes over a minute, the test fails with the
    /// statuses seen and the pipeline's log, instead of waiting for the runner's timeout.
    async fn finish(self, p: &Pipeline) -> (Seen, Oracle) {
        self.stop.store(true, Ordering::Relaxed);
        let Ok(clients) = tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(self.clients)).await
        else {
            let seen = self.seen.lock().unwrap();
            let (statuses, last) = (&seen.statuses, &seen.last);
            panic!("a client's entry was not accepted in 60 s: {statuses:?}, last {last:?}\n{}", p.log_tail());
        };
        let mut oracle = Oracle::default();
        for e in clients.into_iter().flat_map(Result::unwrap) {
            oracle.add(e);
        }
        let seen = std::mem::take(&mut *self.seen.lock().unwrap());
        (seen, oracle)
    }
}

impl Seen {
    fn note(&mut self, took: Duration, statuses: [u16; 2]) {
        self.slowest = self.slowest.max(took);
        for status in statuses {
            *self.statuses.entry(status).or_default() += 1;
        }
        if self.last.len() == 10 {
            self.last.pop_front();
        }
        self.last.push_back(statuses);
        if statuses[0] == 202 {
            self.accepted_at.push(Instant::now());
        }
    }

    /// The longest time without a 202 between `from` and `to`.
    fn longest_gap(&self, from: Instant, to: Instant) -> Duration {
        let mut at: Vec<Instant> = self.accepted_at.iter().copied().filter(|t| (from..to).contains(t)).collect();
        at.sort();
        at.insert(0, from);
        at.push(to);
        at.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_spreads_over_replicas_and_a_replica_killed_under_load_costs_only_clear_503s() {
    let store = Store::Postgres(fresh_postgres_database().await);
    let mut p = Pipeline::start_distributed_with(store, true, &[UNLIMITED]).await;
    let tokens = login_all(&p).await;
    let load = Load::start(&p, &tokens, "2026-03-01");

    tokio::time::sleep(Duration::from_secs(2)).await;
    p.kill(Role::IngestReplica);
    p.kill(Role::QueryReplica);
    tokio::time::sleep(Duration::from_secs(3)).await;
    p.launch(Role::IngestReplica).await;
    p.launch(Role::QueryReplica).await;
    // Back in rotation within the health check (1 s): the gateway counts both replicas ready.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = p.api.metrics(&p.api.base).await;
        let ready = |stage: &str| m.value(&format!("cashflow_gateway_upstream_replicas_ready{{stage=\"{stage}\"}}"));
        if ready("ingest") == Some(2.0) && ready("query") == Some(2.0) {
            break;
        }
        assert!(Instant::now() < deadline, "the restarted replicas were not put back in 10 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (seen, oracle) = load.finish(&p).await;

    println!("statuses seen: {:?}, slowest answer {:?}", seen.statuses, seen.slowest);
    assert!(seen.statuses.keys().all(|s| [200, 202, 503].contains(s)), "only 200, 202 and clear 503s: {seen:?}");
    assert!(seen.slowest < Duration::from_secs(10), "an answer waited: {:?}", seen.slowest);
    assert!(oracle.count(MERCHANTS[0]) > 10, "the load went on: {:?}", seen.statuses);
    assert_matches_oracle(&p, &tokens, &oracle, d("2026-03-01"), d("2026-03-01")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_brokers_on_shared_storage_each_killed_under_load_lose_and_double_count_nothing() {
    let store = Store::Postgres(fresh_postgres_database().await);
    let broker_storage = fresh_postgres_database().await;
    let mut p = Pipeline::configure_broker_cluster(store, &broker_storage, &[UNLIMITED]);
    let roles = [Role::Broker, Role::SecondBroker, Role::Gateway, Role::Consolidate, Role::SecondConsolidator];
    for role in roles.into_iter().chain([Role::Retry]) {
        p.launch(role).await;
    }
    // The storage URL (it may hold a password) reaches each broker in its environment, which only
    // its user can read, not in its arguments, which anyone can.
    for role in [Role::Broker, Role::SecondBroker] {
        let brokers = cashflow_tests::child_pids(p.pid(role));
        assert_eq!(brokers.len(), 1, "{role:?} runs one cashflow-broker");
        let arguments = std::fs::read_to_string(format!("/proc/{}/cmdline", brokers[0])).unwrap();
        assert!(arguments.contains("--listener-url") && !arguments.contains("postgres://"), "{arguments:?}");
    }
    let tokens = login_all(&p).await;
    let load = Load::start(&p, &tokens, "2026-04-01");
    let before = settled(&p, 2, &[3, 3]).await;
    println!("2 consolidators, both brokers up: {before:#?}");

    // Each broker is killed in turn under load (kill -9), and started again: whichever broker a
    // client talks to, one of the kills is its broker's.
    let mut outages = Vec::new();
    for victim in [Role::Broker, Role::SecondBroker] {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let killed_at = Instant::now();
        p.kill(victim);
        tokio::time::sleep(Duration::from_secs(8)).await;
        let during = settled(&p, 2, &[3, 3]).await;
        println!("{victim:?} killed: {during:#?}");
        let restarted_at = Instant::now();
        p.launch(victim).await;
        outages.push((victim, killed_at, restarted_at));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (seen, oracle) = load.finish(&p).await;

    println!("statuses seen: {:?}; slowest answer: {:?}", seen.statuses, seen.slowest);
    let statuses = &seen.statuses;
    for (victim, killed_at, restarted_at) in outages {
        let accepted = seen.accepted_at.iter().filter(|&&t| (killed_at..restarted_at).contains(&t)).count();
        let gap = seen.longest_gap(killed_at, restarted_at);
        let down = restarted_at - killed_at;
        println!("{victim:?} down for {down:?}: {accepted} entries accepted, longest time without one {gap:?}");
        // Carried on: entries kept being accepted, with no pause as long as ingest's ack timeout
        // (5 s, after which a client would get 503s); seen here: 0.01 to 3.05 s.
        assert!(gap < Duration::from_secs(5), "{victim:?} down: {gap:?} without an accepted entry; {statuses:?}");
        assert!(accepted >= 100, "{victim:?} down: only {accepted} entries accepted; {statuses:?}");
    }
    assert!(statuses.keys().all(|s| [200, 202, 503].contains(s)), "only 200, 202 and clear 503s: {statuses:?}");
    assert_matches_oracle(&p, &tokens, &oracle, d("2026-04-01"), d("2026-04-01")).await;
    // Every record on the topic, through either broker, is a stored entry or a duplicate of one.
    let audit = p.cli(&["audit"], "");
    let report = String::from_utf8_lossy(&audit.stdout);
    assert!(audit.status.success(), "audit: {report}\n{}", String::from_utf8_lossy(&audit.stderr));
    println!("audit: {report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_is_refused_a_log_it_cannot_share_and_an_address_clients_are_not_given() {
    // Taken, so that a broker not refused stops at once (the address is in use) instead of running.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = listener.local_addr().unwrap().to_string();
    let brokers = format!("brokers: \"{taken},127.0.0.1:2\"");
    let p = Pipeline::configure(Store::Sqlite, &[("brokers: embedded", brokers.as_str())]);
    let out = p.cli(&["run", "broker", "--listen", &taken], "");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("kafka.embedded.storage: a SQLite log is served by one broker, but kafka.brokers lists 2"),
        "{said}"
    );

    let storage = ("storage: sqlite", "storage: \"postgres://127.0.0.1:1/broker\"");
    let p = Pipeline::configure(Store::Sqlite, &[("brokers: embedded", "brokers: \"k1:9092,k2:9092\""), storage]);
    let out = p.cli(&["run", "broker", "--listen", "0.0.0.0:9092"], "");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    let expected = "kafka.embedded.advertise: this broker would be reached at 0.0.0.0:9092, which kafka.brokers \
                    (k1:9092,k2:9092) does not list";
    assert!(said.contains(expected), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_whose_members_all_left_takes_the_next_member_in() {
    let store = Store::Postgres(fresh_postgres_database().await);
    let mut p = Pipeline::configure(store, &[UNLIMITED]);
    let members = [Role::Consolidate, Role::SecondConsolidator, Role::ExtraConsolidator(3)];
    for role in [Role::Broker].into_iter().chain(members) {
        p.launch(role).await;
    }
    // Ctrl-C to each, one after another, while the group is still forming: each leaves it, the
    // leader among them.
    for role in members {
        p.interrupt(role).await;
    }
    p.launch(Role::ExtraConsolidator(4)).await;
    let alone = settled(&p, 1, &[6]).await;
    println!("the next member: {alone:#?}");
}
