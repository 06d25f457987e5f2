//! Dapr Sentry, the certificate authority behind mTLS between sidecars. Access-control policies
//! match callers by the SPIFFE identity in their certificate, so they can only be tested with
//! Sentry running. On first start it creates its own root and issuer in its directory.

use std::{path::Path, process::Command, time::Duration};

use crate::{Binaries, Error, LogSink, ManagedProcess, free_port, http};

/// Sentry's own Configuration: mTLS on, one-day workload certificates.
const CONFIG: &str = "apiVersion: dapr.io/v1alpha1
kind: Configuration
metadata:
  name: daprsystem
spec:
  mtls:
    enabled: true
    workloadCertTTL: 24h
    allowedClockSkew: 15m
";

/// A running Sentry owned by this handle.
pub struct Sentry {
    process: ManagedProcess,
    port: u16,
    trust_anchors: String,
}

impl Sentry {
    pub async fn start(binaries: &Binaries, dir: &Path, sink: LogSink) -> Result<Self, Error> {
        let port = free_port()?;
        let healthz = free_port()?;
        let credentials = dir.join("sentry-credentials");
        std::fs::create_dir_all(&credentials).map_err(Error::io("the sentry directory"))?;
        let config = dir.join("sentry-config.yaml");
        std::fs::write(&config, CONFIG).map_err(Error::io("the sentry configuration"))?;
        let mut command = Command::new(&binaries.sentry);
        command
            .arg("--config")
            .arg(&config)
            .arg("--issuer-credentials")
            .arg(&credentials)
            .args(["--listen-address", "127.0.0.1", "--port", &port.to_string()])
            // Sentry 1.18.3 accepts this flag but does not pass it to its healthz server, which
            // listens on every interface; there is no way to confine it.
            .args(["--healthz-listen-address", "127.0.0.1"])
            .args(["--healthz-port", &healthz.to_string()])
            .arg("--enable-metrics=false")
            .args(["--trust-domain", "localhost"])
            .current_dir(dir);
        let mut process = ManagedProcess::spawn("sentry", command, sink)?;
        let root = credentials.join("ca.crt");
        let trust_anchors = process
            .wait_until(
                Duration::from_secs(30),
                "healthz did not answer 200",
                || async {
                    http::answers(healthz, "/healthz", 200).await?;
                    std::fs::read_to_string(&root).ok()
                },
            )
            .await?;
        Ok(Self {
            process,
            port,
            trust_anchors,
        })
    }

    /// `127.0.0.1:<port>`, for daprd's `--sentry-address`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The root certificate sidecars must trust (`DAPR_TRUST_ANCHORS`).
    pub fn trust_anchors(&self) -> &str {
        &self.trust_anchors
    }

    pub fn process(&mut self) -> &mut ManagedProcess {
        &mut self.process
    }
}
