//! SmartModules in a running pipeline: the example modules, chained, on both stores, checked
//! against an oracle that applies the same rules in plain Rust; and modules that misbehave.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use cashflow_core::{BusinessDate, Money};
use cashflow_tests::{
    MERCHANTS, Oracle, Pipeline, Posted, Role, Store, UNLIMITED, assert_matches_oracle, d, fresh_postgres_database,
    login_all, random_entries,
};
use futures::StreamExt as _;
use rand::Rng as _;
use serde_json::{Value, json};

fn wasm(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../smartmodules/{name}/{name}.wasm"));
    path.canonicalize().unwrap().display().to_string()
}

/// `modules` (YAML list items) placed between dedupe and aggregate.
fn with_modules(modules: &str) -> (String, String) {
    ("      - operator: aggregate ".to_owned(), format!("{modules}      - operator: aggregate "))
}

fn examples() -> String {
    format!(
        "      - operator: smartmodule\n        name: sem-teste\n        path: {}\n        kind: filter\n\
         \x20     - operator: smartmodule\n        name: categorias\n        path: {}\n        kind: map\n        params: {{ regra: \"aluguel=moradia, cartao=cartao\" }}\n\
         \x20     - operator: smartmodule\n        name: taxa-cartao\n        path: {}\n        kind: array-map\n        params: {{ taxa_bps: \"250\" }}\n",
        wasm("sem-teste"),
        wasm("categorias"),
        wasm("taxa-cartao")
    )
}

/// What the three example modules make of an entry, in plain Rust: (credit, cents, categoria).
fn oracle_rule(credit: bool, cents: i64, descricao: &str, categoria: Option<&str>) -> Vec<(bool, i64, Option<String>)> {
    let lower = descricao.to_lowercase();
    if lower.starts_with("teste") {
        return vec![];
    }
    let categoria = categoria.map(str::to_owned).or_else(|| {
        [("aluguel", "moradia"), ("cartao", "cartao")]
            .iter()
            .find(|(w, _)| lower.contains(w))
            .map(|(_, c)| (*c).to_owned())
    });
    let mut out = vec![(credit, cents, categoria.clone())];
    let fee = (i128::from(cents) * 250 + 5_000) / 10_000;
    if credit && categoria.as_deref() == Some("cartao") && fee > 0 {
        out.push((false, i64::try_from(fee).unwrap(), Some("taxas".into())));
    }
    out
}

/// (merchant, day) → (credits, debits, count), and (merchant, categoria) → (credits, debits, count).
#[derive(Default)]
struct Expected {
    days: BTreeMap<(String, String), (i64, i64, i64)>,
    categories: BTreeMap<(String, String), (i64, i64, i64)>,
}

impl Expected {
    fn add(&mut self, merchant: &str, data: &str, (credit, cents, categoria): (bool, i64, Option<String>)) {
        let (c, dr) = if credit { (cents, 0) } else { (0, cents) };
        for totals in [
            self.days.entry((merchant.to_owned(), data.to_owned())).or_default(),
            self.categories.entry((merchant.to_owned(), categoria.unwrap_or_default())).or_default(),
        ] {
            *totals = (totals.0 + c, totals.1 + dr, totals.2 + 1);
        }
    }
}

fn cents(v: &Value) -> i64 {
    v.as_str().unwrap().parse::<Money>().unwrap().cents()
}

