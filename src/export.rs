//! Handing a fleet to an orchestrator: [`Fleet::to_kubernetes`] writes a Kubernetes manifest
//! (JSON, which `kubectl apply -f` takes as it takes YAML), [`Fleet::to_systemd`] a unit file;
//! [`Fleet::grace`] is the stop deadline both are given.

use crate::error::{Error, ErrorKind, Result};
use crate::fleet::Fleet;
use crate::graph;
use crate::readiness::{Check, Ready};
use crate::spec::ServiceSpec;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::Duration;

/// How much longer than the fleet's grace an orchestrator waits before it kills the runner
/// itself: the runner's SIGKILL of what is left, and the draining of the last output
/// ([`STOP_OVERHEAD`](crate::STOP_OVERHEAD) is the bound of one wave's).
pub const MARGIN: Duration = Duration::from_secs(5);

/// Where the fleet file sits in the container (the ConfigMap's mount).
const FLEET_DIR: &str = "/etc/sheepdog";

/// What [`Fleet::to_kubernetes`] needs besides the fleet.
///
/// # Example
///
/// ```
/// use sheepdog::{export::Kubernetes, Fleet, ServiceSpec};
/// let fleet = Fleet::new([ServiceSpec::new("web", "python3").args(["-m", "http.server"])]);
/// let manifest = fleet.to_kubernetes(&Kubernetes::new("shop", "registry.example/shop:1")).unwrap();
/// let doc: serde_json::Value = serde_json::from_str(&manifest).unwrap();
/// assert_eq!(doc["items"][1]["kind"], "Deployment");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kubernetes {
    name: String,
    image: String,
    port: u16,
    per_service: bool,
}

impl Kubernetes {
    /// A Deployment (and ConfigMap) called `name`, of containers made from `image`, which
    /// must hold the `sheepdog` command (and the services' programs).
    pub fn new(name: impl Into<String>, image: impl Into<String>) -> Kubernetes {
        Kubernetes {
            name: name.into(),
            image: image.into(),
            port: 9090,
            per_service: false,
        }
    }

    /// The port of the HTTP endpoints the probes ask. By default, 9090.
    pub fn port(mut self, port: u16) -> Kubernetes {
        self.port = port;
        self
    }

    /// One container per service instead of `sheepdog run` as the entrypoint: Kubernetes
    /// then restarts each, its probes mapped from the service's `ready` and `health` where
    /// they have an equivalent (TCP, command, HTTP). Dependencies, restart policies and log
    /// rotation are not carried over. By default, off.
    pub fn per_service(mut self, yes: bool) -> Kubernetes {
        self.per_service = yes;
        self
    }
}

/// What [`Fleet::to_systemd`] needs besides the fleet.
///
/// # Example
///
/// ```
/// use sheepdog::{export::Systemd, Fleet, ServiceSpec};
/// let fleet = Fleet::new([ServiceSpec::new("web", "python3")]);
/// let unit = fleet.to_systemd(&Systemd::new("shop", "/srv/shop/fleet.toml"));
/// assert!(unit.contains("KillMode=mixed"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Systemd {
    name: String,
    fleet_file: String,
    command: String,
    user: Option<String>,
}

impl Systemd {
    /// A unit that runs the fleet file at `fleet_file` (an absolute path), described as
    /// `name`; its state in `/var/lib/sheepdog/<name>` (`StateDirectory=`).
    pub fn new(name: impl Into<String>, fleet_file: impl Into<String>) -> Systemd {
        Systemd {
            name: name.into(),
            fleet_file: fleet_file.into(),
            command: "/usr/local/bin/sheepdog".into(),
            user: None,
        }
    }

    /// The `sheepdog` command's path. By default, `/usr/local/bin/sheepdog`.
    pub fn command(mut self, path: impl Into<String>) -> Systemd {
        self.command = path.into();
        self
    }

    /// The user the runner (and so the fleet) runs as. By default, root.
    pub fn user(mut self, user: impl Into<String>) -> Systemd {
        self.user = Some(user.into());
        self
    }
}

