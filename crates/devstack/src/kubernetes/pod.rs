//! Runs an admitted pod's containers as host processes, configured from the pod as the API server
//! stored it (after Dapr's injector mutated it): each container's command, arguments and
//! environment (Secrets and the downward API resolved as a kubelet would), its projected volumes
//! at their in-pod paths, and the pod's own network namespace. This is the kubelet's part that
//! kwok leaves out, for programs this machine can run natively.
//!
//! Inside the pod, cluster DNS names resolve through the pod's own `/etc/hosts` to loopback
//! addresses whose connections are forwarded to the real server (see `podnet`), and the API
//! server is at the `kubernetes` Service's cluster IP, where in-cluster clients look for it.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

use super::{
    ControlPlane, Kubectl,
    dapr::ROOT_CHECK_OVERRIDE,
    mountns,
    podnet::{PodLan, PodNetwork, Target},
};
use crate::{Error, LogSink, ManagedProcess};

/// The `kubernetes` Service's cluster IP (the first of the Service range).
const API_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);

/// A name the pod's programs resolve, and where connections to it go.
#[derive(Clone)]
pub struct ClusterName {
    pub name: String,
    pub port: u16,
    pub target: Target,
}

/// A running pod: its network and its containers' processes.
pub struct PodRun {
    pub name: String,
    pub network: PodNetwork,
    pub containers: Vec<ManagedProcess>,
}

impl PodRun {
    /// The process of container `name`.
    pub fn container(&mut self, name: &str) -> Option<&mut ManagedProcess> {
        let wanted = format!("{}/{name}", self.name);
        self.containers.iter_mut().find(|p| p.name() == wanted)
    }
}

/// What a pod needs from outside: the programs its containers run (by container name) and the
/// cluster names it reaches.
pub struct PodSetup<'a> {
    pub programs: &'a HashMap<String, PathBuf>,
    pub names: &'a [ClusterName],
    /// Names that resolve to other pods' addresses on the pod network (what cluster DNS answers
    /// for a headless Service).
    pub addresses: &'a [(String, Ipv4Addr)],
    pub sink: LogSink,
}

impl ControlPlane {
    /// Starts every container of `pod` (as read from the API server), on `lan` with the pod's IP.
    /// Call it inside a tokio runtime: the pod's forwarders run on it.
    pub fn run_pod(
        &self,
        pod: &Value,
        setup: &PodSetup,
        lan: &mut PodLan,
    ) -> Result<PodRun, Error> {
        let name = text(&pod["metadata"]["name"]).to_string();
        let dir = self.dir().join("pods").join(&name);
        let network = PodNetwork::new(&[API_SERVICE_IP])?;
        let api = self
            .server()
            .trim_start_matches("https://")
            .parse::<SocketAddr>();
        let api =
            api.map_err(|e| Error::io("the API server's address")(std::io::Error::other(e)))?;
        network.forward(SocketAddr::from((API_SERVICE_IP, 443)), Target::Host(api))?;
        let hosts = dir.join("hosts");
        let ip = pod_ip(pod)?;
        lan.attach(&network, ip)?;
        write_hosts(&hosts, &name, &network, setup)?;
        // Every name a pod may resolve is in its hosts file; the name server is the pod's own
        // loopback, where none listens, so no query leaves the pod.
        let resolv = dir.join("resolv.conf");
        let ns = text(&pod["metadata"]["namespace"]);
        let search = format!(
            "search {ns}.svc.cluster.local svc.cluster.local cluster.local\nnameserver 127.0.0.1\n"
        );
        std::fs::write(&resolv, search).map_err(Error::io("the pod's resolv.conf"))?;
        let run_dir = dir.join("run");
        project_volumes(self, pod, &run_dir)?;
        let mut containers = Vec::new();
        for container in pod["spec"]["containers"].as_array().into_iter().flatten() {
            let mut command = container_command(self.kubectl(), pod, container, setup.programs)?;
            network.enter(&mut command);
            mountns::with_private_mounts(
                &mut command,
                &[
                    (&run_dir, Path::new("/var/run")),
                    (&hosts, Path::new("/etc/hosts")),
                    (&resolv, Path::new("/etc/resolv.conf")),
                ],
            )?;
            command.current_dir(&dir);
            let label = format!("{name}/{}", text(&container["name"]));
            containers.push(ManagedProcess::spawn(&label, command, setup.sink.clone())?);
        }
        Ok(PodRun {
            name,
            network,
            containers,
        })
    }
}

/// The pod's `/etc/hosts`: each cluster name on a loopback address of its own, forwarded.
fn write_hosts(
    path: &Path,
    pod: &str,
    network: &PodNetwork,
    setup: &PodSetup,
) -> Result<(), Error> {
    let mut hosts = format!("127.0.0.1 localhost {pod}\n::1 localhost\n");
    for (name, address) in setup.addresses {
        hosts += &format!("{address} {name}\n");
    }
    for (i, entry) in setup.names.iter().enumerate() {
        let address = Ipv4Addr::new(127, 0, 1, (i + 1) as u8);
        network.forward(
            SocketAddr::from((address, entry.port)),
            entry.target.clone(),
        )?;
        hosts += &format!("{address} {}\n", entry.name);
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(Error::io(format!("{}", parent.display())))?;
    }
    std::fs::write(path, hosts).map_err(Error::io("the pod's hosts file"))
}

