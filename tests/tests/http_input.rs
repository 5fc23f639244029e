//! Bad input gets a 4xx problem+json, and nothing reaches Kafka.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use cashflow_tests::{Pipeline, Store};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_problems_and_produce_nothing() {
    let p = Pipeline::start(Store::Sqlite).await;
    p.add_user("loja-x", "xavier", "long enough password");
    let token = p.api.token("xavier", "long enough password").await;
    let url = format!("{}/v1/lancamentos", p.api.base);
    let before = p.records_in("lancamentos");

    let valid = json!({"tipo": "credito", "valor": "10.00", "data": "2026-01-10", "descricao": "ok"});
    let with = |field: &str, value: Value| {
        let mut v = valid.clone();
        v[field] = value;
        v
    };
    let mut missing = valid.clone();
    missing.as_object_mut().unwrap().remove("valor");
    missing.as_object_mut().unwrap().remove("data");

    // (case, body, expected status, fields named in errors[])
    let json_cases: Vec<(&str, Value, u16, Vec<&str>)> = vec![
        ("missing fields", missing, 422, vec!["valor", "data"]),
        ("valor zero", with("valor", json!("0.00")), 422, vec!["valor"]),
        ("valor negative", with("valor", json!("-5.00")), 422, vec!["valor"]),
        ("valor three decimals", with("valor", json!("1.234")), 422, vec!["valor"]),
        ("valor not a number", with("valor", json!("dez")), 422, vec!["valor"]),
        ("valor as a float", with("valor", json!(10.5)), 422, vec!["valor"]),
        ("bad date", with("data", json!("2026-02-30")), 422, vec!["data"]),
        ("unknown tipo", with("tipo", json!("pix")), 422, vec!["tipo"]),
        ("own merchant in body", with("merchant_id", json!("loja-x")), 422, vec!["merchant_id"]),
        ("another merchant in body", with("merchant_id", json!("loja-y")), 403, vec![]),
        ("over the size limit", with("descricao", json!("x".repeat(70_000))), 413, vec![]),
    ];
    for (case, body, status, fields) in json_cases {
        let r = p.api.client.post(&url).bearer_auth(&token).json(&body).send().await.unwrap();
        let problem = expect_problem(r, status, case).await;
        let named: Vec<&str> = problem["errors"]
            .as_array()
            .map(|e| e.iter().filter_map(|x| x["field"].as_str()).collect())
            .unwrap_or_default();
        for f in fields {
            assert!(named.contains(&f), "{case}: errors[] lacks {f}: {problem}");
        }
    }

    let r = p
        .api
        .client
        .post(&url)
        .bearer_auth(&token)
        .header("content-type", "text/plain")
        .body(valid.to_string())
        .send()
        .await
        .unwrap();
    expect_problem(r, 415, "wrong content type").await;
    let r = p
        .api
        .client
        .post(&url)
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{\"tipo\":")
        .send()
        .await
        .unwrap();
    expect_problem(r, 400, "malformed JSON").await;
    let r = p.api.client.post(&url).json(&valid).send().await.unwrap();
    expect_problem(r, 401, "no token").await;
    let r = p.api.client.post(&url).bearer_auth("not.a.token").json(&valid).send().await.unwrap();
    expect_problem(r, 401, "garbage token").await;
    let r =
        p.api.client.post(&url).bearer_auth(&token).header("Idempotency-Key", "").json(&valid).send().await.unwrap();
    expect_problem(r, 422, "empty idempotency key").await;

    assert_eq!(p.records_in("lancamentos"), before, "a rejected request reached Kafka");

    // The measurement can see a record: one valid post adds exactly one.
    let r = p.api.post_entry(&token, &valid, None).await;
    assert_eq!(r.status(), 202);
    assert_eq!(p.records_in("lancamentos"), before + 1);
}

async fn expect_problem(r: reqwest::Response, status: u16, case: &str) -> Value {
    assert_eq!(r.status().as_u16(), status, "{case}");
    let ct = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    assert_eq!(ct, "application/problem+json", "{case}");
    let body: Value = r.json().await.unwrap();
    for key in ["type", "title", "status", "detail"] {
        assert!(!body[key].is_null(), "{case}: problem lacks {key}: {body}");
    }
    assert_eq!(body["status"], status, "{case}");
    body
}

#[test]
fn validate_names_the_yaml_path_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = include_str!("../../pipeline.yaml");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        shipped.replace("on_error: { type: topic, id: lancamentos.retry }", "on_error: { type: topic, id: x }"),
    )
    .unwrap();
    let out =
        std::process::Command::new(cashflow_tests::binary("cashflow")).arg("validate").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(r#"services.consolidate.on_error.id: unknown topic "x""#), "{stderr}");

    let good = dir.path().join("good.yaml");
    std::fs::write(&good, shipped).unwrap();
    let out =
        std::process::Command::new(cashflow_tests::binary("cashflow")).arg("validate").arg(&good).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}