impl Fleet {
    /// How long stopping the whole fleet may take: its `[supervisor] grace` if set, else the
    /// longest stop timeout of each dependency wave (dependents first), summed.
    ///
    /// # Example
    ///
    /// ```
    /// use sheepdog::{Condition, Fleet, ServiceSpec};
    /// use std::time::Duration;
    /// let fleet = Fleet::new([
    ///     ServiceSpec::new("db", "postgres").stop_timeout(Duration::from_secs(20)),
    ///     ServiceSpec::new("web", "web").after("db", Condition::Started)
    ///         .stop_timeout(Duration::from_secs(5)),
    /// ]);
    /// assert_eq!(fleet.grace(), Duration::from_secs(25));
    /// ```
    pub fn grace(&self) -> Duration {
        if let Some(grace) = self.settings().grace {
            return grace;
        }
        let targets: BTreeSet<&str> = self.services().iter().map(|s| s.name()).collect();
        graph::waves(&self.nodes(), &targets, true)
            .iter()
            .map(|wave| {
                wave.iter()
                    .filter_map(|n| self.services().iter().find(|s| s.name() == n))
                    .map(ServiceSpec::get_stop_timeout)
                    .max()
                    .unwrap_or_default()
            })
            .sum()
    }

    /// The fleet as a Kubernetes manifest (a `List` in JSON): a ConfigMap holding the fleet
    /// (as `fleet.json`) and a Deployment of one replica whose container runs
    /// `sheepdog run` on it as its entrypoint (PID 1, reaping orphans), serving the HTTP
    /// endpoints on `0.0.0.0:<port>`, with a liveness probe on `/livez`, a readiness probe
    /// on `/readyz`, and a termination grace of [`grace`](Fleet::grace) plus [`MARGIN`]
    /// (the runner gets `--grace`). With [`Kubernetes::per_service`], one container per
    /// service instead.
    ///
    /// # Errors
    ///
    /// `InvalidSpec` if the fleet cannot be written as JSON.
    pub fn to_kubernetes(&self, options: &Kubernetes) -> Result<String> {
        let fleet_json = serde_json::to_string_pretty(self).map_err(|e| {
            Error::new(ErrorKind::InvalidSpec, "cannot write the fleet as JSON").with_source(e)
        })?;
        let grace = self.grace();
        let labels = json!({ "app.kubernetes.io/name": options.name });
        let containers = if options.per_service {
            self.services()
                .iter()
                .map(|s| service_container(s, &options.image))
                .collect()
        } else {
            vec![runner_container(options, grace)]
        };
        let mut pod = json!({
            "terminationGracePeriodSeconds": seconds_up(grace + MARGIN),
            "containers": containers,
        });
        if !options.per_service {
            pod["volumes"] = json!([{
                "name": "fleet",
                "configMap": { "name": options.name },
            }]);
        }
        let mut items = Vec::new();
        if !options.per_service {
            items.push(json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": { "name": options.name, "labels": labels },
                "data": { "fleet.json": fleet_json },
            }));
        }
        items.push(json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": { "name": options.name, "labels": labels },
            "spec": {
                "replicas": 1,
                "selector": { "matchLabels": labels },
                "template": {
                    "metadata": { "labels": labels },
                    "spec": pod,
                },
            },
        }));
        let list = json!({ "apiVersion": "v1", "kind": "List", "items": items });
        Ok(serde_json::to_string_pretty(&list).expect("a JSON value serializes") + "\n")
    }

    /// The fleet as a systemd unit that runs `sheepdog run` at boot
    /// (`WantedBy=multi-user.target`): `KillMode=mixed` (SIGTERM to the runner alone, which
    /// stops the fleet dependents first; SIGKILL to whatever is left in the unit at the
    /// end), `TimeoutStopSec` of [`grace`](Fleet::grace) plus [`MARGIN`], the runner given
    /// `--grace`, restarted on failure (a critical service's failure included).
    pub fn to_systemd(&self, options: &Systemd) -> String {
        let grace = self.grace();
        let mut unit = String::new();
        let _ = writeln!(unit, "[Unit]");
        let _ = writeln!(unit, "Description=sheepdog fleet {}", options.name);
        let _ = writeln!(unit, "Wants=network-online.target");
        let _ = writeln!(unit, "After=network-online.target");
        let _ = writeln!(unit);
        let _ = writeln!(unit, "[Service]");
        let _ = writeln!(unit, "Type=simple");
        let _ = writeln!(
            unit,
            "ExecStart={} run {} --state /var/lib/sheepdog/{} --grace {}",
            options.command,
            systemd_quote(&options.fleet_file),
            options.name,
            crate::duration::format(grace)
        );
        if let Some(user) = &options.user {
            let _ = writeln!(unit, "User={user}");
        }
        let _ = writeln!(unit, "StateDirectory=sheepdog/{}", options.name);
        let _ = writeln!(unit, "KillMode=mixed");
        let _ = writeln!(unit, "KillSignal=SIGTERM");
        let _ = writeln!(unit, "TimeoutStopSec={}", seconds_up(grace + MARGIN));
        let _ = writeln!(unit, "Restart=on-failure");
        let _ = writeln!(unit, "RestartSec=1");
        let _ = writeln!(unit);
        let _ = writeln!(unit, "[Install]");
        let _ = writeln!(unit, "WantedBy=multi-user.target");
        unit
    }
}

