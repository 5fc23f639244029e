//! The reports dashboard (observability/grafana/dashboards/cashflow-relatorios.json) over a real
//! PostgreSQL store. After a load with reversals, each panel's SQL, with the variable and macros
//! expanded as Grafana expands them, runs as the read-only role of
//! observability/grafana/relatorios.sql and answers what an oracle computes from the posted
//! entries. No plan reads `lancamentos`, or the days of every merchant without the day's index.
//! The dashboards and the datasources they name are checked too.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use cashflow_core::BusinessDate;
use cashflow_tests::grafana::{TimeRange, expand_macros, interpolate};
use cashflow_tests::{
    MERCHANTS, Oracle, PASSWORD, Pipeline, Posted, Store, UNLIMITED, assert_matches_oracle, d, fresh_postgres_database,
    login_all, random_entries,
};
use futures::StreamExt as _;
use rand::Rng;
use serde_json::{Value, json};

const RANGE: TimeRange<'static> = TimeRange { from: "2026-09-10T00:00:00Z", to: "2026-10-15T23:59:59.999Z" };
const CATEGORIES: [Option<&str>; 5] = [Some("aluguel"), Some("vendas"), Some("fornecedores"), Some("impostos"), None];
const ROLE: &str = "cashflow_relatorios";
/// A merchant with one debit before the period and none in it.
const QUIET: &str = "loja-d";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn dashboard() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(repo("observability/grafana/dashboards/cashflow-relatorios.json")).unwrap(),
    )
    .unwrap()
}

/// An entry as the reports count it: posted or a reversal, with its category.
#[derive(Clone, Debug)]
struct Counted {
    entry: Posted,
    categoria: Option<&'static str>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_report_panel_answers_as_the_oracle_from_the_consolidated_states_as_a_read_only_role() {
    let url = fresh_postgres_database().await;
    let mut p = Pipeline::start_stages(Store::Postgres(url.clone()), &[UNLIMITED]).await;
    let tokens = login_all(&p).await;

