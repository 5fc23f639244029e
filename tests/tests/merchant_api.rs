//! The merchant's API beyond single entries: batches, checked against the oracle.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::Duration;

use cashflow_tests::{
    Api, MERCHANTS, Oracle, Pipeline, Role, Store, assert_matches_oracle, d, login_all, random_entries,
};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_1000_with_10_bad_items_records_the_990_and_explains_each_of_the_10() {
    let p = Pipeline::start(Store::Sqlite).await;
    let tokens = login_all(&p).await;
    let m = MERCHANTS[0];
    let good = random_entries(&[m], 990, d("2026-03-01"), 60);
    let mut items: Vec<Value> = good.iter().enumerate().map(|(i, e)| e.body(&format!("item {i}"))).collect();
    // The first ten items carry their own idempotency keys.
    for (i, item) in items.iter_mut().take(10).enumerate() {
        item["idempotency_key"] = json!(format!("lote-{i}"));
    }
    let template = good[0].body("x");
    let valid = || template.clone();
    let with = |field: &str, value: Value| {
        let mut v = valid();
        v[field] = value;
        v
    };
    let mut missing = valid();
    missing.as_object_mut().unwrap().remove("descricao");
    // (position, item, status, field named)
    let bad: Vec<(usize, Value, u16, &str)> = vec![
        (0, with("valor", json!("0.00")), 422, "valor"),
        (57, with("valor", json!(12.5)), 422, "valor"),
        (130, with("tipo", json!("pix")), 422, "tipo"),
        (266, with("data", json!("2026-02-30")), 422, "data"),
        (399, with("data", json!("1990-01-01")), 422, "data"),
        (512, missing, 422, "descricao"),
        (640, with("desconto", json!("1.00")), 422, "desconto"),
        (777, with("idempotency_key", json!(42)), 422, "idempotency_key"),
        (901, with("merchant_id", json!(MERCHANTS[1])), 403, ""),
        (999, json!("not an object"), 422, ""),
    ];
    for (at, item, _, _) in &bad {
        items.insert(*at, item.clone());
    }
    assert_eq!(items.len(), 1000);

    let r = lote(&p.api, &tokens[m], &items).await;
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(
        (answer["aceitos"].as_u64(), answer["rejeitados"].as_u64()),
        (Some(990), Some(10)),
        "{}",
        answer["rejeitados"]
    );
    let results = answer["resultados"].as_array().unwrap();
    assert_eq!(results.len(), 1000);
    let by_index: BTreeMap<u64, &Value> = results.iter().map(|r| (r["indice"].as_u64().unwrap(), r)).collect();
    for (at, _, status, field) in &bad {
        let result = by_index[&(*at as u64)];
        assert_eq!(result["status"], *status, "item {at}: {result}");
        assert_eq!(result["problema"]["status"], *status, "item {at} has its own problem: {result}");
        if !field.is_empty() {
            let named = result["problema"]["errors"].as_array().unwrap().iter().any(|e| e["field"] == *field);
            assert!(named, "item {at} names {field}: {result}");
        }
    }
    let accepted: Vec<&Value> = results.iter().filter(|r| r["status"] == 202).collect();
    assert!(accepted.iter().all(|r| r["id"].is_string() && r["posicao"].is_string()));

    let mut oracle = Oracle::default();
    good.into_iter().for_each(|e| oracle.add(e));
    assert_matches_oracle(&p, &tokens, &oracle, d("2026-03-01"), d("2026-04-30")).await;

    // Resending the first ten keyed items is idempotent: same ids, nothing counted twice.
    let again: Vec<Value> = items.iter().skip(1).take(9).cloned().collect();
    let r = lote(&p.api, &tokens[m], &again).await;
    let again: Value = r.json().await.unwrap();
    for (i, result) in again["resultados"].as_array().unwrap().iter().enumerate() {
        assert_eq!(result["id"], by_index[&(i as u64 + 1)]["id"], "the same key, the same id");
    }
    assert_matches_oracle(&p, &tokens, &oracle, d("2026-03-01"), d("2026-04-30")).await;

    // An empty batch and one over 1,000 are refused whole, saying the limit.
    for n in [0, 1001] {
        let items: Vec<Value> = (0..n).map(|_| valid()).collect();
        let r = lote(&p.api, &tokens[m], &items).await;
        assert_eq!(r.status(), 422);
        let problem: Value = r.json().await.unwrap();
        assert!(problem["errors"][0]["message"].as_str().unwrap().contains("1 to 1000"), "{problem}");
    }
}

