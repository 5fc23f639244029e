//! The API as a client and an attacker see it: schema-driven fuzzing with schemathesis against the
//! running gateway, the distributed shape (a proxying gateway, stages that check tokens again, key
//! rotation with overlap), service clients, and logs that never carry a secret.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::{Duration, Instant};

use cashflow_tests::{Pipeline, Role, Store, fresh_postgres_database};
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery staple";
const STORE_PASSWORD: &str = "store-password-never-logged";
const ALL_SCOPES: &str = "lancamentos:write consolidado:read admin";

/// schemathesis, installed by scripts/test; never skipped.
fn schemathesis() -> Command {
    let path = std::env::var("CASHFLOW_SCHEMATHESIS").unwrap_or_else(|_| "schemathesis".into());
    let probe = Command::new(&path).arg("--version").output();
    assert!(
        probe.is_ok_and(|o| o.status.success()),
        "schemathesis not found at {path:?}: run the suite with scripts/test, which installs it, or set \
         CASHFLOW_SCHEMATHESIS"
    );
    Command::new(path)
}

fn add_user(p: &Pipeline, merchant: &str, username: &str, scopes: &str) {
    let args = ["users", "add", "--merchant", merchant, "--username", username, "--scopes", scopes];
    let out = p.cli(&args, &format!("{PASSWORD}\n"));
    assert!(out.status.success(), "users add: {}", String::from_utf8_lossy(&out.stderr));
}

fn entry(valor: &str) -> Value {
    json!({"tipo": "credito", "valor": valor, "data": chrono::Utc::now().date_naive().to_string(), "descricao": "venda"})
}

fn assert_no_secret_in_logs(p: &Pipeline, secrets: &[&str]) {
    let leaks = p.log_leaks(secrets);
    assert!(leaks.is_empty(), "secrets in the logs:\n{}", leaks.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_answer_outside_the_spec() {
    let p = Pipeline::start(Store::Sqlite).await;
    add_user(&p, "loja-fuzz", "fuzz", ALL_SCOPES);
    let token = p.api.token("fuzz", PASSWORD).await;
    for valor in ["10.00", "25.50"] {
        assert_eq!(p.api.post_entry(&token, &entry(valor), None).await.status(), 202);
    }
    // The merchant's routes with a merchant's token, the admin routes with an operator's.
    let out = p.cli(&["users", "add", "--operator", "--username", "ops"], &format!("{PASSWORD}\n"));
    assert!(out.status.success(), "users add --operator: {}", String::from_utf8_lossy(&out.stderr));
    let operator = p.api.token("ops", PASSWORD).await;
    for (bearer, paths) in [(&token, "--exclude-path-regex"), (&operator, "--include-path-regex")] {
        let out = schemathesis()
            .args(["run", &format!("{}/openapi.json", p.api.base)])
            .args(["--header", &format!("Authorization: Bearer {bearer}")])
            .args([paths, "^/v1/admin/"])
            .args(["--checks", "not_a_server_error,status_code_conformance,content_type_conformance"])
            .args(["--checks", "response_schema_conformance,response_headers_conformance"])
            .args(["--max-examples", "40", "--generation-deterministic", "--request-timeout", "15"])
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&out.stdout);
        let summary: Vec<&str> =
            report.lines().filter(|l| l.contains("generated,") || l.contains("Operations:")).collect();
        println!("schemathesis {paths} ^/v1/admin/: {}", summary.join(" | "));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "schemathesis found problems:\n{report}\n{stderr}");
        assert!(summary.iter().any(|l| l.contains("passed")), "no test cases ran:\n{report}");
        assert!(!report.contains("failed"), "{report}");
    }
    assert_no_secret_in_logs(&p, &[PASSWORD, &token, &operator]);

    // The run shows in the metrics: tokens, freshness of the two entries, the process itself.
    let anonymous = p.api.client.get(format!("{}/v1/consolidado/diario/2026-01-01", p.api.base)).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let m = p.api.metrics(&p.api.base).await;
    assert!(m.must("cashflow_auth_tokens_issued_total{grant=\"password\"}") >= 1.0);
    assert!(m.must("cashflow_gateway_tokens_rejected_total{reason=\"missing\"}") >= 1.0);
    assert!(m.must("cashflow_consolidate_freshness_seconds_count") >= 2.0);
    assert!(m.must("process_resident_memory_bytes") > 1e6);
    assert!(m.must("process_open_fds") > 0.0);
}

