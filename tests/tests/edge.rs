//! The edge against hostile clients: thousands of idle connections from one address, clients that
//! stall in their headers or their body. Other clients keep being served, the stalled ones are
//! closed at their timeouts, and nothing is lost.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cashflow_tests::{MERCHANTS, Pipeline, Store, UNLIMITED, login_all};
use futures::StreamExt as _;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};

const IDLE_MS: u64 = 4_000;
const HEADER_MS: u64 = 2_000;
const BODY_MS: u64 = 2_000;
const PER_ADDRESS: usize = 512;

async fn pipeline() -> Pipeline {
    let idle = format!("idle_timeout_ms: {IDLE_MS}");
    let header = format!("header_read_timeout_ms: {HEADER_MS}");
    let body = format!("body_read_timeout_ms: {BODY_MS}");
    Pipeline::start_with(
        Store::Sqlite,
        &[
            ("idle_timeout_ms: 60000", &idle),
            ("header_read_timeout_ms: 10000", &header),
            ("body_read_timeout_ms: 10000", &body),
            UNLIMITED,
        ],
    )
    .await
}

fn gateway(p: &Pipeline) -> SocketAddr {
    p.api.base.trim_start_matches("http://").parse().unwrap()
}

/// A connection from `from` (any port) to `to`.
async fn connect_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{from}:0").parse().unwrap())?;
    socket.connect(to).await
}

/// How long until the server closes `stream` (a read gives 0 bytes or an error), at most `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0_u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(started.elapsed()), stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