    // 3,000 entries from 20 August to 25 October, loja-c mostly debits (it goes negative), then
    // 90 of them reversed, some days later.
    let (first, last) = (d("2026-08-20"), d("2026-10-25"));
    let mut entries = random_entries(&MERCHANTS, 3_000, first, last.days() - first.days() + 1);
    for e in entries.iter_mut().filter(|e| e.merchant == "loja-c") {
        e.credit = rand::thread_rng().gen_bool(0.2);
    }
    let posted: Vec<(Counted, String)> = futures::stream::iter(entries)
        .map(|entry| {
            let (api, token) = (p.api.clone(), tokens[entry.merchant.as_str()].clone());
            async move {
                let categoria = CATEGORIES[rand::thread_rng().gen_range(0..CATEGORIES.len())];
                let mut body = entry.body("venda");
                body["categoria"] = json!(categoria);
                let r = api.post_entry(&token, &body, None).await;
                assert_eq!(r.status(), 202, "{entry:?}");
                let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
                (Counted { entry, categoria }, id)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut counted: Vec<Counted> = posted.iter().map(|(c, _)| c.clone()).collect();
    for (original, id) in posted.iter().step_by(33) {
        let days_later = rand::thread_rng().gen_range(0..10);
        let day = BusinessDate::from_days((original.entry.date.days() + days_later).min(last.days())).unwrap();
        let token = &tokens[original.entry.merchant.as_str()];
        let r = p.api.reverse(token, id, &json!({"data": day.to_string(), "descricao": "estorno"})).await;
        assert_eq!(r.status(), 202);
        let reversal = Posted { credit: !original.entry.credit, date: day, ..original.entry.clone() };
        counted.push(Counted { entry: reversal, categoria: original.categoria });
    }
    let mut oracle = Oracle::default();
    for c in &counted {
        oracle.add(c.entry.clone());
    }
    assert_matches_oracle(&p, &tokens, &oracle, first, last).await;
    // loja-d: one debit in August, then nothing. Its balance is below zero all through the period.
    p.add_user(QUIET, "user-loja-d", PASSWORD);
    let token = p.api.token("user-loja-d", PASSWORD).await;
    let quiet = Posted { merchant: QUIET.into(), credit: false, cents: 50_000, date: d("2026-08-25") };
    assert_eq!(p.api.post_entry(&token, &quiet.body("aluguel"), None).await.status(), 202);
    counted.push(Counted { entry: quiet, categoria: None });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while p.api.daily(&token, "2026-08-25", "2026-08-25").await["dias"][0]["lancamentos"] != 1 {
        assert!(std::time::Instant::now() < deadline, "loja-d's entry never consolidated");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    p.stop().await;

    // The role, as an operator makes it, then every query as that role.
    let pg = Psql::new(&url);
    pg.run_file(&repo("observability/grafana/relatorios.sql"), "relatorios-senha");
    let reports = pg.as_role(ROLE, "relatorios-senha");
    let (de, ate) = (d(&RANGE.from[..10]), d(&RANGE.to[..10]));
    let dashboard = dashboard();
    let panels = sql_panels(&dashboard);
    assert_eq!(panels.len(), 8, "the SQL panels");
    let mut checked = 0;
    for comerciante in [None, Some("loja-a"), Some("loja-b"), Some("loja-c"), Some(QUIET)] {
        let mine: Vec<&Counted> =
            counted.iter().filter(|c| comerciante.is_none_or(|m| c.entry.merchant == m)).collect();
        for (title, sql) in &panels {
            let sql = expand_macros(&interpolate(sql, "comerciante", comerciante, "NULL"), RANGE);
            let got = reports.query(&sql);
            let want = expected(title, &mine, de, ate);
            assert_eq!(got, want, "panel {title:?}, comerciante {comerciante:?}:\n{sql}");
            let busy = comerciante != Some(QUIET) && title != "Saldo final negativo";
            assert!(!got.is_empty() || !busy, "{title}: no rows to compare");
            let plan = reports.plan(&sql);
            assert_indexed(title, &plan);
            checked += 1;
        }
    }
    assert_eq!(checked, 40);
    let (_, negative) = panels.iter().find(|(title, _)| title == "Saldo final negativo").unwrap();
    let negative = reports.query(&expand_macros(&interpolate(negative, "comerciante", None, "NULL"), RANGE));
    assert!(negative.iter().any(|row| row[0] == "loja-c"), "loja-c never went negative: {negative:?}");
    let quiet = negative.iter().find(|row| row[0] == QUIET);
    assert_eq!(quiet.map(|row| &row[1..]), Some(&["2026-09-10".to_owned(), "-500.00".to_owned()][..]), "{negative:?}");

    // The role reads nothing else, and writes nothing.
    for denied in [
        "SELECT descricao FROM lancamentos LIMIT 1",
        "SELECT * FROM lancamentos LIMIT 1",
        "SELECT * FROM users",
        "SELECT * FROM secrets",
        "SELECT * FROM consumer_progress",
        "DELETE FROM consolidado_diario",
        "CREATE TABLE x (y int)",
    ] {
        let error = reports.fails(denied);
        assert!(error.contains("permission denied") || error.contains("read-only transaction"), "{denied}: {error}");
    }
    // ...and the entries' columns that describe nothing, every entry.
    let entries = reports.query("SELECT count(*) FROM (SELECT id, merchant_id, valor_cents, data FROM lancamentos) l");
    assert_eq!(entries[0][0], counted.len().to_string());
}

/// Each SQL panel's title and query, in the dashboard's order.
fn sql_panels(dashboard: &Value) -> Vec<(String, String)> {
    let panels = dashboard["panels"].as_array().unwrap();
    let sql = panels.iter().filter(|p| p["datasource"]["uid"] == "cashflow-relatorios");
    sql.map(|p| (p["title"].as_str().unwrap().to_owned(), p["targets"][0]["rawSql"].as_str().unwrap().to_owned()))
        .collect()
}

/// What `title` shows for `entries` (one merchant's or all), in the period `de..=ate`, as text.
fn expected(title: &str, entries: &[&Counted], de: BusinessDate, ate: BusinessDate) -> Vec<Vec<String>> {
    let within: Vec<&Counted> = entries.iter().copied().filter(|c| (de..=ate).contains(&c.entry.date)).collect();
    let by_day = group(&within, |c| c.entry.date);
    let credits = |cs: &[&Counted]| cs.iter().filter(|c| c.entry.credit).map(|c| c.entry.cents).sum::<i64>();
    let debits = |cs: &[&Counted]| cs.iter().filter(|c| !c.entry.credit).map(|c| c.entry.cents).sum::<i64>();
    let merchants = |cs: &[&Counted]| cs.iter().map(|c| c.entry.merchant.clone()).collect::<BTreeSet<_>>().len();
    let epoch = |day: BusinessDate| (i64::from(day.days()) * 86_400).to_string();
    match title {
        "Resumo do período" => vec![vec![
            money(credits(&within)),
            money(debits(&within)),
            money(credits(&within) - debits(&within)),
            within.len().to_string(),
            merchants(&within).to_string(),
        ]],
        "Volume por dia" => by_day
            .iter()
            .map(|(day, cs)| vec![epoch(*day), money(credits(cs)), money(-debits(cs)), money(credits(cs) - debits(cs))])
            .collect(),
        "Lançamentos por dia" => by_day.iter().map(|(day, cs)| vec![epoch(*day), cs.len().to_string()]).collect(),
        "Comerciantes ativos por dia" => {
            by_day.iter().map(|(day, cs)| vec![epoch(*day), merchants(cs).to_string()]).collect()
        }
        "Comerciantes ativos por mês" => group(&within, |c| c.entry.date.to_string()[..7].to_owned())
            .iter()
            .map(|(month, cs)| vec![month.clone(), merchants(cs).to_string()])
            .collect(),
        "Categorias por volume" => {
            let by_category = group(&within, |c| c.categoria.unwrap_or("(sem categoria)").to_owned());
            let mut rows: Vec<(i64, String, &Vec<&Counted>)> =
                by_category.iter().map(|(k, cs)| (credits(cs) + debits(cs), k.clone(), cs)).collect();
            rows.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            rows.iter()
                .take(10)
                .map(|(volume, k, cs)| {
                    vec![k.clone(), money(*volume), money(credits(cs)), money(debits(cs)), cs.len().to_string()]
                })
                .collect()
        }
        "Saldo final negativo" => {
            let mut rows = Vec::new();
            for (merchant, mine) in group(entries, |c| c.entry.merchant.clone()) {
                // The closing balance (every entry up to the day) of each day of the period with
                // entries, and of its first day when the merchant had entries before it: between
                // those days the balance does not change.
                let closing = |day: BusinessDate| {
                    mine.iter().filter(|c| c.entry.date <= day).map(|c| c.entry.signed()).sum::<i64>()
                };
                let mut days: BTreeSet<BusinessDate> =
                    mine.iter().map(|c| c.entry.date).filter(|day| (de..=ate).contains(day)).collect();
                if mine.iter().any(|c| c.entry.date < de) {
                    days.insert(de);
                }
                let balances: Vec<(BusinessDate, i64)> = days.iter().map(|&day| (day, closing(day))).collect();
                let Some(&(first, _)) = balances.iter().find(|(_, b)| *b < 0) else { continue };
                let lowest = balances.iter().map(|(_, b)| *b).min().unwrap();
                rows.push(vec![merchant, first.to_string(), money(lowest)]);
            }
            rows.sort_by(|a, b| (&a[1], &a[0]).cmp(&(&b[1], &b[0])));
            rows
        }
        "Mensal por comerciante" => {
            let (first_month, last_month) = (&de.to_string()[..7], &ate.to_string()[..7]);
            let mut rows = Vec::new();
            for (merchant, mine) in group(entries, |c| c.entry.merchant.clone()) {
                for (month, cs) in group(&mine, |c| c.entry.date.to_string()[..7].to_owned()) {
                    if month.as_str() < first_month || month.as_str() > last_month {
                        continue;
                    }
                    let before: i64 =
                        mine.iter().filter(|c| c.entry.date.to_string()[..7] < *month).map(|c| c.entry.signed()).sum();
                    let (c, d) = (credits(&cs), debits(&cs));
                    rows.push(vec![merchant.clone(), month, money(before), money(c), money(d), money(before + c - d)]);
                }
            }
            rows
        }
        other => panic!("no oracle for panel {other:?}"),
    }
}

fn group<'a, K: Ord>(entries: &[&'a Counted], key: impl Fn(&Counted) -> K) -> BTreeMap<K, Vec<&'a Counted>> {
    let mut groups: BTreeMap<K, Vec<&Counted>> = BTreeMap::new();
    for c in entries {
        groups.entry(key(c)).or_default().push(c);
    }
    groups
}

/// Cents as PostgreSQL prints `cents / 100.0` once its trailing zeros are cut (see [`Psql::query`]).
fn money(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", cents.unsigned_abs() / 100, cents.unsigned_abs() % 100)
}

/// No scan of `lancamentos`; the days and the categories are read through an index condition.
fn assert_indexed(title: &str, plan: &Value) {
    let mut nodes = Vec::new();
    collect(&plan[0]["Plan"], &mut nodes);
    for node in nodes {
        let relation = node["Relation Name"].as_str().or(node["Index Name"].as_str()).unwrap_or_default();
        assert!(!relation.starts_with("lancamentos"), "{title} reads lancamentos: {node}");
        if relation.starts_with("consolidado_diario") || relation.starts_with("consolidado_categoria") {
            let kind = node["Node Type"].as_str().unwrap();
            assert_ne!(kind, "Seq Scan", "{title} scans {relation} whole: {plan}");
            if kind.contains("Index") {
                assert!(node.get("Index Cond").is_some(), "{title} reads {relation} without a condition: {plan}");
            }
        }
    }
}

fn collect<'a>(node: &'a Value, out: &mut Vec<&'a Value>) {
    out.push(node);
    for child in node["Plans"].as_array().into_iter().flatten() {
        collect(child, out);
    }
}

