//! The manifests users apply with `kubectl apply -k`, against a real Kubernetes 1.33 API server
//! with Dapr 1.18.3's real control plane (Sentry, sidecar injector, operator and Dapr's CRDs),
//! started by devstack on this machine. kwok keeps the one node: it runs no containers, so a
//! pod's "Running" and "Ready" are kwok's report, not a probe's answer; everything before that
//! (admission, validation, mutation by the injector, scheduling, the controllers) is the real
//! thing.
//!
//! Needs `tools/kubernetes/install.sh` and `tools/dapr/install.sh` (and `scripts/check-deploy`
//! once, for the offline checker); `scripts/test-kubernetes` runs all of it.

mod checks;
mod guard;
mod overlay;
mod running;
mod subset;
mod walkthrough;

use devstack::{LogSink, kubernetes::ControlPlane, repo_root};

use crate::{checks::CheckError, guard::guarded, overlay::Overlay};

/// Applies every overlay and checks what the control plane made of it. Returns the number of
/// pods checked.
fn check_overlay(plane: &ControlPlane, overlay: &Overlay) -> Result<usize, CheckError> {
    let kubectl = plane.kubectl();
    let (yaml, written) = overlay::written_objects(kubectl, overlay)?;
    checks::apply(kubectl, overlay)?;
    let objects = checks::admitted_as_written(kubectl, &overlay.namespace, &yaml, &written)?;
    println!(
        "{}: stored as written: {}",
        overlay.name,
        objects.join(", ")
    );
    checks::rolled_out(kubectl, &overlay.namespace)?;
    let pods = checks::sidecars_injected(kubectl, &overlay.namespace, plane.trust_anchors())?;
    checks::operator_services(kubectl, &overlay.namespace)?;
    checks::rbac_enforced(kubectl, &overlay.namespace)?;
    Ok(pods)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_overlay_is_admitted_as_written_and_its_pods_get_their_sidecars() {
    let plane = start().await;
    guarded(plane, |plane| async move {
        for overlay in overlay::overlays(&repo_root().join("manifests")) {
            match check_overlay(&plane, &overlay) {
                Ok(pods) => println!(
                    "{}: applied to {}, {pods} pods checked",
                    overlay.name, overlay.namespace
                ),
                Err(e) => panic!("{e}"),
            }
        }
        plane
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_development_overlay_runs_and_the_readme_walkthrough_passes_through_its_sidecars() {
    let plane = start().await;
    guarded(plane, |plane| async move {
        running::development_overlay_runs(&plane).await;
        plane
    })
    .await;
}

/// One deliberate defect in a copy of the manifests, and the words each failure must contain:
/// the check against the control plane's (naming the object), and `scripts/check-deploy`'s on
/// the same copy, which runs before anything is applied.
struct Defect {
    what: &'static str,
    file: &'static str,
    old: &'static str,
    new: &'static str,
    cluster: &'static str,
    offline: &'static str,
}

const DEFECTS: [Defect; 4] = [
    Defect {
        what: "wrong app protocol",
        file: "base/notification-service.yaml",
        old: "dapr.io/app-protocol: grpc",
        new: "dapr.io/app-protocol: http",
        cluster: "Deployment/notification-service, Pod/notification-service-",
        offline: "Deployment/notification-service: dapr.io/app-protocol",
    },
    Defect {
        what: "app-token Secret missing",
        file: "overlays/docker-desktop/kustomization.yaml",
        old: "  - name: task-api-app-token\n    literals:\n      - token=dev-task-api-app-token\n",
        new: "",
        cluster: "env \"APP_API_TOKEN\" reads Secret task-api-app-token key token, which does not exist",
        offline: "Secret 'task-api-app-token'",
    },
    Defect {
        what: "Component field of the wrong type",
        file: "base/dapr/statestore.yaml",
        old: "  version: v1\n",
        new: "  version: v1\n  ignoreErrors: \"true\"\n",
        cluster: "statestore; dapr.io/v1alpha1, Kind=Component): .spec.ignoreErrors: expected boolean",
        offline: "Component/statestore",
    },
    Defect {
        what: "misspelt dapr.io/enabled (the pod would run without its sidecar)",
        file: "base/task-api.yaml",
        old: "dapr.io/enabled: \"true\"",
        new: "dapr.io/enable: \"true\"",
        cluster: "Pod/task-api-",
        offline: "Deployment/task-api: has Dapr annotations but dapr.io/enabled is None",
    },
];

#[tokio::test(flavor = "multi_thread")]
async fn a_defective_manifest_fails_the_checks_naming_the_object() {
    let plane = start().await;
    guarded(plane, |plane| async move {
        for (i, defect) in DEFECTS.iter().enumerate() {
            let copy = overlay::copy_with_defect(defect.file, defect.old, defect.new);
            let offline = overlay::check_deploy(copy.path());
            assert!(
                offline.contains(defect.offline),
                "{}: scripts/check-deploy did not report {:?}:\n{offline}",
                defect.what,
                defect.offline
            );
            let mut overlay = overlay::overlays(&copy.path().join("manifests"))
                .into_iter()
                .find(|o| o.name == "docker-desktop")
                .unwrap_or_else(|| panic!("no docker-desktop overlay in the copy"));
            overlay.namespace = format!("defect-{i}");
            let Err(error) = check_overlay(&plane, &overlay) else {
                panic!(
                    "{}: the cluster check passed a defective manifest",
                    defect.what
                )
            };
            let e = error.to_string();
            assert!(
                e.contains(defect.cluster),
                "{}: failed, but not naming the object ({:?} not in): {e}",
                defect.what,
                defect.cluster
            );
            println!(
                "{}:\n  check-deploy: {}\n  cluster: {e}",
                defect.what,
                first_fail(&offline)
            );
        }
        plane
    })
    .await;
}

/// The first FAIL line of check-deploy's report, and the problem under it.
fn first_fail(report: &str) -> String {
    let mut lines = report.lines().skip_while(|l| !l.starts_with("FAIL"));
    [lines.next(), lines.next()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ")
}

async fn start() -> ControlPlane {
    let plane = match ControlPlane::start(LogSink::Capture).await {
        Ok(plane) => plane,
        Err(e) => panic!("the control plane did not start: {e}"),
    };
    if let Err(e) = install_monitoring_crds(&plane) {
        panic!("the Prometheus Operator CRDs were not installed: {e}");
    }
    plane
}

/// Why the Prometheus Operator's CRDs were not installed.
#[derive(Debug, thiserror::Error)]
enum CrdError {
    #[error("go {args}: {source}")]
    Go {
        args: String,
        #[source]
        source: std::io::Error,
    },
    #[error("go list found no Prometheus Operator module: {0}")]
    NoModule(String),
    #[error(transparent)]
    Kubectl(#[from] devstack::Error),
}

/// The production overlays carry a PrometheusRule and a PodMonitor (manifests/observability):
/// the Prometheus Operator's CRDs of the release tools/observability/crds pins, as a cluster
/// running the operator has them.
fn install_monitoring_crds(plane: &ControlPlane) -> Result<(), CrdError> {
    const MODULE: &str = "github.com/prometheus-operator/prometheus-operator";
    let pins = repo_root().join("tools/observability/crds");
    let go = |args: &[&str]| {
        std::process::Command::new("go")
            .current_dir(&pins)
            .env("GOFLAGS", "-mod=readonly")
            .env("GOTOOLCHAIN", "local")
            .args(args)
            .output()
            .map_err(|source| CrdError::Go {
                args: args.join(" "),
                source,
            })
    };
    // Into the module cache if it is not there yet (the version is the one go.mod pins).
    go(&["mod", "download", MODULE])?;
    let output = go(&["list", "-m", "-f", "{{.Dir}}", MODULE])?;
    let module = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if !output.status.success() || module.is_empty() {
        return Err(CrdError::NoModule(
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ));
    }
    let crds = std::path::Path::new(&module).join("example/prometheus-operator-crd");
    let kubectl = plane.kubectl();
    for name in ["podmonitors", "prometheusrules"] {
        let file = crds.join(format!("monitoring.coreos.com_{name}.yaml"));
        let file = file.to_string_lossy();
        let apply = [
            "apply",
            "--server-side",
            "--field-manager=devstack",
            "-f",
            &file,
        ];
        kubectl.run(&apply)?;
        let wait = [
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "-f",
            &file,
        ];
        kubectl.run(&wait)?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_test_leaves_no_control_plane_process() {
    let plane = start().await;
    let failing = tokio::spawn(guarded(plane, |plane| async move {
        let _kept = plane;
        panic!("a deliberate failure");
    }));
    // `guarded` checks that every process is gone before it raises the body's panic again; a
    // leftover process would make its own assertion the panic seen here.
    let Err(error) = failing.await else {
        panic!("the failing body did not fail")
    };
    let panic = error.into_panic();
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    assert_eq!(message, "a deliberate failure");
}
