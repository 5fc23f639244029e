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
    assert_eq!(c.services.retry.backoff_ms, vec![1000, 10000, 60000]);
    assert_eq!(c.store.resolved_url(Path::new("/d")), "sqlite:///d/cashflow.db");
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
    assert_eq!(p.len(), 1);
    assert!(p[0].starts_with("services.consolidate.transforms[1].operator: unknown variant `explode`"), "{p:?}");
}

#[test]
fn operators_out_of_order_are_rejected() {
    let yaml = edit("      - operator: validate ", "      - operator: dedupeX ")
        .replacen("      - operator: dedupe ", "      - operator: validate ", 1)
        .replacen("      - operator: dedupeX ", "      - operator: dedupe ", 1);
    let p = problems(&yaml);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].starts_with("services.consolidate.transforms: must be [validate, dedupe, consolidate-daily]"),
        "{p:?}"
    );
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
    assert_eq!(c.store.url, "postgres://db/x");
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