fn raise_open_files() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    assert!(hard >= 12_000, "the test holds 10,000 sockets: the hard open-file limit is {hard}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections_from_one_address_leave_the_others_served_and_are_closed() {
    raise_open_files();
    let p = pipeline().await;
    let tokens = login_all(&p).await;
    let to = gateway(&p);

    // 10,000 connections from 127.0.0.2 that send nothing.
    let started = Instant::now();
    let held: Vec<TcpStream> = futures::stream::iter(0..10_000)
        .map(|_| async move { connect_from("127.0.0.2", to).await })
        .buffer_unordered(256)
        .filter_map(|c| async move { c.ok() })
        .collect()
        .await;
    eprintln!("opened {} connections from 127.0.0.2 in {:?}", held.len(), started.elapsed());
    assert!(held.len() > 9_000, "{} connections opened", held.len());

    // Others are served meanwhile: /healthz within a second, posts accepted.
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let asked = Instant::now();
        let r = p.api.client.get(format!("{}/healthz", p.api.base)).timeout(Duration::from_secs(5)).send().await;
        assert_eq!(r.unwrap().status(), 200);
        slowest = slowest.max(asked.elapsed());
    }
    assert!(slowest < Duration::from_secs(1), "/healthz took {slowest:?}");
    let m = MERCHANTS[0];
    for i in 0..50 {
        let body =
            json!({"tipo": "credito", "valor": "1.00", "data": "2026-05-05", "descricao": format!("sob ataque {i}")});
        assert_eq!(p.api.post_entry(&tokens[m], &body, None).await.status(), 202);
    }
    eprintln!("20 /healthz from 127.0.0.1, the slowest in {slowest:?}; 50 posts accepted");

    // The address got its cap, the rest was closed at once and counted. (A few connections the
    // client counts may still be in the kernel's listen queue, not yet accepted.)
    let metrics = p.api.metrics(&p.api.base).await;
    let refused = metrics.must("cashflow_http_connections_refused_total{cap=\"address\"}");
    let open = metrics.must("cashflow_http_connections_open");
    eprintln!("refused over the address's cap: {refused}; open: {open}");
    assert!(refused >= (held.len() - PER_ADDRESS - 200) as f64, "{refused} refused");
    assert!(open <= (PER_ADDRESS + 4) as f64, "{open} open");

    // The held ones are closed by the server within the idle timeout, counted from their accept
    // (which, for the last of a burst, may come seconds after the client's connect: the kernel
    // retries a handshake the listen queue had no room for).
    let deadline = Duration::from_millis(IDLE_MS + 8_000);
    let closes = futures::stream::iter(held)
        .map(|mut c| async move { closed_within(&mut c, deadline).await })
        .buffer_unordered(1_024)
        .collect::<Vec<_>>()
        .await;
    let open_after = closes.iter().filter(|c| c.is_none()).count();
    assert_eq!(open_after, 0, "{open_after} connections still open {deadline:?} after the idle timeout started");
    let last = closes.iter().flatten().max().unwrap();
    eprintln!("every held connection closed; the last {last:?} after the check began");
    let metrics = p.api.metrics(&p.api.base).await;
    assert!(metrics.must("cashflow_http_connections_timed_out_total{phase=\"idle\"}") >= PER_ADDRESS as f64 - 4.0);

    // Nothing lost.
    assert_eq!(day_counting(&p, &tokens[m], "2026-05-05", 50).await["creditos"], "50.00");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_slow_bodies_and_idle_keep_alives_are_cut_off_at_their_timeouts() {
    let p = pipeline().await;
    let tokens = login_all(&p).await;
    let to = gateway(&p);
    let slack = Duration::from_millis(1_500);

    // Headers started and never finished: closed at the header timeout.
    let mut slow = TcpStream::connect(to).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let took = closed_within(&mut slow, Duration::from_millis(HEADER_MS) + slack * 2).await;
    let took = took.expect("a client stalled in its headers is cut off");
    assert!(took >= Duration::from_millis(HEADER_MS - 200), "cut off after {took:?}");
    eprintln!("slow headers cut off after {took:?} (header_read_timeout_ms: {HEADER_MS})");

    // A body that stalls: 408 problem+json, then closed.
    let mut slow = TcpStream::connect(to).await.unwrap();
    let head = format!(
        "POST /v1/lancamentos HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{{\"tipo\":",
        tokens[MERCHANTS[0]]
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_millis(BODY_MS) + slack * 2, slow.read_to_end(&mut answer)).await;
    let took = started.elapsed();
    read.expect("a client stalled in its body is cut off").unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.to_lowercase().contains("content-type: application/problem+json"), "{answer}");
    assert!(took >= Duration::from_millis(BODY_MS - 200), "cut off after {took:?}");
    eprintln!("slow body answered 408 and closed after {took:?} (body_read_timeout_ms: {BODY_MS})");

    // A kept-alive connection left idle after an answer: closed at the idle timeout.
    let mut idle = TcpStream::connect(to).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = [0_u8; 1024];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let took = closed_within(&mut idle, Duration::from_millis(IDLE_MS) + slack * 2).await;
    let took = took.expect("an idle kept-alive connection is closed");
    assert!(took >= Duration::from_millis(IDLE_MS - 200), "closed after {took:?}");
    eprintln!("idle keep-alive closed after {took:?} (idle_timeout_ms: {IDLE_MS})");

    let metrics = p.api.metrics(&p.api.base).await;
    for phase in ["header", "body", "idle"] {
        let n = metrics.must(&format!("cashflow_http_connections_timed_out_total{{phase=\"{phase}\"}}"));
        assert!(n >= 1.0, "{phase}: {n}");
    }
}

/// Every file and directory under `dir` open to group or others, with its mode.
fn open_to_others(dir: &std::path::Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut open = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            open.push(format!("{} {mode:o}", entry.path().display()));
        }
        if entry.file_type().unwrap().is_dir() {
            open.extend(open_to_others(&entry.path()));
        }
    }
    open
}

