//! `pipeline.yaml`: topics, stages and sinks, shaped like Fluvio Stateful DataFlow's dataflow.yaml.
//!
//! Loading has two steps. [`PipelineConfig::parse`] reads the YAML, substitutes `${ENV}` and
//! checks every reference without I/O; every problem names its YAML path. Building the stages
//! (connecting to Kafka and the store) happens later, in the stages themselves.

mod check;
mod env;
mod redact;
#[cfg(test)]
mod tests;
mod types;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::BusinessDate;
use crate::estado::{Key, Values};

pub use redact::redact_password;
pub use types::{BrokerStorage, Brokers, HostPort, Secret, StoreUrl};

use types::{millis, secs};

/// One problem in the file, with its YAML path (`services.consolidate.sources[1].id`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() { f.write_str(&self.message) } else { write!(f, "{}: {}", self.path, self.message) }
    }
}

/// Every problem found in a pipeline file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} problem(s)", self.file, self.problems.len())?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

/// The whole pipeline.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Must be `cashflow/v1`.
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub meta: Meta,
    pub kafka: KafkaConfig,
    pub store: StoreConfig,
    /// Every topic the pipeline uses, created at start with these partition counts.
    pub topics: BTreeMap<String, TopicConfig>,
    pub services: Services,
    /// Every HTTP listener of every stage (the APIs, and `/metrics` and `/healthz`): how long a
    /// client may take and how many connections it may hold.
    #[serde(default)]
    pub http: HttpConfig,
    /// The directory of the file this came from: paths in it (a SmartModule's) are relative to
    /// it. The working directory for text parsed without a file.
    #[serde(skip)]
    pub dir: PathBuf,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// From a request's first byte to the end of its headers.
    #[serde(rename = "header_read_timeout_ms", default = "HttpConfig::default_header_read", with = "millis")]
    pub header_read_timeout: Duration,
    /// A connection with no request in flight and no byte of the next one: closed after this.
    #[serde(rename = "idle_timeout_ms", default = "HttpConfig::default_idle", with = "millis")]
    pub idle_timeout: Duration,
    /// The longest wait for the next bytes of a request body.
    #[serde(rename = "body_read_timeout_ms", default = "HttpConfig::default_body_read", with = "millis")]
    pub body_read_timeout: Duration,
    /// Open connections per process, over all its listeners; lowered at start to fit the open-file
    /// limit with room for the broker and store clients. Connections over a cap are closed at once.
    #[serde(default = "HttpConfig::default_max_connections")]
    pub max_connections: usize,
    /// Open connections per client address.
    #[serde(default = "HttpConfig::default_max_connections_per_address")]
    pub max_connections_per_address: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            header_read_timeout: HttpConfig::default_header_read(),
            idle_timeout: HttpConfig::default_idle(),
            body_read_timeout: HttpConfig::default_body_read(),
            max_connections: HttpConfig::default_max_connections(),
            max_connections_per_address: HttpConfig::default_max_connections_per_address(),
        }
    }
}

