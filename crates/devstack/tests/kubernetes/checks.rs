//! What is checked against the control plane once an overlay is applied. Every check returns
//! an error that names the object, so that the self-test can break a manifest and see which
//! check caught it.

use devstack::kubernetes::{Kubectl, NODE_NAME, sentry_audience};
use serde_json::Value;

use crate::{overlay::Overlay, subset::first_difference};

/// Why a check failed. Its message names the object, so that the self-test can tell which
/// check caught a broken manifest.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// What the control plane made is not what the manifests say.
    #[error("{0}")]
    Found(String),
    /// kubectl failed.
    #[error(transparent)]
    Kubectl(#[from] devstack::Error),
    /// kubectl failed, about `context`.
    #[error("{context}: {source}")]
    KubectlAbout {
        context: String,
        source: devstack::Error,
    },
    /// kubectl's output is not the JSON it should be.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// kubectl could not be run.
    #[error(transparent)]
    Run(#[from] std::io::Error),
    /// A check of one object failed.
    #[error("{place}: {source}")]
    At {
        place: String,
        source: Box<CheckError>,
    },
}

impl CheckError {
    fn about(context: impl Into<String>) -> impl FnOnce(devstack::Error) -> CheckError {
        let context = context.into();
        move |source| CheckError::KubectlAbout { context, source }
    }

    fn at(place: &str) -> impl FnOnce(CheckError) -> CheckError + '_ {
        move |source| CheckError::At {
            place: place.to_string(),
            source: Box::new(source),
        }
    }
}

/// A finding: what differs from what the manifests say.
fn found(what: impl Into<String>) -> CheckError {
    CheckError::Found(what.into())
}

/// What the sidecar of an app must be given; from the admitted Deployment's annotations.
const APP_PROTOCOL: &str = "grpc";
const SENTRY: &str = "dapr-sentry.dapr-system.svc.cluster.local:443";
const OPERATOR: &str = "dapr-api.dapr-system.svc.cluster.local:443";
const TOKEN_MOUNT: &str = "/var/run/secrets/dapr.io/sentrytoken";
/// The two apps.
pub const APPS: [&str; 2] = ["task-api", "notification-service"];

/// Creates the Secrets the overlay documents as prerequisites (with test values), then
/// `kubectl apply --server-side -k` into its namespace: the API server's and the CRDs'
/// validation must accept every object.
pub fn apply(kubectl: &Kubectl, overlay: &Overlay) -> Result<(), CheckError> {
    let ns = overlay.namespace.as_str();
    if ns != "default" {
        kubectl.run(&["create", "namespace", ns])?;
    }
    for (name, keys) in crate::overlay::documented_secrets(&overlay.dir) {
        let mut args = vec!["create", "secret", "generic", &name, "-n", ns];
        let literals: Vec<String> = keys
            .iter()
            .map(|k| format!("--from-literal={k}=test-{name}-{k}"))
            .collect();
        args.extend(literals.iter().map(String::as_str));
        kubectl
            .run(&args)
            .map_err(CheckError::about(format!("Secret {ns}/{name}")))?;
    }
    let dir = overlay.dir.to_string_lossy();
    kubectl
        .run(&[
            "apply",
            "--server-side",
            "--field-manager=kubectl",
            "-k",
            &dir,
            "-n",
            ns,
        ])
        .map(|_| ())
        .map_err(CheckError::about(format!(
            "overlay {} was refused",
            overlay.name
        )))
}

/// Everything the overlay says (`written`, rendered from `yaml`) is in what the API server
/// stored: nothing refused, pruned or changed. Returns the objects compared, as Kind/name.
pub fn admitted_as_written(
    kubectl: &Kubectl,
    ns: &str,
    yaml: &str,
    written: &[Value],
) -> Result<Vec<String>, CheckError> {
    let stored = kubectl
        .run_with_input(&["get", "-f", "-", "-n", ns, "-o", "json"], Some(yaml))
        .map_err(CheckError::about(format!(
            "{ns}: reading the applied objects back"
        )))?;
    let stored: Value = serde_json::from_str(&stored)?;
    let stored = stored["items"].as_array().cloned().unwrap_or_default();
    if stored.len() != written.len() {
        return Err(found(format!(
            "{ns}: {} objects written, {} stored",
            written.len(),
            stored.len()
        )));
    }
    for (object, stored) in written.iter().zip(&stored) {
        let kind = object["kind"].as_str().unwrap_or_default();
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        if stored["kind"] != kind || stored["metadata"]["name"] != name {
            return Err(found(format!(
                "{ns}: {kind}/{name} read back as {}/{}",
                stored["kind"], stored["metadata"]["name"]
            )));
        }
        for part in [
            "metadata", "spec", "data", "scopes", "auth", "rules", "roleRef", "subjects",
        ] {
            if let Some(difference) = first_difference(&object[part], &stored[part], part) {
                return Err(found(format!(
                    "{ns}: {kind}/{name} was not stored as written: {difference}"
                )));
            }
        }
    }
    Ok(written
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap_or("?"),
                o["metadata"]["name"].as_str().unwrap_or("?")
            )
        })
        .collect())
}

