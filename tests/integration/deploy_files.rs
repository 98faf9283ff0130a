//! `deploy/` as an operator gets it: every YAML and JSON file parses; the Grafana dashboard and
//! the alert rules query only metrics that `/metrics` really exports (checked against a server
//! after traffic that makes every metric appear), and the dashboard shows every metric; the
//! PrometheusRule carries the same rules as `alerts.yml`; the Kubernetes manifests, the compose
//! file and the Dockerfile agree with each other and with the server (ports, probe paths,
//! labels, configuration); and promtool accepts the Prometheus files (CI has promtool).

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use pilot_bridge::config::Config;
use pilot_bridge::domain::{Plan, Scope};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

/// Every file under `deploy/`, relative to the repository root, sorted.
fn deploy_files() -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&repo().join("deploy"), &mut files);
    let mut rel: Vec<String> = files
        .iter()
        .map(|p| {
            p.strip_prefix(repo())
                .expect("under the repo")
                .to_string_lossy()
                .replace('\\', "/")
        })
        .collect();
    rel.sort();
    rel
}

/// All documents of a YAML file (Kubernetes files may hold several), as JSON values.
fn yaml_docs(rel: &str) -> Vec<Value> {
    let text = read(rel);
    let mut docs = Vec::new();
    for doc in serde_norway::Deserializer::from_str(&text) {
        let v = Value::deserialize(doc).unwrap_or_else(|e| panic!("{rel} is not valid YAML: {e}"));
        if !v.is_null() {
            docs.push(v);
        }
    }
    docs
}

fn yaml(rel: &str) -> Value {
    let mut docs = yaml_docs(rel);
    assert_eq!(docs.len(), 1, "{rel}: expected one YAML document");
    docs.remove(0)
}

fn json_file(rel: &str) -> Value {
    serde_json::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not valid JSON: {e}"))
}

/// The Kubernetes objects of `deploy/k8s`, by kind (one object of each kind).
fn k8s_objects() -> BTreeMap<String, Value> {
    let mut objects = BTreeMap::new();
    for file in deploy_files() {
        if !file.starts_with("deploy/k8s/") || !file.ends_with(".yaml") {
            continue;
        }
        for doc in yaml_docs(&file) {
            let kind = doc["kind"].as_str().expect("kind").to_string();
            assert!(
                objects.insert(kind.clone(), doc).is_none(),
                "two {kind} objects"
            );
        }
    }
    objects
}

// ----------------------------------------------------------------------------------------------
// Parsing

#[test]
fn every_deploy_file_parses() {
    let files = deploy_files();
    for required in [
        "deploy/Dockerfile",
        "deploy/README.md",
        "deploy/compose.yaml",
        "deploy/pilot-bridge.toml",
        "deploy/prometheus/prometheus.yml",
        "deploy/prometheus/alerts.yml",
        "deploy/prometheus/alerts_test.yml",
        "deploy/grafana/dashboards/pilot-bridge.json",
        "deploy/grafana/provisioning/datasources/prometheus.yml",
        "deploy/grafana/provisioning/dashboards/pilot-bridge.yml",
        "deploy/k8s/kustomization.yaml",
        "deploy/k8s/deployment.yaml",
        "deploy/k8s/pvc.yaml",
        "deploy/k8s/service.yaml",
        "deploy/k8s/configmap.yaml",
        "deploy/k8s/servicemonitor.yaml",
        "deploy/k8s/prometheusrule.yaml",
    ] {
        assert!(files.iter().any(|f| f == required), "{required} is missing");
    }
    let (mut yamls, mut jsons) = (0, 0);
    for file in &files {
        if file.ends_with(".yml") || file.ends_with(".yaml") {
            assert!(!yaml_docs(file).is_empty(), "{file} is empty");
            yamls += 1;
        } else if file.ends_with(".json") {
            assert!(json_file(file).is_object(), "{file}: expected an object");
            jsons += 1;
        }
    }
    assert!(
        yamls >= 13 && jsons >= 1,
        "{yamls} YAML and {jsons} JSON files"
    );
}

