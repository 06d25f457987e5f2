//! The development overlay's pods, run: each admitted pod's containers (the injected daprd and
//! the app) as host processes configured from the pod the API server stored, in the pod's own
//! network namespace, talking to this control plane's Sentry, operator and scheduler; then the
//! README walkthrough through them.

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    path::PathBuf,
    time::{Duration, Instant},
};

use devstack::{
    Binaries, LogSink, ManagedProcess, free_port,
    kubernetes::{
        ClusterName, ControlPlane, PodLan, PodRun, PodSetup, SCHEDULER_ADDRESS, Target, pod_ip,
    },
    prometheus, repo_root,
};
use serde_json::Value;

use crate::checks;

/// How long a pod's sidecar and app may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// The release binaries `cargo build --release` made (scripts/test builds them first).
fn release_binary(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let path = target.join("release").join(name);
    assert!(
        path.is_file(),
        "{} is missing: run cargo build --release -p task-api",
        path.display()
    );
    path
}

/// Redis for the development overlay's `redis-master`: its StatefulSet's pod stays Pending
/// here (no volume provisioner), so a private redis-server with the overlay's password stands
/// for it.
fn redis(plane: &ControlPlane) -> (ManagedProcess, u16) {
    let password = plane
        .kubectl()
        .run(&[
            "get",
            "secret",
            "redis",
            "-o",
            "go-template={{index .data \"redis-password\" | base64decode}}",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    let port = free_port().unwrap_or_else(|e| panic!("{e}"));
    let mut command = std::process::Command::new("redis-server");
    command
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--requirepass",
            &password,
        ])
        .args(["--save", "", "--appendonly", "no"]);
    let process = ManagedProcess::spawn("redis", command, LogSink::Capture)
        .unwrap_or_else(|e| panic!("redis-server: {e}"));
    (process, port)
}

/// Starts `pod` and waits until its daprd is initialised and its app is ready.
async fn run_ready(
    plane: &ControlPlane,
    pod: &Value,
    setup: &PodSetup<'_>,
    lan: &mut PodLan,
    app: &str,
) -> PodRun {
    let mut run = plane
        .run_pod(pod, setup, lan)
        .unwrap_or_else(|e| panic!("{e}"));
    // Readiness waits, not checks: each program's own word that it is up.
    let started = Instant::now();
    for (container, line) in [
        ("daprd", "dapr initialized. Status: Running"),
        (app, "ready: the Dapr sidecar answers"),
    ] {
        let process = run
            .container(container)
            .unwrap_or_else(|| panic!("no container {container}"));
        if let Err(e) = process
            .wait_for_log(line, READY_TIMEOUT.saturating_sub(started.elapsed()))
            .await
        {
            panic!("pod {}: {e}", run.name);
        }
    }
    run
}

/// daprd's metrics port in a pod, as the injector sets it.
const DAPRD_METRICS_PORT: u16 = 9090;

/// What daprd reports in its metrics once it has loaded: the operator answered its component
/// list (a call only an identity from Sentry gets through, over mTLS, in Kubernetes mode), the
/// Resiliency and the Components of `component_types` (Secrets resolved) initialised.
/// (`dapr_runtime_mtls_init_total` would say the identity more directly, but a daprd that had
/// logged "dapr initialized" was seen without it.)
async fn sidecar_loaded(run: &PodRun, component_types: &[&str]) {
    let metrics = run
        .network
        .get(DAPRD_METRICS_PORT, "/")
        .await
        .unwrap_or_else(|e| panic!("pod {}: {e}", run.name))
        .text();
    let count = |name: &str, labels: &[(&str, &str)]| prometheus::sum(&metrics, name, labels);
    let mut expected = vec![
        (
            "dapr_grpc_io_client_completed_rpcs",
            vec![
                (
                    "grpc_client_method",
                    "/dapr.proto.operator.v1.Operator/ListComponents",
                ),
                ("grpc_client_status", "OK"),
            ],
        ),
        (
            "dapr_resiliency_loaded",
            vec![("name", "task-api-resiliency")],
        ),
    ];
    expected.extend(
        component_types
            .iter()
            .map(|t| ("dapr_runtime_component_init_total", vec![("component", *t)])),
    );
    for (name, labels) in expected {
        assert!(
            count(name, &labels) >= 1.0,
            "pod {}: daprd reports no {name} {labels:?}:\n{metrics}",
            run.name
        );
    }
}

