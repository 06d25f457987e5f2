//! The Kubernetes part of the control plane: etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler and kwok with its one node, each on loopback ports picked free at start.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use super::{KubeBinaries, Kubectl, pki::Pki};
use crate::{Error, LogSink, ManagedProcess, free_port, http};

/// How long one server may take to come up on a busy two-core machine.
pub(super) const START_TIMEOUT: Duration = Duration::from_secs(120);

/// The one node, kept by kwok.
pub const NODE_NAME: &str = "kwok-node-0";

/// The range Service IPs come from. Nothing routes it: Services get addresses, no traffic.
const SERVICE_RANGE: &str = "10.96.0.0/16";

/// Starts etcd with its data under `dir`; returns it with its client URL.
pub(super) async fn etcd(
    bins: &KubeBinaries,
    dir: &Path,
    sink: LogSink,
) -> Result<(ManagedProcess, String), Error> {
    let (client, peer) = (free_port()?, free_port()?);
    let data = dir.join("etcd");
    create_private_dir(&data)?;
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let mut command = Command::new(&bins.etcd);
    command
        .args(["--name", "local"])
        .arg("--data-dir")
        .arg(&data)
        .args([
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
        ])
        .args([
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
        ])
        .args(["--initial-cluster", &format!("local={peer_url}")]);
    let mut process = ManagedProcess::spawn("etcd", command, sink)?;
    process
        .wait_until(START_TIMEOUT, "/health did not answer 200", || {
            http::answers(client, "/health", 200)
        })
        .await?;
    Ok((process, client_url))
}

/// Starts kube-apiserver on `port` against `etcd`, with RBAC, token authentication and the
/// service-account key; waits until `/readyz` answers.
pub(super) async fn apiserver(
    bins: &KubeBinaries,
    dir: &Path,
    pki: &Pki,
    etcd: &str,
    port: u16,
    kubectl: &Kubectl,
    sink: LogSink,
) -> Result<ManagedProcess, Error> {
    let mut command = Command::new(&bins.kube_apiserver);
    command
        .args(["--etcd-servers", etcd])
        .args([
            "--bind-address",
            "127.0.0.1",
            "--secure-port",
            &port.to_string(),
        ])
        .arg(format!(
            "--cert-dir={}",
            dir.join("apiserver-certs").display()
        ))
        .arg(format!("--tls-cert-file={}", pki.apiserver_cert.display()))
        .arg(format!(
            "--tls-private-key-file={}",
            pki.apiserver_key.display()
        ))
        .arg(format!("--token-auth-file={}", pki.tokens_file.display()))
        .args(["--authorization-mode", "Node,RBAC"])
        .args([
            "--service-account-issuer",
            "https://kubernetes.default.svc.cluster.local",
        ])
        .arg(format!(
            "--service-account-key-file={}",
            pki.service_account_pub.display()
        ))
        .arg(format!(
            "--service-account-signing-key-file={}",
            pki.service_account_key.display()
        ))
        .args(["--service-cluster-ip-range", SERVICE_RANGE])
        // The `kubernetes` Service's endpoints would name this loopback address, which the
        // Endpoints API refuses; nothing in these tests reaches the API server through it.
        .args(["--endpoint-reconciler-type", "none"])
        .arg("--profiling=false")
        .args(["--v", "1"]);
    let mut process = ManagedProcess::spawn("kube-apiserver", command, sink)?;
    process
        .wait_until(START_TIMEOUT, "/readyz did not answer ok", || async {
            kubectl
                .run(&["get", "--raw", "/readyz"])
                .ok()
                .filter(|out| out.trim() == "ok")
        })
        .await?;
    Ok(process)
}

