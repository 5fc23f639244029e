//! A running `cashflow up`, in its own temp data dir, on free ports.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::{Value, json};

use crate::{binary, free_port, free_ports};

/// Which store the pipeline uses.
#[derive(Clone, Debug)]
pub enum Store {
    Sqlite,
    Postgres(String),
}

/// One process running a part of the pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// `cashflow up`: everything.
    Up,
    /// `cashflow run broker`.
    Broker,
    /// A second `cashflow run broker`, of a cluster over shared PostgreSQL storage
    /// ([`Pipeline::configure_broker_cluster`]).
    SecondBroker,
    /// `cashflow run gateway`.
    Gateway,
    /// `cashflow run consolidate`.
    Consolidate,
    /// A second `cashflow run consolidate` in the same consumer group.
    SecondConsolidator,
    /// Another `cashflow run consolidate` in the same group, the n-th; its listener gets a free
    /// port when it is first launched.
    ExtraConsolidator(u8),
    /// `cashflow run retry`.
    Retry,
    /// `cashflow run auth` (distributed shape).
    Auth,
    /// `cashflow run ingest` (distributed shape).
    Ingest,
    /// `cashflow run query` (distributed shape).
    Query,
    /// A second `cashflow run ingest`, a replica behind the gateway.
    IngestReplica,
    /// A second `cashflow run query`, a replica behind the gateway.
    QueryReplica,
}

impl Role {
    fn args(self) -> &'static [&'static str] {
        match self {
            Role::Up => &["up"],
            Role::Broker | Role::SecondBroker => &["run", "broker"],
            Role::Gateway => &["run", "gateway"],
            Role::Consolidate | Role::SecondConsolidator | Role::ExtraConsolidator(_) => &["run", "consolidate"],
            Role::Retry => &["run", "retry"],
            Role::Auth => &["run", "auth"],
            Role::Ingest | Role::IngestReplica => &["run", "ingest"],
            Role::Query | Role::QueryReplica => &["run", "query"],
        }
    }
}

/// A pipeline.yaml edit for load tests: thousands of entries a second for three merchants, beyond
/// the shipped per-merchant rate limit.
pub const UNLIMITED: (&str, &str) =
    ("rate_limit: { per_second: 200, burst: 400 }", "rate_limit: { per_second: 1000000, burst: 1000000 }");

pub struct Pipeline {
    pub(crate) dir: tempfile::TempDir,
    config: PathBuf,
    pub(crate) children: BTreeMap<Role, Child>,
    /// Base URLs of the listeners of separate stages: auth, ingest and query (distributed shape),
    /// and the consolidator's and retry stage's metrics.
    pub stages: BTreeMap<Role, String>,
    pub kafka: String,
    pub api: Api,
}

impl Pipeline {
    /// Starts `cashflow up` with the shipped pipeline.yaml, changed only in ports and store.
    pub async fn start(store: Store) -> Pipeline {
        Self::start_with(store, &[]).await
    }

    /// Starts `cashflow up` with `edits`, (from, to) replacements in pipeline.yaml.
    pub async fn start_with(store: Store, edits: &[(&str, &str)]) -> Pipeline {
        let mut p = Self::configure(store, edits);
        p.launch(Role::Up).await;
        p
    }

    /// Starts broker, gateway, consolidator and retry stage as separate processes, as in
    /// production. `edits` are extra (from, to) replacements in pipeline.yaml.
    pub async fn start_stages(store: Store, edits: &[(&str, &str)]) -> Pipeline {
        let mut p = Self::configure(store, edits);
        for role in [Role::Broker, Role::Gateway, Role::Consolidate, Role::Retry] {
            p.launch(role).await;
        }
        p
    }

    /// The distributed shape: broker, auth, ingest, query, a proxying gateway, consolidator and
    /// retry stage, each its own process.
    pub async fn start_distributed(store: Store) -> Pipeline {
        Self::start_distributed_with(store, false, &[]).await
    }

