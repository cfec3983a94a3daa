//! Static checks of `compose.yaml` and the `Dockerfile`: no Docker engine runs here, so the compose file
//! is held against the binaries' real `--help` instead, and a renamed flag or a typo fails a test.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_yaml_ng::Value;

use crate::helpers::binary;

/// The repository root (this crate lives in `tests/`).
pub(crate) fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

/// compose.yaml parsed, with `<<` merge keys applied as Docker Compose applies them.
fn compose() -> Value {
    let text = std::fs::read_to_string(root().join("compose.yaml")).expect("compose.yaml exists");
    let mut value: Value = serde_yaml_ng::from_str(&text).expect("compose.yaml is valid YAML");
    value.apply_merge().expect("merge keys resolve");
    value
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    compose
        .get("services")
        .and_then(|services| services.get(name))
        .unwrap_or_else(|| panic!("compose.yaml has no service {name:?}"))
}

/// A scalar as compose reads it: numbers and booleans in YAML are strings to the container.
fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, got {other:?}"),
    }
}

/// A service's environment, in either compose form (a map, or a list of `KEY=VALUE`).
fn environment(service: &Value) -> BTreeMap<String, String> {
    match service.get("environment") {
        None => BTreeMap::new(),
        Some(Value::Mapping(map)) => map
            .iter()
            .map(|(key, value)| (scalar(key), scalar(value)))
            .collect(),
        Some(Value::Sequence(list)) => list
            .iter()
            .map(|item| {
                let item = scalar(item);
                let (key, value) = item.split_once('=').unwrap_or((&item, ""));
                (key.to_owned(), value.to_owned())
            })
            .collect(),
        Some(other) => panic!("environment is neither a map nor a list: {other:?}"),
    }
}

/// One published port: the host address it is bound to (`None`: every interface) and the container
/// port.
#[derive(Debug)]
struct Published {
    host_ip: Option<String>,
    container: u16,
}

/// The ports a service publishes, from the short (`"[IP:][HOST:]CONTAINER[/proto]"`) or the long
/// (`target:`, `host_ip:`) syntax.
fn published(service: &Value) -> Vec<Published> {
    let Some(ports) = service.get("ports") else {
        return Vec::new();
    };
    let ports = ports.as_sequence().expect("ports is a list");
    ports
        .iter()
        .map(|port| {
            let (host_ip, container) = match port.get("target") {
                Some(target) => (port.get("host_ip").map(scalar), scalar(target)),
                None => {
                    let text = scalar(port);
                    let text = text.split('/').next().unwrap().to_owned();
                    // An IPv6 host address comes in brackets: [::1]:8080:8080.
                    match text.rsplitn(3, ':').collect::<Vec<_>>().as_slice() {
                        [container, _host_port, ip] => (
                            Some(ip.trim_matches(['[', ']']).to_owned()),
                            container.to_string(),
                        ),
                        [container, ..] => (None, container.to_string()),
                        [] => unreachable!("rsplitn yields at least one part"),
                    }
                }
            };
            Published {
                host_ip,
                container: container
                    .parse()
                    .unwrap_or_else(|_| panic!("container port {container:?}")),
            }
        })
        .collect()
}

/// The container ports a service publishes.
fn container_ports(service: &Value) -> Vec<u16> {
    published(service).iter().map(|p| p.container).collect()
}

/// The healthcheck's command as one string, whether `test` is a list or a string.
fn healthcheck(service: &Value, name: &str) -> String {
    let test = service
        .get("healthcheck")
        .and_then(|check| check.get("test"))
        .unwrap_or_else(|| panic!("service {name:?} has no healthcheck test"));
    match test {
        Value::Sequence(words) => words.iter().map(scalar).collect::<Vec<_>>().join(" "),
        other => scalar(other),
    }
}

