//! Dapr's control plane on the local cluster: Sentry (kubernetes mode), the sidecar injector and
//! the operator, as host processes, with Dapr's own CRDs and the injector's webhook.
//!
//! In a cluster these run as pods in `dapr-system`. Here each runs on the host, and a pod stands
//! for it in `dapr-system` (same service account, same `dapr.io/control-plane` annotation), so
//! that a service-account token bound to that pod is what it presents to Sentry, as a projected
//! token would be. The token and Sentry's trust bundle sit at their in-pod paths in a private
//! `/var/run` (see `mountns`).
//!
//! The API server reaches the injector's webhook through an `ExternalName` Service pointing at
//! `localhost` (it resolves such a Service itself rather than through cluster DNS), and verifies
//! the certificate Sentry issued for `dapr-sidecar-injector.dapr-system.svc` against the trust
//! bundle the injector patches into the webhook configuration.

use std::{path::Path, process::Command, time::Duration};

use super::{KubeBinaries, Kubectl, cluster, mountns};
use crate::{Error, LogSink, ManagedProcess, free_port, http};

pub const NAMESPACE: &str = "dapr-system";
/// The Dapr release whose control plane this is; also the sidecar image the injector names.
pub const DAPR_VERSION: &str = "1.18.3";
pub(super) const TRUST_DOMAIN: &str = "cluster.local";
pub(super) const TOKEN_PATH: &str = "secrets/dapr.io/sentrytoken/token";
pub(super) const TRUST_ANCHORS_PATH: &str = "secrets/dapr.io/tls/ca.crt";

/// In kubernetes mode Dapr's programs refuse to run as root unless this is set; the tests run
/// as root (Dapr's images run as a non-root user).
pub const ROOT_CHECK_OVERRIDE: &str = "DAPR_UNSAFE_SKIP_CONTAINER_UID_GID_CHECK";

/// The audience Sentry's Kubernetes validator accepts tokens for.
pub fn sentry_audience() -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/dapr-sentry")
}

/// What exists in `dapr-system` before any Dapr process starts: the namespace, the service
/// accounts, the (empty) trust bundle Sentry fills, and the pods that stand for the injector
/// and the operator.
fn system_objects() -> String {
    let mut out = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NAMESPACE}\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata:\n  name: dapr-trust-bundle\n  namespace: {NAMESPACE}\n---\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: dapr-trust-bundle\n  namespace: {NAMESPACE}\n"
    );
    for account in [
        "dapr-sentry",
        "dapr-injector",
        "dapr-operator",
        "dapr-scheduler",
    ] {
        out += &format!(
            "---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {account}\n  namespace: {NAMESPACE}\n"
        );
    }
    for (pod, account, role) in [
        ("dapr-sidecar-injector", "dapr-injector", "injector"),
        ("dapr-operator", "dapr-operator", "operator"),
        ("dapr-scheduler-server-0", "dapr-scheduler", "scheduler"),
    ] {
        out += &format!(
            "---
apiVersion: v1
kind: Pod
metadata:
  name: {pod}
  namespace: {NAMESPACE}
  labels:
    app: {pod}
  annotations:
    dapr.io/control-plane: {role}
spec:
  serviceAccountName: {account}
  containers:
    - name: {role}
      image: ghcr.io/dapr/{role}:{DAPR_VERSION}
"
        );
    }
    out
}

/// Sentry's own Configuration, read by Sentry and the operator (mTLS, Sentry's address).
fn daprsystem_configuration(sentry_port: u16) -> String {
    format!(
        "apiVersion: dapr.io/v1alpha1
kind: Configuration
metadata:
  name: daprsystem
  namespace: {NAMESPACE}
spec:
  mtls:
    enabled: true
    workloadCertTTL: 24h
    allowedClockSkew: 15m
    controlPlaneTrustDomain: {TRUST_DOMAIN}
    sentryAddress: 127.0.0.1:{sentry_port}
"
    )
}