impl HttpConfig {
    const fn default_header_read() -> Duration {
        Duration::from_millis(10_000)
    }
    const fn default_idle() -> Duration {
        Duration::from_millis(60_000)
    }
    const fn default_body_read() -> Duration {
        Duration::from_millis(10_000)
    }
    const fn default_max_connections() -> usize {
        16_384
    }
    const fn default_max_connections_per_address() -> usize {
        512
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    /// The pipeline's name: the Kafka `client.id` of every client (`name/version`, which brokers
    /// log and set quotas by), and the `name` label of `cashflow_pipeline_info`.
    pub name: String,
    /// The pipeline's version: in the same `client.id`, and the `version` label of
    /// `cashflow_pipeline_info`.
    pub version: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `embedded` runs the bundled broker under `--data-dir`; otherwise a `host:port,…` list.
    pub brokers: Brokers,
    /// librdkafka properties passed through to every client, e.g. `security.protocol`; secret, as
    /// they may hold credentials (`sasl.password`).
    #[serde(default)]
    pub properties: BTreeMap<String, Secret<String>>,
    /// Settings of the bundled broker: the one `cashflow up` runs when `brokers` is `embedded`, and
    /// each one `cashflow run broker` runs.
    #[serde(default)]
    pub embedded: EmbeddedBroker,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedBroker {
    /// Address the bundled broker listens on (`--listen` overrides it for `cashflow run broker`).
    #[serde(default = "EmbeddedBroker::default_listen")]
    pub listen: SocketAddr,
    /// `host:port` clients reach this broker at, named in its metadata answers; the listen
    /// address when absent. Each broker of a cluster has its own: `"${BROKER_ADVERTISE}"`.
    #[serde(default)]
    pub advertise: Option<HostPort>,
    /// Where the log is kept: SQLite under `--data-dir`, or PostgreSQL shared by a cluster.
    #[serde(default)]
    pub storage: BrokerStorage,
}

impl EmbeddedBroker {
    fn default_listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9092))
    }

    /// The address advertised by a broker listening on `listen`.
    pub fn advertised(&self, listen: SocketAddr) -> String {
        self.advertise.as_ref().map_or_else(|| listen.to_string(), ToString::to_string)
    }
}

impl Default for EmbeddedBroker {
    fn default() -> Self {
        EmbeddedBroker { listen: Self::default_listen(), advertise: None, storage: BrokerStorage::default() }
    }
}

impl KafkaConfig {
    pub fn is_embedded(&self) -> bool {
        self.brokers == Brokers::Embedded
    }

