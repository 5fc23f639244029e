//! `cashflow-chaos`: runs a load against the pipeline (broker, gateway and consolidator as separate
//! processes) while killing and restarting its parts, then compares every balance with the oracle
//! and prints how many entries were lost and how many were counted twice.
//!
//! `cashflow-chaos [ROUNDS] [ENTRIES_PER_ROUND] [MAX_SECONDS]` (defaults 10, 500, 600). Exits 1 if
//! anything was lost or doubled. Bounded in rounds and in time; talks to 127.0.0.1 only.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use cashflow_tests::{MERCHANTS, Oracle, Pipeline, Role, Store, d, login_all, post_until_accepted, random_entries};
use futures::StreamExt as _;
use rand::Rng;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let rounds = args.first().copied().unwrap_or(10);
    let per_round = args.get(1).copied().unwrap_or(500) as usize;
    let budget = Duration::from_secs(args.get(2).copied().unwrap_or(600));
    let started = Instant::now();
    let mut p = Pipeline::start_stages(Store::Sqlite, &[cashflow_tests::UNLIMITED]).await;
    let tokens = login_all(&p).await;
    let (first, de, ate) = (d("2026-01-01"), d("2025-12-31"), d("2026-02-01"));
    let mut oracle = Oracle::default();
    let victims = [Role::Consolidate, Role::Broker, Role::Gateway];

    for round in 0..rounds {
        if started.elapsed() > budget {
            println!("time budget reached after {round} rounds");
            break;
        }
        let (api, toks) = (p.api.clone(), tokens.clone());
        let entries = random_entries(&MERCHANTS, per_round, first, 31);
        let load = tokio::spawn(async move {
            futures::stream::iter(entries.into_iter().enumerate())
                .map(|(i, e)| {
                    let (api, token) = (api.clone(), toks[e.merchant.as_str()].clone());
                    async move {
                        let attempts = post_until_accepted(&api, &token, &e, &format!("r{round}-{i}")).await;
                        (e, attempts)
                    }
                })
                .buffer_unordered(16)
                .collect::<Vec<_>>()
                .await
        });
        let (victim, pause, down) = {
            let mut rng = rand::thread_rng();
            (victims[rng.gen_range(0..victims.len())], rng.gen_range(50..500), rng.gen_range(100..1500))
        };
        tokio::time::sleep(Duration::from_millis(pause)).await;
        p.kill(victim);
        tokio::time::sleep(Duration::from_millis(down)).await;
        p.launch(victim).await;
        let posted = load.await.unwrap();
        let retries: u32 = posted.iter().map(|(_, a)| a - 1).sum();
        for (e, _) in posted {
            oracle.add(e);
        }
        println!(
            "round {round:>3}: killed {victim:?} for {down} ms; {per_round} entries accepted, {retries} client retries"
        );
    }

    // Let consolidation catch up, then judge every merchant-day.
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut lost, mut duplicated, mut mismatches) = (0, 0, 0);
    for m in MERCHANTS {
        let answer = loop {
            let answer = p.api.daily(&tokens[m], &de.to_string(), &ate.to_string()).await;
            let (l, _) = oracle.lost_and_duplicated(m, &answer);
            if l == 0 || Instant::now() > deadline {
                break answer;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let (l, dup) = oracle.lost_and_duplicated(m, &answer);
        lost += l;
        duplicated += dup;
        mismatches += oracle.mismatches(m, de, ate, &answer).len();
    }
    let total: usize = MERCHANTS.iter().map(|m| oracle.count(m)).sum();
    println!(
        "entries accepted: {total}; lost: {lost}; counted twice: {duplicated}; days differing from the oracle: {mismatches}; {:.0?}",
        started.elapsed()
    );
    p.stop().await;
    if lost == 0 && duplicated == 0 && mismatches == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