/// The injector's Service, resolved by the API server to localhost, and the webhook on it: the
/// rules of Dapr's chart (pods, CREATE, reinvoked if needed, failures ignored), with the port
/// the injector listens on here.
fn webhook_objects(injector_port: u16) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: dapr-sidecar-injector
  namespace: {NAMESPACE}
spec:
  type: ExternalName
  externalName: localhost
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: dapr-sidecar-injector
webhooks:
  - name: sidecar-injector.dapr.io
    reinvocationPolicy: IfNeeded
    clientConfig:
      service:
        namespace: {NAMESPACE}
        name: dapr-sidecar-injector
        path: /mutate
        port: {injector_port}
    rules:
      - apiGroups: [\"\"]
        apiVersions: [v1]
        resources: [pods]
        operations: [CREATE]
    failurePolicy: Ignore
    sideEffects: None
    admissionReviewVersions: [v1, v1beta1]
"
    )
}

/// The running Dapr control plane.
pub(super) struct DaprControlPlane {
    pub sentry: ManagedProcess,
    pub operator: ManagedProcess,
    pub injector: ManagedProcess,
    pub scheduler: super::dapr_scheduler::DaprScheduler,
    pub sentry_port: u16,
    pub operator_port: u16,
    pub trust_anchors: String,
}

/// Applies Dapr's CRDs (from the pinned module) and waits until the API server serves them.
pub(super) fn install_crds(bins: &KubeBinaries, kubectl: &Kubectl) -> Result<(), Error> {
    // The trailing slash makes kubectl read the linked directory rather than the link.
    let crds = format!("{}/", bins.dapr_crds.display());
    kubectl.run(&[
        "apply",
        "--server-side",
        "--field-manager=devstack",
        "-f",
        &crds,
    ])?;
    kubectl.run(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "-f",
        &crds,
    ])?;
    Ok(())
}

/// Starts Sentry, the operator and the injector, in that order, each once the one before is
/// healthy; returns when the injector has patched its webhook with Sentry's trust bundle.
pub(super) async fn start(
    bins: &KubeBinaries,
    runtime: &crate::Binaries,
    dir: &Path,
    kubectl: &Kubectl,
    sink: LogSink,
) -> Result<DaprControlPlane, Error> {
    let sentry_binary = &runtime.sentry;
    install_crds(bins, kubectl)?;
    kubectl.apply(&system_objects())?;
    let sentry_port = free_port()?;
    kubectl.apply(&daprsystem_configuration(sentry_port))?;
    let (mut sentry, trust_anchors) =
        start_sentry(sentry_binary, dir, sentry_port, kubectl, sink.clone()).await?;
    let operator_port = free_port()?;
    let operator = start_operator(
        bins,
        dir,
        operator_port,
        &trust_anchors,
        kubectl,
        sink.clone(),
    )
    .await?;
    let injector_port = free_port()?;
    kubectl.apply(&webhook_objects(injector_port))?;
    let injector = start_injector(
        bins,
        dir,
        injector_port,
        sentry_port,
        &trust_anchors,
        kubectl,
        sink.clone(),
    )
    .await?;
    let scheduler = super::dapr_scheduler::start(
        &runtime.scheduler,
        dir,
        sentry_port,
        &trust_anchors,
        kubectl,
        sink,
    )
    .await?;
    sentry.check_running()?;
    Ok(DaprControlPlane {
        sentry,
        operator,
        injector,
        scheduler,
        sentry_port,
        operator_port,
        trust_anchors,
    })
}