    /// [`Pipeline::start_distributed`], with a second ingest and a second query stage behind the
    /// gateway when `replicas`, and `edits`.
    pub async fn start_distributed_with(store: Store, replicas: bool, extra: &[(&str, &str)]) -> Pipeline {
        let [auth, ingest, query, ingest2, query2] = free_ports();
        let ports = [
            (Role::Auth, auth),
            (Role::Ingest, ingest),
            (Role::Query, query),
            (Role::IngestReplica, ingest2),
            (Role::QueryReplica, query2),
        ];
        let url = |role: Role| format!("http://127.0.0.1:{}", ports.iter().find(|(r, _)| *r == role).unwrap().1);
        let stage = |role: Role, replica: Role| match replicas {
            true => format!("[\"{}\", \"{}\"]", url(role), url(replica)),
            false => format!("\"{}\"", url(role)),
        };
        let upstreams = format!(
            "upstreams: {{ auth: \"{}\", ingest: {}, query: {}, health_check_secs: 1 }}",
            url(Role::Auth),
            stage(Role::Ingest, Role::IngestReplica),
            stage(Role::Query, Role::QueryReplica)
        );
        let listens: Vec<(String, String)> = [("8081", Role::Auth), ("8082", Role::Ingest), ("8083", Role::Query)]
            .into_iter()
            .map(|(default, role)| {
                (format!("listen: 127.0.0.1:{default}"), format!("listen: {}", url(role).trim_start_matches("http://")))
            })
            .collect();
        let mut edits: Vec<(&str, &str)> = listens.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let commented = "# upstreams: { auth: \"http://127.0.0.1:8081\", ingest: \"http://127.0.0.1:8082\", query: \"http://127.0.0.1:8083\" }";
        edits.push((commented, &upstreams));
        edits.push(("trusted_proxies: []", "trusted_proxies: [127.0.0.1]"));
        edits.extend_from_slice(extra);
        let mut p = Self::configure(store, &edits);
        p.stages.extend(ports.iter().map(|(role, _)| (*role, url(*role))));
        let mut roles = vec![Role::Broker, Role::Auth, Role::Ingest, Role::Query];
        if replicas {
            roles.extend([Role::IngestReplica, Role::QueryReplica]);
        }
        for role in roles.into_iter().chain([Role::Gateway, Role::Consolidate, Role::Retry]) {
            p.launch(role).await;
        }
        p
    }

    /// The shipped pipeline.yaml with free ports, `store` and `edits`; nothing started yet.
    pub fn configure(store: Store, edits: &[(&str, &str)]) -> Pipeline {
        let dir = tempfile::tempdir().unwrap();
        let [http, kafka, consolidate, retry, second] = free_ports();
        let shipped = include_str!("../../pipeline.yaml");
        let url = match &store {
            Store::Sqlite => "sqlite://cashflow.db".to_owned(),
            Store::Postgres(url) => url.clone(),
        };
        // Every request of a test comes from one address: the per-address limit is the router
        // tests' business (gateway/tests), not the pipeline's.
        let per_address = "rate_limit_per_address: { per_second: 2000, burst: 4000 }";
        assert!(shipped.contains(per_address), "pipeline.yaml lacks {per_address:?}");
        let mut yaml = shipped
            .replace(per_address, "rate_limit_per_address: { per_second: 1000000, burst: 1000000 }")
            .replace("listen: 127.0.0.1:8080", &format!("listen: 127.0.0.1:{http}"))
            .replace("listen: 127.0.0.1:9092", &format!("listen: 127.0.0.1:{kafka}"))
            .replace("listen: 127.0.0.1:8084", &format!("listen: 127.0.0.1:{consolidate}"))
            .replace("listen: 127.0.0.1:8085", &format!("listen: 127.0.0.1:{retry}"))
            .replace("url: sqlite://cashflow.db", &format!("url: \"{url}\""));
        for (from, to) in edits {
            assert!(yaml.contains(from), "pipeline.yaml lacks {from:?}");
            yaml = yaml.replace(from, to);
        }
        let config = dir.path().join("pipeline.yaml");
        std::fs::write(&config, yaml).unwrap();
        Pipeline {
            dir,
            config,
            children: BTreeMap::new(),
            stages: BTreeMap::from([
                (Role::Consolidate, format!("http://127.0.0.1:{consolidate}")),
                (Role::Retry, format!("http://127.0.0.1:{retry}")),
                (Role::SecondConsolidator, format!("http://127.0.0.1:{second}")),
            ]),
            kafka: format!("127.0.0.1:{kafka}"),
            api: Api { base: format!("http://127.0.0.1:{http}"), client: reqwest::Client::new() },
        }
    }

