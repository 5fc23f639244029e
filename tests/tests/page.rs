//! The merchant's page at `/`, in a real browser (headless Chromium over WebDriver): what it shows
//! is checked against the API's own answers, and what it posts against the statement.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chrono::{Duration as Days, NaiveDate};
use serde_json::{Value, json};

use cashflow_core::Money;
use cashflow_tests::{Api, Browser, MERCHANTS, PASSWORD, Pipeline, Store, artifacts_dir};

/// The embedded pipeline, with a login for each of the first two merchants; returns the API
/// tokens of both.
async fn pipeline() -> (Pipeline, [String; 2]) {
    pipeline_with(&[]).await
}

async fn pipeline_with(edits: &[(&str, &str)]) -> (Pipeline, [String; 2]) {
    let p = Pipeline::start_with(Store::Sqlite, edits).await;
    let mut tokens = Vec::new();
    for m in &MERCHANTS[..2] {
        p.add_user(m, &user(m), PASSWORD);
        tokens.push(p.api.token(&user(m), PASSWORD).await);
    }
    (p, tokens.try_into().unwrap())
}

fn user(merchant: &str) -> String {
    format!("user-{merchant}")
}

/// The page, open and logged in as `merchant`.
async fn open_as(p: &Pipeline, merchant: &str) -> Browser {
    let b = Browser::start().await;
    b.goto(&format!("{}/", p.api.base)).await;
    log_in(&b, merchant).await;
    b
}

async fn log_in(b: &Browser, merchant: &str) {
    b.type_into("input[name=username]", &user(merchant)).await;
    b.type_into("input[name=password]", PASSWORD).await;
    // Enter, from the keyboard.
    b.find("input[name=password]").await.send_keys("\u{e007}").await.unwrap();
    b.wait_until("the panel after login", "return !document.getElementById('painel').hidden").await;
    settle(b).await;
}

/// Waits until the page has shown the answers to the last action.
async fn settle(b: &Browser) {
    b.wait_until("the page to settle", "return !document.getElementById('painel').hasAttribute('aria-busy')").await;
}

/// The period the page shows.
async fn period(b: &Browser) -> (NaiveDate, NaiveDate) {
    let value = |id: &str| format!("return document.getElementById('{id}').value");
    let de = b.js(&value("de"), vec![]).await;
    let ate = b.js(&value("ate"), vec![]).await;
    (de.as_str().unwrap().parse().unwrap(), ate.as_str().unwrap().parse().unwrap())
}

/// Fills in the new-entry form as a user would (the date through its input's value) and sends it.
async fn post_through_form(b: &Browser, tipo: &str, valor: &str, data: NaiveDate, descricao: &str, categoria: &str) {
    b.click(&format!("input[name=tipo][value={tipo}]")).await;
    b.type_into("#valor", valor).await;
    b.js("document.getElementById('data').value = arguments[0]", vec![json!(data.to_string())]).await;
    b.type_into("#descricao", descricao).await;
    b.type_into("#categoria", categoria).await;
    b.click("#form-lancamento button[type=submit]").await;
    settle(b).await;
}

/// One day as (day, credits, debits, closing balance), in cents.
type Point = (NaiveDate, i64, i64, i64);

/// The chart's data points, read from the chart itself (uPlot's data: days in epoch seconds,
/// credits, debits drawn below zero, closing balance; in reais).
async fn chart_points(b: &Browser) -> Vec<Point> {
    let data = b.js("return document.getElementById('grafico-saldo').uplot.data", vec![]).await;
    let series: Vec<Vec<f64>> = serde_json::from_value(data).unwrap();
    let cents = |v: f64| (v * 100.0).round() as i64;
    (0..series[0].len())
        .map(|i| {
            let day = chrono::DateTime::from_timestamp(series[0][i] as i64, 0).unwrap().date_naive();
            (day, cents(series[1][i]), -cents(series[2][i]), cents(series[3][i]))
        })
        .collect()
}

fn cents(v: &Value) -> i64 {
    v.as_str().unwrap().parse::<Money>().unwrap().cents()
}

