use super::*;

const DEFAULT: &str = include_str!("../../../pipeline.yaml");

fn no_env(_: &str) -> Option<String> {
    None
}

/// Every problem of `yaml`, one `path: message` line each.
fn problems(yaml: &str) -> Vec<String> {
    match PipelineConfig::parse("test.yaml", yaml, |n| (n == "DATABASE_URL").then(|| "postgres://db/x".into())) {
        Ok(_) => vec![],
        Err(e) => e.problems.iter().map(ToString::to_string).collect(),
    }
}

fn edit(from: &str, to: &str) -> String {
    assert!(DEFAULT.contains(from), "default pipeline.yaml lacks {from:?}");
    DEFAULT.replacen(from, to, 1)
}

#[test]
fn the_shipped_file_is_valid() {
    let c = PipelineConfig::parse("pipeline.yaml", DEFAULT, no_env).unwrap();
    assert!(c.kafka.is_embedded());
    assert_eq!(c.kafka.bootstrap(), "127.0.0.1:9092");
    assert_eq!(c.topics["lancamentos"].partitions, 6);
    assert_eq!(c.ingest_topic(), "lancamentos");
    assert_eq!(c.services.retry.backoff, [1, 10, 60].map(Duration::from_secs));
    assert_eq!(c.store.url.resolved(Path::new("/d")).expose(), "sqlite:///d/cashflow.db");
    assert_eq!(c.services.gateway.listen, SocketAddr::from(([127, 0, 0, 1], 8080)));
    assert_eq!(c.services.auth.token_ttl, Duration::from_secs(900));
}

#[test]
fn unknown_key_names_its_path() {
    let p = problems(&edit("    max_body_bytes: 65536", "    max_body_bytez: 65536"));
    assert_eq!(p.len(), 1);
    assert!(p[0].starts_with("services.gateway.max_body_bytez: unknown field `max_body_bytez`"), "{p:?}");
}

