//! The Kubernetes Dapr resources, as `kubectl apply -k manifests/overlays/docker-desktop` would
//! create them, loaded by a real daprd: the Configurations and the Resiliency. (The Kubernetes
//! Components need a cluster: the `kubernetes` secret store and secret references. The
//! self-hosted components in components/ are loaded by every other integration test.)

use std::{path::PathBuf, process::Command, time::Duration};

use devstack::{Stack, repo_root};

/// The rendered overlay, by the same kustomize scripts/check-deploy uses.
fn render_overlay() -> String {
    let overlay = repo_root().join("manifests/overlays/docker-desktop");
    let cache = std::env::var_os("TASK_API_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/task-api")
        });
    let built = cache.join("bin/kustomize-v5.5.0");
    let mut command = if let Ok(custom) = std::env::var("KUSTOMIZE") {
        let mut parts = custom.split_whitespace();
        let mut command = Command::new(parts.next().unwrap_or("kustomize"));
        command.args(parts);
        command
    } else if built.is_file() {
        let mut command = Command::new(built);
        command.arg("build");
        command
    } else {
        let mut command = Command::new("kubectl");
        command.arg("kustomize");
        command
    };
    let output = command
        .arg(&overlay)
        .output()
        .expect("kustomize (kubectl, or the one scripts/check-deploy builds) runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The documents of `kind` (top-level `kind:` line), with their metadata names.
fn documents<'a>(rendered: &'a str, kind: &str) -> Vec<(String, &'a str)> {
    rendered
        .split("\n---\n")
        .filter(|doc| doc.lines().any(|l| l == format!("kind: {kind}")))
        .map(|doc| {
            let name = doc
                .lines()
                .skip_while(|l| *l != "metadata:")
                .find_map(|l| l.strip_prefix("  name: "))
                .unwrap_or_default()
                .to_string();
            (name, doc)
        })
        .collect()
}

#[tokio::test]
async fn the_kubernetes_configurations_and_resiliency_load_in_a_real_daprd() {
    let rendered = render_overlay();
    let resiliencies = documents(&rendered, "Resiliency");
    let configurations = documents(&rendered, "Configuration");
    assert_eq!(resiliencies.len(), 1);
    assert_eq!(configurations.len(), 2, "{configurations:?}");

    let stack = Stack::builder().start().await.unwrap();
    let resources = stack.dir().join("kubernetes-resources");
    std::fs::create_dir_all(&resources).unwrap();
    for file in ["statestore.yaml", "pubsub.yaml", "secretstore.yaml"] {
        std::fs::copy(stack.resources_dir().join(file), resources.join(file)).unwrap();
    }
    let (resiliency_name, resiliency) = &resiliencies[0];
    std::fs::write(resources.join("resiliency.yaml"), resiliency).unwrap();

    for (name, configuration) in &configurations {
        let app_id = name.trim_end_matches("-config");
        let path = stack.dir().join(format!("{name}.yaml"));
        std::fs::write(&path, configuration).unwrap();
        let sidecar = stack
            .sidecar(app_id)
            .unwrap()
            .resources_dir(resources.clone())
            .config_file(path)
            .start()
            .await
            .unwrap_or_else(|e| panic!("daprd refused {name}: {e}"));
        assert!(
            sidecar.log_contains(&format!(
                "Loading Resiliency configuration: {resiliency_name}"
            )),
            "{app_id}: the Resiliency is in scope and loaded"
        );
        let errors = sidecar.process_log_lines("level=error");
        assert!(errors.is_empty(), "{app_id}: {errors:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
