//! States declared in pipeline.yaml: one added to a running history is built from the stored
//! entries, kept by every later epoch and served by the generic route, on both stores, against
//! the oracle; and `cashflow validate` refuses bad declarations, naming their YAML path.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use chrono::Datelike as _;
use serde_json::{Value, json};

use cashflow_tests::{
    MERCHANTS, Oracle, Pipeline, Posted, Role, Store, assert_matches_oracle, d, fresh_postgres_database, login_all,
    post_all, random_entries,
};

const INTO: &str = "into: [saldo-diario, saldo-categoria, saldo-mensal, saldo-comerciante]";
const LAST_STATE: &str = "      saldo-comerciante: {";
const POR_TIPO: &str = "por-tipo: { key: [merchant_id, mes, tipo], table: consolidado_por_tipo }";
const WEEKLY: &str =
    "contagem-semanal: { key: [merchant_id, semana], values: [lancamentos], table: consolidado_contagem_semanal }";

/// (mes, tipo) -> (credits, debits, count) of one merchant, recomputed plainly.
fn by_month_and_type(oracle: &Oracle, merchant: &str) -> BTreeMap<(String, String), (i64, i64, u64)> {
    let mut out: BTreeMap<(String, String), (i64, i64, u64)> = BTreeMap::new();
    for e in oracle.entries(merchant) {
        let tipo = if e.credit { "credito" } else { "debito" };
        let row = out.entry((e.date.to_string()[..7].to_owned(), tipo.to_owned())).or_default();
        if e.credit {
            row.0 += e.cents
        } else {
            row.1 += e.cents
        }
        row.2 += 1;
    }
    out
}

fn cents(v: &Value) -> i64 {
    let (int, frac) = v.as_str().unwrap().split_once('.').unwrap();
    int.parse::<i64>().unwrap() * 100 + frac.parse::<i64>().unwrap()
}

/// The generic route's answer for `por-tipo`, as the oracle's shape; `None` while it is not
/// served (503 while the state is being built).
async fn served(p: &Pipeline, token: &str, de: &str, ate: &str) -> Option<BTreeMap<(String, String), (i64, i64, u64)>> {
    let r = p.api.get(token, &format!("/v1/consolidado/estados/por-tipo?de={de}&ate={ate}")).await;
    if r.status() == 503 {
        return None;
    }
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["estado"], "por-tipo");
    assert_eq!(body["chave"], json!(["merchant_id", "mes", "tipo"]));
    let rows = body["linhas"].as_array().unwrap();
    let keys: Vec<(String, String)> =
        rows.iter().map(|r| (r["mes"].as_str().unwrap().to_owned(), r["tipo"].as_str().unwrap().to_owned())).collect();
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "rows are ordered by key: {keys:?}");
    Some(
        rows.iter()
            .zip(keys)
            .map(|(r, k)| (k, (cents(&r["creditos"]), cents(&r["debitos"]), r["lancamentos"].as_u64().unwrap())))
            .collect(),
    )
}

