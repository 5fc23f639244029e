//! Reconciliation, audit and rebuild, end to end with the real binary: a healthy run with
//! reversals, duplicates, retried and parked records reconciles and audits clean; a state row
//! changed by hand is named by `cashflow reconcile` (and by the scheduled check's metric) and
//! repaired by `cashflow rebuild`; an entry row deleted by hand is named by `cashflow audit`;
//! and on PostgreSQL, reconcile and rebuild run during a load without a false difference or a
//! partial view, the final balances equal to the oracle.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use cashflow_core::{EntryId, MerchantId};
use cashflow_tests::{
    MERCHANTS, Oracle, Pipeline, Posted, Store, UNLIMITED, assert_matches_oracle, d, fresh_postgres_database,
    login_all, post_all, random_entries,
};
use serde_json::{Value, json};

const INTO: &str = "into: [saldo-diario, saldo-categoria, saldo-mensal, saldo-comerciante]";
const WEEKLY: &str = "semanal-tipo: { key: [merchant_id, semana, tipo], values: [debitos, lancamentos], table: consolidado_semanal_tipo }";

/// `cashflow <args> --json`: whether it exited 0 (it must exit 0 or 1), and its document.
fn json_of(p: &Pipeline, args: &[&str]) -> (bool, Value) {
    let out = p.cli(&[args, &["--json"]].concat(), "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(matches!(out.status.code(), Some(0 | 1)), "{args:?} exited {:?}: {stderr}", out.status);
    let doc =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {stderr}"));
    (out.status.success(), doc)
}

fn differences(doc: &Value) -> Vec<Value> {
    doc["differences"].as_array().unwrap().clone()
}

/// The scheduled check's last figure, once it has run since `after` (Unix seconds).
async fn scheduled_mismatches(p: &Pipeline, after: u64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = p.api.metrics(&p.api.base).await;
        if m.must("cashflow_reconcile_last_run_timestamp_seconds") > after as f64 {
            return m.must("cashflow_reconcile_mismatches");
        }
        assert!(Instant::now() < deadline, "no scheduled reconciliation ran in 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_run_reconciles_and_audits_clean_and_hand_made_damage_is_named_then_rebuilt() {
    let edits: [(&str, String); 6] = [
        ("backoff_ms: [1000, 10000, 60000]", "backoff_ms: [1000]".into()),
        ("max_attempts: 5", "max_attempts: 2".into()),
        ("reconcile: { every_secs: 3600, merchants: 100 }", "reconcile: { every_secs: 1, merchants: all }".into()),
        (UNLIMITED.0, UNLIMITED.1.into()),
        // a declared state of weeks and types, beside the four shipped
        ("      saldo-comerciante: {", format!("      {WEEKLY}\n      saldo-comerciante: {{")),
        (INTO, "into: [saldo-diario, saldo-categoria, saldo-mensal, saldo-comerciante, semanal-tipo]".into()),
    ];
    let edits: Vec<(&str, &str)> = edits.iter().map(|(a, b)| (*a, b.as_str())).collect();
    let p = Pipeline::start_with(Store::Sqlite, &edits).await;
    let tokens = login_all(&p).await;
    let mut oracle = Oracle::default();
    post_all(&p, &tokens, random_entries(&MERCHANTS, 3_000, d("2026-01-01"), 300), &mut oracle).await;

    // Client retries: each entry posted twice with its Idempotency-Key, counted once. Each is
    // then reversed.
    let (m, token) = (MERCHANTS[1], &tokens[MERCHANTS[1]]);
    for i in 0..20 {
        let e = Posted { merchant: m.into(), credit: i % 2 == 0, cents: 1_000 + i, date: d("2026-03-03") };
        let key = format!("retry-{i}");
        let first = p.api.post_entry(token, &e.body("venda"), Some(&key)).await.json::<Value>().await.unwrap();
        let again = p.api.post_entry(token, &e.body("venda"), Some(&key)).await.json::<Value>().await.unwrap();
        assert_eq!(first["id"], again["id"]);
        let id = first["id"].as_str().unwrap();
        let r = p.api.reverse(token, id, &json!({"data": "2026-03-04", "descricao": "devolução"})).await;
        assert_eq!(r.status(), 202);
        oracle.add(Posted { credit: !e.credit, date: d("2026-03-04"), ..e.clone() });
        oracle.add(e);
    }
    // A reversal before its original: retried, then consolidated.
    let late = EntryId::from_idempotency_key(&MerchantId::parse(m).unwrap(), "late");
    let r = p.api.reverse(token, &late.to_string(), &json!({"data": "2026-05-02", "descricao": "devolução"})).await;
    assert_eq!(r.status(), 202);
    p.read_topic("lancamentos.retry", 1, Duration::from_secs(30));
    let original = Posted { merchant: m.into(), credit: true, cents: 777, date: d("2026-05-01") };
    assert_eq!(p.api.post_entry(token, &original.body("venda"), Some("late")).await.status(), 202);
    oracle.add(Posted { credit: false, date: d("2026-05-02"), ..original.clone() });
    oracle.add(original);
    // A poison record: parked.
    p.produce("lancamentos", &[(None, m, br#"{"v":1,"id":"not-a-uuid""#.to_vec())]).await;
    assert_matches_oracle(&p, &tokens, &oracle, d("2026-01-01"), d("2026-12-31")).await;
    p.await_parked(1, Duration::from_secs(60)).await;

    let (clean, doc) = json_of(&p, &["reconcile"]);
    assert!(clean && differences(&doc).is_empty(), "{doc:#}");
    assert_eq!(doc["merchants"], 3);
    let states = ["saldo-diario", "saldo-categoria", "saldo-mensal", "saldo-comerciante", "semanal-tipo"];
    assert_eq!(doc["states"], json!(states));
    let (clean, doc) = json_of(&p, &["audit"]);
    let report = &doc["report"];
    assert!(clean && report["unaccounted"].as_array().unwrap().is_empty(), "{doc:#}");
    let stored = report["stored"].as_u64().unwrap();
    assert_eq!(stored as usize, oracle.count(MERCHANTS[0]) + oracle.count(MERCHANTS[1]) + oracle.count(MERCHANTS[2]));
    assert!(report["duplicates"].as_u64().unwrap() >= 20, "{report:#}");
    assert!(report["consolidated_later"].as_u64().unwrap() >= 1, "{report:#}");
    assert!(report["parked"].as_u64().unwrap() >= 1, "{report:#}");
    assert_eq!(scheduled_mismatches(&p, unix_now()).await, 0.0, "the scheduled check found a false difference");
    let runs = p.api.metrics(&p.api.base).await;
    assert_eq!(runs.must("cashflow_reconcile_runs_total{outcome=\"mismatch\"}"), 0.0, "a false difference under load");
    assert!(runs.must("cashflow_reconcile_runs_total{outcome=\"clean\"}") >= 5.0);

    // A week's row of the declared state, changed by hand: named with its key.
    let week = p
        .store_row(
            &Store::Sqlite,
            "SELECT semana, tipo FROM consolidado_semanal_tipo WHERE merchant_id = 'loja-a' LIMIT 1",
        )
        .await;
    let tamper = format!(
        "UPDATE consolidado_semanal_tipo SET quantidade = quantidade + 1 WHERE merchant_id = 'loja-a' AND semana = '{}' AND tipo = '{}'",
        week[0], week[1]
    );
    p.store_execute(&Store::Sqlite, &tamper).await;
    let (clean, doc) = json_of(&p, &["reconcile", "--merchant", "loja-a"]);
    let found = differences(&doc);
    assert!(!clean && found.len() == 1, "{doc:#}");
    assert_eq!(found[0]["key"], json!({ "semana": week[0], "tipo": week[1] }));
    assert_eq!(found[0]["stored"]["quantidade"], found[0]["recomputed"]["quantidade"].as_i64().unwrap() + 1);
    assert_eq!(found[0]["stored"]["creditos_cents"], 0, "a value the state does not keep reads 0");
    let rebuilt = p.cli(&["rebuild", "--state", "semanal-tipo"], "");
    assert!(rebuilt.status.success(), "{}", String::from_utf8_lossy(&rebuilt.stderr));

    // A day's credits changed by hand: named exactly, by the command and by the scheduled check.
    let store = Store::Sqlite;
    let day = &p.store_row(&store, "SELECT data FROM consolidado_diario WHERE merchant_id = 'loja-c' LIMIT 1").await[0];
    let tamper = format!(
        "UPDATE consolidado_diario SET creditos_cents = creditos_cents + 1 WHERE merchant_id = 'loja-c' AND data = '{day}'"
    );
    p.store_execute(&store, &tamper).await;
    let (clean, doc) = json_of(&p, &["reconcile"]);
    assert!(!clean);
    let found = differences(&doc);
    assert_eq!(found.len(), 1, "{doc:#}");
    assert_eq!((&found[0]["table"], &found[0]["merchant_id"]), (&json!("consolidado_diario"), &json!("loja-c")));
    assert_eq!(found[0]["key"], json!({ "data": day }));
    let stored = found[0]["stored"]["creditos_cents"].as_i64().unwrap();
    assert_eq!(stored, found[0]["recomputed"]["creditos_cents"].as_i64().unwrap() + 1);
    let text = p.cli(&["reconcile", "--merchant", "loja-c"], "");
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert_eq!(text.status.code(), Some(1));
    assert!(stdout.contains(&format!("consolidado_diario merchant_id=loja-c data={day}: stored")), "{stdout}");
    assert_eq!(scheduled_mismatches(&p, unix_now()).await, 1.0);

    let rebuilt = p.cli(&["rebuild", "--state", "saldo-diario"], "");
    assert!(rebuilt.status.success(), "{}", String::from_utf8_lossy(&rebuilt.stderr));
    let (clean, doc) = json_of(&p, &["reconcile"]);
    assert!(clean && differences(&doc).is_empty(), "{doc:#}");
    assert_eq!(scheduled_mismatches(&p, unix_now()).await, 0.0);
    assert_matches_oracle(&p, &tokens, &oracle, d("2026-01-01"), d("2026-12-31")).await;

    // An entry row deleted while its offset stays consumed: the audit names that offset.
    let sql = "SELECT id, CAST(origin_partition AS TEXT), CAST(origin_offset AS TEXT) FROM lancamentos \
               WHERE estorno_de IS NULL AND merchant_id = 'loja-a' LIMIT 1";
    let gone = p.store_row(&store, sql).await;
    p.store_execute(&store, &format!("DELETE FROM lancamentos WHERE id = '{}'", gone[0])).await;
    let (clean, doc) = json_of(&p, &["audit"]);
    assert!(!clean);
    let unaccounted = doc["report"]["unaccounted"].as_array().unwrap();
    let named: Vec<(String, String, String)> = unaccounted
        .iter()
        .map(|u| (u["partition"].to_string(), u["offset"].to_string(), u["id"].as_str().unwrap_or("-").to_owned()))
        .collect();
    assert_eq!(named, [(gone[1].clone(), gone[2].clone(), gone[0].clone())], "{doc:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_reconcile_and_rebuild_run_during_a_load_with_no_false_difference_and_no_partial_view() {
    let store = Store::Postgres(fresh_postgres_database().await);
    let p = Pipeline::start_with(store.clone(), &[UNLIMITED]).await;
    let tokens = login_all(&p).await;
    let mut oracle = Oracle::default();
    post_all(&p, &tokens, random_entries(&MERCHANTS, 1_500, d("2026-06-01"), 120), &mut oracle).await;
    assert_matches_oracle(&p, &tokens, &oracle, d("2026-06-01"), d("2026-12-31")).await;

    // The load: more entries while reconcile and rebuild run.
    let load = random_entries(&MERCHANTS, 3_000, d("2026-06-01"), 120);
    let posting = tokio::spawn(cashflow_tests::post_entries(p.api.clone(), tokens.clone(), load, 8));
    // A reader of one merchant's balance: entries are only added, so its count of entries never
    // falls; a view read half rebuilt would.
    let (api, token) = (p.api.clone(), tokens[MERCHANTS[0]].clone());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reading = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let answer = api.daily(&token, "2026-06-01", "2026-12-31").await;
                let days = answer["dias"].as_array().unwrap();
                seen.push(days.iter().map(|d| d["lancamentos"].as_u64().unwrap()).sum::<u64>());
            }
            seen
        }
    });
    let mut runs = 0;
    while !posting.is_finished() || runs < 2 {
        let (clean, doc) = json_of(&p, &["reconcile"]);
        assert!(clean && differences(&doc).is_empty(), "a false difference during the load: {doc:#}");
        let rebuilt = p.cli(&["rebuild"], "");
        assert!(rebuilt.status.success(), "{}", String::from_utf8_lossy(&rebuilt.stderr));
        runs += 1;
    }
    for (e, status) in posting.await.unwrap() {
        assert_eq!(status, 202, "{e:?}");
        oracle.add(e);
    }
    assert_matches_oracle(&p, &tokens, &oracle, d("2026-06-01"), d("2026-12-31")).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = reading.await.unwrap();
    assert!(seen.len() > 10, "the reader read {} times", seen.len());
    let fell = seen.windows(2).position(|w| w[0] > w[1]);
    assert_eq!(fell.map(|i| &seen[i..(i + 3).min(seen.len())]), None, "a read saw fewer entries than the one before");

    // A category row changed by hand on PostgreSQL: named, then rebuilt for that merchant alone.
    let row = p
        .store_row(&store, "SELECT data, categoria FROM consolidado_categoria WHERE merchant_id = 'loja-b' LIMIT 1")
        .await;
    let tamper = format!(
        "UPDATE consolidado_categoria SET quantidade = quantidade + 2 WHERE merchant_id = 'loja-b' AND data = '{}' AND categoria = '{}'",
        row[0], row[1]
    );
    p.store_execute(&store, &tamper).await;
    let (clean, doc) = json_of(&p, &["reconcile", "--de", &row[0], "--ate", &row[0]]);
    assert!(!clean);
    let found = differences(&doc);
    assert_eq!(found.len(), 1, "{doc:#}");
    assert_eq!(found[0]["key"], json!({ "data": row[0], "categoria": row[1] }));
    assert_eq!(found[0]["merchant_id"], "loja-b");
    let rebuilt = p.cli(&["rebuild", "--state", "saldo-categoria", "--merchant", "loja-b"], "");
    assert!(rebuilt.status.success(), "{}", String::from_utf8_lossy(&rebuilt.stderr));
    let (clean, doc) = json_of(&p, &["reconcile"]);
    assert!(clean && differences(&doc).is_empty(), "{doc:#}");
    let (clean, doc) = json_of(&p, &["audit"]);
    assert!(clean, "{doc:#}");
    assert_eq!(
        doc["report"]["stored"].as_u64().unwrap() as usize,
        MERCHANTS.iter().map(|m| oracle.count(m)).sum::<usize>()
    );
}
