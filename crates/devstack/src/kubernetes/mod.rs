//! A local Kubernetes control plane with Dapr's control plane on it, for testing the manifests
//! users apply with `kubectl apply -k`, and for running the pods it admits.
//!
//! etcd, kube-apiserver (TLS, RBAC, token authentication, a service-account signing key),
//! kube-controller-manager, kube-scheduler, kwok with one node (it runs no containers: it reports
//! the pods bound to its node Running and Ready), and Dapr's Sentry, sidecar injector, operator
//! and scheduler with Dapr's CRDs and the injector's webhook. Everything listens on 127.0.0.1
//! where the program allows it, keeps its files in one private temporary directory, and stops
//! when the [`ControlPlane`] is dropped (or with the process that started it).
//! [`ControlPlane::run_pod`] runs an admitted pod's containers as host processes (see `pod`).
//!
//! The programs come from `tools/kubernetes/install.sh` (and Sentry, the scheduler and daprd from
//! `tools/dapr/install.sh`).

mod binaries;
mod cluster;
mod dapr;
mod dapr_scheduler;
mod kubectl;
mod mountns;
mod pki;
mod pod;
mod podnet;

use std::{path::Path, time::Duration};

pub use binaries::{KubeBinaries, install_command};
pub use cluster::NODE_NAME;
pub use dapr::sentry_audience;
pub use dapr_scheduler::SCHEDULER_ADDRESS;
pub use kubectl::Kubectl;
pub use pod::{ClusterName, PodRun, PodSetup, pod_ip};
pub use podnet::{PodLan, PodNetwork, Target};

use crate::{Binaries, Error, LogSink, ManagedProcess, free_port};

/// A running control plane. Dropping it stops every process, the last started first.
pub struct ControlPlane {
    /// In start order.
    processes: Vec<ManagedProcess>,
    kubectl: Kubectl,
    server: String,
    sentry_port: u16,
    operator_port: u16,
    scheduler_port: u16,
    trust_anchors: String,
    ca_cert: std::path::PathBuf,
    // Last: removed once every process is gone.
    dir: tempfile::TempDir,
}

impl ControlPlane {
    /// Starts everything and returns once pods are admitted, injected, scheduled and reported
    /// running: the node is Ready, the controllers' service accounts exist and Dapr's injector
    /// has its webhook in place.
    pub async fn start(sink: LogSink) -> Result<Self, Error> {
        let bins = KubeBinaries::locate()?;
        let runtime = Binaries::locate()?;
        let dir = tempfile::Builder::new()
            .prefix("task-api-kubernetes-")
            .tempdir()
            .map_err(Error::io("the control plane directory"))?;
        let pki = pki::Pki::create(dir.path())?;
        let port = free_port()?;
        let server = format!("https://127.0.0.1:{port}");
        let admin = plane_kubeconfig(dir.path(), &server, &pki, "admin")?;
        let mut plane = Self {
            processes: Vec::new(),
            kubectl: Kubectl::new(&bins.kubectl, &admin),
            server,
            sentry_port: 0,
            operator_port: 0,
            scheduler_port: 0,
            trust_anchors: String::new(),
            ca_cert: pki.ca_cert.clone(),
            dir,
        };
        plane.start_kubernetes(&bins, &pki, port, &sink).await?;
        let root = plane.dir.path().to_path_buf();
        let dapr = dapr::start(&bins, &runtime, &root, &plane.kubectl, sink).await?;
        plane.sentry_port = dapr.sentry_port;
        plane.operator_port = dapr.operator_port;
        plane.scheduler_port = dapr.scheduler.port;
        plane.trust_anchors = dapr.trust_anchors;
        let dapr_processes = [
            dapr.sentry,
            dapr.operator,
            dapr.injector,
            dapr.scheduler.process,
        ];
        plane.processes.extend(dapr_processes);
        plane
            .wait_for_pods(dapr::NAMESPACE, "app", dapr::POD_TIMEOUT)
            .await?;
        Ok(plane)
    }