    /// [`Pipeline::configure`] with two brokers serving one cluster over `broker_storage`, a
    /// PostgreSQL database: `kafka.brokers` lists both, and clients (the tests' own too) are given
    /// both. The second listens on a port of its own.
    pub fn configure_broker_cluster(store: Store, broker_storage: &str, edits: &[(&str, &str)]) -> Pipeline {
        let storage = format!("storage: \"{broker_storage}\"");
        let mut p = Self::configure(store, &[edits, &[("storage: sqlite", storage.as_str())]].concat());
        let second = format!("127.0.0.1:{}", free_port());
        p.edit_config("brokers: embedded", &format!("brokers: \"{},{second}\"", p.kafka));
        p.stages.insert(Role::SecondBroker, format!("tcp://{second}"));
        p.kafka = format!("{},{second}", p.kafka);
        p
    }

    /// `cashflow` with this pipeline's --config and --data-dir.
    pub fn cashflow(&self) -> Command {
        let mut c = Command::new(binary("cashflow"));
        c.arg("--config").arg(&self.config).arg("--data-dir").arg(self.data_dir());
        c.env("CASHFLOW_BROKER_BIN", binary("cashflow-broker"));
        c
    }

    /// Starts one process and waits until it serves: the HTTP API for `up` and `gateway`, the
    /// Kafka port for `broker`. A consolidator needs no wait: it retries until it can work.
    pub async fn launch(&mut self, role: Role) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).unwrap();
        let mut command = self.cashflow();
        command.args(role.args());
        if let Role::ExtraConsolidator(_) = role {
            self.stages.entry(role).or_insert_with(|| format!("http://127.0.0.1:{}", free_port()));
        }
        let own_listener = [
            Role::Consolidate,
            Role::SecondConsolidator,
            Role::Retry,
            Role::IngestReplica,
            Role::QueryReplica,
            Role::SecondBroker,
        ];
        if own_listener.contains(&role) || matches!(role, Role::ExtraConsolidator(_)) {
            command.arg("--listen").arg(self.address(role));
        }
        let child = command
            .env("CASHFLOW_LOG", "info,librdkafka=warn,rdkafka=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children.insert(role, child);
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(status) = self.children.get_mut(&role).unwrap().try_wait().unwrap() {
                panic!("{role:?} exited at start ({status}):\n{}", self.log_tail());
            }
            let ready = match role {
                Role::Up | Role::Gateway => {
                    let r = self.api.client.get(format!("{}/readyz", self.api.base)).send().await;
                    r.is_ok_and(|r| r.status().is_success())
                }
                Role::Broker => std::net::TcpStream::connect(self.kafka.split(',').next().unwrap()).is_ok(),
                Role::SecondBroker => std::net::TcpStream::connect(self.address(role)).is_ok(),
                Role::Auth | Role::Ingest | Role::Query | Role::IngestReplica | Role::QueryReplica => {
                    let r = self.api.client.get(format!("{}/readyz", self.stages[&role])).send().await;
                    r.is_ok_and(|r| r.status().is_success())
                }
                // Alive is enough: a consolidator or retry stage retries until it can work.
                Role::Consolidate | Role::SecondConsolidator | Role::ExtraConsolidator(_) | Role::Retry => {
                    let r = self.api.client.get(format!("{}/healthz", self.stages[&role])).send().await;
                    r.is_ok_and(|r| r.status().is_success())
                }
            };
            if ready {
                return;
            }
            assert!(Instant::now() < deadline, "{role:?} not ready in 90 s:\n{}", self.log_tail());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The `ip:port` a stage with a listener of its own listens on.
    fn address(&self, role: Role) -> &str {
        let url = &self.stages[&role];
        url.split_once("://").map_or(url.as_str(), |(_, address)| address)
    }

    /// `kill -9`: no cleanup, no last commit.
    pub fn kill(&mut self, role: Role) {
        if let Some(mut child) = self.children.remove(&role) {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Ctrl-C to one process, then wait for it to exit cleanly.
    pub async fn interrupt(&mut self, role: Role) {
        let Some(mut child) = self.children.remove(&role) else {
            return;
        };
        kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "{role:?} exited with {status} on Ctrl-C:\n{}", self.log_tail());
                return;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{role:?} did not stop within 30 s of Ctrl-C:\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Ctrl-C to every process, consumers first.
    pub async fn stop(&mut self) {
        let extra: Vec<Role> =
            self.children.keys().copied().filter(|r| matches!(r, Role::ExtraConsolidator(_))).collect();
        let fixed = [
            Role::Retry,
            Role::SecondConsolidator,
            Role::Consolidate,
            Role::Gateway,
            Role::IngestReplica,
            Role::QueryReplica,
            Role::Auth,
            Role::Ingest,
            Role::Query,
            Role::Up,
            Role::Broker,
            Role::SecondBroker,
        ];
        for role in extra.into_iter().chain(fixed) {
            self.interrupt(role).await;
        }
    }

    /// Stops and starts every process that was running.
    pub async fn restart(&mut self) {
        let roles: Vec<Role> = self.children.keys().copied().collect();
        self.stop().await;
        for role in roles {
            self.launch(role).await;
        }
    }

    /// Creates a login through the CLI, the password on stdin.
    pub fn add_user(&self, merchant: &str, username: &str, password: &str) {
        let out = self.cli(&["users", "add", "--merchant", merchant, "--username", username], &format!("{password}\n"));
        assert!(out.status.success(), "users add failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Runs a `cashflow` command with this pipeline's config, `stdin` as its input.
    pub fn cli(&self, args: &[&str], stdin: &str) -> std::process::Output {
        use std::io::Write as _;
        let mut child = self
            .cashflow()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    }

    /// `cashflow dlq list --json`: the parked records.
    pub fn dlq_list(&self) -> Vec<Value> {
        self.try_dlq_list().unwrap_or_else(|e| panic!("dlq list failed: {e}"))
    }

    fn try_dlq_list(&self) -> Result<Vec<Value>, String> {
        let out = self.cli(&["dlq", "list", "--json"], "");
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
        Ok(listed["parked"].as_array().unwrap().clone())
    }

    /// Polls `dlq list` until it shows `want` records (up to `timeout`), and returns them. A
    /// broker too busy to answer in time is asked again.
    pub async fn await_parked(&self, want: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.try_dlq_list() {
                Ok(parked) if parked.len() >= want || Instant::now() > deadline => return parked,
                Err(e) if Instant::now() > deadline => panic!("dlq list failed: {e}"),
                Err(e) => eprintln!("dlq list failed, asking again: {}", e.lines().next().unwrap_or_default()),
                Ok(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(1000)).await;
        }
    }

    /// Replaces text in this pipeline's config file; takes effect for processes launched next.
    pub fn edit_config(&self, from: &str, to: &str) {
        let yaml = std::fs::read_to_string(&self.config).unwrap();
        assert!(yaml.contains(from), "pipeline.yaml lacks {from:?}");
        std::fs::write(&self.config, yaml.replace(from, to)).unwrap();
    }

    /// Sum of the high watermarks of a topic's partitions: how many records it ever received.
    pub fn records_in(&self, topic: &str) -> i64 {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.kafka)
            .set("broker.address.family", "v4")
            .set("group.id", "cashflow-tests")
            .create()
            .unwrap();
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
        let partitions: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
        assert!(!partitions.is_empty(), "topic {topic} has no partitions");
        partitions.iter().map(|p| consumer.fetch_watermarks(topic, *p, Duration::from_secs(10)).unwrap().1).sum()
    }

    /// The pipeline file the stages run with.
    pub fn pipeline_config(&self) -> cashflow_core::config::PipelineConfig {
        cashflow_core::config::PipelineConfig::load(&self.config).unwrap()
    }

    /// The pid of a running stage's process.
    pub fn pid(&self, role: Role) -> u32 {
        self.children[&role].id()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("cashflow.log")
    }

    /// Every log line (of every process) that contains `needle`.
    pub fn log_matching(&self, needle: &str) -> Vec<String> {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        log.lines().filter(|l| l.contains(needle)).map(str::to_owned).collect()
    }

    /// Log lines (of every process) that carry a secret: one of `secrets`, or anything shaped like
    /// a JWT (base64url JSON starting `eyJ`).
    pub fn log_leaks(&self, secrets: &[&str]) -> Vec<String> {
        let log = std::fs::read_to_string(self.log_path()).unwrap();
        assert!(log.lines().count() > 10, "the log is nearly empty; the scan would prove nothing");
        log.lines().filter(|l| l.contains("eyJ") || secrets.iter().any(|s| l.contains(s))).map(str::to_owned).collect()
    }

    /// The first errors and panics of the whole log, then its last lines.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let errors: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| {
                let noise = l.contains("rdkafka") || l.contains("TopicAlreadyExists");
                (l.contains("ERROR") && !noise) || l.contains("panicked")
            })
            .take(20)
            .collect();
        let tail = &lines[lines.len().saturating_sub(60)..];
        format!("first errors:\n{}\n...\nlast lines:\n{}", errors.join("\n"), tail.join("\n"))
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- cashflow log (last lines) ---\n{}", self.log_tail());
            // A failed run keeps its data dir (the whole log, the broker's and store's files).
            if let Ok(empty) = tempfile::TempDir::new() {
                let kept = std::mem::replace(&mut self.dir, empty).keep();
                eprintln!("--- kept for diagnosis: {} ---", kept.display());
            }
        }
        for (_, mut child) in std::mem::take(&mut self.children) {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGINT);
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The HTTP API.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub client: reqwest::Client,
}