/// The API's daily balances for the period, as chart points.
async fn api_points(api: &Api, token: &str, (de, ate): (NaiveDate, NaiveDate)) -> Vec<Point> {
    let answer = api.daily(token, &de.to_string(), &ate.to_string()).await;
    let dias = answer["dias"].as_array().unwrap();
    dias.iter()
        .map(|d| {
            let day = d["data"].as_str().unwrap().parse().unwrap();
            (day, cents(&d["creditos"]), cents(&d["debitos"]), cents(&d["saldo_final"]))
        })
        .collect()
}

/// The whole statement of the period from the API, every page.
async fn api_statement(api: &Api, token: &str, (de, ate): (NaiveDate, NaiveDate)) -> Vec<Value> {
    let mut lines = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/lancamentos?de={de}&ate={ate}&limite=7");
        if let Some(c) = &cursor {
            path += &format!("&cursor={c}");
        }
        let page: Value = api.get(token, &path).await.json().await.unwrap();
        lines.extend(page["lancamentos"].as_array().unwrap().iter().cloned());
        match page["proximo_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return lines,
        }
    }
}

/// `R$ 1.234,56`, as pt-BR writes it.
fn brl(cents: i64) -> String {
    let reais = (cents.abs() / 100).to_string();
    let mut grouped = String::new();
    for (i, digit) in reais.chars().enumerate() {
        if i > 0 && (reais.len() - i).is_multiple_of(3) {
            grouped.push('.');
        }
        grouped.push(digit);
    }
    format!("{}R$ {grouped},{:02}", if cents < 0 { "-" } else { "" }, cents.abs() % 100)
}

/// The text of `css`, with the no-break spaces of number formatting as plain spaces.
async fn shown(b: &Browser, css: &str) -> String {
    b.text(css).await.replace(['\u{a0}', '\u{202f}'], " ")
}

async fn assert_no_csp_violation(b: &Browser) {
    assert_eq!(b.violations().await, json!([]), "the page broke its own policy");
}