    /// The bootstrap list clients connect to.
    pub fn bootstrap(&self) -> String {
        match &self.brokers {
            Brokers::Embedded => self.embedded.listen.to_string(),
            Brokers::Bootstrap(list) => list.join(","),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite://<path>` (a relative path resolves against `--data-dir`) or `postgres://…`.
    pub url: StoreUrl,
    /// Connections in the pool.
    #[serde(default = "StoreConfig::default_max_connections")]
    pub max_connections: u32,
}

impl StoreConfig {
    const fn default_max_connections() -> u32 {
        8
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    pub partitions: i32,
    #[serde(default = "TopicConfig::default_replication")]
    pub replication_factor: i16,
}

impl TopicConfig {
    const fn default_replication() -> i16 {
        1
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Services {
    pub gateway: GatewayConfig,
    pub auth: AuthConfig,
    pub ingest: IngestConfig,
    #[serde(default)]
    pub query: QueryConfig,
    pub consolidate: ConsolidateConfig,
    pub retry: RetryConfig,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Address the HTTP API listens on; `--listen` overrides it.
    pub listen: SocketAddr,
    /// Requests allowed per merchant (from the token).
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    /// Requests allowed per client address, authenticated or not.
    #[serde(default)]
    pub rate_limit_per_address: Option<RateLimit>,
    /// Largest request body accepted.
    #[serde(default = "GatewayConfig::default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Largest body of `POST /v1/lancamentos/lote` (1,000 entries).
    #[serde(default = "GatewayConfig::default_max_batch_body_bytes")]
    pub max_batch_body_bytes: usize,
    /// A request that takes longer is answered 503.
    #[serde(rename = "request_timeout_secs", default = "GatewayConfig::default_request_timeout", with = "secs")]
    pub request_timeout: Duration,
    /// Browser origins allowed to call the API (CORS), e.g. `https://app.example.com`; `"*"` allows
    /// any. Empty (the default): no cross-origin access.
    #[serde(default)]
    pub cors_allowed_origins: Vec<String>,
    /// The distributed shape: base URLs of the auth, ingest and query stages, which `cashflow run
    /// gateway` proxies to. Absent: the gateway serves every API itself.
    #[serde(default)]
    pub upstreams: Option<Upstreams>,
}

/// Where the gateway reaches the other HTTP stages: one base URL per stage, e.g.
/// `http://10.0.0.5:8082`, or a list of its replicas.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstreams {
    pub auth: Replicas,
    pub ingest: Replicas,
    pub query: Replicas,
    /// How often each stage's `/readyz` is checked.
    #[serde(rename = "health_check_secs", default = "Upstreams::default_health_check", with = "secs")]
    pub health_check: Duration,
}

impl Upstreams {
    const fn default_health_check() -> Duration {
        Duration::from_secs(5)
    }

    /// The JWKS of each auth replica, which every other stage validates tokens with: the
    /// replicas share the signing keys, so any of them answers.
    pub fn jwks_urls(&self) -> Vec<String> {
        self.auth.urls().iter().map(|u| format!("{}/.well-known/jwks.json", u.trim_end_matches('/'))).collect()
    }
}

/// The base URLs of one stage's replicas, in `pipeline.yaml` one URL or a list of them.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(from = "ReplicasText")]
pub struct Replicas(Vec<String>);

#[derive(Deserialize)]
#[serde(untagged)]
enum ReplicasText {
    One(String),
    Many(Vec<String>),
}

impl From<ReplicasText> for Replicas {
    fn from(t: ReplicasText) -> Replicas {
        match t {
            ReplicasText::One(url) => Replicas(vec![url]),
            ReplicasText::Many(urls) => Replicas(urls),
        }
    }
}

impl Replicas {
    pub fn from_urls(urls: Vec<String>) -> Replicas {
        Replicas(urls)
    }

    pub fn urls(&self) -> &[String] {
        &self.0
    }
}

/// The balance queries, as their own stage (`cashflow run query`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryConfig {
    #[serde(default = "QueryConfig::default_listen")]
    pub listen: SocketAddr,
    /// The longest a read with `aguardar` waits for consolidation before answering stale.
    #[serde(rename = "aguardar_timeout_ms", default = "QueryConfig::default_aguardar_timeout", with = "millis")]
    pub aguardar_timeout: Duration,
    /// Day rows of consolidated balances the query stage holds in memory (about 40 bytes each;
    /// when memory may answer is said in `gateway/src/query/balances.rs`). 0 reads the store on
    /// every request.
    #[serde(default = "QueryConfig::default_cache_days")]
    pub cache_days: u64,
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig {
            listen: QueryConfig::default_listen(),
            aguardar_timeout: QueryConfig::default_aguardar_timeout(),
            cache_days: QueryConfig::default_cache_days(),
        }
    }
}

impl QueryConfig {
    const fn default_aguardar_timeout() -> Duration {
        Duration::from_millis(5_000)
    }
    const fn default_cache_days() -> u64 {
        1_000_000
    }
    fn default_listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 8083))
    }
}

impl GatewayConfig {
    const fn default_max_body_bytes() -> usize {
        64 * 1024
    }
    const fn default_max_batch_body_bytes() -> usize {
        1024 * 1024
    }
    const fn default_request_timeout() -> Duration {
        Duration::from_secs(30)
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Where `cashflow run auth` listens (the distributed shape).
    #[serde(default = "AuthConfig::default_listen")]
    pub listen: SocketAddr,
    /// Peers (the gateway) whose `X-Forwarded-For` names the client for the login limits.
    #[serde(default)]
    pub trusted_proxies: Vec<std::net::IpAddr>,
    pub issuer: String,
    pub audience: String,
    #[serde(rename = "token_ttl_secs", with = "secs")]
    pub token_ttl: Duration,
    /// Directory of signing keys; a relative path resolves against `--data-dir`.
    #[serde(default = "AuthConfig::default_keys_dir")]
    pub keys_dir: PathBuf,
    /// Token requests allowed per username, against password guessing; the same whether the
    /// user exists or not.
    #[serde(default = "AuthConfig::default_per_username")]
    pub login_limit_per_username: LoginLimit,
    /// Token requests allowed per client address, against guessing across usernames.
    #[serde(default = "AuthConfig::default_per_address")]
    pub login_limit_per_address: LoginLimit,
}

/// Requests per minute, with a burst.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginLimit {
    pub per_minute: u32,
    pub burst: u32,
}