/// Every `HERALD_*` variable the binary accepts, read from its real `--help` (`[env: HERALD_X]`,
/// or `[env: HERALD_X=value]` when the variable happens to be set).
pub(crate) fn accepted_env(name: &str) -> BTreeSet<String> {
    let output = std::process::Command::new(binary(name))
        .arg("--help")
        .output()
        .expect("--help runs");
    assert!(output.status.success(), "{name} --help failed");
    let help = String::from_utf8(output.stdout).expect("help is UTF-8");
    let names: BTreeSet<String> = help
        .split("[env: ")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect()
        })
        .filter(|name: &String| name.starts_with("HERALD_"))
        .collect();
    // Guards against a change in clap's help format silently emptying the set.
    assert!(
        names.contains("HERALD_AMQP_URL"),
        "{name} --help lists no HERALD_AMQP_URL: {help}"
    );
    names
}

/// The Dockerfile's stages: name (from `FROM image AS name`) to the lines that follow it.
fn dockerfile_stages() -> BTreeMap<String, Vec<String>> {
    let text = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile exists");
    let mut stages = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words
            .first()
            .is_some_and(|w| w.eq_ignore_ascii_case("FROM"))
        {
            current = match words.as_slice() {
                [_, .., as_, name] if as_.eq_ignore_ascii_case("AS") => Some(name.to_string()),
                _ => None,
            };
            if let Some(name) = &current {
                stages.insert(name.clone(), Vec::new());
            }
        } else if let Some(name) = &current {
            stages.get_mut(name).unwrap().push(line.to_owned());
        }
    }
    stages
}

#[test]
fn compose_has_every_service_with_a_healthcheck() {
    let compose = compose();
    for name in ["rabbitmq", "redis", "server", "worker"] {
        let check = healthcheck(service(&compose, name), name);
        assert!(!check.trim().is_empty(), "{name}'s healthcheck is empty");
    }
    assert!(healthcheck(service(&compose, "rabbitmq"), "rabbitmq").contains("rabbitmq-diagnostics"));
    assert!(healthcheck(service(&compose, "redis"), "redis").contains("redis-cli ping"));
}

#[test]
fn compose_publishes_ports_on_this_host_only() {
    // The broker's guest account and a server without authentication must not face the network.
    let compose = compose();
    let services = compose
        .get("services")
        .and_then(Value::as_mapping)
        .expect("services");
    let mut seen = 0;
    for (name, service) in services {
        for port in published(service) {
            seen += 1;
            assert!(
                matches!(port.host_ip.as_deref(), Some("127.0.0.1" | "::1")),
                "{} publishes container port {} on {:?}, not on loopback only",
                scalar(name),
                port.container,
                port.host_ip.as_deref().unwrap_or("every interface")
            );
        }
    }
    assert!(
        seen > 0,
        "no published port at all: the checks above saw nothing"
    );
}

#[test]
fn compose_keeps_amqp_off_the_host_and_the_management_ui_on_it() {
    // A RabbitMQ on the host already has 5672; the containers reach theirs on the compose network.
    let compose = compose();
    let ports = container_ports(service(&compose, "rabbitmq"));
    assert!(!ports.contains(&5672), "rabbitmq publishes 5672: {ports:?}");
    assert!(ports.contains(&15672), "rabbitmq publishes {ports:?}");
    assert_eq!(container_ports(service(&compose, "server")), [8080]);
    assert!(container_ports(service(&compose, "redis")).is_empty());
}

#[test]
fn compose_restarts_every_service_unless_stopped() {
    let compose = compose();
    for name in ["rabbitmq", "redis", "server", "worker"] {
        assert_eq!(
            service(&compose, name)
                .get("restart")
                .map(scalar)
                .as_deref(),
            Some("unless-stopped"),
            "{name}'s restart policy"
        );
    }
}

#[test]
fn compose_runs_a_rabbitmq_4() {
    let compose = compose();
    let image = service(&compose, "rabbitmq")
        .get("image")
        .map(scalar)
        .expect("rabbitmq has an image");
    let tag = image
        .strip_prefix("rabbitmq:")
        .unwrap_or_else(|| panic!("not the official rabbitmq image: {image}"));
    let major = tag.split(['.', '-']).next().unwrap();
    assert_eq!(major, "4", "RabbitMQ's current major line is 4: {image}");
}