/// `POST /auth/token` with a form body; returns the status and JSON.
async fn form_token(base: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let r = reqwest::Client::new().post(format!("{base}/auth/token")).form(form).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn http_get(url: &str) -> u16 {
    reqwest::get(url).await.unwrap().status().as_u16()
}

/// The JWT header's kid.
fn kid(token: &str) -> String {
    use base64::Engine as _;
    let header = token.split('.').next().unwrap();
    let header: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_distributed_shape_proxies_checks_tokens_at_every_stage_and_rotates_keys_with_overlap() {
    // The store's URL carries a password (the test server trusts every login): no log may show it.
    let url = fresh_postgres_database().await.replacen("postgres@", &format!("postgres:{STORE_PASSWORD}@"), 1);
    let p = Pipeline::start_distributed(Store::Postgres(url)).await;
    add_user(&p, "loja-d", "dora", "lancamentos:write consolidado:read");
    let client_out = p.cli(&["clients", "add", "--merchant", "loja-d", "--client-id", "pdv-1"], "");
    assert!(client_out.status.success(), "{}", String::from_utf8_lossy(&client_out.stderr));
    let secret = String::from_utf8(client_out.stdout).unwrap().trim().to_owned();
    assert!(secret.len() >= 40, "a generated secret is printed once: {secret:?}");

    // Tokens through the gateway (proxied to auth), by password and by client credentials.
    let old = p.api.token("dora", PASSWORD).await;
    let (status, by_client) = form_token(
        &p.api.base,
        &[("grant_type", "client_credentials"), ("client_id", "pdv-1"), ("client_secret", &secret)],
    )
    .await;
    assert_eq!(status, 200, "{by_client}");
    let service = by_client["access_token"].as_str().unwrap().to_owned();

    // Entries through the gateway (proxied to ingest), balances through it (proxied to query).
    let posted = p.api.post_entry(&service, &entry("40.00"), Some("k-1")).await;
    assert_eq!(posted.status(), 202, "{}", posted.text().await.unwrap());
    assert_eq!(p.api.post_entry(&old, &entry("2.50"), None).await.status(), 202);
    let today = chrono::Utc::now().date_naive().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let day = p.api.daily(&old, &today, &today).await;
        if day["dias"][0]["creditos"] == "42.50" {
            break;
        }
        assert!(Instant::now() < deadline, "not consolidated in 60 s: {day}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Each stage serves its own metrics; the gateway names the routes it forwards as the stages do.
    let route = "method=\"GET\",route=\"/v1/consolidado/diario\",status=\"200\"";
    let gateway = p.api.metrics(&p.api.base).await;
    assert!(gateway.must(&format!("cashflow_http_requests_total{{{route}}}")) >= 1.0);
    assert_eq!(gateway.must("cashflow_gateway_upstream_up{stage=\"query\"}"), 1.0);
    let query = p.api.metrics(&p.stages[&Role::Query]).await;
    assert!(query.must(&format!("cashflow_http_requests_total{{{route}}}")) >= 1.0);
    let ingest = p.api.metrics(&p.stages[&Role::Ingest]).await;
    assert!(ingest.must("cashflow_ingest_records_produced_total{outcome=\"acked\"}") >= 2.0);
    let auth = p.api.metrics(&p.stages[&Role::Auth]).await;
    assert!(auth.must("cashflow_auth_tokens_issued_total{grant=\"client_credentials\"}") >= 1.0);
    let consolidate = p.api.metrics(&p.stages[&Role::Consolidate]).await;
    assert_eq!(consolidate.must("cashflow_pipeline_stage_up{stage=\"consolidate\"}"), 1.0);
    assert!(consolidate.must("cashflow_consolidate_records_committed_total") >= 2.0);
    assert!(consolidate.must("cashflow_sink_batch_rows_count{table=\"lancamentos\"}") >= 1.0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while p.api.metrics(&p.stages[&Role::Consolidate]).await.series("cashflow_consolidate_lag_records").len() < 6 {
        assert!(Instant::now() < deadline, "no lag for the 6 partitions of lancamentos");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let retry = p.api.metrics(&p.stages[&Role::Retry]).await;
    assert_eq!(retry.must("cashflow_pipeline_stage_up{stage=\"retry\"}"), 1.0);
    assert_eq!(retry.must("cashflow_retry_dlq_depth"), 0.0);
    for role in [Role::Consolidate, Role::Retry] {
        let ready = http_get(&format!("{}/readyz", p.stages[&role])).await;
        assert_eq!(ready, 200, "{role:?} ready");
    }

    // Each stage checks tokens itself: reaching one directly without a token, or with a forged
    // one, gets 401.
    let http = reqwest::Client::new();
    for (role, path) in [(Role::Ingest, "/v1/lancamentos"), (Role::Query, "/v1/consolidado/diario/2026-01-01")] {
        let url = format!("{}{path}", p.stages[&role]);
        let req = if role == Role::Ingest { http.post(&url).json(&entry("1.00")) } else { http.get(&url) };
        assert_eq!(req.send().await.unwrap().status(), 401, "{role:?} without a token");
    }

    // Rotation: after `keys rotate`, auth signs with the new key within seconds; the gateway
    // fetches it on first sight of its kid; tokens of the old key keep working in the overlap.
    let rotated = p.cli(&["keys", "rotate"], "");
    assert!(rotated.status.success(), "{}", String::from_utf8_lossy(&rotated.stderr));
    let listing = String::from_utf8_lossy(&rotated.stdout).to_string();
    assert!(listing.contains("signing") && listing.contains("verifying until"), "{listing}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let new = loop {
        let t = p.api.token("dora", PASSWORD).await;
        if kid(&t) != kid(&old) {
            break t;
        }
        assert!(Instant::now() < deadline, "auth still signs with the old key after 30 s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for (name, token) in [("new key", &new), ("old key, in its overlap", &old)] {
        let r = p
            .api
            .client
            .get(format!("{}/v1/consolidado/diario/{today}", p.api.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{name}");
    }
    let jwks: Value =
        p.api.client.get(format!("{}/.well-known/jwks.json", p.api.base)).send().await.unwrap().json().await.unwrap();
    let kids: Vec<&str> = jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert!(kids.contains(&kid(&old).as_str()) && kids.contains(&kid(&new).as_str()), "{kids:?}");

    // A stage that goes down is reported, and requests for it get 503 at once.
    let mut p = p;
    p.kill(Role::Query);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = p
            .api
            .client
            .get(format!("{}/v1/consolidado/diario/{today}", p.api.base))
            .bearer_auth(&new)
            .send()
            .await
            .unwrap();
        if r.status() == 503 {
            let problem: Value = r.json().await.unwrap();
            assert!(problem["detail"].as_str().unwrap().contains("query"), "{problem}");
            break;
        }
        assert!(Instant::now() < deadline, "the gateway did not notice the query stage is down");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let ready = p.api.client.get(format!("{}/readyz", p.api.base)).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(p.api.post_entry(&new, &entry("1.00"), None).await.status(), 202, "ingest is unaffected");

    assert_no_secret_in_logs(&p, &[PASSWORD, STORE_PASSWORD, &secret, &old, &new, &service]);
}

/// A store that cannot be opened is reported with its URL, the password masked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_be_opened_is_reported_without_its_password() {
    let url = format!("postgres://cashflow:{STORE_PASSWORD}@127.0.0.1:{}/cashflow", cashflow_tests::free_port());
    let p = Pipeline::configure(Store::Postgres(url), &[]);
    let out = p.cli(&["run", "auth"], "");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("cannot open the store") && text.contains("cashflow:***@127.0.0.1"), "{text}");
    assert!(!text.contains(STORE_PASSWORD), "the store's password was printed:\n{text}");
}