/// `kubectl rollout status` of both apps' Deployments.
pub fn rolled_out(kubectl: &Kubectl, ns: &str) -> Result<(), CheckError> {
    for app in APPS {
        kubectl
            .run(&[
                "rollout",
                "status",
                &format!("deployment/{app}"),
                "-n",
                ns,
                "--timeout=120s",
            ])
            .map_err(CheckError::about(format!(
                "{ns}: Deployment/{app} did not roll out"
            )))?;
    }
    Ok(())
}

/// For every pod of both apps: what the injector added (daprd, its arguments, the app token, the
/// mTLS settings, the identity-token volume), that every Secret it and the app read exists, that
/// the app container is the one written in the Deployment, and that both containers are ready on
/// the kwok node. Returns how many pods were checked.
pub fn sidecars_injected(
    kubectl: &Kubectl,
    ns: &str,
    trust_anchors: &str,
) -> Result<usize, CheckError> {
    let mut checked = 0;
    for app in APPS {
        let deployment = kubectl
            .get_json(&["deployment", app, "-n", ns])
            .map_err(CheckError::about(format!("{ns}: Deployment/{app}")))?;
        let pods = kubectl
            .get_json(&[
                "pods",
                "-n",
                ns,
                "-l",
                &format!("app.kubernetes.io/name={app}"),
            ])
            .map_err(CheckError::about(format!("{ns}: pods of {app}")))?;
        let pods = pods["items"].as_array().cloned().unwrap_or_default();
        if pods.is_empty() {
            return Err(found(format!("{ns}: Deployment/{app} has no pods")));
        }
        for pod in &pods {
            let name = pod["metadata"]["name"].as_str().unwrap_or("?");
            let where_ = format!("{ns}: Deployment/{app}, Pod/{name}");
            pod_as_injected(&deployment, pod, trust_anchors).map_err(CheckError::at(&where_))?;
            secrets_resolve(kubectl, ns, pod).map_err(CheckError::at(&where_))?;
            ready_on_node(pod).map_err(CheckError::at(&where_))?;
            checked += 1;
        }
    }
    Ok(checked)
}

fn pod_as_injected(deployment: &Value, pod: &Value, trust_anchors: &str) -> Result<(), CheckError> {
    let template = &deployment["spec"]["template"];
    let containers = items(&pod["spec"]["containers"]);
    let daprd = containers
        .iter()
        .find(|c| c["name"] == "daprd")
        .ok_or_else(|| found("the sidecar injector added no daprd container"))?;
    for written in items(&template["spec"]["containers"]) {
        let admitted = containers.iter().find(|c| c["name"] == written["name"]);
        let admitted =
            admitted.ok_or_else(|| found(format!("container {} is missing", written["name"])))?;
        if let Some(difference) = first_difference(&written, admitted, "container") {
            return Err(found(format!(
                "not as written in the Deployment: {difference}"
            )));
        }
    }
    daprd_arguments(template, daprd)?;
    daprd_environment(template, daprd, trust_anchors)?;
    identity_token(pod, daprd)
}

/// daprd's flags: the app's id, protocol, port and Configuration, kubernetes mode with mTLS and
/// the control plane's addresses.
fn daprd_arguments(template: &Value, daprd: &Value) -> Result<(), CheckError> {
    let annotation = |key: &str| text(&template["metadata"]["annotations"][key]).to_string();
    let app_port =
        app_port(template).ok_or_else(|| found("the app container declares no port named grpc"))?;
    let args: Vec<String> = items(&daprd["args"])
        .iter()
        .map(|a| text(a).to_string())
        .collect();
    let expected = [
        ("--app-id", annotation("dapr.io/app-id")),
        ("--app-protocol", APP_PROTOCOL.to_string()),
        ("--app-port", app_port.to_string()),
        ("--config", annotation("dapr.io/config")),
        ("--mode", "kubernetes".to_string()),
        ("--sentry-address", SENTRY.to_string()),
        ("--control-plane-address", OPERATOR.to_string()),
    ];
    for (flag, value) in expected {
        let given = args
            .iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1));
        if given != Some(&value) {
            return Err(found(format!(
                "daprd {flag} is {given:?}, expected {value:?} (args {args:?})"
            )));
        }
    }
    if !args.iter().any(|a| a == "--enable-mtls") {
        return Err(found(format!(
            "daprd runs without --enable-mtls (args {args:?})"
        )));
    }
    Ok(())
}

/// daprd's environment: Sentry's root as trust anchors, both tokens from the annotated Secrets.
fn daprd_environment(
    template: &Value,
    daprd: &Value,
    trust_anchors: &str,
) -> Result<(), CheckError> {
    let annotation = |key: &str| text(&template["metadata"]["annotations"][key]).to_string();
    let env = |name: &str| items(&daprd["env"]).into_iter().find(|e| e["name"] == name);
    if env("DAPR_TRUST_ANCHORS").map(|e| e["value"].clone()) != Some(Value::from(trust_anchors)) {
        return Err(found(
            "daprd's DAPR_TRUST_ANCHORS is not Sentry's root certificate",
        ));
    }
    for (variable, annotation_key) in [
        ("APP_API_TOKEN", "dapr.io/app-token-secret"),
        ("DAPR_API_TOKEN", "dapr.io/api-token-secret"),
    ] {
        let reference = env(variable).map(|e| e["valueFrom"]["secretKeyRef"].clone());
        let want = serde_json::json!({"name": annotation(annotation_key), "key": "token"});
        if reference.as_ref() != Some(&want) {
            return Err(found(format!(
                "daprd's {variable} comes from {reference:?}, expected Secret {want}"
            )));
        }
    }
    Ok(())
}

