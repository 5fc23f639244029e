//! Wiring: build each stage from the pipeline config and run it until a shutdown signal.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use cashflow_auth::{AuthState, Issuer, KeySource, KeyStore, LoginLimits, Validator, key_overlap};
use cashflow_core::config::PipelineConfig;
use cashflow_core::kafka;
use cashflow_gateway::GatewayState;
use cashflow_ingest::Publisher;
use cashflow_retry::Dlq;
use cashflow_sinks::Store;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::broker::Supervisor;
use crate::{Common, Stage};

pub async fn connect_store(config: &PipelineConfig, common: &Common) -> Result<Store> {
    let url = config.store.resolved_url(&common.data_dir);
    Store::connect(&url, config.store.max_connections)
        .await
        .with_context(|| format!("cannot open the store (store.url = {:?})", config.store.url))
}

/// Where the signing keys live.
pub fn keys_dir(config: &PipelineConfig, common: &Common) -> std::path::PathBuf {
    common.data_dir.join(&config.services.auth.keys_dir)
}

/// The whole pipeline in one process.
pub async fn up(config: PipelineConfig, common: &Common) -> Result<()> {
    let broker = start_broker(&config, common).await?;
    let result = async {
        let config = Arc::new(config);
        create_topics(&config).await?;
        let store = connect_store(&config, common).await?;
        let shutdown = shutdown_signal();
        let consolidate = tokio::spawn(cashflow_dataflow::run(Arc::clone(&config), store.clone(), shutdown.clone()));
        let retry = tokio::spawn(cashflow_retry::run(Arc::clone(&config), store.clone(), shutdown.clone()));
        let served = serve_gateway(&config, common, store.clone(), shutdown.clone()).await;
        shutdown.cancel();
        tracing::info!("gateway stopped");
        let _ = consolidate.await;
        tracing::info!("consolidation stopped");
        let _ = retry.await;
        tracing::info!("retry stage stopped");
        store.close().await;
        served
    }
    .await;
    if let Some(b) = broker {
        b.stop().await;
        tracing::info!("embedded broker stopped");
    }
    result
}

/// One stage.
pub async fn run(stage: Stage, config: PipelineConfig, common: &Common) -> Result<()> {
    let config = Arc::new(config);
    match stage {
        Stage::Broker => {
            let broker = start_broker(&config, common)
                .await?
                .context("kafka.brokers is not \"embedded\"; there is no broker to run")?;
            create_topics(&config).await?;
            shutdown_signal().cancelled().await;
            broker.stop().await;
            Ok(())
        }
        Stage::Gateway => {
            create_topics(&config).await?;
            let store = connect_store(&config, common).await?;
            serve_gateway(&config, common, store, shutdown_signal()).await
        }
        Stage::Consolidate | Stage::Retry => {
            create_topics(&config).await?;
            let store = connect_store(&config, common).await?;
            let shutdown = shutdown_signal();
            if matches!(stage, Stage::Consolidate) {
                cashflow_dataflow::run(config, store.clone(), shutdown).await;
            } else {
                cashflow_retry::run(config, store.clone(), shutdown).await;
            }
            store.close().await;
            Ok(())
        }
    }
}

async fn start_broker(config: &PipelineConfig, common: &Common) -> Result<Option<Supervisor>> {
    if !config.kafka.is_embedded() {
        return Ok(None);
    }
    std::fs::create_dir_all(&common.data_dir)
        .with_context(|| format!("cannot create {}", common.data_dir.display()))?;
    Supervisor::start(&config.kafka.embedded.listen, &common.data_dir).await.map(Some)
}

/// Creates the declared topics, waiting up to a minute for the broker.
async fn create_topics(config: &PipelineConfig) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match kafka::ensure_topics(config).await {
            Ok(()) => return Ok(()),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, brokers = config.kafka.bootstrap(), "cannot create topics yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                return Err(e).context(format!("cannot create topics on {}", config.kafka.bootstrap()));
            }
        }
    }
}

async fn serve_gateway(
    config: &Arc<PipelineConfig>,
    common: &Common,
    store: Store,
    shutdown: CancellationToken,
) -> Result<()> {
    let auth = &config.services.auth;
    let keys = KeyStore::open(&keys_dir(config, common), key_overlap(auth.token_ttl_secs))?;
    let validator = Validator::new(KeySource::Local(Arc::clone(&keys)), &auth.issuer, &auth.audience);
    let issuer = Issuer::new(keys, &auth.issuer, &auth.audience, auth.token_ttl_secs);
    let publisher = Arc::new(Publisher::new(config)?);
    let gw = &config.services.gateway;
    let state = GatewayState {
        validator: Arc::new(validator),
        auth: Arc::new(AuthState {
            issuer,
            store: store.clone(),
            limits: LoginLimits::new(auth.login_limit_per_username, auth.login_limit_per_address),
        }),
        publisher: Arc::clone(&publisher),
        dlq: Dlq::new(Arc::clone(config), store.clone()),
        date_window: config.services.consolidate.date_window,
        store,
        consolidate_group: config.services.consolidate.group.clone(),
        max_body_bytes: gw.max_body_bytes,
        request_timeout: Duration::from_secs(gw.request_timeout_secs),
        rate_limit: gw.rate_limit.as_ref().map(|r| (r.per_second, r.burst)),
        cors_allowed_origins: gw.cors_allowed_origins.clone(),
    };
    let listen = common.listen.clone().unwrap_or_else(|| gw.listen.clone());
    let listener = TcpListener::bind(&listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(listen = %listener.local_addr()?, "gateway listening");
    let app = cashflow_gateway::router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await?;
    publisher.flush(Duration::from_secs(5));
    Ok(())
}

/// Cancelled on Ctrl-C or SIGTERM.
fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let terminated = async {
            match term.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminated => {}
        }
        tracing::info!("shutting down");
        t.cancel();
    });
    token
}
