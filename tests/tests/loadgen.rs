//! `cashflow loadgen` against `cashflow up`: it authenticates like a client, reports every
//! operation, and every entry it reports accepted is counted once in the balances.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use cashflow_tests::{PASSWORD, Pipeline, Store};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_reports_each_operation_and_every_accepted_entry_is_counted_once() {
    let p = Pipeline::start(Store::Sqlite).await;
    let merchants = 10; // each well under the per-merchant rate limit
    let out = p
        .cashflow()
        .args(["loadgen", "--target", &p.api.base, "--duration", "3", "--connections", "8"])
        .args(["--merchants", &merchants.to_string(), "--days", "10", "--batch-size", "20", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "loadgen failed: {}", String::from_utf8_lossy(&out.stderr));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    println!("{summary}");
    for op in ["ingest", "batch", "query"] {
        let s = &summary["operations"][op];
        assert!(s["requests"].as_u64().unwrap() > 0, "{op}: {summary}");
        assert_eq!(s["errors"], serde_json::json!({}), "{op}: {summary}");
        assert!(s["p99_ms"].as_f64().unwrap() >= s["p50_ms"].as_f64().unwrap());
    }
    let accepted = summary["entries_accepted"].as_u64().unwrap();
    assert!(accepted > 0);

    // The balances of the load's merchants over its 10 days count exactly the accepted entries.
    let today = chrono::Utc::now().date_naive();
    let de = (today - chrono::Days::new(9)).to_string();
    let mut tokens = Vec::new();
    for n in 1..=merchants {
        p.add_user(&format!("loadgen-{n}"), &format!("checker-{n}"), PASSWORD);
        tokens.push(p.api.token(&format!("checker-{n}"), PASSWORD).await);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut counted = 0;
        for token in &tokens {
            let days = p.api.daily(token, &de, &today.to_string()).await;
            counted += days["dias"].as_array().unwrap().iter().map(|d| d["lancamentos"].as_u64().unwrap()).sum::<u64>();
        }
        if counted == accepted {
            break;
        }
        assert!(counted < accepted, "counted {counted} entries, only {accepted} were accepted");
        assert!(Instant::now() < deadline, "counted {counted} of {accepted} accepted entries after 60 s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
