//! Checks that need no I/O: references, ranges and the order of operators.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use super::{
    BrokerStorage, Brokers, ConsolidateConfig, HostPort, PipelineConfig, Problem, Sample, StoreUrl, TopicRef, Transform,
};
use crate::estado::{Field, Values};

const API_VERSION: &str = "cashflow/v1";

/// The states the fixed routes and the amount limit read, by table: each must be declared, with
/// this key.
pub(super) const REQUIRED_STATES: [(&str, &[Field], &str); 4] = [
    ("consolidado_diario", &[Field::MerchantId, Field::Data], "GET /v1/consolidado/diario"),
    ("consolidado_categoria", &[Field::MerchantId, Field::Data, Field::Categoria], "GET /v1/consolidado/categorias"),
    ("consolidado_mensal", &[Field::MerchantId, Field::Mes], "GET /v1/consolidado/mensal"),
    ("consolidado_comerciante", &[Field::MerchantId], "the amount limit (a merchant's totals of all time)"),
];
/// The most states one pipeline keeps.
const MAX_STATES: usize = 64;

/// The texts that become typed values, each checked by the parse of its type before the file is
/// deserialized: deserializing stops at the first value that does not parse, and a user should
/// hear of every one (and of a wrong `apiVersion`) in one run.
pub(super) fn texts(file: &serde_norway::Value) -> Vec<Problem> {
    let mut out = Vec::new();
    let text = |path: &str| {
        path.split('.').try_fold(file, |v, key| v.get(key)).and_then(serde_norway::Value::as_str).map(str::to_owned)
    };
    if let Some(version) = text("apiVersion").filter(|v| v != API_VERSION) {
        problem_at(&mut out, "apiVersion", format!("must be {API_VERSION:?}, found {version:?}"));
    }
    let mut parses = |path: &str, parse: &dyn Fn(&str) -> Result<(), String>| {
        if let Some(Err(message)) = text(path).map(|t| parse(&t)) {
            problem_at(&mut out, path, message);
        }
    };
    parses("kafka.brokers", &|t| t.parse::<Brokers>().map(drop));
    parses("kafka.embedded.storage", &|t| t.parse::<BrokerStorage>().map(drop));
    parses("kafka.embedded.advertise", &|t| t.parse::<HostPort>().map(drop));
    parses("store.url", &|t| t.parse::<StoreUrl>().map(drop));
    let address = |t: &str| SocketAddr::from_str(t).map(drop).map_err(|_| format!("{t:?} is not an ip:port address"));
    for path in [
        "kafka.embedded.listen",
        "services.gateway.listen",
        "services.auth.listen",
        "services.ingest.listen",
        "services.query.listen",
        "services.consolidate.listen",
        "services.retry.listen",
    ] {
        parses(path, &address);
    }
    out
}

