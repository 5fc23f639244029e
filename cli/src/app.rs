//! Wiring: build each stage from the pipeline config and run it until a shutdown signal.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cashflow_auth::{AuthState, JwksCache, KeySource, KeyStore, Validator, key_overlap};
use cashflow_core::config::{BrokerStorage, Brokers, PipelineConfig};
use cashflow_core::seal::Sealer;
use cashflow_gateway::{Apis, GatewayState, QueryState, Upstreams};
use cashflow_ingest::IngestState;
use cashflow_kafka as kafka;
use cashflow_retry::Dlq;
use cashflow_sinks::Store;
use tokio_util::sync::CancellationToken;

use crate::broker::Supervisor;
use crate::{Common, Stage};

pub async fn connect_store(config: &PipelineConfig, common: &Common) -> Result<Store> {
    let url = config.store.url.resolved(&common.data_dir);
    Store::connect(url.expose(), config.store.max_connections)
        .await
        .with_context(|| format!("cannot open the store (store.url = {:?})", config.store.url.to_string()))
}

/// Where the signing keys live.
pub fn keys_dir(config: &PipelineConfig, common: &Common) -> std::path::PathBuf {
    common.data_dir.join(&config.services.auth.keys_dir)
}

/// Loads every SmartModule `config` declares (consolidation loads them again for each session):
/// a module that cannot load stops the start, naming its YAML path.
pub fn check_smartmodules(config: &PipelineConfig) -> Result<()> {
    cashflow_dataflow::smartmodule::load_all(config).map(drop).map_err(|problems| {
        let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
        anyhow::anyhow!("{}", lines.join("\n"))
    })
}