/// How many times the page has called the API at paths containing `part`.
async fn calls(b: &Browser, part: &str) -> u64 {
    let script = "return performance.getEntriesByType('resource').filter((e) => e.name.includes(arguments[0])).length";
    b.js(script, vec![json!(part)]).await.as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_entries_posted_through_the_form_are_on_the_chart_at_once_as_the_api_answers() {
    let (p, tokens) = pipeline().await;
    let b = open_as(&p, MERCHANTS[0]).await;
    let (de, ate) = period(&b).await;
    assert_eq!((ate - de).num_days(), 29, "the default period is the last 30 days");

    // Amounts typed the pt-BR way and the API's way.
    let entries = [
        ("credito", "1.234,56", ate - Days::days(3), "vendas da semana", "vendas", 123_456),
        ("debito", "320,50", ate - Days::days(1), "fornecedor", "insumos", -32_050),
        ("credito", "99.90", ate, "pix", "vendas", 9_990),
    ];
    for (tipo, valor, data, descricao, categoria, _) in entries {
        post_through_form(&b, tipo, valor, data, descricao, categoria).await;
        assert!(shown(&b, "#aviso").await.contains("registrado"), "{}", shown(&b, "#aviso").await);
    }

    // At once: the chart holds what the API answers now, without a reload.
    let points = chart_points(&b).await;
    assert_eq!(points.len(), 30);
    assert_eq!(points, api_points(&p.api, &tokens[0], (de, ate)).await);
    for (_, _, data, _, _, signed) in entries {
        let (_, credits, debits, _) = points.iter().find(|(day, ..)| *day == data).unwrap();
        assert_eq!(credits - debits, signed, "{data}");
    }
    assert_eq!(points.last().unwrap().3, 123_456 - 32_050 + 9_990, "the closing balance");
    assert!(points.iter().all(|(day, ..)| (de..=ate).contains(day)));

    // The totals and the tables, formatted pt-BR.
    assert_eq!(shown(&b, "#total-creditos").await, brl(123_456 + 9_990));
    assert_eq!(shown(&b, "#total-debitos").await, brl(32_050));
    assert_eq!(shown(&b, "#total-saldo").await, brl(123_456 - 32_050 + 9_990));
    assert_eq!(shown(&b, "#total-lancamentos").await, "3");
    let first_day = b.find("#tabela-dias tbody tr th").await.prop("textContent").await.unwrap().unwrap();
    assert_eq!(first_day, de.format("%d/%m/%Y").to_string());
    let categorias = shown(&b, "#tabela-categorias tbody").await;
    assert!(categorias.contains("vendas") && categorias.contains(&brl(133_446)), "{categorias}");
    assert_eq!(b.find_all("#tabela-extrato tbody tr[data-id]").await.len(), 3);
    assert_eq!(b.find_all("#tabela-mensal tbody tr").await.len(), 12);

    // The chart is drawn, and nothing broke the page's policy of its own assets only.
    let painted = b
        .js(
            "const c = document.querySelector('#grafico-saldo canvas'); \
             const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; \
             let n = 0; for (let i = 3; i < px.length; i += 4) if (px[i] > 0) n++; return n;",
            vec![],
        )
        .await;
    assert!(painted.as_u64().unwrap() > 1000, "the chart's canvas is blank: {painted}");
    assert_no_csp_violation(&b).await;
    let unlabelled = b
        .js("return [...document.querySelectorAll('input')].filter((i) => !i.labels.length).map((i) => i.id)", vec![])
        .await;
    assert_eq!(unlabelled, json!([]), "every input has its label");
    let page = p.api.client.get(format!("{}/", p.api.base)).send().await.unwrap();
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.starts_with("default-src 'none'; script-src 'self'; style-src 'self';"), "{csp}");
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    // The token is held in memory only.
    let stored = b.js("return [localStorage.length, sessionStorage.length, document.cookie]", vec![]).await;
    assert_eq!(stored, json!([0, 0, ""]));

    // Days after the last consolidation are projected: listed as such and shaded on the chart.
    let later = ate + Days::days(5);
    b.js("document.getElementById('ate').value = arguments[0]", vec![json!(later.to_string())]).await;
    b.click("#form-periodo button[type=submit]").await;
    settle(&b).await;
    assert_eq!(b.find_all("#tabela-dias tbody tr.projetado").await.len(), 5);
    assert_eq!(chart_points(&b).await, api_points(&p.api, &tokens[0], (de, later)).await);
    // The shade's alpha, sampled down the middle of a projected day and of a consolidated one.
    let shade = "const u = document.getElementById('grafico-saldo').uplot; \
        const x = Math.round(u.valToPos(Date.parse(arguments[0]) / 1000, 'x', true)); \
        const px = u.ctx.getImageData(x, u.bbox.top, 1, u.bbox.height).data; \
        let shaded = 0; for (let i = 3; i < px.length; i += 4) if (px[i] > 20) shaded++; \
        return shaded / (px.length / 4);";
    let projected = b.js(shade, vec![json!(later.to_string())]).await.as_f64().unwrap();
    let consolidated = b.js(shade, vec![json!((de + Days::days(1)).to_string())]).await.as_f64().unwrap();
    assert!(projected > 0.9 && consolidated < 0.5, "shaded share: projected {projected}, consolidated {consolidated}");

    let path = artifacts_dir().join("pagina-com-dados.png");
    b.screenshot(&path).await;
    let png = std::fs::read(&path).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 20_000, "{} is not a screenshot", path.display());
    println!("screenshot: {}", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_amount_shows_its_field_error_and_nothing_is_posted() {
    let (p, tokens) = pipeline().await;
    let b = open_as(&p, MERCHANTS[0]).await;
    let (de, ate) = period(&b).await;

    for bad in ["12,345", "0,00", "doze"] {
        post_through_form(&b, "credito", bad, ate, "venda", "").await;
        let error = shown(&b, "#erro-valor").await;
        assert!(!error.is_empty(), "no error next to valor for {bad:?}");
        assert_eq!(b.find("#valor").await.attr("aria-invalid").await.unwrap().as_deref(), Some("true"));
        for other in ["#erro-tipo", "#erro-data", "#erro-descricao", "#erro-categoria", "#erro-lancamento"] {
            assert_eq!(shown(&b, other).await, "", "{other} for {bad:?}");
        }
        assert_eq!(b.js("return document.activeElement.id", vec![]).await, "valor", "focus goes to the field");
    }

    // A good entry after them waits for its own position: anything sent before it would be
    // consolidated by then, and only it is.
    post_through_form(&b, "credito", "12,34", ate, "venda", "").await;
    assert_eq!(shown(&b, "#erro-valor").await, "");
    let statement = api_statement(&p.api, &tokens[0], (de, ate)).await;
    assert_eq!(statement.len(), 1, "{statement:?}");
    assert_eq!(statement[0]["valor"], "12.34");
    assert_eq!(b.find_all("#tabela-extrato tbody tr[data-id]").await.len(), 1);
    assert_no_csp_violation(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_csv_download_equals_the_statement_page_by_page() {
    let (p, tokens) = pipeline().await;
    let b = open_as(&p, MERCHANTS[0]).await;
    let range = period(&b).await;
    let today = range.1;
    // 25 entries (two pages of the page's 20), descriptions that CSV must quote.
    let texts = ["venda, balcão", "aspas \"duplas\"", "ação; serviço", "R$ 1.234,56 à vista", "simples"];
    for i in 0..25_i64 {
        let categoria = ["vendas", "insumos"][i as usize % 2];
        let body = json!({
            "tipo": if i % 3 == 0 { "debito" } else { "credito" },
            "valor": format!("{}.{:02}", 10 + i, i),
            "data": (today - Days::days(i % 7)).to_string(),
            "descricao": format!("{} {i}", texts[i as usize % texts.len()]),
            "categoria": categoria,
        });
        assert_eq!(p.api.post_entry(&tokens[0], &body, None).await.status(), 202);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let statement = loop {
        let statement = api_statement(&p.api, &tokens[0], range).await;
        if statement.len() == 25 {
            break statement;
        }
        assert!(std::time::Instant::now() < deadline, "{} of 25 entries consolidated in 30 s", statement.len());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    b.click("#form-periodo button[type=submit]").await;
    settle(&b).await;

    // The page's statement, page by page.
    let mut shown_ids = Vec::new();
    loop {
        for row in b.find_all("#tabela-extrato tbody tr[data-id]").await {
            shown_ids.push(row.attr("data-id").await.unwrap().unwrap());
        }
        if b.find("#pagina-seguinte").await.prop("disabled").await.unwrap().as_deref() == Some("true") {
            break;
        }
        b.click("#pagina-seguinte").await;
        settle(&b).await;
    }
    assert_eq!(shown(&b, "#pagina").await, "Página 2");
    let ids: Vec<&str> = statement.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(shown_ids, ids, "the page walks the statement in the API's order");

    b.click("#baixar-csv").await;
    let file = b.downloaded().await;
    let (de, ate) = range;
    assert_eq!(file.file_name().unwrap().to_str().unwrap(), format!("extrato-{}-{de}-{ate}.csv", MERCHANTS[0]));
    let mut csv = csv::Reader::from_path(&file).unwrap();
    let header: Vec<String> = csv.headers().unwrap().iter().map(str::to_owned).collect();
    let rows: Vec<csv::StringRecord> = csv.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), statement.len());
    for (row, line) in rows.iter().zip(&statement) {
        let field = |name: &str| row.get(header.iter().position(|h| h == name).unwrap()).unwrap();
        for name in ["id", "data", "criado_em", "tipo", "valor", "descricao"] {
            assert_eq!(field(name), line[name].as_str().unwrap(), "{name} of {line}");
        }
        assert_eq!(field("categoria"), line["categoria"].as_str().unwrap_or_default());
    }
    assert_no_csp_violation(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reversal_through_the_page_after_its_confirmation_nets_the_day_to_zero() {
    let (p, tokens) = pipeline().await;
    let b = open_as(&p, MERCHANTS[0]).await;
    let (de, ate) = period(&b).await;
    let day = ate - Days::days(2);
    post_through_form(&b, "credito", "250,00", day, "venda cancelada", "vendas").await;
    let row = "#tabela-extrato tbody tr[data-id] button.estornar";

    // Cancelled: nothing is sent.
    b.click(row).await;
    assert_eq!(b.js("return document.getElementById('confirmar-estorno').open", vec![]).await, true);
    b.click("#cancelar-estorno").await;
    assert_eq!(b.js("return document.getElementById('confirmar-estorno').open", vec![]).await, false);
    assert_eq!(calls(&b, "/estorno").await, 0, "a cancelled reversal sends nothing");

    // Confirmed: the reversal takes the original's day by default.
    b.click(row).await;
    let proposed = b.js("return document.getElementById('estorno-data').value", vec![]).await;
    assert_eq!(proposed, day.to_string());
    b.click("#confirmar").await;
    settle(&b).await;
    assert_eq!(calls(&b, "/estorno").await, 1);
    assert!(shown(&b, "#aviso").await.contains("Estorno"), "{}", shown(&b, "#aviso").await);

    let points = api_points(&p.api, &tokens[0], (de, ate)).await;
    let (_, credits, debits, _) = *points.iter().find(|(d, ..)| *d == day).unwrap();
    assert_eq!((credits, debits), (25_000, 25_000), "the day holds the entry and its reversal");
    assert!(points.iter().all(|(.., saldo)| *saldo == 0), "{points:?}");
    let daily = p.api.daily(&tokens[0], &day.to_string(), &day.to_string()).await;
    assert_eq!(daily["dias"][0]["saldo_do_dia"], "0.00");
    assert_eq!(chart_points(&b).await, points, "the chart shows it at once");
    assert_eq!(shown(&b, "#total-saldo").await, brl(0));

    let statement = shown(&b, "#tabela-extrato tbody").await;
    assert!(statement.contains("estornado") && statement.contains("estorno de"), "{statement}");
    assert!(b.find_all(row).await.is_empty(), "an entry is reversed once");
    assert_no_csp_violation(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_merchant_logged_in_after_the_first_sees_none_of_its_data() {
    let (p, tokens) = pipeline().await;
    let b = open_as(&p, MERCHANTS[0]).await;
    let (_, ate) = period(&b).await;
    post_through_form(&b, "credito", "777,00", ate, "segredo da primeira loja", "privado").await;
    assert!(shown(&b, "#tabela-extrato tbody").await.contains("segredo"));
    b.click("#tabela-extrato tbody tr[data-id] button.estornar").await;
    b.click("#cancelar-estorno").await;

    b.click("#sair").await;
    assert_eq!(b.js("return document.getElementById('painel').hidden", vec![]).await, true);
    log_in(&b, MERCHANTS[1]).await;
    let range = period(&b).await;

    // Nothing of the first merchant anywhere in the page: text, attributes, the dialog.
    let html = b.js("return document.documentElement.outerHTML", vec![]).await;
    let html = html.as_str().unwrap();
    assert!(!html.contains("segredo") && !html.contains("privado") && !html.contains("777"), "{html}");
    assert!(html.contains(MERCHANTS[1]) && !html.contains(MERCHANTS[0]), "{html}");
    let points = chart_points(&b).await;
    assert_eq!(points, api_points(&p.api, &tokens[1], range).await);
    assert!(points.iter().all(|&(_, c, d, s)| (c, d, s) == (0, 0, 0)), "{points:?}");
    assert_eq!(shown(&b, "#total-creditos").await, brl(0));
    assert!(b.find_all("#tabela-extrato tbody tr[data-id]").await.is_empty());
    assert!(api_statement(&p.api, &tokens[1], range).await.is_empty());
    // The first merchant's entry is still there, for the first merchant.
    assert_eq!(api_statement(&p.api, &tokens[0], range).await.len(), 1);
    assert_no_csp_violation(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_logs_out_when_its_token_expires_and_forgets_what_it_showed() {
    let (p, tokens) = pipeline_with(&[("token_ttl_secs: 900", "token_ttl_secs: 8")]).await;
    let today = chrono::Utc::now().date_naive().to_string();
    let entry = json!({"tipo": "credito", "valor": "10.00", "data": today, "descricao": "antes de expirar"});
    assert_eq!(p.api.post_entry(&tokens[0], &entry, None).await.status(), 202);
    let consolidated = format!("/v1/lancamentos?de={today}&ate={today}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while p.api.get(&tokens[0], &consolidated).await.json::<Value>().await.unwrap()["lancamentos"] == json!([]) {
        assert!(std::time::Instant::now() < deadline, "the entry was not consolidated in 30 s");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let b = open_as(&p, MERCHANTS[0]).await;
    assert!(shown(&b, "#tabela-extrato tbody").await.contains("antes de expirar"));

    b.wait_until("the login form again", "return !document.getElementById('entrar').hidden").await;
    assert!(shown(&b, "#aviso").await.contains("expirou"), "{}", shown(&b, "#aviso").await);
    let html = b.js("return document.documentElement.outerHTML", vec![]).await;
    assert!(!html.as_str().unwrap().contains("antes de expirar"), "{html}");
    assert_eq!(b.js("return document.getElementById('grafico-saldo').uplot", vec![]).await, Value::Null);
    assert_eq!(b.js("return document.activeElement.name", vec![]).await, "username");
}
