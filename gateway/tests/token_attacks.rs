//! Token attacks at the gateway, through its router: each is answered 401 problem+json before any
//! handler runs; a valid token without the route's scope gets 403.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64};
use cashflow_auth::{Claims, Issuer, KeyInfo, KeyStatus, KeyStore, key_overlap};
use cashflow_core::estado::{Field, Key, Rows, Values};
use cashflow_core::{BusinessDate, DayTotals, EntryId, Lancamento, MerchantId, Money, Tipo};
use cashflow_sinks::{DeclaredState, Origin, Store, StoredEntry};
use chrono::Utc;
use http_body_util::BodyExt as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::Value;
use tower::ServiceExt as _;

mod support;

use support::*;

#[tokio::test]
async fn every_token_attack_gets_401() {
    let g = gateway().await;
    let kid = g.keys.current().signing().0.to_owned();
    let now = chrono::Utc::now().timestamp();
    let valid = g.signed(&g.claims(), &kid);
    assert_eq!(g.status(Some(format!("Bearer {valid}"))).await.0, StatusCode::OK, "the control must pass");

    let payload = valid.split('.').nth(1).unwrap().to_owned();
    let tampered = {
        let claims = String::from_utf8(B64.decode(&payload).unwrap()).unwrap().replace("loja-1", "loja-2");
        let parts: Vec<&str> = valid.split('.').collect();
        format!("{}.{}.{}", parts[0], B64.encode(claims), parts[2])
    };
    let alg_none = format!("{}.{payload}.", B64.encode(r#"{"alg":"none","typ":"JWT"}"#));
    // Algorithm confusion: HS256 keyed with the public key that the JWKS publishes.
    let public = B64.decode(&g.keys.current().jwks()[0].x).unwrap();
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some(kid.clone());
    let hs256 = encode(&hs, &g.claims(), &EncodingKey::from_secret(&public)).unwrap();
    let other_ring = tempfile::tempdir().unwrap();
    let foreign = Issuer::new(
        KeyStore::open(other_ring.path(), key_overlap(Duration::from_secs(900))).unwrap(),
        "cashflow",
        "cashflow-api",
        Duration::from_secs(900),
    )
    .issue("ana", Some("loja-1"), &["consolidado:read".into()])
    .unwrap();

    let attacks: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("not a bearer token", Some(format!("Basic {}", B64.encode("ana:pw")))),
        ("malformed", Some("Bearer abc.def".into())),
        ("alg none", Some(format!("Bearer {alg_none}"))),
        ("HS256 with the public key", Some(format!("Bearer {hs256}"))),
        (
            "expired",
            Some(format!("Bearer {}", g.signed(&Claims { exp: now - 120, nbf: now - 900, ..g.claims() }, &kid))),
        ),
        ("nbf in the future", Some(format!("Bearer {}", g.signed(&Claims { nbf: now + 120, ..g.claims() }, &kid)))),
        ("wrong iss", Some(format!("Bearer {}", g.signed(&Claims { iss: "evil".into(), ..g.claims() }, &kid)))),
        ("wrong aud", Some(format!("Bearer {}", g.signed(&Claims { aud: "other-api".into(), ..g.claims() }, &kid)))),
        ("unknown kid", Some(format!("Bearer {}", g.signed(&g.claims(), "not-a-key")))),
        ("tampered payload", Some(format!("Bearer {tampered}"))),
        ("another deployment's key", Some(format!("Bearer {foreign}"))),
    ];
    for (name, authorization) in attacks {
        let (status, content_type) = g.status(authorization).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}");
        assert_eq!(content_type, "application/problem+json", "{name}");
    }
}