/// The whole pipeline in one process.
pub async fn up(config: PipelineConfig, common: &Common) -> Result<()> {
    announce(&config);
    check_smartmodules(&config)?;
    let broker = start_broker(&config, common).await?;
    let result = async {
        let config = Arc::new(config);
        create_topics(&config).await?;
        let store = connect_store(&config, common).await?;
        let shutdown = shutdown_signal();
        let consolidate = tokio::spawn(cashflow_dataflow::run(Arc::clone(&config), store.clone(), shutdown.clone()));
        let retry = tokio::spawn(cashflow_retry::run(Arc::clone(&config), store.clone(), shutdown.clone()));
        let served = serve_http(&config, common, Stage::Gateway, Some(store.clone()), shutdown.clone()).await;
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

/// Exports which pipeline this process runs.
fn announce(config: &PipelineConfig) {
    let meta = &config.meta;
    cashflow_observability::metrics().pipeline_info.with_label_values(&[&meta.name, &meta.version]).set(1);
}

/// One stage.
pub async fn run(stage: Stage, config: PipelineConfig, common: &Common) -> Result<()> {
    announce(&config);
    let config = Arc::new(config);
    match stage {
        Stage::Broker => {
            let broker = run_broker(&config, common).await?;
            create_topics(&config).await?;
            shutdown_signal().cancelled().await;
            broker.stop().await;
            Ok(())
        }
        Stage::Gateway if config.services.gateway.upstreams.is_some() => {
            serve_http(&config, common, stage, None, shutdown_signal()).await
        }
        Stage::Gateway | Stage::Ingest | Stage::Query | Stage::Auth => {
            if !matches!(stage, Stage::Auth) {
                create_topics(&config).await?;
            }
            let store = connect_store(&config, common).await?;
            let served = serve_http(&config, common, stage, Some(store.clone()), shutdown_signal()).await;
            store.close().await;
            served
        }
        Stage::Consolidate | Stage::Retry => {
            let consolidate = matches!(stage, Stage::Consolidate);
            let services = &config.services;
            let listen = if consolidate { services.consolidate.listen } else { services.retry.listen };
            let listen = common.listen.clone().unwrap_or_else(|| listen.to_string());
            let listener =
                cashflow_http::serve::bind(&listen).await.with_context(|| format!("cannot listen on {listen}"))?;
            tracing::info!(listen = %listener.local_addr()?, stage = ?stage, "metrics listening");
            create_topics(&config).await?;
            let store = connect_store(&config, common).await?;
            let shutdown = shutdown_signal();
            let ops = cashflow_observability::ops_router();
            let ops = cashflow_http::serve::serve(listener, ops, config.http.clone(), gate(&config), shutdown.clone());
            let ops = tokio::spawn(ops);
            if consolidate {
                check_smartmodules(&config)?;
                cashflow_dataflow::run(Arc::clone(&config), store.clone(), shutdown.clone()).await;
            } else {
                cashflow_retry::run(Arc::clone(&config), store.clone(), shutdown.clone()).await;
            }
            shutdown.cancel();
            let _ = ops.await;
            store.close().await;
            Ok(())
        }
    }
}

async fn start_broker(config: &PipelineConfig, common: &Common) -> Result<Option<Supervisor>> {
    if !config.kafka.is_embedded() {
        return Ok(None);
    }
    broker(config, config.kafka.embedded.listen, common).await.map(Some)
}

/// The bundled broker on `listen`, with its log where `kafka.embedded.storage` says.
async fn broker(config: &PipelineConfig, listen: SocketAddr, common: &Common) -> Result<Supervisor> {
    let embedded = &config.kafka.embedded;
    std::fs::create_dir_all(&common.data_dir)
        .with_context(|| format!("cannot create {}", common.data_dir.display()))?;
    Supervisor::start(listen, &embedded.advertised(listen), &embedded.storage, &common.data_dir).await
}

/// `cashflow run broker`: one broker. With SQLite storage it is the only one; with PostgreSQL it
/// is one of a cluster, each listening where `--listen` says and reached where `advertise` says,
/// one of `kafka.brokers`.
async fn run_broker(config: &PipelineConfig, common: &Common) -> Result<Supervisor> {
    let listen = match &common.listen {
        Some(address) => address.parse().with_context(|| format!("--listen {address:?} is not an ip:port address"))?,
        None => config.kafka.embedded.listen,
    };
    if let Brokers::Bootstrap(list) = &config.kafka.brokers {
        if config.kafka.embedded.storage == BrokerStorage::Sqlite && list.len() > 1 {
            bail!(
                "kafka.embedded.storage: a SQLite log is served by one broker, but kafka.brokers lists {}; \
                 give the brokers one PostgreSQL storage URL to share",
                list.len()
            );
        }
        // Clients are given `kafka.brokers`, and each broker names itself in its metadata: one it
        // does not list is one they would never reach (or, listing another, reach the wrong one).
        let advertised = config.kafka.embedded.advertised(listen);
        if !list.contains(&advertised) {
            bail!(
                "kafka.embedded.advertise: this broker would be reached at {advertised}, which kafka.brokers \
                 ({}) does not list; set kafka.embedded.advertise (e.g. \"${{BROKER_ADVERTISE}}\") or --listen",
                list.join(",")
            );
        }
    }
    broker(config, listen, common).await
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

/// What one HTTP process serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// `cashflow up` or `run gateway`, with no upstreams: every API, and the tokens issued here.
    Everything,
    /// `run gateway` with `services.gateway.upstreams`: token checks, and a proxy to the stages.
    Proxy,
    /// `run auth`: issues the tokens every other stage checks with its JWKS.
    Auth,
    Ingest,
    Query,
}

impl Role {
    fn of(stage: Stage, config: &PipelineConfig) -> Role {
        match stage {
            Stage::Gateway if config.services.gateway.upstreams.is_some() => Role::Proxy,
            Stage::Auth => Role::Auth,
            Stage::Ingest => Role::Ingest,
            Stage::Query => Role::Query,
            // The stages without HTTP APIs of their own never serve them.
            Stage::Gateway | Stage::Broker | Stage::Consolidate | Stage::Retry => Role::Everything,
        }
    }
}

/// The HTTP APIs of `stage` (or of the whole embedded pipeline), until `shutdown`.
async fn serve_http(
    config: &Arc<PipelineConfig>,
    common: &Common,
    stage: Stage,
    store: Option<Store>,
    shutdown: CancellationToken,
) -> Result<()> {
    let services = &config.services;
    let role = Role::of(stage, config);
    let store = || store.clone().context("this stage needs the store");
    let local_keys = || KeyStore::open(&keys_dir(config, common), key_overlap(services.auth.token_ttl));
    let remote_keys = || -> Result<KeySource> {
        let upstreams = services.gateway.upstreams.as_ref().context(
            "services.gateway.upstreams is not set: in the distributed shape every stage validates tokens \
             with the auth stage's JWKS, found at services.gateway.upstreams.auth",
        )?;
        Ok(KeySource::Jwks(JwksCache::new(upstreams.jwks_urls())))
    };
    let query = |store: Store, sealer: Sealer| {
        let names = services.consolidate.aggregated().into_iter().map(|(name, _)| name.to_owned());
        QueryState::build(config, store, sealer, names.zip(cashflow_dataflow::declared(config)))
    };
    let (keys, apis, listen) = match role {
        Role::Everything => {
            let (keys, store) = (local_keys()?, store()?);
            let sealer = sealer(&store).await?;
            let apis = Apis {
                auth: Some(Arc::new(AuthState::build(&services.auth, Arc::clone(&keys), store.clone()))),
                ingest: Some(IngestState::build(config, store.clone(), sealer.clone())?),
                query: Some(query(store.clone(), sealer)),
                dlq: Some(Dlq::new(Arc::clone(config), store)),
                upstreams: None,
            };
            (KeySource::Local(keys), apis, services.gateway.listen)
        }
        Role::Auth => {
            let keys = local_keys()?;
            let auth = AuthState::build(&services.auth, Arc::clone(&keys), store()?);
            (KeySource::Local(keys), Apis { auth: Some(Arc::new(auth)), ..Apis::default() }, services.auth.listen)
        }
        Role::Ingest => {
            let store = store()?;
            let ingest = IngestState::build(config, store.clone(), sealer(&store).await?)?;
            (remote_keys()?, Apis { ingest: Some(ingest), ..Apis::default() }, services.ingest.listen)
        }
        Role::Query => {
            let store = store()?;
            let apis = Apis {
                query: Some(query(store.clone(), sealer(&store).await?)),
                dlq: Some(Dlq::new(Arc::clone(config), store)),
                ..Apis::default()
            };
            (remote_keys()?, apis, services.query.listen)
        }
        Role::Proxy => {
            let gw = &services.gateway;
            let up = gw.upstreams.as_ref().expect("Role::Proxy is chosen only when upstreams are set");
            let upstreams =
                Upstreams::new(up, gw.max_batch_body_bytes, gw.request_timeout).map_err(anyhow::Error::msg)?;
            tokio::spawn(Arc::clone(&upstreams).check_health(up.health_check, shutdown.clone()));
            (remote_keys()?, Apis { upstreams: Some(upstreams), ..Apis::default() }, gw.listen)
        }
    };
    let publisher = apis.ingest.as_ref().map(|i| Arc::clone(&i.publisher));
    let auth = &services.auth;
    let validator = Validator::new(keys, &auth.issuer, &auth.audience);
    let state = GatewayState::build(&services.gateway, validator, apis);
    let listen = common.listen.clone().unwrap_or_else(|| listen.to_string());
    let listener = cashflow_http::serve::bind(&listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(listen = %listener.local_addr()?, stage = ?stage, ?role, "HTTP API listening");
    cashflow_observability::metrics().stage_up(stage.name(), true);
    let app = cashflow_gateway::router(state);
    cashflow_http::serve::serve(listener, app, config.http.clone(), gate(config), shutdown).await?;
    if let Some(p) = publisher {
        p.flush(Duration::from_secs(5));
    }
    Ok(())
}

/// What seals `posicao` and cursors: a key shared through the store by ingest and query, so a
/// token one replica gave opens on every other.
async fn sealer(store: &Store) -> Result<Sealer> {
    let key = store.sealing_key().await.context("cannot read or make the sealing key in the store")?;
    Ok(Sealer::new(&key))
}

/// The process's connection caps, shared by its listeners; logged once with the file limit.
fn gate(config: &PipelineConfig) -> Arc<cashflow_http::serve::Gate> {
    static GATE: std::sync::OnceLock<Arc<cashflow_http::serve::Gate>> = std::sync::OnceLock::new();
    let gate = GATE.get_or_init(|| {
        let gate = cashflow_http::serve::Gate::new(&config.http);
        let (soft, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap_or((0, 0));
        tracing::info!(
            open_files_soft = soft,
            open_files_hard = hard,
            max_connections = gate.max_total(),
            max_connections_per_address = config.http.max_connections_per_address.min(gate.max_total()),
            "HTTP connection caps"
        );
        gate
    });
    Arc::clone(gate)
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