impl AuthConfig {
    fn default_listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 8081))
    }
    fn default_keys_dir() -> PathBuf {
        PathBuf::from("keys")
    }
    const fn default_per_username() -> LoginLimit {
        LoginLimit { per_minute: 10, burst: 10 }
    }
    const fn default_per_address() -> LoginLimit {
        LoginLimit { per_minute: 120, burst: 60 }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Where `cashflow run ingest` listens (the distributed shape).
    #[serde(default = "IngestConfig::default_listen")]
    pub listen: SocketAddr,
    /// Where accepted entries go: exactly one topic.
    pub sinks: Vec<TopicRef>,
    /// How long to wait for the broker's acknowledgement before answering 503.
    #[serde(rename = "ack_timeout_ms", default = "IngestConfig::default_ack_timeout", with = "millis")]
    pub ack_timeout: Duration,
}

impl IngestConfig {
    fn default_listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 8082))
    }
    const fn default_ack_timeout() -> Duration {
        Duration::from_millis(5_000)
    }
}

/// A reference to a declared topic.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum TopicRef {
    Topic { id: String },
}

impl TopicRef {
    pub fn id(&self) -> &str {
        match self {
            TopicRef::Topic { id } => id,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsolidateConfig {
    /// Where `cashflow run consolidate` serves `/metrics`, `/healthz` and `/readyz`.
    #[serde(default = "ConsolidateConfig::default_listen")]
    pub listen: SocketAddr,
    pub sources: Vec<TopicRef>,
    /// The states the dataflow keeps, by name (the name in
    /// `GET /v1/consolidado/estados/{nome}`), each in its own table.
    pub states: BTreeMap<String, StateConfig>,
    /// The operators each record goes through, in order: `validate`, `dedupe`, any
    /// `smartmodule`s, then `aggregate`.
    pub transforms: Vec<Transform>,
    pub on_error: TopicRef,
    /// Consumer group; progress is stored per group, topic and partition.
    #[serde(default = "ConsolidateConfig::default_group")]
    pub group: String,
    /// Most records in one epoch. Unset: [`ConsolidateConfig::max_epoch_records`] picks by store.
    #[serde(default)]
    pub max_epoch_records: Option<usize>,
    /// Longest wait to fill an epoch once its first record arrived.
    #[serde(rename = "max_epoch_wait_ms", default = "ConsolidateConfig::default_max_epoch_wait", with = "millis")]
    pub max_epoch_wait: Duration,
    /// Sink lanes: an epoch's partitions split into this many transactions, committed side by
    /// side on connections of their own. Unset: [`ConsolidateConfig::lanes`] picks by store.
    #[serde(default)]
    pub lanes: Option<usize>,
    /// The scheduled reconciliation of the states against the stored entries.
    #[serde(default)]
    pub reconcile: ReconcileConfig,
}

/// Every `every`, the consolidator recomputes the states of some merchants from their stored
/// entries and compares them with the stored rows (`cashflow reconcile` does it on demand).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileConfig {
    #[serde(rename = "every_secs", with = "secs")]
    pub every: Duration,
    pub merchants: Sample,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        ReconcileConfig { every: Duration::from_secs(3_600), merchants: Sample::Some(100) }
    }
}

/// Which merchants a scheduled reconciliation checks: `all`, or this many picked at random.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "SampleText")]
pub enum Sample {
    All,
    Some(usize),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SampleText {
    Count(usize),
    Word(String),
}

impl TryFrom<SampleText> for Sample {
    type Error = String;

