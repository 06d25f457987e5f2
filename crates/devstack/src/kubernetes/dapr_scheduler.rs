//! Dapr's scheduler (the Jobs API) in kubernetes mode, as a host process standing for the pod
//! `dapr-scheduler-server-0`: mTLS with an identity from Sentry, its own embedded etcd.

use std::{path::Path, process::Command};

use super::{
    Kubectl, cluster,
    dapr::{TRUST_ANCHORS_PATH, TRUST_DOMAIN, pod_run_dir, spawn_control_plane},
};
use crate::{Error, LogSink, ManagedProcess, free_port};

/// The address the scheduler tells sidecars to use, and that injected sidecars are given: the
/// one name a pod resolves for it.
pub const SCHEDULER_ADDRESS: &str = "dapr-scheduler-server-a.dapr-system.svc.cluster.local:443";

/// A running scheduler and its gRPC port on 127.0.0.1.
pub struct DaprScheduler {
    pub process: ManagedProcess,
    pub port: u16,
}

pub(super) async fn start(
    binary: &Path,
    dir: &Path,
    sentry_port: u16,
    trust_anchors: &str,
    kubectl: &Kubectl,
    sink: LogSink,
) -> Result<DaprScheduler, Error> {
    let pod = "dapr-scheduler-server-0";
    let run_dir = pod_run_dir(dir, pod, "dapr-scheduler", trust_anchors, kubectl)?;
    let data = dir.join("scheduler-etcd");
    cluster::create_private_dir(&data)?;
    let (port, healthz, peer) = (free_port()?, free_port()?, free_port()?);
    let mut command = Command::new(binary);
    command
        .args(["--mode", "kubernetes", "--id", pod, "--tls-enabled"])
        .args(["--trust-domain", TRUST_DOMAIN])
        .args([
            "--trust-anchors-file",
            &format!("/var/run/{TRUST_ANCHORS_PATH}"),
        ])
        .args(["--sentry-address", &format!("127.0.0.1:{sentry_port}")])
        .arg(format!("--kubeconfig={}", kubectl.kubeconfig().display()))
        .args(["--listen-address", "127.0.0.1", "--port", &port.to_string()])
        .args(["--override-broadcast-host-port", SCHEDULER_ADDRESS])
        .args([
            "--healthz-listen-address",
            "127.0.0.1",
            "--healthz-port",
            &healthz.to_string(),
        ])
        .arg("--enable-metrics=false")
        .arg(format!("--etcd-data-dir={}", data.display()))
        .args(["--etcd-client-port", &free_port()?.to_string()])
        .args(["--etcd-client-listen-address", "127.0.0.1"])
        .arg(format!(
            "--etcd-initial-cluster={pod}=http://127.0.0.1:{peer}"
        ))
        .arg(format!(
            "--identity-directory-write={}",
            dir.join("scheduler-identity").display()
        ));
    let process = spawn_control_plane(
        "dapr-scheduler",
        command,
        kubectl,
        Some(&run_dir),
        healthz,
        sink,
    )
    .await?;
    Ok(DaprScheduler { process, port })
}
