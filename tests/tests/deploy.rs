//! The production deployment files in `deploy/`, checked with what runs on these machines:
//! `docker-compose config` on the Compose file, kubernetes-validate on the manifests, `cashflow
//! validate` on both pipeline files and `promtool check config` on both Prometheus configurations.
//! Then what those tools cannot see: that the services and replicas, probes, resource requests,
//! the consolidators' disruption budget, the gateway upstreams and the scrape targets agree with
//! each other. No image is built or pulled and no cluster is started (deploy/README.md says so).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use cashflow_tests::binary;
use serde::Deserialize;
use serde_norway::Value;

/// Every cashflow stage: its replicas in both shapes and its listen port.
const STAGES: [(&str, usize, u16); 6] = [
    ("gateway", 2, 8080),
    ("auth", 2, 8081),
    ("ingest", 2, 8082),
    ("query", 2, 8083),
    ("consolidate", 3, 8084),
    ("retry", 2, 8085),
];

/// The Kubernetes schemas the manifests must pass: an older release still supported by the
/// manifests (the pod-index label needs 1.28) and the newest the pinned validator bundles.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];

/// The checkout, found at run time: a test binary reused from another checkout's build must
/// still read this one's files.
fn repo() -> PathBuf {
    Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo")).join("..")
}

/// A checker this test runs, from `$env` or the PATH. A missing one fails the test, never skips it.
struct Tool {
    name: &'static str,
    env: &'static str,
    install: &'static str,
}

const DOCKER_COMPOSE: Tool = Tool {
    name: "docker-compose",
    env: "CASHFLOW_DOCKER_COMPOSE",
    install: "apt-get install docker-compose; .ci/run does",
};
const KUBERNETES_VALIDATE: Tool = Tool {
    name: "kubernetes-validate",
    env: "CASHFLOW_KUBERNETES_VALIDATE",
    install: "pip install kubernetes-validate==1.37.0; scripts/test does, in its venv",
};
const PROMTOOL: Tool =
    Tool { name: "promtool", env: "CASHFLOW_PROMTOOL", install: "apt-get install prometheus; .ci/run does" };

/// What a run printed, stdout and stderr, and whether it succeeded.
struct Ran {
    ok: bool,
    stdout: String,
    text: String,
}

impl Tool {
    /// The tool, to run from the repository root.
    fn command(&self) -> Command {
        let path = std::env::var(self.env).unwrap_or_else(|_| self.name.to_owned());
        let found = Command::new(&path).arg("--version").output().is_ok_and(|o| o.status.success());
        assert!(found, "{} not found at {path:?}: install it ({}) or set {}", self.name, self.install, self.env);
        let mut command = Command::new(path);
        command.current_dir(repo());
        command
    }
}

fn run(command: &mut Command) -> Ran {
    let out = command.output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let text = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    Ran { ok: out.status.success(), stdout, text }
}

/// Every YAML document of `text`.
fn documents(text: &str, what: &str) -> Vec<Value> {
    let docs = serde_norway::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{what}: {e}")));
    docs.filter(|d| !d.is_null()).collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// A scalar as text (`3`, `"3"` and `true` alike), or "" for anything else.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => String::new(),
    }
}

fn seq(v: &Value) -> &[Value] {
    v.as_sequence().map_or(&[], Vec::as_slice)
}

fn texts(v: &Value) -> Vec<String> {
    seq(v).iter().map(text).collect()
}

/// `stage-0`, `stage-1`, ... as `format` names them.
fn replicas(stage: &str, format: impl Fn(&str, usize) -> String) -> Vec<String> {
    let (_, n, _) = STAGES.iter().find(|(s, _, _)| *s == stage).expect("a stage");
    (0..*n).map(|i| format(stage, i)).collect()
}

/// `deploy/compose.yaml` as `docker-compose config` normalizes it, with these passwords.
fn compose_config() -> Value {
    let empty = tempfile::NamedTempFile::new().unwrap();
    let ran = run(DOCKER_COMPOSE
        .command()
        .arg("--env-file")
        .arg(empty.path())
        .args(["-f", "deploy/compose.yaml", "config"])
        .env("POSTGRES_PASSWORD", "0123abcd")
        .env("GRAFANA_ADMIN_PASSWORD", "4567ef")
        .env("CASHFLOW_RELATORIOS_PASSWORD", "89ab01"));
    assert!(ran.ok, "docker-compose config refused deploy/compose.yaml:\n{}", ran.text);
    documents(&ran.stdout, "docker-compose config").remove(0)
}

