//! The whole pipeline through HTTP only, against the plain-recomputation oracle, on both stores.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use cashflow_core::BusinessDate;

use cashflow_tests::{
    MERCHANTS, Oracle, Pipeline, Posted, Store, assert_matches_oracle, d, fresh_postgres_database, login_all, post_all,
    random_entries,
};

async fn pipeline_matches_the_oracle(store: Store) {
    let mut p = Pipeline::start(store).await;
    let tokens = login_all(&p).await;
    let mut oracle = Oracle::default();
    let (first, de, ate) = (d("2026-03-01"), d("2026-02-27"), d("2026-04-02"));

    post_all(&p, &tokens, random_entries(&MERCHANTS, 1000, first, 30), &mut oracle).await;
    assert_matches_oracle(&p, &tokens, &oracle, de, ate).await;

    // A restart keeps every balance, and new (backdated) entries still consolidate.
    p.restart().await;
    let tokens = login_all(&p).await;
    assert_matches_oracle(&p, &tokens, &oracle, de, ate).await;
    post_all(&p, &tokens, random_entries(&MERCHANTS, 90, first, 5), &mut oracle).await;
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
    let range = p.api.daily(&tokens["loja-a"], "2026-03-03", "2026-03-03").await;
    assert_eq!(one["dia"], range["dias"][0]);

    // With nothing left to consolidate, reads come from memory (the gateway counts them), and
    // every window of the range, each with its own opening balance, still matches the oracle.
    let hits = |m: &cashflow_tests::Metrics| m.must("cashflow_query_balance_cache_lookups_total{outcome=\"hit\"}");
    let before = hits(&p.api.metrics(&p.api.base).await);
    for m in MERCHANTS {
        for start in (0..=ate.days() - de.days()).step_by(3) {
            let from = BusinessDate::from_days(de.days() + start).unwrap();
            let answer = p.api.daily(&tokens[m], &from.to_string(), &ate.to_string()).await;
            let mismatches = oracle.mismatches(m, from, ate, &answer);
            assert!(mismatches.is_empty(), "{m} {from}..{ate}: {:#?}", &mismatches[..mismatches.len().min(5)]);
        }
    }
    let after = hits(&p.api.metrics(&p.api.base).await);
    assert!(after > before, "no balance was answered from memory ({before} hits before, {after} after)");
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
    let e = Posted { merchant: "loja-a".into(), credit: true, cents: 12_345, date: d("2026-05-05") };
    let mut ids = Vec::new();
    for _ in 0..3 {
        let r = p.api.post_entry(&tokens["loja-a"], &e.body("retry"), Some("pedido-42")).await;
        assert_eq!(r.status(), 202);
        ids.push(r.json::<serde_json::Value>().await.unwrap()["id"].clone());
    }
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "ids differ: {ids:?}");
    // The same key from another merchant is another entry.
    let other = Posted { merchant: "loja-b".into(), ..e.clone() };
    let r = p.api.post_entry(&tokens["loja-b"], &other.body("retry"), Some("pedido-42")).await;
    assert_eq!(r.status(), 202);
    assert_ne!(r.json::<serde_json::Value>().await.unwrap()["id"], ids[0]);

    let mut oracle = Oracle::default();
    oracle.add(e);
    oracle.add(other);
    assert_matches_oracle(&p, &tokens, &oracle, d("2026-05-04"), d("2026-05-06")).await;
}

/// Records produced straight to Kafka: each twice (the second time on another partition), a
/// conflicting reuse of an id, and a malformed record. Each entry counts once; the conflict is
/// parked; the malformed record goes to the retry topic with its headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_and_conflicting_records_count_once() {
    use cashflow_core::{EntryId, Lancamento, MerchantId, Money, Tipo};
    let p = Pipeline::start(Store::Sqlite).await;
    let tokens = login_all(&p).await;
    let mut oracle = Oracle::default();
    let entries = random_entries(&MERCHANTS, 150, d("2026-06-01"), 10);
    let as_wire = |e: &Posted| Lancamento {
        id: EntryId::random(),
        merchant_id: MerchantId::parse(&e.merchant).unwrap(),
        tipo: if e.credit { Tipo::Credito } else { Tipo::Debito },
        valor: Money::from_cents(e.cents),
        data: e.date,
        descricao: "direct".into(),
        categoria: None,
        criado_em: chrono::Utc::now(),
        estorno_de: None,
    };
    let wire: Vec<Lancamento> = entries.iter().map(as_wire).collect();
    let mut records: Vec<(Option<i32>, &str, Vec<u8>)> = Vec::new();
    for (i, l) in wire.iter().enumerate() {
        records.push((None, l.merchant_id.as_str(), l.encode()));
        // The same record again, on a partition of its own choosing.
        records.push((Some((i % 6) as i32), l.merchant_id.as_str(), l.encode()));
    }
    for e in entries {
        oracle.add(e);
    }
    // The same id with another amount, after the original on the original's partition.
    let mut conflicting = wire[0].clone();
    conflicting.valor = Money::from_cents(conflicting.valor.cents() + 1);
    records.push((None, conflicting.merchant_id.as_str(), conflicting.encode()));
    records.push((Some(2), "loja-a", b"{\"v\":1,\"id\":".to_vec()));
    p.produce("lancamentos", &records).await;

    assert_matches_oracle(&p, &tokens, &oracle, d("2026-05-31"), d("2026-06-11")).await;

    let parked = p.read_topic("lancamentos.dlq", 1, Duration::from_secs(30));
    assert_eq!(parked.len(), 1, "the conflict must be parked");
    assert_eq!(parked[0].header("x-error-code"), Some("conflicting_duplicate"));
    assert_eq!(parked[0].payload, conflicting.encode(), "the parked value is the original, unchanged");

    let retried = p.read_topic("lancamentos.retry", 1, Duration::from_secs(30));
    assert_eq!(retried.len(), 1);
    let r = &retried[0];
    assert_eq!(r.header("x-error-code"), Some("malformed"));
    assert_eq!(r.header("x-attempt"), Some("0"), "no retries yet");
    assert_eq!(r.header("x-origin-topic"), Some("lancamentos"));
    assert_eq!(r.header("x-origin-partition"), Some("2"));
    let first: i64 = r.header("x-first-failed-at").unwrap().parse().unwrap();
    let not_before: i64 = r.header("x-not-before").unwrap().parse().unwrap();
    let delay = not_before - first;
    assert!(
        (1000..=1250).contains(&delay),
        "{delay} ms: the first backoff step of pipeline.yaml, up to a quarter more"
    );
}
