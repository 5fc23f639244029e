//! The steps every end-to-end test shares: log in, post, and compare with the oracle.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cashflow_core::BusinessDate;
use futures::StreamExt as _;

use crate::{Api, Oracle, Pipeline, Posted};

pub const MERCHANTS: [&str; 3] = ["loja-a", "loja-b", "loja-c"];
pub const PASSWORD: &str = "correct horse battery";

pub fn d(s: &str) -> BusinessDate {
    s.parse().unwrap()
}

pub async fn login_all(p: &Pipeline) -> HashMap<&'static str, String> {
    let mut tokens = HashMap::new();
    for m in MERCHANTS {
        p.add_user(m, &format!("user-{m}"), PASSWORD);
        tokens.insert(m, p.api.token(&format!("user-{m}"), PASSWORD).await);
    }
    tokens
}

/// Posts every entry, `concurrency` at a time; returns each with its HTTP status.
pub async fn post_entries(
    api: Api,
    tokens: HashMap<&'static str, String>,
    entries: Vec<Posted>,
    concurrency: usize,
) -> Vec<(Posted, u16)> {
    futures::stream::iter(entries)
        .map(|e| {
            let (api, token) = (api.clone(), tokens[e.merchant.as_str()].clone());
            async move {
                let r = api.post_entry(&token, &e.body("venda"), None).await;
                (e, r.status().as_u16())
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await
}

/// Posts every entry (16 at a time); each must be accepted with 202.
pub async fn post_all(p: &Pipeline, tokens: &HashMap<&'static str, String>, entries: Vec<Posted>, oracle: &mut Oracle) {
    for (e, status) in post_entries(p.api.clone(), tokens.clone(), entries, 16).await {
        assert_eq!(status, 202, "entry {e:?} not accepted");
        oracle.add(e);
    }
}

/// Waits until every merchant's day count matches what was accepted, then compares every day.
pub async fn assert_matches_oracle(
    p: &Pipeline,
    tokens: &HashMap<&'static str, String>,
    oracle: &Oracle,
    de: BusinessDate,
    ate: BusinessDate,
) {
    assert_matches_oracle_within(p, tokens, oracle, (de, ate), Duration::from_secs(120)).await;
}

/// [`assert_matches_oracle`], waiting at most `wait` for the counts to match.
pub async fn assert_matches_oracle_within(
    p: &Pipeline,
    tokens: &HashMap<&'static str, String>,
    oracle: &Oracle,
    (de, ate): (BusinessDate, BusinessDate),
    wait: Duration,
) {
    let deadline = Instant::now() + wait;
    for m in MERCHANTS {
        let answer = loop {
            let answer = p.api.daily(&tokens[m], &de.to_string(), &ate.to_string()).await;
            let counted: u64 =
                answer["dias"].as_array().unwrap().iter().map(|d| d["lancamentos"].as_u64().unwrap()).sum();
            if counted as usize >= oracle.count_in(m, de, ate) || Instant::now() > deadline {
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
        assert!(answer["atualizado_ate"].is_string(), "atualizado_ate missing: {answer}");
    }
}

/// Posts one entry until it is accepted, as a well-behaved client does: a 503 is retried with
/// the same `Idempotency-Key`, so an entry whose first attempt did land is still counted once.
pub async fn post_until_accepted(api: &Api, token: &str, e: &Posted, key: &str) -> u32 {
    let mut attempts = 0;
    loop {
        attempts += 1;
        match api.try_post_entry(token, &e.body("venda"), Some(key)).await {
            Some(202) => return attempts,
            // 503, or the gateway itself is down: wait and retry with the same key.
            Some(503) | None => tokio::time::sleep(Duration::from_millis(300)).await,
            Some(other) => panic!("unexpected status {other} for {e:?}"),
        }
        assert!(attempts < 40, "entry never accepted: {e:?}");
    }
}