#[test]
fn compose_config_accepts_the_file_and_it_runs_every_service_with_its_replicas() {
    let config = compose_config();
    let services = config["services"].as_mapping().expect("services");
    let names: BTreeSet<String> = services.keys().map(text).collect();
    let mut expected: BTreeSet<String> =
        ["kafka-0", "kafka-1", "kafka-2", "postgres", "prometheus", "grafana", "keys"].map(String::from).into();
    for (stage, _, _) in STAGES {
        expected.extend(replicas(stage, |s, i| format!("{s}-{i}")));
    }
    assert_eq!(names, expected, "the services of deploy/compose.yaml");

    for (stage, _, port) in STAGES {
        for name in replicas(stage, |s, i| format!("{s}-{i}")) {
            let s = &config["services"][name.as_str()];
            assert_eq!(texts(&s["command"]), ["run", stage], "{name} runs its stage");
            let check = texts(&s["healthcheck"]["test"]).join(" ");
            assert!(check.contains(&format!("127.0.0.1:{port}/readyz")), "{name}'s health check: {check}");
            let dockerfile = Path::new(&text(&s["build"]["context"])).join(text(&s["build"]["dockerfile"]));
            assert!(dockerfile.is_file(), "{name} builds from {}, which does not exist", dockerfile.display());
        }
    }
    let node_ids: BTreeSet<String> = (0..3)
        .map(|i| text(&config["services"][format!("kafka-{i}").as_str()]["environment"]["KAFKA_NODE_ID"]))
        .collect();
    assert_eq!(node_ids, ["0", "1", "2"].map(String::from).into(), "three KRaft nodes with their own ids");
    for i in 0..3 {
        let env = &config["services"][format!("kafka-{i}").as_str()]["environment"];
        assert_eq!(text(&env["KAFKA_PROCESS_ROLES"]), "broker,controller");
        assert_eq!(text(&env["KAFKA_CONTROLLER_QUORUM_VOTERS"]), "0@kafka-0:9093,1@kafka-1:9093,2@kafka-2:9093");
        assert_eq!(text(&env["KAFKA_ADVERTISED_LISTENERS"]), format!("PLAINTEXT://kafka-{i}:9092"));
        assert_eq!(text(&env["KAFKA_MIN_INSYNC_REPLICAS"]), "2");
    }
    // docker-compose does not check that the files it mounts exist.
    for (name, service) in services {
        for volume in texts(&service["volumes"]) {
            let source = volume.split(':').next().unwrap_or_default();
            if source.starts_with('/') {
                assert!(Path::new(source).exists(), "{} mounts {source}, which does not exist", text(name));
            }
        }
    }
}

#[test]
fn compose_config_refuses_to_run_without_the_store_password() {
    let empty = tempfile::NamedTempFile::new().unwrap();
    let ran = run(DOCKER_COMPOSE
        .command()
        .arg("--env-file")
        .arg(empty.path())
        .args(["-f", "deploy/compose.yaml", "config", "-q"])
        .env_remove("POSTGRES_PASSWORD")
        .env("GRAFANA_ADMIN_PASSWORD", "4567ef")
        .env("CASHFLOW_RELATORIOS_PASSWORD", "89ab01"));
    assert!(!ran.ok && ran.text.contains("POSTGRES_PASSWORD"), "{}", ran.text);
}

/// The Compose pipeline, and the environment Compose gives it (that of `ingest-0`).
fn compose_pipeline(config: &Value) -> (PathBuf, Vec<(String, String)>) {
    let env = &config["services"]["ingest-0"]["environment"];
    let vars = ["KAFKA_BROKERS", "DATABASE_URL"].map(|k| (k.to_owned(), text(&env[k]))).to_vec();
    (repo().join("deploy/compose/pipeline.yaml"), vars)
}