#[tokio::test]
async fn a_rotated_out_key_verifies_during_its_overlap_and_not_after() {
    let now = Utc::now();
    // Superseded two hours ago (retired), superseded five minutes ago (15.5 min overlap), signing.
    let g = gateway_with_keys_from(&[
        now - chrono::Duration::hours(3),
        now - chrono::Duration::hours(2),
        now - chrono::Duration::minutes(5),
    ])
    .await;
    let ring = g.keys.current();
    let [retired, overlapping, signing] = ring.keys() else { panic!("three keys expected") };
    assert_eq!(signing.status, KeyStatus::Signing);
    let with = |key: &KeyInfo| {
        let pem = std::fs::read(&key.path).unwrap();
        format!("Bearer {}", sign(&g.claims(), &key.kid, &EncodingKey::from_ed_pem(&pem).unwrap()))
    };
    assert_eq!(g.status(Some(with(signing))).await.0, StatusCode::OK);
    assert_eq!(g.status(Some(with(overlapping))).await.0, StatusCode::OK, "still in its overlap");
    let (status, content_type) = g.status(Some(with(retired))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a rotated-out key after its overlap");
    assert_eq!(content_type, "application/problem+json");
    let published: Vec<_> = ring.jwks().iter().map(|j| j.kid.clone()).collect();
    assert_eq!(published, [overlapping.kid.clone(), signing.kid.clone()], "the JWKS drops the retired key");
}

#[tokio::test]
async fn a_token_without_the_route_scope_gets_403() {
    let g = gateway().await;
    let writer = g.issuer.issue("ana", Some("loja-1"), &["lancamentos:write".into()]).unwrap();
    assert_eq!(g.status(Some(format!("Bearer {writer}"))).await.0, StatusCode::FORBIDDEN);
    let reader = g.issuer.issue("ana", Some("loja-1"), &["consolidado:read".into()]).unwrap();
    assert_eq!(g.status(Some(format!("Bearer {reader}"))).await.0, StatusCode::OK);
    let admin_list = Request::get("/v1/admin/dlq").header("authorization", format!("Bearer {reader}"));
    let res = g.app.clone().oneshot(admin_list.body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN, "the admin routes need the admin scope");
}

/// `POST /auth/token` with a password grant from `address`; returns the status and `Retry-After`.
async fn login(g: &Gateway, username: &str, address: [u8; 4]) -> (StatusCode, Option<String>) {
    let body = serde_json::json!({"grant_type": "password", "username": username, "password": "wrong password"});
    let mut req = Request::post("/auth/token")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    req.extensions_mut().insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((address, 40_000))));
    let res = g.app.clone().oneshot(req).await.unwrap();
    (res.status(), res.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned()))
}

#[tokio::test]
async fn guessing_passwords_gets_429_and_an_unknown_user_looks_the_same() {
    let g = gateway().await;
    // Per username (5 here): the sixth guess is refused, whether the user exists or not.
    let store_user = cashflow_sinks::User {
        username: "ana".into(),
        merchant_id: Some("loja-1".into()),
        password_hash: cashflow_auth::hash_password("the right one".into()).await.unwrap(),
        scopes: vec!["consolidado:read".into()],
    };
    g.store.upsert_user(&store_user).await.unwrap();
    for (username, address) in [("ana", [10, 0, 0, 1]), ("ghost", [10, 0, 0, 4])] {
        for _ in 0..5 {
            assert_eq!(login(&g, username, address).await.0, StatusCode::BAD_REQUEST, "{username}");
        }
        let (status, retry_after) = login(&g, username, address).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{username}");
        assert!(retry_after.is_some_and(|s| s.parse::<u64>().unwrap() >= 1), "{username}");
    }
    // Per address (burst 8 here): spraying many usernames from one address is refused too.
    let mut refused = 0;
    for i in 0..9 {
        if login(&g, &format!("user{i}"), [10, 0, 0, 2]).await.0 == StatusCode::TOO_MANY_REQUESTS {
            refused += 1;
        }
    }
    assert_eq!(refused, 1, "the ninth request from one address");
    assert_eq!(login(&g, "someone", [10, 0, 0, 3]).await.0, StatusCode::BAD_REQUEST, "other addresses are unaffected");
}

#[tokio::test]
async fn answers_carry_security_headers_and_cors_admits_only_configured_origins() {
    let g = gateway().await;
    let res = g.app.clone().oneshot(Request::get("/healthz").body(Body::empty()).unwrap()).await.unwrap();
    for (name, value) in
        [("x-content-type-options", "nosniff"), ("x-frame-options", "DENY"), ("referrer-policy", "no-referrer")]
    {
        assert_eq!(res.headers().get(name).map(|v| v.to_str().unwrap()), Some(value), "{name}");
    }
    let preflight = |origin: &str| {
        Request::options("/v1/lancamentos")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization,content-type,idempotency-key")
            .body(Body::empty())
            .unwrap()
    };
    let allowed = g.app.clone().oneshot(preflight("https://app.example")).await.unwrap();
    assert!(allowed.status().is_success(), "{}", allowed.status());
    assert_eq!(allowed.headers().get("access-control-allow-origin").unwrap(), "https://app.example");
    let other = g.app.clone().oneshot(preflight("https://evil.example")).await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none(), "an unlisted origin is not admitted");
}