/// The named volume a service mounts at `path` (short syntax `NAME:PATH[:MODE]` or long syntax).
fn volume_at(service: &Value, path: &str) -> Option<String> {
    service
        .get("volumes")?
        .as_sequence()?
        .iter()
        .find_map(|volume| match volume.get("target") {
            Some(target) if scalar(target) == path => volume.get("source").map(scalar),
            Some(_) => None,
            None => {
                let text = scalar(volume);
                let mut parts = text.split(':');
                let source = parts.next()?;
                (parts.next()? == path).then(|| source.to_owned())
            }
        })
}

#[test]
fn compose_keeps_rabbitmq_and_redis_data_in_named_volumes() {
    let compose = compose();
    let declared = compose
        .get("volumes")
        .and_then(Value::as_mapping)
        .expect("compose.yaml declares named volumes");
    for (name, path) in [("rabbitmq", "/var/lib/rabbitmq"), ("redis", "/data")] {
        let volume = volume_at(service(&compose, name), path)
            .unwrap_or_else(|| panic!("{name} mounts no volume at {path}"));
        // A path (./data, /srv/…) would be a bind mount; a named volume is declared at the top.
        assert!(
            declared.contains_key(Value::String(volume.clone())),
            "{name}'s volume {volume:?} is not a declared named volume"
        );
    }
    // RabbitMQ keeps its data under rabbit@<hostname>: with the container's random hostname, a
    // re-created container would start empty beside its old data.
    assert_eq!(
        service(&compose, "rabbitmq")
            .get("hostname")
            .map(scalar)
            .as_deref(),
        Some("rabbitmq"),
        "rabbitmq needs a fixed hostname for its data to be found again"
    );
}

#[test]
fn compose_runs_redis_with_its_append_only_file() {
    let compose = compose();
    let command = match service(&compose, "redis").get("command") {
        Some(Value::Sequence(words)) => words.iter().map(scalar).collect::<Vec<_>>(),
        Some(other) => scalar(other)
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
        None => panic!("redis runs its image's default command, without appendonly"),
    };
    assert_eq!(command.first().map(String::as_str), Some("redis-server"));
    assert!(
        command.windows(2).any(|w| w == ["--appendonly", "yes"]),
        "redis must run with --appendonly yes: {command:?}"
    );
}

#[test]
fn compose_sets_only_variables_the_binaries_accept() {
    let compose = compose();
    for (service_name, binary_name) in [("server", "herald-server"), ("worker", "herald-worker")] {
        let accepted = accepted_env(binary_name);
        for key in environment(service(&compose, service_name)).keys() {
            if key.starts_with("HERALD_") {
                assert!(
                    accepted.contains(key),
                    "{service_name} sets {key}, which {binary_name} does not accept ({accepted:?})"
                );
            }
        }
    }
}

#[test]
fn compose_server_and_worker_agree_on_the_settings_they_share() {
    // README: server and workers must agree on the backends, names and queue cap. Every variable both
    // binaries accept is such a shared setting; if one side sets it, the other must say the same.
    let shared: BTreeSet<String> = accepted_env("herald-server")
        .intersection(&accepted_env("herald-worker"))
        .cloned()
        .collect();
    let compose = compose();
    let server = environment(service(&compose, "server"));
    let worker = environment(service(&compose, "worker"));
    for key in &shared {
        assert_eq!(
            server.get(key),
            worker.get(key),
            "server and worker disagree on {key}"
        );
    }
}

#[test]
fn compose_points_both_binaries_at_the_compose_backends() {
    let compose = compose();
    for name in ["server", "worker"] {
        let env = environment(service(&compose, name));
        let amqp = env.get("HERALD_AMQP_URL").expect("HERALD_AMQP_URL is set");
        let redis = env
            .get("HERALD_REDIS_URL")
            .expect("HERALD_REDIS_URL is set");
        // The host part (after any user:password@) must be the compose service's name.
        let host = |url: &str, scheme: &str| {
            let rest = url
                .strip_prefix(scheme)
                .unwrap_or_else(|| panic!("{url} is not {scheme}…"));
            let authority = rest.split('/').next().unwrap();
            let host_port = authority.rsplit('@').next().unwrap();
            host_port.split(':').next().unwrap().to_owned()
        };
        assert_eq!(host(amqp, "amqp://"), "rabbitmq", "{name}'s AMQP URL");
        assert_eq!(host(redis, "redis://"), "redis", "{name}'s Redis URL");

        let depends_on = service(&compose, name)
            .get("depends_on")
            .and_then(Value::as_mapping)
            .unwrap_or_else(|| panic!("{name} has no depends_on map"));
        for backend in ["rabbitmq", "redis"] {
            let condition = depends_on
                .get(backend)
                .and_then(|d| d.get("condition"))
                .and_then(Value::as_str);
            assert_eq!(
                condition,
                Some("service_healthy"),
                "{name} must wait for a healthy {backend}"
            );
        }
    }
}