#[test]
fn the_compose_pipeline_names_every_replica_and_prometheus_scrapes_every_one() {
    let config = compose_config();
    let (path, _) = compose_pipeline(&config);
    let pipeline = documents(&read(&path), "deploy/compose/pipeline.yaml").remove(0);
    let services = &pipeline["services"];
    for (stage, _, port) in STAGES {
        assert_eq!(text(&services[stage]["listen"]), format!("0.0.0.0:{port}"), "services.{stage}.listen");
    }
    for stage in ["auth", "ingest", "query"] {
        let port = STAGES.iter().find(|(s, ..)| *s == stage).expect("a stage").2;
        let expected = replicas(stage, |s, i| format!("http://{s}-{i}:{port}"));
        assert_eq!(texts(&services["gateway"]["upstreams"][stage]), expected, "services.gateway.upstreams.{stage}");
    }
    let gateways: Vec<String> = replicas("gateway", |s, i| {
        text(&config["services"][format!("{s}-{i}").as_str()]["networks"]["default"]["ipv4_address"])
    });
    assert_eq!(texts(&services["auth"]["trusted_proxies"]), gateways, "auth trusts the gateways' fixed addresses");

    let targets =
        documents(&read(&repo().join("deploy/compose/prometheus-targets/stages.yml")), "stages.yml").remove(0);
    let scraped: Vec<(String, Vec<String>)> =
        seq(&targets).iter().map(|t| (text(&t["labels"]["service"]), texts(&t["targets"]))).collect();
    let expected: Vec<(String, Vec<String>)> =
        STAGES.iter().map(|(s, _, port)| (s.to_string(), replicas(s, |s, i| format!("{s}-{i}:{port}")))).collect();
    assert_eq!(scraped, expected, "deploy/compose/prometheus-targets/stages.yml");
}

/// Every manifest of `deploy/kubernetes/`, in order.
fn manifest_files() -> Vec<PathBuf> {
    let dir = repo().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.retain(|p| p.extension().is_some_and(|x| x == "yaml"));
    files.sort();
    assert!(files.len() >= 10, "manifests in {}: {files:?}", dir.display());
    files
}

fn manifests() -> Vec<Value> {
    manifest_files().iter().flat_map(|f| documents(&read(f), &f.display().to_string())).collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    let found = docs.iter().find(|d| text(&d["kind"]) == kind && text(&d["metadata"]["name"]) == name);
    found.unwrap_or_else(|| panic!("no {kind} {name} in deploy/kubernetes"))
}

fn workloads(docs: &[Value]) -> impl Iterator<Item = &Value> {
    docs.iter().filter(|d| matches!(text(&d["kind"]).as_str(), "Deployment" | "StatefulSet"))
}

/// Whether every label of `selector` is on `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let selector = selector.as_mapping().expect("a selector's labels");
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[test]
fn kubernetes_manifests_pass_their_schemas() {
    let files = manifest_files();
    let count = manifests().len();
    for version in KUBERNETES_VERSIONS {
        let ran = run(KUBERNETES_VALIDATE.command().args(["-k", version, "--strict"]).args(&files));
        assert!(ran.ok, "kubernetes-validate {version} refused a manifest:\n{}", ran.text);
        let passed = ran.text.lines().filter(|l| l.contains(" passed for resource ")).count();
        assert_eq!(passed, count, "every resource checked against {version}:\n{}", ran.text);
    }
}

#[test]
fn every_workload_has_probes_and_requests_and_the_budget_covers_the_consolidators() {
    let docs = manifests();
    for w in workloads(&docs) {
        let name = text(&w["metadata"]["name"]);
        let containers = seq(&w["spec"]["template"]["spec"]["containers"]);
        assert!(!containers.is_empty(), "{name} has containers");
        for c in containers {
            for probe in ["readinessProbe", "livenessProbe"] {
                assert!(c[probe].is_mapping(), "{name}/{} has no {probe}", text(&c["name"]));
            }
            for resource in ["cpu", "memory"] {
                assert!(!text(&c["resources"]["requests"][resource]).is_empty(), "{name} requests no {resource}");
            }
        }
    }
    for (stage, n, _) in STAGES {
        assert_eq!(text(&find_workload(&docs, stage)["spec"]["replicas"]), n.to_string(), "{stage}'s replicas");
    }
    assert_eq!(text(&find(&docs, "StatefulSet", "kafka")["spec"]["replicas"]), "3");

    let budget = find(&docs, "PodDisruptionBudget", "consolidate");
    let selector = &budget["spec"]["selector"]["matchLabels"];
    for w in workloads(&docs) {
        let chosen = selects(selector, &w["spec"]["template"]["metadata"]["labels"]);
        let name = text(&w["metadata"]["name"]);
        assert_eq!(chosen, name == "consolidate", "the budget selects the consolidators and no others: {name}");
    }
    // Either way of saying it, a drain may take a consolidator, and never all of them.
    let replicas: usize = text(&find_workload(&docs, "consolidate")["spec"]["replicas"]).parse().expect("replicas");
    let (max, min) = (text(&budget["spec"]["maxUnavailable"]), text(&budget["spec"]["minAvailable"]));
    let unavailable = match max.parse::<usize>() {
        Ok(n) => n,
        Err(_) => replicas.saturating_sub(min.parse().expect("maxUnavailable or minAvailable, a number")),
    };
    assert!((1..replicas).contains(&unavailable), "the budget lets {unavailable} of {replicas} consolidators go");
}

