//! The Kubernetes Dapr resources, as `kubectl apply -k manifests/overlays/docker-desktop` would
//! create them, loaded by a real daprd: the Configurations and the Resiliency. (The Kubernetes
//! Components need a cluster: the `kubernetes` secret store and secret references. The
//! self-hosted components in components/ are loaded by every other integration test.)

use crate::common::kubernetes::{documents, render_overlay};
use devstack::Stack;

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
    for file in [
        "state-statestore.yaml",
        "pubsub-pubsub.yaml",
        "common-secretstore.yaml",
    ] {
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
    }
}