/// A controller of the control plane (kube-controller-manager, kube-scheduler): a client of the
/// API server through `kubeconfig`, serving its own endpoint on a free local port, alone (no
/// leader election).
fn controller(binary: &Path, kubeconfig: &Path, cert_dir: &Path) -> Result<Command, Error> {
    let mut command = Command::new(binary);
    command
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args([
            "--bind-address",
            "127.0.0.1",
            "--secure-port",
            &free_port()?.to_string(),
        ])
        .arg(format!("--cert-dir={}", cert_dir.display()))
        .arg("--leader-elect=false");
    Ok(command)
}

/// Starts kube-controller-manager. Its controllers create pods under their own service accounts
/// (`--use-service-account-credentials`), as in a cluster: Dapr's injector only mutates pods
/// created by the workload controllers' accounts.
pub(super) fn controller_manager(
    bins: &KubeBinaries,
    dir: &Path,
    pki: &Pki,
    kubeconfig: &Path,
    sink: LogSink,
) -> Result<ManagedProcess, Error> {
    let mut command = controller(
        &bins.kube_controller_manager,
        kubeconfig,
        &dir.join("controller-manager-certs"),
    )?;
    command
        .arg("--use-service-account-credentials=true")
        .arg(format!(
            "--service-account-private-key-file={}",
            pki.service_account_key.display()
        ))
        .arg(format!("--root-ca-file={}", pki.ca_cert.display()))
        .args(["--service-cluster-ip-range", SERVICE_RANGE])
        .args(["--v", "1"]);
    ManagedProcess::spawn("kube-controller-manager", command, sink)
}

/// Starts kube-scheduler.
pub(super) fn scheduler(
    bins: &KubeBinaries,
    dir: &Path,
    kubeconfig: &Path,
    sink: LogSink,
) -> Result<ManagedProcess, Error> {
    let mut command = controller(
        &bins.kube_scheduler,
        kubeconfig,
        &dir.join("scheduler-certs"),
    )?;
    command.args(["--v", "1"]);
    ManagedProcess::spawn("kube-scheduler", command, sink)
}

/// Starts kwok with kwok's own stages for nodes (initialise, heartbeat with a lease) and pods
/// (ready, complete, delete), keeping the nodes annotated `kwok.x-k8s.io/node: fake`.
pub(super) fn kwok(
    bins: &KubeBinaries,
    kubeconfig: &Path,
    sink: LogSink,
) -> Result<ManagedProcess, Error> {
    let stages = [
        "node/fast/node-initialize.yaml",
        "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
        "pod/fast/pod-ready.yaml",
        "pod/fast/pod-complete.yaml",
        "pod/fast/pod-delete.yaml",
    ];
    let mut command = Command::new(&bins.kwok);
    command
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg("--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake")
        .arg(format!("--server-address=127.0.0.1:{}", free_port()?));
    for stage in stages {
        command.arg(format!(
            "--config={}",
            bins.kwok_stages.join(stage).display()
        ));
    }
    ManagedProcess::spawn("kwok", command, sink)
}

/// The node kwok keeps: schedulable, room for every pod of the tests.
pub(super) fn node_manifest() -> String {
    format!(
        "apiVersion: v1
kind: Node
metadata:
  name: {NODE_NAME}
  annotations:
    kwok.x-k8s.io/node: fake
  labels:
    kubernetes.io/hostname: {NODE_NAME}
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    type: kwok
status:
  allocatable: {{cpu: \"32\", memory: 256Gi, pods: \"110\"}}
  capacity: {{cpu: \"32\", memory: 256Gi, pods: \"110\"}}
"
    )
}

/// Waits until `probe` answers, while `process` keeps running.
pub(super) async fn wait_for<T>(
    process: &mut ManagedProcess,
    what: &str,
    mut probe: impl FnMut() -> Option<T>,
) -> Result<T, Error> {
    process
        .wait_until(START_TIMEOUT, what, || std::future::ready(probe()))
        .await
}

pub(super) fn create_private_dir(dir: &PathBuf) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(Error::io(format!("{}", dir.display())))?;
    // etcd refuses a data directory others can read.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(Error::io(format!("{}", dir.display())))
}
