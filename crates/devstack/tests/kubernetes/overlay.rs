//! The overlays under manifests/overlays: what they contain as written, the Secrets their
//! comments say must exist beforehand, and copies with one deliberate defect.

use std::path::{Path, PathBuf};

use devstack::{kubernetes::Kubectl, repo_root};
use serde_json::Value;

use crate::checks::CheckError;

/// One overlay and the namespace it is applied to: the development overlay to `default` (as
/// the README applies it, and as its access-control policy names), every other one to a
/// namespace of its own name.
#[derive(Debug, Clone)]
pub struct Overlay {
    pub name: String,
    pub dir: PathBuf,
    pub namespace: String,
}

/// Every directory under manifests/overlays (of `root`, a checkout or a copy of `manifests/`).
pub fn overlays(manifests: &Path) -> Vec<Overlay> {
    let dir = manifests.join("overlays");
    let mut found: Vec<Overlay> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.join("kustomization.yaml").is_file())
        .map(|path| {
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            let namespace = if name == "docker-desktop" {
                "default".into()
            } else {
                name.clone()
            };
            Overlay {
                name,
                dir: path,
                namespace,
            }
        })
        .collect();
    found.sort_by(|a, b| a.name.cmp(&b.name));
    assert!(!found.is_empty(), "no overlays under {}", dir.display());
    found
}

/// The objects of an overlay as kustomize renders them, before the API server sees them: the
/// YAML, and each object as JSON.
pub fn written_objects(
    kubectl: &Kubectl,
    overlay: &Overlay,
) -> Result<(String, Vec<Value>), CheckError> {
    let dir = overlay.dir.to_string_lossy();
    let yaml = kubectl.run(&["kustomize", &dir])?;
    let json = kubectl.run_with_input(
        &[
            "create",
            "--dry-run=client",
            "-o",
            "json",
            "-n",
            &overlay.namespace,
            "-f",
            "-",
        ],
        Some(&yaml),
    )?;
    // One JSON document per object, one after the other.
    let objects = serde_json::Deserializer::from_str(&json)
        .into_iter::<Value>()
        .collect::<Result<Vec<_>, _>>()?;
    Ok((yaml, objects))
}

/// The Secrets an overlay's kustomization.yaml (and that of an overlay it builds on) lists as
/// to be created beforehand, lines like `#   postgres   key connection-string  ...` or
/// `#   kafka   keys brokers (...), username, password`.
pub fn documented_secrets(overlay: &Path) -> Vec<(String, Vec<String>)> {
    let text = std::fs::read_to_string(overlay.join("kustomization.yaml")).unwrap_or_default();
    let mut secrets = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("#   ") else {
            continue;
        };
        let words: Vec<&str> = rest.split_whitespace().collect();
        match words.as_slice() {
            [name, "key", key, ..] => secrets.push((name.to_string(), vec![key.to_string()])),
            [name, "keys", ..] => {
                let list = rest
                    .split_once(" keys ")
                    .map(|(_, l)| l)
                    .unwrap_or_default();
                let keys = list
                    .split(", ")
                    .filter_map(|part| part.split_whitespace().next())
                    .map(str::to_string)
                    .collect();
                secrets.push((name.to_string(), keys));
            }
            _ => {}
        }
    }
    // An overlay built on another overlay expects that one's Secrets too.
    for base in text.lines().filter_map(|l| l.trim().strip_prefix("- ../")) {
        if !base.starts_with("../") {
            secrets.extend(documented_secrets(&overlay.join("..").join(base)));
        }
    }
    secrets
}

/// A checkout whose manifests/ is a copy with `old` replaced by `new` in `file` (relative to
/// manifests/), and every other top-level entry a link to the repository's; panics when `old`
/// is not there, so a defect never silently stops applying.
pub fn copy_with_defect(file: &str, old: &str, new: &str) -> tempfile::TempDir {
    let copy = tempfile::Builder::new()
        .prefix("task-api-manifests-")
        .tempdir()
        .unwrap_or_else(|e| panic!("a temporary directory: {e}"));
    let root = repo_root();
    copy_tree(&root.join("manifests"), &copy.path().join("manifests"));
    for entry in std::fs::read_dir(&root).unwrap_or_else(|e| panic!("{}: {e}", root.display())) {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        let name = path.file_name().unwrap_or_default();
        if name != "manifests" && name != "target" && name != ".git" {
            std::os::unix::fs::symlink(&path, copy.path().join(name))
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
    }
    let path = copy.path().join("manifests").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
    assert!(
        text.contains(old),
        "manifests/{file} no longer contains {old:?}: update the defect"
    );
    std::fs::write(&path, text.replacen(old, new, 1)).unwrap_or_else(|e| panic!("{file}: {e}"));
    copy
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("{}: {e}", to.display()));
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e}", from.display())) {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        let target = to.join(path.file_name().unwrap_or_default());
        if path.is_dir() {
            copy_tree(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
    }
}

/// Runs `scripts/check-deploy` of the checkout at `root` (the offline checks) and returns what it
/// printed; it must fail.
pub fn check_deploy(root: &Path) -> String {
    let script = root.join("scripts/check-deploy");
    let output = std::process::Command::new(&script)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !output.status.success(),
        "scripts/check-deploy passed a defective copy:\n{report}"
    );
    report
}
