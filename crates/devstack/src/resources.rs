//! The Dapr resources a stack loads: the repository's `components/`, rendered for one stack.
//!
//! The YAML users run is the YAML the tests load. A stack loads `components/common`, one state
//! store from `components/state/<store>` and one broker from `components/pubsub/<broker>`.
//! Rendering replaces only what differs per stack: the Redis addresses (`localhost:6379` in the
//! files), the PostgreSQL connection (`host=localhost port=5432`), the local secrets file
//! (`.dev/secrets.json`), the name-resolution database (`.dev/nameresolution.db`) and, when a
//! collector runs, the empty OTLP address of the Configuration's tracing (`endpointAddress: ""`).

use std::path::{Path, PathBuf};

use crate::Error;

/// The repository root (where `components/` and `tools/` are).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
}

/// Where builds and templates are kept between runs: `TASK_API_CACHE`, else
/// `$XDG_CACHE_HOME/task-api`, else `~/.cache/task-api` (the same place `scripts/test` uses).
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TASK_API_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("task-api");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home).join(".cache/task-api")
}

/// Which state store and broker the apps get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComponentSet {
    /// `state.redis` and `pubsub.redis` (task-events and the outbox), each on its own private
    /// `redis-server`, so the broker can fail while the store works.
    Redis,
    /// `state.postgresql` (v2) on a private PostgreSQL, with `pubsub.redis` as the broker.
    Postgres,
    /// `state.redis` on a private `redis-server`, with `pubsub.kafka` on a private Kafka broker.
    Kafka,
}

impl ComponentSet {
    /// Every set, for tests that run on each.
    pub const ALL: [ComponentSet; 3] = [
        ComponentSet::Redis,
        ComponentSet::Postgres,
        ComponentSet::Kafka,
    ];

    /// The directory under `components/state`.
    pub fn state_store(self) -> &'static str {
        match self {
            ComponentSet::Redis | ComponentSet::Kafka => "redis",
            ComponentSet::Postgres => "postgresql",
        }
    }

    /// The directory under `components/pubsub`.
    pub fn broker(self) -> &'static str {
        match self {
            ComponentSet::Redis | ComponentSet::Postgres => "redis",
            ComponentSet::Kafka => "kafka",
        }
    }

    pub(crate) fn needs_state_redis(self) -> bool {
        self.state_store() == "redis"
    }

    pub(crate) fn needs_broker_redis(self) -> bool {
        self.broker() == "redis"
    }
}

/// Placeholders in the repository's YAML and what a stack puts in their place.
pub(crate) struct Substitutions {
    pub state_redis: Option<String>,
    pub broker_redis: Option<String>,
    pub postgres: Option<String>,
    pub kafka: Option<String>,
    pub secrets_file: PathBuf,
    pub name_resolution_db: PathBuf,
    /// `host:port` of an OTLP/gRPC receiver for daprd's spans; `None` leaves export off.
    pub otlp_endpoint: Option<String>,
    /// Replaces the Configuration's `samplingRate: "1"`.
    pub sampling_rate: Option<f64>,
    /// Replaces every broker component's `maxLenApprox`.
    pub stream_max_len: Option<u64>,
}

/// Which placeholders a file may take, by the directory it comes from.
#[derive(Clone, Copy)]
enum Source {
    Common,
    State,
    Broker,
}

