//! The retry stage and the dead-letter topic, end to end: a poison record, a reversal before its
//! original, a replay after a config fix, a retry stage killed mid-backoff, and 10,000 malformed
//! or mutated records. Each is checked against the oracle and the topics themselves.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use cashflow_core::{BusinessDate, EntryId, Lancamento, MerchantId, Money, Tipo};
use cashflow_tests::{
    MERCHANTS, Oracle, PASSWORD, Pipeline, Posted, Read, Role, Store, assert_matches_oracle, d,
    fresh_postgres_database, login_all, post_all, random_entries,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

const SHIPPED_BACKOFF: &str = "backoff_ms: [1000, 10000, 60000]";
const SHIPPED_ATTEMPTS: &str = "max_attempts: 5";

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn header_i64(r: &Read, name: &str) -> i64 {
    r.header(name).unwrap_or_else(|| panic!("{name} missing")).parse().unwrap()
}

fn entry(merchant: &str, credit: bool, cents: i64, data: BusinessDate) -> Lancamento {
    Lancamento {
        id: EntryId::random(),
        merchant_id: MerchantId::parse(merchant).unwrap(),
        tipo: if credit { Tipo::Credito } else { Tipo::Debito },
        valor: Money::from_cents(cents),
        data,
        descricao: "importado".into(),
        categoria: None,
        criado_em: chrono::Utc::now(),
        estorno_de: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_is_retried_with_growing_delays_then_parked_without_blocking_the_stream() {
    let backoff = [5000_i64, 6000, 7000];
    let p = Pipeline::start_stages(
        Store::Sqlite,
        &[(SHIPPED_BACKOFF, "backoff_ms: [5000, 6000, 7000]"), (SHIPPED_ATTEMPTS, "max_attempts: 3")],
    )
    .await;
    let tokens = login_all(&p).await;
    let poison = br#"{"v":1,"id":"7d3f","merchant_id":"loja-x","valor_cents":"#.to_vec();
    let at = p.produce("lancamentos", &[(None, "loja-x", poison.clone())]).await[0];

    // Behind the poison, other merchants' entries keep being consolidated.
    let mut oracle = Oracle::default();
    post_all(&p, &tokens, random_entries(&MERCHANTS, 300, d("2026-03-01"), 20), &mut oracle).await;
    assert_matches_oracle(&p, &tokens, &oracle, d("2026-03-01"), d("2026-03-20")).await;
    let stream_done_ms = now_ms();

    let parked = p.await_parked(1, Duration::from_secs(90)).await;
    assert_eq!(parked.len(), 1, "{parked:#?}");
    let f = &parked[0]["failure"];
    assert_eq!((f["code"].as_str(), f["attempt"].as_u64()), (Some("malformed"), Some(3)), "{f}");
    assert_eq!((f["origin_partition"].as_i64(), f["origin_offset"].as_i64()), (Some(i64::from(at.0)), Some(at.1)));
    assert_eq!(parked[0]["payload"].as_str().unwrap().as_bytes(), &poison[..], "the parked value is unchanged");

    // The topics themselves: 4 failures (attempts 0..=3), 3 retries, 1 parked record.
    let failures: BTreeMap<i64, Read> = p
        .read_topic("lancamentos.retry", 4, Duration::from_secs(20))
        .into_iter()
        .filter(|r| r.payload == poison)
        .map(|r| (header_i64(&r, "x-attempt"), r))
        .collect();
    assert_eq!(failures.keys().copied().collect::<Vec<_>>(), [0, 1, 2, 3]);
    let retries: Vec<Read> = p
        .read_topic("lancamentos", p.records_in("lancamentos") as usize, Duration::from_secs(20))
        .into_iter()
        .filter(|r| r.payload == poison && r.header("x-attempt").is_some())
        .collect();
    assert_eq!(retries.iter().map(|r| header_i64(r, "x-attempt")).collect::<Vec<_>>(), [1, 2, 3]);
    for (k, retry) in retries.iter().enumerate() {
        let failed = &failures[&(k as i64)];
        let not_before = header_i64(failed, "x-not-before");
        let delay = not_before - failed.timestamp_ms;
        // the schedule's delay, up to a quarter longer (jitter), give or take the clocks' 500 ms
        let (least, most) = (backoff[k] - 500, backoff[k] + backoff[k] / 4 + 500);
        assert!((least..=most).contains(&delay), "retry {} waited {delay} ms, schedule says {}", k + 1, backoff[k]);
        assert!(retry.timestamp_ms >= not_before, "retry {} sent {} ms early", k + 1, not_before - retry.timestamp_ms);
        assert_eq!(header_i64(retry, "x-origin-offset"), at.1);
    }
    let first_failed = header_i64(&failures[&0], "x-first-failed-at");
    assert!(failures.values().all(|r| header_i64(r, "x-first-failed-at") == first_failed));
    let dlq = p.read_topic("lancamentos.dlq", 1, Duration::from_secs(10));
    assert_eq!(dlq.len(), 1);
    for (name, want) in [
        ("x-error-code", "malformed".to_owned()),
        ("x-error-stage", "consolidate".to_owned()),
        ("x-attempt", "3".to_owned()),
        ("x-origin-topic", "lancamentos".to_owned()),
        ("x-origin-partition", at.0.to_string()),
        ("x-origin-offset", at.1.to_string()),
        ("x-first-failed-at", first_failed.to_string()),
    ] {
        assert_eq!(dlq[0].header(name), Some(want.as_str()), "{name}");
    }
    assert!(dlq[0].header("x-error-detail").is_some_and(|d| !d.is_empty()));
    assert!(dlq[0].header("x-not-before").is_some());

    // Not blocked: 300 entries posted after the poison were all consolidated before its first retry.
    let first_retry_ms = retries[0].timestamp_ms;
    assert!(stream_done_ms < first_retry_ms, "the stream waited for the poison record");
    eprintln!(
        "300 entries consolidated {} ms after the poison's first failure; its retries waited {:?} ms",
        stream_done_ms - failures[&0].timestamp_ms,
        retries.iter().zip(failures.values()).map(|(r, f)| r.timestamp_ms - f.timestamp_ms).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reversal_before_its_original_is_retried_and_both_count_once() {
    let url = fresh_postgres_database().await;
    let p = Pipeline::start_stages(
        Store::Postgres(url),
        &[(SHIPPED_BACKOFF, "backoff_ms: [500, 1000]"), (SHIPPED_ATTEMPTS, "max_attempts: 30")],
    )
    .await;
    let tokens = login_all(&p).await;
    let m = MERCHANTS[0];
    let token = &tokens[m];
    let original_id = EntryId::from_idempotency_key(&MerchantId::parse(m).unwrap(), "venda-42");

    let r =
        p.api.reverse(token, &original_id.to_string(), &json!({"data": "2026-04-10", "descricao": "devolução"})).await;
    assert_eq!(r.status(), 202);
    let accepted: Value = r.json().await.unwrap();
    assert_eq!(accepted["estorno_de"], original_id.to_string());
    let reversal_id = accepted["id"].as_str().unwrap().to_owned();

    // Its original is unknown: the reversal fails, retryably.
    let failed = p.read_topic("lancamentos.retry", 1, Duration::from_secs(30));
    assert_eq!(failed.first().and_then(|r| r.header("x-error-code")), Some("original_not_found"));
    tokio::time::sleep(Duration::from_secs(2)).await;

    let original = Posted { merchant: m.into(), credit: true, cents: 12_345, date: d("2026-04-05") };
    let r = p.api.post_entry(token, &original.body("venda"), Some("venda-42")).await;
    assert_eq!(r.status(), 202);
    assert_eq!(r.json::<Value>().await.unwrap()["id"], original_id.to_string());
    let mut oracle = Oracle::default();
    oracle.add(original);
    oracle.add(Posted { merchant: m.into(), credit: false, cents: 12_345, date: d("2026-04-10") });
    assert_matches_oracle(&p, &tokens, &oracle, d("2026-04-01"), d("2026-04-30")).await;
    let retried = p.records_in("lancamentos.retry");
    assert!(retried >= 2, "the reversal was retried ({retried} failures)");

    // Reversing it again is refused; so is reversing the reversal.
    let again = p.api.reverse(token, &original_id.to_string(), &json!({})).await;
    assert_eq!(again.status(), 409);
    let twice = p.api.reverse(token, &reversal_id, &json!({})).await;
    assert_eq!(twice.status(), 422);

    // Still counted once after any late retry, and nothing parked.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_matches_oracle(&p, &tokens, &oracle, d("2026-04-01"), d("2026-04-30")).await;
    assert!(p.dlq_list().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_parked_by_the_date_window_is_replayed_after_the_fix_and_counted_once() {
    let window = "date_window: { past_days: 3660, future_days: 366 }";
    let mut p = Pipeline::start_stages(
        Store::Sqlite,
        &[
            (window, "date_window: { past_days: 30, future_days: 366 }"),
            (SHIPPED_BACKOFF, "backoff_ms: [200]"),
            (SHIPPED_ATTEMPTS, "max_attempts: 2"),
        ],
    )
    .await;
    let tokens = login_all(&p).await;
    let m = MERCHANTS[1];
    let old = BusinessDate::from_days(BusinessDate::today().days() - 90).unwrap();
    let posted = Posted { merchant: m.into(), credit: true, cents: 77_777, date: old };
    assert_eq!(p.api.post_entry(&tokens[m], &posted.body("antiga"), None).await.status(), 422);

    // Straight on the topic it is retried twice, then parked.
    p.produce("lancamentos", &[(None, m, entry(m, true, 77_777, old).encode())]).await;
    let parked = p.await_parked(1, Duration::from_secs(60)).await;
    assert_eq!(parked.len(), 1, "{parked:#?}");
    let f = &parked[0]["failure"];
    assert_eq!((f["code"].as_str(), f["attempt"].as_u64()), (Some("invalid_field"), Some(2)), "{f}");
    assert!(f["detail"].as_str().unwrap().contains("date_window"), "{f}");
    let position = parked[0]["position"].as_str().unwrap().to_owned();
    let table = p.cli(&["dlq", "list"], "");
    let table = String::from_utf8_lossy(&table.stdout);
    eprintln!("{table}");
    assert!(table.contains(&position) && table.contains("invalid_field") && table.contains(m), "{table}");

    // A merchant's token, whatever its scopes, neither lists nor replays another merchant's
    // parked record.
    let other = MERCHANTS[0];
    assert_ne!(other, m);
    let scopes = ["--scopes", "lancamentos:write consolidado:read admin"];
    let out =
        p.cli(&[&["users", "add", "--merchant", other, "--username", "dona-de-tudo"][..], &scopes].concat(), PASSWORD);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let every_scope = p.api.token("dona-de-tudo", PASSWORD).await;
    let get = |token: String| p.api.client.get(format!("{}/v1/admin/dlq", p.api.base)).bearer_auth(token).send();
    let replay_all = |token: String| {
        let url = format!("{}/v1/admin/dlq/replay", p.api.base);
        p.api.client.post(url).bearer_auth(token).json(&json!({"all": true})).send()
    };
    for token in [every_scope.clone(), tokens[m].clone()] {
        let listed = get(token.clone()).await.unwrap();
        assert_eq!(listed.status(), 403, "{}", listed.text().await.unwrap());
        assert_eq!(replay_all(token).await.unwrap().status(), 403);
    }
    assert_eq!(p.dlq_list().len(), 1, "still parked");

    // An operator (a login of no merchant) lists it.
    let out = p.cli(&["users", "add", "--operator", "--username", "ops", "--scopes", "admin"], PASSWORD);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let admin = p.api.token("ops", PASSWORD).await;
    let listed: Value = get(admin.clone()).await.unwrap().json().await.unwrap();
    assert_eq!(listed["parked"][0]["position"], position.as_str());
    // An operator's token acts for no merchant.
    let balances = p.api.get(&admin, "/v1/consolidado/diario?de=2026-01-01&ate=2026-01-31").await;
    assert_eq!(balances.status(), 403);

    // Each merchant sees its own parked entries, and only those.
    let own: Value = p.api.get(&tokens[m], "/v1/lancamentos/retidos").await.json().await.unwrap();
    assert_eq!(own["retidos"].as_array().map(Vec::len), Some(1), "{own}");
    assert_eq!(own["retidos"][0]["codigo"], "invalid_field", "{own}");
    assert_eq!(own["retidos"][0]["lancamento"]["valor"], "777.77", "{own}");
    let theirs: Value = p.api.get(&every_scope, "/v1/lancamentos/retidos").await.json().await.unwrap();
    assert_eq!(theirs["retidos"], json!([]), "{theirs}");

    // Fix the window, restart consolidation, replay: counted once.
    p.interrupt(Role::Consolidate).await;
    p.edit_config("past_days: 30", "past_days: 3660");
    p.launch(Role::Consolidate).await;
    let out = p.cli(&["dlq", "replay", "--offset", &position], "");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 record(s) sent back"));
    let mut oracle = Oracle::default();
    oracle.add(posted);
    assert_matches_oracle(&p, &tokens, &oracle, old, old).await;
    let again = p.cli(&["dlq", "replay", "--offset", &position], "");
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("no parked record"));
    assert!(p.dlq_list().is_empty());

    // Replay through the API: a record that still fails is parked again, under a new position.
    let mut unknown = serde_json::to_value(entry(m, true, 100, old).to_record()).unwrap();
    unknown["v"] = 9.into();
    p.produce("lancamentos", &[(None, m, serde_json::to_vec(&unknown).unwrap())]).await;
    let first = p.await_parked(1, Duration::from_secs(60)).await;
    let replay = p.api.client.post(format!("{}/v1/admin/dlq/replay", p.api.base)).bearer_auth(&admin);
    let replayed: Value =
        replay.json(&json!({"error_code": "unknown_version"})).send().await.unwrap().json().await.unwrap();
    assert_eq!(replayed["replayed"], 1, "{replayed}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let second = loop {
        let now = p.dlq_list();
        if now.first().is_some_and(|r| r["position"] != first[0]["position"]) || Instant::now() > deadline {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(second.len(), 1, "{second:#?}");
    assert_eq!(second[0]["failure"]["code"], "unknown_version");
    assert_ne!(second[0]["position"], first[0]["position"]);

    // Purge asks first.
    assert!(!p.cli(&["dlq", "purge"], "no\n").status.success());
    assert_eq!(p.dlq_list().len(), 1);
    assert!(p.cli(&["dlq", "purge"], "yes\n").status.success());
    assert!(p.dlq_list().is_empty());
    assert_matches_oracle(&p, &tokens, &oracle, old, old).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_stage_killed_mid_backoff_loses_and_duplicates_nothing() {
    let mut p = Pipeline::start_stages(
        Store::Sqlite,
        // The reversals' originals must arrive within their retries (6 + 4 × 3 = 18 s), even on a
        // machine busy with other tests.
        &[(SHIPPED_BACKOFF, "backoff_ms: [6000, 3000]"), (SHIPPED_ATTEMPTS, "max_attempts: 5")],
    )
    .await;
    let tokens = login_all(&p).await;
    let m = MERCHANTS[2];
    let merchant = MerchantId::parse(m).unwrap();
    for i in 0..20 {
        let id = EntryId::from_idempotency_key(&merchant, &format!("k{i}"));
        let r = p.api.reverse(&tokens[m], &id.to_string(), &json!({"data": "2026-05-20"})).await;
        assert_eq!(r.status(), 202);
    }
    let poison: Vec<(Option<i32>, &str, Vec<u8>)> =
        (0..5).map(|i| (None, m, format!("poison {i}").into_bytes())).collect();
    let origins: HashSet<(i32, i64)> = p.produce("lancamentos", &poison).await.into_iter().collect();

    // All 25 fail and are held for 6 s; the retry stage dies while holding them.
    let deadline = Instant::now() + Duration::from_secs(30);
    while p.records_in("lancamentos.retry") < 25 {
        assert!(Instant::now() < deadline, "the records did not fail");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    p.kill(Role::Retry);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    p.launch(Role::Retry).await;

    let mut oracle = Oracle::default();
    for i in 0..20 {
        let original = Posted { merchant: m.into(), credit: true, cents: 100 * (i + 1), date: d("2026-05-10") };
        let r = p.api.post_entry(&tokens[m], &original.body("venda"), Some(&format!("k{i}"))).await;
        assert_eq!(r.status(), 202);
        oracle.add(original);
        oracle.add(Posted { merchant: m.into(), credit: false, cents: 100 * (i + 1), date: d("2026-05-20") });
    }
    assert_matches_oracle(&p, &tokens, &oracle, d("2026-05-01"), d("2026-05-31")).await;

    let parked = p.await_parked(5, Duration::from_secs(60)).await;
    let parked_origins: HashSet<(i32, i64)> = parked
        .iter()
        .map(|r| {
            (r["failure"]["origin_partition"].as_i64().unwrap() as i32, r["failure"]["origin_offset"].as_i64().unwrap())
        })
        .collect();
    assert_eq!(parked_origins, origins, "each poison record parked exactly once");
    assert_eq!(parked.len(), 5);
    assert!(parked.iter().all(|r| r["failure"]["attempt"] == 5));

    // Late duplicates would show up now: nothing moves.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_matches_oracle(&p, &tokens, &oracle, d("2026-05-01"), d("2026-05-31")).await;
    assert_eq!(p.dlq_list().len(), 5);
    eprintln!("dead-letter topic holds {} raw records for 5 parked", p.records_in("lancamentos.dlq"));
}

/// One mutation of a valid record that makes it invalid, with the code it must be parked under.
fn mutate(rng: &mut StdRng, valid: &Lancamento) -> (Vec<u8>, &'static str) {
    let mut v = serde_json::to_value(valid.to_record()).unwrap();
    let code = match rng.gen_range(0..9) {
        0 => {
            let field = ["v", "id", "merchant_id", "tipo", "valor_cents", "data", "descricao", "criado_em"]
                [rng.gen_range(0..8)];
            v.as_object_mut().unwrap().remove(field);
            "malformed"
        }
        1 => {
            v["valor_cents"] = json!(-rng.gen_range(0..1_000_000_i64));
            "invalid_field"
        }
        2 => {
            v["v"] = json!(rng.gen_range(2..1000));
            "unknown_version"
        }
        3 => {
            v["data"] = json!(["2026-02-30", "", "amanhã", "2026-1-1"][rng.gen_range(0..4)]);
            "invalid_field"
        }
        4 => {
            v["data"] = json!(format!("19{:02}-01-01", rng.gen_range(0..100)));
            "invalid_field"
        }
        5 => {
            v["merchant_id"] = json!(["", "bad id!", "x".repeat(65).as_str()][rng.gen_range(0..3)]);
            "invalid_field"
        }
        6 => {
            let bytes = serde_json::to_vec(&v).unwrap();
            return (bytes[..rng.gen_range(1..bytes.len())].to_vec(), "malformed");
        }
        7 => {
            v["valor_cents"] = json!(valid.valor.cents() + 1);
            "conflicting_duplicate"
        }
        _ => {
            v["tipo"] = json!("pix");
            "malformed"
        }
    };
    (serde_json::to_vec(&v).unwrap(), code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_malformed_and_mutated_records_are_consolidated_or_parked_and_nothing_panics() {
    let p = Pipeline::start_stages(
        Store::Sqlite,
        &[(SHIPPED_BACKOFF, "backoff_ms: [50]"), (SHIPPED_ATTEMPTS, "max_attempts: 1")],
    )
    .await;
    let tokens = login_all(&p).await;
    let seed = rand::random::<u64>();
    eprintln!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);

    // 2,000 valid entries first, then 8,000 random byte strings, mutations and exact redeliveries.
    let mut oracle = Oracle::default();
    let valid: Vec<Lancamento> = (0..2000)
        .map(|_| {
            let m = MERCHANTS[rng.gen_range(0..MERCHANTS.len())];
            let (credit, cents) = (rng.gen_bool(0.5), rng.gen_range(1..10_000_000));
            let date = BusinessDate::from_days(d("2026-06-01").days() + rng.gen_range(0..30)).unwrap();
            oracle.add(Posted { merchant: m.into(), credit, cents, date });
            entry(m, credit, cents, date)
        })
        .collect();
    let records: Vec<(Option<i32>, &str, Vec<u8>)> =
        valid.iter().map(|e| (None, e.merchant_id.as_str(), e.encode())).collect();
    p.produce("lancamentos", &records).await;

    let mut expected: BTreeMap<&str, usize> = BTreeMap::new();
    let mut bad: Vec<(Option<i32>, &str, Vec<u8>)> = Vec::new();
    let mut is_bad: Vec<bool> = Vec::new();
    for i in 0..8000 {
        let original = &valid[rng.gen_range(0..valid.len())];
        let key = original.merchant_id.as_str();
        let (payload, code) = match i % 20 {
            0 => (original.encode(), None),
            n if n % 2 == 1 => {
                let len = rng.gen_range(0..300);
                ((0..len).map(|_| rng.r#gen::<u8>()).collect(), Some("malformed"))
            }
            _ => {
                let (payload, code) = mutate(&mut rng, original);
                (payload, Some(code))
            }
        };
        if let Some(code) = code {
            *expected.entry(code).or_default() += 1;
        }
        is_bad.push(code.is_some());
        bad.push((None, key, payload));
    }
    let positions = p.produce("lancamentos", &bad).await;
    let want_parked: HashSet<(i64, i64)> = positions
        .iter()
        .zip(&is_bad)
        .filter(|(_, b)| **b)
        .map(|((partition, offset), _)| (i64::from(*partition), *offset))
        .collect();

    assert_matches_oracle(&p, &tokens, &oracle, d("2026-06-01"), d("2026-06-30")).await;
    let parked = p.await_parked(want_parked.len(), Duration::from_secs(180)).await;
    let mut codes: BTreeMap<&str, usize> = BTreeMap::new();
    let mut got: HashSet<(i64, i64)> = HashSet::new();
    for r in &parked {
        let f = &r["failure"];
        *codes.entry(f["code"].as_str().unwrap()).or_default() += 1;
        got.insert((f["origin_partition"].as_i64().unwrap(), f["origin_offset"].as_i64().unwrap()));
    }
    eprintln!("parked by code: {codes:?}; expected {expected:?}");
    // Random bytes can be valid JSON of the wrong shape ("7"), which decodes as malformed too.
    assert_eq!(got, want_parked, "every invalid record parked, and nothing else");
    assert_eq!(parked.len(), want_parked.len(), "each parked once");
    assert_eq!(codes, expected.into_iter().collect::<BTreeMap<_, _>>());
    assert_matches_oracle(&p, &tokens, &oracle, d("2026-06-01"), d("2026-06-30")).await;
    assert!(p.log_matching("panicked").is_empty(), "{}", p.log_tail());
}

/// The merchant's own parked records, as `GET /v1/lancamentos/retidos` lists them.
async fn retidos(p: &Pipeline, token: &str) -> Vec<Value> {
    let listed: Value = p.api.get(token, "/v1/lancamentos/retidos").await.json().await.unwrap();
    listed["retidos"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reversals_say_nothing_of_other_merchants_and_a_second_one_with_other_facts_is_refused_or_parked_visibly() {
    let mut p = Pipeline::start_with(
        Store::Sqlite,
        // A reversal waits up to about 25 s for its original: through a restart.
        &[(SHIPPED_BACKOFF, "backoff_ms: [1000, 2000]"), (SHIPPED_ATTEMPTS, "max_attempts: 12")],
    )
    .await;
    let tokens = login_all(&p).await;
    let (a, b) = (MERCHANTS[0], MERCHANTS[1]);
    let theirs = Posted { merchant: a.into(), credit: true, cents: 5_000, date: d("2026-04-05") };
    let r: Value = p.api.post_entry(&tokens[a], &theirs.body("de a"), None).await.json().await.unwrap();
    let theirs_id = r["id"].as_str().unwrap().to_owned();
    let mut oracle = Oracle::default();
    oracle.add(theirs);
    assert_matches_oracle(&p, &tokens, &oracle, d("2026-04-01"), d("2026-04-30")).await;

    // Another merchant's entry is answered as an unknown one, and both end the same way.
    let foreign = p.api.reverse(&tokens[b], &theirs_id, &json!({"data": "2026-04-06"})).await;
    let unknown = p.api.reverse(&tokens[b], &EntryId::random().to_string(), &json!({"data": "2026-04-06"})).await;
    assert_eq!((foreign.status(), unknown.status()), (unknown.status(), reqwest::StatusCode::ACCEPTED));

    // A second reversal of one entry with other facts: 409 while ingest knows the first...
    let later = EntryId::from_idempotency_key(&MerchantId::parse(a).unwrap(), "venda-tardia").to_string();
    let first = json!({"data": "2026-04-10", "descricao": "devolução"});
    assert_eq!(p.api.reverse(&tokens[a], &later, &first).await.status(), 202);
    assert_eq!(p.api.reverse(&tokens[a], &later, &first).await.status(), 202, "the same reversal again");
    let other = json!({"data": "2026-04-11", "descricao": "devolução"});
    let refused = p.api.reverse(&tokens[a], &later, &other).await;
    assert_eq!(refused.status(), 409);
    let problem: Value = refused.json().await.unwrap();
    assert!(problem["type"].as_str().is_some_and(|t| t.ends_with("already-reversed")), "{problem}");

    // ...and, once it forgot (a restart), parked as already_reversed where the merchant sees it.
    p.restart().await;
    assert_eq!(p.api.reverse(&tokens[a], &later, &other).await.status(), 202);
    let original = Posted { merchant: a.into(), credit: true, cents: 700, date: d("2026-04-09") };
    assert_eq!(p.api.post_entry(&tokens[a], &original.body("tardia"), Some("venda-tardia")).await.status(), 202);
    let deadline = Instant::now() + Duration::from_secs(60);
    let parked = loop {
        let own = retidos(&p, &tokens[a]).await;
        if !own.is_empty() || Instant::now() > deadline {
            break own;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    // Each record of the reversal that lost is parked (the first was sent twice: two records),
    // all with the same facts, while the other reversal counts.
    assert!(!parked.is_empty(), "nothing parked");
    let lost = &parked[0]["lancamento"]["data"];
    assert!(parked.iter().all(|r| r["codigo"] == "already_reversed" && &r["lancamento"]["data"] == lost), "{parked:?}");
    let kept = if lost == "2026-04-11" { "2026-04-10" } else { "2026-04-11" };
    oracle.add(original);
    oracle.add(Posted { merchant: a.into(), credit: false, cents: 700, date: d(kept) });
    assert_matches_oracle(&p, &tokens, &oracle, d("2026-04-01"), d("2026-04-30")).await;

    // Merchant b's two reversals are parked alike, each on one log line, not one per attempt.
    let deadline = Instant::now() + Duration::from_secs(90);
    while retidos(&p, &tokens[b]).await.len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let own = retidos(&p, &tokens[b]).await;
    let codes: Vec<&Value> = own.iter().map(|r| &r["codigo"]).collect();
    assert_eq!(codes, [&json!("original_not_found"), &json!("original_not_found")], "{own:?}");
    let warnings = p.log_matching(" WARN ");
    let parked_lines = warnings.iter().filter(|l| l.contains("record parked")).count();
    let parked_records = own.len() + retidos(&p, &tokens[a]).await.len();
    assert_eq!(parked_lines, parked_records, "one line per parked record:\n{}", warnings.join("\n"));
    assert!(!warnings.iter().any(|l| l.contains("record rejected")), "{}", warnings.join("\n"));
}