fn find_workload<'a>(docs: &'a [Value], name: &str) -> &'a Value {
    let found = workloads(docs).find(|w| text(&w["metadata"]["name"]) == name);
    found.unwrap_or_else(|| panic!("no workload {name} in deploy/kubernetes"))
}

/// The names given after `create configmap` or `create secret generic` in deploy/README.md, with
/// their `--from-file` paths.
fn documented(kind: &str) -> Vec<(String, Vec<String>)> {
    let readme = read(&repo().join("deploy/README.md"));
    let words = match kind {
        "ConfigMap" => "create configmap ",
        _ => "create secret generic ",
    };
    let lines = readme.lines().filter_map(|l| l.split_once(words).map(|(_, rest)| rest));
    lines
        .map(|rest| {
            let mut args = rest.split_whitespace();
            let name = args.next().unwrap_or_default().to_owned();
            (name, args.filter_map(|a| a.strip_prefix("--from-file=")).map(str::to_owned).collect())
        })
        .collect()
}

#[test]
fn every_config_map_and_secret_a_pod_uses_is_made_and_its_keys_exist() {
    let docs = manifests();
    for w in workloads(&docs) {
        let pod = &w["spec"]["template"]["spec"];
        let mut used: Vec<(&str, String, Vec<String>)> = Vec::new();
        for v in seq(&pod["volumes"]) {
            let keys = seq(&v["configMap"]["items"]).iter().map(|i| text(&i["key"])).collect();
            if v["configMap"].is_mapping() {
                used.push(("ConfigMap", text(&v["configMap"]["name"]), keys));
            }
            if v["secret"].is_mapping() {
                used.push(("Secret", text(&v["secret"]["secretName"]), Vec::new()));
            }
        }
        for e in seq(&pod["containers"]).iter().flat_map(|c| seq(&c["env"])) {
            for (kind, reference) in [("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")] {
                let r = &e["valueFrom"][reference];
                if r.is_mapping() {
                    used.push((kind, text(&r["name"]), vec![text(&r["key"])]));
                }
            }
        }
        for (kind, name, keys) in used {
            let defined = docs.iter().find(|d| text(&d["kind"]) == kind && text(&d["metadata"]["name"]) == name);
            match defined {
                Some(d) => {
                    for key in keys {
                        assert!(!d["data"][key.as_str()].is_null(), "{kind} {name} has no key {key}");
                    }
                }
                None => {
                    let made = documented(kind).into_iter().find(|(n, _)| *n == name);
                    let (_, files) = made.unwrap_or_else(|| {
                        let pod = text(&w["metadata"]["name"]);
                        panic!("{pod} uses {kind} {name}, which neither the manifests nor deploy/README.md make")
                    });
                    for file in files.iter().filter(|_| kind == "ConfigMap") {
                        assert!(
                            repo().join(file).exists(),
                            "deploy/README.md makes {name} from {file}, which does not exist"
                        );
                    }
                }
            }
        }
    }
}

/// The pipeline in the ConfigMap, and the environment the stage pods give it.
fn kubernetes_pipeline(docs: &[Value]) -> (String, Vec<(String, String)>) {
    let config = find(docs, "ConfigMap", "cashflow-pipeline");
    let ingest = &find_workload(docs, "ingest")["spec"]["template"]["spec"]["containers"][0];
    let url = seq(&ingest["env"]).iter().find(|e| text(&e["name"]) == "DATABASE_URL").map(|e| text(&e["value"]));
    let url = url.expect("DATABASE_URL on the ingest pods").replace("$(POSTGRES_PASSWORD)", "0123abcd");
    let vars =
        vec![("KAFKA_BROKERS".to_owned(), text(&config["data"]["kafka-brokers"])), ("DATABASE_URL".to_owned(), url)];
    (text(&config["data"]["pipeline.yaml"]), vars)
}