/// The shipped configuration files load with the server's own loader (unknown keys are
/// errors there), so an operator copying them gets a server that starts.
#[test]
fn shipped_configuration_files_load() {
    let default = Config::from_toml(&read("deploy/pilot-bridge.toml")).expect("default config");
    default.validate().expect("default config is valid");

    let cm = &k8s_objects()["ConfigMap"];
    let toml = cm["data"]["pilot-bridge.toml"]
        .as_str()
        .expect("ConfigMap data pilot-bridge.toml");
    let k8s = Config::from_toml(toml).expect("ConfigMap's pilot-bridge.toml");
    k8s.validate().expect("ConfigMap config is valid");
    assert_eq!(k8s.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(k8s.data_dir, PathBuf::from("/data"));
}

// ----------------------------------------------------------------------------------------------
// Kubernetes, compose, Dockerfile

fn labels_match(selector: &Value, labels: &Value) -> bool {
    let sel = selector.as_object().expect("selector labels");
    !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[test]
fn kubernetes_manifests_agree() {
    let objects = k8s_objects();
    let kinds: BTreeSet<&str> = objects.keys().map(String::as_str).collect();
    for kind in [
        "Deployment",
        "PersistentVolumeClaim",
        "Service",
        "ServiceMonitor",
        "PrometheusRule",
        "ConfigMap",
        "Kustomization",
    ] {
        assert!(kinds.contains(kind), "no {kind} in deploy/k8s");
    }

    // kustomization.yaml lists every manifest of the directory.
    let listed: BTreeSet<String> = objects["Kustomization"]["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| format!("deploy/k8s/{}", r.as_str().expect("resource path")))
        .collect();
    let present: BTreeSet<String> = deploy_files()
        .into_iter()
        .filter(|f| {
            f.starts_with("deploy/k8s/")
                && f.ends_with(".yaml")
                && f != "deploy/k8s/kustomization.yaml"
        })
        .collect();
    assert_eq!(listed, present, "kustomization resources");

    let deploy = &objects["Deployment"];
    let spec = &deploy["spec"];
    // The embedded SQLite store has one writer: never two pods at once.
    assert_eq!(spec["replicas"], 1);
    assert_eq!(spec["strategy"]["type"], "Recreate");
    let pod = &spec["template"]["spec"];
    let pod_labels = &spec["template"]["metadata"]["labels"];
    assert!(labels_match(&spec["selector"]["matchLabels"], pod_labels));
    assert!(pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(0) >= 15);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);

    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    for r in ["cpu", "memory"] {
        assert!(c["resources"]["requests"][r].is_string(), "requests.{r}");
        assert!(c["resources"]["limits"][r].is_string(), "limits.{r}");
    }
    let port = &c["ports"][0];
    assert_eq!(port["name"], "http");
    assert_eq!(port["containerPort"], 8080);
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("arg"))
        .collect();
    assert_eq!(
        args,
        ["serve", "--listen", "0.0.0.0:8080", "--data-dir", "/data"]
    );
    for (probe, path) in [
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
        ("startupProbe", "/healthz"),
    ] {
        assert_eq!(c[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(c[probe]["httpGet"]["port"], "http", "{probe}");
    }

    // Volumes: the PVC at /data, the ConfigMap where PILOT_BRIDGE_CONFIG points.
    let volumes = pod["volumes"].as_array().expect("volumes");
    let volume = |name: &str| {
        volumes
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("volume {name}"))
    };
    let mount = |path: &str| {
        c["volumeMounts"]
            .as_array()
            .expect("volumeMounts")
            .iter()
            .find(|m| m["mountPath"] == path)
            .unwrap_or_else(|| panic!("no volume mounted at {path}"))
    };
    let data = volume(mount("/data")["name"].as_str().expect("mount name"));
    assert_eq!(
        data["persistentVolumeClaim"]["claimName"],
        objects["PersistentVolumeClaim"]["metadata"]["name"]
    );
    let config_path = c["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "PILOT_BRIDGE_CONFIG")
        .expect("PILOT_BRIDGE_CONFIG")["value"]
        .as_str()
        .expect("config path");
    let (dir, file) = config_path.rsplit_once('/').expect("config path");
    let config_volume = volume(mount(dir)["name"].as_str().expect("mount name"));
    assert_eq!(
        config_volume["configMap"]["name"],
        objects["ConfigMap"]["metadata"]["name"]
    );
    assert!(objects["ConfigMap"]["data"][file].is_string());

    // Service → pods, ServiceMonitor → Service, on the named port.
    let svc = &objects["Service"];
    assert!(labels_match(&svc["spec"]["selector"], pod_labels));
    let svc_port = &svc["spec"]["ports"][0];
    assert_eq!(svc_port["targetPort"], "http");
    let sm = &objects["ServiceMonitor"];
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    assert!(labels_match(
        &sm["spec"]["selector"]["matchLabels"],
        &svc["metadata"]["labels"]
    ));
    assert_eq!(sm["spec"]["endpoints"][0]["port"], svc_port["name"]);
    assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
    // The ServiceMonitor's job label is the Service name; the alert rules expect it.
    assert_eq!(svc["metadata"]["name"], "pilot-bridge");

    // The PrometheusRule wraps alerts.yml unchanged.
    let pr = &objects["PrometheusRule"];
    assert_eq!(pr["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(
        pr["spec"]["groups"],
        yaml("deploy/prometheus/alerts.yml")["groups"],
        "deploy/k8s/prometheusrule.yaml and deploy/prometheus/alerts.yml differ"
    );
}

/// Files a compose bind mount or the Dockerfile expects exist, and the compose file wires the
/// services together as the Prometheus and Grafana files expect.
#[test]
fn compose_and_dockerfile_refer_to_real_files() {
    let compose = yaml("deploy/compose.yaml");
    let services = compose["services"].as_object().expect("services");
    for name in ["pilot-bridge", "prometheus", "grafana"] {
        assert!(services.contains_key(name), "compose service {name}");
    }
    let pb = &services["pilot-bridge"];
    assert_eq!(pb["build"]["context"], "..");
    assert_eq!(pb["build"]["dockerfile"], "deploy/Dockerfile");
    let mut grafana_dashboards = None;
    for (name, service) in services {
        for v in service["volumes"].as_array().into_iter().flatten() {
            let v = v.as_str().expect("short volume syntax");
            let mut parts = v.split(':');
            let (source, target) = (parts.next().unwrap(), parts.next().expect("target"));
            if let Some(rel) = source.strip_prefix("./") {
                let path = repo().join("deploy").join(rel);
                assert!(path.exists(), "{name}: {source} does not exist");
                if rel == "grafana/dashboards" {
                    grafana_dashboards = Some(target.to_string());
                }
            } else {
                let named = compose["volumes"].as_object().expect("named volumes");
                assert!(named.contains_key(source), "{name}: volume {source}");
            }
        }
    }
    assert!(pb["volumes"][0].as_str().unwrap().ends_with(":/data"));
    // Prometheus scrapes the compose service by name on the port the image listens on.
    let prom = yaml("deploy/prometheus/prometheus.yml");
    let targets = &prom["scrape_configs"][0]["static_configs"][0]["targets"];
    assert_eq!(targets[0], "pilot-bridge:8080");
    assert_eq!(prom["scrape_configs"][0]["job_name"], "pilot-bridge");
    // Grafana's dashboard provider reads where compose mounts the dashboards.
    let provider = yaml("deploy/grafana/provisioning/dashboards/pilot-bridge.yml");
    assert_eq!(
        Some(
            provider["providers"][0]["options"]["path"]
                .as_str()
                .unwrap()
        ),
        grafana_dashboards.as_deref()
    );
    let ds = yaml("deploy/grafana/provisioning/datasources/prometheus.yml");
    assert_eq!(ds["datasources"][0]["url"], "http://prometheus:9090");

    // Dockerfile: every COPY from the build context exists and is not excluded by
    // .dockerignore; the image listens where the health check, EXPOSE and compose look.
    let dockerfile = read("deploy/Dockerfile");
    let ignored = read(".dockerignore");
    for line in dockerfile.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("COPY ") else {
            continue;
        };
        if rest.starts_with("--from") {
            continue;
        }
        let words: Vec<&str> = rest.split_whitespace().collect();
        for src in &words[..words.len() - 1] {
            assert!(repo().join(src).exists(), "Dockerfile copies missing {src}");
            let top = src.split('/').next().unwrap();
            assert!(
                !ignored
                    .lines()
                    .any(|l| l.trim().trim_end_matches('/') == top),
                ".dockerignore excludes {src}"
            );
        }
    }
    assert!(dockerfile.contains("EXPOSE 8080"));
    assert!(dockerfile.contains("http://127.0.0.1:8080/healthz"));
    assert!(
        dockerfile.contains(r#"CMD ["serve", "--listen", "0.0.0.0:8080", "--data-dir", "/data"]"#)
    );
    assert!(dockerfile.contains("USER 10001"));
    for ignored_dir in ["target/", ".git/", "data/"] {
        assert!(
            ignored.lines().any(|l| l == ignored_dir),
            ".dockerignore {ignored_dir}"
        );
    }
}

// ----------------------------------------------------------------------------------------------
// Metric names in the dashboard and the alert rules

/// Every `pilot_bridge_*` name in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("pilot_bridge_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// The metric family a sample name belongs to (histogram series drop their suffix).
fn family(name: &str) -> &str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if base.ends_with("_seconds") {
                return base;
            }
        }
    }
    name
}

/// `(panel title, expr)` of every query of the dashboard.
fn dashboard_queries(dash: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        let mut all = vec![panel];
        all.extend(panel["panels"].as_array().into_iter().flatten());
        for p in all {
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str().expect("target expr").to_string();
                out.push((p["title"].as_str().unwrap_or("").to_string(), expr));
            }
        }
    }
    out
}