    fn try_from(t: SampleText) -> Result<Sample, String> {
        match t {
            SampleText::Count(n) => Ok(Sample::Some(n)),
            SampleText::Word(w) if w == "all" => Ok(Sample::All),
            SampleText::Word(w) => Err(format!("{w:?} is neither \"all\" nor a number of merchants")),
        }
    }
}

/// The accepted range of business dates: from `past_days` ago to `future_days` ahead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DateWindow {
    pub past_days: u32,
    pub future_days: u32,
}

impl Default for DateWindow {
    fn default() -> Self {
        DateWindow { past_days: 3_660, future_days: 366 }
    }
}

impl DateWindow {
    /// `None` when `date` is inside the window as of `today`; otherwise why not.
    pub fn reject(&self, date: BusinessDate, today: BusinessDate) -> Option<String> {
        let (from, to) = (today.days() - self.past_days as i32, today.days() + self.future_days as i32);
        let show = |d| BusinessDate::from_days(d).map(|d| d.to_string()).unwrap_or_default();
        (!(from..=to).contains(&date.days())).then(|| {
            format!(
                "must be between {} and {} (services.consolidate.transforms: validate's date_window)",
                show(from),
                show(to)
            )
        })
    }
}

/// Lanes on PostgreSQL when `services.consolidate.lanes` is unset, from cashflow-bench
/// (BENCHMARKS.md, "Sink lanes").
pub const DEFAULT_POSTGRES_LANES: usize = 2;

/// An epoch's records when `services.consolidate.max_epoch_records` is unset, from
/// cashflow-bench (BENCHMARKS.md, "Epochs by store"). An SQLite epoch rewrites most of the pages
/// of its B-trees once they outgrow its cache, however few records it holds, so larger epochs pay
/// that less often; on PostgreSQL larger epochs gained nothing and would hold more in memory.
pub const DEFAULT_SQLITE_EPOCH_RECORDS: usize = 100_000;
pub const DEFAULT_POSTGRES_EPOCH_RECORDS: usize = 20_000;

impl ConsolidateConfig {
    fn default_listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 8084))
    }
    fn default_group() -> String {
        "cashflow-consolidate".into()
    }
    const fn default_max_epoch_wait() -> Duration {
        Duration::from_millis(50)
    }

    /// The most records an epoch holds on `store`: as set, or else
    /// [`DEFAULT_SQLITE_EPOCH_RECORDS`] or [`DEFAULT_POSTGRES_EPOCH_RECORDS`].
    pub fn max_epoch_records(&self, store: &StoreUrl) -> usize {
        self.max_epoch_records.unwrap_or(match store {
            StoreUrl::Sqlite(_) => DEFAULT_SQLITE_EPOCH_RECORDS,
            StoreUrl::Postgres(_) => DEFAULT_POSTGRES_EPOCH_RECORDS,
        })
    }

    /// The lanes an epoch is split into on `store`: as set, or else 1 on SQLite (one writer at
    /// a time) and [`DEFAULT_POSTGRES_LANES`] on PostgreSQL.
    pub fn lanes(&self, store: &StoreUrl) -> usize {
        self.lanes.unwrap_or(match store {
            StoreUrl::Sqlite(_) => 1,
            StoreUrl::Postgres(_) => DEFAULT_POSTGRES_LANES,
        })
    }

    /// The business dates `validate` accepts (ingest answers 422 outside them).
    pub fn date_window(&self) -> DateWindow {
        let window = self.transforms.iter().find_map(|t| match t {
            Transform::Validate { date_window } => Some(*date_window),
            _ => None,
        });
        window.unwrap_or_default()
    }

    /// The states `aggregate` keeps, in the order it names them, each with its name.
    pub fn aggregated(&self) -> Vec<(&str, &StateConfig)> {
        let into = self.transforms.iter().flat_map(|t| match t {
            Transform::Aggregate { into } => into.as_slice(),
            _ => &[],
        });
        into.filter_map(|name| self.states.get_key_value(name).map(|(n, s)| (n.as_str(), s))).collect()
    }
}