#[test]
fn unknown_topic_reference_names_its_path() {
    let p = problems(&edit(
        "sources: [ { type: topic, id: lancamentos } ]",
        "sources: [ { type: topic, id: lancamentos }, { type: topic, id: x } ]",
    ));
    assert_eq!(p, vec![r#"services.consolidate.sources[1].id: unknown topic "x""#]);
}

#[test]
fn every_bad_reference_is_reported_at_once() {
    let yaml = edit("on_error: { type: topic, id: lancamentos.retry }", "on_error: { type: topic, id: nope }")
        .replace("parked: { type: topic, id: lancamentos.dlq }", "parked: { type: topic, id: gone }");
    let p = problems(&yaml);
    assert_eq!(
        p,
        vec![
            r#"services.consolidate.on_error.id: unknown topic "nope""#.to_string(),
            r#"services.retry.parked.id: unknown topic "gone""#.to_string(),
        ]
    );
}

#[test]
fn unknown_operator_is_rejected() {
    let p = problems(&edit("- operator: dedupe ", "- operator: explode "));
    assert!(p[0].starts_with("services.consolidate.transforms[1].operator: unknown variant `explode`"), "{p:?}");
}

#[test]
fn operators_out_of_order_are_rejected() {
    let yaml = edit(
        "      - operator: dedupe ",
        "      - operator: aggregate\n        into: [saldo-mensal]\n      - operator: dedupe ",
    );
    let p = problems(&yaml);
    assert!(
        p.iter()
            .any(|p| p
                .starts_with("services.consolidate.transforms: must be validate, dedupe, any smartmodules, aggregate")),
        "{p:?}"
    );
    assert!(p.iter().any(|p| p.starts_with("services.consolidate.transforms[3].into[2]: state \"saldo-mensal\" is named twice")), "{p:?}");
}

const MODULE: &str = "      - operator: smartmodule\n        name: categorias\n        path: smartmodules/categorias/categorias.wasm\n        kind: map\n        params: { regra: \"aluguel=moradia\" }\n";

#[test]
fn smartmodules_go_between_dedupe_and_aggregate() {
    let yaml = edit("      - operator: aggregate ", &format!("{MODULE}      - operator: aggregate "));
    let c = PipelineConfig::parse("test.yaml", &yaml, no_env).unwrap();
    let modules = c.smartmodules();
    assert_eq!(modules.len(), 1);
    let (at, m) = &modules[0];
    assert_eq!(at, "services.consolidate.transforms[2]");
    assert_eq!(
        (m.name.as_str(), m.kind, m.params["regra"].as_str()),
        ("categorias", SmartModuleKind::Map, "aluguel=moradia")
    );
    assert_eq!((m.fuel, m.max_memory_bytes), (10_000_000, 16 << 20), "the defaults");

    let before_validate = edit("      - operator: validate ", &format!("{MODULE}      - operator: validate "));
    let p = problems(&before_validate);
    assert!(
        p.iter()
            .any(|p| p
                .starts_with("services.consolidate.transforms: must be validate, dedupe, any smartmodules, aggregate")),
        "{p:?}"
    );
}

#[test]
fn a_smartmodule_with_bad_keys_is_refused_at_their_paths() {
    let twice = format!("{MODULE}{MODULE}");
    let bad = twice.replacen("kind: map", "kind: map\n        fuel: 10\n        max_memory_bytes: 1024", 1);
    let p = problems(&edit("      - operator: aggregate ", &format!("{bad}      - operator: aggregate ")));
    for expected in [
        "services.consolidate.transforms[3].name: smartmodule \"categorias\" is named twice",
        "services.consolidate.transforms[2].fuel: must be between",
        "services.consolidate.transforms[2].max_memory_bytes: must be between",
    ] {
        assert!(p.iter().any(|p| p.starts_with(expected)), "{expected}: {p:?}");
    }
    let unknown = MODULE.replace("kind: map", "kind: reduce");
    let p = problems(&edit("      - operator: aggregate ", &format!("{unknown}      - operator: aggregate ")));
    assert!(p.iter().any(|p| p.starts_with("services.consolidate.transforms[2]")), "{p:?}");
}

#[test]
fn the_shipped_states_are_the_ones_the_routes_read() {
    let c = PipelineConfig::parse("pipeline.yaml", DEFAULT, no_env).unwrap();
    let kept: Vec<(&str, String, &str)> = c
        .services
        .consolidate
        .aggregated()
        .into_iter()
        .map(|(n, s)| (n, s.key.to_string(), s.table.as_str()))
        .collect();
    let want = check::REQUIRED_STATES
        .map(|(table, key, _)| (table, format!("[{}]", key.iter().map(|f| f.as_str()).collect::<Vec<_>>().join(", "))));
    assert_eq!(kept.len(), want.len());
    for (table, key) in want {
        assert!(kept.iter().any(|(_, k, t)| *t == table && *k == key), "{table} {key} not in {kept:?}");
    }
    assert_eq!(c.services.consolidate.date_window(), DateWindow { past_days: 3660, future_days: 366 });
}

#[test]
fn unset_environment_variable_is_named() {
    let p = problems(&edit("url: sqlite://cashflow.db", "url: \"${NOT_SET_ANYWHERE}\""));
    assert_eq!(p, vec!["store.url: environment variable NOT_SET_ANYWHERE is not set"]);
}

#[test]
fn environment_variables_are_substituted() {
    let yaml = edit("url: sqlite://cashflow.db", "url: \"${DATABASE_URL}\"");
    let c = PipelineConfig::parse("t", &yaml, |n| (n == "DATABASE_URL").then(|| "postgres://db/x".into())).unwrap();
    assert_eq!(c.store.url.resolved(Path::new("/d")).expose(), "postgres://db/x");
    let literal = edit("issuer: cashflow", "issuer: \"a$${b}\"");
    let c = PipelineConfig::parse("t", &literal, no_env).unwrap();
    assert_eq!(c.services.auth.issuer, "a${b}");
}

#[test]
fn wrong_types_and_ranges_are_reported() {
    let p = problems(&edit("lancamentos:       { partitions: 6 }", "lancamentos:       { partitions: six }"));
    assert_eq!(p.len(), 1);
    assert!(p[0].starts_with("topics.lancamentos.partitions: invalid type"), "{p:?}");

    let p = problems(&edit("lancamentos:       { partitions: 6 }", "lancamentos:       { partitions: 0 }"));
    assert_eq!(p, vec!["topics.lancamentos.partitions: must be between 1 and 1000, found 0"]);
}

#[test]
fn bad_addresses_versions_and_stores_are_reported() {
    let yaml = edit("listen: 127.0.0.1:8080", "listen: somewhere")
        .replace("apiVersion: cashflow/v1", "apiVersion: cashflow/v9")
        .replace("url: sqlite://cashflow.db", "url: mysql://db");
    let p = problems(&yaml);
    assert_eq!(
        p,
        vec![
            r#"apiVersion: must be "cashflow/v1", found "cashflow/v9""#.to_string(),
            r#"store.url: "mysql://db" must start with sqlite:// or postgres://"#.to_string(),
            r#"services.gateway.listen: "somewhere" is not an ip:port address"#.to_string(),
        ]
    );
}

#[test]
fn a_source_that_is_also_on_error_is_rejected() {
    let p = problems(&edit(
        "sources: [ { type: topic, id: lancamentos } ]",
        "sources: [ { type: topic, id: lancamentos }, { type: topic, id: lancamentos.retry } ]",
    ));
    assert_eq!(p.len(), 1);
    assert!(p[0].starts_with("services.consolidate.sources[1].id: \"lancamentos.retry\" is also on_error"), "{p:?}");
}

#[test]
fn missing_section_and_bad_yaml_are_reported() {
    let without_retry = DEFAULT.split("  retry:").next().unwrap().to_string();
    let p = problems(&without_retry);
    assert_eq!(p.len(), 1);
    assert!(p[0].contains("missing field `retry`"), "{p:?}");

    let p = problems("apiVersion: [unclosed");
    assert!(p[0].starts_with("invalid YAML"), "{p:?}");
}

#[test]
fn the_date_window_is_relative_to_today() {
    use crate::config::DateWindow;
    let w = DateWindow { past_days: 30, future_days: 1 };
    let today: crate::BusinessDate = "2026-11-29".parse().unwrap();
    let at = |s: &str| w.reject(s.parse().unwrap(), today);
    assert_eq!((at("2026-10-30"), at("2026-11-30")), (None, None));
    let why = at("2026-10-29").unwrap();
    assert!(why.contains("2026-10-30 and 2026-11-30") && why.contains("date_window"), "{why}");
    assert!(at("2026-12-01").is_some());
}

#[test]
fn cors_origins_must_be_origins() {
    let yaml = edit(
        "cors_allowed_origins: []",
        r#"cors_allowed_origins: ["https://app.example", "*", "app.example", "https://x/"]"#,
    );
    assert_eq!(
        problems(&yaml),
        [
            r#"services.gateway.cors_allowed_origins[2]: "app.example" is not an origin like https://app.example.com (or "*")"#,
            r#"services.gateway.cors_allowed_origins[3]: "https://x/" is not an origin like https://app.example.com (or "*")"#,
        ]
    );
}

#[test]
fn a_store_password_is_redacted_wherever_the_url_carries_it() {
    use super::redact_password;
    assert_eq!(redact_password("postgres://app:s3cret@db:5432/cash"), "postgres://app:***@db:5432/cash");
    assert_eq!(redact_password("postgres://app:p@ss@db/cash"), "postgres://app:***@db/cash");
    assert_eq!(
        redact_password("postgresql://db/cash?user=app&password=s3cret&sslmode=require"),
        "postgresql://db/cash?user=app&password=***&sslmode=require"
    );
    assert_eq!(redact_password("postgres://app@db/cash"), "postgres://app@db/cash");
    assert_eq!(redact_password("sqlite://data/cashflow.db"), "sqlite://data/cashflow.db");
}

/// A step of a path into the YAML document: a mapping's key, or a sequence's index.
#[derive(Clone, Debug)]
enum Step {
    Key(serde_norway::Value),
    Index(usize),
}

fn show(path: &[Step]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k.as_str().unwrap_or("?"));
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Every path to a mapping key of `value`, parents before children.
fn key_paths(value: &serde_norway::Value, at: Vec<Step>, out: &mut Vec<Vec<Step>>) {
    match value {
        serde_norway::Value::Mapping(m) => {
            for (k, v) in m {
                let mut path = at.clone();
                path.push(Step::Key(k.clone()));
                out.push(path.clone());
                key_paths(v, path, out);
            }
        }
        serde_norway::Value::Sequence(s) => {
            for (i, v) in s.iter().enumerate() {
                let mut path = at.clone();
                path.push(Step::Index(i));
                key_paths(v, path, out);
            }
        }
        _ => {}
    }
}

fn at_mut<'v>(value: &'v mut serde_norway::Value, path: &[Step]) -> &'v mut serde_norway::Value {
    path.iter().fold(value, |v, step| match step {
        Step::Key(k) => v.as_mapping_mut().and_then(|m| m.get_mut(k)).unwrap(),
        Step::Index(i) => v.as_sequence_mut().and_then(|s| s.get_mut(*i)).unwrap(),
    })
}