/// Waits until every merchant's `por-tipo` equals the oracle's.
async fn assert_state_matches(p: &Pipeline, tokens: &HashMap<&'static str, String>, oracle: &Oracle) {
    let deadline = Instant::now() + Duration::from_secs(120);
    for m in MERCHANTS {
        let want = by_month_and_type(oracle, m);
        loop {
            let got = served(p, &tokens[m], "2025-01-01", "2026-12-31").await;
            if got.as_ref() == Some(&want) {
                break;
            }
            assert!(Instant::now() < deadline, "{m}: por-tipo {got:#?} is not the oracle's {want:#?}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// The monthly route against the oracle, for 2026.
async fn assert_monthly_matches(p: &Pipeline, tokens: &HashMap<&'static str, String>, oracle: &Oracle) {
    for m in MERCHANTS {
        let r = p.api.get(&tokens[m], "/v1/consolidado/mensal?ano=2026").await;
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        let want = by_month_and_type(oracle, m);
        for (i, month) in body["meses"].as_array().unwrap().iter().enumerate() {
            let mes = format!("2026-{:02}", i + 1);
            let credits = want.get(&(mes.clone(), "credito".into())).map_or(0, |r| r.0);
            let debits = want.get(&(mes.clone(), "debito".into())).map_or(0, |r| r.1);
            let count = want.iter().filter(|((k, _), _)| *k == mes).map(|(_, r)| r.2).sum::<u64>();
            assert_eq!(month["mes"], mes);
            assert_eq!((cents(&month["creditos"]), cents(&month["debitos"])), (credits, debits), "{m} {month}");
            assert_eq!(month["lancamentos"], count, "{m} {month}");
        }
    }
}

/// Adds `por-tipo` (and, the first time, `contagem-semanal`) to the stopped pipeline's states and
/// aggregate, and starts it.
async fn declare_por_tipo(p: &mut Pipeline, weekly: bool) {
    let shipped_into = INTO.trim_end_matches(']');
    p.edit_config(LAST_STATE, &format!("      {POR_TIPO}\n{LAST_STATE}"));
    p.edit_config(shipped_into, &format!("{shipped_into}, por-tipo"));
    if weekly {
        p.edit_config(LAST_STATE, &format!("      {WEEKLY}\n{LAST_STATE}"));
        p.edit_config(shipped_into, &format!("{shipped_into}, contagem-semanal"));
    }
    p.launch(Role::Up).await;
}

/// Each ISO week's count of one merchant's entries: from the oracle, and as served.
async fn assert_weekly_matches(p: &Pipeline, tokens: &HashMap<&'static str, String>, oracle: &Oracle) {
    for m in MERCHANTS {
        let mut want: BTreeMap<String, u64> = BTreeMap::new();
        for e in oracle.entries(m) {
            let week = e.date.date().iso_week();
            *want.entry(format!("{}-W{:02}", week.year(), week.week())).or_default() += 1;
        }
        let path = "/v1/consolidado/estados/contagem-semanal?de=2025-01-01&ate=2026-12-31";
        let deadline = Instant::now() + Duration::from_secs(60);
        let r = loop {
            let r = p.api.get(&tokens[m], path).await;
            if r.status() != 503 || Instant::now() > deadline {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["valores"], json!(["lancamentos"]));
        let got: BTreeMap<String, u64> = body["linhas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| {
                assert!(row.get("creditos").is_none() && row.get("debitos").is_none(), "only its values: {row}");
                (row["semana"].as_str().unwrap().to_owned(), row["lancamentos"].as_u64().unwrap())
            })
            .collect();
        assert_eq!(got, want, "{m}");
    }
}

async fn a_state_added_to_pipeline_yaml_is_built_then_kept(store: Store) {
    let mut p = Pipeline::start(store).await;
    let tokens = login_all(&p).await;
    let mut oracle = Oracle::default();
    let (de, ate) = (d("2025-12-01"), d("2026-03-31"));

    // 1. a history, across a year's end and months
    post_all(&p, &tokens, random_entries(&MERCHANTS, 400, d("2025-12-10"), 60), &mut oracle).await;
    assert_matches_oracle(&p, &tokens, &oracle, de, ate).await;
    let r = p.api.get(&tokens["loja-a"], "/v1/consolidado/estados/por-tipo?de=2026-01-01&ate=2026-01-31").await;
    assert_eq!(r.status(), 404, "not declared yet");

    // 2. stop, declare `por-tipo` (and a weekly count), start again
    p.stop().await;
    declare_por_tipo(&mut p, true).await;

    // 3. their builds from the stored entries equal the oracle
    assert_state_matches(&p, &tokens, &oracle).await;
    assert_weekly_matches(&p, &tokens, &oracle).await;
    let built = p.log_matching("state built");
    assert_eq!(built.len(), 2, "each built once: {built:?}");
    assert!(built.iter().all(|b| b.contains("entries=400")), "{built:?}");

    // 4. new entries, backdated ones and reversals keep it equal
    post_all(&p, &tokens, random_entries(&MERCHANTS, 150, d("2026-01-25"), 40), &mut oracle).await;
    for (i, m) in MERCHANTS.iter().enumerate() {
        let original = Posted { merchant: (*m).into(), credit: i % 2 == 0, cents: 12_345, date: d("2026-02-27") };
        let r = p.api.post_entry(&tokens[m], &original.body("a reverter"), None).await;
        assert_eq!(r.status(), 202);
        let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
        oracle.add(original.clone());
        assert_matches_oracle(&p, &tokens, &oracle, de, ate).await;
        // reversed on a day of the month before: the reversal moves money between months
        let r = p.api.reverse(&tokens[m], &id, &json!({ "data": "2026-01-31" })).await;
        assert_eq!(r.status(), 202);
        oracle.add(Posted { credit: !original.credit, date: d("2026-01-31"), ..original });
    }
    assert_state_matches(&p, &tokens, &oracle).await;
    assert_weekly_matches(&p, &tokens, &oracle).await;

    // 5. a restart builds nothing again, and the states stay equal
    p.restart().await;
    let tokens = login_all(&p).await;
    assert_state_matches(&p, &tokens, &oracle).await;
    assert_weekly_matches(&p, &tokens, &oracle).await;
    assert_eq!(p.log_matching("state built").len(), 2, "a kept state is not built again");

    // 6. the fixed states and routes are unchanged
    assert_matches_oracle(&p, &tokens, &oracle, de, ate).await;
    assert_monthly_matches(&p, &tokens, &oracle).await;
    let r = p.api.get(&tokens["loja-a"], "/v1/consolidado/estados/saldo-mensal?de=2026-01-01&ate=2026-12-31").await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["chave"], json!(["merchant_id", "mes"]));
    let want = by_month_and_type(&oracle, "loja-a");
    for row in body["linhas"].as_array().unwrap() {
        let mes = row["mes"].as_str().unwrap().to_owned();
        let credits = want.get(&(mes.clone(), "credito".into())).map_or(0, |r| r.0);
        assert_eq!(cents(&row["creditos"]), credits, "{row}");
    }

    // the route's edges: an unknown state, a range on a state without a period, a bad range
    let token = &tokens["loja-a"];
    let r = p.api.get(token, "/v1/consolidado/estados/nada?de=2026-01-01&ate=2026-01-31").await;
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let r = p.api.get(token, "/v1/consolidado/estados/saldo-comerciante").await;
    assert_eq!(r.status(), 200);
    let total: Value = r.json().await.unwrap();
    assert_eq!(total["linhas"].as_array().unwrap().len(), 1, "{total}");
    assert_eq!(total["linhas"][0]["lancamentos"], oracle.count("loja-a"));
    let r = p.api.get(token, "/v1/consolidado/estados/saldo-comerciante?de=2026-01-01&ate=2026-01-31").await;
    assert_eq!(r.status(), 422);
    let r = p.api.get(token, "/v1/consolidado/estados/saldo-diario?de=2025-01-01&ate=2026-12-31").await;
    assert_eq!(r.status(), 422, "a daily state takes at most 366 days");
    let r = p.api.get(token, "/v1/consolidado/estados/por-tipo").await;
    assert_eq!(r.status(), 422, "a state with a period takes a range");

    // the pipeline's name and version are exported
    let metrics = p.api.metrics(&p.api.base).await;
    assert_eq!(metrics.value("cashflow_pipeline_info{name=\"cashflow\",version=\"0.1.0\"}"), Some(1.0));

    // the OpenAPI names every declared state with its key
    let r = p.api.client.get(format!("{}/openapi.json", p.api.base)).send().await.unwrap();
    let api: Value = r.json().await.unwrap();
    let nome = &api["paths"]["/v1/consolidado/estados/{nome}"]["get"]["parameters"][0];
    assert_eq!(nome["name"], "nome");
    let names = nome["schema"]["enum"].as_array().unwrap();
    assert_eq!(names.len(), 6, "{nome}");
    assert!(names.contains(&json!("por-tipo")), "{nome}");
    assert!(nome["description"].as_str().unwrap().contains("`por-tipo`: [merchant_id, mes, tipo]"), "{nome}");

    // 7. removed, the state is no longer kept (entries go on without it); declared again, it is
    // rebuilt, and counts what came while it was gone
    p.stop().await;
    p.edit_config(", por-tipo", "");
    p.edit_config(&format!("      {POR_TIPO}\n"), "");
    p.launch(Role::Up).await;
    let extra = vec![Posted { merchant: "loja-b".into(), credit: true, cents: 777, date: d("2026-03-03") }];
    post_all(&p, &tokens, extra, &mut oracle).await;
    assert_matches_oracle(&p, &tokens, &oracle, de, ate).await;
    p.stop().await;
    declare_por_tipo(&mut p, false).await;
    assert_state_matches(&p, &tokens, &oracle).await;
    assert_weekly_matches(&p, &tokens, &oracle).await;
    assert_eq!(p.log_matching("state built").len(), 3, "rebuilt once when declared again");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_added_on_sqlite_is_built_from_the_stored_entries_then_kept() {
    a_state_added_to_pipeline_yaml_is_built_then_kept(Store::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_added_on_postgres_is_built_from_the_stored_entries_then_kept() {
    let url = fresh_postgres_database().await;
    a_state_added_to_pipeline_yaml_is_built_then_kept(Store::Postgres(url)).await;
}

/// `cashflow validate` on bad declarations of states and operators: each exits 1 and names the
/// YAML path of its problem.
#[test]
fn validate_refuses_bad_state_and_transform_declarations() {
    let shipped = include_str!("../../pipeline.yaml");
    let add_state = |decl: &str| shipped.replacen(LAST_STATE, &format!("      {decl}\n{LAST_STATE}"), 1);
    let add_kept =
        |decl: &str, name: &str| add_state(decl).replacen(INTO, &INTO.replace(']', &format!(", {name}]")), 1);
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "an unknown operator",
            shipped.replacen("- operator: dedupe ", "- operator: explode ", 1),
            "services.consolidate.transforms[1].operator: unknown variant `explode`",
        ),
        (
            "operators out of order",
            shipped
                .replacen("- operator: validate ", "- operator: TMP ", 1)
                .replacen("- operator: dedupe ", "- operator: validate ", 1)
                .replacen("- operator: TMP ", "- operator: dedupe ", 1),
            "services.consolidate.transforms: must be validate, dedupe, any smartmodules, aggregate",
        ),
        (
            "an aggregate into an unknown state",
            shipped.replacen(INTO, &INTO.replace(']', ", nada]"), 1),
            "services.consolidate.transforms[2].into[4]: unknown state \"nada\"",
        ),
        (
            "a state named twice in into",
            shipped.replacen(INTO, &INTO.replace(']', ", saldo-mensal]"), 1),
            "services.consolidate.transforms[2].into[4]: state \"saldo-mensal\" is named twice",
        ),
        (
            "an unknown key field",
            add_kept("x: { key: [merchant_id, hora], table: consolidado_x }", "x"),
            "services.consolidate.states.x.key[1]: unknown variant `hora`",
        ),
        (
            "a key without the merchant",
            add_kept("x: { key: [data], table: consolidado_x }", "x"),
            "services.consolidate.states.x.key: must start with merchant_id",
        ),
        (
            "a field twice in a key",
            add_kept("x: { key: [merchant_id, mes, mes], table: consolidado_x }", "x"),
            "services.consolidate.states.x.key: names mes twice",
        ),
        (
            "a table outside the states' names",
            add_kept("x: { key: [merchant_id, tipo], table: lancamentos }", "x"),
            "services.consolidate.states.x.table: \"lancamentos\" is not a table name",
        ),
        (
            "two states in one table",
            add_kept("x: { key: [merchant_id, data], table: consolidado_diario }", "x"),
            "services.consolidate.states.x.table: \"consolidado_diario\" holds another state too",
        ),
        (
            "a state declared and not aggregated",
            add_state("x: { key: [merchant_id, tipo], table: consolidado_x }"),
            "services.consolidate.states.x: no aggregate operator keeps it",
        ),
        (
            "an unknown key of a state",
            add_kept("x: { key: [merchant_id, tipo], table: consolidado_x, valores: [creditos] }", "x"),
            "services.consolidate.states.x.valores: unknown field `valores`",
        ),
        (
            "a state's name that is no URL segment",
            add_kept("Por_Tipo: { key: [merchant_id, tipo], table: consolidado_x }", "Por_Tipo"),
            "services.consolidate.states.Por_Tipo: a state's name has 1 to 63 characters of [a-z0-9-]",
        ),
        (
            "a fixed route's state removed",
            shipped
                .replacen(
                    "      saldo-mensal:      { key: [merchant_id, mes],             values: [creditos, debitos, lancamentos], table: consolidado_mensal }",
                    "",
                    1,
                )
                .replacen(INTO, "into: [saldo-diario, saldo-categoria, saldo-comerciante]", 1),
            "services.consolidate.states: GET /v1/consolidado/mensal reads the state in consolidado_mensal: declare it, with key [merchant_id, mes]",
        ),
        (
            "a fixed route's state rekeyed",
            shipped.replacen(
                "key: [merchant_id, data],            values",
                "key: [merchant_id, data, tipo],      values",
                1,
            ),
            "services.consolidate.states.saldo-diario.key: consolidado_diario is read by GET /v1/consolidado/diario with key [merchant_id, data]",
        ),
        (
            "a state without values",
            add_kept("x: { key: [merchant_id, tipo], values: [], table: consolidado_x }", "x"),
            "services.consolidate.states.x.values: must name at least one of creditos, debitos, lancamentos",
        ),
        (
            "a value named twice",
            add_kept("x: { key: [merchant_id, tipo], values: [debitos, debitos], table: consolidado_x }", "x"),
            "services.consolidate.states.x.values: names a value twice",
        ),
        (
            "a fixed route's state cut down",
            shipped.replacen(
                "values: [creditos, debitos, lancamentos], table: consolidado_mensal",
                "values: [creditos], table: consolidado_mensal",
                1,
            ),
            "services.consolidate.states.saldo-mensal.values: consolidado_mensal is read by GET /v1/consolidado/mensal with values [creditos, debitos, lancamentos]",
        ),
        (
            "a date window beyond a century",
            shipped.replacen("date_window: { past_days: 3660,", "date_window: { past_days: 99999,", 1),
            "services.consolidate.transforms[0].date_window.past_days: must be at most 36600",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (i, (what, yaml, want)) in cases.iter().enumerate() {
        assert_ne!(yaml, &shipped, "{what}: the edit changed nothing");
        let file = dir.path().join(format!("bad-{i}.yaml"));
        std::fs::write(&file, yaml).unwrap();
        let out =
            std::process::Command::new(cashflow_tests::binary("cashflow")).arg("validate").arg(&file).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
        assert!(stderr.contains(want), "{what}: expected {want:?} in\n{stderr}");
    }
}