/// An authenticated `GET`.
async fn get(api: &Api, token: &str, url: String) -> reqwest::Response {
    api.client.get(url).bearer_auth(token).send().await.unwrap()
}

/// `POST /v1/lancamentos/lote`.
async fn lote(api: &Api, token: &str, items: &[Value]) -> reqwest::Response {
    let url = format!("{}/v1/lancamentos/lote", api.base);
    api.client.post(url).bearer_auth(token).json(&json!({ "lancamentos": items })).send().await.unwrap()
}

/// Posts `bodies` in batches of 1,000 and expects all accepted; returns their ids in order.
async fn post_batches(p: &Pipeline, token: &str, bodies: &[Value]) -> Vec<String> {
    let mut ids = Vec::with_capacity(bodies.len());
    for chunk in bodies.chunks(1000) {
        let r = lote(&p.api, token, chunk).await;
        assert_eq!(r.status(), 200);
        let answer: Value = r.json().await.unwrap();
        assert_eq!(answer["rejeitados"], 0, "{answer}");
        ids.extend(answer["resultados"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_owned()));
    }
    ids
}

/// Every page of the statement, following `proximo_cursor`, `pause` between pages.
async fn statement(p: &Pipeline, token: &str, query: &str, limite: u32, pause: Duration) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{}/v1/lancamentos?{query}&limite={limite}", p.api.base);
        if let Some(c) = &cursor {
            url += &format!("&cursor={c}");
        }
        let r = p.api.client.get(url).bearer_auth(token).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let page: Value = r.json().await.unwrap();
        let lines = page["lancamentos"].as_array().unwrap();
        assert!(lines.len() <= limite as usize);
        out.extend(lines.iter().cloned());
        match page["proximo_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
        tokio::time::sleep(pause).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_10000_entries_while_others_arrive_repeats_and_skips_nothing() {
    let p = Pipeline::start(Store::Sqlite).await;
    let tokens = login_all(&p).await;
    let m = MERCHANTS[0];
    let entries = random_entries(&[m], 10_000, d("2026-01-01"), 90);
    let bodies: Vec<Value> = entries.iter().map(|e| e.body("venda")).collect();
    let before = post_batches(&p, &tokens[m], &bodies).await;
    let mut oracle = Oracle::default();
    entries.into_iter().for_each(|e| oracle.add(e));
    assert_matches_oracle(&p, &tokens, &oracle, d("2026-01-01"), d("2026-03-31")).await;

    // 3,000 more land on the same days while the statement is read, 500 per page.
    let during = random_entries(&[m], 3000, d("2026-01-01"), 90);
    let during: Vec<Value> = during.iter().map(|e| e.body("durante")).collect();
    let writer = {
        let (p_api, token) = (p.api.clone(), tokens[m].clone());
        tokio::spawn(async move {
            for chunk in during.chunks(300) {
                let r = lote(&p_api, &token, chunk).await;
                assert_eq!(r.status(), 200);
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        })
    };
    // Slow enough that the writer's batches land between pages, behind and ahead of the cursor.
    let read = statement(&p, &tokens[m], "de=2026-01-01&ate=2026-03-31", 500, Duration::from_millis(60)).await;
    writer.await.unwrap();

    let ids: Vec<&str> = read.iter().map(|l| l["id"].as_str().unwrap()).collect();
    let unique: std::collections::HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "an entry was repeated across pages");
    let missing = before.iter().filter(|id| !unique.contains(id.as_str())).count();
    assert_eq!(missing, 0, "entries that existed when paging began were skipped");
    let order: Vec<(String, String, String)> = read
        .iter()
        .map(|l| {
            (
                l["data"].as_str().unwrap().into(),
                l["criado_em"].as_str().unwrap().into(),
                l["id"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "pages are in (data, criado_em, id) order");
    assert!(ids.len() > before.len(), "entries arrived while paging");
    println!(
        "read {} entries: {} from before paging, {} that arrived meanwhile",
        ids.len(),
        before.len(),
        ids.len() - before.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_csv_export_round_trips_to_the_entries_and_neutralises_formulas() {
    let p = Pipeline::start(Store::Sqlite).await;
    let tokens = login_all(&p).await;
    let m = MERCHANTS[0];
    let texts = [
        "=HYPERLINK(\"http://evil.example\",\"clique\")",
        "+55 11 99999-9999",
        "-2+3",
        "@SUM(A1:A9)",
        "vírgula, \"aspas\" e ponto; fim",
        "venda à vista",
    ];
    let bodies: Vec<Value> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"tipo": "credito", "valor": format!("{}.25", i + 1), "data": "2026-02-10", "descricao": t, "categoria": if i % 2 == 0 { Value::from("=1+1") } else { Value::Null }}))
        .collect();
    let ids = post_batches(&p, &tokens[m], &bodies).await;
    let reversal = p.api.reverse(&tokens[m], &ids[0], &json!({"data": "2026-02-11"})).await;
    assert_eq!(reversal.status(), 202);
    let mut oracle = Oracle::default();
    for (i, _) in texts.iter().enumerate() {
        oracle.add(cashflow_tests::Posted {
            merchant: m.into(),
            credit: true,
            cents: 100 * (i as i64 + 1) + 25,
            date: d("2026-02-10"),
        });
    }
    oracle.add(cashflow_tests::Posted { merchant: m.into(), credit: false, cents: 125, date: d("2026-02-11") });
    assert_matches_oracle(&p, &tokens, &oracle, d("2026-02-01"), d("2026-02-28")).await;

    let json_lines = statement(&p, &tokens[m], "de=2026-02-01&ate=2026-02-28", 3, Duration::ZERO).await;
    assert_eq!(json_lines.len(), texts.len() + 1, "the entries and the reversal");
    let r = p
        .api
        .client
        .get(format!("{}/v1/lancamentos?de=2026-02-01&ate=2026-02-28", p.api.base))
        .bearer_auth(&tokens[m])
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
    let text = r.text().await.unwrap();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let header: Vec<String> = reader.headers().unwrap().iter().map(str::to_owned).collect();
    assert_eq!(
        header,
        ["data", "criado_em", "id", "tipo", "valor", "descricao", "categoria", "estorno_de", "estornado_por"]
    );
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), json_lines.len(), "the export holds exactly the entries");
    for (row, line) in rows.iter().zip(&json_lines) {
        let cell = |name: &str| row.get(header.iter().position(|h| h == name).unwrap()).unwrap().to_owned();
        let text_of = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        for field in ["data", "criado_em", "id", "tipo", "valor"] {
            assert_eq!(cell(field), text_of(&line[field]), "{field}");
        }
        for field in ["estorno_de", "estornado_por"] {
            assert_eq!(cell(field), text_of(&line[field]), "{field}");
        }
        for field in ["descricao", "categoria"] {
            let original = text_of(&line[field]);
            let exported = cell(field);
            if original.starts_with(['=', '+', '-', '@', '\t', '\r']) {
                assert_eq!(exported, format!("'{original}"), "{field} neutralised");
            } else {
                assert_eq!(exported, original, "{field} kept as is");
            }
            assert!(!exported.starts_with(['=', '+', '-', '@']), "no cell starts a formula: {exported:?}");
        }
    }
    let reversed = json_lines.iter().find(|l| l["id"] == ids[0].as_str()).unwrap();
    assert!(reversed["estornado_por"].is_string(), "the original links to its reversal");
    let rev = json_lines.iter().find(|l| l["estorno_de"] == ids[0].as_str()).unwrap();
    assert_eq!(rev["id"], reversed["estornado_por"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_with_aguardar_sees_the_entry_just_posted_and_says_stale_when_consolidation_is_down() {
    let mut p =
        Pipeline::start_stages(Store::Sqlite, &[("aguardar_timeout_ms: 5000", "aguardar_timeout_ms: 2000")]).await;
    let tokens = login_all(&p).await;
    let m = MERCHANTS[0];
    let day = "2026-06-15";
    let (api, token) = (p.api.clone(), tokens[m].clone());
    let read = |posicao: String| {
        let (api, token) = (api.clone(), token.clone());
        async move {
            let url = format!("{}/v1/consolidado/diario?de={day}&ate={day}&aguardar={posicao}", api.base);
            let started = std::time::Instant::now();
            let r = api.client.get(url).bearer_auth(token).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let stale = r.headers().get("x-cashflow-stale").is_some();
            let body: Value = r.json().await.unwrap();
            (body, stale, started.elapsed())
        }
    };
    let post = |cents: i64| {
        let (api, token) = (api.clone(), token.clone());
        async move {
            let body = json!({"tipo": "credito", "valor": format!("{}.{:02}", cents / 100, cents % 100), "data": day, "descricao": "venda"});
            let r = api.post_entry(&token, &body, None).await;
            assert_eq!(r.status(), 202);
            r.json::<Value>().await.unwrap()["posicao"].as_str().unwrap().to_owned()
        }
    };

    let mut total = 0i64;
    let mut slowest = Duration::ZERO;
    for i in 1..=200 {
        total += i;
        let posicao = post(i).await;
        let (body, stale, took) = read(posicao).await;
        let creditos = body["dias"][0]["creditos"].as_str().unwrap().to_owned();
        assert_eq!(creditos, format!("{}.{:02}", total / 100, total % 100), "read {i} misses its own write");
        assert!(!stale, "read {i} marked stale");
        assert!(body["atualizado_ate"].is_string());
        slowest = slowest.max(took);
    }
    println!("200 reads with aguardar, each including its write; slowest {slowest:?}");

    p.interrupt(Role::Consolidate).await;
    let posicao = post(1000).await;
    let (body, stale, took) = read(posicao.clone()).await;
    assert!(stale, "consolidation is down: the answer says stale");
    assert!(took >= Duration::from_millis(1900) && took < Duration::from_secs(5), "waited {took:?}, bound 2 s");
    assert_eq!(body["dias"][0]["lancamentos"], 200, "the data as it stands");
    assert!(body["atualizado_ate"].is_string());

    p.launch(Role::Consolidate).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let body = loop {
        let (body, stale, _) = read(posicao.clone()).await;
        if !stale {
            break body;
        }
        assert!(std::time::Instant::now() < deadline, "still stale a minute after the restart");
    };
    assert_eq!(body["dias"][0]["lancamentos"], 201, "consolidated after the restart");

    let bad = get(&p.api, &tokens[m], format!("{}/v1/consolidado/diario/{day}?aguardar=nope", p.api.base)).await;
    assert_eq!(bad.status(), 422);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monthly_and_category_reports_equal_the_oracle_with_backdated_entries_and_reversals() {
    let p = Pipeline::start(Store::Sqlite).await;
    let tokens = login_all(&p).await;
    let m = MERCHANTS[0];
    // A year of entries in random order (so most arrive backdated), plus a carried balance from 2025.
    let mut entries = random_entries(&[m], 300, d("2025-05-01"), 240);
    entries.extend(random_entries(&[m], 3000, d("2026-01-01"), 365));
    let categories = [None, Some("vendas"), Some("aluguel"), Some("=insumos")];
    let category_of: Vec<Option<&str>> = (0..entries.len()).map(|i| categories[(i * 7 + i / 3) % 4]).collect();
    let bodies: Vec<Value> = entries
        .iter()
        .zip(&category_of)
        .map(|(e, c)| {
            let mut body = e.body("venda");
            body["categoria"] = json!(c);
            body
        })
        .collect();
    let ids = post_batches(&p, &tokens[m], &bodies).await;
    let mut oracle = Oracle::default();
    entries.iter().cloned().for_each(|e| oracle.add(e));
    // (category, posted) of every entry and reversal, for the category report.
    let mut by_category: Vec<(Option<&str>, cashflow_tests::Posted)> =
        category_of.iter().copied().zip(entries.iter().cloned()).collect();
    assert_matches_oracle(&p, &tokens, &oracle, d("2026-01-01"), d("2026-12-31")).await;

    // Reverse 60 entries of 2026, each on a day of its own choosing.
    for (i, k) in (300..3300).step_by(50).enumerate() {
        let original = &entries[k];
        let day = cashflow_core::BusinessDate::from_days(d("2026-01-01").days() + (i as i32 * 6) % 365).unwrap();
        let r = p.api.reverse(&tokens[m], &ids[k], &json!({ "data": day.to_string() })).await;
        assert_eq!(r.status(), 202);
        let reversal =
            cashflow_tests::Posted { merchant: m.into(), credit: !original.credit, cents: original.cents, date: day };
        oracle.add(reversal.clone());
        by_category.push((category_of[k], reversal));
    }
    assert_matches_oracle(&p, &tokens, &oracle, d("2026-01-01"), d("2026-12-31")).await;

    let r = get(&p.api, &tokens[m], format!("{}/v1/consolidado/mensal?ano=2026", p.api.base)).await;
    assert_eq!(r.status(), 200);
    let report: Value = r.json().await.unwrap();
    let months = report["meses"].as_array().unwrap();
    assert_eq!(months.len(), 12);
    let posted = oracle.entries(m);
    let cents = |v: &Value| -> i64 {
        let s = v.as_str().unwrap();
        let (int, frac) = s.trim_start_matches('-').split_once('.').unwrap();
        let c = int.parse::<i64>().unwrap() * 100 + frac.parse::<i64>().unwrap();
        if s.starts_with('-') { -c } else { c }
    };
    let mut balance: i64 = posted.iter().filter(|e| e.date < d("2026-01-01")).map(|e| e.signed()).sum();
    for (i, month) in months.iter().enumerate() {
        let in_month: Vec<_> = posted
            .iter()
            .filter(|e| e.date.date().format("%Y-%m").to_string() == format!("2026-{:02}", i + 1))
            .collect();
        let credits: i64 = in_month.iter().filter(|e| e.credit).map(|e| e.cents).sum();
        let debits: i64 = in_month.iter().filter(|e| !e.credit).map(|e| e.cents).sum();
        assert_eq!(month["mes"], format!("2026-{:02}", i + 1));
        assert_eq!(cents(&month["saldo_inicial"]), balance, "{month}");
        balance += credits - debits;
        assert_eq!((cents(&month["creditos"]), cents(&month["debitos"])), (credits, debits), "{month}");
        assert_eq!(cents(&month["saldo_final"]), balance, "{month}");
        assert_eq!(month["lancamentos"], in_month.len(), "{month}");
    }

    // Per category over the year (a reversal counts in its original's category).
    let r =
        get(&p.api, &tokens[m], format!("{}/v1/consolidado/categorias?de=2026-01-01&ate=2026-12-31", p.api.base)).await;
    assert_eq!(r.status(), 200);
    let report: Value = r.json().await.unwrap();
    let got: BTreeMap<Option<String>, (i64, i64, i64, u64)> = report["categorias"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let key = c["categoria"].as_str().map(str::to_owned);
            (key, (cents(&c["creditos"]), cents(&c["debitos"]), cents(&c["saldo"]), c["lancamentos"].as_u64().unwrap()))
        })
        .collect();
    let mut want: BTreeMap<Option<String>, (i64, i64, i64, u64)> = BTreeMap::new();
    for (c, e) in by_category.iter().filter(|(_, e)| (d("2026-01-01")..=d("2026-12-31")).contains(&e.date)) {
        let w = want.entry(c.map(str::to_owned)).or_default();
        if e.credit {
            w.0 += e.cents
        } else {
            w.1 += e.cents
        }
        w.2 += e.signed();
        w.3 += 1;
    }
    assert_eq!(got, want);
    let over =
        get(&p.api, &tokens[m], format!("{}/v1/consolidado/categorias?de=2025-01-01&ate=2026-12-31", p.api.base)).await;
    assert_eq!(over.status(), 422);
    let problem: Value = over.json().await.unwrap();
    assert!(problem["errors"][0]["message"].as_str().unwrap().contains("at most 366"), "{problem}");

    for bad in ["", "ano=1899", "ano=dois-mil"] {
        let r = get(&p.api, &tokens[m], format!("{}/v1/consolidado/mensal?{bad}", p.api.base)).await;
        assert_eq!(r.status(), 422, "{bad}");
    }
}
