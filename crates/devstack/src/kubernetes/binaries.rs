//! Where the control plane's programs are: the build `tools/kubernetes/install.sh` made.

use std::path::{Path, PathBuf};

use crate::{Error, binaries::ask_install_script};

/// The programs of the local control plane, and the files read from their modules.
#[derive(Debug, Clone)]
pub struct KubeBinaries {
    pub etcd: PathBuf,
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
    pub kube_scheduler: PathBuf,
    pub kubectl: PathBuf,
    pub kwok: PathBuf,
    pub injector: PathBuf,
    pub operator: PathBuf,
    /// `charts/dapr/crds` of the pinned dapr module.
    pub dapr_crds: PathBuf,
    /// `kustomize/stage` of the pinned kwok module.
    pub kwok_stages: PathBuf,
}

/// The command that builds them.
pub fn install_command() -> String {
    "tools/kubernetes/install.sh".to_string()
}

impl KubeBinaries {
    /// Asks `tools/kubernetes/install.sh --print` for its build (a missing or stale build is an
    /// error naming the install command; nothing is built here).
    pub fn locate() -> Result<Self, Error> {
        const WHAT: &str = "the local Kubernetes control plane";
        let bin = ask_install_script(
            "tools/kubernetes/install.sh",
            &["--print"],
            WHAT,
            &install_command(),
        )?;
        Self::locate_in(&bin).map_err(|absent| Error::Missing {
            what: WHAT,
            detail: format!("{} is missing", absent.display()),
            install: install_command(),
        })
    }

    /// The build in `bin`, or the first of its programs or directories that is not there.
    fn locate_in(bin: &Path) -> Result<Self, PathBuf> {
        let build = bin.parent().unwrap_or(bin);
        let found = Self {
            etcd: bin.join("etcd"),
            kube_apiserver: bin.join("kube-apiserver"),
            kube_controller_manager: bin.join("kube-controller-manager"),
            kube_scheduler: bin.join("kube-scheduler"),
            kubectl: bin.join("kubectl"),
            kwok: bin.join("kwok"),
            injector: bin.join("injector"),
            operator: bin.join("operator"),
            dapr_crds: build.join("dapr-crds"),
            kwok_stages: build.join("kwok-stages"),
        };
        for program in [
            &found.etcd,
            &found.kube_apiserver,
            &found.kube_controller_manager,
            &found.kube_scheduler,
            &found.kubectl,
            &found.kwok,
            &found.injector,
            &found.operator,
        ] {
            if !program.is_file() {
                return Err(program.clone());
            }
        }
        for dir in [&found.dapr_crds, &found.kwok_stages] {
            if !dir.is_dir() {
                return Err(dir.clone());
            }
        }
        Ok(found)
    }
}