/// The programs the pods' containers run, by container name.
fn programs() -> HashMap<String, PathBuf> {
    let daprd = Binaries::locate().unwrap_or_else(|e| panic!("{e}")).daprd;
    let apps =
        ["task-api", "notification-service"].map(|app| (app.to_string(), release_binary(app)));
    [("daprd".to_string(), daprd)]
        .into_iter()
        .chain(apps)
        .collect()
}

/// The cluster names the pods reach outside the pod network: Dapr's control plane (the names
/// the injector gave daprd) and Redis, each forwarded to where it listens here.
fn cluster_names(plane: &ControlPlane, redis_port: u16) -> Vec<ClusterName> {
    let scheduler = SCHEDULER_ADDRESS.split(':').next().unwrap_or_default();
    [
        (
            "dapr-api.dapr-system.svc.cluster.local",
            443,
            plane.operator_address(),
        ),
        (
            "dapr-sentry.dapr-system.svc.cluster.local",
            443,
            plane.sentry_address(),
        ),
        (scheduler, 443, plane.scheduler_address()),
        ("redis-master", 6379, format!("127.0.0.1:{redis_port}")),
    ]
    .into_iter()
    .map(|(name, port, address)| ClusterName {
        name: name.into(),
        port,
        target: Target::Host(address.parse().unwrap_or_else(|e| panic!("{address}: {e}"))),
    })
    .collect()
}

/// What cluster DNS answers in every pod for the operator's headless `<app-id>-dapr` Services,
/// by which Dapr's Kubernetes name resolution finds another app's sidecar: the pods' IPs.
fn sidecar_addresses(pods: &[(&str, &[Value])]) -> Vec<(String, Ipv4Addr)> {
    let mut addresses = Vec::new();
    for (app, list) in pods {
        for pod in *list {
            let ip = pod_ip(pod).unwrap_or_else(|e| panic!("{e}"));
            addresses.push((format!("{app}-dapr.default.svc.cluster.local"), ip));
        }
    }
    addresses
}

fn pods(plane: &ControlPlane, app: &str) -> Vec<Value> {
    let selector = format!("app.kubernetes.io/name={app}");
    let list = plane.kubectl().get_json(&["pods", "-l", &selector]);
    list.unwrap_or_else(|e| panic!("{e}"))["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Applies the development overlay to `default`, runs every pod of both apps, and passes the
/// README walkthrough through them.
pub async fn development_overlay_runs(plane: &ControlPlane) {
    let overlay = crate::overlay::overlays(&repo_root().join("manifests"))
        .into_iter()
        .find(|o| o.name == "docker-desktop")
        .unwrap_or_else(|| panic!("no docker-desktop overlay"));
    checks::apply(plane.kubectl(), &overlay).unwrap_or_else(|e| panic!("{e}"));
    checks::rolled_out(plane.kubectl(), "default").unwrap_or_else(|e| panic!("{e}"));
    let (_redis, redis_port) = redis(plane);
    let (programs, names) = (programs(), cluster_names(plane, redis_port));
    let (notifiers, task_apis) = (pods(plane, "notification-service"), pods(plane, "task-api"));
    let addresses = sidecar_addresses(&[
        ("notification-service", &notifiers),
        ("task-api", &task_apis),
    ]);
    let sink = LogSink::Capture;
    let setup = PodSetup {
        programs: &programs,
        names: &names,
        addresses: &addresses,
        sink,
    };
    let mut lan = PodLan::new().unwrap_or_else(|e| panic!("{e}"));
    let notification = run_ready(
        plane,
        &notifiers[0],
        &setup,
        &mut lan,
        "notification-service",
    )
    .await;
    sidecar_loaded(&notification, &["state.redis"]).await;
    let mut task_api = Vec::new();
    for pod in &task_apis {
        let run = run_ready(plane, pod, &setup, &mut lan, "task-api").await;
        let components = ["state.redis", "pubsub.redis", "secretstores.kubernetes"];
        sidecar_loaded(&run, &components).await;
        task_api.push(run);
    }
    crate::walkthrough::passes(plane, &task_api[0], &notification).await;
}
