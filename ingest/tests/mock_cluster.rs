//! Producer faults injected in-process with librdkafka's mock cluster: a 202 is answered only for
//! an entry the broker acknowledged, and ingest recovers by itself when the broker returns.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use cashflow_core::MerchantId;
use cashflow_core::config::PipelineConfig;
use cashflow_http::{Principal, SCOPE_WRITE};
use cashflow_ingest::{IngestState, Publisher};
use http_body_util::BodyExt as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{Value, json};
use tower::ServiceExt as _;

const SHIPPED: &str = include_str!("../../pipeline.yaml");

async fn app(bootstrap: &str, dir: &tempfile::TempDir) -> Router {
    let yaml = SHIPPED
        .replace("brokers: embedded", &format!("brokers: \"{bootstrap}\""))
        .replace("ack_timeout_ms: 5000", "ack_timeout_ms: 1500");
    let config = PipelineConfig::parse("test", &yaml, |_| None).unwrap();
    let publisher = Arc::new(Publisher::new(&config).unwrap());
    let principal = Principal {
        subject: "ana".into(),
        merchant_id: MerchantId::parse("loja-1").unwrap(),
        scopes: vec![SCOPE_WRITE.into()],
    };
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    let store = cashflow_sinks::Store::connect(&url, 2).await.unwrap();
    let date_window = config.services.consolidate.date_window();
    let pending = cashflow_ingest::PendingReversals::new(std::time::Duration::from_secs(600));
    let sealer = cashflow_core::seal::Sealer::new(&store.sealing_key().await.unwrap());
    let state = IngestState { publisher, store, date_window, max_batch_body_bytes: 1 << 20, sealer, pending };
    cashflow_ingest::router(state).layer(axum::Extension(cashflow_http::Bearer::Merchant(principal)))
}

/// Posts one entry; returns the status, the Retry-After header and the body.
async fn post(app: &Router) -> (StatusCode, Option<String>, Value) {
    let body = json!({"tipo": "credito", "valor": "10.00", "data": "2026-01-02", "descricao": "venda"});
    let req = Request::post("/v1/lancamentos")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let retry_after = res.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (status, retry_after, serde_json::from_slice(&bytes).unwrap())
}

/// Every entry id on the topic.
fn ids_on_topic(bootstrap: &str) -> HashSet<String> {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", bootstrap).set("group.id", "mock-reader").create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..6 {
        tpl.add_partition_offset("lancamentos", p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut ids = HashSet::new();
    let mut idle = 0;
    while idle < 10 {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let v: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
                ids.insert(v["id"].as_str().unwrap().to_owned());
                idle = 0;
            }
            _ => idle += 1,
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_gets_503_never_202_and_recovers_without_restart() {
    let cluster = MockCluster::<DefaultProducerContext>::new(1).unwrap();
    cluster.create_topic("lancamentos", 6, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let app = app(&bootstrap, &dir).await;
    let mut accepted = HashSet::new();

    let (status, _, body) = post(&app).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    accepted.insert(body["id"].as_str().unwrap().to_owned());

    cluster.broker_down(1).unwrap();
    for _ in 0..3 {
        let (status, retry_after, body) = post(&app).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(retry_after.as_deref(), Some("5"));
        assert_eq!(body["status"], 503);
    }

    cluster.broker_up(1).unwrap();
    let mut recovered = false;
    for _ in 0..10 {
        let (status, _, body) = post(&app).await;
        if status == StatusCode::ACCEPTED {
            accepted.insert(body["id"].as_str().unwrap().to_owned());
            recovered = true;
            break;
        }
    }
    assert!(recovered, "ingest did not recover after the broker came back");
    let on_topic = ids_on_topic(&bootstrap);
    assert!(accepted.is_subset(&on_topic), "a 202 was answered for an entry the broker does not have");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_request_errors_get_503() {
    let cluster = MockCluster::<DefaultProducerContext>::new(1).unwrap();
    cluster.create_topic("lancamentos", 6, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let app = app(&bootstrap, &dir).await;

    // Retriable errors until the ack deadline passes, then a permanent one.
    cluster.request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 500]);
    let (status, retry_after, _) = post(&app).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(retry_after.is_some());
    cluster.clear_request_errors(RDKafkaApiKey::Produce);

    cluster.request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED]);
    let (status, _, _) = post(&app).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    // Recovery needs no restart: a client that waits a little is accepted again.
    cluster.clear_request_errors(RDKafkaApiKey::Produce);
    let mut accepted = None;
    for attempt in 1..=20 {
        let (status, _, body) = post(&app).await;
        if status == StatusCode::ACCEPTED {
            eprintln!("accepted again after {attempt} attempt(s)");
            accepted = Some(body["id"].as_str().unwrap().to_owned());
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let id = accepted.expect("ingest did not recover after the errors stopped");
    assert!(ids_on_topic(&bootstrap).contains(&id));
}