/// A state: credits, debits and a count of entries per value of its key, kept in its table.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Fields of the entry: `merchant_id` first, then any of `data`, `categoria`, `tipo`, `mes`,
    /// `ano`, `semana`.
    pub key: Key,
    /// What it keeps per key: any of `creditos` (the credits' sum), `debitos` (the debits' sum)
    /// and `lancamentos` (how many entries); all three when absent. Its table has a column for
    /// each, and the API shows each.
    #[serde(default)]
    pub values: Values,
    /// The table that holds it, `consolidado_<name>`: created at start, and filled from the
    /// stored entries when the state is new. Its columns are the key's fields, `creditos_cents`,
    /// `debitos_cents`, `quantidade` (those of its values) and `atualizado_em`.
    pub table: String,
}

/// One operator of `transforms`, from the built-ins.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "operator", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Transform {
    /// Decode and check each record; bad ones go to `on_error`.
    Validate {
        /// Business dates accepted, relative to the day ingest accepted the entry (UTC). Ingest
        /// answers 422 outside it; a record outside it on the topic is retried, then parked.
        #[serde(default)]
        date_window: DateWindow,
    },
    /// Count each entry id once: the store's primary key on `lancamentos` decides.
    Dedupe,
    /// A user's WebAssembly filter or map (a Fluvio SmartModule) over each entry.
    Smartmodule(SmartModuleConfig),
    /// Add each new entry to these states.
    Aggregate { into: Vec<String> },
}

impl Transform {
    pub fn name(&self) -> &'static str {
        match self {
            Transform::Validate { .. } => "validate",
            Transform::Dedupe => "dedupe",
            Transform::Smartmodule(_) => "smartmodule",
            Transform::Aggregate { .. } => "aggregate",
        }
    }
}

/// A SmartModule: a WebAssembly module built with `fluvio-smartmodule`, run on each entry as its
/// wire JSON (`v: 1`). See the README, "Writing a SmartModule".
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmartModuleConfig {
    /// Its name: in metrics, logs and failure details.
    pub name: String,
    /// The `.wasm` file, relative to this file.
    pub path: PathBuf,
    pub kind: SmartModuleKind,
    /// Given to the module's `init` (`SmartModuleExtraParams`).
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// Fuel (wasmtime's unit of work) each entry may spend; an entry that needs more fails with
    /// `smartmodule_error`, and the stream goes on.
    #[serde(default = "SmartModuleConfig::default_fuel")]
    pub fuel: u64,
    /// Most linear memory the module may grow to.
    #[serde(default = "SmartModuleConfig::default_max_memory_bytes")]
    pub max_memory_bytes: usize,
}

impl SmartModuleConfig {
    const fn default_fuel() -> u64 {
        10_000_000
    }
    const fn default_max_memory_bytes() -> usize {
        16 << 20
    }
}

/// What a SmartModule does with an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SmartModuleKind {
    /// Keeps the entry or drops it.
    Filter,
    /// Changes the entry (not its id or merchant).
    Map,
    /// Drops the entry, or changes it.
    FilterMap,
    /// Turns the entry into any number of entries of its merchant; the first keeps its id, and
    /// each other's id is derived from it and its place.
    ArrayMap,
}