impl Substitutions {
    fn apply(&self, yaml: &str, source: Source) -> String {
        let mut out = yaml
            .replace(".dev/secrets.json", &self.secrets_file.to_string_lossy())
            .replace(
                ".dev/nameresolution.db",
                &self.name_resolution_db.to_string_lossy(),
            );
        let redis = match source {
            Source::State => self.state_redis.as_ref(),
            Source::Broker => self.broker_redis.as_ref(),
            Source::Common => None,
        };
        if let Some(address) = redis {
            out = out.replace("localhost:6379", address);
        }
        if let (Some(brokers), Source::Broker) = (&self.kafka, source) {
            out = out.replace("localhost:9092", brokers);
        }
        if let (Some(endpoint), Source::Common) = (&self.otlp_endpoint, source) {
            out = out.replace(
                r#"endpointAddress: """#,
                &format!(r#"endpointAddress: "{endpoint}""#),
            );
        }
        if let (Some(rate), Source::Common) = (self.sampling_rate, source) {
            out = out.replace(
                r#"samplingRate: "1""#,
                &format!(r#"samplingRate: "{rate}""#),
            );
        }
        if let (Some(events), Source::Broker) = (self.stream_max_len, source) {
            out = with_max_len(&out, events);
        }
        if let Some(connection) = &self.postgres {
            out = out.replace(
                "host=localhost port=5432 user=postgres dbname=postgres sslmode=disable",
                connection,
            );
        }
        out
    }
}

/// `yaml` with the value of its `maxLenApprox` metadata item replaced by `events`.
fn with_max_len(yaml: &str, events: u64) -> String {
    let mut out = Vec::new();
    let mut next_is_value = false;
    for line in yaml.lines() {
        if next_is_value && line.trim_start().starts_with("value:") {
            let indent = &line[..line.len() - line.trim_start().len()];
            out.push(format!("{indent}value: \"{events}\""));
            next_is_value = false;
            continue;
        }
        next_is_value = line.trim() == "- name: maxLenApprox";
        out.push(line.to_string());
    }
    out.join("\n") + "\n"
}

/// Renders `components/common`, the set's state store and broker into `target`, and
/// `components/config.yaml` into `config_path`.
pub(crate) fn render(
    set: ComponentSet,
    substitutions: &Substitutions,
    extra: &[(String, String)],
    target: &Path,
    config_path: &Path,
) -> Result<(), Error> {
    let components = repo_root().join("components");
    std::fs::create_dir_all(target).map_err(Error::io("the resources directory"))?;
    let sources = [
        (components.join("common"), Source::Common, "common"),
        (
            components.join("state").join(set.state_store()),
            Source::State,
            "state",
        ),
        (
            components.join("pubsub").join(set.broker()),
            Source::Broker,
            "pubsub",
        ),
    ];
    for (dir, source, prefix) in sources {
        let entries = std::fs::read_dir(&dir).map_err(Error::io(format!("{}", dir.display())))?;
        for entry in entries {
            let path = entry.map_err(Error::io("a component file"))?.path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let yaml = std::fs::read_to_string(&path)
                    .map_err(Error::io(format!("{}", path.display())))?;
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                // Prefixed, so state/…/x.yaml and pubsub/…/x.yaml never collide.
                std::fs::write(
                    target.join(format!("{prefix}-{name}")),
                    substitutions.apply(&yaml, source),
                )
                .map_err(Error::io("a rendered component"))?;
            }
        }
    }
    for (name, yaml) in extra {
        std::fs::write(target.join(name), yaml).map_err(Error::io("an extra resource"))?;
    }
    let config = std::fs::read_to_string(components.join("config.yaml"))
        .map_err(Error::io("components/config.yaml"))?;
    std::fs::write(config_path, substitutions.apply(&config, Source::Common))
        .map_err(Error::io("the rendered configuration"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn substitutions(otlp_endpoint: Option<&str>) -> Substitutions {
        Substitutions {
            state_redis: None,
            broker_redis: None,
            postgres: None,
            kafka: None,
            secrets_file: PathBuf::from("/stack/secrets.json"),
            name_resolution_db: PathBuf::from("/stack/nameresolution.db"),
            otlp_endpoint: otlp_endpoint.map(str::to_string),
            sampling_rate: None,
            stream_max_len: None,
        }
    }

    #[test]
    fn a_stream_bound_replaces_every_broker_components_max_len() {
        let pubsub =
            std::fs::read_to_string(repo_root().join("components/pubsub/redis/pubsub.yaml"))
                .unwrap();
        let mut bounded = substitutions(None);
        bounded.stream_max_len = Some(500);
        let out = bounded.apply(&pubsub, Source::Broker);
        assert!(
            out.contains("- name: maxLenApprox\n      value: \"500\""),
            "{out}"
        );
        assert!(!out.contains("100000"), "{out}");
        assert_eq!(substitutions(None).apply(&pubsub, Source::Broker), pubsub);
    }

    #[test]
    fn the_configuration_exports_spans_only_to_a_named_collector() {
        let config = std::fs::read_to_string(repo_root().join("components/config.yaml")).unwrap();
        let off = substitutions(None).apply(&config, Source::Common);
        assert!(off.contains(r#"endpointAddress: """#), "{off}");
        let on = substitutions(Some("127.0.0.1:4317")).apply(&config, Source::Common);
        assert!(on.contains(r#"endpointAddress: "127.0.0.1:4317""#), "{on}");
        assert!(
            on.contains("protocol: grpc") && on.contains("isSecure: false"),
            "{on}"
        );
        assert!(on.contains(r#"samplingRate: "1""#), "{on}");
        let mut sampled = substitutions(Some("127.0.0.1:4317"));
        sampled.sampling_rate = Some(0.1);
        let sampled = sampled.apply(&config, Source::Common);
        assert!(sampled.contains(r#"samplingRate: "0.1""#), "{sampled}");
    }
}