/// Every metric name the server defines (`src/telemetry/mod.rs`), including those of modes the
/// traffic below does not start (upstream backend, Redis state store, chat provider): panels and
/// alert rules may use those even though this test's /metrics does not export them.
fn defined_metric_names() -> BTreeSet<String> {
    metric_names(&read("src/telemetry/mod.rs"))
}

const KEY: &str = "op_live_DeployFilesTestKey0123456789abcdefghij";

/// Drives traffic that makes every metric of the embedded mode appear, then returns the sample
/// names `/metrics` exports.
async fn exported_metrics() -> BTreeSet<String> {
    let s = common::start_with(|c: &mut Config| c.webhooks.allow_private_targets = true).await;
    s.store()
        .write(|tx| {
            pilot_bridge::demo::seed(tx)?;
            pilot_bridge::store::orgs::update(
                tx,
                pilot_bridge::demo::DEMO_ORG,
                &pilot_bridge::store::orgs::OrgChanges {
                    rate_limit: Some(0),
                    ..Default::default()
                },
            )?;
            pilot_bridge::demo::ensure_key(tx, Some(KEY))
        })
        .await
        .expect("seed demo");
    let api = s.client(KEY);
    let native = "/native/outreachpilot";

    // A webhook receiver on loopback; the note below is delivered to it.
    let (delivered_tx, mut delivered) = tokio::sync::mpsc::unbounded_channel::<()>();
    let receiver = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind receiver");
    let receiver_url = format!("http://{}/hook", receiver.local_addr().expect("addr"));
    let hook = axum::Router::new().fallback(move || {
        let tx = delivered_tx.clone();
        async move {
            let _ = tx.send(());
            axum::http::StatusCode::NO_CONTENT
        }
    });
    tokio::spawn(async move {
        let _ = axum::serve(receiver, hook).await;
    });
    api.post(
        "/webhooks",
        json!({ "url": receiver_url, "events": ["note.created"] }),
    )
    .await
    .ok(201);

    // A read, a write replayed by its idempotency key, and the key reused for another write.
    api.post(
        native,
        json!({ "action": { "type": "lookup_person", "personName": "Sarah Chen", "company": "Notion" } }),
    )
    .await
    .ok(200);
    let note = json!({ "action": { "type": "note_on_contact", "contactRef": "Sarah Chen", "note": "Met after the demo." }, "idempotencyKey": "deploy-note-1" });
    api.post(native, note.clone()).await.ok(200);
    let replay = api.post(native, note).await;
    assert_eq!(replay.ok(200)["mode"], "duplicate");
    api.post(native, json!({ "action": { "type": "note_on_contact", "contactRef": "Sarah Chen", "note": "Something else." }, "idempotencyKey": "deploy-note-1" }))
        .await
        .err(422, "IDEMPOTENCY_KEY_REUSED");

    // A dangerous write: asked, then confirmed.
    let asked = api
        .post(native, json!({ "action": { "type": "add_to_campaign", "contactRef": "Sarah Chen", "campaignRef": "Seed founders" } }))
        .await;
    let data = asked.ok(200);
    assert_eq!(data["mode"], "confirmation_required");
    let pid = data["pending_action_id"]
        .as_str()
        .expect("pending_action_id")
        .to_string();
    api.post(native, json!({ "pendingActionId": pid, "confirmed": true }))
        .await
        .ok(200);

    // A WebSocket session with an application ping and a request.
    let url = format!("ws://{}/api/v1/native/outreachpilot/ws", s.server.addr);
    let mut req = url.into_client_request().expect("ws request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {KEY}").parse().expect("header"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("upgrade");
    for frame in [
        json!({ "type": "ping" }),
        json!({ "id": "1", "action": { "type": "lookup_person", "personName": "John Smith" } }),
    ] {
        ws.send(Message::Text(frame.to_string().into()))
            .await
            .expect("send");
    }
    let mut replies = 0;
    while replies < 2 {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("reply in time")
            .expect("open")
            .expect("frame");
        if matches!(msg, Message::Text(_)) {
            replies += 1;
        }
    }

    // An org over its rate limit.
    s.create_org("tight", Plan::Pro, Some(1)).await;
    let tight = s.client(&s.create_key("tight", Scope::ALL).await);
    tight.get("/credits").await.ok(200);
    tight.get("/credits").await.err(429, "RATE_LIMITED");

    // The note's webhook delivery reached the receiver (its attempt is recorded just after).
    tokio::time::timeout(Duration::from_secs(10), delivered.recv())
        .await
        .expect("webhook delivered in time");
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Scraped while the WebSocket is open, once the background WAL task has checkpointed the
    // quiet database (it waits for a pause in writes, so under load that can take a moment).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let text = loop {
        let text = reqwest::get(format!("{}/metrics", s.root))
            .await
            .expect("scrape")
            .text()
            .await
            .expect("metrics text");
        if text.contains("pilot_bridge_db_checkpoint_duration_seconds_bucket")
            || tokio::time::Instant::now() >= deadline
        {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let _ = ws.close(None).await;
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            l.split(|c: char| c == '{' || c.is_whitespace())
                .next()
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

#[tokio::test]
async fn dashboard_and_alerts_use_exported_metrics() {
    let exported = exported_metrics().await;
    let families: BTreeSet<&str> = exported.iter().map(|n| family(n)).collect();
    // The traffic above reaches every metric the embedded mode has.
    for name in [
        "pilot_bridge_idempotency_conflicts_total",
        "pilot_bridge_confirmations_total",
        "pilot_bridge_rate_limited_requests_total",
        "pilot_bridge_websocket_frames_total",
        "pilot_bridge_webhook_deliveries_total",
        "pilot_bridge_webhook_queue_depth",
    ] {
        assert!(exported.contains(name), "traffic did not produce {name}");
    }

    // Dashboard: every queried series is exported, and every exported family is shown.
    let dash = json_file("deploy/grafana/dashboards/pilot-bridge.json");
    let queries = dashboard_queries(&dash);
    assert!(queries.len() >= 15, "{} queries", queries.len());
    let defined = defined_metric_names();
    let mut shown = BTreeSet::new();
    for (title, expr) in &queries {
        let names = metric_names(expr);
        assert!(
            !names.is_empty(),
            "panel {title:?} queries no pilot-bridge metric: {expr}"
        );
        for name in names {
            assert!(
                exported.contains(&name) || defined.contains(family(&name)),
                "panel {title:?} queries {name}, which the server does not define"
            );
            shown.insert(family(&name).to_string());
        }
    }
    for f in &families {
        // Upstream-mode metrics need an upstream; the dashboard may show them, not must.
        if f.starts_with("pilot_bridge_") && !f.starts_with("pilot_bridge_upstream_") {
            assert!(shown.contains(*f), "no dashboard panel shows {f}");
        }
    }

    // Alert rules: exported, or a metric of a mode this traffic does not start.
    let alerts = yaml("deploy/prometheus/alerts.yml");
    let mut rules = 0;
    for group in alerts["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            rules += 1;
            let name = rule["alert"].as_str().expect("alert name");
            let expr = rule["expr"].as_str().expect("expr");
            for metric in metric_names(expr) {
                let ok = exported.contains(&metric) || defined.contains(family(&metric));
                assert!(ok, "alert {name} uses {metric}, which is not exported");
            }
        }
    }
    assert!(rules >= 5);
}

#[test]
fn dashboard_is_a_provisionable_grafana_dashboard() {
    let dash = json_file("deploy/grafana/dashboards/pilot-bridge.json");
    assert_eq!(dash["uid"], "pilot-bridge");
    assert!(dash["schemaVersion"].as_u64().unwrap_or(0) >= 36);
    assert!(dash["id"].is_null(), "provisioned dashboards carry no id");
    // Panels read from the `datasource` variable, whose default is the provisioned data source.
    let ds_uid = yaml("deploy/grafana/provisioning/datasources/prometheus.yml")["datasources"][0]
        ["uid"]
        .clone();
    let vars = dash["templating"]["list"].as_array().expect("templating");
    let ds_var = vars
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("datasource variable");
    assert_eq!(ds_var["query"], "prometheus");
    assert_eq!(ds_var["current"]["value"], ds_uid);
    let ds_ref = format!("${{{}}}", ds_var["name"].as_str().unwrap());
    let mut ids = BTreeSet::new();
    for panel in dash["panels"].as_array().expect("panels") {
        assert!(
            ids.insert(panel["id"].as_u64().expect("panel id")),
            "duplicate panel id"
        );
        let g = &panel["gridPos"];
        assert!(g["w"].as_u64().unwrap() + g["x"].as_u64().unwrap() <= 24);
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"],
            ds_ref.as_str(),
            "{}",
            panel["title"]
        );
        let mut refs = BTreeSet::new();
        for t in panel["targets"].as_array().expect("targets") {
            assert_eq!(t["datasource"]["uid"], ds_ref.as_str());
            assert!(refs.insert(t["refId"].as_str().expect("refId").to_string()));
        }
    }
}

// ----------------------------------------------------------------------------------------------
// promtool

fn promtool(args: &[&str]) -> Option<String> {
    match Command::new("promtool")
        .args(args)
        .current_dir(repo())
        .output()
    {
        Ok(out) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "promtool {args:?}:\n{text}");
            Some(text)
        }
        // CI installs promtool (Debian's prometheus package) and must run the checks.
        Err(_) if std::env::var_os("CI").is_some() => panic!("promtool is not installed"),
        Err(_) => {
            eprintln!("promtool not found; skipping promtool {args:?} (CI runs it)");
            None
        }
    }
}