/// `value` changed into something else of its kind: a number plus one, a string with a suffix, a
/// list without its last item (or with one item, when empty), a map with one more entry.
fn changed(path: &str, value: &serde_norway::Value) -> serde_norway::Value {
    use serde_norway::Value;
    match value {
        Value::Number(n) => Value::from(n.as_u64().unwrap() + 1),
        Value::Bool(b) => Value::Bool(!b),
        Value::String(s) if s.contains(':') && s.parse::<std::net::SocketAddr>().is_ok() => {
            Value::from(s.replace(':', ":1"))
        }
        Value::String(s) => Value::from(format!("{s}x")),
        Value::Sequence(items) if items.is_empty() => {
            let item = if path.ends_with("trusted_proxies") { "10.0.0.2" } else { "https://app.example" };
            Value::Sequence(vec![Value::from(item)])
        }
        Value::Sequence(items) => Value::Sequence(items[..items.len() - 1].to_vec()),
        Value::Mapping(m) => {
            let mut m = m.clone();
            m.insert(Value::from("added"), Value::from("1"));
            Value::Mapping(m)
        }
        other => panic!("{path}: no change for {other:?}"),
    }
}

/// No key of the shipped file is dropped on the way in: changing its value, or its name when it
/// names a topic or a state, gives another typed config, or a config error. (`deny_unknown_fields`
/// refuses a key the types do not have; this shows each key the file has is one the types read.
/// What each typed field does is shown by the tests of the stage that uses it.)
#[test]
fn every_key_of_the_shipped_file_is_read_into_the_typed_config() {
    let parse = |doc: &serde_norway::Value| {
        let text = serde_norway::to_string(doc).unwrap();
        PipelineConfig::parse("pipeline.yaml", &text, no_env).map(|c| format!("{c:?}"))
    };
    let doc: serde_norway::Value = serde_norway::from_str(DEFAULT).unwrap();
    let shipped = parse(&doc).unwrap();
    let mut paths = Vec::new();
    key_paths(&doc, Vec::new(), &mut paths);
    assert!(paths.len() > 90, "{} keys", paths.len());
    for path in paths {
        let shown = show(&path);
        let mut edited = doc.clone();
        let value = at_mut(&mut edited, &path);
        *value = changed(&shown, value);
        let outcome = parse(&edited);
        assert!(outcome.as_ref() != Ok(&shipped), "{shown}: changing its value changed nothing");

        // a key that names something (a topic, a state): renamed
        let (parent, Some(Step::Key(name))) = (&path[..path.len() - 1], path.last()) else { continue };
        let names =
            |p: &Step| matches!(p, Step::Key(k) if k.as_str() == Some("topics") || k.as_str() == Some("states"));
        if !parent.last().is_some_and(names) {
            continue;
        }
        let mut renamed = doc.clone();
        let map = at_mut(&mut renamed, parent).as_mapping_mut().unwrap();
        let value = map.remove(name).unwrap();
        map.insert(serde_norway::Value::from(format!("{}x", name.as_str().unwrap())), value);
        let outcome = parse(&renamed);
        assert!(outcome.as_ref() != Ok(&shipped), "{shown}: renaming it changed nothing");
    }
}