    /// etcd, the API server on `port`, the controller manager, the scheduler and kwok with its
    /// node, in that order.
    async fn start_kubernetes(
        &mut self,
        bins: &KubeBinaries,
        pki: &pki::Pki,
        port: u16,
        sink: &LogSink,
    ) -> Result<(), Error> {
        let root = self.dir.path().to_path_buf();
        let kubeconfig = |user: &str| plane_kubeconfig(&root, &self.server, pki, user);
        let (etcd, etcd_url) = cluster::etcd(bins, &root, sink.clone()).await?;
        self.processes.push(etcd);
        let (kcm, scheduler, kwok) = (
            kubeconfig("system:kube-controller-manager")?,
            kubeconfig("system:kube-scheduler")?,
            kubeconfig("kwok")?,
        );
        let kubectl = &self.kubectl;
        let apiserver =
            cluster::apiserver(bins, &root, pki, &etcd_url, port, kubectl, sink.clone());
        self.processes.push(apiserver.await?);
        let kcm = cluster::controller_manager(bins, &root, pki, &kcm, sink.clone())?;
        self.processes.push(kcm);
        let scheduler = cluster::scheduler(bins, &root, &scheduler, sink.clone())?;
        self.processes.push(scheduler);
        self.processes
            .push(cluster::kwok(bins, &kwok, sink.clone())?);
        self.kubectl.apply(&cluster::node_manifest())?;
        self.wait_for_cluster().await
    }

    /// The node Ready (kwok), and the account the ReplicaSet controller creates pods with.
    async fn wait_for_cluster(&mut self) -> Result<(), Error> {
        let kubectl = self.kubectl.clone();
        let (kwok, controllers) = (4, 2);
        cluster::wait_for(
            &mut self.processes[kwok],
            "the kwok node is not Ready",
            || {
                kubectl
                    .run(&[
                        "get",
                        "node",
                        NODE_NAME,
                        "-o",
                        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
                    ])
                    .ok()
                    .filter(|status| status == "True")
            },
        )
        .await?;
        cluster::wait_for(
            &mut self.processes[controllers],
            "no service account kube-system/replicaset-controller",
            || {
                kubectl
                    .run(&[
                        "get",
                        "serviceaccount",
                        "replicaset-controller",
                        "-n",
                        "kube-system",
                    ])
                    .ok()
            },
        )
        .await?;
        Ok(())
    }

    /// Waits until every pod in `namespace` with label `label` runs (kwok reports it once the
    /// scheduler has bound it to the node).
    pub async fn wait_for_pods(
        &mut self,
        namespace: &str,
        label: &str,
        timeout: Duration,
    ) -> Result<(), Error> {
        let kubectl = self.kubectl.clone();
        let scheduler = 3;
        let args = [
            "wait",
            "pods",
            "-n",
            namespace,
            "-l",
            label,
            "--for=jsonpath={.status.phase}=Running",
            &format!("--timeout={}s", timeout.as_secs()),
        ];
        self.processes[scheduler].check_running()?;
        kubectl.run(&args).map(|_| ())
    }

    pub fn kubectl(&self) -> &Kubectl {
        &self.kubectl
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The cluster CA that signed the API server's certificate.
    pub fn ca_cert(&self) -> &Path {
        &self.ca_cert
    }

    /// Where the control plane keeps its files (and where a caller may put its own).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `127.0.0.1:<port>` of Sentry and of the operator's API.
    pub fn sentry_address(&self) -> String {
        format!("127.0.0.1:{}", self.sentry_port)
    }

    pub fn operator_address(&self) -> String {
        format!("127.0.0.1:{}", self.operator_port)
    }

    /// `127.0.0.1:<port>` of Dapr's scheduler (kubernetes mode, mTLS).
    pub fn scheduler_address(&self) -> String {
        format!("127.0.0.1:{}", self.scheduler_port)
    }

    /// Sentry's root certificate (the `dapr-trust-bundle` ConfigMap's ca.crt).
    pub fn trust_anchors(&self) -> &str {
        &self.trust_anchors
    }

    /// The process named `name` (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
    /// kwok, sentry, dapr-operator, dapr-sidecar-injector, dapr-scheduler).
    pub fn process(&mut self, name: &str) -> Option<&mut ManagedProcess> {
        self.processes.iter_mut().find(|p| p.name() == name)
    }

    /// The process ids of every server, for checking that none outlives the control plane.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.processes
            .iter()
            .map(|p| (p.name().to_string(), p.pid()))
            .collect()
    }
}

/// A kubeconfig for `user` (with its token) in `dir`.
fn plane_kubeconfig(
    dir: &Path,
    server: &str,
    pki: &pki::Pki,
    user: &str,
) -> Result<std::path::PathBuf, Error> {
    let path = dir.join(format!("{}.kubeconfig", user.replace(':', "-")));
    kubectl::write_kubeconfig(&path, server, &pki.ca_cert, pki.token(user))?;
    Ok(path)
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        while let Some(mut process) = self.processes.pop() {
            process.stop(Duration::from_secs(10));
            drop(process);
        }
    }
}