#[test]
fn the_kubernetes_pipeline_names_every_replica_and_prometheus_finds_every_stage() {
    let docs = manifests();
    let (yaml, _) = kubernetes_pipeline(&docs);
    let pipeline = documents(&yaml, "the ConfigMap cashflow-pipeline").remove(0);
    let headless = |name: &str, stage: &str, port: u16| {
        let service = find(&docs, "Service", name);
        let pods = &find_workload(&docs, stage)["spec"]["template"]["metadata"]["labels"];
        assert_eq!(text(&service["spec"]["clusterIP"]), "None", "Service {name} is headless");
        assert_eq!(text(&service["spec"]["publishNotReadyAddresses"]), "true", "Service {name} lists every pod");
        assert!(selects(&service["spec"]["selector"], pods), "Service {name} selects the {stage} pods");
        assert_eq!(text(&service["spec"]["ports"][0]["port"]), port.to_string(), "Service {name}'s port");
    };
    for (stage, _, port) in STAGES {
        assert_eq!(text(&pipeline["services"][stage]["listen"]), format!("0.0.0.0:{port}"), "services.{stage}.listen");
        let container = &find_workload(&docs, stage)["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(text(&container["ports"][0]["containerPort"]), port.to_string(), "{stage}'s container port");
        assert_eq!(texts(&container["args"]), ["run", stage], "{stage}'s pods run their stage");
    }
    for stage in ["auth", "ingest", "query"] {
        let port = STAGES.iter().find(|(s, ..)| *s == stage).expect("a stage").2;
        let set = find(&docs, "StatefulSet", stage);
        let service = text(&set["spec"]["serviceName"]);
        headless(&service, stage, port);
        let expected = replicas(stage, |s, i| format!("http://{s}-{i}.{service}:{port}"));
        assert_eq!(texts(&pipeline["services"]["gateway"]["upstreams"][stage]), expected, "upstreams.{stage}");
    }

    let prometheus =
        documents(&text(&find(&docs, "ConfigMap", "prometheus-config")["data"]["prometheus.yml"]), "prometheus.yml");
    let job = &prometheus[0]["scrape_configs"][0];
    assert_eq!(text(&job["job_name"]), "cashflow-stages", "the job name the shipped rules match");
    let found: Vec<(String, String)> =
        seq(&job["dns_sd_configs"]).iter().map(|c| (text(&c["names"][0]), text(&c["port"]))).collect();
    assert_eq!(found.len(), STAGES.len(), "one DNS name per stage: {found:?}");
    for ((name, port), (stage, _, listen)) in found.iter().zip(STAGES) {
        assert_eq!(port, &listen.to_string(), "{stage} is scraped on its port");
        assert!(name.starts_with(stage), "the service label of {name} is its stage, {stage}");
        headless(name, stage, listen);
    }
}

/// `cashflow validate` on `file` with `vars` set.
fn validate(file: &Path, vars: &[(String, String)]) {
    let mut command = Command::new(binary("cashflow"));
    command.arg("validate").arg(file).envs(vars.iter().map(|(k, v)| (k, v)));
    let ran = run(&mut command);
    assert!(ran.ok && ran.stdout.contains(": ok"), "cashflow validate {}:\n{}", file.display(), ran.text);
}

#[test]
fn cashflow_validate_accepts_both_pipelines_with_their_environment() {
    let (path, vars) = compose_pipeline(&compose_config());
    validate(&path, &vars);
    let (yaml, vars) = kubernetes_pipeline(&manifests());
    let file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    std::fs::write(file.path(), yaml).unwrap();
    validate(file.path(), &vars);
}

/// `promtool check config` on `config` beside the shipped rules and, for Compose, its targets.
fn promtool_check(config: &str, targets: Option<&Path>) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    for (from, to) in [(repo().join("observability/prometheus/rules"), "rules")]
        .into_iter()
        .chain(targets.map(|t| (t.to_owned(), "targets")))
    {
        std::fs::create_dir_all(dir.path().join(to)).unwrap();
        for file in std::fs::read_dir(&from).unwrap() {
            let file = file.unwrap().path();
            std::fs::copy(&file, dir.path().join(to).join(file.file_name().unwrap())).unwrap();
        }
    }
    let ran = run(PROMTOOL.command().args(["check", "config"]).arg(dir.path().join("prometheus.yml")));
    let rules = ran.text.lines().any(|l| l.contains("SUCCESS") && l.contains("rules found"));
    assert!(ran.ok && rules && !ran.text.contains("FAILED"), "promtool check config:\n{}", ran.text);
}

#[test]
fn promtool_accepts_both_prometheus_configs_with_the_shipped_rules() {
    let shipped = read(&repo().join("observability/prometheus/prometheus.yml"));
    promtool_check(&shipped, Some(&repo().join("deploy/compose/prometheus-targets")));
    let docs = manifests();
    promtool_check(&text(&find(&docs, "ConfigMap", "prometheus-config")["data"]["prometheus.yml"]), None);
}