#[test]
fn a_backoff_delay_beyond_a_week_is_refused_rather_than_wrapping_the_due_time() {
    let shipped = "backoff_ms: [1000, 10000, 60000]";
    let p = problems(&edit(shipped, "backoff_ms: [1000, 18446744073709551615]"));
    assert_eq!(p, ["services.retry.backoff_ms[1]: at most 604800000 (a week)"]);
    assert!(problems(&edit(shipped, "backoff_ms: [1000, 604800000]")).is_empty());
}

#[test]
fn durations_are_numbers_in_the_unit_their_key_names_or_texts_with_a_unit() {
    let c = PipelineConfig::parse("t", &edit("token_ttl_secs: 900", "token_ttl_secs: 15m"), no_env).unwrap();
    assert_eq!(c.services.auth.token_ttl, Duration::from_secs(900));
    let shipped = "backoff_ms: [1000, 10000, 60000]";
    let c = PipelineConfig::parse("t", &edit(shipped, "backoff_ms: [500ms, 10s, 1000]"), no_env).unwrap();
    assert_eq!(c.services.retry.backoff, [500, 10_000, 1000].map(Duration::from_millis));
    let p = problems(&edit(shipped, "backoff_ms: [1000, soon]"));
    assert_eq!(p.len(), 1);
    assert!(p[0].starts_with("services.retry.backoff_ms[1]: \"soon\" is not a duration"), "{p:?}");
    let p = problems(&edit(shipped, "backoff_ms: [1000, 8d]"));
    assert_eq!(p, ["services.retry.backoff_ms[1]: at most 604800000 (a week)"]);
}