/// `psql` against the test database: what an operator runs, and a client that sends SQL as
/// Grafana does (one text query, results as text).
struct Psql {
    bin: PathBuf,
    url: String,
}

impl Psql {
    fn new(url: &str) -> Psql {
        Psql { bin: cashflow_tests::pg_bin().join("psql"), url: url.to_owned() }
    }

    fn as_role(&self, role: &str, password: &str) -> Psql {
        let url = self.url.replacen("postgres@", &format!("{role}:{password}@"), 1);
        Psql { bin: self.bin.clone(), url }
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg(&self.url).args(["--no-psqlrc", "-v", "ON_ERROR_STOP=1"]);
        c
    }

    fn run_file(&self, file: &Path, password: &str) {
        let out = self.command().arg("-v").arg(format!("password={password}")).arg("-f").arg(file).output().unwrap();
        assert!(out.status.success(), "{}: {}", file.display(), String::from_utf8_lossy(&out.stderr));
    }

    /// The rows of `sql`, each value as text; a decimal keeps two fraction digits and any other
    /// that is not zero (`12.3400` is `12.34`, `0.0000` is `0.00`).
    fn query(&self, sql: &str) -> Vec<Vec<String>> {
        let out = self.command().args(["--csv", "-c", sql]).output().unwrap();
        assert!(out.status.success(), "{sql}\n{}", String::from_utf8_lossy(&out.stderr));
        let mut reader = csv::Reader::from_reader(out.stdout.as_slice());
        reader.records().map(|r| r.unwrap().iter().map(trim_zeros).collect()).collect()
    }

