//! The Kubernetes Dapr resources, as `kubectl apply -k manifests/overlays/docker-desktop` would
//! create them, loaded by a real daprd: the Configurations and the Resiliency. (The Kubernetes
//! Components need a cluster: the `kubernetes` secret store and secret references. The
//! self-hosted components in components/ are loaded by every other integration test.)

use crate::common::{
    Scrape,
    kubernetes::{documents, render_overlay},
};
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
        // daprd counts a Resiliency as loaded only once it has decoded every policy of it.
        let loaded = Scrape::sidecar(&sidecar)
            .await
            .sum("dapr_resiliency_loaded", &[("name", resiliency_name)]);
        assert_eq!(
            loaded, 1.0,
            "{app_id}: the Resiliency is in scope and loaded"
        );
        let metadata = sidecar.metadata().await.unwrap();
        let mut components: Vec<&str> = metadata["components"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|component| component["name"].as_str())
            .collect();
        components.sort_unstable();
        assert_eq!(
            components,
            ["pubsub", "secretstore", "statestore"],
            "{app_id}: every component initialised: {metadata}"
        );
    }
}
