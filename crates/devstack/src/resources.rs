//! The Dapr resources a stack loads: the repository's `components/`, rendered for one stack.
//!
//! The YAML users run is the YAML the tests load. Rendering replaces only what differs per stack:
//! the Redis address (`localhost:6379` in the files), the local secrets file
//! (`.dev/secrets.json`) and the name-resolution database (`.dev/nameresolution.db`).

use std::path::{Path, PathBuf};

use crate::Error;

/// The repository root (where `components/` and `tools/` are).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
}

/// Which state store and pub/sub the apps get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComponentSet {
    /// `components/embedded`: state.in-memory and pubsub.in-memory; needs no server.
    InMemory,
    /// `components/redis`: state.redis and pubsub.redis on the stack's Redis.
    Redis,
}

impl ComponentSet {
    fn directory(self) -> &'static str {
        match self {
            ComponentSet::InMemory => "embedded",
            ComponentSet::Redis => "redis",
        }
    }
}

/// Placeholders in the repository's YAML and what a stack puts in their place.
pub(crate) struct Substitutions {
    pub redis_address: Option<String>,
    pub secrets_file: PathBuf,
    pub name_resolution_db: PathBuf,
}

impl Substitutions {
    fn apply(&self, yaml: &str) -> String {
        let mut out = yaml
            .replace(".dev/secrets.json", &self.secrets_file.to_string_lossy())
            .replace(
                ".dev/nameresolution.db",
                &self.name_resolution_db.to_string_lossy(),
            );
        if let Some(address) = &self.redis_address {
            out = out.replace("localhost:6379", address);
        }
        out
    }
}

/// Renders `components/common` plus the chosen set into `target`, and `components/config.yaml`
/// into `config_path`.
pub(crate) fn render(
    set: ComponentSet,
    substitutions: &Substitutions,
    extra: &[(String, String)],
    target: &Path,
    config_path: &Path,
) -> Result<(), Error> {
    let components = repo_root().join("components");
    std::fs::create_dir_all(target).map_err(Error::io("the resources directory"))?;
    for dir in ["common", set.directory()] {
        let source = components.join(dir);
        let entries =
            std::fs::read_dir(&source).map_err(Error::io(format!("{}", source.display())))?;
        for entry in entries {
            let path = entry.map_err(Error::io("a component file"))?.path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let yaml = std::fs::read_to_string(&path)
                    .map_err(Error::io(format!("{}", path.display())))?;
                let name = path.file_name().unwrap_or_default();
                std::fs::write(target.join(name), substitutions.apply(&yaml))
                    .map_err(Error::io("a rendered component"))?;
            }
        }
    }
    for (name, yaml) in extra {
        std::fs::write(target.join(name), yaml).map_err(Error::io("an extra resource"))?;
    }
    let config = std::fs::read_to_string(components.join("config.yaml"))
        .map_err(Error::io("components/config.yaml"))?;
    std::fs::write(config_path, substitutions.apply(&config))
        .map_err(Error::io("the rendered configuration"))?;
    Ok(())
}