#[test]
fn brokers_are_the_embedded_one_or_a_bootstrap_list() {
    let c = PipelineConfig::parse("t", &edit("brokers: embedded", "brokers: \"k1:9092, k2:9092\""), no_env).unwrap();
    assert_eq!(c.kafka.brokers, Brokers::Bootstrap(vec!["k1:9092".into(), "k2:9092".into()]));
    assert_eq!(c.kafka.bootstrap(), "k1:9092,k2:9092");
    assert_eq!(
        problems(&edit("brokers: embedded", "brokers: \" , \"")),
        [r#"kafka.brokers: " , " must be "embedded" or a host:port list"#]
    );
}

#[test]
fn the_bundled_broker_keeps_its_log_in_sqlite_or_in_a_shared_postgresql() {
    let c = PipelineConfig::parse("t", DEFAULT, no_env).unwrap();
    assert_eq!(c.kafka.embedded.storage, BrokerStorage::Sqlite);
    let listen: std::net::SocketAddr = "127.0.0.1:9092".parse().unwrap();
    assert_eq!(c.kafka.embedded.advertised(listen), "127.0.0.1:9092");

    let yaml = edit("storage: sqlite", "storage: \"postgres://tansu:s3cret@db/broker\"")
        .replace("# advertise: \"${BROKER_ADVERTISE}\"", "advertise: \"broker-1.internal:9092\"");
    let c = PipelineConfig::parse("t", &yaml, no_env).unwrap();
    let BrokerStorage::Postgres(url) = &c.kafka.embedded.storage else { panic!("{:?}", c.kafka.embedded.storage) };
    assert_eq!(url.expose(), "postgres://tansu:s3cret@db/broker");
    let shown = format!("{:?} {}", c.kafka.embedded, c.kafka.embedded.storage);
    assert!(!shown.contains("s3cret") && shown.contains("postgres://tansu:***@db/broker"), "{shown}");
    assert_eq!(c.kafka.embedded.advertised("0.0.0.0:9092".parse().unwrap()), "broker-1.internal:9092");

    assert_eq!(
        problems(&edit("storage: sqlite", "storage: \"mysql://db\"")),
        [r#"kafka.embedded.storage: "mysql://db" must be "sqlite" or a postgres:// URL"#]
    );
    for (written, good) in [
        ("broker-1", false),
        ("tcp://broker-1:9092", false),
        ("::1:9092", false),
        ("broker 1:9092", false),
        ("broker-1:0", false),
        ("[::1]:9092", true),
        ("10.0.0.7:9092", true),
    ] {
        let yaml = edit("# advertise: \"${BROKER_ADVERTISE}\"", &format!("advertise: \"{written}\""));
        let expected: Vec<String> = match good {
            true => vec![],
            false => vec![format!("kafka.embedded.advertise: {written:?} is not a host:port address")],
        };
        assert_eq!(problems(&yaml), expected, "{written}");
    }
}

#[test]
fn secrets_never_show_in_debug_or_display() {
    let yaml = edit("url: sqlite://cashflow.db", "url: \"postgres://app:s3cret@db/cash\"")
        .replace("brokers: embedded", "brokers: \"k1:9092\"")
        .replace("properties: {}", "properties: { sasl.password: hunter2 }");
    let c = PipelineConfig::parse("t", &yaml, no_env).unwrap();
    let shown = format!("{c:?} {}", c.store.url);
    assert!(!shown.contains("s3cret") && !shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("postgres://app:***@db/cash"), "{shown}");
    assert_eq!(c.kafka.properties["sasl.password"].expose(), "hunter2");
    assert_eq!(c.store.url.resolved(Path::new("/d")).expose(), "postgres://app:s3cret@db/cash");
}

#[test]
fn typed_values_accept_what_the_untyped_file_did() {
    // A broker without a port (the client's default) and a trailing comma.
    let c = PipelineConfig::parse("t", &edit("brokers: embedded", "brokers: \"kafka,\""), no_env).unwrap();
    assert_eq!(c.kafka.bootstrap(), "kafka");
    // `sqlite:` without `//` is given to SQLite as written.
    let c = PipelineConfig::parse("t", &edit("url: sqlite://cashflow.db", "url: \"sqlite:rel.db\""), no_env).unwrap();
    assert_eq!(c.store.url.resolved(Path::new("/d")).expose(), "sqlite:rel.db");
    // A property written as a number is its text.
    let c = PipelineConfig::parse("t", &edit("properties: {}", "properties: { linger.ms: 5 }"), no_env).unwrap();
    assert_eq!(c.kafka.properties["linger.ms"].expose(), "5");
}

#[test]
fn extreme_or_mixed_mistakes_are_all_reported_without_a_panic_or_a_secret() {
    let p = problems(&edit("aguardar_timeout_ms: 5000", "aguardar_timeout_ms: 18446744073709551615"));
    assert_eq!(p.len(), 1);
    assert!(p[0].starts_with("services.query.aguardar_timeout_ms: must be at least 1"), "{p:?}");
    // A broker ack allowed to outlast the gateway's request timeout would lose the entry's key.
    let p = problems(&edit("ack_timeout_ms: 5000", "ack_timeout_ms: 30s"));
    assert_eq!(
        p,
        ["services.ingest.ack_timeout_ms: must be at least 1 and below services.gateway.request_timeout_secs"]
    );
    // A wrong apiVersion and a value that stops deserializing are both named.
    let yaml = edit("apiVersion: cashflow/v1", "apiVersion: cashflow/v9")
        .replace("token_ttl_secs: 900", "token_ttl_secs: soon");
    let p = problems(&yaml);
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(p[1].starts_with("services.auth.token_ttl_secs: \"soon\" is not a duration"), "{p:?}");
    // A property of the wrong shape is refused without repeating its value.
    let p = problems(&edit("properties: {}", "properties: { sasl.password: [hunter2] }"));
    assert_eq!(p, ["kafka.properties.sasl.password: must be a text or a number"]);
}

/// The shipped file with its store on PostgreSQL.
fn on_postgres() -> String {
    edit("url: sqlite://cashflow.db", "url: \"${DATABASE_URL}\"")
}

/// What `pick` reads from `yaml`'s consolidate service and store (`DATABASE_URL` set).
fn by_store<T>(yaml: &str, pick: impl Fn(&ConsolidateConfig, &StoreUrl) -> T) -> T {
    let c = PipelineConfig::parse("p.yaml", yaml, |_| Some("postgres://db/x".into())).unwrap();
    pick(&c.services.consolidate, &c.store.url)
}

/// `yaml` with `key: value` set in `services.consolidate`.
fn set_consolidate(yaml: &str, key: &str, value: &str) -> String {
    let anchor = "max_epoch_wait_ms: 50";
    assert!(yaml.contains(anchor), "pipeline.yaml lacks {anchor:?}");
    yaml.replacen(anchor, &format!("{anchor}\n    {key}: {value}"), 1)
}

#[test]
fn sink_lanes_default_by_store_and_are_refused_where_they_cannot_run() {
    let lanes = |yaml: &str| by_store(yaml, ConsolidateConfig::lanes);
    let postgres = on_postgres();
    assert_eq!(lanes(DEFAULT), 1, "SQLite takes one writer");
    assert_eq!(lanes(&postgres), DEFAULT_POSTGRES_LANES);
    let set = |yaml: &str, n: &str| set_consolidate(yaml, "lanes", n);
    assert_eq!(lanes(&set(&postgres, "4")), 4);
    assert_eq!(lanes(&set(DEFAULT, "1")), 1);

    let lanes_problems = |yaml: &str| problems(yaml).into_iter().filter(|p| p.contains("lanes")).collect::<Vec<_>>();
    assert_eq!(
        lanes_problems(&set(DEFAULT, "2")),
        ["services.consolidate.lanes: must be 1 on SQLite, which takes one writer at a time (or leave it unset)"]
    );
    assert_eq!(lanes_problems(&set(&postgres, "0")), ["services.consolidate.lanes: must be at least 1"]);
    assert_eq!(
        lanes_problems(&set(&postgres, "9")),
        ["services.consolidate.lanes: 9 lanes need as many store connections; store.max_connections is 8"]
    );
    let one_connection = postgres.replacen("max_connections: 8", "max_connections: 1", 1);
    assert_eq!(
        lanes_problems(&one_connection),
        ["services.consolidate.lanes: 2 lanes need as many store connections; store.max_connections is 1"]
    );
}

#[test]
fn epoch_sizes_default_by_store_and_a_set_one_is_kept_in_range() {
    let records = |yaml: &str| by_store(yaml, ConsolidateConfig::max_epoch_records);
    let postgres = on_postgres();
    assert_eq!(records(DEFAULT), DEFAULT_SQLITE_EPOCH_RECORDS);
    assert_eq!(records(&postgres), DEFAULT_POSTGRES_EPOCH_RECORDS);
    assert_ne!(DEFAULT_SQLITE_EPOCH_RECORDS, DEFAULT_POSTGRES_EPOCH_RECORDS);
    let set = |yaml: &str, n: &str| set_consolidate(yaml, "max_epoch_records", n);
    assert_eq!(records(&set(DEFAULT, "5000")), 5_000);
    assert_eq!(records(&set(&postgres, "100000")), 100_000);
    for n in ["0", "100001"] {
        assert_eq!(
            problems(&set(DEFAULT, n)),
            ["services.consolidate.max_epoch_records: must be between 1 and 100000"]
        );
    }
}

#[test]
fn the_scheduled_reconciliation_takes_a_sample_or_all_and_refuses_nonsense() {
    use super::{ReconcileConfig, Sample};
    let reconcile = |yaml: &str| PipelineConfig::parse("p.yaml", yaml, no_env).unwrap().services.consolidate.reconcile;
    let set = |v: &str| edit("reconcile: { every_secs: 3600, merchants: 100 }", &format!("reconcile: {v}"));
    assert_eq!(reconcile(DEFAULT), ReconcileConfig { every: Duration::from_secs(3_600), merchants: Sample::Some(100) });
    let all = reconcile(&set("{ every_secs: 30s, merchants: all }"));
    assert_eq!((all.every, all.merchants), (Duration::from_secs(30), Sample::All));
    let unset = edit("    reconcile: { every_secs: 3600, merchants: 100 }\n", "");
    assert_eq!(reconcile(&unset), ReconcileConfig::default());

    let found = |v: &str| problems(&set(v)).into_iter().filter(|p| p.contains("reconcile")).collect::<Vec<_>>();
    assert_eq!(
        found("{ every_secs: 0, merchants: 1 }"),
        ["services.consolidate.reconcile.every_secs: must be between 1 second and 7 days"]
    );
    assert_eq!(
        found("{ every_secs: 60, merchants: 0 }"),
        ["services.consolidate.reconcile.merchants: must be at least 1, or all"]
    );
    let some = found("{ every_secs: 60, merchants: some }");
    assert!(some.len() == 1 && some[0].contains("\"some\" is neither \"all\" nor a number"), "{some:?}");
    assert_eq!(found("{ every_secs: 60 }").len(), 1, "merchants is required");
}

#[test]
fn an_upstream_is_one_url_or_a_list_of_replicas_each_checked_at_its_index() {
    let commented = "# upstreams: { auth: \"http://127.0.0.1:8081\", ingest: \"http://127.0.0.1:8082\", query: \"http://127.0.0.1:8083\" }";
    let set = |ingest: &str| {
        edit(
            commented,
            &format!(
                "upstreams: {{ auth: \"http://a:8081\", ingest: {ingest}, query: [\"http://q1:8083\", \"http://q2:8083\"] }}"
            ),
        )
    };
    let upstreams =
        |yaml: &str| PipelineConfig::parse("p.yaml", yaml, no_env).unwrap().services.gateway.upstreams.unwrap();
    let one = upstreams(&set("\"http://i:8082\""));
    assert_eq!(one.ingest.urls(), ["http://i:8082"]);
    assert_eq!(one.query.urls(), ["http://q1:8083", "http://q2:8083"]);
    assert_eq!(one.jwks_urls(), ["http://a:8081/.well-known/jwks.json"]);

    let found =
        |ingest: &str| problems(&set(ingest)).into_iter().filter(|p| p.contains("upstreams")).collect::<Vec<_>>();
    assert_eq!(found("[]"), ["services.gateway.upstreams.ingest: lists no replica"]);
    assert_eq!(
        found("[\"http://i1:8082\", \"https://i2:8082\", \"http://i1:8082\"]"),
        [
            "services.gateway.upstreams.ingest[1]: \"https://i2:8082\" must be an http:// base URL, e.g. \"http://10.0.0.5:8082\"",
            "services.gateway.upstreams.ingest[2]: \"http://i1:8082\" is listed twice",
        ]
    );
}

#[test]
fn the_longest_hold_is_every_delay_at_its_longest_and_any_schedule_has_one_at_once() {
    let mut retry = PipelineConfig::parse("pipeline.yaml", DEFAULT, no_env).unwrap().services.retry;
    // 1 + 10 + 60, then 60 twice more (the last delay repeats), a quarter over
    assert_eq!(retry.longest_hold(), Duration::from_millis(238_750));
    retry.max_attempts = 2;
    assert_eq!(retry.longest_hold(), Duration::from_millis(13_750));
    // the largest schedule validation lets through: a week, four billion times, computed at once
    retry.backoff = vec![Duration::from_secs(7 * 24 * 3600)];
    retry.max_attempts = u32::MAX;
    let started = std::time::Instant::now();
    let hold = retry.longest_hold();
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}: one step per attempt", started.elapsed());
    assert_eq!(hold, Duration::from_secs(7 * 24 * 3600) * u32::MAX / 4 * 5);
}