async fn start_sentry(
    binary: &Path,
    dir: &Path,
    port: u16,
    kubectl: &Kubectl,
    sink: LogSink,
) -> Result<(ManagedProcess, String), Error> {
    let healthz = free_port()?;
    // Sentry watches this directory for issuer files; in kubernetes mode they live in the
    // dapr-trust-bundle Secret, so it stays empty.
    let credentials = dir.join("sentry-credentials");
    std::fs::create_dir_all(&credentials).map_err(Error::io("the sentry directory"))?;
    let mut command = Command::new(binary);
    command
        .args(["--mode", "kubernetes", "--config", "daprsystem"])
        .args(["--trust-domain", TRUST_DOMAIN])
        .arg("--issuer-credentials")
        .arg(&credentials)
        .args(["--listen-address", "127.0.0.1", "--port", &port.to_string()])
        .args(["--healthz-listen-address", "127.0.0.1"])
        .args(["--healthz-port", &healthz.to_string()])
        .arg("--enable-metrics=false")
        .arg("--kubeconfig")
        .arg(kubectl.kubeconfig());
    let mut process = spawn_control_plane("sentry", command, kubectl, None, healthz, sink).await?;
    // Sentry keeps its root in the trust bundle ConfigMap, as in a cluster.
    let trust_anchors = cluster::wait_for(
        &mut process,
        "no ca.crt in ConfigMap dapr-trust-bundle",
        || {
            kubectl
                .get_json(&["configmap", "dapr-trust-bundle", "-n", NAMESPACE])
                .ok()
                .and_then(|map| map["data"]["ca.crt"].as_str().map(str::to_string))
                .filter(|pem| pem.contains("BEGIN CERTIFICATE"))
        },
    )
    .await?;
    Ok((process, trust_anchors))
}

