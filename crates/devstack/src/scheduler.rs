//! The Dapr scheduler (Jobs API), with its embedded etcd, on loopback ports.

use std::{path::Path, process::Command, time::Duration};

use crate::{Binaries, Error, LogSink, ManagedProcess, free_port, http};

/// A running scheduler owned by this handle.
pub struct Scheduler {
    process: ManagedProcess,
    port: u16,
}

impl Scheduler {
    /// Starts the scheduler with its etcd data under `dir`.
    pub async fn start(binaries: &Binaries, dir: &Path, sink: LogSink) -> Result<Self, Error> {
        let port = free_port()?;
        let healthz = free_port()?;
        let metrics = free_port()?;
        let etcd_client = free_port()?;
        let etcd_peer = free_port()?;
        let data_dir = dir.join("scheduler-etcd");
        std::fs::create_dir_all(&data_dir).map_err(Error::io("the scheduler data dir"))?;
        // etcd refuses a data dir that others can read.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(Error::io("the scheduler data dir"))?;

        let mut command = Command::new(&binaries.scheduler);
        command
            .args(["--mode", "standalone", "--listen-address", "127.0.0.1"])
            .args(["--port", &port.to_string()])
            .args(["--healthz-listen-address", "127.0.0.1"])
            .args(["--healthz-port", &healthz.to_string()])
            .args(["--metrics-listen-address", "127.0.0.1"])
            .args(["--metrics-port", &metrics.to_string()])
            .args(["--etcd-client-listen-address", "127.0.0.1"])
            .args(["--etcd-client-port", &etcd_client.to_string()])
            .arg("--etcd-initial-cluster")
            .arg(format!(
                "dapr-scheduler-server-0=http://127.0.0.1:{etcd_peer}"
            ))
            .arg("--etcd-data-dir")
            .arg(&data_dir)
            .current_dir(dir);
        let mut process = ManagedProcess::spawn("scheduler", command, sink)?;
        process
            .wait_until(
                Duration::from_secs(60),
                "healthz did not answer 200",
                || http::answers(healthz, "/healthz", 200),
            )
            .await?;
        Ok(Self { process, port })
    }

    /// `127.0.0.1:<port>`, for daprd's `--scheduler-host-address`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn process(&mut self) -> &mut ManagedProcess {
        &mut self.process
    }
}