#[test]
fn compose_server_listens_where_it_publishes_and_checks_readiness() {
    let compose = compose();
    let server = service(&compose, "server");
    let listen = environment(server)
        .remove("HERALD_LISTEN")
        .expect("server sets HERALD_LISTEN");
    let (host, port) = listen.rsplit_once(':').expect("HERALD_LISTEN is host:port");
    assert_eq!(
        host, "0.0.0.0",
        "a container must listen on all its interfaces"
    );
    let port: u16 = port.parse().expect("HERALD_LISTEN's port is a number");
    assert_eq!(port, 8080);
    assert!(
        container_ports(server).contains(&port),
        "server does not publish its HERALD_LISTEN port {port}"
    );

    let check = healthcheck(server, "server");
    assert!(
        check.contains(&format!("http://127.0.0.1:{port}/readyz")),
        "the server's healthcheck should ask /readyz on its port: {check}"
    );
    // The healthcheck's tool must exist in the runtime image.
    if check.contains("curl") {
        let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
        assert!(
            dockerfile
                .lines()
                .any(|line| line.contains("apt-get install") && line.contains("curl")),
            "the healthcheck uses curl, which the Dockerfile does not install"
        );
    }
}

#[test]
fn compose_worker_serves_metrics_where_its_healthcheck_asks() {
    let compose = compose();
    let worker = service(&compose, "worker");
    let listen = environment(worker)
        .remove("HERALD_METRICS_LISTEN")
        .expect("worker sets HERALD_METRICS_LISTEN");
    let (host, port) = listen
        .rsplit_once(':')
        .expect("HERALD_METRICS_LISTEN is host:port");
    assert_eq!(host, "0.0.0.0", "Prometheus scrapes from another container");
    let check = healthcheck(worker, "worker");
    assert!(
        check.contains(&format!("http://127.0.0.1:{port}/healthz")),
        "the worker's healthcheck should ask /healthz on its metrics port: {check}"
    );
    let exposed: Vec<String> = worker
        .get("expose")
        .and_then(Value::as_sequence)
        .map(|ports| ports.iter().map(scalar).collect())
        .unwrap_or_default();
    assert!(exposed.contains(&port.to_owned()), "{exposed:?}");
}

#[test]
fn compose_worker_publishes_no_ports_so_it_scales() {
    let compose = compose();
    let worker = service(&compose, "worker");
    assert!(
        worker.get("ports").is_none(),
        "a published port would clash under --scale"
    );
    assert!(
        worker.get("container_name").is_none(),
        "a fixed name would clash under --scale"
    );
}

#[test]
fn compose_builds_targets_the_dockerfile_defines() {
    let compose = compose();
    let stages = dockerfile_stages();
    for (name, binary_name) in [("server", "herald-server"), ("worker", "herald-worker")] {
        let target = service(&compose, name)
            .get("build")
            .and_then(|build| build.get("target"))
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("{name} has no build target"));
        let lines = stages.get(target).unwrap_or_else(|| {
            panic!(
                "{name} builds target {target:?}, not in the Dockerfile's {:?}",
                stages.keys()
            )
        });
        // The target must start the right binary, not its sibling.
        assert!(
            lines
                .iter()
                .any(|line| line.starts_with("ENTRYPOINT") && line.contains(binary_name)),
            "target {target:?} has no ENTRYPOINT running {binary_name}"
        );
    }
}