async fn examples_match_the_oracle(store: Store) {
    let (from, to) = with_modules(&examples());
    let p = Pipeline::start_with(store, &[(&from, &to)]).await;
    let tokens = login_all(&p).await;
    let texts = ["venda", "Teste de caixa", "aluguel da loja", "venda cartao", "cartao credito", "padaria"];
    let (first, last) = (d("2026-03-01"), d("2026-03-10"));
    let mut expected = Expected::default();
    let mut fees = 0;
    for i in 0..240_usize {
        let merchant = MERCHANTS[i % MERCHANTS.len()];
        let credit = i % 3 != 0;
        let cents = 1_000 + (i as i64 * 7_919) % 2_000_000;
        let descricao = texts[i % texts.len()];
        let categoria = (i % 11 == 0).then_some("propria");
        let data = BusinessDate::from_days(first.days() + (i % 10) as i32).unwrap().to_string();
        let mut body = json!({
            "tipo": if credit { "credito" } else { "debito" },
            "valor": format!("{}.{:02}", cents / 100, cents % 100),
            "data": data,
            "descricao": format!("{descricao} {i}"),
        });
        if let Some(c) = categoria {
            body["categoria"] = json!(c);
        }
        assert_eq!(p.api.post_entry(&tokens[merchant], &body, None).await.status(), 202);
        let made = oracle_rule(credit, cents, &format!("{descricao} {i}"), categoria);
        fees += made.len().saturating_sub(1);
        for m in made {
            expected.add(merchant, &data, m);
        }
    }
    assert!(fees > 30, "the card sales added fees: {fees}");

    // Wait for every day's count, then compare every day and every category.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut got = BTreeMap::new();
        for m in MERCHANTS {
            let answer = p.api.daily(&tokens[m], &first.to_string(), &last.to_string()).await;
            for day in answer["dias"].as_array().unwrap() {
                let n = day["lancamentos"].as_i64().unwrap();
                if n > 0 {
                    let key = (m.to_owned(), day["data"].as_str().unwrap().to_owned());
                    got.insert(key, (cents(&day["creditos"]), cents(&day["debitos"]), n));
                }
            }
        }
        if got == expected.days {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "daily balances differ from the oracle:\n got {got:?}\nwant {:?}",
            expected.days
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut categories = BTreeMap::new();
    for m in MERCHANTS {
        let path = format!("/v1/consolidado/categorias?de={first}&ate={last}");
        let answer: Value = p.api.get(&tokens[m], &path).await.json().await.unwrap();
        for c in answer["categorias"].as_array().unwrap() {
            let key = (m.to_owned(), c["categoria"].as_str().unwrap_or_default().to_owned());
            categories.insert(key, (cents(&c["creditos"]), cents(&c["debitos"]), c["lancamentos"].as_i64().unwrap()));
        }
    }
    assert_eq!(categories, expected.categories);

    // The audit accounts for every record, the dropped ones by running the filter again.
    let out = p.cli(&["audit"], "");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}{}", String::from_utf8_lossy(&out.stderr));
    assert!(report.contains("40 dropped by the SmartModules"), "{report}");
    let metrics = p.api.metrics(&p.api.base).await;
    assert_eq!(metrics.must("cashflow_smartmodule_records_in_total{smartmodule=\"sem-teste\"}"), 240.0);
    assert_eq!(metrics.must("cashflow_smartmodule_records_out_total{smartmodule=\"sem-teste\"}"), 200.0);
    assert!(metrics.must("cashflow_smartmodule_fuel_used_total{smartmodule=\"taxa-cartao\"}") > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_modules_on_sqlite_give_the_oracles_balances() {
    examples_match_the_oracle(Store::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_modules_on_postgres_give_the_oracles_balances() {
    examples_match_the_oracle(Store::Postgres(fresh_postgres_database().await)).await;
}

/// The card-fee split across `kill -9`: the consolidator is killed while card sales flow, and each
/// sale's gross credit and fee debit count once each (the fee's id derives from the sale's, so a
/// sale consolidated again after a kill makes the same two entries, and the store's dedupe holds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_card_fee_split_counts_gross_and_fee_once_each_across_consolidator_kills() {
    let module = format!(
        "      - operator: smartmodule\n        name: taxa-cartao\n        path: {}\n        kind: array-map\n        params: {{ taxa_bps: \"250\" }}\n",
        wasm("taxa-cartao")
    );
    let (from, to) = with_modules(&module);
    let mut p = Pipeline::start_stages(Store::Sqlite, &[(&from, &to), UNLIMITED]).await;
    let tokens = login_all(&p).await;
    let (first, de, ate) = (d("2026-04-01"), d("2026-03-31"), d("2026-04-30"));
    let entries = random_entries(&MERCHANTS, 8_000, first, 30);
    let (api, toks) = (p.api.clone(), tokens.clone());
    let load = tokio::spawn(async move {
        futures::stream::iter(entries)
            .map(|e| {
                let (api, token) = (api.clone(), toks[e.merchant.as_str()].clone());
                async move {
                    // Every credit is a card sale.
                    let mut body = e.body("venda");
                    body["categoria"] = json!(if e.credit { "cartao" } else { "insumos" });
                    let status = api.post_entry(&token, &body, None).await.status().as_u16();
                    (e, status)
                }
            })
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await
    });
    let mut during_load = 0;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(rand::thread_rng().gen_range(150..500))).await;
        during_load += usize::from(!load.is_finished());
        p.kill(Role::Consolidate);
        tokio::time::sleep(Duration::from_millis(100)).await;
        p.launch(Role::Consolidate).await;
    }
    let mut oracle = Oracle::default();
    let mut fees = 0;
    for (e, status) in load.await.unwrap() {
        assert_eq!(status, 202, "{e:?}");
        let fee = (i128::from(e.cents) * 250 + 5_000) / 10_000;
        if e.credit && fee > 0 {
            let fee = Posted { credit: false, cents: i64::try_from(fee).unwrap(), ..e.clone() };
            oracle.add(fee);
            fees += 1;
        }
        oracle.add(e);
    }
    assert!(fees > 3_000, "most credits pay a fee: {fees}");
    assert!(during_load > 0, "the consolidator was killed while sales were posted");
    assert_matches_oracle(&p, &tokens, &oracle, de, ate).await;
    eprintln!(
        "{fees} fees over 8000 entries; the consolidator was killed 3 times, {during_load} of them while posting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_that_traps_loops_or_lies_parks_that_entry_and_the_stream_goes_on() {
    let module = format!(
        "      - operator: smartmodule\n        name: falhas\n        path: {}\n        kind: map\n        fuel: 5000000\n",
        wasm("falhas")
    );
    let (from, to) = with_modules(&module);
    let p = Pipeline::start_with(
        Store::Sqlite,
        &[
            (&from, &to),
            ("backoff_ms: [1000, 10000, 60000]", "backoff_ms: [100]"),
            ("max_attempts: 5", "max_attempts: 1"),
        ],
    )
    .await;
    let tokens = login_all(&p).await;
    let m = MERCHANTS[0];
    let mut ids = HashMap::new();
    for (i, descricao) in
        ["falha:trap", "falha:loop", "falha:lixo", "falha:comerciante", "falha:erro"].iter().enumerate()
    {
        for n in 0..3 {
            let body = json!({"tipo": "credito", "valor": "1.00", "data": "2026-03-02", "descricao": format!("{descricao} {n}")});
            let r = p.api.post_entry(&tokens[m], &body, Some(&format!("bad-{i}-{n}"))).await;
            assert_eq!(r.status(), 202);
            let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
            ids.insert(id, *descricao);
        }
        let good = json!({"tipo": "credito", "valor": "10.00", "data": "2026-03-02", "descricao": format!("boa {i}")});
        assert_eq!(p.api.post_entry(&tokens[m], &good, None).await.status(), 202);
    }

    // The bad ones are parked, each with its code; the good ones are counted.
    let parked = p.await_parked(ids.len(), Duration::from_secs(60)).await;
    assert_eq!(parked.len(), ids.len(), "{parked:#?}");
    for record in &parked {
        let payload: Value = serde_json::from_str(record["payload"].as_str().unwrap()).unwrap();
        let descricao = ids[payload["id"].as_str().unwrap()];
        let want = if matches!(descricao, "falha:lixo" | "falha:comerciante") {
            "smartmodule_output"
        } else {
            "smartmodule_error"
        };
        assert_eq!(record["failure"]["code"], want, "{descricao}: {record}");
    }
    let day = p.api.daily(&tokens[m], "2026-03-02", "2026-03-02").await;
    assert_eq!((&day["dias"][0]["creditos"], &day["dias"][0]["lancamentos"]), (&json!("50.00"), &json!(5)), "{day}");
    let metrics = p.api.metrics(&p.api.base).await;
    let failed =
        metrics.must("cashflow_smartmodule_records_failed_total{code=\"smartmodule_error\",smartmodule=\"falhas\"}");
    assert!(failed >= 9.0, "trap, loop and erro, three each, at least once: {failed}");

    // A module that is not pure, found out by a redelivery: the same record twice on the topic
    // (in two epochs) gives different facts the second time, which is parked; the first counts.
    let record = serde_json::to_vec(&json!({
        "v": 1, "id": "6f1d2c3b-4a5e-4f60-8172-93a4b5c6d7e8", "merchant_id": m, "tipo": "credito",
        "valor_cents": 700, "data": "2026-03-02", "descricao": "falha:impura", "criado_em": chrono::Utc::now().to_rfc3339(),
    }))
    .unwrap();
    for _ in 0..2 {
        p.produce("lancamentos", &[(None, m, record.clone())]).await;
        tokio::time::sleep(Duration::from_millis(1_500)).await;
    }
    let parked = p.await_parked(ids.len() + 1, Duration::from_secs(60)).await;
    let last = parked.last().unwrap();
    assert_eq!(last["failure"]["code"], "conflicting_duplicate", "{last}");
    let day = p.api.daily(&tokens[m], "2026-03-02", "2026-03-02").await;
    assert_eq!((&day["dias"][0]["creditos"], &day["dias"][0]["lancamentos"]), (&json!("57.00"), &json!(6)), "{day}");
}

#[test]
fn validate_refuses_a_missing_or_invalid_module_at_its_yaml_path() {
    let not_wasm = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let cases = [
        ("/nao/existe.wasm", "cannot read"),
        (env!("CARGO_MANIFEST_DIR"), "cannot read"),
        (not_wasm.to_str().unwrap(), "is not a WebAssembly module"),
    ];
    for (path, says) in cases {
        let module =
            format!("      - operator: smartmodule\n        name: x\n        path: {path}\n        kind: map\n");
        let (from, to) = with_modules(&module);
        let p = Pipeline::configure(Store::Sqlite, &[(&from, &to)]);
        let out = p.cli(&["validate"], "");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains("services.consolidate.transforms[2].path") && stderr.contains(says), "{stderr}");
    }
}

#[test]
fn smartmodule_test_runs_a_module_over_entries_for_its_author() {
    let sale = r#"{"v":1,"id":"0b4c7f2e-3d1a-5e6f-8a9b-1c2d3e4f5a6b","merchant_id":"loja-1","tipo":"credito","valor_cents":10000,"data":"2026-12-01","descricao":"venda","categoria":"cartao","criado_em":"2026-12-01T10:00:00.000Z"}"#;
    let p = Pipeline::configure(Store::Sqlite, &[]);
    let args =
        ["smartmodule", "test", "--path", &wasm("taxa-cartao"), "--kind", "array-map", "--param", "taxa_bps=250"];
    let out = p.cli(&args, &format!("{sale}\nnot json\n"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let made: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(made.len(), 2, "{stdout}");
    assert_eq!(
        (&made[1]["tipo"], &made[1]["valor_cents"], &made[1]["categoria"]),
        (&json!("debito"), &json!(250), &json!("taxas"))
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("line 2: not an entry"), "{stderr}");
}