/// The day's balance of `token`'s merchant once it counts `entries` (at most 60 s). A merchant's
/// entries are consolidated in the order they were published, so whatever was published before
/// the last of them is counted by then.
async fn day_counting(p: &Pipeline, token: &str, day: &str, entries: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = p.api.daily(token, day, day).await;
        if answer["dias"][0]["lancamentos"] == entries {
            return answer["dias"][0].clone();
        }
        assert!(Instant::now() < deadline, "{day} does not count {entries} entries in 60 s: {answer}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn a_data_dir_that_cashflow_makes_is_its_users_alone() {
    use std::os::unix::fs::PermissionsExt as _;
    let p = Pipeline::configure(Store::Sqlite, &[]);
    let dir = p.data_dir();
    assert!(!dir.exists(), "{} is made by cashflow here", dir.display());
    let out = p.cli(&["users", "add", "--operator", "--username", "ops"], &format!("{}\n", cashflow_tests::PASSWORD));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(dir.join("cashflow.db").exists(), "the store is made in the data dir");
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the data dir's mode");
    assert_eq!(open_to_others(&dir), Vec::<String>::new(), "files open to others");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_dir_is_private_and_a_file_open_to_others_is_named_at_start() {
    use std::os::unix::fs::PermissionsExt as _;
    let mut p = Pipeline::configure(Store::Sqlite, &[]);
    let dir = p.data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let left_open = dir.join("copia-antiga.db");
    std::fs::write(&left_open, b"old copy").unwrap();
    std::fs::set_permissions(&left_open, std::fs::Permissions::from_mode(0o644)).unwrap();
    p.launch(cashflow_tests::Role::Up).await;
    let tokens = login_all(&p).await;
    let m = MERCHANTS[0];
    let body = json!({"tipo": "credito", "valor": "3.00", "data": "2026-05-06", "descricao": "privado"});
    assert_eq!(p.api.post_entry(&tokens[m], &body, None).await.status(), 202);
    day_counting(&p, &tokens[m], "2026-05-06", 1).await;
    // The store, its journal, the broker's log and the keys: all the user's alone.
    let open = open_to_others(&dir);
    assert_eq!(open, [format!("{} 644", left_open.display())], "files open to others");
    for made in ["cashflow.db", "broker", "keys"] {
        assert!(dir.join(made).exists(), "{made} under the data dir");
    }
    let warned = p.log_matching("open to other users");
    assert!(warned.iter().any(|l| l.contains("copia-antiga.db (644)")), "{warned:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_keys_foreign_batches_and_bodies_of_other_types_are_refused_and_nothing_is_recorded() {
    let p = Pipeline::start(Store::Sqlite).await;
    let tokens = login_all(&p).await;
    let (m, other) = (MERCHANTS[0], MERCHANTS[1]);
    let token = &tokens[m];
    let out = p.cli(&["users", "add", "--operator", "--username", "ops"], &format!("{}\n", cashflow_tests::PASSWORD));
    assert!(out.status.success());
    let operator = p.api.token("ops", cashflow_tests::PASSWORD).await;
    let post = |path: &str, bearer: &str, content_type: &str, body: &str| {
        let url = format!("{}{path}", p.api.base);
        let r = p.api.client.post(url).bearer_auth(bearer).header("content-type", content_type);
        r.body(body.to_owned()).send()
    };
    let json = "application/json";
    let entry = r#""tipo":"credito","data":"2026-05-07","descricao":"duplicada""#;
    let reversed = {
        let body = json!({"tipo": "credito", "valor": "5.00", "data": "2026-05-07", "descricao": "original"});
        let r: serde_json::Value = p.api.post_entry(token, &body, None).await.json().await.unwrap();
        r["id"].as_str().unwrap().to_owned()
    };
    for (path, bearer, body, field) in [
        ("/v1/lancamentos", token, format!(r#"{{"valor":"1.00","valor":"999.00",{entry}}}"#), "valor"),
        (
            "/v1/lancamentos/lote",
            token,
            format!(r#"{{"lancamentos":[{{"valor":"1.00",{entry},"tipo":"debito"}}]}}"#),
            "lancamentos[0].tipo",
        ),
        (
            "/v1/lancamentos/lote",
            token,
            format!(r#"{{"lancamentos":[],"lancamentos":[{{"valor":"1.00",{entry}}}]}}"#),
            "lancamentos",
        ),
        (
            &format!("/v1/lancamentos/{reversed}/estorno"),
            token,
            r#"{"data":"2026-05-07","data":"2026-05-08"}"#.to_owned(),
            "data",
        ),
        ("/v1/admin/dlq/replay", &operator, r#"{"all":true,"all":false}"#.to_owned(), "all"),
    ] {
        let r = post(path, bearer, json, &body).await.unwrap();
        assert_eq!(r.status(), 422, "{path} {body}");
        let problem: serde_json::Value = r.json().await.unwrap();
        assert_eq!(problem["errors"][0]["field"], field, "{path}: {problem}");
    }
    let token_request = r#"{"grant_type":"password","username":"user-loja-1","username":"ops","password":"x"}"#;
    let r = p.api.client.post(format!("{}/auth/token", p.api.base)).header("content-type", json).body(token_request);
    let r = r.send().await.unwrap();
    assert_eq!(r.status(), 400, "an OAuth request (RFC 6749: invalid_request)");
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["error"], "invalid_request");

    // A batch that names another merchant at its top level is refused as an item naming it is.
    let foreign = format!(r#"{{"merchant_id":"{other}","lancamentos":[{{"valor":"1.00",{entry}}}]}}"#);
    assert_eq!(post("/v1/lancamentos/lote", token, json, &foreign).await.unwrap().status(), 403);

    // Bodies that are not JSON are refused, never read as JSON.
    let plain = "text/plain";
    let r = post(&format!("/v1/lancamentos/{reversed}/estorno"), token, plain, r#"{"data":"2026-05-07"}"#).await;
    assert_eq!(r.unwrap().status(), 415);
    let r = p.api.client.post(format!("{}/auth/token", p.api.base)).header("content-type", plain);
    assert_eq!(r.body(r#"{"grant_type":"password"}"#).send().await.unwrap().status(), 415);

    // Only the original was recorded: counted once an entry posted after every refusal is.
    let last = json!({"tipo": "credito", "valor": "1.00", "data": "2026-05-09", "descricao": "depois"});
    assert_eq!(p.api.post_entry(token, &last, None).await.status(), 202);
    day_counting(&p, token, "2026-05-09", 1).await;
    let day = p.api.daily(token, "2026-05-07", "2026-05-08").await;
    assert_eq!((&day["dias"][0]["lancamentos"], &day["dias"][1]["lancamentos"]), (&json!(1), &json!(0)), "{day}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listener_answers_its_errors_as_problems() {
    let p = Pipeline::start_stages(Store::Sqlite, &[]).await;
    let client = &p.api.client;
    let is_problem = |r: &reqwest::Response| {
        r.headers().get("content-type").and_then(|v| v.to_str().ok()) == Some("application/problem+json")
    };
    let listeners = [
        p.api.base.clone(),
        p.stages[&cashflow_tests::Role::Consolidate].clone(),
        p.stages[&cashflow_tests::Role::Retry].clone(),
    ];
    for base in &listeners {
        let r = client.delete(format!("{base}/healthz")).send().await.unwrap();
        assert_eq!(r.status(), 405, "{base}");
        assert!(is_problem(&r) && r.headers().contains_key("allow"), "{base}: {:?}", r.headers());

        let long = "x".repeat(10_000);
        let r = client.get(format!("{base}/healthz?q={long}")).send().await.unwrap();
        assert_eq!(r.status(), 414, "{base}");
        assert!(is_problem(&r), "{base}: {:?}", r.headers());

        let mut many = client.get(format!("{base}/healthz"));
        for i in 0..150 {
            many = many.header(format!("x-campo-{i}"), "v");
        }
        let r = many.send().await.unwrap();
        assert_eq!(r.status(), 431, "{base}");
        assert!(is_problem(&r), "{base}: {:?}", r.headers());

        // Requests the HTTP layer cannot parse at all.
        let address: SocketAddr = base.trim_start_matches("http://").parse().unwrap();
        for garbage in [
            "NOT HTTP AT ALL\r\n\r\n",
            "GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
            "GET /healthz HTTP/1.1\r\nHost: x\r\nbad header line\r\n\r\n",
        ] {
            let mut stream = TcpStream::connect(address).await.unwrap();
            stream.write_all(garbage.as_bytes()).await.unwrap();
            let mut answer = String::new();
            let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut answer)).await;
            assert!(read.is_ok(), "{base} {garbage:?}: no answer");
            let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
            assert!(head.starts_with("HTTP/1.1 400 "), "{base} {garbage:?}: {answer:?}");
            assert!(head.to_ascii_lowercase().contains("content-type: application/problem+json"), "{answer:?}");
            let problem: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer:?}"));
            assert_eq!(problem["status"], 400, "{answer:?}");
        }
    }
    // Bodies over the limit, on the JSON routes and on the token route.
    let token = &login_all(&p).await[MERCHANTS[0]];
    let big = "x".repeat(150_000);
    for path in ["/auth/token", "/v1/lancamentos"] {
        let r = client.post(format!("{}{path}", p.api.base)).header("content-type", "application/json");
        let r = r.bearer_auth(token).body(big.clone()).send().await.unwrap();
        assert_eq!(r.status(), 413, "{path}");
        assert!(is_problem(&r), "{path}: {:?}", r.headers());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_is_negotiated_by_rfc_9110_and_an_encoded_body_is_refused() {
    let p = Pipeline::start(Store::Sqlite).await;
    let token = &login_all(&p).await[MERCHANTS[0]];
    let body = json!({"tipo": "credito", "valor": "5.00", "data": "2026-05-07", "descricao": "negociada"});
    assert_eq!(p.api.post_entry(token, &body, None).await.status(), 202);
    let statement = |accept: Option<&'static str>| {
        let r = p.api.client.get(format!("{}/v1/lancamentos?de=2026-05-01&ate=2026-05-31", p.api.base));
        let r = accept.into_iter().fold(r.bearer_auth(token), |r, a| r.header("accept", a));
        async move {
            let r = r.send().await.unwrap();
            let kind = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
            (r.status().as_u16(), kind.split(';').next().unwrap_or_default().to_owned())
        }
    };
    let (json, csv, problem) = ("application/json", "text/csv", "application/problem+json");
    for (accept, expected) in [
        (None, (200, json)),
        (Some("*/*"), (200, json)),
        (Some("text/csv"), (200, csv)),
        (Some("TEXT/CSV"), (200, csv)),
        (Some("Text/Csv; charset=utf-8"), (200, csv)),
        (Some("text/*"), (200, csv)),
        (Some("text/csv;q=0, application/json"), (200, json)),
        (Some("text/csv;q=0, */*"), (200, json)),
        (Some("application/json;q=0.5, text/csv"), (200, csv)),
        (Some("text/csv;q=0.5, application/json"), (200, json)),
        (Some("*/*;q=0.1, text/csv;Q=0.9"), (200, csv)),
        (Some("text/csv;q=0"), (406, problem)),
        (Some("text/html"), (406, problem)),
        (Some("application/json;q=0, text/csv;q=0"), (406, problem)),
        (Some("text/csv;charset=latin1"), (406, problem)),
        (Some("text/csv;charset=\"UTF-8\""), (200, csv)),
        (Some("application/json;charset=utf-8"), (200, json)),
        (Some("text/csv, */*"), (200, csv)),
        // Elements that do not parse are disregarded (RFC 9110 12.5.1), as Java's default is.
        (Some("text/html, image/gif, image/jpeg, *; q=.2, */*; q=.2"), (200, json)),
        (Some("text/csv;q=2"), (200, json)),
        (Some("csv"), (200, json)),
    ] {
        assert_eq!(statement(accept).await, (expected.0, expected.1.to_owned()), "Accept: {accept:?}");
    }

    // A body in a content coding is refused (415, naming the one coding taken), never read as
    // if it were plain, and nothing is recorded.
    for coding in ["br", "gzip", "identity, gzip"] {
        let r = p.api.client.post(format!("{}/v1/lancamentos", p.api.base)).bearer_auth(token);
        let r = r.header("content-type", "application/json").header("content-encoding", coding);
        let entry = json!({"tipo": "credito", "valor": "7.00", "data": "2026-05-08", "descricao": coding});
        let r = r.body(entry.to_string()).send().await.unwrap();
        assert_eq!(r.status(), 415, "Content-Encoding: {coding}");
        assert_eq!(r.headers()["accept-encoding"], "identity", "Content-Encoding: {coding}");
        assert_eq!(r.headers()["content-type"], problem, "Content-Encoding: {coding}");
    }
    let r = p.api.client.post(format!("{}/v1/lancamentos", p.api.base)).bearer_auth(token);
    let r = r.header("content-type", "application/json").header("content-encoding", "identity");
    let entry = json!({"tipo": "credito", "valor": "7.00", "data": "2026-05-09", "descricao": "identity"});
    assert_eq!(r.body(entry.to_string()).send().await.unwrap().status(), 202, "identity is no coding");
    day_counting(&p, token, "2026-05-09", 1).await;
    let day = p.api.daily(token, "2026-05-08", "2026-05-09").await;
    assert_eq!((&day["dias"][0]["lancamentos"], &day["dias"][1]["lancamentos"]), (&json!(0), &json!(1)), "{day}");
}

/// Hands a sealed token back: a posicao as `aguardar` on the daily balances, a cursor to the
/// statement.
async fn hand_back(p: &Pipeline, token: &str, field: &str, value: &str) -> (u16, serde_json::Value) {
    let path = match field {
        "aguardar" => format!("/v1/consolidado/diario?de=2026-05-01&ate=2026-05-31&aguardar={value}"),
        _ => format!("/v1/lancamentos?de=2026-05-01&ate=2026-05-31&limite=1&cursor={value}"),
    };
    let r = p.api.get(token, &path).await;
    (r.status().as_u16(), r.json().await.unwrap())
}

/// `token` with bit `bit` of its bytes flipped, encoded again.
fn flip(token: &str, bit: usize) -> String {
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut bytes = engine.decode(token).unwrap();
    bytes[bit / 8] ^= 1 << (bit % 8);
    engine.encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posicao_and_cursors_are_sealed_so_a_flipped_bit_or_another_merchants_is_refused() {
    use base64::Engine as _;
    let p = Pipeline::start(Store::Sqlite).await;
    let tokens = login_all(&p).await;
    let (mine, theirs) = (&tokens[MERCHANTS[0]], &tokens[MERCHANTS[1]]);
    let mut posicoes = Vec::new();
    for day in ["2026-05-07", "2026-05-08", "2026-05-09"] {
        let body = json!({"tipo": "credito", "valor": "5.00", "data": day, "descricao": "selada"});
        let r: serde_json::Value = p.api.post_entry(mine, &body, None).await.json().await.unwrap();
        posicoes.push(r["posicao"].as_str().unwrap().to_owned());
    }
    let posicao = posicoes.last().unwrap().clone();
    assert_eq!(hand_back(&p, mine, "aguardar", &posicao).await.0, 200, "the merchant's own posicao");
    let cursor = {
        let path = "/v1/lancamentos?de=2026-05-01&ate=2026-05-31&limite=1";
        let page: serde_json::Value = p.api.get(mine, path).await.json().await.unwrap();
        page["proximo_cursor"].as_str().unwrap().to_owned()
    };
    assert_eq!(hand_back(&p, mine, "cursor", &cursor).await.0, 200, "the merchant's own cursor");

    // Neither says what it holds: no partition and offset, no date or id in the clear.
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    for token in &posicoes {
        let text = String::from_utf8_lossy(&engine.decode(token).unwrap()).into_owned();
        let position = text.split_once(':').is_some_and(|(p, o)| p.parse::<i32>().is_ok() && o.parse::<i64>().is_ok());
        assert!(!position, "{token} reads as partition:offset {text:?}");
    }
    let text = String::from_utf8_lossy(&engine.decode(&cursor).unwrap()).into_owned();
    assert!(!text.contains("2026-05-0"), "{cursor} reads as {text:?}");
    // One flipped bit anywhere, or another merchant's token: 422, naming the field.
    for (field, token, step) in [("aguardar", &posicao, 7), ("cursor", &cursor, 13)] {
        let bits = engine.decode(token).unwrap().len() * 8;
        for bit in (0..bits).step_by(step) {
            let (status, problem) = hand_back(&p, mine, field, &flip(token, bit)).await;
            assert_eq!(status, 422, "{field} bit {bit}: {problem}");
            assert_eq!(problem["errors"][0]["field"], field, "{problem}");
        }
        let (status, problem) = hand_back(&p, theirs, field, token).await;
        assert_eq!(status, 422, "another merchant's {field}: {problem}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_requests_over_the_limit_cannot_flood_the_log() {
    let p = Pipeline::start(Store::Sqlite).await;
    let url = format!("{}/auth/token", p.api.base);
    let mut limited = 0;
    for _ in 0..60 {
        let form = [("grant_type", "password"), ("username", "ninguem"), ("password", "errada")];
        let r = p.api.client.post(&url).form(&form).send().await.unwrap();
        limited += u32::from(r.status() == 429);
    }
    assert!(limited >= 40, "{limited} of 60 were over the limit");
    let lines = p.log_matching("over the login limit");
    assert!((1..=2).contains(&lines.len()), "{} lines for {limited} refusals:\n{}", lines.len(), lines.join("\n"));
}
