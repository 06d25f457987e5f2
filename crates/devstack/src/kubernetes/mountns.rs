//! A private view of `/var/run` for one child process, so that it finds the files a pod would
//! have mounted there (`/var/run/secrets/...`) without anything changing on the host.
//!
//! Dapr's control plane and daprd read their Sentry token and trust bundle from fixed in-pod paths,
//! and the sidecar injector decides from the presence of its own token whether injected pods get
//! the identity-token volume. The child gets its own mount namespace, in which the directory
//! given here is bind-mounted over `/var/run`.

use std::{
    ffi::CString,
    os::unix::{ffi::OsStrExt, process::CommandExt},
    path::Path,
    process::Command,
};

use crate::Error;

/// Makes `command` run with `run_dir` mounted over `/var/run` in a mount namespace of its own.
pub fn with_private_run(command: &mut Command, run_dir: &Path) -> Result<(), Error> {
    with_private_mounts(command, &[(run_dir, Path::new("/var/run"))])
}

/// Makes `command` run in a mount namespace of its own in which each `(source, target)` is
/// bind-mounted over `target` (a directory over a directory, a file over a file).
pub fn with_private_mounts(command: &mut Command, binds: &[(&Path, &Path)]) -> Result<(), Error> {
    let mut pairs = Vec::new();
    for (source, target) in binds {
        let target = target
            .canonicalize()
            .map_err(Error::io(format!("{}", target.display())))?;
        pairs.push((c_path(source)?, c_path(&target)?));
    }
    let root = c_path(Path::new("/"))?;
    // SAFETY: between fork and exec only unshare(2) and mount(2) run, on strings made before.
    unsafe {
        command.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Nothing mounted here may propagate back to the host.
            let private = libc::MS_REC | libc::MS_PRIVATE;
            let null = std::ptr::null();
            if libc::mount(null, root.as_ptr(), null, private, std::ptr::null()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            for (source, target) in &pairs {
                let bind = libc::MS_BIND;
                if libc::mount(
                    source.as_ptr(),
                    target.as_ptr(),
                    null,
                    bind,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Ok(())
}

fn c_path(path: &Path) -> Result<CString, Error> {
    CString::new(path.as_os_str().as_bytes()).map_err(|e| Error::Io {
        what: format!("{}", path.display()),
        source: std::io::Error::other(e),
    })
}

/// Writes `contents` at `relative` under a private run directory, creating its parents.
pub fn put(run_dir: &Path, relative: &str, contents: &[u8]) -> Result<(), Error> {
    let path = run_dir.join(relative);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(Error::io(format!("{}", parent.display())))?;
    }
    std::fs::write(&path, contents).map_err(Error::io(format!("{}", path.display())))
}
