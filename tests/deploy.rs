//! Static checks of the Kubernetes example in `docs/deploy.md`: no cluster runs here, so its manifests
//! are held against the binaries' real `--help` (as `tests/compose.rs` does for compose.yaml): every
//! `HERALD_*` variable a container gets must be one its binary accepts, server and worker must get the
//! same backend settings, the probes must ask the right paths on the right ports, and KEDA must scale
//! the worker on the queue it consumes.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::compose::{accepted_env, root};

/// Every manifest of the example's YAML block.
fn manifests() -> Vec<Value> {
    let doc =
        std::fs::read_to_string(root().join("docs/deploy.md")).expect("docs/deploy.md exists");
    let yaml = doc
        .split("```yaml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/deploy.md has a yaml block");
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|document| Value::deserialize(document).expect("valid YAML"))
        .collect()
}

fn named<'a>(manifests: &'a [Value], kind: &str, name: &str) -> &'a Value {
    manifests
        .iter()
        .find(|m| m["kind"].as_str() == Some(kind) && m["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} {name:?} in the example"))
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => panic!("expected a scalar, got {other:?}"),
    }
}

/// The one container of a Deployment.
fn container<'a>(manifests: &'a [Value], deployment: &str) -> &'a Value {
    let containers = named(manifests, "Deployment", deployment)["spec"]["template"]["spec"]
        ["containers"]
        .as_sequence()
        .expect("containers");
    assert_eq!(containers.len(), 1, "{deployment}: one container");
    &containers[0]
}

/// What the container's environment holds: its `env` values and every key of the Secrets and
/// ConfigMaps of its `envFrom`.
fn environment(manifests: &[Value], container: &Value) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for source in container["envFrom"].as_sequence().into_iter().flatten() {
        let (kind, name, field) = if let Some(secret) = source.get("secretRef") {
            ("Secret", &secret["name"], "stringData")
        } else {
            ("ConfigMap", &source["configMapRef"]["name"], "data")
        };
        let manifest = named(manifests, kind, name.as_str().unwrap());
        for (key, value) in manifest[field].as_mapping().expect("data") {
            env.insert(text(key), text(value));
        }
    }
    for item in container["env"].as_sequence().into_iter().flatten() {
        env.insert(text(&item["name"]), text(&item["value"]));
    }
    env
}

fn port_of(address: &str) -> u16 {
    address.rsplit(':').next().unwrap().parse().unwrap()
}

/// The container port a probe asks, by name or number.
fn probe_port(container: &Value, probe: &str) -> (String, u16) {
    let get = &container[probe]["httpGet"];
    let path = text(&get["path"]);
    let port = match &get["port"] {
        Value::String(name) => container["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .map(|p| p["containerPort"].as_u64().unwrap() as u16)
            .unwrap_or_else(|| panic!("no port named {name}")),
        other => other.as_u64().unwrap() as u16,
    };
    (path, port)
}

#[test]
fn deploy_example_sets_only_variables_the_binaries_accept() {
    let manifests = manifests();
    for (deployment, binary) in [
        ("herald-server", "herald-server"),
        ("herald-worker", "herald-worker"),
    ] {
        let accepted = accepted_env(binary);
        let env = environment(&manifests, container(&manifests, deployment));
        for name in env.keys().filter(|k| k.starts_with("HERALD_")) {
            assert!(
                accepted.contains(name),
                "{deployment} gets {name}, which {binary} does not accept"
            );
        }
    }
}

#[test]
fn deploy_example_gives_server_and_worker_the_same_backends() {
    let manifests = manifests();
    let server = environment(&manifests, container(&manifests, "herald-server"));
    let worker = environment(&manifests, container(&manifests, "herald-worker"));
    // The backend settings (BackendArgs): the ones both binaries must agree on.
    let shared = [
        "HERALD_AMQP_URL",
        "HERALD_REDIS_URL",
        "HERALD_REDIS_SENTINEL",
        "HERALD_REDIS_MASTER_NAME",
        "HERALD_REDIS_REPLICA_ACKS",
        "HERALD_QUORUM_INITIAL_GROUP_SIZE",
        "HERALD_QUEUE",
        "HERALD_REPLY_EXCHANGE",
        "HERALD_REDIS_PREFIX",
        "HERALD_MAX_N",
        "HERALD_MAX_QUEUE_LENGTH",
    ];
    let both: Vec<String> = accepted_env("herald-worker")
        .intersection(&accepted_env("herald-server"))
        .cloned()
        .collect();
    for name in shared {
        assert!(
            both.iter().any(|n| n == name),
            "both binaries accept {name}"
        );
        let name = name.to_owned();
        assert_eq!(
            server.get(&name),
            worker.get(&name),
            "server and worker disagree on {name}"
        );
    }
    for name in [
        "HERALD_AMQP_URL",
        "HERALD_REDIS_SENTINEL",
        "HERALD_REDIS_MASTER_NAME",
        "HERALD_REDIS_REPLICA_ACKS",
    ] {
        assert!(server.contains_key(name), "the example sets {name}");
    }
    // Every RabbitMQ node is listed, each a valid URL.
    let urls = &server["HERALD_AMQP_URL"];
    assert_eq!(urls.split(',').count(), 3, "{urls}");
    for url in urls.split(',') {
        url.parse::<lapin::uri::AMQPUri>()
            .unwrap_or_else(|_| panic!("{url} is not an amqp:// URL"));
    }
}

#[test]
fn deploy_example_probes_ask_the_right_paths_on_the_right_ports() {
    let manifests = manifests();
    let server = container(&manifests, "herald-server");
    let listen = port_of(&environment(&manifests, server)["HERALD_LISTEN"]);
    assert_eq!(
        probe_port(server, "livenessProbe"),
        ("/healthz".into(), listen)
    );
    assert_eq!(
        probe_port(server, "startupProbe"),
        ("/healthz".into(), listen)
    );
    assert_eq!(
        probe_port(server, "readinessProbe"),
        ("/readyz".into(), listen)
    );

    let worker = container(&manifests, "herald-worker");
    let env = environment(&manifests, worker);
    let metrics = port_of(&env["HERALD_METRICS_LISTEN"]);
    assert_eq!(
        probe_port(worker, "livenessProbe"),
        ("/healthz".into(), metrics)
    );
    // Kubernetes kills after terminationGracePeriodSeconds: it must outlast the worker's own grace.
    let grace: u64 = env["HERALD_SHUTDOWN_GRACE_SECS"].parse().unwrap();
    let period = named(&manifests, "Deployment", "herald-worker")["spec"]["template"]["spec"]
        ["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    assert!(period > grace, "{period} s must exceed {grace} s");
}

#[test]
fn deploy_example_scales_the_worker_on_the_queue_it_consumes() {
    let manifests = manifests();
    let scaled = named(&manifests, "ScaledObject", "herald-worker");
    assert_eq!(
        scaled["spec"]["scaleTargetRef"]["name"].as_str(),
        Some("herald-worker")
    );
    let trigger = &scaled["spec"]["triggers"][0];
    assert_eq!(trigger["type"].as_str(), Some("rabbitmq"));
    let env = environment(&manifests, container(&manifests, "herald-worker"));
    assert_eq!(text(&trigger["metadata"]["queueName"]), env["HERALD_QUEUE"]);
    let host = text(&trigger["metadata"]["hostFromEnv"]);
    assert!(
        env.contains_key(&host),
        "the worker's environment has {host}"
    );
}