fn items(value: &Value) -> Vec<Value> {
    value.as_array().cloned().unwrap_or_default()
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

fn identity_token(pod: &Value, daprd: &Value) -> Result<(), CheckError> {
    let volume = pod["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == "dapr-identity-token")
        .ok_or_else(|| {
            found("no dapr-identity-token volume (the injector had no Sentry token of its own)")
        })?;
    let audience = &volume["projected"]["sources"][0]["serviceAccountToken"]["audience"];
    if audience != &Value::from(sentry_audience()) {
        return Err(found(format!(
            "the identity token's audience is {audience}, not {}",
            sentry_audience()
        )));
    }
    let mounted = daprd["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|m| m["name"] == "dapr-identity-token" && m["mountPath"] == TOKEN_MOUNT);
    if !mounted {
        return Err(found(format!(
            "daprd does not mount dapr-identity-token at {TOKEN_MOUNT}"
        )));
    }
    Ok(())
}

/// The app container's port named grpc, as written in the Deployment.
fn app_port(template: &Value) -> Option<u64> {
    let containers = template["spec"]["containers"].as_array()?;
    containers
        .iter()
        .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
        .find(|p| p["name"] == "grpc")
        .and_then(|p| p["containerPort"].as_u64())
}

/// What a kubelet checks before it starts a container and kwok does not: every Secret an env
/// entry reads exists and has the key.
fn secrets_resolve(kubectl: &Kubectl, ns: &str, pod: &Value) -> Result<(), CheckError> {
    for container in pod["spec"]["containers"].as_array().into_iter().flatten() {
        for entry in container["env"].as_array().into_iter().flatten() {
            let reference = &entry["valueFrom"]["secretKeyRef"];
            let (Some(secret), Some(key)) = (reference["name"].as_str(), reference["key"].as_str())
            else {
                continue;
            };
            let where_ = format!(
                "container {} env {} reads Secret {secret} key {key}",
                container["name"], entry["name"]
            );
            let stored = kubectl
                .get_json(&["secret", secret, "-n", ns])
                .map_err(|_| found(format!("{where_}, which does not exist")))?;
            if stored["data"][key].is_null() {
                return Err(found(format!("{where_}, which has no such key")));
            }
        }
    }
    Ok(())
}

fn ready_on_node(pod: &Value) -> Result<(), CheckError> {
    if pod["spec"]["nodeName"] != NODE_NAME {
        return Err(found(format!(
            "scheduled to {}, not {NODE_NAME}",
            pod["spec"]["nodeName"]
        )));
    }
    let statuses = pod["status"]["containerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let ready = statuses.iter().filter(|s| s["ready"] == true).count();
    let total = pod["spec"]["containers"].as_array().map_or(0, Vec::len);
    if total != 2 || ready != total {
        return Err(found(format!(
            "{ready}/{total} containers ready, expected 2/2"
        )));
    }
    Ok(())
}

/// The operator's service reconciler made `<app-id>-dapr` for each app.
pub fn operator_services(kubectl: &Kubectl, ns: &str) -> Result<(), CheckError> {
    for app in APPS {
        let service = kubectl
            .get_json(&["service", &format!("{app}-dapr"), "-n", ns])
            .map_err(CheckError::about(format!(
                "{ns}: the operator made no Service {app}-dapr"
            )))?;
        let ports: Vec<u64> = service["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["port"].as_u64())
            .collect();
        if !ports.contains(&50002) {
            return Err(found(format!(
                "{ns}: Service {app}-dapr has ports {ports:?}, no 50002"
            )));
        }
    }
    Ok(())
}

/// The Role and RoleBinding as the API server enforces them: task-api's account may read its
/// API key and no other Secret; notification-service's may read none.
pub fn rbac_enforced(kubectl: &Kubectl, ns: &str) -> Result<(), CheckError> {
    let cases = [
        ("task-api", "task-api-auth", "yes"),
        ("task-api", "dapr-api-token", "no"),
        ("notification-service", "task-api-auth", "no"),
    ];
    for (account, secret, want) in cases {
        let user = format!("system:serviceaccount:{ns}:{account}");
        let mut command = kubectl.command();
        command.args([
            "auth",
            "can-i",
            "get",
            &format!("secret/{secret}"),
            "-n",
            ns,
            "--as",
            &user,
        ]);
        let output = command.output()?;
        let answer = String::from_utf8_lossy(&output.stdout).trim().to_string();
        if answer != want {
            return Err(found(format!(
                "{ns}: ServiceAccount {account} get Secret {secret}: {answer:?}, expected {want}"
            )));
        }
    }
    Ok(())
}