pub(super) fn check(c: &PipelineConfig) -> Vec<Problem> {
    let mut out = Vec::new();

    if c.store.max_connections == 0 {
        problem_at(&mut out, "store.max_connections", "must be at least 1");
    }
    if c.topics.is_empty() {
        problem_at(&mut out, "topics", "must declare at least one topic");
    }
    for (name, t) in &c.topics {
        if !(1..=1000).contains(&t.partitions) {
            problem_at(
                &mut out,
                &format!("topics.{name}.partitions"),
                format!("must be between 1 and 1000, found {}", t.partitions),
            );
        }
        if t.replication_factor < 1 {
            problem_at(&mut out, &format!("topics.{name}.replication_factor"), "must be at least 1");
        }
        let legal = !name.is_empty()
            && name.len() <= 249
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !legal {
            problem_at(&mut out, &format!("topics.{name}"), "a topic name has 1 to 249 characters of [A-Za-z0-9._-]");
        }
    }

    let s = &c.services;
    for (path, limit) in [
        ("services.gateway.rate_limit", &s.gateway.rate_limit),
        ("services.gateway.rate_limit_per_address", &s.gateway.rate_limit_per_address),
    ] {
        if limit.as_ref().is_some_and(|rl| rl.per_second == 0 || rl.burst == 0) {
            problem_at(&mut out, path, "per_second and burst must be at least 1");
        }
    }
    if let Some(up) = &s.gateway.upstreams {
        for (name, replicas) in [("auth", &up.auth), ("ingest", &up.ingest), ("query", &up.query)] {
            let urls = replicas.urls();
            let path = format!("services.gateway.upstreams.{name}");
            if urls.is_empty() {
                problem_at(&mut out, &path, "lists no replica");
            }
            for (i, url) in urls.iter().enumerate() {
                let path = if urls.len() > 1 { format!("{path}[{i}]") } else { path.clone() };
                let scheme_ok = url.starts_with("http://") && url.len() > "http://".len();
                if !scheme_ok {
                    let why = format!("{url:?} must be an http:// base URL, e.g. \"http://10.0.0.5:8082\"");
                    problem_at(&mut out, &path, why);
                } else if urls[..i].contains(url) {
                    problem_at(&mut out, &path, format!("{url:?} is listed twice"));
                }
            }
        }
        if up.health_check < Duration::from_secs(1) {
            problem_at(&mut out, "services.gateway.upstreams.health_check_secs", "must be at least 1");
        }
    }
    let h = &c.http;
    for (key, timeout) in [
        ("header_read_timeout_ms", h.header_read_timeout),
        ("idle_timeout_ms", h.idle_timeout),
        ("body_read_timeout_ms", h.body_read_timeout),
    ] {
        if !(Duration::from_millis(100)..=Duration::from_secs(3_600)).contains(&timeout) {
            problem_at(&mut out, &format!("http.{key}"), "must be between 100 and 3600000");
        }
    }
    if !(16..=1_000_000).contains(&h.max_connections) {
        problem_at(&mut out, "http.max_connections", "must be between 16 and 1000000");
    }
    if h.max_connections_per_address == 0 || h.max_connections_per_address > h.max_connections {
        problem_at(&mut out, "http.max_connections_per_address", "must be at least 1 and at most http.max_connections");
    }
    if s.gateway.max_body_bytes < 1024 {
        problem_at(&mut out, "services.gateway.max_body_bytes", "must be at least 1024");
    }
    let waits_too_long = s.query.aguardar_timeout.checked_mul(2).is_none_or(|twice| twice > s.gateway.request_timeout);
    if s.query.aguardar_timeout.is_zero() || waits_too_long {
        problem_at(
            &mut out,
            "services.query.aguardar_timeout_ms",
            "must be at least 1 and at most half of services.gateway.request_timeout_secs",
        );
    }
    // The entry's own 503 (naming the key that retries it) must come before the gateway's.
    if s.ingest.ack_timeout.is_zero() || s.ingest.ack_timeout >= s.gateway.request_timeout {
        problem_at(
            &mut out,
            "services.ingest.ack_timeout_ms",
            "must be at least 1 and below services.gateway.request_timeout_secs",
        );
    }
    if s.gateway.max_batch_body_bytes < s.gateway.max_body_bytes {
        problem_at(&mut out, "services.gateway.max_batch_body_bytes", "must be at least max_body_bytes");
    }
    if !(Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(&s.auth.token_ttl) {
        problem_at(&mut out, "services.auth.token_ttl_secs", "must be between 1 and 86400");
    }
    for (field, value) in [("issuer", &s.auth.issuer), ("audience", &s.auth.audience)] {
        if value.trim().is_empty() {
            problem_at(&mut out, &format!("services.auth.{field}"), "must not be empty");
        }
    }

    let mut refs: Vec<(String, &TopicRef)> = Vec::new();
    if s.ingest.sinks.len() != 1 {
        problem_at(&mut out, "services.ingest.sinks", "must list exactly one topic");
    }
    refs.extend(s.ingest.sinks.iter().enumerate().map(|(i, r)| (format!("services.ingest.sinks[{i}].id"), r)));
    let cons = &s.consolidate;
    if cons.sources.is_empty() {
        problem_at(&mut out, "services.consolidate.sources", "must list at least one topic");
    }
    refs.extend(cons.sources.iter().enumerate().map(|(i, r)| (format!("services.consolidate.sources[{i}].id"), r)));
    refs.push(("services.consolidate.on_error.id".into(), &cons.on_error));
    refs.push(("services.retry.parked.id".into(), &s.retry.parked));
    for (i, src) in cons.sources.iter().enumerate() {
        if src.id() == cons.on_error.id() {
            problem_at(
                &mut out,
                &format!("services.consolidate.sources[{i}].id"),
                format!("{:?} is also on_error: failed records would loop without backoff", src.id()),
            );
        }
    }
    for (path, r) in refs {
        if !c.topics.contains_key(r.id()) {
            problem_at(&mut out, &path, format!("unknown topic {:?}", r.id()));
        }
    }

    check_states(&mut out, cons);
    if cons.max_epoch_records.is_some_and(|n| !(1..=100_000).contains(&n)) {
        problem_at(&mut out, "services.consolidate.max_epoch_records", "must be between 1 and 100000");
    }
    if !(Duration::from_secs(1)..=Duration::from_secs(7 * 86_400)).contains(&cons.reconcile.every) {
        problem_at(&mut out, "services.consolidate.reconcile.every_secs", "must be between 1 second and 7 days");
    }
    if cons.reconcile.merchants == Sample::Some(0) {
        problem_at(&mut out, "services.consolidate.reconcile.merchants", "must be at least 1, or all");
    }
    match (cons.lanes, &c.store.url) {
        (Some(0), _) => problem_at(&mut out, "services.consolidate.lanes", "must be at least 1"),
        (Some(2..), StoreUrl::Sqlite(_)) => problem_at(
            &mut out,
            "services.consolidate.lanes",
            "must be 1 on SQLite, which takes one writer at a time (or leave it unset)",
        ),
        _ if cons.lanes(&c.store.url) > c.store.max_connections as usize => problem_at(
            &mut out,
            "services.consolidate.lanes",
            format!(
                "{} lanes need as many store connections; store.max_connections is {}",
                cons.lanes(&c.store.url),
                c.store.max_connections
            ),
        ),
        _ => {}
    }

    for (i, origin) in s.gateway.cors_allowed_origins.iter().enumerate() {
        let scheme = origin.starts_with("http://") || origin.starts_with("https://");
        let clean = !origin.ends_with('/') && origin.bytes().all(|b| b.is_ascii_graphic());
        if origin != "*" && !(scheme && clean) {
            let path = format!("services.gateway.cors_allowed_origins[{i}]");
            problem_at(&mut out, &path, format!("{origin:?} is not an origin like https://app.example.com (or \"*\")"));
        }
    }

    let retry = &s.retry;
    if retry.backoff.is_empty() {
        problem_at(&mut out, "services.retry.backoff_ms", "must list at least one delay");
    }
    for (i, delay) in retry.backoff.iter().enumerate() {
        if *delay > MAX_BACKOFF {
            let path = format!("services.retry.backoff_ms[{i}]");
            problem_at(&mut out, &path, format!("at most {} (a week)", MAX_BACKOFF.as_millis()));
        }
    }
    if retry.max_attempts == 0 {
        problem_at(&mut out, "services.retry.max_attempts", "must be at least 1");
    }
    if retry.max_held == 0 {
        problem_at(&mut out, "services.retry.max_held", "must be at least 1");
    }
    out
}

/// The longest retry delay: a record held longer is better parked and replayed by an operator,
/// and a due time (now + delay, with its jitter) stays far inside 64-bit milliseconds.
const MAX_BACKOFF: Duration = Duration::from_secs(7 * 24 * 3_600);

/// The states and the operators that keep them.
fn check_states(out: &mut Vec<Problem>, cons: &ConsolidateConfig) {
    let at = |rest: &str| format!("services.consolidate.{rest}");
    if cons.states.len() > MAX_STATES {
        problem_at(
            out,
            &at("states"),
            format!("declares {} states; at most {MAX_STATES} are allowed", cons.states.len()),
        );
    }
    let mut tables = BTreeSet::new();
    for (name, state) in &cons.states {
        let legal = (1..=63).contains(&name.len())
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.starts_with('-');
        if !legal {
            problem_at(out, &at(&format!("states.{name}")), "a state's name has 1 to 63 characters of [a-z0-9-]");
        }
        let table = &state.table;
        let path = at(&format!("states.{name}.table"));
        let legal = table.len() <= 63
            && table.strip_prefix("consolidado_").is_some_and(|rest| {
                !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            });
        if !legal {
            problem_at(
                out,
                &path,
                format!("{table:?} is not a table name like consolidado_por_tipo ([a-z0-9_], at most 63)"),
            );
        } else if !tables.insert(table.as_str()) {
            problem_at(out, &path, format!("{table:?} holds another state too"));
        }
        if let Some((_, key, reader)) = REQUIRED_STATES.iter().find(|(t, _, _)| t == table) {
            if state.key.fields() != *key {
                let want: Vec<&str> = key.iter().map(|f| f.as_str()).collect();
                let path = at(&format!("states.{name}.key"));
                problem_at(out, &path, format!("{table} is read by {reader} with key [{}]", want.join(", ")));
            }
            if state.values != Values::default() {
                let path = at(&format!("states.{name}.values"));
                problem_at(out, &path, format!("{table} is read by {reader} with values {}", Values::default()));
            }
        }
    }
    for (table, key, reader) in REQUIRED_STATES {
        if !tables.contains(table) {
            let key: Vec<&str> = key.iter().map(|f| f.as_str()).collect();
            problem_at(
                out,
                &at("states"),
                format!("{reader} reads the state in {table}: declare it, with key [{}]", key.join(", ")),
            );
        }
    }

    let names: Vec<&str> = cons.transforms.iter().map(Transform::name).collect();
    let builtins: Vec<&str> = names.iter().copied().filter(|n| *n != "smartmodule").collect();
    let modules_in_place = names.iter().skip(2).take(names.len().saturating_sub(3)).all(|n| *n == "smartmodule");
    if builtins != ["validate", "dedupe", "aggregate"] || !modules_in_place {
        problem_at(
            out,
            &at("transforms"),
            format!(
                "must be validate, dedupe, any smartmodules, aggregate, in that order (found [{}]): entries are counted once, after they are checked",
                names.join(", ")
            ),
        );
    }
    let mut modules = BTreeSet::new();
    let mut kept = BTreeSet::new();
    for (i, t) in cons.transforms.iter().enumerate() {
        match t {
            Transform::Aggregate { into } => {
                if into.is_empty() {
                    problem_at(out, &at(&format!("transforms[{i}].into")), "must name at least one state");
                }
                for (j, name) in into.iter().enumerate() {
                    let path = at(&format!("transforms[{i}].into[{j}]"));
                    if !cons.states.contains_key(name) {
                        problem_at(
                            out,
                            &path,
                            format!("unknown state {name:?}: declare it under services.consolidate.states"),
                        );
                    } else if !kept.insert(name.as_str()) {
                        problem_at(out, &path, format!("state {name:?} is named twice"));
                    }
                }
            }
            Transform::Validate { date_window } => {
                for (name, days) in [("past_days", date_window.past_days), ("future_days", date_window.future_days)] {
                    if days > 36_600 {
                        problem_at(
                            out,
                            &at(&format!("transforms[{i}].date_window.{name}")),
                            "must be at most 36600 (100 years)",
                        );
                    }
                }
            }
            Transform::Dedupe => {}
            Transform::Smartmodule(m) => {
                let at_field = |field: &str| at(&format!("transforms[{i}].{field}"));
                if m.name.is_empty() || !m.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                    problem_at(out, &at_field("name"), "must be letters, digits, - and _ (it labels metrics)");
                } else if !modules.insert(m.name.as_str()) {
                    problem_at(out, &at_field("name"), format!("smartmodule {:?} is named twice", m.name));
                }
                if !(1_000..=1_000_000_000_000).contains(&m.fuel) {
                    problem_at(out, &at_field("fuel"), "must be between 1000 and 1000000000000");
                }
                if !((1 << 20)..=(4 << 30)).contains(&m.max_memory_bytes) {
                    problem_at(out, &at_field("max_memory_bytes"), "must be between 1 MiB (1048576) and 4 GiB");
                }
            }
        }
    }
    for name in cons.states.keys().filter(|n| !kept.contains(n.as_str())) {
        problem_at(
            out,
            &at(&format!("states.{name}")),
            "no aggregate operator keeps it: add it to an aggregate's into",
        );
    }
}

fn problem_at(out: &mut Vec<Problem>, path: &str, message: impl Into<String>) {
    out.push(Problem { path: path.to_owned(), message: message.into() });
}
