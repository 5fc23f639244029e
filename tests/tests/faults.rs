//! Faults: the consolidator killed with SIGKILL mid-load, and consolidation down while merchants
//! keep posting. Every entry is counted once, checked against the oracle.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use cashflow_tests::{
    MERCHANTS, Oracle, Pipeline, Role, Store, assert_matches_oracle, d, login_all, post_entries,
    random_entries,
};
use rand::Rng;

/// Load tests post far above the shipped per-merchant rate limit.
const UNLIMITED: (&str, &str) = (
    "rate_limit: { per_second: 200, burst: 400 }",
    "rate_limit: { per_second: 1000000, burst: 1000000 }",
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consolidator_killed_five_times_mid_load_loses_and_doubles_nothing() {
    let mut p = Pipeline::start_stages(Store::Sqlite, &[UNLIMITED]).await;
    let tokens = login_all(&p).await;
    let (first, de, ate) = (d("2026-07-01"), d("2026-06-30"), d("2026-07-31"));
    let load = tokio::spawn(post_entries(
        p.api.clone(),
        tokens.clone(),
        random_entries(&MERCHANTS, 20_000, first, 30),
        32,
    ));

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
    let posted = post_entries(
        p.api.clone(),
        tokens.clone(),
        random_entries(&MERCHANTS, 5_000, first, 30),
        32,
    )
    .await;
    let mut oracle = Oracle::default();
    let accepted = posted.iter().filter(|(_, s)| *s == 202).count();
    assert_eq!(
        accepted, 5_000,
        "every entry must be accepted while consolidation is down"
    );
    for (e, _) in posted {
        oracle.add(e);
    }

    let started = Instant::now();
    p.launch(Role::Consolidate).await;
    assert_matches_oracle(&p, &tokens, &oracle, de, ate).await;
    eprintln!(
        "caught up with 5000 waiting entries in {:?}",
        started.elapsed()
    );
}