/// `POST /auth/token`; returns the status and the JSON body.
async fn token_request(g: &Gateway, content_type: &str, basic: Option<&str>, body: String) -> (StatusCode, Value) {
    let mut req = Request::post("/auth/token").header("content-type", content_type);
    if let Some(credentials) = basic {
        req = req.header("authorization", format!("Basic {}", STANDARD.encode(credentials)));
    }
    let res = g.app.clone().oneshot(req.body(Body::from(body)).unwrap()).await.unwrap();
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn service_clients_get_tokens_by_client_credentials_and_a_wrong_secret_looks_like_an_unknown_client() {
    let g = gateway().await;
    let client = cashflow_sinks::Client {
        client_id: "pdv-7".into(),
        merchant_id: Some("loja-7".into()),
        secret_hash: cashflow_auth::hash_password("s3cr3t-value".into()).await.unwrap(),
        scopes: vec!["lancamentos:write".into(), "consolidado:read".into()],
    };
    g.store.upsert_client(&client).await.unwrap();
    let json = "application/json";
    let form = "application/x-www-form-urlencoded";

    let by_body =
        serde_json::json!({"grant_type": "client_credentials", "client_id": "pdv-7", "client_secret": "s3cr3t-value"});
    let (status, body) = token_request(&g, json, None, by_body.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["scope"], "lancamentos:write consolidado:read");
    let bearer = g.validator().validate(body["access_token"].as_str().unwrap()).await.unwrap();
    let cashflow_http::Bearer::Merchant(principal) = bearer else { panic!("a merchant's client: {bearer:?}") };
    assert_eq!((principal.subject.as_str(), principal.merchant_id.as_str()), ("pdv-7", "loja-7"));

    let (status, body) = token_request(
        &g,
        form,
        Some("pdv-7:s3cr3t-value"),
        "grant_type=client_credentials&scope=consolidado%3Aread".into(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "HTTP Basic, narrowed scope: {body}");
    assert_eq!(body["scope"], "consolidado:read");
    // A media type's name is case-insensitive and may carry parameters (RFC 9110 §8.3.1); a
    // longer name is another type.
    let basic = Some("pdv-7:s3cr3t-value");
    let grant = || "grant_type=client_credentials".to_owned();
    let (status, body) = token_request(&g, "Application/X-WWW-Form-Urlencoded; charset=UTF-8", basic, grant()).await;
    assert_eq!(status, StatusCode::OK, "a form in other case, with a charset: {body}");
    let (status, body) = token_request(&g, "application/x-www-form-urlencodedx", basic, grant()).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::UNSUPPORTED_MEDIA_TYPE, Some("invalid_request")));

    let (status, body) =
        token_request(&g, form, Some("pdv-7:s3cr3t-value"), "grant_type=client_credentials&scope=admin".into()).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_scope")));

    let (wrong_status, wrong) =
        token_request(&g, form, Some("pdv-7:guess"), "grant_type=client_credentials".into()).await;
    let (unknown_status, unknown) =
        token_request(&g, form, Some("nobody:guess"), "grant_type=client_credentials".into()).await;
    assert_eq!(wrong_status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        (wrong_status, &wrong),
        (unknown_status, &unknown),
        "a wrong secret and an unknown client look the same"
    );
    assert_eq!(wrong["error"], "invalid_client");

    let (status, body) = token_request(&g, json, None, r#"{"grant_type":"implicit"}"#.into()).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("unsupported_grant_type")));
}

/// Merchant B's consolidated entry and day, straight into the store.
async fn store_entry_of(store: &Store, merchant: &str, day: &str) -> EntryId {
    let merchant = MerchantId::parse(merchant).unwrap();
    let data: BusinessDate = day.parse().unwrap();
    let entry = Lancamento {
        id: EntryId::random(),
        merchant_id: merchant.clone(),
        tipo: Tipo::Credito,
        valor: Money::from_cents(70_000),
        data,
        descricao: "venda".into(),
        categoria: None,
        criado_em: Utc::now(),
        estorno_de: None,
    };
    let mut tx = store.begin_epoch().await.unwrap();
    let origin = Origin { topic: "lancamentos".into(), partition: 0, offset: 0 };
    tx.insert_entries(&[StoredEntry { entry: entry.clone(), origin }]).await.unwrap();
    let totals = DayTotals { creditos_cents: 70_000, debitos_cents: 0, quantidade: 1 };
    let key = Key::new(vec![Field::MerchantId, Field::Data]).unwrap();
    let daily = DeclaredState { table: "consolidado_diario".into(), key, values: Values::default() };
    tx.add_state(&daily, &Rows::single(vec![merchant.to_string(), data.to_string()], totals)).await.unwrap();
    tx.commit().await.unwrap();
    entry.id
}

#[tokio::test]
async fn merchant_a_cannot_read_or_write_merchant_b_by_any_means() {
    let g = gateway().await;
    let b_entry = store_entry_of(&g.store, "loja-b", "2026-01-10").await;
    let scopes = ["lancamentos:write".to_owned(), "consolidado:read".to_owned()];
    let a = format!("Bearer {}", g.issuer.issue("ana", Some("loja-a"), &scopes).unwrap());
    let send = |req: axum::http::request::Builder, body: Option<Value>| {
        let app = g.app.clone();
        let a = a.clone();
        async move {
            let req = req.header("authorization", a).header("content-type", "application/json");
            let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
            let res = app.oneshot(req.body(body).unwrap()).await.unwrap();
            let status = res.status();
            let bytes = res.into_body().collect().await.unwrap().to_bytes();
            (status, serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null))
        }
    };
    let entry = serde_json::json!({"tipo": "debito", "valor": "700.00", "data": "2026-01-10", "descricao": "x"});
    let with = |field: &str| {
        let mut e = entry.clone();
        e[field] = "loja-b".into();
        Some(e)
    };

    // A's own balances do not include B's day.
    let (status, own) = send(Request::get("/v1/consolidado/diario?de=2026-01-10&ate=2026-01-10"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((own["comerciante"].as_str(), own["dias"][0]["creditos"].as_str()), (Some("loja-a"), Some("0.00")));
    // Naming A itself is harmless.
    let (status, _) =
        send(Request::get("/v1/consolidado/diario?de=2026-01-10&ate=2026-01-10&comerciante=loja-a"), None).await;
    assert_eq!(status, StatusCode::OK);

    let attempts: Vec<(&str, axum::http::request::Builder, Option<Value>)> = vec![
        (
            "read, query merchant_id",
            Request::get("/v1/consolidado/diario?de=2026-01-10&ate=2026-01-10&merchant_id=loja-b"),
            None,
        ),
        (
            "read, query comerciante",
            Request::get("/v1/consolidado/diario?de=2026-01-10&ate=2026-01-10&comerciante=loja-b"),
            None,
        ),
        ("read one day, query merchant", Request::get("/v1/consolidado/diario/2026-01-10?merchant=loja-b"), None),
        (
            "read one day, header",
            Request::get("/v1/consolidado/diario/2026-01-10").header("x-merchant-id", "loja-b"),
            None,
        ),
        ("write, body merchant_id", Request::post("/v1/lancamentos"), with("merchant_id")),
        ("write, body comerciante", Request::post("/v1/lancamentos"), with("comerciante")),
        ("write, header", Request::post("/v1/lancamentos").header("x-merchant-id", "loja-b"), Some(entry.clone())),
        ("write, query", Request::post("/v1/lancamentos?merchant_id=loja-b"), Some(entry.clone())),
        (
            "reverse B's entry, body merchant",
            Request::post(format!("/v1/lancamentos/{b_entry}/estorno")),
            Some(serde_json::json!({"merchant_id": "loja-b"})),
        ),
    ];
    for (name, req, body) in attempts {
        let (status, problem) = send(req, body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{name}: {problem}");
        assert_eq!(problem["status"], 403, "{name}: problem+json");
    }
    // Reversing B's entry is answered exactly as reversing an id nobody has: no existence oracle.
    let (status, foreign) = send(Request::post(format!("/v1/lancamentos/{b_entry}/estorno")), None).await;
    let unknown = cashflow_core::EntryId::random();
    let (unknown_status, nobodys) = send(Request::post(format!("/v1/lancamentos/{unknown}/estorno")), None).await;
    assert_eq!((status, &foreign["type"], &foreign["title"]), (unknown_status, &nobodys["type"], &nobodys["title"]));
    // No broker here: both wait out the ack or the request timeout, each answered as a 503 problem.
    assert_eq!(
        (status, &foreign["type"]),
        (StatusCode::SERVICE_UNAVAILABLE, &serde_json::json!("/problems/unavailable"))
    );
    // B's data is untouched.
    let b_day = g
        .store
        .daily(
            &MerchantId::parse("loja-b").unwrap(),
            "2026-01-10".parse().unwrap(),
            "2026-01-10".parse().unwrap(),
            "cashflow-consolidate",
        )
        .await
        .unwrap();
    assert_eq!(b_day.days.len(), 1);
    assert!(g.store.reversal_of(b_entry).await.unwrap().is_none());
}

#[tokio::test]
async fn request_rates_are_limited_per_client_address_and_per_merchant() {
    let g = gateway().await.with(|s| {
        s.rate_limit_per_address = Some((1, 3));
        s.rate_limit = Some((1, 2));
    });
    let reader = format!("Bearer {}", g.issuer.issue("ana", Some("loja-1"), &["consolidado:read".into()]).unwrap());
    let from = |address: [u8; 4], token: Option<&str>| {
        let mut req = Request::get(BALANCES);
        if let Some(t) = token {
            req = req.header("authorization", t);
        }
        let mut req = req.body(Body::empty()).unwrap();
        req.extensions_mut().insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((address, 40_000))));
        let app = g.app.clone();
        async move {
            let res = app.oneshot(req).await.unwrap();
            (res.status(), res.headers().get("retry-after").is_some())
        }
    };
    // Per address (burst 3), even without a token: the fourth is refused before authentication.
    for _ in 0..3 {
        assert_eq!(from([10, 0, 0, 1], None).await, (StatusCode::UNAUTHORIZED, false));
    }
    assert_eq!(from([10, 0, 0, 1], None).await, (StatusCode::TOO_MANY_REQUESTS, true));
    // Per merchant (burst 2), across addresses.
    assert_eq!(from([10, 0, 0, 2], Some(&reader)).await.0, StatusCode::OK);
    assert_eq!(from([10, 0, 0, 3], Some(&reader)).await.0, StatusCode::OK);
    assert_eq!(from([10, 0, 0, 4], Some(&reader)).await, (StatusCode::TOO_MANY_REQUESTS, true));
    // Health and metrics are never limited, even for an address over its limit.
    for path in ["/healthz", "/metrics"] {
        let mut req = Request::get(path).body(Body::empty()).unwrap();
        req.extensions_mut().insert(axum::extract::ConnectInfo(std::net::SocketAddr::from(([10, 0, 0, 1], 40_000))));
        assert_eq!(g.app.clone().oneshot(req).await.unwrap().status(), StatusCode::OK, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_user_costs_the_same_password_check_as_a_wrong_password() {
    let g = gateway().await;
    let user = cashflow_sinks::User {
        username: "ana".into(),
        merchant_id: Some("loja-1".into()),
        password_hash: cashflow_auth::hash_password("the right one".into()).await.unwrap(),
        scopes: vec![],
    };
    g.store.upsert_user(&user).await.unwrap();
    // Alternate the two kinds so drift in machine load hits both alike; 4 each stays under the
    // per-username limit (5) and the per-address burst (8).
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    for i in 0..4u8 {
        for (username, times) in [("ana", &mut known), ("nobody", &mut unknown)] {
            let started = Instant::now();
            let (status, _) = login(&g, username, [10, 1, i, 1]).await;
            times.push(started.elapsed());
            assert_eq!(status, StatusCode::BAD_REQUEST);
        }
    }
    known.sort();
    unknown.sort();
    let (k, u) = (known[2].as_secs_f64(), unknown[2].as_secs_f64());
    println!("median: wrong password {:.1} ms, unknown user {:.1} ms", k * 1e3, u * 1e3);
    // Skipping the hash would make the unknown user ~100× faster; a noisy machine is not 3× off.
    assert!(u > k / 3.0 && u < k * 3.0, "wrong password {k:.4} s vs unknown user {u:.4} s");
}