async fn start_operator(
    bins: &KubeBinaries,
    dir: &Path,
    port: u16,
    trust_anchors: &str,
    kubectl: &Kubectl,
    sink: LogSink,
) -> Result<ManagedProcess, Error> {
    let run_dir = pod_run_dir(
        dir,
        "dapr-operator",
        "dapr-operator",
        trust_anchors,
        kubectl,
    )?;
    let healthz = free_port()?;
    let mut command = Command::new(&bins.operator);
    command
        .args(["--config", "daprsystem", "--watch-interval", "0"])
        .args(["--listen-address", "127.0.0.1", "--port", &port.to_string()])
        .args([
            "--healthz-listen-address",
            "127.0.0.1",
            "--healthz-port",
            &healthz.to_string(),
        ])
        .args(["--webhook-server-listen-address", "127.0.0.1"])
        .args(["--webhook-server-port", &free_port()?.to_string()])
        .args([
            "--trust-anchors-file",
            &format!("/var/run/{TRUST_ANCHORS_PATH}"),
        ])
        .arg("--disable-leader-election")
        .arg("--enable-metrics=false")
        .arg(format!("--kubeconfig={}", kubectl.kubeconfig().display()));
    spawn_control_plane(
        "dapr-operator",
        command,
        kubectl,
        Some(&run_dir),
        healthz,
        sink,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn start_injector(
    bins: &KubeBinaries,
    dir: &Path,
    port: u16,
    sentry_port: u16,
    trust_anchors: &str,
    kubectl: &Kubectl,
    sink: LogSink,
) -> Result<ManagedProcess, Error> {
    let run_dir = pod_run_dir(
        dir,
        "dapr-sidecar-injector",
        "dapr-injector",
        trust_anchors,
        kubectl,
    )?;
    let healthz = free_port()?;
    let mut command = Command::new(&bins.injector);
    command
        .args(["--listen-address", "127.0.0.1", "--port", &port.to_string()])
        .args([
            "--healthz-listen-address",
            "127.0.0.1",
            "--healthz-port",
            &healthz.to_string(),
        ])
        .arg("--enable-metrics=false")
        .arg(format!("--kubeconfig={}", kubectl.kubeconfig().display()));
    injector_env(&mut command, sentry_port);
    let mut process = spawn_control_plane(
        "dapr-sidecar-injector",
        command,
        kubectl,
        Some(&run_dir),
        healthz,
        sink,
    )
    .await?;
    cluster::wait_for(&mut process, "the webhook has no caBundle", || {
        kubectl
            .get_json(&["mutatingwebhookconfiguration", "dapr-sidecar-injector"])
            .ok()
            .filter(|hook| hook["webhooks"][0]["clientConfig"]["caBundle"].is_string())
    })
    .await?;
    Ok(process)
}

/// The settings Dapr's chart gives the injector by default; Sentry's trust bundle at its in-pod
/// path.
fn injector_env(command: &mut Command, sentry_port: u16) {
    let image = format!("ghcr.io/dapr/daprd:{DAPR_VERSION}");
    let settings = [
        ("SIDECAR_IMAGE", image.as_str()),
        ("SIDECAR_IMAGE_PULL_POLICY", "IfNotPresent"),
        ("KUBE_CLUSTER_DOMAIN", "cluster.local"),
        ("DAPR_CONTROL_PLANE_TRUST_DOMAIN", TRUST_DOMAIN),
        ("SIDECAR_RUN_AS_NON_ROOT", "true"),
        ("SIDECAR_READ_ONLY_ROOT_FILESYSTEM", "true"),
        ("SIDECAR_DROP_ALL_CAPABILITIES", "false"),
        ("ENABLE_K8S_DOWNWARD_APIS", "false"),
        ("NATIVE_SIDECAR_ENABLED", "false"),
        ("ACTORS_ENABLED", "true"),
        ("ACTORS_SERVICE_NAME", "placement"),
        ("ACTORS_SERVICE_ADDRESS", "dapr-placement-server:50005"),
    ];
    command.envs(settings);
    command
        .env(
            "DAPR_TRUST_ANCHORS_FILE",
            format!("/var/run/{TRUST_ANCHORS_PATH}"),
        )
        .env("DAPR_SENTRY_ADDRESS", format!("127.0.0.1:{sentry_port}"));
}

/// Environment every Dapr control-plane process gets: its namespace and the API server.
/// Starts a control-plane process as its pod would run: in the cluster's environment, with a
/// private `/var/run` when `run_dir` is given; ready once its healthz answers.
pub(super) async fn spawn_control_plane(
    name: &str,
    mut command: Command,
    kubectl: &Kubectl,
    run_dir: Option<&Path>,
    healthz: u16,
    sink: LogSink,
) -> Result<ManagedProcess, Error> {
    control_plane_env(&mut command, kubectl);
    if let Some(run_dir) = run_dir {
        mountns::with_private_run(&mut command, run_dir)?;
    }
    let mut process = ManagedProcess::spawn(name, command, sink)?;
    process
        .wait_until(cluster::START_TIMEOUT, "healthz did not answer 200", || {
            http::answers(healthz, "/healthz", 200)
        })
        .await?;
    Ok(process)
}

fn control_plane_env(command: &mut Command, kubectl: &Kubectl) {
    command
        .env("NAMESPACE", NAMESPACE)
        .env(ROOT_CHECK_OVERRIDE, "true")
        .env("KUBE_CONFIG", kubectl.kubeconfig())
        .env("KUBECONFIG", kubectl.kubeconfig())
        .current_dir(kubectl.kubeconfig().parent().unwrap_or(Path::new("/")));
}

/// A private `/var/run` for the process that `pod` stands for: a Sentry token of `account`
/// bound to that pod, and Sentry's trust bundle, where the pod would have them mounted.
pub(super) fn pod_run_dir(
    dir: &Path,
    pod: &str,
    account: &str,
    trust_anchors: &str,
    kubectl: &Kubectl,
) -> Result<std::path::PathBuf, Error> {
    let run_dir = dir.join(format!("run-{pod}"));
    let token = pod_token(kubectl, NAMESPACE, account, pod)?;
    mountns::put(&run_dir, TOKEN_PATH, token.as_bytes())?;
    mountns::put(&run_dir, TRUST_ANCHORS_PATH, trust_anchors.as_bytes())?;
    Ok(run_dir)
}

/// A service-account token for Sentry, bound to `pod` (as the projected token Dapr mounts).
pub fn pod_token(
    kubectl: &Kubectl,
    namespace: &str,
    account: &str,
    pod: &str,
) -> Result<String, Error> {
    let token = kubectl.run(&[
        "create",
        "token",
        account,
        "-n",
        namespace,
        "--audience",
        &sentry_audience(),
        "--bound-object-kind",
        "Pod",
        "--bound-object-name",
        pod,
        "--duration",
        "1h",
    ])?;
    Ok(token.trim().to_string())
}

/// How long a pod of the control plane may take to be scheduled and reported running.
pub(super) const POD_TIMEOUT: Duration = Duration::from_secs(90);