#[test]
fn promtool_accepts_the_prometheus_files() {
    promtool(&["check", "rules", "deploy/prometheus/alerts.yml"]);
    promtool(&["check", "config", "deploy/prometheus/prometheus.yml"]);
    promtool(&["test", "rules", "deploy/prometheus/alerts_test.yml"]);

    // The dashboard's queries are valid PromQL: checked as recording rules, with Grafana's
    // variables replaced by what Grafana would send.
    let dash = json_file("deploy/grafana/dashboards/pilot-bridge.json");
    let rules: Vec<Value> = dashboard_queries(&dash)
        .iter()
        .enumerate()
        .map(|(i, (_, expr))| {
            let expr = expr
                .replace("$__rate_interval", "1m")
                .replace("$instance", ".*");
            json!({ "record": format!("dashboard:query_{i}"), "expr": expr })
        })
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("dashboard_rules.yml");
    // JSON is YAML.
    std::fs::write(
        &path,
        json!({ "groups": [{ "name": "dashboard", "rules": rules }] }).to_string(),
    )
    .expect("write rules");
    promtool(&["check", "rules", path.to_str().expect("utf-8 path")]);
}

/// The replicated deployment (deploy/k8s-replicas and the compose profile "replicas"): several
/// upstream-mode gateways sharing Redis, a disruption budget, Redis reached by a URL from a
/// Secret, and a load balancer without session affinity.
#[test]
fn replicated_deployment_shares_redis() {
    let mut objects = BTreeMap::new();
    for file in deploy_files() {
        if file.starts_with("deploy/k8s-replicas/") && file.ends_with(".yaml") {
            for doc in yaml_docs(&file) {
                objects.insert(doc["kind"].as_str().expect("kind").to_string(), doc);
            }
        }
    }
    let listed: BTreeSet<String> = objects["Kustomization"]["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| format!("deploy/k8s-replicas/{}", r.as_str().expect("path")))
        .collect();
    let present: BTreeSet<String> = deploy_files()
        .into_iter()
        .filter(|f| {
            f.starts_with("deploy/k8s-replicas/")
                && f.ends_with(".yaml")
                && f != "deploy/k8s-replicas/kustomization.yaml"
        })
        .collect();
    assert_eq!(listed, present, "kustomization resources");

    let spec = &objects["Deployment"]["spec"];
    assert_eq!(spec["replicas"], 3);
    let pod_labels = &spec["template"]["metadata"]["labels"];
    assert!(labels_match(&spec["selector"]["matchLabels"], pod_labels));
    let pdb = &objects["PodDisruptionBudget"];
    assert!(labels_match(
        &pdb["spec"]["selector"]["matchLabels"],
        pod_labels
    ));
    assert!(pdb["spec"]["minAvailable"].as_u64().unwrap_or(0) >= 2);
    let svc = &objects["Service"];
    assert!(labels_match(&svc["spec"]["selector"], pod_labels));
    assert_eq!(svc["spec"]["sessionAffinity"], "None");

    let c = &spec["template"]["spec"]["containers"][0];
    let env = c["env"].as_array().expect("env");
    let redis_url = env
        .iter()
        .find(|e| e["name"] == "PILOT_BRIDGE_REDIS_URL")
        .expect("PILOT_BRIDGE_REDIS_URL");
    assert_eq!(redis_url["valueFrom"]["secretKeyRef"]["key"], "url");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    let toml = objects["ConfigMap"]["data"]["pilot-bridge.toml"]
        .as_str()
        .expect("config");
    let cfg = Config::from_toml(toml).expect("replicas config");
    cfg.validate().expect("replicas config is valid");
    assert_eq!(cfg.backend, pilot_bridge::config::BackendKind::Upstream);
    assert_eq!(cfg.state.backend, pilot_bridge::config::StateBackend::Redis);

    // Compose: the profile has Redis with AOF, three gateways on it and a load balancer whose
    // configuration lists them.
    let compose = yaml("deploy/compose.yaml");
    let services = compose["services"].as_object().expect("services");
    let redis_cmd = services["redis"]["command"].to_string();
    assert!(redis_cmd.contains("appendonly") && redis_cmd.contains("everysec"));
    let haproxy = read("deploy/haproxy/haproxy.cfg");
    assert!(haproxy.contains("balance roundrobin"));
    for n in 1..=3 {
        let g = &services[&format!("gateway-{n}")];
        assert_eq!(g["profiles"][0], "replicas");
        assert_eq!(g["environment"]["PILOT_BRIDGE_STATE_BACKEND"], "redis");
        assert_eq!(g["environment"]["PILOT_BRIDGE_BACKEND"], "upstream");
        assert!(haproxy.contains(&format!("server gateway-{n} gateway-{n}:8080 check")));
    }
    assert_eq!(services["load-balancer"]["profiles"][0], "replicas");
}
