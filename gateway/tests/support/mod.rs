//! An in-process gateway with every API, over SQLite, and tokens signed with its own key.

#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use cashflow_auth::{AuthState, Claims, Issuer, KeyRing, KeySource, KeyStore, LoginLimits, Validator, key_overlap};
use cashflow_core::config::{LoginLimit, PipelineConfig};
use cashflow_gateway::{Apis, GatewayState, QueryState, router};
use cashflow_ingest::{IngestState, Publisher};
use cashflow_retry::Dlq;
use cashflow_sinks::Store;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use tower::ServiceExt as _;

pub const SHIPPED: &str = include_str!("../../../pipeline.yaml");
pub const BALANCES: &str = "/v1/consolidado/diario?de=2026-01-01&ate=2026-01-31";

pub struct Gateway {
    pub dir: tempfile::TempDir,
    pub app: Router,
    pub store: Store,
    pub keys: Arc<KeyStore>,
    pub issuer: Issuer,
    pub state: GatewayState,
}

impl Gateway {
    /// The same gateway with its configuration changed.
    pub fn with(mut self, change: impl FnOnce(&mut GatewayState)) -> Self {
        change(&mut self.state);
        self.app = router(self.state.clone());
        self
    }

    pub fn validator(&self) -> Validator {
        Validator::new(KeySource::Local(Arc::clone(&self.keys)), "cashflow", "cashflow-api")
    }
}

pub async fn gateway() -> Gateway {
    gateway_with_keys_from(&[]).await
}

/// A gateway whose key directory already holds keys created at these times.
pub async fn gateway_with_keys_from(created: &[DateTime<Utc>]) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    for at in created {
        KeyRing::create_key(&dir.path().join("keys"), *at).unwrap();
    }
    let keys = KeyStore::open(&dir.path().join("keys"), key_overlap(Duration::from_secs(900))).unwrap();
    let issuer = Issuer::new(Arc::clone(&keys), "cashflow", "cashflow-api", Duration::from_secs(900));
    // No broker is needed: these requests never reach ingest.
    let yaml = SHIPPED.replace("brokers: embedded", "brokers: \"127.0.0.1:9\"");
    let config = Arc::new(PipelineConfig::parse("test", &yaml, |_| None).unwrap());
    let store = Store::connect(&format!("sqlite://{}", dir.path().join("store.db").display()), 2).await.unwrap();
    let auth = AuthState {
        issuer: issuer.clone(),
        store: store.clone(),
        limits: LoginLimits::new(LoginLimit { per_minute: 5, burst: 5 }, LoginLimit { per_minute: 20, burst: 8 }),
        trusted_proxies: vec![],
    };
    let sealer = cashflow_core::seal::Sealer::new(&store.sealing_key().await.unwrap());
    let ingest = IngestState {
        publisher: Arc::new(Publisher::new(&config).unwrap()),
        store: store.clone(),
        date_window: config.services.consolidate.date_window(),
        max_batch_body_bytes: 1 << 20,
        sealer: sealer.clone(),
        pending: cashflow_ingest::PendingReversals::new(Duration::from_secs(600)),
    };
    let state = GatewayState {
        validator: Arc::new(Validator::new(KeySource::Local(Arc::clone(&keys)), "cashflow", "cashflow-api")),
        apis: Apis {
            auth: Some(Arc::new(auth)),
            ingest: Some(ingest),
            query: Some(QueryState::new(
                store.clone(),
                sealer,
                "cashflow-consolidate",
                "lancamentos",
                Duration::from_secs(1),
                1000,
            )),
            dlq: Some(Dlq::new(Arc::clone(&config), store.clone())),
            upstreams: None,
        },
        max_body_bytes: 65_536,
        request_timeout: Duration::from_secs(5),
        rate_limit: None,
        rate_limit_per_address: None,
        cors_allowed_origins: vec!["https://app.example".into()],
    };
    Gateway { dir, app: router(state.clone()), store, keys, issuer, state }
}

impl Gateway {
    pub async fn status(&self, authorization: Option<String>) -> (StatusCode, String) {
        let mut req = Request::get(BALANCES);
        if let Some(a) = authorization {
            req = req.header("authorization", a);
        }
        let res = self.app.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
        let content_type =
            res.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        (res.status(), content_type)
    }

    pub fn claims(&self) -> Claims {
        let now = chrono::Utc::now().timestamp();
        Claims {
            sub: "ana".into(),
            merchant_id: Some("loja-1".into()),
            scope: "consolidado:read".into(),
            iss: "cashflow".into(),
            aud: "cashflow-api".into(),
            exp: now + 600,
            nbf: now,
            iat: now,
            jti: "j1".into(),
        }
    }

    /// Signed with the gateway's own key, so only the claims or header are wrong.
    pub fn signed(&self, claims: &Claims, kid: &str) -> String {
        let ring = self.keys.current();
        sign(claims, kid, ring.signing().1)
    }
}

pub fn sign(claims: &Claims, kid: &str, key: &EncodingKey) -> String {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.to_owned());
    encode(&header, claims, key).unwrap()
}
