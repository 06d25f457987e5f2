//! The Dapr scheduler (Jobs API), with its embedded etcd, on loopback ports.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::{Binaries, Error, LogSink, ManagedProcess, free_port, http};

/// A running scheduler owned by this handle.
pub struct Scheduler {
    process: ManagedProcess,
    ports: Ports,
    binary: PathBuf,
    dir: PathBuf,
    sink: LogSink,
}

/// The scheduler's ports, kept across a restart so its sidecars find it again.
#[derive(Debug, Clone, Copy)]
struct Ports {
    grpc: u16,
    healthz: u16,
    metrics: u16,
    etcd_client: u16,
    etcd_peer: u16,
}

impl Scheduler {
    /// Starts the scheduler with its etcd data under `dir`.
    pub async fn start(binaries: &Binaries, dir: &Path, sink: LogSink) -> Result<Self, Error> {
        let ports = Ports {
            grpc: free_port()?,
            healthz: free_port()?,
            metrics: free_port()?,
            etcd_client: free_port()?,
            etcd_peer: free_port()?,
        };
        let data_dir = dir.join("scheduler-etcd");
        std::fs::create_dir_all(&data_dir).map_err(Error::io("the scheduler data dir"))?;
        // etcd refuses a data dir that others can read.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(Error::io("the scheduler data dir"))?;
        let process = Self::spawn(&binaries.scheduler, dir, ports, sink.clone()).await?;
        Ok(Self {
            process,
            ports,
            binary: binaries.scheduler.clone(),
            dir: dir.to_path_buf(),
            sink,
        })
    }

    /// Stops the scheduler (SIGTERM, then SIGKILL) and starts it again on the same ports with
    /// the same data: the jobs it held survive, as they would a pod restart.
    pub async fn restart(&mut self) -> Result<(), Error> {
        self.process.stop(Duration::from_secs(10));
        self.process = Self::spawn(&self.binary, &self.dir, self.ports, self.sink.clone()).await?;
        Ok(())
    }

    async fn spawn(
        binary: &Path,
        dir: &Path,
        ports: Ports,
        sink: LogSink,
    ) -> Result<ManagedProcess, Error> {
        let Ports {
            grpc: port,
            healthz,
            metrics,
            etcd_client,
            etcd_peer,
        } = ports;
        let data_dir = dir.join("scheduler-etcd");
        let mut command = Command::new(binary);
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
        Ok(process)
    }

    /// `127.0.0.1:<port>`, for daprd's `--scheduler-host-address`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.ports.grpc)
    }

    pub fn process(&mut self) -> &mut ManagedProcess {
        &mut self.process
    }
}
