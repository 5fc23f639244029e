//! Every accepted entry counted exactly once when the store goes back in time, when a tenant
//! sends extreme amounts, when the broker stalls, and across midnight. Each checked against the
//! oracle, on both stores where the store matters.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use cashflow_core::{BusinessDate, EntryId, Lancamento, MerchantId, Money, Tipo};
use cashflow_tests::{
    MERCHANTS, Oracle, PASSWORD, Pipeline, Posted, Store, assert_matches_oracle, d, fresh_postgres_database, login_all,
    post_all, post_entries, random_entries,
};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

const SHIPPED_BACKOFF: &str = "backoff_ms: [1000, 10000, 60000]";
const SHIPPED_ATTEMPTS: &str = "max_attempts: 5";

/// Waits until every partition's lag is reported as 0.
async fn lag_reaches_zero(p: &Pipeline) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let metrics = p.api.metrics(&p.api.base).await;
        let lags: Vec<f64> = metrics
            .series("cashflow_consolidate_lag_records")
            .iter()
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        if !lags.is_empty() && lags.iter().all(|l| *l == 0.0) {
            return;
        }
        assert!(Instant::now() < deadline, "consolidation lag never reached 0: {lags:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A store copy taken mid-load and put back after more entries were consolidated (and Kafka's
/// committed offsets moved past the copy); then an empty store behind the same consumer group.
/// Both times consolidation reads again what the store lacks.
async fn a_store_that_goes_back_in_time_catches_up(store: Store) {
    let mut p = Pipeline::start(store.clone()).await;
    let tokens = login_all(&p).await;
    let mut oracle = Oracle::default();
    let (first, de, ate) = (d("2026-01-05"), d("2026-01-04"), d("2026-02-05"));
    post_all(&p, &tokens, random_entries(&MERCHANTS, 300, first, 30), &mut oracle).await;

    let load = tokio::spawn(post_entries(p.api.clone(), tokens.clone(), random_entries(&MERCHANTS, 900, first, 30), 8));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let copy = p.copy_store(&store).await;
    for (e, status) in load.await.unwrap() {
        assert_eq!(status, 202, "{e:?}");
        oracle.add(e);
    }
    assert_matches_oracle(&p, &tokens, &oracle, de, ate).await;

    p.stop().await;
    p.restore_store(&store, &copy).await;
    p.launch(cashflow_tests::Role::Up).await;
    assert_matches_oracle(&p, &tokens, &oracle, de, ate).await;
    lag_reaches_zero(&p).await;

    p.stop().await;
    p.empty_store(&store).await;
    p.launch(cashflow_tests::Role::Up).await;
    let tokens = login_all(&p).await;
    assert_matches_oracle(&p, &tokens, &oracle, de, ate).await;
    lag_reaches_zero(&p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_store_restored_from_an_older_copy_catches_up() {
    a_store_that_goes_back_in_time_catches_up(Store::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_store_restored_from_an_older_copy_catches_up() {
    a_store_that_goes_back_in_time_catches_up(Store::Postgres(fresh_postgres_database().await)).await;
}

/// A raw record of the wire format, with any amount.
fn raw(merchant: &str, valor_cents: i64, data: &str, criado_em: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "v": 1, "id": EntryId::random(), "merchant_id": merchant, "tipo": "credito",
        "valor_cents": valor_cents, "data": data, "descricao": "poison", "criado_em": criado_em,
    }))
    .unwrap()
}

/// Amounts no client can post, produced straight to the topic, across a restart: the others are
/// consolidated, the poison is parked with its code. Then a merchant whose credits are one
/// maximum entry short of 64 bits: the entry that would overflow them is parked, and no balance
/// wraps.
async fn poison_records_cannot_stop_consolidation(store: Store) {
    let mut p = Pipeline::start_with(
        store.clone(),
        &[(SHIPPED_BACKOFF, "backoff_ms: [200]"), (SHIPPED_ATTEMPTS, "max_attempts: 1")],
    )
    .await;
    let tokens = login_all(&p).await;
    let mut oracle = Oracle::default();
    let (first, de, ate) = (d("2026-02-01"), d("2026-01-31"), d("2026-02-28"));
    let now = chrono::Utc::now().to_rfc3339();

    // Two records of i64::MAX for one merchant and day, in separate epochs, then a zero and a
    // negative amount.
    for valor in [i64::MAX, i64::MAX, 0, -500] {
        p.produce("lancamentos", &[(None, "loja-b", raw("loja-b", valor, "2026-02-02", &now))]).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // A thousand maximum amounts on one day: valid, and counted to the cent.
    let max: Vec<(Option<i32>, &str, Vec<u8>)> =
        (0..1000).map(|_| (None, "loja-a", raw("loja-a", 999_999_999_999, "2026-02-05", &now))).collect();
    p.produce("lancamentos", &max).await;
    for _ in 0..1000 {
        oracle.add(Posted { merchant: "loja-a".into(), credit: true, cents: 999_999_999_999, date: d("2026-02-05") });
    }
    post_all(&p, &tokens, random_entries(&MERCHANTS, 200, first, 20), &mut oracle).await;
    assert_matches_oracle(&p, &tokens, &oracle, de, ate).await;
    p.restart().await;

    // A rule of the store (a DBA's constraint) refuses one entry: it is found in its epoch and
    // routed, and the entries around it are consolidated.
    let rule = match &store {
        Store::Sqlite => {
            "CREATE TRIGGER recusa BEFORE INSERT ON lancamentos WHEN NEW.descricao = 'recusado' \
                          BEGIN SELECT RAISE(ABORT, 'a rule of this store'); END;"
        }
        Store::Postgres(_) => "ALTER TABLE lancamentos ADD CONSTRAINT recusa CHECK (descricao <> 'recusado')",
    };
    p.store_execute(&store, rule).await;
    let refused = Posted { merchant: "loja-c".into(), credit: true, cents: 777, date: d("2026-02-03") };
    let refused_body = refused.body("recusado");
    let (around, refused_status) = tokio::join!(
        post_all(&p, &tokens, random_entries(&MERCHANTS, 200, first, 20), &mut oracle),
        p.api.post_entry(&tokens["loja-c"], &refused_body, None),
    );
    let () = around;
    assert_eq!(refused_status.status(), 202);
    assert_matches_oracle(&p, &tokens, &oracle, de, ate).await;
    let parked = p.await_parked(5, Duration::from_secs(60)).await;
    let mut codes: Vec<&str> = parked.iter().filter_map(|r| r["failure"]["code"].as_str()).collect();
    codes.sort_unstable();
    assert_eq!(codes, ["invalid_field", "invalid_field", "invalid_field", "invalid_field", "store_rejected"]);

    // loja-d has consolidated credits of i64::MAX - 15,000,000,000.00 on 2026-06-15 (a state a
    // test cannot reach by posting: it would take 9.2 million maximum entries).
    let big: i64 = i64::MAX - 1_500_000_000_000;
    p.stop().await;
    let at = "'2026-06-15T00:00:00.000Z'";
    p.store_execute(
        &store,
        &format!(
            "INSERT INTO consolidado_diario VALUES ('loja-d', '2026-06-15', {big}, 0, 1, {at});
             INSERT INTO consolidado_categoria VALUES ('loja-d', '2026-06-15', '', {big}, 0, 1, {at});
             INSERT INTO consolidado_mensal VALUES ('loja-d', '2026-06', {big}, 0, 1, {at});
             INSERT INTO consolidado_comerciante VALUES ('loja-d', {big}, 0, 1, {at});"
        ),
    )
    .await;
    p.launch(cashflow_tests::Role::Up).await;
    p.add_user("loja-d", "user-loja-d", PASSWORD);
    let token = p.api.token("user-loja-d", PASSWORD).await;
    let max = json!({"tipo": "credito", "valor": "9999999999.99", "data": "2026-06-15", "descricao": "max"});
    for _ in 0..2 {
        assert_eq!(p.api.post_entry(&token, &max, None).await.status(), 202);
    }
    post_all(&p, &tokens, random_entries(&MERCHANTS, 100, first, 20), &mut oracle).await;
    assert_matches_oracle(&p, &tokens, &oracle, de, ate).await;
    let parked = p.await_parked(6, Duration::from_secs(60)).await;
    assert_eq!(parked.len(), 6, "{parked:#?}");
    assert_eq!(parked[5]["failure"]["code"], "amount_overflow", "{parked:#?}");

    let day = loop {
        let day = p.api.daily(&token, "2026-06-15", "2026-06-16").await;
        if day["dias"][0]["lancamentos"] == 2 {
            break day;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let expected = Money::from_cents(big + 999_999_999_999).to_string();
    assert_eq!(day["dias"][0]["creditos"], expected, "{day}");
    assert_eq!(day["dias"][1]["saldo_final"], expected, "{day}");
    let r = p.api.get(&token, "/v1/consolidado/mensal?ano=2026").await;
    assert_eq!(r.status(), 200);
    let mensal: Value = r.json().await.unwrap();
    assert_eq!(mensal["meses"][11]["saldo_final"], expected, "{mensal}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_cannot_stop_consolidation_on_sqlite() {
    poison_records_cannot_stop_consolidation(Store::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_cannot_stop_consolidation_on_postgres() {
    poison_records_cannot_stop_consolidation(Store::Postgres(fresh_postgres_database().await)).await;
}

/// The broker stopped (SIGSTOP) longer than ingest waits for an ack while clients post without
/// an `Idempotency-Key`: each 503 names the key that makes a retry the same entry, the clients
/// retry with it once the broker goes on, and every entry counts once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_left_uncertain_by_a_stalled_broker_count_once() {
    let p = Pipeline::start_with(Store::Sqlite, &[("ack_timeout_ms: 5000", "ack_timeout_ms: 1500")]).await;
    let tokens = login_all(&p).await;
    let mut oracle = Oracle::default();
    let (first, de, ate) = (d("2026-03-01"), d("2026-02-28"), d("2026-03-31"));
    post_all(&p, &tokens, random_entries(&MERCHANTS, 30, first, 10), &mut oracle).await;

    p.signal_broker(Signal::SIGSTOP);
    let stalled = random_entries(&MERCHANTS, 20, first, 10);
    let answers = futures::future::join_all(stalled.iter().map(|e| {
        let (api, token) = (p.api.clone(), tokens[e.merchant.as_str()].clone());
        async move {
            let r = api.post_entry(&token, &e.body("stalled"), None).await;
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    }))
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    p.signal_broker(Signal::SIGCONT);

    let mut uncertain = 0;
    for (e, (status, body)) in stalled.into_iter().zip(answers) {
        if status == 503 {
            uncertain += 1;
            let key = body["idempotency_key"].as_str().unwrap_or_else(|| panic!("a 503 without its key: {body}"));
            assert!(body["detail"].as_str().unwrap().contains(key), "{body}");
            let token = &tokens[e.merchant.as_str()];
            let retried = loop {
                let r = p.api.post_entry(token, &e.body("stalled"), Some(key)).await;
                if r.status() == 202 {
                    break r.json::<Value>().await.unwrap();
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            };
            assert_eq!(retried["id"], body["id"], "the retry is the same entry");
        } else {
            assert_eq!(status, 202, "{body}");
            assert!(body["idempotency_key"].is_string(), "a 202 names its key: {body}");
        }
        oracle.add(e);
    }
    assert!(uncertain > 0, "the stall left no entry uncertain; the test stalled nothing");
    assert_matches_oracle(&p, &tokens, &oracle, de, ate).await;
}

/// An entry accepted yesterday at 23:59 with the oldest date the window allowed then is
/// consolidated today, though that date is now outside the window: it is judged on the day it
/// was accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_accepted_before_midnight_is_judged_on_that_day() {
    let p = Pipeline::start(Store::Sqlite).await;
    let tokens = login_all(&p).await;
    let yesterday = BusinessDate::from_days(BusinessDate::today().days() - 1).unwrap();
    let oldest_then = BusinessDate::from_days(yesterday.days() - 3660).unwrap();
    let entry = Lancamento {
        id: EntryId::random(),
        merchant_id: MerchantId::parse("loja-a").unwrap(),
        tipo: Tipo::Credito,
        valor: Money::from_cents(4_200),
        data: oldest_then,
        descricao: "accepted at 23:59".into(),
        categoria: None,
        criado_em: yesterday.date().and_hms_opt(23, 59, 0).unwrap().and_utc(),
        estorno_de: None,
    };
    p.produce("lancamentos", &[(None, "loja-a", entry.encode())]).await;
    let mut oracle = Oracle::default();
    oracle.add(Posted { merchant: "loja-a".into(), credit: true, cents: 4_200, date: oldest_then });
    assert_matches_oracle(&p, &tokens, &oracle, oldest_then, oldest_then).await;
    assert_eq!(p.records_in("lancamentos.retry"), 0, "the entry was sent to the retry topic");
}

/// A record near the broker's size limit cannot be copied to the retry topic with its failure
/// headers: a stand-in naming where it is gets parked instead, and the records behind it are
/// consolidated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_too_large_to_copy_with_its_headers_does_not_stop_consolidation() {
    let p = Pipeline::start(Store::Sqlite).await;
    let tokens = login_all(&p).await;
    // Fits a producer's message.max.bytes (1,000,000) alone, not with the failure headers.
    let large = vec![b'x'; 999_900];
    let at = p.produce("lancamentos", &[(None, "loja-a", large)]).await;
    let mut oracle = Oracle::default();
    let (first, de, ate) = (d("2026-04-01"), d("2026-03-31"), d("2026-04-30"));
    post_all(&p, &tokens, random_entries(&MERCHANTS, 100, first, 20), &mut oracle).await;
    assert_matches_oracle(&p, &tokens, &oracle, de, ate).await;

    let parked = p.read_topic("lancamentos.dlq", 1, Duration::from_secs(30));
    assert_eq!(parked.len(), 1, "the stand-in is parked");
    let stand_in = &parked[0];
    assert_eq!(stand_in.header("x-error-code"), Some("malformed"));
    assert!(stand_in.payload.is_empty());
    let (partition, offset) = at[0];
    assert_eq!(stand_in.header("x-origin-partition"), Some(partition.to_string().as_str()));
    assert_eq!(stand_in.header("x-origin-offset"), Some(offset.to_string().as_str()));
    assert!(stand_in.header("x-error-detail").unwrap().contains("too large to copy"), "{stand_in:?}");
}
