//! The application reaches infrastructure only through its Dapr sidecar: its `[dependencies]`
//! must hold no Redis, Kafka, SQL, message-queue or HTTP client crate.

const FORBIDDEN: &[&str] = &[
    "redis",
    "deadpool-redis",
    "bb8-redis",
    "fred",
    "rdkafka",
    "kafka",
    "rskafka",
    "sqlx",
    "diesel",
    "tokio-postgres",
    "postgres",
    "mysql",
    "mysql_async",
    "rusqlite",
    "mongodb",
    "lapin",
    "async-nats",
    "nats",
    "reqwest",
    "ureq",
    "isahc",
    "surf",
    "hyper-tls",
    "attohttpc",
    "curl",
    "awc",
];

/// Names of the crates in every `[dependencies]` table (including target-specific ones).
fn dependency_names(manifest: &str) -> Vec<String> {
    let mut in_dependencies = false;
    let mut names = Vec::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            let table = line.trim_matches(|c| c == '[' || c == ']');
            in_dependencies = table == "dependencies"
                || (table.starts_with("target.") && table.ends_with(".dependencies"));
            // `[dependencies.redis]` style tables.
            if let Some(name) = table.strip_prefix("dependencies.") {
                names.push(name.to_string());
            }
            continue;
        }
        if in_dependencies && let Some((name, _)) = line.split_once('=') {
            let name = name.trim();
            if !name.is_empty() && !name.starts_with('#') {
                names.push(name.trim_matches('"').to_string());
            }
        }
    }
    names
}

fn forbidden_in(manifest: &str) -> Vec<String> {
    dependency_names(manifest)
        .into_iter()
        .filter(|name| FORBIDDEN.contains(&name.as_str()))
        .collect()
}

/// The apps' crate and the AppCallback adapter crate they are built on.
#[test]
fn the_application_has_no_direct_infrastructure_client() {
    for manifest in ["Cargo.toml", "crates/dapr-app/Cargo.toml"] {
        let path = format!("{}/{manifest}", env!("CARGO_MANIFEST_DIR"));
        let manifest = std::fs::read_to_string(&path).expect("the manifest is readable");
        let names = dependency_names(&manifest);
        assert!(
            names.contains(&"dapr".to_string()),
            "the check reads the right table of {path}: {names:?}"
        );
        assert_eq!(forbidden_in(&manifest), Vec::<String>::new(), "{path}");
    }
}

#[test]
fn the_check_catches_each_way_of_declaring_a_dependency() {
    let manifest = r#"
[package]
name = "x"

[dependencies]
dapr = "0.20"
redis = { version = "0.27" }

[dependencies.reqwest]
version = "0.12"

[target.'cfg(unix)'.dependencies]
sqlx = "0.8"

[dev-dependencies]
rdkafka = "0.36"
"#;
    assert_eq!(forbidden_in(manifest), ["redis", "reqwest", "sqlx"]);
}
