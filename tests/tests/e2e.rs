//! The whole pipeline through HTTP only, against the plain-recomputation oracle, on both stores.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cashflow_core::BusinessDate;
use cashflow_tests::{Oracle, Pipeline, Posted, Store, fresh_postgres_database, random_entries};
use futures::StreamExt as _;

const MERCHANTS: [&str; 3] = ["loja-a", "loja-b", "loja-c"];
const PASSWORD: &str = "correct horse battery";

fn d(s: &str) -> BusinessDate {
    s.parse().unwrap()
}

async fn login_all(p: &Pipeline) -> HashMap<&'static str, String> {
    let mut tokens = HashMap::new();
    for m in MERCHANTS {
        p.add_user(m, &format!("user-{m}"), PASSWORD);
        tokens.insert(m, p.api.token(&format!("user-{m}"), PASSWORD).await);
    }
    tokens
}

/// Posts every entry (16 at a time); each must be accepted with 202.
async fn post_all(
    p: &Pipeline,
    tokens: &HashMap<&str, String>,
    entries: Vec<Posted>,
    oracle: &mut Oracle,
) {
    let results: Vec<(Posted, u16)> = futures::stream::iter(entries)
        .map(|e| async {
            let r = p
                .api
                .post_entry(&tokens[e.merchant.as_str()], &e.body("venda"), None)
                .await;
            (e, r.status().as_u16())
        })
        .buffer_unordered(16)
        .collect()
        .await;
    for (e, status) in results {
        assert_eq!(status, 202, "entry {e:?} not accepted");
        oracle.add(e);
    }
}

/// Waits until every merchant's day count matches what was accepted, then compares every day.
async fn assert_matches_oracle(
    p: &Pipeline,
    tokens: &HashMap<&str, String>,
    oracle: &Oracle,
    de: BusinessDate,
    ate: BusinessDate,
) {
    let deadline = Instant::now() + Duration::from_secs(120);
    for m in MERCHANTS {
        let answer = loop {
            let answer = p
                .api
                .daily(&tokens[m], &de.to_string(), &ate.to_string())
                .await;
            let counted: u64 = answer["dias"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["lancamentos"].as_u64().unwrap())
                .sum();
            if counted as usize >= oracle.count(m) || Instant::now() > deadline {
                break answer;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let mismatches = oracle.mismatches(m, de, ate, &answer);
        assert!(
            mismatches.is_empty(),
            "{} mismatches, first: {:#?}",
            mismatches.len(),
            &mismatches[..mismatches.len().min(5)]
        );
        assert!(
            answer["atualizado_ate"].is_string(),
            "atualizado_ate missing: {answer}"
        );
    }
}

async fn pipeline_matches_the_oracle(store: Store) {
    let mut p = Pipeline::start(store).await;
    let tokens = login_all(&p).await;
    let mut oracle = Oracle::default();
    let (first, de, ate) = (d("2026-03-01"), d("2026-02-27"), d("2026-04-02"));

    post_all(
        &p,
        &tokens,
        random_entries(&MERCHANTS, 1000, first, 30),
        &mut oracle,
    )
    .await;
    assert_matches_oracle(&p, &tokens, &oracle, de, ate).await;

    // A restart keeps every balance, and new (backdated) entries still consolidate.
    p.restart().await;
    let tokens = login_all(&p).await;
    assert_matches_oracle(&p, &tokens, &oracle, de, ate).await;
    post_all(
        &p,
        &tokens,
        random_entries(&MERCHANTS, 90, first, 5),
        &mut oracle,
    )
    .await;
    assert_matches_oracle(&p, &tokens, &oracle, de, ate).await;

    // One day, by path.
    let r = p
        .api
        .client
        .get(format!("{}/v1/consolidado/diario/2026-03-03", p.api.base))
        .bearer_auth(&tokens["loja-a"])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let one: serde_json::Value = r.json().await.unwrap();
    let range = p
        .api
        .daily(&tokens["loja-a"], "2026-03-03", "2026-03-03")
        .await;
    assert_eq!(one["dia"], range["dias"][0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_sqlite_pipeline_matches_the_oracle() {
    pipeline_matches_the_oracle(Store::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_pipeline_matches_the_oracle() {
    let url = fresh_postgres_database().await;
    pipeline_matches_the_oracle(Store::Postgres(url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_counts_an_entry_once() {
    let p = Pipeline::start(Store::Sqlite).await;
    let tokens = login_all(&p).await;
    let e = Posted {
        merchant: "loja-a".into(),
        credit: true,
        cents: 12_345,
        date: d("2026-05-05"),
    };
    let mut ids = Vec::new();
    for _ in 0..3 {
        let r = p
            .api
            .post_entry(&tokens["loja-a"], &e.body("retry"), Some("pedido-42"))
            .await;
        assert_eq!(r.status(), 202);
        ids.push(r.json::<serde_json::Value>().await.unwrap()["id"].clone());
    }
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "ids differ: {ids:?}");
    // The same key from another merchant is another entry.
    let other = Posted {
        merchant: "loja-b".into(),
        ..e.clone()
    };
    let r = p
        .api
        .post_entry(&tokens["loja-b"], &other.body("retry"), Some("pedido-42"))
        .await;
    assert_eq!(r.status(), 202);
    assert_ne!(r.json::<serde_json::Value>().await.unwrap()["id"], ids[0]);

    let mut oracle = Oracle::default();
    oracle.add(e);
    oracle.add(other);
    assert_matches_oracle(&p, &tokens, &oracle, d("2026-05-04"), d("2026-05-06")).await;
}
