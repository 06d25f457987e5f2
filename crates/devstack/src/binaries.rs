//! Where the pinned daprd and scheduler binaries are.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::{Error, resources::repo_root};

/// The Dapr runtime binaries this stack runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub daprd: PathBuf,
    pub scheduler: PathBuf,
    pub sentry: PathBuf,
}

/// The command that builds the pinned Dapr runtime.
pub fn install_command() -> String {
    "tools/dapr/install.sh".to_string()
}

/// Asks an install script of `tools/` (which returns at once when its build is there) where
/// its build is. `what` and `install` name the tool and the install command in the error.
pub(crate) fn ask_install_script(
    script: &str,
    args: &[&str],
    what: &'static str,
    install: &str,
) -> Result<PathBuf, Error> {
    let script = repo_root().join(script);
    let output = Command::new(&script)
        .args(args)
        .output()
        .map_err(|source| Error::NotRunnable {
            what,
            program: script.clone(),
            install: install.to_string(),
            source,
        })?;
    if !output.status.success() {
        return Err(Error::Missing {
            what,
            detail: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            install: install.to_string(),
        });
    }
    Ok(PathBuf::from(
        String::from_utf8_lossy(&output.stdout).trim(),
    ))
}

impl Binaries {
    /// Finds the binaries: `DAPR_BIN_DIR` (holding daprd, scheduler and sentry) when set, else the
    /// build made by `tools/dapr/install.sh` (which is asked, not rebuilt: a missing or stale
    /// build is an error that names the install command).
    pub fn locate() -> Result<Self, Error> {
        if let Some(dir) = std::env::var_os("DAPR_BIN_DIR") {
            return Self::locate_in(&PathBuf::from(dir));
        }
        let bin_dir = ask_install_script(
            "tools/dapr/install.sh",
            &["--print"],
            "daprd 1.18.3",
            &install_command(),
        )?;
        Self::locate_in(&bin_dir)
    }

    /// Uses the binaries in `dir`, if they are all there and executable.
    pub fn locate_in(dir: &Path) -> Result<Self, Error> {
        let (daprd, scheduler, sentry) =
            (dir.join("daprd"), dir.join("scheduler"), dir.join("sentry"));
        for path in [&daprd, &scheduler, &sentry] {
            if !is_executable(path) {
                return Err(Error::Missing {
                    what: "daprd 1.18.3",
                    detail: format!("{} is not an executable file", path.display()),
                    install: install_command(),
                });
            }
        }
        Ok(Self {
            daprd,
            scheduler,
            sentry,
        })
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