    fn plan(&self, sql: &str) -> Value {
        let out = self
            .command()
            .env("PGOPTIONS", "-c enable_seqscan=off")
            .args(["-At", "-c", &format!("EXPLAIN (FORMAT JSON) {sql}")])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The error `sql` fails with.
    fn fails(&self, sql: &str) -> String {
        let out = self.command().args(["-c", sql]).output().unwrap();
        assert!(!out.status.success(), "{sql} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

fn trim_zeros(text: &str) -> String {
    let numeric = text.parse::<f64>().is_ok() && text.contains('.') && !text.contains(['e', 'E']);
    if !numeric {
        return text.to_owned();
    }
    let (whole, fraction) = text.split_once('.').unwrap();
    let fraction = fraction.trim_end_matches('0');
    format!("{whole}.{fraction:0<2}")
}

/// Both dashboards and both datasource provisionings (the shipped one and deploy/'s) parse, and
/// every datasource a panel, a query or a variable names is provisioned, with its type.
#[test]
fn the_dashboards_and_datasources_parse_and_every_reference_resolves() {
    for provisioning in ["observability/grafana/provisioning/datasources/cashflow.yml", "deploy/grafana/datasource.yml"]
    {
        let text = std::fs::read_to_string(repo(provisioning)).unwrap();
        let yaml: Value = serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{provisioning}: {e}"));
        let provisioned: BTreeMap<String, String> = yaml["datasources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| (d["uid"].as_str().unwrap().to_owned(), d["type"].as_str().unwrap().to_owned()))
            .collect();
        assert_eq!(provisioned.len(), 2, "{provisioning}");
        let mut used = BTreeSet::new();
        for file in std::fs::read_dir(repo("observability/grafana/dashboards")).unwrap() {
            let path = file.unwrap().path();
            let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let mut references: Vec<&Value> = Vec::new();
            for panel in dashboard["panels"].as_array().unwrap().iter().filter(|p| p["type"] != "row") {
                references.push(&panel["datasource"]);
                references.extend(panel["targets"].as_array().unwrap().iter().map(|t| &t["datasource"]));
            }
            references.extend(dashboard["templating"]["list"].as_array().unwrap().iter().map(|v| &v["datasource"]));
            for r in references {
                let uid =
                    r["uid"].as_str().unwrap_or_else(|| panic!("{}: a datasource without uid: {r}", path.display()));
                assert_eq!(
                    provisioned.get(uid),
                    r["type"].as_str().map(str::to_owned).as_ref(),
                    "{}: {r}",
                    path.display()
                );
                used.insert(uid.to_owned());
            }
        }
        assert_eq!(used, provisioned.keys().cloned().collect(), "{provisioning}: every datasource is used");
    }

    // The reports: the title the issue names, a time picker and the merchant variable, which
    // every SQL panel applies, with the period.
    let dashboard = dashboard();
    assert_eq!(dashboard["title"], "cashflow — relatórios");
    assert!(dashboard["time"]["from"].is_string() && dashboard["time"]["to"].is_string());
    let variable = &dashboard["templating"]["list"][0];
    assert_eq!(
        (&variable["name"], &variable["includeAll"], &variable["allValue"]),
        (&json!("comerciante"), &json!(true), &json!("NULL"))
    );
    for (title, sql) in sql_panels(&dashboard) {
        assert!(sql.contains("$comerciante"), "{title} ignores the merchant picked");
        assert!(sql.contains("$__timeFilter(") || sql.contains("$__timeFrom()"), "{title} ignores the period");
    }
}