impl Api {
    pub async fn token(&self, username: &str, password: &str) -> String {
        let r = self
            .client
            .post(format!("{}/auth/token", self.base))
            .json(&json!({"grant_type": "password", "username": username, "password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "token request failed");
        r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned()
    }

    pub async fn post_entry(&self, token: &str, body: &Value, idempotency_key: Option<&str>) -> reqwest::Response {
        let mut req = self.client.post(format!("{}/v1/lancamentos", self.base)).bearer_auth(token).json(body);
        if let Some(k) = idempotency_key {
            req = req.header("Idempotency-Key", k);
        }
        req.send().await.unwrap()
    }

    /// Like [`Api::post_entry`], but `None` when the gateway cannot be reached at all.
    pub async fn try_post_entry(&self, token: &str, body: &Value, idempotency_key: Option<&str>) -> Option<u16> {
        let mut req = self.client.post(format!("{}/v1/lancamentos", self.base)).bearer_auth(token).json(body);
        if let Some(k) = idempotency_key {
            req = req.header("Idempotency-Key", k);
        }
        req.send().await.ok().map(|r| r.status().as_u16())
    }

    /// `POST /v1/lancamentos/{id}/estorno`.
    pub async fn reverse(&self, token: &str, id: &str, body: &Value) -> reqwest::Response {
        let url = format!("{}/v1/lancamentos/{id}/estorno", self.base);
        self.client.post(url).bearer_auth(token).json(body).send().await.unwrap()
    }

    /// The Prometheus text served at `{base}/metrics`.
    pub async fn metrics(&self, base: &str) -> Metrics {
        let r = self.client.get(format!("{base}/metrics")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{base}/metrics");
        Metrics(r.text().await.unwrap())
    }

    /// `GET {base}{path}` as the token's merchant.
    pub async fn get(&self, token: &str, path: &str) -> reqwest::Response {
        self.client.get(format!("{}{path}", self.base)).bearer_auth(token).send().await.unwrap()
    }

    pub async fn daily(&self, token: &str, de: &str, ate: &str) -> Value {
        let r = self
            .client
            .get(format!("{}/v1/consolidado/diario?de={de}&ate={ate}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }
}

/// A scrape of `/metrics`.
pub struct Metrics(pub String);

impl Metrics {
    /// The value of the series whose line starts with `series` (name and labels, as exported).
    pub fn value(&self, series: &str) -> Option<f64> {
        let line = self.0.lines().find(|l| l.starts_with(series) && l[series.len()..].starts_with([' ', '{']))?;
        line.rsplit(' ').next()?.parse().ok()
    }

    /// Like [`Metrics::value`], but the series must be there.
    pub fn must(&self, series: &str) -> f64 {
        self.value(series).unwrap_or_else(|| panic!("{series} is not exported:\n{}", self.0))
    }

    /// Every series of the metric `name`.
    pub fn series(&self, name: &str) -> Vec<&str> {
        self.0.lines().filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{'])).collect()
    }
}