fn seconds_up(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// A word of `ExecStart=`, quoted where it needs it.
fn systemd_quote(word: &str) -> String {
    if word
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+:@".contains(c))
    {
        word.to_string()
    } else {
        format!("\"{}\"", word.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

fn runner_container(options: &Kubernetes, grace: Duration) -> Value {
    let probe = |path: &str| {
        json!({
            "httpGet": { "path": path, "port": options.port },
            "periodSeconds": 10,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        })
    };
    json!({
        "name": "fleet",
        "image": options.image,
        "command": [
            "sheepdog", "run", format!("{FLEET_DIR}/fleet.json"),
            "--endpoints", format!("0.0.0.0:{}", options.port),
            "--grace", crate::duration::format(grace),
        ],
        "ports": [{ "name": "http", "containerPort": options.port }],
        "livenessProbe": probe("/livez"),
        "readinessProbe": probe("/readyz"),
        "volumeMounts": [{ "name": "fleet", "mountPath": FLEET_DIR, "readOnly": true }],
    })
}

fn service_container(spec: &ServiceSpec, image: &str) -> Value {
    let env: Vec<Value> = spec
        .get_envs()
        .map(|(k, v)| json!({ "name": k.to_string_lossy(), "value": v.to_string_lossy() }))
        .collect();
    // A manifest holds text: a value that is not UTF-8 is written with replacement
    // characters.
    let mut command = vec![spec.program().to_string_lossy().into_owned()];
    command.extend(
        spec.get_args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned()),
    );
    let mut container = json!({
        "name": spec.name(),
        "image": image,
        "command": command,
        "env": env,
    });
    if let Some(dir) = spec.get_current_dir() {
        container["workingDir"] = json!(dir.to_string_lossy());
    }
    let ready = match spec.get_ready() {
        Ready::Tcp(port) => Some(json!({ "tcpSocket": { "port": port } })),
        Ready::Command(argv) => Some(json!({ "exec": { "command": argv } })),
        Ready::After(d) => Some(json!({
            "exec": { "command": ["true"] },
            "initialDelaySeconds": seconds_up(*d),
        })),
        _ => None,
    };
    if let Some(mut probe) = ready {
        probe["periodSeconds"] = json!(1);
        probe["failureThreshold"] = json!(seconds_up(spec.get_ready_timeout()).max(1));
        container["readinessProbe"] = probe;
    }
    if let Some(health) = spec.get_health() {
        let check = match health.check() {
            Check::Tcp(port) => Some(json!({ "tcpSocket": { "port": port } })),
            Check::Command(argv) => Some(json!({ "exec": { "command": argv } })),
            Check::Http(url) => http_get(url),
            _ => None,
        };
        if let Some(mut probe) = check {
            probe["periodSeconds"] = json!(seconds_up(health.get_interval()).max(1));
            probe["timeoutSeconds"] = json!(seconds_up(health.get_timeout()).max(1));
            probe["failureThreshold"] = json!(health.get_failures().max(1));
            probe["initialDelaySeconds"] = json!(seconds_up(health.get_initial_delay()));
            container["livenessProbe"] = probe;
        }
    }
    container
}

/// `http://127.0.0.1:8080/health` as an `httpGet` probe (port and path; the kubelet asks
/// the pod's address).
fn http_get(url: &str) -> Option<Value> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let port: u16 = authority
        .rsplit_once(':')
        .map_or(Some(80), |(_, p)| p.parse().ok())?;
    let path = if path.is_empty() { "/" } else { path };
    Some(json!({ "httpGet": { "path": path, "port": port } }))
}