impl SmartModuleKind {
    /// Its name in `pipeline.yaml`.
    pub fn as_str(self) -> &'static str {
        match self {
            SmartModuleKind::Filter => "filter",
            SmartModuleKind::Map => "map",
            SmartModuleKind::FilterMap => "filter-map",
            SmartModuleKind::ArrayMap => "array-map",
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Where `cashflow run retry` serves `/metrics`, `/healthz` and `/readyz`.
    #[serde(default = "RetryConfig::default_listen")]
    pub listen: SocketAddr,
    /// Delay before each retry; the last value repeats. Each delay is drawn up to a quarter
    /// longer, at random, so records that failed together do not return together. Each is at
    /// most a week (604800000).
    #[serde(rename = "backoff_ms", deserialize_with = "millis::list")]
    pub backoff: Vec<Duration>,
    /// Retries of a failed record before it is parked.
    pub max_attempts: u32,
    /// Where exhausted records are parked.
    pub parked: TopicRef,
    /// The retry stage's consumer group.
    #[serde(default = "RetryConfig::default_group")]
    pub group: String,
    /// Most records held in memory waiting for their time; beyond it the stage stops reading.
    #[serde(default = "RetryConfig::default_max_held")]
    pub max_held: usize,
}

impl RetryConfig {
    /// The longest a failed record is retried before it is parked: every delay of the schedule
    /// (the last repeating) at its longest, a quarter over. Saturates rather than overflows.
    pub fn longest_hold(&self) -> Duration {
        let attempts = self.max_attempts as usize;
        let listed = self.backoff.iter().take(attempts).fold(Duration::ZERO, |sum, d| sum.saturating_add(*d));
        let repeats = u32::try_from(attempts.saturating_sub(self.backoff.len())).unwrap_or(u32::MAX);
        let last = self.backoff.last().copied().unwrap_or_default();
        let total = listed.saturating_add(last.saturating_mul(repeats));
        total.saturating_add(total / 4)
    }

    fn default_listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 8085))
    }
    fn default_group() -> String {
        "cashflow-retry".into()
    }
    const fn default_max_held() -> usize {
        100_000
    }
}

impl PipelineConfig {
    /// Reads, substitutes `${ENV}` and checks a pipeline file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            problems: vec![Problem { path: String::new(), message: format!("cannot read: {e}") }],
        })?;
        let mut config = Self::parse(&file, &text, |name| std::env::var(name).ok())?;
        config.dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(config)
    }

    /// `path` from the file, relative to its directory unless absolute.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        self.dir.join(path)
    }

    /// The `smartmodule` operators, in order, each with its YAML path.
    pub fn smartmodules(&self) -> Vec<(String, &SmartModuleConfig)> {
        let transforms = self.services.consolidate.transforms.iter().enumerate();
        transforms
            .filter_map(|(i, t)| match t {
                Transform::Smartmodule(m) => Some((format!("services.consolidate.transforms[{i}]"), m)),
                _ => None,
            })
            .collect()
    }

    /// Parses YAML text; `env` resolves `${NAME}`.
    pub fn parse(file: &str, text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let fail = |problems| ConfigError { file: file.to_owned(), problems };
        let mut value: serde_norway::Value = serde_norway::from_str(text)
            .map_err(|e| fail(vec![Problem { path: String::new(), message: format!("invalid YAML: {e}") }]))?;
        let problems = env::substitute(&mut value, &env);
        if !problems.is_empty() {
            return Err(fail(problems));
        }
        let mut problems = check::texts(&value);
        let config: PipelineConfig = match serde_path_to_error::deserialize(value) {
            Ok(config) => config,
            Err(e) => {
                let path = e.path().to_string();
                let path = if path == "." { String::new() } else { path };
                // The value that stopped it may be among the texts' problems already.
                if !problems.iter().any(|p| p.path == path) {
                    problems.push(Problem { path, message: e.into_inner().to_string() });
                }
                return Err(fail(problems));
            }
        };
        problems.extend(check::check(&config));
        if problems.is_empty() { Ok(config) } else { Err(fail(problems)) }
    }

    pub fn consolidate_sources(&self) -> Vec<String> {
        self.services.consolidate.sources.iter().map(|s| s.id().to_owned()).collect()
    }

    /// The topic ingest produces to. `check` guarantees there is exactly one.
    pub fn ingest_topic(&self) -> &str {
        self.services.ingest.sinks.first().map(TopicRef::id).unwrap_or("lancamentos")
    }
}
