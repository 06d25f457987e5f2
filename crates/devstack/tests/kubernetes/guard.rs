//! Runs a test body against a control plane and, pass or fail, checks afterwards that none of
//! its processes is left.

use std::{future::Future, path::Path};

use devstack::kubernetes::ControlPlane;

/// Runs `body` with `plane` in a task of its own. On a panic the plane is dropped while the task
/// unwinds (its processes print their logs, then stop); either way, once it is gone, every
/// control-plane process must be gone too, and the body's panic is raised again.
pub async fn guarded<F, Fut>(plane: ControlPlane, body: F)
where
    F: FnOnce(ControlPlane) -> Fut,
    Fut: Future<Output = ControlPlane> + Send + 'static,
{
    let pids = plane.pids();
    let dir = plane.dir().to_path_buf();
    // Dropping the returned plane stops its processes.
    let outcome = tokio::spawn(body(plane)).await.map(drop);
    assert_all_gone(&pids, &dir);
    if let Err(error) = outcome {
        std::panic::resume_unwind(error.into_panic());
    }
}

/// No process of the list runs any more, and no process anywhere has the control plane's
/// directory on its command line.
pub fn assert_all_gone(pids: &[(String, u32)], dir: &Path) {
    for (name, pid) in pids {
        // SAFETY: kill(2) with signal 0 only asks whether the process exists.
        let alive = unsafe { libc::kill(*pid as i32, 0) } == 0;
        assert!(!alive, "{name} (pid {pid}) outlived the control plane");
    }
    let needle = dir.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        assert!(
            !cmdline.contains(&needle),
            "process {} still runs with the control plane's directory: {cmdline}",
            entry.file_name().to_string_lossy()
        );
    }
    assert!(!dir.exists(), "{} was not removed", dir.display());
}