/// Writes the files of the pod's projected volumes where its containers mount them (all under
/// /var/run): service-account tokens from the TokenRequest API, bound to this pod, with the
/// volume's audience; ConfigMap keys; the namespace from the downward API.
fn project_volumes(plane: &ControlPlane, pod: &Value, run_dir: &Path) -> Result<(), Error> {
    let volumes: HashMap<&str, &Value> = pod["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| (text(&v["name"]), v))
        .collect();
    for container in pod["spec"]["containers"].as_array().into_iter().flatten() {
        for mount in container["volumeMounts"].as_array().into_iter().flatten() {
            let path = text(&mount["mountPath"]);
            let relative = path
                .strip_prefix("/var/run/")
                .ok_or_else(|| unsupported(format!("a volume mounted at {path}")))?;
            let volume = volumes
                .get(text(&mount["name"]))
                .ok_or_else(|| unsupported(format!("volume {}", mount["name"])))?;
            for source in volume["projected"]["sources"]
                .as_array()
                .into_iter()
                .flatten()
            {
                for (file, contents) in projected_files(plane, pod, source)? {
                    mountns::put(run_dir, &format!("{relative}/{file}"), contents.as_bytes())?;
                }
            }
        }
    }
    Ok(())
}

fn projected_files(
    plane: &ControlPlane,
    pod: &Value,
    source: &Value,
) -> Result<Vec<(String, String)>, Error> {
    let ns = text(&pod["metadata"]["namespace"]);
    if let Some(token) = source.get("serviceAccountToken") {
        let account = text(&pod["spec"]["serviceAccountName"]);
        let mut args = vec![
            "create",
            "token",
            account,
            "-n",
            ns,
            "--bound-object-kind",
            "Pod",
        ];
        args.extend([
            "--bound-object-name",
            text(&pod["metadata"]["name"]),
            "--duration",
            "1h",
        ]);
        if let Some(audience) = token["audience"].as_str() {
            args.extend(["--audience", audience]);
        }
        let value = plane.kubectl().run(&args)?;
        return Ok(vec![(
            text(&token["path"]).to_string(),
            value.trim().to_string(),
        )]);
    }
    if let Some(map) = source.get("configMap") {
        let stored = plane
            .kubectl()
            .get_json(&["configmap", text(&map["name"]), "-n", ns])?;
        return Ok(map["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| {
                (
                    text(&i["path"]).to_string(),
                    text(&stored["data"][text(&i["key"])]).to_string(),
                )
            })
            .collect());
    }
    if let Some(downward) = source.get("downwardAPI") {
        let mut files = Vec::new();
        for item in downward["items"].as_array().into_iter().flatten() {
            files.push((
                text(&item["path"]).to_string(),
                field(pod, text(&item["fieldRef"]["fieldPath"]))?,
            ));
        }
        return Ok(files);
    }
    Err(unsupported(format!("projected source {source}")))
}

/// The container's command line and environment.
fn container_command(
    kubectl: &Kubectl,
    pod: &Value,
    container: &Value,
    programs: &HashMap<String, PathBuf>,
) -> Result<Command, Error> {
    let name = text(&container["name"]);
    let program = programs
        .get(name)
        .ok_or_else(|| unsupported(format!("container {name}: no program for it here")))?;
    let mut words: Vec<String> = Vec::new();
    for key in ["command", "args"] {
        for word in container[key].as_array().into_iter().flatten() {
            words.push(text(word).to_string());
        }
    }
    // The image's entry point is replaced by the program built here; the rest stays as given.
    let mut command = Command::new(program);
    command.args(words.iter().skip(1));
    command
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin");
    command.env("HOSTNAME", text(&pod["metadata"]["name"]));
    // What a kubelet gives every container: where the API server is.
    command
        .env("KUBERNETES_SERVICE_HOST", API_SERVICE_IP.to_string())
        .env("KUBERNETES_SERVICE_PORT", "443");
    command.env(ROOT_CHECK_OVERRIDE, "true");
    // Dapr's images hold a daprd built without cgo, which resolves names with Go's own resolver
    // (hosts file, then DNS); the daprd built here links the C library, whose resolver fails on
    // cluster names ending in .local on this machine.
    command.env("GODEBUG", "netdns=go");
    for entry in container["env"].as_array().into_iter().flatten() {
        command.env(text(&entry["name"]), env_value(kubectl, pod, entry)?);
    }
    Ok(command)
}

fn env_value(kubectl: &Kubectl, pod: &Value, entry: &Value) -> Result<String, Error> {
    if let Some(value) = entry["value"].as_str() {
        return Ok(value.to_string());
    }
    let from = &entry["valueFrom"];
    if let Some(secret) = from.get("secretKeyRef") {
        let template = format!(
            "--template={{{{index .data \"{}\" | base64decode}}}}",
            text(&secret["key"])
        );
        let ns = text(&pod["metadata"]["namespace"]);
        return kubectl.run(&[
            "get",
            "secret",
            text(&secret["name"]),
            "-n",
            ns,
            "-o",
            "go-template",
            &template,
        ]);
    }
    if let Some(reference) = from.get("fieldRef") {
        return field(pod, text(&reference["fieldPath"]));
    }
    Err(unsupported(format!("env {entry}")))
}

/// A downward-API field of the pod.
fn field(pod: &Value, path: &str) -> Result<String, Error> {
    match path {
        "metadata.name" => Ok(text(&pod["metadata"]["name"]).to_string()),
        "metadata.namespace" => Ok(text(&pod["metadata"]["namespace"]).to_string()),
        "status.podIP" => pod_ip(pod).map(|ip| ip.to_string()),
        other => Err(unsupported(format!("field {other}"))),
    }
}

/// The IP kwok gave the pod.
pub fn pod_ip(pod: &Value) -> Result<Ipv4Addr, Error> {
    text(&pod["status"]["podIP"])
        .parse()
        .map_err(|_| unsupported(format!("pod IP {}", pod["status"]["podIP"])))
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

fn unsupported(what: String) -> Error {
    Error::Io {
        what: "a pod to run here".into(),
        source: std::io::Error::other(format!("{what} is not supported")),
    }
}
